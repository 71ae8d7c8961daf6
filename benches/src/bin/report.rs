//! Prints the figures of the last `cargo bench -p chunk-sync-benches` run as Markdown, with
//! each hot path set against its limit measured in the same run.
//!
//! ```text
//! cargo bench -p chunk-sync-benches && cargo run -p chunk-sync-benches --bin report
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

/// One benchmark's mean time and throughput unit.
struct Figure {
    mean_ns: f64,
    bytes: Option<u64>,
    elements: Option<u64>,
}

fn main() -> ExitCode {
    let root = criterion_dir();
    let mut figures = BTreeMap::new();
    collect(&root, &mut figures);
    if figures.is_empty() {
        eprintln!(
            "no criterion results under {}: run `cargo bench -p chunk-sync-benches` first",
            root.display()
        );
        return ExitCode::FAILURE;
    }
    print_table(&figures);
    print_ratios(&figures);
    ExitCode::SUCCESS
}

/// `target/criterion` of the workspace, or `$CARGO_TARGET_DIR/criterion`.
fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("criterion")
}

fn collect(dir: &Path, out: &mut BTreeMap<String, Figure>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "new") {
            if let Some((id, figure)) = read_figure(&path) {
                out.insert(id, figure);
            }
        } else if path.is_dir() {
            collect(&path, out);
        }
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn read_figure(new: &Path) -> Option<(String, Figure)> {
    let bench = read_json(&new.join("benchmark.json"))?;
    let estimates = read_json(&new.join("estimates.json"))?;
    let id = bench["full_id"].as_str()?.to_owned();
    let mean_ns = estimates["mean"]["point_estimate"].as_f64()?;
    let throughput = &bench["throughput"];
    Some((
        id,
        Figure {
            mean_ns,
            bytes: throughput["Bytes"].as_u64(),
            elements: throughput["Elements"].as_u64(),
        },
    ))
}

fn human_time(ns: f64) -> String {
    match ns {
        n if n >= 1e6 => format!("{:.2} ms", n / 1e6),
        n if n >= 1e3 => format!("{:.2} µs", n / 1e3),
        n => format!("{n:.1} ns"),
    }
}

fn print_table(figures: &BTreeMap<String, Figure>) {
    println!("| benchmark | mean | throughput |");
    println!("|---|---:|---:|");
    for (id, f) in figures {
        let rate = match (f.bytes, f.elements) {
            (Some(b), _) => format!("{:.2} GB/s", b as f64 / f.mean_ns),
            (_, Some(e)) => format!("{:.2} ns/hash", f.mean_ns / e as f64),
            _ => String::new(),
        };
        println!("| `{id}` | {} | {rate} |", human_time(f.mean_ns));
    }
    println!();
}

fn print_ratios(figures: &BTreeMap<String, Figure>) {
    let ratio = |a: &str, b: &str| Some(figures.get(b)?.mean_ns / figures.get(a)?.mean_ns * 100.0);
    println!("| hot path | against | same-run ratio |");
    println!("|---|---|---:|");
    for size in ["100x64B", "100x256B", "100x512B", "256x4096B"] {
        let blake3 = format!("chunk/blake3/{size}");
        for (what, label) in [
            ("create", "chunk creation (encode + hash)"),
            ("verify", "verification (hash + header)"),
            ("verify+decode", "verification + decode of every event"),
        ] {
            if let Some(r) = ratio(&format!("chunk/{what}/{size}"), &blake3)
                && let Some(f) = figures.get(&format!("chunk/{what}/{size}"))
            {
                let events: f64 = size
                    .split('x')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0);
                println!(
                    "| {label}, {size} | raw BLAKE3 of the same bytes | {r:.0}% ({:.1} M events/s) |",
                    events / f.mean_ns * 1e3
                );
            }
        }
    }
    println!();
    println!("| signed chunks (Ed25519 by the origin) | against | per chunk | same-run ratio |");
    println!("|---|---|---:|---:|");
    for size in ["100x64B", "256x4096B"] {
        for (what, plain, label) in [
            ("create+sign", "create", "creation + signature"),
            (
                "verify+signature",
                "verify",
                "verification + signature check",
            ),
        ] {
            let (id, base) = (
                format!("chunk/{what}/{size}"),
                format!("chunk/{plain}/{size}"),
            );
            if let (Some(f), Some(r)) = (figures.get(&id), ratio(&id, &base)) {
                println!(
                    "| {label}, {size} | unsigned {plain} | {} | {r:.0}% |",
                    human_time(f.mean_ns)
                );
            }
        }
    }
    println!();
    let copy_hash = "sync_256MiB/tokio_copy+blake3";
    for (id, label) in [
        (
            "sync_256MiB/chunk_sync_verify_only",
            "sync of 256 MiB over loopback TCP, verified, store keeps hashes only",
        ),
        (
            "sync_256MiB/chunk_sync",
            "sync of 256 MiB over loopback TCP, verified, kept in a `MemStore`",
        ),
        (
            "sync_256MiB/tokio_copy",
            "plain tokio copy of the same bytes (no hashing)",
        ),
    ] {
        if let (Some(r), Some(f)) = (ratio(id, copy_hash), figures.get(id)) {
            let bytes = f.bytes.unwrap_or(0) as f64;
            println!(
                "| {label} | tokio copy + BLAKE3 on the receiver | {r:.0}% ({:.2} GB/s) |",
                bytes / f.mean_ns
            );
        }
    }
    let id = "sync_256MiB_secure/chunk_sync_secure_verify_only";
    let sealed = "sync_256MiB_secure/tokio_copy+chacha20poly1305+blake3";
    if let (Some(r), Some(f)) = (ratio(id, sealed), figures.get(id)) {
        println!(
            "| sync of 256 MiB over a secure link (Noise XX, ChaCha20-Poly1305 records), verified, hashes only | tokio copy sealed and opened with ChaCha20-Poly1305 in records of the same size + BLAKE3 | {r:.0}% ({:.2} GB/s) |",
            f.bytes.unwrap_or(0) as f64 / f.mean_ns
        );
    }
    if let (Some(plain), Some(secure)) = (
        figures.get("empty_sync/plaintext"),
        figures.get("empty_sync/secure"),
    ) {
        println!(
            "| a sync with nothing to move over loopback, secure: {} | the same in plaintext: {} | handshake adds {} |",
            human_time(secure.mean_ns),
            human_time(plain.mean_ns),
            human_time(secure.mean_ns - plain.mean_ns)
        );
    }
    for n in ["1000", "100000", "1000000"] {
        if let Some(r) = ratio(
            &format!("delta/merge_missing/{n}"),
            &format!("delta/hashset_missing/{n}"),
        ) {
            println!(
                "| delta (merge walk), n = {n} | `HashSet` difference (the original's method) | {:.0}x faster |",
                r / 100.0
            );
        }
    }
}
