//! The store a node shares between its sessions, and [`MemStore`], the in-memory one.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use chunk_sync_core::recon::{self, BlockSummary, KeyRange, Run, Summary, SummaryError};
use chunk_sync_core::store::{Fork, fill_origins, fill_page};
use chunk_sync_core::{ChunkHash, HashMismatch, NodeId, Span};

use crate::error::StoreError;

/// Chunk bytes known to hash to their id, owned and cheap to clone.
///
/// Made by hashing ([`VerifiedChunk::new`]) or by a session that verified the bytes it
/// received, so a [`NodeStore`] is never handed an unverified byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedChunk {
    id: ChunkHash,
    bytes: Bytes,
}

impl VerifiedChunk {
    /// Hashes `bytes` and accepts them if they hash to `expected`.
    pub fn new(expected: ChunkHash, bytes: impl Into<Bytes>) -> Result<Self, HashMismatch> {
        let bytes = bytes.into();
        chunk_sync_core::Verified::new(expected, &bytes)?;
        Ok(Self {
            id: expected,
            bytes,
        })
    }

    /// Bytes a session has just verified against `id`.
    pub(crate) const fn trusted(id: ChunkHash, bytes: Bytes) -> Self {
        Self { id, bytes }
    }

    /// The chunk's name.
    #[must_use]
    pub const fn id(&self) -> ChunkHash {
        self.id
    }

    /// The chunk's bytes.
    #[must_use]
    pub const fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The chunk's bytes, taken out.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// A copy of bytes the core verified (or sealed), without hashing them again.
impl From<chunk_sync_core::Verified<'_>> for VerifiedChunk {
    fn from(chunk: chunk_sync_core::Verified<'_>) -> Self {
        Self::trusted(chunk.id(), Bytes::copy_from_slice(chunk.bytes()))
    }
}

/// What [`NodeStore::insert_batch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inserted {
    /// Chunks that were new.
    pub added: usize,
    /// Chunks refused because they overlap a different stored chunk of their origin.
    pub forks: Vec<Fork>,
    /// Chunks the store held already (fetched from two peers at once, for example).
    pub held: Vec<ChunkHash>,
}

/// The fork `span` of chunk `id` makes with its stored neighbours, if any: `before` is the
/// stored chunk of the same origin that starts at or before `span`, `after` the first that
/// starts after it. Stored spans of one origin never overlap, so these two are the only
/// candidates.
pub(crate) fn fork_with(
    id: ChunkHash,
    span: Span,
    before: Option<(Span, ChunkHash)>,
    after: Option<(Span, ChunkHash)>,
) -> Option<Fork> {
    [before, after]
        .into_iter()
        .flatten()
        .find(|(other, other_id)| *other_id != id && other.overlaps(&span))
        .map(|(_, existing)| Fork {
            refused: id,
            span,
            existing,
        })
}

