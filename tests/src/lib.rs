//! A deterministic network simulator for chunk-sync sessions, in virtual time.
//!
//! [`Net`] holds nodes (each a store of chunks) and connections between them; each
//! connection carries one [`Conduit`] per end (the driving layer the shipped adapters run)
//! over two byte streams with a latency. The simulator plays the adapter's part, carrying
//! out each action, and when nothing can move it jumps time to the next deadline or
//! delivery, so no test ever sleeps.

use std::collections::{BTreeMap, VecDeque};

use chunk_sync_core::claims::ClaimTable;
use chunk_sync_core::conduit::{Action, Budget, Buffers, Conduit, Limits};
use chunk_sync_core::recon::{self, KeyRange};
use chunk_sync_core::session::{Config, Error, FailReason, Session, Stored};
use chunk_sync_core::store::scan;
use chunk_sync_core::{
    ChunkHash, Duration, EventBuf, EventChunkStore, Instant, NodeId, Privacy, Span,
};
use chunk_sync_tokio::{MemStore, NodeStore, VerifiedChunk};

/// Ranges per query and answer of simulated sessions.
pub const RANGES: usize = 64;
/// Requests in flight of simulated sessions.
pub const REQ: usize = 8;
/// The session type the simulator drives.
pub type SimSession = Session<RANGES, REQ>;
/// The conduit the simulator drives: the one the shipped adapters drive, over growable
/// buffers.
pub type SimConduit = Conduit<'static, Vec<u8>, RANGES, REQ>;

/// A node: its chunks, by hash.
#[derive(Debug, Default, Clone)]
pub struct Node {
    /// The chunks this node holds.
    pub store: BTreeMap<ChunkHash, Vec<u8>>,
    /// If set, this node corrupts every chunk piece it serves.
    pub lies: bool,
    /// Ranges its sessions are fetching, shared by them as in a tokio node.
    claims: ClaimTable<SIM_CLAIMS>,
}

/// Claims a simulated node records at once.
const SIM_CLAIMS: usize = 256;

/// What a simulated session shares with the other sessions of its node: no bandwidth
/// limit, and the node's claims.
struct SimBudget<'a> {
    claims: &'a mut ClaimTable<SIM_CLAIMS>,
    session: u64,
}

impl Budget for SimBudget<'_> {
    fn next_ready(&mut self, _: Instant) -> Option<Instant> {
        None
    }
    fn consume(&mut self, _: Instant, _: u64) {}
    fn claim(&mut self, range: &KeyRange, now: Instant) -> bool {
        self.claims.claim(self.session, range, now)
    }
    fn release(&mut self, origin: NodeId, hi: u64) {
        self.claims.release_range(self.session, origin, hi);
    }
}

impl Node {
    /// A node holding the chunks of `count` public events of `origin`, `per_chunk` per chunk.
    #[must_use]
    pub fn with_log(origin: NodeId, count: u64, per_chunk: usize, payload: usize) -> Self {
        let chunks = EventChunkStore::new(per_chunk);
        let created = chunks
            .create_chunks(&log(origin, count, payload))
            .expect("valid log");
        Self {
            store: created.into_iter().map(|c| (c.id, c.bytes)).collect(),
            ..Self::default()
        }
    }

    /// [`with_log`](Self::with_log) of the log of `keys`, each chunk signed by it, as a
    /// secure peer requires.
    ///
    /// # Panics
    /// As [`with_log`](Self::with_log).
    #[must_use]
    pub fn with_signed_log(
        keys: &chunk_sync_core::secure::Keypair,
        count: u64,
        per_chunk: usize,
        payload: usize,
    ) -> Self {
        let chunks = EventChunkStore::new(per_chunk).with_signer(keys.clone());
        let created = chunks
            .create_chunks(&log(keys.node_id(), count, payload))
            .expect("valid log");
        Self {
            store: created.into_iter().map(|c| (c.id, c.bytes)).collect(),
            ..Self::default()
        }
    }

