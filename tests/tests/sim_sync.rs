//! Sessions simulated in virtual time: convergence, faults and limits.

use chunk_sync_core::session::{Config, Error, FailReason};
use chunk_sync_core::wire::Message;
use chunk_sync_core::{Duration, NodeId, ThrottleConfig};
use chunk_sync_tests::{Net, Node, failed_chunks};
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const LIMIT: Duration = Duration::from_secs(3600);

fn default_config(id: NodeId) -> Config {
    Config::new(id)
}

fn union(net: &Net) -> Vec<chunk_sync_core::ChunkHash> {
    let mut all: Vec<_> = net.nodes.iter().flat_map(Node::ids).collect();
    all.sort();
    all.dedup();
    all
}

fn assert_complete(net: &Net) {
    for conn in &net.conns {
        for end in &conn.ends {
            assert!(
                end.session().is_complete(),
                "session of node {} ended with {:?}",
                end.node,
                end.session().error()
            );
            assert_eq!(end.outcome, Some(Ok(())));
        }
    }
}

#[test]
fn two_nodes_converge_to_the_union() {
    let mut net = Net::default();
    let a = net.add(Node::with_log(NodeId(10), 250, 10, 100));
    let b = net.add(Node::with_log(NodeId(11), 120, 7, 300));
    let (a_bytes, b_bytes): (u64, u64) = (
        net.nodes[a].store.values().map(|c| c.len() as u64).sum(),
        net.nodes[b].store.values().map(|c| c.len() as u64).sum(),
    );
    let expected = union(&net);
    net.connect(a, b, ms(5), default_config);
    net.run(LIMIT);
    assert_complete(&net);
    assert_eq!(net.nodes[a].ids(), expected);
    assert_eq!(net.nodes[b].ids(), expected);
    // Each side received exactly the other's chunks, once.
    let ends = &net.conns[0].ends;
    assert_eq!(ends[0].chunk_bytes_received, b_bytes);
    assert_eq!(ends[1].chunk_bytes_received, a_bytes);
    assert_eq!(ends[0].session().progress().synced_chunks, 18);
    assert!(ends[0].session().progress().is_complete());
}

#[test]
fn three_nodes_with_overlapping_sets_converge() {
    let mut net = Net::default();
    let shared = Node::with_log(NodeId(1), 100, 10, 64);
    let mut a = shared.clone();
    a.store.extend(Node::with_log(NodeId(2), 40, 10, 64).store);
    let mut b = shared.clone();
    b.store.extend(Node::with_log(NodeId(3), 55, 10, 64).store);
    let mut c = Node::with_log(NodeId(4), 33, 5, 64);
    c.store
        .extend(shared.store.iter().take(4).map(|(k, v)| (*k, v.clone())));
    let (a, b, c) = (net.add(a), net.add(b), net.add(c));
    let expected = union(&net);
    net.connect(a, b, ms(3), default_config);
    net.connect(b, c, ms(7), default_config);
    net.connect(a, c, ms(11), default_config);
    net.run(LIMIT);
    assert_complete(&net);
    for node in &net.nodes {
        assert_eq!(node.ids(), expected);
    }
}

#[test]
fn small_frames_carry_chunks_in_pieces() {
    let mut net = Net::default();
    let a = net.add(Node::with_log(NodeId(1), 60, 20, 200)); // chunks of ~4 KiB
    let b = net.add(Node::default());
    net.connect(a, b, MS, |id| Config {
        max_frame: 256,
        ..Config::new(id)
    });
    net.run(LIMIT);
    assert_complete(&net);
    assert_eq!(net.nodes[b].ids(), net.nodes[a].ids());
    let stats = net.conns[0].ends[0].session().stats();
    let chunk_bytes: usize = net.nodes[a].store.values().map(Vec::len).sum();
    assert!(
        stats.frames_sent as usize >= chunk_bytes / Message::piece_capacity(256),
        "chunks travelled in many frames"
    );
}

#[test]
fn a_lying_peer_is_refused_and_an_honest_one_serves() {
    let mut net = Net::default();
    let mut liar = Node::with_log(NodeId(1), 30, 10, 50);
    liar.lies = true;
    let mut honest = liar.clone();
    honest.lies = false;
    let (liar, honest) = (net.add(liar), net.add(honest));
    let me = net.add(Node::default());
    net.connect(me, liar, MS, default_config);
    net.run(LIMIT);
    assert_complete(&net);
    assert!(
        net.nodes[me].store.is_empty(),
        "no unverified byte is ever stored"
    );
    // Its chunks come for a range, so their hashes are computed on arrival: each corrupted
    // one is no valid chunk, and is not asked for again.
    let end = &net.conns[0].ends[0];
    assert_eq!(failed_chunks(end, FailReason::Invalid), 3);
    assert_eq!(end.session().progress().failed_chunks, 3);

    net.connect(me, honest, MS, default_config);
    net.run(LIMIT);
    assert_eq!(net.nodes[me].ids(), net.nodes[honest].ids());
}

