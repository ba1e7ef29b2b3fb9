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
# With `up --proxies N` (N = 2..4) it rehearses the larger topology, several
# PIBL proxies behind an AWS Network Load Balancer: hosts pibl1..piblN (each a
# namespace with its own address, working directory and pibl.cfg naming the
# three web servers) and a host nlb running HAProxy in TCP mode (the NLB's
# stand-in: balance roundrobin over the N proxies, TCP health checks every
# 500 ms, down after 2 failures, up after 2 successes) on PIBL's port. The
# client then talks to nlb's address. `test` adds: requests spread over every
# proxy (seen in each PIBL's access log), round robin over the web servers
# behind each proxy, then pibl1 killed (SIGKILL, by its recorded PID): once
# HAProxy marks it down, 20 requests in a row all get 200; pibl1 restarted with
# the same config gets requests again. One difference from AWS: HAProxy opens
# its own connections, so PIBL sees nlb's address as the client (an NLB with
# instance targets keeps the client's address), and X-Forwarded-For names nlb.
# N = 1 (the default) is the single-PIBL rehearsal above, unchanged.
#
# What it refuses: running without root or iproute2, a second `up` over a live
# state folder, touching anything it did not record. No link reaches the root
# namespace: traffic stays inside the namespaces, and only the addresses
# assigned here are ever targeted.
#
# Limits: one rehearsal per state folder; 1 to 4 proxies; every wait is
# bounded (5 s for a process to listen or exit or for HAProxy to see a proxy
# go down or up, curl --max-time 5 per request) and every loop is counted.
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
proxies=${REHEARSAL_PROXIES:-1}
haproxy_bin=${REHEARSAL_HAPROXY:-$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)}
readonly DOWN_TIME=2                   # s a failed backend is skipped (config key down_time)
readonly MARKER=rehearsal.state        # proves a folder is ours before rm -rf
readonly MAX_PROXIES=4
readonly STATS_PORT=8404               # HAProxy's stats page, on 127.0.0.1 inside nlb
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
  --proxies N     up only: N PIBL proxies, 1 to $MAX_PROXIES [REHEARSAL_PROXIES] 1; with
                  N >= 2 they sit behind HAProxy in TCP mode standing in for
                  the AWS Network Load Balancer, and test also kills one PIBL
                  and checks the site still answers (test and down read N
                  from the state folder)
  --haproxy BIN   HAProxy binary, for N >= 2 [REHEARSAL_HAPROXY] haproxy in PATH
                  or /usr/sbin/haproxy (Debian package haproxy)
  -h, --help      this help

Hosts: PIBL A.B.C.10, web1-3 A.B.C.11-13 (port 80), client A.B.C.100.
With --proxies N >= 2: nlb (HAProxy) A.B.C.10 on PIBL's port, pibl1-N
A.B.C.21-2N, web1-3 and client as above.
Needs root, iproute2 (ip, ss) and curl; HAProxy for N >= 2.
EOF
}

# ---------------------------------------------------------------- state

# The state folder holds: MARKER (the namespace prefix), netns (one namespace
# a line, in creation order), pids (NAME PID BINARY a line), settings (subnet,
# port, TTL, number of proxies), the web servers' request logs, PIBL's working
# directory (pibl/, or pibl1/..piblN/ with nlb/ for HAProxy's config and
# output when there are several proxies).

prefix() {
    cat "$state/$MARKER"
}

ns_of() {
    printf '%s-%s\n' "$(prefix)" "$1"
}

# addr_of HOST - the host's address on the bridge.
addr_of() {
    case $1 in
    pibl | nlb) echo "$subnet.10" ;;   # never both: nlb is the front door when N >= 2
    pibl[1-4]) echo "$subnet.2${1#pibl}" ;;
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

# proxy_names - the PIBL hosts: pibl, or pibl1..piblN.
proxy_names() {
    local k
    if [ "$proxies" -eq 1 ]; then
        echo pibl
    else
        for k in $(seq 1 "$proxies"); do
            echo "pibl$k"
        done
    fi
}

