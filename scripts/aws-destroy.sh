#!/usr/bin/env bash
# aws-destroy.sh - remove everything scripts/aws-deploy.sh created for a project.
#
# What it does: finds the project's resources by their Project tag, lists them
# (instances with id, name, role, state and public IP; security groups with id
# and name; key pairs), asks "Delete these? [y/N]" and, on yes, deletes them in
# dependency order:
#   1. the larger topology's front (aws-cluster.sh), when there is one: the
#      load balancer's listener, the load balancer (waited for), its target
#      group, and the web servers' Auto Scaling group (deleted with its
#      instances, waited for);
#   2. every instance of the project (PIBL and web servers), then waits until
#      they are terminated (their network interfaces hold the groups);
#   3. the launch template, the PIBL instances' instance profile and role;
#   4. the web servers' security group (its rule names PIBL's group);
#   5. PIBL's security group;
#   6. the key pair the deploy imported.
# The answer is read from stdin, which must be a terminal: when stdin is not a
# terminal (a pipe, a file, cron) it refuses unless --yes is given, so that no
# stray input answers for the user. --dry-run lists and deletes nothing (it
# makes only the read-only describe calls).
# Safe to re-run: what is already gone is skipped. A later aws-deploy.sh builds
# a fresh deployment (its client tokens derive from the PIBL group's id, which
# the new group does not share).
#
# What it refuses: resources without the project's tag (a key pair or group
# the user made by hand is never touched), running without credentials,
# deleting without a yes (typed on the terminal, or --yes).
# It leaves the local private key (KEY_DIR/NAME.pem): it may serve other regions.
#
# Limits: a group still held by a vanishing network interface is retried every
# PIBL_POLL_SECONDS (10) up to PIBL_DELETE_TRIES (30) times.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=aws-lib.sh
. "$script_dir/aws-lib.sh"
# shellcheck source-path=SCRIPTDIR source=aws-cluster.sh
. "$script_dir/aws-cluster.sh"

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}
project=${PIBL_PROJECT:-pibl}
endpoint=${AWS_ENDPOINT_URL:-}
aws_cli=${PIBL_AWS_CLI:-aws}
poll_seconds=${PIBL_POLL_SECONDS:-10}
delete_tries=${PIBL_DELETE_TRIES:-30}
assume_yes=0
dry_run=0
instance_lines="" web_groups="" pibl_groups="" key_names="" cluster=""   # set by collect

usage() {
    cat <<EOF
Usage: ${0##*/} [options]

Lists the instances, security groups and key pair that scripts/aws-deploy.sh
created for the project (found by the Project tag), asks for confirmation,
then terminates and deletes them. Safe to re-run.

Options: [environment variable] (default: value)
  -r, --region REGION   AWS region [AWS_REGION, AWS_DEFAULT_REGION] (default: us-east-1)
  -p, --project NAME    Project tag to remove [PIBL_PROJECT] (default: pibl)
  -y, --yes             delete without asking (needed when stdin is not a terminal)
  -n, --dry-run         list what would be deleted, delete nothing
  -h, --help            this help

"Delete these? [y/N]" is answered on stdin, which must be a terminal;
anything but y or yes keeps everything (exit status 1).
AWS_ENDPOINT_URL, when set, is passed as --endpoint-url to every AWS call.
EOF
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
        -h | --help) usage; exit 0 ;;
        -r | --region) [ $# -ge 2 ] || die "option $1 needs a value"; region=$2; shift ;;
        -p | --project) [ $# -ge 2 ] || die "option $1 needs a value"; project=$2; shift ;;
        -y | --yes) assume_yes=1 ;;
        -n | --dry-run) dry_run=1 ;;
        *) die "unknown argument \"$1\" (see -h)" ;;
        esac
        shift
    done
}

# list_groups ROLE - print the project's security groups with that Role, one
# "id<TAB>name" line each.
list_groups() {
    aws_run ec2 describe-security-groups --filters "Name=tag:Project,Values=$project" \
        "Name=tag:Role,Values=$1" --query 'SecurityGroups[].[GroupId,GroupName]' --output text
}

