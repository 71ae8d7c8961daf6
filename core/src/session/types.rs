//! The session's public types: its settings, the events it reports, the frames it hands
//! out and the pieces it gives back, and its counters.

use super::{ConfigError, Error, PeerMisbehaved};
use crate::compress::Codec;
use crate::event::NodeId;
use crate::hash::ChunkHash;
use crate::recon::KeyRange;
use crate::throttle::{Throttle, ThrottleConfig};
use crate::time::Duration;
use crate::wire;

/// Default idle timeout: 30 s without a frame either way ends the session.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many idle timeouts in a row a session waits for its store to answer for chunks it
/// verified (restarting its idle time, and telling the peer with `KeepAlive`) before it
/// times out after all: a store that answers nothing for that long is taken as stuck.
pub const MAX_STORE_WAITS: u8 = 10;
/// Default largest chunk accepted from a peer: 1 MiB.
pub const DEFAULT_MAX_CHUNK_LEN: u32 = 1 << 20;
/// Default number of chunk requests in flight.
pub const DEFAULT_WINDOW: u16 = 8;
/// Default number of attempts at a chunk whose bytes did not match its hash.
pub const DEFAULT_MAX_ATTEMPTS: u8 = 2;
/// Default time a peer has to send its `Hello`: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of ranges a session's reconciliation may ask about before it ends with
/// [`ReconError::TooManyRanges`](crate::recon::ReconError::TooManyRanges): a little over a
/// million, some 60 MB of queries and answers, more than two stores of a million chunks
/// with nothing in common need.
pub const DEFAULT_MAX_RANGES: u32 = 1 << 20;
/// Default number of chunks that may fail (not found, wrong bytes, not a valid chunk) in
/// one session before it ends with [`PeerMisbehaved::TooManyFailures`](super::PeerMisbehaved::TooManyFailures).
pub const DEFAULT_MAX_FAILURES: u32 = 1024;

/// A session's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// This node's id.
    pub node_id: NodeId,
    /// The largest frame this node accepts, header included
    /// ([`MIN_FRAME`](wire::MIN_FRAME)`..=`[`MAX_FRAME_LIMIT`](wire::MAX_FRAME_LIMIT)). The adapter's receive buffer must hold one.
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
    /// The most bytes per second this side wants to receive (`0`: no limit), told to the
    /// peer in `Hello`: the peer's session sends no faster than the lower of this and its
    /// own limit, over windows of [`RECEIVE_WINDOW`](super::RECEIVE_WINDOW) when it has
    /// none of its own. It must be fast enough for the idle timeout, as a throttle must
    /// ([`check_rate`](super::check_rate)).
    pub receive_rate: u64,
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
    /// a valid chunk) before it ends with [`PeerMisbehaved::TooManyFailures`](super::PeerMisbehaved::TooManyFailures): the bound
    /// on what the adapter keeps of a peer that lists chunks it cannot deliver.
    pub max_failures: u32,
    /// Ranges this side's reconciliation may ask about in one session before it ends with
    /// [`ReconError::TooManyRanges`](crate::recon::ReconError::TooManyRanges): the bound on
    /// a peer whose summaries keep the walk splitting.
    pub max_ranges: u32,
    /// Whether this side fetches what it lacks; if not, it only serves.
    pub pull: bool,
    /// Whether this side shows what it holds to the peer; if not, it answers every query as
    /// an empty store would, every chunk request with `NotFound` and every range request
    /// with `RangeEnd`, without asking the adapter, so that no chunk of this node is ever
    /// sent.
    pub serve: bool,
    /// Whether the session stays open after the first reconciliation, if the peer agrees
    /// ([`Capabilities::LIVE`](crate::wire::Capabilities::LIVE)): chunks either side
    /// stores later are announced ([`Session::announce`](super::Session::announce)) and
    /// fetched, an idle link is kept alive with a `KeepAlive` frame every third of
    /// `idle_timeout`, a peer heard nothing from for `idle_timeout` has timed out, and the
    /// session ends when one side calls [`Session::close`](super::Session::close) (the
    /// other follows).
    pub live: bool,
    /// When chunks this side serves travel compressed (with the `lz4-compress` or `zstd`
    /// feature, to a peer that announced the codec's capability). A piece is sent
    /// compressed only if that saves a sixteenth of it or more.
    pub compress: Compress,
    /// The codec to compress with; `None` (the default): the best that this build and the
    /// peer both speak, zstd before LZ4 ([`Codec::PREFERENCE`]). A codec the peer does not
    /// take is not used.
    pub codec: Option<Codec>,
    /// Lists the peer's chunks instead of fetching them (default `false`): this side takes
    /// its own store as empty, and asks for the hashes of every range the reconciliation
    /// finds with `GetIds`; they come out in [`Handled::listed`]. The peer must announce
    /// [`Capabilities::LIST`](crate::wire::Capabilities::LIST), and so must this side (a
    /// build with `alloc`): otherwise the handshake fails with
    /// [`Incompatible::MissingCapabilities`](super::Incompatible::MissingCapabilities).
    /// Only with `pull` (without it nothing is listed).
    pub list: bool,
}

