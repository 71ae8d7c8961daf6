//! Secure nodes over real loopback TCP: keys proven by the handshake, permissions per key,
//! and a wire that carries neither payload nor hashes in the clear.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chunk_sync_core::session::Error as SessionError;
use chunk_sync_core::wire::ErrorCode;
use chunk_sync_core::{ChunkHash, NodeId};
use chunk_sync_tests::Node as SimNode;
use chunk_sync_tokio::{
    Access, Error, Keypair, MemStore, Node, NodeConfig, NodeStore, Permissions, Scope, Security,
    VerifiedChunk, generate_keypair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn secure(keys: &Keypair, peers: Permissions, store: MemStore) -> Node {
    let config = NodeConfig {
        accept_pushes: true,
        ..NodeConfig::new(keys.node_id())
    };
    let security = Security {
        keys: keys.clone(),
        peers,
    };
    Node::new(config, store, security).unwrap()
}

fn log_of(keys: &Keypair, events: u64) -> SimNode {
    SimNode::with_signed_log(keys, events, 10, 64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_keys_sync_both_ways() {
    let (ka, kb) = (generate_keypair().unwrap(), generate_keypair().unwrap());
    let (la, lb) = (log_of(&ka, 300), log_of(&kb, 120));
    let a = secure(
        &ka,
        Permissions::deny_all().allow(*kb.public(), Access::FULL),
        la.mem_store(),
    );
    let b = secure(
        &kb,
        Permissions::deny_all().allow(*ka.public(), Access::FULL),
        lb.mem_store(),
    );
    assert_eq!(a.public_key(), Some(*ka.public()));
    let listener = a.listen("127.0.0.1:0").await.unwrap();
    let report = b.sync_with(listener.local_addr()).await.unwrap();
    assert_eq!(report.peer, Some(ka.node_id()));
    let mut union: Vec<ChunkHash> = la.ids().into_iter().chain(lb.ids()).collect();
    union.sort();
    assert_eq!(b.store().ids().unwrap(), union);
    assert_eq!(a.store().ids().unwrap(), union);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_refused_and_gets_nothing() {
    let (ka, kb) = (generate_keypair().unwrap(), generate_keypair().unwrap());
    let la = log_of(&ka, 100);
    let a = secure(&ka, Permissions::deny_all(), la.mem_store());
    let b = secure(&kb, Permissions::open(), MemStore::new());
    let listener = a.listen("127.0.0.1:0").await.unwrap();
    let err = b.pull_from(listener.local_addr()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol(SessionError::Remote(ErrorCode::REFUSED))
        ),
        "{err}"
    );
    assert!(b.store().ids().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_rights_alone_serve_without_taking() {
    let (ka, kb) = (generate_keypair().unwrap(), generate_keypair().unwrap());
    let (la, lb) = (log_of(&ka, 100), log_of(&kb, 50));
    let read_only = Access::PULL;
    let a = secure(
        &ka,
        Permissions::deny_all().allow(*kb.public(), read_only),
        la.mem_store(),
    );
    let b = secure(&kb, Permissions::open(), lb.mem_store());
    let listener = a.listen("127.0.0.1:0").await.unwrap();
    b.sync_with(listener.local_addr()).await.unwrap();
    assert_eq!(a.store().ids().unwrap(), la.ids(), "a took nothing from b");
    assert_eq!(
        b.store().ids().unwrap().len(),
        la.ids().len() + lb.ids().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_peer_fails_the_handshake() {
    let ka = generate_keypair().unwrap();
    let a = secure(&ka, Permissions::open(), log_of(&ka, 30).mem_store());
    let plain = Node::new_insecure_plaintext(NodeConfig::new(NodeId(9)), MemStore::new()).unwrap();
    let listener = a.listen("127.0.0.1:0").await.unwrap();
    let err = plain.pull_from(listener.local_addr()).await.unwrap_err();
    assert!(plain.store().ids().unwrap().is_empty(), "{err}");
}

#[tokio::test]
async fn a_node_id_that_is_not_the_keys_is_refused() {
    let ka = generate_keypair().unwrap();
    let security = Security {
        keys: ka,
        peers: Permissions::open(),
    };
    let err = Node::new(NodeConfig::new(NodeId(5)), MemStore::new(), security).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// Forwards `listen`'s connections to `to`, recording every byte either way.
async fn recording_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wire = Arc::new(Mutex::new(Vec::new()));
    let record = wire.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let outbound = TcpStream::connect(to).await.unwrap();
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
            type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
            let halves: [(Reader, Writer); 2] =
                [(Box::new(ir), Box::new(ow)), (Box::new(or), Box::new(iw))];
            for (mut from, mut to) in halves {
                let wire = record.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 {
                            let _ = to.shutdown().await;
                            break;
                        }
                        wire.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    (addr, wire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_carries_neither_payload_nor_hashes_in_the_clear() {
    let (ka, kb) = (generate_keypair().unwrap(), generate_keypair().unwrap());
    let la = log_of(&ka, 200);
    let a = secure(&ka, Permissions::open(), la.mem_store());
    let b = secure(&kb, Permissions::open(), MemStore::new());
    let listener = a.listen("127.0.0.1:0").await.unwrap();
    let (proxy, wire) = recording_proxy(listener.local_addr()).await;
    b.pull_from(proxy).await.unwrap();
    assert_eq!(b.store().ids().unwrap(), la.ids());
    let wire = wire.lock().unwrap().clone();
    assert!(wire.len() > 200 * 64, "the chunks went through the proxy");
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    for (id, bytes) in &la.store {
        assert!(!contains(&id.as_bytes()[..12]), "a hash in the clear");
        // Any 24 bytes of a chunk's encoding: payload, kinds, sequence numbers.
        for window in bytes.chunks(24).filter(|w| w.len() == 24) {
            assert!(!contains(window), "chunk bytes in the clear");
        }
    }
}

/// On a stream with no connecting side (a pipe here, a serial line on a device), one end
/// answers the handshake the other begins; the answering end's permissions are those of
/// an accepting node, so a key it does not allow is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_over_a_stream_one_end_answers() {
    let (ka, kb) = (generate_keypair().unwrap(), generate_keypair().unwrap());
    let (la, lb) = (log_of(&ka, 40), log_of(&kb, 30));
    let answering = secure(
        &ka,
        Permissions::deny_all().allow(*kb.public(), Access::FULL),
        la.mem_store(),
    );
    let dialing = secure(
        &kb,
        Permissions::deny_all().trust_dialed(Access::FULL),
        lb.mem_store(),
    );
    let (a_end, b_end) = tokio::io::duplex(64 << 10);
    let a = tokio::spawn({
        let node = answering.clone();
        async move { node.live_over_answering(a_end).await }
    });
    let b = tokio::spawn({
        let node = dialing.clone();
        async move { node.live_over(b_end).await }
    });
    let mut union: Vec<ChunkHash> = la.ids().into_iter().chain(lb.ids()).collect();
    union.sort();
    for _ in 0..500 {
        if answering.store().len().unwrap() == union.len()
            && dialing.store().len().unwrap() == union.len()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(answering.store().ids().unwrap(), union);
    assert_eq!(dialing.store().ids().unwrap(), union);
    dialing.shutdown().await.unwrap();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(b.unwrap().peer, Some(ka.node_id()));
    assert_eq!(a.unwrap().peer, Some(kb.node_id()));

    // A key the answering end does not allow: refused, as an accepting node refuses it.
    let stranger = generate_keypair().unwrap();
    let dialing = secure(
        &stranger,
        Permissions::deny_all().trust_dialed(Access::FULL),
        MemStore::new(),
    );
    let (a_end, b_end) = tokio::io::duplex(64 << 10);
    let (a, b) = tokio::join!(
        answering.live_over_answering(a_end),
        dialing.live_over(b_end)
    );
    assert!(
        matches!(a, Err(Error::Protocol(SessionError::Link(_)))),
        "{a:?}"
    );
    assert!(
        matches!(
            b,
            Err(Error::Protocol(SessionError::Remote(ErrorCode::REFUSED)))
        ),
        "{b:?}"
    );
    assert_eq!(dialing.store().len().unwrap(), 0);
}

/// The original document's manager on secure nodes: a delta computed from both manifests
/// and fetched over an authenticated, encrypted link; a cache limit keeps the node secure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_managers_fetch_a_delta() {
    use chunk_sync_tokio::{
        DEFAULT_CACHE_LIMIT, DeltaSyncProtocol, EventChunkSyncManager, ThrottleConfig,
    };

    let (ka, kb) = (generate_keypair().unwrap(), generate_keypair().unwrap());
    let la = log_of(&ka, 50);
    let a = EventChunkSyncManager::try_new_secure(
        Security {
            keys: ka.clone(),
            peers: Permissions::deny_all().allow(*kb.public(), Access::FULL),
        },
        ThrottleConfig::default(),
        DEFAULT_CACHE_LIMIT,
    )
    .unwrap();
    for (id, bytes) in &la.store {
        assert!(a.handle_chunk_put(*id, bytes.clone()).await.unwrap());
    }
    let b = EventChunkSyncManager::try_new_secure(
        Security {
            keys: kb.clone(),
            peers: Permissions::deny_all().trust_dialed(Access::FULL),
        },
        ThrottleConfig::default(),
        DEFAULT_CACHE_LIMIT,
    )
    .unwrap()
    .with_cache_limit(1 << 20);
    assert_eq!(b.node().public_key(), Some(*kb.public()));
    let listener = a.node().listen("127.0.0.1:0").await.unwrap();
    b.add_peer(ka.node_id(), listener.local_addr());
    let (local, remote) = (
        b.local_hashes().await.unwrap(),
        b.remote_hashes(ka.node_id()).await.unwrap(),
    );
    let delta = DeltaSyncProtocol::new(&b);
    let missing = delta.compute_delta(&local, &remote).await;
    assert_eq!(missing.len(), la.store.len());
    delta
        .request_missing_chunks(ka.node_id(), missing)
        .await
        .unwrap();
    assert_eq!(b.local_hashes().await.unwrap(), la.ids());
}

/// a's log reaches c through b; c fetches it only while it trusts a's whole key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_passes_on_signed_chunks_to_a_node_that_trusts_their_origin() {
    let (ka, kb, kc) = (
        generate_keypair().unwrap(),
        generate_keypair().unwrap(),
        generate_keypair().unwrap(),
    );
    let la = log_of(&ka, 40);
    let b = secure(&kb, Permissions::open(), la.mem_store());
    let listener = b.listen("127.0.0.1:0").await.unwrap();

    let stranger = secure(&kc, Permissions::open(), MemStore::new());
    let chunk_bytes: usize = la.store.values().map(Vec::len).sum();
    for _ in 0..2 {
        // Every sync: nothing fetched, only the origin named.
        let report = stranger.pull_from(listener.local_addr()).await.unwrap();
        assert!(stranger.store().ids().unwrap().is_empty(), "nothing stored");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.untrusted, [ka.node_id()]);
        assert!(
            report.stats.bytes_received < chunk_bytes as u64 / 4,
            "{} bytes received for {chunk_bytes} bytes of chunks not fetched",
            report.stats.bytes_received
        );
    }

    let trusting = secure(
        &kc,
        Permissions::open().trust_origin(*ka.public()),
        MemStore::new(),
    );
    let report = trusting.pull_from(listener.local_addr()).await.unwrap();
    assert!(report.failed.is_empty());
    assert!(report.untrusted.is_empty());
    assert_eq!(trusting.store().ids().unwrap(), la.ids());
}

/// An origin that signs two different chunks over one range forks its log: a node that
/// holds one refuses the other, and keeps what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_signed_by_its_origin_is_refused_and_the_first_chunk_kept() {
    use chunk_sync_core::EventChunkStore;
    let (ka, kb) = (generate_keypair().unwrap(), generate_keypair().unwrap());
    let log = chunk_sync_tests::log(ka.node_id(), 10, 16);
    let mut other = log.clone();
    other[5].payload = b"the same range, other events".to_vec();
    let seal = |events| {
        let chunks = EventChunkStore::new(10).with_signer(ka.clone());
        chunks.create_chunks(events).unwrap().remove(0)
    };
    let (first, fork) = (seal(&log), seal(&other));
    assert_ne!(first.id, fork.id);
    let a = secure(&ka, Permissions::open(), MemStore::new());
    a.store()
        .insert(VerifiedChunk::new(fork.id, fork.bytes).unwrap())
        .unwrap();
    let b = secure(&kb, Permissions::open(), MemStore::new());
    b.store()
        .insert(VerifiedChunk::new(first.id, first.bytes).unwrap())
        .unwrap();
    let listener = a.listen("127.0.0.1:0").await.unwrap();
    // Both ways: each keeps the chunk it had (the range is covered, so the other is not
    // even fetched; a store would refuse it as a fork if it were).
    let report = b.sync_with(listener.local_addr()).await.unwrap();
    assert_eq!(report.progress.synced_chunks, 0);
    assert_eq!(b.store().ids().unwrap(), [first.id]);
    assert_eq!(a.store().ids().unwrap(), [fork.id]);
}

/// b relays the logs of a and d; c may pull only a's log from b, and pushes only its own:
/// over real TCP, c gets exactly a's chunks, and b takes exactly c's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_rights_for_one_origin_syncs_exactly_that_origin() {
    use chunk_sync_tokio::{NodeStore, VerifiedChunk};
    let keys: Vec<Keypair> = (0..4).map(|_| generate_keypair().unwrap()).collect();
    let [ka, kb, kc, kd] = [&keys[0], &keys[1], &keys[2], &keys[3]];
    let (la, ld, lc) = (log_of(ka, 60), log_of(kd, 50), log_of(kc, 30));
    let relay = MemStore::new();
    for (id, bytes) in la.store.iter().chain(&ld.store) {
        relay
            .insert(VerifiedChunk::new(*id, bytes.clone()).unwrap())
            .unwrap();
    }
    let rights = Access {
        pull: Scope::only(&[ka.node_id()]).unwrap(),
        push: Scope::only(&[kc.node_id()]).unwrap(),
    };
    let b = secure(
        kb,
        Permissions::deny_all().allow(*kc.public(), rights),
        relay,
    );
    let listener = b.listen("127.0.0.1:0").await.unwrap();
    // c trusts both origins: what keeps d's log from it is b's rule alone. It also holds
    // a chunk of d's log, which b must not take from it.
    let c_store = lc.mem_store();
    let (d_first, d_bytes) = ld.store.iter().next().unwrap();
    c_store
        .insert(VerifiedChunk::new(*d_first, d_bytes.clone()).unwrap())
        .unwrap();
    let c = secure(
        kc,
        Permissions::open()
            .trust_origin(*ka.public())
            .trust_origin(*kd.public()),
        c_store,
    );
    let report = c.sync_with(listener.local_addr()).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let mut c_wants: Vec<ChunkHash> = la.ids().into_iter().chain(lc.ids()).collect();
    c_wants.push(*d_first);
    c_wants.sort();
    assert_eq!(
        c.store().ids().unwrap(),
        c_wants,
        "c got a's log and no more of d's"
    );
    let mut b_wants: Vec<ChunkHash> = la
        .ids()
        .into_iter()
        .chain(ld.ids())
        .chain(lc.ids())
        .collect();
    b_wants.sort();
    assert_eq!(b.store().ids().unwrap(), b_wants, "b took c's log");
}

/// A relay that passes on chunks of a trusted origin changed after signing (each under
/// its new hash), one in five: the puller, which checks signatures with each batch it
/// writes, in batches and on every core, keeps exactly the genuine ones and names each
/// changed one (more than a session's queue of failures holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_changed_after_signing_are_refused_among_hundreds_of_genuine_ones() {
    let (ka, kb, kc) = (
        generate_keypair().unwrap(),
        generate_keypair().unwrap(),
        generate_keypair().unwrap(),
    );
    let la = log_of(&ka, 4_000);
    let relay = MemStore::new();
    let mut genuine = Vec::new();
    let mut changed = Vec::new();
    for (i, (id, bytes)) in la.store.iter().enumerate() {
        let chunk = if i % 5 == 2 {
            // The last byte of the last event's payload, before the signature.
            let mut bytes = bytes.clone();
            let at = bytes.len() - chunk_sync_core::chunk::SIGNATURE_LEN - 1;
            bytes[at] ^= 0x55;
            let id = ChunkHash::of(&bytes);
            changed.push(id);
            VerifiedChunk::new(id, bytes).unwrap()
        } else {
            genuine.push(*id);
            VerifiedChunk::new(*id, bytes.clone()).unwrap()
        };
        relay.insert(chunk).unwrap();
    }
    let b = secure(&kb, Permissions::open(), relay);
    let listener = b.listen("127.0.0.1:0").await.unwrap();
    let c = secure(
        &kc,
        Permissions::open().trust_origin(*ka.public()),
        MemStore::new(),
    );
    let report = c.pull_from(listener.local_addr()).await.unwrap();
    genuine.sort();
    changed.sort();
    assert_eq!(c.store().ids().unwrap(), genuine);
    let mut failed: Vec<ChunkHash> = report.failed.iter().map(|(id, _)| *id).collect();
    failed.sort();
    assert_eq!(failed, changed);
    assert!(
        report
            .failed
            .iter()
            .all(|(_, reason)| *reason == chunk_sync_core::session::FailReason::BadSignature)
    );
}
