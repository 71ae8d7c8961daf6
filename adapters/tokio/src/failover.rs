//! Pulling from several peers in turn: what one peer cannot give (a chunk that failed
//! verification, one it does not have, a dropped connection) is asked of the next.

use chunk_sync_core::ChunkHash;
use tokio::net::ToSocketAddrs;

use crate::error::Error;
use crate::node::{Node, SyncReport};

/// What [`Node::pull_from_any`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct FailoverReport {
    /// One entry per peer asked, in order: its session's report, or why it failed.
    pub attempts: Vec<Result<SyncReport, Error>>,
    /// Whether some peer's manifest was walked to the end, so that `unresolved` is all
    /// this node still lacks of it.
    pub walked: bool,
    /// Chunks found missing that no peer could give.
    pub unresolved: Vec<ChunkHash>,
}

impl FailoverReport {
    /// Whether a manifest was walked and every chunk it named is now stored.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.walked && self.unresolved.is_empty()
    }

    /// Chunks received, verified and stored, over all peers.
    #[must_use]
    pub fn synced_chunks(&self) -> u64 {
        self.attempts
            .iter()
            .flatten()
            .map(|r| r.progress.synced_chunks)
            .sum()
    }
}

impl Node {
    /// Fetches what this node lacks from the first of `peers` that answers, then asks the
    /// following peers, in order, for exactly the chunks that failed (wrong bytes, not
    /// found), until none is left or the peers run out. A peer that cannot be reached or
    /// drops the session is skipped; while no manifest has been walked to the end, the next
    /// peer is walked in full (chunks already stored are not fetched again).
    pub async fn pull_from_any<A: ToSocketAddrs>(
        &self,
        peers: impl IntoIterator<Item = A>,
    ) -> FailoverReport {
        let mut report = FailoverReport {
            attempts: Vec::new(),
            walked: false,
            unresolved: Vec::new(),
        };
        for peer in peers {
            // A dropped session may have stored some of them before it ended.
            self.keep_missing(&mut report.unresolved);
            if report.walked && report.unresolved.is_empty() {
                break;
            }
            let attempt = if report.walked {
                self.fetch_from(peer, report.unresolved.clone()).await
            } else {
                self.pull_from(peer).await
            };
            if let Ok(session) = &attempt {
                report.walked = true;
                report.unresolved = session.failed.iter().map(|(id, _)| *id).collect();
            }
            report.attempts.push(attempt);
        }
        self.keep_missing(&mut report.unresolved);
        report
    }

    /// Drops from `ids` the chunks this node has stored.
    fn keep_missing(&self, ids: &mut Vec<ChunkHash>) {
        let store = self.store();
        ids.retain(|id| !store.contains(id).unwrap_or(false));
    }
}
