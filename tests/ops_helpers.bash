# ops_helpers.bash - helpers for tests/ops.bats (status page, health checks, weights, reload, log reopen), on top
# of helpers.bash.
#
# What it does: starts the proxy with its status page on a free port and reads that port from the start-up line,
# reads /status.json through python3's json module, sends SIGHUP / SIGUSR1 to the proxy this test started and
# waits for the matching log line, computes the bytes /_bytes?size=N should return, finds a headless browser.
# What it refuses: it signals only $PIBL_PID (started by helpers.bash), writes only under $BATS_TEST_TMPDIR,
# connects only to 127.0.0.1.
# Limits: every wait is bounded (HELPER_WAIT_SECS or the given seconds, polling every 0.1 s); every curl goes
# through pcurl (--max-time); a browser run is cut after BROWSER_SECS (60) by `timeout`, with its process group.
#
# Use from a test file:
#   load helpers
#   load ops_helpers
#   setup()    { helpers_setup; }
#   teardown() { helpers_teardown; }

# SC2034: ADMIN_PORT and SNAP are read by the test file.
# shellcheck disable=SC2034
BROWSER_SECS=${BROWSER_SECS:-60}

# start_pibl_admin [LINES...]: start_pibl with `admin_port = 0` (any free port) plus LINES; waits for
# `pibl: status page on http://ADDR:PORT/ ...` and sets ADMIN_PORT.
start_pibl_admin() {
    start_pibl "admin_port = 0" "$@" || return 1
    local re='^pibl: status page on http://127\.0\.0\.1:([0-9]+)/ \(JSON /status\.json, Prometheus /metrics\)$'
    wait_for_line "$PIBL_OUT" "$re" || return 1
    ADMIN_PORT=$(sed -n -E "s#$re#\\1#p" "$PIBL_OUT" | head -n 1)
    [ -n "$ADMIN_PORT" ]
}

# admin_url PATH: the status page's URL for PATH.
admin_url() {
    echo "http://127.0.0.1:$ADMIN_PORT$1"
}

# status_json: the body of /status.json (fails if the page does not answer 200).
status_json() {
    pcurl -f "$(admin_url /status.json)"
}

