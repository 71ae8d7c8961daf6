//! The core end to end, in one process and in virtual time: two nodes chunk their logs,
//! exchange manifests as real frames, compute what each lacks, transfer the chunks through
//! a throttle, verify them and store them.
//!
//! ```text
//! cargo run -p chunk-sync-core --example demo --features std
//! ```

use chunk_sync_core::manifest::Manifest;
use chunk_sync_core::store::{ChunkStore, RamStore};
use chunk_sync_core::wire::{self, Decoded, HashList, Message};
use chunk_sync_core::{
    ChunkHash, ChunkView, EventBuf, EventChunkStore, Instant, NodeId, Privacy, ProgressTable,
    Throttle, ThrottleConfig, delta,
};

/// A node: its chunks, and a fixed-capacity store for what it receives.
struct Node {
    id: NodeId,
    chunks: EventChunkStore,
    received: RamStore<16, 16_384>,
}

impl Node {
    fn manifest(&self) -> Manifest<16> {
        let mut m = Manifest::new();
        m.extend_from_slice(&self.chunks.hashes())
            .expect("16 chunks at most in this demo");
        for id in self.received.ids() {
            let _ = m.insert(*id);
        }
        m
    }

    fn chunk_bytes(&self, id: &ChunkHash) -> Option<&[u8]> {
        self.chunks
            .get_chunk(id)
            .map(|c| c.bytes.as_slice())
            .or_else(|| self.received.get(id))
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
        received: RamStore::new(),
    };
    let mut b = Node {
        id: NodeId(2),
        chunks: EventChunkStore::new(10),
        received: RamStore::new(),
    };
    let a_log = log(a.id, 25);
    let b_log = log(b.id, 12);
    let made_a = a.chunks.create_chunks(&a_log).expect("chunking");
    let made_b = b.chunks.create_chunks(&b_log).expect("chunking");
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

    // B asks A for its manifest; the page travels as a real frame.
    let mut frame = vec![0u8; wire::DEFAULT_MAX_FRAME as usize];
    let a_manifest = a.manifest();
    let page = Message::ManifestPage {
        ids: HashList::new(a_manifest.as_slice()),
        last: true,
    };
    let Message::ManifestPage { ids, .. } = over_the_wire(&page, &mut frame) else {
        unreachable!()
    };
    let remote: Vec<ChunkHash> = ids.iter().collect();
    let b_manifest = b.manifest();
    let missing: Vec<ChunkHash> = delta::missing(b_manifest.as_slice(), &remote)
        .copied()
        .collect();
    let extra = delta::extra(b_manifest.as_slice(), &remote).count();
    println!(
        "\ndelta at {}: {} chunks to fetch from {}, {} that {} lacks",
        b.id,
        missing.len(),
        a.id,
        extra,
        a.id
    );

    // A sends each requested chunk through a 250 B/s throttle, in virtual time.
    let mut throttle = Throttle::new(ThrottleConfig::per_second(250)).expect("valid throttle");
    let mut progress = ProgressTable::<4>::new();
    let mut now = Instant::ZERO;
    progress
        .start_sync(a.id, missing.len() as u64, now)
        .expect("room for one peer");
    for id in &missing {
        let get = over_the_wire(&Message::EventChunkGet { hash: *id }, &mut frame);
        let Message::EventChunkGet { hash } = get else {
            unreachable!()
        };
        let bytes = a
            .chunk_bytes(&hash)
            .expect("A has every chunk it announced")
            .to_vec();
        let put = Message::EventChunkPut {
            hash,
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
        let Message::EventChunkPut { hash, data, .. } = over_the_wire(&put, &mut frame) else {
            unreachable!()
        };
        let p = progress.get_mut(&a.id).expect("tracked");
        match ChunkView::verify(&hash, data) {
            Ok(view) => {
                let verified = hash.verify(data).expect("checked just above");
                b.received.insert(verified).expect("room in the RAM store");
                p.synced_chunks += 1;
                p.bytes_transferred += data.len() as u64;
                println!(
                    "  t={:>9} {} verified and stored {} ({} events of {}, seq {}..{})",
                    now.saturating_duration_since(Instant::ZERO),
                    b.id,
                    hash,
                    view.len(),
                    view.origin(),
                    view.first_seq(),
                    view.end_seq()
                );
            }
            Err(e) => {
                p.failed_chunks += 1;
                println!("  {} rejected {hash}: {e}", b.id);
            }
        }
    }
    // A tampered chunk is refused and never stored.
    let mut forged = a.chunk_bytes(&missing[0]).expect("present").to_vec();
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
        .received
        .ids()
        .filter_map(|id| ChunkView::parse(b.received.get(id)?).ok())
        .map(|v| v.events().filter(Result::is_ok).count())
        .sum();
    println!(
        "{} now holds {} of {}'s {} shareable events; still missing: {}",
        b.id,
        events,
        a.id,
        25 - private,
        delta::missing(b.manifest().as_slice(), &remote).count()
    );
}
