#!/usr/bin/env bats
# connections.bats - many clients at once, none holding up another: a slow or flooding client, a stalled
# backend or a client that never reads costs only its own connection; one keep-alive connection carries GET, HEAD,
# POST, chunked and pipelined requests in order whichever path serves them; idle keep-alive connections are kept
# cheaply and closed after keepalive_timeout; 1,200 connections at once are served; a graceful stop closes idle
# connections at once and lets exchanges in flight finish; pooled backend connections are reused, trimmed when idle
# and never answer the wrong request. (Inside PIBL this is the event loops, the parking loop and the hand-over to
# blocking threads.)
#
# Each test drives exact sockets from python3 (the client library is in connections_helpers.bash): a slow reader that
# must not hold up anyone else (hit and miss paths), one connection reused after being parked, one connection
# alternating the loop and the blocking path, pipelining across the hand-over, 1,200 connections (PIBL's
# descriptors past 1023), a graceful stop with parked connections, a backend stalling mid-body, one connection
# flooding its loop (pipelined cache hits, or bare CRLF) while probes on new connections must be served within
# 0.5 s, a backend writing a stray answer on a pooled connection (never an answer to the next request, never
# cached), 300 requests at once leaving 300 pooled backend connections that the next 300 reuse, the surplus of a
# burst closed by halves once idle 5 s, and a reload raising max_header_bytes under a connection opened before it.
# Every wait is bounded; ports are chosen at run time; everything stays on 127.0.0.1.
# shellcheck disable=SC2034  # PIBL_TTL is read by the helpers

bats_require_minimum_version 1.5.0
load helpers
load hostile_helpers
load connections_helpers

setup() {
    hostile_setup
    need_python
}
teardown() { hostile_teardown; }

HELLO_BODY='hello from the test origin'            # make_root's hello.txt, without its newline
BIG=67108864                                        # 64 MB: far more than the socket buffers hold

# slow_reader_py: the script of tests 1 and 2. Args: PORT TARGET SIZE REPORT HOLD_SECS. Sends one GET for TARGET,
# writes "sent at=T" to REPORT, reads nothing for HOLD_SECS, writes "reading at=T", then reads the whole answer and
# checks it is a 200 with SIZE bytes of the origin's digit pattern: "ok bytes=N xcache=X at=T".
slow_reader_py() {
    conn_py slow_reader <<'EOF'
port, target, size, rep, hold = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
HOST = "127.0.0.1:%d" % port            # the Host curl sends, so a cache hit for curl is one for us
s = connect(port, timeout=20)
s.sendall(req("GET", target))
report(rep, "sent at=%.6f" % time.time())
time.sleep(hold)
report(rep, "reading at=%.6f" % time.time())
status, headers, body = Reader(s).response()
if status != 200:
    fail("slow reader: status %d" % status)
if len(body) != size:
    fail("slow reader: %d bytes, want %d" % (len(body), size))
if body != digits(size):
    fail("slow reader: the %d bytes are not the origin's pattern" % size)
report(rep, "ok bytes=%d xcache=%s at=%.6f" % (len(body), headers.get("x-cache", "-"), time.time()))
EOF
}

# run_slow_reader_case TARGET: the common part of tests 1 and 2. A slow reader asks PIBL for TARGET (BIG bytes)
# and reads nothing for 3 s; meanwhile 30 sequential curls of /hello.txt must each get a 200 within 2 s, all of them
# before the reader starts reading; then the reader gets the whole, correct answer.
run_slow_reader_case() {
    local target=$1 rep=$BATS_TEST_TMPDIR/slow.rep py pid t_end rc=0
    py=$(slow_reader_py)
    : >"$rep"
    python3 "$py" "$PIBL_PORT" "$target" "$BIG" "$rep" 3 >"$rep.out" 2>&1 3>&- &
    pid=$!
    track_pid "$pid"
    wait_for_line "$rep" '^sent at='
    sleep 0.3                                       # let PIBL fill the reader's socket and get stuck on it
    run curl_many 30 2 "$(url /hello.txt)"
    t_end=$(now_s)
    echo "$output"
    [ "$status" -eq 0 ]
    # The 30 exchanges all happened while the reader was stalled.
    if grep -q '^reading' "$rep"; then
        local t_read
        t_read=$(sed -n -E 's/^reading at=//p' "$rep")
        before "$t_end" "$t_read" || { echo "the curls ended at $t_end, after the reader started reading at $t_read"; return 1; }
    fi
    wait_pid_exit "$pid" 20 || { echo "slow reader still running"; cat "$rep" "$rep.out"; return 1; }
    wait "$pid" || rc=$?
    untrack_pid "$pid"
    cat "$rep" "$rep.out"
    [ "$rc" -eq 0 ]
    grep -q "^ok bytes=$BIG " "$rep"
}

# ---------------------------------------------------------------- slow readers

@test "slow reader on the cache-hit path (sendfile) does not stall other clients" {
    PIBL_TTL=60
    start_origin o1
    start_pibl
    local target="/_bytes?size=$BIG"
    run pcurl -o /dev/null -w '%{http_code} %{size_download}' "$(url "$target")"
    echo "fill: $output"
    [ "$output" = "200 $BIG" ]
    run pcurl -D - -o /dev/null "$(url "$target")"
    echo "$output"
    [ "$(header_value "$output" X-Cache)" = HIT ]
    run_slow_reader_case "$target"
    # The slow answer was a fresh hit (no new origin request for it), served whole.
    grep -q "^ok bytes=$BIG xcache=HIT " "$BATS_TEST_TMPDIR/slow.rep"
    [ "$(count_lines "$(origin_log o1)" ' GET /_bytes')" -eq 1 ]
    wait_for_count "$PIBL_LOG" "\"GET /_bytes\\?size=$BIG HTTP/1.1\" .* status=200 bytes=$BIG .*cache=HIT" 2
}

@test "slow reader on the miss path (Content-Length relay) does not stall other clients" {
    start_origin o1
    start_pibl
    local target="/_bytes?size=$BIG&miss=1"
    run_slow_reader_case "$target"
    [ "$(count_lines "$(origin_log o1)" ' GET /_bytes')" -eq 1 ]
    [ "$(count_lines "$(origin_log o1)" ' GET /hello.txt')" -eq 30 ]
    wait_for_line "$PIBL_LOG" "\"GET /_bytes\\?size=$BIG&miss=1 HTTP/1.1\" .* status=200 bytes=$BIG "
}

