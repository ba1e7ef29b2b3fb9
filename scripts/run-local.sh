#!/usr/bin/env bash
# scripts/run-local.sh - `make run`: three replicas of www/ on 8081-8083
# (pibl-origin, named web1..web3 in the X-Backend header) and PIBL on 8080
# with the shipped pibl.cfg and a 60 s cache TTL. Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

ttl=${TTL:-60}
pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

for i in 1 2 3; do
    ./pibl-origin -p "808$i" -n "web$i" -r www &
    pids+=($!)
done
./pibl pibl.cfg "$ttl" &
pids+=($!)
echo "run: PIBL on http://localhost:8080/ (web servers on 8081-8083, status page on http://127.0.0.1:8090/); Ctrl-C to stop"
wait -n "${pids[@]}" || true
