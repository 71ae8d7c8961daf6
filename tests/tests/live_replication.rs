//! Live replication over loopback TCP: nodes that append events to their own logs and
//! keep their peers in sync as they happen, relay through each other, reconnect to a peer
//! that comes back, and shut down cleanly.
//!
//! Waits are bounded by `settle` only so that a broken build fails instead of hanging;
//! nothing here asserts how fast anything is (the `live` bench measures that).

use std::net::SocketAddr;
use std::time::Duration;

use chunk_sync_core::{EventBuf, NodeId, Privacy};
use chunk_sync_tokio::{Listener, MemStore, Node, NodeConfig, NodeEvent};
use tokio::sync::broadcast::error::RecvError;

/// A live node: its listener takes live sessions and fetches from the peers connecting.
fn live(id: u64) -> Node {
    let config = NodeConfig {
        live: true,
        accept_pushes: true,
        events_per_chunk: 10,
        seal_delay: Some(Duration::from_millis(10)),
        ..NodeConfig::new(NodeId(id))
    };
    Node::new_insecure_plaintext(config, MemStore::new()).unwrap()
}

fn event(origin: u64, seq: u64, privacy: Privacy) -> EventBuf {
    EventBuf {
        origin: NodeId(origin),
        seq,
        timestamp: 1_000 + seq,
        kind: "reading".into(),
        privacy,
        payload: vec![seq as u8; 24],
    }
}

fn events(origin: u64, seqs: std::ops::Range<u64>) -> Vec<EventBuf> {
    seqs.map(|s| event(origin, s, Privacy::Public)).collect()
}

