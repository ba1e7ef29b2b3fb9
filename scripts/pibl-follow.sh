#!/usr/bin/env bash
# pibl-follow.sh - keep PIBL's backend list equal to an Auto Scaling group's in-service instances.
#
# What it does: asks the AWS CLI for the InService instances of one Auto
# Scaling group (describe-auto-scaling-groups), then for their private IPv4
# addresses (describe-instances), and turns them into "backend = IP:PORT"
# lines, sorted by address so the order does not depend on AWS's. It builds a
# candidate config from the current one: every "backend =" line removed, the
# new ones written where the first old one was (at the end if there was none),
# every other line kept byte for byte. When the backend lines are already
# those, it does nothing. Otherwise it checks the candidate with `pibl -t`
# (run in the config's folder, PIBL's working directory on the AWS hosts, so
# relative cache_dir and log_file are checked where PIBL uses them), puts it in
# place atomically (a temp file in the same folder with the old file's mode,
# and its owner when run as root, then mv -f) and runs the reload command.
# Meant for a systemd timer (every 30 s): one line on stdout when the list
# changes, nothing when it does not; errors on stderr; both reach the journal.
#
# What it refuses: a failed or odd lookup (a CLI exit status other than 0, a
# group that does not exist ("None"), no InService instance, an instance id or
# address that is not what EC2 sends, fewer addresses than instances) and a
# candidate that `pibl -t` rejects: the running config is left as it is, the
# reason is logged and the exit status is 1. A config with zero backends is
# never written. A failed reload puts the previous file back (a hard link kept
# beside it until then: the same inode, content, mode and mtime), so the list
# only counts as applied once PIBL has reloaded it, and the next run tries again. A config that is a
# symbolic link is refused (mv -f would replace the link, not its target).
#
# Limits: the followed backends get no name, no weight and no drain, and the
# old backend lines go whole (with their trailing comments); drain one from
# PIBL's status page instead. PIBL takes at most 64 backends (pibl -t says so).
# IPv4 only (the instances' primary private address). One group, one port.
# The CLI's own timeouts bound each call (60 s to connect, 60 s to read); the
# AWS CLI does not take the region from the instance, so give --region (or
# AWS_REGION) on EC2. Two runs at once are not locked out (a systemd timer
# never overlaps its service): the later one wins and the next run converges.
# Exit status: 0 unchanged, or applied and reloaded; 1 the host lacks the
# config, pibl or the CLI, or the lookup, check, write or reload failed
# (nothing applied); 2 bad arguments. Needs bash >= 4.4 and GNU
# coreutils (chmod/chown --reference).
set -euo pipefail

readonly ME=pibl-follow

group=""
config=/var/lib/pibl/pibl.cfg
web_port=80
pibl_bin=/opt/pibl/bin/pibl
reload_cmd="systemctl reload pibl"
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
region_from=${AWS_REGION:+AWS_REGION}
region_from=${region_from:-${AWS_DEFAULT_REGION:+AWS_DEFAULT_REGION}}
endpoint=${AWS_ENDPOINT_URL:-}
aws_cli=${PIBL_AWS_CLI:-aws}
verbose=0
aws_out=""     # the last AWS CLI call's stdout

work=""        # private temp folder (the CLI's stderr), removed on exit
candidate=""   # the new config, a temp file beside the config until it is moved
backup=""      # a hard link to the previous config until the reload succeeded

new_backends=()   # IP:PORT, sorted
old_lines=()      # the current "backend =" lines, as written
old_values=()     # their values (after "=", without comment)

