//! The driving layer: a [`Conduit`] runs one [`Session`] over one byte stream and tells
//! the adapter, one [`Action`] at a time, what to do: send bytes, summarise a range or list
//! origins of its store, read or store a chunk, wait, or close. The adapter does the I/O and the store calls, and nothing
//! else.
//!
//! Everything between the transport and the session lives here, written and tested once
//! for every adapter: decoding frames out of the receive buffer, reassembling chunk pieces
//! and verifying the whole chunk, pairing each piece sent with the chunk being served,
//! feeding explicitly wanted chunks, the node-wide throttle beside the session's own, the
//! limit on unwritten output and the deadline for a peer that stops taking bytes, counting
//! a chunk as synced only once the store kept it, and closing: flushing, waiting for the
//! store, and, after this side aborted, telling the peer and reading until it hangs up.
//!
//! # Calling order
//! The adapter calls [`poll`](Conduit::poll) (or [`poll_with`](Conduit::poll_with) a
//! node-wide throttle) and does what the [`Action`] says, again and
//! again, until [`Action::Closed`]:
//!
//! | action | the adapter |
//! |---|---|
//! | [`Send`](Action::Send) | writes `frame`, then `piece` bytes of the chunk it is serving, and calls [`written`](Conduit::written) as the transport takes bytes |
//! | [`Summarize`](Action::Summarize) | summarises the range from its store (with runs into `runs`) and answers [`summarized`](Conduit::summarized) |
//! | [`Origins`](Action::Origins) | fills `out` with its store's next origins and answers [`origins`](Conduit::origins) |
//! | [`Read`](Action::Read) | reads the chunk and keeps it until the next read; answers [`serve`](Conduit::serve) or [`not_found`](Conduit::not_found) |
//! | [`ReadFirst`](Action::ReadFirst) | reads the first chunk it holds in the range and keeps it until the next read; answers [`serve_in_range`](Conduit::serve_in_range) or [`not_found`](Conduit::not_found) |
//! | [`Store`](Action::Store) | stores the chunk and answers [`stored`](Conduit::stored), or takes its buffer ([`keep`](Conduit::keep)) and answers [`kept_stored`](Conduit::kept_stored) once written |
//! | [`Connected`](Action::Connected), [`ChunkFailed`](Action::ChunkFailed) | takes note |
//! | [`Shutdown`](Action::Shutdown) | closes its writing side, if the transport has one, and goes on reading |
//! | [`Wait`](Action::Wait) | waits for input (if `read`: into [`receive_buffer`](Conduit::receive_buffer), then [`received`](Conduit::received), or [`eof`](Conduit::eof)), for its pending writes, or until `deadline`, then calls [`handle_timeout`](Conduit::handle_timeout) |
//! | [`Closed`](Action::Closed) | closes the transport; the session is over |
//!
//! An action that asks a question (`Summarize`, `Origins`, `Read`, `ReadFirst`, `Store`)
//! is asked again by every `poll` until it is answered. A store failure is answered with
//! [`abort`](Conduit::abort): the peer is told, and the adapter keeps polling until
//! `Closed`. Time comes in as `now` and must not go backwards.
//!
//! # Example
//!
//! Two nodes, each a conduit in borrowed buffers answering from a
//! [`RamStore`](crate::store::RamStore), joined by an in-memory pipe: node 1 seals a chunk,
//! and node 2 ends up holding it, verified.
//!
//! ```
//! use chunk_sync_core::conduit::{Action, Buffers, Conduit, Limits};
//! use chunk_sync_core::recon::summarize;
//! use chunk_sync_core::session::{Config, Stored};
//! use chunk_sync_core::store::{ChunkStore, RamStore};
//! use chunk_sync_core::{Chunker, Event, Instant, NodeId, Privacy};
//!
//! type Store = RamStore<8, 4096>;
//!
//! /// One end: the conduit, its store, the chunk it serves, and its side of the pipe.
//! struct End<'b> {
//!     conduit: Conduit<'b, &'b mut [u8], 8, 4>,
//!     store: Store,
//!     serving: [u8; 512],
//!     inbox: Vec<u8>,
//!     done: Option<Result<(), chunk_sync_core::session::Error>>,
//! }
//!
//! impl End<'_> {
//!     /// The adapter's whole part: do what each action says until the conduit waits.
//!     fn pump(&mut self, now: Instant, out: &mut Vec<u8>) {
//!         while self.done.is_none() {
//!             match self.conduit.poll(now) {
//!                 Action::Send { frame, piece, .. } => {
//!                     out.extend_from_slice(frame);
//!                     let mut n = frame.len();
//!                     if let Some(p) = piece {
//!                         let at = p.offset as usize;
//!                         out.extend_from_slice(&self.serving[at..at + p.len as usize]);
//!                         n += p.len as usize;
//!                     }
//!                     self.conduit.written(now, n);
//!                 }
//!                 Action::Summarize { range, runs } => {
//!                     let store = &self.store;
//!                     let (summary, n) =
//!                         summarize(&range, runs, |r, out| store.chunks_in(r, out)).unwrap();
//!                     self.conduit.summarized(&summary, n).unwrap();
//!                 }
//!                 Action::Origins { after, out } => {
//!                     let (n, last) = self.store.origins_after(after, out).unwrap();
//!                     self.conduit.origins(n, last).unwrap();
//!                 }
//!                 Action::Read(id) => match self.store.read_into(&id, &mut self.serving) {
//!                     Ok(Some(len)) => self.conduit.serve(len).unwrap(),
//!                     _ => self.conduit.not_found().unwrap(),
//!                 },
//!                 Action::ReadFirst(range) => match self.store.first_in(&range).unwrap() {
//!                     Some((span, id)) => {
//!                         let len = self.store.read_into(&id, &mut self.serving).unwrap();
//!                         self.conduit.serve_in_range(&span, len.unwrap()).unwrap();
//!                     }
//!                     None => self.conduit.not_found().unwrap(),
//!                 },
//!                 Action::Store(chunk) => {
//!                     self.store.insert(chunk).unwrap();
//!                     self.conduit.stored(Stored::Kept).unwrap();
//!                 }
//!                 Action::Wait(wait) if wait.read && !self.inbox.is_empty() => {
//!                     let n = self.conduit.receive(&self.inbox);
//!                     self.inbox.drain(..n);
//!                 }
//!                 Action::Wait(_) => return,
//!                 Action::Closed(outcome) => self.done = Some(outcome),
//!                 _ => {}
//!             }
//!         }
//!     }
//! }
//!
//! // Node 1 seals one chunk of its log.
//! let mut seal_buf = [0u8; 256];
//! let mut chunker = Chunker::new(NodeId(1), 10, 0, &mut seal_buf).unwrap();
//! let event = Event {
//!     origin: NodeId(1),
//!     seq: 0,
//!     timestamp: 1,
//!     kind: "hello",
//!     privacy: Privacy::Public,
//!     payload: b"world",
//! };
//! chunker.push(&event).unwrap();
//! let sealed = chunker.seal().unwrap();
//! let mut store = Store::new();
//! store.insert(sealed.verified()).unwrap();
//!
//! // Each conduit works in buffers lent to it: a frame in, a frame out, a chunk.
//! let mut memory = [[0u8; 1024]; 6];
//! let [rx1, tx1, re1, rx2, tx2, re2] = &mut memory;
//! let new = |id, rx, tx, re| {
//!     Conduit::new(
//!         Config { max_frame: 512, ..Config::new(NodeId(id)) },
//!         Instant::ZERO,
//!         Buffers { receive: rx, transmit: tx, reassembly: re },
//!         Limits::new(),
//!     )
//!     .unwrap()
//! };
//! let end = |conduit, store| End { conduit, store, serving: [0; 512], inbox: Vec::new(), done: None };
//! let mut a = end(new(1, &mut rx1[..], &mut tx1[..], &mut re1[..]), store);
//! let mut b = end(new(2, &mut rx2[..], &mut tx2[..], &mut re2[..]), Store::new());
//!
//! // The pipe: what one end sends, the other receives. No time passes.
//! let now = Instant::ZERO;
//! while a.done.is_none() || b.done.is_none() {
//!     let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
//!     a.pump(now, &mut to_b);
//!     b.pump(now, &mut to_a);
//!     assert!(!to_a.is_empty() || !to_b.is_empty() || a.done.is_some(), "stuck");
//!     b.inbox.extend(to_b);
//!     a.inbox.extend(to_a);
//! }
//! assert_eq!(b.done, Some(Ok(())));
//! assert_eq!(b.conduit.progress().synced_chunks, 1);
//! assert_eq!(b.store.get(&sealed.id), Some(sealed.bytes));
//! ```

