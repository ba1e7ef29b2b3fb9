#!/usr/bin/env bash
# cluster-rehearsal.sh - rehearse the AWS topology on one machine with network namespaces.
#
# What it does: `up` builds the deployment of scripts/aws-deploy.sh in miniature:
# four hosts (pibl, web1, web2, web3) plus a client, each a network namespace
# with its own address on a private /24, joined by a bridge that lives in a
# sixth namespace of its own. The web servers run the project's web app
# (pibl-origin serving www/ on port 80, as nginx does on EC2); PIBL runs in its
# namespace with a generated pibl.cfg naming the three web servers' addresses
# and a working directory of its own (./cache and ./pibl.log, as under systemd).
# `test` sends requests from the client namespace and checks the page, round
# robin, the client address in X-Forwarded-For, the cache, failover when one web
# server stops, and its return. `down` kills the processes `up` started (by
# recorded PID, after checking that the PID still runs the same program) and
# deletes the namespaces it made, which removes their links and addresses.
#
# What it refuses: running without root or iproute2, a second `up` over a live
# state folder, touching anything it did not record. No link reaches the root
# namespace: traffic stays inside the namespaces, and only the addresses
# assigned here are ever targeted.
#
# Limits: one rehearsal per state folder; every wait is bounded (5 s for a
# process to listen or exit, curl --max-time 5 per request).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)

state=${REHEARSAL_STATE:-/tmp/pibl-rehearsal}
subnet=${REHEARSAL_SUBNET:-10.231.0}   # first three octets of the /24
pibl_bin=${REHEARSAL_PIBL:-$repo_dir/pibl}
origin_bin=${REHEARSAL_ORIGIN:-$repo_dir/pibl-origin}
www_dir=${REHEARSAL_WWW:-$repo_dir/www}
port=${REHEARSAL_PORT:-8080}
ttl=${REHEARSAL_TTL:-60}
readonly DOWN_TIME=2                   # s a failed backend is skipped (config key down_time)
readonly MARKER=rehearsal.state        # proves a folder is ours before rm -rf
readonly HOSTS="pibl web1 web2 web3 client"

die() {
    printf 'cluster-rehearsal: error: %s\n' "$*" >&2
    exit 1
}

info() {
    printf '==> %s\n' "$*"
}

usage() {
    cat <<EOF
Usage: ${0##*/} up|test|down [options]

  up     build the namespaces, start three web servers and PIBL
  test   check the page, round robin, X-Forwarded-For, the cache and failover
  down   stop what 'up' started and delete its namespaces (safe to re-run)

Options (environment variable in brackets, then the default):
  --state DIR     state folder [REHEARSAL_STATE] /tmp/pibl-rehearsal
  --subnet A.B.C  the private /24 to use [REHEARSAL_SUBNET] 10.231.0
  --pibl BIN      PIBL binary [REHEARSAL_PIBL] REPO/pibl
  --origin BIN    web server binary [REHEARSAL_ORIGIN] REPO/pibl-origin
  --www DIR       the web app [REHEARSAL_WWW] REPO/www
  --port PORT     PIBL's port [REHEARSAL_PORT] 8080
  --ttl SECONDS   PIBL's cache TTL [REHEARSAL_TTL] 60
  -h, --help      this help

Hosts: PIBL A.B.C.10, web1-3 A.B.C.11-13 (port 80), client A.B.C.100.
Needs root, iproute2 (ip, ss) and curl.
EOF
}

# ---------------------------------------------------------------- state

# The state folder holds: MARKER (the namespace prefix), netns (one namespace
# a line, in creation order), pids (NAME PID BINARY a line), the web servers'
# request logs, PIBL's working directory.

prefix() {
    cat "$state/$MARKER"
}

ns_of() {
    printf '%s-%s\n' "$(prefix)" "$1"
}

# addr_of HOST - the host's address on the bridge.
addr_of() {
    case $1 in
    pibl) echo "$subnet.10" ;;
    web1) echo "$subnet.11" ;;
    web2) echo "$subnet.12" ;;
    web3) echo "$subnet.13" ;;
    client) echo "$subnet.100" ;;
    *) die "unknown host $1" ;;
    esac
}

# add_netns NAME - create a namespace, recorded first so `down` removes it even
# if a later step fails.
add_netns() {
    echo "$1" >>"$state/netns"
    ip netns add "$1"
    ip -n "$1" link set lo up
}

# pid_is_ours PID BINARY - 0 when PID is alive and still runs BINARY (a PID
# can be reused by another program once ours has exited).
pid_is_ours() {
    local argv0
    [ -r "/proc/$1/cmdline" ] || return 1
    argv0=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | head -n 1) || return 1
    [ "$argv0" = "$2" ]
}

