//! The session driver: one task per connection that carries out the core
//! [`Conduit`]'s actions: socket reads and vectored writes, store calls, one reused timer.
//! Every protocol decision is the conduit's; the loop is [`Driver::exchange`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chunk_sync_core::conduit::{Action, Buffers, Conduit, Limits};
use chunk_sync_core::progress::SyncProgress as CoreProgress;
use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::secure::Access;
use chunk_sync_core::session::{self, Config, ConfigError, FailReason, Stored};
use chunk_sync_core::{ChunkHash, NodeId, Span, wire};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::{Error, StoreError};
use crate::events::NodeEvent;
use crate::output::{MAX_IOV, Output};
use crate::progress::{SyncProgress, SyncReport};
use crate::shared::Shared;
use crate::store::VerifiedChunk;
use crate::writes::{Writes, Written};

/// Ranges of one query or answer of host sessions (and of the ranges waiting): 128
/// summaries fill at most 7.3 KB of a 64 KiB frame.
pub(crate) const HOST_RANGES: usize = 128;
/// Requests in flight (each way) of host sessions.
pub(crate) const HOST_REQ: usize = 64;
/// Runs per range summary of host sessions: an origin with up to 16 holes in a range is
/// settled without splitting it.
pub(crate) const HOST_RUNS: usize = 16;
/// The most untrusted origins a session names (in its log and its report): a peer may
/// offer any number, and each is left out all the same.
pub(crate) const MAX_UNTRUSTED_NAMED: usize = 256;
/// The conduit host nodes drive.
pub(crate) type HostConduit<'w> = Conduit<'w, Vec<u8>, HOST_RANGES, HOST_REQ, HOST_RUNS>;
/// Bytes queued for the transport before the conduit hands out more, on a secure link
/// (whose records are sealed copies).
const HIGH_WATER: usize = 256 << 10;
/// The same on a plaintext link, where pieces of 4 KiB and more are shared with the store,
/// not copied: more of them per write keeps a fast link busy (the 256 MiB sync bench runs
/// about a quarter faster than with [`HIGH_WATER`]).
const PLAIN_HIGH_WATER: usize = 1 << 20;
/// Receive buffer of a busy session (or one frame, if larger).
const RX_BUFFER: usize = 256 << 10;
/// Receive buffer of a new session: it grows to `RX_BUFFER` when a frame needs it, so that
/// idle connections cost little.
const RX_INITIAL: usize = 4 << 10;
/// Bytes of verified chunks not yet written (queued, and being written) by a blocking
/// store, past which the conduit stops reading until the store catches up.
const MAX_UNWRITTEN: usize = 32 << 20;
/// How long a session that failed on its store may take to tell the peer.
const LINGER: chunk_sync_core::Duration = chunk_sync_core::Duration::from_secs(1);
/// The same, for tokio's timers.
const LINGER_STD: std::time::Duration = std::time::Duration::from_micros(LINGER.as_micros());

/// A host conduit for `config`, starting now, fetching `wanted`; over a secure link if the
/// node is secure, as the handshake's responder if the peer connected to this node.
pub(crate) fn conduit<'w>(
    config: Config,
    shared: &Shared,
    wanted: &'w [ChunkHash],
    accepted: bool,
) -> Result<Box<HostConduit<'w>>, ConfigError> {
    let buffers = Buffers {
        receive: vec![0; RX_INITIAL],
        transmit: Vec::new(),
        reassembly: Vec::new(),
    };
    let limits = Limits {
        backlog: if shared.security.is_some() {
            HIGH_WATER
        } else {
            PLAIN_HIGH_WATER
        },
        receive: RX_BUFFER,
        unstored: MAX_UNWRITTEN,
        linger: LINGER,
    };
    // Boxed at once: a host session is about 200 KiB, too much to move around a stack.
    let now = shared.clock.now();
    let mut conduit = match &shared.security {
        None => Conduit::new(config, now, buffers, limits).map(Box::new)?,
        Some(security) => {
            use chunk_sync_core::secure::{Handshake, Role};
            let role = if accepted {
                Role::Responder
            } else {
                Role::Initiator
            };
            let entropy = crate::security::entropy()
                .map_err(|_| ConfigError::SecureLink("the system's random source failed"))?;
            let handshake = Handshake::new(&security.keys, role, entropy);
            let mut conduit = Conduit::new_secure(config, now, buffers, limits, handshake)?;
            // Signatures are checked with each batch's writes, on every core.
            conduit.defer_seal_checks();
            Box::new(conduit)
        }
    };
    conduit.fetch(wanted);
    Ok(conduit)
}