use core::cmp::{max, min};

use crate::chunk::Span;
use crate::event::NodeId;
use crate::hash::{ChunkHash, Verified};
use crate::progress::SyncProgress;
use crate::recon::{KeyRange, Run, Summary};
use crate::session::{
    ApiMisuse, Config, ConfigError, DEFAULT_RUNS, Error, FailReason, PieceOut, Question, Session,
    Stats, Stored,
};
use crate::throttle::Throttle;
use crate::time::{Duration, Instant};
use crate::wire::{Hello, MIN_FRAME};

/// Memory lent to a conduit: a slice of fixed size, or (with `alloc`) a `Vec` that grows
/// on demand.
pub trait Buffer {
    /// The bytes the buffer holds now.
    fn bytes(&self) -> &[u8];
    /// The bytes the buffer holds now, to write.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes the buffer at least `len` bytes long, keeping what it holds; returns whether
    /// it now is.
    fn grow_to(&mut self, len: usize) -> bool;
    /// The most bytes the buffer can ever hold.
    fn limit(&self) -> usize;
    /// Readies the buffer to receive `len` bytes with [`put_with`](Self::put_with), from offset 0;
    /// returns whether it can hold them.
    fn prepare(&mut self, len: usize) -> bool {
        len <= self.limit()
    }
    /// Lets `fill` write `len` bytes at offset `at` (pieces come in order), growing the
    /// buffer if it must; returns whether it could and `fill` succeeded.
    fn put_with(&mut self, at: usize, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        let end = at + len;
        if !self.grow_to(end) {
            return false;
        }
        self.bytes_mut().get_mut(at..end).is_some_and(fill)
    }
}

impl Buffer for &mut [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn grow_to(&mut self, len: usize) -> bool {
        len <= self.len()
    }
    fn limit(&self) -> usize {
        self.len()
    }
}

/// Room past a chunk's length that a reassembly `Vec` may keep (with a quarter of the
/// length) rather than be made anew for it.
#[cfg(any(feature = "alloc", test))]
const SPARE_ROOM: usize = 256;

#[cfg(any(feature = "alloc", test))]
impl Buffer for alloc::vec::Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn grow_to(&mut self, len: usize) -> bool {
        if self.len() < len {
            self.resize(len, 0);
        }
        true
    }
    fn limit(&self) -> usize {
        usize::MAX
    }
    /// Empties the vector and reserves `len` bytes, so that pieces are appended without
    /// zeroing memory first. A vector with far more room than `len` (one that held a
    /// larger chunk) is replaced by one of `len` bytes: a chunk kept from it
    /// ([`Conduit::keep`]) holds no more memory than its bytes and a little.
    fn prepare(&mut self, len: usize) -> bool {
        if self.capacity() > len.saturating_add(len / 4).saturating_add(SPARE_ROOM) {
            *self = Self::with_capacity(len);
        } else {
            self.clear();
            self.reserve_exact(len);
        }
        true
    }
    fn put_with(&mut self, at: usize, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        self.resize(at + len, 0);
        fill(&mut self[at..])
    }
}

/// What a conduit shares with the node's other conduits: the node's bandwidth limit on
/// all its sessions together, and claims on ranges being fetched
/// ([`claims`](crate::claims)). Consulted only when a frame is about to go out (so a lock
/// around it is held for no longer than that).
pub trait Budget {
    /// When a frame may go out, if not now.
    fn next_ready(&mut self, now: Instant) -> Option<Instant>;
    /// Counts `bytes` that went out at `now`.
    fn consume(&mut self, now: Instant, bytes: u64);
    /// Claims `range` for this conduit's next range request; `false` if another session
    /// of the node is fetching an overlapping range (see [`ClaimTable`](crate::claims::ClaimTable)).
    /// Without claims, every range is granted.
    fn claim(&mut self, range: &KeyRange, now: Instant) -> bool {
        let _ = (range, now);
        true
    }
    /// The request for a range this conduit claimed, of `origin` and ending at `hi`, is
    /// over: the claim may go (the chunks are stored, or the peer had none).
    fn release(&mut self, origin: NodeId, hi: u64) {
        let _ = (origin, hi);
    }
}

impl Budget for Throttle {
    fn next_ready(&mut self, now: Instant) -> Option<Instant> {
        Self::next_ready(self, now)
    }
    fn consume(&mut self, now: Instant, bytes: u64) {
        // Admitted by `next_ready`: the window has room for a frame of any size.
        let _ = self.try_consume(now, bytes);
    }
}

/// The three buffers a conduit works in.
#[derive(Debug)]
pub struct Buffers<B> {
    /// Received bytes: must be able to hold one frame of `Config::max_frame` bytes.
    pub receive: B,
    /// Frames to send: must hold `Session::max_transmit_len()` bytes.
    pub transmit: B,
    /// The chunk being received: the largest chunk accepted is capped at its limit.
    pub reassembly: B,
}

/// How much a conduit lets pile up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Limits {
    /// Bytes handed out in [`Action::Send`] and not yet [`written`](Conduit::written), past
    /// which no more is handed out (one frame always is). `0`: one frame at a time.
    pub backlog: usize,
    /// The size a growable receive buffer may reach (at least one frame): more bytes per
    /// read, so that chunks arriving together are stored together.
    pub receive: usize,
    /// Bytes of chunks the adapter [`keep`](Conduit::keep)s and has not yet answered for,
    /// past which the conduit stops reading until the store catches up.
    pub unstored: usize,
    /// How long a session this side aborted goes on reading after its `Error` frame went
    /// out, so that a peer busy sending reads the frame rather than a reset connection.
    pub linger: Duration,
}

