//! A node: one store, one node-wide throttle, any number of concurrent sessions over TCP or
//! any other async byte stream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chunk_sync_core::session::{Config, FailReason, Stats};
use chunk_sync_core::throttle::Throttle;
use chunk_sync_core::{ChunkHash, NodeId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tracing::{Instrument, info_span};

use crate::SyncProgress;
use crate::driver::{HOST_PAGE, HOST_REQ, conduit, drive};
use crate::error::Error;
use crate::shared::Shared;
use crate::store::NodeStore;

/// A bandwidth limit, as in the original document: `max_bytes_per_sec` measured over
/// `window_duration`; `0` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// The long-run limit in bytes per second; `0` means unlimited.
    pub max_bytes_per_sec: u64,
    /// The accounting window; one window's budget may go out at once.
    pub window_duration: Duration,
}

impl ThrottleConfig {
    /// No limit.
    pub const UNLIMITED: Self = Self {
        max_bytes_per_sec: 0,
        window_duration: Duration::from_secs(1),
    };

    pub(crate) fn to_core(self) -> chunk_sync_core::ThrottleConfig {
        chunk_sync_core::ThrottleConfig {
            max_bytes_per_sec: self.max_bytes_per_sec,
            window_duration: core_duration(self.window_duration),
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self::UNLIMITED
    }
}

/// A node's settings.
#[derive(Clone, Copy, Debug)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The largest frame this node accepts (default 256 KiB).
    pub max_frame: u32,
    /// The largest chunk this node accepts (default 16 MiB).
    pub max_chunk_len: u32,
    /// Chunk requests in flight per session (default 32).
    pub window: u16,
    /// How long a peer may stay silent (default 30 s).
    pub idle_timeout: Duration,
    /// The cap on everything this node sends, all sessions together.
    pub throttle: ThrottleConfig,
    /// The cap on what this node sends to any one peer.
    pub peer_throttle: ThrottleConfig,
    /// Whether a session accepted from a peer also fetches what the peer has, so that
    /// any client that reaches the listener can push chunks into this node (default
    /// `false`: the node only serves its clients).
    pub accept_pushes: bool,
    /// How long a new connection has to send its `Hello` (default 10 s).
    pub handshake_timeout: Duration,
    /// If set, every session ends after this long, whatever the peer does (default: no
    /// limit).
    pub max_duration: Option<Duration>,
    /// Chunks that may fail in one session (not found, wrong bytes, invalid) before it
    /// ends (default 1,024): the bound on what a session keeps of a peer that lists
    /// chunks it cannot deliver.
    pub max_failures: u32,
    /// Connections a listener keeps at once (default 512). When all are taken, a new one
    /// takes the place of the oldest that has not finished its handshake, or is closed
    /// at once if every one has.
    pub max_connections: usize,
}

impl NodeConfig {
    /// Defaults for a host service.
    #[must_use]
    pub const fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            max_frame: 256 << 10,
            max_chunk_len: 16 << 20,
            window: 32,
            idle_timeout: Duration::from_secs(30),
            throttle: ThrottleConfig::UNLIMITED,
            peer_throttle: ThrottleConfig::UNLIMITED,
            accept_pushes: false,
            handshake_timeout: Duration::from_secs(10),
            max_duration: None,
            max_failures: chunk_sync_core::session::DEFAULT_MAX_FAILURES,
            max_connections: 512,
        }
    }

    fn session_config(&self, pull: bool, serve: bool) -> Config {
        Config {
            max_frame: self.max_frame,
            max_chunk_len: self.max_chunk_len,
            window: self.window,
            idle_timeout: core_duration(self.idle_timeout),
            handshake_timeout: core_duration(self.handshake_timeout),
            max_duration: self.max_duration.map(core_duration),
            max_failures: self.max_failures,
            throttle: self.peer_throttle.to_core(),
            pull,
            serve,
            ..Config::new(self.node_id)
        }
    }
}

fn core_duration(d: Duration) -> chunk_sync_core::Duration {
    chunk_sync_core::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
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
}

/// A sync node. Cloning gives another handle to the same node.
#[derive(Clone)]
pub struct Node {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.shared.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node keeping its chunks in `store`.
    pub fn new(config: NodeConfig, store: impl NodeStore) -> Result<Self, Error> {
        // Check the session configuration once, up front.
        chunk_sync_core::session::Session::<HOST_PAGE, HOST_REQ>::new(
            config.session_config(true, true),
            chunk_sync_core::Instant::ZERO,
        )
        .map_err(Error::Config)?;
        let throttle = Throttle::new(config.throttle.to_core())
            .map_err(|e| Error::Config(chunk_sync_core::session::ConfigError::Throttle(e)))?;
        chunk_sync_core::session::check_rate(
            config.throttle.to_core(),
            core_duration(config.idle_timeout),
        )
        .map_err(Error::Config)?;
        Ok(Self {
            shared: Arc::new(Shared::new(config, Box::new(store), throttle)),
        })
    }

