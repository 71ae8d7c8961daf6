//! A node: one store, one node-wide throttle, any number of concurrent sessions over TCP or
//! any other async byte stream, and pulling from several peers in turn (failover).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use chunk_sync_core::session::Config;
use chunk_sync_core::throttle::Throttle;
use chunk_sync_core::{ChunkHash, NodeId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tracing::{Instrument, info_span};

use crate::config::{NodeConfig, core_duration};
use crate::driver::{Context, conduit, drive};
use crate::error::Error;
use crate::events::NodeEvent;
use crate::progress::{SyncProgress, SyncReport};
use crate::shared::Shared;
use crate::store::NodeStore;

/// A sync node. Cloning gives another handle to the same node.
///
/// Each session is the core's [`Conduit`](chunk_sync_core::conduit::Conduit), driven by one
/// task: socket reads and vectored writes, calls to the store, one timer.
///
/// ```
/// use chunk_sync_tokio::core::{EventBuf, Privacy};
/// use chunk_sync_tokio::{
///     Access, MemStore, Node, NodeConfig, NodeStore, Permissions, Security, generate_keypair,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// // Two nodes, each with a key pair (its node id is the key's).
/// let (server_keys, client_keys) = (generate_keypair()?, generate_keypair()?);
/// let (server_id, client_id) = (server_keys.node_id(), client_keys.node_id());
///
/// // A node holding 25 events of its own log, 10 per chunk (each signed with its key),
/// // that lets the client's key pull (and nothing else in).
/// let security = Security {
///     peers: Permissions::deny_all().allow(*client_keys.public(), Access::FULL),
///     keys: server_keys,
/// };
/// let config = NodeConfig {
///     events_per_chunk: 10,
///     ..NodeConfig::new(server_id)
/// };
/// let server = Node::new(config, MemStore::new(), security)?;
/// let events: Vec<EventBuf> = (0..25)
///     .map(|seq| EventBuf {
///         origin: server_id,
///         seq,
///         timestamp: 1_000 + seq,
///         kind: "reading".into(),
///         privacy: Privacy::Public,
///         payload: vec![seq as u8; 16],
///     })
///     .collect();
/// server.append_batch(&events).await?;
/// server.flush().await?;
/// let listener = server.listen("127.0.0.1:0").await?;
///
/// // The client pulls over TCP on an authenticated, encrypted link: every chunk is
/// // verified before it is stored. It trusts the node it connects to.
/// let security = Security {
///     keys: client_keys,
///     peers: Permissions::deny_all().trust_dialed(Access::FULL),
/// };
/// let client = Node::new(NodeConfig::new(client_id), MemStore::new(), security)?;
/// let report = client.pull_from(listener.local_addr()).await?;
/// assert_eq!(report.progress.synced_chunks, 3);
/// assert_eq!(client.store().len()?, 3);
/// # Ok(())
/// # }
/// ```
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
    /// A node keeping its chunks in `store`, whose sessions run **in the clear and
    /// unauthenticated**: any program that reaches it may pull what it serves, and a
    /// peer's node id is whatever its `Hello` says. For tests and links secured end to
    /// end by other means; a node on a network is made with [`new`](Self::new).
    ///
    /// # Errors
    /// [`Error::Config`]: the session configuration or the throttle is invalid.
    pub fn new_insecure_plaintext(
        config: NodeConfig,
        store: impl NodeStore,
    ) -> Result<Self, Error> {
        // Check the session configuration once, up front.
        config
            .session_config(true, true)
            .check()
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

    /// A node whose every session is authenticated and encrypted
    /// ([`chunk_sync_core::secure`]): a Noise XX handshake proves both keys, each peer
    /// key gets what `security.peers` gives it, and every frame is sealed with
    /// ChaCha20-Poly1305. Peers must be secure nodes too. `config.node_id` must be the id
    /// of `security.keys` ([`Keypair::node_id`](crate::Keypair::node_id)); a
    /// `config.max_frame` past a record's 65,537 bytes is lowered to it.
    ///
    /// # Errors
    /// As [`new_insecure_plaintext`](Self::new_insecure_plaintext), and
    /// [`ConfigError::SecureLink`](chunk_sync_core::session::ConfigError::SecureLink).
    pub fn new(
        config: NodeConfig,
        store: impl NodeStore,
        security: crate::Security,
    ) -> Result<Self, Error> {
        use chunk_sync_core::session::ConfigError;
        if config.node_id != security.keys.node_id() {
            return Err(Error::Config(ConfigError::SecureLink(
                "node_id must be the id of the node's key (Keypair::node_id)",
            )));
        }
        let config = NodeConfig {
            max_frame: config.max_frame.min(chunk_sync_core::secure::MAX_RECORD),
            ..config
        };
        let mut node = Self::new_insecure_plaintext(config, store)?;
        if let Some(shared) = Arc::get_mut(&mut node.shared) {
            shared.security = Some(security);
        }
        Ok(node)
    }

    /// This node's public key, if it is secure.
    #[must_use]
    pub fn public_key(&self) -> Option<crate::PublicKey> {
        self.shared.security.as_ref().map(|s| *s.keys.public())
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

    /// A watch of the progress table: it changes whenever a sync's progress does (a
    /// session published new counts, a sync was started, updated or completed). Await
    /// `changed()`, then read [`progress`](Self::progress) or
    /// [`progress_all`](Self::progress_all); a slow reader sees the latest state, never a
    /// backlog. What happened (chunks stored, peers connected and lost) comes from
    /// [`events`](Self::events).
    #[must_use]
    pub fn progress_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.progress_changed.subscribe()
    }

    /// Syncs both ways with the node listening at `addr`: each side fetches what it lacks.
    pub async fn sync_with(&self, addr: impl ToSocketAddrs) -> Result<SyncReport, Error> {
        let (stream, peer) = connect(addr).await?;
        self.run_task(stream, Mode::BOTH, Vec::new(), peer)
            .await
            .map_err(|f| f.error)
    }

    /// Fetches what this node lacks from the node at `addr`, offering nothing in return.
    pub async fn pull_from(&self, addr: impl ToSocketAddrs) -> Result<SyncReport, Error> {
        let (stream, peer) = connect(addr).await?;
        self.run_task(stream, Mode::PULL, Vec::new(), peer)
            .await
            .map_err(|f| f.error)
    }

    /// Syncs both ways over an already open byte stream (TLS, QUIC, a pipe…).
    ///
    /// Cancel safety: dropping the future drops the stream and the session. Chunks already
    /// written stay; a batch a blocking store is writing at that moment is finished by its
    /// thread, while verified chunks still queued behind it are dropped. A later sync
    /// fetches only what is still missing. (A session that ends on its own, even with an
    /// error, writes everything it verified first.)
    pub async fn sync_over<IO: AsyncRead + AsyncWrite>(&self, io: IO) -> Result<SyncReport, Error> {
        self.run(io, Mode::BOTH, Vec::new(), Context::default())
            .await
            .map_err(|f| f.error)
    }

    /// Keeps a live session over an already open byte stream (a serial line, a pipe…), as
    /// with a peer added by [`add_peer`](Self::add_peer) but without reconnecting: both
    /// sides fetch what they lack, then announce what they store later, until one side
    /// closes it ([`shutdown`](Self::shutdown) here) or the stream fails. A peer that does
    /// not speak live sessions syncs once.
    ///
    /// Cancel safety: as [`sync_over`](Self::sync_over).
    pub async fn live_over<IO: AsyncRead + AsyncWrite>(&self, io: IO) -> Result<SyncReport, Error> {
        self.run(io, Mode::LIVE, Vec::new(), Context::default())
            .await
            .map_err(|f| f.error)
    }

    /// As [`live_over`](Self::live_over), answering the session as a node answers a
    /// connection it accepted: on a secure node the other end initiates the handshake
    /// and its key must be allowed as an accepting node's must
    /// ([`Permissions::trust_dialed`](crate::Permissions::trust_dialed) does not apply).
    /// On a stream with no connecting side, such as a serial line, one end calls this and
    /// the other [`live_over`](Self::live_over); a plaintext session is the same either
    /// way.
    pub async fn live_over_answering<IO: AsyncRead + AsyncWrite>(
        &self,
        io: IO,
    ) -> Result<SyncReport, Error> {
        let context = Context {
            answering: true,
            ..Context::default()
        };
        self.run(io, Mode::LIVE, Vec::new(), context)
            .await
            .map_err(|f| f.error)
    }

    /// Fetches exactly these chunks from the node at `addr`, offering nothing in return.
    pub async fn fetch_from(
        &self,
        addr: impl ToSocketAddrs,
        ids: Vec<ChunkHash>,
    ) -> Result<SyncReport, Error> {
        let (stream, peer) = connect(addr).await?;
        self.run_task(stream, Mode::FETCH, ids, peer)
            .await
            .map_err(|f| f.error)
    }

    /// The hashes of every chunk the node at `addr` holds (its manifest, as the original
    /// API's `compute_delta` takes it), ascending; no chunk is fetched. The sessions
    /// reconcile as for a pull with this node's store taken as empty, then ask for the
    /// hashes of each range found (`GetIds`), 64 KiB of hashes a frame at most: about 32
    /// bytes a chunk and a few round trips. Bytes a store keeps that are not valid chunks
    /// are not listed (they belong to no range). At most [`MAX_LISTED`](crate::MAX_LISTED)
    /// hashes are kept: a peer that lists more ends the session with an error.
    ///
    /// # Errors
    /// [`Error::Protocol`] with [`Incompatible::MissingCapabilities`](chunk_sync_core::session::Incompatible::MissingCapabilities)
    /// if the peer cannot list its chunks (a device node built without `alloc`), and as
    /// for [`pull_from`](Self::pull_from).
    pub async fn list_from(&self, addr: impl ToSocketAddrs) -> Result<Vec<ChunkHash>, Error> {
        let (stream, peer) = connect(addr).await?;
        let report = self
            .run_task(stream, Mode::LIST, Vec::new(), peer)
            .await
            .map_err(|f| f.error)?;
        let mut ids = report.listed;
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Runs one session over a TCP connection as a task of its own, so that it runs on
    /// the runtime's worker threads beside the I/O driver, whatever thread awaits it (a
    /// `main` awaiting it directly would be woken through the driver for every read).
    /// Dropping the future aborts the task: the same as dropping the session.
    async fn run_task(
        &self,
        stream: TcpStream,
        mode: Mode,
        wanted: Vec<ChunkHash>,
        peer: Option<SocketAddr>,
    ) -> Result<SyncReport, Box<Failed>> {
        /// Aborts the task when the future awaiting it is dropped.
        struct Abort(tokio::task::AbortHandle);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let node = self.clone();
        let context = Context {
            addr: peer,
            ..Context::default()
        };
        let task = tokio::spawn(async move { node.run(stream, mode, wanted, context).await });
        let _abort = Abort(task.abort_handle());
        match task.await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled by a runtime shutting down.
                Err(_) => Err(Box::new(Failed {
                    report: SyncReport::empty(),
                    error: Error::Protocol(chunk_sync_core::session::Error::Aborted),
                })),
            },
        }
    }

    /// Runs one session over `io`. A failed session's report (what it stored before it
    /// failed) stays with its error.
    pub(crate) async fn run<IO: AsyncRead + AsyncWrite>(
        &self,
        io: IO,
        mode: Mode,
        wanted: Vec<ChunkHash>,
        context: Context,
    ) -> Result<SyncReport, Box<Failed>> {
        let shared = &*self.shared;
        let addr = context.addr;
        let span = info_span!("session", node = %shared.config.node_id, peer = ?addr);
        let config = Config {
            live: mode.live,
            list: mode.list,
            ..shared.config.session_config(mode.pull, mode.serve)
        };
        let conduit = match conduit(config, shared, &wanted, context.accepted()) {
            Ok(c) => c,
            Err(e) => {
                let report = SyncReport::empty();
                let error = Error::Config(e);
                return Err(Box::new(Failed { report, error }));
            }
        };
        let (report, result) = drive(io, conduit, &self.shared, context)
            .instrument(span)
            .await;
        self.shared.events.send(NodeEvent::PeerDisconnected {
            peer: report.peer,
            addr,
            error: result.as_ref().err().map(ToString::to_string),
        });
        match result {
            Ok(()) => Ok(report),
            Err(error) => Err(Box::new(Failed { report, error })),
        }
    }
}

