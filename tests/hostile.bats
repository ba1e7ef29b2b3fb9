#!/usr/bin/env bats
# hostile.bats - hostile input and faults.
#
# Every request PIBL must refuse (RFC 9112: ambiguous framing, bad chunk sizes, obs-fold, space before the colon,
# control bytes, bare CR, bare LF, bad method or target, duplicate Host, over-long lines) is written byte for byte
# over a raw socket; each must get the right 4xx with Connection: close, the connection must then close, and the
# origin's request log must stay empty. Malformed backend answers come from a fake backend (tests/hostile_peer.py)
# and must become a 502 without the upstream connection being reused. Then the resource limits (slowloris,
# max_connections, descriptor exhaustion, memory under floods) and the faults (a backend dying mid-answer, kill -9,
# a full, read-only or missing cache folder, an unwritable log file).
#
# Bare LF: PIBL rejects it on both sides (a request with a bare LF line ending is a 400, a backend answer with one
# is a 502). RFC 9112 2.2 allows accepting it; refusing is the safe choice for a proxy, since a backend that
# accepted it could split the message differently.
# Tests that need python3 (fake backend, slow or idle peers) or a user namespace (tmpfs) skip when it is missing.
# shellcheck disable=SC2034  # PIBL_TTL, PIBL_ULIMIT_N and PIBL_PREFIX are read by the helpers

bats_require_minimum_version 1.5.0
load helpers
load hostile_helpers

setup() { hostile_setup; }
teardown() { hostile_teardown; }

# reject_all CODE VECTOR...: expect_rejected CODE for every vector (printf %b escapes); report every failure, not
# only the first.
reject_all() {
    local code=$1 v n_bad=0
    shift
    for v in "$@"; do
        expect_rejected "$code" "$v" || n_bad=$((n_bad + 1))
    done
    [ "$n_bad" -eq 0 ] || { echo "$n_bad of $# vectors not rejected with $code"; return 1; }
}

# start_one_origin [LINES...]: origin o1 and PIBL in front of it.
start_one_origin() {
    start_origin o1
    start_pibl "$@"
}

POST_CHUNKED='POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n'

# ---------------------------------------------------------------- requests

@test "request framing: Content-Length with Transfer-Encoding, duplicate or non-numeric Content-Length -> 400" {
    start_one_origin
    reject_all 400 \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' \
        'POST /_echo HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\nhello!' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5 5\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5.0\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1e3\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551621\r\n\r\nhello'
    origin_got_nothing o1
}

@test "request framing: a transfer coding other than a final chunked -> 501 (unknown) or 400 (chunked not final)" {
    start_one_origin
    # RFC 9110 6.1 / 9112 6.1: an unknown coding SHOULD get 501.
    reject_all 501 \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\nhello' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n'
    # RFC 9112 6.3 (4): chunked present but not final -> MUST 400 and close. Two fields are one list (RFC 9110 5.3).
    reject_all 400 \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n' \
        'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n' \
        'POST /_echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
    origin_got_nothing o1
}

@test "request framing: malformed chunk sizes (overflow, sign, junk, 0x, missing or bare CR/LF) -> 400, nothing forwarded" {
    start_one_origin
    # Also floods that would cost memory or time: 2,000 bytes of chunk extensions, a 10,000-byte trailer.
    local ext trailer
    ext=$(printf 'e%.0s' $(seq 1 2000))
    trailer=$(printf 't%.0s' $(seq 1 10000))
    reject_all 400 \
        "${POST_CHUNKED}FFFFFFFFFFFFFFFFF\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}10000000000000000\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}+5\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}-5\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}0x5\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5x\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5 5\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED} 5\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5\\rhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5hello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a=\\0\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}0\\r\\nX\\r\\n\\r\\n" \
        "${POST_CHUNKED}0\\r\\n\\n" \
        "${POST_CHUNKED}5;$ext\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}0\\r\\nX-Big: $trailer\\r\\n\\r\\n"
    origin_got_nothing o1
}

@test "request framing: chunk data not followed by CRLF -> 400, connection closed, the cut body never completes upstream" {
    # PIBL streams bodies, so the head and the first chunk may already be on their way when the framing breaks:
    # what matters is that the backend connection is cut (the origin never answers a whole request) and the
    # client gets a 400 and a closed connection.
    start_one_origin
    local up='POST /_upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n'
    reject_all 400 \
        "${up}5\\r\\nhelloXX0\\r\\n\\r\\n" \
        "${up}5\\r\\nhello\\n0\\r\\n\\r\\n" \
        "${up}5\\r\\nhello0\\r\\n\\r\\n"
    # The origin never got a whole request: it stored no upload.
    run ls "${ORIGIN_DIR[o1]}/uploads"
    [ -z "$output" ]
    wait_for_line "$PIBL_LOG" 'status=400 .*err="bad chunked request body"'
}

@test "request chunk extensions: malformed ones (no name, a name or value that is not a token, BWS before CRLF) -> 400" {
    # RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), names are tokens,
    # values tokens or quoted strings; judged as strictly as the chunk size.
    start_one_origin
    reject_all 400 \
        "${POST_CHUNKED}5;\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;bad[=x\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;=x\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a=\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a=b[\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a=b c\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a \\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a=b\\t\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a=\"x\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a=\"x\"y\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a=\"\\x01\"\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;;a\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}5;a==b\\r\\nhello\\r\\n0\\r\\n\\r\\n" \
        "${POST_CHUNKED}0;\\r\\n\\r\\n"
    origin_got_nothing o1
    wait_for_line "$PIBL_LOG" 'status=400 .*err="bad chunked request body"'
}

@test "request chunk extensions: well-formed ones (tokens, quoted strings, BWS) are accepted and stripped upstream" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    fake_answer default 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
    start_pibl
    run raw_fmt "$PIBL_PORT" 'POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a=b;c="x; \\"y\\""\r\nhello\r\n6 ; d = e ;f\r\n world\r\n0;last=1\r\n\r\n'
    [ "$(status_of "$output")" = 200 ]
    # What the backend got: a chunked body carrying the same bytes, and no extension left.
    run python3 - "$FAKE_DIR/req-1" <<'PY'
import sys
raw = open(sys.argv[1], "rb").read()
body = raw.split(b"\r\n\r\n", 1)[1]
out, pos = b"", 0
while True:
    eol = body.index(b"\r\n", pos)
    line = body[pos:eol]
    assert b";" not in line, "extension forwarded: %r" % line
    size = int(line, 16)
    pos = eol + 2
    if size == 0:
        break
    out += body[pos:pos + size]
    pos += size + 2
