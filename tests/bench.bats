#!/usr/bin/env bats
# bench.bats - the benchmark script (scripts/bench.sh) still works.
#
# Speed is never asserted here: the benchmark measures it (README, Rendimiento).
# These tests only prove that the script runs its smallest scenario (--quick:
# PIBL alone, 2 s of wrk on the 1.4 KB miss) and prints a table row, that the
# busy loops of BENCH_HOGS run and are gone after it, that the idle row
# measures a second PIBL without idle connections in the same rounds, that
# HAProxy in TCP mode joins the 1.4 KB miss c64 row as a reference relay (when
# HAProxy is installed), that it refuses bad settings, and that its
# idle-connection helper compiles cleanly.
# wrk missing: the run test is skipped (the script installs nothing).

BENCH="$BATS_TEST_DIRNAME/../scripts/bench.sh"

@test "bench.sh --quick runs the smallest scenario and prints its table row" {
    command -v wrk > /dev/null || skip "wrk not installed"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    run env BENCH_OUT="$BATS_TEST_TMPDIR/bench-out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 60 "$BENCH" --quick
    [ "$status" -eq 0 ]
    [[ $output == *"| scenario | proxy | req/s |"* ]]
    [[ $output =~ \|\ quick-small-miss-c16\ \|\ pibl\ \|\ [1-9][0-9]*\ \| ]]
    [ -s "$BATS_TEST_TMPDIR/bench-out/quick-small-miss-c16-pibl-r1.txt" ]
    # Its temporary folder is removed at exit.
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

@test "bench.sh BENCH_HOGS: busy loops share the CPUs during the run and are stopped at its end" {
    command -v wrk > /dev/null || skip "wrk not installed"
    hog='timeout 7200 sh -c while :; do :; done'
    ! pgrep -f -x "$hog" > /dev/null || skip "another run's busy loops are running"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    run env BENCH_HOGS=2 BENCH_OUT="$BATS_TEST_TMPDIR/bench-out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 60 "$BENCH" --quick
    [ "$status" -eq 0 ]
    [[ $output == *"2 busy loops (BENCH_HOGS) shared the CPUs during every run."* ]]
    [[ $output =~ \|\ quick-small-miss-c16\ \|\ pibl\ \|\ [1-9][0-9]*\ \| ]]
    ! pgrep -f -x "$hog"
}

@test "bench.sh idle row: a second PIBL without idle connections runs in the same rounds and is the target's baseline" {
    command -v wrk > /dev/null || skip "wrk not installed"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    run env BENCH_PROXIES=pibl BENCH_ONLY='^idle-small-miss-c64$' BENCH_IDLE=300 BENCH_SECONDS=1 BENCH_ROUNDS=2 \
        BENCH_STREAM_BYTES=1 BENCH_OUT="$BATS_TEST_TMPDIR/bench-out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 120 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output =~ \|\ idle-small-miss-c64\ \|\ pibl\ \|\ [1-9][0-9]*\ \| ]]
    [[ $output =~ \|\ idle-small-miss-c64\ \|\ pibl-noidle\ \|\ [1-9][0-9]*\ \| ]]
    # Alternated: pibl, then pibl-noidle, in each round.
    local out=$BATS_TEST_TMPDIR/bench-out
    [ -s "$out/idle-small-miss-c64-pibl-r1.txt" ]
    [ -s "$out/idle-small-miss-c64-pibl-noidle-r1.txt" ]
    [ -s "$out/idle-small-miss-c64-pibl-r2.txt" ]
    [ -s "$out/idle-small-miss-c64-pibl-noidle-r2.txt" ]
    [ "$(awk -F'\t' '{ print $2 "-" $3 }' "$out/results.tsv" | tr '\n' ' ')" = "pibl-1 pibl-noidle-1 pibl-2 pibl-noidle-2 " ]
    # The idle table's ratio against it, and the target line that uses it.
    [[ $output =~ \|\ pibl\ \|\ 300\ /\ 300\ \|.*\|\ [0-9]+\.[0-9]{2}\ x\ \|\ -\ \| ]]
    [[ $output =~ active\ req/s\ within\ 10%\ of\ the\ run\ without\ them\ \(pibl-noidle,\ same\ rounds\):\ [0-9.]+\ x ]]
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

# bytes_per_answer WRK_OUTPUT: bytes wrk read per request (body and head).
bytes_per_answer() {
    awk '/requests in/ { n = $1; v = $5; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z,]+$/, "", v)
        m = (u ~ /^GB/) ? 1073741824 : (u ~ /^MB/) ? 1048576 : (u ~ /^KB/) ? 1024 : 1; printf "%d\n", v * m / n }' "$1"
}

# cpu_ratio OUT SCEN PROXY SCEN2 PROXY2: the CPU per request of PROXY in SCEN over that of PROXY2 in
# SCEN2, from summary.tsv (2 decimals; nothing when the second is missing).
cpu_ratio() {
    awk -F'\t' -v s="$2" -v p="$3" -v s2="$4" -v p2="$5" '$1 == s && $2 == p { a = $6 } $1 == s2 && $2 == p2 { b = $6 }
        END { if (b > 0) printf "%.2f\n", a / b }' "$1/summary.tsv"
}

# cpu_diff OUT SCEN PROXY SCEN2 PROXY2: the same CPU per request minus the second one, signed, in
# microseconds with 1 decimal.
cpu_diff() {
    awk -F'\t' -v s="$2" -v p="$3" -v s2="$4" -v p2="$5" '$1 == s && $2 == p { a = $6 } $1 == s2 && $2 == p2 { b = $6 }
        END { if (b > 0) printf "%+.1f\n", a - b }' "$1/summary.tsv"
}

@test "bench.sh 1.4 KB miss c64: HAProxy in TCP mode runs as a reference row and bounds PIBL's CPU per request" {
    command -v wrk > /dev/null || skip "wrk not installed"
    command -v haproxy > /dev/null || skip "haproxy not installed"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    local out=$BATS_TEST_TMPDIR/bench-out
    run env BENCH_PROXIES="pibl haproxy" BENCH_ONLY='^small-miss-c64$' BENCH_SECONDS=1 BENCH_ROUNDS=1 \
        BENCH_STREAM_BYTES=1 BENCH_OUT="$out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 120 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output =~ \|\ small-miss-c64\ \|\ haproxy-tcp\ \|\ [1-9][0-9]*\ \|.*\|\ 0\ \|\ [0-9.]+\ x,\ [0-9.]+\ x,\ [0-9.]+\ x\ \| ]]
    [[ $output =~ \|\ small-miss-c64\ \|\ haproxy\ \|\ [1-9][0-9]*\ \| ]]
    [[ $output == *"req/s >= 1.0 x HAProxy, small-miss-c64"* ]]
    # the relay enters one target only: PIBL's CPU per request at most 1.1 x its own
    local targets ratio
    targets=$(sed -n '/^Targets/,$p' <<< "$output")
    ratio=$(cpu_ratio "$out" small-miss-c64 pibl small-miss-c64 haproxy-tcp)
    [ -n "$ratio" ]
    grep -Eq "^- \[[ x]\] CPU/req <= 1\.1 x the TCP relay \(haproxy-tcp\), small-miss-c64: $ratio x\$" <<< "$targets"
    [ "$(grep -c 'haproxy-tcp' <<< "$targets")" -eq 1 ]
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

@test "bench.sh 1.4 KB hits: nginx answering the page from memory is the floor row; PIBL's CPU against it, and its growth against nginx's" {
    command -v wrk > /dev/null || skip "wrk not installed"
    command -v nginx > /dev/null || skip "nginx not installed"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    local out=$BATS_TEST_TMPDIR/bench-out
    run env BENCH_PROXIES="pibl nginx" BENCH_ONLY='^small-hit-c(64|1000)$' BENCH_SECONDS=1 BENCH_ROUNDS=1 \
        BENCH_STREAM_BYTES=1 BENCH_OUT="$out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 180 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output =~ \|\ small-hit-c64\ \|\ nginx-mem\ \|\ [1-9][0-9]*\ \|.*\|\ 0\ \|\ [0-9.]+\ x,\ [0-9.]+\ x,\ [0-9.]+\ x\ \| ]]
    [[ $output =~ \|\ small-hit-c64\ \|\ nginx\ \|\ [1-9][0-9]*\ \| ]]
    [[ $output =~ \|\ small-hit-c1000\ \|\ nginx-mem\ \|\ [1-9][0-9]*\ \| ]]
    [[ $output != *"does not answer"* ]]   # PIBL and nginx answered from their caches; nginx-mem has none to warm
    # the floor sent the whole page in every answer: wrk read 1434 bytes of body plus a short head per request
    local per
    per=$(bytes_per_answer "$out/small-hit-c64-nginx-mem-r1.txt")
    echo "bytes per answer: $per"
    [ "$per" -ge 1434 ]
    [ "$per" -le 1700 ]
    local targets ratio gp gn dp dn
    targets=$(sed -n '/^Targets/,$p' <<< "$output")
    # at 1000 connections PIBL's CPU per request is held to 1.2 x the floor's; at 64 the floor enters no target
    ratio=$(cpu_ratio "$out" small-hit-c1000 pibl small-hit-c1000 nginx-mem)
    [ -n "$ratio" ]
    grep -Eq "^- \[[ x]\] CPU/req <= 1\.2 x the from-memory floor \(nginx-mem\), small-hit-c1000: $ratio x\$" <<< "$targets"
    [ "$(grep -c 'nginx-mem' <<< "$targets")" -eq 1 ]
    # and how the cost grows from 64 to 1000 connections, PIBL's against nginx's
    gp=$(cpu_ratio "$out" small-hit-c1000 pibl small-hit-c64 pibl)
    gn=$(cpu_ratio "$out" small-hit-c1000 nginx small-hit-c64 nginx)
    dp=$(cpu_diff "$out" small-hit-c1000 pibl small-hit-c64 pibl)
    dn=$(cpu_diff "$out" small-hit-c1000 nginx small-hit-c64 nginx)
    [ -n "$gp" ]
    [ -n "$gn" ]
    [ -n "$dp" ]
    [ -n "$dn" ]
    local line
    line=$(grep -F "CPU/req growth from 64 connections <= nginx, small-hit-c1000:" <<< "$targets")
    echo "growth line: $line"
    [[ $line =~ ^-\ \[[\ x]\]\  ]]
    [ "${line#- \[?\] }" = "CPU/req growth from 64 connections <= nginx, small-hit-c1000: $gp x vs $gn x ($dp vs $dn us/req)" ]
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

@test "bench.sh 1.4 KB hit at 10000 active connections: a row, and its errors counted in the targets" {
    command -v wrk > /dev/null || skip "wrk not installed"
    [ "$(ulimit -Hn)" -ge 12000 ] || skip "ulimit -n below 12000"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    run env BENCH_PROXIES="pibl" BENCH_ONLY='^small-hit-c10000$' BENCH_SECONDS=2 BENCH_ROUNDS=1 \
        BENCH_STREAM_BYTES=1 BENCH_OUT="$BATS_TEST_TMPDIR/bench-out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 180 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output =~ \|\ small-hit-c10000\ \|\ pibl\ \|\ [1-9][0-9]*\ \| ]]
    [[ $output =~ -\ \[[\ x]\]\ 10000\ connections\ without\ errors,\ small-hit-c10000:\ [0-9]+\ errors ]]
    grep -q 'Running 2s test' "$BATS_TEST_TMPDIR/bench-out/small-hit-c10000-pibl-r1.txt"
    grep -q '10000 connections' "$BATS_TEST_TMPDIR/bench-out/small-hit-c10000-pibl-r1.txt"
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

@test "bench.sh BENCH_ORIGIN=nginx: the origins are static files served by nginx, stopped at the end; a wrong value is refused" {
    command -v wrk > /dev/null || skip "wrk not installed"
    command -v nginx > /dev/null || skip "nginx not installed"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    local out=$BATS_TEST_TMPDIR/bench-out
    run env BENCH_ORIGIN=nginx BENCH_PROXIES="pibl" BENCH_ONLY='^small-miss-c64$' BENCH_SECONDS=1 BENCH_ROUNDS=1 \
        BENCH_OUT="$out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 120 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output == *"Origins: three server blocks of one nginx (static files)."* ]]
    [[ $output =~ \|\ small-miss-c64\ \|\ pibl\ \|\ [1-9][0-9]*\ \|.*\|\ 0\ \| ]]
    # every answer was the page: 1434 bytes of body and a head
    local per
    per=$(bytes_per_answer "$out/small-miss-c64-pibl-r1.txt")
    [ "$per" -ge 1434 ]
    [ "$per" -le 1900 ]
    # nothing it started is left: no process (an nginx master or worker) holds a file of its temporary folder
    ! find /proc/[0-9]*/fd -maxdepth 1 -type l -printf '%l\n' 2>/dev/null | grep -q "^$BATS_TEST_TMPDIR/tmp/"
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
    run env BENCH_ORIGIN=apache "$BENCH" --quick
    [ "$status" -eq 2 ]
    [[ $output == *"BENCH_ORIGIN must be pibl-origin or nginx, not 'apache'"* ]]
}

@test "bench.sh BENCH_SCHED=1: where each request's time went (proxy, origins, wrk) and PIBL's log latency beside wrk's" {
    command -v wrk > /dev/null || skip "wrk not installed"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    local out=$BATS_TEST_TMPDIR/bench-out
    # 3 s: room for the wrk window (from 0.1 s after wrk starts to 0.2 s before its end) on a loaded machine
    run env BENCH_SCHED=1 BENCH_PROXIES="pibl" BENCH_ONLY='^small-miss-c64$' BENCH_SECONDS=3 BENCH_ROUNDS=1 \
        BENCH_OUT="$out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 120 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output =~ \|\ small-miss-c64\ \|\ pibl\ \|\ [0-9]+\.[0-9]\ \|\ [0-9]+\.[0-9]\ \|\ [0-9]+\.[0-9]{2}\ \|\ [0-9]+\.[0-9]{2}\ \|\ [0-9]+\.[0-9]\ \|\ [0-9]+\.[0-9]\ \| ]]
    [[ $output == *"- small-miss-c64, pibl: pibl/"* ]]
    # the three kinds of process were seen, each with run time
    local who
    for who in proxy origin wrk; do
        awk -F'\t' -v w="$who" '$4 == w && $7 > 0 { ok = 1 } END { exit !ok }' "$out/sched.tsv"
    done
    # the proxy's run time per request is its CPU per request (the same counters, two ways)
    local reqs
    reqs=$(awk -F'\t' '$2 == "pibl" { print $7 }' "$out/results.tsv")
    awk -F'\t' -v reqs="$reqs" 'NR == FNR { if ($2 == "pibl") cpu = $6; next } $4 == "proxy" { run += $7 }
        END { r = run / reqs / 1000; print "CPU", cpu, "us, run", r, "us"; exit !(cpu > 0 && r > 0.75 * cpu && r < 1.33 * cpu) }' \
        "$out/summary.tsv" "$out/sched.tsv"
    # PIBL's log saw about as many requests as wrk completed, and its p99 is at most its max
    local lines p99 max
    read -r lines p99 max < <(awk -F'\t' '{ print $4, $6, $7 }' "$out/pibl-ms.tsv")
    echo "wrk $reqs, log $lines, p99 $p99, max $max"
    [ "$lines" -ge $((reqs * 9 / 10)) ]
    [ "$lines" -le $((reqs * 11 / 10 + 100)) ]
    awk -v a="$p99" -v b="$max" 'BEGIN { exit !(a > 0 && a <= b) }'
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

@test "bench.sh WebSocket rows: echo round trips through 64 tunnels, and the memory of idle tunnels" {
    command -v wrk > /dev/null || skip "wrk not installed"
    command -v cc > /dev/null || skip "no C compiler for scripts/ws-load.c"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    run env BENCH_PROXIES="pibl" BENCH_ONLY='^ws-' BENCH_SECONDS=1 BENCH_ROUNDS=1 BENCH_WS_IDLE=200 \
        BENCH_OUT="$BATS_TEST_TMPDIR/bench-out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 180 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output =~ WebSocket\ echo.*\|\ pibl\ \|\ [1-9][0-9]*\ \|\ [0-9.]+\ \| ]]
    [[ $output =~ \|\ pibl\ \|\ 200\ \|\ [0-9.]+\ \|\ [0-9.]+\ \|\ [0-9.]+\ \| ]]
    [[ $output == *"200 idle tunnels (of 200 wanted) cost < 64 MB of RSS in all"* ]]
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

@test "bench.sh refuses a bad setting and an unknown option with status 2" {
    run env BENCH_SECONDS=abc "$BENCH" --quick
    [ "$status" -eq 2 ]
    [[ $output == *"BENCH_SECONDS must be a number"* ]]
    run env BENCH_HOGS=65 "$BENCH" --quick
    [ "$status" -eq 2 ]
    [[ $output == *"BENCH_HOGS must be a number in 0..64"* ]]
    run "$BENCH" --fast
    [ "$status" -eq 2 ]
}

@test "bench.sh -h prints its usage" {
    run "$BENCH" -h
    [ "$status" -eq 0 ]
    [[ $output == *"--quick"* ]]
}

@test "scripts/idle-conns.c compiles without warnings" {
    command -v cc > /dev/null || skip "no C compiler"
    run cc -O2 -Wall -Wextra -Werror -o "$BATS_TEST_TMPDIR/idle-conns" "$BATS_TEST_DIRNAME/../scripts/idle-conns.c"
    [ "$status" -eq 0 ]
    run "$BATS_TEST_TMPDIR/idle-conns"
    [ "$status" -eq 2 ]
}