# ---------------------------------------------------------------- keep-alive and parking

@test "a parked keep-alive connection comes back for its next request, and closes after keepalive_timeout" {
    start_origin o1
    start_pibl "keepalive_timeout = 3"
    local py
    py=$(conn_py parked <<'EOF'
port = int(sys.argv[1])
s = connect(port, timeout=5)
r = Reader(s)
s.sendall(req("GET", "/hello.txt"))
expect(r, "GET", 200, b"hello from the test origin\n", "first GET")
time.sleep(2.0)                         # idle past 1 s: parked, buffers given back
s.sendall(req("GET", "/index.html"))
expect(r, "GET", 200, b"<html><body>pibl test index</body></html>\n", "GET after parking")
# keepalive_timeout = 3: still open at 2 s of idleness, closed by PIBL by 4.5 s.
t = read_eof(s, 2.0)
if t is not None:
    fail("closed after %.2f s of idleness, keepalive_timeout is 3" % t)
t = read_eof(s, 2.5)
if t is None:
    fail("still open after 4.5 s of idleness, keepalive_timeout is 3")
note("closed after %.2f s of idleness" % (2.0 + t))
EOF
)
    run python3 "$py" "$PIBL_PORT"
    echo "$output"
    [ "$status" -eq 0 ]
    # Both requests reached the origin, in order.
    run grep -E ' GET /(hello\.txt|index\.html)$' "$(origin_log o1)"
    [ "$output" = $'o1 GET /hello.txt\no1 GET /index.html' ]
    wait_for_count "$PIBL_LOG" '"GET /(hello\.txt|index\.html) HTTP/1\.1" .* status=200 ' 2
}