assert out == b"hello world", out
print("ok")
PY
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = ok ]
}

@test "request Content-Length with leading zeros reaches the backend in canonical decimal form" {
    # Valid per RFC 9110 8.6, but a backend reading it with strtol(..., 0) takes 0200 for octal 128.
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    fake_answer default 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
    start_pibl
    local body200
    body200=$(printf 'b%.0s' $(seq 1 200))
    run raw_fmt "$PIBL_PORT" 'POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 005\r\nConnection: close\r\n\r\nhello'
    [ "$(status_of "$output")" = 200 ]
    run raw_fmt "$PIBL_PORT" "POST /b HTTP/1.1\\r\\nHost: t\\r\\nContent-Length: 0200\\r\\nConnection: close\\r\\n\\r\\n$body200"
    [ "$(status_of "$output")" = 200 ]
    run raw_fmt "$PIBL_PORT" 'POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 00\r\nConnection: close\r\n\r\n'
    [ "$(status_of "$output")" = 200 ]
    tr -d '\r' <"$FAKE_DIR/req-1" | grep -qx 'Content-Length: 5'
    [ "$(tail -c 5 "$FAKE_DIR/req-1")" = hello ]
    tr -d '\r' <"$FAKE_DIR/req-2" | grep -qx 'Content-Length: 200'
    [ "$(tail -c 200 "$FAKE_DIR/req-2")" = "$body200" ]
    tr -d '\r' <"$FAKE_DIR/req-3" | grep -qx 'Content-Length: 0'
    run grep -ic '^Content-Length: *0[0-9]' "$FAKE_DIR/req-1" "$FAKE_DIR/req-2" "$FAKE_DIR/req-3"
    echo "$output"
    [[ "$output" != *:[1-9]* ]]
}

@test "Connection cannot nominate Content-Length or Host: the body stays framed upstream (no smuggled request) and downstream" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    fake_answer 1 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
    fake_answer 2 'HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL'
    fake_answer default 'HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond'
    start_pibl
    local inner='GET /smuggled HTTP/1.1\r\nHost: evil\r\n\r\n'
    run raw_fmt "$PIBL_PORT" "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 38\r\nConnection: close, Content-Length, Host\r\n\r\n$inner"
    [ "$(status_of "$output")" = 200 ]
    # one request upstream, with its Content-Length and Host, the inner one as its body
    tr -d '\r' <"$FAKE_DIR/req-1" | grep -qx 'Content-Length: 38'
    tr -d '\r' <"$FAKE_DIR/req-1" | grep -qix 'Host: t'
    [ "$(tail -c 38 "$FAKE_DIR/req-1" | head -c 18)" = 'GET /smuggled HTTP' ]
    sleep 0.3
    [ "$(fake_requests)" -eq 1 ]
    ! grep -q 'GET /smuggled' "$FAKE_DIR/log"
    # downstream: the answer keeps its Content-Length, so two pipelined answers stay apart
    run raw_fmt "$PIBL_PORT" 'GET /b HTTP/1.1\r\nHost: t\r\nCache-Control: no-store\r\n\r\nGET /c HTTP/1.1\r\nHost: t\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n'
    echo "$output"
    [[ "$output" == *$'Content-Length: 5\r\n'* ]]
    [[ "$output" == *$'\r\n\r\nfirstHTTP/1.1 200 OK'* ]]
    [[ "$output" != *EVIL* ]]
}

@test "request fields named with '_' are dropped by default; underscores_in_headers = on keeps them, never framing look-alikes" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    fake_answer default 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
    local req='GET /u HTTP/1.1\r\nHost: t\r\nX_Custom: a\r\nContent_Length: 3\r\nTransfer_Encoding: chunked\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\nX-Plain: b\r\nConnection: close\r\n\r\n'
    start_pibl
    run raw_fmt "$PIBL_PORT" "$req"
    [ "$(status_of "$output")" = 200 ]
    tr -d '\r' <"$FAKE_DIR/req-1" >"$BATS_TEST_TMPDIR/h1"
    cat "$BATS_TEST_TMPDIR/h1"
    grep -qx 'X-Plain: b' "$BATS_TEST_TMPDIR/h1"
    run grep -c '^[^:]*_[^:]*:' "$BATS_TEST_TMPDIR/h1"
    [ "$output" -eq 0 ]

    stop_pid "$PIBL_PID" >/dev/null
    start_pibl "underscores_in_headers = on"
    run raw_fmt "$PIBL_PORT" "$req"
    [ "$(status_of "$output")" = 200 ]
    tr -d '\r' <"$FAKE_DIR/req-2" >"$BATS_TEST_TMPDIR/h2"
    cat "$BATS_TEST_TMPDIR/h2"
    grep -qx 'X_Custom: a' "$BATS_TEST_TMPDIR/h2"
    grep -qx 'X-Plain: b' "$BATS_TEST_TMPDIR/h2"
    run grep -Eic '^(Content_Length|Transfer_Encoding|X_Forwarded_For|X-Real_IP):' "$BATS_TEST_TMPDIR/h2"
    [ "$output" -eq 0 ]
    # The client's address reaches the backend only as PIBL writes it.
    grep -qx 'X-Forwarded-For: 127.0.0.1' "$BATS_TEST_TMPDIR/h2"
}

@test "request fields: obs-fold, space before the colon, CTL / DEL / NUL in names and values, bare CR -> 400" {
    start_one_origin
    reject_all 400 \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\r\n\tb\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\n Host: t\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost : t\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A\t: a\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\n: a\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX\x01A: a\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX\x7fA: a\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX\0A: a\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX\xc3\xa9: a\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\x1bb\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\0\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\r\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\rHost: t\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\r\n\r\n'
    origin_got_nothing o1
    # The control: obs-text (bytes >= 0x80) is allowed in a value (RFC 9110 5.5) and goes through.
    run raw_fmt "$PIBL_PORT" 'GET /_echo HTTP/1.1\r\nHost: t\r\nX-A: caf\xc3\xa9\r\nConnection: close\r\n\r\n'
    [ "$(status_of "$output")" = 200 ]
}

