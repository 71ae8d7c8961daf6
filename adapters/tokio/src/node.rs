//! A node: one store, one node-wide throttle, any number of concurrent sessions over TCP or
//! any other async byte stream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chunk_sync_core::session::{Config, FailReason, Stats};
use chunk_sync_core::throttle::Throttle;
use chunk_sync_core::{ChunkHash, NodeId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::task::JoinHandle;
use tracing::{Instrument, info_span, warn};

use crate::SyncProgress;
use crate::driver::{HostSession, drive};
use crate::error::Error;
use crate::store::NodeStore;
use crate::time::Clock;

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
            window_duration: chunk_sync_core::Duration::from_micros(
                u64::try_from(self.window_duration.as_micros()).unwrap_or(u64::MAX),
            ),
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
    /// Whether a session accepted from a peer also fetches what the peer has (default
    /// `true`); if not, the node only serves it.
    pub pull_from_clients: bool,
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
            pull_from_clients: true,
        }
    }

    fn session_config(&self, pull: bool, serve: bool) -> Config {
        Config {
            max_frame: self.max_frame,
            max_chunk_len: self.max_chunk_len,
            window: self.window,
            idle_timeout: chunk_sync_core::Duration::from_micros(
                u64::try_from(self.idle_timeout.as_micros()).unwrap_or(u64::MAX),
            ),
            throttle: self.peer_throttle.to_core(),
            pull,
            serve,
            ..Config::new(self.node_id)
        }
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
}

pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) store: Box<dyn NodeStore>,
    pub(crate) throttle: Mutex<Throttle>,
    pub(crate) clock: Clock,
    pub(crate) progress: Mutex<BTreeMap<NodeId, SyncProgress>>,
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
        HostSession::new(
            config.session_config(true, true),
            chunk_sync_core::Instant::ZERO,
        )
        .map_err(Error::Config)?;
        let throttle = Throttle::new(config.throttle.to_core())
            .map_err(|e| Error::Config(chunk_sync_core::session::ConfigError::Throttle(e)))?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                store: Box::new(store),
                throttle: Mutex::new(throttle),
                clock: Clock::new(),
                progress: Mutex::new(BTreeMap::new()),
            }),
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
        self.shared
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .copied()
    }

    /// The latest progress of every sync this node has run, by peer.
    #[must_use]
    pub fn progress_all(&self) -> BTreeMap<NodeId, SyncProgress> {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Syncs both ways with the node listening at `addr`: each side fetches what it lacks.
    pub async fn sync_with(&self, addr: impl ToSocketAddrs) -> Result<SyncReport, Error> {
        let (stream, peer) = connect(addr).await?;
        self.run(stream, Mode::BOTH, Vec::new(), peer).await.1
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
        self.run(io, Mode::BOTH, Vec::new(), None).await.1
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
        )
        .await
        .1
    }

    /// Accepts sessions on `addr` until the returned [`Listener`] is dropped or closed,
    /// serving every peer concurrently from this node's store.
    pub async fn listen(&self, addr: impl ToSocketAddrs) -> Result<Listener, Error> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let node = self.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let node = node.clone();
                tokio::spawn(async move {
                    let mode = Mode {
                        pull: node.shared.config.pull_from_clients,
                        serve: true,
                    };
                    if let (_, Err(e)) = node.run(stream, mode, Vec::new(), Some(peer)).await {
                        warn!(%peer, error = %e, "session with client ended in error");
                    }
                });
            }
        });
        Ok(Listener { local_addr, accept })
    }

    async fn run<IO: AsyncRead + AsyncWrite>(
        &self,
        io: IO,
        mode: Mode,
        wanted: Vec<ChunkHash>,
        peer: Option<SocketAddr>,
    ) -> (SyncReport, Result<SyncReport, Error>) {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let span = info_span!("session", node = %shared.config.node_id, peer = ?peer);
        let session =
            match HostSession::new(shared.config.session_config(mode.pull, mode.serve), now) {
                Ok(s) => Box::new(s),
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
        let (outcome, result) = drive(io, session, &self.shared, wanted)
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
struct Mode {
    pull: bool,
    serve: bool,
}

impl Mode {
    const BOTH: Self = Self {
        pull: true,
        serve: true,
    };
}

/// A listening node; dropping it stops accepting (sessions already running go on).
#[derive(Debug)]
pub struct Listener {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Listener {
    /// The address the node listens on.
    #[must_use]
    pub const fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