@test "one connection alternates the blocking path and the loop: POST, GET, chunked GET, GET, HEAD, GET" {
    start_origin o1
    start_pibl
    local py
    py=$(conn_py alternate <<'EOF'
port = int(sys.argv[1])
hello = b"hello from the test origin\n"
s = connect(port, timeout=5)
r = Reader(s)
post = b"alternating-body-" + b"p" * 3000
s.sendall(req("POST", "/_echo?step=1", body=post))
_, h, b = expect(r, "POST", 200, None, "1 POST /_echo")
if not b.startswith(b"POST /_echo?step=1 HTTP/1.1\r\n") or not b.endswith(b"\r\n\r\n" + post):
    fail("1 POST /_echo: echo %r" % b[:200])
if h.get("x-body-bytes") != str(len(post)):
    fail("1 POST /_echo: X-Body-Bytes %r" % h.get("x-body-bytes"))
s.sendall(req("GET", "/hello.txt"))
expect(r, "GET", 200, hello, "2 GET /hello.txt")
s.sendall(req("GET", "/_chunked?n=40&size=1000"))
expect(r, "GET", 200, digits(40000), "3 GET /_chunked")
s.sendall(req("GET", "/index.html"))
expect(r, "GET", 200, b"<html><body>pibl test index</body></html>\n", "4 GET /index.html")
s.sendall(req("HEAD", "/hello.txt"))
_, h, _ = expect(r, "HEAD", 200, b"", "5 HEAD /hello.txt")
if h.get("content-length") != str(len(hello)):
    fail("5 HEAD: Content-Length %r" % h.get("content-length"))
# A body after the HEAD answer would show up here instead of the next status line.
s.sendall(req("GET", "/sub/index.html"))
expect(r, "GET", 200, b"<html><body>sub index</body></html>\n", "6 GET /sub/index.html")
s.sendall(req("POST", "/_echo?step=7", body=b"again"))
_, _, b = expect(r, "POST", 200, None, "7 POST /_echo")
if not b.endswith(b"\r\n\r\nagain"):
    fail("7 POST /_echo: echo %r" % b[:200])
if r.buf:
    fail("%d stray bytes after the last answer: %r" % (len(r.buf), r.buf[:100]))
note("7 exchanges on one connection")
EOF
)
    run python3 "$py" "$PIBL_PORT"
    echo "$output"
    [ "$status" -eq 0 ]
    run cat "$(origin_log o1)"
    echo "$output"
    [ "$output" = "o1 POST /_echo?step=1
o1 GET /hello.txt
o1 GET /_chunked?n=40&size=1000
o1 GET /index.html
o1 HEAD /hello.txt
o1 GET /sub/index.html
o1 POST /_echo?step=7" ]
    # One client connection carried all of them.
    wait_for_count "$PIBL_LOG" ' status=200 ' 7
    [ "$(grep ' status=200 ' "$PIBL_LOG" | cut -d' ' -f2 | sort -u | wc -l)" -eq 1 ]
}

@test "pipelining across the hand-over: GET, POST with a body, GET in one send() are answered in order" {
    # http.bats already pipelines three GETs; here the middle one has a body, so the loop hands the connection to a
    # blocking thread with the next request already buffered behind it.
    start_origin o1
    start_pibl
    local py
    py=$(conn_py pipeline <<'EOF'
port = int(sys.argv[1])
hello = b"hello from the test origin\n"
index = b"<html><body>pibl test index</body></html>\n"
s = connect(port, timeout=5)
r = Reader(s)
post = b"pipelined-post-body-" + b"q" * 5000
s.sendall(req("GET", "/hello.txt") + req("POST", "/_echo?p=2", body=post) + req("GET", "/index.html"))
expect(r, "GET", 200, hello, "pipelined 1 GET /hello.txt")
_, _, b = expect(r, "POST", 200, None, "pipelined 2 POST /_echo")
if not b.startswith(b"POST /_echo?p=2 HTTP/1.1\r\n") or not b.endswith(b"\r\n\r\n" + post):
    fail("pipelined 2 POST /_echo: echo %r" % b[:200])
expect(r, "GET", 200, index, "pipelined 3 GET /index.html")
# Second round on the same connection: slow-path answers (chunked, POST) between loop ones (GET, HEAD).
s.sendall(req("GET", "/_chunked?n=3&size=10") + req("GET", "/_bytes?size=100000") + req("HEAD", "/hello.txt") +
          req("POST", "/_echo?p=7", body=b"seven") + req("GET", "/hello.txt"))
expect(r, "GET", 200, digits(30), "pipelined 4 GET /_chunked")
expect(r, "GET", 200, digits(100000), "pipelined 5 GET /_bytes")
expect(r, "HEAD", 200, b"", "pipelined 6 HEAD /hello.txt")
_, _, b = expect(r, "POST", 200, None, "pipelined 7 POST /_echo")
if not b.startswith(b"POST /_echo?p=7 HTTP/1.1\r\n") or not b.endswith(b"\r\n\r\nseven"):
    fail("pipelined 7 POST /_echo: echo %r" % b[:200])
expect(r, "GET", 200, hello, "pipelined 8 GET /hello.txt")
# Nothing more: no extra answer, and the connection is still open.
s.settimeout(0.5)
try:
    extra = s.recv(65536)
    fail("after the 8 answers: %r" % (extra[:200] if extra else "connection closed"))
except socket.timeout:
    pass
if r.buf:
    fail("%d stray bytes after the answers: %r" % (len(r.buf), r.buf[:100]))
note("8 pipelined answers in order")
EOF
)
    run python3 "$py" "$PIBL_PORT"
    echo "$output"
    [ "$status" -eq 0 ]
    run cat "$(origin_log o1)"
    echo "$output"
    [ "$output" = "o1 GET /hello.txt
o1 POST /_echo?p=2
o1 GET /index.html
o1 GET /_chunked?n=3&size=10
o1 GET /_bytes?size=100000
o1 HEAD /hello.txt
o1 POST /_echo?p=7
o1 GET /hello.txt" ]
}

# ---------------------------------------------------------------- past FD_SETSIZE

@test "1,200 keep-alive connections: PIBL's descriptors past 1023 are served, before and after parking" {
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt 4096 ]; then
        skip "ulimit -Hn is $hard (< 4096): cannot hold 1,200 connections on both sides"
    fi
    start_origin o1
    start_pibl
    local py
    py=$(conn_py many <<'EOF'
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 45
lim = raise_nofile(n + 500)
if lim < n + 100:
    fail("cannot raise this process's descriptor limit to %d (got %d)" % (n + 100, lim))
socks = []
for i in range(n):
    socks.append(connect(port, timeout=5))
    if time.monotonic() > deadline:
        fail("opening %d connections took too long (%d open)" % (n, i))
# Wait (bounded) until PIBL has accepted them all: then it holds descriptors past FD_SETSIZE.
t_end = time.monotonic() + 5
while True:
    fds = [int(x) for x in os.listdir("/proc/%d/fd" % pid)]
    if len(fds) >= n or time.monotonic() > t_end:
        break
    time.sleep(0.05)
note("pibl holds %d descriptors, the highest is %d" % (len(fds), max(fds)))
if len(fds) < n or max(fds) < 1100:
    fail("pibl did not accept the %d connections (%d descriptors, highest %d)" % (n, len(fds), max(fds)))
readers = [Reader(s) for s in socks]

def get(i, rnd):
    want = ("GET /_echo?c=%d&r=%d HTTP/1.1\r\n" % (i, rnd)).encode()
    _, _, b = expect(readers[i], "GET", 200, None, "connection %d round %d" % (i, rnd))
    if not b.startswith(want):
        fail("connection %d round %d: got the answer %r" % (i, rnd, b[:60]))

# Round 1: one GET on every connection, 100 connections in flight at a time.
for start in range(0, n, 100):
    batch = range(start, min(n, start + 100))
    for i in batch:
        socks[i].sendall(req("GET", "/_echo?c=%d&r=1" % i))
    for i in batch:
        get(i, 1)
    if time.monotonic() > deadline:
        fail("round 1 took too long (at connection %d)" % start)
note("round 1: %d answers" % n)
# All still open (nothing pending, no EOF).
for i, s in enumerate(socks):
    s.setblocking(False)
    try:
        d = s.recv(1)
        fail("connection %d: %s after its answer" % (i, "closed" if not d else "stray bytes"))
    except BlockingIOError:
        pass
    s.settimeout(5)
time.sleep(1.5)                         # idle past 1 s: parked
# Round 2: the last 50 opened (PIBL's highest descriptors), all in flight at once.
last = range(n - 50, n)
for i in last:
    socks[i].sendall(req("GET", "/_echo?c=%d&r=2" % i))
for i in last:
    get(i, 2)
note("round 2: 50 answers on the last connections")
for s in socks:
    s.close()
EOF
)
    run python3 "$py" "$PIBL_PORT" 1200 "$PIBL_PID"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(count_lines "$(origin_log o1)" ' GET /_echo\?c=[0-9]+&r=1$')" -eq 1200 ]
    [ "$(count_lines "$(origin_log o1)" ' GET /_echo\?c=[0-9]+&r=2$')" -eq 50 ]
    pid_alive "$PIBL_PID"
}

# ---------------------------------------------------------------- graceful stop

@test "graceful stop: parked connections close at once, exchanges in flight finish, pibl exits 0" {
    start_origin o1
    start_pibl
    local rep=$BATS_TEST_TMPDIR/stop.rep py pid t_kill t_exit rc=0
    py=$(conn_py stop <<'EOF'
port, n, rep, olog = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
idle = []
for i in range(n):
    s = connect(port, timeout=10)
    s.sendall(req("GET", "/_echo?idle=%d" % i))
    expect(Reader(s), "GET", 200, None, "idle connection %d" % i)
    idle.append(s)
time.sleep(1.5)                         # parked
# In flight: a GET served by a loop and a POST (with a body) served by a blocking thread.
g = connect(port, timeout=15)
g.sendall(req("GET", "/_slow?ms=1500&via=loop"))
p = connect(port, timeout=15)
p.sendall(req("POST", "/_slow?ms=1500&via=thread", body=b"b" * 1000))
t_end = time.monotonic() + 5
while open(olog).read().count(" /_slow?") < 2:
    if time.monotonic() > t_end:
        fail("the two /_slow requests did not reach the origin")
    time.sleep(0.02)
report(rep, "ready at=%.6f" % time.time())
# Watch everything: the time each idle socket reads EOF, the time each in-flight answer starts.
for s in idle + [g, p]:
    s.setblocking(False)
watch = {s.fileno(): s for s in idle + [g, p]}
eof_at, answer_at, unexpected = {}, {}, []
t_end = time.monotonic() + 8
while watch and time.monotonic() < t_end:
    ready, _, _ = select.select(list(watch.values()), [], [], 0.2)
    for s in ready:
        if s is g or s is p:
            answer_at[s.fileno()] = time.time()
            del watch[s.fileno()]
            continue
        try:
            d = s.recv(65536)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            d = b""
        if d:
            unexpected.append(d[:80])
        eof_at[s.fileno()] = time.time()
        del watch[s.fileno()]
report(rep, "idle_closed=%d of %d last_eof_at=%.6f" % (len(eof_at), n, max(eof_at.values()) if eof_at else 0))
if unexpected:
    fail("idle connections got bytes instead of EOF: %r" % unexpected[:3])
if len(answer_at) != 2:
    fail("the in-flight exchanges got no answer within 8 s")
report(rep, "first_answer_at=%.6f" % min(answer_at.values()))
for s, method, what in ((g, "GET", "in-flight GET"), (p, "POST", "in-flight POST")):
    s.settimeout(5)
    r = Reader(s)
    expect(r, method, 200, b"slow\n", what)
    t = read_eof(s, 3)
    if t is None:
        fail(what + ": connection still open after its answer during the stop")
report(rep, "done")
EOF
)
    : >"$rep"
    python3 "$py" "$PIBL_PORT" 50 "$rep" "$(origin_log o1)" >"$rep.out" 2>&1 3>&- &
    pid=$!
    track_pid "$pid"
    wait_for_line "$rep" '^ready at=' 15 || { cat "$rep.out"; return 1; }
    t_kill=$(now_s)
    kill -TERM "$PIBL_PID"
    wait_pid_exit "$PIBL_PID" 5 || { echo "pibl still running 5 s after SIGTERM"; return 1; }
    t_exit=$(now_s)
    wait "$PIBL_PID" || rc=$?
    untrack_pid "$PIBL_PID"
    echo "pibl exited with $rc after $(elapsed_between "$t_kill" "$t_exit") s"
    [ "$rc" -eq 0 ]
    local prc=0
    wait_pid_exit "$pid" 15 || { echo "client still running"; cat "$rep" "$rep.out"; return 1; }
    wait "$pid" || prc=$?
    untrack_pid "$pid"
    cat "$rep" "$rep.out"
    [ "$prc" -eq 0 ]
    grep -q '^done$' "$rep"
    grep -q '^idle_closed=50 of 50 ' "$rep"
    local last_eof first_answer
    last_eof=$(sed -n -E 's/.* last_eof_at=([0-9.]+)$/\1/p' "$rep")
    first_answer=$(sed -n -E 's/^first_answer_at=//p' "$rep")
    # "At once": every parked connection was closed within 1 s of the signal, before the in-flight answers came.
    before "$t_kill" "$last_eof"
    before "$last_eof" "$(awk -v t="$t_kill" 'BEGIN { printf "%.6f", t + 1.0 }')"
    before "$last_eof" "$first_answer"
    # The in-flight exchanges finished before pibl exited.
    before "$first_answer" "$t_exit"
    wait_for_count "$PIBL_LOG" '"(GET|POST) /_slow\?ms=1500&via=(loop|thread) HTTP/1\.1" .* status=200 ' 2
}

# ---------------------------------------------------------------- backend stall

@test "backend stalls mid-body on the fast path: the client gets a cut transfer, others are served meanwhile" {
    local fake=$BATS_TEST_TMPDIR/fake body
    start_fake_backend "$fake"
    # Request 1 (the first backend in round robin order is the fake): Content-Length 1,000,000, 1,000 bytes sent,
    # then silence on an open connection. Any other request to the fake gets a healthy answer.
    body=$(printf 'x%.0s' $(seq 1 1000))
    fake_answer 1 "HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 1000000\\r\\n\\r\\n$body"
    fake_answer default 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nfake-ok\n'
    start_origin o1
    start_pibl "backend_timeout = 2"
    local out=$BATS_TEST_TMPDIR/stall
    (
        t0=$(now_s)
        rc=0
        curl -s -o "$out.body" -w '%{http_code} %{size_download}' --max-time 10 "$(url /stall)" >"$out.w" || rc=$?
        echo "rc=$rc start=$t0 end=$(now_s)" >"$out.rc"
    ) 3>&- &
    track_pid $!
    wait_for_line "$fake/log" '^conn=[0-9]+ req=1 GET /stall ' || return 1
    sleep 0.2                                       # PIBL has relayed the first 1,000 bytes and waits for more
    run curl_many 8 1 "$(url /hello.txt)"
    local t_healthy
    t_healthy=$(now_s)
    echo "$output"
    [ "$status" -eq 0 ]
    [ ! -f "$out.rc" ] || { echo "the stalled transfer ended before the healthy ones: $(cat "$out.rc")"; return 1; }
    # Half of them went to the healthy origin.
    [ "$(count_lines "$(origin_log o1)" ' GET /hello.txt$')" -ge 3 ]
    wait_for_line "$out.rc" '^rc=' 8 || return 1
    cat "$out.rc" "$out.w"
    local rc start end took
    rc=$(sed -n -E 's/^rc=([0-9]+) .*/\1/p' "$out.rc")
    start=$(sed -n -E 's/.* start=([0-9.]+) .*/\1/p' "$out.rc")
    end=$(sed -n -E 's/.* end=([0-9.]+)$/\1/p' "$out.rc")
    took=$(elapsed_between "$start" "$end")
    echo "stalled transfer: curl exit $rc after $took s"
    # curl 18 = partial file: PIBL cut the client connection (not curl's own --max-time, which would be 28).
    [ "$rc" -eq 18 ]
    local code size
    read -r code size <"$out.w" || true      # no newline after curl -w
    [ "$code" = 200 ]
    [ "$size" -lt 1000000 ]
    before "$t_healthy" "$end"
    # Cut by backend_timeout = 2, not later.
    before 1.5 "$took"
    before "$took" 6
    wait_for_line "$PIBL_LOG" '"GET /stall HTTP/1\.1" .* status=200 .*err="backend timed out mid-answer"'
}

@test "a client that never reads a blocking-path answer (chunked) frees its thread after client_timeout" {
    start_origin o1
    start_pibl "client_timeout = 2"
    # 64 MB chunked: a blocking thread relays it (the loops only relay Content-Length bodies). The client reads
    # nothing and keeps its socket open; the thread's send must give up after client_timeout, log the exchange
    # and close, instead of waiting forever.
    local py rep=$BATS_TEST_TMPDIR/noread.rep
    py=$(conn_py noread <<'EOF2'
port, rep = int(sys.argv[1]), sys.argv[2]
s = connect(port, timeout=20, rcvbuf=4096)
s.sendall(req("GET", "/_chunked?n=64&size=1048576"))
report(rep, "sent at=%.6f" % time.time())
time.sleep(12)                          # never reads; held open well past client_timeout
EOF2
)
    python3 "$py" "$PIBL_PORT" "$rep" >"$rep.out" 2>&1 3>&- &
    local pid=$!
    track_pid "$pid"
    wait_for_line "$rep" '^sent at=' || return 1
    local t0
    t0=$(now_s)
    # Logged (status 200, cut) within a few seconds of client_timeout, while the client still holds the socket.
    wait_for_line "$PIBL_LOG" '"GET /_chunked\?n=64&size=1048576 HTTP/1\.1" .* status=200 .*err="client went away"' 10 || return 1
    local took
    took=$(elapsed_between "$t0" "$(now_s)")
    echo "logged after $took s"
    pid_alive "$pid"
    before "$took" 8
    # The connection is gone on PIBL's side, and PIBL still serves.
    run pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)"
    [ "$output" = 200 ]
    stop_pid "$pid"
}

