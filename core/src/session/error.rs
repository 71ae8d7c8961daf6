//! The session's errors, sorted by whose fault they are.

use core::fmt;

use crate::error::DecodeError;
use crate::hash::HashMismatch;
use crate::recon::ReconError;
use crate::wire::{ErrorCode, FrameError};

/// Why a session ended. Fatal errors stick: once a session has failed, every `handle_*`
/// call returns the same error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The peer sent bytes that are not a valid frame.
    Frame(FrameError),
    /// The peer sent a valid message that breaks the protocol.
    Peer(PeerMisbehaved),
    /// The peer cannot sync with this node.
    Incompatible(Incompatible),
    /// The peer ended the session with this error code.
    Remote(ErrorCode),
    /// The peer sent nothing for longer than the idle timeout.
    TimedOut,
    /// The peer sent no `Hello` within the handshake timeout.
    HandshakeTimedOut,
    /// The session lasted longer than its overall limit (`Config::max_duration`).
    DeadlinePassed,
    /// This side ended the session ([`Session::abort`](super::Session::abort)).
    Aborted,
    /// The peer took no bytes for longer than the idle timeout while this side had some to
    /// send ([`Conduit`](crate::conduit::Conduit) only); it is not told.
    Stalled,
    /// The peer closed the transport before the session was complete
    /// ([`Conduit`](crate::conduit::Conduit) only).
    Closed,
    /// A call that does not fit the session's state. This one is not fatal: nothing
    /// changed.
    ApiMisuse(ApiMisuse),
    /// The secure link failed, or refused the peer (`Conduit::new_secure`, with the
    /// `secure` feature).
    Link(LinkError),
}

/// Why a secure link ended a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LinkError {
    /// The Noise handshake failed: a malformed or modified message, a message out of
    /// turn, or a peer speaking another protocol.
    Handshake,
    /// A record that does not open: modified, replayed, reordered, forged, or shorter
    /// than its tag.
    BadRecord,
    /// A record longer than this side accepts.
    RecordSize {
        /// The record's length, prefix included.
        len: u32,
        /// The most this side accepts.
        max: u32,
    },
    /// A record that does not hold whole frames.
    SplitFrame,
    /// The peer's `Hello` names a node id its key does not give.
    NodeIdNotKey {
        /// The id in `Hello`.
        claimed: crate::event::NodeId,
        /// The id of the key the handshake proved.
        key: crate::event::NodeId,
    },
    /// This node does not let the peer's key sync with it; on the peer's side, the
    /// session ends with [`Error::Remote`] and [`ErrorCode::REFUSED`].
    Refused,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handshake => f.write_str("the secure handshake failed"),
            Self::BadRecord => {
                f.write_str("a record failed authentication (modified, replayed or forged)")
            }
            Self::RecordSize { len, max } => {
                write!(f, "a record of {len} bytes, past the {max} accepted")
            }
            Self::SplitFrame => f.write_str("a record that does not hold whole frames"),
            Self::NodeIdNotKey { claimed, key } => write!(
                f,
                "the peer claims node id {:016x} but its key gives {:016x}",
                claimed.0, key.0
            ),
            Self::Refused => f.write_str("this node does not let the peer's key sync"),
        }
    }
}

impl Error {
    /// The code and text this side sends to the peer when it fails with this error, if it
    /// sends one.
    #[must_use]
    pub(crate) const fn wire_reason(&self) -> Option<(ErrorCode, &'static str)> {
        Some(match self {
            Self::Frame(FrameError::TooLarge { .. }) => {
                (ErrorCode::FRAME_TOO_LARGE, "frame too large")
            }
            Self::Frame(_) => (ErrorCode::MALFORMED, "malformed frame"),
            Self::Peer(PeerMisbehaved::TooManyRequests) => {
                (ErrorCode::LIMIT_EXCEEDED, "more requests than announced")
            }
            Self::Peer(PeerMisbehaved::TooManyFailures { .. }) => {
                (ErrorCode::LIMIT_EXCEEDED, "too many chunks failed")
            }
            Self::Peer(PeerMisbehaved::Recon(ReconError::TooManyRanges { .. })) => {
                (ErrorCode::LIMIT_EXCEEDED, "too many ranges")
            }
            Self::Peer(_) => (ErrorCode::UNEXPECTED, "protocol violation"),
            Self::Incompatible(Incompatible::ProtocolVersion { .. }) => (
                ErrorCode::PROTOCOL_VERSION,
                "protocol version not supported",
            ),
            Self::Incompatible(_) => (ErrorCode::UNEXPECTED, "incompatible limits or capabilities"),
            Self::TimedOut => (ErrorCode::TIMED_OUT, "idle timeout"),
            Self::HandshakeTimedOut => (ErrorCode::TIMED_OUT, "no Hello in time"),
            Self::DeadlinePassed => (ErrorCode::TIMED_OUT, "session deadline passed"),
            Self::Aborted | Self::ApiMisuse(_) => (ErrorCode::INTERNAL, "aborted"),
            Self::Link(LinkError::Refused) => (ErrorCode::REFUSED, "not authorized"),
            Self::Link(LinkError::NodeIdNotKey { .. }) => {
                (ErrorCode::UNEXPECTED, "node id does not match key")
            }
            // The link itself failed: nothing can reach the peer through it.
            Self::Remote(_) | Self::Stalled | Self::Closed | Self::Link(_) => return None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "peer sent a bad frame: {e}"),
            Self::Peer(e) => write!(f, "peer broke the protocol: {e}"),
            Self::Incompatible(e) => write!(f, "peer is incompatible: {e}"),
            Self::Remote(ErrorCode::REFUSED) => f.write_str(
                "peer refused this node's key (error code 8): its operator must allow the key",
            ),
            Self::Remote(code) => write!(f, "peer ended the session with error code {}", code.0),
            Self::TimedOut => f.write_str("peer was silent for longer than the idle timeout"),
            Self::HandshakeTimedOut => {
                f.write_str("peer sent no Hello within the handshake timeout")
            }
            Self::DeadlinePassed => f.write_str("session lasted longer than its deadline"),
            Self::Aborted => f.write_str("session aborted by this node"),
            Self::Stalled => f.write_str("peer took no bytes for longer than the idle timeout"),
            Self::Closed => f.write_str("peer closed the connection before the sync was complete"),
            Self::ApiMisuse(e) => write!(f, "session used out of order: {e}"),
            Self::Link(e) => write!(f, "secure link: {e}"),
        }
    }
}

