//! The sync session: the whole protocol between two nodes as a sans-IO state machine.
//!
//! A [`Session`] speaks to one peer over one ordered byte stream (TCP, a UART, …). Both
//! sides pull what they lack and serve what the other asks for, in one session:
//!
//! 1. each side sends [`Hello`] (protocol version, node id, frame limit, request limit,
//!    capabilities); different versions end the session on both sides;
//! 2. each side asks for the other's manifest page by page (`ManifestRequest` →
//!    `ManifestPage`), each page bounded by the frame size; the adapter checks every hash of
//!    a page against its store ([`Event::LookupNeeded`]), so neither side ever holds the
//!    other's whole set;
//! 3. each side requests what it lacks with several `EventChunkGet`s in flight; the other
//!    answers in request order with `EventChunkPut` pieces (a chunk larger than a frame
//!    travels in pieces) or `NotFound`; the receiver verifies each whole chunk against its
//!    hash before anyone may store it; a mismatch counts as failed and is asked for again;
//! 4. each side sends `Done` when it has everything it wanted; the session completes when
//!    both have and nothing is left to serve.
//!
//! Every frame sent passes the session's [`Throttle`] first; a silent peer times out.
//!
//! The session never calls a store and never buffers chunk data: it asks the adapter
//! through events and the adapter answers through methods.

use core::cmp::min;

use heapless::{Deque, Vec};

use crate::chunk::ChunkView;
use crate::error::InsufficientSize;
use crate::event::NodeId;
use crate::hash::{ChunkHash, Verified};
use crate::manifest::is_sorted_unique;
use crate::progress::SyncProgress;
use crate::throttle::{Throttle, ThrottleConfig};
use crate::time::{Duration, Instant};
use crate::wire::{
    self, Capabilities, Decoded, ErrorCode, HashList, Hello, MAX_FRAME_LIMIT, MIN_FRAME, Message,
    PROTOCOL_VERSION,
};

mod error;
pub use error::{ApiMisuse, ConfigError, Error, FinishError, Incompatible, PeerMisbehaved};

/// Default idle timeout: 30 s without a frame either way ends the session.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest chunk accepted from a peer: 1 MiB.
pub const DEFAULT_MAX_CHUNK_LEN: u32 = 1 << 20;
/// Default number of chunk requests in flight.
pub const DEFAULT_WINDOW: u16 = 8;
/// Default number of attempts at a chunk whose bytes did not match its hash.
pub const DEFAULT_MAX_ATTEMPTS: u8 = 2;
/// Default time a peer has to send its `Hello`: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of chunks that may fail (not found, wrong bytes, not a valid chunk) in
/// one session before it ends with [`PeerMisbehaved::TooManyFailures`].
pub const DEFAULT_MAX_FAILURES: u32 = 1024;
/// The smallest chunk piece sent when the throttle's window budget is smaller than a frame.
const MIN_PIECE: usize = 64;

/// A session's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// This node's id.
    pub node_id: NodeId,
    /// The largest frame this node accepts, header included
    /// ([`MIN_FRAME`]`..=`[`MAX_FRAME_LIMIT`]). The adapter's receive buffer must hold one.
    pub max_frame: u32,
    /// The largest chunk this node accepts from the peer; the adapter's reassembly buffer
    /// must hold one.
    pub max_chunk_len: u32,
    /// Chunk requests this node keeps in flight (also capped by the peer's limit and the
    /// session's `REQ`).
    pub window: u16,
    /// How long the session may go without a frame either way: received from the peer, or
    /// sent to it (the adapter asks for frames only as fast as the transport takes them,
    /// so a peer that stops reading stops this side's sending too). A sender serving a long
    /// throttled transfer hears nothing from a receiver whose requests are all in flight;
    /// its own progress keeps the session alive.
    pub idle_timeout: Duration,
    /// The limit on what this session sends.
    pub throttle: ThrottleConfig,
    /// Attempts at a chunk whose bytes do not match its hash before it is reported failed.
    pub max_attempts: u8,
    /// How long the peer has to send its `Hello` after the session starts; a connection
    /// that stays silent is dropped sooner than an open session would be.
    pub handshake_timeout: Duration,
    /// If set, the session ends with [`Error::DeadlinePassed`] this long after it started,
    /// whatever the peer does: the bound on a peer that keeps a session alive without
    /// finishing it.
    pub max_duration: Option<Duration>,
    /// Chunks that may fail in this session (not found, wrong bytes on every attempt, not
    /// a valid chunk) before it ends with [`PeerMisbehaved::TooManyFailures`]: the bound
    /// on what the adapter keeps of a peer that lists chunks it cannot deliver.
    pub max_failures: u32,
    /// Whether this side fetches what it lacks; if not, it only serves.
    pub pull: bool,
    /// Whether this side shows its manifest to the peer; if not, it answers every
    /// manifest request with an empty last page and every chunk request with `NotFound`,
    /// without asking the adapter, so that no chunk of this node is ever sent.
    pub serve: bool,
}

impl Config {
    /// Defaults: 64 KiB frames, 1 MiB chunks, 8 requests in flight, 30 s idle timeout,
    /// 10 s for the peer's `Hello`, no overall deadline, no throttle, 2 attempts, 1,024
    /// failed chunks at most, pulling and serving.
    #[must_use]
    pub const fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            max_frame: wire::DEFAULT_MAX_FRAME,
            max_chunk_len: DEFAULT_MAX_CHUNK_LEN,
            window: DEFAULT_WINDOW,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            throttle: ThrottleConfig::UNLIMITED,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_duration: None,
            max_failures: DEFAULT_MAX_FAILURES,
            pull: true,
            serve: true,
        }
    }
}