impl Limits {
    /// One frame at a time, a receive buffer of one frame, no limit on kept chunks, 1 s of
    /// linger.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            backlog: 0,
            receive: 0,
            unstored: usize::MAX,
            linger: Duration::from_secs(1),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

/// What the adapter must do next; see the [module docs](self) for the answers.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an action must be carried out"]
#[non_exhaustive]
pub enum Action<'c> {
    /// Write `frame`, then, if set, the named bytes of the chunk being served (the one the
    /// last [`Action::Read`] was answered for); call [`Conduit::written`] as the transport
    /// takes bytes. A peer that takes none until `deadline` has stalled.
    Send {
        /// Frame bytes.
        frame: &'c [u8],
        /// Bytes of the served chunk that follow the frame.
        piece: Option<PieceOut>,
        /// When the peer has stalled if it took nothing by then.
        deadline: Instant,
    },
    /// Summarise what the store holds of `range`
    /// ([`recon::summarize`](crate::recon::summarize), or the store's own way), writing its
    /// runs into `runs` if they fit; answer [`Conduit::summarized`].
    Summarize {
        /// The range.
        range: KeyRange,
        /// Room for the runs.
        runs: &'c mut [Run],
    },
    /// Fill `out` with the store's origins strictly after `after` (from the lowest if
    /// `None`), ascending; answer [`Conduit::origins`] with how many and whether none follow.
    Origins {
        /// The cursor.
        after: Option<NodeId>,
        /// Room for one answer's origins.
        out: &'c mut [NodeId],
    },
    /// The peer wants this chunk: read it and answer [`Conduit::serve`] with its length,
    /// or [`Conduit::not_found`].
    Read(ChunkHash),
    /// The peer wants the chunks of this range, one after another: read the first one the
    /// store holds in it (lowest `first_seq`) and answer [`Conduit::serve_in_range`] with
    /// its span and length, or [`Conduit::not_found`] if it holds none.
    ReadFirst(KeyRange),
    /// The peer wants the hashes of the chunks of this range: fill `out` with the store's
    /// first chunks in it, ascending (as
    /// [`ChunkStore::chunks_in`](crate::store::ChunkStore::chunks_in) does), and answer
    /// [`Conduit::listed`] with how many. Asked only with the core's `alloc` feature.
    List {
        /// The range.
        range: KeyRange,
        /// Room for one `Ids` frame's chunks.
        out: &'c mut [(Span, ChunkHash)],
    },
    /// In a listing session ([`Config::list`](crate::session::Config::list)): hashes of the
    /// peer's chunks, 32 bytes each ([`wire::ids_of`](crate::wire::ids_of) reads them).
    Listed(&'c [u8]),
    /// Keep this verified chunk: answer [`Conduit::stored`], or [`Conduit::keep`] its buffer
    /// and answer [`Conduit::kept_stored`] later.
    Store(Verified<'c>),
    /// As [`Store`](Self::Store), from a conduit that defers signature checks
    /// ([`Conduit::defer_seal_checks`]): the chunk's hash holds and its origin's key is
    /// known, but its signature is still to be checked. Run `check` (on any thread) and
    /// store the chunk only if it holds; answer as `Store` does, or, if the check fails,
    /// with [`Conduit::refused`] (or [`Conduit::kept_refused`] for a kept buffer), and
    /// report the failure: the conduit does not report it again as [`ChunkFailed`](Self::ChunkFailed).
    #[cfg(all(feature = "secure", feature = "std"))]
    StoreUnsealed {
        /// The chunk, its hash checked.
        chunk: Verified<'c>,
        /// Its signature's check (boxed: it is larger than every other action).
        check: std::boxed::Box<crate::secure::SealCheck>,
    },
    /// The handshake is done.
    Connected(NodeId),
    /// A secure link's handshake proved the peer's key: decide what it may do and answer
    /// [`Conduit::authorize`]. Nothing of the store is shown before.
    #[cfg(feature = "secure")]
    Authorize(crate::secure::PublicKey),
    /// On a secure link, the session is about to ask the peer for chunks of this origin,
    /// or a chunk of it arrived, and it is neither the peer's nor this node's: answer
    /// [`Conduit::origin_key`] with the origin's whole public key if this node trusts one
    /// for it, or `None`. Without a key the walk passes the origin, fetching nothing of
    /// it, and a chunk of it that arrives anyway (asked for by hash) is refused
    /// ([`FailReason::UnknownOrigin`]). Nothing is stored before.
    #[cfg(feature = "secure")]
    OriginKey(NodeId),
    /// A chunk could not be fetched from this peer; another peer may have it.
    ChunkFailed {
        /// The chunk.
        hash: ChunkHash,
        /// Why.
        reason: FailReason,
    },
    /// Close the writing side of the transport, if it has one, and go on reading.
    Shutdown,
    /// Nothing to do until input arrives, pending writes complete, or `deadline` passes.
    Wait(Wait),
    /// The session is over: close the transport.
    Closed(Result<(), Error>),
}

/// What [`Action::Wait`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Wait {
    /// When to call [`Conduit::handle_timeout`]; `None`: only input or writes matter.
    pub deadline: Option<Instant>,
    /// Whether to read into [`Conduit::receive_buffer`].
    pub read: bool,
}

/// A verified chunk the adapter has not stored yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Unstored {
    id: ChunkHash,
    len: usize,
    /// What hashing found of a signed chunk: the hash of its bytes before the signature.
    signed_digest: Option<[u8; 32]>,
    /// On a secure link: its origin's signature holds, or is left to the adapter to check
    /// (the link's `pending` check).
    sealed: bool,
}

/// The next action, decided without borrowing the conduit.
#[derive(Clone, Copy, Debug)]
enum Step {
    Store(Unstored),
    /// Hashes listed, in the first bytes of the reassembly buffer.
    Listed(usize),
    Question(Question),
    Send {
        len: usize,
        piece: Option<PieceOut>,
        deadline: Instant,
    },
    Connected(NodeId),
    #[cfg(feature = "secure")]
    Authorize(crate::secure::PublicKey),
    #[cfg(feature = "secure")]
    OriginKey(NodeId),
    Failed(ChunkHash, FailReason),
    Shutdown,
    Wait(Wait),
    Closed(Result<(), Error>),
}

/// One session over one byte stream, in buffers `B` lent by the adapter; see the
/// [module docs](self).
#[derive(Debug)]
pub struct Conduit<'w, B, const RANGES: usize, const REQ: usize, const RUNS: usize = DEFAULT_RUNS> {
    session: Session<RANGES, REQ, RUNS>,
    limits: Limits,
    rx: B,
    /// Received bytes not yet decoded: `rx[rx_start..rx_end]`.
    rx_start: usize,
    rx_end: usize,
    /// The size `rx` may grow to.
    rx_max: usize,
    tx: B,
    assembly: B,
    /// Bytes of hashes listed, at the start of `assembly`, for the adapter.
    listed: Option<usize>,
    /// Chunks to fetch that the session has not taken yet.
    wanted: &'w [ChunkHash],
    unstored: Option<Unstored>,
    /// Bytes handed out in `Send` and not yet written.
    backlog: usize,
    /// When the transport last took bytes, or when output became pending.
    write_since: Instant,
    /// When the node-wide throttle lets this session send again.
    node_ready: Option<Instant>,
    /// Bytes of the chunks the adapter keeps and has not answered for (chunks are never
    /// empty, so none are kept exactly when this is zero).
    kept_bytes: usize,
    eof: bool,
    stalled: bool,
    /// Whether this side aborted (possibly after the session completed, when a store
    /// failed to keep what it received).
    aborted: bool,
    /// After an abort, once the writing side is shut: reading until the peer hangs up or
    /// this instant.
    linger_until: Option<Instant>,
    /// The secure link, if the conduit has one.
    #[cfg(feature = "secure")]
    link: Option<Secured>,
}

/// A conduit's secure link and where it stands.
#[cfg(feature = "secure")]
#[derive(Debug)]
struct Secured {
    link: crate::secure::Link,
    /// Whether the adapter has answered [`Action::Authorize`].
    authorized: bool,
    /// The record being read, opened in place: its plaintext ends at `plain_end` (the
    /// session reads from `rx_start`), the record at `record_end`.
    opened: Option<(usize, usize)>,
    /// This node's own key: its chunks may come back from a peer.
    local: crate::secure::PublicKey,
    /// The key the last chunk's signature was checked with, ready for the next chunk of
    /// the same origin.
    verifier: Option<crate::secure::Verifier>,
    /// The origin [`Action::OriginKey`] asked about, until the adapter answers.
    asked: Option<NodeId>,
    /// The adapter's answer to [`Action::OriginKey`], kept for later questions about the
    /// same origin (the walk's and its chunks' checks).
    answer: Option<(NodeId, Option<crate::secure::PublicKey>)>,
    /// Whether signature checks are left to the adapter ([`Conduit::defer_seal_checks`]).
    #[cfg(feature = "std")]
    defer: bool,
    /// The check left to the adapter of the chunk waiting to be stored, if it is one
    /// ([`Action::StoreUnsealed`]).
    #[cfg(feature = "std")]
    pending: Option<crate::secure::SealCheck>,
}

#[cfg(feature = "secure")]
impl Secured {
    /// The key this node holds for `origin`'s signatures: the peer's, its own, or the one
    /// the adapter gave ([`Action::OriginKey`]), `Some(None)` if it gave none; `None` once
    /// the adapter is to be asked.
    fn key_of(&mut self, origin: NodeId) -> Option<Option<crate::secure::PublicKey>> {
        let remote = self.link.remote().copied();
        if let Some(remote) = remote.filter(|k| k.node_id() == origin) {
            return Some(Some(remote));
        }
        if self.local.node_id() == origin {
            return Some(Some(self.local));
        }
        match self.answer {
            Some((answered, key)) if answered == origin => Some(key),
            _ => {
                self.asked = Some(origin);
                None
            }
        }
    }

