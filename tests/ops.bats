#!/usr/bin/env bats
# ops.bats - operating PIBL: the status page (/status.json, the HTML table, /metrics) against the
# traffic sent and what each origin logged, active health checks taking a stopped backend out and back (and
# never the last one), smooth weighted round robin, SIGHUP reload during a download, a refused reload, SIGUSR1
# log reopen after mv, the page in a headless browser, and the systemd unit's reload command.
# Origins name themselves in X-Backend and log every request they receive (helpers.bash); the status page listens
# on a free port read from the start-up line (ops_helpers.bash).

# SC2030/SC2031: each test sets BACKENDS (helpers.bash) for its own proxy; the subshell is the point.
# shellcheck disable=SC2030,SC2031
bats_require_minimum_version 1.5.0
load helpers
load ops_helpers

setup() { helpers_setup; }
teardown() { helpers_teardown; }

# name_of ORIGIN: the backend name PIBL shows for an origin (127.0.0.1:PORT).
name_of() {
    echo "127.0.0.1:${ORIGIN_PORT[$1]}"
}

# seq_count SEQ WORD: how many space-separated words of SEQ are exactly WORD.
seq_count() {
    tr ' ' '\n' <<<"$1" | grep -cx -- "$2" || true
}

# three_up_one_dead: origins o1 o2 running and `dead` stopped (its port refuses), proxy with the status page and
# down_time 60, then 6 requests (all must be answered 200 by o1/o2). Sets DEAD = the dead backend's name.
three_up_one_dead() {
    start_origin o1
    start_origin o2
    start_origin dead
    stop_origin dead
    DEAD=$(name_of dead)
    start_pibl_admin "down_time = 60"
    local seq
    seq=$(backend_seq 6 /hello.txt)
    echo "sequence: $seq"
    [ $(($(seq_count "$seq" o1) + $(seq_count "$seq" o2))) -eq 6 ]
    wait_top requests_total 6
}

@test "status: /status.json counts N requests; per-backend requests sum to N and match each origin's log" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl_admin
    run backend_seq 12 /hello.txt
    echo "sequence: $output"
    [ "$output" = "o1 o2 o3 o1 o2 o3 o1 o2 o3 o1 o2 o3" ]
    wait_top requests_total 12
    wait_top open_connections 0
    snapshot
    echo "$SNAP"
    local o n logged name
    [ "$(sv backends)" -eq 3 ]
    [ "$(sv names)" = "$(name_of o1) $(name_of o2) $(name_of o3)" ]
    for o in o1 o2 o3; do
        name=$(name_of $o)
        n=$(sv "$name.requests")
        logged=$(count_lines "$(origin_log $o)" "^$o GET /hello\.txt\?i=")
        echo "$o: json $n, origin log $logged"
        [ "$n" -eq "$logged" ]
        [ "$n" -eq 4 ]
        [ "$(sv "$name.failures")" -eq 0 ]
        [ "$(sv "$name.state")" = up ]
        [ "$(sv "$name.health_down")" = false ]
        [ "$(sv "$name.last_error")" = null ]
        [ "$(sv "$name.weight")" -eq 1 ]
        [[ "$(sv "$name.avg_ms")" =~ ^[0-9]+\.[0-9]+$ ]]
        [[ "$(sv "$name.p99_ms")" =~ ^[0-9]+\.[0-9]+$ ]]
        [ "$(sv "$name.p99_ms")" != 0.0 ]
    done
    [ "$(sv sum_requests)" -eq 12 ]
    [ "$(sv cache.enabled)" = false ]
    [[ "$(sv uptime_s)" =~ ^[0-9]+$ ]]
    # Reading the status page is not proxied traffic: the count stays.
    [ "$(top_value requests_total)" -eq 12 ]
}

@test "status: a dead backend shows a failed request, state down and its last error; the others match their logs" {
    three_up_one_dead
    snapshot
    echo "$SNAP"
    local o sum=0 n
    [ "$(sv "$DEAD.requests")" -eq 1 ]
    [ "$(sv "$DEAD.failures")" -eq 1 ]
    [ "$(sv "$DEAD.state")" = down ]
    [ "$(sv "$DEAD.health_down")" = false ]        # a passive mark: no health check is configured
    [ "$(sv "$DEAD.last_error")" != null ]
    [ -n "$(sv "$DEAD.last_error")" ]
    for o in o1 o2; do
        n=$(sv "$(name_of $o).requests")
        [ "$n" -eq "$(count_lines "$(origin_log $o)" "^$o GET /hello\.txt\?i=")" ]
        [ "$(sv "$(name_of $o).failures")" -eq 0 ]
        sum=$((sum + n))
    done
    [ "$sum" -eq 6 ]
    # Every exchange was answered once: requests sent to backends minus failed ones = requests_total.
    [ $(($(sv sum_requests) - $(sv sum_failures))) -eq 6 ]
}

