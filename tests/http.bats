#!/usr/bin/env bats
# http.bats - HTTP/1.1 behaviour of the proxy: keep-alive, Connection: close, HTTP/1.0, pipelining, body framing
# both ways (Content-Length, chunked, close-delimited, HEAD, 204/304, 1xx, Expect: 100-continue), 100 MB bodies,
# and the request/response header rewriting (X-Forwarded-*, Via, hop-by-hop removal).
# Hostile or exact byte sequences go over a raw socket (raw_request in helpers.bash).

bats_require_minimum_version 1.5.0
load helpers

setup() { helpers_setup; }
teardown() { helpers_teardown; }

# pattern_file FILE SIZE: SIZE bytes of repeating 0123456789 (the content of the origin's generated routes).
pattern_file() {
    yes 0123456789 | tr -d '\n' | head -c "$2" >"$1"
}

# upload_file_of OUTPUT: the stored path from an /_upload answer `bytes=N file=PATH`.
upload_file_of() {
    printf '%s\n' "$1" | sed -n -E 's/^bytes=[0-9]+ file=([^[:space:]]+).*/\1/p' | head -n 1
}

# ---------------------------------------------------------------- connections

@test "keep-alive: two requests in one curl invocation reuse the client connection" {
    start_origin o1
    start_pibl
    run pcurl -o /dev/null -o /dev/null -w '%{http_code} %{num_connects}\n' "$(url /hello.txt)" "$(url /index.html)"
    echo "$output"
    [ "$output" = $'200 1\n200 0' ]
}

@test "keep-alive: an idle client connection is closed after keepalive_timeout" {
    start_origin o1
    start_pibl "keepalive_timeout = 1"
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n' 5
    echo "status $status"
    [ "$status" -eq 0 ]
    [ "$(status_of "$output")" = 200 ]
    [ "$(body_of "$output")" = "hello from the test origin" ]
}

@test "Connection: close from the client is honoured (header in the answer, socket closed)" {
    start_origin o1
    start_pibl
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' 5
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    [ "$(status_of "$output")" = 200 ]
    [[ "$(header_value "$output" Connection)" == *[Cc]lose* ]]
    [ "$(body_of "$output")" = "hello from the test origin" ]
    # curl sees it too: the second transfer needs a new connection.
    run pcurl -o /dev/null -o /dev/null -H 'Connection: close' -w '%{http_code} %{num_connects}\n' \
        "$(url /hello.txt)" "$(url /hello.txt)"
    [ "$output" = $'200 1\n200 1' ]
}

@test "HTTP/1.0: a 1.0 client gets a correct answer and the connection closes" {
    start_origin o1
    start_pibl
    run pcurl -0 -D - "$(url /hello.txt)"
    echo "$output"
    [ "$(status_of "$output")" = 200 ]
    [ "$(body_of "$output")" = "hello from the test origin" ]
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.0\r\n\r\n' 5
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    [ "$(status_of "$output")" = 200 ]
    [ "$(body_of "$output")" = "hello from the test origin" ]
    [[ "$(head_of "$output")" != *chunked* ]]
}

@test "HTTP/1.0: Connection: keep-alive keeps the connection for the next request" {
    start_origin o1
    start_pibl
    # Two 1.0 requests written at once: the first asks for keep-alive, the second does not (so pibl closes after it).
    run raw_request "$PIBL_PORT" \
        $'GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /index.html HTTP/1.0\r\n\r\n' 5
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    [ "$(status_of "$output")" = 200 ]
    [[ "$(header_value "$output" Connection)" == *[Kk]eep-[Aa]live* ]]
    [ "$(printf '%s' "$output" | grep -Ec '^HTTP/1\.[01] 200 ')" -eq 2 ]
    [[ "$output" == *"hello from the test origin"*"pibl test index"* ]]
    # curl -0 with keep-alive reuses the connection.
    run pcurl -0 -H 'Connection: keep-alive' -o /dev/null -o /dev/null -w '%{http_code} %{num_connects}\n' \
        "$(url /hello.txt)" "$(url /hello.txt)"
    [ "$output" = $'200 1\n200 0' ]
}

