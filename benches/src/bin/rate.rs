//! Rate limits on the wall clock: a pull between two tokio nodes over loopback TCP, limited
//! by the receiver (`NodeConfig::receive_rate`, what `pull --rate` sets), by the sender
//! (`NodeConfig::throttle`, what `serve --rate` sets), or by both (the lower wins), with
//! the rate achieved against the rate configured, printed as a Markdown table.
//!
//! ```text
//! cargo run --release -p chunk-sync-benches --bin rate [-- SECONDS]
//! ```
//!
//! Each case moves `SECONDS` (default 10) of data at 1 MB/s: chunks of 16 KiB in a
//! `MemStore`. "Achieved" is every byte the receiver got (chunk data and frames) over the
//! time from the start of the session to its end.

use std::time::{Duration, Instant};

use chunk_sync_benches::single_event_chunks;
use chunk_sync_core::NodeId;
use chunk_sync_tokio::{MemStore, Node, NodeConfig, NodeStore, ThrottleConfig, VerifiedChunk};

const RATE: u64 = 1_000_000;

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let chunks = single_event_chunks(NodeId(7), seconds * RATE / (16 << 10), 16 << 10);
    let bytes: usize = chunks.iter().map(|c| c.bytes().len()).sum();
    println!(
        "## Rate limits on the wall clock ({} chunks, {:.1} MB, loopback TCP)\n",
        chunks.len(),
        bytes as f64 / 1e6
    );
    println!("| limited by | configured | took | received | achieved | achieved / configured |");
    println!("|---|---:|---:|---:|---:|---:|");
    let sender = |rate| ThrottleConfig {
        max_bytes_per_sec: rate,
        window_duration: Duration::from_millis(20),
    };
    let cases = [
        ("the receiver (`pull --rate`)", RATE, 0, RATE),
        ("the sender (`serve --rate`)", 0, RATE, RATE),
        ("both, the receiver's lower", RATE, 2 * RATE, RATE),
        ("both, the sender's lower", 2 * RATE, RATE, RATE),
    ];
    for (what, receive, send, expected) in cases {
        let server = Node::new_insecure_plaintext(
            NodeConfig {
                throttle: sender(send),
                ..NodeConfig::new(NodeId(1))
            },
            store(&chunks),
        )
        .expect("valid config");
        let client = Node::new_insecure_plaintext(
            NodeConfig {
                receive_rate: receive,
                ..NodeConfig::new(NodeId(2))
            },
            MemStore::new(),
        )
        .expect("valid config");
        let listener = server.listen("127.0.0.1:0").await.expect("a port");
        let started = Instant::now();
        let report = client
            .pull_from(listener.local_addr())
            .await
            .expect("the pull completes");
        let took = started.elapsed().as_secs_f64();
        let received = report.stats.bytes_received;
        let achieved = received as f64 / took;
        println!(
            "| {what} | {:.2} MB/s | {took:.2} s | {:.2} MB | {:.3} MB/s | {:.3} |",
            expected as f64 / 1e6,
            received as f64 / 1e6,
            achieved / 1e6,
            achieved / expected as f64
        );
    }
}

fn store(chunks: &[VerifiedChunk]) -> MemStore {
    let store = MemStore::new();
    for c in chunks {
        store.insert(c.clone()).expect("no memory limit");
    }
    store
}