impl core::error::Error for Error {}

/// A valid message that the protocol does not allow at this point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// A message that is not allowed in the session's current state (named here).
    Unexpected(&'static str),
    /// A reconciliation query or answer that is malformed, impossible, unasked for, or
    /// past the session's bound on ranges.
    Recon(ReconError),
    /// A chunk sent for a range that is not in it (another origin, or a `first_seq`
    /// outside the range or before the chunk sent before it).
    OutsideRange,
    /// More chunk requests outstanding than this node announced.
    TooManyRequests,
    /// Chunk data for a chunk that was not the next one requested.
    UnrequestedChunk,
    /// A chunk longer than this node accepts.
    ChunkTooLarge {
        /// The announced length.
        len: u32,
        /// The largest chunk accepted.
        max: u32,
    },
    /// A piece of a chunk at the wrong offset, past the end, or of a changed total length.
    BadPiece,
    /// A compressed piece that does not decompress to exactly the bytes it announces
    /// (malformed, or inflating past them).
    BadCompression,
    /// More chunks failed (not found, wrong bytes, invalid) than the session allows.
    TooManyFailures {
        /// The limit (`Config::max_failures`).
        max: u32,
    },
}

impl fmt::Display for PeerMisbehaved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unexpected(what) => write!(f, "unexpected message: {what}"),
            Self::Recon(e) => write!(f, "reconciliation failed: {e}"),
            Self::OutsideRange => f.write_str("a chunk outside the range it was sent for"),
            Self::TooManyRequests => f.write_str("more chunk requests than announced"),
            Self::UnrequestedChunk => f.write_str("chunk data that was not requested next"),
            Self::ChunkTooLarge { len, max } => {
                write!(f, "chunk of {len} bytes exceeds the limit of {max}")
            }
            Self::BadPiece => f.write_str("chunk piece at a wrong offset or past its end"),
            Self::BadCompression => {
                f.write_str("a compressed piece that does not decompress to its length")
            }
            Self::TooManyFailures { max } => write!(
                f,
                "more than {max} chunks it listed were not found, wrong or invalid"
            ),
        }
    }
}

impl core::error::Error for PeerMisbehaved {}

/// The two sides cannot sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Incompatible {
    /// The protocol versions differ.
    ProtocolVersion {
        /// This node's version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer announced a frame limit below the protocol's minimum.
    FrameTooSmall {
        /// The peer's limit.
        theirs: u32,
    },
    /// The peer announced a frame limit above the protocol's maximum.
    FrameTooLarge {
        /// The peer's limit.
        theirs: u32,
    },
    /// The peer announced that it accepts no chunk request, or answers no range, at all.
    NoRequests,
    /// The peer lacks a capability this node needs.
    MissingCapabilities,
    /// The peer asked to receive more slowly than this node can send and still be heard
    /// from within its idle timeout.
    RateTooLow {
        /// The rate the peer asked for, in bytes per second.
        theirs: u64,
        /// The lowest rate this node accepts.
        min: u64,
    },
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProtocolVersion { ours, theirs } => {
                write!(f, "protocol version {theirs}, this node speaks {ours}")
            }
            Self::FrameTooSmall { theirs } => {
                write!(f, "frame limit of {theirs} bytes is too small")
            }
            Self::FrameTooLarge { theirs } => {
                write!(
                    f,
                    "frame limit of {theirs} bytes is above the protocol's 16 MiB"
                )
            }
            Self::NoRequests => f.write_str("peer accepts no request or no range"),
            Self::MissingCapabilities => f.write_str("peer lacks a required capability"),
            Self::RateTooLow { theirs, min } => write!(
                f,
                "peer asked to receive {theirs} bytes/s, below the {min} bytes/s this node needs to be heard within its idle timeout"
            ),
        }
    }
}

