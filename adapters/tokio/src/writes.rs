//! Writing received chunks: the chunks a session verified are handed to the store in
//! batches (one commit for a transactional store), on a blocking thread when the store's
//! writes wait on a disk, so that the transfer goes on meanwhile. On a secure link the
//! conduit leaves each chunk's signature check to this adapter
//! ([`Conduit::defer_seal_checks`](chunk_sync_core::conduit::Conduit::defer_seal_checks)):
//! a batch's checks run before it is written, on a blocking thread and on every core, and a
//! chunk whose check fails is not written.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};

use chunk_sync_core::secure::SealCheck;
use chunk_sync_core::session::FailReason;

use crate::error::StoreError;
use crate::shared::Shared;
use crate::store::{Inserted, NodeStore, VerifiedChunk};

/// A batch: the chunks handed to the store, and how writing them went; and the chunks whose
/// signature did not hold, which were not.
pub(crate) type Written = (
    Vec<VerifiedChunk>,
    Vec<(VerifiedChunk, FailReason)>,
    Result<Inserted, StoreError>,
);

/// A chunk on its way to the store, and the check its signature still needs, if any.
type Queued = (VerifiedChunk, Option<Box<SealCheck>>);

/// Chunks queued and being written, past which the session reads no more until a batch is
/// written: a bound on memory where the conduit's (bytes of chunks kept) is not, for small
/// chunks whose checks and buffers weigh more than their bytes.
const MAX_UNWRITTEN_CHUNKS: usize = 1 << 16;

/// Bytes of received chunks that all of a node's sessions hold and have not written yet,
/// against the node's bound ([`NodeConfig::max_unwritten`](crate::NodeConfig::max_unwritten)):
/// past it, no session reads more until writes catch up.
#[derive(Debug)]
pub(crate) struct NodeUnwritten {
    bytes: AtomicUsize,
    max: usize,
    /// Bumped whenever the node falls back under its bound, for the sessions waiting.
    freed: watch::Sender<u64>,
}

impl NodeUnwritten {
    /// A count against `max` bytes (at least one: a node that may hold none still takes
    /// a chunk at a time).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            max: max.max(1),
            freed: watch::channel(0).0,
        }
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.bytes.fetch_sub(n, Ordering::AcqRel);
        if before >= self.max && before - n < self.max {
            self.freed.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    fn has_room(&self) -> bool {
        self.bytes.load(Ordering::Acquire) < self.max
    }

    /// Told each time the node falls back under its bound.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }
}

/// Once the node has fallen back under its bound on unwritten bytes since `freed` last
/// looked.
pub(crate) async fn node_freed(freed: &mut watch::Receiver<u64>) {
    if freed.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The chunks of one session on their way to the store.
#[derive(Debug)]
pub(crate) struct Writes {
    /// The node's count of unwritten bytes, which this session's add to.
    node: Arc<NodeUnwritten>,
    /// Bytes of the chunks queued (those being written count until written: [`Held`]).
    queued_bytes: usize,
    /// Whether writes run on a blocking thread.
    background: bool,
    /// Verified chunks not handed to the store yet.
    queued: Vec<Queued>,
    /// The batch being written on a blocking thread.
    writing: Option<JoinHandle<Written>>,
    /// How many chunks it holds.
    writing_chunks: usize,
    /// Reassembly buffers the store did not keep, for the next chunks.
    spare: Vec<Vec<u8>>,
}

impl Writes {
    pub(crate) fn new(store: &dyn NodeStore, node: &Arc<NodeUnwritten>) -> Self {
        Self {
            node: Arc::clone(node),
            queued_bytes: 0,
            background: store.writes_block(),
            queued: Vec::new(),
            writing: None,
            writing_chunks: 0,
            spare: Vec::new(),
        }
    }

    /// A buffer for the next chunk to be reassembled in.
    pub(crate) fn spare(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Queues a verified chunk, with the check its signature still needs, if any.
    pub(crate) fn queue(&mut self, chunk: VerifiedChunk, check: Option<Box<SealCheck>>) {
        let len = chunk.bytes().len();
        self.queued_bytes += len;
        self.node.add(len);
        self.queued.push((chunk, check));
    }

    /// Whether more chunks may be queued: fewer than [`MAX_UNWRITTEN_CHUNKS`] are queued
    /// and being written, and the node holds fewer unwritten bytes than its bound.
    pub(crate) fn has_room(&self) -> bool {
        self.queued.len() + self.writing_chunks < MAX_UNWRITTEN_CHUNKS && self.node.has_room()
    }

    /// Whether the node holds as many unwritten bytes as its bound, all sessions together.
    pub(crate) fn node_full(&self) -> bool {
        !self.node.has_room()
    }

    /// Whether a batch is being written on a blocking thread.
    pub(crate) const fn busy(&self) -> bool {
        self.writing.is_some()
    }

    /// Whether nothing is queued or being written.
    pub(crate) fn is_idle(&self) -> bool {
        self.writing.is_none() && self.queued.is_empty()
    }

    /// Hands the queued chunks to the store: on a blocking thread (and returns `None`), or
    /// here, returning the written batch. Does nothing while a batch is being written.
    pub(crate) fn start(&mut self, shared: &Arc<Shared>) -> Option<Written> {
        if self.queued.is_empty() || self.writing.is_some() {
            return None;
        }
        let batch = std::mem::take(&mut self.queued);
        let bytes = std::mem::take(&mut self.queued_bytes);
        let checks = batch.iter().any(|(_, check)| check.is_some());
        let write = |batch: Vec<Queued>, shared: &Shared| {
            let (batch, refused) = checked(batch);
            let result = shared.store.insert_batch(&batch);
            (batch, refused, result)
        };
        if !self.background && !checks {
            let written = write(batch, shared);
            self.node.release(bytes);
            return Some(written);
        }
        let shared = Arc::clone(shared);
        self.writing_chunks = batch.len();
        // The bytes count against the node until the blocking thread has written them,
        // even if this session is dropped meanwhile (the thread goes on).
        let held = Held {
            node: Arc::clone(&self.node),
            bytes,
        };
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let _held = held;
            write(batch, &shared)
        }));
        None
    }

    /// The batch being written, once written.
    pub(crate) async fn join(&mut self) -> Result<Written, JoinError> {
        let joined = match self.writing.as_mut() {
            Some(write) => write.await,
            None => std::future::pending().await,
        };
        self.writing = None;
        self.writing_chunks = 0;
        joined
    }

    /// Takes back a chunk's buffer if nothing else holds it.
    pub(crate) fn recycle(&mut self, bytes: Bytes) {
        if let Ok(buf) = bytes.try_into_mut() {
            self.spare.push(Vec::from(buf));
        }
    }
}

