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
    [ -s "$out/idle-small-miss-c64-pibl-r1.txt" ] && [ -s "$out/idle-small-miss-c64-pibl-noidle-r1.txt" ]
    [ -s "$out/idle-small-miss-c64-pibl-r2.txt" ] && [ -s "$out/idle-small-miss-c64-pibl-noidle-r2.txt" ]
    [ "$(awk -F'\t' '{ print $2 "-" $3 }' "$out/results.tsv" | tr '\n' ' ')" = "pibl-1 pibl-noidle-1 pibl-2 pibl-noidle-2 " ]
    # The idle table's ratio against it, and the target line that uses it.
    [[ $output =~ \|\ pibl\ \|\ 300\ /\ 300\ \|.*\|\ [0-9]+\.[0-9]{2}\ x\ \|\ -\ \| ]]
    [[ $output =~ active\ req/s\ within\ 10%\ of\ the\ run\ without\ them\ \(pibl-noidle,\ same\ rounds\):\ [0-9.]+\ x ]]
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

@test "bench.sh 1.4 KB miss c64: HAProxy in TCP mode runs as a reference row, outside the targets" {
    command -v wrk > /dev/null || skip "wrk not installed"
    command -v haproxy > /dev/null || skip "haproxy not installed"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    run env BENCH_PROXIES="pibl haproxy" BENCH_ONLY='^small-miss-c64$' BENCH_SECONDS=1 BENCH_ROUNDS=1 \
        BENCH_STREAM_BYTES=1 BENCH_OUT="$BATS_TEST_TMPDIR/bench-out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 120 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output =~ \|\ small-miss-c64\ \|\ haproxy-tcp\ \|\ [1-9][0-9]*\ \|.*\|\ 0\ \|\ [0-9.]+\ x,\ [0-9.]+\ x,\ [0-9.]+\ x\ \| ]]
    [[ $output =~ \|\ small-miss-c64\ \|\ haproxy\ \|\ [1-9][0-9]*\ \| ]]
    [[ $output == *"req/s >= 1.0 x HAProxy, small-miss-c64"* ]]
    ! grep -q 'haproxy-tcp' <<< "$(sed -n '/^Targets/,$p' <<< "$output")"
    [ -z "$(ls -A "$BATS_TEST_TMPDIR/tmp")" ]
}

@test "bench.sh 1.4 KB rows: nginx answering the page from memory runs as the floor row, outside the targets" {
    command -v wrk > /dev/null || skip "wrk not installed"
    command -v nginx > /dev/null || skip "nginx not installed"
    mkdir "$BATS_TEST_TMPDIR/tmp"
    run env BENCH_PROXIES="pibl nginx" BENCH_ONLY='^small-hit-c64$' BENCH_SECONDS=1 BENCH_ROUNDS=1 \
        BENCH_STREAM_BYTES=1 BENCH_OUT="$BATS_TEST_TMPDIR/bench-out" TMPDIR="$BATS_TEST_TMPDIR/tmp" timeout 120 "$BENCH"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ $output =~ \|\ small-hit-c64\ \|\ nginx-mem\ \|\ [1-9][0-9]*\ \|.*\|\ 0\ \|\ [0-9.]+\ x,\ [0-9.]+\ x,\ [0-9.]+\ x\ \| ]]
    [[ $output =~ \|\ small-hit-c64\ \|\ nginx\ \|\ [1-9][0-9]*\ \| ]]
    # the floor sent the whole page in every answer: wrk read 1434 bytes of body plus a short head per request
    local per
    per=$(awk '/requests in/ { n = $1; v = $5; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z,]+$/, "", v)
        m = (u ~ /^GB/) ? 1073741824 : (u ~ /^MB/) ? 1048576 : (u ~ /^KB/) ? 1024 : 1; printf "%d\n", v * m / n }' \
        "$BATS_TEST_TMPDIR/bench-out/small-hit-c64-nginx-mem-r1.txt")
    echo "bytes per answer: $per"
    [ "$per" -ge 1434 ] && [ "$per" -le 1700 ]
    ! grep -q 'nginx-mem' <<< "$(sed -n '/^Targets/,$p' <<< "$output")"
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
