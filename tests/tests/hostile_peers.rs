//! What a hostile or careless peer tried against a serving node, over loopback TCP: pushes
//! nobody asked for, junk and forged chunks, a pull that would upload, a client that never
//! reads, a thousand idle connections, a thousand half-open handshakes.

use std::time::Duration;

use chunk_sync_core::session::FailReason;
use chunk_sync_core::wire::{Capabilities, Hello, Message, PROTOCOL_VERSION, encode};
use chunk_sync_core::{ChunkHash, NodeId};
use chunk_sync_tests::{Node as SimNode, log};
use chunk_sync_tokio::{MemStore, Node, NodeConfig, NodeStore, VerifiedChunk};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn node(id: u64, chunks: &SimNode, config: impl FnOnce(NodeConfig) -> NodeConfig) -> Node {
    Node::new_insecure_plaintext(config(NodeConfig::new(NodeId(id))), chunks.mem_store()).unwrap()
}

fn ids(node: &Node) -> Vec<ChunkHash> {
    node.store().ids().unwrap()
}

/// Polls `done` every 10 ms for at most `limit`; whether it came true.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

fn frame(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.frame_len()];
    encode(message, &mut buf).unwrap().to_vec()
}

fn hello(node_id: u64) -> Vec<u8> {
    frame(&Message::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        node_id: NodeId(node_id),
        max_frame: 1 << 20,
        max_requests: 64,
        max_ranges: 64,
        capabilities: Capabilities::ALL,
        max_receive_rate: 0,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_node_takes_no_chunk_from_its_clients_unless_it_accepts_pushes() {
    let server_log = SimNode::with_log(NodeId(1), 50, 10, 32);
    let client_log = SimNode::with_log(NodeId(2), 50, 10, 32);
    let server = node(1, &server_log, |c| c);
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let client = node(2, &client_log, |c| c);
    let report = client.sync_with(listener.local_addr()).await.unwrap();
    assert_eq!(report.progress.synced_chunks, 5, "the client pulled");
    assert_eq!(ids(&server), server_log.ids(), "nothing was pushed");

    let open = node(3, &server_log, |c| NodeConfig {
        accept_pushes: true,
        ..c
    });
    let listener = open.listen("127.0.0.1:0").await.unwrap();
    client.sync_with(listener.local_addr()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || ids(&open).len() == 10).await,
        "asked to, the node fetches from its clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_or_a_fetch_sends_no_chunk_even_to_a_node_that_accepts_pushes() {
    let server_log = SimNode::with_log(NodeId(1), 50, 10, 32);
    let puller_log = SimNode::with_log(NodeId(2), 500, 10, 256);
    let server = node(1, &server_log, |c| NodeConfig {
        accept_pushes: true,
        ..c
    });
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let puller = node(2, &puller_log, |c| c);
    let report = puller.pull_from(listener.local_addr()).await.unwrap();
    assert_eq!(report.progress.synced_chunks, 5);
    let wanted = server_log.ids();
    let fetched = puller
        .fetch_from(listener.local_addr(), wanted)
        .await
        .unwrap();
    for sent in [report.stats.bytes_sent, fetched.stats.bytes_sent] {
        // Hello, manifest requests, Gets, Done: no 2.5 KB chunk of the puller's 50.
        assert!(sent < 2_000, "{sent} bytes sent");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ids(&server), server_log.ids(), "the server got nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_and_forged_chunks_pushed_to_a_node_are_refused() {
    let honest_log = SimNode::with_log(NodeId(1), 20, 10, 32);
    let server = node(1, &honest_log, |c| NodeConfig {
        accept_pushes: true,
        ..c
    });
    let listener = server.listen("127.0.0.1:0").await.unwrap();

    // The client holds junk under its true hash, and a chunk claiming the server's origin
    // and sequence numbers with other events.
    let junk = vec![0xAB_u8; 4096];
    let mut forged_log = log(NodeId(1), 10, 32);
    forged_log[3].payload = b"forged".to_vec();
    let forged = chunk_sync_core::EventChunkStore::new(10)
        .create_chunks(&forged_log)
        .unwrap()
        .remove(0);
    let store = MemStore::new();
    store
        .insert(VerifiedChunk::new(ChunkHash::of(&junk), junk.clone()).unwrap())
        .unwrap();
    store
        .insert(VerifiedChunk::new(forged.id, forged.bytes.clone()).unwrap())
        .unwrap();
    let client = Node::new_insecure_plaintext(NodeConfig::new(NodeId(9)), store).unwrap();
    client.sync_with(listener.local_addr()).await.unwrap();
    // The server's side of the session ends a moment after the client's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&server), honest_log.ids(), "neither was stored");

    // And a puller refuses junk a server sends under its true hash. (Junk has no origin or
    // sequence numbers, so no reconciliation finds it: only a fetch by hash reaches it.)
    let junk_id = ChunkHash::of(&junk);
    let junk_server = Node::new_insecure_plaintext(NodeConfig::new(NodeId(8)), {
        let s = MemStore::new();
        s.insert(VerifiedChunk::new(junk_id, junk).unwrap())
            .unwrap();
        s
    })
    .unwrap();
    let listener = junk_server.listen("127.0.0.1:0").await.unwrap();
    let puller = Node::new_insecure_plaintext(NodeConfig::new(NodeId(7)), MemStore::new()).unwrap();
    let pulled = puller.pull_from(listener.local_addr()).await.unwrap();
    assert_eq!(pulled.progress.total_chunks, 0, "nothing to reconcile");
    let report = puller
        .fetch_from(listener.local_addr(), vec![junk_id])
        .await
        .unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].1, FailReason::Invalid);
    assert!(puller.store().is_empty().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_and_never_reads_is_dropped_after_the_idle_timeout() {
    // One large chunk asked for many times, so that the answers fill every buffer on the
    // way (60 × 900 KiB, about 55 MB per client).
    let big = SimNode::with_log(NodeId(1), 1, 1, 900 << 10);
    let id = big.ids()[0];
    let server = node(1, &big, |c| NodeConfig {
        idle_timeout: Duration::from_secs(1),
        ..c
    });
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
        s.write_all(&hello(100 + i)).await.unwrap();
        for _ in 0..60 {
            s.write_all(&frame(&Message::EventChunkGet { hash: id }))
                .await
                .unwrap();
        }
        clients.push(s);
    }
    assert!(eventually(Duration::from_secs(5), || server.open_connections() == 20).await);
    // The clients still hold their sockets open; the server lets go of them anyway.
    assert!(
        eventually(Duration::from_secs(30), || server.open_connections() == 0).await,
        "{} sessions still held",
        server.open_connections()
    );
    drop(clients);
}

/// The soft limit on open files of this process.
fn open_file_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_neither_pile_up_nor_keep_an_honest_pull_out() {
    let served = SimNode::with_log(NodeId(1), 200, 10, 64);
    let server = node(1, &served, |c| NodeConfig {
        max_connections: 128,
        handshake_timeout: Duration::from_secs(2),
        ..c
    });
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    // Each idle connection costs two descriptors here (both ends are in this process).
    let idle = 1_000.min(open_file_limit().saturating_sub(300) / 2);
    let mut sockets = Vec::new();
    for _ in 0..idle {
        match TcpStream::connect(listener.local_addr()).await {
            Ok(s) => sockets.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    assert!(server.open_connections() <= 128);
    let puller = Node::new_insecure_plaintext(NodeConfig::new(NodeId(2)), MemStore::new()).unwrap();
    pulls_among_then_drops(&server, listener.local_addr(), &puller).await;
    drop(sockets);
}

/// `puller` pulls all 20 chunks from `server` among connections that hold it up; the
/// server never keeps more than its limit of 128, and once its handshake timeout has
/// passed it keeps none of them, whether their peers close or not.
async fn pulls_among_then_drops(server: &Node, addr: std::net::SocketAddr, puller: &Node) {
    let report = tokio::time::timeout(Duration::from_secs(60), puller.pull_from(addr))
        .await
        .expect("the pull completes")
        .unwrap();
    assert_eq!(report.progress.synced_chunks, 20);
    assert!(server.open_connections() <= 128);
    assert!(
        eventually(Duration::from_secs(30), || server.open_connections() == 0).await,
        "{} connections still held",
        server.open_connections()
    );
}

/// A secure node serving its own signed log of 20 chunks, configured by `config`, that
/// lets in one key only; and the node of that key, which takes the chunks of the nodes it
/// dials.
fn secure_server_and_puller(config: impl FnOnce(NodeConfig) -> NodeConfig) -> (Node, Node) {
    use chunk_sync_tokio::{Access, Permissions, Security, generate_keypair};

    let (server_keys, puller_keys) = (generate_keypair().unwrap(), generate_keypair().unwrap());
    let served = SimNode::with_signed_log(&server_keys, 200, 10, 64);
    let server_config = config(NodeConfig::new(server_keys.node_id()));
    let puller_config = NodeConfig::new(puller_keys.node_id());
    let security = Security {
        keys: server_keys,
        peers: Permissions::deny_all().allow(*puller_keys.public(), Access::FULL),
    };
    let server = Node::new(server_config, served.mem_store(), security).unwrap();
    let security = Security {
        keys: puller_keys,
        peers: Permissions::deny_all().trust_dialed(Access::FULL),
    };
    let puller = Node::new(puller_config, MemStore::new(), security).unwrap();
    (server, puller)
}

/// A flood of half-open handshakes at a secure node: each connection sends a valid first
/// Noise message (which makes the node compute and send its answer) and nothing more.
/// The node keeps at most its connection limit, serves an honest secure peer among them,
/// and drops them all at the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_handshakes_keeps_neither_the_connection_limit_nor_an_honest_pull() {
    let (server, puller) = secure_server_and_puller(|c| NodeConfig {
        max_connections: 128,
        handshake_timeout: Duration::from_secs(2),
        ..c
    });
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let half_open = 1_000.min(open_file_limit().saturating_sub(300) / 2);
    let mut sockets = Vec::new();
    for i in 0..half_open {
        let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
        // Noise XX's first message: a length, then an ephemeral key (any 32 bytes).
        let mut first = [i as u8; 34];
        first[..2].copy_from_slice(&[32, 0]);
        // The node may already have dropped this connection for a newer one.
        let _ = s.write_all(&first).await;
        sockets.push(s);
    }
    assert!(server.open_connections() <= 128);
    pulls_among_then_drops(&server, listener.local_addr(), &puller).await;
    drop(sockets);
}

/// A flood of half-open handshakes from one address that goes on while an honest peer
/// from another connects: the connections the flood displaces to make room are its own,
/// so the honest pull completes whatever the flood's rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_displaces_only_its_own_handshakes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let (server, puller) = secure_server_and_puller(|c| NodeConfig {
        max_connections: 4,
        ..c
    });
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, made) = (Arc::clone(&stop), Arc::clone(&made));
        tokio::spawn(async move {
            let mut open = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                // Another loopback address: the flood's own.
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                let Ok(mut s) = socket.connect(addr).await else {
                    continue;
                };
                let _ = s.write_all(&[32, 0, 7, 7, 7]).await;
                open.push_back(s);
                if open.len() > 64 {
                    open.pop_front();
                }
                made.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The flood is under way before the honest peer comes.
    assert!(
        eventually(Duration::from_secs(30), || made.load(Ordering::Relaxed)
            > 100)
        .await
    );
    let before = made.load(Ordering::Relaxed);
    let report = tokio::time::timeout(Duration::from_secs(60), puller.pull_from(addr))
        .await
        .expect("the pull completes")
        .expect("the honest peer keeps its place");
    assert_eq!(report.progress.synced_chunks, 20);
    let during = made.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();
    assert!(during > 0, "the flood went on during the pull");
    assert!(server.open_connections() <= 4);
}
