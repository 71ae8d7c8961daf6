//! Writing received chunks: the chunks a session verified are handed to the store in
//! batches (one commit for a transactional store), on a blocking thread when the store's
//! writes wait on a disk, so that the transfer goes on meanwhile. On a secure link the
//! conduit leaves each chunk's signature check to this adapter
//! ([`Conduit::defer_seal_checks`](chunk_sync_core::conduit::Conduit::defer_seal_checks)):
//! a batch's checks run before it is written, on a blocking thread and on every core, and a
//! chunk whose check fails is not written.

use std::sync::Arc;

use bytes::Bytes;
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

/// The chunks of one session on their way to the store.
#[derive(Debug)]
pub(crate) struct Writes {
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
    pub(crate) fn new(store: &dyn NodeStore) -> Self {
        Self {
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
        self.queued.push((chunk, check));
    }

    /// Whether more chunks may be queued: fewer than [`MAX_UNWRITTEN_CHUNKS`] are queued
    /// and being written.
    pub(crate) fn has_room(&self) -> bool {
        self.queued.len() + self.writing_chunks < MAX_UNWRITTEN_CHUNKS
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
        let checks = batch.iter().any(|(_, check)| check.is_some());
        let write = |batch: Vec<Queued>, shared: &Shared| {
            let (batch, refused) = checked(batch);
            let result = shared.store.insert_batch(&batch);
            (batch, refused, result)
        };
        if !self.background && !checks {
            return Some(write(batch, shared));
        }
        let shared = Arc::clone(shared);
        self.writing_chunks = batch.len();
        self.writing = Some(tokio::task::spawn_blocking(move || write(batch, &shared)));
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

/// `batch` with each signature check run (in batches, [`SealCheck::check_all`], on the
/// cores free, up to 16, when there are many): the chunks that passed, in order, and those that
/// did not, with why.
fn checked(batch: Vec<Queued>) -> (Vec<VerifiedChunk>, Vec<(VerifiedChunk, FailReason)>) {
    let verdicts = crate::signing::in_parts(batch, |(_, check)| check.is_some(), check_part);
    let mut passed = Vec::with_capacity(verdicts.len());
    let mut refused = Vec::new();
    for (chunk, verdict) in verdicts {
        match verdict {
            Ok(()) => passed.push(chunk),
            Err(reason) => refused.push((chunk, reason)),
        }
    }
    (passed, refused)
}

/// Each chunk of `part` with its check's verdict (`Ok` for a chunk without a check).
fn check_part(part: Vec<Queued>) -> Vec<(VerifiedChunk, Result<(), FailReason>)> {
    let checks: Vec<&SealCheck> = part
        .iter()
        .filter_map(|(_, check)| check.as_deref())
        .collect();
    let mut verdicts = SealCheck::check_all(&checks).into_iter();
    part.into_iter()
        .map(|(chunk, check)| {
            let verdict = match check {
                // One verdict for each check, in order.
                Some(_) => verdicts.next().unwrap_or(Err(FailReason::BadSignature)),
                None => Ok(()),
            };
            (chunk, verdict)
        })
        .collect()
}