# snapshot [JSON]: parse /status.json (or JSON) once, with python3's json module (so it fails when the JSON is
# not valid), into SNAP: one `KEY<TAB>VALUE` line per value. Keys: the top-level names (requests_total, ...),
# cache.NAME, and BACKEND.NAME for each backend (BACKEND = its name, e.g. 127.0.0.1:8081.state), plus
# `backends` (how many), `names` and `weights` (space-separated, in order), `sum_requests`, `sum_failures`.
# Strings are raw, everything else JSON (true, null, 0.143).
snapshot() {
    local doc
    if [ $# -ge 1 ]; then doc=$1; else doc=$(status_json) || return 1; fi
    SNAP=$(printf '%s' "$doc" | python3 -c '
import json, sys
j = json.load(sys.stdin)
def show(v):
    return v if isinstance(v, str) else json.dumps(v)
for k, v in j.items():
    if k == "cache":
        for ck, cv in v.items():
            print("cache.%s\t%s" % (ck, show(cv)))
    elif k != "backends":
        print("%s\t%s" % (k, show(v)))
bs = j["backends"]
for b in bs:
    for bk, bv in b.items():
        print("%s.%s\t%s" % (b["name"], bk, show(bv)))
print("backends\t%d" % len(bs))
print("names\t%s" % " ".join(b["name"] for b in bs))
print("weights\t%s" % " ".join(str(b["weight"]) for b in bs))
print("sum_requests\t%d" % sum(b["requests"] for b in bs))
print("sum_failures\t%d" % sum(b["failures"] for b in bs))') || return 1
    [ -n "$SNAP" ]
}

# sv KEY: the value of KEY in SNAP (see snapshot); exit status 1 when there is no such key.
sv() {
    awk -F'\t' -v k="$1" '$1 == k { print $2; found = 1; exit } END { exit !found }' <<<"$SNAP"
}

# top_value KEY: a top-level number of /status.json, read without a JSON parser (for polling loops).
top_value() {
    status_json | sed -n -E "s/.*[{,]\"$1\":([0-9.]+)[,}].*/\1/p"
}

# wait_top KEY WANT [SECS]: poll /status.json until the top-level number KEY equals WANT. 0 = reached,
# 1 = timeout (the last value is printed on stderr).
wait_top() {
    local key=$1 want=$2 secs=${3:-$HELPER_WAIT_SECS} i got=""
    for ((i = 0; i < secs * 10; i++)); do
        got=$(top_value "$key" 2>/dev/null) || got=""
        [ "$got" = "$want" ] && return 0
        sleep 0.1
    done
    echo "timeout after ${secs}s waiting for $key == $want in /status.json (last: ${got:-none})" >&2
    return 1
}

# metric NAME [LABELS]: the value of one /metrics sample, e.g. `metric pibl_backend_up 'backend="127.0.0.1:80"'`.
# Empty when the sample is missing.
metric() {
    local sel=$1
    [ $# -ge 2 ] && sel="$1{$2}"
    pcurl -f "$(admin_url /metrics)" | awk -v s="$sel" '$1 == s { print $2; exit }'
}

# signal_pibl SIG ERE [SECS]: send SIG to the proxy this test started and wait until one more line of PIBL_LOG
# than before matches ERE. 0 = seen, 1 = timeout.
signal_pibl() {
    local sig=$1 re=$2 secs=${3:-$HELPER_WAIT_SECS} before
    before=$(count_lines "$PIBL_LOG" "$re")
    kill "-$sig" "$PIBL_PID"
    wait_for_count "$PIBL_LOG" "$re" $((before + 1)) "$secs"
}

# digits N: the N bytes /_bytes?size=N returns (repeating 0123456789), on stdout.
digits() {
    head -c "$1" < <(yes 0123456789 | tr -d '\n')
}

# backend_seq N PATH: one curl on one keep-alive connection making N requests for PATH?i=1..N; prints the
# X-Backend of each answer (or `CODE ?` when not 200) on one line, space-separated.
backend_seq() {
    pcurl -o /dev/null -w '%{http_code} %header{x-backend}\n' "$(url "$2")?i=[1-$1]" |
        awk '{ printf "%s%s", (NR > 1 ? " " : ""), ($1 == 200 ? $2 : $1 " ?") } END { print "" }'
}

# browser_bin: the path of a headless-capable Chromium (chromium, chromium-browser, google-chrome); fails when
# none is installed.
browser_bin() {
    local b
    for b in chromium chromium-browser google-chrome; do
        command -v "$b" && return 0
    done
    return 1
}

# browser MODE-ARGS... URL: run the browser headless with a fresh profile under $BATS_TEST_TMPDIR, no network but
# the URL, bounded by BROWSER_SECS; its stderr (noisy) goes to $BATS_TEST_TMPDIR/browser.err.
browser() {
    local bin profile
    bin=$(browser_bin) || return 1
    profile=$(mktemp -d "$BATS_TEST_TMPDIR/profile.XXXXXX")
    timeout -k 5 "$BROWSER_SECS" "$bin" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$profile" \
        --window-size=1100,700 "$@" 2>>"$BATS_TEST_TMPDIR/browser.err" 3>&-
}

# browser_dom_when EXPR URL: load URL in the same headless browser, driven over the DevTools pipe by
# tests/cdp_dump.py, and print its DOM once the JavaScript EXPR is true in the page (fails, printing the DOM as it
# stands, when BROWSER_SECS pass first). For pages whose state arrives over a WebSocket, which --dump-dom with
# --virtual-time-budget does not wait for.
browser_dom_when() {
    local bin profile
    bin=$(browser_bin) || return 1
    profile=$(mktemp -d "$BATS_TEST_TMPDIR/profile.XXXXXX")
    timeout -k 5 "$((BROWSER_SECS + 15))" python3 "$PIBL_ROOT/tests/cdp_dump.py" "$BROWSER_SECS" "$1" "$2" \
        "$bin" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$profile" \
        --window-size=1100,700 2>>"$BATS_TEST_TMPDIR/browser.err" 3>&-
}

# png_size FILE: "WIDTH HEIGHT" from a PNG's IHDR chunk; fails when FILE is not a PNG.
png_size() {
    [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || return 1
    local w h
    w=$(od -An -tu1 -j 16 -N 4 "$1" | awk '{ print (($1 * 256 + $2) * 256 + $3) * 256 + $4 }')
    h=$(od -An -tu1 -j 20 -N 4 "$1" | awk '{ print (($1 * 256 + $2) * 256 + $3) * 256 + $4 }')
    echo "$w $h"
}

# html_rows TABLE-ID: read an HTML document on stdin and print the rows of the table with that id, one line per
# row, the text of its cells (th or td, entities decoded, spaces squeezed) joined by `|`. Prints nothing when there
# is no such table.
html_rows() {
    python3 -c '
import sys
from html.parser import HTMLParser

class Rows(HTMLParser):
    def __init__(self, want):
        super().__init__(convert_charrefs=True)
        self.want, self.depth, self.row, self.cell = want, 0, None, None
    def handle_starttag(self, tag, attrs):
        if tag == "table":
            if self.depth or dict(attrs).get("id") == self.want:
                self.depth += 1
        elif self.depth and tag == "tr":
            self.row = []
        elif self.depth and tag in ("td", "th") and self.row is not None:
            self.cell = []
    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif self.depth and tag == "tr" and self.row is not None:
            print("|".join(self.row))
            self.row = None
    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)

p = Rows(sys.argv[1])
p.feed(sys.stdin.read())
p.close()' "$1"
}

# slow_get PORT RATE OUT PATH...: one keep-alive connection to 127.0.0.1:PORT (small receive buffer) that asks
# for each PATH in turn and reads every body at RATE bytes/s at most; the body of the first PATH goes to OUT.
# Prints one line per answer: `STATUS X-BACKEND BODY-BYTES`. Answers must have a Content-Length. Every socket
# operation times out after 20 s. (curl --limit-rate does not throttle short transfers on loopback reliably.)
slow_get() {
    python3 -c '
import socket, sys, time
port, rate, out, paths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.settimeout(20)
s.connect(("127.0.0.1", port))
buf = b""
for n, path in enumerate(paths):
    s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)).encode())
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            sys.exit("connection closed before a head")
        buf += d
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    hdr = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    length = int(hdr["content-length"])
    f = open(out, "wb") if n == 0 else None
    got, t0 = 0, time.monotonic()
    while got < length:
        if not buf:
            buf = s.recv(min(65536, length - got))
            if not buf:
                sys.exit("connection closed after %d of %d body bytes" % (got, length))
        take = buf[:length - got]
        buf = buf[len(take):]
        got += len(take)
        if f:
            f.write(take)
        ahead = t0 + got / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    if f:
        f.close()
    print(lines[0].split()[1], hdr.get("x-backend", "-"), got, flush=True)
' "$@"
}

# restart_origin NAME: start origin NAME again on the port it had (after stop_origin). Its old stdout is removed
# first: otherwise start_origin could read the old ready line before the new process truncates the file.
restart_origin() {
    rm -f "${ORIGIN_DIR[$1]}/stdout"
    start_origin "$1" "" "${ORIGIN_PORT[$1]}"
}
