//! Sync progress: [`SyncProgress`] for one peer and a fixed-capacity [`ProgressTable`] of
//! them, with the original document's fields and methods.
//!
//! These are plain counters with no behaviour of their own: the session updates them and
//! adapters read them.

use core::fmt;

use heapless::Vec;

use crate::error::CapacityError;
use crate::event::NodeId;
use crate::time::{Duration, Instant};

/// Progress of one sync with one peer, timed in the core's [`Instant`] (no clock): what a
/// session and the embassy runner report. Host code gets `chunk_sync_tokio::SyncProgress`,
/// the same counters timed with tokio's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SyncProgress {
    /// Chunks to sync.
    pub total_chunks: u64,
    /// Chunks received, verified and stored.
    pub synced_chunks: u64,
    /// Failed transfers (hash mismatch, not found, timeout); a failed chunk may be
    /// requested again and then counted as synced as well.
    pub failed_chunks: u64,
    /// Bytes of chunk data transferred.
    pub bytes_transferred: u64,
    /// When the sync started.
    pub started: Instant,
}

impl SyncProgress {
    /// A sync of `total_chunks` chunks starting at `now`.
    #[must_use]
    pub const fn new(total_chunks: u64, now: Instant) -> Self {
        Self {
            total_chunks,
            synced_chunks: 0,
            failed_chunks: 0,
            bytes_transferred: 0,
            started: now,
        }
    }

    /// Share of the chunks synced, from `0.0` to `100.0`; `100.0` when there is nothing to
    /// sync.
    #[must_use]
    pub fn progress_percent(&self) -> f64 {
        f64::from(self.progress_permille()) / 10.0
    }

    /// Share of the chunks synced, in tenths of a percent (`0..=1000`), in integer maths.
    #[must_use]
    pub const fn progress_permille(&self) -> u32 {
        if self.total_chunks == 0 {
            return 1000;
        }
        let done = if self.synced_chunks < self.total_chunks {
            self.synced_chunks
        } else {
            self.total_chunks
        };
        // `done <= total`, so the quotient is at most 1000.
        ((done as u128 * 1000) / self.total_chunks as u128) as u32
    }

    /// Time since the sync started (zero if `now` is earlier).
    #[must_use]
    pub const fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Whether every chunk is synced.
    #[must_use]
    pub const fn is_complete(&self) -> bool {
        self.synced_chunks >= self.total_chunks
    }

    /// Chunks still to sync.
    #[must_use]
    pub const fn remaining_chunks(&self) -> u64 {
        self.total_chunks.saturating_sub(self.synced_chunks)
    }

    /// Average transfer rate since the start, in bytes per second (`0` before any time
    /// has passed).
    #[must_use]
    pub const fn bytes_per_sec(&self, now: Instant) -> u64 {
        let us = self.elapsed(now).as_micros();
        if us == 0 {
            return 0;
        }
        let rate = self.bytes_transferred as u128 * 1_000_000 / us as u128;
        if rate > u64::MAX as u128 {
            u64::MAX
        } else {
            rate as u64
        }
    }
}

/// A [`ProgressTable`] operation that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ProgressError {
    /// No sync with this peer is being tracked.
    UnknownPeer(NodeId),
    /// The table is full.
    Full(CapacityError),
}

