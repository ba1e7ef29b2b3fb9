#!/usr/bin/env bats
# rehearsal.bats - runs scripts/cluster-rehearsal.sh up, test and down.
#
# What it does: builds the AWS topology on this machine (PIBL and three web
# servers on port 80, each in its own network namespace on a private /24, plus
# a client), lets the script's own checks run (page, round robin,
# X-Forwarded-For, cache, failover, recovery), then tears it down and checks
# that no namespace or process of it is left.
# What it refuses: it skips, saying why, when it is not root, when iproute2 or
# curl is missing, when namespaces cannot be made here, or when pibl and
# pibl-origin are not built. Traffic stays inside the namespaces it makes.

REPO="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"
REHEARSAL="$REPO/scripts/cluster-rehearsal.sh"

setup() {
    STATE="$BATS_TEST_TMPDIR/rehearsal"
    export REHEARSAL_STATE="$STATE"
}

teardown() {
    # Whatever happened, leave nothing behind (down is safe to re-run).
    if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null 2>&1; then
        "$REHEARSAL" down >/dev/null 2>&1 || true
    fi
}

# need_rehearsal - skip, saying why, where the rehearsal cannot run.
need_rehearsal() {
    [ "$(id -u)" -eq 0 ] || skip "cluster rehearsal skipped: needs root for network namespaces"
    command -v ip >/dev/null 2>&1 || skip "cluster rehearsal skipped: iproute2 (ip) not installed"
    command -v ss >/dev/null 2>&1 || skip "cluster rehearsal skipped: ss (iproute2) not installed"
    command -v curl >/dev/null 2>&1 || skip "cluster rehearsal skipped: curl not installed"
    if [ ! -x "$REPO/pibl" ] || [ ! -x "$REPO/pibl-origin" ]; then
        skip "cluster rehearsal skipped: pibl and pibl-origin are not built (run make)"
    fi
    local probe="pibl-probe-$$"
    ip netns add "$probe" 2>/dev/null || skip "cluster rehearsal skipped: cannot create network namespaces here"
    ip netns del "$probe"
}

@test "rehearsal: up, test (round robin, X-Forwarded-For, cache, failover), down leaves nothing" {
    need_rehearsal
    run "$REHEARSAL" up
    echo "$output"
    [ "$status" -eq 0 ]
    local prefix
    prefix=$(cat "$STATE/rehearsal.state")
    [ "$(ip netns list | grep -c "^$prefix-")" -eq 6 ]
    # Nothing of it in the root namespace: no link named after its hosts.
    if ip -o link show | grep -Eq ': (web[123]|client|pibl)[@:]'; then
        echo "a rehearsal link is in the root namespace"
        return 1
    fi
    local pids
    pids=$(awk '{print $2}' "$STATE/pids")
    [ "$(echo "$pids" | wc -w)" -eq 4 ]

    run "$REHEARSAL" test
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"ok   - round robin in config order"* ]]
    [[ "$output" == *"ok   - the web server sees X-Forwarded-For: 10.231.0.100"* ]]
    [[ "$output" == *"ok   - cache: the second GET"* ]]
    [[ "$output" == *"ok   - failover: web2 stopped"* ]]
    [[ "$output" == *"ok   - recovery: web2 restarted"* ]]
    [[ "$output" != *FAIL* ]]
    pids="$pids $(awk '{print $2}' "$STATE/pids")"   # web2 was restarted with a new PID

    run "$REHEARSAL" down
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(ip netns list | grep -c "^$prefix-" || true)" -eq 0 ]
    local pid
    for pid in $pids; do
        if [ -d "/proc/$pid" ] && grep -q "$STATE/bin/" "/proc/$pid/cmdline"; then
            echo "process $pid is still running"
            return 1
        fi
    done
    [ ! -e "$STATE" ]
}

@test "rehearsal: down without up and test without up say so plainly" {
    need_rehearsal
    run "$REHEARSAL" down
    [ "$status" -eq 0 ]
    [[ "$output" == *"nothing to tear down"* ]]
    run "$REHEARSAL" test
    [ "$status" -ne 0 ]
    [[ "$output" == *"no rehearsal is up"* ]]
}

@test "rehearsal: a second up over a live state folder is refused" {
    need_rehearsal
    run "$REHEARSAL" up
    [ "$status" -eq 0 ]
    run "$REHEARSAL" up
    [ "$status" -ne 0 ]
    [[ "$output" == *"already up"* ]]
    run "$REHEARSAL" down
    [ "$status" -eq 0 ]
}

@test "rehearsal: bad arguments are refused before anything is made" {
    run "$REHEARSAL" sideways
    [ "$status" -ne 0 ]
    run "$REHEARSAL" up --subnet 8.8.8
    [ "$status" -ne 0 ]
    [[ "$output" == *"private /24"* ]]
    [ ! -e "$STATE" ]
    run "$REHEARSAL" -h
    [ "$status" -eq 0 ]
    [[ "$output" == *"up|test|down"* ]]
}
