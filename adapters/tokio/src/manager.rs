//! The original document's API: `EventChunkSyncManager` and `DeltaSyncProtocol`, with the
//! same meaning, on top of a [`Node`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use chunk_sync_core::{ChunkHash, NodeId, delta};

use crate::SyncProgress;
use crate::config::{NodeConfig, ThrottleConfig};
use crate::error::Error;
use crate::node::Node;
use crate::progress::SyncReport;
use crate::store::{MemStore, VerifiedChunk};

/// Default memory limit of the manager's chunk cache: 512 MiB.
pub const DEFAULT_CACHE_LIMIT: usize = 512 << 20;

/// Stores chunks, verifies what arrives, serves what is asked for, throttles what it sends
/// and tracks progress per peer.
///
/// Its store is in memory, up to a memory limit
/// ([`with_cache_limit`](Self::with_cache_limit)): a chunk beyond it is refused with an
/// error, never dropped silently. A [`Node`] with a persistent store holds more.
#[derive(Clone, Debug)]
pub struct EventChunkSyncManager {
    node: Node,
    peers: Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>,
}

impl EventChunkSyncManager {
    /// A manager for `node_id` whose sending, all peers together, is limited by `throttle`:
    /// the original document's constructor, whose node runs its sessions **in the clear
    /// and unauthenticated** ([`Node::new_insecure_plaintext`]). A manager on a network
    /// is made with [`try_new_secure`](Self::try_new_secure).
    ///
    /// # Panics
    /// If `throttle` has a rate but a zero window (use [`try_new`](Self::try_new) to get an
    /// error instead).
    #[must_use]
    pub fn new(node_id: NodeId, throttle: ThrottleConfig) -> Self {
        Self::try_new(node_id, throttle, DEFAULT_CACHE_LIMIT).expect("valid throttle configuration")
    }

    /// As [`new`](Self::new), with a cache memory limit, reporting a bad configuration.
    pub fn try_new(
        node_id: NodeId,
        throttle: ThrottleConfig,
        cache_limit: usize,
    ) -> Result<Self, Error> {
        let config = NodeConfig {
            throttle,
            ..NodeConfig::new(node_id)
        };
        Ok(Self {
            node: Node::new_insecure_plaintext(config, MemStore::with_limit(cache_limit))?,
            peers: Arc::default(),
        })
    }

    /// A manager whose node is secure ([`Node::new`]): its node id is its key's, every
    /// session is authenticated and encrypted, and `security.peers` says what each peer
    /// key may do (the peers [`DeltaSyncProtocol::request_missing_chunks`] asks are ones
    /// this node connects to: [`Permissions::trust_dialed`](crate::Permissions::trust_dialed)
    /// or their keys allowed). Its peers take only chunks their origin signed: seal this
    /// node's own with [`EventChunkStore::with_signer`](chunk_sync_core::EventChunkStore::with_signer)
    /// and the same key pair.
    ///
    /// # Errors
    /// As [`Node::new`].
    pub fn try_new_secure(
        security: crate::Security,
        throttle: ThrottleConfig,
        cache_limit: usize,
    ) -> Result<Self, Error> {
        let config = NodeConfig {
            throttle,
            ..NodeConfig::new(security.keys.node_id())
        };
        Ok(Self {
            node: Node::new(config, MemStore::with_limit(cache_limit), security)?,
            peers: Arc::default(),
        })
    }

    /// Replaces the (empty) cache by one with this memory limit. Call it right after
    /// [`new`](Self::new), before storing chunks or listening.
    #[must_use]
    pub fn with_cache_limit(self, bytes: usize) -> Self {
        let config = self.node.shared.config;
        let store = MemStore::with_limit(bytes);
        let node = match self.node.shared.security.clone() {
            Some(security) => Node::new(config, store, security),
            None => Node::new_insecure_plaintext(config, store),
        };
        Self {
            node: node.expect("configuration already checked"),
            ..self
        }
    }

    /// The node behind the manager: listen, sync with peers.
    #[must_use]
    pub const fn node(&self) -> &Node {
        &self.node
    }