@test "request line: invalid method token, request target or version -> 400" {
    start_one_origin
    reject_all 400 \
        'G(T /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'G@T /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        '"GET" /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'G\x01ET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'G\0ET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'G\xc3\x89T /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        ' GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET\t/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET  /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET /hello.txt  HTTP/1.1\r\nHost: t\r\n\r\n' \
        ' /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET * HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET /a\0b HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET ftp://t/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET http:///hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET http://user@t/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' \
        'GET /hello.txt HTTP/1.10\r\nHost: t\r\n\r\n' \
        'GET /hello.txt http/1.1\r\nHost: t\r\n\r\n' \
        'GET /hello.txt HTTP/1\r\nHost: t\r\n\r\n' \
        'GET /hello.txt HTTP/1.1x\r\nHost: t\r\n\r\n'
    origin_got_nothing o1
}

@test "request target: characters outside RFC 3986 (fragment, <>\"\\^\`{|}, broken %-escapes) -> 400" {
    # origin-form = absolute-path [ "?" query ] (RFC 9112 3.2.1), built from pchar (RFC 3986 3.3): a '#' fragment,
    # the characters RFC 3986 excludes and a '%' not followed by two hex digits cannot appear.
    start_one_origin
    reject_all 400 \
        'GET /hello.txt#frag HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a<b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a>b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a"b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a\\b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a^b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a`b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a{b} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a|b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a%zz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' \
        'GET /a% HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
    origin_got_nothing o1
    # The controls: every character pchar and query allow reaches the origin untouched.
    run raw_fmt "$PIBL_PORT" "GET /hello.txt?a-._~!\$&'()*+,;=:@%41/?x HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n"
    [ "$(status_of "$output")" = 200 ]
    run raw_fmt "$PIBL_PORT" "GET /a-._~!\$&'()*+,;=:@%41/b HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n"
    [ "$(status_of "$output")" = 404 ]
    grep -qF "o1 GET /a-._~!\$&'()*+,;=:@%41/b" "$(origin_log o1)"
}

@test "request target in absolute-form: its authority is the Host, an empty path goes on as / (or * for OPTIONS), one cache key with and without :80" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    fake_answer default 'HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 2\r\n\r\nok'
    PIBL_TTL=600 start_pibl
    run raw_fmt "$PIBL_PORT" 'GET http://Site.test?q=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n'
    [ "$(status_of "$output")" = 200 ]
    head -n 1 "$FAKE_DIR/req-1" | tr -d '\r' | grep -qx 'GET /?q=1 HTTP/1.1'
    tr -d '\r' <"$FAKE_DIR/req-1" | grep -qix 'Host: Site.test'
    run raw_fmt "$PIBL_PORT" 'OPTIONS http://site.test HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n'
    [ "$(status_of "$output")" = 200 ]
    head -n 1 "$FAKE_DIR/req-2" | tr -d '\r' | grep -qx 'OPTIONS \* HTTP/1.1'
    # /?q=1 on site.test:80 is the entry the absolute-form request stored
    run raw_fmt "$PIBL_PORT" 'GET /?q=1 HTTP/1.1\r\nHost: site.test:80\r\nConnection: close\r\n\r\n'
    [ "$(status_of "$output")" = 200 ]
    [[ "$output" == *$'X-Cache: HIT\r\n'* ]]
    [ "$(fake_requests)" -eq 2 ]
}

@test "request Host: duplicate (even identical), missing on 1.1, or not a host -> 400" {
    start_one_origin
    reject_all 400 \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n' \
        'GET http://t/hello.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost:\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: a b\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: a/b\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: a@b\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: a:b\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: a:80:80\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: [::1\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: []\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: [::1]x\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: ::1\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: a%zzb\r\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: [foo]\r\n\r\n' \
        'GET http://a:b/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n'
    origin_got_nothing o1
    # uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2): these are hosts, and go through
    local h
    for h in '[::1]:8080' '[::1]' '[v1.fe]' 'a:' 'example.com:80' 'example.com.' '127.0.0.1' 'a%41b' 'xn--bcher-kva.example'; do
        [ "$(get_status -H "Host: $h" "$(url /hello.txt)")" = 200 ] || { echo "Host: $h refused"; return 1; }
    done
}

@test "request limits: a target over max_uri_bytes -> 414, a line that never ends -> 414, a head too big or too many fields -> 431" {
    start_one_origin "max_uri_bytes = 100" "max_header_bytes = 2048"
    local long fields i
    long=$(printf 'a%.0s' $(seq 1 200))
    reject_all 414 \
        "GET /$long HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n" \
        "GET /$long$long$long$long$long$long$long$long$long$long$long"
    fields=""
    for ((i = 0; i < 101; i++)); do
        fields+="X-$i: v\\r\\n"
    done
    reject_all 431 \
        "GET /hello.txt HTTP/1.1\\r\\nHost: t\\r\\nX-Big: $long$long$long$long$long$long$long$long$long$long$long\\r\\n\\r\\n" \
        "GET /hello.txt HTTP/1.1\\r\\nHost: t\\r\\n$fields\\r\\n"
    origin_got_nothing o1
}

@test "bare LF line endings in a request are rejected (400), wherever they are" {
    start_one_origin
    reject_all 400 \
        'GET /hello.txt HTTP/1.1\nHost: t\n\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\n\r\n' \
        'GET /hello.txt HTTP/1.1\r\nHost: t\r\n\n' \
        '\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n'
    origin_got_nothing o1
    # Leading empty CRLF lines are ignored (RFC 9112 2.2): the control goes through.
    run raw_fmt "$PIBL_PORT" '\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
    [ "$(status_of "$output")" = 200 ]
}

@test "every rejection is logged as one well-formed line" {
    start_one_origin
    expect_rejected 400 'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n'
    expect_rejected 400 'G\x01T /"quoted" HTTP/1.1\r\nHost: t\r\n\r\n'
    expect_rejected 400 'GET /hello.txt HTTP/1.1\r\nHost: "evil" \x7f\r\n\r\n'
    wait_for_count "$PIBL_LOG" ' status=400 ' 3
    # a refused request line is logged as it came: its own protocol, or none; never an invented HTTP/1.x
    expect_rejected 505 'GET /v2 HTTP/2.0\r\nHost: t\r\n\r\n'
    expect_rejected 400 'GET /v09\r\n\r\n'
    wait_for_line "$PIBL_LOG" '"GET /v2 HTTP/2\.0" .*status=505 '
    wait_for_line "$PIBL_LOG" '"GET /v09" .*status=400 '
    check_log_lines "$PIBL_LOG"
    origin_got_nothing o1
}