@test "pipelining: three requests written at once are answered in order" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl
    # The first answer is slow and each request goes to a different backend: answers must still come in order.
    local req=$'GET /_slow?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n'
    req+=$'GET /_echo?pipe=2 HTTP/1.1\r\nHost: t\r\n\r\n'
    req+=$'GET /_echo?pipe=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
    run raw_request "$PIBL_PORT" "$req" 10
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    [ "$(printf '%s' "$output" | grep -Ec '^HTTP/1\.1 200 ')" -eq 3 ]
    local order
    order=$(printf '%s' "$output" | tr -d '\r' | grep -E '^(slow|GET /_echo\?pipe=[23] HTTP/1\.1)$' | tr '\n' ,)
    [ "$order" = "slow,GET /_echo?pipe=2 HTTP/1.1,GET /_echo?pipe=3 HTTP/1.1," ]
}

@test "pipelining: a request split across several segments is reassembled" {
    start_origin o1
    start_pibl
    run raw_request_parts "$PIBL_PORT" 5 $'GET /hel' $'lo.txt HTTP/1.1\r\nHo' $'st: t\r\nConnection: close\r' $'\n\r\n'
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    [ "$(status_of "$output")" = 200 ]
    [ "$(body_of "$output")" = "hello from the test origin" ]
}

# ---------------------------------------------------------------- framing

@test "framing: Content-Length upload arrives intact" {
    start_origin o1
    start_pibl
    local f=$BATS_TEST_TMPDIR/up.bin
    head -c 300000 /dev/urandom >"$f"
    run pcurl --data-binary "@$f" "$(url /_upload)"
    echo "$output"
    [[ "$output" == "bytes=300000 file="* ]]
    local stored
    stored=$(upload_file_of "$output")
    [ "$(sha "$stored")" = "$(sha "$f")" ]
}

@test "framing: chunked upload (curl) arrives intact" {
    start_origin o1
    start_pibl
    local f=$BATS_TEST_TMPDIR/up.bin
    head -c 5000000 /dev/urandom >"$f"
    run pcurl -H 'Transfer-Encoding: chunked' --data-binary "@$f" "$(url /_upload)"
    echo "$output"
    [[ "$output" == "bytes=5000000 file="* ]]
    [ "$(sha "$(upload_file_of "$output")")" = "$(sha "$f")" ]
    # From stdin with -T - (PUT, chunked because the size is unknown).
    run pcurl -T - "$(url /_upload)" <"$f"
    echo "$output"
    [[ "$output" == "bytes=5000000 file="* ]]
    [ "$(sha "$(upload_file_of "$output")")" = "$(sha "$f")" ]
}

@test "framing: raw chunked upload with a chunk extension and a trailer is decoded" {
    start_origin o1
    start_pibl
    local req=$'POST /_upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n'
    req+=$'5;ext=1\r\nhello\r\nA\r\n world 123\r\n0\r\nX-Trailer: t\r\n\r\n'
    run raw_request "$PIBL_PORT" "$req" 5
    echo "status $status output: $output"
    [ "$(status_of "$output")" = 200 ]
    local body
    body=$(body_of "$output")
    [[ "$body" == "bytes=15 file="* ]]
    [ "$(cat "$(upload_file_of "$body")")" = "hello world 123" ]
}

@test "framing: a chunked response arrives intact" {
    start_origin o1
    start_pibl
    local want=$BATS_TEST_TMPDIR/want got=$BATS_TEST_TMPDIR/got
    pattern_file "$want" 50000
    run pcurl -o "$got" -w '%{http_code}' "$(url '/_chunked?n=50&size=1000')"
    [ "$output" = 200 ]
    [ "$(sha "$got")" = "$(sha "$want")" ]
    # Raw: the answer is well framed (chunked or Content-Length) and the connection then closes on request.
    run raw_request "$PIBL_PORT" $'GET /_chunked?n=3&size=10 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' 5
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    local te cl
    te=$(header_value "$output" Transfer-Encoding | tr -d '\r')
    cl=$(header_value "$output" Content-Length | tr -d '\r')
    if [ "$te" = chunked ]; then
        [ "$(body_of "$output" | tr -d '\r')" = $'a\n0123456789\na\n0123456789\na\n0123456789\n0' ]
    else
        [ "$cl" = 30 ]
        [ "$(body_of "$output")" = 012345678901234567890123456789 ]
    fi
}

