#!/usr/bin/env bash
# scripts/run-local.sh - `make run`: the demo on this machine. Three replicas of www/ (pibl-origin, named web1..web3
# in their X-Backend header) and PIBL in front of them with pibl.cfg's settings, a cache TTL and a status page.
#
# What it does, in order:
#   1. checks every port before starting anything: a port in use is named with its owner (when `ss` can tell) and
#      the variable that moves it, and nothing starts (exit 1);
#   2. writes the config of the run (pibl.cfg minus its port, admin_port and backend lines, plus this run's) into a
#      temporary folder and checks it with `pibl -t`;
#   3. starts the replicas, then PIBL, each in its own process group (so the terminal's Ctrl-C reaches only this
#      script, which then stops them in order), and waits until each one listens (START_SECS at most; a process
#      that exits first stops the start-up, exit 1). Only then does it print the banner with the URLs and PIDs;
#   4. supervises: a replica that stops is reported (with the command that restarts it by hand) and PIBL keeps
#      serving with the others; if PIBL stops, the replicas are stopped and the script exits 1;
#   5. on Ctrl-C (SIGINT) or SIGTERM: SIGTERM to PIBL first and a bounded wait while it finishes the requests in
#      flight (its shutdown_timeout + STOP_GRACE_SECS), then SIGTERM to the replicas; exit 0.
# What it refuses: it signals only the PIDs it started, never a process found by name; it never restarts a
# process on its own.
#
# Environment (defaults in brackets): PIBL_PORT [8080], WEB1_PORT WEB2_PORT WEB3_PORT [8081 8082 8083],
# PIBL_ADMIN_PORT [8090], PIBL_LISTEN [pibl.cfg's listen, else 0.0.0.0], TTL [60], PIBL_CFG [pibl.cfg] (the
# settings the run starts from), RUN_DIR [the repository] (where PIBL runs: its log_file and cache_dir are
# relative to it).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$PWD

START_SECS=10        # each process must listen within this
STOP_GRACE_SECS=5    # beyond PIBL's shutdown_timeout before SIGKILL; also a replica's SIGTERM wait
POLL_SECS=0.05       # step of every wait loop

pibl_port=${PIBL_PORT:-8080}
admin_port=${PIBL_ADMIN_PORT:-8090}
web_names=(web1 web2 web3)
web_ports=("${WEB1_PORT:-8081}" "${WEB2_PORT:-8082}" "${WEB3_PORT:-8083}")
web_vars=(WEB1_PORT WEB2_PORT WEB3_PORT)
ttl=${TTL:-60}
base_cfg=${PIBL_CFG:-pibl.cfg}
run_dir=${RUN_DIR:-$repo}

web_pids=()          # PID of web_names[i], "" once it stopped and was reaped
pibl_pid=""
tmp=""

say() { printf 'run: %s\n' "$*"; }

# alive PID: 0 while the process exists and is not a zombie.
alive() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != [ZX] ]]
}

# wait_gone PID SECS: poll until PID has exited (bounded). 0 = exited, 1 = still running.
wait_gone() {
    local i steps
    steps=$(awk -v s="$2" -v p="$POLL_SECS" 'BEGIN { printf "%d", s / p }')
    for ((i = 0; i < steps; i++)); do
        alive "$1" || return 0
        sleep "$POLL_SECS"
    done
    ! alive "$1"
}

# stop_pid PID NAME SECS: SIGTERM, wait up to SECS, SIGKILL if still there, reap. Prints nothing on success.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    if ! wait_gone "$1" "$3"; then
        say "$2 (pid $1) still running after $3 s: SIGKILL"
        kill -KILL "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
}

stop_replicas() {
    local i
    for i in "${!web_pids[@]}"; do
        [ -n "${web_pids[i]}" ] || continue
        stop_pid "${web_pids[i]}" "${web_names[i]}" "$STOP_GRACE_SECS"
        web_pids[i]=""
    done
}

# cleanup: the EXIT trap; stops whatever this script started and is still running (after an error).
cleanup() {
    trap '' INT TERM
    if [ -n "$pibl_pid" ]; then
        stop_pid "$pibl_pid" PIBL "$((shutdown_secs + STOP_GRACE_SECS))"
        pibl_pid=""
    fi
    stop_replicas
    [ -n "$tmp" ] && rm -rf "$tmp"
}

