#!/usr/bin/env bats
# backends.bats - the operator's view of backends: names (`backend = NAME host:port`) in the log, the status page,
# /status.json, /status.csv and /metrics; drain by config (drain, weight=0) and at run time from the status page
# (POST /backend: drain, enable, disable, reset; only from admin_allow, never cross-site); passive marks logged when
# a backend is taken out and when it is used again; the per-backend counters (answers by class, bytes, active
# connections, state since, last probe); the cache shown "off" with its reason; `pibl -t` finding what start-up
# would (a port used twice, an unusable cache_dir or log_file) and start-up saying "cache off" / "log file off".
# Origins name themselves in X-Backend and log every request (helpers.bash); the status page listens on a free
# port read from the start-up line (ops_helpers.bash).

# SC2030/SC2031: each test sets BACKENDS (helpers.bash) for its own proxy; the subshell is the point.
# shellcheck disable=SC2030,SC2031
bats_require_minimum_version 1.5.0
load helpers
load ops_helpers

setup() { helpers_setup; }
teardown() { helpers_teardown; }

# named A B C: origins A B C started, BACKENDS rewritten as `web1 127.0.0.1:PORT` ... (one name per origin,
# web1 for the first), so start_pibl writes named backend lines. Extra words per origin via NAMED_EXTRA[i].
named() {
    local i=1 o
    for o in "$@"; do
        start_origin "$o"
    done
    BACKENDS=()
    for o in "$@"; do
        BACKENDS+=("web$i 127.0.0.1:${ORIGIN_PORT[$o]}${NAMED_EXTRA[$i]:+ ${NAMED_EXTRA[$i]}}")
        i=$((i + 1))
    done
}

# action NAME ACTION [CURL-ARGS...]: POST /backend name=NAME&action=ACTION to the status page; prints
# `CODE BODY` (the body on one line).
action() {
    local name=$1 act=$2
    shift 2
    pcurl -o "$BATS_TEST_TMPDIR/action.body" -w '%{http_code}' --data-urlencode "name=$name" \
        --data-urlencode "action=$act" "$@" "$(admin_url /backend)" >"$BATS_TEST_TMPDIR/action.code"
    echo "$(cat "$BATS_TEST_TMPDIR/action.code") $(tr '\n' ' ' <"$BATS_TEST_TMPDIR/action.body" | sed 's/ $//')"
}

# served N PATH: the X-Backend of N requests for PATH?i=1..N on one connection (see backend_seq).
served() {
    backend_seq "$1" "$2"
}

# jq_py EXPR: evaluate a python expression over the parsed /status.json (bound to j); prints the result.
jq_py() {
    status_json | python3 -c "import json, sys; j = json.load(sys.stdin); print($1)"
}

@test "names: a named backend shows by name in the log, the status page, /status.json and /metrics" {
    named o1 o2
    start_pibl_admin
    grep -qx "backend = web1 127.0.0.1:${ORIGIN_PORT[o1]}" "$PIBL_CFG"
    [ "$(served 4 /hello.txt)" = "o1 o2 o1 o2" ]
    wait_for_count "$PIBL_LOG" ' backend=web[12] status=200 ' 4
    [ "$(count_lines "$PIBL_LOG" ' backend=web1 status=200 ')" -eq 2 ]
    [ "$(jq_py '" ".join(b["name"] + "=" + b["address"] for b in j["backends"])')" = \
        "web1=127.0.0.1:${ORIGIN_PORT[o1]} web2=127.0.0.1:${ORIGIN_PORT[o2]}" ]
    [ "$(metric pibl_backend_requests_total 'backend="web1"')" = 2 ]
    [ "$(metric pibl_backend_info "backend=\"web2\",address=\"127.0.0.1:${ORIGIN_PORT[o2]}\",state=\"up\"")" = 1 ]
    local page
    page=$(pcurl -f "$(admin_url /)")
    run html_rows backends <<<"$page"
    printf '%s\n' "${lines[@]}" | grep -q "^web1 127.0.0.1:${ORIGIN_PORT[o1]}|up|"
    # The Host an HTTP/1.0 request without Host gets is the address, not the name.
    run raw_request "$PIBL_PORT" $'GET /_echo HTTP/1.0\r\n\r\n'
    [[ "$output" == *"Host: 127.0.0.1:"* ]]
    [[ "$output" != *"Host: web"* ]]
}

