#!/usr/bin/env bats
# core.bats - PIBL's command line, config checking, startup line, logging, signals and concurrency.
# Every process runs in $BATS_TEST_TMPDIR on 127.0.0.1 and is killed by PID in teardown (helpers.bash).

bats_require_minimum_version 1.5.0
load helpers

setup() { helpers_setup; }
teardown() { helpers_teardown; }

# good_cfg FILE: a valid config (backends need not be listening for -t).
good_cfg() {
    printf '# a good config\nport = 0\nbackend = 127.0.0.1:8081\nbackend = 127.0.0.1:8082\n' >"$1"
    printf 'log_file = %s\nlog_headers = off\nconnect_timeout = 3\n' "$BATS_TEST_TMPDIR/x.log" >>"$1"
}

# check_bad_cfg LINE_NO CONTENT: a config whose line LINE_NO is CONTENT must make `pibl -t` print one message on
# stderr naming the file and the line, and exit 2.
check_bad_cfg() {
    local line_no=$1 content=$2
    cd "$BATS_TEST_TMPDIR" || return 1
    {
        echo "# bad config: line $line_no is wrong"
        echo "port = 0"
        echo "backend = 127.0.0.1:8081"
        echo "$content"
        echo "log_file = x.log"
    } >bad.cfg
    run --separate-stderr timeout 5 "$PIBL_BIN" -t bad.cfg
    echo "case: line $line_no = '$content' -> status $status, stdout '$output', stderr '$stderr'"
    [ "$status" -eq 2 ]
    [ "$(printf '%s\n' "$stderr" | grep -c .)" -eq 1 ]
    local re="^pibl: (.*/)?bad\\.cfg:$line_no: "
    [[ "$stderr" =~ $re ]]
    [[ "$output" != *OK* ]]
}

@test "cli: -h prints usage on stdout and exits 0" {
    run --separate-stderr timeout 5 "$PIBL_BIN" -h
    echo "status $status stdout '$output' stderr '$stderr'"
    [ "$status" -eq 0 ]
    [[ "${output,,}" == *usage* ]]
}

@test "cli: the test origin's -h and --help print its usage on stdout and exit 0" {
    local opt
    for opt in -h --help; do
        run --separate-stderr timeout 5 "$ORIGIN_BIN" "$opt"
        echo "$opt: status $status stdout '$output' stderr '$stderr'"
        [ "$status" -eq 0 ]
        [[ "$output" == "usage: pibl-origin -p PORT"* ]]
    done
}

@test "cli: -t on a good config prints 'pibl: CONFIG: OK' and exits 0" {
    cd "$BATS_TEST_TMPDIR" || return 1
    good_cfg good.cfg
    run --separate-stderr timeout 5 "$PIBL_BIN" -t good.cfg
    echo "status $status stdout '$output' stderr '$stderr'"
    [ "$status" -eq 0 ]
    [ "$output" = "pibl: good.cfg: OK" ]
}

@test "cli: the shipped pibl.cfg passes -t and names three backends" {
    [ -f "$PIBL_ROOT/pibl.cfg" ]
    run --separate-stderr timeout 5 "$PIBL_BIN" -t "$PIBL_ROOT/pibl.cfg"
    echo "status $status stdout '$output' stderr '$stderr'"
    [ "$status" -eq 0 ]
    [[ "$output" == *": OK" ]]
    [ "$(grep -Ec '^[[:space:]]*backend[[:space:]]*=' "$PIBL_ROOT/pibl.cfg")" -eq 3 ]
}

@test "cli: -t rejects an unknown key, naming file and line, exit 2" {
    check_bad_cfg 4 "prot = 8080"
}

@test "cli: -t rejects a bad port (out of range, not a number), exit 2" {
    check_bad_cfg 4 "port = 70000"
    check_bad_cfg 4 "port = 80x"
    check_bad_cfg 4 "port = -1"
}

@test "cli: -t rejects a bad number, exit 2" {
    check_bad_cfg 4 "connect_timeout = abc"
    check_bad_cfg 4 "max_body_bytes = 12abc"
    check_bad_cfg 4 "client_timeout = 99999999999999999999999"
    check_bad_cfg 4 "max_header_bytes ="
}