/// What a node needs of its chunk store: [`MemStore`] here; a persistent store implements
/// it too.
///
/// Calls are synchronous and may come from several sessions at once: a store synchronises
/// itself, so that reads need not wait for a write in progress (`MemStore` behind a
/// read-write lock, `RedbStore` through redb's transactions).
pub trait NodeStore: Send + Sync + 'static {
    /// Whether the store has the chunk.
    fn contains(&self, id: &ChunkHash) -> Result<bool, StoreError>;
    /// The chunk's bytes, if present.
    fn get(&self, id: &ChunkHash) -> Result<Option<Bytes>, StoreError>;
    /// Keeps a verified chunk; returns whether it was new. A chunk whose span overlaps a
    /// different stored chunk of its origin is refused with a [`Fork`] error (the first
    /// one stays). On error nothing stored changes.
    fn insert(&self, chunk: VerifiedChunk) -> Result<bool, StoreError>;
    /// Keeps several verified chunks and says how many were new and which were refused
    /// as forks (the others are kept). On error a transactional store keeps none of them.
    fn insert_batch(&self, chunks: &[VerifiedChunk]) -> Result<Inserted, StoreError> {
        let mut done = Inserted::default();
        for chunk in chunks {
            match self.insert(chunk.clone()) {
                Ok(true) => done.added += 1,
                Ok(false) => done.held.push(chunk.id()),
                Err(e) => done.forks.push(*e.downcast::<Fork>()?),
            }
        }
        Ok(done)
    }
    /// Whether writes wait on a disk, so that a node should make them on a blocking thread
    /// while the transfer goes on (chunks count as stored only once written either way).
    fn writes_block(&self) -> bool {
        false
    }
    /// Fills `out` with the stored hashes strictly after `after` (from the first if
    /// `None`), ascending: one manifest page. Returns how many it wrote and whether the
    /// store holds none after them (the contract of the core's `ChunkStore::ids_after`).
    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), StoreError>;
    /// Every stored hash, ascending, read page by page.
    fn ids(&self) -> Result<Vec<ChunkHash>, StoreError> {
        let mut ids = Vec::new();
        let mut page = vec![ChunkHash::default(); 4096];
        loop {
            let (n, last) = self.ids_after(ids.last(), &mut page)?;
            ids.extend_from_slice(&page[..n]);
            if last || n == 0 {
                return Ok(ids);
            }
        }
    }
    /// Fills `out` with the origins of the stored chunks strictly after `after` (from the
    /// lowest if `None`), ascending; returns how many it wrote and whether no origin
    /// follows them (the contract of the core's `ChunkStore::origins_after`).
    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), StoreError>;
    /// Fills `out` with the stored chunks of `range` in ascending `first_seq`; returns how
    /// many it wrote, fewer than `out.len()` when the range holds no more (the contract
    /// of the core's `ChunkStore::chunks_in`).
    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError>;
    /// What the store holds of `range`, for reconciliation: its [`Summary`], and its runs
    /// written into `runs` if they fit (`None` if not). Read through
    /// [`chunks_in`](Self::chunks_in) unless a store knows better.
    fn summarize(
        &self,
        range: &KeyRange,
        runs: &mut [Run],
    ) -> Result<(Summary, Option<usize>), StoreError> {
        recon::summarize(range, runs, |r, out| self.chunks_in(r, out)).map_err(summary_error)
    }
    /// The first stored chunk of `range` (lowest `first_seq`) with its span, if the range
    /// holds any: what a node serves next for a range request.
    fn first_in(&self, range: &KeyRange) -> Result<Option<(Span, Bytes)>, StoreError> {
        let mut first = [(Span::default(), ChunkHash::default())];
        if self.chunks_in(range, &mut first)? == 0 {
            return Ok(None);
        }
        let (span, id) = first[0];
        Ok(self.get(&id)?.map(|bytes| (span, bytes)))
    }
    /// Number of chunks.
    fn len(&self) -> Result<usize, StoreError>;
    /// Whether the store is empty.
    fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().map(|n| n == 0)
    }
    /// Bytes of chunk data held in memory (the original's `cache_size_bytes`).
    fn cache_size_bytes(&self) -> usize {
        0
    }
    /// Forgets what is held in memory only (the original's `clear_cache`).
    fn clear_cache(&self) {}
}

/// A shared store is a store: one store can serve several nodes, or a node and the code
/// around it. Every method forwards, those with default bodies too, so that a store's own
/// (faster) ones are used through an `Arc`.
impl<S: NodeStore + ?Sized> NodeStore for Arc<S> {
    fn contains(&self, id: &ChunkHash) -> Result<bool, StoreError> {
        (**self).contains(id)
    }
    fn get(&self, id: &ChunkHash) -> Result<Option<Bytes>, StoreError> {
        (**self).get(id)
    }
    fn insert(&self, chunk: VerifiedChunk) -> Result<bool, StoreError> {
        (**self).insert(chunk)
    }
    fn insert_batch(&self, chunks: &[VerifiedChunk]) -> Result<Inserted, StoreError> {
        (**self).insert_batch(chunks)
    }
    fn writes_block(&self) -> bool {
        (**self).writes_block()
    }
    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), StoreError> {
        (**self).ids_after(after, out)
    }
    fn ids(&self) -> Result<Vec<ChunkHash>, StoreError> {
        (**self).ids()
    }
    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), StoreError> {
        (**self).origins_after(after, out)
    }
    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError> {
        (**self).chunks_in(range, out)
    }
    fn summarize(
        &self,
        range: &KeyRange,
        runs: &mut [Run],
    ) -> Result<(Summary, Option<usize>), StoreError> {
        (**self).summarize(range, runs)
    }
    fn first_in(&self, range: &KeyRange) -> Result<Option<(Span, Bytes)>, StoreError> {
        (**self).first_in(range)
    }
    fn len(&self) -> Result<usize, StoreError> {
        (**self).len()
    }
    fn is_empty(&self) -> Result<bool, StoreError> {
        (**self).is_empty()
    }
    fn cache_size_bytes(&self) -> usize {
        (**self).cache_size_bytes()
    }
    fn clear_cache(&self) {
        (**self).clear_cache();
    }
}

