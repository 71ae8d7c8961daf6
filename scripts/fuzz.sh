#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for a bounded time with cargo-fuzz (libFuzzer), on stable
# Rust without a sanitizer (the core is safe Rust: what is looked for is panics and
# failed assertions, with debug assertions and overflow checks on). Each target starts
# from a scratch copy of its seeds in fuzz/corpus/, so the committed corpus never grows.
# Prints one line per target with the inputs run; a crash, a hang (10 s on one input) or
# running out of memory is saved under fuzz/artifacts/<target>/ and fails the script.
# Installs cargo-fuzz first if `cargo fuzz` is missing.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-30}
. scripts/common.sh

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cd fuzz
cargo fuzz build --sanitizer none
final_stat() { sed -n "s/^stat::$1: *//p" "$2"; }
failed=0
for target in $(cargo fuzz list); do
  cp -r "corpus/$target" "$WORK/$target"
  log="$WORK/$target.log"
  # One process, one worker; the seeds' directory is the corpus the run adds to.
  if cargo fuzz run --sanitizer none "$target" "$WORK/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    printf '%-14s %10s executions in %s s (%s/s)\n' "$target" \
      "$(final_stat number_of_executed_units "$log")" "$SECONDS_PER_TARGET" "$(final_stat average_exec_per_sec "$log")"
  else
    failed=1
    printf '%-14s FAILED after %s executions\n' "$target" "$(final_stat number_of_executed_units "$log")"
    grep -E -A 1 "panicked at" "$log" | sed 's/^/    /' || true
    grep -E "ERROR: libFuzzer|Test unit written to" "$log" | sed 's/^/    /' || tail -n 30 "$log"
    echo "    reproduce: (cd fuzz && cargo fuzz run --sanitizer none $target <the input above>)"
  fi
done
exit "$failed"
