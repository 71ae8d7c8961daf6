//! What a node's sessions share: its configuration, store, node-wide throttle, clock,
//! progress table and connection table, behind methods.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chunk_sync_core::conduit::Budget;
use chunk_sync_core::throttle::Throttle;
use chunk_sync_core::{Instant, NodeId};

use crate::SyncProgress;
use crate::config::NodeConfig;
use crate::connections::Connections;
use crate::store::NodeStore;
use crate::time::Clock;

/// Peers whose latest progress a node keeps; past it, the one whose sync started first is
/// forgotten, so that peers claiming ever new node ids cannot grow the table.
pub(crate) const MAX_TRACKED_PEERS: usize = 1024;

/// The node-wide throttle, shared by a node's sessions; `None` when the node has no
/// limit, which admits every frame without taking a lock.
pub(crate) struct NodeBudget<'a>(Option<&'a Mutex<Throttle>>);

impl NodeBudget<'_> {
    fn lock(throttle: &Mutex<Throttle>) -> MutexGuard<'_, Throttle> {
        throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Budget for NodeBudget<'_> {
    fn next_ready(&mut self, now: Instant) -> Option<Instant> {
        self.0.and_then(|t| Self::lock(t).next_ready(now))
    }
    fn consume(&mut self, now: Instant, bytes: u64) {
        if let Some(t) = self.0 {
            Budget::consume(&mut *Self::lock(t), now, bytes);
        }
    }
}

/// The state of one node, shared by its handles, listeners and sessions.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) store: Box<dyn NodeStore>,
    pub(crate) clock: Clock,
    pub(crate) connections: Connections,
    throttle: Mutex<Throttle>,
    /// Whether the node-wide throttle limits anything.
    limited: bool,
    progress: Mutex<BTreeMap<NodeId, SyncProgress>>,
}

impl Shared {
    pub(crate) fn new(config: NodeConfig, store: Box<dyn NodeStore>, throttle: Throttle) -> Self {
        Self {
            config,
            store,
            clock: Clock::new(),
            connections: Connections::new(config.max_connections),
            limited: !throttle.config().is_unlimited(),
            throttle: Mutex::new(throttle),
            progress: Mutex::new(BTreeMap::new()),
        }
    }

    /// The node-wide throttle, as a budget a conduit locks only to admit a frame.
    pub(crate) fn budget(&self) -> NodeBudget<'_> {
        NodeBudget(self.limited.then_some(&self.throttle))
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<NodeId, SyncProgress>> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the latest progress of the sync with `peer`, forgetting the oldest peer
    /// when the table is full.
    pub(crate) fn publish(&self, peer: NodeId, progress: SyncProgress) {
        let mut table = self.table();
        if table.len() >= MAX_TRACKED_PEERS && !table.contains_key(&peer) {
            let oldest = table
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                table.remove(&oldest);
            }
        }
        table.insert(peer, progress);
    }

    /// The latest progress of the sync with `peer`.
    pub(crate) fn progress(&self, peer: &NodeId) -> Option<SyncProgress> {
        self.table().get(peer).copied()
    }

    /// The latest progress of every sync, by peer.
    pub(crate) fn progress_all(&self) -> BTreeMap<NodeId, SyncProgress> {
        self.table().clone()
    }

    /// Applies `f` to the progress of the sync with `peer`, if tracked; returns its result.
    pub(crate) fn update<R>(
        &self,
        peer: &NodeId,
        f: impl FnOnce(&mut SyncProgress) -> R,
    ) -> Option<R> {
        self.table().get_mut(peer).map(f)
    }

    /// Forgets the sync with `peer` and returns its last progress.
    pub(crate) fn forget(&self, peer: &NodeId) -> Option<SyncProgress> {
        self.table().remove(peer)
    }
}