# ---------------------------------------------------------------- fairness: one connection cannot hold a loop

# hog_py: one connection that floods PIBL. Args: PORT MODE REPORT STOP_FILE MAX_SECS.
#   MODE get:  a writer thread sendall()s batches of 20,000 pipelined GETs of /hello.txt (Host 127.0.0.1:PORT, the
#              one curl sends, so they are cache hits) while a reader thread drains the answers and checks each one
#              is a well-formed 200 with X-Cache: HIT and hello.txt's body; after the writer stops, every request
#              sent must have had its answer. Both sides must outrun PIBL, or PIBL would find its socket empty or
#              full and go back to select() anyway: batches of 2,000 (100 KB) left gaps while the writer waited for
#              the GIL (a hogged loop then still came back within 0.4 s), and the reader checks the answers a
#              buffer at a time with the regex engine.
#   MODE crlf: the writer sends bare CRLF (empty lines PIBL must skip) with sendfile(); afterwards one GET on
#              the same connection must still get its 200, and nothing else may have come back.
# The writer stops when STOP_FILE exists or after MAX_SECS. REPORT gets "flooding at=T" once the flood is under
# way, then "ok mode=M sent=N answers=A secs=S flood_secs=F" (S: the whole run; F: when the writer stopped).
hog_py() {
    conn_py hog <<'EOF'
import re, threading
port, mode, rep, stop_file, max_secs = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
HOST = "127.0.0.1:%d" % port            # the Host curl sends: the entry the test cached
hello = b"hello from the test origin\n"
s = connect(port, timeout=10)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
t0 = time.monotonic()
deadline = t0 + max_secs
state = {"sent": 0, "answers": 0, "done": False, "error": None}
lock = threading.Lock()

END = b"\r\n\r\n" + hello                 # every answer ends so: its blank line and hello.txt's body
# A run of well-formed 200 answers with hello.txt's body, checked by the regex engine, not answer by answer in
# python (which would read too slowly to keep PIBL busy).
ANSWERS = re.compile(rb"(?:HTTP/1\.1 200 [^\r\n]*\r\n(?:[!-9;-~]+:[^\r\n]*\r\n)*\r\n" + re.escape(hello) + rb")+")

def reader():
    buf, n = bytearray(), 0
    try:
        while True:
            with lock:
                if state["done"] and n >= state["sent"]:
                    break
            if time.monotonic() > deadline + 10:
                raise RuntimeError("answers still missing 10 s after the flood (%d of %d)" % (n, state["sent"]))
            try:
                d = s.recv(4 << 20)
            except socket.timeout:
                continue
            if not d:
                raise RuntimeError("connection closed after %d answers" % n)
            buf += d
            end = buf.rfind(END)
            if end < 0:
                if len(buf) > 65536:
                    raise RuntimeError("no answer in %d bytes after answer %d: %r" % (len(buf), n, bytes(buf[:200])))
                continue
            end += len(END)
            if ANSWERS.fullmatch(buf, 0, end) is None:
                raise RuntimeError("malformed answers after answer %d: %r" % (n, bytes(buf[:300])))
            k = buf.count(END, 0, end)
            if buf.count(b"\r\nX-Cache: HIT\r\n", 0, end) != k or buf.count(b"\r\nContent-Length: 27\r\n", 0, end) != k:
                raise RuntimeError("answers %d to %d: not all cache hits of 27 bytes" % (n + 1, n + k))
            n += k
            del buf[:end]
            if n == k:
                report(rep, "flooding at=%.6f" % time.time())
        if buf:
            raise RuntimeError("%d stray bytes after the last answer: %r" % (len(buf), bytes(buf[:80])))
    except Exception as ex:             # reported by the main thread
        state["error"] = "reader: %s" % ex
    state["answers"] = n

if mode == "get":
    batch_n = 20000                     # about 1 MB a sendall(): see hog_py
    batch = req("GET", "/hello.txt") * batch_n
    rt = threading.Thread(target=reader, daemon=True)
    rt.start()
    try:
        while time.monotonic() < deadline and not os.path.exists(stop_file) and state["error"] is None:
            s.sendall(batch)
            with lock:
                state["sent"] += batch_n
    except Exception as ex:
        fail("writer: %s after %d requests" % (ex, state["sent"]))
    state["flood_secs"] = time.monotonic() - t0
    with lock:
        state["done"] = True
    rt.join(deadline - time.monotonic() + 15)
    if rt.is_alive():
        fail("the reader did not finish (%d answers of %d)" % (state["answers"], state["sent"]))
    if state["error"]:
        fail(state["error"])
    if state["answers"] != state["sent"]:
        fail("%d answers for %d requests" % (state["answers"], state["sent"]))
elif mode == "crlf":
    # sendfile() from a file of CRLF: no copy on this side, so the writer outruns PIBL and its socket never empties
    # (copying 1 MB buffers with sendall(), PIBL found it empty every few hundred ms and went back to select()).
    crlf_path = rep + ".crlf"
    with open(crlf_path, "wb") as f:
        f.write(b"\r\n" * (8 << 20))     # 16 MB
    crlf = open(crlf_path, "rb")
    size = os.fstat(crlf.fileno()).st_size
    sent, i = 0, 0
    try:
        while time.monotonic() < deadline and not os.path.exists(stop_file):
            sent += s.sendfile(crlf, 0, size)
            i += 1
            if i == 1:
                report(rep, "flooding at=%.6f" % time.time())
    except Exception as ex:
        fail("writer: %s after %d bytes" % (ex, sent))
    state["flood_secs"] = time.monotonic() - t0
    state["sent"] = sent
    # Every empty line is skipped: the next request on this connection gets its answer, and nothing else came.
    s.settimeout(20)
    s.sendall(req("GET", "/hello.txt"))
    r = Reader(s)
    _, h, _ = expect(r, "GET", 200, hello, "GET after %d bytes of CRLF" % sent)
    if h.get("x-cache") != "HIT":
        fail("GET after the CRLF flood: X-Cache %r" % h.get("x-cache"))
    if r.buf:
        fail("%d stray bytes after the answer: %r" % (len(r.buf), r.buf[:80]))
    state["answers"] = 1
else:
    fail("unknown mode " + mode)
report(rep, "ok mode=%s sent=%d answers=%d secs=%.2f flood_secs=%.2f" % (mode, state["sent"], state["answers"],
                                                          time.monotonic() - t0, state["flood_secs"]))
EOF
}

