#!/usr/bin/env bash
# Store amplification of the release command-line tool's store: for a log of small chunks
# and one of large chunks, the store `append` writes and the copy a `pull` makes of it,
# against the bytes of the chunks they hold. "Disk used" is what the file occupies
# (allocated blocks, as `du` counts them); "file length" is what `ls -l` shows, which the
# database grows by doubling the file below 4 GiB (the part not yet used is a hole that
# occupies no disk). Also the time to open each store (`stat`, which reads every pack's
# head and hashes the small chunks again). Prints a Markdown table.
#
#   scripts/bench-store.sh     # 1,000,000 events of 50 bytes, 16,384 of 16,000 bytes, one per chunk
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL_EVENTS=${SMALL_EVENTS:-1000000}
LARGE_EVENTS=${LARGE_EVENTS:-16384}

cargo build -q --release -p chunk-sync -p chunk-sync-benches --bin chunk-sync --bin gen-events
BIN=target/release/chunk-sync
GEN=target/release/gen-events
. scripts/common.sh

# row NAME STORE_DIR
row() {
  local name=$1 dir=$2
  local file="$dir/chunks.redb"
  local bytes length used t0 t1
  bytes=$("$BIN" stat --json --store "$dir" | sed -n 's/.*"bytes":\([0-9]*\).*/\1/p')
  length=$(stat -c %s "$file")
  used=$(( $(stat -c %b "$file") * $(stat -c %B "$file") ))
  t0=$(date +%s.%N)
  "$BIN" verify --store "$dir" >/dev/null
  t1=$(date +%s.%N)
  awk -v n="$name" -v b="$bytes" -v l="$length" -v u="$used" -v a="$t0" -v z="$t1" 'BEGIN {
    printf "| %s | %.1f MB | %.1f MB (%.3f×) | %.1f MB (%.3f×) | %.2f s |\n",
      n, b / 1e6, u / 1e6, u / b, l / 1e6, l / b, z - a
  }'
}

# case NAME EVENTS PAYLOAD
case_rows() {
  local name=$1 events=$2 payload=$3
  "$GEN" 0 "$events" "$payload" | "$BIN" append --store "$WORK/a" --events-per-chunk 1 >/dev/null
  row "$name, appended" "$WORK/a"
  local port
  port=$(free_port)
  "$BIN" serve "${SERVE_LINK[@]}" --store "$WORK/a" --listen "127.0.0.1:$port" >"$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  until grep -q serving "$WORK/serve.log" 2>/dev/null; do sleep 0.05; done
  "$BIN" pull ${PULL_LINK[@]+"${PULL_LINK[@]}"} -q --store "$WORK/p" --from "127.0.0.1:$port"
  kill "$SERVE_PID"
  wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=""
  row "$name, pulled" "$WORK/p"
  rm -rf "$WORK/a" "$WORK/p"
}

echo "| store | chunk bytes | disk used | file length | \`verify\` |"
echo "|---|---:|---:|---:|---:|"
case_rows "$SMALL_EVENTS chunks of one 50-byte event" "$SMALL_EVENTS" 50
case_rows "$LARGE_EVENTS chunks of one 16,000-byte event" "$LARGE_EVENTS" 16000