# ---------------------------------------------------------------- backend answers

# relay_bad_answers VECTOR...: the fake backend answers request 1 well (so the upstream connection goes back to the
# pool), then each VECTOR in turn, each followed by a good answer. Every vector must reach the client as a 502 and
# the good answer after it must come on a new upstream connection.
relay_bad_answers() {
    local good='HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n' v n=1 n_bad=0 got c_bad c_next
    fake_answer 1 "$good"
    fake_answer 2 "$good"
    for v in "$@"; do
        fake_answer $((n * 2 + 1)) "$v"
        fake_answer $((n * 2 + 2)) "$good"
        n=$((n + 1))
    done
    # Control: two good answers travel on one upstream connection (reuse is on and works).
    [ "$(get_status "$(url /one)")" = 200 ]
    [ "$(get_status "$(url /two)")" = 200 ]
    [ "$(fake_conn_of 1)" = "$(fake_conn_of 2)" ] || { echo "upstream reuse does not work at all"; return 1; }
    n=1
    for v in "$@"; do
        got=$(get_status "$(url "/bad-$n")")
        c_bad=$(fake_conn_of $((n * 2 + 1)))
        if [ "$got" != 502 ]; then
            echo "answer $v: want 502, client got $got"
            n_bad=$((n_bad + 1))
        fi
        got=$(get_status "$(url "/good-$n")")
        c_next=$(fake_conn_of $((n * 2 + 2)))
        if [ "$got" != 200 ] || [ -z "$c_next" ] || [ "$c_next" = "$c_bad" ]; then
            echo "answer $v: the next request got $got on upstream connection '$c_next' (bad one: '$c_bad')"
            n_bad=$((n_bad + 1))
        fi
        n=$((n + 1))
    done
    [ "$n_bad" -eq 0 ]
}

@test "backend answer heads: bad status line, framing, fields, bare CR or LF -> 502, upstream connection not reused" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    start_pibl
    relay_bad_answers \
        'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nok\n\r\n0\r\n\r\n' \
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: a\r\n b\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: a\x01b\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: a\0b\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX\0A: b\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: a\rb\r\n\r\nok\n' \
        'HTTP/1.1 200 OK\r\nContent-Length: 3\n\r\nok\n' \
        'HTTP/1.1 200 OK\nContent-Length: 3\n\nok\n' \
        'HTTP/1.1 2000 OK\r\nContent-Length: 3\r\n\r\nok\n' \
        'HTTP/1.1 20 OK\r\nContent-Length: 3\r\n\r\nok\n' \
        'HTTP/1.1 600 Odd\r\nContent-Length: 3\r\n\r\nok\n' \
        'HTTP/1.1 200OK\r\nContent-Length: 3\r\n\r\nok\n' \
        'HTTP/2 200 OK\r\nContent-Length: 3\r\n\r\nok\n' \
        'ICY 200 OK\r\nContent-Length: 3\r\n\r\nok\n' \
        'HTTP/1.1 200 O\x01K\r\nContent-Length: 3\r\n\r\nok\n' \
        'hello\r\n\r\n'
    # Every 502 was logged, none as a backend outage.
    check_log_lines "$PIBL_LOG"
    run grep -c 'status=502 .*err="invalid answer from backend"' "$PIBL_LOG"
    [ "$output" -eq 26 ]
}

@test "backend answer bodies: a broken first chunk size -> 502; broken framing later -> the client connection is cut" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    start_pibl
    local ch='HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
    # Nothing of these answers has reached the client when the framing breaks: a clean 502 is possible.
    relay_bad_answers \
        "${ch}FFFFFFFFFFFFFFFFF\\r\\nok\\n\\r\\n0\\r\\n\\r\\n" \
        "${ch}-3\\r\\nok\\n\\r\\n0\\r\\n\\r\\n" \
        "${ch}0x3\\r\\nok\\n\\r\\n0\\r\\n\\r\\n" \
        "${ch}3x\\r\\nok\\n\\r\\n0\\r\\n\\r\\n" \
        "${ch}3\\nok\\n\\r\\n0\\r\\n\\r\\n"
}

@test "backend answer bodies: a malformed chunk extension in the first chunk -> 502; a well-formed one is stripped" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    start_pibl
    local ch='HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
    relay_bad_answers \
        "${ch}3;\\r\\nok\\n\\r\\n0\\r\\n\\r\\n" \
        "${ch}3;bad[=x\\r\\nok\\n\\r\\n0\\r\\n\\r\\n" \
        "${ch}3;a=\"x\\r\\nok\\n\\r\\n0\\r\\n\\r\\n" \
        "${ch}3;a \\r\\nok\\n\\r\\n0\\r\\n\\r\\n"
    fake_answer default "${ch}3;a=b;q=\"x y\"\\r\\nok\\n\\r\\n0;z\\r\\n\\r\\n"
    run pcurl --raw "$(url /good-ext)"
    [ "$status" -eq 0 ]
    echo "$output"
    [[ "$output" == *ok* ]]
    [[ "$output" != *";"* ]]
    [ "$(pcurl "$(url /good-ext-2)")" = ok ]
}

@test "backend Content-Length with leading zeros reaches the client in canonical form; '_' framing look-alikes never" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    fake_answer default 'HTTP/1.1 200 OK\r\nContent-Length: 005\r\nContent_Length: 9\r\nTransfer_Encoding: chunked\r\nX_Note: n\r\n\r\nhello'
    start_pibl
    run pcurl -D "$BATS_TEST_TMPDIR/h" "$(url /z)"
    [ "$status" -eq 0 ]
    [ "$output" = hello ]
    tr -d '\r' <"$BATS_TEST_TMPDIR/h" >"$BATS_TEST_TMPDIR/h.txt"
    cat "$BATS_TEST_TMPDIR/h.txt"
    grep -qx 'Content-Length: 5' "$BATS_TEST_TMPDIR/h.txt"
    grep -qx 'X_Note: n' "$BATS_TEST_TMPDIR/h.txt"
    run grep -Eic '^(Content_Length|Transfer_Encoding):' "$BATS_TEST_TMPDIR/h.txt"
    [ "$output" -eq 0 ]
    # The same for an interim answer relayed before the final one.
    fake_answer default 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nTransfer_Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
    run raw_fmt "$PIBL_PORT" 'GET /early HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
    echo "$output"
    [[ "$output" == "HTTP/1.1 103 Early Hints"$'\r\n'* ]]
    [[ "$output" == *"Link: </a.css>; rel=preload"* ]]
    [[ "$output" != *Transfer_Encoding* ]]
    [[ "$output" == *"HTTP/1.1 200 OK"* ]]
}