# wait_listen NS PORT - wait up to 5 s for a listening TCP socket on PORT in NS.
wait_listen() {
    local i
    for i in $(seq 1 50); do
        if [ -n "$(ip netns exec "$1" ss -Hltn "sport = :$2" 2>/dev/null)" ]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# spawn NAME DIR LOG BINARY ARGS... - start BINARY ARGS in host NAME's
# namespace, in DIR, in the background, immune to the terminal's hangup, with
# stdout and stderr in LOG and none of the caller's extra descriptors (a test
# runner's fd 3 would keep it waiting). `ip netns exec` execs the program, so
# the PID recorded (NAME PID BINARY in the pids file) is the program's own.
spawn() {
    local name=$1 dir=$2 log=$3 bin=$4 ns pid
    shift 4
    ns=$(ns_of "$name")
    (cd "$dir" && trap '' HUP && exec ip netns exec "$ns" "$bin" "$@" </dev/null >"$log" 2>&1 3>&-) &
    pid=$!
    printf '%s %s %s\n' "$name" "$pid" "$bin" >>"$state/pids"
}

# start_web N - run web server N on its address, port 80.
start_web() {
    local name=web$1 addr
    addr=$(addr_of "$name")
    spawn "$name" "$state" "$state/$name.out" "$origin_bin" \
        -a "$addr" -p 80 -r "$www_dir" -n "$name" -l "$state/$name.req"
    wait_listen "$(ns_of "$name")" 80 || die "$name did not listen on $addr:80; it said: $(tail -n 5 "$state/$name.out")"
}

# stop NAME - SIGTERM the recorded process NAME and wait up to 5 s for it.
stop() {
    local name=$1 line pid bin i
    line=$(grep "^$name " "$state/pids" | tail -n 1) || return 0
    read -r _ pid bin <<<"$line"
    if pid_is_ours "$pid" "$bin"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            pid_is_ours "$pid" "$bin" || break
            sleep 0.1
        done
        if pid_is_ours "$pid" "$bin"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    grep -v "^$name $pid " "$state/pids" >"$state/pids.tmp" || true
    mv "$state/pids.tmp" "$state/pids"
}

# load_settings - the subnet, port and TTL `up` used, and its private copies.
load_settings() {
    subnet=$(sed -n 's/^subnet=//p' "$state/settings")
    port=$(sed -n 's/^port=//p' "$state/settings")
    ttl=$(sed -n 's/^ttl=//p' "$state/settings")
    origin_bin=$state/bin/pibl-origin
    www_dir=$state/www
}

# ---------------------------------------------------------------- up

write_pibl_cfg() {
    local n
    {
        echo "# pibl.cfg - generated by scripts/cluster-rehearsal.sh, as aws-deploy.sh writes it on EC2"
        echo "# (plus down_time = $DOWN_TIME to keep the failover check short)."
        echo "listen = 0.0.0.0"
        echo "port = $port"
        for n in 1 2 3; do
            echo "backend = web$n $(addr_of "web$n"):80"
        done
        echo "log_file = pibl.log"
        echo "cache_dir = cache"
        echo "down_time = $DOWN_TIME"
    } >"$1"
}

# on_up_exit - if `up` stops half-way, undo what it did.
on_up_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "cluster-rehearsal: up failed; removing what it made" >&2
        cmd_down >/dev/null 2>&1 || true
    fi
}

