#!/usr/bin/env bats
# logs.bats - the access log formats and the error log: log_format = pibl (User-Agent, Referer, the backends
# tried), combined (read by GoAccess with its COMBINED format, no invalid line) and json (every line parsed by
# python3's json, every field); error_log taking PIBL's own lines so that a combined or JSON log file holds access
# lines only; the SIGUSR1 line; a wrong log_format refused at start-up and by -t; a reload that keeps both keys.
# Both request paths fill User-Agent and Referer: the event loops (a plain GET) and the blocking threads (a POST,
# a WebSocket tunnel). Origins are ./pibl-origin (helpers.bash); everything stays on 127.0.0.1 with free ports.

# SC2034/SC2153: BACKENDS and PIBL_* belong to helpers.bash (set and read there).
# shellcheck disable=SC2034,SC2153
bats_require_minimum_version 1.5.0
load helpers

setup() { helpers_setup; }
teardown() { helpers_teardown; }

# start_pibl_own FILE [LINES...]: start_pibl, but wait for the start-up line in FILE (PIBL_OUT, PIBL_ERR or an
# error_log file): with combined or json, or an error_log, PIBL's own lines are not on stdout.
start_pibl_own() {
    local own=$1
    shift
    write_pibl_config "$PIBL_CFG" "$@"
    : >"$PIBL_OUT"
    : >"$PIBL_ERR"
    rm -f "$own"
    (cd "$BATS_TEST_TMPDIR" && exec "$PIBL_BIN" "$PIBL_CFG" "${PIBL_TTL:-0}") >"$PIBL_OUT" 2>"$PIBL_ERR" 3>&- &
    PIBL_PID=$!
    track_pid "$PIBL_PID"
    wait_for_line "$own" '^pibl: listening on .*:[0-9]+, [0-9]+ backends?$' || return 1
    PIBL_PORT=$(sed -n -E 's/^pibl: listening on .*:([0-9]+), [0-9]+ backends?$/\1/p' "$own" | head -n 1)
    [ -n "$PIBL_PORT" ]
}

# access_lines FILE: the lines of FILE that are not PIBL's own ("pibl: ...") nor header dumps.
access_lines() {
    grep -v -e '^pibl: ' -e '^  ' "$1" || true
}

# varied_requests: the mix the format tests send, 10 exchanges: a miss and a hit (cache on with PIBL_TTL), a 404,
# a User-Agent with spaces, quotes and a tab, a Referer, a target with a quote (400), a HEAD, a POST (blocking
# path), a request line with a byte past ASCII in the User-Agent, and a malformed head (no request line read).
varied_requests() {
    pcurl -o /dev/null "$(url /hello.txt)"
    pcurl -o /dev/null "$(url /hello.txt)"
    pcurl -o /dev/null "$(url /missing.html)"
    pcurl -o /dev/null -A $'Mozilla/5.0 (X11; Linux x86_64) "quoted"\tTab' "$(url '/index.html?q=1')"
    pcurl -o /dev/null -e 'http://ref.example/from?a=1&b="2"' "$(url /sub/index.html)"
    raw_request "$PIBL_PORT" $'GET /odd"target\\x HTTP/1.1\r\nHost: h\r\nUser-Agent: raw/1\r\nConnection: close\r\n\r\n' >/dev/null
    pcurl -o /dev/null -I "$(url /hello.txt)"
    pcurl -o /dev/null -A 'poster/2' -d 'a=1' "$(url /_echo)"
    raw_request "$PIBL_PORT" $'GET /utf HTTP/1.1\r\nHost: h\r\nUser-Agent: caf\xc3\xa9 \xff\r\nConnection: close\r\n\r\n' >/dev/null
    raw_request "$PIBL_PORT" $'\x01\x02garbage\r\n\r\n' >/dev/null
    wait_for_count "$PIBL_LOG" '.' 10
}

