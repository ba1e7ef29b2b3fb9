#!/usr/bin/env bats
# websocket.bats - WebSocket tunnels and streams through PIBL: a GET with Connection: upgrade and Upgrade: websocket
# reaches a backend with its handshake fields, only a 101 that accepts that upgrade opens a tunnel (any other 101
# is a 502 and the connection stays HTTP), bytes sent with the handshake are not lost, the tunnel copies bytes both
# ways unparsed, passes a half-close on, ends after tunnel_timeout of silence, holds a client that does not read
# back (back-pressure), serves 1,000 tunnels at once, is logged once when it ends (status 101, both byte counts),
# shows on the status page, survives SIGHUP and is cut at shutdown_timeout on SIGTERM; other upgrades (h2c) go on
# as plain HTTP; server-sent events reach the client as they are written.
#
# Clients: headless Chromium loading www/ws.html, Node's WebSocket (when this Node has one), and tests/ws_peer.py
# for exact bytes; backends: pibl-origin's /_ws echo and /_sse stream, and hostile_peer.py for bogus 101s.
# Every wait is bounded; ports are chosen at run time; everything stays on 127.0.0.1.
# shellcheck disable=SC2034  # PIBL_TTL is read by the helpers

bats_require_minimum_version 1.5.0
load helpers
load hostile_helpers
load ops_helpers

setup() { hostile_setup; }
teardown() { hostile_teardown; }

WS_PY="$PIBL_ROOT/tests/ws_peer.py"

# ws CMD ARGS...: run tests/ws_peer.py CMD 127.0.0.1:PIBL_PORT ARGS... (bounded), output in $output.
ws() {
    local cmd=$1
    shift
    run timeout 90 python3 "$WS_PY" "$cmd" "$PIBL_PORT" "$@"
    echo "ws $cmd: $output"
}

# now_ms: the wall clock in milliseconds.
now_ms() {
    echo $(($(date +%s%N) / 1000000))
}

# before A B: 0 when the number A is below B (decimals allowed).
before() {
    awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'
}

# tunnel_line: the log line of the tunnel (status=101) this test made, waiting for it (a tunnel logs at its end).
tunnel_line() {
    wait_for_line "$PIBL_LOG" '"GET /_ws[^"]*" .* status=101 ' 10 || return 1
    grep -E '"GET /_ws[^"]*" .* status=101 ' "$PIBL_LOG" | tail -n 1
}

@test "websocket: handshake forwarded with its fields; 101 relayed; text, binary, ping and close pass; one log line" {
    need_python
    start_origin o1
    start_pibl
    ws echo
    [ "$status" -eq 0 ]
    [ "$output" = "ok replica=o1 x_backend=o1" ]
    # The backend saw the upgrade and the key, as the client sent them (Upgrade is hop-by-hop: PIBL re-adds it).
    tr -d '\r' <"$(origin_log o1).heads" >"$BATS_TEST_TMPDIR/heads"
    cat "$BATS_TEST_TMPDIR/heads"
    grep -qix 'Upgrade: websocket' "$BATS_TEST_TMPDIR/heads"
    grep -qix 'Connection: upgrade' "$BATS_TEST_TMPDIR/heads"
    grep -qx 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "$BATS_TEST_TMPDIR/heads"
    grep -qx 'Sec-WebSocket-Version: 13' "$BATS_TEST_TMPDIR/heads"
    # One line, at the end: status 101, bytes both ways (hello 15 + 8 + 102,410 + 15 + 4 = 102,452 to the client),
    # never through the cache.
    local line
    line=$(tunnel_line)
    echo "$line"
    [[ "$line" == *" backend=127.0.0.1:${ORIGIN_PORT[o1]} status=101 bytes=102452 up="* ]]
    [[ "$line" == *" cache=-"* ]]
    [[ "$line" != *err=* ]]
    [ "$(grep -c '/_ws' "$PIBL_LOG")" -eq 1 ]
}

@test "websocket: a frame sent in the same packet as the handshake is relayed after the 101, not dropped" {
    need_python
    start_origin o1
    start_pibl
    ws early
    [ "$status" -eq 0 ]
    [ "$output" = ok ]
}

@test "websocket: a half-close is passed on; the other direction still flows until it closes too" {
    need_python
    start_origin o1
    start_pibl
    ws halfclose
    [ "$status" -eq 0 ]
    [ "$output" = ok ]
    [[ "$(tunnel_line)" != *err=* ]]
}

