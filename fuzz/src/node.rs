//! A node as an adapter runs it: a [`Conduit`] whose every action is carried out from a
//! [`Store`], with the checks on what the conduit asks.
//!
//! Whatever the node receives, [`Node::pump`] panics if the conduit
//! - hands out a frame that does not decode, is not sent whole, or is larger than the
//!   peer accepts, or names bytes of a chunk it was not given; on a secure link, hands
//!   out anything but whole records (the frames inside are sealed);
//! - asks to store a chunk whose bytes do not hash to its id, or that is not a valid chunk;
//! - hands out a listing that is not whole hashes;
//! - changes a fatal error, or closes with an error that is not the session's;
//! - goes on for 100,000 actions without waiting.

use chunk_sync_core::conduit::{Action, Buffer, Conduit, Wait};
use chunk_sync_core::recon::summarize;
use chunk_sync_core::secure::{Access, PublicKey, RECORD_OVERHEAD};
use chunk_sync_core::session::{Error, Session, Stored};
use chunk_sync_core::store::ChunkStore;
use chunk_sync_core::wire::{self, Decoded, MAX_FRAME_LIMIT};
use chunk_sync_core::{ChunkHash, ChunkView, Instant};

use crate::chunks::Store;

/// Ranges a fuzzed session works with.
pub const RANGES: usize = 8;
/// Requests it keeps in flight.
pub const REQ: usize = 4;
/// The bytes of a fixed transmit buffer.
pub const TRANSMIT: usize = Session::<RANGES, REQ>::max_transmit_len();
/// The bytes of a fixed reassembly buffer: the largest chunk it accepts.
pub const REASSEMBLY: usize = 16384;

/// Received bytes, and how many of them the conduit took.
#[derive(Clone, Debug, Default)]
pub struct Inbox {
    bytes: Vec<u8>,
    at: usize,
}

impl Inbox {
    /// Adds bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// The bytes not yet taken.
    #[must_use]
    pub fn pending(&self) -> &[u8] {
        self.bytes.get(self.at..).unwrap_or(&[])
    }

    /// How many bytes were taken so far.
    #[must_use]
    pub const fn taken(&self) -> usize {
        self.at
    }

    /// Whether every byte was taken.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending().is_empty()
    }
}

/// Why [`Node::pump`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pumped {
    /// The conduit waits, and the inbox cannot help: it is empty or the conduit does not
    /// read.
    Waiting(Wait),
    /// The conduit closed.
    Closed,
    /// The node's budget of actions is spent.
    OutOfSteps,
}

/// A conduit, its store, and the adapter's state.
#[derive(Debug)]
pub struct Node<'w, B> {
    /// The conduit.
    pub conduit: Conduit<'w, B, RANGES, REQ>,
    /// The node's chunks.
    pub store: Store,
    /// The time the node sees; it never goes back.
    pub now: Instant,
    /// The outcome, once closed.
    pub closed: Option<Result<(), Error>>,
    /// Chunks the store kept.
    pub stored: usize,
    /// Actions carried out.
    pub polls: u64,
    /// The most actions to carry out.
    pub max_polls: u64,
    /// Whether the conduit runs a secure link: it sends records, not frames.
    pub secure: bool,
    /// What the node lets the peer's key do, when the conduit asks.
    pub access: Access,
    /// The keys the conduit asked about.
    pub asked: Vec<PublicKey>,
    /// The origin keys the node trusts, when the conduit asks for one.
    pub origin_keys: Vec<PublicKey>,
    /// The chunk being served (its first `served` bytes).
    serving: Vec<u8>,
    served: usize,
    /// Where a replacement buffer comes from, if chunks are stored by taking the conduit's.
    spare: Option<fn() -> B>,
    /// Chunks taken with `keep` and not yet answered for.
    kept: Vec<(usize, Stored)>,
    /// Whether writes complete only once the conduit waits.
    lazy: bool,
    /// Bytes handed out and not yet written.
    unwritten: usize,
    /// Whether this side aborted.
    aborted: bool,
    /// The first fatal error seen.
    fatal: Option<Error>,
    /// A frame and its piece, put together.
    scratch: Vec<u8>,
}