@test "a backend's 204 or 1xx goes out without Content-Length (RFC 9110 8.6), and nothing after it is taken for a body" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    fake_answer 1 'HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n'
    fake_answer 2 'HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
    start_pibl
    local out
    out=$(raw_fmt "$PIBL_PORT" 'GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    echo "$out"
    [ "$(status_of "$out")" = 204 ]
    [ "$(header_value "$out" X-A)" = 1 ]
    [ -z "$(header_value "$out" Content-Length)" ]
    # the 103 before /b's 200: no Content-Length either; the 200 keeps its own
    [[ "$out" == *$'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n'* ]]
    [[ "$out" == *$'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n'* ]]
    [ "$(printf '%s' "$out" | grep -ci '^Content-Length:')" -eq 1 ]
    [[ "$out" == *ok ]]
}

@test "bytes a backend sends past the Content-Length body keep its connection out of the pool, even for a pipelined request of the same turn" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local head='HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\n'
    fake_answer 1 "${head}helloHTTP/1.1 200 OK\r\nX-Evil: yes\r\nContent-Length: 4\r\n\r\nEVIL"
    printf '%s' "$(printf '%b' "$head" | wc -c)" >"$FAKE_DIR/1.split"   # the head, then body and stray answer
    fake_answer default 'HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\nfresh'
    start_pibl
    local out
    out=$(raw_fmt "$PIBL_PORT" 'GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /victim HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    echo "$out"
    [[ "$out" == *hello* ]]
    [[ "$out" == *fresh ]]
    [[ "$out" != *EVIL* ]]
    [ "$(fake_requests)" -eq 2 ]
    # the second request went on a new connection
    [ "$(fake_conn_of 1)" != "$(fake_conn_of 2)" ]
}

