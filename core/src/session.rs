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
//! through events and the adapter answers through methods. Adapters do not drive it
//! directly: the [`Conduit`](crate::conduit::Conduit) does, once for all of them.
//!
//! The module is split by concept: `pull` (walking the peer's manifest, requesting,
//! verifying), `serve` (answering the peer's requests), `types` (settings, events, frames,
//! counters) and `error`.

use crate::error::InsufficientSize;
use crate::hash::ChunkHash;
use crate::progress::SyncProgress;
use crate::throttle::{Throttle, ThrottleConfig};
use crate::time::{Duration, Instant};
use crate::wire::{
    self, Capabilities, Decoded, ErrorCode, HashList, Hello, MAX_FRAME_LIMIT, MIN_FRAME, Message,
    PROTOCOL_VERSION,
};

mod error;
mod pull;
mod serve;
mod types;
pub use error::{ApiMisuse, ConfigError, Error, FinishError, Incompatible, PeerMisbehaved};
use pull::{InFlight, ManifestWalk, Pull};
use serve::{Listing, Serve, Serving};
pub use types::*;

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
/// (The [`Conduit`](crate::conduit::Conduit) follows it; an adapter uses the conduit.)
/// Feed inputs first, then drain the outputs, every time anything happens:
///
/// 1. inputs: [`handle_input`](Self::handle_input) with received bytes (drop `consumed`
///    bytes; on a last [`Piece`], call [`finish_chunk`](Self::finish_chunk) before more
///    input), [`handle_timeout`](Self::handle_timeout) when the deadline of
///    [`poll_timeout`](Self::poll_timeout) passes, and the answers to events
///    ([`answer_lookup`](Self::answer_lookup) for each [`next_lookup`](Self::next_lookup),
///    [`page_listed`](Self::page_listed) after filling [`page_to_list`](Self::page_to_list),
///    [`serve_chunk`](Self::serve_chunk), [`chunk_not_found`](Self::chunk_not_found)), and
///    what the store did with each verified chunk ([`chunk_stored`](Self::chunk_stored));
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

    pull: Pull<PAGE, REQ>,
    serve: Serve<PAGE, REQ>,
    completed_reported: bool,
}

impl<const PAGE: usize, const REQ: usize> Session<PAGE, REQ> {
    /// A session that starts at `now` and will open with a `Hello`.
    pub fn new(config: Config, now: Instant) -> Result<Self, ConfigError> {
        config.check()?;
        if PAGE == 0 || REQ == 0 {
            return Err(ConfigError::Zero("PAGE and REQ"));
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
            handshake_deadline: now + config.handshake_timeout,
            deadline: config.max_duration.map(|d| now + d),
            throttled_until: None,
            progress: SyncProgress::new(0, now),
            stats: Stats::default(),
            pull: Pull::new(config.pull),
            serve: Serve::new(),
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
        if self
            .pull
            .in_flight
            .front()
            .is_some_and(InFlight::is_complete)
        {
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
                self.on_manifest_request(after, limit).map(|()| None)
            }
            Message::ManifestPage { ids, last } => self.on_page(ids, last).map(|()| None),
            Message::EventChunkGet { hash } => self.on_get(hash).map(|()| None),
            Message::EventChunkPut {
                hash,
                total_len,
                offset,
                data,
            } => self.on_piece(hash, total_len, offset, data).map(Some),
            Message::NotFound { hash } => self.on_not_found(hash).map(|()| None),
            Message::Done => self.on_done().map(|()| None),
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
}

impl<const PAGE: usize, const REQ: usize> Session<PAGE, REQ> {
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
        if let Some(pull::Failure { hash, reason }) = self.pull.failures.pop_front() {
            return Some(Event::ChunkFailed { hash, reason });
        }
        if let ManifestWalk::Lookups {
            reported: reported @ false,
            ..
        } = &mut self.pull.walk
        {
            *reported = true;
            return Some(Event::LookupNeeded);
        }
        if let Listing::Asked {
            after,
            limit,
            reported: reported @ false,
        } = &mut self.serve.listing
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
        }) = &mut self.serve.serving
        {
            *reported = true;
            return Some(Event::ChunkRequested { hash: *hash });
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
        if let Listing::Ready { last } = self.serve.listing {
            let t = Self::emit(
                &Message::ManifestPage {
                    ids: HashList::new(&self.serve.page_out),
                    last,
                },
                buf,
            )?;
            self.serve.listing = Listing::Idle;
            return Ok(Some(t));
        }
        if let Some(t) = self.next_pull_frame(&peer, buf)? {
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

    fn emit(message: &Message<'_>, buf: &mut [u8]) -> Result<Transmit, InsufficientSize> {
        let len = wire::encode(message, buf)?.len();
        Ok(Transmit { len, piece: None })
    }

    fn check_completion(&mut self) {
        if matches!(self.phase, Phase::Open)
            && self.pull.done_sent
            && self.serve.peer_done
            && self.serve.serving.is_none()
            && matches!(self.serve.listing, Listing::Idle)
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
