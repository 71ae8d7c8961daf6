//! What a node's sessions share: its configuration, store, node-wide throttle, clock,
//! progress table, connection table, events, own log and live peers, behind methods.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, watch};

use chunk_sync_core::claims::ClaimTable;
use chunk_sync_core::conduit::Budget;
use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::throttle::Throttle;
use chunk_sync_core::{Instant, NodeId};

use crate::SyncProgress;
use crate::config::NodeConfig;
use crate::connections::Connections;
use crate::events::Events;
use crate::log::OwnLog;
use crate::peers::Peers;
use crate::store::NodeStore;
use crate::time::Clock;
use crate::writes::NodeUnwritten;

/// Peers whose latest progress a node keeps; past it, the one whose sync started first is
/// forgotten, so that peers claiming ever new node ids cannot grow the table.
pub(crate) const MAX_TRACKED_PEERS: usize = 1024;

/// Claims on ranges being fetched that a node records at once (about 40 bytes each);
/// past them, every claim is granted.
pub(crate) const MAX_CLAIMS: usize = 4096;

/// What one session shares with the node's others: the node-wide throttle (`None` when
/// the node has no limit, which admits every frame without taking a lock) and the
/// node's claims on ranges being fetched, for the session `session`.
pub(crate) struct NodeBudget<'a> {
    throttle: Option<&'a Mutex<Throttle>>,
    claims: &'a Mutex<ClaimTable<MAX_CLAIMS>>,
    session: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Budget for NodeBudget<'_> {
    fn next_ready(&mut self, now: Instant) -> Option<Instant> {
        self.throttle.and_then(|t| lock(t).next_ready(now))
    }
    fn consume(&mut self, now: Instant, bytes: u64) {
        if let Some(t) = self.throttle {
            Budget::consume(&mut *lock(t), now, bytes);
        }
    }
    fn claim(&mut self, range: &KeyRange, now: Instant) -> bool {
        lock(self.claims).claim(self.session, range, now)
    }
    fn release(&mut self, origin: NodeId, hi: u64) {
        lock(self.claims).release_range(self.session, origin, hi);
    }
}

/// The state of one node, shared by its handles, listeners and sessions.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    /// The node's keys and permissions; `None`: sessions in the clear.
    pub(crate) security: Option<crate::Security>,
    pub(crate) store: Box<dyn NodeStore>,
    pub(crate) clock: Clock,
    pub(crate) connections: Connections,
    throttle: Mutex<Throttle>,
    /// Whether the node-wide throttle limits anything.
    limited: bool,
    progress: Mutex<BTreeMap<NodeId, SyncProgress>>,
    /// Counts changes of `progress`, for [`Node::progress_changes`](crate::Node::progress_changes).
    pub(crate) progress_changed: watch::Sender<u64>,
    pub(crate) events: Events,
    /// The own log's open chunk, once something was appended.
    pub(crate) log: tokio::sync::Mutex<Option<OwnLog>>,
    /// Wakes the task that seals the own log's open chunk when it is due.
    pub(crate) seal_wake: Arc<Notify>,
    /// Whether that task runs.
    pub(crate) sealer_started: AtomicBool,
    /// Set when the node shuts down: live sessions end.
    pub(crate) closing: watch::Sender<bool>,
    /// The peers the node keeps live sessions with.
    pub(crate) peers: Peers,
    /// Ranges the node's sessions are fetching.
    claims: Mutex<ClaimTable<MAX_CLAIMS>>,
    /// The number of the next session, for its claims.
    sessions: AtomicU64,
    /// Bytes of received chunks every session holds unwritten.
    pub(crate) unwritten: Arc<NodeUnwritten>,
}

impl Shared {
    pub(crate) fn new(config: NodeConfig, store: Box<dyn NodeStore>, throttle: Throttle) -> Self {
        Self {
            config,
            security: None,
            store,
            clock: Clock::new(),
            connections: Connections::new(
                config.max_connections,
                config
                    .max_connections_per_address
                    .unwrap_or(config.max_connections),
            ),
            limited: !throttle.config().is_unlimited(),
            throttle: Mutex::new(throttle),
            progress: Mutex::new(BTreeMap::new()),
            progress_changed: watch::channel(0).0,
            events: Events::new(),
            log: tokio::sync::Mutex::new(None),
            seal_wake: Arc::new(Notify::new()),
            sealer_started: AtomicBool::new(false),
            closing: watch::channel(false).0,
            peers: Peers::default(),
            claims: Mutex::new(ClaimTable::new()),
            sessions: AtomicU64::new(0),
            unwritten: Arc::new(NodeUnwritten::new(config.max_unwritten)),
        }
    }

    /// Whether the node is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Marks the sealing task as started; returns whether it was not yet.
    pub(crate) fn start_sealer(&self) -> bool {
        !self.sealer_started.swap(true, Ordering::AcqRel)
    }

    /// What the session `session` shares with the others, as a budget a conduit locks
    /// only to admit a frame or claim a range.
    pub(crate) fn budget(&self, session: u64) -> NodeBudget<'_> {
        NodeBudget {
            throttle: self.limited.then_some(&self.throttle),
            claims: &self.claims,
            session,
        }
    }

    /// A number for a new session, unique in the node.
    pub(crate) fn new_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops the claims of a session that ended.
    pub(crate) fn release_claims(&self, session: u64) {
        lock(&self.claims).release(session);
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<NodeId, SyncProgress>> {
        lock(&self.progress)
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
        drop(table);
        self.progress_changed.send_modify(|n| *n += 1);
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
        let done = self.table().get_mut(peer).map(f);
        self.progress_changed.send_modify(|n| *n += 1);
        done
    }

    /// Forgets the sync with `peer` and returns its last progress.
    pub(crate) fn forget(&self, peer: &NodeId) -> Option<SyncProgress> {
        let gone = self.table().remove(peer);
        self.progress_changed.send_modify(|n| *n += 1);
        gone
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The sealing task waits on this: it wakes, finds the node gone and ends.
        self.seal_wake.notify_one();
    }
}