@test "cli: -t rejects a garbage line and a bad on/off value, exit 2" {
    check_bad_cfg 4 "this line is garbage"
    check_bad_cfg 4 "log_headers = maybe"
}

@test "cli: -t rejects a bad backend, exit 2" {
    check_bad_cfg 4 "backend = 127.0.0.1"
    check_bad_cfg 4 "backend = 127.0.0.1:99999"
}

@test "cli: -t rejects a config without backends, naming the file, exit 2" {
    cd "$BATS_TEST_TMPDIR" || return 1
    printf '# no backend\nport = 0\nlog_file = x.log\n' >nobackend.cfg
    run --separate-stderr timeout 5 "$PIBL_BIN" -t nobackend.cfg
    echo "status $status stdout '$output' stderr '$stderr'"
    [ "$status" -eq 2 ]
    [ "$(printf '%s\n' "$stderr" | grep -c .)" -eq 1 ]
    [[ "$stderr" == "pibl: "*nobackend.cfg* ]]
}

@test "cli: -t on a missing file exits 2 with a message" {
    cd "$BATS_TEST_TMPDIR" || return 1
    run --separate-stderr timeout 5 "$PIBL_BIN" -t does-not-exist.cfg
    echo "status $status stdout '$output' stderr '$stderr'"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *does-not-exist.cfg* ]]
}

@test "cli: bad arguments (no args, missing TTL, bad TTL, unknown option) exit 2 with a message on stderr" {
    cd "$BATS_TEST_TMPDIR" || return 1
    good_cfg good.cfg
    local args
    for args in "" "good.cfg" "good.cfg abc" "good.cfg 12x" "good.cfg -1" "good.cfg 31536001" \
                "good.cfg 10 extra" "-x" "-t"; do
        # shellcheck disable=SC2086  # word splitting of the argument list is wanted
        run --separate-stderr timeout 5 "$PIBL_BIN" $args
        echo "args '$args' -> status $status stdout '$output' stderr '$stderr'"
        [ "$status" -eq 2 ]
        [ -n "$stderr" ]
        [[ "$output" != *listening* ]]
    done
}

@test "cli: -V and --version print the version of pibl.h on stdout and exit 0" {
    local want
    want=$(sed -n -E 's/^#define PIBL_VERSION[[:space:]]+"([^"]+)".*/\1/p' "$PIBL_ROOT/pibl.h")
    [ -n "$want" ]
    for flag in -V --version; do
        run --separate-stderr timeout 5 "$PIBL_BIN" "$flag"
        echo "$flag -> status $status stdout '$output' stderr '$stderr'"
        [ "$status" -eq 0 ]
        [ "$output" = "pibl $want" ]
        [ -z "$stderr" ]
    done
}

@test "cli: each wrong command line gets a message naming what is wrong" {
    cd "$BATS_TEST_TMPDIR" || return 1
    good_cfg good.cfg
    local -a cases=(
        "-t|-t needs the config file"
        "-t good.cfg extra|-t takes one config file"
        "-x|unknown option \"-x\""
        "--frobnicate|unknown option \"--frobnicate\""
        "good.cfg|missing TTL after CONFIG"
        "good.cfg 10 extra|unexpected argument \"extra\""
        "-V now|-V takes no arguments"
    )
    local c args want
    for c in "${cases[@]}"; do
        args=${c%%|*}
        want=${c#*|}
        # shellcheck disable=SC2086  # word splitting of the argument list is wanted
        run --separate-stderr timeout 5 "$PIBL_BIN" $args
        echo "args '$args' -> status $status stderr '$stderr'"
        [ "$status" -eq 2 ]
        [[ "$(printf '%s\n' "$stderr" | head -n 1)" == "pibl: $want"* ]]
    done
}

@test "startup: prints 'pibl: listening on ADDR:PORT, N backends' with the real port and backend count" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl
    run grep -E "^pibl: listening on 127\.0\.0\.1:$PIBL_PORT, 3 backends$" "$PIBL_OUT"
    [ "$status" -eq 0 ]
    [ "$PIBL_PORT" -gt 0 ]
    run pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)"
    [ "$output" = 200 ]
}