@test "websocket: tunnel_timeout of silence both ways ends the tunnel, logged with err=tunnel_timeout" {
    need_python
    start_origin o1
    start_pibl "tunnel_timeout = 1"
    ws idle 10
    [ "$status" -eq 0 ]
    local after=${output#*closed_after=}
    before "$after" 5
    [[ "$(tunnel_line)" == *'err="tunnel_timeout"'* ]]
}

@test "websocket: a client that never reads is held back (bounded bytes, PIBL's memory flat), others are served" {
    need_python
    start_origin o1
    start_pibl
    local rss0 rss1 pid sent
    rss0=$(rss_kb "$PIBL_PID")
    timeout 30 python3 "$WS_PY" noread "$PIBL_PORT" 4 >"$BATS_TEST_TMPDIR/noread" 2>&1 &
    pid=$!
    track_pid "$pid"
    sleep 1
    # Meanwhile other clients get their answers.
    [ "$(pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)")" = 200 ]
    rss1=$(rss_kb "$PIBL_PID")
    wait_pid_exit "$pid" 20
    untrack_pid "$pid"
    cat "$BATS_TEST_TMPDIR/noread"
    sent=$(sed -n -E 's/^ok sent=([0-9]+)$/\1/p' "$BATS_TEST_TMPDIR/noread")
    echo "sent $sent bytes; PIBL RSS $rss0 KB -> $rss1 KB"
    [ -n "$sent" ]
    [ "$sent" -gt 0 ]
    # Kernel socket buffers on four sockets, not PIBL's memory, hold what was sent.
    [ "$sent" -lt $((64 * 1024 * 1024)) ]
    [ $((rss1 - rss0)) -lt 8192 ]
}

@test "websocket: 1,000 tunnels at once over three backends, each echoes; all counted, then all closed" {
    need_python
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt 4096 ]; then
        skip "ulimit -Hn is $hard (< 4096): cannot hold 1,000 tunnels on both sides"
    fi
    ulimit -n 4096
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl "max_connections = 2000"
    ws many 1000
    [ "$status" -eq 0 ]
    [ "$output" = "ok tunnels=1000 replicas=3" ]
    wait_for_count "$PIBL_LOG" '"GET /_ws HTTP/1\.1" .* status=101 ' 1000 20
}

@test "websocket: a 101 to a request that asked for no upgrade, or for another protocol, is a 502; HTTP goes on" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    start_pibl
    # Request 1 (a plain GET) gets a 101, 2 a good answer, 3 and 4 (WebSocket requests) 101s for h2c and for
    # nothing named.
    fake_answer 1 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nTUNNEL'
    fake_answer 3 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nTUNNEL'
    fake_answer 4 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\nTUNNEL'
    fake_answer default 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n'
    local ws_req='GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'
    # A plain GET answered 101 (the smuggling pattern), then a GET on the same connection.
    run raw_fmt "$PIBL_PORT" 'GET /plain HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
    echo "$output"
    [ "$(status_of "$output")" = 502 ]
    [[ "$output" != *TUNNEL* ]]
    [[ "$output" == *"HTTP/1.1 200 OK"*"ok"* ]]
    # A websocket request answered with a 101 for h2c, or a 101 without Upgrade.
    run raw_fmt "$PIBL_PORT" "$ws_req"
    [ "$(status_of "$output")" = 502 ]
    [[ "$output" != *TUNNEL* ]]
    run raw_fmt "$PIBL_PORT" "$ws_req"
    [ "$(status_of "$output")" = 502 ]
    [[ "$output" != *TUNNEL* ]]
    grep -q 'status=502 .*err="101 answer to a request that asked for no upgrade"' "$PIBL_LOG"
    [ "$(grep -c 'status=502 .*err="101 answer for another protocol than websocket"' "$PIBL_LOG")" -eq 2 ]
}

@test "websocket: the backend's refusal (426) reaches the client and the connection stays HTTP" {
    need_python
    start_origin o1
    start_pibl
    local req='GET /_ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
    run raw_fmt "$PIBL_PORT" "$req"
    echo "$output"
    [ "$(status_of "$output")" = 426 ]
    [[ "$output" == *"HTTP/1.1 200 OK"*"hello from the test origin"* ]]
}

@test "websocket: another upgrade (h2c) is dropped and the request goes on as plain HTTP" {
    start_origin o1
    start_pibl
    local out
    out=$(pcurl -sS -D - -H 'Connection: Upgrade, HTTP2-Settings' -H 'Upgrade: h2c' -H 'HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA' \
        "$(url /hello.txt)")
    echo "$out"
    [ "$(status_of "$out")" = 200 ]
    tr -d '\r' <"$(origin_log o1).heads" >"$BATS_TEST_TMPDIR/heads"
    run grep -Eic '^(upgrade|http2-settings):' "$BATS_TEST_TMPDIR/heads"
    [ "$output" -eq 0 ]
}