@test "names: a bad name, a name used twice and a missing address are refused with the line" {
    start_origin o1
    local p=${ORIGIN_PORT[o1]} bad
    run "$PIBL_BIN" -t <(printf 'backend = web1 web2 127.0.0.1:1\n')
    [[ "$output" == *'backend web1: expected host:port after the name, got "web2"' ]]
    run "$PIBL_BIN" -t <(printf 'backend = web1 127.0.0.1:1 weight=3 weight=4\n')
    [[ "$output" == *'backend "127.0.0.1:1": "weight" given twice' ]]
    for bad in "backend = we/b1 127.0.0.1:$p" "backend = web1" "backend = drain 127.0.0.1:$p" \
        "backend = -web 127.0.0.1:$p" "backend = weight=3 127.0.0.1:$p" \
        $'backend = web1 127.0.0.1:'"$p"$'\nbackend = web1 127.0.0.1:1' "backend = web1 127.0.0.1:$p drain weight=2 x"; do
        printf '%s\n' "$bad" >"$BATS_TEST_TMPDIR/bad.cfg"
        run "$PIBL_BIN" -t "$BATS_TEST_TMPDIR/bad.cfg"
        echo "$bad -> $status: $output"
        [ "$status" -eq 2 ]
        [[ "$output" == *"bad.cfg:"[12]": backend"* ]]
    done
}

@test "drain: drain and weight=0 in the config send no request; a reload that lifts drain counts a change" {
    NAMED_EXTRA=([2]=drain [3]=weight=0)
    named o1 o2 o3
    start_pibl_admin
    [ "$(served 6 /hello.txt)" = "o1 o1 o1 o1 o1 o1" ]
    [ "$(jq_py '" ".join(b["state"] for b in j["backends"])')" = "up drain drain" ]
    [ "$(jq_py '[b["drain"] for b in j["backends"]]')" = "[False, True, True]" ]
    [ ! -s "$(origin_log o2)" ]
    [ ! -s "$(origin_log o3)" ]
    # Lift web2's drain, leave web3 at weight 0: one line changed.
    NAMED_EXTRA=([3]=weight=0)
    BACKENDS=("web1 127.0.0.1:${ORIGIN_PORT[o1]}" "web2 127.0.0.1:${ORIGIN_PORT[o2]}"
        "web3 127.0.0.1:${ORIGIN_PORT[o3]} weight=0")
    write_pibl_config "$PIBL_CFG" "admin_port = 0"
    local drained_since
    drained_since=$(jq_py 'j["backends"][1]["state_since"]')
    sleep 1.1
    signal_pibl HUP '^pibl: reloaded .*pibl\.cfg: 3 backends \(0 added, 0 removed, 1 changed\)$'
    wait_for_line "$PIBL_LOG" '^pibl: reload: added: -; removed: -; changed: web2$'   # the log writer's next line
    [ "$(served 4 /hello.txt)" = "o1 o2 o1 o2" ]
    [ "$(jq_py 'j["backends"][1]["state"]')" = up ]
    [[ "$(jq_py 'j["backends"][1]["state_since"]')" > "$drained_since" ]]
    [ ! -s "$(origin_log o3)" ]
    # Every backend drained: 503 that says why.
    BACKENDS=("web1 127.0.0.1:${ORIGIN_PORT[o1]} drain")
    write_pibl_config "$PIBL_CFG" "admin_port = 0"
    signal_pibl HUP '^pibl: reloaded .*pibl\.cfg: 1 backend \(0 added, 2 removed, 1 changed\)$'
    wait_for_line "$PIBL_LOG" '^pibl: reload: added: -; removed: web2 web3; changed: web1$'
    run pcurl "$(url /hello.txt)"
    [[ "$output" == "503 Service Unavailable: no backend available: every backend is down, drained or disabled" ]]
}

