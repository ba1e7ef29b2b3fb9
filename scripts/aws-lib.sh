# shellcheck shell=bash
# aws-lib.sh - helpers shared by aws-deploy.sh, aws-status.sh and aws-destroy.sh.
#
# Sourced, never run. It wraps the AWS CLI so that every call carries the
# region and, when AWS_ENDPOINT_URL is set, an explicit --endpoint-url (older
# CLIs ignore the variable, and a call that escaped to the real AWS while the
# user meant an emulator would be a costly surprise). It checks the CLI and the
# credentials before anything else, and lists the project's instances by tag.
# It does not create or delete anything itself.
#
# Callers set: region, project, endpoint (may be empty), aws_cli.
# shellcheck disable=SC2154  # those four are set by the sourcing script

# The one describe-instances query all three scripts use. Text output gives one
# line per instance, tab separated, "None" for a missing value:
# id, state, private IP, public IP, Role tag, Port tag, Backends tag, Name tag.
# shellcheck disable=SC2034  # used by the scripts that source this file
readonly Q_INSTANCES="Reservations[].Instances[].[InstanceId,State.Name,PrivateIpAddress,PublicIpAddress,Tags[?Key=='Role']|[0].Value,Tags[?Key=='Port']|[0].Value,Tags[?Key=='Backends']|[0].Value,Tags[?Key=='Name']|[0].Value]"

# States of an instance that still exists (or is still billed, or still holds
# its network interface and so its security group).
readonly LIVE_STATES="pending,running,stopping,stopped,shutting-down"

# die MESSAGE... - print "NAME: MESSAGE" on stderr and exit 1.
die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

# warn MESSAGE... - print a warning on stderr, go on.
warn() {
    printf '%s: warning: %s\n' "${0##*/}" "$*" >&2
}

# info MESSAGE... - progress on stdout.
info() {
    printf '==> %s\n' "$*"
}

# aws_run ARGS... - run the AWS CLI with the region and the endpoint. Returns
# the CLI's status; its stdout and stderr pass through.
aws_run() {
    local extra=()
    if [ -n "${endpoint:-}" ]; then
        extra+=(--endpoint-url "$endpoint")
    fi
    AWS_PAGER='' "$aws_cli" "${extra[@]}" --region "$region" "$@"
}

# validate_common - refuse a project name that would not fit in resource names,
# tags and client tokens (64 characters in all), and a malformed region.
validate_common() {
    if ! [[ "$project" =~ ^[a-z0-9][a-z0-9-]{0,23}$ ]] || [[ "$project" == sg-* ]]; then
        die "project name \"$project\" must be 1-24 characters of a-z, 0-9 and -, starting with a letter or digit (not sg-)"
    fi
    [[ "$region" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] ||
        die "region \"$region\" does not look like an AWS region (e.g. us-east-1)"
}

# check_cli_and_credentials - make sure the CLI runs and the credentials are
# accepted (sts get-caller-identity), before any EC2 call. Exits with a message
# that says what is missing and how to provide it. Prints the account on success.
check_cli_and_credentials() {
    local out
    if ! command -v "$aws_cli" >/dev/null 2>&1; then
        die "the AWS CLI (\"$aws_cli\") is not installed or not on PATH.
  Install it (https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html,
  or 'apt-get install awscli' / 'pip install awscli'), then run 'aws configure'."
    fi
    if ! out=$(aws_run sts get-caller-identity --query '[Account,Arn]' --output text 2>&1); then
        die "the AWS credentials were not accepted (aws sts get-caller-identity failed):
  $out
  Provide credentials with 'aws configure', or AWS_PROFILE=NAME, or
  AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary ones).
  Region in use: $region (flag --region, or AWS_REGION / AWS_DEFAULT_REGION)."
    fi
    info "AWS account and identity: ${out//$'\t'/ } (region $region${endpoint:+, endpoint $endpoint})"
}

# list_instances_args ROLE STATES - set the caller's array instance_args to
# the describe-instances arguments list_instances sends (a dry run prints them).
list_instances_args() {
    local role=$1 states=$2
    instance_args=(ec2 describe-instances --filters "Name=tag:Project,Values=$project"
        "Name=instance-state-name,Values=$states")
    if [ -n "$role" ]; then
        instance_args+=("Name=tag:Role,Values=$role")
    fi
    instance_args+=(--query "$Q_INSTANCES" --output text)
}

# list_instances ROLE STATES - print the project's instances with that Role tag
# ("" = any role) in the given comma-separated states, one line each in the
# Q_INSTANCES layout, sorted by instance id so that every run sees the same
# order. Returns the CLI's status.
list_instances() {
    local instance_args=() out
    list_instances_args "$1" "$2"
    out=$(aws_run "${instance_args[@]}") || return 1
    if [ -n "$out" ]; then
        printf '%s\n' "$out" | sort
    fi
}

# http_probe URL - 0 when URL answers with a 2xx or 3xx within 5 s, else 1.
http_probe() {
    curl -fsS -o /dev/null --max-time 5 "$1" >/dev/null 2>&1
}
