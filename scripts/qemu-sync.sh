#!/usr/bin/env bash
# Builds the firmware for the QEMU lm3s6965evb (Cortex-M3), boots it with UART0 bridged to
# a TCP port, syncs it with a host node (tokio adapter) over that port on a secure link
# (each side lets in the other's key only, and takes only chunks the other signed), and
# fails unless both sides converge. Prints the firmware's flash and static RAM footprint;
# the firmware prints its stack high-water mark and the device time of an X25519 scalar
# multiplication, a key pair, and signing and verifying a chunk.
#
#   scripts/qemu-sync.sh          # the device keeps its chunks in a RamStore
#   scripts/qemu-sync.sh flash    # in a FlashStore (NOR flash modelled in RAM)
#   scripts/qemu-sync.sh lz4      # a RamStore, taking chunks compressed with LZ4
#   scripts/qemu-sync.sh node     # the minimal node (src/bin/node.rs): its own signed log
#                                 # in a RamStore and one secure session, no test harness
#   ICOUNT=1 scripts/qemu-sync.sh # device time counts instructions (1 ns each), so the
#                                 # times the firmware prints are instruction counts
set -euo pipefail
FEATURES=${1:-}
cd "$(dirname "$0")/.."

if ! command -v qemu-system-arm >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq qemu-system-arm) >/dev/null
fi
rustup target add thumbv7m-none-eabi >/dev/null 2>&1 || true

BIN=chunk-sync-firmware-qemu
PEER_ARGS=()
if [ "$FEATURES" = node ]; then
  BIN=node
  FEATURES=""
  PEER_ARGS=(--once)
fi
(cd firmware/qemu-lm3s6965 && cargo build --release --locked -q --bin "$BIN" ${FEATURES:+--features "$FEATURES"})
cargo build -q -p chunk-sync-tests --bin firmware-peer
ELF=firmware/qemu-lm3s6965/target/thumbv7m-none-eabi/release/$BIN

# Flash = .vector_table + .text + .rodata + .data's initial values; static RAM = .data + .bss.
flash=0; ram=0
while read -r name size; do
  bytes=$((16#$size))
  case "$name" in
    .vector_table|.text|.rodata) flash=$((flash + bytes)) ;;
    .data) flash=$((flash + bytes)); ram=$((ram + bytes)) ;;
    .bss|.uninit) ram=$((ram + bytes)) ;;
  esac
done < <(readelf -S -W "$ELF" | sed -n 's/^ *\[ *[0-9]*\] *\([^ ]*\) *[A-Z_]* *[0-9a-f]* *[0-9a-f]* *\([0-9a-f]*\).*/\1 \2/p')
echo "firmware footprint${FEATURES:+ ($FEATURES)}$([ "$BIN" = node ] && echo " (minimal node)"): flash $flash bytes, static RAM $ram bytes"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp)
timeout 180 qemu-system-arm -machine lm3s6965evb -cpu cortex-m3 -nographic -monitor none \
  ${ICOUNT:+-icount shift=0} \
  -semihosting-config enable=on,target=native \
  -serial "tcp:127.0.0.1:$PORT,server=on,wait=on,nodelay=on" \
  -kernel "$ELF" >"$LOG" 2>&1 &
QEMU=$!
peer_rc=0
timeout 150 target/debug/firmware-peer "127.0.0.1:$PORT" ${PEER_ARGS[@]+"${PEER_ARGS[@]}"} || peer_rc=$?
qemu_rc=0
wait "$QEMU" || qemu_rc=$?
grep '^chunk-sync firmware' "$LOG" || true
rm -f "$LOG"
if [ "$peer_rc" -ne 0 ] || [ "$qemu_rc" -ne 0 ]; then
  echo "firmware sync failed: host exit $peer_rc, device exit $qemu_rc" >&2
  exit 1
fi
echo "firmware sync converged"