# collect - find everything of the project (read-only calls): sets
# instance_lines (list_instances layout), web_groups and pibl_groups
# (list_groups layout) and key_names (one a line).
collect() {
    instance_lines=$(list_instances "" "$LIVE_STATES") || die "could not list instances"
    web_groups=$(list_groups web) || die "could not list security groups"
    pibl_groups=$(list_groups pibl) || die "could not list security groups"
    key_names=$(aws_run ec2 describe-key-pairs --filters "Name=tag:Project,Values=$project" \
        --query 'KeyPairs[].KeyName' --output text) || die "could not list key pairs"
    key_names=$(tr '\t' '\n' <<<"$key_names" | sed '/^$/d')
    cluster=$(cluster_lines) || die "could not list the load balancer, Auto Scaling group and IAM role"
}

# show - print what collect found; return 1 when there is nothing.
show() {
    local id state pub role name n=0
    echo "Project $project in $region:"
    if [ -n "$cluster" ]; then
        printf '%s\n' "$cluster"
        n=$((n + 1))
    fi
    while IFS=$'\t' read -r id state _ pub role _ _ name; do
        [ -n "$id" ] || continue
        printf '  instance        %-21s %-12s %-6s %-14s public IP %s\n' "$id" "$name" "$role" "$state" "$pub"
        n=$((n + 1))
    done <<<"$instance_lines"
    while IFS=$'\t' read -r id name; do
        [ -n "$id" ] || continue
        printf '  security group  %-21s %s\n' "$id" "$name"
        n=$((n + 1))
    done <<<"$web_groups"$'\n'"$pibl_groups"
    while read -r name; do
        [ -n "$name" ] || continue
        printf '  key pair        %s (the local private key is kept)\n' "$name"
        n=$((n + 1))
    done <<<"$key_names"
    [ "$n" -gt 0 ]
}

# confirm - return when the user said yes (or gave --yes); exit otherwise.
confirm() {
    local answer
    [ "$assume_yes" = 0 ] || return 0
    if [ ! -t 0 ]; then
        die "stdin is not a terminal, so nobody can answer: nothing deleted.
  Run it from a terminal, or pass --yes to delete what is listed above."
    fi
    read -r -p "Delete these? [y/N] " answer || answer=""
    case $answer in
    y | Y | yes | Yes | YES) ;;
    *)
        echo "nothing deleted"
        exit 1 ;;
    esac
}

# terminate_instances - terminate the instances collect found and wait until
# all are terminated.
terminate_instances() {
    local ids=() id
    while IFS=$'\t' read -r id _; do
        [ -z "$id" ] || ids+=("$id")
    done <<<"$instance_lines"
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

# delete_groups ROLE LINES - delete those security groups (list_groups
# layout), retrying while AWS still reports a dependency (a network interface
# that outlives its instance for a short while).
delete_groups() {
    local role=$1 lines=$2 id name tries out
    if [ -z "$lines" ]; then
        info "no $role security group"
        return 0
    fi
    while IFS=$'\t' read -r id name; do
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
        info "security group $id ($name) deleted"
    done <<<"$lines"
}

# delete_key_pairs - delete the key pairs collect found.
delete_key_pairs() {
    local name
    if [ -z "$key_names" ]; then
        info "no key pair of project $project"
        return 0
    fi
    while read -r name; do
        aws_run ec2 delete-key-pair --key-name "$name" >/dev/null || die "could not delete key pair $name"
        info "key pair $name deleted (the local private key, if any, is kept)"
    done <<<"$key_names"
}

main() {
    parse_args "$@"
    validate_common
    check_cli_and_credentials
    collect
    if ! show; then
        info "no instances, security groups, key pairs, load balancer or Auto Scaling group of project $project: nothing to delete"
        return 0
    fi
    if [ "$dry_run" = 1 ]; then
        info "dry run: nothing deleted"
        return 0
    fi
    confirm
    if [ -n "$cluster" ]; then
        delete_cluster_front
        instance_lines=$(list_instances "" "$LIVE_STATES") || die "could not list instances"
    fi
    terminate_instances
    [ -z "$cluster" ] || delete_cluster_back
    delete_groups web "$web_groups"
    delete_groups pibl "$pibl_groups"
    delete_key_pairs
    info "project $project removed from $region"
}

main "$@"