/// A failed summary as a store error.
pub(crate) fn summary_error(e: SummaryError<StoreError>) -> StoreError {
    match e {
        SummaryError::Store(e) => e,
        SummaryError::OutOfOrder => StoreError::from(SummaryError::<StoreError>::OutOfOrder),
    }
}

/// A [`MemStore`] that would exceed its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes the chunk needs.
    pub needed: usize,
    /// Bytes still free.
    pub free: usize,
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory store full: a chunk of {} bytes does not fit the {} bytes left",
            self.needed, self.free
        )
    }
}

impl std::error::Error for MemoryLimit {}

/// Chunks in memory, up to a byte limit. A chunk that would exceed the limit is refused
/// with [`MemoryLimit`]; nothing is evicted behind the node's back. A chunk that forks a
/// stored one is refused with [`Fork`].
#[derive(Debug, Default)]
pub struct MemStore {
    held: RwLock<Held>,
    limit: Option<usize>,
    /// Summaries of whole blocks: a chunk stored after its block's last one extends the
    /// block's summary (or starts one); any other drops it, to be made when a
    /// reconciliation needs it.
    blocks: Mutex<BTreeMap<(NodeId, u64), Option<BlockSummary>>>,
}

/// What a [`MemStore`] holds.
#[derive(Debug, Default)]
struct Held {
    chunks: BTreeMap<ChunkHash, Bytes>,
    /// The chunks' spans by `(origin, first_seq)`: `(end_seq, id)`.
    spans: BTreeMap<(NodeId, u64), (u64, ChunkHash)>,
    size: usize,
}

impl Held {
    fn chunks_in(&self, range: &KeyRange, out: &mut [(Span, ChunkHash)]) -> usize {
        if range.lo >= range.hi {
            return 0;
        }
        let keys = (range.origin, range.lo)..(range.origin, range.hi);
        let found = self
            .spans
            .range(keys)
            .map(|(&(origin, first_seq), &(end_seq, id))| {
                let span = Span {
                    origin,
                    first_seq,
                    end_seq,
                };
                (span, id)
            });
        out.iter_mut().zip(found).map(|(slot, c)| *slot = c).count()
    }

    fn fork(&self, id: ChunkHash, span: Span) -> Option<Fork> {
        let at = (span.origin, span.first_seq);
        let neighbour =
            |(&(origin, first_seq), &(end_seq, id)): (&(NodeId, u64), &(u64, ChunkHash))| {
                (
                    Span {
                        origin,
                        first_seq,
                        end_seq,
                    },
                    id,
                )
            };
        let before = self.spans.range(..=at).next_back().map(neighbour);
        let after = self
            .spans
            .range((Excluded(at), Unbounded))
            .next()
            .map(neighbour);
        fork_with(id, span, before, after)
    }
}

impl MemStore {
    /// A store without a limit.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding at most `limit` bytes of chunk data.
    #[must_use]
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn blocks(&self) -> MutexGuard<'_, BTreeMap<(NodeId, u64), Option<BlockSummary>>> {
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a [`MemStore`] holds, with its block summaries, as one view for
/// [`recon::summarize_by_blocks`].
struct HeldView<'a> {
    held: &'a Held,
    store: &'a MemStore,
}

impl recon::Blocks for HeldView<'_> {
    type Error = StoreError;

    fn next_start(&self, origin: NodeId, from: u64, hi: u64) -> Result<Option<u64>, StoreError> {
        if from >= hi {
            return Ok(None);
        }
        let keys = (origin, from)..(origin, hi);
        Ok(self.held.spans.range(keys).next().map(|(k, _)| k.1))
    }

    fn block(&self, origin: NodeId, block: u64) -> Result<Option<BlockSummary>, StoreError> {
        if let Some(kept) = self.store.blocks().get(&(origin, block)) {
            return Ok(kept.clone());
        }
        let (lo, hi) = recon::block_range(block);
        let chunks = self
            .held
            .spans
            .range((origin, lo)..(origin, hi))
            .map(|(&(_, first), &(end, id))| (first, end, id));
        let made =
            BlockSummary::of(block, chunks).map_err(|_| summary_error(SummaryError::OutOfOrder))?;
        self.store.blocks().insert((origin, block), made.clone());
        Ok(made)
    }

    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError> {
        Ok(self.held.chunks_in(range, out))
    }
}

