//! Live replication in the simulator: sessions that stay open, nodes that append to their
//! logs while they run and relay what they store to their other peers, for networks of
//! thousands of connections. Only the connections with something due are stepped, so a
//! run costs what happens in it, not the size of the network times its duration.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::{ChunkHash, Instant, Span};

use crate::Net;

impl Net {
    /// Stores `bytes` (a chunk sealed by the node) on node `node` at the current time and
    /// announces it on each of the node's live sessions.
    ///
    /// # Panics
    /// If `bytes` is not a chunk.
    pub fn append(&mut self, node: usize, bytes: Vec<u8>) -> ChunkHash {
        let id = ChunkHash::of(&bytes);
        let span = Span::of(&bytes).expect("a chunk");
        self.nodes[node].store.insert(id, bytes);
        for conn in &mut self.conns {
            for end in conn.ends.iter_mut().filter(|e| e.node == node) {
                end.conduit.announce(range_of(span));
            }
        }
        id
    }

    /// Runs live sessions until `until` (virtual time), calling `stored(node, id, now)` for
    /// each chunk a node stores from a peer; a node announces each chunk new to it on its
    /// other sessions, as the tokio node does.
    pub fn run_live(&mut self, until: Instant, mut stored: impl FnMut(usize, ChunkHash, Instant)) {
        // Each node's connections, and which end is its.
        let mut adjacent: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.nodes.len()];
        for (c, conn) in self.conns.iter().enumerate() {
            for (side, end) in conn.ends.iter().enumerate() {
                adjacent[end.node].push((c, side));
            }
        }
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        let mut scheduled: Vec<Option<Instant>> = vec![None; self.conns.len()];
        let mut now_list: Vec<usize> = (0..self.conns.len()).collect();
        let mut listed = vec![true; self.conns.len()];
        let mut spins = 0u64;
        loop {
            while let Some(c) = now_list.pop() {
                listed[c] = false;
                while self.step(c) {}
                for side in 0..2 {
                    let end = &mut self.conns[c].ends[side];
                    let node = end.node;
                    for (id, span, new) in std::mem::take(&mut end.stored) {
                        stored(node, id, self.now);
                        if !new {
                            // Fetched from two peers at once: announced with the first.
                            continue;
                        }
                        for &(other, other_side) in &adjacent[node] {
                            if other == c {
                                continue;
                            }
                            let e = &mut self.conns[other].ends[other_side];
                            if e.conduit.announce(range_of(span)) && !listed[other] {
                                listed[other] = true;
                                now_list.push(other);
                            }
                        }
                    }
                }
                if let Some(at) = self.wakeup(c).filter(|t| scheduled[c] != Some(*t)) {
                    scheduled[c] = Some(at);
                    due.push(Reverse((at, c)));
                }
            }
            // The next connection with something due: a delivery or a timer.
            let Some(Reverse((at, c))) = due.pop() else {
                return;
            };
            if at > until {
                self.now = self.now.max(until);
                return;
            }
            if scheduled[c] != Some(at) {
                continue;
            }
            scheduled[c] = None;
            // A deadline that passes and changes nothing would be a conduit that never
            // lets time go on: fail rather than spin.
            if at <= self.now {
                spins += 1;
                assert!(
                    spins < 1_000_000,
                    "time stopped at {:?} on connection {c}",
                    self.now
                );
            } else {
                spins = 0;
            }
            self.now = self.now.max(at);
            for end in &mut self.conns[c].ends {
                end.conduit.handle_timeout(self.now);
            }
            if !listed[c] {
                listed[c] = true;
                now_list.push(c);
            }
        }
    }

    /// When connection `c` next has something to do.
    pub(crate) fn wakeup(&self, c: usize) -> Option<Instant> {
        let conn = &self.conns[c];
        if conn.cut {
            return None;
        }
        let deliveries = conn
            .in_flight
            .iter()
            .filter_map(|q| q.front().map(|(at, _)| *at));
        let timers = conn
            .ends
            .iter()
            .filter(|e| !e.is_closed())
            .filter_map(|e| e.deadline);
        deliveries.chain(timers).min()
    }
}

/// The key range that holds the chunk of `span`.
const fn range_of(span: Span) -> KeyRange {
    KeyRange {
        origin: span.origin,
        lo: span.first_seq,
        hi: span.end_seq,
    }
}
