#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) for SECONDS each, one after
# the other, starting from the seed corpus in fuzz/corpus (copied: what a
# run finds is not committed). Prints a line per target with its
# executions and crashes; exits non-zero if any target crashed.
#   bash fuzz/run.sh SECONDS [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  [ -d "corpus/$t" ] && cp -r "corpus/$t/." "$work/$t/"
  log="$work/$t.log"
  if cargo +nightly fuzz run -O "$t" "$work/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed=1
    tail -40 "$log"
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz $t: ${seconds}s, $execs executions, $status"
done
exit "$failed"