/// What the adapter must do or know; see [`Session::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event {
    /// The handshake is done.
    Connected {
        /// The peer's node id.
        peer: NodeId,
    },
    /// A page of the peer's manifest arrived: answer with [`Session::resolve_lookups`].
    LookupNeeded,
    /// The peer asks for a page of this node's manifest: answer with
    /// [`Session::send_manifest_page`].
    ManifestPageNeeded {
        /// Hashes strictly after this one (from the first if `None`).
        after: Option<ChunkHash>,
        /// At most this many.
        limit: usize,
    },
    /// The peer asks for a chunk: answer with [`Session::serve_chunk`] or
    /// [`Session::chunk_not_found`].
    ChunkRequested {
        /// The chunk.
        hash: ChunkHash,
    },
    /// A chunk could not be fetched from this peer; another peer may have it.
    ChunkFailed {
        /// The chunk.
        hash: ChunkHash,
        /// Why.
        reason: FailReason,
    },
    /// This side has fetched everything it lacked from the peer.
    PullComplete,
    /// Both sides are done: the adapter may close the transport.
    Completed,
    /// The session failed; it is over.
    Failed(Error),
}

/// What the store did with a verified chunk; see [`Session::chunk_stored`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Stored {
    /// The store holds the chunk (new, or already there).
    Kept,
    /// The store refused it: its origin and sequence range overlap a different chunk
    /// the store holds ([`FailReason::Fork`]).
    Fork,
}

/// Why a chunk could not be fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FailReason {
    /// Its bytes did not match its hash, on every attempt.
    HashMismatch,
    /// The peer did not have it.
    NotFound,
    /// Its bytes match its hash but are not a valid chunk of this format (header, range,
    /// events, or a private event inside): no peer can give a valid chunk by that name.
    Invalid,
    /// The store refused it as a fork: its origin and sequence range overlap a different
    /// chunk the store holds. Reported by adapters, whose stores check this.
    Fork,
}

impl core::fmt::Display for FailReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::HashMismatch => "bytes did not match the hash",
            Self::NotFound => "not found",
            Self::Invalid => "not a valid chunk",
            Self::Fork => "overlaps a different chunk of the same origin (a fork)",
        })
    }
}

/// One frame to send, written at the start of the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[must_use = "the frame must be sent"]
pub struct Transmit {
    /// Bytes written to the caller's buffer.
    pub len: usize,
    /// If set, the frame is an `EventChunkPut` header and the caller sends these bytes of
    /// the chunk it is serving right after `buf[..len]`.
    pub piece: Option<PieceOut>,
}

impl Transmit {
    /// The frame's total length on the wire.
    #[must_use]
    pub const fn wire_len(&self) -> usize {
        match self.piece {
            Some(p) => self.len + p.len as usize,
            None => self.len,
        }
    }
}

/// The bytes of the served chunk that follow a [`Transmit`]'s header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PieceOut {
    /// The chunk.
    pub hash: ChunkHash,
    /// Offset of the piece in the chunk.
    pub offset: u32,
    /// Length of the piece.
    pub len: u32,
}

/// What [`Session::handle_input`] did with the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "`consumed` bytes must be dropped from the input"]
pub struct Handled<'a> {
    /// Bytes of the input used: drop them before the next call. Zero means the input holds
    /// no whole frame yet.
    pub consumed: usize,
    /// Chunk data that arrived, for the adapter to append to its reassembly buffer.
    pub piece: Option<Piece<'a>>,
}

/// A piece of a requested chunk, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The chunk.
    pub hash: ChunkHash,
    /// Where the piece starts in the chunk.
    pub offset: u32,
    /// The whole chunk's length.
    pub total_len: u32,
    /// The bytes.
    pub data: &'a [u8],
    /// Whether this piece completes the chunk: call [`Session::finish_chunk`] with the whole
    /// chunk before feeding more input.
    pub last: bool,
}

/// Byte and frame counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Bytes sent, frame headers included.
    pub bytes_sent: u64,
    /// Bytes received, frame headers included.
    pub bytes_received: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
}

#[derive(Clone, Copy, Debug)]
struct Want {
    hash: ChunkHash,
    attempts: u8,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    hash: ChunkHash,
    attempts: u8,
    total_len: Option<u32>,
    received: u32,
}