@test "startup: one backend reads '1 backend'" {
    start_origin o1
    start_pibl
    grep -Eq "^pibl: listening on 127\.0\.0\.1:$PIBL_PORT, 1 backend$" "$PIBL_OUT"
}

@test "log: one line per exchange in stdout and the log file, with all fields" {
    start_origin o1
    start_pibl
    run pcurl -o /dev/null -w '%{http_code}' "$(url '/_echo?logprobe=1')"
    [ "$output" = 200 ]
    # Exact shape: UTC time to the millisecond, ms with two decimals, cache=- with the cache off, then the
    # User-Agent curl sent and ref="-" (no Referer), nothing after.
    local re="^20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\.[0-9]{3}Z 127\.0\.0\.1:[0-9]+ "
    re+="\"GET /_echo\\?logprobe=1 HTTP/1\.1\" host=127\.0\.0\.1:$PIBL_PORT "
    re+="backend=127\.0\.0\.1:${ORIGIN_PORT[o1]} status=200 bytes=[1-9][0-9]* ms=(0|[1-9][0-9]*)\.[0-9]{2} cache=- ua=\"curl/[^\"]+\" ref=\"-\"$"
    wait_for_line "$PIBL_LOG" "$re"
    wait_for_line "$PIBL_OUT" "$re"
    [ "$(count_lines "$PIBL_LOG" logprobe)" -eq 1 ]
    [ "$(count_lines "$PIBL_OUT" logprobe)" -eq 1 ]
    # A second exchange adds exactly one more line.
    run pcurl -o /dev/null -w '%{http_code}' "$(url '/hello.txt?second=1')"
    [ "$output" = 200 ]
    wait_for_line "$PIBL_LOG" '"GET /hello\.txt\?second=1 HTTP/1\.1" .* status=200 '
    [ "$(count_lines "$PIBL_LOG" ' status=[0-9]{3} ')" -eq 2 ]
    # log_headers is off by default: header blocks are not logged.
    run pcurl -o /dev/null -H 'X-Log-Probe: probe-off-42' "$(url /hello.txt)"
    wait_for_count "$PIBL_LOG" ' status=[0-9]{3} ' 3
    [ "$(count_lines "$PIBL_LOG" 'probe-off-42')" -eq 0 ]
}

@test "log: an error exchange logs backend=- and err=" {
    start_origin o1
    start_pibl
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\n\r\n'
    [ "$(status_of "$output")" = 400 ]
    wait_for_line "$PIBL_LOG" ' "GET /hello\.txt HTTP/1\.1" host=- backend=- status=400 bytes=[0-9]+ ms=[0-9]+\.[0-9]{2} cache=- ua="-" ref="-" err="[^"]+"$'
    wait_for_line "$PIBL_OUT" ' backend=- status=400 '
}

@test "log: log_headers = on also logs the request and response header blocks" {
    start_origin o1
    start_pibl "log_headers = on"
    run pcurl -o /dev/null -w '%{http_code}' -H 'X-Log-Probe: probe-on-42' "$(url '/hello.txt')"
    [ "$output" = 200 ]
    wait_for_line "$PIBL_LOG" 'X-Log-Probe: probe-on-42'
    wait_for_line "$PIBL_LOG" 'X-Backend: o1'
    wait_for_line "$PIBL_OUT" 'X-Log-Probe: probe-on-42'
    wait_for_line "$PIBL_LOG" '"GET /hello\.txt HTTP/1\.1" .* status=200 '
}

