//! The chunks of fuzzed nodes: a few origins' logs, sealed once.
//!
//! [`held`] is the store of the fuzzed node; [`offered`] that of the honest peer the seed
//! generator records. They share two chunks; each holds chunks the other lacks, some
//! larger than the smallest frame, and one with a private and a shareable event.

use std::ops::Range;
use std::sync::OnceLock;

use chunk_sync_core::chunk::{Chunker, Push};
use chunk_sync_core::store::{ChunkStore, RamStore};
use chunk_sync_core::{Event, NodeId, Privacy, Verified};

/// A fuzzed node's store: room for what it holds and for what a session brings.
pub type Store = RamStore<16, 16384>;

/// The chunks of `origin`'s events at `seqs`, `per_chunk` sequence numbers a chunk from
/// `start` on, with `payload(seq)` as payloads; event 3 is private and event 4 shareable.
#[must_use]
pub fn seal(
    origin: u64,
    per_chunk: u32,
    start: u64,
    seqs: Range<u64>,
    payload: impl Fn(u64) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 8192];
    let mut chunker =
        Chunker::new(NodeId(origin), per_chunk, start, &mut buf[..]).expect("a chunker");
    let mut sealed = Vec::new();
    for seq in seqs {
        let payload = payload(seq);
        let event = Event {
            origin: NodeId(origin),
            seq,
            timestamp: 1_000_000 + seq,
            kind: "reading",
            privacy: match seq {
                3 => Privacy::Private,
                4 => Privacy::Shareable,
                _ => Privacy::Public,
            },
            payload: &payload,
        };
        if chunker.push(&event).expect("an event that fits") == Push::SealFirst {
            sealed.extend(chunker.seal().map(|c| c.bytes.to_vec()));
            assert_ne!(chunker.push(&event).expect("fits"), Push::SealFirst);
        }
    }
    sealed.extend(chunker.seal().map(|c| c.bytes.to_vec()));
    sealed
}

/// A short payload.
fn short(seq: u64) -> Vec<u8> {
    format!("t={seq}").into_bytes()
}

/// A payload that compresses well, `len` bytes.
fn text(seq: u64, len: usize) -> Vec<u8> {
    format!("sensor {seq} reads 21.5 C; ")
        .bytes()
        .cycle()
        .take(len)
        .collect()
}

/// Origin 1's first two chunks (sequence numbers 0..20), in both stores.
fn shared() -> Vec<Vec<u8>> {
    seal(1, 10, 0, 0..20, short)
}

/// The fuzzed node's chunks: [`shared`], and one chunk of origin 3 of about 2.4 KB.
#[must_use]
pub fn held_chunks() -> Vec<Vec<u8>> {
    let mut chunks = shared();
    chunks.extend(seal(3, 4, 0, 0..4, |seq| text(seq, 600)));
    chunks
}

/// The peer's chunks: [`shared`], origin 1's third chunk, two of origin 2 and a chunk of
/// origin 4 whose range starts before its only event.
#[must_use]
pub fn offered_chunks() -> Vec<Vec<u8>> {
    let mut chunks = shared();
    chunks.extend(seal(1, 10, 20, 20..30, short));
    chunks.extend(seal(2, 8, 0, 0..16, |seq| text(seq, 100)));
    chunks.extend(seal(4, 10, 0, 5..6, short));
    chunks
}

fn store_of(chunks: &[Vec<u8>]) -> Store {
    let mut store = Store::new();
    for bytes in chunks {
        store
            .insert(Verified::hash_of(bytes))
            .expect("room for the chunks");
    }
    store
}

/// The fuzzed node's store, sealed once.
pub fn held() -> &'static Store {
    static HELD: OnceLock<Store> = OnceLock::new();
    HELD.get_or_init(|| store_of(&held_chunks()))
}

/// The peer's store (for the seed generator).
#[must_use]
pub fn offered() -> Store {
    store_of(&offered_chunks())
}
