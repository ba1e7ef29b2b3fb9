#!/usr/bin/env bash
# scripts/bench.sh - PIBL's benchmark: PIBL against nginx and
# HAProxy, on the same three origins, with wrk.
#
# What it does: generates small.html (1434 bytes) and big.bin (128 KiB) in a
# temporary folder, starts three ./pibl-origin replicas serving them (or,
# with BENCH_ORIGIN=nginx, three server blocks of one nginx serving them as
# static files; the same origins for every proxy), and for each scenario starts a fresh PIBL, nginx
# and HAProxy (equivalent configs: round robin over the three origins,
# keep-alive upstreams, access log to a file, stdout to /dev/null), then runs
# wrk against them alternating proxies (A B C A B C ...) so machine drift
# hits all of them alike. Per scenario and proxy it prints requests/s, p50
# and p99 latency (median over rounds), the proxy's CPU microseconds per
# request (utime+stime from /proc/PID/stat around each run, all rounds
# pooled), peak RSS (VmHWM, nginx: master + children) and PIBL's ratios to
# each reference, then checks the benchmark's targets.
#
# Scenarios: 1.4 KB and 128 KB, each a miss (PIBL TTL 0, no nginx/HAProxy
# cache) and a cache hit (PIBL TTL 60, nginx proxy_cache, HAProxy's RAM cache;
# warmed first), at 64 and 1000 connections, and the 1.4 KB hit at 10000
# (how the cost per request grows with active connections); 10000 idle keep-alive
# connections (scripts/idle-conns.c) held while 64 others run the 1.4 KB miss
# (VmRSS the moment they are all open, and the most seen while they are held,
# from 2 s later on, around each run; a second PIBL without them runs the
# same load in the same rounds, as the run to compare with); one 1 GiB
# response streamed through each proxy with curl (peak RSS); WebSocket echo
# round trips through 64 tunnels (scripts/ws-load.c) and the memory of
# BENCH_WS_IDLE idle tunnels held open. Two floors run as reference rows in
# the same alternating rounds: the 1.4 KB rows run nginx-mem, nginx
# answering the page from memory (return 200, no upstream: what parsing a
# request and writing an answer costs an HTTP server here), and the 1.4 KB
# misses run HAProxy in TCP mode (haproxy-tcp): a relay that parses no HTTP,
# what moving these bytes through a user-space relay costs. They are not
# competitors: the only targets they enter bound PIBL's CPU per request
# (1.1 x the relay on the 1.4 KB misses at 64 and 1000 connections, 1.2 x
# the from-memory floor on the 1.4 KB hit at 1000).
#
# What it refuses: it installs nothing (nginx or HAProxy missing: skipped with
# a note; wrk missing: exit 2), listens and connects on 127.0.0.1 only, kills
# only the PIDs it started (and nginx's children, found by parent PID) and
# writes only to its temporary folder and bench-out/ (raw wrk outputs, the
# results as TSV and the table).
# Limits: every wait is bounded; wrk and curl run under `timeout`.
#
# Usage: scripts/bench.sh [--quick]
#   --quick   PIBL only, one 2 s run of the 1.4 KB miss at 16 connections:
#             proves the script works (make test); exits 0 when wrk completed
#             requests without errors.
# Environment: BENCH_SECONDS (10) per wrk run, BENCH_ROUNDS (3) runs per
# proxy, BENCH_IDLE (10000) idle connections, BENCH_WS_IDLE (10000) idle
# WebSocket tunnels (fewer when ulimit -n is short), BENCH_STREAM_BYTES (1 GiB),
# BENCH_ONLY (regex of scenario names to run), BENCH_PROXIES ("pibl nginx
# haproxy"), BENCH_OUT (bench-out), BENCH_HOGS (0) busy shell loops that
# share the CPUs for the whole run (each stops by itself after HOG_MAX_SEC),
# BENCH_ORIGIN (pibl-origin, or nginx: static files, the stream and WebSocket
# rows skipped), BENCH_SCHED (0; 1: per-thread scheduler counters of the
# proxy, the origins and wrk around each wrk run, and a table of where the
# time per request went: run, run-queue wait, sleeps, preemptions).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PIBL_BIN=$ROOT/pibl
ORIGIN_BIN=$ROOT/pibl-origin
OUT=${BENCH_OUT:-$ROOT/bench-out}
DUR=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
IDLE_N=${BENCH_IDLE:-10000}
WS_IDLE_N=${BENCH_WS_IDLE:-10000}
STREAM_BYTES=${BENCH_STREAM_BYTES:-1073741824}
HOGS=${BENCH_HOGS:-0}
HOG_MAX_SEC=7200
ONLY=${BENCH_ONLY:-}
WANTED=${BENCH_PROXIES:-pibl nginx haproxy}
ORIGIN=${BENCH_ORIGIN:-pibl-origin}
SCHED=${BENCH_SCHED:-0}
SMALL_BYTES=1434
BIG_BYTES=131072
HIT_TTL=60
WAIT_TRIES=100                  # x 0.1 s for a process to be ready
QUICK=0
RUN_START=$(date -u '+%Y-%m-%d %H:%M UTC')

PIDS=()                         # servers we started (killed at exit)
JOBS=()                         # clients we started (killed first at exit)
HOG_PIDS=()                     # BENCH_HOGS busy loops (also in JOBS)
TMP=""
PROXIES=()                      # proxies that take part: pibl [nginx] [haproxy]
ORIGIN_PORTS=()
ORIGIN_NGINX=""                 # BENCH_ORIGIN=nginx: its master's PID
ORIGIN_PIDS=()                  # the pibl-origin replicas
declare -A PORT=() PID=()       # per proxy, for the current scenario

