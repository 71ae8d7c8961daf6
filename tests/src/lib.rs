//! A deterministic network simulator for chunk-sync sessions, in virtual time.
//!
//! [`Net`] holds nodes (each a store of chunks) and connections between them; each
//! connection carries one [`Session`] per end over two byte streams with a latency. The
//! driver plays the adapter's part exactly as the `Session` docs prescribe (inputs, then
//! transmits, timeouts and events), and when nothing can move it jumps time to the next
//! deadline or delivery, so no test ever sleeps.

use std::collections::{BTreeMap, VecDeque};

use chunk_sync_core::session::{Config, Event, FailReason, Session, Transmit};
use chunk_sync_core::{ChunkHash, Duration, EventBuf, EventChunkStore, Instant, NodeId, Privacy};
use chunk_sync_tokio::{MemStore, NodeStore, VerifiedChunk};

/// Manifest page capacity of simulated sessions.
pub const PAGE: usize = 64;
/// Requests in flight of simulated sessions.
pub const REQ: usize = 8;
/// The session type the simulator drives.
pub type SimSession = Session<PAGE, REQ>;

/// A node: its chunks, by hash.
#[derive(Debug, Default, Clone)]
pub struct Node {
    /// The chunks this node holds.
    pub store: BTreeMap<ChunkHash, Vec<u8>>,
    /// If set, this node corrupts every chunk piece it serves.
    pub lies: bool,
}

impl Node {
    /// A node holding the chunks of `count` public events of `origin`, `per_chunk` per chunk.
    #[must_use]
    pub fn with_log(origin: NodeId, count: u64, per_chunk: usize, payload: usize) -> Self {
        let mut chunks = EventChunkStore::new(per_chunk);
        let created = chunks
            .create_chunks(&log(origin, count, payload))
            .expect("valid log");
        Self {
            store: created.into_iter().map(|c| (c.id, c.bytes)).collect(),
            lies: false,
        }
    }

    /// The sorted hashes held.
    #[must_use]
    pub fn ids(&self) -> Vec<ChunkHash> {
        self.store.keys().copied().collect()
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

/// One end of a connection.
#[derive(Debug)]
pub struct End {
    /// The index of the node this end belongs to.
    pub node: usize,
    /// The session.
    pub session: SimSession,
    rx: Vec<u8>,
    assembling: Vec<u8>,
    /// Bytes of chunk data this end received in pieces.
    pub chunk_bytes_received: u64,
    /// Every event this end's session emitted.
    pub events: Vec<Event>,
    /// If set, this end never sends anything (a silent peer).
    pub silent: bool,
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
        let end = |node: usize| End {
            node,
            session: Session::new(config(NodeId(node as u64)), self.now).expect("valid config"),
            rx: Vec::new(),
            assembling: Vec::new(),
            chunk_bytes_received: 0,
            events: Vec::new(),
            silent: false,
        };
        self.conns.push(Conn {
            ends: [end(a), end(b)],
            in_flight: [VecDeque::new(), VecDeque::new()],
            latency,
            cut_after: None,
            sent: 0,
            cut: false,
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
            let closed =
                |e: &End| e.session.is_closed() || (e.silent && e.session.error().is_some());
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
                for conn in &mut self.conns {
                    for end in &mut conn.ends {
                        end.session.handle_timeout(self.now);
                    }
                }
            }
        }
        self.now - start
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.conns
            .iter()
            .filter(|c| !c.cut)
            .flat_map(|c| {
                let deliveries = c
                    .in_flight
                    .iter()
                    .filter_map(|q| q.front().map(|(at, _)| *at));
                let timers = c.ends.iter().filter_map(|e| e.session.poll_timeout());
                deliveries.chain(timers).collect::<Vec<_>>()
            })
            .min()
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
            // Deliveries.
            while conn.in_flight[side]
                .front()
                .is_some_and(|(at, _)| *at <= now)
            {
                let (_, bytes) = conn.in_flight[side].pop_front().expect("checked");
                conn.ends[side].rx.extend_from_slice(&bytes);
                moved = true;
            }
            let end = &mut conn.ends[side];
            let node = &mut self.nodes[end.node];
            moved |= feed_input(end, node, now);
            moved |= answer_events(end, node);
            if !end.silent {
                let out = transmit(end, node, now);
                if !out.is_empty() {
                    moved = true;
                    conn.sent += out.len() as u64;
                    conn.in_flight[1 - side].push_back((now + conn.latency, out));
                }
            }
            let n = conn.ends[side].node;
            moved |= answer_events(&mut conn.ends[side], &mut self.nodes[n]);
        }
        if conn.cut_after.is_some_and(|limit| conn.sent >= limit) {
            conn.cut = true;
        }
        moved
    }
}

fn feed_input(end: &mut End, node: &mut Node, now: Instant) -> bool {
    let mut moved = false;
    while !end.rx.is_empty() {
        let Ok(handled) = end.session.handle_input(now, &end.rx) else {
            // A failed session reads nothing more: the transport would be closed.
            end.rx.clear();
            return true;
        };
        if handled.consumed == 0 {
            return moved;
        }
        moved = true;
        if let Some(piece) = handled.piece {
            end.chunk_bytes_received += piece.data.len() as u64;
            end.assembling.extend_from_slice(piece.data);
            if piece.last {
                let bytes = std::mem::take(&mut end.assembling);
                if let Ok(verified) = end.session.finish_chunk(&bytes) {
                    node.store.insert(verified.id(), verified.bytes().to_vec());
                }
            }
        }
        end.rx.drain(..handled.consumed);
    }
    moved
}

fn answer_events(end: &mut End, node: &mut Node) -> bool {
    let mut moved = false;
    while let Some(event) = end.session.poll_event() {
        moved = true;
        match event {
            Event::LookupNeeded => {
                end.session
                    .resolve_lookups(|id| node.store.contains_key(id))
                    .expect("lookups pending");
            }
            Event::ManifestPageNeeded { after, limit } => {
                use std::ops::Bound::{Excluded, Unbounded};
                let from = after.map_or(Unbounded, Excluded);
                let mut ids: Vec<ChunkHash> = node
                    .store
                    .range((from, Unbounded))
                    .map(|(id, _)| *id)
                    .take(limit + 1)
                    .collect();
                let last = ids.len() <= limit;
                ids.truncate(limit);
                end.session
                    .send_manifest_page(&ids, last)
                    .expect("valid page");
            }
            Event::ChunkRequested { hash } => match node.store.get(&hash) {
                Some(bytes) => end
                    .session
                    .serve_chunk(&hash, bytes.len())
                    .expect("requested"),
                None => end.session.chunk_not_found(&hash).expect("requested"),
            },
            _ => {}
        }
        end.events.push(event);
    }
    moved
}

fn transmit(end: &mut End, node: &Node, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; SimSession::max_transmit_len()];
    while let Ok(Some(Transmit { len, piece })) = end.session.poll_transmit(now, &mut buf) {
        out.extend_from_slice(&buf[..len]);
        if let Some(p) = piece {
            let chunk = &node.store[&p.hash];
            let start = out.len();
            out.extend_from_slice(&chunk[p.offset as usize..(p.offset + p.len) as usize]);
            if node.lies {
                out[start] ^= 0x55;
            }
        }
    }
    out
}

/// Whether `end` reported a failed chunk for `reason`.
#[must_use]
pub fn failed_chunks(end: &End, reason: FailReason) -> usize {
    end.events
        .iter()
        .filter(|e| matches!(e, Event::ChunkFailed { reason: r, .. } if *r == reason))
        .count()
}