@test "framing: a close-delimited response arrives complete" {
    start_origin o1
    start_pibl
    local got=$BATS_TEST_TMPDIR/got
    run pcurl -o "$got" -w '%{http_code} %{size_download}' "$(url '/_close?size=200000')"
    echo "$output"
    [ "$output" = "200 200000" ]
    # Twice on one curl invocation: both complete (pibl may close or re-frame, never truncate).
    run pcurl -o "$got.1" -o "$got.2" -w '%{http_code} %{size_download}\n' \
        "$(url '/_close?size=100000')" "$(url '/_close?size=70000')"
    echo "$output"
    [ "$output" = $'200 100000\n200 70000' ]
}

@test "framing: HEAD gets the headers and no body" {
    start_origin o1
    start_pibl
    # If pibl sent a body after the HEAD answer, the next bytes would not be the second status line.
    local req=$'HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
    run raw_request "$PIBL_PORT" "$req" 5
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    [ "$(status_of "$output")" = 200 ]
    [ "$(header_value "$output" Content-Length | tr -d '\r')" = 27 ]
    local rest
    rest=$(body_of "$output")
    [[ "$rest" == "HTTP/1.1 200 "* ]]
    [[ "$rest" == *"pibl test index"* ]]
}

@test "framing: 204 and 304 have no body and the connection stays usable" {
    start_origin o1
    start_pibl
    local code req rest
    for code in 204 304; do
        req="GET /_status/$code HTTP/1.1"$'\r\nHost: t\r\n\r\n'
        req+=$'GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
        run raw_request "$PIBL_PORT" "$req" 5
        echo "code $code status $status output: $output"
        [ "$status" -eq 0 ]
        [ "$(status_of "$output")" = "$code" ]
        rest=$(body_of "$output")
        [[ "$rest" == "HTTP/1.1 200 "* ]]
        [ "$(body_of "$rest")" = "hello from the test origin" ]
    done
    run pcurl -o /dev/null -o /dev/null -w '%{http_code} %{num_connects}\n' "$(url /_status/204)" "$(url /hello.txt)"
    [ "$output" = $'204 1\n200 0' ]
}

@test "framing: a 1xx from the origin is relayed, then the final answer" {
    start_origin o1
    start_pibl
    run raw_request "$PIBL_PORT" $'GET /_1xx HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' 5
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    [ "$(status_of "$output")" = 103 ]
    local rest
    rest=$(body_of "$output")
    [[ "$rest" == "HTTP/1.1 200 "* ]]
    [ "$(body_of "$rest")" = after-1xx ]
    run pcurl -v "$(url /_1xx)"
    echo "$output"
    [[ "$output" == *"< HTTP/1.1 103"*"< HTTP/1.1 200"* ]]
    [[ "$output" == *after-1xx* ]]
}

@test "framing: a 1xx is not relayed to an HTTP/1.0 client (RFC 9110 15.2)" {
    start_origin o1
    start_pibl
    run raw_request "$PIBL_PORT" $'GET /_1xx HTTP/1.0\r\n\r\n' 5
    echo "status $status output: $output"
    [ "$status" -eq 0 ]
    [ "$(status_of "$output")" = 200 ]
    [[ "$output" != *" 103 "* ]]
    [ "$(body_of "$output")" = after-1xx ]
}

@test "framing: Expect: 100-continue upload gets '100 Continue' from pibl and completes; Expect not forwarded" {
    start_origin o1
    start_pibl
    local f=$BATS_TEST_TMPDIR/up.bin
    head -c 200000 /dev/urandom >"$f"
    run pcurl -v -H 'Expect: 100-continue' --data-binary "@$f" "$(url /_upload)"
    echo "$output"
    [[ "$output" == *"< HTTP/1.1 100 Continue"* ]]
    local answer stored
    answer=$(printf '%s\n' "$output" | grep -E '^bytes=200000 file=')
    stored=$(upload_file_of "$answer")
    [ "$(sha "$stored")" = "$(sha "$f")" ]
    [ -f "$(origin_log o1).heads" ]
    grep -qi '^POST /_upload' "$(origin_log o1).heads"
    run grep -i '^expect:' "$(origin_log o1).heads"
    [ "$status" -ne 0 ]
}

