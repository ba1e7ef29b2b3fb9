#!/usr/bin/env bats
# run.bats - `make run` (scripts/run-local.sh) and the demo site: a port in use stops it before anything starts,
# naming the port; a process that exits before listening stops the start-up; the banner comes only once
# everything listens; a killed replica is reported and PIBL keeps serving with the other two; Ctrl-C stops PIBL
# first (a request in flight completes) and the replicas after it, exit 0; a dead PIBL stops the rest, exit 1; in
# headless Chromium, www/index.html shows the replicas round robin picks and the page's own X-Cache.
#
# Each test runs the script on ports chosen at run time (passed through PIBL_PORT, WEB1_PORT..., never the
# defaults), listening on 127.0.0.1 only, with PIBL's log and cache in $BATS_TEST_TMPDIR (RUN_DIR). The script runs
# in its own session (setsid) with SIGINT at its default (a background job of a script would ignore it), so the
# test can send SIGINT to its process group as a terminal's Ctrl-C does. Teardown stops the script and every
# process left in its session, by PID. Every wait is bounded.

bats_require_minimum_version 1.5.0
load helpers
load ops_helpers

RUN_SH="$PIBL_ROOT/scripts/run-local.sh"

setup() {
    helpers_setup
    RUN_PID=""
    RUN_OUT="$BATS_TEST_TMPDIR/run.out"
    RUN_DIR="$BATS_TEST_TMPDIR/run"
    mkdir -p "$RUN_DIR"
    pick_ports
}

teardown() {
    if [ "${BATS_TEST_COMPLETED:-}" != 1 ] && [ -f "$RUN_OUT" ]; then
        echo "----- $RUN_OUT (last 40 lines)"
        tail -n 40 "$RUN_OUT" | cut -c1-300
    fi
    local pid
    if [ -n "$RUN_PID" ]; then
        kill -TERM "$RUN_PID" 2>/dev/null || true
        wait_pid_exit "$RUN_PID" 20 || kill -KILL "$RUN_PID" 2>/dev/null || true
        # Whatever is left in the script's session was started by it: stop it by PID.
        for pid in $(session_pids "$RUN_PID"); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        wait "$RUN_PID" 2>/dev/null || true
    fi
    helpers_teardown
}