# on_signal: Ctrl-C or SIGTERM. PIBL first, so the requests in flight still have their replicas.
on_signal() {
    trap '' INT TERM
    echo
    if [ -n "$pibl_pid" ]; then
        say "stopping PIBL (pid $pibl_pid); requests in flight have up to $shutdown_secs s to finish"
        stop_pid "$pibl_pid" PIBL "$((shutdown_secs + STOP_GRACE_SECS))"
        pibl_pid=""
        say "PIBL stopped"
    fi
    say "stopping the web servers"
    stop_replicas
    say "web servers stopped"
    exit 0
}

# port_owner PORT: "by NAME, pid N" when ss shows who listens on PORT, else "by another program".
port_owner() {
    local line who
    line=$(ss -Hltnp "sport = :$1" 2>/dev/null | head -n 1)
    who=$(printf '%s' "$line" | sed -n -E 's/.*users:\(\("([^"]+)",pid=([0-9]+).*/by \1, pid \2/p')
    echo "${who:-by another program}"
}

# port_busy PORT: 0 when something listens on PORT (ss sees a listener, or a connection to loopback succeeds).
port_busy() {
    if command -v ss >/dev/null && [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; then
        return 0
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# listens HOST PORT: 0 when a connection to HOST:PORT succeeds.
listens() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# answers HOST PORT PATH: 0 when a GET of PATH on HOST:PORT gets a status line within a second.
answers() (
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$1" >&3 || exit 1
    IFS= read -r -t 1 line <&3 || exit 1
    [[ $line == HTTP/1.* ]]
) 2>/dev/null

# wait_listening NAME PID HOST PORT [PATH]: bounded wait until PID listens on HOST:PORT (and answers a GET of
# PATH when given). 1 (with a message) when the process exits first or START_SECS pass.
wait_listening() {
    local name=$1 pid=$2 host=$3 port=$4 path=${5:-} i steps rc=0
    steps=$(awk -v s="$START_SECS" -v p="$POLL_SECS" 'BEGIN { printf "%d", s / p }')
    for ((i = 0; i < steps; i++)); do
        if ! alive "$pid"; then
            wait "$pid" 2>/dev/null || rc=$?
            say "$name (pid $pid, port $port) exited before listening (exit status $rc); see its message above"
            return 1
        fi
        if [ -z "$path" ]; then
            listens "$host" "$port" && return 0
        else
            answers "$host" "$port" "$path" && return 0
        fi
        sleep "$POLL_SECS"
    done
    say "$name (pid $pid) is not listening on $host:$port after $START_SECS s"
    return 1
}

# check_ports: every port a number in 1..65535, all different, none in use. Exits 1 naming each bad one.
check_ports() {
    local names=(PIBL "status page" "${web_names[@]}") vars=(PIBL_PORT PIBL_ADMIN_PORT "${web_vars[@]}")
    local ports=("$pibl_port" "$admin_port" "${web_ports[@]}") i j alt bad=0
    for i in "${!ports[@]}"; do
        if ! [[ ${ports[i]} =~ ^[0-9]{1,5}$ ]] || [ "${ports[i]}" -lt 1 ] || [ "${ports[i]}" -gt 65535 ]; then
            say "${vars[i]}=${ports[i]} is not a port number (1-65535)"
            bad=1
            continue
        fi
        for ((j = 0; j < i; j++)); do
            if [ "${ports[j]}" = "${ports[i]}" ]; then
                say "${vars[i]} and ${vars[j]} are both ${ports[i]}: each needs its own port"
                bad=1
            fi
        done
    done
    [ "$bad" = 0 ] || exit 1
    for i in "${!ports[@]}"; do
        if port_busy "${ports[i]}"; then
            alt=$((ports[i] + 1000 > 65535 ? ports[i] - 1000 : ports[i] + 1000))
            say "port ${ports[i]} (${names[i]}) is in use ($(port_owner "${ports[i]}")); stop it or choose another port, e.g. ${vars[i]}=$alt make run"
            bad=1
        fi
    done
    [ "$bad" = 0 ] || exit 1
}

# write_config FILE: the base config without the keys this run sets, then this run's ports (and listen).
write_config() {
    local keys='port|admin_port|backend' i
    [ -n "${PIBL_LISTEN:-}" ] && keys+='|listen'
    {
        echo "# written by scripts/run-local.sh: $base_cfg with the ports of this run"
        grep -Ev "^[[:space:]]*($keys)[[:space:]]*=" "$base_cfg"
        [ -n "${PIBL_LISTEN:-}" ] && echo "listen = $PIBL_LISTEN"
        echo "port = $pibl_port"
        echo "admin_port = $admin_port"
        for i in "${!web_ports[@]}"; do
            echo "backend = web$((i + 1)) 127.0.0.1:${web_ports[i]}"
        done
    } >"$1"
}

# loopback_for ADDR: the address to reach a listener bound to ADDR (a wildcard becomes loopback).
loopback_for() {
    case $1 in
        0.0.0.0) echo 127.0.0.1 ;;
        ::) echo ::1 ;;
        *) echo "$1" ;;
    esac
}