impl InFlight {
    fn is_complete(&self) -> bool {
        self.total_len == Some(self.received)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ManifestWalk {
    /// The next page must be asked for (once the wanted hashes are requested).
    NeedPage,
    /// A page was asked for, with this limit.
    Requested(usize),
    /// A page is held for lookups.
    Lookups,
    /// The last page was looked up.
    Done,
}

#[derive(Clone, Copy, Debug)]
enum Serving {
    /// Requested by the peer; the adapter has not answered yet.
    Pending { hash: ChunkHash, reported: bool },
    /// Being sent.
    Sending {
        hash: ChunkHash,
        total_len: u32,
        offset: u32,
    },
    /// The adapter does not have it; `NotFound` is to be sent.
    NotFound { hash: ChunkHash },
}

/// Where this side is in answering the peer's manifest request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listing {
    /// No request outstanding.
    Idle,
    /// The peer asked for a page; `reported` once the adapter was told.
    Asked {
        after: Option<ChunkHash>,
        limit: usize,
        reported: bool,
    },
    /// The page in `page_out` is to be sent.
    Ready { last: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's `Hello`.
    Handshake,
    Open,
    Completed,
    Failed(Error),
}

/// The sync protocol with one peer, as a state machine that does no I/O and reads no clock.
///
/// `PAGE` is the most hashes per manifest page (in each direction) and `REQ` the most chunk
/// requests in flight (in each direction). Memory: about `100 × PAGE + 150 × REQ` bytes plus
/// a constant, inline; see the README's capacity table.
///
/// # Calling order
/// Feed inputs first, then drain the outputs, every time anything happens:
///
/// 1. inputs: [`handle_input`](Self::handle_input) with received bytes (drop `consumed`
///    bytes; on a last [`Piece`], call [`finish_chunk`](Self::finish_chunk) before more
///    input), [`handle_timeout`](Self::handle_timeout) when the deadline of
///    [`poll_timeout`](Self::poll_timeout) passes, and the answers to events
///    ([`resolve_lookups`](Self::resolve_lookups),
///    [`send_manifest_page`](Self::send_manifest_page), [`serve_chunk`](Self::serve_chunk),
///    [`chunk_not_found`](Self::chunk_not_found));
/// 2. then [`poll_transmit`](Self::poll_transmit) until it returns `None`, sending each frame;
/// 3. then [`poll_timeout`](Self::poll_timeout) to arm the timer;
/// 4. then [`poll_event`](Self::poll_event) until it returns `None`, answering each event
///    (which is an input: go back to 1).
///
/// `now` must never decrease from one call to the next; if it does, elapsed time counts as
/// zero. Once a fatal error has happened, every `handle_*` returns it again, `poll_transmit`
/// yields only the `Error` frame for the peer, and `poll_event` yields one
/// [`Event::Failed`].
#[derive(Clone, Debug)]
pub struct Session<const PAGE: usize, const REQ: usize> {
    config: Config,
    throttle: Throttle,
    phase: Phase,
    peer: Option<Hello>,
    hello_sent: bool,
    connected_reported: bool,
    /// The error frame still to send after a local failure.
    error_frame: Option<(ErrorCode, &'static str)>,
    failure_reported: bool,
    idle_deadline: Instant,
    /// When the peer's `Hello` must have arrived.
    handshake_deadline: Instant,
    /// When the session must be over, if it has a limit.
    deadline: Option<Instant>,
    throttled_until: Option<Instant>,
    progress: SyncProgress,
    stats: Stats,

    // Pulling.
    walk: ManifestWalk,
    cursor: Option<ChunkHash>,
    last_page: bool,
    page: Vec<ChunkHash, PAGE>,
    lookups_reported: bool,
    /// How many hashes of `page` have been looked up.
    looked_up: usize,
    want: Deque<Want, PAGE>,
    retry: Deque<Want, REQ>,
    in_flight: Deque<InFlight, REQ>,
    failures: Deque<(ChunkHash, FailReason), REQ>,
    done_sent: bool,
    pull_reported: bool,

    // Serving.
    listing: Listing,
    /// The page of this node's manifest being listed or sent.
    page_out: Vec<ChunkHash, PAGE>,
    queue: Deque<ChunkHash, REQ>,
    serving: Option<Serving>,
    peer_done: bool,
    completed_reported: bool,
}

impl<const PAGE: usize, const REQ: usize> Session<PAGE, REQ> {
    /// A session that starts at `now` and will open with a `Hello`.
    pub fn new(config: Config, now: Instant) -> Result<Self, ConfigError> {
        if !(MIN_FRAME..=MAX_FRAME_LIMIT).contains(&config.max_frame) {
            return Err(ConfigError::FrameSize(config.max_frame));
        }
        if config.window == 0 || PAGE == 0 || REQ == 0 {
            return Err(ConfigError::Zero("window, PAGE and REQ"));
        }
        if config.max_attempts == 0 {
            return Err(ConfigError::Zero("max_attempts"));
        }
        let throttle = Throttle::new(config.throttle).map_err(ConfigError::Throttle)?;
        check_rate(config.throttle, config.idle_timeout)?;
        Ok(Self {
            config,
            throttle,
            phase: Phase::Handshake,
            peer: None,
            hello_sent: false,
            connected_reported: false,
            error_frame: None,
            failure_reported: false,
            idle_deadline: now + config.idle_timeout,
            handshake_deadline: now + config.handshake_timeout,
            deadline: config.max_duration.map(|d| now + d),
            throttled_until: None,
            progress: SyncProgress::new(0, now),
            stats: Stats::default(),
            walk: if config.pull {
                ManifestWalk::NeedPage
            } else {
                ManifestWalk::Done
            },
            cursor: None,
            last_page: false,
            page: Vec::new(),
            lookups_reported: false,
            looked_up: 0,
            want: Deque::new(),
            retry: Deque::new(),
            in_flight: Deque::new(),
            failures: Deque::new(),
            done_sent: false,
            pull_reported: false,
            listing: Listing::Idle,
            page_out: Vec::new(),
            queue: Deque::new(),
            serving: None,
            peer_done: false,
            completed_reported: false,
        })
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// The peer's `Hello`, once received.
    #[must_use]
    pub const fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// Progress of this side's pull: chunks found missing so far, synced, failed, bytes.
    #[must_use]
    pub const fn progress(&self) -> &SyncProgress {
        &self.progress
    }

    /// Byte and frame counters.
    #[must_use]
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The fatal error, if the session failed.
    #[must_use]
    pub const fn error(&self) -> Option<Error> {
        match self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether both sides finished.
    #[must_use]
    pub const fn is_complete(&self) -> bool {
        matches!(self.phase, Phase::Completed)
    }

    /// Whether the session is over (completed or failed) and has nothing left to send.
    #[must_use]
    pub const fn is_closed(&self) -> bool {
        match self.phase {
            Phase::Completed => true,
            Phase::Failed(_) => self.error_frame.is_none(),
            _ => false,
        }
    }

    /// The largest frame [`poll_transmit`](Self::poll_transmit) can write into its buffer
    /// (chunk data excluded: it follows the header separately).
    #[must_use]
    pub const fn max_transmit_len() -> usize {
        let page = PAGE * ChunkHash::LEN + 16;
        if page > 256 { page } else { 256 }
    }

    /// Feeds received bytes: decodes at most one frame from the front of `input`.
    ///
    /// Call again with the rest until `consumed` is zero, then read more bytes. The input
    /// never needs to hold more than one frame of `config.max_frame` bytes.
    pub fn handle_input<'a>(
        &mut self,
        now: Instant,
        input: &'a [u8],
    ) -> Result<Handled<'a>, Error> {
        match self.phase {
            Phase::Failed(e) => return Err(e),
            Phase::Completed => {
                return Ok(Handled {
                    consumed: 0,
                    piece: None,
                });
            }
            _ => {}
        }
        if self.in_flight.front().is_some_and(InFlight::is_complete) {
            // Not fatal: nothing was consumed; the caller must finish the chunk first.
            return Err(Error::ApiMisuse(ApiMisuse::FinishChunkFirst));
        }
        let (message, len) = match wire::decode(input, self.config.max_frame) {
            Ok(Decoded::Incomplete { .. }) => {
                return Ok(Handled {
                    consumed: 0,
                    piece: None,
                });
            }
            Ok(Decoded::Frame { message, len }) => (message, len),
            Err(e) => return Err(self.fail(Error::Frame(e))),
        };
        self.idle_deadline = now + self.config.idle_timeout;
        self.stats.bytes_received += len as u64;
        self.stats.frames_received += 1;
        let piece = self.on_message(message).map_err(|e| self.fail(e))?;
        self.check_completion();
        Ok(Handled {
            consumed: len,
            piece,
        })
    }

    fn on_message<'a>(&mut self, message: Message<'a>) -> Result<Option<Piece<'a>>, Error> {
        let unexpected = |what| Err(Error::Peer(PeerMisbehaved::Unexpected(what)));
        if self.peer.is_none() {
            return match message {
                Message::Hello(hello) => self.on_hello(hello).map(|()| None),
                Message::Error { code, .. } => Err(Error::Remote(code)),
                _ => unexpected("a message before Hello"),
            };
        }
        match message {
            Message::Hello(_) => unexpected("a second Hello"),
            Message::ManifestRequest { after, limit } => {
                if !matches!(self.listing, Listing::Idle) {
                    return unexpected("a manifest request before the previous page");
                }
                if limit == 0 {
                    return unexpected("a manifest request for zero hashes");
                }
                let peer_frame = self.peer.map_or(MIN_FRAME, |p| p.max_frame);
                let limit = min(
                    min(limit as usize, PAGE),
                    Message::page_capacity(peer_frame),
                );
                self.page_out.clear();
                self.listing = if self.config.serve {
                    Listing::Asked {
                        after,
                        limit,
                        reported: false,
                    }
                } else {
                    // Nothing is shown: an empty last page, without asking the adapter.
                    Listing::Ready { last: true }
                };
                Ok(None)
            }
            Message::ManifestPage { ids, last } => self.on_page(ids, last).map(|()| None),
            Message::EventChunkGet { hash } => {
                if self.peer_done {
                    return unexpected("a chunk request after Done");
                }
                let outstanding = self.queue.len() + usize::from(self.serving.is_some());
                if outstanding >= self.announced_requests() {
                    return Err(Error::Peer(PeerMisbehaved::TooManyRequests));
                }
                match self.serving {
                    None => self.serving = Some(self.requested(hash)),
                    Some(_) => {
                        // Room was checked above against a limit no larger than `REQ`.
                        let _ = self.queue.push_back(hash);
                    }
                }
                Ok(None)
            }
            Message::EventChunkPut {
                hash,
                total_len,
                offset,
                data,
            } => self.on_piece(hash, total_len, offset, data).map(Some),
            Message::NotFound { hash } => {
                match self.in_flight.front() {
                    Some(f) if f.hash == hash && f.total_len.is_none() => {}
                    _ => return unexpected("NotFound for a chunk not requested next"),
                }
                self.in_flight.pop_front();
                // Room: `failures` and `in_flight` share the limit `REQ` (see `next_request`).
                let _ = self.failures.push_back((hash, FailReason::NotFound));
                self.count_failure().map(|()| None)
            }
            Message::Done => {
                if self.peer_done {
                    return unexpected("a second Done");
                }
                if self.serving.is_some() {
                    return unexpected("Done with requests outstanding");
                }
                self.peer_done = true;
                Ok(None)
            }
            Message::Error { code, .. } => Err(Error::Remote(code)),
            // Unknown variants cannot be decoded, so none reach this point.
            #[allow(unreachable_patterns)]
            _ => unexpected("an unknown message"),
        }
    }

    fn on_hello(&mut self, hello: Hello) -> Result<(), Error> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Error::Incompatible(Incompatible::ProtocolVersion {
                ours: PROTOCOL_VERSION,
                theirs: hello.protocol,
            }));
        }
        if hello.max_frame < MIN_FRAME {
            return Err(Error::Incompatible(Incompatible::FrameTooSmall {
                theirs: hello.max_frame,
            }));
        }
        if hello.max_frame > MAX_FRAME_LIMIT {
            return Err(Error::Incompatible(Incompatible::FrameTooLarge {
                theirs: hello.max_frame,
            }));
        }
        if hello.max_requests == 0 {
            return Err(Error::Incompatible(Incompatible::NoRequests));
        }
        if !hello.capabilities.contains(Capabilities::MANIFEST_PAGES) {
            return Err(Error::Incompatible(Incompatible::MissingCapabilities));
        }
        self.peer = Some(hello);
        self.phase = Phase::Open;
        Ok(())
    }

    fn on_page(&mut self, ids: HashList<'_>, last: bool) -> Result<(), Error> {
        let ManifestWalk::Requested(limit) = self.walk else {
            return Err(Error::Peer(PeerMisbehaved::Unexpected(
                "a manifest page not asked for",
            )));
        };
        if ids.len() > limit {
            return Err(Error::Peer(PeerMisbehaved::OversizePage));
        }
        if ids.is_empty() && !last {
            return Err(Error::Peer(PeerMisbehaved::EmptyPage));
        }
        self.page.clear();
        for id in ids.iter() {
            let after_previous = match self.page.last().or(self.cursor.as_ref()) {
                Some(prev) => id > *prev,
                None => true,
            };
            if !after_previous {
                self.page.clear();
                return Err(Error::Peer(PeerMisbehaved::UnsortedPage));
            }
            // Cannot fail: `ids.len() <= limit <= PAGE`.
            let _ = self.page.push(id);
        }
        if let Some(end) = self.page.last() {
            self.cursor = Some(*end);
        }
        self.last_page = last;
        // An empty page is always the last one (checked above).
        self.walk = if self.page.is_empty() {
            ManifestWalk::Done
        } else {
            ManifestWalk::Lookups
        };
        self.lookups_reported = false;
        self.looked_up = 0;
        Ok(())
    }
}