@test "signals: SIGTERM lets an in-flight slow request finish with 200, then pibl exits 0" {
    start_origin o1
    start_pibl
    local t=$BATS_TEST_TMPDIR
    pcurl -o "$t/slow.body" -w '%{http_code}' "$(url '/_slow?ms=1500')" >"$t/slow.code" 2>"$t/slow.err" 3>&- &
    local cpid=$!
    track_pid "$cpid"
    wait_for_line "$(origin_log o1)" '^o1 GET /_slow'
    kill -TERM "$PIBL_PID"
    wait_pid_exit "$cpid" 10
    local crc=0
    wait "$cpid" || crc=$?
    untrack_pid "$cpid"
    echo "curl rc $crc code $(cat "$t/slow.code") err $(cat "$t/slow.err")"
    [ "$crc" -eq 0 ]
    [ "$(cat "$t/slow.code")" = 200 ]
    [ "$(cat "$t/slow.body")" = slow ]
    wait_pid_exit "$PIBL_PID" 10
    local prc=0
    wait "$PIBL_PID" || prc=$?
    untrack_pid "$PIBL_PID"
    echo "pibl exit status $prc"
    [ "$prc" -eq 0 ]
    grep -Eq '"GET /_slow\?ms=1500 HTTP/1\.1" .* status=200 ' "$PIBL_LOG"
}

@test "signals: SIGTERM with nothing in flight exits 0 promptly" {
    start_origin o1
    start_pibl
    kill -TERM "$PIBL_PID"
    wait_pid_exit "$PIBL_PID" 5
    local prc=0
    wait "$PIBL_PID" || prc=$?
    untrack_pid "$PIBL_PID"
    [ "$prc" -eq 0 ]
}

@test "signals: a client closing mid-download (SIGPIPE/EPIPE) does not kill pibl" {
    start_origin o1
    start_origin o2
    start_pibl
    local i
    for i in 1 2 3 4; do
        # Read 1000 bytes of a 50 MB answer, then close with unread data (the kernel sends RST).
        # shellcheck disable=SC2016  # $1 is expanded by the inner bash
        timeout 5 bash -c 'exec 5<>"/dev/tcp/127.0.0.1/$1"
            printf "GET /_bytes?size=50000000 HTTP/1.1\r\nHost: t\r\n\r\n" >&5
            head -c 1000 <&5 >/dev/null; exec 5>&-' raw "$PIBL_PORT" || true
    done
    # Each aborted exchange is logged once pibl notices the closed client.
    wait_for_count "$PIBL_LOG" '"GET /_bytes\?size=50000000 HTTP/1\.1"' 4 10 || true
    pid_alive "$PIBL_PID"
    run pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)"
    [ "$output" = 200 ]
    pid_alive "$PIBL_PID"
}

@test "concurrency: 200 concurrent clients all get 200 and their own body" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl
    local d=$BATS_TEST_TMPDIR/conc i pids=()
    mkdir -p "$d"
    for i in $(seq 1 200); do
        curl -sS --max-time 30 -o "$d/$i.body" -w '%{http_code}' "$(url "/_echo?client=$i")" \
            >"$d/$i.code" 2>"$d/$i.err" 3>&- &
        pids+=($!)
        track_pid "$!"
    done
    local p
    for p in "${pids[@]}"; do
        wait "$p" || true
        untrack_pid "$p"
    done
    local bad=0
    for i in $(seq 1 200); do
        if [ "$(cat "$d/$i.code")" != 200 ] ||
           [ "$(head -n 1 "$d/$i.body" | tr -d '\r')" != "GET /_echo?client=$i HTTP/1.1" ]; then
            echo "client $i: code $(cat "$d/$i.code") err $(cat "$d/$i.err") first line $(head -n 1 "$d/$i.body")"
            bad=$((bad + 1))
        fi
    done
    [ "$bad" -eq 0 ]
    local total
    total=$(cat "$(origin_log o1)" "$(origin_log o2)" "$(origin_log o3)" | grep -c '_echo?client=')
    [ "$total" -eq 200 ]
    # Strict round robin spreads 200 requests evenly (66/67 each).
    [ "$(grep -c . "$(origin_log o1)")" -ge 66 ]
    [ "$(grep -c . "$(origin_log o2)")" -ge 66 ]
    [ "$(grep -c . "$(origin_log o3)")" -ge 66 ]
    wait_for_count "$PIBL_LOG" '_echo\?client=.* status=200 ' 200 10
}