struct Driver<'s, 'w> {
    shared: &'s Arc<Shared>,
    conduit: Box<HostConduit<'w>>,
    out: Output,
    /// The chunk being served: the conduit names byte ranges of it.
    serving: Bytes,
    writes: Writes,
    /// Told when the node falls back under its bound on unwritten bytes.
    freed: watch::Receiver<u64>,
    failed: Vec<(ChunkHash, FailReason)>,
    /// Origins the peer offered whose keys this node does not trust (the first
    /// [`MAX_UNTRUSTED_NAMED`]).
    untrusted: BTreeSet<NodeId>,
    /// Hashes the peer listed, in a listing.
    listed: Vec<ChunkHash>,
    /// The store failure that aborted the session.
    store_error: Option<StoreError>,
    /// The progress last published.
    published: Option<CoreProgress>,
    started: tokio::time::Instant,
    /// The listener's id for this connection, if it was accepted by one.
    conn: Option<u64>,
    /// Whether the peer connected to this node (its key must be allowed), or this node to
    /// it.
    accepted: bool,
    /// The peer's address, for a TCP session.
    addr: Option<SocketAddr>,
    /// Live sessions: the node's events, for the chunks stored through other sessions
    /// (and sealed here) that the peer is to hear of.
    stored: Option<broadcast::Receiver<NodeEvent>>,
    /// Set when the node shuts down.
    closing: watch::Receiver<bool>,
    /// Set when the application removes this peer.
    stop: Option<watch::Receiver<bool>>,
    /// Whether the conduit was told to close.
    close_asked: bool,
    /// The session's number, for its claims on ranges it fetches.
    claims: Claims<'s>,
}

/// A session's claims on ranges, released when it ends (or its future is dropped).
struct Claims<'s> {
    shared: &'s Shared,
    session: u64,
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        self.shared.release_claims(self.session);
    }
}

/// Where a session runs and what may end it, beside the peer.
#[derive(Default)]
pub(crate) struct Context {
    /// The listener's id for this connection, if it was accepted by one.
    pub(crate) conn: Option<u64>,
    /// The session answers as an accepted connection does, on a stream no listener
    /// accepted (a serial line whose other end initiates the handshake).
    pub(crate) answering: bool,
    /// The peer's address, for a TCP session.
    pub(crate) addr: Option<SocketAddr>,
    /// Set when the application removes this peer (live sessions).
    pub(crate) stop: Option<watch::Receiver<bool>>,
}

impl Context {
    /// Whether the peer connected to this node (a listener accepted it, or the session
    /// answers one on a stream): its key must then be allowed.
    pub(crate) const fn accepted(&self) -> bool {
        self.conn.is_some() || self.answering
    }
}