/// When a session sends the chunks it serves compressed ([`Config::compress`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Compress {
    /// Never.
    Never,
    /// When the link is rate-limited: this side throttles what it sends, or the peer set
    /// the most it receives. On a fast link compressing would cost more time than the
    /// bytes it saves.
    #[default]
    WhenLimited,
    /// Always.
    Always,
}

impl Config {
    /// Checks the settings as [`Session::new`](super::Session::new) does, without making a
    /// session: a frame limit within the protocol's range, a non-zero window and
    /// attempts, a valid throttle fast enough for the idle timeout
    /// ([`check_rate`](super::check_rate)).
    ///
    /// # Errors
    /// The first setting that is wrong.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(wire::MIN_FRAME..=wire::MAX_FRAME_LIMIT).contains(&self.max_frame) {
            return Err(ConfigError::FrameSize(self.max_frame));
        }
        if self.window == 0 {
            return Err(ConfigError::Zero("window"));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::Zero("max_attempts"));
        }
        Throttle::new(self.throttle).map_err(ConfigError::Throttle)?;
        super::check_rate(self.throttle, self.idle_timeout)?;
        super::check_rate(
            ThrottleConfig::per_second(self.receive_rate),
            self.idle_timeout,
        )
    }

    /// Defaults: 64 KiB frames, 1 MiB chunks, 8 requests in flight, 30 s idle timeout,
    /// 10 s for the peer's `Hello`, no overall deadline, no throttle either way, 2 attempts, 1,024
    /// failed chunks and 2^20 ranges at most, pulling and serving, compressing when the link
    /// is rate-limited.
    #[must_use]
    pub const fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            max_frame: wire::DEFAULT_MAX_FRAME,
            max_chunk_len: DEFAULT_MAX_CHUNK_LEN,
            window: DEFAULT_WINDOW,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            throttle: ThrottleConfig::UNLIMITED,
            receive_rate: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_duration: None,
            max_failures: DEFAULT_MAX_FAILURES,
            max_ranges: DEFAULT_MAX_RANGES,
            pull: true,
            serve: true,
            live: false,
            compress: Compress::WhenLimited,
            codec: None,
            list: false,
        }
    }
}

/// What the adapter must do or know; see [`Session::poll_event`](super::Session::poll_event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event {
    /// The handshake is done.
    Connected {
        /// The peer's node id.
        peer: NodeId,
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

/// A question the session asks about this node's store; see
/// [`Session::question`](super::Session::question). It is asked again until it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Question {
    /// Summarise what the store holds of `range` ([`recon::summarize`](crate::recon::summarize)),
    /// with its runs in the buffer of [`Session::runs_buffer`](super::Session::runs_buffer) if
    /// they fit; answer [`Session::summarized`](super::Session::summarized).
    Summary(KeyRange),
    /// List the store's origins strictly after `after` (from the lowest if `None`),
    /// ascending, into [`Session::origins_buffer`](super::Session::origins_buffer); answer
    /// [`Session::origins_listed`](super::Session::origins_listed).
    Origins {
        /// The cursor.
        after: Option<NodeId>,
    },
    /// The peer asks for this chunk: answer [`Session::serve_chunk`](super::Session::serve_chunk)
    /// with its length, or [`Session::chunk_not_found`](super::Session::chunk_not_found).
    Chunk(ChunkHash),
    /// The peer asks for the chunks of a range: which is the first the store holds in this
    /// one (lowest `first_seq`)? Answer [`Session::serve_in_range`](super::Session::serve_in_range)
    /// with its span and length, or [`Session::chunk_not_found`](super::Session::chunk_not_found)
    /// if it holds none: the range is then ended.
    First(KeyRange),
    /// The peer asks for the hashes of the chunks of a range: list the store's first
    /// chunks in it (lowest `first_seq` first) into
    /// [`Session::list_buffer`](super::Session::list_buffer), as
    /// [`ChunkStore::chunks_in`](crate::store::ChunkStore::chunks_in) does, and answer
    /// [`Session::listed`](super::Session::listed). Asked only with the `alloc` feature.
    List(KeyRange),
}