@test "status: the HTML page's backend table and /metrics show the same counters as the JSON" {
    three_up_one_dead
    snapshot
    local page row o name
    page=$(pcurl -f -D "$BATS_TEST_TMPDIR/page.head" "$(admin_url /)")
    grep -qi '^content-type: text/html' "$BATS_TEST_TMPDIR/page.head"
    [[ "$page" == *'<meta http-equiv="refresh" content="2">'* ]]
    run html_rows backends <<<"$page"
    echo "$output"
    [ "${#lines[@]}" -eq 4 ]
    [ "${lines[0]}" = "Backend|Estado|Desde|Peso|Última sonda|Peticiones|2xx|3xx|4xx|5xx|Fallos|Sondas fallidas|Bytes in|Bytes out|Conexiones|Túneles|Latencia media (ms)|p99 (ms)|Último error|Acciones" ]
    for o in o1 o2 dead; do
        name=$(name_of $o)
        row=$(printf '%s\n' "${lines[@]}" | grep -F "$name|")
        echo "row $o: $row"
        [ "$(printf '%s' "$row" | cut -d'|' -f2)" = "$(sv "$name.state")" ]
        [[ "$(printf '%s' "$row" | cut -d'|' -f3)" =~ ^hace\ [0-9]+\ s\ \([0-9]{2}:[0-9]{2}:[0-9]{2}\ UTC\)$ ]]
        [ "$(printf '%s' "$row" | cut -d'|' -f4)" = 1 ]
        [ "$(printf '%s' "$row" | cut -d'|' -f6)" = "$(sv "$name.requests")" ]
        [ "$(printf '%s' "$row" | cut -d'|' -f7)" = "$(sv "$name.answers" | python3 -c 'import json,sys; print(json.load(sys.stdin)["2xx"])')" ]
        [ "$(printf '%s' "$row" | cut -d'|' -f11)" = "$(sv "$name.failures")" ]
        [ "$(printf '%s' "$row" | cut -d'|' -f20)" = "drenar activar desactivar" ]
    done
    [[ "$(printf '%s\n' "${lines[@]}" | grep -F "$DEAD|")" =~ ^"$DEAD"\|down\|hace\ [0-9]+\ s\ \([0-9:]+\ UTC\)\|1\|-\|1\|0\|0\|0\|0\|1\|0\| ]]
    [ -n "$(html_rows cache <<<"$page")" ]
    # /metrics: Prometheus text with the same numbers.
    pcurl -f -D "$BATS_TEST_TMPDIR/metrics.head" -o "$BATS_TEST_TMPDIR/metrics" "$(admin_url /metrics)"
    grep -qi '^content-type: text/plain' "$BATS_TEST_TMPDIR/metrics.head"
    [ "$(metric pibl_requests_total)" = 6 ]
    [ "$(metric pibl_open_connections)" = 0 ]
    [ "$(metric pibl_cache_lookups_total)" = 0 ]
    for o in o1 o2 dead; do
        name=$(name_of $o)
        [ "$(metric pibl_backend_requests_total "backend=\"$name\"")" = "$(sv "$name.requests")" ]
        [ "$(metric pibl_backend_failures_total "backend=\"$name\"")" = "$(sv "$name.failures")" ]
    done
    [ "$(metric pibl_backend_up "backend=\"$(name_of o1)\"")" = 1 ]
    [ "$(metric pibl_backend_up "backend=\"$DEAD\"")" = 0 ]
    [ "$(metric pibl_backend_failures_total "backend=\"$DEAD\"")" = 1 ]
    [ -n "$(metric pibl_backend_latency_avg_seconds "backend=\"$(name_of o1)\"")" ]
    [ -n "$(metric pibl_backend_latency_p99_seconds "backend=\"$(name_of o1)\"")" ]
    [ -n "$(metric pibl_uptime_seconds)" ]
}

