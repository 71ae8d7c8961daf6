//! The sync session: the whole protocol between two nodes as a sans-IO state machine.
//!
//! A [`Session`] speaks to one peer over one ordered byte stream (TCP, a UART, …). Both
//! sides pull what they lack and serve what the other asks for, in one session:
//!
//! 1. each side sends [`Hello`] (protocol version, node id, frame limit, request and range
//!    limits, capabilities); different versions end the session on both sides;
//! 2. each side reconciles with the other's store ([`recon`](crate::recon)): it sends
//!    `Query`s, the other answers each with summaries of ranges of its store, and the
//!    asking side compares them with its own ([`Question::Summary`]) until it knows which
//!    ranges it lacks; one query is outstanding at a time, and every message fits the
//!    frame size, so neither side ever holds the other's set;
//! 3. each side requests what it lacks with several requests in flight: `GetRange` for a
//!    range the reconciliation found (answered with the range's chunks, then `RangeEnd`),
//!    `EventChunkGet` for a chunk the caller named (answered with it or `NotFound`); chunks
//!    travel as `EventChunkPut` pieces (a chunk larger than a frame in several); the
//!    receiver verifies each whole chunk against the hash it asked for, or computes the
//!    hash of a chunk of a range and checks that the chunk lies in it, before anyone may
//!    store it; a mismatch counts as failed and is asked for again;
//! 4. each side sends `Done` when it has everything it wanted and its store has answered
//!    for every chunk it verified, stored or refused (so a session that completes tells
//!    each side that what the other took is stored); while it waits for its store, a side
//!    sends `KeepAlive` (to a peer that announced `Capabilities::KEEPALIVE`) and the wait
//!    does not count as idle, up to `MAX_STORE_WAITS` idle timeouts; the session completes when
//!    both have sent `Done` and nothing is left to serve.
//!
//! Every frame sent passes the session's [`Throttle`] first; a silent peer times out.
//!
//! The session never calls a store and never buffers chunk data: it asks the adapter
//! [`Question`]s and the adapter answers through methods. Adapters do not drive it
//! directly: the [`Conduit`](crate::conduit::Conduit) does, once for all of them.
//!
//! The module is split by concept: `pull` (reconciling, requesting, verifying), `serve`
//! (answering the peer's queries and requests), `live` (announcements, keep-alives and
//! the end of a live session), `types` (settings, questions, events,
//! frames, counters) and `error`.

use heapless::Vec;

use crate::error::InsufficientSize;
use crate::event::NodeId;
use crate::progress::SyncProgress;
use crate::recon::codec::{MAX_ENTRY, MAX_RANGE};
use crate::recon::{KeyRange, Run, Summary};
use crate::scope::Scope;
use crate::throttle::{Throttle, ThrottleConfig};
use crate::time::{Duration, Instant};
use crate::wire::{
    self, Capabilities, Decoded, ErrorCode, Hello, MAX_FRAME_LIMIT, MIN_FRAME, Message,
    PROTOCOL_VERSION, RECON_OVERHEAD,
};

mod error;
mod live;
mod pull;
mod serve;
mod types;
pub use error::{
    ApiMisuse, ConfigError, Error, FinishError, Incompatible, LinkError, PeerMisbehaved,
};
use pull::{InFlight, Pull};
use serve::{Answering, Request, Serve};
pub use types::*;

/// The most runs of one range a session sends or compares unless told otherwise (its
/// `RUNS`; see [`recon`](crate::recon)): a range with more holes than its runs is split
/// rather than listed.
pub const DEFAULT_RUNS: usize = 4;

