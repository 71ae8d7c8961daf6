//! Events and their privacy: [`Privacy`], the [`ChunkEvent`] trait the chunker needs, and
//! the default event types [`Event`] (borrowed) and `EventBuf` (owned, with `alloc`).
//!
//! # Privacy
//! Only [`Privacy::Public`] and [`Privacy::Shareable`] events ever enter a chunk; a
//! [`Privacy::Private`] event stays on its node. The [chunker](crate::chunk::Chunker) filters
//! them out, and reading a chunk that contains one fails at that event.
//!
//! # Sequence numbers decide chunk boundaries
//! Every event has an origin (the node that wrote it) and a sequence number in the origin's
//! log. A chunk covers a range of the origin's sequence numbers and holds the shareable
//! events in that range; private events inside the range use up sequence numbers but are
//! left out. Because boundaries follow sequence numbers and not positions in the filtered
//! list, appending events or reclassifying a private one never moves a boundary of a chunk
//! that is already sealed, and never changes its bytes or its hash.

use core::fmt;

use serde::{Deserialize, Serialize};

/// The identifier of a node of the grid, and so of the origin of an event log.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// Who may see an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    /// Anyone may see it; it is synced.
    Public,
    /// It may be shared with the grid; it is synced.
    Shareable,
    /// It never leaves the node that wrote it; it is never chunked.
    Private,
}

impl Privacy {
    /// Whether events of this level may leave their node (and so enter a chunk).
    #[must_use]
    pub const fn is_shareable(self) -> bool {
        matches!(self, Self::Public | Self::Shareable)
    }
}

/// What the chunker needs to know of an event.
///
/// The chunk format is defined by this crate, field by field, not by the event type's own
/// serialisation: any type that answers these questions can be chunked, and every node
/// decodes the result as [`Event`].
pub trait ChunkEvent {
    /// The node whose log the event belongs to.
    fn origin(&self) -> NodeId;
    /// The event's position in its origin's log; strictly increasing along the log.
    fn seq(&self) -> u64;
    /// Who may see the event.
    fn privacy(&self) -> Privacy;
    /// When the event happened, in the application's unit (for example microseconds since
    /// the Unix epoch). The core never interprets it.
    fn timestamp(&self) -> u64;
    /// The kind of event, for example `"sensor.reading"`.
    fn kind(&self) -> &str;
    /// The event's body, opaque to chunk-sync.
    fn payload(&self) -> &[u8];
}

/// An event whose text and payload are borrowed: what decoding a chunk yields, without
/// copying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Event<'a> {
    /// The node whose log the event belongs to.
    pub origin: NodeId,
    /// Position in the origin's log.
    pub seq: u64,
    /// When it happened, in the application's unit.
    pub timestamp: u64,
    /// The kind of event.
    pub kind: &'a str,
    /// Who may see it.
    pub privacy: Privacy,
    /// The event's body.
    #[serde(with = "serde_bytes", borrow)]
    pub payload: &'a [u8],
}

impl ChunkEvent for Event<'_> {
    fn origin(&self) -> NodeId {
        self.origin
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn privacy(&self) -> Privacy {
        self.privacy
    }
    fn timestamp(&self) -> u64 {
        self.timestamp
    }
    fn kind(&self) -> &str {
        self.kind
    }
    fn payload(&self) -> &[u8] {
        self.payload
    }
}

impl<E: ChunkEvent + ?Sized> ChunkEvent for &E {
    fn origin(&self) -> NodeId {
        (**self).origin()
    }
    fn seq(&self) -> u64 {
        (**self).seq()
    }
    fn privacy(&self) -> Privacy {
        (**self).privacy()
    }
    fn timestamp(&self) -> u64 {
        (**self).timestamp()
    }
    fn kind(&self) -> &str {
        (**self).kind()
    }
    fn payload(&self) -> &[u8] {
        (**self).payload()
    }
}

#[cfg(feature = "alloc")]
pub use owned::EventBuf;

#[cfg(feature = "alloc")]
mod owned {
    use alloc::string::String;
    use alloc::vec::Vec;

    use serde::{Deserialize, Serialize};

    use super::{ChunkEvent, Event, NodeId, Privacy};

    /// An event that owns its text and payload.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub struct EventBuf {
        /// The node whose log the event belongs to.
        pub origin: NodeId,
        /// Position in the origin's log.
        pub seq: u64,
        /// When it happened, in the application's unit.
        pub timestamp: u64,
        /// The kind of event.
        pub kind: String,
        /// Who may see it.
        pub privacy: Privacy,
        /// The event's body.
        #[serde(with = "serde_bytes")]
        pub payload: Vec<u8>,
    }

    impl EventBuf {
        /// Borrows the event as an [`Event`].
        #[must_use]
        pub fn as_event(&self) -> Event<'_> {
            Event {
                origin: self.origin,
                seq: self.seq,
                timestamp: self.timestamp,
                kind: &self.kind,
                privacy: self.privacy,
                payload: &self.payload,
            }
        }
    }

    impl From<Event<'_>> for EventBuf {
        fn from(e: Event<'_>) -> Self {
            Self {
                origin: e.origin,
                seq: e.seq,
                timestamp: e.timestamp,
                kind: e.kind.into(),
                privacy: e.privacy,
                payload: e.payload.into(),
            }
        }
    }

    impl ChunkEvent for EventBuf {
        fn origin(&self) -> NodeId {
            self.origin
        }
        fn seq(&self) -> u64 {
            self.seq
        }
        fn privacy(&self) -> Privacy {
            self.privacy
        }
        fn timestamp(&self) -> u64 {
            self.timestamp
        }
        fn kind(&self) -> &str {
            &self.kind
        }
        fn payload(&self) -> &[u8] {
            &self.payload
        }
    }
}