# config_value FILE KEY DEFAULT: the last value of KEY in FILE, else DEFAULT.
config_value() {
    local v
    v=$(sed -n -E "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*([^#[:space:]]+).*/\\1/p" "$1" | tail -n 1)
    echo "${v:-$3}"
}

if [ ! -x ./pibl ] || [ ! -x ./pibl-origin ]; then
    say "./pibl or ./pibl-origin is missing: run make first"
    exit 2
fi
if [ ! -r "$base_cfg" ]; then
    say "cannot read $base_cfg (PIBL_CFG)"
    exit 2
fi
if ! [[ $ttl =~ ^[0-9]+$ ]]; then
    say "TTL=$ttl is not a number of seconds"
    exit 2
fi
check_ports

shutdown_secs=10
trap cleanup EXIT
trap on_signal INT TERM
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pibl-run.XXXXXX") || exit 2
cfg=$tmp/pibl.cfg
base_cfg=$(realpath "$base_cfg")
write_config "$cfg"
if ! ./pibl -t "$cfg" >"$tmp/check" 2>&1; then
    cat "$tmp/check"
    say "the config of the run (from $base_cfg) is not valid; nothing started"
    exit 2
fi
shutdown_secs=$(config_value "$cfg" shutdown_timeout 10)
probe_host=$(loopback_for "$(config_value "$cfg" listen 0.0.0.0)")
admin_host=$(loopback_for "$(config_value "$cfg" admin_listen 127.0.0.1)")
mkdir -p "$run_dir" || exit 2

# Own process groups (job control on while starting): the terminal's Ctrl-C then goes to this script alone.
set -m
for i in "${!web_names[@]}"; do
    ./pibl-origin -p "${web_ports[i]}" -n "${web_names[i]}" -r "$repo/www" </dev/null &
    web_pids[i]=$!
done
set +m
for i in "${!web_names[@]}"; do
    wait_listening "${web_names[i]}" "${web_pids[i]}" 127.0.0.1 "${web_ports[i]}" || exit 1
done
set -m
(cd "$run_dir" && exec "$repo/pibl" "$cfg" "$ttl") </dev/null &
pibl_pid=$!
set +m
wait_listening PIBL "$pibl_pid" "$probe_host" "$pibl_port" || exit 1
# The status page is served by PIBL's main loop: an answer means its start-up is over.
wait_listening "the status page" "$pibl_pid" "$admin_host" "$admin_port" /status.json || exit 1

for i in "${!web_names[@]}"; do
    say "${web_names[i]}  pid ${web_pids[i]}  http://127.0.0.1:${web_ports[i]}/"
done
say "PIBL  pid $pibl_pid  http://localhost:$pibl_port/  (cache TTL $ttl s; log and cache in $run_dir)"
say "status page http://$admin_host:$admin_port/"
say "ready: open http://localhost:$pibl_port/ ; kill a web server (kill ${web_pids[1]}) to watch PIBL keep serving; Ctrl-C stops PIBL, then the web servers"

# Supervise until a signal (on_signal exits) or PIBL's end.
while :; do
    for i in "${!web_pids[@]}"; do
        pid=${web_pids[i]}
        if [ -z "$pid" ] || alive "$pid"; then
            continue
        fi
        rc=0
        wait "$pid" 2>/dev/null || rc=$?
        web_pids[i]=""
        left=0
        for p in "${web_pids[@]}"; do
            [ -n "$p" ] && left=$((left + 1))
        done
        case $left in
            2) others="the other two" ;;
            1) others="the last one" ;;
            *) others="none: requests get 502/503 until one is back" ;;
        esac
        say "replica ${web_names[i]} (pid $pid, port ${web_ports[i]}) stopped (exit status $rc); PIBL keeps serving with $others"
        say "restart it by hand (in $repo): ./pibl-origin -p ${web_ports[i]} -n ${web_names[i]} -r www"
    done
    if ! alive "$pibl_pid"; then
        rc=0
        wait "$pibl_pid" 2>/dev/null || rc=$?
        say "PIBL (pid $pibl_pid) stopped (exit status $rc); stopping the web servers"
        pibl_pid=""
        stop_replicas
        exit 1
    fi
    wait -n 2>/dev/null
done