    /// A link about to run `handshake`.
    fn new(handshake: crate::secure::Handshake) -> Self {
        Self {
            local: *handshake.public(),
            link: crate::secure::Link::Handshaking(handshake),
            authorized: false,
            opened: None,
            verifier: None,
            asked: None,
            answer: None,
            #[cfg(feature = "std")]
            defer: false,
            #[cfg(feature = "std")]
            pending: None,
        }
    }
}

impl<'w, B: Buffer, const RANGES: usize, const REQ: usize, const RUNS: usize>
    Conduit<'w, B, RANGES, REQ, RUNS>
{
    /// A conduit for a session configured by `config` that starts at `now`. The largest
    /// chunk accepted is capped at what the reassembly buffer can hold.
    ///
    /// # Errors
    /// [`ConfigError::BufferTooSmall`] with what a buffer needs, or the session's own
    /// configuration errors.
    pub fn new(
        config: Config,
        now: Instant,
        buffers: Buffers<B>,
        limits: Limits,
    ) -> Result<Self, ConfigError> {
        Self::build(
            config,
            now,
            buffers,
            limits,
            #[cfg(feature = "secure")]
            None,
        )
    }

    /// Builds the conduit in one expression, its link included: a device's conduit is a
    /// few KiB, and each value it passes through on the way costs that much stack.
    fn build(
        mut config: Config,
        now: Instant,
        buffers: Buffers<B>,
        limits: Limits,
        #[cfg(feature = "secure")] link: Option<Secured>,
    ) -> Result<Self, ConfigError> {
        let Buffers {
            receive: rx,
            mut transmit,
            reassembly,
        } = buffers;
        let frame = config.max_frame as usize;
        if rx.limit() < frame {
            return Err(ConfigError::BufferTooSmall {
                buffer: "receive",
                len: rx.limit(),
                needed: frame,
            });
        }
        #[cfg(feature = "secure")]
        let overhead = if link.is_some() {
            crate::secure::RECORD_OVERHEAD
        } else {
            0
        };
        #[cfg(not(feature = "secure"))]
        let overhead = 0;
        let tx_len = Session::<RANGES, REQ, RUNS>::max_transmit_len() + overhead;
        if !transmit.grow_to(tx_len) {
            return Err(ConfigError::BufferTooSmall {
                buffer: "transmit",
                len: transmit.limit(),
                needed: tx_len,
            });
        }
        if reassembly.limit() == 0 {
            return Err(ConfigError::BufferTooSmall {
                buffer: "reassembly",
                len: 0,
                needed: 1,
            });
        }
        let fits = u32::try_from(reassembly.limit()).unwrap_or(u32::MAX);
        config.max_chunk_len = min(config.max_chunk_len, fits);
        #[cfg_attr(not(feature = "secure"), allow(unused_mut))]
        let mut session = Session::new(config, now)?;
        #[cfg(feature = "secure")]
        if link.is_some() {
            let cap = u32::try_from(transmit.limit()).unwrap_or(u32::MAX);
            let max = min(crate::secure::MAX_RECORD, cap);
            session.set_link(crate::secure::RECORD_OVERHEAD as u32, max);
        }
        Ok(Self {
            session,
            limits,
            rx_max: min(rx.limit(), max(limits.receive, frame)),
            rx,
            rx_start: 0,
            rx_end: 0,
            tx: transmit,
            assembly: reassembly,
            listed: None,
            wanted: &[],
            unstored: None,
            backlog: 0,
            write_since: now,
            node_ready: None,
            kept_bytes: 0,
            eof: false,
            stalled: false,
            aborted: false,
            linger_until: None,
            #[cfg(feature = "secure")]
            link,
        })
    }

    /// A conduit as [`new`](Self::new) makes, whose session runs over a secure link
    /// ([`secure`](crate::secure)): `handshake` runs first, the adapter then decides what
    /// the peer's key may do ([`Action::Authorize`]), and every frame travels sealed.
    /// Each chunk received is stored only if its origin signed it; for an origin that is
    /// neither the peer nor this node, the adapter gives the key ([`Action::OriginKey`]). Poll
    /// it with [`poll_serving`](Self::poll_serving): pieces of a served chunk are sealed
    /// with their frame. `config.node_id` must be the id of the handshake's key, and
    /// `config.max_frame` at most [`MAX_RECORD`](crate::secure::MAX_RECORD); the transmit
    /// buffer grows to the peer's records (up to the frame size it announces), or caps
    /// them at its limit.
    ///
    /// # Errors
    /// As [`new`](Self::new), and [`ConfigError::SecureLink`].
    #[cfg(feature = "secure")]
    pub fn new_secure(
        config: Config,
        now: Instant,
        buffers: Buffers<B>,
        limits: Limits,
        handshake: crate::secure::Handshake,
    ) -> Result<Self, ConfigError> {
        use crate::secure::MAX_RECORD;
        if config.node_id != handshake.node_id() {
            return Err(ConfigError::SecureLink(
                "node_id must be the id of the node's key (Keypair::node_id)",
            ));
        }
        if config.max_frame > MAX_RECORD {
            return Err(ConfigError::SecureLink(
                "max_frame of a secure link is at most 65,537 bytes",
            ));
        }
        Self::build(config, now, buffers, limits, Some(Secured::new(handshake)))
    }

    /// Answers [`Action::Authorize`]: what the peer's key may do, origin by origin. With
    /// no right at all ([`Access::NONE`](crate::secure::Access::NONE)) the session ends with
    /// [`LinkError::Refused`](crate::session::LinkError::Refused), and the peer is told.
    #[cfg(feature = "secure")]
    pub fn authorize(&mut self, access: crate::secure::Access) -> Result<(), ApiMisuse> {
        let Some(secured) = self
            .link
            .as_mut()
            .filter(|s| s.link.is_open() && !s.authorized)
        else {
            return Err(ApiMisuse::NotAsked);
        };
        secured.authorized = true;
        if access.is_none() {
            self.session
                .fail_now(Error::Link(crate::session::LinkError::Refused));
        } else {
            self.session.restrict(access.pull, access.push);
        }
        Ok(())
    }

    /// Narrows the session as [`authorize`](Self::authorize) would, on a plain link: for
    /// tests that drive a session with raw frames.
    #[cfg(all(test, feature = "secure"))]
    pub(crate) fn restrict_for_test(
        &mut self,
        shown: crate::scope::Scope,
        taken: crate::scope::Scope,
    ) {
        self.session.restrict(shown, taken);
    }

    /// Answers [`Action::OriginKey`]: the whole public key this node trusts for `origin`,
    /// or `None`. A key whose node id is not `origin` is no key for it. The conduit may keep
    /// the answer for later questions about the same origin, so a change of trust takes
    /// effect in the next session.
    ///
    /// # Errors
    /// [`ApiMisuse::NotAsked`] if the conduit did not ask for `origin`'s key.
    #[cfg(feature = "secure")]
    pub fn origin_key(
        &mut self,
        origin: NodeId,
        key: Option<crate::secure::PublicKey>,
    ) -> Result<(), ApiMisuse> {
        let Some(secured) = self.link.as_mut().filter(|s| s.asked == Some(origin)) else {
            return Err(ApiMisuse::NotAsked);
        };
        secured.asked = None;
        secured.answer = Some((origin, key.filter(|k| k.node_id() == origin)));
        Ok(())
    }

    /// Whether this node holds a key for `origin`'s signatures: always on a plain link
    /// (it checks none); `None` once it has asked the adapter ([`Action::OriginKey`]).
    #[cfg(feature = "secure")]
    fn knows_key_of(&mut self, origin: NodeId) -> Option<bool> {
        match self.link.as_mut() {
            Some(secured) => secured.key_of(origin).map(|key| key.is_some()),
            None => Some(true),
        }
    }

    /// On a secure link, checks the signature of the unstored chunk `u` with its origin's
    /// key: `None` once it holds (the chunk may be stored) or once the chunk is refused;
    /// `Some` to ask the adapter for the origin's key.
    #[cfg(feature = "secure")]
    fn check_seal(&mut self, u: Unstored) -> Option<Step> {
        use crate::secure::Verifier;
        let secured = self.link.as_mut().filter(|_| !u.sealed)?;
        // The session validated the chunk before it became unstored; were it not a chunk
        // after all, it would be refused, never stored unchecked.
        let bytes = self.assembly.bytes().get(..u.len).unwrap_or(&[]);
        let Ok(view) = crate::chunk::ChunkView::parse(bytes) else {
            self.unstored = None;
            self.session.chunk_refused(u.id, FailReason::Invalid);
            return None;
        };
        let origin = view.origin();
        if secured
            .verifier
            .as_ref()
            .is_none_or(|v| v.origin() != origin)
        {
            let Some(key) = secured.key_of(origin) else {
                return Some(Step::OriginKey(origin));
            };
            // Every key here has `origin`'s id (`origin_key` drops any other).
            secured.verifier = key.and_then(Verifier::new);
        }
        #[cfg(feature = "std")]
        if secured.defer
            && let (Some(verifier), Some(digest), Some(signature)) =
                (&secured.verifier, u.signed_digest, view.signature())
        {
            let check = crate::secure::SealCheck::new(verifier.clone(), digest, *signature);
            secured.pending = Some(check);
            self.unstored = Some(Unstored { sealed: true, ..u });
            return None;
        }
        let verdict = match &secured.verifier {
            Some(v) => v.verify(&view, u.signed_digest).map_err(FailReason::from),
            None => Err(FailReason::UnknownOrigin),
        };
        match verdict {
            Ok(()) => self.unstored = Some(Unstored { sealed: true, ..u }),
            Err(reason) => {
                self.unstored = None;
                self.session.chunk_refused(u.id, reason);
            }
        }
        None
    }

    /// Leaves the check of each received chunk's signature to the adapter: a chunk whose
    /// origin's key is known comes as [`Action::StoreUnsealed`] with the check to run,
    /// which the adapter may run on other threads while the session goes on (keeping the
    /// chunk's buffer, [`keep`](Self::keep)). The conduit still decides everything else:
    /// which key, and that a chunk without a signature or without a trusted key is refused.
    /// For hosts that verify on several cores; nothing changes on a plain link.
    #[cfg(all(feature = "secure", feature = "std"))]
    pub fn defer_seal_checks(&mut self) {
        if let Some(secured) = self.link.as_mut() {
            secured.defer = true;
        }
    }

    /// Answers [`Action::StoreUnsealed`] whose check failed: the chunk is not stored, and
    /// counts as failed, towards `max_failures`. It is not reported again as
    /// [`Action::ChunkFailed`]: the adapter, which ran the check, knows (and a batch of
    /// refusals could not wait in the session's queue of failures).
    ///
    /// # Errors
    /// [`ApiMisuse::NotAsked`] if no chunk was to be stored.
    #[cfg(all(feature = "secure", feature = "std"))]
    pub fn refused(&mut self) -> Result<(), ApiMisuse> {
        self.take_unstored()?;
        self.session.chunk_check_failed();
        Ok(())
    }

    /// A chunk of [`Action::StoreUnsealed`] taken with [`keep`](Self::keep) failed its
    /// check and was not stored: as [`kept_stored`](Self::kept_stored), with the chunk
    /// counted as failed, as [`refused`](Self::refused) counts it.
    #[cfg(all(feature = "secure", feature = "std"))]
    pub fn kept_refused(&mut self, len: usize) {
        self.kept_bytes = self.kept_bytes.saturating_sub(len);
        self.session.chunk_check_failed();
    }

    /// The peer's public key, once a secure link's handshake proved it.
    #[cfg(feature = "secure")]
    #[must_use]
    pub fn peer_key(&self) -> Option<&crate::secure::PublicKey> {
        self.link.as_ref().and_then(|s| s.link.remote())
    }

    /// Announces chunks this node stored to the peer of a live session
    /// ([`Session::announce`]); returns whether the announcement will go out.
    pub fn announce(&mut self, range: KeyRange) -> bool {
        self.session.announce(range)
    }

    /// Tells the peer of a live session to reconcile with the whole store again
    /// ([`Session::announce_all`]).
    pub fn announce_all(&mut self) -> bool {
        self.session.announce_all()
    }

    /// Ends a live session from this side ([`Session::close`]): what is being fetched is
    /// finished, and the conduit closes once the peer has ended it too.
    pub fn close(&mut self) {
        self.session.close();
    }

    /// Fetches exactly these chunks, in a session that does not walk the peer's manifest
    /// (`pull: false`) or after its walk; they are fed to the session as its queue drains.
    pub const fn fetch(&mut self, ids: &'w [ChunkHash]) {
        self.wanted = ids;
    }

    /// The session.
    #[must_use]
    pub const fn session(&self) -> &Session<RANGES, REQ, RUNS> {
        &self.session
    }

    /// This side's pull: chunks found missing, synced (kept by the store), failed, bytes.
    #[must_use]
    pub const fn progress(&self) -> &SyncProgress {
        self.session.progress()
    }

    /// Byte and frame counters.
    #[must_use]
    pub const fn stats(&self) -> &Stats {
        self.session.stats()
    }

    /// The peer's `Hello`, once received.
    #[must_use]
    pub const fn peer(&self) -> Option<&Hello> {
        self.session.peer()
    }

    /// The conduit's limits.
    #[must_use]
    pub const fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The next thing to do.
    #[inline(never)]
    pub fn poll(&mut self, now: Instant) -> Action<'_> {
        self.act(now, None, &[])
    }

    /// The next thing to do, with `node`, the node-wide throttle shared with other
    /// sessions: every frame but `Hello` and a final `Error` passes it as well as the
    /// session's own.
    pub fn poll_with(&mut self, now: Instant, node: &mut dyn Budget) -> Action<'_> {
        self.act(now, Some(node), &[])
    }

    /// The next thing to do, given the whole chunk the adapter is serving (the one it read
    /// last for [`Action::Read`] or [`Action::ReadFirst`], or nothing): its pieces may then
    /// travel compressed ([`Config::compress`](crate::session::Config::compress)), each
    /// written whole into the frame of an [`Action::Send`] that has no `piece`. With `node`,
    /// as [`poll_with`](Self::poll_with).
    pub fn poll_serving<'d>(
        &mut self,
        now: Instant,
        node: Option<&mut (dyn Budget + 'd)>,
        serving: &[u8],
    ) -> Action<'_> {
        self.act(now, node, serving)
    }

    #[inline(always)]
    fn act(
        &mut self,
        now: Instant,
        node: Option<&mut (dyn Budget + '_)>,
        serving: &[u8],
    ) -> Action<'_> {
        let step = self.step(now, node, serving);
        match step {
            #[cfg(all(feature = "secure", feature = "std"))]
            Step::Store(u)
                if let Some(check) = self.link.as_ref().and_then(|s| s.pending.clone()) =>
            {
                Action::StoreUnsealed {
                    chunk: Verified::trusted(
                        u.id,
                        self.assembly.bytes().get(..u.len).unwrap_or(&[]),
                    ),
                    check: std::boxed::Box::new(check),
                }
            }
            Step::Store(Unstored { id, len, .. }) => Action::Store(Verified::trusted(
                id,
                self.assembly.bytes().get(..len).unwrap_or(&[]),
            )),
            Step::Question(q) => self.question(q),
            Step::Send {
                len,
                piece,
                deadline,
            } => Action::Send {
                frame: self.tx.bytes().get(..len).unwrap_or(&[]),
                piece,
                deadline,
            },
            Step::Listed(len) => Action::Listed(self.assembly.bytes().get(..len).unwrap_or(&[])),
            Step::Connected(peer) => Action::Connected(peer),
            #[cfg(feature = "secure")]
            Step::Authorize(key) => Action::Authorize(key),
            #[cfg(feature = "secure")]
            Step::OriginKey(origin) => Action::OriginKey(origin),
            Step::Failed(hash, reason) => Action::ChunkFailed { hash, reason },
            Step::Shutdown => Action::Shutdown,
            Step::Wait(wait) => Action::Wait(wait),
            Step::Closed(outcome) => Action::Closed(outcome),
        }
    }

    #[inline(never)]
    fn question(&mut self, question: Question) -> Action<'_> {
        match question {
            Question::Summary(range) => Action::Summarize {
                range,
                runs: self.session.runs_buffer(),
            },
            Question::Origins { after } => Action::Origins {
                after,
                out: self.session.origins_buffer(),
            },
            Question::Chunk(id) => Action::Read(id),
            Question::First(range) => Action::ReadFirst(range),
            Question::List(range) => {
                // Room for a whole frame of hashes, if the buffer can grow (a fixed one
                // lists fewer a frame).
                if let Some(peer) = self.session.peer() {
                    let page = crate::wire::ids_frame_len(crate::wire::MAX_IDS);
                    self.tx.grow_to(min(peer.max_frame as usize, page));
                }
                Action::List {
                    range,
                    out: self.session.list_buffer(),
                }
            }
        }
    }

    fn step(
        &mut self,
        now: Instant,
        mut node: Option<&mut (dyn Budget + '_)>,
        serving: &[u8],
    ) -> Step {
        // Ranges set aside for another session's claim, due to be checked again: before
        // the session's questions, which ask the store about them.
        self.session.recheck_deferred(now);
        loop {
            #[cfg(feature = "secure")]
            if let Some(unstored) = self.unstored
                && let Some(step) = self.check_seal(unstored)
            {
                return step;
            }
            // On a secure link, still there once its signature held.
            if let Some(unstored) = self.unstored {
                return Step::Store(unstored);
            }
            if let Some(len) = self.listed.take() {
                return Step::Listed(len);
            }
            #[cfg(feature = "secure")]
            if let Some(step) = self.secure_step(now) {
                return step;
            }
            if let Some(step) = self.event() {
                return step;
            }
            if let Some(q) = self.session.question() {
                // The walk passes an origin whose signatures this node could not check:
                // its chunks would all be refused, on every sync.
                #[cfg(feature = "secure")]
                if let Some(origin) = self.session.own_summary_origin() {
                    match self.knows_key_of(origin) {
                        Some(true) => {}
                        Some(false) => {
                            self.session.pass_own_summary();
                            continue;
                        }
                        None => return Step::OriginKey(origin),
                    }
                }
                return Step::Question(q);
            }
            if self.decode_frame(now) {
                continue;
            }
            self.feed_wanted();
            if let Some(step) = self.transmit(now, node.as_deref_mut(), serving) {
                return step;
            }
            return self.closing(now);
        }
    }

    /// The session's next event, as a step, if it needs the adapter.
    fn event(&mut self) -> Option<Step> {
        use crate::session::Event;
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Connected { peer } => {
                    #[cfg(feature = "secure")]
                    if let Some(key) = self.peer_key().map(crate::secure::PublicKey::node_id)
                        && key != peer
                    {
                        let e = crate::session::LinkError::NodeIdNotKey { claimed: peer, key };
                        self.session.fail_now(Error::Link(e));
                        return None;
                    }
                    return Some(Step::Connected(peer));
                }
                Event::ChunkFailed { hash, reason } => return Some(Step::Failed(hash, reason)),
                // The end comes with `Closed`.
                _ => {}
            }
        }
        None
    }

    /// Feeds the next whole frame received to the session, reassembling and verifying
    /// chunks; returns whether it consumed one.
    fn decode_frame(&mut self, now: Instant) -> bool {
        let Some(end) = self.readable_end() else {
            return false;
        };
        let Some(input) = self.rx.bytes().get(self.rx_start..end) else {
            return false;
        };
        if input.is_empty() {
            // An empty record.
            let moved = end < self.rx_end;
            self.record_read();
            return moved;
        }
        let Ok(handled) = self.session.handle_input(now, input) else {
            // The session failed: what follows is dropped.
            self.rx_start = 0;
            self.rx_end = 0;
            return false;
        };
        if handled.consumed == 0 {
            #[cfg(feature = "secure")]
            if self.link.is_some() {
                // The record ended inside a frame.
                let e = crate::session::LinkError::SplitFrame;
                self.session.end(Error::Link(e));
            }
            return false;
        }
        let mut complete = None;
        if let Some(ids) = handled.listed {
            // Kept for the adapter in the reassembly buffer, idle in a listing.
            let fits = self.assembly.prepare(ids.len())
                && self.assembly.put_with(0, ids.len(), |dst| {
                    dst.copy_from_slice(ids);
                    true
                });
            if fits {
                self.listed = Some(ids.len());
            } else {
                self.session.abort();
            }
        }
        if let Some(piece) = handled.piece {
            let at = piece.offset as usize;
            let mut bad = None;
            let fits = (at > 0 || self.assembly.prepare(piece.total_len as usize))
                && self.assembly.put_with(at, piece.len as usize, |dst| {
                    piece.write_to(dst).map_err(|e| bad = Some(e)).is_ok()
                });
            if let Some(e) = bad {
                // A compressed piece that does not decompress to its bytes: what follows
                // is dropped.
                self.session.end(Error::Peer(e));
                self.rx_start = 0;
                self.rx_end = 0;
                return false;
            }
            if !fits {
                // Cannot happen: `max_chunk_len` is capped at the buffer's limit.
                self.session.abort();
            }
            if piece.last {
                complete = Some(piece.total_len as usize);
            }
        }
        self.rx_start += handled.consumed;
        self.record_read();
        if let Some(len) = complete {
            let bytes = self.assembly.bytes().get(..len).unwrap_or(&[]);
            if let Ok(verified) = self.session.finish_chunk(bytes) {
                self.unstored = Some(Unstored {
                    id: verified.id(),
                    len,
                    signed_digest: verified.signed_digest(),
                    sealed: false,
                });
            }
        }
        true
    }

    /// A secure link's part: the handshake, then the adapter's decision on the peer's
    /// key. `None` once the session may run (or has failed and may tell the peer).
    #[cfg(feature = "secure")]
    fn secure_step(&mut self, now: Instant) -> Option<Step> {
        use crate::secure::{RECORD_HEADER, record_len};
        use crate::session::LinkError;
        let secured = self.link.as_mut()?;
        if let Some(e) = self.session.error() {
            if !secured.link.is_open() {
                // Nothing can reach the peer before the link is open.
                self.session.end(e);
            }
            return None;
        }
        loop {
            if let Some(remote) = secured.link.remote() {
                return (!secured.authorized).then_some(Step::Authorize(*remote));
            }
            if !secured.link.reads_handshake() {
                break;
            }
            let input = self
                .rx
                .bytes()
                .get(self.rx_start..self.rx_end)
                .unwrap_or(&[]);
            let Some(n) = record_len(input) else { break };
            let total = RECORD_HEADER + n;
            if total > self.rx_max {
                let max = u32::try_from(self.rx_max).unwrap_or(u32::MAX);
                let e = LinkError::RecordSize {
                    len: total as u32,
                    max,
                };
                self.session.end(Error::Link(e));
                return Some(self.closing(now));
            }
            let Some(message) = input.get(RECORD_HEADER..total) else {
                break;
            };
            let read = secured.link.read_handshake(message);
            self.rx_start += total;
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
            }
            if let Err(e) = read {
                self.session.end(Error::Link(e));
                return Some(self.closing(now));
            }
        }
        if !self.stalled {
            match secured.link.write_handshake(self.tx.bytes_mut()) {
                Ok(Some(len)) => {
                    if self.backlog == 0 {
                        self.write_since = now;
                    }
                    self.backlog += len;
                    return Some(Step::Send {
                        len,
                        piece: None,
                        deadline: self.stall_deadline(),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    self.session.end(Error::Link(e));
                    return Some(self.closing(now));
                }
            }
        }
        Some(self.closing(now))
    }

    /// Opens the next record received, if whole, in place; returns where the plaintext
    /// the session is to read ends (`rx_end` without a secure link).
    fn readable_end(&mut self) -> Option<usize> {
        #[cfg(feature = "secure")]
        if let Some(secured) = self.link.as_mut() {
            use crate::secure::{RECORD_HEADER, record_len};
            use crate::session::LinkError;
            if let Some((plain_end, _)) = secured.opened {
                return Some(plain_end);
            }
            let start = self.rx_start;
            let n = record_len(self.rx.bytes().get(start..self.rx_end)?)?;
            let total = RECORD_HEADER + n;
            let max = self.session.config().max_frame as usize;
            if total > max {
                let e = LinkError::RecordSize {
                    len: total as u32,
                    max: max as u32,
                };
                self.session.end(Error::Link(e));
                return None;
            }
            if self.rx_end - start < total {
                return None;
            }
            let body = self
                .rx
                .bytes_mut()
                .get_mut(start + RECORD_HEADER..start + total)?;
            match secured.link.open(body) {
                Ok(plain) => {
                    let plain_end = start + RECORD_HEADER + plain;
                    secured.opened = Some((plain_end, start + total));
                    self.rx_start = start + RECORD_HEADER;
                    return Some(plain_end);
                }
                Err(e) => {
                    self.session.end(Error::Link(e));
                    return None;
                }
            }
        }
        Some(self.rx_end)
    }

    /// Moves past the record whose plaintext the session has read whole.
    fn record_read(&mut self) {
        #[cfg(feature = "secure")]
        if let Some(secured) = self.link.as_mut()
            && let Some((plain_end, record_end)) = secured.opened
            && self.rx_start >= plain_end
        {
            secured.opened = None;
            self.rx_start = record_end;
        }
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        }
    }

    /// Hands wanted chunks to the session as its queue drains, before it could find the
    /// queue empty and send `Done`.
    fn feed_wanted(&mut self) {
        while !self.wanted.is_empty() {
            let n = self.session.want(self.wanted);
            if n == 0 {
                break;
            }
            self.wanted = self.wanted.get(n..).unwrap_or(&[]);
        }
    }

    /// The next frame, if the backlog and both throttles allow one.
    fn transmit<'d>(
        &mut self,
        now: Instant,
        node: Option<&mut (dyn Budget + 'd)>,
        serving: &[u8],
    ) -> Option<Step> {
        // `Hello` and the final `Error` frame wait for neither the backlog nor the node.
        if self.stalled {
            // The peer takes nothing: nothing more is handed out.
            return None;
        }
        let urgent = self.session.error().is_some() || !self.session.hello_sent();
        if !urgent && self.backlog > 0 && self.backlog >= self.limits.backlog {
            return None;
        }
        let mut node = node.filter(|_| !urgent);
        if let Some(at) = node.as_deref_mut().and_then(|t| t.next_ready(now)) {
            self.node_ready = Some(at);
            return None;
        }
        if let Some(node) = node.as_deref_mut() {
            while let Some(done) = self.session.take_finished_range() {
                node.release(done.origin, done.hi);
            }
            self.session
                .claim_wanted(now, &mut |range| node.claim(range, now));
        }
        #[cfg(feature = "lz4-compress")]
        if !serving.is_empty()
            && self.session.codec().is_some()
            && let Some(peer) = self.session.peer()
        {
            // Room to compress a whole piece, if the buffer can grow to it: no piece is
            // longer than the chunk.
            let piece = crate::wire::Message::piece_capacity(peer.max_frame);
            let room = crate::wire::put_compressed_buffer(min(piece, serving.len()));
            self.tx.grow_to(room + self.link_overhead());
        }
        let skip = self.tx_skip();
        let area = self.tx.bytes_mut().get_mut(skip..).unwrap_or(&mut []);
        let t = match self.session.poll_transmit_serving(now, area, serving) {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(_) => {
                // Cannot happen: the buffer was checked in `new`. End without a frame.
                self.session.end(Error::Aborted);
                return None;
            }
        };
        let (len, piece, wire_len) = match self.seal(&t, serving) {
            Some(sealed) => (sealed, None, sealed),
            None if skip > 0 => return None,
            None => (t.len, t.piece, t.wire_len()),
        };
        if let Some(node) = node {
            node.consume(now, wire_len as u64);
        }
        self.node_ready = None;
        if self.backlog == 0 {
            self.write_since = now;
        }
        self.backlog += wire_len;
        Some(Step::Send {
            len,
            piece,
            deadline: self.stall_deadline(),
        })
    }

    /// What the link adds to each frame.
    #[cfg(feature = "lz4-compress")]
    fn link_overhead(&self) -> usize {
        #[cfg(feature = "secure")]
        if self.link.is_some() {
            return crate::secure::RECORD_OVERHEAD;
        }
        0
    }

    /// Where the session writes its frames in the transmit buffer: behind a record's
    /// prefix over a secure link.
    fn tx_skip(&self) -> usize {
        #[cfg(feature = "secure")]
        if self.link.is_some() {
            return crate::secure::RECORD_HEADER;
        }
        0
    }

    /// Over a secure link, seals the frame the session wrote, and the piece of the served
    /// chunk that follows it, into one record at the start of the transmit buffer;
    /// returns its length. `None` without a link, or when the link failed (the session
    /// then ends).
    #[allow(clippy::unused_self, clippy::missing_const_for_fn)]
    fn seal(&mut self, t: &crate::session::Transmit, serving: &[u8]) -> Option<usize> {
        #[cfg(feature = "secure")]
        if let Some(secured) = self.link.as_mut() {
            use crate::secure::{RECORD_HEADER, TAG_LEN};
            let mut plain = t.len;
            if let Some(p) = t.piece {
                let (at, n) = (p.offset as usize, p.len as usize);
                let Some(bytes) = serving.get(at..at + n) else {
                    // Polled without the chunk being served: `poll_serving` is needed.
                    self.session.end(Error::ApiMisuse(ApiMisuse::NotAsked));
                    return None;
                };
                let start = RECORD_HEADER + plain;
                if !self.tx.grow_to(start + n + TAG_LEN) {
                    self.session.end(Error::Aborted);
                    return None;
                }
                self.tx
                    .bytes_mut()
                    .get_mut(start..start + n)?
                    .copy_from_slice(bytes);
                plain += n;
            }
            if !self.tx.grow_to(RECORD_HEADER + plain + TAG_LEN) {
                self.session.end(Error::Aborted);
                return None;
            }
            return match secured.link.seal(self.tx.bytes_mut(), plain) {
                Ok(len) => Some(len),
                Err(e) => {
                    self.session.end(Error::Link(e));
                    None
                }
            };
        }
        let _ = (t, serving);
        None
    }

    fn stall_deadline(&self) -> Instant {
        self.write_since + self.session.config().idle_timeout
    }

    /// Nothing to send: close, shut down, or wait.
    fn closing(&mut self, now: Instant) -> Step {
        if self.stalled {
            return Step::Closed(Err(Error::Stalled));
        }
        if self.aborted && self.session.is_complete() && self.backlog == 0 {
            // The peer is done (and has had everything handed out); only this side's
            // store failed.
            return Step::Closed(Err(Error::Aborted));
        }
        if self.session.is_closed() {
            let flushed = self.backlog == 0;
            match self.session.error() {
                // Complete once everything is written and stored.
                None if flushed && self.kept_bytes == 0 => return Step::Closed(Ok(())),
                None => {}
                Some(Error::Aborted) if self.limits.linger > Duration::ZERO && !self.eof => {
                    match self.linger_until {
                        None if flushed => {
                            self.linger_until = Some(now + self.limits.linger);
                            return Step::Shutdown;
                        }
                        Some(t) if now >= t => {
                            return Step::Closed(Err(Error::Aborted));
                        }
                        _ => {}
                    }
                }
                Some(e) if flushed || self.eof || matches!(e, Error::Closed) => {
                    return Step::Closed(Err(e));
                }
                Some(_) => {}
            }
        }
        Step::Wait(self.wait())
    }

    fn wait(&self) -> Wait {
        let mut deadline = self.session.poll_timeout();
        let mut sooner = |t: Instant| deadline = Some(deadline.map_or(t, |d| d.min(t)));
        if let Some(t) = self.node_ready {
            sooner(t);
        }
        if self.backlog > 0 {
            sooner(self.stall_deadline());
        }
        if let Some(t) = self.linger_until {
            sooner(t);
        }
        let room = self.rx_end < self.rx.bytes().len()
            || self.rx_start > 0
            || self.rx.bytes().len() < self.rx_max;
        Wait {
            deadline,
            read: !self.eof && room && self.kept_bytes < self.limits.unstored,
        }
    }

    /// Where to put received bytes (compacting and, if it can, growing the buffer); then
    /// call [`received`](Self::received) with how many were written. Empty only when the
    /// conduit did not ask to read.
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        if self.rx_start > 0 {
            let (start, end) = (self.rx_start, self.rx_end);
            self.rx.bytes_mut().copy_within(start..end, 0);
            self.rx_end -= start;
            self.rx_start = 0;
            #[cfg(feature = "secure")]
            if let Some((plain_end, record_end)) =
                self.link.as_mut().and_then(|s| s.opened.as_mut())
            {
                *plain_end -= start;
                *record_end -= start;
            }
        }
        let len = self.rx.bytes().len();
        if self.rx_end == len && len < self.rx_max {
            let grown = min(max(len * 4, MIN_FRAME as usize), self.rx_max);
            let _ = self.rx.grow_to(grown);
        }
        let end = self.rx_end;
        self.rx.bytes_mut().get_mut(end..).unwrap_or(&mut [])
    }

    /// Takes as much of `bytes` as the receive buffer has room for (through
    /// [`receive_buffer`](Self::receive_buffer) and [`received`](Self::received)) and
    /// returns how many it took: for an adapter that holds received bytes already.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let buf = self.receive_buffer();
        let n = buf.len().min(bytes.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.received(n);
        n
    }

    /// `n` bytes were written at the start of [`receive_buffer`](Self::receive_buffer).
    pub fn received(&mut self, n: usize) {
        self.rx_end = min(self.rx_end + n, self.rx.bytes().len());
    }

    /// The peer closed its writing side: a session not yet over fails with
    /// [`Error::Closed`]; a lingering one closes.
    pub fn eof(&mut self) {
        self.eof = true;
        let s = &self.session;
        if !s.is_complete() && s.error().is_none() {
            self.session.end(Error::Closed);
        }
    }

    /// The transport took `n` bytes of what [`Action::Send`] handed out.
    pub fn written(&mut self, now: Instant, n: usize) {
        self.backlog = self.backlog.saturating_sub(n);
        if n > 0 {
            self.write_since = now;
        }
    }

    /// Checks timers: the session's (idle, handshake, overall deadline), the node
    /// throttle's, a peer that took no bytes for the idle timeout, and the linger.
    pub fn handle_timeout(&mut self, now: Instant) {
        // First the stall: a peer that takes nothing would not read an Error frame of the
        // session's own timeouts either.
        if self.backlog > 0 && now >= self.stall_deadline() {
            self.session.end(Error::Stalled);
            self.stalled = true;
        }
        self.session.handle_timeout(now);
        if self.node_ready.is_some_and(|t| now >= t) {
            self.node_ready = None;
        }
    }

    /// Ends the session from this side (a store failure, a stop request): the peer is
    /// told with an `Error` frame, and the conduit reads until the peer hangs up or the
    /// linger passes.
    /// Chunks kept and not yet answered for are given up: the adapter will not answer.
    pub fn abort(&mut self) {
        self.session.abort();
        // The chunk waiting for the store is dropped, with its deferred check.
        let _ = self.take_unstored();
        self.aborted = true;
        self.kept_bytes = 0;
    }

    /// Answers [`Action::Summarize`]: what the store holds of the range, and how many runs
    /// it wrote into `runs` (`None`: more than fit). An answer that does not fit aborts the
    /// session.
    pub fn summarized(&mut self, summary: &Summary, runs: Option<usize>) -> Result<(), ApiMisuse> {
        let skip = self.tx_skip();
        let area = self.tx.bytes_mut().get_mut(skip..).unwrap_or(&mut []);
        let done = self.session.summarized(summary, runs, area);
        if matches!(done, Err(ApiMisuse::BadListing)) {
            self.session.abort();
        }
        done
    }

    /// Answers [`Action::Origins`]: the first `n` origins of `out` are filled; `last` says
    /// whether the store holds none after them. A list that breaks the order aborts the
    /// session.
    pub fn origins(&mut self, n: usize, last: bool) -> Result<(), ApiMisuse> {
        let listed = self.session.origins_listed(n, last);
        if matches!(listed, Err(ApiMisuse::BadListing)) {
            self.session.abort();
        }
        listed
    }

    /// Answers [`Action::List`]: the first `n` chunks of `out` are filled. A list out of
    /// order or outside the range aborts the session.
    pub fn listed(&mut self, n: usize) -> Result<(), ApiMisuse> {
        let listed = self.session.listed(n);
        if matches!(listed, Err(ApiMisuse::BadListing | ApiMisuse::OutsideRange)) {
            self.session.abort();
        }
        listed
    }

    /// Answers [`Action::Read`]: the adapter has the chunk, `len` bytes long, and supplies
    /// the bytes each [`Action::Send`] names until the next read.
    pub fn serve(&mut self, len: usize) -> Result<(), ApiMisuse> {
        match self.session.serve_chunk(len) {
            Err(ApiMisuse::BadChunkLength) => self.session.chunk_not_found(),
            other => other,
        }
    }

    /// Answers [`Action::ReadFirst`]: the first chunk the store holds in the range has
    /// `span` and is `len` bytes long; the adapter supplies its bytes as for
    /// [`serve`](Self::serve). A chunk outside the range aborts the session.
    pub fn serve_in_range(&mut self, span: &Span, len: usize) -> Result<(), ApiMisuse> {
        let served = match self.session.serve_in_range(span, len) {
            Err(ApiMisuse::BadChunkLength) => self.session.chunk_not_found(),
            other => other,
        };
        if matches!(served, Err(ApiMisuse::OutsideRange)) {
            self.session.abort();
        }
        served
    }

    /// Answers [`Action::Read`] or [`Action::ReadFirst`]: the store does not have the
    /// chunk, or holds none more in the range.
    pub fn not_found(&mut self) -> Result<(), ApiMisuse> {
        self.session.chunk_not_found()
    }

    fn take_unstored(&mut self) -> Result<Unstored, ApiMisuse> {
        #[cfg(all(feature = "secure", feature = "std"))]
        if let Some(secured) = self.link.as_mut() {
            // Answered: its check goes with it.
            secured.pending = None;
        }
        self.unstored.take().ok_or(ApiMisuse::NotAsked)
    }

    /// Answers [`Action::Store`] with what the store did.
    pub fn stored(&mut self, stored: Stored) -> Result<(), ApiMisuse> {
        self.take_unstored()?;
        self.session.chunk_stored(stored);
        Ok(())
    }

    /// Answers [`Action::Store`] by taking the buffer that holds the chunk (its first
    /// `len` bytes, `len` being the `Verified` chunk's), to store it while the session goes
    /// on, and lending `replacement` for the next chunk; answer
    /// [`kept_stored`](Self::kept_stored) once stored. Gives `replacement` back if no
    /// chunk was to be stored.
    pub fn keep(&mut self, replacement: B) -> Result<B, B> {
        let Ok(Unstored { len, .. }) = self.take_unstored() else {
            return Err(replacement);
        };
        self.kept_bytes += len;
        Ok(core::mem::replace(&mut self.assembly, replacement))
    }

    /// A chunk taken with [`keep`](Self::keep) was stored (or refused as a fork); `len` is
    /// its length, as the `Verified` chunk of its [`Action::Store`] had it: the conduit
    /// closes once the lengths of all kept chunks are answered for. Still counted after
    /// [`Action::Closed`], so that a session's progress includes what it kept.
    pub fn kept_stored(&mut self, len: usize, stored: Stored) {
        self.kept_bytes = self.kept_bytes.saturating_sub(len);
        self.session.chunk_stored(stored);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod live_tests;

#[cfg(all(test, feature = "secure"))]
mod secure_tests;

#[cfg(all(test, feature = "secure"))]
mod scope_tests;