    /// This node's id.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        self.shared.config.node_id
    }

    /// The node's store, shared with its sessions.
    #[must_use]
    pub fn store(&self) -> &dyn NodeStore {
        self.shared.store.as_ref()
    }

    /// The latest progress of the sync with `peer`.
    #[must_use]
    pub fn progress(&self, peer: &NodeId) -> Option<SyncProgress> {
        self.shared.progress(peer)
    }

    /// Connections accepted by this node's listeners and still open.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.shared.connections.len()
    }

    /// The latest progress of every sync this node has run, by peer.
    #[must_use]
    pub fn progress_all(&self) -> BTreeMap<NodeId, SyncProgress> {
        self.shared.progress_all()
    }

    /// Syncs both ways with the node listening at `addr`: each side fetches what it lacks.
    pub async fn sync_with(&self, addr: impl ToSocketAddrs) -> Result<SyncReport, Error> {
        let (stream, peer) = connect(addr).await?;
        self.run(stream, Mode::BOTH, Vec::new(), peer, None).await.1
    }

    /// Fetches what this node lacks from the node at `addr`, offering nothing in return.
    pub async fn pull_from(&self, addr: impl ToSocketAddrs) -> Result<SyncReport, Error> {
        let (stream, peer) = connect(addr).await?;
        self.run(
            stream,
            Mode {
                pull: true,
                serve: false,
            },
            Vec::new(),
            peer,
            None,
        )
        .await
        .1
    }

    /// Syncs both ways over an already open byte stream (TLS, QUIC, a pipe…).
    ///
    /// Cancel safety: dropping the future drops the stream and the session. Chunks already
    /// written stay; a batch a blocking store is writing at that moment is finished by its
    /// thread, while verified chunks still queued behind it are dropped. A later sync
    /// fetches only what is still missing. (A session that ends on its own, even with an
    /// error, writes everything it verified first.)
    pub async fn sync_over<IO: AsyncRead + AsyncWrite>(&self, io: IO) -> Result<SyncReport, Error> {
        self.run(io, Mode::BOTH, Vec::new(), None, None).await.1
    }

    /// Fetches exactly these chunks from the node at `addr`, offering nothing in return.
    pub async fn fetch_from(
        &self,
        addr: impl ToSocketAddrs,
        ids: Vec<ChunkHash>,
    ) -> Result<SyncReport, Error> {
        let (stream, peer) = connect(addr).await?;
        self.run(
            stream,
            Mode {
                pull: false,
                serve: false,
            },
            ids,
            peer,
            None,
        )
        .await
        .1
    }

    pub(crate) async fn run<IO: AsyncRead + AsyncWrite>(
        &self,
        io: IO,
        mode: Mode,
        wanted: Vec<ChunkHash>,
        peer: Option<SocketAddr>,
        conn: Option<u64>,
    ) -> (SyncReport, Result<SyncReport, Error>) {
        let shared = &*self.shared;
        let span = info_span!("session", node = %shared.config.node_id, peer = ?peer);
        let config = shared.config.session_config(mode.pull, mode.serve);
        let conduit = match conduit(config, shared, &wanted) {
            Ok(c) => c,
            Err(e) => {
                let empty = SyncReport {
                    peer: None,
                    progress: SyncProgress::new(0),
                    stats: Stats::default(),
                    failed: Vec::new(),
                };
                return (empty, Err(Error::Config(e)));
            }
        };
        let started = tokio::time::Instant::now();
        let (outcome, result) = drive(io, conduit, &self.shared, conn)
            .instrument(span)
            .await;
        let report = SyncReport {
            peer: outcome.peer,
            progress: SyncProgress::from_core(&outcome.progress, started),
            stats: outcome.stats,
            failed: outcome.failed,
        };
        let result = result.map(|()| report.clone());
        (report, result)
    }
}

/// Connects to `addr` for a session: no Nagle delay on small frames.
async fn connect(addr: impl ToSocketAddrs) -> Result<(TcpStream, Option<SocketAddr>), Error> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    Ok((stream, peer))
}

/// Which directions a session runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mode {
    pub(crate) pull: bool,
    pub(crate) serve: bool,
}

impl Mode {
    pub(crate) const BOTH: Self = Self {
        pull: true,
        serve: true,
    };
}