impl core::error::Error for Incompatible {}

/// A call to the session that does not fit its state: a bug in the caller. The call
/// changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ApiMisuse {
    /// An answer to a [`Question`](super::Question) that was not asked, or not of that
    /// kind.
    NotAsked,
    /// Origins listed out of order, after the cursor asked for, or more than asked for;
    /// or runs that do not fit the summary's buffer.
    BadListing,
    /// A chunk served for a range that is not in the range, or before the last one served.
    OutsideRange,
    /// A chunk of length zero or longer than `u32::MAX`.
    BadChunkLength,
    /// `finish_chunk` with no complete chunk waiting, or with bytes of the wrong length.
    NoChunkToFinish,
    /// `handle_input` while a complete chunk waits for `finish_chunk`.
    FinishChunkFirst,
    /// `handle_input` while a [`Question`](super::Question) waits for its answer.
    AnswerFirst,
}

impl fmt::Display for ApiMisuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAsked => "that answer does not match the question asked",
            Self::BadListing => "origins out of order or too many, or runs past the buffer",
            Self::OutsideRange => "that chunk is not the next one of the range asked for",
            Self::BadChunkLength => "chunk length must be between 1 and u32::MAX",
            Self::NoChunkToFinish => "no complete chunk of that length is waiting",
            Self::FinishChunkFirst => "call finish_chunk before feeding more input",
            Self::AnswerFirst => "answer the question asked before feeding more input",
        })
    }
}

impl core::error::Error for ApiMisuse {}

/// Why [`Session::finish_chunk`](super::Session::finish_chunk) refused a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FinishError {
    /// The bytes do not match the hash: they were not stored and the chunk is asked for
    /// again or reported as failed.
    HashMismatch(HashMismatch),
    /// The bytes match the hash but are not a valid chunk: not stored, reported as
    /// failed.
    Invalid(DecodeError),
    /// A valid chunk sent for a range it is not in: not stored; the session failed
    /// ([`PeerMisbehaved::OutsideRange`]).
    OutsideRange,
    /// A valid chunk of an origin this side takes none of from the peer: not stored,
    /// reported as failed ([`FailReason::NotPermitted`](super::FailReason::NotPermitted)).
    NotPermitted,
    /// The call did not fit the session's state.
    ApiMisuse(ApiMisuse),
}

impl fmt::Display for FinishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HashMismatch(e) => fmt::Display::fmt(e, f),
            Self::Invalid(e) => write!(f, "not a valid chunk: {e}"),
            Self::OutsideRange => f.write_str("a chunk outside the range it was sent for"),
            Self::NotPermitted => f.write_str("a chunk of an origin not taken from this peer"),
            Self::ApiMisuse(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl core::error::Error for FinishError {}

/// Why [`Session::new`](super::Session::new) refused a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_frame` is outside `MIN_FRAME..=MAX_FRAME_LIMIT`.
    FrameSize(u32),
    /// `window` or `max_attempts` is zero.
    Zero(&'static str),
    /// The throttle configuration is invalid.
    Throttle(crate::throttle::ThrottleConfigError),
    /// The throttle is too slow for the idle timeout: a peer would give up before a frame
    /// got through ([`check_rate`](super::check_rate)).
    RateTooLow {
        /// The configured rate, in bytes per second.
        rate: u64,
        /// The lowest rate accepted.
        min: u64,
    },
    /// A buffer lent to a [`Conduit`](crate::conduit::Conduit) cannot hold what the
    /// configuration needs.
    BufferTooSmall {
        /// Which buffer: `"receive"`, `"transmit"` or `"reassembly"`.
        buffer: &'static str,
        /// Bytes it can hold.
        len: usize,
        /// Bytes it must hold.
        needed: usize,
    },
    /// A secure conduit whose `node_id` is not the one its key gives, or whose
    /// `max_frame` is past `secure::MAX_RECORD` (with the `secure` feature).
    SecureLink(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameSize(n) => write!(f, "max_frame {n} is outside 256..=16777216"),
            Self::Zero(what) => write!(f, "{what} must be at least 1"),
            Self::Throttle(e) => fmt::Display::fmt(e, f),
            Self::BufferTooSmall {
                buffer,
                len,
                needed,
            } => write!(f, "{buffer} buffer of {len} bytes, needs {needed}"),
            Self::SecureLink(what) => f.write_str(what),
            Self::RateTooLow { rate, min } => write!(
                f,
                "a rate of {rate} B/s is too slow for the idle timeout: peers would give up before a frame got through (at least {min} B/s, or 0 for unlimited)"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}
