//! What a sync costs, discovery and transfer, between two tokio nodes over loopback TCP,
//! for stores of a million small chunks, printed as Markdown tables.
//!
//! ```text
//! cargo run --release -p chunk-sync-benches --bin recon [-- CHUNKS [cold]]
//! ```
//!
//! Two `MemStore`s hold chunks of ten origins (one event each, about 60 bytes); each case
//! changes what one of them holds. One node serves, the other syncs with it both ways
//! (`Node::sync_with`), in frames of 64 KiB or of 256 bytes. Every figure is what the
//! session counted: discovery is the bytes of query and answer frames both ways; round
//! trips are the queries of the side that needed more (one is outstanding at a time);
//! wire bytes are every frame both ways. Beside each case, in the same run, the cost of a
//! full manifest exchange of the same stores: every hash of each side sent to the other, in
//! pages of 1,024 hashes (or what a frame holds), each asked for.
//!
//! Then cold pulls (with `cold`, only those): the million small chunks from a `RedbStore`
//! into an empty one (with the sizes of both files) and from a `MemStore` into an empty
//! one, and 1,000 chunks of 16 KiB, with what was received and sent per byte of chunk data.

use std::time::{Duration, Instant};

use chunk_sync_benches::{Rng, single_event_chunks};
use chunk_sync_core::NodeId;
use chunk_sync_core::manifest::listing_cost;
use chunk_sync_core::session::Stats;
use chunk_sync_tokio::{
    Durability, MemStore, Node, NodeConfig, NodeStore, RedbStore, SyncReport, VerifiedChunk,
};

/// Hashes per manifest page of the full manifest exchange compared with.
const PAGE: usize = 1024;

#[tokio::main]
async fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let only_cold = std::env::args().nth(2).is_some_and(|a| a == "cold");
    let origins = 10;
    let per_origin = total / origins;
    let started = Instant::now();
    let logs: Vec<Vec<VerifiedChunk>> = (1..=origins)
        .map(|o| single_event_chunks(NodeId(o * 0x9E37_79B9), per_origin, 16))
        .collect();
    let chunks = per_origin * origins;
    eprintln!(
        "sealed {chunks} chunks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let n = per_origin as usize;
    let mut rng = Rng::new(7);
    let scattered: std::collections::BTreeSet<(usize, usize)> = (0..100)
        .map(|_| {
            let o = (rng.next_u64() % origins) as usize;
            (o, (rng.next_u64() % per_origin) as usize)
        })
        .collect();
    let cases: Vec<(&str, Pick<'_>, Pick<'_>)> = vec![
        (
            "nothing changed",
            Box::new(|_, _| true),
            Box::new(|_, _| true),
        ),
        (
            "100 new chunks at the tails",
            Box::new(|_, i| i < n - 10),
            Box::new(|_, _| true),
        ),
        (
            "100 chunks missing, scattered",
            Box::new(|o, i| !scattered.contains(&(o, i))),
            Box::new(|_, _| true),
        ),
        (
            "nothing in common: other origins",
            Box::new(|o, _| o < 5),
            Box::new(|o, _| o >= 5),
        ),
        (
            "nothing in common: alternate chunks",
            Box::new(|_, i| i % 2 == 0),
            Box::new(|_, i| i % 2 == 1),
        ),
    ];
    if !only_cold {
        reconcile(&logs, &cases, chunks).await;
    }
    cold_pulls(&logs).await;
}

type Pick<'a> = Box<dyn Fn(usize, usize) -> bool + 'a>;

/// The reconciliation cases, a row each at 64 KiB and 256 B frames.
async fn reconcile(logs: &[Vec<VerifiedChunk>], cases: &[(&str, Pick<'_>, Pick<'_>)], chunks: u64) {
    println!(
        "| case ({chunks} chunks) | frames | discovery, both ways | round trips | chunks moved | wire bytes, both ways | full manifest exchange | first sync / repeated |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, mine, theirs) in cases {
        for frame in [65_536, 256] {
            let (a, b) = (store(logs, mine), store(logs, theirs));
            let manifest = listing_cost(a.len().unwrap(), frame, PAGE)
                + listing_cost(b.len().unwrap(), frame, PAGE);
            let before = a.len().unwrap() + b.len().unwrap();
            let (first, report, after) = sync(a, b, frame as u32).await;
            let s = report.stats;
            println!(
                "| {name} | {} | {} B | {} | {} | {} B | {manifest} B ({:.3}×) | {:.3} / {:.3} s |",
                if frame > 1024 { "64 KiB" } else { "256 B" },
                s.discovery_sent + s.discovery_received,
                s.queries_sent.max(s.queries_received),
                after - before,
                s.bytes_sent + s.bytes_received,
                (s.discovery_sent + s.discovery_received) as f64 / manifest as f64,
                first.0.as_secs_f64(),
                first.1.as_secs_f64(),
            );
        }
    }
}