@test "logs: pibl format ends with ua= and ref= (\"-\" when absent, quotes as ?), from both request paths" {
    start_origin o1
    start_pibl
    pcurl -o /dev/null -A 'Mozilla/5.0 (X11; "q")' -e 'http://ref.example/page' "$(url '/hello.txt?ev=1')"
    pcurl -o /dev/null -A 'poster/2' -e 'http://ref.example/form' -d 'a=1' "$(url '/_echo?blocking=1')"
    raw_request "$PIBL_PORT" $'GET /hello.txt?bare=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n' >/dev/null
    wait_for_line "$PIBL_LOG" 'bare=1'
    grep -E '"GET /hello\.txt\?ev=1 HTTP/1\.1" .* status=200 .* cache=- ua="Mozilla/5\.0 \(X11; \?q\?\)" ref="http://ref\.example/page"$' "$PIBL_LOG"
    grep -E '"POST /_echo\?blocking=1 HTTP/1\.1" .* status=200 .* cache=- ua="poster/2" ref="http://ref\.example/form"$' "$PIBL_LOG"
    grep -E '"GET /hello\.txt\?bare=1 HTTP/1\.1" .* status=200 .* cache=- ua="-" ref="-"$' "$PIBL_LOG"
    # The same lines on stdout; PIBL's own lines there and in the file as before, none on stderr.
    grep -q 'ev=1 .* ua="Mozilla' "$PIBL_OUT"
    grep -q '^pibl: listening on ' "$PIBL_LOG"
    run ! grep -q '^pibl: ' "$PIBL_ERR"
}

@test "logs: a WebSocket tunnel's line keeps its User-Agent and Referer (json: up_bytes, and the backend in tried)" {
    start_origin o1
    start_pibl_own "$PIBL_ERR" "log_format = json"
    local hs=$'GET /_ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
    hs+=$'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n'
    hs+=$'User-Agent: tunnel-agent/3\r\nReferer: http://ref.example/ws\r\n\r\n'
    run raw_request "$PIBL_PORT" "$hs" 1
    [ "$(status_of "$output")" = 101 ]
    wait_for_line "$PIBL_LOG" '"status":101'
    python3 - "$PIBL_LOG" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="ascii")]
t = [r for r in rows if r["status"] == 101]
assert len(t) == 1, rows
t = t[0]
assert t["ua"] == "tunnel-agent/3" and t["referer"] == "http://ref.example/ws", t
assert isinstance(t["up_bytes"], int) and t["bytes"] > 0, t
assert t["tried"] == [t["backend"]] and t["backend"] != "-", t
EOF
}

@test "logs: a 502 names every backend tried, in the order tried; one failover names both" {
    start_origin dead1
    start_origin dead2
    start_origin live
    stop_origin dead1
    stop_origin dead2
    local d1="127.0.0.1:${ORIGIN_PORT[dead1]}" d2="127.0.0.1:${ORIGIN_PORT[dead2]}" lv="127.0.0.1:${ORIGIN_PORT[live]}"
    # Round robin starts at the first backend: dead1 fails, dead2 fails, live answers.
    start_pibl "down_time = 60"
    run pcurl -o /dev/null -w '%{http_code}' "$(url '/hello.txt?first=1')"
    [ "$output" = 200 ]
    wait_for_line "$PIBL_LOG" 'first=1'
    grep -F "backend=$lv status=200 " "$PIBL_LOG" | grep -F 'first=1' | grep -F " tried=$d1,$d2,$lv"
    # A single backend tried that answered: no tried= field.
    run pcurl -o /dev/null -w '%{http_code}' "$(url '/hello.txt?second=1')"
    [ "$output" = 200 ]
    wait_for_line "$PIBL_LOG" 'second=1'
    run ! grep -E 'second=1 .* tried=' "$PIBL_LOG"
    # Now only the dead ones: the 502 names both, in order.
    stop_pid "$PIBL_PID" >/dev/null
    BACKENDS=("$d1" "$d2")
    start_pibl
    run pcurl -o /dev/null -w '%{http_code}' "$(url '/hello.txt?dead=1')"
    [ "$output" = 502 ]
    wait_for_line "$PIBL_LOG" 'dead=1'
    grep -E "dead=1 HTTP/1\\.1\" .* status=502 .* tried=127\\.0\\.0\\.1:${ORIGIN_PORT[dead1]},127\\.0\\.0\\.1:${ORIGIN_PORT[dead2]} err=\"backend unreachable\"\$" "$PIBL_LOG"
}

