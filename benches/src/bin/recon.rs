//! What discovery costs with range-based reconciliation against a full manifest exchange,
//! for stores of a million small chunks, printed as a Markdown table.
//!
//! ```text
//! cargo run --release -p chunk-sync-benches --bin recon [-- CHUNKS]
//! ```
//!
//! Two `MemStore`s hold chunks of ten origins (one event each, about 60 bytes); each case
//! changes what one of them holds. Both sides pull from each other, as a session does:
//! each runs the core's [`Walk`] against the other's [`Answer`], and the table adds up the
//! bytes of both directions (queries and answers, each in a frame with a 4-byte header,
//! a tag, a length and a flag) and counts the round trips of the longer one. The manifest
//! column is what protocol 1 sends for the same stores: every hash of each side, in pages
//! of 1,024 hashes (or what a frame holds), each asked for with a `ManifestRequest`.

use std::time::Instant;

use chunk_sync_benches::Rng;
use chunk_sync_core::chunk::Chunker;
use chunk_sync_core::recon::codec::MAX_ENTRY;
use chunk_sync_core::recon::{Answer, Query, Room, Run, Walk};
use chunk_sync_core::wire;
use chunk_sync_core::{Event, NodeId, Privacy};
use chunk_sync_tokio::{Durability, MemStore, NodeStore, RedbStore, VerifiedChunk};

/// Bytes around a query or an answer: frame header, tag, length of the list, `last`.
const FRAMING: usize = wire::FRAME_HEADER + 1 + 3 + 1;
/// The most entries of one answer, as a host session keeps them.
const ENTRIES: usize = 64;
/// The most runs per entry.
const RUNS: usize = 16;
/// Ranges waiting, and wanted ranges not yet fetched.
const QUEUE: usize = 4096;
/// Queries in flight at once.
const IN_FLIGHT: usize = 4;
/// Hashes per manifest page in protocol 1 (the host session's `PAGE`).
const PAGE: usize = 1024;

fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let origins = 10;
    let per_origin = total / origins;
    let started = Instant::now();
    let logs: Vec<Vec<VerifiedChunk>> = (1..=origins)
        .map(|o| log(NodeId(o * 0x9E37_79B9), per_origin))
        .collect();
    eprintln!(
        "sealed {} chunks in {:.1} s",
        per_origin * origins,
        started.elapsed().as_secs_f64()
    );
    let all = |keep: &dyn Fn(usize, usize) -> bool| {
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
    };
    let n = per_origin as usize;
    let full = all(&|_, _| true);
    let odd = all(&|_, i| i % 2 == 1);
    let mut rng = Rng::new(7);
    let scattered: std::collections::BTreeSet<(usize, usize)> = (0..100)
        .map(|_| {
            let o = (rng.next_u64() % origins) as usize;
            (o, (rng.next_u64() % per_origin) as usize)
        })
        .collect();
    let cases: Vec<(&str, MemStore, &MemStore)> = vec![
        ("nothing changed", all(&|_, _| true), &full),
        (
            "100 new chunks at the tails",
            all(&|_, i| i < n - 10),
            &full,
        ),
        (
            "100 chunks missing, scattered",
            all(&|o, i| !scattered.contains(&(o, i))),
            &full,
        ),
        ("nothing in common: other origins", MemStore::new(), &full),
        (
            "nothing in common: alternate chunks",
            all(&|_, i| i % 2 == 0),
            &odd,
        ),
    ];
    println!(
        "| case ({total} chunks) | frames | discovery, both ways | round trips | wanted ranges | manifest (protocol 1) | time, first / repeated |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, a, b) in &cases {
        for frame in [65_536, 256] {
            let t = Instant::now();
            let ab = walk(a, *b, frame);
            let ba = walk(*b, a, frame);
            let first = t.elapsed();
            // Again: the stores kept their block summaries.
            let t = Instant::now();
            let _ = (walk(a, *b, frame), walk(*b, a, frame));
            let repeated = t.elapsed();
            let manifest =
                manifest_cost(b.len().unwrap(), frame) + manifest_cost(a.len().unwrap(), frame);
            println!(
                "| {name} | {} | {} B | {} | {} | {} B ({:.4}×) | {:.3} / {:.3} s |",
                if frame > 1024 { "64 KiB" } else { "256 B" },
                ab.bytes + ba.bytes,
                ab.round_trips.max(ba.round_trips),
                ab.wanted + ba.wanted,
                manifest,
                (ab.bytes + ba.bytes) as f64 / manifest as f64,
                first.as_secs_f64(),
                repeated.as_secs_f64(),
            );
        }
    }
    let every: Vec<VerifiedChunk> = logs.iter().flatten().cloned().collect();
    redb_case(&every, &full);
}