@test "status: other paths 404, POST 405, HEAD ok, every answer dated; no admin_port means no status page" {
    start_origin o1
    start_pibl_admin
    [ "$(pcurl -o /dev/null -w '%{http_code}' "$(admin_url /nope)")" = 404 ]
    [ "$(pcurl -o /dev/null -w '%{http_code}' -X POST -d x "$(admin_url /status.json)")" = 405 ]
    [ "$(pcurl -o /dev/null -w '%{http_code}' -I "$(admin_url /metrics)")" = 200 ]
    [ "$(pcurl -o /dev/null -w '%{http_code}' "$(admin_url /status)")" = 200 ]
    # The status page's answers carry a Date (RFC 9110 6.6.1), its 404 too
    pcurl -s -o /dev/null -D - "$(admin_url /nope)" | tr -d '\r' | grep -Eq '^Date: [A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} GMT$'
    pcurl -s -o /dev/null -D - "$(admin_url /status.json)" | tr -d '\r' | grep -Eq '^Date: .* GMT$'
    stop_pid "$PIBL_PID" >/dev/null
    : >"$PIBL_OUT"
    start_pibl
    run ! grep -q 'status page' "$PIBL_OUT"
}

@test "status: an admin port already taken is a warning, and PIBL still proxies" {
    start_origin o1
    start_origin busy          # its listening port stands in for a taken admin port
    start_pibl "admin_port = ${ORIGIN_PORT[busy]}"
    grep -q "^pibl: warning: no status page: cannot listen on 127.0.0.1 port ${ORIGIN_PORT[busy]}" "$PIBL_OUT"
    run ! grep -q '^pibl: status page on' "$PIBL_OUT"
    [ "$(pcurl -o /dev/null -w '%{http_code}' "$(url /index.html)")" = 200 ]
    pid_alive "$PIBL_PID"
}

@test "status: requests_total counts cache hits and error answers; backends count only what reached them" {
    start_origin o1
    PIBL_TTL=30 start_pibl_admin
    local i
    for i in 1 2 3 4; do
        [ "$(pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)")" = 200 ]
    done
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\n\r\n'     # no Host on 1.1: 400 from PIBL
    [ "$(status_of "$output")" = 400 ]
    wait_top requests_total 5
    snapshot
    echo "$SNAP"
    [ "$(sv "$(name_of o1).requests")" -eq 1 ]
    [ "$(count_lines "$(origin_log o1)" '^o1 GET /hello\.txt$')" -eq 1 ]
    [ "$(sv cache.enabled)" = true ]
    [ "$(sv cache.ttl_s)" -eq 30 ]
    [ "$(sv cache.entries)" -eq 1 ]
    [ "$(sv cache.hits)" -eq 3 ]
    [ "$(sv cache.lookups)" -eq 4 ]
    [ "$(sv cache.bytes)" -gt 0 ]
    [ "$(metric pibl_cache_hits_total)" = 3 ]
}

@test "health: a stopped backend is taken out after health_fall probes and comes back after health_rise" {
    start_origin a
    start_origin b
    local bn re seq
    bn=$(name_of b)
    start_pibl_admin "health_check = /hello.txt" "health_interval = 1" "health_fall = 2" "health_rise = 2"
    wait_for_count "$(origin_log b)" '^b GET /hello\.txt$' 1      # probes reach b
    snapshot
    [ "$(sv "$bn.state")" = up ]
    stop_origin b
    re="^pibl: health: backend $bn taken out after 2 failed probes \\(health check: [a-z ]+\\)$"
    wait_for_line "$PIBL_LOG" "$re" 10
    snapshot
    echo "$SNAP"
    [ "$(sv "$bn.state")" = down ]
    [ "$(sv "$bn.health_down")" = true ]
    [[ "$(sv "$bn.last_error")" == "health check"* ]]
    # Taken out by the probes alone: no client request is sent to it.
    seq=$(backend_seq 4 /hello.txt)
    [ "$seq" = "a a a a" ]
    snapshot
    [ "$(sv "$bn.requests")" -eq 0 ]
    [ "$(sv "$bn.failures")" -eq 0 ]
    # Restarted on the same port: back after 2 good probes, and used again.
    restart_origin b
    wait_for_line "$PIBL_LOG" "^pibl: health: backend $bn is back \\(2 good probes of /hello\\.txt\\)$" 10
    snapshot
    [ "$(sv "$bn.state")" = up ]
    [ "$(sv "$bn.health_down")" = false ]
    seq=$(backend_seq 4 /hello.txt)
    echo "after: $seq"
    [ "$(seq_count "$seq" b)" -eq 2 ]
    [ "$(seq_count "$seq" a)" -eq 2 ]
}

