# helpers.bash - shared helpers for the PIBL end-to-end bats tests.
#
# What it does: starts test origins (./pibl-origin) and the proxy (./pibl) in the per-test temporary folder
# $BATS_TEST_TMPDIR, reads their real ports from their ready lines (everything listens on port 0 = any free
# port, on 127.0.0.1 only), sends exact bytes over a raw TCP socket, and kills every process it started in teardown.
# What it refuses: it never kills by name, never touches files outside $BATS_TEST_TMPDIR, never listens or
# connects anywhere but 127.0.0.1.
# Limits: every wait loop is bounded in count and time (HELPER_WAIT_SECS, 5 s by default); every curl made through
# `pcurl` has --max-time; every raw socket read runs under `timeout`.
#
# Use from a test file:
#   load helpers
#   setup()    { helpers_setup; }
#   teardown() { helpers_teardown; }
#
# Background processes started here close bats' fd 3 (3>&-), otherwise bats waits for them forever.

# SC2016: the single-quoted bash -c scripts expand their own $1 $2; SC2034: the state is read by the test files.
# shellcheck disable=SC2016,SC2034
PIBL_ROOT="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"
PIBL_BIN=${PIBL_BIN:-$PIBL_ROOT/pibl}                    # override to test another build
ORIGIN_BIN=${ORIGIN_BIN:-$PIBL_ROOT/pibl-origin}
HELPER_WAIT_SECS=${HELPER_WAIT_SECS:-5}

# helpers_setup: per-test state. Fails the test if a binary is missing (a missing binary is a failure, not a skip).
helpers_setup() {
    TRACKED_PIDS=()      # every background process this test started (killed in teardown)
    BACKENDS=()          # host:port lines written as `backend =` by start_pibl, in order
    ORIGIN_NAMES=()      # names of the started origins, in start order
    declare -gA ORIGIN_PORT=() ORIGIN_PID=() ORIGIN_DIR=()
    PIBL_PORT=""
    PIBL_PID=""
    PIBL_CFG="$BATS_TEST_TMPDIR/pibl.cfg"
    PIBL_OUT="$BATS_TEST_TMPDIR/pibl.out"
    PIBL_ERR="$BATS_TEST_TMPDIR/pibl.err"
    PIBL_LOG="$BATS_TEST_TMPDIR/pibl.log"
    if [ ! -x "$PIBL_BIN" ] || [ ! -x "$ORIGIN_BIN" ]; then
        echo "missing $PIBL_BIN or $ORIGIN_BIN: run make first" >&2
        return 1
    fi
}

# helpers_teardown: TERM every tracked process, wait up to HELPER_WAIT_SECS for all of them, KILL the rest,
# reap them. Prints the proxy's and origins' output when the test failed, to help diagnose.
helpers_teardown() {
    if [ "${BATS_TEST_COMPLETED:-}" != 1 ]; then
        dump_diagnostics
    fi
    local pid
    for pid in "${TRACKED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${TRACKED_PIDS[@]}"; do
        wait_pid_exit "$pid" "$HELPER_WAIT_SECS" || kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    TRACKED_PIDS=()
}

# dump_diagnostics: show the tail of every log this test produced (stdout of a test is shown only on failure).
dump_diagnostics() {
    local f
    for f in "$PIBL_OUT" "$PIBL_ERR" "$PIBL_LOG" "$PIBL_CFG" "$BATS_TEST_TMPDIR"/origin-*/stdout \
             "$BATS_TEST_TMPDIR"/origin-*/stderr "$BATS_TEST_TMPDIR"/origin-*/req.log; do
        [ -f "$f" ] || continue
        echo "----- $f (last 30 lines)"
        tail -n 30 "$f" | cut -c1-400
    done
}

# track_pid PID: remember a background process so teardown kills it.
track_pid() {
    TRACKED_PIDS+=("$1")
}

# untrack_pid PID: forget a process that was already stopped and reaped (its PID could be reused later).
untrack_pid() {
    local kept=() p
    for p in "${TRACKED_PIDS[@]}"; do
        [ "$p" = "$1" ] || kept+=("$p")
    done
    TRACKED_PIDS=("${kept[@]}")
}