/// Runs `conduit` over `io` until it closes; returns what the session did, and how it
/// ended.
pub(crate) async fn drive<IO: AsyncRead + AsyncWrite>(
    io: IO,
    conduit: Box<HostConduit<'_>>,
    shared: &Arc<Shared>,
    context: Context,
) -> (SyncReport, Result<(), Error>) {
    // Subscribed before the handshake: what is stored after it is announced, what is
    // stored before it the peer's first reconciliation sees.
    let stored = conduit
        .session()
        .config()
        .live
        .then(|| shared.events.subscribe());
    let mut d = Driver {
        shared,
        writes: Writes::new(shared.store.as_ref(), &shared.unwritten),
        freed: shared.unwritten.subscribe(),
        conduit,
        out: Output::default(),
        serving: Bytes::new(),
        failed: Vec::new(),
        untrusted: BTreeSet::new(),
        listed: Vec::new(),
        store_error: None,
        published: None,
        started: tokio::time::Instant::now(),
        conn: context.conn,
        accepted: context.accepted(),
        addr: context.addr,
        stored,
        closing: shared.closing.subscribe(),
        stop: context.stop,
        close_asked: false,
        claims: Claims {
            shared,
            session: shared.new_session(),
        },
    };
    let (mut reader, mut writer) = tokio::io::split(io);
    let result = d.exchange(&mut reader, &mut writer).await;
    // Whatever was verified is kept, even when the session ended badly.
    d.write_remaining().await;
    d.publish();
    let report = SyncReport {
        peer: d.conduit.peer().map(|h| h.node_id),
        progress: SyncProgress::from_core(d.conduit.progress(), d.started),
        stats: *d.conduit.stats(),
        failed: d.failed,
        untrusted: d.untrusted.into_iter().collect(),
        listed: d.listed,
    };
    (report, result)
}