@test "logs: combined format: GoAccess (COMBINED) parses every line, none invalid, and counts them all" {
    command -v goaccess >/dev/null || skip "goaccess not installed: apt-get install goaccess"
    start_origin o1
    PIBL_TTL=60 start_pibl_own "$PIBL_ERR" "log_format = combined"
    varied_requests
    # The log file and stdout hold access lines only; PIBL's own lines went to stderr.
    [ "$(wc -l <"$PIBL_LOG")" -eq 10 ]
    run ! grep -q '^pibl: ' "$PIBL_LOG"
    run ! grep -q '^pibl: ' "$PIBL_OUT"
    grep -q '^pibl: cache on ' "$PIBL_ERR"
    cmp "$PIBL_LOG" "$PIBL_OUT"
    cat "$PIBL_LOG"
    # The shape, exactly: %h - - [%d/%b/%Y:%H:%M:%S +0000] "%r" %s %b "%{Referer}" "%{User-agent}".
    local re='^127\.0\.0\.1 - - \[[0-3][0-9]/(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/20[0-9]{2}:[0-2][0-9]:[0-5][0-9]:[0-6][0-9] \+0000\] '
    re+='"([^"\\]|\\.)*" [0-9]{1,3} [0-9]+ "([^"\\]|\\.)*" "([^"\\]|\\.)*"$'
    [ "$(grep -Ec "$re" "$PIBL_LOG")" -eq 10 ]
    grep -qF '"GET /odd\"target\\x HTTP/1.1" 400 ' "$PIBL_LOG"
    grep -qF '"Mozilla/5.0 (X11; Linux x86_64) \"quoted\"\x09Tab"' "$PIBL_LOG"
    grep -qF ' "http://ref.example/from?a=1&b=\"2\"" "curl/' "$PIBL_LOG"
    grep -qF '"caf\xc3\xa9 \xff"' "$PIBL_LOG"
    grep -qE '"-" 400 [0-9]+ "-" "-"$' "$PIBL_LOG"
    run goaccess "$PIBL_LOG" --no-global-config --log-format=COMBINED -o "$BATS_TEST_TMPDIR/report.json"
    echo "$output"
    [ "$status" -eq 0 ]
    python3 - "$BATS_TEST_TMPDIR/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
g = r["general"]
print(g)
assert g["total_requests"] == 10 and g["valid_requests"] == 10 and g["failed_requests"] == 0, g
def panel(name):                                  # hits per path, all methods
    out = {}
    for d in r[name]["data"]:
        out[d["data"]] = out.get(d["data"], 0) + d["hits"]["count"]
    return out
print(panel("requests"), panel("static_requests"), panel("not_found"))
assert panel("static_requests").get("/hello.txt") == 3    # miss, hit, HEAD (.txt is static to GoAccess)
assert panel("requests").get('/odd\\"target\\\\x') == 1  # the escaped target, read as one request
assert set(panel("not_found")) >= {"/missing.html", "/utf"}
codes = {d["data"].split()[0]: d["hits"]["count"] for d in r["status_codes"]["data"]}
print(codes)
assert codes.get("4xx") == 4 and codes.get("2xx") == 6, codes   # 404 twice, the odd target, the malformed head
EOF
}

