//! Per-peer progress with tokio's clock, as the original document's `SyncProgress`, and
//! the report of one session.

use chunk_sync_core::ChunkHash;
use chunk_sync_core::NodeId;
use chunk_sync_core::progress::SyncProgress as CoreProgress;
use chunk_sync_core::session::{FailReason, Stats};
use tokio::time::{Duration, Instant};

/// Progress of a sync with one peer, timed with tokio's clock: the original document's
/// `SyncProgress` on a host (the core's `chunk_sync_core::SyncProgress` counts the same in
/// the core's own time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncProgress {
    /// Chunks to sync.
    pub total_chunks: u64,
    /// Chunks received, verified and stored.
    pub synced_chunks: u64,
    /// Failed transfers (hash mismatch, not found).
    pub failed_chunks: u64,
    /// Bytes of chunk data transferred.
    pub bytes_transferred: u64,
    /// When the sync started.
    pub started: Instant,
}

impl SyncProgress {
    /// A sync of `total_chunks` starting now.
    #[must_use]
    pub fn new(total_chunks: u64) -> Self {
        Self {
            total_chunks,
            synced_chunks: 0,
            failed_chunks: 0,
            bytes_transferred: 0,
            started: Instant::now(),
        }
    }

    pub(crate) fn from_core(p: &CoreProgress, started: Instant) -> Self {
        Self {
            total_chunks: p.total_chunks,
            synced_chunks: p.synced_chunks,
            failed_chunks: p.failed_chunks,
            bytes_transferred: p.bytes_transferred,
            started,
        }
    }

    fn to_core(self) -> CoreProgress {
        CoreProgress {
            total_chunks: self.total_chunks,
            synced_chunks: self.synced_chunks,
            failed_chunks: self.failed_chunks,
            bytes_transferred: self.bytes_transferred,
            started: chunk_sync_core::Instant::ZERO,
        }
    }

    /// Share of the chunks synced, from 0.0 to 100.0 (100.0 when there is nothing to sync).
    #[must_use]
    pub fn progress_percent(&self) -> f64 {
        self.to_core().progress_percent()
    }

    /// Whether every chunk is synced.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.to_core().is_complete()
    }

    /// Time since the sync started.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// What one session with one peer did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SyncReport {
    /// The peer, once the handshake is done.
    pub peer: Option<NodeId>,
    /// This side's pull: chunks found missing, synced, failed, bytes.
    pub progress: SyncProgress,
    /// Bytes and frames each way, headers included.
    pub stats: Stats,
    /// Chunks that could not be fetched from this peer.
    pub failed: Vec<(ChunkHash, FailReason)>,
    /// On a secure link: origins of the peer's chunks whose keys this node does not trust
    /// ([`Permissions::trust_origin`](crate::Permissions::trust_origin)), each once: the
    /// first 256 offered, in ascending order. Their chunks are not fetched, and any that
    /// came anyway are in `failed`.
    pub untrusted: Vec<NodeId>,
    /// In a listing ([`Node::list_from`](crate::Node::list_from)): the hashes of the
    /// peer's chunks, in the order they came.
    pub listed: Vec<ChunkHash>,
}

impl SyncReport {
    /// The report of a session that never started.
    pub(crate) fn empty() -> Self {
        Self {
            peer: None,
            progress: SyncProgress::new(0),
            stats: Stats::default(),
            failed: Vec::new(),
            untrusted: Vec::new(),
            listed: Vec::new(),
        }
    }
}
