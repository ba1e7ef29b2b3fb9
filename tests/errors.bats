#!/usr/bin/env bats
# errors.bats - the error answers PIBL makes itself (400 408 413 414 431 501 505 502 503 504), each with a small
# text/plain body and a log line, and the no-double-POST rule when a backend dies mid-answer.
# Hostile inputs go over a raw socket; none of them may reach an origin.

bats_require_minimum_version 1.5.0
load helpers

setup() { helpers_setup; }
teardown() { helpers_teardown; }

# check_error_reply CODE: $output (a raw reply) is an error CODE with a non-empty text/plain body.
check_error_reply() {
    local code=$1
    [ "$(status_of "$output")" = "$code" ] || { echo "want $code, got: $output"; return 1; }
    [[ "$(header_value "$output" Content-Type)" == text/plain* ]] || { echo "not text/plain: $output"; return 1; }
    [ -n "$(body_of "$output")" ] || { echo "empty body: $output"; return 1; }
}

# check_closed: the raw reply ended because pibl closed the connection (status 0, or 1 on a reset after the
# answer), not because raw_request timed out (124); and the answer said Connection: close.
check_closed() {
    [ "$status" -ne 124 ] || { echo "connection left open: $output"; return 1; }
    [[ "$(header_value "$output" Connection)" == *[Cc]lose* ]] || { echo "no Connection: close: $output"; return 1; }
}

# check_logged CODE [N]: at least N (1) log lines with status=CODE in the log file and on stdout.
check_logged() {
    wait_for_count "$PIBL_LOG" " status=$1 " "${2:-1}"
    wait_for_count "$PIBL_OUT" " status=$1 " "${2:-1}"
}

# no_origin_saw NAME: the origin's request log is empty.
no_origin_saw() {
    local n
    n=$(grep -c . "$(origin_log "$1")" || true)
    [ "$n" -eq 0 ] || { echo "origin $1 saw requests:"; cat "$(origin_log "$1")"; return 1; }
}

@test "400: HTTP/1.1 request without Host" {
    start_origin o1
    start_pibl
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\nUser-Agent: t\r\n\r\n'
    check_error_reply 400
    check_closed
    check_logged 400
    no_origin_saw o1
}

@test "400: malformed request lines and header fields (RFC 9112 3, 3.2, 5.1, 6.3)" {
    start_origin o1
    start_pibl
    local cases=(
        $'GET\r\nHost: t\r\n\r\n'
        $'GET /hello.txt\r\nHost: t\r\n\r\n'
        $'GET /a b HTTP/1.1\r\nHost: t\r\n\r\n'
        $'GET /hello.txt HTTX/1.1\r\nHost: t\r\n\r\n'
        $'GET /hello.txt HTTP/1.1 \r\nHost: t\r\n\r\n'
        $'GET /hello.txt HTTP/1.1\r\nHost: t\r\nNoColonHere\r\n\r\n'
        $'GET /hello.txt HTTP/1.1\r\nHost : t\r\n\r\n'
        $'GET /hello.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'
        $'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello'
        $'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n'
        $'POST /_echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n'
    )
    local i
    for i in "${!cases[@]}"; do
        run raw_request "$PIBL_PORT" "${cases[$i]}"
        echo "case $i: $(printf '%q' "${cases[$i]}") -> status $status"
        check_error_reply 400
        check_closed
    done
    check_logged 400 "${#cases[@]}"
    no_origin_saw o1
}

@test "414: request target over max_uri_bytes (and one under it is proxied)" {
    start_origin o1
    start_pibl "max_uri_bytes = 100"
    local long short
    long=/$(printf 'a%.0s' $(seq 1 300))
    short=/$(printf 'b%.0s' $(seq 1 50))
    run raw_request "$PIBL_PORT" "GET $long HTTP/1.1"$'\r\nHost: t\r\n\r\n'
    check_error_reply 414
    check_closed
    check_logged 414
    no_origin_saw o1
    # Control: a short target reaches the origin (404: no such file).
    run raw_request "$PIBL_PORT" "GET $short HTTP/1.1"$'\r\nHost: t\r\nConnection: close\r\n\r\n'
    [ "$(status_of "$output")" = 404 ]
    [ "$(header_value "$output" X-Backend)" = o1 ]
}

@test "431: request head over max_header_bytes (and a smaller one is proxied)" {
    start_origin o1
    start_pibl "max_header_bytes = 1024"
    local big small
    big=$(printf 'b%.0s' $(seq 1 2000))
    small=$(printf 's%.0s' $(seq 1 200))
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-Big: '"$big"$'\r\n\r\n'
    check_error_reply 431
    check_closed
    check_logged 431
    no_origin_saw o1
    # Many small headers adding up past the cap are refused too.
    local many="" i
    for i in $(seq 1 40); do many+="X-H$i: $small"$'\r\n'; done
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\nHost: t\r\n'"$many"$'\r\n'
    check_error_reply 431
    no_origin_saw o1
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-Small: '"$small"$'\r\nConnection: close\r\n\r\n'
    [ "$(status_of "$output")" = 200 ]
}

@test "413: Content-Length over max_body_bytes (and a body under it is proxied)" {
    start_origin o1
    start_pibl "max_body_bytes = 100"
    # Only the head is sent: pibl must refuse from the announced length, before any body byte.
    run raw_request "$PIBL_PORT" $'POST /_upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n'
    check_error_reply 413
    check_closed
    check_logged 413
    no_origin_saw o1
    run pcurl -w '\n%{http_code}' --data-binary 'fifty-bytes-of-body-0123456789-0123456789-01234567' "$(url /_upload)"
    echo "$output"
    [[ "$output" == "bytes=50 file="*$'\n'200 ]]
}

