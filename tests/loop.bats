#!/usr/bin/env bats
# loop.bats - the event loops: a few select() loops (one per core, own bitmaps past FD_SETSIZE) serve plain GET and
# HEAD exchanges (fresh cache hits with sendfile, Content-Length answers from a backend) without blocking; every
# other exchange is handed to a blocking thread and the connection comes back afterwards; idle keep-alive
# connections move to a parking loop after 1 s and are closed after keepalive_timeout; a graceful stop closes
# idle and parked connections at once and lets the exchanges in flight finish.
#
# Each test drives exact sockets from python3 (the client library is in loop_helpers.bash): a slow reader that
# must not hold up anyone else (hit and miss paths), one connection reused after being parked, one connection
# alternating the loop and the blocking path, pipelining across the hand-over, 1,200 connections (PIBL's
# descriptors past 1023), a graceful stop with parked connections, and a backend stalling mid-body.
# Every wait is bounded; ports are chosen at run time; everything stays on 127.0.0.1.
# shellcheck disable=SC2034  # PIBL_TTL is read by the helpers

bats_require_minimum_version 1.5.0
load helpers
load hostile_helpers
load loop_helpers

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
    loop_py slow_reader <<'EOF'
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
    py=$(loop_py parked <<'EOF'
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
    py=$(loop_py alternate <<'EOF'
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
    py=$(loop_py pipeline <<'EOF'
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
    py=$(loop_py many <<'EOF'
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
    py=$(loop_py stop <<'EOF'
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
    py=$(loop_py noread <<'EOF2'
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