/// What the store did with a verified chunk; see [`Session::chunk_stored`](super::Session::chunk_stored).
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
    /// On a secure link: the chunk is not signed.
    Unsigned,
    /// On a secure link: the chunk's signature is not its origin's.
    BadSignature,
    /// On a secure link: this node holds no key for the chunk's origin, so cannot check
    /// that the origin signed it.
    UnknownOrigin,
    /// This node takes no chunks of its origin from this peer: the peer's rights (`push`
    /// of the secure link's `Access`) do not cover it.
    NotPermitted,
}

#[cfg(feature = "secure")]
impl From<crate::secure::SealError> for FailReason {
    fn from(e: crate::secure::SealError) -> Self {
        match e {
            crate::secure::SealError::Unsigned => Self::Unsigned,
            crate::secure::SealError::BadSignature => Self::BadSignature,
        }
    }
}

impl core::fmt::Display for FailReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::HashMismatch => "bytes did not match the hash",
            Self::NotFound => "not found",
            Self::Invalid => "not a valid chunk",
            Self::Fork => "overlaps a different chunk of the same origin (a fork)",
            Self::Unsigned => "not signed by its origin",
            Self::BadSignature => "its signature is not its origin's",
            Self::UnknownOrigin => "no key is trusted for its origin",
            Self::NotPermitted => "this peer may not push chunks of its origin",
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
    /// Offset of the piece in the chunk.
    pub offset: u32,
    /// Length of the piece.
    pub len: u32,
}

/// What [`Session::handle_input`](super::Session::handle_input) did with the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "`consumed` bytes must be dropped from the input"]
pub struct Handled<'a> {
    /// Bytes of the input used: drop them before the next call. Zero means the input holds
    /// no whole frame yet.
    pub consumed: usize,
    /// Chunk data that arrived, for the adapter to append to its reassembly buffer.
    pub piece: Option<Piece<'a>>,
    /// In a listing session ([`Config::list`]), hashes of the peer's chunks that arrived:
    /// 32 bytes each ([`wire::ids_of`](crate::wire::ids_of) reads them).
    pub listed: Option<&'a [u8]>,
}

/// A piece of a requested chunk, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Where the piece starts in the chunk.
    pub offset: u32,
    /// The whole chunk's length.
    pub total_len: u32,
    /// How many bytes of the chunk the piece holds.
    pub len: u32,
    /// The bytes, as they came: the chunk's own, or compressed ([`encoding`](Self::encoding)).
    pub data: &'a [u8],
    /// How `data` is encoded.
    pub encoding: Encoding,
    /// Whether this piece completes the chunk: call [`Session::finish_chunk`](super::Session::finish_chunk) with the whole
    /// chunk before feeding more input.
    pub last: bool,
}

/// How the bytes of a [`Piece`] travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Encoding {
    /// As they are in the chunk.
    Raw,
    /// Compressed with the LZ4 block format.
    Lz4,
    /// Compressed with zstd.
    Zstd,
}

impl Piece<'_> {
    /// Writes the piece's bytes of the chunk, uncompressed, into `dst`, which is
    /// [`len`](Self::len) bytes long; a compressed piece that does not decompress to
    /// exactly that many bytes is [`PeerMisbehaved::BadCompression`] (it never writes past
    /// `dst`, whatever it claims).
    pub fn write_to(&self, dst: &mut [u8]) -> Result<(), PeerMisbehaved> {
        match self.encoding {
            Encoding::Raw if dst.len() == self.data.len() => {
                dst.copy_from_slice(self.data);
                Ok(())
            }
            Encoding::Raw => Err(PeerMisbehaved::BadPiece),
            Encoding::Lz4 => Codec::Lz4.decompress_into(self.data, dst),
            Encoding::Zstd => Codec::Zstd.decompress_into(self.data, dst),
        }
    }
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
    /// Reconciliation queries sent: with one outstanding at a time, the round trips this
    /// side's discovery took.
    pub queries_sent: u64,
    /// Reconciliation queries received: the round trips the peer's discovery took.
    pub queries_received: u64,
    /// Bytes of the query and answer frames sent (discovery, either side's).
    pub discovery_sent: u64,
    /// Bytes of the query and answer frames received.
    pub discovery_received: u64,
}
