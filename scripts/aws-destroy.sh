#!/usr/bin/env bash
# aws-destroy.sh - remove everything scripts/aws-deploy.sh created for a project.
#
# What it does: finds the project's resources by their Project tag and deletes
# them in dependency order:
#   1. every instance of the project (PIBL and web servers), then waits until
#      they are terminated (their network interfaces hold the groups);
#   2. the web servers' security group (its rule names PIBL's group);
#   3. PIBL's security group;
#   4. the key pair the deploy imported.
# Safe to re-run: what is already gone is skipped. A later aws-deploy.sh builds
# a fresh deployment (its client tokens derive from the PIBL group's id, which
# the new group does not share).
#
# What it refuses: resources without the project's tag (a key pair or group
# the user made by hand is never touched), running without credentials.
# It leaves the local private key (KEY_DIR/NAME.pem): it may serve other regions.
#
# Limits: a group still held by a vanishing network interface is retried every
# PIBL_POLL_SECONDS (10) up to PIBL_DELETE_TRIES (30) times.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=aws-lib.sh
. "$script_dir/aws-lib.sh"

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}
project=${PIBL_PROJECT:-pibl}
endpoint=${AWS_ENDPOINT_URL:-}
aws_cli=${PIBL_AWS_CLI:-aws}
poll_seconds=${PIBL_POLL_SECONDS:-10}
delete_tries=${PIBL_DELETE_TRIES:-30}

usage() {
    cat <<EOF
Usage: ${0##*/} [options]

Terminates the instances and deletes the security groups and the key pair that
scripts/aws-deploy.sh created for the project (found by the Project tag).
Safe to re-run.

Options (environment variable in brackets, then the default):
  -r, --region REGION   AWS region [AWS_REGION, AWS_DEFAULT_REGION] us-east-1
  -p, --project NAME    Project tag to remove [PIBL_PROJECT] pibl
  -h, --help            this help

AWS_ENDPOINT_URL, when set, is passed as --endpoint-url to every AWS call.
EOF
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
        -h | --help) usage; exit 0 ;;
        -r | --region) [ $# -ge 2 ] || die "option $1 needs a value"; region=$2; shift ;;
        -p | --project) [ $# -ge 2 ] || die "option $1 needs a value"; project=$2; shift ;;
        *) die "unknown argument \"$1\" (see -h)" ;;
        esac
        shift
    done
}

# terminate_instances - terminate every live instance of the project and wait
# until all are terminated.
terminate_instances() {
    local lines ids=() id state
    lines=$(list_instances "" "$LIVE_STATES") || die "could not list instances"
    while IFS=$'\t' read -r id state _; do
        [ -n "$id" ] || continue
        ids+=("$id")
        info "instance $id ($state)"
    done <<<"$lines"
    if [ ${#ids[@]} -eq 0 ]; then
        info "no instances of project $project"
        return 0
    fi
    aws_run ec2 terminate-instances --instance-ids "${ids[@]}" >/dev/null ||
        die "could not terminate ${ids[*]}"
    info "terminating ${ids[*]}; waiting until they are gone"
    aws_run ec2 wait instance-terminated --instance-ids "${ids[@]}" ||
        die "the instances did not terminate in time; run this script again"
    info "instances terminated"
}

# delete_groups ROLE - delete the project's security groups with that Role,
# retrying while AWS still reports a dependency (a network interface that
# outlives its instance for a short while).
delete_groups() {
    local role=$1 ids id tries out
    ids=$(aws_run ec2 describe-security-groups --filters "Name=tag:Project,Values=$project" \
        "Name=tag:Role,Values=$role" --query 'SecurityGroups[].GroupId' --output text) ||
        die "could not list security groups"
    if [ -z "$ids" ]; then
        info "no $role security group"
        return 0
    fi
    for id in $ids; do
        tries=0
        while ! out=$(aws_run ec2 delete-security-group --group-id "$id" 2>&1); do
            tries=$((tries + 1))
            if [[ "$out" == *InvalidGroup.NotFound* ]]; then
                break
            fi
            if [[ "$out" != *DependencyViolation* ]] || [ "$tries" -ge "$delete_tries" ]; then
                die "could not delete security group $id: $out"
            fi
            info "security group $id still in use, retrying in $poll_seconds s"
            sleep "$poll_seconds"
        done
        info "security group $id ($role) deleted"
    done
}

# delete_key_pairs - delete the key pairs tagged with the project.
delete_key_pairs() {
    local names name
    names=$(aws_run ec2 describe-key-pairs --filters "Name=tag:Project,Values=$project" \
        --query 'KeyPairs[].KeyName' --output text) || die "could not list key pairs"
    if [ -z "$names" ]; then
        info "no key pair of project $project"
        return 0
    fi
    for name in $names; do
        aws_run ec2 delete-key-pair --key-name "$name" >/dev/null || die "could not delete key pair $name"
        info "key pair $name deleted (the local private key, if any, is kept)"
    done
}

main() {
    parse_args "$@"
    validate_common
    check_cli_and_credentials
    terminate_instances
    delete_groups web
    delete_groups pibl
    delete_key_pairs
    info "project $project removed from $region"
}

main "$@"