@test "health: a backend that accepts and never answers does not slow the probes of the others" {
    start_origin a
    # a silent backend: accepts, reads nothing, answers nothing (30 s at most)
    python3 -c '
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
s.settimeout(0.5)
print(s.getsockname()[1], flush=True)
held, end = [], time.time() + 30
while time.time() < end:
    try:
        held.append(s.accept()[0])
    except socket.timeout:
        pass
' >"$BATS_TEST_TMPDIR/silent.port" &
    local silent=$!
    track_pid "$silent"
    wait_for_line "$BATS_TEST_TMPDIR/silent.port" '^[0-9]+$' 5
    BACKENDS+=("127.0.0.1:$(cat "$BATS_TEST_TMPDIR/silent.port")")
    start_pibl_admin "health_check = /hello.txt" "health_interval = 1" "connect_timeout = 4"
    wait_for_count "$(origin_log a)" '^a GET /hello\.txt$' 1
    local before after
    before=$(count_lines "$(origin_log a)" '^a GET /hello\.txt$')
    sleep 6
    after=$(count_lines "$(origin_log a)" '^a GET /hello\.txt$')
    echo "probes of a in 6 s: $((after - before))"
    # one round a second (plus its probes): a is asked about every second, not once per 5 s
    [ $((after - before)) -ge 4 ]
    stop_pid "$silent"
}

@test "health: the last backend up is never taken out (log line), and serves as soon as it is back" {
    start_origin a
    start_origin b
    local an bn
    an=$(name_of a)
    bn=$(name_of b)
    start_pibl_admin "health_check = /hello.txt" "health_interval = 1" "health_fall = 2" "health_rise = 2"
    wait_for_count "$(origin_log a)" '^a GET /hello\.txt$' 1
    wait_for_count "$(origin_log b)" '^b GET /hello\.txt$' 1
    stop_origin a
    stop_origin b
    # The two are probed at once: whichever fails first is taken out, the other is kept.
    wait_for_line "$PIBL_LOG" "^pibl: health: backend .* taken out after 2 failed probes" 10
    local out kept kept_origin
    if [ "$(count_lines "$PIBL_LOG" "backend $an taken out")" -eq 1 ]; then
        out=$an kept=$bn kept_origin=b
    else
        out=$bn kept=$an kept_origin=a
    fi
    wait_for_line "$PIBL_LOG" \
        "^pibl: health: backend $kept fails \\(health check: [a-z ]+\\) but it is the last one up: kept in rotation$" 10
    [ "$(count_lines "$PIBL_LOG" "backend $kept taken out")" -eq 0 ]
    [ "$(count_lines "$PIBL_LOG" "backend $out taken out")" -eq 1 ]
    snapshot
    echo "$SNAP"
    [ "$(sv "$out.health_down")" = true ]
    [ "$(sv "$kept.health_down")" = false ]
    [ "$(sv "$kept.state")" = up ]
    # Still in rotation: once it listens again the next request is served, without waiting for health_rise.
    restart_origin "$kept_origin"
    [ "$(pcurl -o /dev/null -w '%{http_code} %header{x-backend}' "$(url /hello.txt?now=1)")" = "200 $kept_origin" ]
    [ "$(count_lines "$PIBL_LOG" "backend $kept is back")" -eq 0 ]
}

@test "weights: 3 1 1 spread 300 requests 180/60/60 in smooth order a b a c a" {
    start_origin a
    start_origin b
    start_origin c
    BACKENDS[0]+=" weight=3"
    start_pibl_admin
    local seq o
    seq=$(backend_seq 300 /hello.txt)
    [ "$(cut -d' ' -f1-10 <<<"$seq")" = "a b a c a a b a c a" ]
    [ "$(seq_count "$seq" a)" -eq 180 ]
    [ "$(seq_count "$seq" b)" -eq 60 ]
    [ "$(seq_count "$seq" c)" -eq 60 ]
    [ "$(count_lines "$(origin_log a)" '^a GET /hello\.txt\?i=')" -eq 180 ]
    [ "$(count_lines "$(origin_log b)" '^b GET /hello\.txt\?i=')" -eq 60 ]
    [ "$(count_lines "$(origin_log c)" '^c GET /hello\.txt\?i=')" -eq 60 ]
    wait_top requests_total 300
    snapshot
    [ "$(sv weights)" = "3 1 1" ]
    [ "$(sv "$(name_of a).weight")" -eq 3 ]
    for o in a b c; do
        [ "$(sv "$(name_of $o).requests")" -eq "$(count_lines "$(origin_log $o)" "^$o GET ")" ]
    done
}