/// Waits until `done` holds, checking after each event of `node` (and every 50 ms).
async fn settle(node: &Node, mut done: impl FnMut(&Node) -> bool) {
    let mut rx = node.events();
    let wait = async {
        while !done(node) {
            match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                Ok(Ok(_)) | Err(_) | Ok(Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) => return,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("the nodes did not converge");
}

fn len(node: &Node) -> usize {
    node.store().len().unwrap()
}

async fn listen(node: &Node) -> (Listener, SocketAddr) {
    let listener = node.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    (listener, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_on_either_side_reach_the_other_as_they_are_sealed() {
    let (a, b) = (live(1), live(2));
    let (_listener, addr) = listen(&a).await;
    // A has a log before the session; B joins later.
    let appended = a.append_batch(&events(1, 0..25)).await.unwrap();
    assert_eq!(
        (appended.taken, appended.sealed),
        (25, 2),
        "two full ranges sealed"
    );
    assert!(b.add_peer(addr));
    assert!(!b.add_peer(addr), "kept once");
    // The open tail (20..25) is sealed by the delay and travels too.
    settle(&b, |b| len(b) == 3).await;

    // Appended while the session is open, on both sides.
    for seq in 25..40 {
        a.append(event(1, seq, Privacy::Public)).await.unwrap();
    }
    b.append_batch(&events(2, 0..7)).await.unwrap();
    settle(&b, |b| len(b) == 6).await;
    settle(&a, |a| len(a) == 6).await;
    assert_eq!(a.store().ids().unwrap(), b.store().ids().unwrap());
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_relay_along_a_chain_of_nodes() {
    let nodes: Vec<Node> = (1..=4).map(live).collect();
    let mut listeners = Vec::new();
    for pair in nodes.windows(2) {
        let (listener, addr) = listen(&pair[0]).await;
        listeners.push(listener);
        pair[1].add_peer(addr);
    }
    // Appended at both ends: each travels the whole chain, through nodes that only
    // relay.
    nodes[0].append_batch(&events(1, 0..30)).await.unwrap();
    nodes[3].append_batch(&events(4, 0..10)).await.unwrap();
    for n in &nodes {
        n.flush().await.unwrap();
    }
    for n in &nodes {
        settle(n, |n| len(n) == 4).await;
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_comes_back_is_reconnected_and_caught_up() {
    let b = live(2);
    let mut seen = b.events();
    let a = live(1);
    let (listener, addr) = listen(&a).await;
    b.add_peer(addr);
    a.append_batch(&events(1, 0..10)).await.unwrap();
    settle(&b, |b| len(b) == 1).await;

    // A goes away: its listener and sessions are gone.
    drop(listener);
    a.shutdown().await.unwrap();
    drop(a);
    // The same node comes back on the same port, with more of its log.
    let a = live(1);
    let listener = loop {
        match a.listen(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    a.append_batch(&events(1, 0..30)).await.unwrap();
    settle(&b, |b| len(b) == 3).await;
    // B told the application it lost the peer and connected again.
    let mut lost = false;
    let mut connected = 0;
    while let Ok(event) = seen.try_recv() {
        match event {
            NodeEvent::PeerDisconnected { .. } => lost = true,
            NodeEvent::PeerConnected {
                peer: NodeId(1), ..
            } => connected += 1,
            _ => {}
        }
    }
    assert!(lost && connected >= 2, "lost {lost}, connected {connected}");
    drop(listener);
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_report_what_they_could_not_take() {
    let a = live(1);
    let mut batch = events(1, 0..12);
    batch[3].privacy = Privacy::Private;
    batch.push(event(9, 12, Privacy::Public));
    let first = a.append_batch(&batch).await.unwrap();
    assert_eq!(
        (first.taken, first.private, first.refused.len()),
        (12, 1, 1)
    );
    // Sequence numbers already taken (sealed in 0..10, open in 10..12) are counted,
    // never dropped silently.
    let again = a.append_batch(&events(1, 5..15)).await.unwrap();
    assert_eq!(again.late, 7);
    assert_eq!(again.late_range, Some((5, 11)));
    assert_eq!(again.taken, 3);
    // An event larger than a chunk can hold is refused; the log goes on.
    let mut huge = event(1, 20, Privacy::Public);
    huge.payload = vec![0; chunk_sync_tokio::MAX_OWN_CHUNK + 1];
    let refused = a.append(huge).await.unwrap();
    assert_eq!(refused.refused.len(), 1);
    a.flush().await.unwrap();
    // The log continues where the store ends, in a new node over the same store.
    let ids = a.store().ids().unwrap();
    assert_eq!(ids.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_is_no_longer_kept() {
    let (a, b) = (live(1), live(2));
    let (_listener, addr) = listen(&a).await;
    b.add_peer(addr);
    a.append_batch(&events(1, 0..10)).await.unwrap();
    settle(&b, |b| len(b) == 1).await;
    assert!(b.remove_peer(&addr).await);
    assert!(b.peers().is_empty());
    // What A stores now stays on A.
    a.append_batch(&events(1, 10..20)).await.unwrap();
    settle(&a, |a| len(a) == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(len(&b), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_two_peers_offer_the_same_chunks_fetches_each_once() {
    let (a, b, c) = (live(1), live(2), live(3));
    // A and B hold the same 50 chunks: B synced with A once.
    a.append_batch(&events(1, 0..500)).await.unwrap();
    a.flush().await.unwrap();
    let (_la, addr_a) = listen(&a).await;
    let (_lb, addr_b) = listen(&b).await;
    b.sync_with(addr_a).await.unwrap();
    assert_eq!(len(&b), 50);

    // C joins both at once: its two sessions want the same ranges at the same moment,
    // and claim them before asking, so each chunk comes over one of them only.
    c.add_peer(addr_a);
    c.add_peer(addr_b);
    settle(&c, |c| len(c) == 50).await;
    let chunk_bytes: u64 = a
        .store()
        .ids()
        .unwrap()
        .iter()
        .map(|id| a.store().get(id).unwrap().unwrap().len() as u64)
        .sum();
    // Ended, so that each session's progress is final.
    c.shutdown().await.unwrap();
    let received: u64 = c.progress_all().values().map(|p| p.bytes_transferred).sum();
    assert_eq!(received, chunk_bytes, "every chunk came once");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