impl<'w, B: Buffer> Node<'w, B> {
    /// A node running `conduit` over `store`.
    pub fn new(
        conduit: Conduit<'w, B, RANGES, REQ>,
        store: Store,
        spare: Option<fn() -> B>,
        lazy: bool,
    ) -> Self {
        Self {
            conduit,
            store,
            now: Instant::ZERO,
            closed: None,
            stored: 0,
            polls: 0,
            max_polls: u64::MAX,
            secure: false,
            access: Access::FULL,
            asked: Vec::new(),
            origin_keys: Vec::new(),
            serving: vec![0; REASSEMBLY],
            served: 0,
            spare,
            kept: Vec::new(),
            lazy,
            unwritten: 0,
            aborted: false,
            fatal: None,
            scratch: Vec::new(),
        }
    }

    /// Ends the session from this side, as an adapter does when its store fails.
    fn abort(&mut self) {
        self.conduit.abort();
        self.aborted = true;
        self.kept.clear();
    }

    /// Checks that a fatal error, once there, stays.
    fn check_fatal(&mut self) {
        let error = self.conduit.session().error();
        match self.fatal {
            None => self.fatal = error,
            Some(first) => assert_eq!(error, Some(first), "a fatal error sticks"),
        }
    }

    /// Carries out the conduit's actions until it closes, or waits for what `inbox`
    /// cannot give: reads as `reads` splits them (time passing before some of them), and
    /// appends every byte sent to `out`.
    pub fn pump(
        &mut self,
        inbox: &mut Inbox,
        mut out: Option<&mut Vec<u8>>,
        reads: &mut crate::setup::Reads,
    ) -> Pumped {
        let mut busy = 0u32;
        loop {
            if self.closed.is_some() {
                return Pumped::Closed;
            }
            if self.polls >= self.max_polls {
                return Pumped::OutOfSteps;
            }
            self.check_fatal();
            self.polls += 1;
            busy += 1;
            assert!(busy < 100_000, "the conduit never waits");
            let now = self.now;
            let peer_max = self.conduit.peer().map(|h| h.max_frame as usize);
            let serving = self.serving.get(..self.served).unwrap_or(&[]);
            match self.conduit.poll_serving(now, None, serving) {
                Action::Send { frame, piece, .. } => {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(frame);
                    if let Some(p) = piece {
                        let at = p.offset as usize;
                        let end = at.saturating_add(p.len as usize);
                        let bytes = serving
                            .get(at..end)
                            .expect("a piece of the chunk the conduit was given");
                        self.scratch.extend_from_slice(bytes);
                    }
                    let n = self.scratch.len();
                    if self.secure {
                        assert!(piece.is_none(), "a piece sealed with its frame");
                        check_records(&self.scratch, peer_max);
                    } else {
                        match wire::decode(&self.scratch, MAX_FRAME_LIMIT) {
                            Ok(Decoded::Frame { len, .. }) => {
                                assert_eq!(len, n, "one whole frame at a time");
                            }
                            other => panic!("sent bytes that are not a frame: {other:?}"),
                        }
                    }
                    if let Some(max) = peer_max.filter(|_| !self.secure) {
                        assert!(n <= max, "a frame of {n} bytes to a peer that takes {max}");
                    }
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&self.scratch);
                    }
                    if self.lazy {
                        self.unwritten += n;
                    } else {
                        self.conduit.written(now, n);
                    }
                }
                Action::Summarize { range, runs } => {
                    let store = &self.store;
                    match summarize(&range, runs, |r, page| store.chunks_in(r, page)) {
                        Ok((summary, n)) => {
                            let _ = self.conduit.summarized(&summary, n);
                        }
                        Err(_) => self.abort(),
                    }
                }
                Action::Origins { after, out } => match self.store.origins_after(after, out) {
                    Ok((n, last)) => {
                        let _ = self.conduit.origins(n, last);
                    }
                    Err(_) => self.abort(),
                },
                Action::Read(id) => self.read(&id, None),
                Action::ReadFirst(range) => match self.store.first_in(&range) {
                    Ok(Some((span, id))) => self.read(&id, Some(span)),
                    Ok(None) => {
                        self.served = 0;
                        let _ = self.conduit.not_found();
                    }
                    Err(_) => self.abort(),
                },
                Action::List { range, out } => match self.store.chunks_in(&range, out) {
                    Ok(n) => {
                        let _ = self.conduit.listed(n);
                    }
                    Err(_) => self.abort(),
                },
                Action::Listed(ids) => {
                    assert!(wire::ids_of(ids).is_some(), "a listing of whole hashes");
                }
                Action::Store(chunk) => {
                    let (id, bytes) = (chunk.id(), chunk.bytes());
                    assert_eq!(ChunkHash::of(bytes), id, "a chunk to store has its hash");
                    if let Err(e) = ChunkView::validated(bytes) {
                        panic!("a chunk to store is not valid: {e}");
                    }
                    let len = bytes.len();
                    let stored = match self.store.insert(chunk) {
                        Ok(_) => Stored::Kept,
                        Err(e) if Store::is_fork(&e) => Stored::Fork,
                        Err(_) => {
                            self.abort();
                            continue;
                        }
                    };
                    self.stored += usize::from(stored == Stored::Kept);
                    match self.spare {
                        Some(spare) => {
                            assert!(self.conduit.keep(spare()).is_ok(), "a chunk to keep");
                            self.kept.push((len, stored));
                        }
                        None => {
                            let _ = self.conduit.stored(stored);
                        }
                    }
                }
                Action::Wait(wait) => {
                    busy = 0;
                    if let Some((len, stored)) = self.kept.pop() {
                        self.conduit.kept_stored(len, stored);
                        continue;
                    }
                    if self.unwritten > 0 {
                        let n = core::mem::take(&mut self.unwritten);
                        self.conduit.written(now, n);
                        continue;
                    }
                    if wait.read && !inbox.is_empty() {
                        if let Some(d) = reads.tick() {
                            self.now += d;
                            self.conduit.handle_timeout(self.now);
                            continue;
                        }
                        let pending = inbox.pending();
                        let n = reads.len(pending);
                        let took = self.conduit.receive(&pending[..n]);
                        reads.took(took);
                        inbox.at += took;
                        if took > 0 {
                            continue;
                        }
                    }
                    return Pumped::Waiting(wait);
                }
                Action::Authorize(key) => {
                    self.asked.push(key);
                    assert!(self.asked.len() == 1, "one key to authorize");
                    assert!(self.conduit.authorize(self.access).is_ok(), "asked once");
                }
                Action::OriginKey(origin) => {
                    let key = self.origin_keys.iter().find(|k| k.node_id() == origin);
                    let answered = self.conduit.origin_key(origin, key.copied());
                    assert!(answered.is_ok(), "an origin it asked about");
                }
                Action::Closed(outcome) => {
                    if let Err(e) = outcome
                        && !self.aborted
                    {
                        let error = self.conduit.session().error();
                        assert_eq!(error, Some(e), "the outcome is the session's error");
                    }
                    self.closed = Some(outcome);
                }
                _ => {}
            }
        }
    }

    /// Reads chunk `id` to serve it (for a range if `span` is set) and answers.
    fn read(&mut self, id: &ChunkHash, span: Option<chunk_sync_core::Span>) {
        match self.store.read_into(id, &mut self.serving) {
            Ok(Some(len)) => {
                self.served = len;
                let _ = match span {
                    Some(span) => self.conduit.serve_in_range(&span, len),
                    None => self.conduit.serve(len),
                };
            }
            Ok(None) => {
                self.served = 0;
                let _ = self.conduit.not_found();
            }
            Err(_) => {
                self.served = 0;
                self.abort();
            }
        }
    }
}

/// Checks that `bytes` are whole records (or handshake messages): each a two-byte length,
/// then that many bytes; once the peer's `Hello` is in (its frame size less the record's
/// overhead), no larger than the peer takes.
fn check_records(mut bytes: &[u8], peer_max: Option<usize>) {
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<2>()
            .expect("a record starts with its length");
        let len = usize::from(u16::from_le_bytes(*len));
        if let Some(max) = peer_max {
            assert!(
                2 + len <= max + RECORD_OVERHEAD,
                "a record of {len} bytes to a peer that takes {max} in a frame"
            );
        }
        bytes = rest.get(len..).expect("a whole record at a time");
    }
}