usage() {
    sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

die() {
    echo "bench: $*" >&2
    exit 2
}

note() {
    echo "bench: $*" >&2
}

# ------------------------------------------------------------ processes

# children_of PID: the PIDs whose parent is PID (read from /proc, by number).
children_of() {
    local f line fields
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null < "$f" || continue
        read -r -a fields <<< "${line##*) }"
        if [ "${fields[1]}" = "$1" ]; then
            f=${f#/proc/}
            echo "${f%/stat}"
        fi
    done
}

# stop_pid PID: TERM, up to 5 s to exit, then KILL; reap it when it is ours.
stop_pid() {
    local pid=$1 i
    if ! kill -TERM "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        return 0
    fi
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# stop_proxy NAME: stop the proxy of this scenario (nginx, nginx-mem: their children too).
stop_proxy() {
    local pid=${PID[$1]:-} kids=() k
    [ -n "$pid" ] || return 0
    if [ "$1" = nginx ] || [ "$1" = nginx-mem ]; then
        mapfile -t kids < <(children_of "$pid")
    fi
    stop_pid "$pid"
    for k in "${kids[@]}"; do
        kill -KILL "$k" 2>/dev/null || true
    done
    untrack "$pid"
    PID[$1]=""
}

untrack() {
    local kept=() p
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

# wait_job PID: wait for a background job we started, tracked meanwhile so
# that a signal (which interrupts `wait`, not a foreground child) stops it.
wait_job() {
    JOBS+=("$1")
    wait "$1" || true
    untrack_job "$1"
}

untrack_job() {
    local kept=() p
    for p in "${JOBS[@]}"; do
        [ "$p" = "$1" ] || kept+=("$p")
    done
    JOBS=("${kept[@]}")
}

cleanup() {
    local p
    trap - EXIT INT TERM
    # Clients first, so that no proxy waits for their exchanges to finish.
    for p in "${JOBS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${JOBS[@]}"; do
        stop_pid "$p"
    done
    for p in "${PROXIES[@]}"; do
        stop_proxy "$p"
    done
    local kids=()
    if [ -n "$ORIGIN_NGINX" ]; then
        mapfile -t kids < <(children_of "$ORIGIN_NGINX")
    fi
    for p in "${PIDS[@]}"; do
        stop_pid "$p"
    done
    for p in "${kids[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    if [ -n "$TMP" ]; then
        rm -rf "$TMP"
    fi
}

# free_port: a TCP port nobody listens on at 127.0.0.1 (the kernel picks it
# through python3 when present, else random ports are probed).
free_port() {
    local p i
    if command -v python3 > /dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null; then
            echo "$p"
            return
        fi
    done
    die "no free port found"
}

# wait_http PORT PID: until http://127.0.0.1:PORT/small.html answers 200
# (bounded), failing early when PID died.
wait_http() {
    local i code
    for ((i = 0; i < WAIT_TRIES; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1/small.html" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}

# ------------------------------------------------------------ /proc probes

# cpu_ticks PID...: utime + stime of these processes (all their threads).
cpu_ticks() {
    local total=0 pid line fields
    for pid in "$@"; do
        read -r line 2>/dev/null < "/proc/$pid/stat" || continue
        read -r -a fields <<< "${line##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# status_kb FIELD PID...: sum of a /proc/PID/status field (VmHWM, VmRSS), kB.
status_kb() {
    local field=$1 total=0 pid v
    shift
    for pid in "$@"; do
        v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# proxy_pids NAME: the processes that make up a proxy (nginx, nginx-mem: master + children).
proxy_pids() {
    local pid=${PID[$1]}
    echo "$pid"
    if [ "$1" = nginx ] || [ "$1" = nginx-mem ]; then
        children_of "$pid"
    fi
}

proxy_cpu() {
    local pids
    mapfile -t pids < <(proxy_pids "$1")
    cpu_ticks "${pids[@]}"
}

proxy_kb() {
    local pids
    mapfile -t pids < <(proxy_pids "$2")
    status_kb "$1" "${pids[@]}"
}

# ------------------------------------------------------------ set-up

make_files() {
    local www=$TMP/www head='<!doctype html><html><head><title>PIBL bench</title></head><body><p>'
    local tail='</p></body></html>' filler
    mkdir -p "$www"
    filler=$(printf 'PIBL benchmark page, 1434 bytes of HTML. %.0s' {1..40})
    printf '%s%s%s\n' "$head" "${filler:0:$((SMALL_BYTES - ${#head} - ${#tail} - 1))}" "$tail" > "$www/small.html"
    head -c "$BIG_BYTES" /dev/urandom > "$www/big.bin"
    [ "$(wc -c < "$www/small.html")" -eq "$SMALL_BYTES" ] || die "small.html has the wrong size"
}

start_origins() {
    local i j port line
    if [ "$ORIGIN" = nginx ]; then
        start_nginx_origins
        return
    fi
    for i in 1 2 3; do
        "$ORIGIN_BIN" -p 0 -r "$TMP/www" -n "o$i" > "$TMP/o$i.out" 2> "$TMP/o$i.err" &
        PIDS+=($!)
        ORIGIN_PIDS+=($!)
        port=""
        for ((j = 0; j < WAIT_TRIES; j++)); do
            line=$(head -n 1 "$TMP/o$i.out" 2>/dev/null || true)
            if [[ $line =~ listening\ on\ 127\.0\.0\.1:([0-9]+) ]]; then
                port=${BASH_REMATCH[1]}
                break
            fi
            sleep 0.1
        done
        [ -n "$port" ] || die "origin o$i did not start: $(cat "$TMP/o$i.err")"
        ORIGIN_PORTS+=("$port")
    done
}

# nginx_head DIR ACCESS_LOG: the start of every nginx config here (the same
# workers, limits, temporary paths and keep-alive), up to inside http { ....
# As root the workers would run as nobody and could not enter $TMP.
nginx_head() {
    local dir=$1 user=""
    [ "$(id -u)" -ne 0 ] || user="user root;"
    cat <<EOF
# written by scripts/bench.sh
$user
worker_processes 2;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16000; }
http {
    access_log $2;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
EOF
}

# start_nginx_origins (BENCH_ORIGIN=nginx): the three origins are three
# server blocks of one nginx (2 workers, no access log) serving $TMP/www as
# static files, so the origins cost little next to the proxies.
start_nginx_origins() {
    local dir=$TMP/origin-nginx i j port
    mkdir -p "$dir/tmp"
    for i in 1 2 3; do
        ORIGIN_PORTS+=("$(free_port)")
    done
    {
        nginx_head "$dir" off
        for port in "${ORIGIN_PORTS[@]}"; do
            echo "    server { listen 127.0.0.1:$port backlog=4096; root $TMP/www; }"
        done
        echo "}"
    } > "$dir/nginx.conf"
    nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' > /dev/null 2> "$dir/stderr" &
    ORIGIN_NGINX=$!
    PIDS+=("$ORIGIN_NGINX")
    for port in "${ORIGIN_PORTS[@]}"; do
        for ((j = 0; j < WAIT_TRIES; j++)); do
            curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/small.html" && break
            kill -0 "$ORIGIN_NGINX" 2>/dev/null || die "the nginx origin did not start: $(cat "$dir/stderr")"
            sleep 0.1
        done
        [ "$j" -lt "$WAIT_TRIES" ] || die "the nginx origin does not answer on port $port"
    done
}

start_pibl() {
    local name=${2:-pibl} dir=$TMP/${2:-pibl} p
    rm -rf "$dir"
    mkdir -p "$dir"
    PORT[$name]=$(free_port)
    {
        echo "# written by scripts/bench.sh"
        echo "listen = 127.0.0.1"
        echo "port = ${PORT[$name]}"
        for p in "${ORIGIN_PORTS[@]}"; do
            echo "backend = 127.0.0.1:$p"
        done
        echo "log_file = $dir/pibl.log"
        echo "cache_dir = cache"
        echo "keepalive_timeout = 300"
        echo "max_connections = 12000"
    } > "$dir/pibl.cfg"
    (cd "$dir" && exec "$PIBL_BIN" pibl.cfg "$1") > /dev/null 2> "$dir/stderr" &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
}

# start_nginx CACHE(0|1): a fresh nginx in the foreground, 2 workers.
start_nginx() {
    local dir=$TMP/nginx p cache=""
    rm -rf "$dir"
    mkdir -p "$dir/tmp"
    PORT[nginx]=$(free_port)
    if [ "$1" -eq 1 ]; then
        cache="proxy_cache bench; proxy_cache_valid 200 ${HIT_TTL}s; proxy_cache_lock on;
            add_header X-Cache \$upstream_cache_status;"
    fi
    {
        nginx_head "$dir" "$dir/access.log"
        cat <<EOF
    proxy_cache_path $dir/cache levels=1:2 keys_zone=bench:16m max_size=1g inactive=10m use_temp_path=off;
    upstream origins {
$(for p in "${ORIGIN_PORTS[@]}"; do echo "        server 127.0.0.1:$p;"; done)
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} backlog=4096;
        location /_ws {
            proxy_pass http://origins;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host \$http_host;
            proxy_read_timeout 3600s;
        }
        location / {
            proxy_pass http://origins;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto http;
            proxy_set_header Via "1.1 nginx";
            $cache
        }
    }
}
EOF
    } > "$dir/nginx.conf"
    nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' > /dev/null 2> "$dir/stderr" &
    PID[nginx]=$!
    PIDS+=("${PID[nginx]}")
}

# start_nginx_mem: nginx-mem, a fresh nginx (the same workers, keep-alive and
# access log as start_nginx) that answers every request with small.html from
# its configuration (return 200): the from-memory floor of the 1.4 KB rows.
start_nginx_mem() {
    local dir=$TMP/nginx-mem page
    rm -rf "$dir"
    mkdir -p "$dir/tmp"
    PORT[nginx-mem]=$(free_port)
    page=$(cat "$TMP/www/small.html")
    [[ $page != *'$'* ]] || die "small.html holds a \$, which nginx's return would read as a variable"
    page=${page//\\/\\\\}
    page=${page//\"/\\\"}
    {
        nginx_head "$dir" "$dir/access.log"
        cat <<EOF
    server {
        listen 127.0.0.1:${PORT[nginx-mem]} backlog=4096;
        location / {
            default_type text/html;
            return 200 "$page
";
        }
    }
}
EOF
    } > "$dir/nginx.conf"
    nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' > /dev/null 2> "$dir/stderr" &
    PID[nginx-mem]=$!
    PIDS+=("${PID[nginx-mem]}")
}

# start_haproxy CACHE(0|1) [MODE]: a fresh HAProxy in the foreground, 2
# threads, its log on stdout (a file). MODE http (the key haproxy): its RAM
# cache for the hit rows. MODE tcp (the key haproxy-tcp): a relay that parses
# no HTTP and copies bytes between each client connection and one origin
# connection it opened for it, so its CPU per request is what moving these
# bytes through a user-space relay costs on this machine, with no HTTP work.
start_haproxy() {
    local mode=${2:-http} name=haproxy dir p i=0 defaults cache_use="" cache_section="" backend=""
    if [ "$mode" = tcp ]; then
        name=haproxy-tcp
        defaults="    mode tcp
    log global
    option tcplog
    timeout connect 3s
    timeout client 300s
    timeout server 300s"
    else
        defaults="    mode http
    log global
    option httplog
    option forwardfor
    http-reuse always
    timeout connect 3s
    timeout client 300s
    timeout server 30s
    timeout http-keep-alive 300s
    timeout http-request 10s"
        backend="    http-request set-header X-Forwarded-Proto http
    http-request add-header Via \"1.1 haproxy\""
    fi
    dir=$TMP/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    PORT[$name]=$(free_port)
    if [ "$1" -eq 1 ]; then
        cache_section="cache bench
    total-max-size 16
    max-object-size 1048576
    max-age $HIT_TTL"
        cache_use="    http-request cache-use bench
    http-response cache-store bench"
    fi
    {
        cat <<EOF
# written by scripts/bench.sh
global
    nbthread 2
    # maxconn 12000 would want 24000 descriptors (client + server side each);
    # idle clients need only one, so a lower descriptor limit is a warning.
    maxconn 12000
    no strict-limits
    log stdout format raw local0
defaults
$defaults
$cache_section
frontend fe
    bind 127.0.0.1:${PORT[$name]}
    default_backend origins
backend origins
    balance roundrobin
$backend
$cache_use
EOF
        for p in "${ORIGIN_PORTS[@]}"; do
            i=$((i + 1))
            echo "    server o$i 127.0.0.1:$p"
        done
    } > "$dir/haproxy.cfg"
    haproxy -db -f "$dir/haproxy.cfg" > "$dir/access.log" 2> "$dir/stderr" &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
}

# start_proxies CACHE(0|1): fresh instances of every proxy, ready to serve.
start_proxies() {
    local p
    for p in "${PROXIES[@]}"; do
        case $p in
            pibl) start_pibl "$([ "$1" -eq 1 ] && echo "$HIT_TTL" || echo 0)" ;;
            nginx) start_nginx "$1" ;;
            haproxy) start_haproxy "$1" ;;
            haproxy-tcp) start_haproxy 0 tcp ;;
            nginx-mem) start_nginx_mem ;;
        esac
        if ! wait_http "${PORT[$p]}" "${PID[$p]}"; then
            cat "$TMP/$p/stderr" >&2 2>/dev/null || true
            die "$p did not start"
        fi
    done
}

stop_proxies() {
    local p
    for p in "${PROXIES[@]}"; do
        if [ -s "$TMP/$p/stderr" ]; then
            cp "$TMP/$p/stderr" "$OUT/$SCEN-$p.stderr"
        fi
        stop_proxy "$p"
    done
}

# warm PATH: fill every proxy's cache, then check that it answers from it.
warm() {
    local p i h
    for p in "${PROXIES[@]}"; do
        for ((i = 0; i < 3; i++)); do
            curl -s -o /dev/null --max-time 5 "http://127.0.0.1:${PORT[$p]}$1" || true
        done
        [ "$p" = haproxy ] && continue   # HAProxy's cache adds no header to check
        [ "$p" = nginx-mem ] && continue # no cache: the page is in its config
        h=$(curl -s -o /dev/null -D - --max-time 5 "http://127.0.0.1:${PORT[$p]}$1" | tr -d '\r' |
            awk 'tolower($1) == "x-cache:" { print $2 }' || true)
        [ "$h" = HIT ] || note "$SCEN: $p does not answer $1 from its cache (X-Cache: ${h:-none})"
    done
}

# ------------------------------------------------------------ measuring

# run_wrk PROXY ROUND CONNS PATH: one wrk run; appends a line to results.tsv:
# scenario proxy round req/s p50_ms p99_ms requests errors cpu_ticks.
run_wrk() {
    local p=$1 round=$2 conns=$3 path=$4 raw before after
    raw=$OUT/$SCEN-$p-r$round.txt
    before=$(proxy_cpu "$p")
    timeout $((DUR + 30)) wrk -t2 -c"$conns" -d"${DUR}s" --timeout 2s --latency \
        "http://127.0.0.1:${PORT[$p]}$path" > "$raw" 2>&1 &
    if [ "$SCHED" -eq 1 ]; then
        JOBS+=("$!")
        sched_run "$p" "$round" "$!"
    else
        wait_job $!
    fi
    after=$(proxy_cpu "$p")
    awk -v scen="$SCEN" -v p="$p" -v round="$round" -v ticks=$((after - before)) '
        function ms(s) {
            if (s ~ /us$/) return substr(s, 1, length(s) - 2) / 1000
            if (s ~ /ms$/) return substr(s, 1, length(s) - 2) + 0
            if (s ~ /m$/) return substr(s, 1, length(s) - 1) * 60000
            if (s ~ /s$/) return substr(s, 1, length(s) - 1) * 1000
            return s + 0
        }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        $2 == "requests" && $3 == "in" { reqs = $1 }
        $1 == "Socket" && $2 == "errors:" {
            gsub(",", ""); errs += $4 + $6 + $8 + $10
        }
        /^ *Non-2xx or 3xx responses:/ { errs += $NF }
        $1 == "Requests/sec:" { rps = $2 }
        END {
            if (reqs == "") { reqs = 0; errs += 1 }
            printf "%s\t%s\t%s\t%.0f\t%.3f\t%.3f\t%d\t%d\t%d\n", scen, p, round, rps, p50, p99, reqs, errs, ticks
        }' "$raw" >> "$OUT/results.tsv"
}

# record_rss PROXY: the proxy's VmHWM for this scenario (it started fresh).
# sched_snap WHO PID...: one line per thread of these processes: WHO, tid,
# name, run ns, run-queue wait ns, voluntary and involuntary switches
# (/proc/PID/task/TID/schedstat and status). BENCH_SCHED=1 only.
sched_snap() {
    local who=$1 pid t st vol inv name line
    shift
    for pid in "$@"; do
        for t in /proc/"$pid"/task/[0-9]*; do
            read -r st 2>/dev/null < "$t/schedstat" || continue
            read -r name 2>/dev/null < "$t/comm" || name='?'
            vol=0 inv=0
            while read -r line; do
                case $line in
                    voluntary_ctxt_switches:*) vol=${line##*[[:space:]]} ;;
                    nonvoluntary_ctxt_switches:*) inv=${line##*[[:space:]]} ;;
                esac
            done 2>/dev/null < "$t/status"
            read -r -a st <<< "$st"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$who" "${t##*/}" "${name// /_}" "${st[0]}" "${st[1]}" "$vol" "$inv"
        done
    done
}

# origin_pids: the origins' processes (an nginx origin's workers included).
origin_pids() {
    if [ -n "$ORIGIN_NGINX" ]; then
        echo "$ORIGIN_NGINX"
        children_of "$ORIGIN_NGINX"
    else
        printf '%s\n' "${ORIGIN_PIDS[@]}"
    fi
}

# sched_run PROXY ROUND WRK_PID: snapshots around one wrk run (proxy and
# origins from start to end, wrk from 0.2 s in to 0.2 s before its end, as
# its threads exist only then), their differences to sched.tsv: scenario,
# proxy, round, who, tid, name, run ns, wait ns, vol, invol, seconds seen.
sched_run() {
    local p=$1 round=$2 job=$3 wpid="" pids opids t0 t1 win start i
    start=$(date +%s%N)
    mapfile -t pids < <(proxy_pids "$p")
    mapfile -t opids < <(origin_pids)
    local log=$TMP/$p/pibl.log lines=0
    [[ $p != pibl* ]] || lines=$(wc -l < "$log")
    sched_snap proxy "${pids[@]}" > "$TMP/sched-a"
    sched_snap origin "${opids[@]}" >> "$TMP/sched-a"
    # wrk runs under timeout: its PID once it is there (a busy machine may take a while to start it: up to 5 s)
    for ((i = 0; i < 100; i++)); do
        sleep 0.05
        wpid=$(children_of "$job" | head -n 1)
        [ -z "$wpid" ] || break
    done
    sleep 0.1                                   # its threads started
    t0=$(date +%s%N)
    sched_snap wrk "$wpid" >> "$TMP/sched-a"
    # the second look 0.2 s before its end
    sleep "$(awk -v s="$start" -v now="$t0" -v d="$DUR" 'BEGIN { r = (s + d * 1e9 - 2e8 - now) / 1e9
        printf "%.2f", (r > 0.1 ? r : 0.1) }')"
    t1=$(date +%s%N)
    sched_snap wrk "$wpid" > "$TMP/sched-b"
    win=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    wait_job "$job"
    sched_snap proxy "${pids[@]}" >> "$TMP/sched-b"
    sched_snap origin "${opids[@]}" >> "$TMP/sched-b"
    awk -F'\t' -v scen="$SCEN" -v p="$p" -v round="$round" -v win="$win" -v dur="$DUR" '
        NR == FNR { k = $1 SUBSEP $2; r[k] = $4; w[k] = $5; v[k] = $6; i[k] = $7; next }
        {
            k = $1 SUBSEP $2; secs = $1 == "wrk" ? win : dur
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", scen, p, round, $1, $2, $3,
                $4 - r[k], $5 - w[k], $6 - v[k], $7 - i[k], secs
        }' "$TMP/sched-a" "$TMP/sched-b" >> "$OUT/sched.tsv"
    # PIBL's own view of the same requests: the ms= of its log lines (from
    # the parsed head to the last byte written), to set against wrk's
    if [[ $p == pibl* ]]; then
        sleep 0.2                               # the log writer's last lines
        tail -n +$((lines + 1)) "$log" | sed -n 's/.* ms=\([0-9.]*\) .*/\1/p' | sort -n |
            awk -v scen="$SCEN" -v p="$p" -v round="$round" '{ v[++n] = $1 }
                END { if (n == 0) exit; i = int(n * 0.99) + 1; if (i > n) i = n
                    printf "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", scen, p, round, n, v[int(n * 0.5) + 1], v[i], v[n] }' \
                >> "$OUT/pibl-ms.tsv"
    fi
}

record_rss() {
    printf '%s\t%s\t%s\n' "$SCEN" "$1" "$(proxy_kb VmHWM "$1")" >> "$OUT/rss.tsv"
}

wanted() {
    [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]
}

# scenario NAME CONNS PATH CACHE(0|1) [RELAY(0|1) [FLOOR(0|1)]]: fresh
# proxies, warm-up, ROUNDS alternating wrk runs, peak RSS. RELAY 1 adds
# HAProxy in TCP mode (when HAProxy takes part) as the row's reference relay;
# FLOOR 1 adds nginx answering from memory (when nginx takes part).
scenario() {
    local round p saved=("${PROXIES[@]}")
    SCEN=$1
    wanted "$SCEN" || return 0
    if [ "${5:-0}" -eq 1 ] && [[ " ${PROXIES[*]} " == *" haproxy "* ]]; then
        PROXIES+=(haproxy-tcp)
    fi
    if [ "${6:-0}" -eq 1 ] && [[ " ${PROXIES[*]} " == *" nginx "* ]]; then
        PROXIES+=(nginx-mem)
    fi
    note "$SCEN: ${#PROXIES[@]} proxies x $ROUNDS rounds x ${DUR}s"
    start_proxies "$4"
    if [ "$4" -eq 1 ]; then
        warm "$3"
    fi
    for ((round = 1; round <= ROUNDS; round++)); do
        for p in "${PROXIES[@]}"; do
            run_wrk "$p" "$round" "$2" "$3"
        done
    done
    for p in "${PROXIES[@]}"; do
        record_rss "$p"
    done
    stop_proxies
    PROXIES=("${saved[@]}")
}

# idle_scenario: IDLE_N idle keep-alive connections held on every proxy
# while 64 others run the 1.4 KB miss; VmRSS sampled around every run. A
# second PIBL (pibl-noidle) that holds none runs the same load right after
# PIBL in every round: the run without them, under the same drift.
idle_scenario() {
    local p round line rss hold_secs i helper=$TMP/idle-conns base=""
    declare -A hpid=() max_rss=() open_rss=()
    SCEN=idle-small-miss-c64
    wanted "$SCEN" || return 0
    if [ "$(ulimit -n)" -lt $((IDLE_N + 2000)) ]; then
        note "$SCEN skipped: ulimit -n is $(ulimit -n), $((IDLE_N + 2000)) needed"
        return 0
    fi
    cc -O2 -o "$helper" "$ROOT/scripts/idle-conns.c" || die "cannot compile scripts/idle-conns.c"
    note "$SCEN: $IDLE_N idle connections per proxy, ${#PROXIES[@]} proxies x $ROUNDS rounds x ${DUR}s"
    start_proxies 0
    hold_secs=$((60 + ROUNDS * (${#PROXIES[@]} + 1) * (DUR + 10)))
    for p in "${PROXIES[@]}"; do
        "$helper" 127.0.0.1 "${PORT[$p]}" "$IDLE_N" "$hold_secs" > "$TMP/idle-$p.out" 2>&1 &
        hpid[$p]=$!
        JOBS+=("${hpid[$p]}")
        line=""
        for ((i = 0; i < 1200; i++)); do
            line=$(grep -m1 'ready' "$TMP/idle-$p.out" || true)
            [ -n "$line" ] && break
            kill -0 "${hpid[$p]}" 2>/dev/null || break
            sleep 0.1
        done
        [ -n "$line" ] || note "$SCEN: idle connections to $p not ready: $(cat "$TMP/idle-$p.out")"
        # Just opened (every connection has only now had its answer) and,
        # separately, while held: a proxy may release memory of idle ones.
        open_rss[$p]=$(proxy_kb VmRSS "$p")
        max_rss[$p]=0
    done
    if [[ " ${PROXIES[*]} " == *" pibl "* ]]; then
        base=pibl-noidle
        start_pibl 0 "$base"
        wait_http "${PORT[$base]}" "${PID[$base]}" || die "$base did not start: $(cat "$TMP/$base/stderr")"
    fi
    sleep 2
    for ((round = 1; round <= ROUNDS; round++)); do
        for p in "${PROXIES[@]}"; do
            rss=$(proxy_kb VmRSS "$p")
            max_rss[$p]=$((rss > max_rss[$p] ? rss : max_rss[$p]))
            run_wrk "$p" "$round" 64 /small.html
            rss=$(proxy_kb VmRSS "$p")
            max_rss[$p]=$((rss > max_rss[$p] ? rss : max_rss[$p]))
            if [ "$p" = pibl ] && [ -n "$base" ]; then
                run_wrk "$base" "$round" 64 /small.html
            fi
        done
    done
    if [ -n "$base" ]; then
        record_rss "$base"
        stop_proxy "$base"
    fi
    for p in "${PROXIES[@]}"; do
        stop_pid "${hpid[$p]}"
        untrack_job "${hpid[$p]}"
        line=$(grep -m1 'done' "$TMP/idle-$p.out" || true)
        # idle.tsv: proxy held_at_end opened max_VmRSS_kB_while_held VmRSS_kB_just_opened
        printf '%s\t%s\t%s\t%s\t%s\n' "$p" \
            "$(sed -n 's/.* held=\([0-9]*\).*/\1/p' <<< "$line")" \
            "$(sed -n 's/.* opened=\([0-9]*\).*/\1/p' <<< "$line")" "${max_rss[$p]}" \
            "${open_rss[$p]}" >> "$OUT/idle.tsv"
        cp "$TMP/idle-$p.out" "$OUT/$SCEN-$p-helper.txt"
    done
    for p in "${PROXIES[@]}"; do
        record_rss "$p"
    done
    stop_proxies
}

# ws_scenario: WebSocket tunnels to the origins' /_ws echo. ws-echo-c64:
# 64 tunnels each sending a 32-byte message and waiting for its echo, again
# and again (scripts/ws-load.c), ROUNDS alternating runs per proxy; CPU per
# round trip (two messages through the proxy). ws-idle: WS_IDLE_N open,
# silent tunnels per fresh proxy, VmRSS 2 s after they are all open.
ws_scenario() {
    local p round line before after n helper=$TMP/ws-load
    SCEN=ws-echo-c64
    if wanted "$SCEN" || wanted ws-idle; then
        cc -O2 -D_GNU_SOURCE -o "$helper" "$ROOT/scripts/ws-load.c" || die "cannot compile scripts/ws-load.c"
    fi
    if wanted "$SCEN"; then
        note "$SCEN: ${#PROXIES[@]} proxies x $ROUNDS rounds x ${DUR}s"
        start_proxies 0
        for ((round = 1; round <= ROUNDS; round++)); do
            for p in "${PROXIES[@]}"; do
                before=$(proxy_cpu "$p")
                timeout $((DUR + 60)) "$helper" "${PORT[$p]}" 64 "$DUR" echo > "$TMP/ws-$p.out" 2>&1 &
                wait_job $! || true
                after=$(proxy_cpu "$p")
                line=$(grep -m1 'ws-load: done' "$TMP/ws-$p.out" || true)
                cp "$TMP/ws-$p.out" "$OUT/$SCEN-$p-r$round.txt"
                # ws.tsv: proxy round round_trips secs cpu_ticks
                printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$round" \
                    "$(sed -n 's/.* round_trips=\([0-9]*\).*/\1/p' <<< "$line")" \
                    "$(sed -n 's/.* secs=\([0-9.]*\).*/\1/p' <<< "$line")" $((after - before)) >> "$OUT/ws.tsv"
            done
        done
        stop_proxies
    fi
    SCEN=ws-idle
    wanted "$SCEN" || return 0
    n=$WS_IDLE_N
    if [ $((2 * n + 1000)) -gt "$(ulimit -n)" ]; then
        n=$((($(ulimit -n) - 1000) / 2))
        note "$SCEN: ulimit -n is $(ulimit -n): $n tunnels instead of $WS_IDLE_N (a proxy needs two descriptors each)"
    fi
    note "$SCEN: $n idle tunnels per proxy"
    start_proxies 0
    for p in "${PROXIES[@]}"; do
        before=$(proxy_kb VmRSS "$p")
        timeout 120 "$helper" "${PORT[$p]}" "$n" 60 idle > "$TMP/wsidle-$p.out" 2>&1 &
        local hp=$!
        JOBS+=("$hp")
        for ((round = 0; round < 600; round++)); do
            grep -q 'ws-load: ready' "$TMP/wsidle-$p.out" 2>/dev/null && break
            kill -0 "$hp" 2>/dev/null || break
            sleep 0.1
        done
        sleep 2
        after=$(proxy_kb VmRSS "$p")
        line=$(grep -m1 'ws-load: ready' "$TMP/wsidle-$p.out" || true)
        # ws-idle.tsv: proxy tunnels_open VmRSS_kB_before VmRSS_kB_with_them
        printf '%s\t%s\t%s\t%s\n' "$p" "$(sed -n 's/.* open=\([0-9]*\).*/\1/p' <<< "$line")" "$before" \
            "$after" >> "$OUT/ws-idle.tsv"
        stop_pid "$hp"
        untrack_job "$hp"
        cp "$TMP/wsidle-$p.out" "$OUT/$SCEN-$p.txt"
    done
    stop_proxies
}

# stream_scenario: one STREAM_BYTES response through each fresh proxy.
stream_scenario() {
    local p res
    SCEN=stream-1g
    wanted "$SCEN" || return 0
    note "$SCEN: $STREAM_BYTES bytes through each proxy"
    start_proxies 0
    for p in "${PROXIES[@]}"; do
        timeout 600 curl -s -o /dev/null --max-time 590 -w '%{http_code} %{size_download} %{time_total}' \
            "http://127.0.0.1:${PORT[$p]}/_bytes?size=$STREAM_BYTES" > "$TMP/stream.out" 2>&1 &
        wait_job $!
        res=$(cat "$TMP/stream.out")
        # stream.tsv: proxy status bytes seconds VmHWM_kB
        printf '%s\t%s\t%s\n' "$p" "$(tr ' ' '\t' <<< "${res:-000 0 0}")" "$(proxy_kb VmHWM "$p")" \
            >> "$OUT/stream.tsv"
    done
    stop_proxies
}

# start_hogs: BENCH_HOGS busy loops, to see each proxy on a machine whose
# CPUs something else wants too. Killed at exit like any client.
start_hogs() {
    local i
    for ((i = 0; i < HOGS; i++)); do
        timeout "$HOG_MAX_SEC" sh -c 'while :; do :; done' &
        JOBS+=("$!")
        HOG_PIDS+=("$!")
    done
}

# live_hogs: how many of them still run (all, unless one was killed).
live_hogs() {
    local p n=0
    for p in "${HOG_PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            n=$((n + 1))
        fi
    done
    echo "$n"
}

# ------------------------------------------------------------ report

# report: the Markdown tables and the target checks, from the TSV files.
report() {
    local hz
    hz=$(getconf CLK_TCK)
    echo
    echo "### PIBL benchmark, $RUN_START"
    echo
    echo "Machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr)," \
        "$(awk '/^MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo)." \
        "PIBL $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?');" \
        "$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')$(command -v nginx > /dev/null && nginx -v 2>&1 |
            sed 's/.*\//; nginx /')$(command -v haproxy > /dev/null && haproxy -v | awk 'NR == 1 { print "; haproxy", $3 }')."
    echo "Each row: median of $ROUNDS runs of ${DUR} s (wrk -t2), proxies alternated; CPU = proxy utime+stime per request."
    echo "Origins: three $([ "$ORIGIN" = nginx ] && echo "server blocks of one nginx (static files)" || echo "pibl-origin replicas")."
    if [ "$HOGS" -gt 0 ]; then
        echo "$(live_hogs) busy loops (BENCH_HOGS) shared the CPUs during every run."
    fi
    echo
    : > "$OUT/summary.tsv"
    awk -F'\t' -v hz="$hz" -v rss_file="$OUT/rss.tsv" '
        function median(list,    a, n, i, j, t) {
            n = split(list, a, " ")
            for (i = 2; i <= n; i++)
                for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
        BEGIN {
            while ((getline line < rss_file) > 0) { split(line, f, "\t"); rss[f[1] SUBSEP f[2]] = f[3] }
        }
        {
            k = $1 SUBSEP $2
            if (!(k in rps)) { order[++n] = k; if (!($1 in seen)) { seen[$1] = 1; scen[++ns] = $1 } }
            rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6
            reqs[k] += $7; errs[k] += $8; ticks[k] += $9
        }
        END {
            print "| scenario | proxy | req/s | p50 ms | p99 ms | CPU us/req | peak RSS MB | errors | PIBL / this: req/s, CPU, p99 |"
            print "|---|---|---:|---:|---:|---:|---:|---:|---|"
            for (i = 1; i <= n; i++) {
                k = order[i]; split(k, kp, SUBSEP)
                R[k] = median(rps[k]); P50[k] = median(p50[k]); P99[k] = median(p99[k])
                C[k] = reqs[k] > 0 ? ticks[k] * 1e6 / hz / reqs[k] : 0
            }
            for (i = 1; i <= n; i++) {
                k = order[i]; split(k, kp, SUBSEP); pk = kp[1] SUBSEP "pibl"
                cmp = "-"
                if (kp[2] != "pibl" && (pk in R))
                    cmp = ratio(R[pk], R[k]) " x, " ratio(C[pk], C[k]) " x, " ratio(P99[pk], P99[k]) " x"
                printf "| %s | %s | %.0f | %.2f | %.2f | %.1f | %s | %d | %s |\n", kp[1], kp[2], R[k], P50[k], P99[k],
                    C[k], (k in rss) ? sprintf("%.1f", rss[k] / 1024) : "-", errs[k], cmp
                # summary.tsv: scenario proxy rps p50 p99 cpu_us errors hwm_kB
                printf "%s\t%s\t%.0f\t%.3f\t%.3f\t%.2f\t%d\t%s\n", kp[1], kp[2], R[k], P50[k], P99[k], C[k], errs[k],
                    ((k in rss) ? rss[k] : 0) > summary
            }
        }' summary="$OUT/summary.tsv" "$OUT/results.tsv"
    if [ -s "$OUT/idle.tsv" ]; then
        echo
        echo "$IDLE_N idle keep-alive connections held while 64 others run the 1.4 KB miss:"
        echo
        echo "| proxy | idle conns opened / still open | RSS just opened MB | RSS while held MB | active req/s | vs. without them, same rounds | vs. 1.4 KB miss c64 row |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        awk -F'\t' -v sum="$OUT/summary.tsv" '
            function ratio(a, b) { return b > 0 ? sprintf("%.2f x", a / b) : "-" }
            BEGIN { while ((getline l < sum) > 0) { split(l, f, "\t"); r[f[1] SUBSEP f[2]] = f[3] } }
            {
                a = r["idle-small-miss-c64" SUBSEP $1]; b = r["small-miss-c64" SUBSEP $1]
                s = r["idle-small-miss-c64" SUBSEP $1 "-noidle"]
                printf "| %s | %s / %s | %.1f | %.1f | %.0f | %s | %s |\n", $1, $3, $2, $5 / 1024, $4 / 1024, a,
                    ratio(a, s), ratio(a, b)
            }' "$OUT/idle.tsv"
        echo
        echo "Same rounds: against pibl-noidle, a second PIBL holding no idle connection, run right after PIBL" \
            "in every round. The c64 row was measured minutes earlier."
    fi
    if [ -s "$OUT/ws.tsv" ]; then
        echo
        echo "WebSocket echo, 64 tunnels, 32-byte messages (scripts/ws-load.c; median of $ROUNDS runs):"
        echo
        echo "| proxy | round trips/s | CPU us per round trip | PIBL / this: round trips/s, CPU |"
        echo "|---|---:|---:|---|"
        awk -F'\t' -v hz="$hz" '
            function median(list,    a, n, i, j, t) {
                n = split(list, a, " ")
                for (i = 2; i <= n; i++)
                    for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            {
                if (!($1 in trips)) order[++n] = $1
                rate[$1] = rate[$1] " " ($4 > 0 ? $3 / $4 : 0); trips[$1] += $3; ticks[$1] += $5
            }
            END {
                for (i = 1; i <= n; i++) { p = order[i]; R[p] = median(rate[p]); C[p] = trips[p] > 0 ? ticks[p] * 1e6 / hz / trips[p] : 0 }
                for (i = 1; i <= n; i++) {
                    p = order[i]
                    cmp = p != "pibl" && R[p] > 0 && C[p] > 0 ? sprintf("%.2f x, %.2f x", R["pibl"] / R[p], C["pibl"] / C[p]) : "-"
                    printf "| %s | %.0f | %.1f | %s |\n", p, R[p], C[p], cmp
                    # ws-summary.tsv: proxy round_trips_per_s cpu_us
                    printf "%s\t%.0f\t%.2f\n", p, R[p], C[p] > sum
                }
            }' sum="$OUT/ws-summary.tsv" "$OUT/ws.tsv"
    fi
    if [ -s "$OUT/ws-idle.tsv" ]; then
        echo
        echo "Idle WebSocket tunnels held open (fresh proxy, VmRSS 2 s after the last one opened):"
        echo
        echo "| proxy | tunnels open | RSS before MB | RSS with them MB | KB per tunnel |"
        echo "|---|---:|---:|---:|---:|"
        awk -F'\t' '{ printf "| %s | %d | %.1f | %.1f | %.1f |\n", $1, $2, $3 / 1024, $4 / 1024,
                      ($2 > 0 ? ($4 - $3) / $2 : 0) }' "$OUT/ws-idle.tsv"
    fi
    if [ -s "$OUT/stream.tsv" ]; then
        echo
        echo "One $STREAM_BYTES-byte response streamed through (curl, fresh proxy):"
        echo
        echo "| proxy | status | bytes | seconds | MB/s | peak RSS MB |"
        echo "|---|---:|---:|---:|---:|---:|"
        awk -F'\t' '{ printf "| %s | %s | %s | %.2f | %.0f | %.1f |\n", $1, $2, $3, $4,
                      ($4 > 0 ? $3 / $4 / 1048576 : 0), $5 / 1024 }' "$OUT/stream.tsv"
    fi
}

# targets: the benchmark's targets, checked against this run (full mode only).
# sched_report (BENCH_SCHED=1): per scenario and proxy, all rounds pooled,
# where time went per request: the proxy's run time and run-queue wait,
# its voluntary switches (it slept: wake-ups) and involuntary ones (it was
# preempted), the same wait for the origins and for wrk (scaled from the
# window it was seen in); then the proxy's busiest threads.
sched_report() {
    [ -s "$OUT/sched.tsv" ] || return 0
    echo
    echo "Scheduling (BENCH_SCHED=1; /proc/PID/task/TID/schedstat and status; per request, all rounds):"
    echo
    echo "| scenario | proxy | run us | run-queue wait us | sleeps | preemptions | origins' wait us | wrk's wait us |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v res="$OUT/results.tsv" -v dur="$DUR" '
        BEGIN { while ((getline l < res) > 0) { split(l, f, "\t"); n[f[1] SUBSEP f[2]] += f[7] } }
        {
            k = $1 SUBSEP $2
            if (!(k in seen)) { seen[k] = 1; order[++m] = k }
            if ($4 == "proxy") { run[k] += $7; wait[k] += $8; vol[k] += $9; inv[k] += $10
                t = k SUBSEP $5 SUBSEP $6; if (!(t in trun)) tk[k] = tk[k] " " $5 SUBSEP $6
                trun[t] += $7; twait[t] += $8; tvol[t] += $9; tinv[t] += $10 }
            if ($4 == "origin") owait[k] += $8
            if ($4 == "wrk") wwait[k] += $8 * ($11 > 0 ? dur / $11 : 1)
        }
        END {
            for (i = 1; i <= m; i++) {
                k = order[i]; r = n[k]; if (!(r > 0)) continue
                split(k, kk, SUBSEP)
                printf "| %s | %s | %.1f | %.1f | %.2f | %.2f | %.1f | %.1f |\n", kk[1], kk[2], run[k] / r / 1000,
                    wait[k] / r / 1000, vol[k] / r, inv[k] / r, owait[k] / r / 1000, wwait[k] / r / 1000
            }
            print ""
            print "Busiest proxy threads (run us, wait us, sleeps, preemptions per request):"
            print ""
            for (i = 1; i <= m; i++) {
                k = order[i]; r = n[k]; if (!(r > 0)) continue
                split(k, kk, SUBSEP); line = ""
                c = split(tk[k], ts, " ")
                for (j = 1; j <= c; j++) { t = k SUBSEP ts[j]; best[j] = t }
                # the three with most run time
                for (a = 1; a <= c; a++) for (b = a + 1; b <= c; b++)
                    if (trun[best[b]] > trun[best[a]]) { x = best[a]; best[a] = best[b]; best[b] = x }
                for (j = 1; j <= c && j <= 3; j++) {
                    t = best[j]; split(t, q, SUBSEP)
                    line = line sprintf("%s%s/%s %.1f, %.1f, %.2f, %.2f", j > 1 ? "; " : "", q[4], q[3],
                        trun[t] / r / 1000, twait[t] / r / 1000, tvol[t] / r, tinv[t] / r)
                }
                printf "- %s, %s: %s\n", kk[1], kk[2], line
            }
        }' "$OUT/sched.tsv"
    [ -s "$OUT/pibl-ms.tsv" ] || return 0
    echo
    echo "PIBL's own view: its log's ms= (parsed head to last byte written) against wrk's latency, per run:"
    echo
    echo "| scenario | proxy | round | lines | log p50 ms | log p99 ms | log max ms | wrk p50 ms | wrk p99 ms |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v res="$OUT/results.tsv" '
        BEGIN { while ((getline l < res) > 0) { split(l, f, "\t"); k = f[1] SUBSEP f[2] SUBSEP f[3]; p50[k] = f[5]; p99[k] = f[6] } }
        { k = $1 SUBSEP $2 SUBSEP $3
          printf "| %s | %s | %s | %d | %s | %s | %s | %.2f | %.2f |\n", $1, $2, $3, $4, $5, $6, $7, p50[k], p99[k] }' \
        "$OUT/pibl-ms.tsv"
}

targets() {
    echo
    echo "Targets, this run:"
    echo
    awk -F'\t' -v idle="$OUT/idle.tsv" -v stream="$OUT/stream.tsv" -v idle_n="$IDLE_N" -v want="$STREAM_BYTES" \
        -v ws="$OUT/ws-summary.tsv" -v wsidle="$OUT/ws-idle.tsv" -v ws_n="$WS_IDLE_N" '
        function mark(ok) { return ok ? "- [x] " : "- [ ] " }
        function div(a, b) { return b > 0 ? a / b : 0 }
        {
            R[$1 SUBSEP $2] = $3; P99[$1 SUBSEP $2] = $5; C[$1 SUBSEP $2] = $6; E[$1 SUBSEP $2] = $7
            if ($2 == "pibl" && $1 ~ /-(miss|hit)-c/ && $1 !~ /^idle/) rows[++n] = $1
        }
        END {
            for (i = 1; i <= n; i++) {
                s = rows[i]; p = s SUBSEP "pibl"; ng = s SUBSEP "nginx"; ha = s SUBSEP "haproxy"
                if (ng in R) {
                    printf "%sCPU/req <= 0.8 x nginx, %s: %.2f x\n", mark(C[p] <= 0.8 * C[ng]), s, div(C[p], C[ng])
                    printf "%sreq/s >= 1.0 x nginx, %s: %.2f x\n", mark(R[p] >= R[ng]), s, div(R[p], R[ng])
                    printf "%sp99 <= nginx, %s: %.2f vs %.2f ms\n", mark(P99[p] <= P99[ng]), s, P99[p], P99[ng]
                }
                if (ha in R) {
                    printf "%sreq/s >= 1.0 x HAProxy, %s: %.2f x\n", mark(R[p] >= R[ha]), s, div(R[p], R[ha])
                    printf "%sp99 <= HAProxy, %s: %.2f vs %.2f ms\n", mark(P99[p] <= P99[ha]), s, P99[p], P99[ha]
                }
                if (s ~ /-c1000$/)
                    printf "%s1000 connections without errors, %s: %d errors\n", mark(E[p] == 0), s, E[p]
                if (s ~ /-c10000$/)
                    printf "%s10000 connections without errors, %s: %d errors\n", mark(E[p] == 0), s, E[p]
                # the floors: what is left above a relay that parses nothing, and above an HTTP server
                # answering from memory (the limits of issue 20)
                rl = s SUBSEP "haproxy-tcp"; fm = s SUBSEP "nginx-mem"
                if (s ~ /^small-miss-c(64|1000)$/ && (rl in C))
                    printf "%sCPU/req <= 1.1 x the TCP relay (haproxy-tcp), %s: %.2f x\n",
                        mark(C[p] <= 1.1 * C[rl]), s, div(C[p], C[rl])
                if (s ~ /^small-hit-c1000$/ && (fm in C))
                    printf "%sCPU/req <= 1.2 x the from-memory floor (nginx-mem), %s: %.2f x\n",
                        mark(C[p] <= 1.2 * C[fm]), s, div(C[p], C[fm])
            }
            # how CPU per request grows with active connections, against how it grows in nginx: the
            # target is the ratio; the microseconds it adds per request follow, since a proxy that costs
            # less at 64 connections shows a larger ratio for the same added cost
            for (i = 1; i <= n; i++) {
                s = rows[i]
                if (s !~ /-c(1000|10000)$/) continue
                b = s; sub(/-c[0-9]+$/, "-c64", b)
                if (!((b SUBSEP "pibl") in C) || !((b SUBSEP "nginx") in C) || !((s SUBSEP "nginx") in C)) continue
                gp = div(C[s SUBSEP "pibl"], C[b SUBSEP "pibl"]); gn = div(C[s SUBSEP "nginx"], C[b SUBSEP "nginx"])
                printf "%sCPU/req growth from 64 connections <= nginx, %s: %.2f x vs %.2f x (%+.1f vs %+.1f us/req)\n",
                    mark(gp <= gn), s, gp, gn, C[s SUBSEP "pibl"] - C[b SUBSEP "pibl"],
                    C[s SUBSEP "nginx"] - C[b SUBSEP "nginx"]
            }
            while ((getline l < idle) > 0) {
                split(l, f, "\t")
                if (f[1] != "pibl") continue
                a = R["idle-small-miss-c64" SUBSEP "pibl"]; b = R["idle-small-miss-c64" SUBSEP "pibl-noidle"]
                w = "pibl-noidle, same rounds"
                if (!(b > 0)) { b = R["small-miss-c64" SUBSEP "pibl"]; w = "1.4 KB miss c64 row" }
                printf "%s%d idle connections held: %d still open at the end\n", mark(f[2] >= idle_n), idle_n, f[2]
                printf "%sRSS with them < 128 MB: %.1f MB\n", mark(f[4] < 131072), f[4] / 1024
                if (b > 0)
                    printf "%sactive req/s within 10%% of the run without them (%s): %.2f x\n", mark(a >= 0.9 * b),
                        w, div(a, b)
            }
            while ((getline l < stream) > 0) {
                split(l, f, "\t")
                if (f[1] == "pibl")
                    printf "%s%s bytes streamed (status %s) with peak RSS < 32 MB: %.1f MB\n",
                        mark(f[2] == 200 && f[3] == want && f[5] < 32768), f[3], f[2], f[5] / 1024
            }
            while ((getline l < ws) > 0) {
                split(l, f, "\t"); WR[f[1]] = f[2]; WC[f[1]] = f[3]
            }
            for (q in WR)
                if (q != "pibl" && ("pibl" in WR))
                    printf "%sWebSocket round trips/s >= %s, CPU per round trip <= %s: %.2f x, %.2f x\n",
                        mark(WR["pibl"] >= WR[q] && WC["pibl"] <= WC[q]), q, q, div(WR["pibl"], WR[q]),
                        div(WC["pibl"], WC[q])
            while ((getline l < wsidle) > 0) {
                split(l, f, "\t")
                if (f[1] == "pibl")
                    printf "%s%d idle tunnels (of %d wanted) cost < 64 MB of RSS in all: %.1f MB (%.1f KB each)\n",
                        mark(f[2] >= ws_n && f[4] < 65536), f[2], ws_n, f[4] / 1024, div(f[4] - f[3], f[2])
            }
        }' "$OUT/summary.tsv"
}

# ------------------------------------------------------------ main

# check_range NAME VALUE MIN MAX: VALUE must be a decimal integer in range.
check_range() {
    if ! [[ $2 =~ ^[0-9]{1,12}$ ]] || [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
        die "$1 must be a number in $3..$4"
    fi
}

main() {
    case ${1:-} in
        "") ;;
        --quick) QUICK=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    check_range BENCH_SECONDS "$DUR" 1 600
    check_range BENCH_ROUNDS "$ROUNDS" 1 20
    check_range BENCH_IDLE "$IDLE_N" 1 100000
    check_range BENCH_WS_IDLE "$WS_IDLE_N" 1 20000
    check_range BENCH_STREAM_BYTES "$STREAM_BYTES" 1 68719476736
    check_range BENCH_HOGS "$HOGS" 0 64
    check_range BENCH_SCHED "$SCHED" 0 1
    case $ORIGIN in
        pibl-origin) ;;
        nginx) command -v nginx > /dev/null || die "BENCH_ORIGIN=nginx: nginx not found (Debian: apt-get install nginx)" ;;
        *) die "BENCH_ORIGIN must be pibl-origin or nginx, not '$ORIGIN'" ;;
    esac
    command -v wrk > /dev/null || die "wrk not found (Debian: apt-get install wrk)"
    command -v curl > /dev/null || die "curl not found"
    [ -x "$PIBL_BIN" ] || die "run make first ($PIBL_BIN missing)"
    [ -x "$ORIGIN_BIN" ] || die "run make first ($ORIGIN_BIN missing)"

    PROXIES=(pibl)
    if [ "$QUICK" -eq 0 ]; then
        for p in nginx haproxy; do
            [[ " $WANTED " == *" $p "* ]] || continue
            if command -v "$p" > /dev/null; then
                PROXIES+=("$p")
            else
                note "$p not installed: its rows are skipped (Debian: apt-get install $p)"
            fi
        done
    fi
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

    trap cleanup EXIT
    trap 'exit 130' INT TERM
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/pibl-bench.XXXXXX")
    mkdir -p "$OUT"
    rm -f "$OUT"/*.txt "$OUT"/*.tsv "$OUT"/*.stderr "$OUT"/table.md
    : > "$OUT/results.tsv"
    : > "$OUT/rss.tsv"
    make_files
    start_origins
    start_hogs

    if [ "$QUICK" -eq 1 ]; then
        DUR=2
        ROUNDS=1
        scenario quick-small-miss-c16 16 /small.html 0
        report | tee "$OUT/table.md"
        awk -F'\t' '$2 == "pibl" && $7 > 0 && $8 == 0 { ok = 1 } END { exit !ok }' "$OUT/results.tsv"
        return
    fi
    scenario small-miss-c64 64 /small.html 0 1 1
    scenario small-hit-c64 64 /small.html 1 0 1
    scenario big-miss-c64 64 /big.bin 0
    scenario big-hit-c64 64 /big.bin 1
    scenario small-miss-c1000 1000 /small.html 0 1 1
    scenario small-hit-c1000 1000 /small.html 1 0 1
    scenario small-hit-c10000 10000 /small.html 1 0 1
    scenario big-miss-c1000 1000 /big.bin 0
    scenario big-hit-c1000 1000 /big.bin 1
    idle_scenario
    if [ "$ORIGIN" = nginx ]; then
        if wanted stream-1g || wanted ws-echo-c64 || wanted ws-idle; then
            note "BENCH_ORIGIN=nginx: the 1 GiB stream and the WebSocket rows need pibl-origin (/_bytes, /_ws), skipped"
        fi
    else
        stream_scenario
        ws_scenario
    fi
    { report; sched_report; targets; } | tee "$OUT/table.md"
}

main "$@"