@test "eight 1xx answers are relayed before the final one; a ninth is a 502, never a final answer, and the connection is not pooled" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    local hint='HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n' eight='' nine
    for _ in 1 2 3 4 5 6 7 8; do eight+=$hint; done
    nine=$eight$hint
    fake_answer 1 "${eight}HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\n\r\neight"
    fake_answer 2 "${nine}HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nX-Late: yes\r\nContent-Length: 4\r\n\r\nnine"
    fake_answer default 'HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\nfresh'
    start_pibl
    local out
    final_status() { printf '%s' "$1" | grep -E '^HTTP/1\.1 [2-5][0-9]{2} ' | sed -E 's/^HTTP\/1\.1 ([0-9]{3}).*/\1/'; }
    out=$(raw_fmt "$PIBL_PORT" 'GET /eight HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    [ "$(printf '%s' "$out" | grep -c '^HTTP/1.1 103 ')" -eq 8 ]
    [ "$(final_status "$out")" = 200 ]
    [[ "$out" == *eight ]]
    out=$(raw_fmt "$PIBL_PORT" 'GET /nine HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    echo "$out"
    [ "$(printf '%s' "$out" | grep -c '^HTTP/1.1 103 ')" -eq 8 ]
    [ "$(final_status "$out")" = 502 ]
    grep -q '"GET /nine HTTP/1.1" .*status=502 .*err="too many 1xx answers from backend"' "$PIBL_LOG"
    # the late 200 is not handed to the next request, and nothing was stored for it
    out=$(raw_fmt "$PIBL_PORT" 'GET /other HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    echo "$out"
    [[ "$out" == *fresh ]]
    [[ "$out" != *X-Late* ]]
    out=$(raw_fmt "$PIBL_PORT" 'GET /nine HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    [[ "$out" != *X-Late* ]]
}

@test "Date (RFC 9110 6.6.1): added to a backend answer without one, MISS and HIT alike; a backend's own kept; PIBL's own answers carry one" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    fake_answer 1 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=100\r\n\r\nok'
    fake_answer 2 'HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok'
    PIBL_TTL=60 start_pibl
    local imf='^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT$'
    local miss hit own d1 d2 now
    miss=$(raw_fmt "$PIBL_PORT" 'GET /nodate HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    echo "$miss"
    d1=$(header_value "$miss" Date)
    [[ "$d1" =~ $imf ]]
    now=$(date -u +%s)
    [ $(( now - $(date -u -d "$d1" +%s) )) -le 5 ]
    [ "$(head_of "$miss" | grep -ci '^Date:')" -eq 1 ]
    # The HIT carries the date the answer was received (the stored one), not none
    hit=$(raw_fmt "$PIBL_PORT" 'GET /nodate HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    echo "$hit"
    [ "$(header_value "$hit" X-Cache)" = HIT ]
    d2=$(header_value "$hit" Date)
    [ "$d2" = "$d1" ]
    [ "$(fake_requests)" -eq 1 ]
    # A backend's Date goes through as it is, and only once
    own=$(raw_fmt "$PIBL_PORT" 'GET /dated HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    echo "$own"
    [ "$(header_value "$own" Date)" = 'Sun, 06 Nov 1994 08:49:37 GMT' ]
    [ "$(head_of "$own" | grep -ci '^Date:')" -eq 1 ]
    # PIBL's own answers: a 400 (no Host), a PURGE's 404
    own=$(raw_fmt "$PIBL_PORT" 'GET / HTTP/1.1\r\nConnection: close\r\n\r\n')
    echo "$own"
    [ "$(status_of "$own")" = 400 ]
    [[ "$(header_value "$own" Date)" =~ $imf ]]
    own=$(raw_fmt "$PIBL_PORT" 'PURGE /absent HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    echo "$own"
    [ "$(status_of "$own")" = 404 ]
    [[ "$(header_value "$own" Date)" =~ $imf ]]
}

@test "backend answer bodies: framing that breaks after data was relayed never looks complete to the client" {
    need_python
    start_fake_backend "$BATS_TEST_TMPDIR/fake"
    start_pibl
    local ch='HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' v n=1 rc c1 c2 close
    # The broken chunked answers leave their connection open: PIBL must not put it back in the pool. The short
    # Content-Length one ends with the backend closing (otherwise PIBL would wait backend_timeout).
    for v in "${ch}3\\r\\nok\\nXX0\\r\\n\\r\\n" "${ch}3\\r\\nok\\n\\r\\n+3\\r\\nok\\n\\r\\n0\\r\\n\\r\\n" \
             "${ch}3\\r\\nok\\n\\r\\n0\\r\\nX\\r\\n\\r\\n" 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok\n'; do
        close=
        [[ "$v" == *Content-Length* ]] && close=close
        fake_answer $n "$v" "$close"
        fake_answer $((n + 1)) 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n'
        rc=0
        pcurl -o "$BATS_TEST_TMPDIR/body" "$(url /cut)" || rc=$?
        # 18 = partial file, 56 = failure receiving (chunked stream cut): anything but success.
        [ "$rc" -ne 0 ] || { echo "answer $v: curl saw a complete answer: $(cat "$BATS_TEST_TMPDIR/body")"; return 1; }
        [ "$(get_status "$(url /next)")" = 200 ]
        c1=$(fake_conn_of $n)
        c2=$(fake_conn_of $((n + 1)))
        [ "$c1" != "$c2" ]
        n=$((n + 2))
    done
}

# ---------------------------------------------------------------- resource abuse

@test "slowloris: 1,000 connections dribbling a byte a second do not starve normal clients; slow heads get 408" {
    need_python
    start_origin o1
    start_pibl "client_timeout = 4"
    local report="$BATS_TEST_TMPDIR/slow" i code rss
    # 600 never-ending heads, 400 never-ending bodies: PIBL holds a thread (and for a body, a backend connection)
    # for each.
    start_peer "$report.head" slow "$PIBL_PORT" 600 12 head "$report.head"
    local head_pid=$PEER_PID
    start_peer "$report.body" slow "$PIBL_PORT" 400 12 body "$report.body"
    wait_for_line "$report.head" '^opened=600$' 10
    wait_for_line "$report.body" '^opened=400$' 10
    # While they dribble, ordinary clients are served promptly.
    for i in $(seq 1 20); do
        code=$(CURL_MAX_TIME=3 get_status "$(url /hello.txt)")
        [ "$code" = 200 ] || { echo "request $i during the slowloris got $code"; return 1; }
    done
    rss=$(rss_kb "$PIBL_PID")
    echo "pibl during the slowloris: $(n_threads "$PIBL_PID") threads, RSS $rss kB"
    # Bounded memory: 1,000 connections may not cost more than ~400 kB each (buffers + a thread stack).
    sanitized_build || [ "$rss" -lt 400000 ]
    # The heads never end: every one of them gets a 408 once client_timeout has passed, and is closed.
    wait_for_line "$report.head" '^closed=600 status408=600$' 10
    # Service is still normal afterwards.
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
    stop_pid "$head_pid" >/dev/null
}

@test "slowloris: a request body dribbled a byte a second is cut off (408) rather than held forever" {
    need_python
    start_origin o1
    start_pibl "client_timeout = 2"
    local report="$BATS_TEST_TMPDIR/slowbody"
    # 20 s of one byte a second: each gap (1 s) is below client_timeout, the whole is not.
    start_peer "$report" slow "$PIBL_PORT" 20 20 body "$report"
    wait_for_line "$report" '^opened=20$' 10
    wait_for_line "$report" '^closed=20 ' 19
}

@test "max_connections: past the limit new clients get a quick 503; service returns when the others leave" {
    need_python
    start_origin o1
    start_pibl "max_connections = 50"
    local report="$BATS_TEST_TMPDIR/hold" t0 t1 i code=
    start_peer "$report" hold "$PIBL_PORT" 60 30 "$report"
    local hold_pid=$PEER_PID
    wait_for_line "$report" '^opened=60 ' 10
    # 50 are kept (idle, silent), 10 were answered 503 and closed at once.
    grep -Eq '^opened=60 answered=10 closed=10 status503=10$' "$report" || { cat "$report"; return 1; }
    t0=$(date +%s%N)
    run raw_request "$PIBL_PORT" "" 3
    t1=$(date +%s%N)
    [ "$(status_of "$output")" = 503 ]
    [ "$status" -ne 124 ]
    echo "the 61st client waited $(((t1 - t0) / 1000000)) ms for its 503"
    [ $(((t1 - t0) / 1000000)) -lt 2000 ]
    wait_for_line "$PIBL_LOG" 'max_connections \(50\) reached'
    : >"$report.release"
    wait_for_line "$report" '^released$'
    # The idle threads see EOF and leave; then service is normal again.
    for ((i = 0; i < 50; i++)); do
        code=$(get_status "$(url /hello.txt)")
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    [ "$code" = 200 ]
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
    stop_pid "$hold_pid" >/dev/null
}

@test "max_connections: a client that sends its request at once still reads the 503 (no reset)" {
    need_python
    start_origin o1
    start_pibl "max_connections = 5"
    local report="$BATS_TEST_TMPDIR/hold" i n_bad=0
    start_peer "$report" hold "$PIBL_PORT" 5 30 "$report"
    wait_for_line "$report" '^opened=5 ' 10
    # Every real client writes its request right after connecting. Closing a socket with that request unread
    # makes the kernel send a reset, which can destroy the 503 before the client reads it (RFC 9112 9.6).
    for ((i = 0; i < 20; i++)); do
        run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' 3
        if [ "$(status_of "$output")" != 503 ] || [ -z "$(header_value "$output" Date)" ]; then
            echo "client $i: exit $status, got '$output'"
            n_bad=$((n_bad + 1))
        fi
    done
    [ "$n_bad" -eq 0 ]
}

@test "descriptor exhaustion: under ulimit -n 64, 100 connections make PIBL back off, not spin, and it recovers" {
    need_python
    start_origin o1
    PIBL_ULIMIT_N=64
    start_pibl_with
    local report="$BATS_TEST_TMPDIR/hold" c0 c1
    start_peer "$report" hold "$PIBL_PORT" 100 30 "$report"
    local hold_pid=$PEER_PID
    wait_for_line "$report" '^opened=100 ' 10
    wait_for_line "$PIBL_LOG" 'pibl: warning: accept: .*pausing accepts'
    # Not spinning: with descriptors exhausted and clients waiting in the backlog, PIBL uses little CPU.
    c0=$(cpu_ticks "$PIBL_PID")
    sleep 2
    c1=$(cpu_ticks "$PIBL_PID")
    echo "pibl used $((c1 - c0)) ticks of CPU in 2 s (limit 50) with descriptors exhausted"
    [ $((c1 - c0)) -lt 50 ]
    pid_alive "$PIBL_PID"
    # A client that arrives now waits in the backlog and is served once descriptors come back.
    CURL_MAX_TIME=15 get_status "$(url /hello.txt)" >"$BATS_TEST_TMPDIR/late" &
    local curl_pid=$!
    sleep 0.5
    : >"$report.release"
    wait_for_line "$report" '^released$'
    wait "$curl_pid" || true
    [ "$(cat "$BATS_TEST_TMPDIR/late")" = 200 ]
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
    stop_pid "$hold_pid" >/dev/null
}

@test "descriptor exhaustion: a client accepted with no descriptor left for a backend socket does not mark the backend down" {
    need_python
    start_origin o1
    PIBL_ULIMIT_N=64
    start_pibl_with
    local report="$BATS_TEST_TMPDIR/hold" i n_ok=0 code n_open n_hold
    # Leave PIBL exactly one free descriptor: the next client is accepted, but socket() for the backend then
    # fails with EMFILE. That is PIBL's own shortage, not a backend failure: once descriptors are back, requests
    # must be served at once, not refused with 503 "no backend available" for down_time.
    # Descriptors are allocated lowest first, so only the numbers under 64 count (inherited ones may be higher).
    n_open=$(find "/proc/$PIBL_PID/fd" -mindepth 1 -printf '%f\n' | awk '$1 < 64' | wc -l)
    n_hold=$((64 - n_open - 1))
    start_peer "$report" hold "$PIBL_PORT" "$n_hold" 20 "$report"
    local hold_pid=$PEER_PID
    wait_for_line "$report" "^opened=$n_hold " 10
    code=$(CURL_MAX_TIME=3 get_status "$(url /hello.txt)")
    echo "request with $n_hold idle connections and $n_open other descriptors open: $code"
    : >"$report.release"
    wait_for_line "$report" '^released$'
    sleep 0.5
    for i in 1 2 3 4 5; do
        code=$(get_status "$(url /hello.txt)")
        echo "request $i after release: $code"
        [ "$code" = 200 ] && n_ok=$((n_ok + 1))
    done
    [ "$n_ok" -eq 5 ]
    stop_pid "$hold_pid" >/dev/null
}

@test "memory stays bounded: 20 clients streaming 2 MB heads that never end get 431, PIBL's memory does not grow" {
    start_origin o1
    start_pibl
    local rss0 rss1 i pids=()
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
    rss0=$(rss_kb "$PIBL_PID")
    for ((i = 0; i < 20; i++)); do
        # shellcheck disable=SC2016  # $1 belongs to the inner bash
        timeout 10 bash -c 'exec 5<>"/dev/tcp/127.0.0.1/$1" || exit 99
            { printf "GET / HTTP/1.1\r\nHost: t\r\nX-Flood: "; head -c 2000000 /dev/zero | tr "\0" a; } >&5 2>/dev/null
            cat <&5' flood "$PIBL_PORT" >"$BATS_TEST_TMPDIR/flood-$i" 2>/dev/null 3>&- &
        pids+=($!)
    done
    for i in "${pids[@]}"; do
        wait "$i" || true
    done
    wait_for_count "$PIBL_LOG" ' status=431 ' 20
    rss1=$(rss_kb "$PIBL_PID")
    echo "pibl RSS before $rss0 kB, after the floods $rss1 kB"
    sanitized_build || [ $((rss1 - rss0)) -lt 20000 ]
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
    [ "$(grep -c . "$(origin_log o1)")" -eq 2 ]
}

# ---------------------------------------------------------------- faults

@test "a backend dying mid-answer: the client sees a cut transfer, the next requests go elsewhere, it is used again when back" {
    start_origin o1
    start_origin o2
    start_pibl "down_time = 1"
    local rc=0 o1_port=${ORIGIN_PORT[o1]} i
    # Round robin starts with o1: it promises 100000 bytes, sends 1000 and closes.
    pcurl -o "$BATS_TEST_TMPDIR/cut" "$(url '/_abort?size=100000&after=1000')" || rc=$?
    [ "$rc" -eq 18 ] || { echo "curl exit $rc (want 18, partial file)"; return 1; }
    [ "$(stat -c %s "$BATS_TEST_TMPDIR/cut")" -lt 100000 ]
    wait_for_line "$PIBL_LOG" 'err="backend closed mid-answer"'
    # o1 dies for good.
    stop_origin o1
    for i in 1 2 3 4; do
        run pcurl -D - -o /dev/null "$(url /hello.txt)"
        [ "$status" -eq 0 ]
        [ "$(header_value "$output" X-Backend)" = o2 ]
    done
    # o1 comes back on its port: once down_time has passed it gets requests again.
    start_origin o1 "" "$o1_port"
    sleep 1.2
    local seen=""
    for i in 1 2 3 4; do
        run pcurl -D - -o /dev/null "$(url /hello.txt)"
        seen+=" $(header_value "$output" X-Backend)"
    done
    echo "backends after o1 came back:$seen"
    [[ "$seen" == *o1* ]]
    [[ "$seen" == *o2* ]]
}

@test "kill -9 under load, then restart: no temp files left, only whole entries served, no torn log lines" {
    start_origin o1
    PIBL_TTL=60
    start_pibl
    local i j pids=() size=200000 want
    # Four bounded loops of downloads of 40 distinct cacheable answers (200 kB each): some are being stored when
    # PIBL dies. A fixed Host keeps the cache keys the same across the restart (the port changes).
    for j in 1 2 3 4; do
        (
            for ((i = 0; i < 100; i++)); do
                curl -s -o /dev/null --max-time 5 -H 'Host: crash.test' \
                    "$(url "/_bytes?size=$size&k=$(((i * 7 + j) % 40))")" || true
            done
        ) 3>&- &
        pids+=($!)
    done
    local cache="$BATS_TEST_TMPDIR/cache" entry
    for ((i = 0; i < 100; i++)); do
        [ "$(find "$cache" -type f ! -name '.tmp-*' 2>/dev/null | wc -l)" -ge 5 ] && break
        sleep 0.1
    done
    kill -KILL "$PIBL_PID"
    wait "$PIBL_PID" 2>/dev/null || true
    untrack_pid "$PIBL_PID"
    for j in "${pids[@]}"; do
        wait "$j" || true
    done
    echo "after kill -9: $(find "$cache" -type f ! -name '.tmp-*' | wc -l) entries," \
        "$(find "$cache" -name '.tmp-*' | wc -l) temp files"
    check_log_lines "$PIBL_LOG"
    # What a crash at a worse moment leaves: a half-written temp file, and an entry cut short (as after a power
    # loss without fsync). Neither may ever be served.
    printf 'PIBL-CACHE 1\nkey: http://crash.test/_bytes?size=%s&k=1\n' "$size" >"$cache/.tmp-999999-1"
    entry=$(find "$cache" -type f ! -name '.tmp-*' | head -n 1)
    [ -n "$entry" ]
    truncate -s $(($(stat -c %s "$entry") / 2)) "$entry"
    # Restart in the same folder: leftovers are swept, what is served is whole.
    start_pibl
    run find "$cache" -name '.tmp-*'
    [ -z "$output" ] || { echo "temp files left after start-up: $output"; return 1; }
    pcurl -o "$BATS_TEST_TMPDIR/want" "http://127.0.0.1:${ORIGIN_PORT[o1]}/_bytes?size=$size"
    want=$(sha "$BATS_TEST_TMPDIR/want")
    local hits=0
    for ((i = 0; i < 40; i++)); do
        run pcurl -H 'Host: crash.test' -D "$BATS_TEST_TMPDIR/h" -o "$BATS_TEST_TMPDIR/got" "$(url "/_bytes?size=$size&k=$i")"
        [ "$status" -eq 0 ]
        [ "$(sha "$BATS_TEST_TMPDIR/got")" = "$want" ] || { echo "k=$i: body differs"; cat "$BATS_TEST_TMPDIR/h"; return 1; }
        grep -qi '^X-Cache: HIT' "$BATS_TEST_TMPDIR/h" && hits=$((hits + 1))
    done
    echo "$hits of 40 answers were cache hits after the restart"
    [ "$hits" -gt 0 ]
    check_log_lines "$PIBL_LOG"
}

@test "cache folder unusable at start-up (a path under a regular file): answers still served, with a warning" {
    start_origin o1
    : >"$BATS_TEST_TMPDIR/plainfile"
    PIBL_TTL=60
    start_pibl "cache_dir = $BATS_TEST_TMPDIR/plainfile/cache"
    run pcurl "$(url /hello.txt)"
    [ "$status" -eq 0 ]
    [ "$output" = "hello from the test origin" ]
    wait_for_line "$PIBL_OUT" '^pibl: warning: cache folder .*plainfile/cache unusable'
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
}

@test "cache folder removed while serving: answers still served, with a warning" {
    start_origin o1
    PIBL_TTL=60
    start_pibl
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
    rm -rf "$BATS_TEST_TMPDIR/cache"
    : >"$BATS_TEST_TMPDIR/cache"
    run pcurl "$(url /sub/)"
    [ "$status" -eq 0 ]
    [ "$output" = "<html><body>sub index</body></html>" ]
    wait_for_line "$PIBL_LOG" 'pibl: warning: cache: .*answers are served, not stored'
    [ "$(get_status "$(url '/_bytes?size=1000')")" = 200 ]
}

# pibl_on_tmpfs OPTS: PIBL_PREFIX that runs pibl in a private user + mount namespace with a tmpfs (mount OPTS) on
# $BATS_TEST_TMPDIR/cache; skips the test when user namespaces are not available.
pibl_on_tmpfs() {
    mkdir -p "$BATS_TEST_TMPDIR/cache"
    unshare -rm true 2>/dev/null || skip "unshare -rm (user namespaces) not available"
    # shellcheck disable=SC2016
    PIBL_PREFIX=(unshare -rm sh -c 'mount -t tmpfs -o "$0" tmpfs "$1" && shift && exec "$@"' "$1"
        "$BATS_TEST_TMPDIR/cache")
}

@test "cache disk full (1 MB tmpfs): a 3 MB answer is served whole and not stored, with a warning" {
    start_origin o1
    pibl_on_tmpfs size=1m
    PIBL_TTL=60
    start_pibl_with
    pcurl -o "$BATS_TEST_TMPDIR/want" "http://127.0.0.1:${ORIGIN_PORT[o1]}/_bytes?size=3000000"
    run pcurl -D "$BATS_TEST_TMPDIR/h" -o "$BATS_TEST_TMPDIR/got" "$(url '/_bytes?size=3000000')"
    [ "$status" -eq 0 ]
    [ "$(sha "$BATS_TEST_TMPDIR/got")" = "$(sha "$BATS_TEST_TMPDIR/want")" ]
    wait_for_line "$PIBL_LOG" 'pibl: warning: cache: .*No space left on device'
    # Not stored: the next one is a miss again, and also whole.
    run pcurl -D "$BATS_TEST_TMPDIR/h" -o "$BATS_TEST_TMPDIR/got" "$(url '/_bytes?size=3000000')"
    [ "$status" -eq 0 ]
    [ "$(sha "$BATS_TEST_TMPDIR/got")" = "$(sha "$BATS_TEST_TMPDIR/want")" ]
    run ! grep -qi '^X-Cache: HIT' "$BATS_TEST_TMPDIR/h"
    # Small answers still fit and are cached.
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
}

@test "cache folder read-only: answers still served, with a warning" {
    start_origin o1
    pibl_on_tmpfs ro
    PIBL_TTL=60
    start_pibl_with
    run pcurl "$(url /hello.txt)"
    [ "$status" -eq 0 ]
    [ "$output" = "hello from the test origin" ]
    grep -q 'pibl: warning: cache.*Read-only file system' "$PIBL_OUT" "$PIBL_LOG"
}

@test "log file in a missing folder: answers still served, with a warning on stderr" {
    start_origin o1
    PIBL_LOG="$BATS_TEST_TMPDIR/no/such/dir/pibl.log"
    start_pibl
    [ "$(get_status "$(url /hello.txt)")" = 200 ]
    grep -q 'pibl: warning: cannot open log file .*no/such/dir/pibl.log' "$PIBL_ERR"
    # The exchange is still logged on stdout.
    wait_for_line "$PIBL_OUT" '"GET /hello.txt HTTP/1.1" .* status=200 '
}

@test "log file that cannot be written (/dev/full): answers still served, with one warning on stderr" {
    [ -w /dev/full ] || skip "/dev/full not available"
    start_origin o1
    PIBL_LOG=/dev/full
    start_pibl
    local i
    for i in 1 2 3; do
        [ "$(get_status "$(url /hello.txt)")" = 200 ]
    done
    wait_for_line "$PIBL_ERR" 'pibl: warning: cannot write the log file: No space left on device'
    wait_for_count "$PIBL_OUT" ' status=200 ' 3
}