impl Driver<'_, '_> {
    /// Carries out the conduit's actions until it closes.
    async fn exchange<R, W>(&mut self, reader: &mut R, writer: &mut W) -> Result<(), Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed = None;
        // Read from the clock after every wait and every call that may take long, not
        // for each action: the actions between two waits take microseconds.
        let mut now = self.shared.clock.now();
        loop {
            let action = self.conduit.poll_serving(
                now,
                Some(&mut self.shared.budget(self.claims.session)),
                &self.serving,
            );
            let wait = match action {
                Action::Send { frame, piece, .. } => {
                    self.out.push_copy(frame);
                    if let Some(piece) = piece {
                        let at = piece.offset as usize;
                        self.out
                            .push(self.serving.slice(at..at + piece.len as usize));
                    }
                    continue;
                }
                Action::Summarize { range, runs } => {
                    match self.shared.store.summarize(&range, runs) {
                        Ok((summary, n)) => {
                            let _ = self.conduit.summarized(&summary, n);
                        }
                        Err(e) => self.store_failed(e),
                    }
                    now = self.shared.clock.now();
                    continue;
                }
                Action::Origins { after, out } => {
                    match self.shared.store.origins_after(after, out) {
                        Ok((n, last)) => {
                            let _ = self.conduit.origins(n, last);
                        }
                        Err(e) => self.store_failed(e),
                    }
                    now = self.shared.clock.now();
                    continue;
                }
                Action::ReadFirst(range) => {
                    match self.shared.store.first_in(&range) {
                        Ok(Some((span, bytes))) => {
                            let len = bytes.len();
                            self.serving = bytes;
                            let _ = self.conduit.serve_in_range(&span, len);
                        }
                        Ok(None) => {
                            let _ = self.conduit.not_found();
                        }
                        Err(e) => self.store_failed(e),
                    }
                    continue;
                }
                Action::List { range, out } => {
                    match self.shared.store.chunks_in(&range, out) {
                        Ok(n) => {
                            let _ = self.conduit.listed(n);
                        }
                        Err(e) => self.store_failed(e),
                    }
                    now = self.shared.clock.now();
                    continue;
                }
                Action::Listed(ids) => {
                    self.listed.extend(wire::ids_of(ids).into_iter().flatten());
                    if self.listed.len() > crate::MAX_LISTED {
                        warn!("the peer lists more chunks than a listing keeps; ending it");
                        self.conduit.abort();
                    }
                    continue;
                }
                Action::Read(id) => {
                    match self.shared.store.get(&id) {
                        Ok(Some(bytes)) => {
                            let len = bytes.len();
                            self.serving = bytes;
                            let _ = self.conduit.serve(len);
                        }
                        Ok(None) => {
                            let _ = self.conduit.not_found();
                        }
                        Err(e) => self.store_failed(e),
                    }
                    continue;
                }
                Action::Store(chunk) => {
                    // The conduit has just hashed exactly these bytes: take them as they are.
                    let id = chunk.id();
                    if let Ok(bytes) = self.conduit.keep(self.writes.spare()) {
                        self.writes
                            .queue(VerifiedChunk::trusted(id, Bytes::from(bytes)), None);
                    }
                    continue;
                }
                Action::StoreUnsealed { chunk, check } => {
                    // Its signature is checked before the batch it joins is written.
                    let id = chunk.id();
                    if let Ok(bytes) = self.conduit.keep(self.writes.spare()) {
                        let chunk = VerifiedChunk::trusted(id, Bytes::from(bytes));
                        self.writes.queue(chunk, Some(check));
                    }
                    continue;
                }
                Action::Authorize(key) => {
                    let accepted = self.accepted;
                    let access = self
                        .shared
                        .security
                        .as_ref()
                        .map_or(Access::NONE, |s| s.peers.access(&key, accepted));
                    if access.is_none() {
                        info!(%key, "refused a peer key this node does not allow");
                    } else {
                        debug!(%key, ?access, "peer key authenticated");
                    }
                    let _ = self.conduit.authorize(access);
                    continue;
                }
                Action::OriginKey(origin) => {
                    let key = self
                        .shared
                        .security
                        .as_ref()
                        .and_then(|s| s.peers.origin_key(origin));
                    if key.is_none()
                        && self.untrusted.len() < MAX_UNTRUSTED_NAMED
                        && self.untrusted.insert(origin)
                    {
                        info!(%origin, "left out an origin whose key this node does not trust");
                    }
                    let _ = self.conduit.origin_key(origin, key);
                    continue;
                }
                Action::Connected(peer) => {
                    debug!(%peer, "connected");
                    if let Some(id) = self.conn {
                        self.shared.connections.handshaken(id);
                    }
                    if !self.conduit.session().is_live() {
                        self.stored = None;
                    }
                    self.shared.events.send(NodeEvent::PeerConnected {
                        peer,
                        addr: self.addr,
                    });
                    continue;
                }
                Action::ChunkFailed { hash, reason } => {
                    self.failed_chunk(hash, reason);
                    continue;
                }
                Action::Shutdown => {
                    // A transport whose shutdown waits on the peer (TLS) waits no longer
                    // than the linger.
                    let _ = tokio::time::timeout(LINGER_STD, writer.shutdown()).await;
                    continue;
                }
                Action::Closed(outcome) => {
                    let _ = tokio::time::timeout(LINGER_STD, async {
                        writer.flush().await?;
                        writer.shutdown().await
                    })
                    .await;
                    return self.result(outcome);
                }
                Action::Wait(wait) => wait,
                _ => continue,
            };
            // Verified chunks go to the store when the conduit has nothing else to do, so
            // that chunks that arrived together are written together.
            if let Some(written) = self.writes.start(self.shared) {
                self.written(Ok(written));
                now = self.shared.clock.now();
                continue;
            }
            self.publish();
            if let Some(deadline) = wait.deadline.map(|t| self.shared.clock.to_tokio(t))
                && armed != Some(deadline)
            {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            let mut iov = [std::io::IoSlice::new(&[]); MAX_IOV];
            let slices = self.out.slices(&mut iov);
            let writing = !self.out.is_empty();
            tokio::select! {
                read = reader.read(self.conduit.receive_buffer()), if wait.read && self.writes.has_room() => match read {
                    Ok(0) => self.conduit.eof(),
                    Ok(n) => self.conduit.received(n),
                    Err(e) => return Err(self.io_failed(e)),
                },
                written = writer.write_vectored(&iov[..slices]), if writing => match written {
                    Ok(n) => {
                        self.out.consume(n);
                        self.conduit.written(self.shared.clock.now(), n);
                    }
                    Err(e) => return Err(self.io_failed(e)),
                },
                joined = self.writes.join(), if self.writes.busy() => self.written(joined),
                // Paused by the node's bound on unwritten bytes, which another session's
                // writes may lift.
                () = crate::writes::node_freed(&mut self.freed), if wait.read && self.writes.node_full() => {}
                event = next_event(&mut self.stored), if self.stored.is_some() => {
                    self.on_node_event(event);
                }
                () = closed(&mut self.closing, &mut self.stop), if self.live() && !self.close_asked => {
                    debug!("closing the live session");
                    self.conduit.close();
                    self.close_asked = true;
                }
                () = &mut timer, if wait.deadline.is_some() => {
                    armed = None;
                    self.conduit.handle_timeout(self.shared.clock.now());
                }
                else => {
                    // Nothing to wait for: cannot happen, since the conduit always asks to
                    // read, write or wait unless it is closing.
                    self.conduit.abort();
                    return Err(Error::Protocol(session::Error::Aborted));
                }
            }
            now = self.shared.clock.now();
        }
    }

