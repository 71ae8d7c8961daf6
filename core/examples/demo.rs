//! The core end to end, in one process and in virtual time: two nodes chunk their logs,
//! reconcile their stores in real frames (range summaries, not lists of hashes), fetch the
//! ranges one lacks through a throttle, verify each chunk against its hash and its range,
//! and store it.
//!
//! ```text
//! cargo run -p chunk-sync-core --example demo --features std
//! ```

use chunk_sync_core::manifest::Manifest;
use chunk_sync_core::recon::{self, Answer, Query, Room, Run, Walk};
use chunk_sync_core::store::{ChunkStore, RamStore};
use chunk_sync_core::wire::{self, Decoded, Message};
use chunk_sync_core::{
    ChunkHash, ChunkView, EventBuf, EventChunkStore, Instant, NodeId, Privacy, ProgressTable,
    Throttle, ThrottleConfig, Verified, delta,
};

/// A node: the chunks it made of its log, and a fixed-capacity store of every chunk it
/// holds (its own and those it received).
struct Node {
    id: NodeId,
    chunks: EventChunkStore,
    held: RamStore<16, 16_384>,
}

impl Node {
    fn manifest(&self) -> Manifest<16> {
        let mut m = Manifest::new();
        for id in self.held.ids() {
            let _ = m.insert(*id);
        }
        m
    }

    /// What this node holds of `range`, and its runs, as a summary answers it.
    fn summarize(
        &self,
        range: &recon::KeyRange,
        runs: &mut [Run],
    ) -> (recon::Summary, Option<usize>) {
        recon::summarize(range, runs, |r, out| self.held.chunks_in(r, out)).expect("RAM store")
    }
}

fn log(origin: NodeId, count: u64) -> Vec<EventBuf> {
    (0..count)
        .map(|seq| EventBuf {
            origin,
            seq,
            timestamp: 1_700_000_000_000_000 + seq * 1_000_000,
            kind: "temperature".into(),
            privacy: if seq % 7 == 3 {
                Privacy::Private
            } else {
                Privacy::Public
            },
            payload: format!("{{\"celsius\":{}}}", 20 + seq % 5).into_bytes(),
        })
        .collect()
}

/// Encodes `message` as a frame and decodes it again, as the peer would.
fn over_the_wire<'b>(message: &Message<'_>, buf: &'b mut [u8]) -> Message<'b> {
    let len = wire::encode(message, buf).expect("frame fits").len();
    match wire::decode(&buf[..len], wire::DEFAULT_MAX_FRAME) {
        Ok(Decoded::Frame { message, .. }) => message,
        other => panic!("frame did not decode: {other:?}"),
    }
}