# probe_loop N URL: N curls of URL (each a new connection, --max-time 2), about 70 ms apart, never longer than 20 s
# in all. Prints one line "CODE TIME_TOTAL" per probe made.
probe_loop() {
    local n=$1 u=$2 i out t_end
    t_end=$(($(date +%s) + 20))
    for ((i = 1; i <= n; i++)); do
        out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 2 "$u") || true
        echo "$out"
        [ "$(date +%s)" -lt "$t_end" ] || break
        sleep 0.07
    done
}

# run_hog_case MODE: cache /hello.txt (TTL 60), start the hog in MODE, and while it floods its loop, 40 probes
# (new connections: round robin puts them on every loop, the hog's included) must each get a 200 within 0.5 s.
# Then the hog stops and must report a clean run.
run_hog_case() {
    local mode=$1 rep=$BATS_TEST_TMPDIR/hog.rep stop=$BATS_TEST_TMPDIR/hog.stop py pid rc=0
    PIBL_TTL=60
    start_origin o1
    start_pibl
    pcurl -o /dev/null "$(url /hello.txt)"
    local hdrs
    hdrs=$(pcurl -D - -o /dev/null "$(url /hello.txt)")
    [ "$(header_value "$hdrs" X-Cache)" = HIT ]
    py=$(hog_py)
    : >"$rep"
    rm -f "$stop"
    python3 "$py" "$PIBL_PORT" "$mode" "$rep" "$stop" 12 >"$rep.out" 2>&1 3>&- &
    pid=$!
    track_pid "$pid"
    wait_for_line "$rep" '^flooding at=' || { cat "$rep.out"; return 1; }
    sleep 0.3                                       # well under way
    local probes max n ok
    probes=$(probe_loop 40 "$(url /hello.txt)")
    : >"$stop"
    printf '%s\n' "$probes" | tr '\n' ' '
    echo
    n=$(printf '%s\n' "$probes" | grep -c .)
    ok=$(printf '%s\n' "$probes" | grep -c '^200 ')
    max=$(printf '%s\n' "$probes" | awk '{ if ($2 > m) m = $2 } END { printf "%.3f", m }')
    echo "probes: $n made, $ok answered 200, slowest $max s"
    wait_pid_exit "$pid" 30 || { echo "hog still running"; cat "$rep" "$rep.out"; return 1; }
    wait "$pid" || rc=$?
    untrack_pid "$pid"
    cat "$rep" "$rep.out"
    [ "$n" -eq 40 ]
    [ "$ok" -eq 40 ]
    before "$max" 0.5
    [ "$rc" -eq 0 ]
    grep -q "^ok mode=$mode " "$rep"
    # The hog was still flooding when the last probe ended (it stopped on the stop file, not on its deadline):
    # flood_secs is when its writer stopped; draining the answers still owed may take longer on a slow build.
    local secs
    secs=$(sed -n -E 's/^ok .* flood_secs=([0-9.]+)$/\1/p' "$rep")
    [ -n "$secs" ]
    before "$secs" 11
    pid_alive "$PIBL_PID"
}

