# connections_helpers.bash - helpers for tests/connections.bats (many clients at once, keep-alive, pooled backend
# connections), on top of helpers.bash and hostile_helpers.bash.
#
# What it does: holds a small python3 HTTP/1.1 client library (CONN_PY_LIB: connect, build a request, read one
# answer framed by Content-Length, chunked, HEAD/204/304 or close) and writes it, followed by a test's own script
# read from stdin, to a file in $BATS_TEST_TMPDIR, so each test drives exact sockets (slow readers, one
# connection reused across paths, pipelining, 1,200 connections, idle connections during a stop).
# What it refuses: any address but 127.0.0.1; every socket has a timeout and every script an overall deadline.
#
# Use from a test file:
#   load helpers
#   load hostile_helpers
#   load connections_helpers
#   py=$(conn_py NAME <<'EOF'
#   ... python using the library ...
#   EOF
#   )
#   run python3 "$py" ARGS...

# shellcheck shell=bash

# The python library every script starts with. fail(MSG) prints "FAIL: MSG" and exits 1; a socket timeout or an
# early close raises, which also exits non-zero with a traceback (shown by bats on failure).
CONN_PY_LIB=$(cat <<'PYLIB'
import os, resource, select, socket, sys, time

def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)

def note(msg):
    print(msg, flush=True)

def report(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")

def connect(port, timeout=5.0, rcvbuf=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s

HOST = "loop.test"                      # the Host of req(); part of PIBL's cache key

def req(method, target, body=None, headers=(), close=False):
    h = "%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, HOST)
    for k, v in headers:
        h += "%s: %s\r\n" % (k, v)
    if body is not None:
        h += "Content-Length: %d\r\n" % len(body)
    if close:
        h += "Connection: close\r\n"
    return h.encode("latin-1") + b"\r\n" + (body or b"")

def digits(n):
    """The body of the origin's generated routes: 0123456789 repeated, n bytes."""
    return (b"0123456789" * (n // 10 + 1))[:n]

class Reader:
    """Reads answers from one socket, keeping what came after an answer for the next one."""
    MAX_HEAD = 65536

    def __init__(self, sock):
        self.s = sock
        self.buf = b""

    def fill(self):
        d = self.s.recv(1 << 20)
        if not d:
            raise EOFError("connection closed by the peer (%d bytes pending)" % len(self.buf))
        self.buf += d

    def until(self, sep):
        while sep not in self.buf:
            if len(self.buf) > self.MAX_HEAD:
                raise ValueError("no %r in %d bytes" % (sep, len(self.buf)))
            self.fill()
        out, self.buf = self.buf.split(sep, 1)
        return out

    def exact(self, n):
        parts, have = [self.buf[:n]], min(n, len(self.buf))
        self.buf = self.buf[n:]
        while have < n:
            d = self.s.recv(min(1 << 20, n - have))
            if not d:
                raise EOFError("connection closed after %d of %d body bytes" % (have, n))
            parts.append(d)
            have += len(d)
        return b"".join(parts)

    def response(self, method="GET"):
        """(status, headers {lower-case name: value}, body) of the next final answer (1xx skipped)."""
        while True:
            head = self.until(b"\r\n\r\n").decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise ValueError("bad status line %r" % lines[0])
            status = int(parts[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if not 100 <= status < 200:
                break
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self.until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self.until(b"\r\n") != b"":
                        pass
                    break
                chunks.append(self.exact(size))
                if self.exact(2) != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self.exact(int(headers["content-length"]))
        else:
            chunks = [self.buf]
            self.buf = b""
            while True:
                d = self.s.recv(1 << 20)
                if not d:
                    break
                chunks.append(d)
            body = b"".join(chunks)
        return status, headers, body

def expect(r, method, want_status, want_body=None, what=""):
    """Read the next answer on Reader r and check its status (and body when want_body is not None)."""
    status, headers, body = r.response(method)
    if status != want_status:
        fail("%s: status %d, want %d (headers %r, body %r)" % (what, status, want_status, headers, body[:200]))
    if want_body is not None and body != want_body:
        fail("%s: body %r (%d bytes), want %r (%d bytes)" % (what, body[:200], len(body), want_body[:200],
                                                             len(want_body)))
    return status, headers, body

def read_eof(sock, secs):
    """Seconds until the peer closed sock (recv gave b"" or a reset), or None if still open after secs."""
    t0 = time.monotonic()
    sock.setblocking(False)
    while True:
        left = secs - (time.monotonic() - t0)
        if left <= 0:
            return None
        select.select([sock], [], [], left)
        try:
            d = sock.recv(65536)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return time.monotonic() - t0
        if not d:
            return time.monotonic() - t0
        fail("unexpected %d bytes on an idle connection: %r" % (len(d), d[:100]))

def raise_nofile(want):
    """Raise the soft descriptor limit of this process to want (at most the hard limit); returns the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < new:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
PYLIB
)

# conn_py NAME: write CONN_PY_LIB followed by the script on stdin to $BATS_TEST_TMPDIR/NAME.py; print its path.
conn_py() {
    local f=$BATS_TEST_TMPDIR/$1.py
    {
        printf '%s\n\n' "$CONN_PY_LIB"
        cat
    } >"$f"
    echo "$f"
}

# now_s: the wall clock in seconds with nanoseconds (to order events between bash and python, which uses
# time.time()).
now_s() {
    date +%s.%N
}

# before A B: 0 when the time A is earlier than B (both in seconds, as now_s prints them).
before() {
    awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'
}

# elapsed_between A B: B - A in seconds, 3 decimals.
elapsed_between() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'
}

# curl_many N MAX_SECS URL: N sequential curls of URL, each with --max-time MAX_SECS. Prints one line
# "CODE TIME_TOTAL" per request and returns 1 if any was not a 200 (all N are made either way).
curl_many() {
    local n=$1 max=$2 u=$3 i out bad=0
    for ((i = 1; i <= n; i++)); do
        out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time "$max" "$u") || true
        echo "$i: $out"
        [[ "$out" == "200 "* ]] || bad=$((bad + 1))
    done
    [ "$bad" -eq 0 ]
}