    /// Whether the session was asked to be live (the peer may not agree).
    fn live(&self) -> bool {
        self.conduit.session().config().live
    }

    /// The peer's node id, once its `Hello` came.
    fn peer(&self) -> Option<NodeId> {
        self.conduit.peer().map(|h| h.node_id)
    }

    /// Announces to the peer what the node stored through another session or sealed.
    fn on_node_event(&mut self, event: Result<NodeEvent, RecvError>) {
        match event {
            Ok(NodeEvent::ChunkStored { span, from, .. })
                if from.is_none() || from != self.peer() =>
            {
                let range = KeyRange {
                    origin: span.origin,
                    lo: span.first_seq,
                    hi: span.end_seq,
                };
                self.conduit.announce(range);
            }
            Ok(_) => {}
            // Events were missed: the peer reconciles again.
            Err(RecvError::Lagged(missed)) => {
                debug!(
                    missed,
                    "announcements lagged; asking the peer to reconcile again"
                );
                self.conduit.announce_all();
            }
            Err(RecvError::Closed) => self.stored = None,
        }
    }

    /// The session's outcome as the node's result.
    fn result(&mut self, outcome: Result<(), session::Error>) -> Result<(), Error> {
        let Err(e) = outcome else {
            return Ok(());
        };
        // The store's failure is the cause, however the session then ended.
        if let Some(store) = self.store_error.take() {
            return Err(Error::Store(store));
        }
        Err(match e {
            session::Error::Stalled => Error::Stalled,
            session::Error::Closed => Error::Closed,
            e => Error::Protocol(e),
        })
    }

    /// A transport failure, unless the store failed first (then the peer may well have
    /// reset the connection after reading the `Error` frame).
    fn io_failed(&mut self, e: std::io::Error) -> Error {
        match self.store_error.take() {
            Some(store) => Error::Store(store),
            None => Error::Io(e),
        }
    }

    /// A store failure aborts the session: the peer is told with an `Error` frame rather
    /// than a dropped connection.
    fn store_failed(&mut self, e: StoreError) {
        warn!(error = %e, "store failed; aborting the session");
        self.conduit.abort();
        self.store_error.get_or_insert(e);
    }

    fn failed_chunk(&mut self, hash: ChunkHash, reason: FailReason) {
        warn!(%hash, %reason, "chunk could not be fetched from this peer");
        self.failed.push((hash, reason));
    }