@test "a client pipelining cached GETs faster than they are served does not hold up the other clients of its loop" {
    run_hog_case get
    # It really pipelined: thousands of answers on its one connection, all cache hits (one origin request in all).
    local answers
    answers=$(sed -n -E 's/^ok .* answers=([0-9]+) .*/\1/p' "$BATS_TEST_TMPDIR/hog.rep")
    [ "$answers" -ge 10000 ]
    [ "$(count_lines "$(origin_log o1)" ' GET /hello.txt$')" -eq 1 ]
}

@test "a client streaming bare CRLF as fast as it can does not hold up the other clients of its loop" {
    run_hog_case crlf
    local sent
    sent=$(sed -n -E 's/^ok .* sent=([0-9]+) .*/\1/p' "$BATS_TEST_TMPDIR/hog.rep")
    [ "$sent" -ge 1000000 ]
}

# ---------------------------------------------------------------- pooled backend connections

# stray_backend_py: the script of a backend that breaks HTTP after /bad and /badc. Args: LOG MAX_SECS. Listens on
# 127.0.0.1 (any free port; prints "stray listening on 127.0.0.1:PORT") for MAX_SECS at most, keeps every connection
# open, and answers each GET/HEAD head in order: /bad and /badc get a 200 "hello" (Content-Length 5), then ~100 ms
# later a second, unasked-for complete 200 "evil" on the same connection (with Cache-Control: max-age=60 after
# /badc), logged "stray sent conn=C"; /fin gets a 200 "hello", then the backend closes its side of the connection
# and waits up to 5 s for PIBL to close the other, logged "fin closed conn=C after=SECS" or "fin open conn=C after=5";
# any other path P gets a 200 "good:P". Each request is logged "conn=C GET P".
stray_backend_py() {
    local f=$BATS_TEST_TMPDIR/stray_backend.py
    cat >"$f" <<'EOF'
import socket, sys, threading, time
log_path, max_secs = sys.argv[1], float(sys.argv[2])
lock = threading.Lock()

def log(line):
    with lock:
        with open(log_path, "a") as f:
            f.write(line + "\n")

def answer(body, extra=b""):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)