usage() {
    cat <<EOF
Usage: ${0##*/} -g GROUP [options]

Sets PIBL's "backend =" lines to the private IPs of the InService instances of
an Auto Scaling group, checks the result with pibl -t and reloads PIBL. Does
nothing when they are already those. Exit 0 unchanged or applied, 1 failed
(nothing applied), 2 bad arguments.

Options: [environment variable] (default: value)
  -g, --group NAME      Auto Scaling group to follow (required)
  -c, --config FILE     PIBL's config file (default: /var/lib/pibl/pibl.cfg)
  -p, --port PORT       the web servers' port, 1-65535 (default: 80)
      --pibl PATH       PIBL binary, for pibl -t (default: /opt/pibl/bin/pibl)
      --reload CMD      reload command, run with bash -c
                        (default: systemctl reload pibl)
  -r, --region REGION   AWS region [AWS_REGION, AWS_DEFAULT_REGION]
                        (default: none, the AWS CLI's own configuration)
  -v, --verbose         also say what was found, and "unchanged"
  -h, --help            this help

The AWS CLI is [PIBL_AWS_CLI] (default: aws). AWS_ENDPOINT_URL, when set, is
passed as --endpoint-url to every AWS call.
EOF
}

# log MESSAGE... - one line on stderr, the journal's under systemd.
log() {
    printf '%s: %s\n' "$ME" "$*" >&2
}

# say MESSAGE... - one line on stdout (what changed; -v details).
say() {
    printf '%s: %s\n' "$ME" "$*"
}

# fail MESSAGE... - log the reason and exit 1; the config is as it was.
fail() {
    log "error: $*"
    exit 1
}

# bad_arg MESSAGE... - refuse the command line: exit 2.
bad_arg() {
    log "error: $* (see -h)"
    exit 2
}

# one_line TEXT - TEXT's non-blank lines joined by " | " (a CLI or pibl
# message, one journal line).
one_line() {
    local line out=""
    while IFS= read -r line; do
        [ -n "${line//[[:space:]]/}" ] || continue
        out+=${out:+ | }$line
    done <<<"$1"
    printf '%s' "${out:-(no message)}"
}

# join SEP ITEM... - the items joined by SEP.
join() {
    local sep=$1 out="" item
    shift
    for item in "$@"; do
        out+=${out:+$sep}$item
    done
    printf '%s' "$out"
}

cleanup() {
    [ -z "$candidate" ] || rm -f -- "$candidate"
    [ -z "$backup" ] || rm -f -- "$backup"
    [ -z "$work" ] || rm -rf -- "$work"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
        -h | --help) usage; exit 0 ;;
        -v | --verbose) verbose=1 ;;
        -g | --group | -c | --config | -p | --port | --pibl | --reload | -r | --region)
            [ $# -ge 2 ] || bad_arg "option $1 needs a value"
            case $1 in
            -g | --group) group=$2 ;;
            -c | --config) config=$2 ;;
            -p | --port) web_port=$2 ;;
            --pibl) pibl_bin=$2 ;;
            --reload) reload_cmd=$2 ;;
            -r | --region) region=$2; region_from=$1 ;;
            esac
            shift
            ;;
        *) bad_arg "unknown argument \"$1\"" ;;
        esac
        shift
    done
}

# validate_args - refuse what cannot be right whatever AWS says (exit 2).
validate_args() {
    [ -n "$group" ] || bad_arg "no group given: -g/--group NAME is required"
    if [ "${#group}" -gt 255 ] || [[ "$group" =~ [[:cntrl:]] ]]; then
        bad_arg "group name \"$group\" must be 1-255 characters without control characters"
    fi
    if ! [[ "$web_port" =~ ^[1-9][0-9]{0,4}$ ]] || [ "$web_port" -gt 65535 ]; then
        bad_arg "port \"$web_port\" must be a number from 1 to 65535 (-p/--port)"
    fi
    if [ -n "$region" ] && ! [[ "$region" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]]; then
        bad_arg "region \"$region\" (from $region_from) does not look like an AWS region (e.g. us-east-1)"
    fi
    [ -n "$config" ] || bad_arg "-c/--config needs a file name"
    [ -n "$pibl_bin" ] || bad_arg "--pibl needs a path"
    [ -n "$reload_cmd" ] || bad_arg "--reload needs a command (e.g. true to skip the reload)"
    [ -n "$aws_cli" ] || bad_arg "PIBL_AWS_CLI is set but empty"
}

# check_host - what must exist on this machine before asking AWS (exit 1).
check_host() {
    [ ! -L "$config" ] || fail "config file $config is a symbolic link: give the file itself (mv would replace the link)"
    [ -f "$config" ] || fail "config file $config does not exist or is not a file (-c/--config)"
    [ -r "$config" ] || fail "config file $config cannot be read"
    [ -w "$(dirname -- "$config")" ] ||
        fail "folder $(dirname -- "$config") is not writable: the new config is written there, then moved"
    [ -x "$pibl_bin" ] || fail "PIBL binary $pibl_bin is missing or not executable (--pibl)"
    command -v "$aws_cli" >/dev/null 2>&1 ||
        fail "the AWS CLI (\"$aws_cli\", PIBL_AWS_CLI) is not installed or not on PATH"
}

