//! What happens on a node, for the application to observe: [`NodeEvent`]s on a broadcast
//! channel ([`Node::events`](crate::Node::events)), beside the `tracing` spans and lines.
//! Live sessions read the same channel to announce chunks stored through other sessions.

use std::net::SocketAddr;

use chunk_sync_core::{ChunkHash, NodeId, Span};
use tokio::sync::broadcast;

/// Events the channel holds for a receiver that falls behind; past them it gets
/// `RecvError::Lagged` and the count of those it missed.
pub const EVENT_CAPACITY: usize = 4096;

/// Something that happened on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A chunk was stored: sealed from this node's own log (`from: None`), or received,
    /// verified and written, from the peer `from`.
    ChunkStored {
        /// The chunk.
        id: ChunkHash,
        /// The origin and sequence numbers it covers.
        span: Span,
        /// The peer it came from.
        from: Option<NodeId>,
    },
    /// A session's handshake completed.
    PeerConnected {
        /// The peer's node id.
        peer: NodeId,
        /// Its address, for a TCP session.
        addr: Option<SocketAddr>,
    },
    /// A session ended.
    PeerDisconnected {
        /// The peer's node id, if its `Hello` came.
        peer: Option<NodeId>,
        /// Its address, for a TCP session.
        addr: Option<SocketAddr>,
        /// Why, if the session did not end cleanly.
        error: Option<String>,
    },
    /// A connection to a peer given to [`Node::add_peer`](crate::Node::add_peer) could not
    /// be made, or its live session ended with an error (`error` says which); the node
    /// tries again after `retry_in`.
    ConnectFailed {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: String,
        /// How long until the next attempt.
        retry_in: std::time::Duration,
    },
}

/// The sending side, shared by the node's sessions.
#[derive(Debug)]
pub(crate) struct Events(broadcast::Sender<NodeEvent>);

impl Events {
    pub(crate) fn new() -> Self {
        Self(broadcast::channel(EVENT_CAPACITY).0)
    }

    /// Sends `event` to every receiver (none may be listening).
    pub(crate) fn send(&self, event: NodeEvent) {
        let _ = self.0.send(event);
    }

    /// A new receiver, of the events sent from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.0.subscribe()
    }
}