@test "reload: SIGHUP swaps a b for b c while a download from a completes intact on its connection" {
    start_origin a
    start_origin b
    start_origin c
    local all=("${BACKENDS[@]}") size=12000000 dl="$BATS_TEST_TMPDIR/dl.bin" out="$BATS_TEST_TMPDIR/dl.out" i
    BACKENDS=("${all[0]}" "${all[1]}")
    start_pibl_admin
    # A ~2 s download from a (read at 6 MB/s), then one more request on the same connection.
    slow_get "$PIBL_PORT" 6000000 "$dl" "/_bytes?size=$size" /hello.txt?same-conn=1 >"$out" 3>&- &
    local dlpid=$!
    track_pid "$dlpid"
    wait_for_line "$(origin_log a)" '^a GET /_bytes\?size='
    for ((i = 0; i < 50; i++)); do
        [ "$(stat -c %s "$dl" 2>/dev/null || echo 0)" -gt 0 ] && break
        sleep 0.1
    done
    BACKENDS=("${all[1]}" "${all[2]}")
    write_pibl_config "$PIBL_CFG" "admin_port = 0"
    signal_pibl HUP '^pibl: reloaded .*pibl\.cfg: 2 backends \(1 added, 1 removed, 0 changed\)$'
    local got_at_reload
    got_at_reload=$(stat -c %s "$dl")
    echo "bytes when the reload was logged: $got_at_reload"
    # The reload happened mid-download: the client is still reading and PIBL has not logged the exchange yet.
    pid_alive "$dlpid"
    [ "$got_at_reload" -lt "$size" ]
    [ "$(count_lines "$PIBL_LOG" '"GET /_bytes')" -eq 0 ]
    wait_pid_exit "$dlpid" 15
    wait "$dlpid"
    untrack_pid "$dlpid"
    cat "$out"
    [ "$(sed -n 1p "$out")" = "200 a $size" ]
    [[ "$(sed -n 2p "$out")" =~ ^200\ [bc]\ [0-9]+$ ]]   # same connection, new backend set
    [ "$(stat -c %s "$dl")" -eq "$size" ]
    [ "$(sha "$dl")" = "$(digits "$size" | sha256sum | cut -d' ' -f1)" ]
    wait_for_line "$PIBL_LOG" "\"GET /_bytes\\?size=$size HTTP/1.1\" .* backend=$(name_of a) status=200 bytes=$size "
    # From now on only b and c.
    local seq
    seq=$(backend_seq 6 /hello.txt)
    echo "after reload: $seq"
    [ "$(seq_count "$seq" b)" -eq 3 ]
    [ "$(seq_count "$seq" c)" -eq 3 ]
    [ "$(count_lines "$(origin_log a)" .)" -eq 1 ]
    snapshot
    [ "$(sv names)" = "$(name_of b) $(name_of c)" ]
}

@test "reload: an invalid config is refused with FILE:LINE and the old config keeps serving; a fixed one applies" {
    start_origin a
    start_origin b
    start_origin c
    local all=("${BACKENDS[@]}") line
    BACKENDS=("${all[0]}" "${all[1]}")
    start_pibl_admin
    [ "$(backend_seq 2 /hello.txt)" = "a b" ]
    BACKENDS=("${all[@]}")
    write_pibl_config "$PIBL_CFG" "admin_port = 0" "prot = 8080"
    line=$(grep -n '^prot = 8080$' "$PIBL_CFG" | cut -d: -f1)
    signal_pibl HUP "^pibl: reload refused: .*pibl\\.cfg:$line: unknown key \"prot\" \\(the running config stays\\)$"
    pid_alive "$PIBL_PID"
    [ "$(backend_seq 4 /hello.txt)" = "a b a b" ]
    [ "$(count_lines "$(origin_log c)" .)" -eq 0 ]
    snapshot
    [ "$(sv names)" = "$(name_of a) $(name_of b)" ]
    [ "$(count_lines "$PIBL_LOG" '^pibl: reloaded ')" -eq 0 ]
    # The same config without the bad line is taken.
    write_pibl_config "$PIBL_CFG" "admin_port = 0"
    signal_pibl HUP '^pibl: reloaded .*pibl\.cfg: 3 backends \(1 added, 0 removed, 0 changed\)$'
    local seq
    seq=$(backend_seq 3 /hello.txt)
    [ "$(tr ' ' '\n' <<<"$seq" | sort | tr '\n' ' ')" = "a b c " ]
}

@test "log: SIGUSR1 reopens the log file after mv (logrotate), new lines go to the old path" {
    start_origin a
    start_pibl
    pcurl -o /dev/null "$(url /hello.txt?before=1)"
    wait_for_line "$PIBL_LOG" 'hello\.txt\?before=1 '
    mv "$PIBL_LOG" "$PIBL_LOG.1"
    kill -USR1 "$PIBL_PID"
    local i
    for ((i = 0; i < 50; i++)); do
        [ -f "$PIBL_LOG" ] && break
        sleep 0.1
    done
    [ -f "$PIBL_LOG" ]
    pcurl -o /dev/null "$(url /hello.txt?after=1)"
    wait_for_line "$PIBL_LOG" 'hello\.txt\?after=1 .* status=200 '
    pid_alive "$PIBL_PID"
    grep -q 'hello\.txt?before=1 ' "$PIBL_LOG.1"
    run ! grep -q 'hello\.txt?after=1 ' "$PIBL_LOG.1"
    run ! grep -q 'hello\.txt?before=1 ' "$PIBL_LOG"
}

@test "browser: headless Chromium renders the status page (screenshot and DOM with the backend table)" {
    local bin
    bin=$(browser_bin) || skip "chromium not installed: apt-get install chromium to run this test"
    echo "browser: $bin"
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl_admin
    backend_seq 9 /hello.txt >/dev/null
    wait_top requests_total 9
    local png="$BATS_TEST_TMPDIR/status.png" dom o
    browser --screenshot="$png" "$(admin_url /)" >/dev/null
    [ -f "$png" ]
    echo "screenshot: $(stat -c %s "$png") bytes, $(png_size "$png")"
    [ "$(png_size "$png")" = "1100 700" ]
    [ "$(stat -c %s "$png")" -gt 10000 ]                # a blank 1100x700 page is ~4 KB
    dom=$(browser --dump-dom "$(admin_url /)")
    run html_rows backends <<<"$dom"
    echo "$output"
    [ "${#lines[@]}" -eq 4 ]
    [[ "${lines[0]}" == "Backend|Estado|"* ]]
    for o in o1 o2 o3; do
        printf '%s\n' "${lines[@]}" | grep -qx "$(name_of $o)|up|hace [0-9]* s ([0-9:]* UTC)|1|-|3|3|0|0|0|0|0|.*|drenar activar desactivar"
    done
}

@test "systemd: the unit reloads with SIGHUP and passes systemd-analyze verify when available" {
    local unit="$PIBL_ROOT/scripts/pibl.service" rendered="$BATS_TEST_TMPDIR/pibl.service"
    # shellcheck disable=SC2016  # $MAINPID is literal text of the unit
    grep -qx 'ExecReload=/bin/kill -HUP \$MAINPID' "$unit"
    grep -qx 'Type=simple' "$unit"                    # MAINPID is PIBL itself (foreground)
    if ! command -v systemd-analyze >/dev/null; then
        echo "# systemd-analyze not installed: only the ExecReload line was checked" >&3
        return 0
    fi
    sed -e "s#@PIBL_BIN@#$PIBL_BIN#g" -e "s#@PIBL_HOME@#$BATS_TEST_TMPDIR#g" -e 's#@PIBL_CFG@#pibl.cfg#g' \
        -e 's#@PIBL_TTL@#30#g' \
        -e "s#@PIBL_USER@#$(id -un)#g" "$unit" >"$rendered"
    run ! grep -q '@PIBL_' "$rendered"
    run timeout 30 systemd-analyze verify "$rendered"
    echo "$output"
    [ "$status" -eq 0 ]
}
