# hostile_helpers.bash - helpers for tests/hostile.bats (hostile input and faults), on top of helpers.bash.
#
# What it does: sends byte-exact vectors (printf %b escapes, so NUL, bare CR and bare LF can be written) over a raw
# socket and checks the rejection; starts the fake backend and the slowloris / idle-connection peers of
# tests/hostile_peer.py (python3); starts PIBL under a resource limit or inside a private mount namespace; reads
# a process's CPU time and memory from /proc; checks log lines against the documented format.
# What it refuses: it never kills by name, never touches files outside $BATS_TEST_TMPDIR, never connects anywhere
# but 127.0.0.1. Tests that need python3 (or a user namespace) skip plainly when it is missing.
# Limits: every wait is bounded (HELPER_WAIT_SECS), every raw socket read runs under `timeout`, every peer process
# has its own time bound and is tracked for teardown.
#
# Use from a test file:
#   load helpers
#   load hostile_helpers
#   setup()    { hostile_setup; }
#   teardown() { hostile_teardown; }

# shellcheck shell=bash disable=SC2153,SC2154  # PIBL_* come from helpers.bash, status/output from bats' run

PEER_PY="$PIBL_ROOT/tests/hostile_peer.py"

# The documented exchange log line (README.md, log_format = pibl), tried=... and err="..." optional at the end.
LOG_LINE_RE='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z [^ ]+ "[^"]*" host=[^ ]+ backend=[^ ]+ status=[0-9]+ bytes=[0-9]+ ms=[0-9]+\.[0-9]+ cache=[A-Z-]+ ua="[^"]*" ref="[^"]*"( tried=[^ ]+)?( err="[^"]*")?$'

# hostile_setup: helpers_setup plus this file's state.
hostile_setup() {
    helpers_setup
    PIBL_PREFIX=()       # command words put before ./pibl by start_pibl_with (unshare ...)
    PIBL_ULIMIT_N=""     # descriptor limit for start_pibl_with, empty = inherited
    FAKE_DIR=""
    FAKE_PORT=""
}

# hostile_teardown: fail the test if PIBL printed a sanitizer report (when the suite runs on an ASan/UBSan build
# without log_path), then helpers_teardown.
hostile_teardown() {
    local bad=0
    if [ -f "$PIBL_ERR" ] && grep -Eq 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:' "$PIBL_ERR"; then
        echo "sanitizer report on pibl's stderr:"
        cat "$PIBL_ERR"
        bad=1
    fi
    helpers_teardown
    [ "$bad" -eq 0 ]
}

# need_python: skip the test when python3 is missing (the fake peers are written in it).
need_python() {
    command -v python3 >/dev/null || skip "python3 is not installed"
}

# raw_fmt PORT FMT [SECS]: like raw_request, but the bytes are printf %b escapes (\r \n \t \0 \x01 \\ ...), so a
# vector can hold NUL and lone CR/LF. Prints what came back; exit 0 = peer closed, 124 = still open after SECS (3).
raw_fmt() {
    local port=$1 fmt=$2 secs=${3:-3}
    # shellcheck disable=SC2016  # $1 and $2 belong to the inner bash
    timeout "$secs" bash -c 'exec 5<>"/dev/tcp/127.0.0.1/$1" || exit 99; printf "%b" "$2" >&5; exec cat <&5' \
        raw "$port" "$fmt"
}

# expect_rejected CODE FMT: send the vector FMT (printf %b) to PIBL on its own connection and check the answer is
# CODE with Connection: close and that PIBL closed the connection afterwards.
expect_rejected() {
    local code=$1 fmt=$2 got
    run raw_fmt "$PIBL_PORT" "$fmt"
    got=$(status_of "$output")
    if [ "$got" != "$code" ]; then
        echo "vector $fmt: want $code, got status '$got' (exit $status): $output"
        return 1
    fi
    if [ "$status" -eq 124 ]; then
        echo "vector $fmt: connection left open after the $code"
        return 1
    fi
    if [[ "$(header_value "$output" Connection)" != *[Cc]lose* ]]; then
        echo "vector $fmt: no Connection: close in: $output"
        return 1
    fi
}

# origin_got_nothing NAME: the origin's request log is empty (nothing was forwarded to it).
origin_got_nothing() {
    local log
    log=$(origin_log "$1")
    if [ -s "$log" ]; then
        echo "origin $1 received:"
        cat "$log"
        return 1
    fi
}

# start_test_backend OUT ERR WORD CMD...: start CMD (tracked; stdout to OUT, stderr to ERR), wait until it prints
# "WORD listening on 127.0.0.1:PORT", set BACKEND_PORT and append the address to BACKENDS.
start_test_backend() {
    local out=$1 err=$2 word=$3
    shift 3
    "$@" >"$out" 2>"$err" 3>&- &
    track_pid $!
    wait_for_line "$out" "^$word listening on " || return 1
    BACKEND_PORT=$(sed -n -E "s/^$word listening on 127\.0\.0\.1:([0-9]+)\$/\1/p" "$out")
    [ -n "$BACKEND_PORT" ] || return 1
    BACKENDS+=("127.0.0.1:$BACKEND_PORT")
}

