#!/usr/bin/env bash
# Memory of a `serve` process holding many connections that never send a byte, and after
# they close: prints its RSS before, while they are open, and after.
#
#   ./scripts/idle-connections.sh [CONNECTIONS]   (default 2000; needs python3)
set -euo pipefail
cd "$(dirname "$0")/.."
# Sessions are authenticated and encrypted, the server open to any key; PLAINTEXT=1
# measures them in the clear (--insecure-plaintext on both sides).
if [ "${PLAINTEXT:-0}" = 1 ]; then SERVE_LINK=(--insecure-plaintext); PULL_LINK=(--insecure-plaintext)
else SERVE_LINK=(--open); PULL_LINK=(); fi
n=${1:-2000}
ulimit -n $((n + 1000)) 2>/dev/null || true
cargo build --release -q -p chunk-sync
bin=target/release/chunk-sync
dir=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT
seq 0 99 | awk '{printf "{\"seq\":%d,\"kind\":\"k\",\"privacy\":\"public\",\"payload\":\"x\"}\n",$1}' |
  "$bin" append --store "$dir/a" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve "${SERVE_LINK[@]}" --store "$dir/a" --listen "127.0.0.1:$port" >"$dir/serve.log" 2>&1 &
server=$!
until grep -q serving "$dir/serve.log" 2>/dev/null; do sleep 0.1; done
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$server/status"; }
echo "serve at start: $(rss)"
python3 - "$port" "$n" <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
time.sleep(4)
for s in socks:
    s.close()
time.sleep(20)
PY
sleep 3
echo "with $n idle connections: $(rss), $(ls "/proc/$server/fd" | wc -l) descriptors open"
sleep 6
echo "after they closed: $(rss)"
"$bin" pull ${PULL_LINK[@]+"${PULL_LINK[@]}"} --from "127.0.0.1:$port" --store "$dir/b" | cut -d';' -f1
