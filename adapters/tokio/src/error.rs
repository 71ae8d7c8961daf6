//! The adapter's error: transport, protocol or store.

use std::fmt;
use std::io;

use chunk_sync_core::session::{self, ConfigError};
use chunk_sync_core::{DecodeError, HashMismatch, NodeId};

/// A store failure, boxed so that any store's error fits. It converts from any
/// `Error + Send + Sync` with `?`, and into `Box<dyn Error>` (with or without
/// `Send + Sync`) with `?`, so that application code returning either can use `?` on a
/// store's calls. (It does not implement `Error` itself, which would conflict with the
/// first conversion; [`get_ref`](Self::get_ref) gives the error inside.)
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// A store error with this message.
    #[must_use]
    pub fn msg(message: impl Into<String>) -> Self {
        Self(message.into().into())
    }

    /// The error inside.
    #[must_use]
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The error inside, if it is a `T`.
    #[must_use]
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }

    /// The error inside as a `T`, or this error back if it is not one.
    ///
    /// # Errors
    /// `self` if the error inside is not a `T`.
    pub fn downcast<T: std::error::Error + 'static>(self) -> Result<Box<T>, Self> {
        self.0.downcast().map_err(Self)
    }

    /// The boxed error inside.
    #[must_use]
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync> {
        self.0
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self(Box::new(e))
    }
}

impl From<StoreError> for Box<dyn std::error::Error + Send + Sync> {
    fn from(e: StoreError) -> Self {
        e.0
    }
}

impl From<StoreError> for Box<dyn std::error::Error> {
    fn from(e: StoreError) -> Self {
        e.0
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

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
            Self::Store(e) => Some(e.get_ref()),
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

#[cfg(test)]
mod store_error_tests {
    use super::*;

    fn failing() -> Result<(), StoreError> {
        Err(io::Error::other("disk on fire"))?;
        Ok(())
    }

    fn application() -> Result<(), Box<dyn std::error::Error>> {
        failing()?;
        Ok(())
    }

    fn threaded_application() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        failing()?;
        Ok(())
    }

    #[test]
    fn a_store_error_goes_into_any_boxed_error_with_question_mark_and_keeps_its_cause() {
        assert_eq!(application().unwrap_err().to_string(), "disk on fire");
        assert_eq!(
            threaded_application().unwrap_err().to_string(),
            "disk on fire"
        );
        let e = failing().unwrap_err();
        assert!(e.downcast_ref::<io::Error>().is_some());
        let e = e.downcast::<MemoryLimitless>().unwrap_err();
        assert_eq!(e.get_ref().to_string(), "disk on fire");
        assert_eq!(StoreError::msg("full").to_string(), "full");
        let wrapped = Error::Store(e);
        assert_eq!(
            std::error::Error::source(&wrapped).map(ToString::to_string),
            Some("disk on fire".to_owned())
        );
    }

    /// An error type the store never raised.
    #[derive(Debug)]
    struct MemoryLimitless;

    impl fmt::Display for MemoryLimitless {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("never")
        }
    }

    impl std::error::Error for MemoryLimitless {}
}