#[test]
fn a_cut_connection_resumes_without_refetching() {
    let mut net = Net::default();
    let a = net.add(Node::with_log(NodeId(1), 400, 10, 200));
    let b = net.add(Node::default());
    // The server sends at 20 KB/s, so that the range it serves is under way at the cut.
    let throttled = |id| Config {
        throttle: if id == NodeId(0) {
            ThrottleConfig::per_second(20_000)
        } else {
            ThrottleConfig::UNLIMITED
        },
        ..Config::new(id)
    };
    let first = net.connect(a, b, ms(2), throttled);
    net.conns[first].cut_after = Some(40_000);
    net.run(LIMIT);
    assert!(net.conns[first].cut);
    let stored_before = net.nodes[b].store.len();
    assert!(stored_before > 0 && stored_before < net.nodes[a].store.len());
    let remaining: u64 = net.nodes[a]
        .store
        .iter()
        .filter(|(id, _)| !net.nodes[b].store.contains_key(*id))
        .map(|(_, c)| c.len() as u64)
        .sum();

    let second = net.connect(a, b, ms(2), default_config);
    net.conns[first].ends[0].silent = true;
    net.run(LIMIT);
    assert_eq!(net.nodes[b].ids(), net.nodes[a].ids());
    assert_eq!(
        net.conns[second].ends[1].chunk_bytes_received, remaining,
        "no chunk travelled twice"
    );
}

#[test]
fn a_silent_peer_times_out() {
    let mut net = Net::default();
    let a = net.add(Node::with_log(NodeId(1), 10, 10, 10));
    let b = net.add(Node::default());
    let c = net.connect(a, b, MS, |id| Config {
        idle_timeout: Duration::from_secs(5),
        ..Config::new(id)
    });
    net.conns[c].ends[1].silent = true;
    let took = net.run(LIMIT);
    assert_eq!(
        net.conns[c].ends[0].session().error(),
        Some(Error::TimedOut)
    );
    // The node times out at 5 s; the run ends when the silent side's own timer fires, one
    // latency later.
    assert_eq!(took, Duration::from_secs(5) + MS);
}

#[test]
fn the_throttle_limits_the_sender_in_virtual_time() {
    let mut net = Net::default();
    let a = net.add(Node::with_log(NodeId(1), 200, 10, 500)); // about 100 KB of chunks
    let b = net.add(Node::default());
    let rate = 10_000;
    net.connect(a, b, MS, |id| Config {
        throttle: if id == NodeId(0) {
            ThrottleConfig::per_second(rate)
        } else {
            ThrottleConfig::UNLIMITED
        },
        ..Config::new(id)
    });
    let took = net.run(LIMIT);
    assert_complete(&net);
    let sent = net.conns[0].ends[0].session().stats().bytes_sent;
    // Sends are admitted while the current one-second window has room; the window where
    // the last send goes out is not over when the transfer ends. So the bytes sent lie
    // between `rate × time` and that plus one window's budget and one frame.
    let paced = rate * took.as_micros() / 1_000_000;
    let frame = 10_000 + 100;
    assert!(
        paced <= sent && sent <= paced + rate + frame,
        "{sent} bytes in {took}"
    );
    assert!(
        took >= Duration::from_secs(9),
        "about 100 KB at 10 KB/s takes about 9 s: {took}"
    );
}

#[test]
fn a_throttled_transfer_longer_than_the_idle_timeout_completes() {
    // One chunk of about 100 KB at 10 KB/s: the sender hears nothing from the receiver for
    // ten seconds while it sends; both sides have a 3-second idle timeout.
    let mut net = Net::default();
    let a = net.add(Node::with_log(NodeId(1), 200, 200, 500));
    let b = net.add(Node::default());
    net.connect(a, b, MS, |id| Config {
        max_frame: 4096,
        idle_timeout: Duration::from_secs(3),
        throttle: if id == NodeId(0) {
            ThrottleConfig::per_second(10_000)
        } else {
            ThrottleConfig::UNLIMITED
        },
        ..Config::new(id)
    });
    let took = net.run(LIMIT);
    assert_complete(&net);
    assert!(took >= Duration::from_secs(9), "{took}");
    assert_eq!(net.nodes[b].ids(), net.nodes[a].ids());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any two sets, any latency and frame size: both sides end with the union.
    #[test]
    fn any_two_sets_converge(
        a_events in 0u64..150,
        b_events in 0u64..150,
        shared in 0u64..100,
        latency_ms in 0u64..50,
        frame in prop::sample::select(vec![256u32, 1024, 65536]),
        window in 1u16..10,
    ) {
        let mut net = Net::default();
        let common = Node::with_log(NodeId(9), shared, 10, 120);
        let mut a = Node::with_log(NodeId(1), a_events, 10, 120);
        a.store.extend(common.store.clone());
        let mut b = Node::with_log(NodeId(2), b_events, 10, 120);
        b.store.extend(common.store);
        let (a, b) = (net.add(a), net.add(b));
        let expected = union(&net);
        net.connect(a, b, ms(latency_ms), |id| Config { max_frame: frame, window, ..Config::new(id) });
        net.run(LIMIT);
        for end in &net.conns[0].ends {
            prop_assert!(end.session().is_complete(), "{:?}", end.session().error());
        }
        prop_assert_eq!(net.nodes[a].ids(), expected.clone());
        prop_assert_eq!(net.nodes[b].ids(), expected);
    }
}