# pick_ports: five different free ports on 127.0.0.1 (held open together while chosen), into P_PIBL, P_ADMIN,
# P_WEB1..P_WEB3.
pick_ports() {
    local ports
    ports=$(python3 -c '
import socket
s = [socket.socket() for _ in range(5)]
for x in s:
    x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
    read -r P_PIBL P_ADMIN P_WEB1 P_WEB2 P_WEB3 <<<"$ports"
    [ -n "$P_WEB3" ]
}

# run_env: the environment of a run on the chosen ports, as NAME=VALUE words for env(1).
run_env() {
    echo "PIBL_PORT=$P_PIBL PIBL_ADMIN_PORT=$P_ADMIN WEB1_PORT=$P_WEB1 WEB2_PORT=$P_WEB2 WEB3_PORT=$P_WEB3" \
        "PIBL_LISTEN=127.0.0.1 RUN_DIR=$RUN_DIR TTL=${RUN_TTL:-60} TMPDIR=$BATS_TEST_TMPDIR"
}

# start_run [CMD...]: start CMD (default: scripts/run-local.sh) in a new session with SIGINT at its default and
# the run's environment, output in RUN_OUT; sets RUN_PID (also the session and process group id).
start_run() {
    local cmd=("$@")
    [ ${#cmd[@]} -gt 0 ] || cmd=("$RUN_SH")
    # shellcheck disable=SC2046  # run_env is a list of words
    env $(run_env) env --default-signal=INT setsid "${cmd[@]}" >"$RUN_OUT" 2>&1 </dev/null 3>&- &
    RUN_PID=$!
}

# wait_ready: bounded wait for the banner's last line; fails if the script exits first.
wait_ready() {
    local i
    for ((i = 0; i < 400; i++)); do
        grep -q '^run: ready: ' "$RUN_OUT" && return 0
        pid_alive "$RUN_PID" || break
        sleep 0.05
    done
    echo "no banner; script alive: $(pid_alive "$RUN_PID" && echo yes || echo no)" >&2
    return 1
}

# banner_pid NAME: the PID the banner gives for NAME (web1, web2, web3, PIBL).
banner_pid() {
    sed -n -E "s/^run: $1  pid ([0-9]+)  .*/\\1/p" "$RUN_OUT" | head -n 1
}

# session_pids SID: the processes still in session SID (zombies included), from /proc (no procps needed).
session_pids() {
    local f stat pid sid
    for f in /proc/[0-9]*/stat; do
        read -r stat 2>/dev/null <"$f" || continue
        pid=${stat%% *}
        stat=${stat##*) }               # after the command name: state ppid pgrp session ...
        read -r _ _ _ sid _ <<<"$stat"
        [ "$sid" = "$1" ] && echo "$pid"
    done
    return 0
}

# finish_run: wait (bounded) for the script to exit and reap it; RUN_RC = its exit status. Fails if it does not
# exit within 30 s. Not through `run`: only this shell can reap its child.
finish_run() {
    RUN_RC=""
    wait_pid_exit "$RUN_PID" 30 || { echo "the script is still running" >&2; return 1; }
    RUN_RC=0
    wait "$RUN_PID" || RUN_RC=$?
    echo "exit status $RUN_RC"
}

# port_free PORT: 0 when nothing accepts connections on 127.0.0.1:PORT.
port_free() {
    ! (exec 5<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# all_ports_free: every port of the run is free.
all_ports_free() {
    local p
    for p in "$P_PIBL" "$P_ADMIN" "$P_WEB1" "$P_WEB2" "$P_WEB3"; do
        port_free "$p" || { echo "port $p still in use" >&2; return 1; }
    done
}

@test "run: a port in use stops make run before anything starts, naming the port, its owner and the variable" {
    local var port role owner i
    for var in PIBL_PORT WEB2_PORT PIBL_ADMIN_PORT; do
        case $var in
            PIBL_PORT) port=$P_PIBL role=PIBL ;;
            WEB2_PORT) port=$P_WEB2 role=web2 ;;
            PIBL_ADMIN_PORT) port=$P_ADMIN role="status page" ;;
        esac
        rm -f "$BATS_TEST_TMPDIR/holder.ready"
        python3 -c '
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1)
open(sys.argv[2], "w").close()
time.sleep(60)' "$port" "$BATS_TEST_TMPDIR/holder.ready" 3>&- &
        owner=$!
        track_pid "$owner"
        for ((i = 0; i < 100; i++)); do
            [ -f "$BATS_TEST_TMPDIR/holder.ready" ] && break
            sleep 0.05
        done
        [ -f "$BATS_TEST_TMPDIR/holder.ready" ]
        start_run
        finish_run
        cat "$RUN_OUT"
        [ "$RUN_RC" = 1 ]
        grep -Eq "^run: port $port \\($role\\) is in use \\(by [^,]+, pid $owner\\); stop it or choose another port, e\\.g\\. $var=[0-9]+ make run\$" "$RUN_OUT"
        run ! grep -q '^run: ready' "$RUN_OUT"
        run ! grep -q 'listening on' "$RUN_OUT"
        [ -z "$(session_pids "$RUN_PID")" ]
        RUN_PID=""
        stop_pid "$owner" >/dev/null
        all_ports_free
    done
}

@test "make run: PIBL_CFG from the environment is the config the run starts from (not make's install path)" {
    printf 'prot = 1\n' >"$BATS_TEST_TMPDIR/bad.cfg"
    start_run env PIBL_CFG="$BATS_TEST_TMPDIR/bad.cfg" make -s -C "$PIBL_ROOT" run
    finish_run
    cat "$RUN_OUT"
    [ "$RUN_RC" != 0 ]
    grep -q "unknown key \"prot\"" "$RUN_OUT"
    grep -q "from $BATS_TEST_TMPDIR/bad.cfg) is not valid; nothing started" "$RUN_OUT"
    all_ports_free
}

@test "run: bad port settings are refused before anything starts" {
    P_WEB1=abc
    start_run
    finish_run
    [ "$RUN_RC" = 1 ]
    grep -q '^run: WEB1_PORT=abc is not a port number' "$RUN_OUT"
    pick_ports
    P_WEB3=$P_PIBL
    start_run
    finish_run
    [ "$RUN_RC" = 1 ]
    grep -q "^run: WEB3_PORT and PIBL_PORT are both $P_PIBL" "$RUN_OUT"
    run ! grep -q 'listening on' "$RUN_OUT"
}

@test "run: a process that exits before listening stops the start-up: no banner, the replicas stopped, exit 1" {
    # PIBL cannot bind an address this machine does not have (TEST-NET-1): it exits at once.
    P_LISTEN_BAD=192.0.2.1
    # shellcheck disable=SC2046
    env $(run_env) PIBL_LISTEN=$P_LISTEN_BAD env --default-signal=INT setsid "$RUN_SH" >"$RUN_OUT" 2>&1 </dev/null 3>&- &
    RUN_PID=$!
    finish_run
    cat "$RUN_OUT"
    [ "$RUN_RC" = 1 ]
    grep -q "cannot listen on $P_LISTEN_BAD port $P_PIBL" "$RUN_OUT"
    grep -Eq "^run: PIBL \\(pid [0-9]+, port $P_PIBL\\) exited before listening \\(exit status 1\\)" "$RUN_OUT"
    grep -q "^origin web1 listening on 127.0.0.1:$P_WEB1" "$RUN_OUT"   # the replicas had started...
    run ! grep -q '^run: ready' "$RUN_OUT"
    [ -z "$(session_pids "$RUN_PID")" ]                                 # ...and were stopped
    RUN_PID=""
    all_ports_free
}

@test "make run: the banner comes once everything listens; right after it PIBL, the replicas and the status page answer" {
    start_run env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$PIBL_ROOT" run
    wait_ready
    # No waiting here: the banner promises that everything listens.
    local code
    code=$(pcurl -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_PIBL/")
    [ "$code" = 200 ]
    [ "$(pcurl -o /dev/null -w '%{http_code} %header{x-backend}' "http://127.0.0.1:$P_WEB2/")" = "200 web2" ]
    pcurl -f "http://127.0.0.1:$P_ADMIN/status.json" | grep -q '"backends"'
    # The banner is after the lines saying each process listens, and names every process with its URL. (PIBL's
    # later start-up lines, status page and cache, come from its log writer thread and may land either side.)
    local last_start banner
    last_start=$(grep -nE '^(origin web[123] listening|pibl: listening)' "$RUN_OUT" | tail -n 1 | cut -d: -f1)
    banner=$(grep -n '^run: web1  pid ' "$RUN_OUT" | cut -d: -f1)
    [ -n "$banner" ]
    [ "$banner" -gt "$last_start" ]
    grep -q "^run: web3  pid [0-9]*  http://127.0.0.1:$P_WEB3/\$" "$RUN_OUT"
    grep -q "^run: PIBL  pid [0-9]*  http://localhost:$P_PIBL/  (cache TTL 60 s; log and cache in $RUN_DIR)\$" "$RUN_OUT"
    grep -q "^run: status page http://127.0.0.1:$P_ADMIN/\$" "$RUN_OUT"
    # The config of the run: pibl.cfg's settings with this run's ports.
    local cfg
    cfg=$(compgen -G "$BATS_TEST_TMPDIR/pibl-run.*/pibl.cfg")
    grep -qx "port = $P_PIBL" "$cfg"
    grep -qx "backend = web3 127.0.0.1:$P_WEB3" "$cfg"
    grep -qx 'log_file = pibl.log' "$cfg"
    [ "$(grep -c '^backend' "$cfg")" = 3 ]
    # PIBL runs in RUN_DIR: its log and cache are there, not in the repository.
    [ -f "$RUN_DIR/pibl.log" ]
    [ -d "$RUN_DIR/cache" ]
}

@test "run: /_whoami names the replica and is never cached, so with the cache on it still follows round robin" {
    start_run
    wait_ready
    local i seen="" hdr
    for i in 1 2 3; do
        hdr=$(pcurl -sS -D - -o "$BATS_TEST_TMPDIR/body" "http://127.0.0.1:$P_PIBL/_whoami" | tr -d '\r')
        echo "$hdr"
        grep -qi '^cache-control: no-store$' <<<"$hdr"
        grep -qi '^x-cache: MISS$' <<<"$hdr"
        [ "$(cat "$BATS_TEST_TMPDIR/body")" = "$(sed -n 's/^x-backend: //Ip' <<<"$hdr")" ]
        seen+="$(cat "$BATS_TEST_TMPDIR/body") "
    done
    echo "seen: $seen"
    [ "$(tr ' ' '\n' <<<"$seen" | grep -c .)" = 3 ]
    [ "$(tr ' ' '\n' <<<"$seen" | sort -u | grep -c '^web[123]$')" = 3 ]
}

@test "run: killing one replica is reported; PIBL keeps serving with the other two and the script keeps running" {
    start_run
    wait_ready
    local web2 pibl i out seen=""
    web2=$(banner_pid web2)
    pibl=$(banner_pid PIBL)
    [ -n "$web2" ]
    [ -n "$pibl" ]
    kill "$web2"
    wait_for_line "$RUN_OUT" "^run: replica web2 \\(pid $web2, port $P_WEB2\\) stopped \\(exit status 0\\); PIBL keeps serving with the other two\$" 10
    grep -q "^run: restart it by hand (in $PIBL_ROOT): ./pibl-origin -p $P_WEB2 -n web2 -r www\$" "$RUN_OUT"
    for i in 1 2 3 4 5 6 7 8 9; do
        out=$(pcurl -o /dev/null -w '%{http_code} %header{x-backend}' "http://127.0.0.1:$P_PIBL/_whoami")
        echo "request $i: $out"
        [ "$out" = "200 web1" ] || [ "$out" = "200 web3" ]
        seen+="$out,"
    done
    [[ $seen == *web1* ]]
    [[ $seen == *web3* ]]
    pid_alive "$RUN_PID"
    pid_alive "$pibl"
    pid_alive "$(banner_pid web1)"
    pid_alive "$(banner_pid web3)"
    # A second one: the message counts down.
    kill "$(banner_pid web3)"
    wait_for_line "$RUN_OUT" "^run: replica web3 .* PIBL keeps serving with the last one\$" 10
    [ "$(pcurl -o /dev/null -w '%{http_code} %header{x-backend}' "http://127.0.0.1:$P_PIBL/_whoami")" = "200 web1" ]
    pid_alive "$RUN_PID"
}

@test "run: Ctrl-C with a slow request in flight stops PIBL first; the request completes 200, then the replicas stop; exit 0" {
    start_run
    wait_ready
    local pibl web1 web2 web3 curl_pid t0
    pibl=$(banner_pid PIBL)
    web1=$(banner_pid web1)
    web2=$(banner_pid web2)
    web3=$(banner_pid web3)
    pcurl -o "$BATS_TEST_TMPDIR/slow.body" -w '%{http_code}' "http://127.0.0.1:$P_PIBL/_slow?ms=2500" \
        >"$BATS_TEST_TMPDIR/slow.code" 3>&- &
    curl_pid=$!
    track_pid "$curl_pid"
    sleep 0.7   # the request is at a replica now (it sleeps 2.5 s there)
    t0=$(date +%s%N)
    kill -INT -- "-$RUN_PID"   # what the terminal does on Ctrl-C: SIGINT to the foreground process group
    wait_for_line "$RUN_OUT" '^run: stopping PIBL \(pid [0-9]+\); requests in flight have up to 10 s to finish$' 5
    # PIBL is draining: it and the replicas are still up, so the request in flight can finish.
    sleep 0.3
    pid_alive "$pibl"
    pid_alive "$web1"
    pid_alive "$web2"
    pid_alive "$web3"
    wait_pid_exit "$curl_pid" 10
    wait "$curl_pid"
    untrack_pid "$curl_pid"
    echo "slow request: $(cat "$BATS_TEST_TMPDIR/slow.code") after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    [ "$(cat "$BATS_TEST_TMPDIR/slow.code")" = 200 ]
    [ "$(cat "$BATS_TEST_TMPDIR/slow.body")" = slow ]
    finish_run
    cat "$RUN_OUT"
    [ "$RUN_RC" = 0 ]
    # In this order: PIBL stopped, then the web servers.
    local l_pibl l_webs
    l_pibl=$(grep -n '^run: PIBL stopped$' "$RUN_OUT" | cut -d: -f1)
    l_webs=$(grep -n '^run: stopping the web servers$' "$RUN_OUT" | cut -d: -f1)
    [ -n "$l_pibl" ]
    [ -n "$l_webs" ]
    [ "$l_pibl" -lt "$l_webs" ]
    grep -q '^run: web servers stopped$' "$RUN_OUT"
    grep -q '"GET /_slow?ms=2500 HTTP/1.1" .* status=200 ' "$RUN_DIR/pibl.log"
    # The config of the run (in TMPDIR) is gone with it.
    [ -z "$(compgen -G "$BATS_TEST_TMPDIR/pibl-run.*")" ]
    [ -z "$(session_pids "$RUN_PID")" ]
    RUN_PID=""
    all_ports_free
}

@test "run: when PIBL itself stops, the script says so, stops the replicas and exits 1" {
    start_run
    wait_ready
    local pibl
    pibl=$(banner_pid PIBL)
    kill -TERM "$pibl"
    finish_run
    cat "$RUN_OUT"
    [ "$RUN_RC" = 1 ]
    grep -q "^run: PIBL (pid $pibl) stopped (exit status 0); stopping the web servers\$" "$RUN_OUT"
    [ -z "$(session_pids "$RUN_PID")" ]
    RUN_PID=""
    all_ports_free
}

@test "demo site: in headless Chromium, index.html shows round robin over the replicas and the page's own cache state" {
    browser_bin >/dev/null || skip "chromium not installed: apt-get install chromium to run this test"
    start_run
    wait_ready
    local k dom names page_backend page_cache first_backend
    for k in 1 2; do
        dom=$(browser --virtual-time-budget=10000 --dump-dom "http://127.0.0.1:$P_PIBL/")
        names=$(printf '%s' "$dom" | sed -n -E 's/.*<ol id="rr"[^>]*>(.*)<\/ol>.*/\1/p' | sed -E 's#</li>#\n#g; s#<li>##g')
        page_backend=$(printf '%s' "$dom" | sed -n -E 's/.*id="page-backend">([^<]*)<.*/\1/p')
        page_cache=$(printf '%s' "$dom" | sed -n -E 's/.*id="page-cache">([^<]*)<.*/\1/p')
        echo "load $k: replicas [$(tr '\n' ' ' <<<"$names")], page X-Backend $page_backend, X-Cache $page_cache"
        # Six answers, each from a replica, at least two different ones.
        [ "$(grep -c '^web[123]$' <<<"$names")" = 6 ]
        [ "$(grep '^web[123]$' <<<"$names" | sort -u | wc -l)" -ge 2 ]
        [[ $page_backend =~ ^web[123]$ ]]
        if [ "$k" = 1 ]; then
            [ "$page_cache" = MISS ]
            first_backend=$page_backend
        else
            # Served from PIBL's cache: the stored copy keeps the first replica's name.
            [ "$page_cache" = HIT ]
            [ "$page_backend" = "$first_backend" ]
        fi
    done
    # Every /_whoami went to a replica (12 in all, none from the cache); the page went once.
    [ "$(grep -c '"GET /_whoami HTTP/1.1" .* backend=web[123] ' "$RUN_DIR/pibl.log")" = 12 ]
    run ! grep -q '"GET /_whoami HTTP/1.1" .* cache=HIT' "$RUN_DIR/pibl.log"
    [ "$(grep -c '"GET / HTTP/1.1" .* cache=MISS' "$RUN_DIR/pibl.log")" = 1 ]
}

@test "status page of make run: headless Chromium renders web1-web3 with their state, counters and buttons" {
    browser_bin >/dev/null || skip "chromium not installed: apt-get install chromium to run this test"
    start_run
    wait_ready
    local i dom rows png="$BATS_TEST_TMPDIR/status.png"
    for i in 1 2 3 4 5 6; do
        pcurl -o /dev/null "http://127.0.0.1:$P_PIBL/_whoami?i=$i"
    done
    pcurl -o /dev/null "http://127.0.0.1:$P_PIBL/"
    pcurl -o /dev/null "http://127.0.0.1:$P_PIBL/"
    dom=$(browser --dump-dom "http://127.0.0.1:$P_ADMIN/")
    rows=$(html_rows backends <<<"$dom")
    echo "$rows"
    for i in 1 2 3; do
        grep -Eq "^web$i 127\.0\.0\.1:[0-9]+\|up\|hace [0-9]+ s \([0-9:]+ UTC\)\|1\|" <<<"$rows"
    done
    grep -q '|drenar activar desactivar$' <<<"$rows"
    [ "$(grep -c '^web' <<<"$rows")" = 3 ]
    # The screenshot docs/status-page.png is this page: SCREENSHOT_OUT=docs/status-page.png takes it again.
    browser --window-size=1500,760 --screenshot="$png" "http://127.0.0.1:$P_ADMIN/" >/dev/null
    [ "$(png_size "$png")" = "1500 760" ]
    [ "$(stat -c %s "$png")" -gt 10000 ]
    if [ -n "${SCREENSHOT_OUT:-}" ]; then
        cp "$png" "$SCREENSHOT_OUT"
    fi
}

@test "run: run-local.sh is shellcheck-clean" {
    command -v shellcheck >/dev/null || skip "shellcheck not installed"
    run shellcheck -x "$RUN_SH"
    echo "$output"
    [ "$status" -eq 0 ]
}