@test "websocket: the status page, /status.json and /metrics count open tunnels, per backend too" {
    need_python
    start_origin o1
    start_pibl_admin
    local f="$BATS_TEST_TMPDIR/hold" pid
    timeout 60 python3 "$WS_PY" hold "$PIBL_PORT" "$f" >"$BATS_TEST_TMPDIR/hold.out" 2>&1 &
    pid=$!
    track_pid "$pid"
    wait_for_line "$f" '^open$'
    [ "$(top_value open_tunnels)" = 1 ]
    [ "$(metric pibl_open_tunnels)" = 1 ]
    [ "$(metric pibl_backend_open_tunnels "backend=\"127.0.0.1:${ORIGIN_PORT[o1]}\"")" = 1 ]
    status_json | grep -q '"open_tunnels":1}'
    pcurl -f "$(admin_url /)" | grep -q 'WebSocket: 1 '
    : >"$f.stop"
    wait_pid_exit "$pid" 10
    untrack_pid "$pid"
    grep -q '^ok echoes=' "$BATS_TEST_TMPDIR/hold.out"
    tunnel_line >/dev/null
    [ "$(top_value open_tunnels)" = 0 ]
}

@test "websocket: SIGHUP leaves an open tunnel alone; SIGTERM cuts it at shutdown_timeout, logged, and pibl exits 0" {
    need_python
    start_origin o1
    start_pibl "shutdown_timeout = 2"
    local f="$BATS_TEST_TMPDIR/hold" pid n
    timeout 60 python3 "$WS_PY" hold "$PIBL_PORT" "$f" >"$BATS_TEST_TMPDIR/hold.out" 2>&1 &
    pid=$!
    track_pid "$pid"
    wait_for_line "$f" '^open$'
    kill -HUP "$PIBL_PID"
    wait_for_line "$PIBL_LOG" '^pibl: reloaded '
    sleep 1
    n=$(grep -c '/_ws' "$(origin_log o1)")
    [ "$n" -eq 1 ]                              # still the one tunnel, echoing (checked below)
    kill -TERM "$PIBL_PID"
    wait_pid_exit "$pid" 10
    untrack_pid "$pid"
    cat "$BATS_TEST_TMPDIR/hold.out"
    grep -Eq '^ok closed echoes=([1-9][0-9]+)$' "$BATS_TEST_TMPDIR/hold.out"
    wait_pid_exit "$PIBL_PID" 10
    local prc=0
    wait "$PIBL_PID" || prc=$?
    untrack_pid "$PIBL_PID"
    [ "$prc" -eq 0 ]
    [[ "$(tunnel_line)" == *'err="tunnel cut at shutdown_timeout"'* ]]
}

@test "websocket: tunnels count towards max_connections" {
    need_python
    start_origin o1
    start_pibl "max_connections = 2"
    local f1="$BATS_TEST_TMPDIR/h1" f2="$BATS_TEST_TMPDIR/h2" p1 p2 code
    timeout 60 python3 "$WS_PY" hold "$PIBL_PORT" "$f1" >/dev/null 2>&1 &
    p1=$!
    track_pid "$p1"
    timeout 60 python3 "$WS_PY" hold "$PIBL_PORT" "$f2" >/dev/null 2>&1 &
    p2=$!
    track_pid "$p2"
    wait_for_line "$f1" '^open$'
    wait_for_line "$f2" '^open$'
    code=$(pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)")
    [ "$code" = 503 ]
    : >"$f1.stop"
    : >"$f2.stop"
    wait_pid_exit "$p1" 10
    wait_pid_exit "$p2" 10
    untrack_pid "$p1"
    untrack_pid "$p2"
}

@test "websocket: Chromium loads www/ws.html through PIBL; each load shows the replica round robin gave it" {
    browser_bin >/dev/null || skip "chromium not installed: apt-get install chromium to run this test"
    start_origin o1 "$PIBL_ROOT/www"
    start_origin o2 "$PIBL_ROOT/www"
    start_origin o3 "$PIBL_ROOT/www"
    start_pibl
    local k dom shown port logged seen=""
    for k in 1 2 3; do
        # The page's state comes over the WebSocket, so wait for the echo line to change, not for a virtual clock.
        dom=$(browser_dom_when 'document.getElementById("echo").textContent !== "-"' "$(url /ws.html)") || true
        shown=$(printf '%s' "$dom" | sed -n -E 's/.*id="replica">([^<]*)<.*/\1/p')
        printf '%s\n' "$dom" | grep -E 'id="(replica|echo)"'
        printf '%s' "$dom" | grep -q 'id="echo">ok (hola '
        # The replica the page shows is the backend PIBL logged for that tunnel.
        wait_for_count "$PIBL_LOG" '"GET /_ws HTTP/1\.1" .* status=101 ' "$k"
        port=$(grep -E '"GET /_ws HTTP/1\.1" .* status=101 ' "$PIBL_LOG" | sed -n "${k}p" |
            sed -n -E 's/.* backend=127\.0\.0\.1:([0-9]+) .*/\1/p')
        logged=""
        for o in o1 o2 o3; do
            [ "${ORIGIN_PORT[$o]}" = "$port" ] && logged=$o
        done
        echo "load $k: page shows '$shown', log says $logged"
        [ -n "$shown" ]
        [ "$shown" = "$logged" ]
        seen+="$shown "
    done
    echo "replicas: $seen"
}