@test "admin: drain at run time lets the request in flight finish and sends the next ones elsewhere; enable brings it back" {
    named o1 o2
    start_pibl_admin
    [ "$(served 2 /hello.txt)" = "o1 o2" ]
    # A slow request on web1 (the next turn), then drain web1 while it runs.
    pcurl -o "$BATS_TEST_TMPDIR/slow" -w '%{http_code} %header{x-backend}' "$(url '/_slow?ms=1500')" \
        >"$BATS_TEST_TMPDIR/slow.code" 3>&- &
    local slow=$!
    wait_for_line "$(origin_log o1)" '^o1 GET /_slow'
    [ "$(jq_py 'j["backends"][0]["active_connections"]')" = 1 ]
    [ "$(action web1 drain)" = "200 backend web1: drain, now drain" ]
    wait_for_line "$PIBL_LOG" '^pibl: admin: backend web1 set to drain by 127\.0\.0\.1 \(status page\) \(was as configured\)$'
    [ "$(served 4 /hello.txt)" = "o2 o2 o2 o2" ]
    wait "$slow"
    [ "$(cat "$BATS_TEST_TMPDIR/slow.code")" = "200 o1" ]
    [ "$(jq_py 'j["backends"][0]["state"] + " " + j["backends"][0]["admin"]')" = "drain drain" ]
    [ "$(jq_py 'j["backends"][0]["active_connections"]')" = 0 ]
    [ "$(action web1 enable)" = "200 backend web1: enable, now up" ]
    [ "$(served 4 /hello.txt)" = "o1 o2 o1 o2" ]
}

@test "admin: disable stops requests and health probes; reset gives the config's word back" {
    named o1 o2
    start_pibl_admin "health_check = /hello.txt" "health_interval = 1"
    wait_for_line "$(origin_log o1)" '^o1 GET /hello\.txt$'
    [ "$(action web1 disable)" = "200 backend web1: disable, now maint" ]
    local probes
    sleep 0.3       # a probe already under way when the state changed
    probes=$(count_lines "$(origin_log o1)" '^o1 GET /hello\.txt$')
    [ "$(served 4 /_echo)" = "o2 o2 o2 o2" ]
    sleep 2.2       # two health_interval: no probe of a disabled backend
    [ "$(count_lines "$(origin_log o1)" '^o1 GET /hello\.txt$')" -eq "$probes" ]
    [ "$(jq_py 'j["backends"][0]["state"]')" = maint ]
    [ "$(action web1 reset)" = "200 backend web1: reset, now up" ]
    [ "$(jq_py 'j["backends"][0]["admin"]')" = none ]
    wait_for_count "$(origin_log o1)" '^o1 GET /hello\.txt$' $((probes + 1))
    [ "$(jq_py 'j["backends"][0]["last_check"]["ok"]')" = True ]
}