@test "logs: json format: every line is one JSON object with every field, strings escaped" {
    start_origin o1
    PIBL_TTL=60 start_pibl_own "$PIBL_ERR" "log_format = json"
    varied_requests
    run ! grep -q '^pibl: ' "$PIBL_LOG"
    cmp "$PIBL_LOG" "$PIBL_OUT"
    grep -q '^pibl: listening on ' "$PIBL_ERR"
    cat "$PIBL_LOG"
    # ASCII only, control and non-ASCII bytes as \u00XX.
    run ! grep -qP '[^\x20-\x7e]' "$PIBL_LOG"
    grep -qF '"ua":"caf\u00c3\u00a9 \u00ff"' "$PIBL_LOG"
    python3 - "$PIBL_LOG" <<'EOF'
import json, re, sys
keys = {"time", "client", "method", "target", "protocol", "host", "backend", "status", "bytes", "ms", "cache",
        "ua", "referer", "tried", "err"}
rows = [json.loads(l) for l in open(sys.argv[1], encoding="ascii")]
assert len(rows) == 10, len(rows)
for r in rows:
    assert set(r) == keys, sorted(set(r) ^ keys)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]), r
    assert isinstance(r["status"], int) and isinstance(r["bytes"], int), r
    assert isinstance(r["ms"], (int, float)) and isinstance(r["tried"], list), r
    assert re.fullmatch(r"127\.0\.0\.1:\d+", r["client"]), r
by = lambda f: [r for r in rows if f(r)]
hello = by(lambda r: r["target"] == "/hello.txt" and r["method"] == "GET")
assert [r["cache"] for r in hello] == ["MISS", "HIT"], hello
assert hello[0]["backend"] and hello[0]["tried"] == [hello[0]["backend"]], hello
assert hello[1]["backend"] is None and hello[1]["tried"] == [], hello
assert hello[0]["protocol"] == "HTTP/1.1" and hello[0]["err"] is None and hello[0]["referer"] is None
assert by(lambda r: r["target"] == "/missing.html")[0]["status"] == 404
ua = by(lambda r: r["target"] == "/index.html?q=1")[0]
assert ua["ua"] == 'Mozilla/5.0 (X11; Linux x86_64) "quoted"\tTab', ua
ref = by(lambda r: r["target"] == "/sub/index.html")[0]
assert ref["referer"] == 'http://ref.example/from?a=1&b="2"' and ref["ua"].startswith("curl/"), ref
odd = by(lambda r: r["status"] == 400 and r["method"] == "GET")[0]
assert odd["target"] == '/odd"target\\x' and odd["ua"] == "raw/1" and odd["err"], odd
assert by(lambda r: r["method"] == "HEAD")[0]["target"] == "/hello.txt"
post = by(lambda r: r["method"] == "POST")[0]
assert post["ua"] == "poster/2" and post["status"] == 200, post
utf = by(lambda r: r["target"] == "/utf")[0]
assert utf["ua"] == "caf\u00c3\u00a9 \u00ff", utf
bad = by(lambda r: r["method"] is None)[0]
assert bad["status"] == 400 and bad["target"] is None and bad["protocol"] is None, bad
EOF
}

@test "logs: error_log = FILE takes PIBL's own lines: the log file, stdout and stderr get none" {
    start_origin o1
    local own="$BATS_TEST_TMPDIR/pibl-error.log"
    start_pibl_own "$own" "error_log = $own"
    pcurl -o /dev/null "$(url '/hello.txt?own=1')"
    wait_for_line "$PIBL_LOG" 'own=1 .* status=200 '
    grep -q 'own=1 .* status=200 ' "$PIBL_OUT"
    grep -q '^pibl: cache off ' "$own"
    run ! grep -q 'own=1' "$own"
    run ! grep -q '^pibl: ' "$PIBL_LOG"
    run ! grep -q '^pibl: ' "$PIBL_OUT"
    run ! grep -q '^pibl: ' "$PIBL_ERR"
    # Shutting down is said there too.
    stop_pid "$PIBL_PID" >/dev/null
    grep -q '^pibl: stopped$' "$own"
}

@test "logs: error_log = stdout with log_format = combined: own lines on stdout, the file holds access lines only" {
    start_origin o1
    start_pibl_own "$PIBL_OUT" "log_format = combined" "error_log = stdout"
    pcurl -o /dev/null "$(url '/hello.txt?std=1')"
    wait_for_line "$PIBL_LOG" 'std=1 HTTP/1\.1" 200 '
    wait_for_line "$PIBL_OUT" 'std=1 HTTP/1\.1" 200 '
    run ! grep -q '^pibl: ' "$PIBL_LOG"
    run ! grep -q '^pibl: ' "$PIBL_ERR"
}