    /// The sorted hashes held.
    #[must_use]
    pub fn ids(&self) -> Vec<ChunkHash> {
        self.store.keys().copied().collect()
    }

    /// The spans of the chunks held, as the core's [`scan`] reads them.
    fn spans(&self) -> impl Iterator<Item = (Span, &ChunkHash)> + '_ {
        self.store
            .iter()
            .filter_map(|(id, bytes)| Span::of(bytes).map(|s| (s, id)))
    }

    /// A memory store of the tokio adapter holding these chunks, each verified on the way
    /// in.
    ///
    /// # Panics
    /// If a chunk does not match its hash (a simulated node's chunks always do).
    #[must_use]
    pub fn mem_store(&self) -> MemStore {
        let store = MemStore::new();
        for (id, bytes) in &self.store {
            let chunk = VerifiedChunk::new(*id, bytes.clone()).expect("own chunks verify");
            store.insert(chunk).expect("no memory limit");
        }
        store
    }
}

/// `count` public events of `origin` with `payload`-byte bodies.
#[must_use]
pub fn log(origin: NodeId, count: u64, payload: usize) -> Vec<EventBuf> {
    (0..count)
        .map(|seq| EventBuf {
            origin,
            seq,
            timestamp: seq,
            kind: "sim".into(),
            privacy: Privacy::Public,
            payload: (0..payload)
                .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8)
                .collect(),
        })
        .collect()
}

/// One end of a connection: the conduit every adapter drives, and the simulated
/// transport and store around it.
#[derive(Debug)]
pub struct End {
    /// The index of the node this end belongs to.
    pub node: usize,
    /// The session's number in its node, for its claims.
    session: u64,
    /// The conduit.
    pub conduit: SimConduit,
    /// Bytes delivered, not yet taken by the conduit.
    inbox: Vec<u8>,
    /// The chunk being served.
    serving: Vec<u8>,
    /// Bytes of chunks this end received, verified and stored.
    pub chunk_bytes_received: u64,
    /// How the session ended, once it has.
    pub outcome: Option<Result<(), Error>>,
    /// Chunks that could not be fetched, and why.
    pub failed: Vec<(ChunkHash, FailReason)>,
    /// If set, what this end sends is lost (a peer heard by nobody).
    pub silent: bool,
    /// The deadline of the conduit's last wait.
    deadline: Option<Instant>,
    /// Chunks stored since the simulator last took them, with their spans and whether
    /// they were new to the node.
    stored: Vec<(ChunkHash, Span, bool)>,
}

impl End {
    /// The session.
    #[must_use]
    pub const fn session(&self) -> &SimSession {
        self.conduit.session()
    }

    /// Whether the session is over.
    #[must_use]
    pub const fn is_closed(&self) -> bool {
        self.outcome.is_some()
    }