    /// A batch came back from the store: each chunk is acknowledged to the conduit.
    fn written(&mut self, joined: Result<Written, tokio::task::JoinError>) {
        let (batch, refused, result) = match joined {
            Ok(done) => done,
            Err(e) => return self.store_failed(e.into()),
        };
        // Refused whatever the store did: their signatures do not hold.
        for (chunk, reason) in refused {
            self.conduit.kept_refused(chunk.bytes().len());
            self.failed_chunk(chunk.id(), reason);
            self.writes.recycle(chunk.into_bytes());
        }
        let inserted = match result {
            Ok(inserted) => inserted,
            Err(e) => return self.store_failed(e),
        };
        let forks: HashSet<ChunkHash> = inserted.forks.iter().map(|f| f.refused).collect();
        // Chunks the store held already came from another peer too (or twice in this
        // batch): they were announced when first stored, and are not again, which would
        // echo through the network. Each copy held skips one announcement; at most one
        // copy of a chunk is new.
        let mut held: HashMap<ChunkHash, usize> = HashMap::new();
        for id in &inserted.held {
            *held.entry(*id).or_default() += 1;
        }
        for chunk in batch {
            let id = chunk.id();
            let stored = if forks.contains(&id) {
                self.failed_chunk(id, FailReason::Fork);
                Stored::Fork
            } else {
                let was_held = !held.is_empty()
                    && held
                        .get_mut(&id)
                        .filter(|n| **n > 0)
                        .map(|n| *n -= 1)
                        .is_some();
                if let Some(span) = Span::of(chunk.bytes()).filter(|_| !was_held) {
                    self.shared.events.send(NodeEvent::ChunkStored {
                        id,
                        span,
                        from: self.peer(),
                    });
                }
                Stored::Kept
            };
            self.conduit.kept_stored(chunk.bytes().len(), stored);
            self.writes.recycle(chunk.into_bytes());
        }
    }

    /// Writes what is still queued once the session is over.
    async fn write_remaining(&mut self) {
        while !self.writes.is_idle() && self.store_error.is_none() {
            if self.writes.busy() {
                let joined = self.writes.join().await;
                self.written(joined);
            } else if let Some(written) = self.writes.start(self.shared) {
                self.written(Ok(written));
            }
        }
    }

    /// Publishes the session's progress to the node's table, if it changed.
    fn publish(&mut self) {
        let Some(peer) = self.conduit.peer().map(|h| h.node_id) else {
            return;
        };
        let progress = *self.conduit.progress();
        if self.published == Some(progress) {
            return;
        }
        self.published = Some(progress);
        self.shared
            .publish(peer, SyncProgress::from_core(&progress, self.started));
    }
}

/// The next event, for a session that listens to them.
async fn next_event(
    rx: &mut Option<broadcast::Receiver<NodeEvent>>,
) -> Result<NodeEvent, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the node shuts down or the application removes the peer (or their
/// senders are gone).
async fn closed(node: &mut watch::Receiver<bool>, peer: &mut Option<watch::Receiver<bool>>) {
    let peer = async {
        match peer {
            Some(rx) => {
                let _ = rx.wait_for(|stop| *stop).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = node.wait_for(|closing| *closing) => {}
        () = peer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunk_sync_core::NodeId;

    #[test]
    fn a_host_conduit_before_hello_costs_what_the_readme_says() {
        // The README's connection row: 80 KiB of conduit and session (81,712 bytes on
        // 64-bit targets) and a 4 KiB receive buffer.
        let conduit = size_of::<HostConduit<'static>>();
        assert!((78 << 10..=82 << 10).contains(&conduit), "{conduit} bytes");
        assert_eq!(RX_INITIAL, 4 << 10);
    }

    #[test]
    fn a_host_conduit_is_made_within_three_quarters_of_a_tokio_workers_stack() {
        // A tokio worker thread has 2 MiB of stack; an unoptimised build moves the new
        // session several times before it reaches the heap.
        let made = std::thread::Builder::new()
            .stack_size(3 << 19)
            .spawn(|| {
                let config = crate::NodeConfig::new(NodeId(1));
                let shared = Shared::new(
                    config,
                    Box::new(crate::MemStore::new()),
                    chunk_sync_core::Throttle::unlimited(),
                );
                conduit(Config::new(NodeId(1)), &shared, &[], false).is_ok()
            })
            .unwrap()
            .join();
        assert_eq!(made.ok(), Some(true));
    }
}
