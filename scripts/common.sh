# Shared by the bench scripts: a work directory removed on exit with any `serve` started
# (`$SERVE_PID`), and a free loopback port. Source it after `cd` to the repository.
WORK=$(mktemp -d)
SERVE_PID=""
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Sessions are authenticated and encrypted, the server open to any key; PLAINTEXT=1
# measures them in the clear (--insecure-plaintext on both sides).
if [ "${PLAINTEXT:-0}" = 1 ]; then SERVE_LINK=(--insecure-plaintext); PULL_LINK=(--insecure-plaintext)
else SERVE_LINK=(--open); PULL_LINK=(); fi