@test "413: a chunked body growing over max_body_bytes is refused" {
    start_origin o1
    start_pibl "max_body_bytes = 100"
    local chunk
    chunk=$(printf 'c%.0s' $(seq 1 60))
    run raw_request "$PIBL_PORT" $'POST /_upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n'"3c"$'\r\n'"$chunk"$'\r\n'"3c"$'\r\n'"$chunk"$'\r\n'"3c"$'\r\n'"$chunk"$'\r\n0\r\n\r\n'
    echo "status $status output: $output"
    check_error_reply 413
    [ "$status" -ne 124 ]
    check_logged 413
    # The origin never stored a body over the cap.
    run bash -c 'for f in "$1"/*; do [ -f "$f" ] && [ "$(wc -c <"$f")" -gt 100 ] && echo "$f"; done; true' _ \
        "${ORIGIN_DIR[o1]}/uploads"
    [ -z "$output" ]
}

@test "501: Transfer-Encoding other than chunked" {
    start_origin o1
    start_pibl
    local te
    for te in gzip "gzip, chunked" x-custom; do
        run raw_request "$PIBL_PORT" $'POST /_echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: '"$te"$'\r\n\r\n'
        echo "te '$te' status $status output: $output"
        check_error_reply 501
        [ "$status" -ne 124 ]
    done
    check_logged 501 3
    no_origin_saw o1
}

@test "505: HTTP/2.0 and HTTP/3.0 request lines" {
    start_origin o1
    start_pibl
    local v
    for v in 2.0 3.0; do
        run raw_request "$PIBL_PORT" "GET /hello.txt HTTP/$v"$'\r\nHost: t\r\n\r\n'
        echo "version $v status $status output: $output"
        check_error_reply 505
        [ "$status" -ne 124 ]
    done
    check_logged 505 2
    no_origin_saw o1
}

@test "408: a client that sends a partial head and stops" {
    start_origin o1
    start_pibl "client_timeout = 1"
    run raw_request "$PIBL_PORT" $'GET /hello.txt HTTP/1.1\r\nHost: t\r\n' 6
    echo "status $status output: $output"
    check_error_reply 408
    check_closed
    check_logged 408
    no_origin_saw o1
}

@test "408: a client that stops in the middle of a body" {
    start_origin o1
    start_pibl "client_timeout = 1"
    run raw_request "$PIBL_PORT" $'POST /_upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-ten!!' 6
    echo "status $status output: $output"
    check_error_reply 408
    [ "$status" -ne 124 ]
    check_logged 408
}

@test "502: the only backend is dead (nothing listens on its port)" {
    start_origin o1
    stop_origin o1
    start_pibl
    run pcurl -D - "$(url /hello.txt)"
    echo "$output"
    check_error_reply 502
    check_logged 502
}

@test "503: all backends marked down right after a 502" {
    start_origin o1
    stop_origin o1
    start_pibl "down_time = 60"
    run pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)"
    [ "$output" = 502 ]
    run pcurl -D - "$(url /hello.txt)"
    echo "$output"
    check_error_reply 503
    check_logged 503
}

@test "503: a client over max_connections gets 503; the slot comes back when a client leaves" {
    start_origin o1
    start_pibl "max_connections = 2"
    local a b i code=""
    # Two clients busy with slow requests fill the two slots.
    exec {a}<>"/dev/tcp/127.0.0.1/$PIBL_PORT"
    exec {b}<>"/dev/tcp/127.0.0.1/$PIBL_PORT"
    printf 'GET /_slow?ms=1500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' >&"$a"
    printf 'GET /_slow?ms=1500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' >&"$b"
    wait_for_count "$(origin_log o1)" '^o1 GET /_slow' 2
    run pcurl -D - "$(url /hello.txt)"
    echo "$output"
    check_error_reply 503
    # Refused at accept, before any request is read: a log line mentions the 503 (exchange line or warning).
    wait_for_line "$PIBL_LOG" '503'
    exec {a}>&- {b}>&-
    # Bounded: once the slow exchanges end, a new client is served again.
    for i in $(seq 1 50); do
        code=$(pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)" || true)
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    [ "$code" = 200 ]
}

@test "504: backend silent longer than backend_timeout" {
    start_origin o1
    start_pibl "backend_timeout = 1"
    CURL_MAX_TIME=10 run pcurl -D - "$(url '/_slow?ms=3000')"
    echo "$output"
    check_error_reply 504
    check_logged 504
    wait_for_line "$PIBL_LOG" '"GET /_slow\?ms=3000 HTTP/1\.1" .* status=504 '
}

@test "POST is never sent twice when the backend dies mid-answer" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl
    run pcurl -o /dev/null -w '%{http_code} %{size_download}' --data-binary 'x=1' \
        "$(url '/_abort?size=100000&after=1000')"
    echo "curl status $status output $output"
    # The client must not see a complete 200: the promised 100000 bytes never came.
    [ "$status" -ne 0 ] || [[ "$output" != "200 "* ]]
    local n
    n=$(cat "$(origin_log o1)" "$(origin_log o2)" "$(origin_log o3)" | grep -c '^o[123] POST /_abort' || true)
    echo "POST seen $n times"
    cat "$(origin_log o1)" "$(origin_log o2)" "$(origin_log o3)"
    [ "$n" -eq 1 ]
    # pibl keeps serving.
    run pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)"
    [ "$output" = 200 ]
}

@test "a truncated GET answer is not passed off as complete" {
    start_origin o1
    start_pibl
    run pcurl -o /dev/null -w '%{http_code} %{size_download}' "$(url '/_abort?size=100000&after=1000')"
    echo "curl status $status output $output"
    [ "$status" -ne 0 ] || [[ "$output" != "200 "* ]]
    run pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)"
    [ "$output" = 200 ]
}