/// The question asked and not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    /// For the answer to the peer's query.
    Answer,
    /// For this side's walk.
    OwnSummary,
    /// For the request being served.
    Serving,
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
/// `RANGES` is the most ranges of one query or answer and of the reconciliation's queue
/// (at least `2 × RUNS`), and of the queue of chunks wanted by hash; `REQ` the most
/// requests in flight (in each direction); `RUNS` the most runs of one summary sent or
/// compared. Memory: about `(248 + 16 × RUNS) × RANGES + 160 × REQ + 900` bytes on 64-bit
/// targets, inline; see the README's capacity table.
///
/// # Calling order
/// (The [`Conduit`](crate::conduit::Conduit) follows it; an adapter uses the conduit.)
/// Feed inputs first, then drain the outputs, every time anything happens:
///
/// 1. inputs: [`handle_input`](Self::handle_input) with received bytes (drop `consumed`
///    bytes; on a last [`Piece`], call [`finish_chunk`](Self::finish_chunk) before more
///    input), [`handle_timeout`](Self::handle_timeout) when the deadline of
///    [`poll_timeout`](Self::poll_timeout) passes, the answer to each
///    [`question`](Self::question) until there is none, and what the store did with each
///    verified chunk ([`chunk_stored`](Self::chunk_stored));
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
pub struct Session<const RANGES: usize, const REQ: usize, const RUNS: usize = DEFAULT_RUNS> {
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
    /// Idle timeouts passed in a row while waiting for the store (see `handle_timeout`).
    store_waits: u8,
    /// When the peer's `Hello` must have arrived.
    handshake_deadline: Instant,
    /// When the session must be over, if it has a limit.
    deadline: Option<Instant>,
    throttled_until: Option<Instant>,
    progress: SyncProgress,
    stats: Stats,

    pull: Pull<RANGES, REQ, RUNS>,
    serve: Serve<RANGES, REQ>,
    completed_reported: bool,
    asked: Option<Asked>,
    /// Runs of the summary being made.
    runs: [Run; RUNS],
    /// Origins being listed for the answer.
    origins: [NodeId; RANGES],
    /// Live sessions: ranges of chunks stored since, to announce to the peer.
    announce: Vec<KeyRange, RANGES>,
    /// Live sessions: more was stored than `announce` could hold; `Resync` is to be sent.
    resync: bool,
    /// Live sessions: this side, or the peer, is ending the session.
    closing: bool,
    /// When the last frame went out.
    last_sent: Instant,
    /// The latest time given to the session.
    now: Instant,
    /// Bytes the link adds to each frame (a secure link's record prefix and tag).
    link_overhead: u32,
    /// The largest frame the link carries (a record's limit).
    link_max: u32,
    /// The origins the peer may see and fetch ([`Scope::All`] unless narrowed).
    shown: Scope,
    /// The origins this side takes from the peer ([`Scope::All`] unless narrowed).
    taken: Scope,
}

