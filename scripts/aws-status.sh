#!/usr/bin/env bash
# aws-status.sh - show what exists on EC2 for a PIBL project and whether PIBL answers.
#
# What it does: lists the project's instances (found by the Project tag, all
# states EC2 still reports, terminated ones included for the hour or so EC2
# keeps them), its security groups and key pairs, then asks PIBL's URL
# (http://PUBLIC-IP:PORT/, the port from the instance's Port tag) for an answer.
# On the larger topology (aws-deploy.sh --proxies, --web-asg) it also shows
# the Network Load Balancer with the health of each target (the PIBL
# instances) and the web servers' Auto Scaling group with its instances, and
# the URL asked is the load balancer's.
# Exit status: 0 when PIBL answers; 1 when it does not, when nothing is
# deployed, or on an error.
#
# What it refuses: nothing is created, changed or deleted.
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
probe=1

usage() {
    cat <<EOF
Usage: ${0##*/} [options]

Lists the instances, security groups and key pairs of a PIBL deployment and
checks whether PIBL answers. Exit 0 when it answers, 1 otherwise.

Options: [environment variable] (default: value)
  -r, --region REGION   AWS region [AWS_REGION, AWS_DEFAULT_REGION] (default: us-east-1)
  -p, --project NAME    Project tag [PIBL_PROJECT] (default: pibl)
      --no-probe        do not send the HTTP request to PIBL
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
        --no-probe) probe=0 ;;
        *) die "unknown argument \"$1\" (see -h)" ;;
        esac
        shift
    done
}

main() {
    local lines id state priv pub role port backends url="" groups keys
    parse_args "$@"
    validate_common
    check_cli_and_credentials >/dev/null
    lines=$(list_instances "" "$LIVE_STATES,terminated") || die "could not list instances"
    echo "Project $project in $region"
    echo "Instances:"
    if [ -z "$lines" ]; then
        echo "  (none)"
    else
        printf '  %-6s %-21s %-14s %-16s %-16s\n' ROLE INSTANCE STATE PRIVATE-IP PUBLIC-IP
        while IFS=$'\t' read -r id state priv pub role port backends _; do
            printf '  %-6s %-21s %-14s %-16s %-16s\n' "$role" "$id" "$state" "$priv" "$pub"
            if [ "$role" = pibl ] && [ "$state" = running ] && [ "$pub" != None ]; then
                [ "$port" != None ] || port=8080
                url="http://$pub:$port/"
                echo "         backends: $backends"
            fi
        done <<<"$lines"
    fi
    groups=$(aws_run ec2 describe-security-groups --filters "Name=tag:Project,Values=$project" \
        --query 'SecurityGroups[].GroupId' --output text) || die "could not list security groups"
    keys=$(aws_run ec2 describe-key-pairs --filters "Name=tag:Project,Values=$project" \
        --query 'KeyPairs[].KeyName' --output text) || die "could not list key pairs"
    echo "Security groups: ${groups:-(none)}" | tr '\t' ' '
    echo "Key pairs: ${keys:-(none)}" | tr '\t' ' '
    local cluster nlb
    cluster=$(show_cluster) || die "could not read the load balancer or the Auto Scaling group"
    [ -z "$cluster" ] || printf '%s\n' "$cluster"
    nlb=$(sed -n 's/^Load balancer: [^ ]* \([^ ]*\) .*/\1/p' <<<"$cluster")
    if [ -n "$nlb" ] && [ -n "$url" ]; then
        url="http://$nlb:${url##*:}"           # the proxies' port, on the load balancer
    fi
    if [ -z "$url" ]; then
        echo "PIBL: not running"
        exit 1
    fi
    if [ "$probe" = 0 ]; then
        echo "PIBL: $url (not probed)"
        exit 0
    fi
    if http_probe "$url"; then
        echo "PIBL: $url answers"
        exit 0
    fi
    echo "PIBL: $url does not answer (still building? see /var/log/pibl-setup.log on it)"
    exit 1
}

main "$@"