# aws_call ARGS... - run the CLI with the endpoint and the region; its stdout
# goes to aws_out. Exits 1 with the CLI's stderr when its status is not 0.
aws_call() {
    local extra=() rc=0
    [ -z "$endpoint" ] || extra+=(--endpoint-url "$endpoint")
    [ -z "$region" ] || extra+=(--region "$region")
    aws_out=$(AWS_PAGER='' "$aws_cli" "${extra[@]}" "$@" 2>"$work/stderr") || rc=$?
    if [ "$rc" != 0 ]; then
        fail "aws $1 $2 failed (exit $rc): $(one_line "$(cat "$work/stderr")"); backends left as they are"
    fi
}

# lookup - fill new_backends with IP:PORT of the group's InService instances,
# sorted by address; exits 1 on any answer that is not a usable list.
lookup() {
    local ids=() ips=() id ip
    # shellcheck disable=SC2016  # the backquotes are a JMESPath literal, not a command
    aws_call autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$group" \
        --query 'AutoScalingGroups[0].Instances[?LifecycleState==`InService`].InstanceId' --output text
    read -r -d '' -a ids <<<"$aws_out" || true
    if [ "${#ids[@]}" = 1 ] && [ "${ids[0]}" = None ]; then
        fail "Auto Scaling group \"$group\" not found${region:+ in $region} (the answer was None); backends left as they are"
    fi
    [ "${#ids[@]}" -gt 0 ] ||
        fail "Auto Scaling group \"$group\" has no InService instance; backends left as they are"
    for id in "${ids[@]}"; do
        [[ "$id" =~ ^i-[0-9a-f]{8,17}$ ]] ||
            fail "unexpected instance id \"$id\" from describe-auto-scaling-groups; backends left as they are"
    done
    [ "$verbose" = 0 ] || say "group $group: ${#ids[@]} InService: ${ids[*]}"

    aws_call ec2 describe-instances --instance-ids "${ids[@]}" \
        --query 'Reservations[].Instances[].PrivateIpAddress' --output text
    read -r -d '' -a ips <<<"$aws_out" || true
    for ip in "${ips[@]}"; do
        is_ipv4 "$ip" ||
            fail "instance address \"$ip\" from describe-instances is not a dotted IPv4 address; backends left as they are"
    done
    [ "${#ips[@]}" = "${#ids[@]}" ] ||
        fail "${#ids[@]} InService instances but ${#ips[@]} private addresses from describe-instances; backends left as they are"
    mapfile -t new_backends < <(printf '%s\n' "${ips[@]}" |
        sort -t . -k1,1n -k2,2n -k3,3n -k4,4n | sed "s/\$/:$web_port/")
}