impl Drop for Writes {
    /// What the session still held unwritten no longer counts against the node (a batch
    /// being written on a blocking thread counts until it is written).
    fn drop(&mut self) {
        self.node.release(self.queued_bytes);
    }
}

/// Bytes of a batch being written on a blocking thread, counted against the node until
/// the thread is done with them.
struct Held {
    node: Arc<NodeUnwritten>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.node.release(self.bytes);
    }
}

/// `batch` with each signature check run ([`check_seals`](crate::check_seals): in batches,
/// on the cores free): the chunks that passed, in order, and those that did not, with why.
fn checked(batch: Vec<Queued>) -> (Vec<VerifiedChunk>, Vec<(VerifiedChunk, FailReason)>) {
    let (chunks, checks): (Vec<VerifiedChunk>, Vec<Option<Box<SealCheck>>>) =
        batch.into_iter().unzip();
    let checked: Vec<bool> = checks.iter().map(Option::is_some).collect();
    let seals = checks.into_iter().flatten().map(|check| *check).collect();
    // One verdict for each check, in order.
    let mut verdicts = crate::signing::check_seals(seals).into_iter();
    let mut passed = Vec::with_capacity(chunks.len());
    let mut refused = Vec::new();
    for (chunk, checked) in chunks.into_iter().zip(checked) {
        match checked.then(|| verdicts.next().unwrap_or(Err(FailReason::BadSignature))) {
            Some(Err(reason)) => refused.push((chunk, reason)),
            Some(Ok(())) | None => passed.push(chunk),
        }
    }
    (passed, refused)
}

#[cfg(test)]
mod tests {
    use chunk_sync_core::ChunkHash;
    use chunk_sync_core::throttle::Throttle;

    use super::*;
    use crate::{MemStore, NodeConfig};

    fn chunk(n: u8, len: usize) -> VerifiedChunk {
        let bytes = vec![n; len];
        VerifiedChunk::new(ChunkHash::of(&bytes), bytes).unwrap()
    }

    /// Two sessions' unwritten chunks count against the node's bound together: past it
    /// neither takes more, a batch written lifts it (and says so), and a session that
    /// ends gives back what it held.
    #[test]
    fn sessions_share_the_node_s_bound_on_unwritten_bytes() {
        let config = NodeConfig {
            max_unwritten: 100,
            ..NodeConfig::new(chunk_sync_core::NodeId(1))
        };
        let throttle = Throttle::new(config.throttle.to_core()).unwrap();
        let shared = Arc::new(Shared::new(config, Box::new(MemStore::new()), throttle));
        let mut freed = shared.unwritten.subscribe();
        let (mut a, mut b) = (
            Writes::new(shared.store.as_ref(), &shared.unwritten),
            Writes::new(shared.store.as_ref(), &shared.unwritten),
        );
        a.queue(chunk(1, 60), None);
        assert!(a.has_room() && b.has_room());
        b.queue(chunk(2, 50), None);
        assert!(!a.has_room() && !b.has_room() && a.node_full());
        assert!(!freed.has_changed().unwrap());
        // A store that does not block writes at once.
        let (written, refused, result) = b.start(&shared).expect("written here");
        assert_eq!((written.len(), refused.len()), (1, 0));
        assert!(result.is_ok());
        assert!(a.has_room() && !a.node_full());
        assert!(
            freed.has_changed().unwrap(),
            "the sessions waiting are told"
        );
        freed.mark_unchanged();
        b.queue(chunk(3, 50), None);
        assert!(a.node_full());
        drop(b);
        assert!(!a.node_full(), "an ended session gives back what it held");
        assert!(freed.has_changed().unwrap());
        drop(a);
        assert_eq!(shared.unwritten.bytes.load(Ordering::Acquire), 0);
    }
}
