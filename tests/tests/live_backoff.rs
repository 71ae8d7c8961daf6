//! Reconnecting to a live peer, on tokio's paused clock over loopback TCP: the waits
//! between attempts double from 100 ms towards 30 s with jitter, a peer that comes back is
//! reached at the next attempt and catches up, and a session that stayed up starts the
//! waits over. Only the waits are timed, and in virtual time.

use std::net::SocketAddr;
use std::time::Duration;

use chunk_sync_core::{EventBuf, NodeId, Privacy};
use chunk_sync_tokio::{MemStore, Node, NodeConfig, NodeEvent};
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;

fn live(id: u64) -> Node {
    let config = NodeConfig {
        live: true,
        accept_pushes: true,
        events_per_chunk: 10,
        seal_delay: None,
        // Long enough that the paused clock, which jumps while sockets are quiet, never
        // ends a session between two keep-alives.
        idle_timeout: Duration::from_secs(3_600),
        ..NodeConfig::new(NodeId(id))
    };
    Node::new_insecure_plaintext(config, MemStore::new()).unwrap()
}

/// An address on which nothing listens (for now).
async fn free_addr() -> SocketAddr {
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    probe.local_addr().unwrap()
}

/// The next event `pick` accepts, and when (virtual time) it came.
async fn next<T>(
    events: &mut Receiver<NodeEvent>,
    mut pick: impl FnMut(NodeEvent) -> Option<T>,
) -> (T, Instant) {
    loop {
        let event = events.recv().await.expect("the node's events");
        if let Some(found) = pick(event) {
            return (found, Instant::now());
        }
    }
}

fn connect_failed(event: NodeEvent) -> Option<Duration> {
    match event {
        NodeEvent::ConnectFailed { retry_in, .. } => Some(retry_in),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_retries_with_growing_jittered_waits_and_reaches_a_peer_that_comes_back() {
    let addr = free_addr().await;
    let a = live(1);
    let mut events = a.events();
    assert!(a.add_peer(addr));
    assert!(!a.add_peer(addr), "an address is kept once");

    // Nothing listens: each attempt fails at once, and the next comes after the wait it
    // announced, each step twice the last.
    let (mut wait, mut at) = next(&mut events, connect_failed).await;
    let mut step = Duration::from_millis(100);
    for _ in 0..9 {
        assert!(
            wait >= step / 2 && wait <= step,
            "{wait:?} for a step of {step:?}"
        );
        let (next_wait, next_at) = next(&mut events, connect_failed).await;
        let gap = next_at - at;
        assert!(
            gap >= wait && gap < wait + Duration::from_millis(5),
            "the attempt came {gap:?} after the last, which announced {wait:?}"
        );
        (wait, at) = (next_wait, next_at);
        step *= 2;
    }
    assert!(step > Duration::from_secs(30), "{step:?}");
    let capped = wait;
    assert!(
        capped <= Duration::from_secs(30),
        "the waits stop growing at 30 s: {capped:?}"
    );

    // The peer comes back with chunks of its own: the next attempt reaches it, when due.
    let b = live(2);
    let chunk_of = |origin, seqs: std::ops::Range<u64>| -> Vec<EventBuf> {
        seqs.map(|seq| EventBuf {
            origin: NodeId(origin),
            seq,
            timestamp: seq,
            kind: "t".into(),
            privacy: Privacy::Public,
            payload: vec![1; 8],
        })
        .collect()
    };
    b.append_batch(&chunk_of(2, 0..10)).await.unwrap();
    let _listener = b.listen(addr).await.unwrap();
    let (peer, connected_at) = next(&mut events, |e| match e {
        NodeEvent::PeerConnected { peer, .. } => Some(peer),
        _ => None,
    })
    .await;
    assert_eq!(peer, NodeId(2));
    assert!(connected_at - at >= wait, "not before the wait was over");
    next(&mut events, |e| {
        matches!(
            e,
            NodeEvent::ChunkStored {
                from: Some(NodeId(2)),
                ..
            }
        )
        .then_some(())
    })
    .await;
    assert_eq!(a.store().len().unwrap(), 1, "it caught up");

    // A session that stays up longer than 5 s starts the waits over: once the peer is
    // gone, the node waits at most 100 ms after the session, then at most 200 ms after
    // the first failed attempt (not 30 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    b.shutdown().await.unwrap();
    drop(_listener);
    let (wait, _) = next(&mut events, connect_failed).await;
    assert!(
        wait >= Duration::from_millis(100) && wait <= Duration::from_millis(200),
        "{wait:?}"
    );

    a.shutdown().await.unwrap();
}
