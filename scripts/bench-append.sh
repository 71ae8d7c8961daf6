#!/usr/bin/env bash
# `append` of generated JSON-lines events into a new store with the release command-line
# tool: time, events/s and peak RSS for a few payload sizes and chunk sizes. Prints a
# Markdown table.
#
#   scripts/bench-append.sh            # 1,000,000 events of 50 and 64 bytes, 200,000 of
#                                      # 512 bytes, 50,000 of 4 KiB
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q --release -p chunk-sync -p chunk-sync-benches --bin chunk-sync --bin gen-events
BIN=target/release/chunk-sync
GEN=target/release/gen-events
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# row EVENTS PAYLOAD EVENTS_PER_CHUNK
row() {
  local events=$1 payload=$2 per_chunk=$3
  "$GEN" 0 "$events" "$payload" > "$WORK/events.jsonl"
  local input_mb
  input_mb=$(awk -v b="$(stat -c %s "$WORK/events.jsonl")" 'BEGIN { printf "%.0f", b / 1e6 }')
  rm -rf "$WORK/store"
  /usr/bin/time -f "%e %M" -o "$WORK/time" \
    "$BIN" append --store "$WORK/store" --events-per-chunk "$per_chunk" < "$WORK/events.jsonl" > "$WORK/out"
  local chunks
  chunks=$(sed -n 's/.* as \([0-9]*\) new chunks.*/\1/p' "$WORK/out")
  read -r secs rss_kb < "$WORK/time"
  awk -v e="$events" -v p="$payload" -v c="$per_chunk" -v mb="$input_mb" -v n="$chunks" \
      -v s="$secs" -v kb="$rss_kb" 'BEGIN {
    printf "| %d | %d B | %d | %d MB | %d | %.2f s | %.0f | %.0f MB |\n", e, p, c, mb, n, s, e / s, kb / 1024
  }'
  rm -rf "$WORK/store" "$WORK/events.jsonl"
}

command -v /usr/bin/time >/dev/null || (apt-get update -qq && apt-get install -y -qq time) >/dev/null
echo "| events | payload | events per chunk | JSON input | chunks | time | events/s | peak RSS |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
row 1000000 50 1
row 1000000 50 100
row 1000000 64 100
row 200000 512 100
row 50000 4096 10