impl<const PAGE: usize, const REQ: usize> Session<PAGE, REQ> {
    fn on_piece<'a>(
        &mut self,
        hash: ChunkHash,
        total_len: u32,
        offset: u32,
        data: &'a [u8],
    ) -> Result<Piece<'a>, Error> {
        let max = self.config.max_chunk_len;
        let Some(front) = self.in_flight.front_mut() else {
            return Err(Error::Peer(PeerMisbehaved::UnrequestedChunk));
        };
        if front.hash != hash {
            return Err(Error::Peer(PeerMisbehaved::UnrequestedChunk));
        }
        if total_len > max {
            return Err(Error::Peer(PeerMisbehaved::ChunkTooLarge {
                len: total_len,
                max,
            }));
        }
        let fits = u32::try_from(data.len())
            .ok()
            .and_then(|n| offset.checked_add(n))
            .is_some_and(|end| end <= total_len);
        let consistent = front.total_len.is_none_or(|t| t == total_len);
        if total_len == 0 || data.is_empty() || offset != front.received || !consistent || !fits {
            return Err(Error::Peer(PeerMisbehaved::BadPiece));
        }
        front.total_len = Some(total_len);
        // `fits` checked that this neither overflows nor passes `total_len`.
        front.received = offset + data.len() as u32;
        Ok(Piece {
            hash,
            offset,
            total_len,
            data,
            last: front.is_complete(),
        })
    }

    /// Verifies the chunk whose last piece just arrived, given all of its bytes in order:
    /// its hash, then every rule of the chunk format ([`ChunkView::validate`]: header,
    /// range, events, no private event).
    ///
    /// On success the bytes are [`Verified`] and may be stored. Otherwise nothing may be
    /// stored: a hash mismatch is counted as failed and asked for again, or reported with
    /// [`Event::ChunkFailed`] once `max_attempts` are used up; bytes that match their hash
    /// but are not a valid chunk are reported at once ([`FailReason::Invalid`]), since no
    /// peer can give other bytes by that name. Past `max_failures`, the session fails.
    pub fn finish_chunk<'b>(&mut self, bytes: &'b [u8]) -> Result<Verified<'b>, FinishError> {
        let Some(front) = self.in_flight.front().copied() else {
            return Err(FinishError::ApiMisuse(ApiMisuse::NoChunkToFinish));
        };
        if !front.is_complete() || front.total_len != u32::try_from(bytes.len()).ok() {
            return Err(FinishError::ApiMisuse(ApiMisuse::NoChunkToFinish));
        }
        self.in_flight.pop_front();
        let result = Verified::new(front.hash, bytes)
            .map_err(FinishError::HashMismatch)
            .and_then(|verified| {
                ChunkView::validated(bytes)
                    .map(|_| verified)
                    .map_err(FinishError::Invalid)
            });
        // Room in `retry` and `failures`: they hold at most what was in flight.
        match result {
            Ok(_) => {
                // Synced once the store says so ([`chunk_stored`](Self::chunk_stored)).
                self.progress.bytes_transferred += bytes.len() as u64;
            }
            Err(FinishError::Invalid(_)) => {
                let _ = self.failures.push_back((front.hash, FailReason::Invalid));
                let _ = self.count_failure();
            }
            Err(_) => {
                let attempts = front.attempts + 1;
                if attempts < self.config.max_attempts {
                    let _ = self.retry.push_back(Want {
                        hash: front.hash,
                        attempts,
                    });
                } else {
                    let _ = self
                        .failures
                        .push_back((front.hash, FailReason::HashMismatch));
                }
                let _ = self.count_failure();
            }
        }
        self.check_completion();
        result
    }

    /// Tells the session what the store did with a chunk [`finish_chunk`](Self::finish_chunk)
    /// verified: it counts as synced once kept; a fork counts as failed (and towards
    /// `max_failures`). The fork is not reported again as [`Event::ChunkFailed`]: the
    /// adapter, which got the store's answer, knows.
    pub fn chunk_stored(&mut self, stored: Stored) {
        match stored {
            Stored::Kept => self.progress.synced_chunks += 1,
            Stored::Fork => {
                let _ = self.count_failure();
            }
        }
    }

    /// Counts a failed chunk; past `max_failures` the session fails.
    fn count_failure(&mut self) -> Result<(), Error> {
        self.progress.failed_chunks += 1;
        if self.progress.failed_chunks > u64::from(self.config.max_failures) {
            let max = self.config.max_failures;
            return Err(self.fail(Error::Peer(PeerMisbehaved::TooManyFailures { max })));
        }
        Ok(())
    }

    /// The hashes of the peer's manifest page that still await a lookup, after
    /// [`Event::LookupNeeded`].
    #[must_use]
    pub fn lookups(&self) -> &[ChunkHash] {
        if matches!(self.walk, ManifestWalk::Lookups) && matches!(self.phase, Phase::Open) {
            self.page.get(self.looked_up..).unwrap_or(&[])
        } else {
            &[]
        }
    }

    /// The next hash of the peer's manifest page to look up, if any awaits one: answer
    /// with [`answer_lookup`](Self::answer_lookup), one hash at a time, so that a store
    /// that waits (flash, a disk) needs no buffer of answers.
    #[must_use]
    pub fn next_lookup(&self) -> Option<ChunkHash> {
        self.lookups().first().copied()
    }

    /// Answers the lookup of [`next_lookup`](Self::next_lookup): whether this node already
    /// has the chunk. If not, it is requested. After the page's last hash the walk goes on.
    pub fn answer_lookup(&mut self, have: bool) -> Result<(), ApiMisuse> {
        let id = self.next_lookup().ok_or(ApiMisuse::NoLookupsPending)?;
        if !have {
            // Room: a page is asked for only once `want` is empty, and holds at most
            // `PAGE` hashes.
            let _ = self.want.push_back(Want {
                hash: id,
                attempts: 0,
            });
            self.progress.total_chunks += 1;
        }
        self.looked_up += 1;
        if self.looked_up == self.page.len() {
            self.page.clear();
            self.looked_up = 0;
            self.walk = if self.last_page {
                ManifestWalk::Done
            } else {
                ManifestWalk::NeedPage
            };
            self.check_completion();
        }
        Ok(())
    }

    /// Answers [`Event::LookupNeeded`] at once: `have` says, for each hash of
    /// [`lookups`](Self::lookups), whether this node already has the chunk. The others are
    /// requested.
    pub fn resolve_lookups(
        &mut self,
        mut have: impl FnMut(&ChunkHash) -> bool,
    ) -> Result<(), ApiMisuse> {
        if !matches!(self.walk, ManifestWalk::Lookups) {
            return Err(ApiMisuse::NoLookupsPending);
        }
        while let Some(id) = self.next_lookup() {
            self.answer_lookup(have(&id))?;
        }
        Ok(())
    }

    /// Asks for these chunks, in a session that does not walk the peer's manifest
    /// (`pull: false`) or whose walk is over. Returns how many were queued (none otherwise):
    /// the queue holds `PAGE` hashes, so call again with the rest once chunks have arrived,
    /// in the same round of inputs, before `poll_transmit` finds the queue empty and sends
    /// `Done`.
    pub fn want(&mut self, ids: &[ChunkHash]) -> usize {
        if self.done_sent || matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            return 0;
        }
        let room = if matches!(self.walk, ManifestWalk::Done) {
            PAGE - self.want.len()
        } else {
            0
        };
        for id in &ids[..min(room, ids.len())] {
            // Room was computed above.
            let _ = self.want.push_back(Want {
                hash: *id,
                attempts: 0,
            });
            self.progress.total_chunks += 1;
        }
        min(room, ids.len())
    }

    /// Answers [`Event::ManifestPageNeeded`] with this node's hashes after the requested
    /// cursor, sorted, at most `limit` of them; `last` says whether none follow.
    pub fn send_manifest_page(&mut self, ids: &[ChunkHash], last: bool) -> Result<(), ApiMisuse> {
        let out = self.page_to_list().ok_or(ApiMisuse::NoManifestRequest)?.1;
        let n = ids.len();
        out.get_mut(..n)
            .ok_or(ApiMisuse::BadManifestPage)?
            .copy_from_slice(ids);
        self.page_listed(n, last)
    }

    /// The manifest page the peer asked for, to be filled by the adapter without a copy:
    /// the cursor (hashes strictly after it, from the first if `None`) and a buffer of
    /// `limit` hashes. Answer with [`page_listed`](Self::page_listed).
    pub fn page_to_list(&mut self) -> Option<(Option<ChunkHash>, &mut [ChunkHash])> {
        let Listing::Asked { after, limit, .. } = self.listing else {
            return None;
        };
        // `limit <= PAGE` was checked when the request arrived.
        self.page_out
            .resize(limit, ChunkHash::from_bytes([0; 32]))
            .ok()?;
        Some((after, &mut self.page_out[..]))
    }

    /// Answers [`Event::ManifestPageNeeded`] after [`page_to_list`](Self::page_to_list):
    /// the first `n` hashes of its buffer are this node's next hashes, sorted; `last` says
    /// whether none follow.
    pub fn page_listed(&mut self, n: usize, last: bool) -> Result<(), ApiMisuse> {
        let Listing::Asked { after, limit, .. } = self.listing else {
            return Err(ApiMisuse::NoManifestRequest);
        };
        let ids = self.page_out.get(..n).unwrap_or(&[]);
        let after_cursor = match (after, ids.first()) {
            (Some(a), Some(first)) => *first > a,
            _ => true,
        };
        if n > limit || !after_cursor || !is_sorted_unique(ids) || (n == 0 && !last) {
            return Err(ApiMisuse::BadManifestPage);
        }
        self.page_out.truncate(n);
        self.listing = Listing::Ready { last };
        Ok(())
    }

    /// Answers [`Event::ChunkRequested`]: the adapter has the chunk, `len` bytes long, and
    /// will supply the bytes each [`Transmit::piece`] names until the chunk is sent.
    pub fn serve_chunk(&mut self, hash: &ChunkHash, len: usize) -> Result<(), ApiMisuse> {
        let total_len = u32::try_from(len)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(ApiMisuse::BadChunkLength)?;
        match self.serving {
            Some(Serving::Pending { hash: h, .. }) if h == *hash => {
                self.serving = Some(Serving::Sending {
                    hash: h,
                    total_len,
                    offset: 0,
                });
                Ok(())
            }
            _ => Err(ApiMisuse::NotRequested),
        }
    }

    /// Answers [`Event::ChunkRequested`]: the adapter does not have the chunk.
    pub fn chunk_not_found(&mut self, hash: &ChunkHash) -> Result<(), ApiMisuse> {
        match self.serving {
            Some(Serving::Pending { hash: h, .. }) if h == *hash => {
                self.serving = Some(Serving::NotFound { hash: h });
                Ok(())
            }
            _ => Err(ApiMisuse::NotRequested),
        }
    }

    /// Ends the session from this side (for example because the store failed); the peer is
    /// told with an `Error` frame.
    pub fn abort(&mut self) {
        if !matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            self.fail(Error::Aborted);
        }
    }

    /// Checks timers: ends the session if no frame went either way for the idle timeout,
    /// if the peer's `Hello` did not come within the handshake timeout, or if the overall
    /// deadline passed. Calls before any deadline are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            return;
        }
        if self.throttled_until.is_some_and(|t| now >= t) {
            self.throttled_until = None;
        }
        if self.deadline.is_some_and(|t| now >= t) {
            self.fail(Error::DeadlinePassed);
        } else if matches!(self.phase, Phase::Handshake) && now >= self.handshake_deadline {
            self.fail(Error::HandshakeTimedOut);
        } else if now >= self.idle_deadline {
            self.fail(Error::TimedOut);
        }
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            return None;
        }
        let mut next = self.idle_deadline;
        if matches!(self.phase, Phase::Handshake) {
            next = next.min(self.handshake_deadline);
        }
        for t in [self.throttled_until, self.deadline].into_iter().flatten() {
            next = next.min(t);
        }
        Some(next)
    }

    /// The next event for the adapter, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Phase::Failed(e) = self.phase {
            if self.failure_reported {
                return None;
            }
            self.failure_reported = true;
            return Some(Event::Failed(e));
        }
        if let (false, Some(peer)) = (self.connected_reported, self.peer) {
            self.connected_reported = true;
            return Some(Event::Connected { peer: peer.node_id });
        }
        if let Some((hash, reason)) = self.failures.pop_front() {
            return Some(Event::ChunkFailed { hash, reason });
        }
        if matches!(self.walk, ManifestWalk::Lookups) && !self.lookups_reported {
            self.lookups_reported = true;
            return Some(Event::LookupNeeded);
        }
        if let Listing::Asked {
            after,
            limit,
            reported: reported @ false,
        } = &mut self.listing
        {
            *reported = true;
            return Some(Event::ManifestPageNeeded {
                after: *after,
                limit: *limit,
            });
        }
        if let Some(Serving::Pending {
            hash,
            reported: reported @ false,
        }) = &mut self.serving
        {
            *reported = true;
            return Some(Event::ChunkRequested { hash: *hash });
        }
        if self.pull_finished() && !self.pull_reported && self.peer.is_some() {
            self.pull_reported = true;
            return Some(Event::PullComplete);
        }
        if matches!(self.phase, Phase::Completed) && !self.completed_reported {
            self.completed_reported = true;
            return Some(Event::Completed);
        }
        None
    }

    /// Writes the next frame to send into `buf`, if any is due and the throttle allows it.
    ///
    /// `buf` must hold [`max_transmit_len`](Self::max_transmit_len) bytes; for a chunk piece
    /// only the header is written and [`Transmit::piece`] names the bytes to send after it.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        if let Phase::Failed(_) = self.phase {
            // The last frame of a failed session bypasses the throttle.
            let Some((code, reason)) = self.error_frame else {
                return Ok(None);
            };
            let t = Self::emit(&Message::Error { code, reason }, buf)?;
            self.error_frame = None;
            return Ok(Some(self.counted(t)));
        }
        if matches!(self.phase, Phase::Completed) {
            return Ok(None);
        }
        if !self.hello_sent {
            // The handshake never waits for the throttle (nor counts against it): a slow
            // link must not make the peer's handshake timeout fire.
            let t = self.hello(buf)?;
            self.idle_deadline = now + self.config.idle_timeout;
            return Ok(Some(self.counted(t)));
        }
        if let Some(at) = self.throttle.next_ready(now) {
            self.throttled_until = Some(at);
            return Ok(None);
        }
        let Some(t) = self.next_frame(buf)? else {
            return Ok(None);
        };
        // Admitted: `next_ready(now)` was `None`, so the window has room for any size.
        let _ = self.throttle.try_consume(now, t.wire_len() as u64);
        // Sending is progress: the session is not idle.
        self.idle_deadline = now + self.config.idle_timeout;
        self.check_completion();
        Ok(Some(self.counted(t)))
    }

    /// Counts a frame handed to the caller.
    fn counted(&mut self, t: Transmit) -> Transmit {
        self.stats.bytes_sent += t.wire_len() as u64;
        self.stats.frames_sent += 1;
        t
    }

    /// Picks and encodes the next frame: control frames first, then chunk data.
    fn next_frame(&mut self, buf: &mut [u8]) -> Result<Option<Transmit>, InsufficientSize> {
        let Some(peer) = self.peer else {
            return Ok(None);
        };
        if let Listing::Ready { last } = self.listing {
            let t = Self::emit(
                &Message::ManifestPage {
                    ids: HashList::new(&self.page_out),
                    last,
                },
                buf,
            )?;
            self.listing = Listing::Idle;
            return Ok(Some(t));
        }
        if matches!(self.walk, ManifestWalk::NeedPage)
            && self.want.is_empty()
            && self.retry.is_empty()
        {
            let limit = min(PAGE, Message::page_capacity(self.config.max_frame));
            let request = Message::ManifestRequest {
                after: self.cursor,
                limit: limit as u32,
            };
            let t = Self::emit(&request, buf)?;
            self.walk = ManifestWalk::Requested(limit);
            return Ok(Some(t));
        }
        if let Some(next) = self.next_request(&peer) {
            let t = Self::emit(&Message::EventChunkGet { hash: next.hash }, buf)?;
            // Room was checked by `next_request`.
            let _ = self.in_flight.push_back(InFlight {
                hash: next.hash,
                attempts: next.attempts,
                total_len: None,
                received: 0,
            });
            if self.retry.pop_front().is_none() {
                self.want.pop_front();
            }
            return Ok(Some(t));
        }
        if self.pull_finished() && !self.done_sent {
            let t = Self::emit(&Message::Done, buf)?;
            self.done_sent = true;
            return Ok(Some(t));
        }
        self.next_serving_frame(&peer, buf)
    }

    /// This node's `Hello`.
    fn hello(&mut self, buf: &mut [u8]) -> Result<Transmit, InsufficientSize> {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            node_id: self.config.node_id,
            max_frame: self.config.max_frame,
            max_requests: u16::try_from(self.announced_requests()).unwrap_or(u16::MAX),
            capabilities: Capabilities::ALL,
        };
        let t = Self::emit(&Message::Hello(hello), buf)?;
        self.hello_sent = true;
        Ok(t)
    }

    /// The next chunk to request, if the window has room.
    fn next_request(&self, peer: &Hello) -> Option<Want> {
        let window = min(
            min(
                usize::from(self.config.window),
                usize::from(peer.max_requests),
            ),
            REQ,
        );
        // Failures wait in a queue bounded by `REQ` until the adapter reads them, so the
        // two together never exceed it.
        if self.in_flight.len() >= window || self.in_flight.len() + self.failures.len() >= REQ {
            return None;
        }
        self.retry.front().or(self.want.front()).copied()
    }

    fn next_serving_frame(
        &mut self,
        peer: &Hello,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        match self.serving {
            Some(Serving::NotFound { hash }) => {
                let t = Self::emit(&Message::NotFound { hash }, buf)?;
                self.next_served();
                Ok(Some(t))
            }
            Some(Serving::Sending {
                hash,
                total_len,
                offset,
            }) => {
                // A piece fits the peer's frames and, when throttled, one window's budget, so
                // that frames keep flowing and the peer's idle timer is fed.
                let budget = self
                    .throttle
                    .config()
                    .window_budget()
                    .map_or(usize::MAX, |b| b as usize);
                let cap = min(
                    Message::piece_capacity(peer.max_frame),
                    budget.max(MIN_PIECE),
                );
                let len = min(cap, (total_len - offset) as usize) as u32;
                let head = wire::encode_put_head(&hash, total_len, offset, len as usize, buf)?;
                let t = Transmit {
                    len: head.len(),
                    piece: Some(PieceOut { hash, offset, len }),
                };
                if offset + len == total_len {
                    self.next_served();
                } else {
                    self.serving = Some(Serving::Sending {
                        hash,
                        total_len,
                        offset: offset + len,
                    });
                }
                Ok(Some(t))
            }
            Some(Serving::Pending { .. }) | None => Ok(None),
        }
    }

    fn next_served(&mut self) {
        self.serving = self.queue.pop_front().map(|hash| self.requested(hash));
    }

    /// How a requested chunk starts out: awaiting the adapter's answer, or, when this side
    /// does not serve, not found without asking the adapter.
    const fn requested(&self, hash: ChunkHash) -> Serving {
        if self.config.serve {
            Serving::Pending {
                hash,
                reported: false,
            }
        } else {
            Serving::NotFound { hash }
        }
    }

    fn emit(message: &Message<'_>, buf: &mut [u8]) -> Result<Transmit, InsufficientSize> {
        let len = wire::encode(message, buf)?.len();
        Ok(Transmit { len, piece: None })
    }

    /// The most requests this node accepts outstanding: its `Hello::max_requests`.
    fn announced_requests(&self) -> usize {
        min(REQ, usize::from(u16::MAX))
    }

    fn pull_finished(&self) -> bool {
        matches!(self.walk, ManifestWalk::Done)
            && self.want.is_empty()
            && self.retry.is_empty()
            && self.in_flight.is_empty()
    }

    fn check_completion(&mut self) {
        if matches!(self.phase, Phase::Open)
            && self.done_sent
            && self.peer_done
            && self.serving.is_none()
            && matches!(self.listing, Listing::Idle)
        {
            self.phase = Phase::Completed;
        }
    }

    /// Whether this side's `Hello` went out.
    pub(crate) const fn hello_sent(&self) -> bool {
        self.hello_sent
    }

    /// Moves to `Failed` without a frame for the peer, who would not read it (it closed
    /// the transport, or stopped taking bytes).
    pub(crate) fn end(&mut self, error: Error) {
        if !matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            self.phase = Phase::Failed(error);
            self.error_frame = None;
        }
    }

    /// Moves to `Failed` and queues the error frame for the peer.
    fn fail(&mut self, error: Error) -> Error {
        debug!("session failed");
        self.phase = Phase::Failed(error);
        self.error_frame = error.wire_reason();
        error
    }
}

/// The slowest throttle a session accepts with this idle timeout: one that lets a frame
/// of [`MIN_FRAME`] bytes out within a quarter of the idle timeout, so that a throttled
/// peer is still heard from before the other side gives up on it. `0` (unlimited) is
/// always accepted.
///
/// # Errors
/// [`ConfigError::RateTooLow`] with the lowest rate accepted.
pub fn check_rate(throttle: ThrottleConfig, idle_timeout: Duration) -> Result<(), ConfigError> {
    if throttle.is_unlimited() {
        return Ok(());
    }
    let quarter_us = (idle_timeout.as_micros() / 4).max(1);
    let min = (u64::from(MIN_FRAME) * 1_000_000).div_ceil(quarter_us);
    if throttle.max_bytes_per_sec < min {
        return Err(ConfigError::RateTooLow {
            rate: throttle.max_bytes_per_sec,
            min,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hostile;