cmd_up() {
    local host ns sw n
    [ ! -e "$state/$MARKER" ] || die "a rehearsal is already up (state $state); run '${0##*/} down' first"
    [ -x "$pibl_bin" ] || die "PIBL binary $pibl_bin not found: run make"
    [ -x "$origin_bin" ] || die "web server binary $origin_bin not found: run make"
    [ -f "$www_dir/index.html" ] || die "web app $www_dir/index.html not found"
    mkdir -p "$state"
    echo "pibl-rh$$" >"$state/$MARKER"
    : >"$state/netns"
    : >"$state/pids"
    trap on_up_exit EXIT
    # Private copies: a rebuild of the repository while the rehearsal runs
    # changes nothing under it, and PIDs are matched against these paths.
    mkdir -p "$state/bin"
    cp "$pibl_bin" "$state/bin/pibl"
    cp "$origin_bin" "$state/bin/pibl-origin"
    cp -R "$www_dir" "$state/www"
    pibl_bin=$state/bin/pibl
    origin_bin=$state/bin/pibl-origin
    www_dir=$state/www
    printf 'subnet=%s\nport=%s\nttl=%s\n' "$subnet" "$port" "$ttl" >"$state/settings"

    sw=$(ns_of sw)
    add_netns "$sw"
    ip -n "$sw" link add br0 type bridge
    ip -n "$sw" link set br0 up
    for host in $HOSTS; do
        ns=$(ns_of "$host")
        add_netns "$ns"
        # The veth pair is born with one end in each namespace: nothing ever
        # appears in the root namespace.
        ip -n "$ns" link add eth0 type veth peer name "$host" netns "$sw"
        ip -n "$sw" link set "$host" master br0
        ip -n "$sw" link set "$host" up
        ip -n "$ns" addr add "$(addr_of "$host")/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
    info "namespaces $(prefix)-{sw,pibl,web1,web2,web3,client} on $subnet.0/24"

    for n in 1 2 3; do
        start_web "$n"
    done
    info "web1-3 serve $www_dir on $(addr_of web1):80 $(addr_of web2):80 $(addr_of web3):80"

    mkdir -p "$state/pibl"
    write_pibl_cfg "$state/pibl/pibl.cfg"
    "$pibl_bin" -t "$state/pibl/pibl.cfg" >/dev/null
    spawn pibl "$state/pibl" "$state/pibl/pibl.out" "$pibl_bin" pibl.cfg "$ttl"
    wait_listen "$(ns_of pibl)" "$port" || die "PIBL did not listen on port $port; it said: $(tail -n 5 "$state/pibl/pibl.out")"
    trap - EXIT
    info "PIBL on http://$(addr_of pibl):$port/ (TTL $ttl s), working directory $state/pibl"
    info "try: ip netns exec $(ns_of client) curl -i http://$(addr_of pibl):$port/"
}

# ---------------------------------------------------------------- test

n_ok=0
n_fail=0

check() {
    if [ "$1" = 0 ]; then
        n_ok=$((n_ok + 1))
        printf 'ok   - %s\n' "$2"
    else
        n_fail=$((n_fail + 1))
        printf 'FAIL - %s\n' "$2"
    fi
}

# fetch PATH - GET http://PIBL:PORT/PATH from the client namespace; the head
# goes to $state/last.head, the body to $state/last.body; prints the status.
fetch() {
    ip netns exec "$(ns_of client)" curl -sS --max-time 5 -o "$state/last.body" -D "$state/last.head" \
        -w '%{http_code}' "http://$(addr_of pibl):$port$1" 2>>"$state/curl.err" || echo 000
}

# header NAME - the value of header NAME in the last response.
header() {
    grep -i "^$1:" "$state/last.head" | head -n 1 | cut -d : -f 2- | tr -d ' \r'
}

# next_web NAME - the web server after NAME in the config's order.
next_web() {
    case $1 in web1) echo web2 ;; web2) echo web3 ;; web3) echo web1 ;; *) echo none ;; esac
}