@test "framing: bodies full of NUL bytes pass both ways" {
    local root=$BATS_TEST_TMPDIR/zroot
    make_root "$root"
    head -c 70000 /dev/zero >"$root/zeros.bin"
    start_origin o1 "$root"
    start_pibl
    local got=$BATS_TEST_TMPDIR/got.bin
    run pcurl -o "$got" -w '%{http_code} %{size_download}' "$(url /zeros.bin)"
    [ "$output" = "200 70000" ]
    [ "$(sha "$got")" = "$(sha "$root/zeros.bin")" ]
    run pcurl --data-binary "@$root/zeros.bin" "$(url /_upload)"
    echo "$output"
    [[ "$output" == "bytes=70000 file="* ]]
    [ "$(sha "$(upload_file_of "$output")")" = "$(sha "$root/zeros.bin")" ]
}

# ---------------------------------------------------------------- big bodies

@test "big: 100 MB download arrives intact" {
    local root=$BATS_TEST_TMPDIR/bigroot
    make_root "$root"
    head -c 104857600 /dev/urandom >"$root/big.bin"
    start_origin o1 "$root"
    start_pibl
    local got=$BATS_TEST_TMPDIR/got.bin
    CURL_MAX_TIME=120 run pcurl -o "$got" -w '%{http_code} %{size_download}' "$(url /big.bin)"
    echo "$output"
    [ "$output" = "200 104857600" ]
    [ "$(sha "$got")" = "$(sha "$root/big.bin")" ]
}

@test "big: 100 MB upload arrives intact" {
    start_origin o1
    start_pibl
    local f=$BATS_TEST_TMPDIR/big.bin
    head -c 104857600 /dev/urandom >"$f"
    CURL_MAX_TIME=120 run pcurl --data-binary "@$f" "$(url /_upload)"
    echo "$output"
    [[ "$output" == "bytes=104857600 file="* ]]
    [ "$(sha "$(upload_file_of "$output")")" = "$(sha "$f")" ]
}

# ---------------------------------------------------------------- headers

@test "headers: origin sees the client's Host, X-Forwarded-For, X-Forwarded-Proto, Via, HTTP/1.1" {
    start_origin o1
    start_pibl
    run pcurl -H 'Host: example.test:81' "$(url '/_echo?h=1')"
    echo "$output"
    local seen
    seen=$(printf '%s\n' "$output" | tr -d '\r')
    [ "$(printf '%s\n' "$seen" | head -n 1)" = "GET /_echo?h=1 HTTP/1.1" ]
    [ "$(printf '%s\n' "$seen" | grep -ic '^host:')" -eq 1 ]
    printf '%s\n' "$seen" | grep -iqx 'host: example.test:81'
    [ "$(printf '%s\n' "$seen" | grep -ic '^x-forwarded-for:')" -eq 1 ]
    printf '%s\n' "$seen" | grep -iqx 'x-forwarded-for: 127.0.0.1'
    printf '%s\n' "$seen" | grep -iqx 'x-forwarded-proto: http'
    printf '%s\n' "$seen" | grep -iqx 'via: 1.1 pibl'
}

@test "headers: X-Forwarded-For and Via are appended to incoming ones" {
    start_origin o1
    start_pibl
    run pcurl -H 'X-Forwarded-For: 1.2.3.4' -H 'Via: 1.0 other' "$(url '/_echo?h=2')"
    echo "$output"
    local seen
    seen=$(printf '%s\n' "$output" | tr -d '\r')
    [ "$(printf '%s\n' "$seen" | grep -ic '^x-forwarded-for:')" -eq 1 ]
    printf '%s\n' "$seen" | grep -iqx 'x-forwarded-for: 1\.2\.3\.4, 127\.0\.0\.1'
    [ "$(printf '%s\n' "$seen" | grep -ic '^via:')" -eq 1 ]
    printf '%s\n' "$seen" | grep -iqx 'via: 1\.0 other, 1\.1 pibl'
}