impl<const RANGES: usize, const REQ: usize, const RUNS: usize> Session<RANGES, REQ, RUNS> {
    /// A session that starts at `now` and will open with a `Hello`.
    pub fn new(config: Config, now: Instant) -> Result<Self, ConfigError> {
        config.check()?;
        const {
            assert!(
                RANGES >= 2 * RUNS
                    && RANGES <= u16::MAX as usize
                    && REQ > 0
                    && RUNS <= u16::MAX as usize,
                "a session needs RANGES >= 2 RUNS, RANGES and RUNS <= u16::MAX and REQ >= 1"
            );
        }
        let throttle = Throttle::new(config.throttle).map_err(ConfigError::Throttle)?;
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
            store_waits: 0,
            handshake_deadline: now + config.handshake_timeout,
            deadline: config.max_duration.map(|d| now + d),
            throttled_until: None,
            progress: SyncProgress::new(0, now),
            stats: Stats::default(),
            pull: Pull::new(config.pull, config.max_ranges),
            serve: Serve::new(),
            completed_reported: false,
            asked: None,
            runs: [Run { lo: 0, hi: 0 }; RUNS],
            origins: [NodeId(0); RANGES],
            announce: Vec::new(),
            resync: false,
            closing: false,
            last_sent: now,
            now,
            link_overhead: 0,
            link_max: u32::MAX,
            shown: Scope::All,
            taken: Scope::All,
        })
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// The peer's `Hello`, once received; over a secure link its `max_frame` is less what
    /// the link adds to each frame (`secure::RECORD_OVERHEAD`, with the `secure` feature):
    /// the largest frame this side sends.
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

    /// The bytes of the buffer [`poll_transmit`](Self::poll_transmit) and
    /// [`summarized`](Self::summarized) work in: the first half for the frame written
    /// (chunk data excluded: it follows the header separately), the second for the
    /// query or answer being put together.
    #[must_use]
    pub const fn max_transmit_len() -> usize {
        2 * Self::frame_area()
    }

    /// The largest frame [`poll_transmit`](Self::poll_transmit) writes: an answer or a
    /// query of `RANGES` ranges, or a control frame.
    const fn frame_area() -> usize {
        let entries = RANGES * MAX_ENTRY + RECON_OVERHEAD;
        let ranges = RANGES * MAX_RANGE + RECON_OVERHEAD + 16;
        let area = if entries > ranges { entries } else { ranges };
        if area > MIN_FRAME as usize {
            area
        } else {
            MIN_FRAME as usize
        }
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
                    listed: None,
                });
            }
            _ => {}
        }
        if self
            .pull
            .in_flight
            .front()
            .is_some_and(InFlight::is_complete)
        {
            // Not fatal: nothing was consumed; the caller must finish the chunk first.
            return Err(Error::ApiMisuse(ApiMisuse::FinishChunkFirst));
        }
        if self.asked.is_some() {
            // Not fatal: an answer to the question asked may change what the next frame
            // means (the walk must resolve an answer before it reads the next).
            return Err(Error::ApiMisuse(ApiMisuse::AnswerFirst));
        }
        self.now = self.now.max(now);
        let (message, len) = match wire::decode(input, self.config.max_frame) {
            Ok(Decoded::Incomplete { .. }) => {
                return Ok(Handled {
                    consumed: 0,
                    piece: None,
                    listed: None,
                });
            }
            Ok(Decoded::Frame { message, len }) => (message, len),
            Err(e) => return Err(self.fail(Error::Frame(e))),
        };
        self.idle_deadline = now + self.config.idle_timeout;
        self.stats.bytes_received += len as u64;
        self.stats.frames_received += 1;
        if let Message::Query { .. } | Message::Answer { .. } = message {
            self.stats.discovery_received += len as u64;
            self.stats.queries_received += u64::from(matches!(message, Message::Query { .. }));
        }
        let got = self.on_message(message).map_err(|e| self.fail(e))?;
        self.check_completion();
        let (piece, listed) = match got {
            Got::Nothing => (None, None),
            Got::Piece(piece) => (Some(piece), None),
            Got::Ids(ids) => (None, Some(ids)),
        };
        Ok(Handled {
            consumed: len,
            piece,
            listed,
        })
    }

    fn on_message<'a>(&mut self, message: Message<'a>) -> Result<Got<'a>, Error> {
        let unexpected = |what| Err(Error::Peer(PeerMisbehaved::Unexpected(what)));
        if self.peer.is_none() {
            return match message {
                Message::Hello(hello) => self.on_hello(hello).map(|()| Got::Nothing),
                Message::Error { code, .. } => Err(Error::Remote(code)),
                _ => unexpected("a message before Hello"),
            };
        }
        match message {
            Message::Hello(_) => unexpected("a second Hello"),
            Message::Query { query } => self.on_query(query).map(|()| Got::Nothing),
            Message::Answer { last, entries } => {
                self.on_answer(entries, last).map(|()| Got::Nothing)
            }
            Message::EventChunkGet { hash } => {
                self.on_request(Request::Chunk(hash)).map(|()| Got::Nothing)
            }
            Message::GetRange { origin, lo, hi } => self
                .on_request(Request::Range(KeyRange { origin, lo, hi }))
                .map(|()| Got::Nothing),
            // Listing needs `alloc` (see `Capabilities::LIST`); without it both are refused
            // as unknown, and their code is left out.
            #[cfg(feature = "alloc")]
            Message::GetIds { origin, lo, hi } => self
                .on_request(Request::Ids(KeyRange { origin, lo, hi }))
                .map(|()| Got::Nothing),
            #[cfg(feature = "alloc")]
            Message::Ids { next, ids } => self.on_ids(next, ids).map(Got::Ids),
            Message::EventChunkPut {
                total_len,
                offset,
                data,
            } => {
                // `data` fits a frame, so its length fits a `u32`.
                let len = data.len() as u32;
                self.on_piece(total_len, offset, len, data, Encoding::Raw)
                    .map(Got::Piece)
            }
            Message::EventChunkPutLz4 { .. } if !Capabilities::ALL.contains(Capabilities::LZ4) => {
                unexpected("a compressed piece, though this side did not announce LZ4")
            }
            Message::EventChunkPutLz4 {
                total_len,
                offset,
                len,
                data,
            } => self
                .on_piece(total_len, offset, len, data, Encoding::Lz4)
                .map(Got::Piece),
            Message::EventChunkPutZstd { .. }
                if !Capabilities::ALL.contains(Capabilities::ZSTD) =>
            {
                unexpected("a compressed piece, though this side did not announce ZSTD")
            }
            Message::EventChunkPutZstd {
                total_len,
                offset,
                len,
                data,
            } => self
                .on_piece(total_len, offset, len, data, Encoding::Zstd)
                .map(Got::Piece),
            Message::NotFound { hash } => self.on_not_found(hash).map(|()| Got::Nothing),
            Message::RangeEnd => self.on_range_end().map(|()| Got::Nothing),
            Message::Done => self.on_done().map(|()| Got::Nothing),
            Message::Error { code, .. } => Err(Error::Remote(code)),
            Message::Have { origin, lo, hi } => self
                .on_have(Some(KeyRange { origin, lo, hi }))
                .map(|()| Got::Nothing),
            Message::Resync => self.on_have(None).map(|()| Got::Nothing),
            // A live session's idle link, or a peer waiting for its store (this side
            // announced `Capabilities::KEEPALIVE`).
            Message::KeepAlive => Ok(Got::Nothing),
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
        if hello.max_requests == 0 || hello.max_ranges < 2 {
            return Err(Error::Incompatible(Incompatible::NoRequests));
        }
        if !hello.capabilities.contains(Capabilities::RECONCILE)
            || (self.config.list
                && !(Capabilities::ALL.contains(Capabilities::LIST)
                    && hello.capabilities.contains(Capabilities::LIST)))
        {
            return Err(Error::Incompatible(Incompatible::MissingCapabilities));
        }
        self.limit_to_peer(hello.max_receive_rate)?;
        // The session's frames to the peer leave room for what the link adds to each.
        self.peer = Some(Hello {
            max_frame: hello.max_frame.min(self.link_max) - self.link_overhead,
            ..hello
        });
        self.phase = Phase::Open;
        Ok(())
    }
}

