//! The runner's error: transport, protocol or store.

use core::fmt;

use chunk_sync_core::session;

/// Why a [`Runner`](crate::Runner) stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<T, S> {
    /// The transport failed.
    Transport(T),
    /// The session failed: the peer misbehaved, is incompatible, timed out or ended it.
    Protocol(session::Error),
    /// The store failed; the session was aborted and nothing stored was changed.
    Store(S),
    /// The peer closed the transport before the session was complete.
    Closed,
}

impl<T: fmt::Debug, S: fmt::Display> fmt::Display for Error<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "transport error: {e:?}"),
            Self::Protocol(e) => write!(f, "sync failed: {e}"),
            Self::Store(e) => write!(f, "store error: {e}"),
            Self::Closed => f.write_str("peer closed the transport before the sync was complete"),
        }
    }
}

impl<T: fmt::Debug, S: fmt::Debug + fmt::Display> core::error::Error for Error<T, S> {}