@test "headers: an HTTP/1.0 client's request is forwarded as HTTP/1.1 with a Host" {
    start_origin o1
    start_pibl
    run raw_request "$PIBL_PORT" $'GET /_echo?h=3 HTTP/1.0\r\n\r\n' 5
    echo "status $status output: $output"
    [ "$(status_of "$output")" = 200 ]
    local seen
    seen=$(body_of "$output" | tr -d '\r')
    [ "$(printf '%s\n' "$seen" | head -n 1)" = "GET /_echo?h=3 HTTP/1.1" ]
    printf '%s\n' "$seen" | grep -iq '^host: '
}

@test "headers: hop-by-hop headers from the client are not forwarded" {
    start_origin o1
    start_pibl
    run pcurl -H 'Connection: X-Foo, keep-alive' -H 'X-Foo: secret-listed' -H 'Keep-Alive: timeout=5' \
        -H 'TE: trailers' -H 'Trailer: X-T' -H 'Upgrade: websocket' -H 'Proxy-Authorization: Basic Zm9vOmJhcg==' \
        -H 'Proxy-Connection: keep-alive' -H 'X-Keep: end-to-end' "$(url '/_echo?h=4')"
    echo "$output"
    local seen name
    seen=$(printf '%s\n' "$output" | tr -d '\r')
    printf '%s\n' "$seen" | grep -iqx 'x-keep: end-to-end'
    for name in x-foo keep-alive te trailer upgrade proxy-authorization proxy-connection; do
        if printf '%s\n' "$seen" | grep -iq "^$name:"; then
            echo "hop-by-hop header $name was forwarded"
            return 1
        fi
    done
    # A Connection header pibl sends itself must not carry the client's listed names.
    run bash -c "printf '%s\n' \"\$1\" | grep -i '^connection:' | grep -i x-foo" _ "$seen"
    [ "$status" -ne 0 ]
}

@test "headers: the origin's Connection header is not relayed blindly" {
    start_origin o1
    start_pibl
    # /_close answers with `Connection: close` about the origin's connection. pibl may either close the client
    # connection too (and then say so) or re-frame the body and keep it; it must not say close and keep it
    # open, nor keep it open without framing. A second request is pipelined behind the first to tell.
    local req=$'GET /_close?size=10 HTTP/1.1\r\nHost: t\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
    run raw_request "$PIBL_PORT" "$req" 5
    echo "status $status output: $output"
    [ "$(status_of "$output")" = 200 ]
    [ "$status" -ne 124 ]
    [ -z "$(header_value "$output" Keep-Alive)" ]
    if [[ "$(header_value "$output" Connection)" == *[Cc]lose* ]]; then
        # Closed after the first answer: the second request got no answer, the body is complete.
        [ "$(printf '%s' "$output" | grep -c '^HTTP/1\.')" -eq 1 ]
        [ "$(body_of "$output")" = 0123456789 ]
    else
        # Kept: the first body is framed (chunked or Content-Length) and the second answer follows.
        local first
        first=$(head_of "$output")
        [[ "$first" == *[Tt]ransfer-[Ee]ncoding:\ chunked* || "$first" == *[Cc]ontent-[Ll]ength:\ 10* ]]
        [ "$(printf '%s' "$output" | grep -c '^HTTP/1\.1 200 ')" -eq 2 ]
        [[ "$output" == *0123456789*"hello from the test origin"* ]]
    fi
}

@test "headers: the origin's Date, Server, ETag and Last-Modified are relayed, X-Backend too" {
    start_origin o1
    start_pibl
    run pcurl -D - -o /dev/null "$(url /hello.txt)"
    echo "$output"
    [ "$(status_of "$output")" = 200 ]
    [ "$(header_value "$output" X-Backend)" = o1 ]
    [ -n "$(header_value "$output" ETag)" ]
    [ -n "$(header_value "$output" Last-Modified)" ]
    [ -n "$(header_value "$output" Date)" ]
    [ "$(header_value "$output" Content-Length)" = 27 ]
}
