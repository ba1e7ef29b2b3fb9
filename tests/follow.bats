#!/usr/bin/env bats
# follow.bats - offline tests of scripts/pibl-follow.sh.
#
# What it does: PIBL_AWS_CLI points at a stub `aws` written into the test's
# folder. The stub records every call (one line, its arguments joined by
# spaces) and answers from files the test writes: the Auto Scaling group's
# InService ids, an id -> private IP table for describe-instances (answered in
# the order the ids were asked, which is not address order), a verbatim answer
# or an exit status with a message for either call. The config check is the
# repository's real ./pibl -t; the reload command is a stub that counts reloads
# in a file, copies the config it sees, and fails on request.
# What it refuses: any network, any file outside $BATS_TEST_TMPDIR.

bats_require_minimum_version 1.5.0

REPO="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"
FOLLOW="$REPO/scripts/pibl-follow.sh"
PIBL="$REPO/pibl"

setup() {
    if [ ! -x "$PIBL" ]; then
        echo "missing $PIBL: run make first" >&2
        return 1
    fi
    unset AWS_ENDPOINT_URL AWS_REGION AWS_DEFAULT_REGION AWS_PROFILE
    STUB="$BATS_TEST_TMPDIR/stub"
    LIB="$BATS_TEST_TMPDIR/lib"        # stands for /var/lib/pibl
    CFG="$LIB/pibl.cfg"
    mkdir -p "$STUB" "$LIB" "$BATS_TEST_TMPDIR/bin" "$BATS_TEST_TMPDIR/tmp"
    export STUB CFG TMPDIR="$BATS_TEST_TMPDIR/tmp"    # the script's own temp folder goes there
    write_aws_stub "$BATS_TEST_TMPDIR/bin/aws"
    write_reload_stub "$BATS_TEST_TMPDIR/bin/reload"
    export PIBL_AWS_CLI="$BATS_TEST_TMPDIR/bin/aws"
    write_config "$CFG"
}

teardown() {
    if [ -n "${MOTO_PID:-}" ]; then
        kill -- "-$MOTO_PID" 2>/dev/null || kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
}

