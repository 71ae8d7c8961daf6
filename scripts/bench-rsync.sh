#!/usr/bin/env bash
# Syncs a 256 MiB event log between two chunk-sync processes over loopback TCP, cold and
# after appending 1%, beside rsync against a local rsync daemon on the same data, in the
# same run. Prints a Markdown table of medians. Installs rsync if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# Sessions are authenticated and encrypted, the server open to any key; PLAINTEXT=1
# measures them in the clear (--insecure-plaintext on both sides).
if [ "${PLAINTEXT:-0}" = 1 ]; then SERVE_LINK=(--insecure-plaintext); PULL_LINK=(--insecure-plaintext)
else SERVE_LINK=(--open); PULL_LINK=(); fi

EVENTS=${EVENTS:-65536}      # 65536 events of 4000-byte payloads: about 256 MiB
PAYLOAD=${PAYLOAD:-4000}
PER_CHUNK=${PER_CHUNK:-256}
APPEND=$((EVENTS / 100))
RUNS=${RUNS:-5}

if ! command -v rsync >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq rsync) >/dev/null
fi
cargo build -q --release -p chunk-sync -p chunk-sync-benches --bin chunk-sync --bin gen-events
BIN=target/release/chunk-sync
GEN=target/release/gen-events

WORK=$(mktemp -d)
SERVE_PID=""
RSYNCD_PID=""
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  [ -n "$RSYNCD_PID" ] && kill "$RSYNCD_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$WORK/src" "$WORK/dst"
"$GEN" 0 "$EVENTS" "$PAYLOAD" > "$WORK/src/events.jsonl"
"$GEN" "$EVENTS" "$APPEND" "$PAYLOAD" > "$WORK/append.jsonl"
LOG_BYTES=$(stat -c %s "$WORK/src/events.jsonl")
APPEND_BYTES=$(stat -c %s "$WORK/append.jsonl")

# chunk-sync: the origin's store, served over TCP; a second process pulls it.
"$BIN" append --store "$WORK/a" --events-per-chunk "$PER_CHUNK" --input "$WORK/src/events.jsonl" >/dev/null
start_server() {
  PORT=$(free_port)
  "$BIN" serve "${SERVE_LINK[@]}" --store "$WORK/a" --listen "127.0.0.1:$PORT" > "$WORK/serve.log" &
  SERVE_PID=$!
  until grep -q serving "$WORK/serve.log" 2>/dev/null; do sleep 0.05; done
}
stop_server() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=""; }

# Every timed run starts with the page cache flushed (`sync`), so that no run pays for the
# writeback of an earlier one; each figure is the median of $RUNS runs.
timed() {
  sync
  local t0 t1
  t0=$(now)
  "$@" > "$WORK/last.out"
  t1=$(now)
  echo "$(elapsed "$t0" "$t1")"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

start_server
CS_COLD=$(for _ in $(seq "$RUNS"); do
  rm -rf "$WORK/b"
  timed "$BIN" pull ${PULL_LINK[@]+"${PULL_LINK[@]}"} --from "127.0.0.1:$PORT" --store "$WORK/b"
done | median)
CS_COLD_DISK=$(for _ in $(seq "$RUNS"); do
  rm -rf "$WORK/bd"
  timed "$BIN" pull ${PULL_LINK[@]+"${PULL_LINK[@]}"} --from "127.0.0.1:$PORT" --store "$WORK/bd" --durability disk
done | median)
stop_server
"$BIN" append --store "$WORK/a" --events-per-chunk "$PER_CHUNK" --input "$WORK/append.jsonl" >/dev/null
start_server
CS_WARM=$(for _ in $(seq "$RUNS"); do
  rm -rf "$WORK/w" && cp -a "$WORK/b" "$WORK/w"
  timed "$BIN" pull ${PULL_LINK[@]+"${PULL_LINK[@]}"} --json --from "127.0.0.1:$PORT" --store "$WORK/w"
done | median)
cs_warm=$(cat "$WORK/last.out")
stop_server
CS_WIRE=$(echo "$cs_warm" | sed -E 's/.*"bytes_received":([0-9]+).*/\1/')
NEW_CHUNK_BYTES=$(echo "$cs_warm" | sed -E 's/.*"chunk_bytes":([0-9]+).*/\1/')

# rsync: a daemon on loopback serves the same log file.
RPORT=$(free_port)
cat > "$WORK/rsyncd.conf" <<CONF
use chroot = false
[data]
  path = $WORK/src
  read only = true
CONF
rsync --daemon --no-detach --address 127.0.0.1 --port "$RPORT" --config "$WORK/rsyncd.conf" &
RSYNCD_PID=$!
sleep 0.3
R_COLD=$(for _ in $(seq "$RUNS"); do
  rm -rf "$WORK/dst" && mkdir "$WORK/dst"
  timed rsync -a --stats "rsync://127.0.0.1:$RPORT/data/" "$WORK/dst/"
done | median)
cat "$WORK/append.jsonl" >> "$WORK/src/events.jsonl"
R_WARM=$(for _ in $(seq "$RUNS"); do
  rm -rf "$WORK/dw" && cp -a "$WORK/dst" "$WORK/dw"
  timed rsync -a --stats "rsync://127.0.0.1:$RPORT/data/" "$WORK/dw/"
done | median)
R_WIRE=$(awk -F': ' '/Total bytes received/ {gsub(",", "", $2); print $2}' "$WORK/last.out")

# The disk's own limit for a synced write of the same size.
DISK=$(timed dd if=/dev/zero of="$WORK/dd" bs=1M count=$((LOG_BYTES >> 20)) conv=fdatasync status=none)
rm -f "$WORK/dd"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

cat <<TABLE
| run | chunk-sync | rsync daemon |
|---|---:|---:|
| cold: $(numfmt --to=iec "$LOG_BYTES") log ($EVENTS events) | ${CS_COLD} s | ${R_COLD} s |
| cold, \`--durability disk\` (every commit synced; \`dd conv=fdatasync\` of the same size: ${DISK} s) | ${CS_COLD_DISK} s | — |
| after appending 1% ($APPEND events, $(numfmt --to=iec "$APPEND_BYTES") of JSON) | ${CS_WARM} s | ${R_WARM} s |
| bytes received after the append | ${CS_WIRE} ($(ratio "$CS_WIRE" "$NEW_CHUNK_BYTES")× the ${NEW_CHUNK_BYTES} bytes of new chunks) | ${R_WIRE} ($(ratio "$R_WIRE" "$NEW_CHUNK_BYTES")×) |
TABLE