def serve(conn, cid):
    conn.settimeout(max_secs)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = conn.recv(65536)
                if not d:
                    return
                buf += d
                if len(buf) > 1 << 20:
                    return
            head, buf = buf.split(b"\r\n\r\n", 1)
            method, path = head.split(b"\r\n", 1)[0].split(b" ")[:2]
            log("conn=%d %s %s" % (cid, method.decode(), path.decode()))
            if path in (b"/bad", b"/badc"):
                conn.sendall(answer(b"hello"))
                time.sleep(0.1)
                extra = b"Cache-Control: max-age=60\r\n" if path == b"/badc" else b""
                conn.sendall(answer(b"evil", extra))
                log("stray sent conn=%d" % cid)
            elif path == b"/fin":
                conn.sendall(answer(b"hello"))
                conn.shutdown(socket.SHUT_WR)
                t0 = time.monotonic()
                conn.settimeout(5)
                try:
                    while conn.recv(65536):
                        pass
                    log("fin closed conn=%d after=%.3f" % (cid, time.monotonic() - t0))
                except socket.timeout:
                    log("fin open conn=%d after=5" % cid)
                return
            else:
                data = answer(b"good:" + path)
                conn.sendall(data if method != b"HEAD" else data[:data.index(b"\r\n\r\n") + 4])
    except OSError:
        return
    finally:
        conn.close()

ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(64)
ls.settimeout(0.5)
print("stray listening on 127.0.0.1:%d" % ls.getsockname()[1], flush=True)
end, n = time.monotonic() + max_secs, 0
while time.monotonic() < end:
    try:
        c, _ = ls.accept()
    except socket.timeout:
        continue
    n += 1
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
EOF
    echo "$f"
}

# start_stray_backend: start stray_backend_py (tracked; 60 s at most) as the only backend. Sets STRAY_LOG.
start_stray_backend() {
    local py
    py=$(stray_backend_py)
    STRAY_LOG=$BATS_TEST_TMPDIR/stray.log
    : >"$STRAY_LOG"
    start_test_backend "$BATS_TEST_TMPDIR/stray.out" "$BATS_TEST_TMPDIR/stray.err" stray \
        python3 "$py" "$STRAY_LOG" 60
}

# get_body_is PATH WANT: one curl GET of PATH must be a 200 whose body is WANT.
get_body_is() {
    local out
    out=$(pcurl -w ' %{http_code}' "$(url "$1")") || { echo "GET $1: curl failed: $out"; return 1; }
    echo "GET $1: $out"
    if [ "$out" != "$2 200" ]; then
        echo "GET $1: want the body '$2' with a 200"
        return 1
    fi
}

@test "stray bytes a backend sends after its answer never answer the next request on that pooled connection" {
    start_stray_backend
    start_pibl "upstream_keepalive = on"
    get_body_is /bad hello
    # The extra answer is on the pooled connection before the next request.
    wait_for_line "$STRAY_LOG" '^stray sent conn='
    sleep 0.3
    get_body_is /good1 good:/good1
    get_body_is /good2 good:/good2
    get_body_is /good3 good:/good3
    cat "$STRAY_LOG"
    # Each reached the backend once, and none on the connection that carried the stray bytes.
    local bad_conn n
    bad_conn=$(sed -n -E 's/^conn=([0-9]+) GET \/bad$/\1/p' "$STRAY_LOG")
    [ -n "$bad_conn" ]
    for n in 1 2 3; do
        [ "$(count_lines "$STRAY_LOG" "^conn=[0-9]+ GET /good$n\$")" -eq 1 ]
        [ "$(count_lines "$STRAY_LOG" "^conn=$bad_conn GET /good$n\$")" -eq 0 ]
    done
    wait_for_count "$PIBL_LOG" '"GET /good[123] HTTP/1\.1" .* status=200 bytes=1[0-9] ' 3
}

@test "an idle pooled backend connection the backend closes is closed by PIBL at once, not at its next use" {
    # The loop watches its idle backend connections (no peek before reuse): the backend's FIN is seen as it comes.
    start_stray_backend
    start_pibl "upstream_keepalive = on"
    get_body_is /fin hello
    wait_for_line "$STRAY_LOG" '^fin (closed|open) conn=' 10
    cat "$STRAY_LOG"
    grep -Eq '^fin closed conn=[0-9]+ after=[01]\.' "$STRAY_LOG"
    # The next request goes on a new connection and is answered.
    get_body_is /good1 good:/good1
    [ "$(count_lines "$STRAY_LOG" '^conn=[0-9]+ GET /good1$')" -eq 1 ]
}

@test "a cacheable stray answer after a cached one is neither served nor cached under the next request's key" {
    PIBL_TTL=60
    start_stray_backend
    start_pibl "upstream_keepalive = on"
    get_body_is /badc hello
    wait_for_line "$STRAY_LOG" '^stray sent conn='
    sleep 0.3
    get_body_is /index.html good:/index.html
    get_body_is /other good:/other
    # Asked again: hits, each with its own answer (what was cached under each key is that key's answer).
    local p
    for p in /index.html /other; do
        run pcurl -i "$(url "$p")"
        echo "$output"
        [ "$(status_of "$output")" = 200 ]
        [ "$(header_value "$output" X-Cache)" = HIT ]
        [ "$(body_of "$output")" = "good:$p" ]
    done
    get_body_is /badc hello
    cat "$STRAY_LOG"
    [ "$(count_lines "$STRAY_LOG" '^conn=[0-9]+ GET /index\.html$')" -eq 1 ]
    [ "$(count_lines "$STRAY_LOG" '^conn=[0-9]+ GET /other$')" -eq 1 ]
    [ "$(count_lines "$STRAY_LOG" '^conn=[0-9]+ GET /badc$')" -eq 1 ]
}

# established_to PORT: established TCP connections whose far end is 127.0.0.1:PORT, counted on the near side.
established_to() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p="$hex" 'NR > 1 && $4 == "01" { split($3, r, ":"); if (r[2] == p) n++ } END { print n + 0 }' /proc/net/tcp
}

# ports_to PORT: the near-side ports of the established connections to 127.0.0.1:PORT, sorted, one per line.
ports_to() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p="$hex" 'NR > 1 && $4 == "01" { split($2, l, ":"); split($3, r, ":"); if (r[2] == p) print l[2] }' \
        /proc/net/tcp | sort
}

