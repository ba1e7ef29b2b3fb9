#!/usr/bin/env bats
# rehearsal.bats - runs scripts/cluster-rehearsal.sh up, test and down.
#
# What it does: builds the AWS topology on this machine (PIBL and three web
# servers on port 80, each in its own network namespace on a private /24, plus
# a client), lets the script's own checks run (page, round robin,
# X-Forwarded-For, cache, failover, recovery), then tears it down and checks
# that no namespace or process of it is left. Then the same with two PIBL
# proxies behind HAProxy in TCP mode (up --proxies 2, the AWS Network Load
# Balancer's stand-in), where the script's test also kills one PIBL and checks
# that the site keeps answering and that the restarted PIBL gets requests.
# What it refuses: it skips, saying why, when it is not root, when iproute2 or
# curl is missing, when namespaces cannot be made here, when pibl and
# pibl-origin are not built, or (two proxies) when HAProxy is not installed.
# Traffic stays inside the namespaces it makes.

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

# need_haproxy - skip, saying why, where HAProxy is not installed.
need_haproxy() {
    HAPROXY=$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)
    [ -x "$HAPROXY" ] || skip "two-proxy rehearsal skipped: haproxy not installed (Debian package haproxy)"
}

# left_behind PREFIX PIDS... - print what of a rehearsal is still there: its
# namespaces, its processes (by PID, or anything running from its bin/).
left_behind() {
    local prefix=$1 pid f
    shift
    ip netns list | grep "^$prefix-" || true
    for pid in "$@"; do
        if [ -d "/proc/$pid" ] && grep -q "$STATE/bin/" "/proc/$pid/cmdline" 2>/dev/null; then
            echo "process $pid is still running"
        fi
    done
    for f in /proc/[0-9]*/cmdline; do
        if grep -q "$STATE/bin/" "$f" 2>/dev/null; then
            echo "a process runs from $STATE/bin: $f"
        fi
    done
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

@test "rehearsal: two proxies behind HAProxy in TCP mode (standing in for the NLB): spread, one PIBL killed, the site still answers, down leaves nothing" {
    need_rehearsal
    need_haproxy
    run "$REHEARSAL" up --proxies 2
    echo "$output"
    [ "$status" -eq 0 ]
    local prefix
    prefix=$(cat "$STATE/rehearsal.state")
    # sw, pibl1, pibl2, nlb, web1-3, client
    [ "$(ip netns list | grep -c "^$prefix-")" -eq 8 ]
    grep -qx 'proxies=2' "$STATE/settings"
    grep -q 'mode tcp' "$STATE/nlb/haproxy.cfg"
    grep -q 'balance roundrobin' "$STATE/nlb/haproxy.cfg"
    [ "$(grep -c '^ *server pibl[12] .* check ' "$STATE/nlb/haproxy.cfg")" -eq 2 ]
    if ip -o link show | grep -Eq ': (web[123]|client|pibl[1-4]?|nlb)[@:]'; then
        echo "a rehearsal link is in the root namespace"
        return 1
    fi
    local pids
    pids=$(awk '{print $2}' "$STATE/pids")
    [ "$(echo "$pids" | wc -w)" -eq 6 ]   # web1-3, pibl1, pibl2, haproxy
    [ "$(awk '$1 == "nlb" { print $3 }' "$STATE/pids")" = "$STATE/bin/haproxy" ]

    run "$REHEARSAL" test
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"ok   - GET / through the NLB (HAProxy) and PIBL is 200"* ]]
    [[ "$output" == *"ok   - HAProxy spreads 12 requests over the 2 proxies"* ]]
    [[ "$output" == *"ok   - round robin in config order behind each proxy"* ]]
    [[ "$output" == *"ok   - cache: 4 GETs of"* ]]
    [[ "$output" == *"ok   - failover: web2 stopped"* ]]
    [[ "$output" == *"ok   - recovery: web2 restarted"* ]]
    [[ "$output" == *"ok   - pibl1 killed (SIGKILL"*"HAProxy marks it DOWN"* ]]
    [[ "$output" == *"ok   - with pibl1 down, 20 requests through the NLB: 20 got 200"* ]]
    [[ "$output" == *"ok   - pibl1 restarted (same pibl.cfg): HAProxy marks it UP"* ]]
    [[ "$output" != *FAIL* ]]
    pids="$pids $(awk '{print $2}' "$STATE/pids")"   # web2 and pibl1 were restarted

    run "$REHEARSAL" down
    echo "$output"
    [ "$status" -eq 0 ]
    local left
    # shellcheck disable=SC2086 # one PID a word
    left=$(left_behind "$prefix" $pids)
    [ -z "$left" ] || { echo "$left"; return 1; }
    [ ! -e "$STATE" ]
    run "$REHEARSAL" down
    [ "$status" -eq 0 ]
    [[ "$output" == *"nothing to tear down"* ]]
}

@test "rehearsal: --proxies 0, 9 and x are refused before anything is made" {
    local before="" n
    if command -v ip >/dev/null 2>&1; then
        before=$(ip netns list 2>/dev/null || true)
    fi
    for n in 0 9 x 10 -1 ""; do
        run "$REHEARSAL" up --proxies "$n"
        echo "--proxies '$n': $output"
        [ "$status" -ne 0 ]
        [ ! -e "$STATE" ]
    done
    for n in 0 9 x; do
        run "$REHEARSAL" up --proxies "$n"
        [[ "$output" == *"--proxies must be a number from 1 to 4 (got \"$n\")"* ]]
    done
    if command -v ip >/dev/null 2>&1; then
        [ "$(ip netns list 2>/dev/null || true)" = "$before" ]
    fi
    run "$REHEARSAL" -h
    [ "$status" -eq 0 ]
    [[ "$output" == *"--proxies N"* ]]
    # Two proxies without HAProxy: refused, nothing made.
    if [ "$(id -u)" -eq 0 ] && [ -x "$REPO/pibl" ] && [ -x "$REPO/pibl-origin" ]; then
        run env REHEARSAL_HAPROXY=/nonexistent/haproxy "$REHEARSAL" up --proxies 2
        [ "$status" -ne 0 ]
        [[ "$output" == *"needs HAProxy"* ]]
        [ ! -e "$STATE" ]
    fi
}
