#!/usr/bin/env bash
# One `serve` process and many concurrent cold `pull`s over loopback TCP: for each store,
# one pull alone, then PULLS at once, with the aggregate rate of chunk bytes and the
# serving process's peak RSS. Prints a Markdown table.
#
#   scripts/bench-serve-many.sh                  # 980,000 small chunks to 20 pulls, then
#                                                # 256 MiB of 16 KiB chunks to 100 pulls
#   SMALL_PULLS=4 LARGE_PULLS=8 scripts/bench-serve-many.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL_EVENTS=${SMALL_EVENTS:-1000000}  # one event of a 50-byte payload per chunk
SMALL_PULLS=${SMALL_PULLS:-20}
LARGE_EVENTS=${LARGE_EVENTS:-16384}    # one event of a 16,000-byte payload per chunk: 256 MiB
LARGE_PULLS=${LARGE_PULLS:-100}

cargo build -q --release -p chunk-sync -p chunk-sync-benches --bin chunk-sync --bin gen-events
BIN=target/release/chunk-sync
GEN=target/release/gen-events

. scripts/common.sh

now() { date +%s.%N; }
# What a pull's JSON summary reports.
chunk_bytes() { sed -n 's/.*"chunk_bytes":\([0-9]*\).*/\1/p' "$1"; }

# case_row EVENTS PAYLOAD PULLS
case_row() {
  local events=$1 payload=$2 pulls=$3
  local store="$WORK/store"
  "$GEN" 0 "$events" "$payload" | "$BIN" append --store "$store" --events-per-chunk 1 >/dev/null
  local port
  port=$(free_port)
  "$BIN" serve "${SERVE_LINK[@]}" --store "$store" --listen "127.0.0.1:$port" >"$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  until grep -q serving "$WORK/serve.log" 2>/dev/null; do sleep 0.05; done

  local t0 t1
  t0=$(now)
  "$BIN" pull ${PULL_LINK[@]+"${PULL_LINK[@]}"} --json --store "$WORK/one" --from "127.0.0.1:$port" >"$WORK/one.log"
  t1=$(now)
  local bytes one
  bytes=$(chunk_bytes "$WORK/one.log")
  local name
  name="$(sed -n 's/.*"fetched_chunks":\([0-9]*\).*/\1/p' "$WORK/one.log") chunks of one $payload-byte event"
  one=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  rm -rf "$WORK/one"

  t0=$(now)
  local pids=()
  for i in $(seq "$pulls"); do
    "$BIN" pull ${PULL_LINK[@]+"${PULL_LINK[@]}"} --json --store "$WORK/p$i" --from "127.0.0.1:$port" >"$WORK/p$i.log" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  t1=$(now)
  local total=0
  for i in $(seq "$pulls"); do
    local b
    b=$(chunk_bytes "$WORK/p$i.log")
    [ "$b" = "$bytes" ] || { echo "pull $i got $b bytes, not $bytes" >&2; exit 1; }
    total=$((total + b))
    rm -rf "$WORK/p$i"
  done
  local rss
  rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$SERVE_PID/status")
  kill "$SERVE_PID"
  wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=""
  rm -rf "$store"
  awk -v name="$name" -v pulls="$pulls" -v bytes="$bytes" -v one="$one" -v a="$t0" -v b="$t1" \
      -v total="$total" -v rss="$rss" 'BEGIN {
    all = b - a
    printf "| %s | %.1f MB | %.2f s, %.1f MB/s | %d | %.2f s, %.1f MB/s (%.1f× one) | %s MB |\n",
      name, bytes / 1e6, one, bytes / one / 1e6, pulls, all, total / all / 1e6,
      (total / all) / (bytes / one), rss
  }'
}

echo "| store | chunk bytes | one pull | pulls at once | all of them: wall time, aggregate | serving process, peak RSS |"
echo "|---|---:|---:|---:|---:|---:|"
case_row "$SMALL_EVENTS" 50 "$SMALL_PULLS"
case_row "$LARGE_EVENTS" 16000 "$LARGE_PULLS"