@test "logs: error_log = the log_file itself with log_format = json: a warning, and own lines go to stderr, the file holds JSON only" {
    start_origin o1
    start_pibl_own "$PIBL_ERR" "log_format = json" "error_log = $PIBL_LOG"
    grep -q "^pibl: warning: error_log $PIBL_LOG is also log_file: PIBL's own lines go to stderr instead$" "$PIBL_ERR"
    pcurl -o /dev/null "$(url '/hello.txt?j=1')"
    wait_for_line "$PIBL_LOG" 'j=1'
    run ! grep -q '^pibl: ' "$PIBL_LOG"
    python3 -c 'import json, sys
for line in open(sys.argv[1]):
    json.loads(line)' "$PIBL_LOG"
}

@test "logs: SIGUSR1 writes 'pibl: log file reopened (PATH)' to the error log, and reopens (and names) an error_log file" {
    start_origin o1
    local own="$BATS_TEST_TMPDIR/pibl-error.log"
    start_pibl_own "$own" "log_format = json" "error_log = $own"
    pcurl -o /dev/null "$(url '/hello.txt?before=1')"
    wait_for_line "$PIBL_LOG" 'before=1'
    mv "$PIBL_LOG" "$PIBL_LOG.1"
    mv "$own" "$own.1"
    kill -USR1 "$PIBL_PID"
    wait_for_line "$own" "^pibl: log file reopened \\($PIBL_LOG\\), error log reopened \\($own\\)\$"
    pcurl -o /dev/null "$(url '/hello.txt?after=1')"
    wait_for_line "$PIBL_LOG" 'after=1'
    run ! grep -q 'pibl: ' "$PIBL_LOG"
    run ! grep -q 'after=1' "$PIBL_LOG.1"
    # The pibl format with no error_log: the line goes with the access lines, to stdout and the new file.
    stop_pid "$PIBL_PID" >/dev/null
    rm -f "$PIBL_LOG" "$PIBL_LOG.1"
    start_pibl
    mv "$PIBL_LOG" "$PIBL_LOG.1"
    kill -USR1 "$PIBL_PID"
    wait_for_line "$PIBL_LOG" "^pibl: log file reopened \\($PIBL_LOG\\)\$"
    wait_for_line "$PIBL_OUT" '^pibl: log file reopened '
    run ! grep -q 'reopened' "$PIBL_ERR"
}

@test "logs: a wrong log_format is refused at start-up and by -t, naming the key and the values" {
    start_origin o1
    write_pibl_config "$PIBL_CFG" "log_format = apache"
    run "$PIBL_BIN" -t "$PIBL_CFG"
    echo "$output"
    [ "$status" -eq 2 ]
    [[ "$output" == *'log_format: "apache" must be pibl, combined or json'* ]]
    run "$PIBL_BIN" "$PIBL_CFG" 0
    [ "$status" -eq 2 ]
    [[ "$output" == *':'*': log_format: "apache" must be pibl, combined or json'* ]]
    write_pibl_config "$PIBL_CFG" "log_format = json" "error_log = stderr"
    run "$PIBL_BIN" -t "$PIBL_CFG"
    [ "$status" -eq 0 ]
}

@test "logs: a reload keeps log_format and error_log as they were, with a warning" {
    start_origin o1
    start_pibl_own "$PIBL_ERR" "log_format = combined"
    write_pibl_config "$PIBL_CFG" "log_format = json" "error_log = $BATS_TEST_TMPDIR/other.log"
    kill -HUP "$PIBL_PID"
    wait_for_line "$PIBL_ERR" '^pibl: reloaded '
    grep -q '^pibl: warning: reload: log_format and error_log change only on restart; kept as they were$' "$PIBL_ERR"
    [ ! -e "$BATS_TEST_TMPDIR/other.log" ]
    pcurl -o /dev/null "$(url '/hello.txt?reloaded=1')"
    wait_for_line "$PIBL_LOG" '^127\.0\.0\.1 - - \[.*"GET /hello\.txt\?reloaded=1 HTTP/1\.1" 200 '
}