fn main() {
    let mut a = Node {
        id: NodeId(1),
        chunks: EventChunkStore::new(10),
        held: RamStore::new(),
    };
    let mut b = Node {
        id: NodeId(2),
        chunks: EventChunkStore::new(10),
        held: RamStore::new(),
    };
    let a_log = log(a.id, 25);
    let b_log = log(b.id, 12);
    let made_a = a.chunks.create_chunks(&a_log).expect("chunking");
    let made_b = b.chunks.create_chunks(&b_log).expect("chunking");
    for node in [&mut a, &mut b] {
        for id in node.chunks.hashes() {
            let chunk = node.chunks.get_chunk(&id).expect("made just now");
            let verified = Verified::new(id, &chunk.bytes).expect("own chunks verify");
            node.held.insert(verified).expect("room in the RAM store");
        }
    }
    // B already had A's first chunk, from an earlier sync.
    let first = made_a[0].id;
    let copy = a.held.get(&first).expect("held").to_vec();
    b.held
        .insert(Verified::new(first, &copy).expect("verifies"))
        .expect("room");
    let private = a_log
        .iter()
        .filter(|e| e.privacy == Privacy::Private)
        .count();
    println!(
        "{} wrote 25 events ({private} private) -> {} chunks:",
        a.id,
        made_a.len()
    );
    for c in &made_a {
        println!(
            "  {} seq {:>2}..{:<2} {} events, {} bytes",
            c.id,
            c.first_seq,
            c.end_seq,
            c.events,
            c.bytes.len()
        );
    }
    println!("{} wrote 12 events -> {} chunks", b.id, made_b.len());

    // B reconciles with A: each query and each answer travels as a real frame.
    let mut frame = vec![0u8; wire::DEFAULT_MAX_FRAME as usize];
    let mut walk = Walk::<16, 16, 4>::new(1_000);
    let room = Room::for_frames(1024, 1024, wire::RECON_OVERHEAD + 16);
    let mut runs = [Run { lo: 0, hi: 0 }; 4];
    let (mut discovery, mut wanted) = (0, Vec::new());
    loop {
        let mut query_bytes = [0u8; 512];
        let Some(query) = walk.next_query(room).expect("within bounds") else {
            break;
        };
        let n = query.write(&mut query_bytes).expect("fits");
        let query = Message::Query {
            query: &query_bytes[..n],
        };
        discovery += query.frame_len();
        let Message::Query { query } = over_the_wire(&query, &mut frame) else {
            unreachable!()
        };
        // A answers from its store.
        let query = Query::read(query).expect("a query");
        let mut answer = Answer::<16>::new(&query, room.entries, 4).expect("answerable");
        if let Some((after, limit)) = answer.origins_to_list() {
            let mut out = [NodeId(0); 16];
            let (n, last) = a
                .held
                .origins_after(after, &mut out[..limit])
                .expect("RAM store");
            answer.origins_listed(&out[..n], last);
        }
        let mut entries = [0u8; 1024];
        while let Some((range, max_runs)) = answer.next_range() {
            let (summary, n) = a.summarize(&range, &mut runs[..max_runs]);
            let sent = n.map(|n| &runs[..n]);
            answer
                .summarized(&mut entries, &summary, sent)
                .expect("fits");
        }
        let (len, last) = answer.finish().expect("complete");
        let reply = Message::Answer {
            last,
            entries: &entries[..len],
        };
        discovery += reply.frame_len();
        let Message::Answer { last, entries } = over_the_wire(&reply, &mut frame) else {
            unreachable!()
        };
        walk.on_answer(entries, last).expect("a true answer");
        // B compares with what it holds.
        while let Some(range) = walk.next_own() {
            let (mine, n) = b.summarize(&range, &mut runs);
            let copy = runs;
            walk.resolve(&mine, n.map(|n| &copy[..n]));
        }
        while let Some(range) = walk.next_wanted() {
            wanted.push(range);
        }
    }
    println!(
        "\nreconciliation at {}: {} query, {discovery} bytes both ways; wanted from {}:",
        b.id,
        walk.stats().queries,
        a.id
    );
    for r in &wanted {
        println!("  origin {} seq {}..{}", r.origin, r.lo, r.hi.min(1 << 20));
    }

    // A sends the chunks of each wanted range through a 250 B/s throttle, in virtual time.
    let mut throttle = Throttle::new(ThrottleConfig::per_second(250)).expect("valid throttle");
    let mut progress = ProgressTable::<4>::new();
    let mut now = Instant::ZERO;
    progress
        .start_sync(a.id, 0, now)
        .expect("room for one peer");
    for range in &wanted {
        let get = Message::GetRange {
            origin: range.origin,
            lo: range.lo,
            hi: range.hi,
        };
        let Message::GetRange { origin, lo, hi } = over_the_wire(&get, &mut frame) else {
            unreachable!()
        };
        let asked = recon::KeyRange { origin, lo, hi };
        let mut in_range = [(Default::default(), ChunkHash::default()); 16];
        let n = a.held.chunks_in(&asked, &mut in_range).expect("RAM store");
        for (_, id) in &in_range[..n] {
            let bytes = a.held.get(id).expect("listed").to_vec();
            let put = Message::EventChunkPut {
                total_len: bytes.len() as u32,
                offset: 0,
                data: &bytes,
            };
            if let Err(wait) = throttle.try_consume(now, put.frame_len() as u64) {
                now = wait.earliest();
                throttle
                    .try_consume(now, put.frame_len() as u64)
                    .expect("admitted once the window reopens");
            }
            let Message::EventChunkPut { data, .. } = over_the_wire(&put, &mut frame) else {
                unreachable!()
            };
            // The put names no hash: B hashes what arrived, checks it is a valid chunk of
            // the range it asked for, and stores it.
            let verified = Verified::hash_of(data);
            let p = progress.get_mut(&a.id).expect("tracked");
            p.total_chunks += 1;
            match ChunkView::validated(data) {
                Ok(view) if asked.contains(view.origin(), view.first_seq()) => {
                    b.held.insert(verified).expect("room in the RAM store");
                    p.synced_chunks += 1;
                    p.bytes_transferred += data.len() as u64;
                    println!(
                        "  t={:>9} {} verified and stored {} ({} events of {}, seq {}..{})",
                        now.saturating_duration_since(Instant::ZERO),
                        b.id,
                        verified.id(),
                        view.len(),
                        view.origin(),
                        view.first_seq(),
                        view.end_seq()
                    );
                }
                _ => {
                    p.failed_chunks += 1;
                    println!("  {} rejected {}", b.id, verified.id());
                }
            }
        }
    }
    let missing: Vec<ChunkHash> = a.manifest().as_slice().to_vec();
    // A tampered chunk is refused and never stored.
    let mut forged = a.held.get(&missing[0]).expect("present").to_vec();
    if let Some(last) = forged.last_mut() {
        *last ^= 0xff;
    }
    println!(
        "\na forged copy of {}: {}",
        missing[0],
        ChunkView::verify(&missing[0], &forged).unwrap_err()
    );

    let p = progress.complete_sync(&a.id).expect("tracked");
    println!(
        "\nsync {} <- {}: {:.1}% ({} synced, {} failed, {} bytes) in {} of virtual time at <= 250 B/s",
        b.id,
        a.id,
        p.progress_percent(),
        p.synced_chunks,
        p.failed_chunks,
        p.bytes_transferred,
        p.elapsed(now)
    );
    let events: usize = b
        .held
        .ids()
        .filter_map(|id| ChunkView::parse(b.held.get(id)?).ok())
        .filter(|v| v.origin() == a.id)
        .map(|v| v.events().filter(Result::is_ok).count())
        .sum();
    println!(
        "{} now holds {} of {}'s {} shareable events; still missing (compute_delta): {}",
        b.id,
        events,
        a.id,
        25 - private,
        delta::missing(b.manifest().as_slice(), &missing).count()
    );
}