    /// Carries out the conduit's actions until it waits or closes; returns the bytes it
    /// sent and whether anything happened.
    fn pump(&mut self, node: &mut Node, now: Instant) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut moved = false;
        while self.outcome.is_none() {
            let mut budget = SimBudget {
                claims: &mut node.claims,
                session: self.session,
            };
            match self.conduit.poll_with(now, &mut budget) {
                Action::Send { frame, piece, .. } => {
                    moved = true;
                    let start = out.len();
                    out.extend_from_slice(frame);
                    if let Some(p) = piece {
                        let at = out.len();
                        let range = p.offset as usize..(p.offset + p.len) as usize;
                        out.extend_from_slice(&self.serving[range]);
                        if node.lies {
                            out[at] ^= 0x55;
                        }
                    }
                    self.conduit.written(now, out.len() - start);
                }
                Action::Summarize { range, runs } => {
                    let page = |r: &KeyRange, out: &mut [(Span, ChunkHash)]| {
                        Ok::<_, ()>(scan::chunks_in(out, r, || node.spans()))
                    };
                    if let Ok((summary, n)) = recon::summarize(&range, runs, page) {
                        let _ = self.conduit.summarized(&summary, n);
                    }
                }
                Action::Origins { after, out } => {
                    let (n, last) = scan::origins_after(out, after, || node.spans());
                    let _ = self.conduit.origins(n, last);
                }
                Action::ReadFirst(range) => {
                    let mut first = [(Span::default(), ChunkHash::default())];
                    if scan::chunks_in(&mut first, &range, || node.spans()) == 1 {
                        let (span, id) = first[0];
                        self.serving.clone_from(&node.store[&id]);
                        let _ = self.conduit.serve_in_range(&span, self.serving.len());
                    } else {
                        let _ = self.conduit.not_found();
                    }
                }
                Action::List { range, out } => {
                    let n = scan::chunks_in(out, &range, || node.spans());
                    let _ = self.conduit.listed(n);
                }
                Action::Read(id) => match node.store.get(&id) {
                    Some(bytes) => {
                        self.serving.clone_from(bytes);
                        let _ = self.conduit.serve(bytes.len());
                    }
                    None => {
                        let _ = self.conduit.not_found();
                    }
                },
                Action::Store(chunk) => {
                    moved = true;
                    self.chunk_bytes_received += chunk.bytes().len() as u64;
                    let new = node
                        .store
                        .insert(chunk.id(), chunk.bytes().to_vec())
                        .is_none();
                    if let Some(span) = Span::of(chunk.bytes()) {
                        self.stored.push((chunk.id(), span, new));
                    }
                    let _ = self.conduit.stored(Stored::Kept);
                }
                Action::ChunkFailed { hash, reason } => self.failed.push((hash, reason)),
                Action::Wait(wait) => {
                    self.deadline = wait.deadline;
                    if !wait.read || self.inbox.is_empty() {
                        break;
                    }
                    moved = true;
                    let n = self.conduit.receive(&self.inbox);
                    self.inbox.drain(..n);
                }
                Action::Closed(outcome) => {
                    moved = true;
                    self.outcome = Some(outcome);
                    node.claims.release(self.session);
                }
                _ => {}
            }
        }
        if self.silent {
            out.clear();
        }
        (out, moved)
    }
}

/// A connection: two ends and the bytes in flight each way.
#[derive(Debug)]
pub struct Conn {
    /// The two ends.
    pub ends: [End; 2],
    /// Bytes in flight towards each end, with their delivery time.
    in_flight: [VecDeque<(Instant, Vec<u8>)>; 2],
    /// One-way latency.
    pub latency: Duration,
    /// Once this many bytes have been sent over the connection (both ways), it is cut.
    pub cut_after: Option<u64>,
    sent: u64,
    /// Whether the connection was cut.
    pub cut: bool,
    /// Bytes each end sent.
    pub sent_by: [u64; 2],
}

/// Nodes, connections and a virtual clock.
#[derive(Debug, Default)]
pub struct Net {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The connections.
    pub conns: Vec<Conn>,
    /// Virtual time.
    pub now: Instant,
    /// Lost segments, if any: each write is, with some probability, delivered a
    /// retransmission timeout late (the transport is a reliable stream).
    pub loss: Option<Loss>,
}

/// Seeded loss on every connection of a [`Net`].
#[derive(Debug, Clone)]
pub struct Loss {
    /// The chance, in parts per million, that a write is lost once.
    pub per_million: u64,
    /// How late a lost write arrives.
    pub retransmit: Duration,
    /// The generator's state (xorshift64).
    pub state: u64,
}

impl Loss {
    /// The extra delay of the next write.
    fn delay(&mut self) -> Duration {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        if self.state % 1_000_000 < self.per_million {
            self.retransmit
        } else {
            Duration::ZERO
        }
    }
}