# start_fake_backend DIR: start `hostile_peer.py backend DIR` (answer files DIR/1, DIR/2, ..., DIR/default),
# set FAKE_DIR and FAKE_PORT, append it to BACKENDS.
start_fake_backend() {
    FAKE_DIR=$1
    mkdir -p "$FAKE_DIR"
    : >"$FAKE_DIR/log"
    start_test_backend "$FAKE_DIR/stdout" "$FAKE_DIR/stderr" fake python3 "$PEER_PY" backend "$FAKE_DIR" || return 1
    FAKE_PORT=$BACKEND_PORT
}

# fake_answer N FMT [close]: the fake backend answers request N (or "default") with the bytes FMT (printf %b);
# with "close" it closes the connection after that answer.
fake_answer() {
    printf '%b' "$2" >"$FAKE_DIR/$1"
    if [ "${3:-}" = close ]; then
        : >"$FAKE_DIR/$1.close"
    else
        rm -f "$FAKE_DIR/$1.close"
    fi
}

# fake_conn_of N: the fake backend's connection number that carried request N (empty if it never came).
fake_conn_of() {
    sed -n -E "s/^conn=([0-9]+) req=$1 .*/\\1/p" "$FAKE_DIR/log"
}

# fake_requests: number of requests the fake backend received.
fake_requests() {
    grep -c '^conn=' "$FAKE_DIR/log" || true
}

# start_pibl_with [LINES...]: start_pibl, but with the words of PIBL_PREFIX before ./pibl and, when
# PIBL_ULIMIT_N is set, under `ulimit -n PIBL_ULIMIT_N` (soft and hard). Same outputs as start_pibl.
start_pibl_with() {
    write_pibl_config "$PIBL_CFG" "$@"
    : >"$PIBL_OUT"       # a restarted pibl must not be read by its old "listening" line
    (
        cd "$BATS_TEST_TMPDIR" || exit 1
        if [ -n "$PIBL_ULIMIT_N" ]; then
            ulimit -n "$PIBL_ULIMIT_N" || exit 1
        fi
        exec "${PIBL_PREFIX[@]}" "$PIBL_BIN" "$PIBL_CFG" "${PIBL_TTL:-0}"
    ) >"$PIBL_OUT" 2>"$PIBL_ERR" 3>&- &
    PIBL_PID=$!
    track_pid "$PIBL_PID"
    if ! wait_for_line "$PIBL_OUT" '^pibl: listening on .*:[0-9]+, [0-9]+ backends?$' "$HELPER_WAIT_SECS"; then
        echo "pibl did not start; config:" >&2
        cat "$PIBL_CFG" "$PIBL_OUT" "$PIBL_ERR" >&2
        return 1
    fi
    PIBL_PORT=$(sed -n -E 's/^pibl: listening on .*:([0-9]+), [0-9]+ backends?$/\1/p' "$PIBL_OUT" | head -n 1)
    [ -n "$PIBL_PORT" ]
}

# start_peer REPORT ARGS...: run `hostile_peer.py ARGS...` in the background (tracked); REPORT is its report file.
# Sets PEER_PID.
start_peer() {
    local report=$1
    shift
    : >"$report"
    python3 "$PEER_PY" "$@" >"$report.stdout" 2>"$report.stderr" 3>&- &
    PEER_PID=$!
    track_pid "$PEER_PID"
}

# last_report_value REPORT KEY: the value of KEY=... on the last line of REPORT that has it.
last_report_value() {
    grep -Eo "(^| )$2=[0-9]+" "$1" | tail -n 1 | sed -E 's/.*=//'
}

# cpu_ticks PID: utime + stime of PID in clock ticks (/proc/PID/stat fields 14 and 15).
cpu_ticks() {
    sed -e 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# rss_kb PID: resident memory of PID in kB.
rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# n_threads PID: threads of PID.
n_threads() {
    awk '/^Threads:/ { print $2 }' "/proc/$1/status"
}

# sanitized_build: 0 when $PIBL_BIN was built with AddressSanitizer (memory figures mean little then).
sanitized_build() {
    grep -q __asan_init "$PIBL_BIN" 2>/dev/null
}

# check_log_lines FILE: every line of FILE is a well-formed exchange line or a "pibl: " message. Prints the bad
# ones and returns 1 if there are any.
check_log_lines() {
    local bad
    bad=$(grep -Ev -- "$LOG_LINE_RE" "$1" | grep -Ev '^pibl: ' || true)
    if [ -n "$bad" ]; then
        echo "malformed lines in $1:"
        printf '%s\n' "$bad" | head -n 20 | cut -c1-300
        return 1
    fi
}

# get_status URL...: print curl's "HTTP status" (000 when there was no answer).
get_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time "${CURL_MAX_TIME:-10}" "$@" || true
}