# in_log PATTERN - wait up to 2 s for PIBL's log to hold a line matching the
# fixed string PATTERN (lines may be written just after the answer).
in_log() {
    local i
    for i in $(seq 1 20); do
        grep -qF -- "$1" "$state/pibl/pibl.log" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

cmd_test() {
    local code seq=() i ok nonce target n seen client
    [ -f "$state/$MARKER" ] || die "no rehearsal is up (state $state): run '${0##*/} up' first"
    load_settings
    command -v curl >/dev/null 2>&1 || die "curl is needed for the checks"
    nonce=$$-$(date +%s)
    client=$(addr_of client)

    ok=0
    code=$(fetch /)
    cmp -s "$state/last.body" "$www_dir/index.html" && [ "$code" = 200 ] || ok=1
    check $ok "GET / through PIBL is 200 with www/index.html (status $code, from $(header X-Backend))"

    for i in 1 2 3 4 5 6; do
        fetch "/index.html?rr=$nonce-$i" >/dev/null
        seq+=("$(header X-Backend)")
    done
    ok=0
    for i in 1 2 3 4 5; do
        [ "$(next_web "${seq[i - 1]}")" = "${seq[i]}" ] || ok=1
    done
    check $ok "round robin in config order: ${seq[*]}"

    ok=0
    fetch "/_echo?xff=$nonce" >/dev/null
    tr -d '\r' <"$state/last.body" | grep -qix "X-Forwarded-For: $client" || ok=1
    check $ok "the web server sees X-Forwarded-For: $client (the client's address)"
    ok=0
    in_log "$client:" || ok=1
    in_log "\"GET /_echo?xff=$nonce HTTP/1.1\"" || ok=1
    check $ok "PIBL's log ($state/pibl/pibl.log) has the request and the client $client"

    if [ "$ttl" -gt 0 ]; then
        target="/about.html?cache=$nonce"
        [ -f "$www_dir/about.html" ] || target="/index.html?cache=$nonce"
        fetch "$target" >/dev/null
        cp "$state/last.body" "$state/first.body"
        code=$(fetch "$target")
        n=$(cat "$state"/web?.req | grep -cF " GET $target" || true)
        ok=0
        cmp -s "$state/first.body" "$state/last.body" && [ "$code" = 200 ] && [ "$n" -eq 1 ] || ok=1
        check $ok "cache: the second GET $target comes from PIBL (web servers saw it $n time(s); X-Cache: $(header X-Cache))"
        ok=0
        [ -n "$(ls -A "$state/pibl/cache" 2>/dev/null)" ] || ok=1
        check $ok "cache: entries stored in PIBL's working directory ($state/pibl/cache)"
    fi

    stop web2
    seen=""
    ok=0
    for i in 1 2 3 4 5 6; do
        code=$(fetch "/index.html?failover=$nonce-$i")
        [ "$code" = 200 ] || ok=1
        seen+=" $(header X-Backend)"
    done
    [[ "$seen" != *web2* ]] && [[ "$seen" == *web1* ]] && [[ "$seen" == *web3* ]] || ok=1
    check $ok "failover: web2 stopped; 6 requests, all 200, from:$seen"

    start_web 2
    sleep $((DOWN_TIME + 1))
    seen=""
    for i in 1 2 3 4 5 6; do
        fetch "/index.html?back=$nonce-$i" >/dev/null
        seen+=" $(header X-Backend)"
    done
    ok=0
    [[ "$seen" == *web2* ]] || ok=1
    check $ok "recovery: web2 restarted, back in rotation after down_time:$seen"

    echo "rehearsal: $n_ok checks passed, $n_fail failed"
    [ "$n_fail" -eq 0 ]
}

# ---------------------------------------------------------------- down

cmd_down() {
    local name ns
    if [ ! -f "$state/$MARKER" ]; then
        info "no rehearsal state in $state: nothing to tear down"
        return 0
    fi
    while read -r name _; do
        [ -n "$name" ] || continue
        stop "$name"
    done < <(cat "$state/pids")
    tac "$state/netns" | while read -r ns; do
        [ -n "$ns" ] || continue
        if ip netns list | grep -qx "$ns\( .*\)\?"; then
            ip netns del "$ns"
        fi
    done
    info "stopped the rehearsal's processes and deleted its namespaces ($(prefix)-*)"
    rm -rf "$state"
}

main() {
    local cmd=${1:-}
    [ $# -eq 0 ] || shift
    while [ $# -gt 0 ]; do
        case $1 in
        -h | --help) usage; exit 0 ;;
        --state) state=${2:?--state needs a folder}; shift ;;
        --subnet) subnet=${2:?--subnet needs A.B.C}; shift ;;
        --pibl) pibl_bin=${2:?}; shift ;;
        --origin) origin_bin=${2:?}; shift ;;
        --www) www_dir=${2:?}; shift ;;
        --port) port=${2:?}; shift ;;
        --ttl) ttl=${2:?}; shift ;;
        *) die "unknown argument \"$1\" (see -h)" ;;
        esac
        shift
    done
    case $cmd in
    -h | --help | "") usage; [ -n "$cmd" ] || exit 2; exit 0 ;;
    up | test | down) ;;
    *) die "unknown command \"$cmd\" (up, test or down)" ;;
    esac
    if ! [[ "$subnet" =~ ^(10\.[0-9]{1,3}|192\.168|172\.(1[6-9]|2[0-9]|3[01]))\.[0-9]{1,3}$ ]]; then
        die "subnet \"$subnet\" must be the first three octets of a private /24, e.g. 10.231.0"
    fi
    if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
        die "bad port \"$port\""
    fi
    [[ "$ttl" =~ ^[0-9]{1,8}$ ]] || die "bad TTL \"$ttl\""
    case $state in
    /*) ;;
    *) state=$PWD/$state ;;
    esac
    [ "$(id -u)" -eq 0 ] || die "network namespaces need root: run as root (e.g. sudo $0 $cmd)"
    command -v ip >/dev/null 2>&1 || die "iproute2 (the ip command) is not installed"
    case $cmd in
    up) cmd_up ;;
    test) cmd_test ;;
    down) cmd_down ;;
    esac
}

main "$@"
