#!/usr/bin/env bash
# tests/run-tests.sh - runs the unit tests, then every bats suite in tests/,
# and ends with one line "N passed, N failed, N skipped" (the CI contract).
# Usage: tests/run-tests.sh [bats files...]   (default: all of tests/*.bats)
set -u
cd "$(dirname "$0")/.." || exit 2

passed=0
failed=0
skipped=0

unit_out=$(./tests/unit 2>&1)
unit_rc=$?
printf '%s\n' "$unit_out" | grep -v '^unit:' || true
unit_line=$(printf '%s\n' "$unit_out" | grep '^unit:' | tail -n 1)
if [[ $unit_line =~ unit:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
    echo "$unit_line"
else
    echo "unit: did not finish (exit $unit_rc)"
    failed=$((failed + 1))
fi
if [ "$unit_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1
fi

if [ $# -gt 0 ]; then
    suites=("$@")
else
    suites=(tests/*.bats)
fi
tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
bats --tap "${suites[@]}" | tee "$tap"
while IFS= read -r line; do
    case "$line" in
        "not ok "*) failed=$((failed + 1)) ;;
        "ok "*"# skip"*) skipped=$((skipped + 1)) ;;
        "ok "*) passed=$((passed + 1)) ;;
    esac
done < "$tap"
# A suite that died before reporting shows as a plan the results do not fill.
plan=$(grep -m1 -E '^1\.\.[0-9]+' "$tap" | cut -d. -f3)
seen=$(grep -cE '^(not )?ok ' "$tap")
if [ -n "$plan" ] && [ "$seen" -lt "$plan" ]; then
    echo "bats: only $seen of $plan tests reported"
    failed=$((failed + plan - seen))
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