# pid_alive PID: 0 if the process exists and is not a zombie, 1 otherwise. (kill -0 succeeds on an unreaped
# zombie child, so the state in /proc is checked too.)
pid_alive() {
    local state
    [ -r "/proc/$1/stat" ] || return 1
    state=$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# wait_pid_exit PID SECS: poll (every 50 ms) until PID is gone or a zombie. 0 = exited, 1 = still alive.
wait_pid_exit() {
    local pid=$1 secs=${2:-$HELPER_WAIT_SECS} i
    for ((i = 0; i < secs * 20; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.05
    done
    pid_alive "$pid" && return 1
    return 0
}

# stop_pid PID [SIGNAL]: send SIGNAL (TERM), wait bounded, KILL if needed, reap, untrack. Prints the exit status
# as `wait` reported it (143 = killed by TERM, 0 = clean exit) on stdout.
stop_pid() {
    local pid=$1 sig=${2:-TERM} rc=0
    kill "-$sig" "$pid" 2>/dev/null || true
    wait_pid_exit "$pid" "$HELPER_WAIT_SECS" || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || rc=$?
    untrack_pid "$pid"
    echo "$rc"
}

# wait_for_line FILE ERE [SECS]: poll until a line of FILE matches the extended regex. 0 = found, 1 = timeout.
wait_for_line() {
    local file=$1 re=$2 secs=${3:-$HELPER_WAIT_SECS} i
    for ((i = 0; i < secs * 20; i++)); do
        if [ -f "$file" ] && grep -Eq -- "$re" "$file"; then
            return 0
        fi
        sleep 0.05
    done
    echo "timeout after ${secs}s waiting for /$re/ in $file" >&2
    return 1
}

# wait_for_count FILE ERE N [SECS]: poll until at least N lines of FILE match ERE. 0 = reached, 1 = timeout.
wait_for_count() {
    local file=$1 re=$2 n=$3 secs=${4:-$HELPER_WAIT_SECS} i
    for ((i = 0; i < secs * 20; i++)); do
        if [ "$(count_lines "$file" "$re")" -ge "$n" ]; then
            return 0
        fi
        sleep 0.05
    done
    echo "timeout after ${secs}s waiting for $n lines /$re/ in $file (have $(count_lines "$file" "$re"))" >&2
    return 1
}

# count_lines FILE ERE: number of lines of FILE matching ERE (0 if FILE is missing).
count_lines() {
    if [ -f "$1" ]; then
        grep -Ec -- "$2" "$1" || true
    else
        echo 0
    fi
}

# make_root DIR: a small deterministic document root (index.html, hello.txt, sub/index.html).
make_root() {
    mkdir -p "$1/sub"
    printf '<html><body>pibl test index</body></html>\n' >"$1/index.html"
    printf 'hello from the test origin\n' >"$1/hello.txt"
    printf '<html><body>sub index</body></html>\n' >"$1/sub/index.html"
}

# start_origin NAME [ROOT] [PORT]: start ./pibl-origin -p PORT (default 0: any free port) named NAME serving ROOT
# (default: a per-test root made by make_root, shared by all origins of the test), request log
# ORIGIN_DIR[NAME]/req.log and uploads in ORIGIN_DIR[NAME]/uploads. Waits for `origin NAME listening on
# ADDR:PORT`, sets ORIGIN_PORT[NAME] and ORIGIN_PID[NAME], and appends 127.0.0.1:PORT to BACKENDS.
# Must not be called through `run` (its state would be lost in the subshell).
start_origin() {
    local name=$1 root=${2:-$BATS_TEST_TMPDIR/www} want_port=${3:-0} dir port pid
    dir="$BATS_TEST_TMPDIR/origin-$name"
    [ -d "$root" ] || make_root "$root"
    mkdir -p "$dir/uploads"
    : >"$dir/req.log"
    rm -f "$dir/stdout"   # a restarted origin must not be read by its old line
    "$ORIGIN_BIN" -p "$want_port" -a 127.0.0.1 -n "$name" -r "$root" -l "$dir/req.log" -u "$dir/uploads" \
        >"$dir/stdout" 2>"$dir/stderr" 3>&- &
    pid=$!
    track_pid "$pid"
    if ! wait_for_line "$dir/stdout" "^origin $name listening on " "$HELPER_WAIT_SECS"; then
        echo "origin $name did not start" >&2
        cat "$dir/stdout" "$dir/stderr" >&2
        return 1
    fi
    port=$(sed -n -E "s/^origin $name listening on .*:([0-9]+)[[:space:]]*\$/\\1/p" "$dir/stdout" | head -n 1)
    if [ -z "$port" ]; then
        echo "cannot read the port of origin $name from: $(cat "$dir/stdout")" >&2
        return 1
    fi
    ORIGIN_PORT[$name]=$port
    ORIGIN_PID[$name]=$pid
    ORIGIN_DIR[$name]=$dir
    ORIGIN_NAMES+=("$name")
    BACKENDS+=("127.0.0.1:$port")
}

# stop_origin NAME: TERM the origin (its port stays in BACKENDS: nothing listens there afterwards).
stop_origin() {
    stop_pid "${ORIGIN_PID[$1]}" >/dev/null
}

# origin_log NAME: path of the origin's request log (one `NAME METHOD TARGET` line per request).
origin_log() {
    echo "${ORIGIN_DIR[$1]}/req.log"
}

# write_pibl_config FILE [LINES...]: port = 0 on 127.0.0.1, one backend line per BACKENDS entry, log_file in the
# temp dir, then the extra LINES (each one config line).
write_pibl_config() {
    local file=$1 b l
    shift
    {
        echo "# written by tests/helpers.bash"
        echo "listen = 127.0.0.1"
        echo "port = 0"
        for b in "${BACKENDS[@]}"; do
            echo "backend = $b"
        done
        echo "log_file = $PIBL_LOG"
        for l in "$@"; do
            echo "$l"
        done
    } >"$file"
}

# start_pibl [LINES...]: write PIBL_CFG (see write_pibl_config) and start `./pibl PIBL_CFG TTL` with TTL =
# $PIBL_TTL (default 0: cache off) in $BATS_TEST_TMPDIR (so the default cache folder lands there). Waits for
# `pibl: listening on ADDR:PORT, N backends` in PIBL_OUT and sets PIBL_PORT, PIBL_PID.
start_pibl() {
    write_pibl_config "$PIBL_CFG" "$@"
    # Empty the output first: a restarted pibl must not be mistaken for the
    # previous one by its old "listening" line.
    : >"$PIBL_OUT"
    (cd "$BATS_TEST_TMPDIR" && exec "$PIBL_BIN" "$PIBL_CFG" "${PIBL_TTL:-0}") >"$PIBL_OUT" 2>"$PIBL_ERR" 3>&- &
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

# url PATH: the proxy's URL for PATH.
url() {
    echo "http://127.0.0.1:$PIBL_PORT$1"
}

# pcurl ARGS...: curl, silent but showing errors, never longer than 20 s.
pcurl() {
    curl -sS --max-time "${CURL_MAX_TIME:-20}" "$@"
}

# raw_request PORT DATA [SECS]: open a TCP connection to 127.0.0.1:PORT, write DATA exactly (printf %s), then print
# everything received until the peer closes. A write error (the peer closed early) is silent: the answer
# received so far is what counts. Exit status: 0 = peer closed the connection, 124 = still open
# after SECS seconds (default 5; what arrived before is printed), other = connect/read error.
raw_request() {
    local port=$1 data=$2 secs=${3:-5}
    timeout "$secs" bash -c 'exec 5<>"/dev/tcp/127.0.0.1/$1" || exit 99; printf "%s" "$2" >&5 2>/dev/null; exec cat <&5' \
        raw "$port" "$data"
}

# raw_request_parts PORT SECS DATA1 DATA2...: like raw_request but writes each part separately with a 0.2 s
# pause in between (to split a head or a body across segments).
raw_request_parts() {
    local port=$1 secs=$2
    shift 2
    timeout "$secs" bash -c 'exec 5<>"/dev/tcp/127.0.0.1/$1" || exit 99; shift
        for p in "$@"; do printf "%s" "$p" >&5 2>/dev/null; sleep 0.2; done; exec cat <&5' raw "$port" "$@"
}

# status_of TEXT: the status code of the first status line in TEXT (a raw reply).
status_of() {
    printf '%s' "$1" | head -n 1 | sed -n -E 's/^HTTP\/1\.[01] ([0-9]{3}).*/\1/p'
}

# body_of TEXT: what follows the first blank line (CRLF CRLF) of a raw reply.
body_of() {
    printf '%s' "${1#*$'\r\n\r\n'}"
}

# head_of TEXT: the first header block of a raw reply (up to the first blank line), CRs removed.
head_of() {
    printf '%s' "${1%%$'\r\n\r\n'*}" | tr -d '\r'
}

# header_value TEXT NAME: the value of header NAME (case-insensitive) in the first head of TEXT (empty if none).
header_value() {
    head_of "$1" | sed -n -E "s/^$2:[[:space:]]*//Ip" | head -n 1
}

# sha FILE: its sha256 in hex.
sha() {
    sha256sum "$1" | cut -d' ' -f1
}

# conns_to_port PORT: number of distinct TCP connections to 127.0.0.1:PORT that the kernel still knows about
# (established, closing or in TIME_WAIT, i.e. made during the last minute), from /proc/net/tcp. Each
# connection is counted once, by its client-side port.
conns_to_port() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p="$hex" 'NR > 1 {
        split($2, l, ":"); split($3, r, ":")
        if ($4 == "0A") next                       # the listening socket
        if (l[2] == p && r[2] != "0000") peers[r[2]] = 1
        else if (r[2] == p) peers[l[2]] = 1
    } END { n = 0; for (k in peers) n++; print n }' /proc/net/tcp
}
