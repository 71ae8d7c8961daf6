//! The original document's `EventChunkStore`: chunking whole event lists, owning the
//! chunks, finding them by hash. Needs `alloc`.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use super::{ChunkError, ChunkView, Chunker, Push, Sealed};
use crate::event::{ChunkEvent, NodeId};
use crate::hash::{ChunkHash, Verified};

/// Default largest chunk an [`EventChunkStore`] seals: 1 MiB. A range whose events would
/// exceed it is sealed early, at the last event that fits.
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 1 << 20;

/// A sealed chunk that owns its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventChunk {
    /// The chunk's name: the hash of `bytes`.
    pub id: ChunkHash,
    /// The chunk's canonical bytes.
    pub bytes: Vec<u8>,
    /// The origin of its events.
    pub origin: NodeId,
    /// First sequence number covered.
    pub first_seq: u64,
    /// One past the last sequence number covered.
    pub end_seq: u64,
    /// Number of events inside.
    pub events: u32,
}

impl EventChunk {
    fn from_sealed(s: &Sealed<'_>) -> Self {
        Self {
            id: s.id,
            bytes: s.bytes.to_vec(),
            origin: s.origin,
            first_seq: s.first_seq,
            end_seq: s.end_seq,
            events: s.events,
        }
    }

    /// Decodes the chunk's header, for reading its events.
    pub fn view(&self) -> Result<ChunkView<'_>, ChunkError> {
        Ok(ChunkView::parse(&self.bytes)?)
    }
}

/// Chunks events, keeps the chunks and finds them by hash.
///
/// Chunk boundaries follow each origin's sequence numbers (see the [module docs](super)):
/// the store remembers, per origin, the first sequence number not yet sealed, so calling
/// [`create_chunks`](Self::create_chunks) again with the same log plus appended events
/// seals only the new events and never touches an existing chunk.
///
/// Its methods take `&self`, as in the original document; the state is in a `RefCell`,
/// so a store is used from one thread at a time (put it in a `Mutex` to share it).
///
/// ```
/// use chunk_sync_core::{EventBuf, EventChunkStore, NodeId, Privacy};
///
/// let log: Vec<EventBuf> = (0..25)
///     .map(|seq| EventBuf {
///         origin: NodeId(1), seq, timestamp: seq, kind: "tick".into(),
///         privacy: Privacy::Public, payload: vec![seq as u8; 8],
///     })
///     .collect();
/// let store = EventChunkStore::new(10);
/// let chunks = store.create_chunks(&log)?;
/// assert_eq!(chunks.len(), 3); // 10 + 10 + 5 events
/// assert!(store.get_chunk(&chunks[0].id).is_some());
/// assert!(store.create_chunks(&log)?.is_empty()); // nothing new
/// # Ok::<(), chunk_sync_core::ChunkError>(())
/// ```
#[derive(Debug)]
pub struct EventChunkStore {
    events_per_chunk: u32,
    max_chunk_bytes: usize,
    /// The key pair the chunks of its own origin are signed with.
    #[cfg(feature = "secure")]
    signer: Option<crate::secure::Keypair>,
    /// Behind a `RefCell`, so that the store is used through `&self` as the original
    /// document uses it (`let store = EventChunkStore::new(100); store.create_chunks(..)`).
    state: RefCell<State>,
}

/// What an [`EventChunkStore`] holds.
#[derive(Debug, Default)]
struct State {
    chunks: BTreeMap<ChunkHash, EventChunk>,
    /// Per origin: the first sequence number not yet sealed.
    sealed_through: BTreeMap<NodeId, u64>,
}

impl EventChunkStore {
    /// A store that seals chunks of `events_per_chunk` sequence numbers (clamped to at
    /// least 1) and at most [`DEFAULT_MAX_CHUNK_BYTES`] bytes.
    #[must_use]
    pub fn new(events_per_chunk: usize) -> Self {
        Self {
            events_per_chunk: u32::try_from(events_per_chunk).unwrap_or(u32::MAX).max(1),
            max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES,
            #[cfg(feature = "secure")]
            signer: None,
            state: RefCell::new(State::default()),
        }
    }

    /// Signs the chunks of `keys`'s own origin ([`Keypair::node_id`](crate::secure::Keypair::node_id))
    /// with `keys`, as secure peers require of every chunk they take
    /// ([`Chunker::signed_by`]). Chunks of other origins stay unsigned: only an origin can
    /// sign its log, and secure peers refuse them.
    #[cfg(feature = "secure")]
    #[must_use]
    pub fn with_signer(mut self, keys: crate::secure::Keypair) -> Self {
        self.signer = Some(keys);
        self
    }

    /// Sets the largest chunk, in bytes, header included.
    #[must_use]
    pub fn with_max_chunk_bytes(mut self, max: usize) -> Self {
        self.max_chunk_bytes = max;
        self
    }