@test "admin: refused from outside admin_allow, cross-site, for an unknown backend or action, and by GET" {
    named o1 o2
    start_pibl_admin "admin_allow = 192.0.2.1"
    [[ "$(action web1 drain)" == "403 forbidden: 127.0.0.1 is not in admin_allow (192.0.2.1)" ]]
    [ "$(jq_py 'j["backends"][0]["state"]')" = up ]
    stop_pid "$PIBL_PID" >/dev/null
    start_pibl_admin
    [[ "$(action web1 drain -H 'Origin: http://evil.example')" == "403 forbidden: a cross-site request"* ]]
    [[ "$(action web1 drain -H 'Sec-Fetch-Site: cross-site')" == "403 forbidden: a cross-site request"* ]]
    [ "$(action web9 drain)" = '404 no backend named "web9"' ]
    [[ "$(action web1 explode)" == "400 expected name=BACKEND and action=drain, enable, disable or reset" ]]
    [ "$(pcurl -o /dev/null -w '%{http_code} %header{allow}' "$(admin_url '/backend?name=web1&action=drain')")" = "405 POST" ]
    [ "$(pcurl -o /dev/null -w '%{http_code} %header{allow}' -X PUT "$(admin_url /status.json)")" = "405 GET, HEAD" ]
    [ "$(action web1 drain -H 'Transfer-Encoding: chunked')" = "411 send the form with a Content-Length (no chunked body)" ]
    [ "$(action web1 drain -d name=web2)" = "400 one name and one action per request" ]
    [ "$(jq_py 'j["backends"][0]["state"]')" = up ]
    # The page's own form, as a browser sends it: same Origin, text/html wanted: 303 back to the page.
    local code
    code=$(pcurl -o /dev/null -w '%{http_code} %header{location}' -H "Origin: http://127.0.0.1:$ADMIN_PORT" \
        -H 'Accept: text/html' -H 'Sec-Fetch-Site: same-origin' -d name=web1 -d action=drain "$(admin_url /backend)")
    [ "$code" = "303 /" ]
    [ "$(jq_py 'j["backends"][0]["state"]')" = drain ]
    # The query form works as well as a body.
    [ "$(pcurl -X POST "$(admin_url '/backend?name=web1&action=enable')")" = "backend web1: enable, now up" ]
}

@test "admin: a form on another site, submitted by headless Chromium, is refused as cross-site" {
    browser_bin >/dev/null || skip "chromium not installed: apt-get install chromium to run this test"
    named o1 o2
    start_pibl_admin
    # A page of another origin (a data: URL) that posts the status page's own form fields on load: the browser
    # sends Origin: null and Sec-Fetch-Site: cross-site, and the action must not happen.
    browser --virtual-time-budget=3000 --dump-dom \
        "data:text/html,<form id=f method=post action='$(admin_url /backend)'><input name=name value=web2><input name=action value=drain></form><script>document.getElementById('f').submit()</script>" \
        >"$BATS_TEST_TMPDIR/dom"
    cat "$BATS_TEST_TMPDIR/dom"
    grep -q 'forbidden: a cross-site request' "$BATS_TEST_TMPDIR/dom"
    [ "$(jq_py 'j["backends"][1]["state"]')" = up ]
    run ! grep -q 'pibl: admin:' "$PIBL_LOG"
}

@test "passive: a backend that fails is logged as marked down with the reason, and as used again when it answers" {
    named o1 o2
    start_pibl_admin "down_time = 1"
    stop_origin o2
    [ "$(served 3 /hello.txt)" = "o1 o1 o1" ]
    wait_for_line "$PIBL_LOG" "^pibl: backend web2 marked down for 1 s: backend unreachable \(passive check\)$"
    [ "$(count_lines "$PIBL_LOG" '^pibl: backend web2 marked down')" -eq 1 ]
    [ "$(jq_py 'j["backends"][1]["state"]')" = down ]
    restart_origin o2
    sleep 1.2
    local seq
    seq=$(served 4 /hello.txt)
    [[ "$seq" == *o2* ]]
    wait_for_line "$PIBL_LOG" '^pibl: backend web2 is used again: it answered \(passive check; marked down [0-9.]+ s before\)$'
    [ "$(jq_py 'j["backends"][1]["state"]')" = up ]
}

