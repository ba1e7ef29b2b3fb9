#!/usr/bin/env bats
# rr.bats - round robin over the backends in config order, passive health checks (a dead backend is skipped,
# all dead = a quick 502/503, a backend that comes back is used again, in config order), and upstream keep-alive.
# Origins name themselves in X-Backend and log every request they receive (helpers.bash).

bats_require_minimum_version 1.5.0
load helpers

setup() { helpers_setup; }
teardown() { helpers_teardown; }

# backend_of PATH: "CODE X-BACKEND" for one request on a new client connection.
backend_of() {
    pcurl -o /dev/null -w '%{http_code} %header{x-backend}' "$(url "$1")"
}

@test "rr: 6 sequential requests hit o1 o2 o3 o1 o2 o3; each origin logs 2" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl
    local i seq=""
    for i in 1 2 3 4 5 6; do
        seq+="$(backend_of "/hello.txt?i=$i"),"
    done
    echo "sequence: $seq"
    [ "$seq" = "200 o1,200 o2,200 o3,200 o1,200 o2,200 o3," ]
    [ "$(grep -c '^o1 GET /hello.txt' "$(origin_log o1)")" -eq 2 ]
    [ "$(grep -c '^o2 GET /hello.txt' "$(origin_log o2)")" -eq 2 ]
    [ "$(grep -c '^o3 GET /hello.txt' "$(origin_log o3)")" -eq 2 ]
    grep -qx 'o1 GET /hello.txt?i=1' "$(origin_log o1)"
    grep -qx 'o2 GET /hello.txt?i=5' "$(origin_log o2)"
    grep -qx 'o3 GET /hello.txt?i=6' "$(origin_log o3)"
    # The log names the backend of each exchange, in the same order.
    wait_for_count "$PIBL_LOG" 'hello\.txt\?i=' 6
    local logged want
    logged=$(grep -E 'hello\.txt\?i=' "$PIBL_LOG" | sed -E 's/.*\?i=([0-9]) .* backend=([^ ]+) .*/\1 \2/' | sort)
    want=""
    for i in 1 2 3 4 5 6; do
        want+="$i 127.0.0.1:${ORIGIN_PORT[o$(( (i - 1) % 3 + 1 ))]}"$'\n'
    done
    [ "$logged" = "${want%$'\n'}" ]
}

@test "rr: requests on one keep-alive client connection are balanced per request" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl
    run pcurl -o /dev/null -o /dev/null -o /dev/null -o /dev/null \
        -w '%{http_code} %header{x-backend} %{num_connects}\n' \
        "$(url /hello.txt)" "$(url /hello.txt)" "$(url /hello.txt)" "$(url /hello.txt)"
    echo "$output"
    [ "$output" = $'200 o1 1\n200 o2 0\n200 o3 0\n200 o1 0' ]
}

@test "rr: a single backend gets every request" {
    start_origin solo
    start_pibl
    local i
    for i in 1 2 3; do
        [ "$(backend_of /hello.txt)" = "200 solo" ]
    done
    [ "$(grep -c . "$(origin_log solo)")" -eq 3 ]
}

@test "failover: a dead backend is skipped, every request still succeeds" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl "down_time = 60"
    stop_origin o2
    local i out seen=""
    for i in 1 2 3 4 5 6 7 8 9; do
        out=$(backend_of "/hello.txt?f=$i")
        seen+="$out,"
    done
    echo "seen: $seen"
    [[ "$seen" != *o2* ]]
    [ "$(printf '%s' "$seen" | tr ',' '\n' | grep -c '^200 o[13]$')" -eq 9 ]
    [[ "$seen" == *"200 o1"* ]]
    [[ "$seen" == *"200 o3"* ]]
    # Marked down after the first refusal: pibl did not try o2 again on every round (down_time = 60).
    # Nothing listens on o2's port, so the only evidence is that the log shows no failed exchange.
    wait_for_count "$PIBL_LOG" 'hello\.txt\?f=' 9
    [ "$(count_lines "$PIBL_LOG" 'hello\.txt\?f=.* status=200 ')" -eq 9 ]
}

@test "failover: a backend that comes back is used again after down_time" {
    start_origin o1
    start_origin o2
    start_pibl "down_time = 1"
    local port2=${ORIGIN_PORT[o2]} i out seen=""
    stop_origin o2
    for i in 1 2 3 4; do
        [ "$(backend_of /hello.txt)" = "200 o1" ]
    done
    start_origin o2again "" "$port2"
    # Bounded: within ~5 s (down_time 1 s) some request must reach the restarted origin.
    for i in $(seq 1 50); do
        out=$(backend_of /hello.txt)
        seen+="$out,"
        [ "$out" = "200 o2again" ] && break
        sleep 0.1
    done
    echo "seen: $seen"
    [[ "$seen" == *"200 o2again"* ]]
}