/// Cold pulls of every chunk of `logs`, and of 16 KiB chunks.
async fn cold_pulls(logs: &[Vec<VerifiedChunk>]) {
    println!();
    println!("| cold pull | chunks | chunk bytes | received | sent | time | chunks/s |");
    println!("|---|---|---|---|---|---|---|");
    let every: Vec<VerifiedChunk> = logs.iter().flatten().cloned().collect();
    let dir = std::env::temp_dir().join(format!("chunk-sync-recon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let redb = |name: &str| RedbStore::open_with(dir.join(name), Durability::Process).unwrap();
    cold_pull(
        "small chunks, `RedbStore` to `RedbStore`",
        &every,
        redb("served.redb"),
        redb("pulled.redb"),
    )
    .await;
    let file = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    let bytes: u64 = every.iter().map(|c| c.bytes().len() as u64).sum();
    println!(
        "| (store files: served {} B, pulled {} B: {:.2}× and {:.2}× the chunk bytes) | | | | | | |",
        file("served.redb"),
        file("pulled.redb"),
        file("served.redb") as f64 / bytes as f64,
        file("pulled.redb") as f64 / bytes as f64,
    );
    cold_pull(
        "small chunks, `MemStore` to `MemStore`",
        &every,
        MemStore::new(),
        MemStore::new(),
    )
    .await;
    let big: Vec<VerifiedChunk> = (1..=4)
        .flat_map(|o| single_event_chunks(NodeId(o), 250, 16 << 10))
        .collect();
    cold_pull(
        "16 KiB chunks, `MemStore` to `MemStore`",
        &big,
        MemStore::new(),
        MemStore::new(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store holding the chunks of `logs` that `keep(origin, index)` picks.
fn store(logs: &[Vec<VerifiedChunk>], keep: &dyn Fn(usize, usize) -> bool) -> MemStore {
    let store = MemStore::new();
    for (o, log) in logs.iter().enumerate() {
        let kept: Vec<VerifiedChunk> = log
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(o, *i))
            .map(|(_, c)| c.clone())
            .collect();
        store.insert_batch(&kept).unwrap();
    }
    store
}

fn config(id: u64, frame: u32) -> NodeConfig {
    NodeConfig {
        max_frame: frame,
        ..NodeConfig::new(NodeId(id))
    }
}

/// `a` syncs with `b` both ways, then again; the times of both syncs, the first's report,
/// and how many chunks both hold after it.
async fn sync(a: MemStore, b: MemStore, frame: u32) -> ((Duration, Duration), SyncReport, usize) {
    let a = Node::new_insecure_plaintext(config(1, frame), a).unwrap();
    // The serving side takes what the other offers: both ways.
    let serving = NodeConfig {
        accept_pushes: true,
        ..config(2, frame)
    };
    let b = Node::new_insecure_plaintext(serving, b).unwrap();
    let listener = b.listen("127.0.0.1:0").await.unwrap();
    let t = Instant::now();
    let report = a.sync_with(listener.local_addr()).await.unwrap();
    let first = t.elapsed();
    // The serving side finishes storing what it received a moment after the client.
    let expected = a.store().len().unwrap();
    while b.store().len().unwrap() < expected {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let after = a.store().len().unwrap() + b.store().len().unwrap();
    let t = Instant::now();
    let again = a.sync_with(listener.local_addr()).await.unwrap();
    assert_eq!(again.progress.synced_chunks, 0, "nothing left to sync");
    ((first, t.elapsed()), report, after)
}

/// Pulls `chunks` from a node that holds them all in `from` into `into`, which holds none.
async fn cold_pull(
    name: &str,
    chunks: &[VerifiedChunk],
    from: impl NodeStore,
    into: impl NodeStore,
) {
    let server = from;
    for batch in chunks.chunks(65_536) {
        server.insert_batch(batch).unwrap();
    }
    let server = Node::new_insecure_plaintext(config(2, 65_536), server).unwrap();
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let puller = Node::new_insecure_plaintext(config(1, 65_536), into).unwrap();
    let t = Instant::now();
    let report = puller.pull_from(listener.local_addr()).await.unwrap();
    let took = t.elapsed();
    assert_eq!(report.progress.synced_chunks, chunks.len() as u64);
    let bytes: usize = chunks.iter().map(|c| c.bytes().len()).sum();
    let Stats {
        bytes_sent,
        bytes_received,
        ..
    } = report.stats;
    println!(
        "| {name} | {} | {bytes} B | {bytes_received} B ({:.3}×) | {bytes_sent} B ({:.4}×) | {:.2} s | {:.0} |",
        chunks.len(),
        bytes_received as f64 / bytes as f64,
        bytes_sent as f64 / bytes as f64,
        took.as_secs_f64(),
        chunks.len() as f64 / took.as_secs_f64(),
    );
}