@test "state: the time a backend's state changed is shown, steady between polls, and how long ago" {
    named o1 o2
    start_pibl_admin "down_time = 1"
    local since i
    since=$(jq_py 'j["backends"][1]["state_since"]')
    [[ "$since" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]]
    for i in 1 2 3 4 5; do                  # the same instant on every poll, not one that drifts by a second
        [ "$(jq_py 'j["backends"][1]["state_since"]')" = "$since" ]
        sleep 0.3
    done
    stop_origin o2
    served 2 /hello.txt >/dev/null
    [ "$(jq_py 'j["backends"][1]["state"]')" = down ]
    local down_since
    down_since=$(jq_py 'j["backends"][1]["state_since"]')
    [[ "$down_since" > "$since" ]]
    [ "$(jq_py 'j["backends"][1]["state_for_s"] <= 2')" = True ]
    # Past down_time, with no answer since, it is still down (retried, not shown up); a retry that fails
    # again keeps the time it first went down.
    sleep 2.1
    [ "$(jq_py 'j["backends"][1]["state"]')" = down ]
    served 2 /hello.txt >/dev/null
    wait_for_line "$PIBL_LOG" '^pibl: backend web2 still failing: backend unreachable; down again for 1 s$'
    [ "$(jq_py 'j["backends"][1]["state"] + " " + j["backends"][1]["state_since"]')" = "down $down_since" ]
    [ "$(jq_py 'j["backends"][1]["state_for_s"] >= 2')" = True ]
    [ "$(metric pibl_backend_up 'backend="web2"')" = 0 ]
    # PIBL's own 502s for it are failures, not answers of the backend.
    [ "$(jq_py 'j["backends"][1]["answers"]["5xx"]')" = 0 ]
    [ "$(jq_py 'j["backends"][1]["failures"] >= 2')" = True ]
}

@test "counters: answers by class, bytes in and out, failures and probe failures match the traffic" {
    named o1
    start_origin dead
    stop_origin dead
    BACKENDS+=("web9 127.0.0.1:${ORIGIN_PORT[dead]}")
    start_pibl_admin "health_check = /hello.txt" "health_interval = 1" "health_fall = 100"
    [ "$(pcurl -o /dev/null -w '%{http_code}' "$(url '/_bytes?size=1000')")" = 200 ]
    [ "$(pcurl -o /dev/null -w '%{http_code}' "$(url '/_status/302')")" = 302 ]
    [ "$(pcurl -o /dev/null -w '%{http_code}' "$(url '/nope')")" = 404 ]
    [ "$(pcurl -o /dev/null -w '%{http_code}' "$(url '/_status/503')")" = 503 ]
    [ "$(pcurl -o /dev/null -w '%{http_code}' -d 'twelve bytes' "$(url '/_echo')")" = 200 ]
    wait_for_count "$PIBL_LOG" ' backend=web1 status=' 5
    sleep 1.2       # one probe of each at least
    snapshot
    [ "$(sv web1.answers)" = '{"2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1}' ]
    [ "$(sv web1.requests)" -eq 5 ]
    [ "$(sv web1.bytes_out)" -ge 1000 ]
    [ "$(sv web1.bytes_in)" -ge $((5 * 40 + 12)) ]        # five request heads and a 12-byte body
    [ "$(sv web9.check_failures)" -ge 1 ]
    [ "$(sv web9.failures)" -ge 0 ]
    python3 -c 'import json,sys; c=json.loads(sys.argv[1]); assert c["ok"] is False and c["detail"] == "health check: refused", c' \
        "$(sv web9.last_check)"
    python3 -c 'import json,sys; c=json.loads(sys.argv[1]); assert c["ok"] is True and c["detail"] is None, c' \
        "$(sv web1.last_check)"
    [ "$(metric pibl_backend_answers_total 'backend="web1",class="3xx"')" = 1 ]
    [ "$(metric pibl_backend_check_failures_total 'backend="web9"')" -ge 1 ]
    [ "$(metric pibl_backend_bytes_out_total 'backend="web1"')" = "$(sv web1.bytes_out)" ]
    # The HTML row: the probe failure and its time.
    run html_rows backends < <(pcurl -f "$(admin_url /)")
    printf '%s\n' "${lines[@]}"
    printf '%s\n' "${lines[@]}" | grep -q "^web9 127.0.0.1:${ORIGIN_PORT[dead]}|down|hace [0-9]* s ([0-9:]* UTC)|1|fallo, hace [0-9]* s|"
    printf '%s\n' "${lines[@]}" | grep -q "^web1 127.0.0.1:${ORIGIN_PORT[o1]}|up|hace [0-9]* s ([0-9:]* UTC)|1|ok, hace [0-9]* s|5|2|1|1|1|"
}