/// A session that failed, with what it did before.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) report: SyncReport,
    pub(crate) error: Error,
}

/// Connects to `addr` for a session: no Nagle delay on small frames.
pub(crate) async fn connect(
    addr: impl ToSocketAddrs,
) -> Result<(TcpStream, Option<SocketAddr>), Error> {
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
    /// Whether the session stays open after the first reconciliation, if the peer agrees.
    pub(crate) live: bool,
    /// Whether the session lists the peer's chunks instead of fetching them.
    pub(crate) list: bool,
}

impl Mode {
    /// Pull and serve.
    pub(crate) const BOTH: Self = Self {
        pull: true,
        serve: true,
        live: false,
        list: false,
    };
    /// Pull, offering nothing in return.
    pub(crate) const PULL: Self = Self {
        pull: true,
        serve: false,
        live: false,
        list: false,
    };
    /// Fetch given chunks only.
    pub(crate) const FETCH: Self = Self {
        pull: false,
        serve: false,
        live: false,
        list: false,
    };
    /// Pull and serve, and stay open: a live peer.
    pub(crate) const LIVE: Self = Self {
        pull: true,
        serve: true,
        live: true,
        list: false,
    };
    /// List the peer's chunks, offering nothing.
    pub(crate) const LIST: Self = Self {
        pull: true,
        serve: false,
        live: false,
        list: true,
    };
}

