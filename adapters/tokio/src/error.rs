//! The adapter's error: transport, protocol or store.

use std::fmt;
use std::io;

use chunk_sync_core::session::{self, ConfigError};
use chunk_sync_core::{DecodeError, HashMismatch, NodeId};

/// A store failure, boxed so that any store's error fits.
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// What can end a sync or refuse a chunk.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    Io(io::Error),
    /// The session failed: the peer misbehaved, is incompatible, timed out or ended it.
    Protocol(session::Error),
    /// The peer closed the connection before the session was complete.
    Closed,
    /// The peer took no bytes for the idle timeout while this node had some to send; the
    /// connection was dropped.
    Stalled,
    /// The store failed; the session was aborted and nothing stored was changed.
    Store(StoreError),
    /// Chunk bytes did not match their hash; nothing was stored.
    HashMismatch(HashMismatch),
    /// Chunk bytes matched their hash but are not a valid chunk; nothing was stored.
    InvalidChunk(DecodeError),
    /// No address is known for this peer.
    UnknownPeer(NodeId),
    /// No sync with this peer is tracked ([`EventChunkSyncManager::get_sync_progress`](crate::EventChunkSyncManager::get_sync_progress)).
    NotTracked(NodeId),
    /// The configuration is invalid.
    Config(ConfigError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "transport error: {e}"),
            Self::Protocol(e) => write!(f, "sync failed: {e}"),
            Self::Closed => f.write_str("peer closed the connection before the sync was complete"),
            Self::Stalled => f.write_str("peer took no bytes for longer than the idle timeout"),
            Self::Store(e) => write!(f, "store error: {e}"),
            Self::HashMismatch(e) => write!(f, "{e}"),
            Self::InvalidChunk(e) => write!(f, "not a valid chunk: {e}"),
            Self::UnknownPeer(p) => write!(f, "no address is known for {p}"),
            Self::NotTracked(p) => write!(f, "no sync with {p} is tracked"),
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Protocol(e) => Some(e),
            Self::Store(e) => Some(e.as_ref()),
            Self::HashMismatch(e) => Some(e),
            Self::InvalidChunk(e) => Some(e),
            Self::Config(e) => Some(e),
            Self::Closed | Self::Stalled | Self::UnknownPeer(_) | Self::NotTracked(_) => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<Error> for io::Error {
    /// Transport errors stay themselves; everything else is `InvalidData`.
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            other => Self::new(io::ErrorKind::InvalidData, other),
        }
    }
}