@test "failover: after a backend is down and back, round robin is in config order again (no drift)" {
    start_origin o1
    start_origin o2
    start_origin o3
    start_pibl "down_time = 1"
    local port2=${ORIGIN_PORT[o2]} i out seq="" prev="" cur
    stop_origin o2
    for i in 1 2 3 4 5; do
        out=$(backend_of "/hello.txt?down=$i")
        [ "$out" = "200 o1" ] || [ "$out" = "200 o3" ]
    done
    start_origin o2again "" "$port2"
    sleep 1.5                                   # past down_time: o2's port is tried again
    for i in 1 2 3 4 5 6 7 8 9; do
        out=$(backend_of "/hello.txt?back=$i")
        seq+="$out,"
        case $out in
            "200 o1") cur=1 ;;
            "200 o2again") cur=2 ;;
            "200 o3") cur=3 ;;
            *) echo "unexpected answer: $out"; return 1 ;;
        esac
        # Each answer comes from the backend after the previous one in config order.
        if [ -n "$prev" ] && [ "$cur" -ne $((prev % 3 + 1)) ]; then
            echo "sequence: $seq"
            return 1
        fi
        prev=$cur
    done
    echo "sequence: $seq"
    [ "$(grep -c '^o2again GET /hello.txt?back=' "$(origin_log o2again)")" -eq 3 ]
}

@test "failover: all backends down gives 502/503 quickly, never a hang" {
    start_origin o1
    start_origin o2
    start_pibl "down_time = 60" "connect_timeout = 2"
    stop_origin o1
    stop_origin o2
    local i out
    for i in 1 2 3 4; do
        CURL_MAX_TIME=5 run pcurl -o /dev/null -w '%{http_code}' "$(url /hello.txt)"
        echo "request $i: curl status $status code $output"
        [ "$status" -eq 0 ]
        [[ "$output" == 502 || "$output" == 503 ]]
    done
    # After the first round both are marked down: the answer is 503.
    [ "$output" = 503 ]
    pid_alive "$PIBL_PID"
}

@test "failover: a POST to a refused backend goes to the next one, and is received once" {
    start_origin o1
    start_origin o2
    start_pibl "down_time = 60"
    stop_origin o1
    run pcurl -w '\n%{http_code} %header{x-backend}' --data-binary 'once' "$(url /_upload)"
    echo "$output"
    [[ "$output" == "bytes=4 file="*$'\n'"200 o2" ]]
    [ "$(grep -c '^o2 POST /_upload' "$(origin_log o2)")" -eq 1 ]
}

@test "upstream_keepalive = on: sequential requests reuse backend connections" {
    start_origin o1
    start_pibl "upstream_keepalive = on"
    local before after
    before=$(conns_to_port "${ORIGIN_PORT[o1]}")
    run pcurl -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null -w '%{http_code}\n' \
        "$(url /hello.txt)" "$(url /hello.txt)" "$(url /hello.txt)" "$(url /hello.txt)" "$(url /hello.txt)"
    [ "$output" = $'200\n200\n200\n200\n200' ]
    after=$(conns_to_port "${ORIGIN_PORT[o1]}")
    echo "connections to the origin: before $before after $after (5 requests)"
    [ "$(grep -c . "$(origin_log o1)")" -eq 5 ]
    [ $((after - before)) -ge 1 ]
    [ $((after - before)) -lt 5 ]
}

@test "upstream_keepalive = off: each request gets a new backend connection" {
    start_origin o1
    start_pibl "upstream_keepalive = off"
    local before after
    before=$(conns_to_port "${ORIGIN_PORT[o1]}")
    run pcurl -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null -w '%{http_code}\n' \
        "$(url /hello.txt)" "$(url /hello.txt)" "$(url /hello.txt)" "$(url /hello.txt)" "$(url /hello.txt)"
    [ "$output" = $'200\n200\n200\n200\n200' ]
    after=$(conns_to_port "${ORIGIN_PORT[o1]}")
    echo "connections to the origin: before $before after $after (5 requests)"
    [ "$(grep -c . "$(origin_log o1)")" -eq 5 ]
    [ $((after - before)) -eq 5 ]
}