impl NodeStore for MemStore {
    fn contains(&self, id: &ChunkHash) -> Result<bool, StoreError> {
        Ok(self.read().chunks.contains_key(id))
    }

    fn get(&self, id: &ChunkHash) -> Result<Option<Bytes>, StoreError> {
        Ok(self.read().chunks.get(id).cloned())
    }

    fn insert(&self, chunk: VerifiedChunk) -> Result<bool, StoreError> {
        let mut held = self.write();
        if held.chunks.contains_key(&chunk.id) {
            return Ok(false);
        }
        let span = Span::of(&chunk.bytes);
        if let Some(fork) = span.and_then(|span| held.fork(chunk.id, span)) {
            return Err(fork.into());
        }
        let needed = chunk.bytes.len();
        if let Some(limit) = self.limit {
            let free = limit.saturating_sub(held.size);
            if needed > free {
                return Err(MemoryLimit { needed, free }.into());
            }
        }
        held.size += needed;
        if let Some(span) = span {
            let block = recon::block_of(span.first_seq);
            let key = (span.origin, block);
            // A chunk after the block's last one extends its summary (or starts one for a
            // block that held none); any other drops it, to be made when needed.
            let mut blocks = self.blocks();
            let kept = blocks.remove(&key).or_else(|| {
                let (lo, hi) = recon::block_range(block);
                let mut held_there = held.spans.range((span.origin, lo)..(span.origin, hi));
                held_there.next().is_none().then_some(None)
            });
            let added = [(span.first_seq, span.end_seq, chunk.id)];
            if let Some(Ok(summary)) = kept.map(|k| BlockSummary::extended(k, block, added)) {
                blocks.insert(key, summary);
            }
            drop(blocks);
            held.spans
                .insert((span.origin, span.first_seq), (span.end_seq, chunk.id));
        }
        held.chunks.insert(chunk.id, chunk.bytes);
        Ok(true)
    }

    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), StoreError> {
        let from = after.map_or(Unbounded, |a| Excluded(*a));
        let held = self.read();
        let ids = held.chunks.range((from, Unbounded)).map(|(id, _)| *id);
        Ok(fill_page(out, ids))
    }

    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), StoreError> {
        let held = self.read();
        Ok(fill_origins(out, after, |above| {
            let from = match above {
                None => Unbounded,
                Some(a) => Excluded((a, u64::MAX)),
            };
            held.spans.range((from, Unbounded)).next().map(|(k, _)| k.0)
        }))
    }

    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError> {
        Ok(self.read().chunks_in(range, out))
    }

    /// Whole blocks are summarised once and kept until one of their chunks changes.
    fn summarize(
        &self,
        range: &KeyRange,
        runs: &mut [Run],
    ) -> Result<(Summary, Option<usize>), StoreError> {
        let held = self.read();
        let view = HeldView {
            held: &held,
            store: self,
        };
        recon::summarize_by_blocks(&view, range, runs).map_err(summary_error)
    }

    fn len(&self) -> Result<usize, StoreError> {
        Ok(self.read().chunks.len())
    }

    fn cache_size_bytes(&self) -> usize {
        self.read().size
    }

    fn clear_cache(&self) {
        let mut held = self.write();
        held.chunks.clear();
        held.spans.clear();
        held.size = 0;
        self.blocks().clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_shared_store_is_one_store() {
        let shared = Arc::new(MemStore::new());
        let as_store: Box<dyn NodeStore> = Box::new(Arc::clone(&shared));
        let a = VerifiedChunk::new(ChunkHash::of(b"aaaaaa"), &b"aaaaaa"[..]).unwrap();
        assert!(
            as_store
                .insert_batch(std::slice::from_ref(&a))
                .unwrap()
                .added
                == 1
        );
        assert!(shared.contains(&a.id()).unwrap());
        assert_eq!(shared.cache_size_bytes(), 6);
        assert!(!as_store.writes_block());
        as_store.clear_cache();
        assert!(shared.is_empty().unwrap());
    }

    /// A store whose own `first_in` and `ids` answer what the trait's default bodies
    /// (built on `get`, `chunks_in` and `ids_after`) never would.
    struct Own;

    impl NodeStore for Own {
        fn contains(&self, _: &ChunkHash) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn get(&self, _: &ChunkHash) -> Result<Option<Bytes>, StoreError> {
            Ok(None)
        }
        fn insert(&self, _: VerifiedChunk) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn ids_after(
            &self,
            _: Option<&ChunkHash>,
            _: &mut [ChunkHash],
        ) -> Result<(usize, bool), StoreError> {
            Ok((0, true))
        }
        fn ids(&self) -> Result<Vec<ChunkHash>, StoreError> {
            Ok(vec![ChunkHash::of(b"own")])
        }
        fn origins_after(
            &self,
            _: Option<NodeId>,
            _: &mut [NodeId],
        ) -> Result<(usize, bool), StoreError> {
            Ok((0, true))
        }
        fn chunks_in(
            &self,
            _: &KeyRange,
            _: &mut [(Span, ChunkHash)],
        ) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn first_in(&self, range: &KeyRange) -> Result<Option<(Span, Bytes)>, StoreError> {
            let span = Span {
                origin: range.origin,
                first_seq: range.lo,
                end_seq: range.lo + 1,
            };
            Ok(Some((span, Bytes::from_static(b"own"))))
        }
        fn len(&self) -> Result<usize, StoreError> {
            Ok(0)
        }
    }

    #[test]
    fn a_shared_store_answers_with_the_stores_own_methods() {
        let shared = Arc::new(Own);
        let range = KeyRange::whole(NodeId(1));
        let (_, bytes) = NodeStore::first_in(&shared, &range).unwrap().unwrap();
        assert_eq!(&bytes[..], b"own");
        assert_eq!(
            NodeStore::ids(&shared).unwrap(),
            vec![ChunkHash::of(b"own")]
        );
    }

    #[test]
    fn the_limit_refuses_instead_of_evicting() {
        let s = MemStore::with_limit(10);
        let a = VerifiedChunk::new(ChunkHash::of(b"aaaaaa"), &b"aaaaaa"[..]).unwrap();
        let b = VerifiedChunk::new(ChunkHash::of(b"bbbbbb"), &b"bbbbbb"[..]).unwrap();
        assert!(s.insert(a.clone()).unwrap());
        assert!(!s.insert(a.clone()).unwrap());
        let err = s.insert(b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory store full: a chunk of 6 bytes does not fit the 4 bytes left"
        );
        assert_eq!((s.len().unwrap(), s.cache_size_bytes()), (1, 6));
        assert_eq!(s.get(&a.id()).unwrap().as_deref(), Some(&b"aaaaaa"[..]));
        assert!(VerifiedChunk::new(a.id(), &b"other"[..]).is_err());
        let mut page = [ChunkHash::default(); 5];
        assert_eq!(s.ids_after(None, &mut page).unwrap(), (1, true));
        assert_eq!(page[0], a.id());
        assert_eq!(s.ids().unwrap(), vec![a.id()]);
        s.clear_cache();
        assert_eq!((s.len().unwrap(), s.cache_size_bytes()), (0, 0));
    }

    /// Checks a store's range queries against the chunks it was given: origins page by
    /// page, each origin's chunks in key order, and summaries equal to the core's.
    pub(crate) fn answers_range_queries(store: &dyn NodeStore) {
        let chunks = [
            chunk(9, 0, 4, "a"),
            chunk(3, 0, 2, "b"),
            chunk(9, 4, 4, "c"),
            chunk(3, 2, 2, "d"),
            chunk(9, 20, 1, "e"),
            chunk(u64::MAX, 0, 1, "f"),
        ];
        store.insert_batch(&chunks).unwrap();
        let mut origins = [NodeId(0); 2];
        assert_eq!(store.origins_after(None, &mut origins).unwrap(), (2, false));
        assert_eq!(origins, [NodeId(3), NodeId(9)]);
        let after = Some(NodeId(9));
        assert_eq!(store.origins_after(after, &mut origins).unwrap(), (1, true));
        assert_eq!(origins[0], NodeId(u64::MAX));

        let range = KeyRange::whole(NodeId(9));
        let mut page = [(Span::default(), ChunkHash::default()); 8];
        assert_eq!(store.chunks_in(&range, &mut page).unwrap(), 3);
        let firsts: Vec<u64> = page[..3].iter().map(|(s, _)| s.first_seq).collect();
        assert_eq!(firsts, [0, 4, 20]);
        let mut runs = [Run { lo: 0, hi: 0 }; 4];
        let (summary, n) = store.summarize(&range, &mut runs).unwrap();
        assert_eq!(
            (summary.count, summary.first, summary.end, n),
            (3, 0, 21, Some(2))
        );
        assert_eq!(runs[..2], [Run { lo: 0, hi: 8 }, Run { lo: 20, hi: 21 }]);
        let mut model_runs = [Run { lo: 0, hi: 0 }; 4];
        let mut model = recon::Summarizer::new(range, &mut model_runs);
        for (span, id) in &page[..3] {
            model.push(span.first_seq, span.end_seq, id).unwrap();
        }
        assert_eq!(model.finish().0, summary);
        let tail = KeyRange {
            lo: 1,
            hi: 20,
            ..range
        };
        assert_eq!(store.chunks_in(&tail, &mut page).unwrap(), 1);
        assert_eq!(page[0].1, chunks[2].id());
    }

    #[test]
    fn a_mem_store_answers_range_queries() {
        answers_range_queries(&MemStore::new());
    }

    /// Checks a store's summaries against summaries made chunk by chunk, on ranges that
    /// cover blocks whole and in part, before and after a block changes.
    pub(crate) fn summaries_follow_inserts(store: &dyn NodeStore) {
        let check = || {
            let ranges = [
                KeyRange::whole(NodeId(1)),
                KeyRange {
                    origin: NodeId(1),
                    lo: 0,
                    hi: 8192,
                },
                KeyRange {
                    origin: NodeId(1),
                    lo: 1,
                    hi: 12_000,
                },
                KeyRange {
                    origin: NodeId(1),
                    lo: 4096,
                    hi: 4097,
                },
            ];
            for range in ranges {
                let (mut a, mut b) = ([Run { lo: 0, hi: 0 }; 4], [Run { lo: 0, hi: 0 }; 4]);
                let kept = store.summarize(&range, &mut a).unwrap();
                let plain =
                    recon::summarize(&range, &mut b, |r, out| store.chunks_in(r, out)).unwrap();
                assert_eq!(kept, plain, "{range:?}");
            }
        };
        for first in [0, 4096, 5000, 9000] {
            store.insert(chunk(1, first, 1, "x")).unwrap();
        }
        check();
        check();
        store.insert(chunk(1, 4097, 1, "y")).unwrap();
        store.insert(chunk(1, 1, 1, "z")).unwrap();
        check();
    }

    #[test]
    fn a_mem_store_s_block_summaries_follow_inserts() {
        summaries_follow_inserts(&MemStore::new());
    }

    /// A chunk of `events` public events of `origin` from `first`, each with `payload`.
    pub(crate) fn chunk(origin: u64, first: u64, events: u64, payload: &str) -> VerifiedChunk {
        let events: Vec<chunk_sync_core::EventBuf> = (first..first + events)
            .map(|seq| chunk_sync_core::EventBuf {
                origin: NodeId(origin),
                seq,
                timestamp: seq,
                kind: "t".into(),
                privacy: chunk_sync_core::Privacy::Public,
                payload: payload.as_bytes().to_vec(),
            })
            .collect();
        let chunker = chunk_sync_core::EventChunkStore::new(events.len());
        chunker.resume(NodeId(origin), first);
        let c = chunker.create_chunks(&events).unwrap().remove(0);
        VerifiedChunk::new(c.id, c.bytes).unwrap()
    }

    #[test]
    fn a_chunk_that_forks_a_stored_one_is_refused_and_the_rest_of_the_batch_kept() {
        let s = MemStore::new();
        let honest = chunk(1, 10, 10, "honest");
        assert!(s.insert(honest.clone()).unwrap());
        // Overlapping from before, from inside, from after; then neighbours that touch.
        let forks = [
            chunk(1, 5, 10, "x"),
            chunk(1, 12, 2, "x"),
            chunk(1, 19, 5, "x"),
        ];
        let fine = [
            chunk(1, 0, 10, "x"),
            chunk(1, 20, 5, "x"),
            chunk(2, 10, 10, "x"),
        ];
        let batch: Vec<VerifiedChunk> = forks.iter().chain(&fine).cloned().collect();
        let done = s.insert_batch(&batch).unwrap();
        assert_eq!(done.added, 3);
        let refused: Vec<ChunkHash> = done.forks.iter().map(|f| f.refused).collect();
        assert_eq!(
            refused,
            forks.iter().map(VerifiedChunk::id).collect::<Vec<_>>()
        );
        assert!(done.forks.iter().all(|f| f.existing == honest.id()));
        let err = s.insert(forks[0].clone()).unwrap_err();
        assert!(err.downcast_ref::<Fork>().is_some(), "{err}");
        assert_eq!(s.len().unwrap(), 4);
    }
}