/// What [`Node::pull_from_any`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct FailoverReport {
    /// One entry per peer asked, in order: its session's report, or why it failed.
    pub attempts: Vec<Result<SyncReport, Error>>,
    /// Whether some peer's store was reconciled with to the end, so that `unresolved` is
    /// all this node still lacks of it.
    pub walked: bool,
    /// Chunks that failed in the last session that reached its end (by the hash of the
    /// bytes that arrived, for a chunk of a range), and that no later peer replaced.
    pub unresolved: Vec<ChunkHash>,
    /// Chunks stored, over all sessions, those that failed later included.
    synced: u64,
}

impl FailoverReport {
    /// Whether a reconciliation reached its end and every chunk it found is now stored.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.walked && self.unresolved.is_empty()
    }

    /// Chunks received, verified and stored, over all peers, including those a session
    /// stored before it failed.
    #[must_use]
    pub const fn synced_chunks(&self) -> u64 {
        self.synced
    }
}

impl Node {
    /// Fetches what this node lacks from the first of `peers` that answers; while chunks
    /// fail (wrong bytes, not found, invalid), reconciles again with the next peer, in
    /// order, until a session ends with none failed or the peers run out. A peer that
    /// cannot be reached or drops the session is skipped. Reconciling again costs what is
    /// still missing, not the store: chunks already stored are not fetched again.
    pub async fn pull_from_any<A: ToSocketAddrs>(
        &self,
        peers: impl IntoIterator<Item = A>,
    ) -> FailoverReport {
        let mut report = FailoverReport {
            attempts: Vec::new(),
            walked: false,
            unresolved: Vec::new(),
            synced: 0,
        };
        for peer in peers {
            // A dropped session may have stored some of them before it ended.
            self.keep_missing(&mut report.unresolved);
            if report.walked && report.unresolved.is_empty() {
                break;
            }
            let attempt = match connect(peer).await {
                Ok((stream, addr)) => self.run_task(stream, Mode::PULL, Vec::new(), addr).await,
                Err(error) => Err(Box::new(Failed {
                    report: SyncReport::empty(),
                    error,
                })),
            };
            let attempt = match attempt {
                Ok(session) => {
                    report.synced += session.progress.synced_chunks;
                    report.walked = true;
                    report.unresolved = session.failed.iter().map(|(id, _)| *id).collect();
                    Ok(session)
                }
                Err(failed) => {
                    report.synced += failed.report.progress.synced_chunks;
                    Err(failed.error)
                }
            };
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
