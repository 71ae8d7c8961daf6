//! Live replication across a thousand simulated nodes, in virtual time: each node keeps
//! live sessions with k random others (seeded latencies and loss), one node appends to its
//! log, and every node must end up holding every chunk, each fetched once.
//!
//! `cargo test -p chunk-sync-tests --test sim_live -- --nocapture` prints the figures
//! the README quotes.

use std::collections::{BTreeMap, BTreeSet};

use chunk_sync_core::session::Config;
use chunk_sync_core::{ChunkHash, Duration, EventChunkStore, Instant, NodeId};
use chunk_sync_tests::{Loss, Net, Node, log};

const NODES: usize = 1_000;
const CHUNKS: u64 = 20;
const EVENTS_PER_CHUNK: u64 = 10;
const APPEND_EVERY: Duration = Duration::from_millis(100);

/// A small seeded generator (xorshift64) for the network's shape and latencies.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn live(id: NodeId) -> Config {
    Config {
        live: true,
        ..Config::new(id)
    }
}

/// What one run measured.
struct Figures {
    /// Per chunk: the time from its append until the last node held it.
    to_all: Vec<Duration>,
    /// Per (node, chunk): the time from the append until that node held it.
    to_each: Vec<Duration>,
    /// Bytes each node sent.
    sent: Vec<u64>,
    /// Chunks a node stored more than once.
    twice: usize,
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

/// `NODES` nodes, connected in a random tree (so that the network is connected) plus
/// random edges up to `k` sessions per node on average; latencies of 5 to 50 ms; 1% of
/// writes lost once and delivered 200 ms late.
fn run(k: usize, seed: u64) -> Figures {
    let mut rng = Rng(seed);
    let mut net = Net {
        loss: Some(Loss {
            per_million: 10_000,
            retransmit: Duration::from_millis(200),
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
        }),
        ..Net::default()
    };
    for _ in 0..NODES {
        net.add(Node::default());
    }
    let mut edges = BTreeSet::new();
    for i in 1..NODES {
        edges.insert((rng.below(i as u64) as usize, i));
    }
    while edges.len() < NODES * k / 2 {
        let (a, b) = (
            rng.below(NODES as u64) as usize,
            rng.below(NODES as u64) as usize,
        );
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    for &(a, b) in &edges {
        let latency = Duration::from_millis(5 + rng.below(46));
        net.connect(a, b, latency, live);
    }
    // Every handshake and first reconciliation done.
    let mut now = Instant::ZERO + Duration::from_secs(2);
    net.run_live(now, |_, _, _| {});

    let chunker = EventChunkStore::new(EVENTS_PER_CHUNK as usize);
    let events = log(NodeId(0), CHUNKS * EVENTS_PER_CHUNK, 40);
    let chunks = chunker.create_chunks(&events).expect("valid log");
    let mut appended: BTreeMap<ChunkHash, Instant> = BTreeMap::new();
    let mut held: BTreeMap<(usize, ChunkHash), Instant> = BTreeMap::new();
    let mut twice = 0;
    let mut record = |node: usize, id: ChunkHash, at: Instant| {
        if held.insert((node, id), at).is_some() {
            twice += 1;
        }
    };
    for chunk in chunks {
        appended.insert(chunk.id, net.now);
        net.append(0, chunk.bytes);
        now += APPEND_EVERY;
        net.run_live(now, &mut record);
    }
    net.run_live(now + Duration::from_secs(30), &mut record);

    for node in 1..NODES {
        for id in appended.keys() {
            assert!(
                net.nodes[node].store.contains_key(id),
                "node {node} lacks chunk {id} (k = {k})"
            );
        }
    }
    let mut to_each: Vec<Duration> = held
        .iter()
        .map(|((_, id), at)| *at - appended[id])
        .collect();
    to_each.sort();
    let mut to_all: Vec<Duration> = appended
        .iter()
        .map(|(id, t)| {
            (1..NODES)
                .map(|n| held[&(n, *id)] - *t)
                .max()
                .unwrap_or(Duration::ZERO)
        })
        .collect();
    to_all.sort();
    let mut sent = vec![0u64; NODES];
    for conn in &net.conns {
        for (side, end) in conn.ends.iter().enumerate() {
            sent[end.node] += conn.sent_by[side];
            assert_eq!(end.outcome, None, "live sessions stay open");
        }
    }
    sent.sort_unstable();
    Figures {
        to_all,
        to_each,
        sent,
        twice,
    }
}

#[test]
fn a_thousand_live_nodes_converge_on_what_one_appends() {
    println!(
        "| k | every node holds a chunk, p50 | p99 | one node holds it, p50 | p99 | bytes sent per node, median | max | fetched twice |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (k, seed) in [(2, 1), (4, 2), (8, 3)] {
        let f = run(k, seed);
        let ms = |d: Duration| format!("{:.0} ms", d.as_micros() as f64 / 1e3);
        println!(
            "| {k} | {} | {} | {} | {} | {} | {} | {} |",
            ms(pct(&f.to_all, 50)),
            ms(pct(&f.to_all, 99)),
            ms(pct(&f.to_each, 50)),
            ms(pct(&f.to_each, 99)),
            f.sent[NODES / 2],
            f.sent[NODES - 1],
            f.twice
        );
        // Two neighbours that announce a chunk at once: the node's sessions claim the
        // range before they ask for it, so one fetches it and the other finds it stored.
        // A claim that lapses (a slow link) may let a chunk come twice, rarely.
        assert!(
            f.twice <= NODES * CHUNKS as usize / 100,
            "{} chunks fetched twice",
            f.twice
        );
    }
}

#[test]
fn a_live_session_cut_mid_stream_resumes_without_refetching() {
    let mut net = Net::default();
    let (a, b) = (net.add(Node::default()), net.add(Node::default()));
    let first = net.connect(a, b, Duration::from_millis(20), live);
    // Cut once a few chunks went across.
    net.conns[first].cut_after = Some(3_000);
    let mut now = Instant::ZERO + Duration::from_secs(1);
    net.run_live(now, |_, _, _| {});
    let chunker = EventChunkStore::new(EVENTS_PER_CHUNK as usize);
    let chunks = chunker
        .create_chunks(&log(NodeId(0), 30 * EVENTS_PER_CHUNK, 40))
        .expect("valid log");
    let ids: Vec<ChunkHash> = chunks.iter().map(|c| c.id).collect();
    let mut stored: BTreeMap<ChunkHash, usize> = BTreeMap::new();
    let mut record = |node: usize, id: ChunkHash, _: Instant| {
        if node == b {
            *stored.entry(id).or_default() += 1;
        }
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        net.append(a, chunk.bytes);
        now += APPEND_EVERY;
        net.run_live(now, &mut record);
        if i == 20 {
            // The transport went away mid-stream; the nodes connect again.
            assert!(net.conns[first].cut, "cut before the end");
            let before = net.nodes[b].store.len();
            assert!(
                before > 0 && before < 21,
                "{before} chunks came over the first connection"
            );
            net.connect(a, b, Duration::from_millis(20), live);
        }
    }
    net.run_live(now + Duration::from_secs(5), &mut record);
    assert!(ids.iter().all(|id| net.nodes[b].store.contains_key(id)));
    assert!(
        stored.values().all(|&n| n == 1),
        "fetched twice: {stored:?}"
    );
}

#[test]
fn a_node_offered_the_same_chunks_by_two_peers_fetches_each_once_and_closes_cleanly() {
    let offered = Node::with_log(NodeId(0), 500, 10, 40);
    for (lat_a, lat_b) in [(1, 1), (1, 7), (9, 2), (20, 20)] {
        for close_after in [0u64, 3, 10, 25, 60, 400] {
            let mut net = Net::default();
            let (a, b) = (net.add(offered.clone()), net.add(offered.clone()));
            let c = net.add(Node::default());
            let ca = net.connect(c, a, Duration::from_millis(lat_a), live);
            let cb = net.connect(c, b, Duration::from_millis(lat_b), live);
            let mut times_stored: BTreeMap<ChunkHash, usize> = BTreeMap::new();
            let mut record = |node: usize, id: ChunkHash, _: Instant| {
                if node == c {
                    *times_stored.entry(id).or_default() += 1;
                }
            };
            let close = net.now + Duration::from_millis(close_after);
            net.run_live(close, &mut record);
            for conn in [ca, cb] {
                net.conns[conn].ends[0].conduit.close();
            }
            let end = net.now + Duration::from_secs(5);
            net.run_live(end, &mut record);
            let case = format!("latencies {lat_a}/{lat_b} ms, closed after {close_after} ms");
            for conn in [ca, cb] {
                for e in &net.conns[conn].ends {
                    assert_eq!(e.outcome, Some(Ok(())), "{case}: node {}", e.node);
                }
            }
            assert!(
                times_stored.values().all(|&n| n == 1),
                "{case}: {times_stored:?}"
            );
            if close_after >= 400 {
                assert_eq!(net.nodes[c].store.len(), 50, "{case}");
            }
        }
    }
}