/// Times syncs where nothing changed between a `RedbStore` and a `MemStore` holding `chunks`.
fn redb_case(chunks: &[VerifiedChunk], twin: &MemStore) {
    let dir = std::env::temp_dir().join(format!("chunk-sync-recon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chunks.redb");
    let t = Instant::now();
    {
        let store = RedbStore::open_with(&path, Durability::Process).unwrap();
        for batch in chunks.chunks(65_536) {
            store.insert_batch(batch).unwrap();
        }
    }
    eprintln!(
        "stored {} chunks in redb in {:.1} s",
        chunks.len(),
        t.elapsed().as_secs_f64()
    );
    let sync = |store: &RedbStore| {
        let t = Instant::now();
        let cost = (walk(store, twin, 65_536), walk(twin, store, 65_536));
        (t.elapsed(), cost.0.bytes + cost.1.bytes)
    };
    let store = RedbStore::open_with(&path, Durability::Process).unwrap();
    let (first, bytes) = sync(&store);
    let (again, _) = sync(&store);
    drop(store);
    let store = RedbStore::open_with(&path, Durability::Process).unwrap();
    let (reopened, _) = sync(&store);
    println!();
    println!(
        "| `RedbStore`, {} chunks, nothing changed | discovery | first sync | repeated | after reopening |",
        chunks.len()
    );
    println!("|---|---|---|---|---|");
    println!(
        "| 64 KiB frames | {bytes} B | {:.3} s | {:.3} s | {:.3} s |",
        first.as_secs_f64(),
        again.as_secs_f64(),
        reopened.as_secs_f64()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A log of `count` chunks of one event each.
fn log(origin: NodeId, count: u64) -> Vec<VerifiedChunk> {
    let mut buf = [0u8; 256];
    let mut payload = [0u8; 16];
    let mut rng = Rng::new(origin.0);
    (0..count)
        .map(|seq| {
            rng.fill(&mut payload);
            let mut chunker = Chunker::new(origin, 1, seq, &mut buf).unwrap();
            let event = Event {
                origin,
                seq,
                timestamp: seq,
                kind: "r",
                privacy: Privacy::Public,
                payload: &payload,
            };
            let _ = chunker.push(&event).unwrap();
            let sealed = chunker.seal().unwrap();
            VerifiedChunk::new(sealed.id, sealed.bytes.to_vec()).unwrap()
        })
        .collect()
}

#[derive(Default)]
struct Cost {
    bytes: usize,
    round_trips: usize,
    wanted: usize,
}

/// `puller` reconciles with `server`, both in frames of `frame` bytes.
fn walk(puller: &dyn NodeStore, server: &dyn NodeStore, frame: usize) -> Cost {
    let mut walk = Box::new(Walk::<QUEUE, ENTRIES, RUNS, IN_FLIGHT>::new(1 << 24));
    let room = Room::for_frames(frame, frame, FRAMING);
    let mut cost = Cost::default();
    let mut runs = [Run { lo: 0, hi: 0 }; RUNS];
    let mut query_buf = vec![0; frame];
    let mut answer_buf = vec![0; frame];
    let mut resolve = |walk: &mut Walk<QUEUE, ENTRIES, RUNS, IN_FLIGHT>, cost: &mut Cost| loop {
        while let Some(range) = walk.next_own() {
            let (mine, n) = puller.summarize(&range, &mut runs).unwrap();
            walk.resolve(&mine, n.map(|n| &runs[..n]));
        }
        let before = cost.wanted;
        while walk.next_wanted().is_some() {
            cost.wanted += 1;
        }
        if before == cost.wanted {
            break;
        }
    };
    loop {
        resolve(&mut walk, &mut cost);
        // One round trip: every query the walk has now, then their answers in order.
        let mut answers = Vec::new();
        while let Some(query) = walk.next_query(room).unwrap() {
            let len = query.write(&mut query_buf).unwrap();
            let query = Query::read(&query_buf[..len]).unwrap();
            let (answered, last) = answer(server, &query, &mut answer_buf[..frame - FRAMING]);
            cost.bytes += len + FRAMING + answered + FRAMING;
            let origins = matches!(query, Query::Origins { .. });
            answers.push((origins, answer_buf[..answered].to_vec(), last));
        }
        if answers.is_empty() {
            break;
        }
        cost.round_trips += 1;
        for (origins, entries, last) in answers {
            if origins {
                walk.on_origins(&entries, last).unwrap();
            } else {
                walk.on_ranges(&entries).unwrap();
            }
            resolve(&mut walk, &mut cost);
        }
    }
    cost
}

/// The server's answer to `query` in `buf`: its length, and whether it ends the origins.
fn answer(server: &dyn NodeStore, query: &Query<'_>, buf: &mut [u8]) -> (usize, bool) {
    let mut answer = Answer::<ENTRIES>::new(query, buf.len() / MAX_ENTRY, RUNS).unwrap();
    if let Some((after, limit)) = answer.origins_to_list() {
        let mut out = vec![NodeId(0); limit];
        let (n, last) = server.origins_after(after, &mut out).unwrap();
        answer.origins_listed(&out[..n], last);
    }
    let mut runs = [Run { lo: 0, hi: 0 }; RUNS];
    while let Some((range, max_runs)) = answer.next_range() {
        let runs = &mut runs[..max_runs];
        let (summary, n) = server.summarize(&range, runs).unwrap();
        answer
            .summarized(buf, &summary, n.map(|n| &runs[..n]))
            .unwrap();
    }
    answer.finish().unwrap()
}

/// Bytes a full manifest exchange moves to send `hashes` hashes of one side's manifest to
/// the other in frames of `frame` bytes: its pages and the requests for them.
fn manifest_cost(hashes: usize, frame: usize) -> usize {
    chunk_sync_core::manifest::listing_cost(hashes, frame, PAGE)
}