@test "websocket: Node's WebSocket client exchanges messages through PIBL" {
    command -v node >/dev/null || skip "node is not installed"
    node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null ||
        skip "this node has no WebSocket client (Node 20.10 or later with --experimental-websocket)"
    start_origin o1
    start_origin o2
    start_pibl
    cat >"$BATS_TEST_TMPDIR/ws.js" <<'EOF'
const port = process.argv[2], got = [];
const stop = setTimeout(() => { console.log("timeout " + JSON.stringify(got)); process.exit(1); }, 10000);
const ws = new WebSocket(`ws://127.0.0.1:${port}/_ws`);
ws.binaryType = "arraybuffer";
ws.onopen = () => { ws.send("text message"); ws.send(new Uint8Array(70000).fill(7)); };
ws.onmessage = (e) => {
  got.push(typeof e.data === "string" ? e.data : "binary:" + e.data.byteLength);
  if (got.length === 3) ws.close(1000, "done");
};
ws.onclose = (e) => { clearTimeout(stop); console.log(JSON.stringify({ got, code: e.code })); };
EOF
    run timeout 30 node --experimental-websocket "$BATS_TEST_TMPDIR/ws.js" "$PIBL_PORT"
    echo "$output"
    [[ "$output" == *'{"got":["hello from o'[12]'","text message","binary:70000"],"code":1000}'* ]]
}

@test "streams: server-sent events reach the client as they are written, with the cache on too" {
    PIBL_TTL=60
    start_origin o1
    start_pibl
    local t0 first last
    t0=$(now_ms)
    # 3 events 1.5 s apart: the first must arrive long before the stream ends.
    pcurl -N "$(url '/_sse?n=3&ms=1500')" | while IFS= read -r line; do
        if [ -n "$line" ]; then
            echo "$(($(now_ms) - t0)) $line"
        fi
    done >"$BATS_TEST_TMPDIR/events"
    cat "$BATS_TEST_TMPDIR/events"
    [ "$(grep -c 'data: event [123] from o1' "$BATS_TEST_TMPDIR/events")" -eq 3 ]
    first=$(head -n 1 "$BATS_TEST_TMPDIR/events" | cut -d' ' -f1)
    last=$(tail -n 1 "$BATS_TEST_TMPDIR/events" | cut -d' ' -f1)
    [ $((last - first)) -gt 2000 ]
}

@test "streams: a second client of the same event stream is not held behind the first by request collapsing" {
    PIBL_TTL=60
    start_origin o1
    start_pibl
    local t0 pid b_first a_last
    t0=$(now_ms)
    (pcurl -N "$(url '/_sse?n=3&ms=1500')" | while IFS= read -r line; do
        if [ -n "$line" ]; then
            echo "$(($(now_ms) - t0)) $line"
        fi
    done >"$BATS_TEST_TMPDIR/a") 3>&- &
    pid=$!
    track_pid "$pid"
    sleep 0.5
    pcurl -N "$(url '/_sse?n=3&ms=1500')" | while IFS= read -r line; do
        if [ -n "$line" ]; then
            echo "$(($(now_ms) - t0)) $line"
        fi
    done >"$BATS_TEST_TMPDIR/b"
    wait_pid_exit "$pid" 10
    untrack_pid "$pid"
    cat "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/b"
    [ "$(grep -c 'data: event' "$BATS_TEST_TMPDIR/a")" -eq 3 ]
    [ "$(grep -c 'data: event' "$BATS_TEST_TMPDIR/b")" -eq 3 ]
    b_first=$(head -n 1 "$BATS_TEST_TMPDIR/b" | cut -d' ' -f1)
    a_last=$(tail -n 1 "$BATS_TEST_TMPDIR/a" | cut -d' ' -f1)
    # The second stream started while the first one was still going.
    [ "$b_first" -lt $((a_last - 1000)) ]
    [ "$(grep -c '^o1 GET /_sse' "$(origin_log o1)")" -eq 2 ]
}
