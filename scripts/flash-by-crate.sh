#!/usr/bin/env bash
# Where the firmware's flash goes: builds a firmware binary (release, as
# scripts/qemu-sync.sh builds it) and sums the sizes of its code and read-only data
# symbols (`llvm-nm -S`) by the crate each symbol is named after. Generic code is named
# after the crate that defines it, and LTO inlines much of the core into the embassy
# runner, so the project's two library crates are best read together. Symbols without a
# crate path (compiler-made constants, the vector table) are summed as "other".
#
#   scripts/flash-by-crate.sh          # the minimal node (src/bin/node.rs)
#   scripts/flash-by-crate.sh main     # the test firmware (src/main.rs), RamStore
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=node
[ "${1:-}" = main ] && BIN=chunk-sync-firmware-qemu
rustup target add thumbv7m-none-eabi >/dev/null 2>&1 || true
rustup component add llvm-tools >/dev/null 2>&1 || true
NM=$(find "$(rustc --print sysroot)" -name llvm-nm -type f | head -n 1)
[ -x "$NM" ] || { echo "llvm-nm not found (rustup component add llvm-tools)" >&2; exit 1; }

(cd firmware/qemu-lm3s6965 && cargo build --release --locked -q --bin "$BIN")
ELF=firmware/qemu-lm3s6965/target/thumbv7m-none-eabi/release/$BIN

SYMS=$(mktemp)
trap 'rm -f "$SYMS"' EXIT
"$NM" --print-size --size-sort --radix=d "$ELF" >"$SYMS"
python3 - "$SYMS" <<'PY'
import collections, re, sys
sizes = collections.Counter()
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) < 4 or parts[2] not in "tTrR":
        continue
    name = " ".join(parts[3:])
    # Legacy-mangled Rust names, _ZN<len><ident>...: the first path segment, or the crate
    # of the type of an impl (_ZN<len>_$LT$crate..Type ...).
    # Names mangled as v0 (_R...) name their crate after "Cs<hash>_<len>".
    crate = "other"
    legacy = re.match(r"_ZN(\d+)", name)
    # (a length may be followed by "_" when the identifier starts with "_" or a digit).
    v0 = re.search(r"Cs[0-9A-Za-z]+_(\d+)_?", name) if name.startswith("_R") else None
    if legacy:
        first = name[legacy.end():legacy.end() + int(legacy.group(1))]
        if re.fullmatch(r"[a-z_][a-z0-9_]*", first):
            crate = first
        else:
            path = re.search(r"([a-z_][a-z0-9_]*)\.\.", first)
            crate = path.group(1) if path else "other"
    elif v0:
        crate = name[v0.end():v0.end() + int(v0.group(1))]
    elif name.startswith("__aeabi") or name in ("memcpy", "memmove", "memset", "memcmp"):
        crate = "compiler_builtins"
    sizes[crate] += int(parts[1])
own = ("chunk_sync_core", "chunk_sync_embassy", "node", "chunk_sync_firmware_qemu")
crypto = ("curve25519_dalek", "ed25519_dalek", "x25519_dalek", "clatter", "chacha20",
          "chacha20poly1305", "poly1305", "cipher", "universal_hash", "sha2", "blake3", "aead")
rows = [(c, n) for c, n in sizes.most_common() if n >= 256]
rows.append(("(crates under 256 bytes)", sum(n for n in sizes.values() if n < 256)))
rows.append(("all symbols", sum(sizes.values())))
rows.append(("the project's crates", sum(sizes[c] for c in own)))
rows.append(("cryptography and hashing", sum(sizes[c] for c in crypto)))
for crate, n in rows:
    print(f"{crate:<28} {n:>8}")
PY
