//! Writing received chunks: the chunks a session verified are handed to the store in
//! batches (one commit for a transactional store), on a blocking thread when the store's
//! writes wait on a disk, so that the transfer goes on meanwhile.

use std::sync::Arc;

use bytes::Bytes;
use tokio::task::{JoinError, JoinHandle};

use crate::error::StoreError;
use crate::shared::Shared;
use crate::store::{Inserted, NodeStore, VerifiedChunk};

/// A batch, and how writing it went.
pub(crate) type Written = (Vec<VerifiedChunk>, Result<Inserted, StoreError>);

/// The chunks of one session on their way to the store.
#[derive(Debug)]
pub(crate) struct Writes {
    /// Whether writes run on a blocking thread.
    background: bool,
    /// Verified chunks not handed to the store yet.
    queued: Vec<VerifiedChunk>,
    /// The batch being written on a blocking thread.
    writing: Option<JoinHandle<Written>>,
    /// Reassembly buffers the store did not keep, for the next chunks.
    spare: Vec<Vec<u8>>,
}

impl Writes {
    pub(crate) fn new(store: &dyn NodeStore) -> Self {
        Self {
            background: store.writes_block(),
            queued: Vec::new(),
            writing: None,
            spare: Vec::new(),
        }
    }

    /// A buffer for the next chunk to be reassembled in.
    pub(crate) fn spare(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Queues a verified chunk.
    pub(crate) fn queue(&mut self, chunk: VerifiedChunk) {
        self.queued.push(chunk);
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
        if !self.background {
            let result = shared.store.insert_batch(&batch);
            return Some((batch, result));
        }
        let shared = Arc::clone(shared);
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let result = shared.store.insert_batch(&batch);
            (batch, result)
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
        joined
    }

    /// Takes back a chunk's buffer if nothing else holds it.
    pub(crate) fn recycle(&mut self, bytes: Bytes) {
        if let Ok(buf) = bytes.try_into_mut() {
            self.spare.push(Vec::from(buf));
        }
    }
}