@test "csv: /status.csv has a header and one row per backend with the JSON's values (RFC 4180)" {
    named o1 o2
    start_pibl_admin
    served 3 /hello.txt >/dev/null
    wait_top requests_total 3
    pcurl -f -D "$BATS_TEST_TMPDIR/csv.head" -o "$BATS_TEST_TMPDIR/status.csv" "$(admin_url /status.csv)"
    grep -qi '^content-type: text/csv' "$BATS_TEST_TMPDIR/csv.head"
    status_json >"$BATS_TEST_TMPDIR/status.json"
    python3 - "$BATS_TEST_TMPDIR/status.csv" "$BATS_TEST_TMPDIR/status.json" <<'EOF'
import csv, json, sys
raw = open(sys.argv[1], newline="").read()
assert raw.endswith("\r\n"), "CRLF line ends"
rows = list(csv.DictReader(raw.splitlines()))
j = json.load(open(sys.argv[2]))
assert len(rows) == len(j["backends"]) == 2, rows
for r, b in zip(rows, j["backends"]):
    assert r["name"] == b["name"] and r["address"] == b["address"] and r["state"] == b["state"], (r, b)
    assert int(r["requests"]) == b["requests"] and int(r["answers_2xx"]) == b["answers"]["2xx"], (r, b)
    assert int(r["bytes_out"]) == b["bytes_out"] and r["state_since"] == b["state_since"], (r, b)
assert [r["requests"] for r in rows] == ["2", "1"], rows
EOF
    pcurl -f "$(admin_url /)" | grep -q '<a href="/status.csv">CSV</a>'
}

@test "cache off: the status page says off with the reason, not 0.0 %; start-up says so too" {
    start_origin o1
    PIBL_TTL=0
    start_pibl_admin
    grep -qx 'pibl: cache off (TTL 0), log file .*pibl\.log' "$PIBL_OUT"
    snapshot
    [ "$(sv cache.enabled)" = false ]
    [ "$(sv cache.off_reason)" = "TTL 0" ]
    [ "$(sv cache.hit_ratio)" = null ]
    run html_rows cache < <(pcurl -f "$(admin_url /)")
    [[ "${lines[1]}" == "apagada (TTL 0)|0|"*"|apagada" ]]
    [[ "${lines[1]}" != *"0.0 %"* ]]
    [ "$(metric pibl_cache_enabled)" = 0 ]
}

@test "start-up: an unusable cache folder or log file says cache off / log file off with the reason, never cache on" {
    start_origin o1
    : >"$BATS_TEST_TMPDIR/plainfile"
    PIBL_TTL=60
    PIBL_LOG="$BATS_TEST_TMPDIR/no/such/dir/pibl.log"
    start_pibl_admin "cache_dir = plainfile"
    grep -qx 'pibl: warning: cache folder plainfile unusable: not a folder; cache off' "$PIBL_OUT"
    grep -qx 'pibl: cache off (folder plainfile unusable: not a folder), log file off: log_file .*no/such/dir/pibl\.log: cannot open for writing: No such file or directory, stdout only' "$PIBL_OUT"
    run ! grep -q 'cache on' "$PIBL_OUT"
    [ "$(sv_now cache.off_reason)" = "folder plainfile unusable: not a folder" ]
    [ "$(get_code /hello.txt)" = 200 ]
}