    /// The first sequence number of `origin` not sealed yet (`0` if none is).
    #[must_use]
    pub fn sealed_through(&self, origin: NodeId) -> u64 {
        self.state
            .borrow()
            .sealed_through
            .get(&origin)
            .copied()
            .unwrap_or(0)
    }

    /// Continues `origin`'s log from a store that already sealed every sequence number
    /// below `next_seq` (for example, a store reopened from disk). It never moves backwards.
    pub fn resume(&self, origin: NodeId, next_seq: u64) {
        let mut state = self.state.borrow_mut();
        let through = state.sealed_through.entry(origin).or_insert(0);
        *through = (*through).max(next_seq);
    }

    /// Sequence numbers per chunk.
    #[must_use]
    pub const fn events_per_chunk(&self) -> u32 {
        self.events_per_chunk
    }

    /// Seals the shareable events of `events` that are not in a chunk yet, and returns the
    /// new chunks (ordered by origin, then sequence number).
    ///
    /// Events may come from several origins and in any order. Events whose sequence number
    /// is already sealed are skipped; the open tail of each origin is sealed too. On error
    /// (two events with one sequence number, an event larger than the chunk limit) the
    /// store is left exactly as it was.
    pub fn create_chunks<E: ChunkEvent>(
        &self,
        events: &[E],
    ) -> Result<Vec<EventChunk>, ChunkError> {
        let mut order: Vec<&E> = events.iter().collect();
        order.sort_by_key(|e| (e.origin(), e.seq()));
        let mut buf = vec![0u8; self.max_chunk_bytes];
        let mut created = Vec::new();
        let mut through = Vec::new();
        for run in order.chunk_by(|a, b| a.origin() == b.origin()) {
            let origin = run[0].origin();
            let start = self.sealed_through(origin);
            #[allow(unused_mut)]
            let mut chunker = Chunker::new(origin, self.events_per_chunk, start, &mut buf)?;
            #[cfg(feature = "secure")]
            if let Some(keys) = self.signer.as_ref().filter(|k| k.node_id() == origin) {
                chunker = chunker.signed_by(keys)?;
            }
            // Only sealed chunks fix boundaries: events after the last one (private ones
            // included) are looked at again next time.
            let mut sealed_end = start;
            for &event in run.iter().filter(|e| e.seq() >= start) {
                if chunker.push(event)? == Push::SealFirst {
                    if let Some(sealed) = chunker.seal() {
                        sealed_end = sealed.end_seq;
                        created.push(EventChunk::from_sealed(&sealed));
                    }
                    // After a seal the chunk is empty, so the event is taken or refused with
                    // an error; it is never sent back again.
                    let _ = chunker.push(event)?;
                }
            }
            if let Some(sealed) = chunker.seal() {
                sealed_end = sealed.end_seq;
                created.push(EventChunk::from_sealed(&sealed));
            }
            through.push((origin, sealed_end));
        }
        let mut state = self.state.borrow_mut();
        state.sealed_through.extend(through);
        for chunk in &created {
            state.chunks.insert(chunk.id, chunk.clone());
        }
        Ok(created)
    }

    /// A copy of the chunk named `hash`, if the store has it.
    #[must_use]
    pub fn get_chunk(&self, hash: &ChunkHash) -> Option<EventChunk> {
        self.state.borrow().chunks.get(hash).cloned()
    }

    /// Adds a chunk received from elsewhere, after validating every event. Returns
    /// whether it was new. The origin's sealing position is left alone: only the origin
    /// seals.
    pub fn insert_chunk(&self, chunk: Verified<'_>) -> Result<bool, ChunkError> {
        if self.state.borrow().chunks.contains_key(&chunk.id()) {
            return Ok(false);
        }
        let view = ChunkView::validated(chunk.bytes())?;
        self.state.borrow_mut().chunks.insert(
            chunk.id(),
            EventChunk {
                id: chunk.id(),
                bytes: chunk.bytes().to_vec(),
                origin: view.origin(),
                first_seq: view.first_seq(),
                end_seq: view.end_seq(),
                events: view.len(),
            },
        );
        Ok(true)
    }

    /// Copies of every chunk, ordered by hash.
    #[must_use]
    pub fn chunks(&self) -> Vec<EventChunk> {
        self.state.borrow().chunks.values().cloned().collect()
    }

    /// Every chunk hash, sorted: this node's manifest.
    #[must_use]
    pub fn hashes(&self) -> Vec<ChunkHash> {
        self.state.borrow().chunks.keys().copied().collect()
    }

    /// Number of chunks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.state.borrow().chunks.len()
    }

    /// Whether the store holds no chunk.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.state.borrow().chunks.is_empty()
    }
}