# write_aws_stub FILE - the stand-in for the AWS CLI (see the file header).
write_aws_stub() {
    cat >"$1" <<'EOF'
#!/usr/bin/env bash
printf '%s\n' "$*" >>"$STUB/calls"
args=("$@"); svc=""; ids=()
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
    --endpoint-url | --region) i=$((i + 1)) ;;
    autoscaling | ec2) [ -n "$svc" ] || svc=${args[i]} ;;
    --instance-ids)
        while [ $((i + 1)) -lt ${#args[@]} ] && [[ ${args[i + 1]} != --* ]]; do
            i=$((i + 1)); ids+=("${args[i]}")
        done ;;
    esac
done
[ -n "$svc" ] || { echo "aws stub: no service in: $*" >&2; exit 252; }
if [ -f "$STUB/$svc.rc" ]; then
    cat "$STUB/$svc.err" >&2 2>/dev/null
    exit "$(cat "$STUB/$svc.rc")"
fi
if [ -f "$STUB/$svc.out" ]; then
    cat "$STUB/$svc.out"
    exit 0
fi
if [ "$svc" = autoscaling ]; then
    cat "$STUB/group"
    exit 0
fi
out=()
for id in "${ids[@]}"; do
    ip=$(awk -v id="$id" '$1 == id { print $2 }' "$STUB/instances")
    if [ -z "$ip" ]; then
        echo "An error occurred (InvalidInstanceID.NotFound) when calling the DescribeInstances operation: The instance ID '$id' does not exist" >&2
        exit 254
    fi
    out+=("$ip")
done
(IFS=$'\t'; printf '%s\n' "${out[*]}")
EOF
    chmod +x "$1"
}

# write_reload_stub FILE - the reload command: counts, keeps the config it
# saw, or fails with a systemctl-like message when $STUB/reload.rc exists.
write_reload_stub() {
    cat >"$1" <<'EOF'
#!/usr/bin/env bash
if [ -f "$STUB/reload.rc" ]; then
    echo "Job for pibl.service failed: pibl.service is not active, cannot reload." >&2
    exit "$(cat "$STUB/reload.rc")"
fi
echo reload >>"$STUB/reloads"
cat "$CFG" >"$STUB/cfg-at-reload"
EOF
    chmod +x "$1"
}

# write_config FILE - a config with three named backends among other lines:
# comments, a blank line, a tab, a trailing comment and blanks, "backend=".
write_config() {
    printf '%s\n' \
        '# pibl.cfg - in front of the web Auto Scaling group' \
        'listen = 127.0.0.1' \
        'port = 0' \
        '' \
        '# the web servers' \
        'backend = web1 10.0.9.1:80' \
        $'\t# a comment between two backends' \
        'backend = web2 10.0.9.2:80   # trailing comment' \
        'backend=web3 10.0.9.3:80 weight=2' \
        'log_file = pibl.log' \
        'cache_dir = cache   ' \
        '#backend = 10.9.9.9:80 (commented out: stays)' >"$1"
}

# expected_config BACKEND... - write_config's file with those backend lines.
expected_config() {
    printf '%s\n' \
        '# pibl.cfg - in front of the web Auto Scaling group' \
        'listen = 127.0.0.1' \
        'port = 0' \
        '' \
        '# the web servers'
    printf 'backend = %s\n' "$@"
    printf '%s\n' \
        $'\t# a comment between two backends' \
        'log_file = pibl.log' \
        'cache_dir = cache   ' \
        '#backend = 10.9.9.9:80 (commented out: stays)'
}

# group_has ID=IP... - the group's InService instances, in this order (the
# order AWS answers in), and their private addresses.
group_has() {
    local pair ids=()
    : >"$STUB/instances"
    for pair in "$@"; do
        ids+=("${pair%%=*}")
        printf '%s %s\n' "${pair%%=*}" "${pair#*=}" >>"$STUB/instances"
    done
    (IFS=$'\t'; printf '%s\n' "${ids[*]}") >"$STUB/group"
}

# the three first instances: AWS order is neither address nor text order.
THREE=(i-0a1b2c3d00000001=10.0.10.5 i-0a1b2c3d00000002=10.0.2.1 i-0a1b2c3d00000003=10.0.9.7)
SORTED=(10.0.2.1:80 10.0.9.7:80 10.0.10.5:80)

# follow ARGS... - run the script on $CFG with the real pibl and the reload stub.
follow() {
    run --separate-stderr timeout 20 "$FOLLOW" -g web-asg -c "$CFG" --pibl "$PIBL" \
        --reload "$BATS_TEST_TMPDIR/bin/reload" "$@"
}

n_reloads() {
    if [ -f "$STUB/reloads" ]; then wc -l <"$STUB/reloads"; else echo 0; fi
}

n_calls() {
    if [ -f "$STUB/calls" ]; then wc -l <"$STUB/calls"; else echo 0; fi
}

# fingerprint FILE - inode, mtime (ns), mode, size.
fingerprint() {
    stat -c '%i %y %a %s' "$1"
}

# snapshot - remember the config as it is now (before a run that must not touch it).
snapshot() {
    touch -d '2020-01-02 03:04:05' "$CFG"     # a rewrite, even in the same second, shows
    cp -p "$CFG" "$BATS_TEST_TMPDIR/cfg-before"
    BEFORE=$(fingerprint "$CFG")
    RELOADS_BEFORE=$(n_reloads)
}

# assert_no_leftovers - no temp file beside the config or in TMPDIR.
assert_no_leftovers() {
    [ "$(ls -A "$LIB")" = pibl.cfg ]
    [ -z "$(ls -A "$TMPDIR")" ]
}

# assert_untouched - the config is the same file, byte for byte, nothing left
# behind, and there was no reload since snapshot.
assert_untouched() {
    [ "$(fingerprint "$CFG")" = "$BEFORE" ]
    cmp "$BATS_TEST_TMPDIR/cfg-before" "$CFG"
    [ "$(n_reloads)" = "$RELOADS_BEFORE" ]
    assert_no_leftovers
}

@test "first run: the three looked-up addresses replace the old backends in place, sorted; other lines byte for byte; one reload" {
    group_has "${THREE[@]}"
    chmod 640 "$CFG"
    follow
    echo "status=$status out=$output err=$stderr"
    [ "$status" = 0 ]
    expected_config "${SORTED[@]}" >"$BATS_TEST_TMPDIR/expected"
    cmp "$BATS_TEST_TMPDIR/expected" "$CFG"
    [ "$(stat -c %a "$CFG")" = 640 ]
    [ "$(n_reloads)" = 1 ]
    cmp "$BATS_TEST_TMPDIR/expected" "$STUB/cfg-at-reload"     # moved in place before the reload
    [ "$output" = "pibl-follow: backends now 10.0.2.1:80, 10.0.9.7:80, 10.0.10.5:80 (was web1 10.0.9.1:80, web2 10.0.9.2:80, web3 10.0.9.3:80 weight=2); reloaded" ]
    [ -z "$stderr" ]
    assert_no_leftovers
    "$PIBL" -t "$CFG"
}

@test "the lookup: the group's InService ids, then their private addresses; --region, else AWS_REGION, else none" {
    group_has "${THREE[@]}"
    follow -r eu-west-1
    [ "$status" = 0 ]
    [ "$(n_calls)" = 2 ]
    # shellcheck disable=SC2016  # the backquotes are JMESPath, as the script sends them
    [ "$(sed -n 1p "$STUB/calls")" = '--region eu-west-1 autoscaling describe-auto-scaling-groups --auto-scaling-group-names web-asg --query AutoScalingGroups[0].Instances[?LifecycleState==`InService`].InstanceId --output text' ]
    [ "$(sed -n 2p "$STUB/calls")" = '--region eu-west-1 ec2 describe-instances --instance-ids i-0a1b2c3d00000001 i-0a1b2c3d00000002 i-0a1b2c3d00000003 --query Reservations[].Instances[].PrivateIpAddress --output text' ]

    rm "$STUB/calls"
    AWS_REGION=sa-east-1 AWS_DEFAULT_REGION=us-west-2 follow
    [ "$status" = 0 ]
    [ "$(grep -c -- '^--region sa-east-1 ' "$STUB/calls")" = 2 ]
    rm "$STUB/calls"
    AWS_DEFAULT_REGION=us-west-2 follow
    [ "$(grep -c -- '^--region us-west-2 ' "$STUB/calls")" = 2 ]
    rm "$STUB/calls"
    AWS_REGION=sa-east-1 follow --region ap-south-1
    [ "$(grep -c -- '^--region ap-south-1 ' "$STUB/calls")" = 2 ]
    rm "$STUB/calls"
    follow
    [ "$status" = 0 ]
    [ "$(n_calls)" = 2 ]
    [ "$(grep -c -- '--region' "$STUB/calls")" = 0 ]
}

@test "a second run with the same answer, in any order, writes nothing and does not reload" {
    group_has "${THREE[@]}"
    follow
    [ "$status" = 0 ]
    [ "$(n_reloads)" = 1 ]
    snapshot
    follow
    [ "$status" = 0 ]
    [ -z "$output" ]
    [ -z "$stderr" ]
    assert_untouched
    group_has "${THREE[2]}" "${THREE[0]}" "${THREE[1]}"          # AWS answers in another order
    follow -v
    echo "out=$output err=$stderr"
    [ "$status" = 0 ]
    assert_untouched
    [[ "$output" == *"pibl-follow: unchanged: backends 10.0.2.1:80, 10.0.9.7:80, 10.0.10.5:80"* ]]
}

@test "a replaced instance: a new file, one more reload, the log line names the new list" {
    group_has "${THREE[@]}"
    follow
    [ "$status" = 0 ]
    snapshot
    group_has "${THREE[0]}" i-0a1b2c3d00000004=10.0.3.30 "${THREE[2]}"   # 10.0.2.1 replaced
    follow
    echo "out=$output err=$stderr"
    [ "$status" = 0 ]
    expected_config 10.0.3.30:80 10.0.9.7:80 10.0.10.5:80 >"$BATS_TEST_TMPDIR/expected"
    cmp "$BATS_TEST_TMPDIR/expected" "$CFG"
    [ "$(fingerprint "$CFG")" != "$BEFORE" ]
    [ "$(n_reloads)" = 2 ]
    [ "$output" = "pibl-follow: backends now 10.0.3.30:80, 10.0.9.7:80, 10.0.10.5:80 (was 10.0.2.1:80, 10.0.9.7:80, 10.0.10.5:80); reloaded" ]
}

@test "an added instance (3 -> 4): four backends in address order, one more reload" {
    group_has "${THREE[@]}"
    follow
    [ "$status" = 0 ]
    group_has "${THREE[@]}" i-0a1b2c3d00000005=10.0.9.10
    follow
    echo "out=$output err=$stderr"
    [ "$status" = 0 ]
    expected_config 10.0.2.1:80 10.0.9.7:80 10.0.9.10:80 10.0.10.5:80 >"$BATS_TEST_TMPDIR/expected"
    cmp "$BATS_TEST_TMPDIR/expected" "$CFG"
    [ "$(n_reloads)" = 2 ]
    [[ "$output" == "pibl-follow: backends now 10.0.2.1:80, 10.0.9.7:80, 10.0.9.10:80, 10.0.10.5:80 (was "* ]]
    [ "$(grep -c '^backend = ' "$STUB/cfg-at-reload")" = 4 ]
}

@test "-p PORT: the followed backends use the web port" {
    group_has "${THREE[@]}"
    follow -p 8081
    [ "$status" = 0 ]
    expected_config 10.0.2.1:8081 10.0.9.7:8081 10.0.10.5:8081 >"$BATS_TEST_TMPDIR/expected"
    cmp "$BATS_TEST_TMPDIR/expected" "$CFG"
}

@test "the CLI fails (exit 255, then 254 on describe-instances): config untouched, no reload, exit 1, the CLI's message" {
    group_has "${THREE[@]}"
    snapshot
    echo 255 >"$STUB/autoscaling.rc"
    printf '\nAn error occurred (AccessDenied) when calling the DescribeAutoScalingGroups operation: not authorized\n' >"$STUB/autoscaling.err"
    follow
    echo "out=$output err=$stderr"
    [ "$status" = 1 ]
    assert_untouched
    [ -z "$output" ]
    [ "$stderr" = "pibl-follow: error: aws autoscaling describe-auto-scaling-groups failed (exit 255): An error occurred (AccessDenied) when calling the DescribeAutoScalingGroups operation: not authorized; backends left as they are" ]
    [ "$(n_calls)" = 1 ]                                   # no describe-instances after a failure

    rm "$STUB/autoscaling.rc"
    echo 254 >"$STUB/ec2.rc"
    echo "An error occurred (RequestLimitExceeded) when calling the DescribeInstances operation: Request limit exceeded." >"$STUB/ec2.err"
    follow
    [ "$status" = 1 ]
    assert_untouched
    [[ "$stderr" == *"aws ec2 describe-instances failed (exit 254): An error occurred (RequestLimitExceeded)"* ]]
}

@test "no InService instance: config untouched, no reload, exit 1, says so" {
    snapshot
    printf '\n' >"$STUB/group"                    # the text output of an empty list
    follow
    echo "out=$output err=$stderr"
    [ "$status" = 1 ]
    assert_untouched
    [ "$stderr" = 'pibl-follow: error: Auto Scaling group "web-asg" has no InService instance; backends left as they are' ]
    [ "$(n_calls)" = 1 ]
}

@test "a group that does not exist (None): config untouched, no reload, exit 1, says so" {
    snapshot
    printf 'None\n' >"$STUB/group"
    follow -r us-east-1
    echo "out=$output err=$stderr"
    [ "$status" = 1 ]
    assert_untouched
    [ "$stderr" = 'pibl-follow: error: Auto Scaling group "web-asg" not found in us-east-1 (the answer was None); backends left as they are' ]
}

@test "an answer that is not an address or an instance id, or fewer addresses than instances: config untouched, exit 1" {
    group_has "${THREE[@]}"
    snapshot
    local bad
    for bad in None web1.internal 10.0.01.5 10.0.256.1 10.0.1 '10.0.1.5:80' '::1'; do
        printf '10.0.1.4\t%s\t10.0.1.6\n' "$bad" >"$STUB/ec2.out"
        follow
        echo "$bad: status=$status err=$stderr"
        [ "$status" = 1 ]
        assert_untouched
        [ "$stderr" = "pibl-follow: error: instance address \"$bad\" from describe-instances is not a dotted IPv4 address; backends left as they are" ]
    done
    printf '10.0.1.4\t10.0.1.6\n' >"$STUB/ec2.out"
    follow
    [ "$status" = 1 ]
    assert_untouched
    [[ "$stderr" == *"3 InService instances but 2 private addresses from describe-instances"* ]]
    rm "$STUB/ec2.out"
    printf 'i-0a1b2c3d00000001\tsomething-else\n' >"$STUB/group"
    follow
    [ "$status" = 1 ]
    assert_untouched
    [[ "$stderr" == *'unexpected instance id "something-else" from describe-auto-scaling-groups'* ]]
}

@test "a candidate that pibl -t rejects: config untouched, no reload, exit 1, pibl's own message" {
    group_has "${THREE[@]}"
    printf 'prot = 8080\n' >>"$CFG"                       # a typo PIBL refuses
    snapshot
    follow
    echo "out=$output err=$stderr"
    [ "$status" = 1 ]
    assert_untouched
    [[ "$stderr" == "pibl-follow: error: pibl -t rejected the new config (backends 10.0.2.1:80, 10.0.9.7:80, 10.0.10.5:80; exit 2): pibl: ./.pibl.cfg.pibl-follow.new."*':13: unknown key "prot"; '"$CFG left as it is" ]]

    sed -i '$d' "$CFG"                                     # a valid config, but 65 instances
    local i many=()
    for ((i = 1; i <= 65; i++)); do
        many+=("$(printf 'i-%017x=10.0.1.%d' "$i" "$i")")
    done
    group_has "${many[@]}"
    snapshot
    follow
    [ "$status" = 1 ]
    assert_untouched
    [[ "$stderr" == *"too many backends (at most 64)"* ]]
}

@test "pibl -t runs in the config's folder, PIBL's working directory: a relative cache_dir that is a file there is refused" {
    group_has "${THREE[@]}"
    echo 'not a folder' >"$LIB/cache"
    snapshot
    cd "$BATS_TEST_TMPDIR"                                 # elsewhere, ./cache does not exist
    follow
    echo "out=$output err=$stderr"
    [ "$status" = 1 ]
    [ "$(fingerprint "$CFG")" = "$BEFORE" ]
    [ "$(n_reloads)" = 0 ]
    [[ "$stderr" == *"pibl -t rejected the new config"*"cache"* ]]
}

@test "a failed reload puts the previous file back (same inode), exits 1 and says so; the next run applies it" {
    group_has "${THREE[@]}"
    snapshot
    echo 1 >"$STUB/reload.rc"
    follow
    echo "out=$output err=$stderr"
    [ "$status" = 1 ]
    assert_untouched
    [ "$stderr" = "pibl-follow: error: reload failed (\`$BATS_TEST_TMPDIR/bin/reload\`, exit 1): Job for pibl.service failed: pibl.service is not active, cannot reload.; previous $CFG restored, backends still web1 10.0.9.1:80, web2 10.0.9.2:80, web3 10.0.9.3:80 weight=2; the next run tries again" ]
    rm "$STUB/reload.rc"
    follow
    [ "$status" = 0 ]
    [ "$(n_reloads)" = 1 ]
    expected_config "${SORTED[@]}" >"$BATS_TEST_TMPDIR/expected"
    cmp "$BATS_TEST_TMPDIR/expected" "$CFG"
}

@test "a config without backend lines gets them at the end; a last line without a newline is kept as it is" {
    group_has "${THREE[@]}"
    printf '# no backends yet\nport = 0\n' >"$CFG"
    follow
    echo "out=$output err=$stderr"
    [ "$status" = 0 ]
    { printf '# no backends yet\nport = 0\n'; printf 'backend = %s\n' "${SORTED[@]}"; } >"$BATS_TEST_TMPDIR/expected"
    cmp "$BATS_TEST_TMPDIR/expected" "$CFG"
    [[ "$output" == *"(was none); reloaded" ]]

    printf 'port = 0\nbackend = 10.0.0.1:80\nlog_file = pibl.log' >"$CFG"     # no final newline
    follow
    [ "$status" = 0 ]
    { printf 'port = 0\n'; printf 'backend = %s\n' "${SORTED[@]}"; printf 'log_file = pibl.log'; } >"$BATS_TEST_TMPDIR/expected"
    cmp "$BATS_TEST_TMPDIR/expected" "$CFG"

    printf 'port = 0\nlog_file = pibl.log' >"$CFG"          # neither: a newline, then the block
    follow
    [ "$status" = 0 ]
    { printf 'port = 0\nlog_file = pibl.log\n'; printf 'backend = %s\n' "${SORTED[@]}"; } >"$BATS_TEST_TMPDIR/expected"
    cmp "$BATS_TEST_TMPDIR/expected" "$CFG"
}

@test "AWS_ENDPOINT_URL reaches every CLI call as --endpoint-url" {
    group_has "${THREE[@]}"
    AWS_ENDPOINT_URL=http://127.0.0.1:4566 follow -r us-east-1
    [ "$status" = 0 ]
    [ "$(n_calls)" = 2 ]
    [ "$(grep -c -- '^--endpoint-url http://127.0.0.1:4566 --region us-east-1 ' "$STUB/calls")" = 2 ]
    rm "$STUB/calls"
    group_has "${THREE[0]}"
    follow
    [ "$status" = 0 ]
    [ "$(n_calls)" = 2 ]
    [ "$(grep -c -- '--endpoint-url' "$STUB/calls")" = 0 ]
}

@test "bad arguments exit 2 with a message naming the problem, before any AWS call" {
    snapshot
    run --separate-stderr "$FOLLOW" -c "$CFG"
    [ "$status" = 2 ]
    [ "$stderr" = "pibl-follow: error: no group given: -g/--group NAME is required (see -h)" ]
    local port
    for port in abc 0 65536 080 -1 ''; do
        follow -p "$port"
        echo "port=$port status=$status err=$stderr"
        [ "$status" = 2 ]
        [ "$stderr" = "pibl-follow: error: port \"$port\" must be a number from 1 to 65535 (-p/--port) (see -h)" ]
    done
    follow --bogus
    [ "$status" = 2 ]
    [ "$stderr" = 'pibl-follow: error: unknown argument "--bogus" (see -h)' ]
    follow extra
    [ "$status" = 2 ]
    [[ "$stderr" == *'unknown argument "extra"'* ]]
    follow -g
    [ "$status" = 2 ]
    [ "$stderr" = "pibl-follow: error: option -g needs a value (see -h)" ]
    follow --region 'us east'
    [ "$status" = 2 ]
    [[ "$stderr" == *'region "us east" (from --region) does not look like an AWS region'* ]]
    AWS_REGION=nowhere follow
    [ "$status" = 2 ]
    [[ "$stderr" == *'region "nowhere" (from AWS_REGION) does not look like an AWS region'* ]]
    follow --reload ''
    [ "$status" = 2 ]
    [[ "$stderr" == *"--reload needs a command"* ]]
    [ "$(n_calls)" = 0 ]
    assert_untouched
}

@test "what the host lacks (the config, pibl, the CLI) or a config that is a link exits 1 before any AWS call" {
    group_has "${THREE[@]}"
    run --separate-stderr "$FOLLOW" -g web-asg -c "$LIB/missing.cfg" --pibl "$PIBL"
    [ "$status" = 1 ]
    [ "$stderr" = "pibl-follow: error: config file $LIB/missing.cfg does not exist or is not a file (-c/--config)" ]
    follow --pibl "$BATS_TEST_TMPDIR/no-pibl"
    [ "$status" = 1 ]
    [[ "$stderr" == *"PIBL binary $BATS_TEST_TMPDIR/no-pibl is missing or not executable (--pibl)" ]]
    PIBL_AWS_CLI=no-such-aws-cli follow
    [ "$status" = 1 ]
    [[ "$stderr" == *'the AWS CLI ("no-such-aws-cli", PIBL_AWS_CLI) is not installed or not on PATH' ]]
    ln -s pibl.cfg "$LIB/link.cfg"
    follow -c "$LIB/link.cfg"
    [ "$status" = 1 ]
    [[ "$stderr" == *"config file $LIB/link.cfg is a symbolic link: give the file itself"* ]]
    [ -L "$LIB/link.cfg" ]
    [ "$(n_calls)" = 0 ]
    [ ! -e "$LIB/missing.cfg" ]
}

@test "-h names every option, its environment variable and its default" {
    run --separate-stderr "$FOLLOW" -h
    [ "$status" = 0 ]
    local want
    for want in '-g, --group NAME' '-c, --config FILE' '/var/lib/pibl/pibl.cfg' '-p, --port PORT' '(default: 80)' \
        '--pibl PATH' '/opt/pibl/bin/pibl' '--reload CMD' 'systemctl reload pibl' '-r, --region REGION' \
        'AWS_REGION' 'AWS_DEFAULT_REGION' '-v, --verbose' '-h, --help' 'PIBL_AWS_CLI' 'AWS_ENDPOINT_URL'; do
        [[ "$output" == *"$want"* ]] || { echo "usage lacks: $want"; return 1; }
    done
}

@test "the real AWS CLI against a local emulator (moto_server on 127.0.0.1), when installed: 3 instances, then 4" {
    command -v moto_server >/dev/null 2>&1 || skip "moto_server not installed: emulator run skipped"
    command -v python3 >/dev/null 2>&1 || skip "python3 not installed"
    local real_aws port ami _
    real_aws=$(command -v aws) || skip "the AWS CLI is not installed"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    setsid moto_server -H 127.0.0.1 -p "$port" >"$BATS_TEST_TMPDIR/moto.log" 2>&1 3>&- &
    MOTO_PID=$!
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
    export PIBL_AWS_CLI=$real_aws AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
    local aws=("$real_aws" --endpoint-url "$AWS_ENDPOINT_URL" --region us-east-1)
    for _ in $(seq 1 40); do
        "${aws[@]}" sts get-caller-identity >/dev/null 2>&1 && break
        sleep 0.5
    done
    ami=$("${aws[@]}" ec2 describe-images --query 'Images[0].ImageId' --output text)
    "${aws[@]}" autoscaling create-launch-configuration --launch-configuration-name web \
        --image-id "$ami" --instance-type t3.micro
    "${aws[@]}" autoscaling create-auto-scaling-group --auto-scaling-group-name web-asg \
        --launch-configuration-name web --min-size 1 --max-size 5 --desired-capacity 3 \
        --availability-zones us-east-1a
    follow -r us-east-1
    echo "out=$output err=$stderr"
    [ "$status" = 0 ]
    [ "$(grep -c '^backend = ' "$CFG")" = 3 ]
    [ "$(n_reloads)" = 1 ]
    "${aws[@]}" ec2 describe-instances --query 'Reservations[].Instances[].PrivateIpAddress' --output text |
        tr '\t' '\n' | sort -t . -k1,1n -k2,2n -k3,3n -k4,4n | sed 's/^/backend = /; s/$/:80/' >"$BATS_TEST_TMPDIR/want"
    grep '^backend = ' "$CFG" | cmp "$BATS_TEST_TMPDIR/want" -
    follow -r us-east-1
    [ "$status" = 0 ]
    [ -z "$output" ]
    [ "$(n_reloads)" = 1 ]
    "${aws[@]}" autoscaling set-desired-capacity --auto-scaling-group-name web-asg --desired-capacity 4
    follow -r us-east-1
    [ "$status" = 0 ]
    [ "$(grep -c '^backend = ' "$CFG")" = 4 ]
    [ "$(n_reloads)" = 2 ]
    snapshot
    follow -r us-east-1 -g no-such-group
    [ "$status" = 1 ]
    assert_untouched
    [[ "$stderr" == *'Auto Scaling group "no-such-group" not found in us-east-1 (the answer was None)'* ]]
}

@test "shellcheck -x scripts/pibl-follow.sh is clean" {
    command -v shellcheck >/dev/null || skip "shellcheck is not installed"
    cd "$REPO"
    shellcheck -x scripts/pibl-follow.sh
}