# is_ipv4 TEXT - 0 when TEXT is a dotted quad of 0-255 without leading zeros
# (inet_aton would read 010 as octal).
is_ipv4() {
    local o
    [[ "$1" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || return 1
    for o in "${BASH_REMATCH[@]:1}"; do
        if ! [[ "$o" =~ ^(0|[1-9][0-9]{0,2})$ ]] || [ "$o" -gt 255 ]; then
            return 1
        fi
    done
}

# is_backend_line LINE - 0 when PIBL reads LINE as a "backend" key: blanks,
# "backend", blanks, "=" (pibl.cpp trims spaces and tabs around the key).
# BASH_REMATCH[1] is then the value, without blanks and comment.
is_backend_line() {
    local re=$'^[ \t]*backend[ \t]*=[ \t]*([^#]*[^# \t\r])?'
    [[ "$1" =~ $re ]]
}

# emit_line LINE HAS_NEWLINE - write one line of the candidate to stdout: an
# old backend line is recorded and dropped (the first becomes the new block),
# any other goes out as it was.
emit_line() {
    if is_backend_line "$1"; then
        old_values+=("${BASH_REMATCH[1]}")
        [ "${#old_lines[@]}" -gt 0 ] || printf 'backend = %s\n' "${new_backends[@]}"
        old_lines+=("$1")
        return 0
    fi
    printf '%s' "$1"
    [ "$2" = 0 ] || printf '\n'
}

# build_candidate - print the config with its backend lines replaced; fills
# old_lines and old_values. A last line without a newline stays without one,
# unless the new backend lines have to follow it.
build_candidate() {
    local line="" last_nl=1
    while IFS= read -r line; do
        emit_line "$line" 1
    done <"$config"
    if [ -n "$line" ]; then
        emit_line "$line" 0
        is_backend_line "$line" || last_nl=0
    fi
    if [ "${#old_lines[@]}" = 0 ]; then
        [ "$last_nl" = 1 ] || printf '\n'
        printf 'backend = %s\n' "${new_backends[@]}"
    fi
}

# unchanged - 0 when the current backend lines are exactly the new ones.
unchanged() {
    local i
    [ "${#old_lines[@]}" = "${#new_backends[@]}" ] || return 1
    for i in "${!new_backends[@]}"; do
        [ "${old_lines[$i]}" = "backend = ${new_backends[$i]}" ] || return 1
    done
}

# check_candidate - pibl -t on the candidate, from the config's folder; exits
# 1 with pibl's own message when it fails.
check_candidate() {
    local out rc=0
    out=$(cd "$(dirname -- "$config")" && "$pibl_bin" -t "./${candidate##*/}" 2>&1) || rc=$?
    if [ "$rc" != 0 ]; then
        fail "pibl -t rejected the new config (backends $(join ', ' "${new_backends[@]}"); exit $rc): $(one_line "$out"); $config left as it is"
    fi
}

# install_candidate - replace the config by the candidate (same folder, mode
# and, as root, owner; then mv -f), keeping a hard link to the old file.
install_candidate() {
    chmod --reference="$config" -- "$candidate" || fail "cannot copy the mode of $config"
    if [ "$(id -u)" = 0 ]; then
        chown --reference="$config" -- "$candidate" || fail "cannot copy the owner of $config"
    fi
    backup=$(mktemp "$(dirname -- "$config")/.${config##*/}.$ME.old.XXXXXX") ||
        fail "cannot create a file beside $config"
    ln -f -- "$config" "$backup" 2>/dev/null || cp -p -- "$config" "$backup" ||
        fail "cannot keep a copy of $config beside it"
    mv -f -- "$candidate" "$config" || fail "cannot move the new config over $config"
    candidate=""
}

# reload_pibl - run the reload command; on failure put the previous file back
# and exit 1, so the next run applies the list again.
reload_pibl() {
    local out rc=0 was
    was=$(join ', ' "${old_values[@]}")
    out=$(bash -c "$reload_cmd" 2>&1) || rc=$?
    if [ "$rc" != 0 ]; then
        if mv -f -- "$backup" "$config"; then
            backup=""
            fail "reload failed (\`$reload_cmd\`, exit $rc): $(one_line "$out"); previous $config restored, backends still ${was:-none}; the next run tries again"
        fi
        fail "reload failed (\`$reload_cmd\`, exit $rc): $(one_line "$out"); could not restore the previous $config either: it now names $(join ', ' "${new_backends[@]}")"
    fi
    say "backends now $(join ', ' "${new_backends[@]}") (was ${was:-none}); reloaded"
}

main() {
    local dir base
    parse_args "$@"
    validate_args
    check_host
    trap cleanup EXIT
    trap 'exit 129' HUP
    trap 'exit 130' INT
    trap 'exit 143' TERM
    work=$(mktemp -d "${TMPDIR:-/tmp}/$ME.XXXXXX")
    lookup
    dir=$(dirname -- "$config")
    base=$(basename -- "$config")
    [ "${#new_backends[@]}" -gt 0 ] || fail "no backend to write"   # never a config without one
    candidate=$(mktemp "$dir/.$base.$ME.new.XXXXXX") || fail "cannot create a file beside $config"
    build_candidate >"$candidate" || fail "cannot write the new config beside $config"
    if unchanged; then
        [ "$verbose" = 0 ] || say "unchanged: backends $(join ', ' "${new_backends[@]}")"
        exit 0
    fi
    check_candidate
    install_candidate
    reload_pibl
}

main "$@"