    /// Remembers where `peer` listens, for [`DeltaSyncProtocol::request_missing_chunks`].
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, addr);
    }

    fn peer_addr(&self, peer: &NodeId) -> Result<SocketAddr, Error> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .copied()
            .ok_or(Error::UnknownPeer(*peer))
    }

    /// Verifies `data` against `hash`, checks that it is a valid chunk and stores it.
    /// Returns whether it was new. A mismatch is refused with [`Error::HashMismatch`],
    /// bytes that are no valid chunk with [`Error::InvalidChunk`], a fork of a stored chunk
    /// with the store's [`Fork`](chunk_sync_core::store::Fork) error; nothing is stored.
    pub async fn handle_chunk_put(&self, hash: ChunkHash, data: Vec<u8>) -> Result<bool, Error> {
        let verified = VerifiedChunk::new(hash, data).map_err(Error::HashMismatch)?;
        chunk_sync_core::ChunkView::validated(verified.bytes()).map_err(Error::InvalidChunk)?;
        self.node.store().insert(verified).map_err(Error::Store)
    }

    /// The chunk named `hash`, if stored.
    pub async fn handle_chunk_get(&self, hash: ChunkHash) -> Result<Option<Vec<u8>>, Error> {
        self.node
            .store()
            .get(&hash)
            .map(|b| b.map(Vec::from))
            .map_err(Error::Store)
    }

    /// Starts tracking a sync of `total_chunks` with `peer`.
    pub fn start_sync(&self, peer: NodeId, total_chunks: u64) {
        self.node
            .shared
            .publish(peer, SyncProgress::new(total_chunks));
    }

    /// Sets the counters of the sync with `peer`; `false` if it is not tracked.
    pub fn update_sync_progress(
        &self,
        peer: &NodeId,
        synced: u64,
        failed: u64,
        bytes: u64,
    ) -> bool {
        self.node
            .shared
            .update(peer, |p| {
                p.synced_chunks = synced;
                p.failed_chunks = failed;
                p.bytes_transferred = bytes;
            })
            .is_some()
    }

    /// The progress of the sync with `peer` (updated live by running sessions).
    ///
    /// # Errors
    /// [`Error::NotTracked`] if no sync with `peer` was started or run.
    pub fn get_sync_progress(&self, peer: &NodeId) -> Result<SyncProgress, Error> {
        self.node.progress(peer).ok_or(Error::NotTracked(*peer))
    }

    /// Stops tracking the sync with `peer` and returns its final figures.
    ///
    /// # Errors
    /// [`Error::NotTracked`] if no sync with `peer` is tracked.
    pub fn complete_sync(&self, peer: &NodeId) -> Result<SyncProgress, Error> {
        self.node
            .shared
            .forget(peer)
            .ok_or(Error::NotTracked(*peer))
    }

    /// The hashes of every chunk this node stores, sorted: its manifest, to compare with a
    /// peer's ([`DeltaSyncProtocol::compute_delta`]).
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub async fn local_hashes(&self) -> Result<Vec<ChunkHash>, Error> {
        self.node.store().ids().map_err(Error::Store)
    }

    /// The hashes of every chunk `peer` (added with [`add_peer`](Self::add_peer)) holds,
    /// asked over the network: the remote manifest that
    /// [`DeltaSyncProtocol::compute_delta`] compares with [`local_hashes`](Self::local_hashes).
    /// No chunk is fetched ([`Node::list_from`]).
    ///
    /// # Errors
    /// [`Error::UnknownPeer`] for a peer never added, and as for [`Node::list_from`].
    pub async fn remote_hashes(&self, peer: NodeId) -> Result<Vec<ChunkHash>, Error> {
        let addr = self.peer_addr(&peer)?;
        self.node.list_from(addr).await
    }

    /// Bytes of chunk data held in memory.
    #[must_use]
    pub fn cache_size_bytes(&self) -> usize {
        self.node.store().cache_size_bytes()
    }

    /// Forgets every chunk held in memory.
    pub fn clear_cache(&self) {
        self.node.store().clear_cache();
    }
}

impl From<&Self> for EventChunkSyncManager {
    /// Another handle to the same node.
    fn from(manager: &Self) -> Self {
        manager.clone()
    }
}

/// Delta sync: find what a peer has that this node lacks, and fetch exactly that over the
/// network.
#[derive(Clone, Debug)]
pub struct DeltaSyncProtocol {
    manager: EventChunkSyncManager,
}

impl DeltaSyncProtocol {
    /// Delta sync on top of `manager`: the manager itself, or a reference to one (a
    /// manager is a handle that clones cheaply, so both keep working on the same node).
    #[must_use]
    pub fn new(manager: impl Into<EventChunkSyncManager>) -> Self {
        Self {
            manager: manager.into(),
        }
    }

    /// The hashes of `remote` that are not in `local` (a sorted merge walk; the inputs need
    /// not be sorted).
    pub async fn compute_delta(&self, local: &[ChunkHash], remote: &[ChunkHash]) -> Vec<ChunkHash> {
        let sorted = |ids: &[ChunkHash]| {
            let mut v = ids.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        };
        let (local, remote) = (sorted(local), sorted(remote));
        delta::missing(&local, &remote).copied().collect()
    }

    /// Fetches `missing` from `peer` (whose address was given to
    /// [`EventChunkSyncManager::add_peer`]), verifying and storing each chunk. The report
    /// lists the chunks the peer could not supply.
    pub async fn request_missing_chunks(
        &self,
        peer: NodeId,
        missing: Vec<ChunkHash>,
    ) -> Result<SyncReport, Error> {
        let addr = self.manager.peer_addr(&peer)?;
        self.manager.node().fetch_from(addr, missing).await
    }
}
