#!/usr/bin/env bash
# cache-tests.sh - run the public HTTP caching conformance suite
# (http-cache-tests from npm, https://cache-tests.fyi/) through PIBL and
# print its score: tests passed, required tests failed, optional ones failed.
#
#   scripts/cache-tests.sh [-o RESULTS.json] [-i TEST-ID] [-H on|off] [-k]
#
# The suite's own origin runs on a free loopback port, PIBL in front of it
# on another, with a fresh cache folder, TTL 60 and cache_heuristic off
# (-H on for the default behaviour). -k keeps the work folder. Needs node
# and npm; the suite is installed once into $CACHE_TESTS_DIR
# (default ~/.cache/pibl-cache-tests). Exit 0 when the suite ran.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
suite_dir=${CACHE_TESTS_DIR:-$HOME/.cache/pibl-cache-tests}
suite_version=0.4.5
out='' id='' heuristic=off keep=0
while getopts "o:i:H:kh" opt; do
    case $opt in
    o) out=$OPTARG ;;
    i) id=$OPTARG ;;
    H) heuristic=$OPTARG ;;
    k) keep=1 ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
case $heuristic in on|off) ;; *) echo "cache-tests.sh: -H takes on or off" >&2; exit 2 ;; esac
command -v node > /dev/null || { echo "cache-tests.sh: node is needed" >&2; exit 1; }

pkg=$suite_dir/node_modules/http-cache-tests
if [ ! -f "$pkg/cli.mjs" ]; then
    mkdir -p "$suite_dir"
    (cd "$suite_dir" && npm install --no-audit --no-fund --silent "http-cache-tests@$suite_version" > /dev/null) ||
        { echo "cache-tests.sh: npm could not install http-cache-tests@$suite_version" >&2; exit 1; }
fi
[ -x "$here/pibl" ] || make -C "$here" -s pibl

work=$(mktemp -d /tmp/pibl-cache-tests.XXXXXX)
origin_pid='' pibl_pid=''
cleanup() {
    [ -n "$pibl_pid" ] && kill "$pibl_pid" 2> /dev/null && wait "$pibl_pid" 2> /dev/null
    [ -n "$origin_pid" ] && kill "$origin_pid" 2> /dev/null && wait "$origin_pid" 2> /dev/null
    if [ "$keep" = 1 ]; then echo "work folder kept: $work" >&2; else rm -rf "$work"; fi
    return 0
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0
        sleep 0.1
    done
    echo "cache-tests.sh: nothing listens on port $1" >&2
    return 1
}

oport=$(free_port)
(cd "$pkg" && exec env npm_config_protocol=http npm_config_port="$oport" \
    npm_config_pidfile="$work/origin.pid" node server/server.mjs) > "$work/origin.log" 2>&1 &
origin_pid=$!
wait_port "$oport"

pport=$(free_port)
cat > "$work/pibl.cfg" << EOF
port = $pport
listen = 127.0.0.1
backend = 127.0.0.1:$oport
cache_dir = $work/cache
log_file = $work/pibl.log
cache_heuristic = $heuristic
EOF
(cd "$work" && exec "$here/pibl" "$work/pibl.cfg" 60) > "$work/pibl.out" 2>&1 &
pibl_pid=$!
wait_port "$pport"

(cd "$pkg" && env npm_config_base="http://127.0.0.1:$pport" npm_config_id="$id" npm_package_config_id="" \
    node --no-warnings cli.mjs) > "$work/results.json" 2> "$work/cli.err" ||
    { echo "cache-tests.sh: the suite failed to run:" >&2; tail "$work/cli.err" >&2; exit 1; }
if [ -n "$id" ]; then
    cat "$work/results.json"
    exit 0
fi
[ -n "$out" ] && cp "$work/results.json" "$out"

# The score as cache-tests.fyi shows it: a test passes when its result is
# true; a test whose dependency did not pass is not scored; a failed test is
# required unless its kind is optimal or check; "Setup" results are the
# suite's own set-up failing (counted apart).
# shellcheck disable=SC2016  # JavaScript, not shell
(cd "$pkg" && node --no-warnings --input-type=module -e '
import tests from "./tests/index.mjs"
import surrogate from "./tests/surrogate-control.mjs"
import fs from "fs"
tests.push(surrogate)
const res = JSON.parse(fs.readFileSync(process.argv[1], "utf8"))
const byId = {}
for (const suite of tests) for (const t of suite.tests) byId[t.id] = t
const passed = id => res[id] === true
const depFailed = t => (t.depends_on || []).some(d => !passed(d))
let pass = 0, req = 0, opt = 0, chk = 0, setup = 0, dep = 0
const lines = []
for (const t of Object.values(byId)) {
  if (t.browser_only) continue
  const r = res[t.id]
  if (r === undefined) continue
  if (r === true) { pass++; continue }
  if (depFailed(t)) { dep++; lines.push(["dep", t.id]); continue }
  if (Array.isArray(r) && r[0] === "Setup") { setup++; lines.push(["setup", t.id]); continue }
  const kind = t.kind || "required"
  if (kind === "required") req++
  else if (kind === "optimal") opt++
  else chk++
  lines.push([kind, t.id + (Array.isArray(r) && r[1] ? ": " + r[1] : "")])
}
for (const [k, id] of lines) console.log(`${k.padEnd(8)} ${id}`)
console.log(`${pass} passed, ${req} required failed, ${opt} optional failed, ${chk} checks no, ${setup} setup failures, ${dep} not scored (a dependency failed)`)
' "$work/results.json")