impl Net {
    /// Adds a node and returns its index.
    pub fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Connects nodes `a` and `b` with sessions configured by `config` (node ids are the
    /// node indices) and returns the connection's index.
    pub fn connect(
        &mut self,
        a: usize,
        b: usize,
        latency: Duration,
        config: impl Fn(NodeId) -> Config,
    ) -> usize {
        let session = self.conns.len() as u64 * 2;
        let end = |node: usize, side: u64| End {
            node,
            session: session + side,
            conduit: Conduit::new(
                config(NodeId(node as u64)),
                self.now,
                Buffers {
                    receive: Vec::new(),
                    transmit: Vec::new(),
                    reassembly: Vec::new(),
                },
                Limits::new(),
            )
            .expect("valid config"),
            inbox: Vec::new(),
            serving: Vec::new(),
            chunk_bytes_received: 0,
            outcome: None,
            failed: Vec::new(),
            silent: false,
            deadline: None,
            stored: Vec::new(),
        };
        self.conns.push(Conn {
            ends: [end(a, 0), end(b, 1)],
            in_flight: [VecDeque::new(), VecDeque::new()],
            latency,
            cut_after: None,
            sent: 0,
            cut: false,
            sent_by: [0; 2],
        });
        self.conns.len() - 1
    }

    /// Runs until every session is closed, or until `limit` of virtual time has passed.
    /// Returns the virtual time taken.
    pub fn run(&mut self, limit: Duration) -> Duration {
        let start = self.now;
        while self.now - start < limit {
            let mut moved = false;
            for c in 0..self.conns.len() {
                moved |= self.step(c);
            }
            let closed = |e: &End| e.is_closed() || (e.silent && e.session().error().is_some());
            if self
                .conns
                .iter()
                .all(|c| c.cut || c.ends.iter().all(closed))
            {
                break;
            }
            if !moved {
                let Some(next) = self.next_wakeup() else {
                    break;
                };
                self.now = self.now.max(next);
                for conn in self.conns.iter_mut().filter(|c| !c.cut) {
                    for end in &mut conn.ends {
                        end.conduit.handle_timeout(self.now);
                    }
                }
            }
        }
        self.now - start
    }

    fn next_wakeup(&self) -> Option<Instant> {
        (0..self.conns.len()).filter_map(|c| self.wakeup(c)).min()
    }

    /// One round for connection `c`; returns whether anything happened.
    fn step(&mut self, c: usize) -> bool {
        let now = self.now;
        let conn = &mut self.conns[c];
        if conn.cut {
            return false;
        }
        let mut moved = false;
        for side in 0..2 {
            while conn.in_flight[side]
                .front()
                .is_some_and(|(at, _)| *at <= now)
            {
                let (_, bytes) = conn.in_flight[side].pop_front().expect("checked");
                conn.ends[side].inbox.extend_from_slice(&bytes);
                moved = true;
            }
            let end = &mut conn.ends[side];
            let (out, pumped) = end.pump(&mut self.nodes[end.node], now);
            moved |= pumped;
            if !out.is_empty() {
                conn.sent += out.len() as u64;
                conn.sent_by[side] += out.len() as u64;
                let mut at = now + conn.latency;
                if let Some(loss) = &mut self.loss {
                    at += loss.delay();
                }
                // The stream stays in order: nothing overtakes what was sent before it.
                if let Some(&(last, _)) = conn.in_flight[1 - side].back() {
                    at = at.max(last);
                }
                conn.in_flight[1 - side].push_back((at, out));
            }
        }
        if conn.cut_after.is_some_and(|limit| conn.sent >= limit) {
            conn.cut = true;
        }
        moved
    }
}

pub mod live;

/// How many chunks `end` reported failed for `reason`.
#[must_use]
pub fn failed_chunks(end: &End, reason: FailReason) -> usize {
    end.failed.iter().filter(|(_, r)| *r == reason).count()
}
