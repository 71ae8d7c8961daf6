//! The chunks of fuzzed nodes: a few origins' logs, sealed once.
//!
//! [`held`] is the store of the fuzzed node; [`offered`] that of the honest peer the seed
//! generator records. They share two chunks; each holds chunks the other lacks, some
//! larger than the smallest frame, and one with a private and a shareable event.

use std::ops::Range;
use std::sync::OnceLock;

use chunk_sync_core::chunk::{Chunker, Push};
use chunk_sync_core::secure::Keypair;
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
    seal_as(NodeId(origin), None, per_chunk, start, seqs, payload)
}

/// [`seal`], of the log of `keys`, each chunk signed by it.
#[must_use]
pub fn seal_signed(
    keys: &Keypair,
    per_chunk: u32,
    start: u64,
    seqs: Range<u64>,
    payload: impl Fn(u64) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    seal_as(keys.node_id(), Some(keys), per_chunk, start, seqs, payload)
}

fn seal_as(
    origin: NodeId,
    keys: Option<&Keypair>,
    per_chunk: u32,
    start: u64,
    seqs: Range<u64>,
    payload: impl Fn(u64) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 8192];
    let mut chunker = Chunker::new(origin, per_chunk, start, &mut buf[..]).expect("a chunker");
    if let Some(keys) = keys {
        chunker.sign_with(keys).expect("the origin's key");
    }
    let mut sealed = Vec::new();
    for seq in seqs {
        let payload = payload(seq);
        let event = Event {
            origin,
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

/// On a secure link, the fuzzed node's chunks: two of the peer's log (both hold them)
/// and one of its own log of about 2.4 KB, each signed by its origin.
#[must_use]
pub fn secure_held_chunks(node: &Keypair, peer: &Keypair) -> Vec<Vec<u8>> {
    let mut chunks = seal_signed(peer, 10, 0, 0..20, short);
    chunks.extend(seal_signed(node, 4, 0, 0..4, |seq| text(seq, 600)));
    chunks
}

/// On a secure link, the peer's chunks: three of its own log, and four of `relayed`'s log
/// (which the fuzzed node trusts), one with a range that starts before its only event.
#[must_use]
pub fn secure_offered_chunks(peer: &Keypair, relayed: &Keypair) -> Vec<Vec<u8>> {
    let mut chunks = seal_signed(peer, 10, 0, 0..30, short);
    chunks.extend(seal_signed(relayed, 8, 0, 0..16, |seq| text(seq, 100)));
    chunks.extend(seal_signed(relayed, 10, 20, 25..26, short));
    chunks
}

/// A store of these chunks.
#[must_use]
pub fn store_of(chunks: &[Vec<u8>]) -> Store {
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
