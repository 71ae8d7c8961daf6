//! The node's own log: events the application appends ([`Node::append`](crate::Node::append)),
//! with the privacy filter, sealed into chunks by the node's sealing policy
//! ([`NodeConfig::events_per_chunk`](crate::NodeConfig::events_per_chunk),
//! [`seal_bytes`](crate::NodeConfig::seal_bytes),
//! [`seal_delay`](crate::NodeConfig::seal_delay)): the core's [`Chunker`] over a buffer
//! the node owns.

use bytes::Bytes;
use chunk_sync_core::chunk::Push;
use chunk_sync_core::{ChunkError, ChunkEvent, Chunker, Instant, NodeId, SealPolicy};

use crate::signing::{Sealing, sign_all};
use crate::store::VerifiedChunk;

/// The largest chunk a node seals from its own log (and so the largest event it takes).
pub const MAX_OWN_CHUNK: usize = 1 << 20;

/// What [`Node::append`](crate::Node::append) or
/// [`append_batch`](crate::Node::append_batch) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// Events taken into the log, private ones included (their sequence numbers are used;
    /// their content never leaves this node).
    pub taken: usize,
    /// Of those, private events.
    pub private: usize,
    /// Events not taken because their sequence numbers were taken already: sealed into
    /// chunks, which never change, or in the open chunk.
    pub late: usize,
    /// The lowest and highest sequence number of the late events.
    pub late_range: Option<(u64, u64)>,
    /// Events refused, by sequence number, and why: of another origin than this node, or
    /// larger than a chunk can hold. The others were taken.
    pub refused: Vec<(u64, ChunkError)>,
    /// Chunks sealed and stored before the call returned.
    pub sealed: usize,
    /// Chunks sealed that the store refused (full, or failing): kept in memory, and
    /// stored first by the next append, [`flush`](crate::Node::flush) or seal. The events
    /// in them are taken.
    pub unstored: usize,
}

impl Appended {
    fn late(&mut self, seq: u64) {
        self.late += 1;
        self.late_range = Some(match self.late_range {
            None => (seq, seq),
            Some((lo, hi)) => (lo.min(seq), hi.max(seq)),
        });
    }
}

/// The open chunk of the node's own log.
#[derive(Debug)]
pub(crate) struct OwnLog {
    /// Seals unsigned: chunks are signed once sealed (a batch of them on every core).
    chunker: Chunker<Vec<u8>>,
    /// The origin's key pair, which signs its chunks.
    keys: Option<chunk_sync_core::secure::Keypair>,
    /// Chunks sealed that the store refused (full, or failing): stored before anything
    /// new is taken.
    unstored: Vec<VerifiedChunk>,
}

impl OwnLog {
    /// The log of `origin`, whose first unsealed sequence number is `next_seq`; its
    /// chunks are signed by `keys`, the origin's key pair, if given.
    pub(crate) fn new(
        origin: NodeId,
        events_per_chunk: u32,
        next_seq: u64,
        policy: SealPolicy,
        keys: Option<&chunk_sync_core::secure::Keypair>,
    ) -> Result<Self, ChunkError> {
        let chunker = Chunker::new(origin, events_per_chunk, next_seq, vec![0; MAX_OWN_CHUNK])?
            .with_policy(policy);
        if keys.is_some_and(|k| k.node_id() != origin) {
            return Err(ChunkError::NotOriginKey { origin });
        }
        Ok(Self {
            chunker,
            keys: keys.cloned(),
            unstored: Vec::new(),
        })
    }

    /// The key pair that signs the log's chunks, if any.
    pub(crate) const fn keys(&self) -> Option<&chunk_sync_core::secure::Keypair> {
        self.keys.as_ref()
    }

    /// Takes `events` at `now`; returns what was done and the chunks sealed on the way
    /// (their ranges covered or their bytes reached), to be signed ([`sign_all`] with
    /// [`keys`](Self::keys)) and stored.
    pub(crate) fn push<E: ChunkEvent>(
        &mut self,
        events: &[E],
        now: Instant,
    ) -> (Appended, Vec<Sealing>) {
        let mut report = Appended::default();
        let mut sealed = Vec::new();
        for event in events {
            let seq = event.seq();
            let pushed = match self.chunker.push_at(event, now) {
                Ok(Push::SealFirst) => {
                    sealed.extend(self.seal_unsigned());
                    self.chunker.push_at(event, now)
                }
                other => other,
            };
            match pushed {
                Ok(Push::Added) => report.taken += 1,
                Ok(Push::Filtered) => {
                    report.taken += 1;
                    report.private += 1;
                }
                // An empty chunk takes any event that fits a chunk at all.
                Ok(Push::SealFirst) => report.refused.push((seq, ChunkError::SeqExhausted)),
                // Below the chunker's next sequence number: taken already.
                Err(ChunkError::OutOfOrder { .. }) => report.late(seq),
                // Of another origin, or too large for a chunk.
                Err(e) => report.refused.push((seq, e)),
            }
            if self.chunker.seal_due(now) {
                sealed.extend(self.seal_unsigned());
            }
        }
        (report, sealed)
    }

    /// Seals the open chunk, if it holds an event, leaving its signature to [`sign_all`].
    fn seal_unsigned(&mut self) -> Option<Sealing> {
        let signs = self.keys.is_some();
        self.chunker.seal().map(|s| {
            if signs {
                Sealing::unsigned(&s)
            } else {
                Sealing::Done(VerifiedChunk::trusted(
                    s.id,
                    Bytes::copy_from_slice(s.bytes),
                ))
            }
        })
    }

    /// Takes the chunks sealed that the store refused, to be stored again.
    pub(crate) fn take_unstored(&mut self) -> Vec<VerifiedChunk> {
        core::mem::take(&mut self.unstored)
    }

    /// Keeps `chunks`, sealed and refused by the store, to be stored again.
    pub(crate) fn keep_unstored(&mut self, chunks: Vec<VerifiedChunk>) {
        self.unstored.extend(chunks);
    }

    /// When the open chunk is due to be sealed, if it holds an event.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.chunker.seal_deadline()
    }

    /// Seals the open chunk, if it holds an event, and signs it.
    pub(crate) fn seal(&mut self) -> Result<Option<VerifiedChunk>, ChunkError> {
        let Some(sealing) = self.seal_unsigned() else {
            return Ok(None);
        };
        Ok(sign_all(vec![sealing], self.keys.as_ref())?.pop())
    }
}
