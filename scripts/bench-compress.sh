#!/usr/bin/env bash
# A rate-limited pull with and without compression, with the release command-line tool:
# for three kinds of payload, a store of 20,000 events of 200 bytes (50 to a chunk) is
# served with `--compress never`, then with the default (`auto`: compressed when the link
# is rate-limited) in LZ4 (`--codec lz4`) and in zstd (`--codec zstd`, what `auto` picks
# between hosts), and pulled with `--rate 1MB/s`. Prints a Markdown table: wall time and
# bytes received against the chunk bytes. Then each codec's ratio and rates on one thread
# (`--bin compress`).
#
#   scripts/bench-compress.sh
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-20000}
RATE=${RATE:-1MB/s}

cargo build -q --release -p chunk-sync -p chunk-sync-benches --bin chunk-sync --bin gen-events --bin compress
BIN=target/release/chunk-sync
GEN=target/release/gen-events
. scripts/common.sh
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$2"; }

# pull_with STORE COMPRESS CODEC: pulls the store served with `--compress COMPRESS
# --codec CODEC`; prints "seconds bytes_received chunk_bytes".
pull_with() {
  local store=$1 compress=$2 codec=$3 port
  port=$(free_port)
  "$BIN" serve "${SERVE_LINK[@]}" --store "$store" --listen "127.0.0.1:$port" --compress "$compress" --codec "$codec" >"$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  until grep -q serving "$WORK/serve.log" 2>/dev/null; do sleep 0.05; done
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN" pull ${PULL_LINK[@]+"${PULL_LINK[@]}"} --json --store "$WORK/copy" --from "127.0.0.1:$port" --rate "$RATE" >"$WORK/pull.json"
  t1=$(date +%s.%N)
  kill "$SERVE_PID"
  wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=""
  "$BIN" verify --store "$WORK/copy" >/dev/null
  rm -rf "$WORK/copy"
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') $(field bytes_received "$WORK/pull.json") $(field chunk_bytes "$WORK/pull.json")"
}

echo "| payload | chunk bytes | \`--compress never\`: time, received | LZ4: time, received | zstd: time, received | zstd against raw, against LZ4 |"
echo "|---|---:|---:|---:|---:|---:|"
for style in telemetry log random; do
  "$GEN" 0 "$EVENTS" 200 "$style" | "$BIN" append --store "$WORK/store" --events-per-chunk 50 >/dev/null
  read -r raw_s raw_b bytes < <(pull_with "$WORK/store" never auto)
  read -r lz_s lz_b _ < <(pull_with "$WORK/store" auto lz4)
  read -r zs_s zs_b _ < <(pull_with "$WORK/store" auto zstd)
  awk -v n="$style" -v c="$bytes" -v rs="$raw_s" -v rb="$raw_b" -v ls="$lz_s" -v lb="$lz_b" -v zs="$zs_s" -v zb="$zs_b" 'BEGIN {
    printf "| %s | %.2f MB | %.2f s, %.2f MB (%.2f×) | %.2f s, %.2f MB (%.2f×) | %.2f s, %.2f MB (%.2f×) | %.1f× faster, %.1f× faster |\n",
      n, c / 1e6, rs, rb / 1e6, rb / c, ls, lb / 1e6, lb / c, zs, zb / 1e6, zb / c, rs / zs, ls / zs
  }'
  rm -rf "$WORK/store"
done
echo
target/release/compress