# front - the host the client talks to: PIBL itself, or HAProxy (nlb).
front() {
    if [ "$proxies" -eq 1 ]; then echo pibl; else echo nlb; fi
}

# host_names - every host with a namespace on the bridge, in creation order.
host_names() {
    if [ "$proxies" -eq 1 ]; then
        echo "$HOSTS"
    else
        echo "$(proxy_names | tr '\n' ' ')nlb web1 web2 web3 client"
    fi
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

# stop NAME [SIGNAL] - send SIGNAL (TERM by default) to the recorded process
# NAME, wait up to 5 s for it to exit (then SIGKILL), forget its PID.
stop() {
    local name=$1 sig=${2:-TERM} line pid bin i
    line=$(grep "^$name " "$state/pids" | tail -n 1) || return 0
    read -r _ pid bin <<<"$line"
    if pid_is_ours "$pid" "$bin"; then
        kill "-$sig" "$pid" 2>/dev/null || true
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

# load_settings - the subnet, port, TTL and number of proxies `up` used, and
# its private copies.
load_settings() {
    subnet=$(sed -n 's/^subnet=//p' "$state/settings")
    port=$(sed -n 's/^port=//p' "$state/settings")
    ttl=$(sed -n 's/^ttl=//p' "$state/settings")
    proxies=$(sed -n 's/^proxies=//p' "$state/settings")
    [[ "$proxies" =~ ^[1-4]$ ]] || proxies=1
    pibl_bin=$state/bin/pibl
    origin_bin=$state/bin/pibl-origin
    haproxy_bin=$state/bin/haproxy
    www_dir=$state/www
}

# start_pibl NAME [OUT] - run PIBL host NAME in its working directory
# $state/NAME with its pibl.cfg; stdout and stderr to OUT (NAME/pibl.out).
start_pibl() {
    local name=$1 dir=$state/$1
    local out=${2:-$dir/pibl.out}
    spawn "$name" "$dir" "$out" "$pibl_bin" pibl.cfg "$ttl"
    wait_listen "$(ns_of "$name")" "$port"
}

# nlb_status SERVER - HAProxy's view of proxy SERVER (UP, DOWN, "UP 1/2", ...)
# from its stats page in CSV, or "unknown".
nlb_status() {
    local st
    st=$(ip netns exec "$(ns_of nlb)" curl -s --max-time 2 "http://127.0.0.1:$STATS_PORT/stats;csv" 2>/dev/null |
        awk -F , -v sv="$1" '
            NR == 1 { for (i = 1; i <= NF; i++) if ($i == "status") col = i; next }
            col && $1 == "pibl" && $2 == sv { print $col; exit }') || true
    echo "${st:-unknown}"
}

# wait_nlb SERVER STATUS - wait up to 5 s for HAProxy to see SERVER as STATUS.
wait_nlb() {
    local i
    for i in $(seq 1 50); do
        [ "$(nlb_status "$1")" = "$2" ] && return 0
        sleep 0.1
    done
    return 1
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

# write_haproxy_cfg FILE - HAProxy in TCP mode as the NLB: one listener on
# nlb's address and PIBL's port, the proxies as servers in round robin with
# fast TCP health checks, and a stats page on 127.0.0.1 inside nlb (test reads
# it to know when a proxy is marked down or up).
write_haproxy_cfg() {
    local name
    {
        echo "# haproxy.cfg - generated by scripts/cluster-rehearsal.sh: HAProxy in TCP mode standing in"
        echo "# for the AWS Network Load Balancer in front of $proxies PIBL proxies."
        echo "global"
        echo "    maxconn 1024"
        echo ""
        echo "defaults"
        echo "    mode tcp"
        echo "    timeout connect 2s"
        echo "    timeout client 30s"
        echo "    timeout server 30s"
        echo ""
        echo "frontend nlb"
        echo "    bind $(addr_of nlb):$port"
        echo "    default_backend pibl"
        echo ""
        echo "backend pibl"
        echo "    balance roundrobin"
        for name in $(proxy_names); do
            echo "    server $name $(addr_of "$name"):$port check inter 500ms fall 2 rise 2"
        done
        echo ""
        echo "listen stats"
        echo "    mode http"
        echo "    bind 127.0.0.1:$STATS_PORT"
        echo "    stats enable"
        echo "    stats uri /stats"
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
    local host ns sw n name
    [ ! -e "$state/$MARKER" ] || die "a rehearsal is already up (state $state); run '${0##*/} down' first"
    [ -x "$pibl_bin" ] || die "PIBL binary $pibl_bin not found: run make"
    [ -x "$origin_bin" ] || die "web server binary $origin_bin not found: run make"
    [ -f "$www_dir/index.html" ] || die "web app $www_dir/index.html not found"
    if [ "$proxies" -gt 1 ]; then
        [ -x "$haproxy_bin" ] || die "--proxies $proxies needs HAProxy ($haproxy_bin not found: apt-get install haproxy)"
    fi
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
    if [ "$proxies" -gt 1 ]; then
        cp "$haproxy_bin" "$state/bin/haproxy"
    fi
    pibl_bin=$state/bin/pibl
    origin_bin=$state/bin/pibl-origin
    haproxy_bin=$state/bin/haproxy
    www_dir=$state/www
    printf 'subnet=%s\nport=%s\nttl=%s\nproxies=%s\n' "$subnet" "$port" "$ttl" "$proxies" >"$state/settings"

    sw=$(ns_of sw)
    add_netns "$sw"
    ip -n "$sw" link add br0 type bridge
    ip -n "$sw" link set br0 up
    for host in $(host_names); do
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
    info "namespaces $(prefix)-{sw,$(host_names | tr ' ' ',')} on $subnet.0/24"

    for n in 1 2 3; do
        start_web "$n"
    done
    info "web1-3 serve $www_dir on $(addr_of web1):80 $(addr_of web2):80 $(addr_of web3):80"

    if [ "$proxies" -eq 1 ]; then
        mkdir -p "$state/pibl"
        write_pibl_cfg "$state/pibl/pibl.cfg"
        "$pibl_bin" -t "$state/pibl/pibl.cfg" >/dev/null
        spawn pibl "$state/pibl" "$state/pibl/pibl.out" "$pibl_bin" pibl.cfg "$ttl"
        wait_listen "$(ns_of pibl)" "$port" || die "PIBL did not listen on port $port; it said: $(tail -n 5 "$state/pibl/pibl.out")"
        trap - EXIT
        info "PIBL on http://$(addr_of pibl):$port/ (TTL $ttl s), working directory $state/pibl"
        info "try: ip netns exec $(ns_of client) curl -i http://$(addr_of pibl):$port/"
        return 0
    fi

    for name in $(proxy_names); do
        mkdir -p "$state/$name"
        write_pibl_cfg "$state/$name/pibl.cfg"
        "$pibl_bin" -t "$state/$name/pibl.cfg" >/dev/null
        start_pibl "$name" || die "$name did not listen on port $port; it said: $(tail -n 5 "$state/$name/pibl.out")"
        info "$name on http://$(addr_of "$name"):$port/ (TTL $ttl s), working directory $state/$name"
    done

    mkdir -p "$state/nlb"
    write_haproxy_cfg "$state/nlb/haproxy.cfg"
    "$haproxy_bin" -c -q -f "$state/nlb/haproxy.cfg" || die "HAProxy refused $state/nlb/haproxy.cfg"
    # -db: stay in the foreground (no fork), so the recorded PID is HAProxy's.
    spawn nlb "$state/nlb" "$state/nlb/haproxy.out" "$haproxy_bin" -db -f haproxy.cfg
    wait_listen "$(ns_of nlb)" "$port" || die "HAProxy did not listen on port $port; it said: $(tail -n 5 "$state/nlb/haproxy.out")"
    for name in $(proxy_names); do
        wait_nlb "$name" UP || die "HAProxy does not see $name up (status $(nlb_status "$name")); it said: $(tail -n 5 "$state/nlb/haproxy.out")"
    done
    trap - EXIT
    info "nlb: HAProxy (TCP mode, round robin, health checks every 500 ms) on $(addr_of nlb):$port in front of $(proxy_names | tr '\n' ' ')(config $state/nlb/haproxy.cfg)"
    info "try: ip netns exec $(ns_of client) curl -i http://$(addr_of nlb):$port/"
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

# fetch PATH - GET http://FRONT:PORT/PATH from the client namespace (FRONT is
# PIBL, or nlb with several proxies); the head goes to $state/last.head, the
# body to $state/last.body; prints the status.
fetch() {
    ip netns exec "$(ns_of client)" curl -sS --max-time 5 -o "$state/last.body" -D "$state/last.head" \
        -w '%{http_code}' "http://$(addr_of "$(front)"):$port$1" 2>>"$state/curl.err" || echo 000
}

# header NAME - the value of header NAME in the last response.
header() {
    grep -i "^$1:" "$state/last.head" | head -n 1 | cut -d : -f 2- | tr -d ' \r'
}

# next_web NAME - the web server after NAME in the config's order.
next_web() {
    case $1 in web1) echo web2 ;; web2) echo web3 ;; web3) echo web1 ;; *) echo none ;; esac
}

# in_log PATTERN [LOG] - wait up to 2 s for PIBL's log (LOG, by default
# pibl/pibl.log) to hold a line matching the fixed string PATTERN (lines may
# be written just after the answer).
in_log() {
    local i log=${2:-$state/pibl/pibl.log}
    for i in $(seq 1 20); do
        grep -qF -- "$1" "$log" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# served_by PATTERN - the proxy whose access log holds a line matching the
# fixed string PATTERN, waiting up to 2 s; "none" if no log does.
served_by() {
    local i name
    for i in $(seq 1 20); do
        for name in $(proxy_names); do
            if grep -qF -- "$1" "$state/$name/pibl.log" 2>/dev/null; then
                echo "$name"
                return 0
            fi
        done
        sleep 0.1
    done
    echo none
}

# req REQUEST-TARGET - the request line as PIBL's log quotes it.
req() {
    printf '"GET %s HTTP/1.1"' "$1"
}

# tally NAME... - "NAME xCOUNT" for every distinct NAME, in first-seen order.
tally() {
    printf '%s\n' "$@" | awk '!($0 in n) { order[++k] = $0 } { n[$0]++ }
        END { for (i = 1; i <= k; i++) printf "%s%s x%d", (i > 1 ? ", " : ""), order[i], n[order[i]] }'
}

# now_ms - milliseconds since the epoch (bash 5's EPOCHREALTIME).
now_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    echo $((10#$t / 1000))
}

# elapsed_s START_MS - seconds since START_MS, one decimal.
elapsed_s() {
    local d=$(($(now_ms) - $1))
    printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

cmd_test() {
    local code seq=() by=() i ok nonce target n seen client src src_note via log nreq name k
    local names=()
    [ -f "$state/$MARKER" ] || die "no rehearsal is up (state $state): run '${0##*/} up' first"
    load_settings
    command -v curl >/dev/null 2>&1 || die "curl is needed for the checks"
    nonce=$$-$(date +%s)
    client=$(addr_of client)
    mapfile -t names < <(proxy_names)
    if [ "$proxies" -eq 1 ]; then
        via=PIBL
        src=$client
        src_note=" (the client's address)"
        nreq=6
    else
        via="the NLB (HAProxy) and PIBL"
        src=$(addr_of nlb)
        src_note=" (nlb's address: HAProxy in TCP mode connects from its own, where an NLB keeps the client's)"
        nreq=$((3 * proxies))
        [ "$nreq" -ge 6 ] || nreq=6
    fi

    ok=0
    code=$(fetch /)
    cmp -s "$state/last.body" "$www_dir/index.html" && [ "$code" = 200 ] || ok=1
    check $ok "GET / through $via is 200 with www/index.html (status $code, from $(header X-Backend))"

    if [ "$proxies" -eq 1 ]; then
        for i in 1 2 3 4 5 6; do
            fetch "/index.html?rr=$nonce-$i" >/dev/null
            seq+=("$(header X-Backend)")
        done
        ok=0
        for i in 1 2 3 4 5; do
            [ "$(next_web "${seq[i - 1]}")" = "${seq[i]}" ] || ok=1
        done
        check $ok "round robin in config order: ${seq[*]}"
    else
        # 6 requests per proxy; each PIBL's access log tells which one answered.
        for i in $(seq 1 $((6 * proxies))); do
            fetch "/index.html?rr=$nonce-$i" >/dev/null
            seq+=("$(header X-Backend)")
        done
        for i in $(seq 1 $((6 * proxies))); do
            by+=("$(served_by "$(req "/index.html?rr=$nonce-$i")")")
        done
        ok=0
        for name in "${names[@]}"; do
            n=$(printf '%s\n' "${by[@]}" | grep -cx "$name" || true)
            [ "$n" -ge 2 ] || ok=1
        done
        check $ok "HAProxy spreads $((6 * proxies)) requests over the ${proxies} proxies (their access logs): $(tally "${by[@]}")"
        ok=0
        seen=""
        for name in "${names[@]}"; do
            local sub=()
            for i in "${!by[@]}"; do
                [ "${by[i]}" != "$name" ] || sub+=("${seq[i]}")
            done
            [ "${#sub[@]}" -ge 2 ] || ok=1
            for ((k = 1; k < ${#sub[@]}; k++)); do
                [ "$(next_web "${sub[k - 1]}")" = "${sub[k]}" ] || ok=1
            done
            seen+="; $name: ${sub[*]}"
        done
        check $ok "round robin in config order behind each proxy${seen}"
    fi

    ok=0
    fetch "/_echo?xff=$nonce" >/dev/null
    tr -d '\r' <"$state/last.body" | grep -qix "X-Forwarded-For: $src" || ok=1
    check $ok "the web server sees X-Forwarded-For: $src$src_note"
    ok=0
    if [ "$proxies" -eq 1 ]; then
        log=$state/pibl/pibl.log
        in_log "$client:" || ok=1
        in_log "\"GET /_echo?xff=$nonce HTTP/1.1\"" || ok=1
    else
        log=$state/$(served_by "$(req "/_echo?xff=$nonce")")/pibl.log
        # The client is the line's second field (ADDRESS:PORT).
        grep -F -- "$(req "/_echo?xff=$nonce")" "$log" 2>/dev/null | awk '{print $2}' | grep -q "^$src:" || ok=1
    fi
    check $ok "PIBL's log ($log) has the request and the client $src"

    if [ "$ttl" -gt 0 ]; then
        target="/about.html?cache=$nonce"
        [ -f "$www_dir/about.html" ] || target="/index.html?cache=$nonce"
        if [ "$proxies" -eq 1 ]; then
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
        else
            # Each PIBL caches on its own: 2 GETs per proxy reach the web
            # servers at most once per proxy.
            ok=0
            fetch "$target" >/dev/null
            cp "$state/last.body" "$state/first.body"
            for i in $(seq 2 $((2 * proxies))); do
                code=$(fetch "$target")
                cmp -s "$state/first.body" "$state/last.body" && [ "$code" = 200 ] || ok=1
            done
            n=$(cat "$state"/web?.req | grep -cF " GET $target" || true)
            [ "$n" -ge 1 ] && [ "$n" -le "$proxies" ] || ok=1
            check $ok "cache: $((2 * proxies)) GETs of $target through the NLB, the web servers saw it $n time(s) (at most once per proxy)"
            ok=0
            for name in "${names[@]}"; do
                [ -n "$(ls -A "$state/$name/cache" 2>/dev/null)" ] || ok=1
            done
            check $ok "cache: entries stored in each PIBL's working directory ($state/pibl1..pibl$proxies/cache)"
        fi
    fi

    stop web2
    seen=""
    ok=0
    for i in $(seq 1 "$nreq"); do
        code=$(fetch "/index.html?failover=$nonce-$i")
        [ "$code" = 200 ] || ok=1
        seen+=" $(header X-Backend)"
    done
    [[ "$seen" != *web2* ]] && [[ "$seen" == *web1* ]] && [[ "$seen" == *web3* ]] || ok=1
    check $ok "failover: web2 stopped; $nreq requests, all 200, from:$seen"

    start_web 2
    sleep $((DOWN_TIME + 1))
    seen=""
    for i in $(seq 1 "$nreq"); do
        fetch "/index.html?back=$nonce-$i" >/dev/null
        seen+=" $(header X-Backend)"
    done
    ok=0
    [[ "$seen" == *web2* ]] || ok=1
    check $ok "recovery: web2 restarted, back in rotation after down_time:$seen"

    if [ "$proxies" -gt 1 ]; then
        test_proxy_loss
    fi

    echo "rehearsal: $n_ok checks passed, $n_fail failed"
    [ "$n_fail" -eq 0 ]
}

# test_proxy_loss - kill pibl1 by its recorded PID; once HAProxy's health
# checks mark it down, AFTER requests in a row all get 200 from the others;
# restarted with the same pibl.cfg, HAProxy sends to it again.
test_proxy_loss() {
    local victim=pibl1 pid t0 ok i code st codes=() by=() n
    local -r AFTER=20
    pid=$(awk -v n="$victim" '$1 == n { p = $2 } END { print p }' "$state/pids")
    t0=$(now_ms)
    stop "$victim" KILL
    ok=0
    ! pid_is_ours "$pid" "$pibl_bin" || ok=1
    wait_nlb "$victim" DOWN || ok=1
    check $ok "$victim killed (SIGKILL to its recorded PID $pid): HAProxy marks it $(nlb_status "$victim") after $(elapsed_s "$t0") s"

    for i in $(seq 1 "$AFTER"); do
        codes+=("$(fetch "/index.html?after=$nonce-$i")")
    done
    for i in $(seq 1 "$AFTER"); do
        by+=("$(served_by "$(req "/index.html?after=$nonce-$i")")")
    done
    ok=0
    n=$(printf '%s\n' "${codes[@]}" | grep -cx 200 || true)
    [ "$n" -eq "$AFTER" ] || ok=1
    printf '%s\n' "${by[@]}" | grep -qx -e "$victim" -e none && ok=1
    check $ok "with $victim down, $AFTER requests through the NLB: $n got 200 (statuses: $(tally "${codes[@]}"); served by $(tally "${by[@]}"))"

    t0=$(now_ms)
    ok=0
    start_pibl "$victim" "$state/$victim/pibl.restart.out" || ok=1
    wait_nlb "$victim" UP || ok=1
    st="$(nlb_status "$victim") after $(elapsed_s "$t0") s"
    by=()
    for i in $(seq 1 $((2 * proxies))); do
        fetch "/index.html?again=$nonce-$i" >/dev/null
    done
    for i in $(seq 1 $((2 * proxies))); do
        by+=("$(served_by "$(req "/index.html?again=$nonce-$i")")")
    done
    n=$(printf '%s\n' "${by[@]}" | grep -cx "$victim" || true)
    [ "$n" -ge 1 ] || ok=1
    check $ok "$victim restarted (same pibl.cfg): HAProxy marks it $st and sends to it again: its log grew by $n of $((2 * proxies)) requests (served by $(tally "${by[@]}"))"
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
        --proxies) proxies=${2:?--proxies needs a number}; shift ;;
        --haproxy) haproxy_bin=${2:?}; shift ;;
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
    if ! [[ "$proxies" =~ ^[1-9]$ ]] || [ "$proxies" -gt "$MAX_PROXIES" ]; then
        die "--proxies must be a number from 1 to $MAX_PROXIES (got \"$proxies\")"
    fi
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