@test "backend connections a burst left in the pool close by halves once idle 5 s; some stay and are reused" {
    start_origin o1
    start_pibl
    local port=${ORIGIN_PORT[o1]} pids=() i n0 n start
    # Twelve requests at once, each held 2 s by the origin: twelve backend connections, all pooled after.
    for ((i = 0; i < 12; i++)); do
        pcurl -o /dev/null "$(url "/_slow?ms=2000")" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do
        wait "$i"
    done
    start=$SECONDS
    n0=$(established_to "$port")
    echo "pooled after the burst: $n0"
    [ "$n0" -eq 12 ]
    sleep 3
    n=$(established_to "$port")
    echo "after 3 s: $n"
    [ "$n" -eq 12 ]                             # none closes before it has been idle 5 s
    # Each loop looks every 5 s and closes half (rounded down) of its own that were idle 5 s: 5 or 6 of the 12.
    for ((i = 0; i < 150; i++)); do
        n=$(established_to "$port")
        [ "$n" -le 7 ] && break
        sleep 0.1
    done
    echo "after $((SECONDS - start)) s: $n"
    [ "$n" -le 7 ]
    [ "$n" -ge 3 ]                              # halves, not all at once
    # Those left still serve: the next requests reuse them, with no new connection.
    for i in 1 2 3; do
        [ "$(pcurl "$(url /hello.txt)")" = "$HELLO_BODY" ]
    done
    [ "$(established_to "$port")" -le "$n" ]
    [ "$(established_to "$port")" -ge 1 ]
}

@test "300 requests at once to one backend leave 300 pooled connections, and the next 300 reuse them" {
    start_origin o1
    start_pibl
    local port=${ORIGIN_PORT[o1]} py n
    py=$(conn_py pool_burst <<'EOF'
port, count = int(sys.argv[1]), int(sys.argv[2])
raise_nofile(count + 64)
socks = [connect(port, timeout=20) for _ in range(count)]
for i, s in enumerate(socks):
    s.sendall(req("GET", "/_slow?ms=2000&n=%d" % i))
for i, s in enumerate(socks):
    expect(Reader(s), "GET", 200, b"slow\n", "request %d" % i)
for s in socks:
    s.close()
note("ok %d" % count)
EOF
)
    run timeout 60 python3 "$py" "$PIBL_PORT" 300
    echo "$output"
    [ "$status" -eq 0 ]
    # Each was answered on its own backend connection (all 300 wait at the origin together), and all went back to
    # the pool: none is closed for want of room (the pool held 128 per backend before).
    n=$(established_to "$port")
    echo "established to the origin after the first burst: $n"
    [ "$n" -eq 300 ]
    local first
    first=$(ports_to "$port")
    run timeout 60 python3 "$py" "$PIBL_PORT" 300
    [ "$status" -eq 0 ]
    n=$(established_to "$port")
    echo "after the second: $n"
    [ "$n" -eq 300 ]
    # The same 300 connections (by PIBL's local ports) carried the second burst: none was opened anew.
    [ "$(ports_to "$port")" = "$first" ]
    [ "$(grep -c 'o1 GET /_slow' "$(origin_log o1)")" -eq 600 ]
}

# ---------------------------------------------------------------- reload

@test "a reload raising max_header_bytes: a big head on a connection opened before gets an answer, a new one a 200" {
    start_origin o1
    start_pibl                                      # max_header_bytes: the default, 16384
    local py
    py=$(conn_py reload_head <<'EOF'
import signal
port, pid, cfg, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
hello = b"hello from the test origin\n"

def big_head(target, size):
    """A GET of target whose head is exactly size bytes (a long X-Pad field)."""
    h = req("GET", target)[:-2] + b"X-Pad: "
    return h + b"a" * (size - len(h) - 4) + b"\r\n\r\n"

s = connect(port, timeout=5)
r = Reader(s)
s.sendall(req("GET", "/hello.txt"))
expect(r, "GET", 200, hello, "GET before the reload")
t_answer = time.monotonic()
# The reload, at once: an idle connection is parked after 1 s and gets new buffers when it wakes up, which would
# not be the case under test (buffers sized by the old config).
with open(cfg, "a") as f:
    f.write("max_header_bytes = 65536\n")
os.kill(pid, signal.SIGHUP)
t_end = time.monotonic() + 5
while True:
    with open(log, "rb") as f:
        if b"pibl: reloaded " in f.read():
            break
    if time.monotonic() > t_end:
        fail("no 'reloaded' line in the log 5 s after SIGHUP")
    time.sleep(0.01)
took = time.monotonic() - t_answer
note("reloaded %.3f s after the answer" % took)
if took > 0.8:
    fail("the reload took %.3f s: the connection may have been parked meanwhile, nothing was tested" % took)
head = big_head("/hello.txt?old=1", 20000)
assert len(head) == 20000
try:
    s.sendall(head)
except (BrokenPipeError, ConnectionResetError) as ex:
    note("sending the big head: %s (the answer may still be there)" % ex)
try:
    status, headers, body = r.response()
except (EOFError, ConnectionResetError) as ex:
    fail("the big head on the connection opened before the reload got no answer: %s" % ex)
note("old connection: %d" % status)
if status == 200:
    if body != hello:
        fail("old connection: 200 with body %r" % body[:100])
elif status != 431:
    fail("old connection: status %d, want 431 (the buffer it has) or 200" % status)
# A new connection has buffers for the new limit.
s2 = connect(port, timeout=5)
s2.sendall(big_head("/hello.txt?new=1", 20000))
expect(Reader(s2), "GET", 200, hello, "20,000-byte head on a new connection")
note("old=%d new=200" % status)
EOF
)
    run python3 "$py" "$PIBL_PORT" "$PIBL_PID" "$PIBL_CFG" "$PIBL_LOG"
    echo "$output"
    [ "$status" -eq 0 ]
    local old
    old=$(printf '%s\n' "$output" | sed -n -E 's/^old=([0-9]+) new=200$/\1/p')
    [ -n "$old" ]
    # Both big heads were logged with the answers they got, the first one on the connection opened before.
    local peer
    peer=$(sed -n -E 's/^[^ ]+ ([^ ]+) "GET \/hello\.txt HTTP\/1\.1" .* status=200 .*/\1/p' "$PIBL_LOG" | head -n 1)
    [ -n "$peer" ]
    if [ "$old" = 431 ]; then
        wait_for_line "$PIBL_LOG" "^[^ ]+ $peer \".*\" .* status=431 .*err=\"request head too large\"\$"
    else
        wait_for_line "$PIBL_LOG" "^[^ ]+ $peer \"GET /hello\\.txt\\?old=1 HTTP/1\\.1\" .* status=200 "
    fi
    wait_for_line "$PIBL_LOG" "\"GET /hello\\.txt\\?new=1 HTTP/1\\.1\" .* status=200 "
    pid_alive "$PIBL_PID"
}