impl fmt::Display for ProgressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPeer(peer) => write!(f, "no sync with {peer} is being tracked"),
            Self::Full(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl core::error::Error for ProgressError {}

/// Progress of the syncs with up to `N` peers at once.
///
/// Memory: `48 × N` bytes plus a `usize`, inline.
#[derive(Clone, Debug, Default)]
pub struct ProgressTable<const N: usize> {
    /// Sorted by peer.
    peers: Vec<(NodeId, SyncProgress), N>,
}

impl<const N: usize> ProgressTable<N> {
    /// An empty table.
    #[must_use]
    pub const fn new() -> Self {
        Self { peers: Vec::new() }
    }

    fn find(&self, peer: &NodeId) -> Result<usize, usize> {
        self.peers.binary_search_by_key(peer, |(p, _)| *p)
    }

    /// Starts tracking a sync of `total_chunks` with `peer`, replacing any earlier one.
    pub fn start_sync(
        &mut self,
        peer: NodeId,
        total_chunks: u64,
        now: Instant,
    ) -> Result<(), ProgressError> {
        let progress = SyncProgress::new(total_chunks, now);
        match self.find(&peer) {
            Ok(at) => {
                self.peers[at].1 = progress;
                Ok(())
            }
            Err(at) => self.peers.insert(at, (peer, progress)).map_err(|_| {
                ProgressError::Full(CapacityError {
                    what: "progress table",
                    capacity: N,
                })
            }),
        }
    }

    /// Sets the counters of the sync with `peer` (absolute values, not increments).
    pub fn update_sync_progress(
        &mut self,
        peer: &NodeId,
        synced: u64,
        failed: u64,
        bytes: u64,
    ) -> Result<(), ProgressError> {
        let p = self.get_mut(peer)?;
        p.synced_chunks = synced;
        p.failed_chunks = failed;
        p.bytes_transferred = bytes;
        Ok(())
    }

    /// The sync with `peer`, for changing it in place.
    pub fn get_mut(&mut self, peer: &NodeId) -> Result<&mut SyncProgress, ProgressError> {
        match self.find(peer) {
            Ok(at) => Ok(&mut self.peers[at].1),
            Err(_) => Err(ProgressError::UnknownPeer(*peer)),
        }
    }

    /// The sync with `peer`, if tracked.
    #[must_use]
    pub fn get_sync_progress(&self, peer: &NodeId) -> Option<&SyncProgress> {
        self.find(peer).ok().map(|at| &self.peers[at].1)
    }

    /// Stops tracking the sync with `peer` and returns its final figures.
    pub fn complete_sync(&mut self, peer: &NodeId) -> Result<SyncProgress, ProgressError> {
        match self.find(peer) {
            Ok(at) => Ok(self.peers.remove(at).1),
            Err(_) => Err(ProgressError::UnknownPeer(*peer)),
        }
    }

    /// Every tracked sync, ordered by peer.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (NodeId, &SyncProgress)> {
        self.peers.iter().map(|(peer, p)| (*peer, p))
    }

    /// Number of tracked syncs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no sync is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_size() {
        assert_eq!(size_of::<ProgressTable<4>>(), 48 * 4 + size_of::<usize>());
    }

    #[test]
    fn percent_and_completion() {
        let mut p = SyncProgress::new(3, Instant::from_micros(10));
        assert_eq!(p.progress_percent(), 0.0);
        p.synced_chunks = 1;
        assert_eq!(p.progress_permille(), 333);
        assert!(!p.is_complete());
        p.synced_chunks = 3;
        assert_eq!(p.progress_percent(), 100.0);
        assert!(p.is_complete());
        assert_eq!(
            SyncProgress::new(0, Instant::ZERO).progress_percent(),
            100.0
        );
        assert_eq!(p.elapsed(Instant::from_micros(4)), Duration::ZERO);
        p.bytes_transferred = 500;
        assert_eq!(p.bytes_per_sec(Instant::from_micros(500_010)), 1_000);
    }

    #[test]
    fn table_tracks_peers_and_refuses_when_full() {
        let mut t = ProgressTable::<2>::new();
        t.start_sync(NodeId(2), 10, Instant::ZERO).unwrap();
        t.start_sync(NodeId(1), 5, Instant::ZERO).unwrap();
        assert_eq!(
            t.start_sync(NodeId(3), 1, Instant::ZERO),
            Err(ProgressError::Full(CapacityError {
                what: "progress table",
                capacity: 2
            }))
        );
        t.update_sync_progress(&NodeId(2), 4, 1, 4096).unwrap();
        let p = t.get_sync_progress(&NodeId(2)).unwrap();
        assert_eq!(
            (p.synced_chunks, p.failed_chunks, p.bytes_transferred),
            (4, 1, 4096)
        );
        assert_eq!(
            t.update_sync_progress(&NodeId(9), 0, 0, 0),
            Err(ProgressError::UnknownPeer(NodeId(9)))
        );
        assert_eq!(t.complete_sync(&NodeId(2)).unwrap().synced_chunks, 4);
        assert_eq!(
            t.iter().map(|(peer, _)| peer).collect::<std::vec::Vec<_>>(),
            [NodeId(1)]
        );
        assert!(t.get_sync_progress(&NodeId(2)).is_none());
    }
}