@test "start-up: a read-only cache folder (ro tmpfs) is found at start-up: cache off, not cache on and every store failing" {
    unshare -rm true 2>/dev/null || skip "unshare -rm (user namespaces) not available"
    start_origin o1
    mkdir -p "$BATS_TEST_TMPDIR/cache"
    write_pibl_config "$PIBL_CFG"
    # shellcheck disable=SC2016
    (cd "$BATS_TEST_TMPDIR" && exec unshare -rm sh -c 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"' \
        "$BATS_TEST_TMPDIR/cache" "$PIBL_BIN" "$PIBL_CFG" 60) >"$PIBL_OUT" 2>"$PIBL_ERR" 3>&- &
    PIBL_PID=$!
    track_pid "$PIBL_PID"
    wait_for_line "$PIBL_OUT" '^pibl: cache off '
    grep -qx 'pibl: cache off (folder cache unusable: cannot write a file in it: Read-only file system), log file .*' "$PIBL_OUT"
    run ! grep -q 'cache on' "$PIBL_OUT"
}

@test "pibl -t: the same port twice, an unusable cache_dir or log_file are named; -t leaves no file behind" {
    start_origin o1
    local cfg="$BATS_TEST_TMPDIR/t.cfg" b="backend = web1 127.0.0.1:${ORIGIN_PORT[o1]}"
    printf '%s\nport = 18080\nadmin_port = 18080\n' "$b" >"$cfg"
    run "$PIBL_BIN" -t "$cfg"
    [ "$status" -eq 2 ]
    [[ "$output" == *"t.cfg: admin_port 18080 is also port: the status page (admin_listen 127.0.0.1) and the proxy (listen 0.0.0.0) cannot listen on the same port"* ]]
    # Different addresses, neither a wildcard: no clash.
    printf '%s\nlisten = 127.0.0.2\nport = 18080\nadmin_port = 18080\n' "$b" >"$cfg"
    run "$PIBL_BIN" -t "$cfg"
    echo "$output"
    [ "$status" -eq 0 ]
    : >"$BATS_TEST_TMPDIR/plainfile"
    printf '%s\ncache_dir = %s/plainfile\nlog_file = %s/no/dir/x.log\n' "$b" "$BATS_TEST_TMPDIR" "$BATS_TEST_TMPDIR" >"$cfg"
    run "$PIBL_BIN" -t "$cfg"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"cache_dir $BATS_TEST_TMPDIR/plainfile: not a folder (the cache would be off)"* ]]
    [[ "$output" == *"log_file $BATS_TEST_TMPDIR/no/dir/x.log: cannot open for writing: No such file or directory"* ]]
    [[ "$output" == *"the syntax is OK, but 2 problems above"* ]]
    # error_log: a file that cannot be opened, and (with combined or json) the log_file itself.
    printf '%s\nerror_log = %s/no/dir/e.log\n' "$b" "$BATS_TEST_TMPDIR" >"$cfg"
    run "$PIBL_BIN" -t "$cfg"
    [ "$status" -eq 1 ]
    [[ "$output" == *"error_log: $BATS_TEST_TMPDIR/no/dir/e.log: cannot open for writing"* ]]
    printf '%s\nlog_format = combined\nlog_file = %s/a.log\nerror_log = %s/a.log\n' "$b" "$BATS_TEST_TMPDIR" \
        "$BATS_TEST_TMPDIR" >"$cfg"
    run "$PIBL_BIN" -t "$cfg"
    [ "$status" -eq 1 ]
    [[ "$output" == *"error_log $BATS_TEST_TMPDIR/a.log is also log_file"* ]]
    # A good config: OK, and neither the cache folder nor the log file is left behind.
    mkdir "$BATS_TEST_TMPDIR/run"
    printf '%s\ncache_dir = cache\nlog_file = pibl.log\n' "$b" >"$cfg"
    run bash -c 'cd "$1" && exec "$2" -t "$3"' _ "$BATS_TEST_TMPDIR/run" "$PIBL_BIN" "$cfg"
    [ "$status" -eq 0 ]
    [ "$output" = "pibl: $cfg: OK" ]
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/run")" ]
}

# sv_now KEY: one value of a fresh /status.json snapshot.
sv_now() {
    snapshot && sv "$1"
}

# get_code PATH: the status code of a GET through the proxy.
get_code() {
    pcurl -o /dev/null -w '%{http_code}' "$(url "$1")"
}