/// What a message brought for the adapter.
enum Got<'a> {
    Nothing,
    Piece(Piece<'a>),
    // Listing needs `alloc`: without it no `Ids` is taken.
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    Ids(&'a [u8]),
}

impl<const RANGES: usize, const REQ: usize, const RUNS: usize> Session<RANGES, REQ, RUNS> {
    /// Sends no faster than the peer's `max_receive_rate` (if it set one) and this side's
    /// own limit: the lower of the two, over this side's window, or
    /// [`RECEIVE_WINDOW`] if it has no limit of its own.
    fn limit_to_peer(&mut self, theirs: u64) -> Result<(), Error> {
        if theirs == 0 {
            return Ok(());
        }
        let own = self.config.throttle;
        let limit = if own.is_unlimited() {
            ThrottleConfig {
                max_bytes_per_sec: theirs,
                window_duration: RECEIVE_WINDOW,
            }
        } else if theirs < own.max_bytes_per_sec {
            ThrottleConfig {
                max_bytes_per_sec: theirs,
                ..own
            }
        } else {
            return Ok(());
        };
        // So slow that this side could not be heard from within its idle timeout.
        if let Err(ConfigError::RateTooLow { min, .. }) =
            check_rate(limit, self.config.idle_timeout)
        {
            return Err(Error::Incompatible(Incompatible::RateTooLow {
                theirs,
                min,
            }));
        }
        // The window is non-zero: this side's was checked in `new`, `RECEIVE_WINDOW` is.
        let _ = self.throttle.reconfigure(limit);
        Ok(())
    }

    /// Ends the session from this side (for example because the store failed); the peer is
    /// told with an `Error` frame.
    pub fn abort(&mut self) {
        if !matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            self.fail(Error::Aborted);
        }
    }

    /// Checks timers: ends the session if no frame went either way for the idle timeout
    /// (time spent waiting for the store to answer for verified chunks does not count),
    /// if the peer's `Hello` did not come within the handshake timeout, or if the overall
    /// deadline passed. Calls before any deadline are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            return;
        }
        self.now = self.now.max(now);
        if self.throttled_until.is_some_and(|t| now >= t) {
            self.throttled_until = None;
        }
        if self.deadline.is_some_and(|t| now >= t) {
            self.fail(Error::DeadlinePassed);
        } else if matches!(self.phase, Phase::Handshake) && now >= self.handshake_deadline {
            self.fail(Error::HandshakeTimedOut);
        } else if now >= self.idle_deadline {
            if self.pull.unanswered > 0 && self.store_waits < MAX_STORE_WAITS {
                // Waiting for this side's own store, not for the peer: the idle time
                // starts again (and `KeepAlive`s tell the peer this side is there), up to
                // `MAX_STORE_WAITS` times without an answer from the store.
                self.store_waits += 1;
                self.idle_deadline = now + self.config.idle_timeout;
            } else {
                self.fail(Error::TimedOut);
            }
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
        // A keep-alive that is due and did not go out waits for whatever held it back (the
        // transport, the node's budget), which has a deadline of its own.
        let keepalive = self.keepalive_at().filter(|&t| t > self.now);
        for t in [
            self.throttled_until,
            self.deadline,
            keepalive,
            self.deferred_until(),
        ]
        .into_iter()
        .flatten()
        {
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
        if let Some(pull::Failure { hash, reason }) = self.pull.failures.pop_front() {
            return Some(Event::ChunkFailed { hash, reason });
        }
        if self.pull_finished() && !self.pull.reported && self.peer.is_some() {
            self.pull.reported = true;
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
        self.poll_transmit_serving(now, buf, &[])
    }

    /// As [`poll_transmit`](Self::poll_transmit), given the whole chunk being served (the
    /// one the last [`serve_chunk`](Self::serve_chunk) or
    /// [`serve_in_range`](Self::serve_in_range) named): its pieces may then travel
    /// compressed, written whole into `buf` ([`Transmit::piece`] is `None`), when
    /// [`Config::compress`] and the peer allow. A compressed piece fits `buf`; a longer
    /// `buf` (up to the peer's `max_frame`) lets more of them be compressed.
    pub fn poll_transmit_serving(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        serving: &[u8],
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
        self.now = self.now.max(now);
        if !self.hello_sent {
            // The handshake never waits for the throttle (nor counts against it): a slow
            // link must not make the peer's handshake timeout fire.
            let t = self.hello(buf)?;
            self.idle_deadline = now + self.config.idle_timeout;
            return Ok(Some(self.counted(t)));
        }
        if self.keepalive_at().is_some_and(|at| now >= at) {
            // A few bytes, so that the peer hears from this side; they wait for no throttle.
            let t = Self::emit(&Message::KeepAlive, buf)?;
            self.last_sent = now;
            return Ok(Some(self.counted(t)));
        }
        if let Some(at) = self.throttle.next_ready(now) {
            self.throttled_until = Some(at);
            return Ok(None);
        }
        let Some(t) = self.next_frame(buf, serving)? else {
            if matches!(self.phase, Phase::Failed(_)) {
                // The walk failed as it made its next query: the peer is told at once.
                return self.poll_transmit_serving(now, buf, serving);
            }
            return Ok(None);
        };
        // Admitted: `next_ready(now)` was `None`, so the window has room for any size.
        let _ = self.throttle.try_consume(now, t.wire_len() as u64);
        self.last_sent = now;
        if !self.is_live() {
            // Sending is progress: the session is not idle. (A live session hears from a
            // peer that is there: its keep-alives.)
            self.idle_deadline = now + self.config.idle_timeout;
        }
        self.check_completion();
        Ok(Some(self.counted(t)))
    }

    /// The question this session asks about the store, if any; it is asked again until it
    /// is answered, and [`handle_input`](Self::handle_input) waits for the answer.
    pub fn question(&mut self) -> Option<Question> {
        if matches!(self.phase, Phase::Failed(_)) {
            self.asked = None;
            return None;
        }
        // The question asked last, until it is answered; then the first that is due.
        let kinds = [Asked::Answer, Asked::OwnSummary, Asked::Serving];
        for kind in self.asked.into_iter().chain(kinds) {
            let question = match kind {
                Asked::Answer => self.answer_needs(),
                Asked::OwnSummary if self.config.list => {
                    // A listing takes this side's store as empty, without asking it.
                    while self.own_summary_needed().is_some() {
                        self.resolve_own(&Summary::default(), Some(0));
                    }
                    None
                }
                Asked::OwnSummary => self.own_summary_needed().map(Question::Summary),
                Asked::Serving => self.serving_needs(),
            };
            if question.is_some() {
                self.asked = Some(kind);
                return question;
            }
        }
        self.asked = None;
        None
    }

    /// The buffer for the runs of the summary [`Question::Summary`] asks for: as many as
    /// the summary may carry.
    pub fn runs_buffer(&mut self) -> &mut [Run] {
        let max = match self.asked {
            Some(Asked::Answer) => self.answer_runs(),
            Some(Asked::OwnSummary) => RUNS,
            _ => 0,
        };
        &mut self.runs[..max.min(RUNS)]
    }

    /// Answers [`Question::Summary`]: what the store holds of the range, and how many runs
    /// it wrote into [`runs_buffer`](Self::runs_buffer) (`None`: more than fit). `tx` is
    /// the buffer [`poll_transmit`](Self::poll_transmit) writes into: an answer for the
    /// peer is put together in its second half.
    pub fn summarized(
        &mut self,
        summary: &Summary,
        runs: Option<usize>,
        tx: &mut [u8],
    ) -> Result<(), ApiMisuse> {
        if runs.is_some_and(|n| n > self.runs_buffer().len()) {
            return Err(ApiMisuse::BadListing);
        }
        match self.asked {
            Some(Asked::Answer) if !matches!(self.answer_needs(), Some(Question::Summary(_))) => {
                return Err(ApiMisuse::NotAsked);
            }
            Some(Asked::Answer) => {
                let copy = self.runs;
                self.answer_summary(summary, runs.map(|n| &copy[..n]), tx)?;
            }
            Some(Asked::OwnSummary) => self.resolve_own(summary, runs),
            _ => return Err(ApiMisuse::NotAsked),
        }
        self.asked = None;
        Ok(())
    }

    /// The buffer for the origins [`Question::Origins`] asks for: as many as the answer
    /// may list.
    pub fn origins_buffer(&mut self) -> &mut [NodeId] {
        let max = match self.asked {
            Some(Asked::Answer) => self.origins_limit(),
            _ => 0,
        };
        &mut self.origins[..max.min(RANGES)]
    }

    /// Answers [`Question::Origins`]: the store's first `n` origins after the cursor are in
    /// [`origins_buffer`](Self::origins_buffer), ascending; `last` if none follow them.
    pub fn origins_listed(&mut self, n: usize, last: bool) -> Result<(), ApiMisuse> {
        if self.asked != Some(Asked::Answer) {
            return Err(ApiMisuse::NotAsked);
        }
        self.answer_origins(n, last)?;
        self.asked = None;
        Ok(())
    }

    /// Counts a frame handed to the caller.
    fn counted(&mut self, t: Transmit) -> Transmit {
        self.stats.bytes_sent += t.wire_len() as u64;
        self.stats.frames_sent += 1;
        t
    }

    /// Picks and encodes the next frame: control frames first, then chunk data.
    fn next_frame(
        &mut self,
        buf: &mut [u8],
        serving: &[u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        let Some(peer) = self.peer else {
            return Ok(None);
        };
        {
            let Some((frame, area)) = buf.split_at_mut_checked(Self::frame_area()) else {
                return Err(InsufficientSize {
                    required: Self::max_transmit_len(),
                });
            };
            if let Some(t) = self.next_answer_frame(frame, area)? {
                self.stats.discovery_sent += t.len as u64;
                return Ok(Some(t));
            }
            if let Some(t) = self.next_announce_frame(frame)? {
                self.stats.discovery_sent += t.len as u64;
                return Ok(Some(t));
            }
            if let Some(t) = self.next_pull_frame(&peer, frame, area)? {
                return Ok(Some(t));
            }
        }
        // A compressed piece is written whole into the buffer, which may be longer.
        self.next_serving_frame(&peer, buf, serving)
    }

    /// This node's `Hello`.
    fn hello(&mut self, buf: &mut [u8]) -> Result<Transmit, InsufficientSize> {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            node_id: self.config.node_id,
            max_frame: self.config.max_frame,
            max_requests: u16::try_from(self.announced_requests()).unwrap_or(u16::MAX),
            // `RANGES <= u16::MAX` is checked in `new`.
            max_ranges: RANGES as u16,
            capabilities: if self.config.live {
                Capabilities::ALL
            } else {
                Capabilities::ALL.without(Capabilities::LIVE)
            },
            max_receive_rate: self.config.receive_rate,
        };
        let t = Self::emit(&Message::Hello(hello), buf)?;
        self.hello_sent = true;
        Ok(t)
    }

    fn emit(message: &Message<'_>, buf: &mut [u8]) -> Result<Transmit, InsufficientSize> {
        let len = wire::encode(message, buf)?.len();
        Ok(Transmit { len, piece: None })
    }

    fn check_completion(&mut self) {
        if matches!(self.phase, Phase::Open)
            && self.pull.done_sent
            && self.serve.peer_done
            && self.serve.serving.is_none()
            && matches!(self.serve.answer, Answering::Idle)
        {
            self.phase = Phase::Completed;
        }
    }

    /// Frames this side sends and receives are `overhead` bytes smaller than the frame
    /// sizes announced (the link adds that much to each), and none is larger than `max`
    /// with it. Before `Hello`.
    #[cfg(feature = "secure")]
    pub(crate) const fn set_link(&mut self, overhead: u32, max: u32) {
        self.link_overhead = overhead;
        self.link_max = max;
    }

    /// Narrows what the session does before its `Hello` goes out: it shows the peer only
    /// the origins of `serve` (an empty store if none) and takes only the origins of
    /// `take` (fetching nothing if none).
    #[cfg(feature = "secure")]
    pub(crate) fn restrict(&mut self, serve: Scope, take: Scope) {
        self.config.serve &= !serve.is_nothing();
        self.shown = serve;
        self.taken = take;
        if take.is_nothing() {
            self.config.pull = false;
            self.config.list = false;
            self.pull = Pull::new(false, self.config.max_ranges);
        }
    }

    /// The origin of the range [`question`](Self::question) asks this node's store to
    /// summarise for the walk, while that question is unanswered.
    #[cfg(feature = "secure")]
    pub(crate) fn own_summary_origin(&self) -> Option<NodeId> {
        match self.asked {
            Some(Asked::OwnSummary) => self.pull.walk.as_ref()?.next_own().map(|r| r.origin),
            _ => None,
        }
    }

    /// Withdraws the question of [`own_summary_origin`](Self::own_summary_origin): the walk
    /// passes that range as it passes an origin not taken, and fetches nothing of it.
    #[cfg(feature = "secure")]
    pub(crate) fn pass_own_summary(&mut self) {
        if self.own_summary_origin().is_none() {
            return;
        }
        self.asked = None;
        if let Some(walk) = &mut self.pull.walk {
            walk.pass();
        }
        self.check_completion();
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

    /// Fails the session now, telling the peer if the error has a wire reason.
    #[cfg(feature = "secure")]
    pub(crate) fn fail_now(&mut self, error: Error) {
        let _ = self.fail(error);
    }

    /// Moves to `Failed` and queues the error frame for the peer.
    /// A session already over keeps its outcome (and sends no second `Error` frame); the
    /// error returned is then the first one.
    fn fail(&mut self, error: Error) -> Error {
        match self.phase {
            Phase::Failed(first) => return first,
            Phase::Completed => return error,
            _ => {}
        }
        debug!("session failed");
        self.phase = Phase::Failed(error);
        self.error_frame = error.wire_reason();
        error
    }
}

/// The window over which a session that has no limit of its own applies the rate its
/// peer asks for (`Hello::max_receive_rate`): short, so that the rate holds over any
/// stretch of a transfer longer than a few windows.
pub const RECEIVE_WINDOW: Duration = Duration::from_millis(20);

/// The slowest throttle a session accepts with this idle timeout: one that lets a frame
/// of [`MIN_FRAME`] bytes out within a quarter of the idle timeout, so that a throttled
/// peer is still heard from before the other side gives up on it. `0` (unlimited) is
/// always accepted.
///
/// # Errors
/// [`ConfigError::RateTooLow`] with the lowest rate accepted.
// Out of line: checked for the configuration and for each peer's rate, and not worth a copy
// at each place.
#[inline(never)]
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
