//! A node driven by the embassy adapter (embassy-time mock driver, transport over a tokio
//! TCP socket through embedded-io-adapters) syncs both ways with a node driven by the tokio
//! adapter over real loopback TCP, from a RAM store and from a flash store.

use chunk_sync_core::session::Config;
use chunk_sync_core::store::{ChunkStore, RamStore};
use chunk_sync_core::{ChunkHash, NodeId, Verified};
use chunk_sync_embassy::{FlashStore, Resources, Runner, Store};
use chunk_sync_tests::Node as SimNode;
use chunk_sync_tokio::{Node, NodeConfig};
use embedded_io_adapters::tokio_1::FromTokio;
use sequential_storage::mock_flash::{MockFlashBase, WriteCountCheck};
use tokio::net::TcpStream;

type Small = RamStore<64, 65_536>;

/// Boxed: 64 KiB is too much to move around a debug build's test stack.
fn ram_store(chunks: &SimNode) -> Box<Small> {
    let mut store = Box::new(Small::new());
    for bytes in chunks.store.values() {
        ChunkStore::insert(&mut *store, Verified::hash_of(bytes)).unwrap();
    }
    store
}

fn tokio_node(id: u64, chunks: &SimNode) -> Node {
    let config = NodeConfig {
        accept_pushes: true,
        ..NodeConfig::new(NodeId(id))
    };
    Node::new_insecure_plaintext(config, chunks.mem_store()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embassy_and_tokio_nodes_converge_both_ways() {
    let device_log = SimNode::with_log(NodeId(50), 60, 10, 48);
    let host_log = SimNode::with_log(NodeId(1), 90, 10, 64);
    let mut union: Vec<ChunkHash> = device_log.ids().into_iter().chain(host_log.ids()).collect();
    union.sort();

    let host = tokio_node(1, &host_log);
    let listener = host.listen("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr()).await.unwrap();

    let mut resources = Box::new(Resources::<1024, 1024, 8192>::new());
    let config = Config {
        max_frame: 1024,
        window: 4,
        ..Config::new(NodeId(50))
    };
    let mut device_store = ram_store(&device_log);
    let (handle, mut runner): (_, Runner<'_, _, _, 8, 4>) = Runner::new(
        FromTokio::new(stream),
        &mut *device_store,
        config,
        &mut resources,
    )
    .unwrap();
    let report = runner.run().await.unwrap();
    let progress = handle.progress();
    assert!(
        progress.finished && progress.synced_chunks == report.synced_chunks,
        "{progress:?}"
    );
    assert_eq!(
        report.synced_chunks, 9,
        "the device fetched the host's chunks"
    );
    assert_eq!(report.failed_chunks, 0);

    let device_ids: Vec<ChunkHash> = runner.store().ids().copied().collect();
    assert_eq!(device_ids, union);
    for id in &device_ids {
        let bytes = runner.store().get(id).unwrap();
        assert_eq!(
            ChunkHash::of(bytes),
            *id,
            "every chunk on the device verifies"
        );
    }
    assert_host_holds(&host, &union).await;
}

/// The host fetched the device's chunks (its session may finish a moment later).
async fn assert_host_holds(host: &Node, union: &[ChunkHash]) {
    for _ in 0..100 {
        if host.store().len().unwrap() == union.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let host_ids = host.store().ids().unwrap();
    assert_eq!(host_ids, union);
}

/// 32 erase pages of 2 KiB.
type Flash = MockFlashBase<32, 4, 512>;
type Flashed = FlashStore<Flash, 64, 2048>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_keeping_chunks_in_flash_syncs_and_keeps_them_across_a_restart() {
    let device_log = SimNode::with_log(NodeId(51), 40, 8, 40);
    let host_log = SimNode::with_log(NodeId(2), 64, 8, 48);
    let mut union: Vec<ChunkHash> = device_log.ids().into_iter().chain(host_log.ids()).collect();
    union.sort();

    let flash = Flash::new(WriteCountCheck::Twice, None, true);
    let mut store = Flashed::open(flash, Flash::FULL_FLASH_RANGE).await.unwrap();
    for bytes in device_log.store.values() {
        assert!(store.insert(Verified::hash_of(bytes)).await.unwrap());
    }

    let host = tokio_node(2, &host_log);
    let listener = host.listen("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr()).await.unwrap();
    let mut resources = Box::new(Resources::<1024, 1024, 2048>::new());
    let config = Config {
        max_frame: 512,
        window: 4,
        ..Config::new(NodeId(51))
    };
    let (_, mut runner): (_, Runner<'_, _, _, 8, 4>) =
        Runner::new(FromTokio::new(stream), &mut store, config, &mut resources).unwrap();
    let report = runner.run().await.unwrap();
    drop(runner);
    assert_eq!(
        report.synced_chunks, 8,
        "the device fetched the host's chunks"
    );
    assert_eq!(report.failed_chunks, 0);
    assert_eq!(store.ids().copied().collect::<Vec<_>>(), union);
    assert_host_holds(&host, &union).await;

    // Power off and on: the store reopens from flash with every chunk, each verified.
    let mut store = Flashed::open(store.into_flash(), Flash::FULL_FLASH_RANGE)
        .await
        .unwrap();
    assert_eq!(store.ids().copied().collect::<Vec<_>>(), union);
    assert_eq!(store.discarded(), 0);
    let mut buf = [0; 2048];
    for id in &union {
        let len = store.read_into(id, &mut buf).await.unwrap().unwrap();
        assert_eq!(ChunkHash::of(&buf[..len]), *id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_store_is_full_tells_the_host() {
    let host_log = SimNode::with_log(NodeId(3), 100, 10, 64); // 10 chunks
    let host = tokio_node(3, &host_log);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let device_side = TcpStream::connect(listener.local_addr().unwrap());
    let (device_side, accepted) = tokio::join!(device_side, listener.accept());
    let (host_side, _) = accepted.unwrap();

    // Room for two chunks only.
    let mut store = Box::new(RamStore::<2, 4096>::new());
    let mut resources = Box::new(Resources::<1024, 1024, 8192>::new());
    let config = Config {
        max_frame: 1024,
        ..Config::new(NodeId(52))
    };
    let (_, mut runner): (_, Runner<'_, _, _, 8, 4>) = Runner::new(
        FromTokio::new(device_side.unwrap()),
        &mut *store,
        config,
        &mut resources,
    )
    .unwrap();
    let (device, host_result) = tokio::join!(runner.run(), host.sync_over(host_side));
    assert!(
        matches!(device, Err(chunk_sync_embassy::Error::Store(_))),
        "{device:?}"
    );
    assert!(
        matches!(
            host_result,
            Err(chunk_sync_tokio::Error::Protocol(
                chunk_sync_core::session::Error::Remote(_)
            ))
        ),
        "the host is told: {host_result:?}"
    );
}

/// A device on a secure link with a tokio node, each letting in the other's key only.
mod secure {
    use chunk_sync_core::session::{Error as SessionError, LinkError};
    use chunk_sync_core::wire::ErrorCode;
    use chunk_sync_embassy::secure::{Access, Handshake, Keypair, Peers, PublicKey, Role};
    use chunk_sync_embassy::{Error, Report};
    use chunk_sync_tokio::{Permissions, Security};

    use super::*;

    type DeviceError = Error<std::io::Error, <&'static mut Small as Store>::Error>;

    fn host(keys: &Keypair, device: &Keypair, chunks: &SimNode) -> Node {
        let config = NodeConfig {
            accept_pushes: true,
            ..NodeConfig::new(keys.node_id())
        };
        let security = Security {
            keys: keys.clone(),
            peers: Permissions::deny_all().allow(*device.public(), Access::FULL),
        };
        Node::new(config, chunks.mem_store(), security).unwrap()
    }

    /// One secure session of a device of `keys` that lets in `known`, connected to
    /// `addr`, from `store`, with `max_frame`; it initiates the handshake, with `entropy`.
    async fn device_session(
        addr: std::net::SocketAddr,
        store: &mut Small,
        keys: &Keypair,
        max_frame: u32,
        entropy: u8,
        known: &[(PublicKey, Access)],
    ) -> Result<Report, DeviceError> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut resources = Box::new(Resources::<1024, 1024, 8192>::new());
        let config = Config {
            max_frame,
            ..Config::new(keys.node_id())
        };
        let (_, mut runner): (_, Runner<'_, _, _, 8, 4>) = Runner::new_secure(
            FromTokio::new(stream),
            store,
            config,
            &mut resources,
            Handshake::new(keys, Role::Initiator, [entropy; 32]),
            Peers::only(known),
        )
        .unwrap();
        let run = tokio::time::timeout(std::time::Duration::from_secs(10), runner.run());
        run.await.expect("the device ends the session")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_and_a_host_sync_both_ways_over_a_secure_link() {
        let (device_keys, host_keys) =
            (Keypair::from_secret([5; 32]), Keypair::from_secret([6; 32]));
        let device_log = SimNode::with_signed_log(&device_keys, 60, 10, 48);
        let host_log = SimNode::with_signed_log(&host_keys, 90, 10, 64);
        let mut union: Vec<ChunkHash> =
            device_log.ids().into_iter().chain(host_log.ids()).collect();
        union.sort();
        let host = host(&host_keys, &device_keys, &host_log);
        let listener = host.listen("127.0.0.1:0").await.unwrap();
        let known = [(*host_keys.public(), Access::FULL)];

        for (max_frame, entropy) in [(256, 1), (1024, 2)] {
            let mut device_store = ram_store(&device_log);
            let report = device_session(
                listener.local_addr(),
                &mut device_store,
                &device_keys,
                max_frame,
                entropy,
                &known,
            )
            .await
            .unwrap();
            assert_eq!(report.synced_chunks, 9, "{max_frame}: the host's chunks");
            let device_ids: Vec<ChunkHash> = device_store.ids().copied().collect();
            assert_eq!(device_ids, union);
            assert_host_holds(&host, &union).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_refuses_a_host_it_does_not_know_and_the_host_refuses_a_stranger() {
        let (device_keys, host_keys) =
            (Keypair::from_secret([7; 32]), Keypair::from_secret([8; 32]));
        let stranger = Keypair::from_secret([9; 32]);
        let device_log = SimNode::with_signed_log(&device_keys, 30, 10, 48);
        let host_log = SimNode::with_signed_log(&host_keys, 30, 10, 64);
        let host = host(&host_keys, &device_keys, &host_log);
        let listener = host.listen("127.0.0.1:0").await.unwrap();

        // The device knows another key only: it refuses the host.
        let mut device_store = ram_store(&device_log);
        let known = [(*stranger.public(), Access::FULL)];
        let err = device_session(
            listener.local_addr(),
            &mut device_store,
            &device_keys,
            1024,
            1,
            &known,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, Error::Protocol(SessionError::Link(LinkError::Refused))),
            "{err}"
        );
        assert_eq!(
            host.store().len().unwrap(),
            host_log.ids().len(),
            "nothing taken"
        );

        // A stranger's key: the host refuses it, and the device stores nothing.
        let mut stranger_store = Box::new(Small::new());
        let known = [(*host_keys.public(), Access::FULL)];
        let err = device_session(
            listener.local_addr(),
            &mut stranger_store,
            &stranger,
            1024,
            2,
            &known,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Protocol(SessionError::Remote(ErrorCode::REFUSED))
            ),
            "{err}"
        );
        assert_eq!(stranger_store.ids().count(), 0);
    }

    /// A peer that answers the device's first handshake message with `answer`.
    async fn spoiling_peer(answer: &'static [u8]) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 34];
            s.read_exact(&mut first).await.unwrap();
            assert_eq!(first[..2], [32, 0], "Noise XX's first message");
            s.write_all(answer).await.unwrap();
            // Then silence, the line kept open.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        addr
    }

    /// A message too short for Noise XX's second, and an empty one. (A truncated message
    /// and silence end in the handshake timeout: the QEMU firmware test has the clock for
    /// it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_refuses_a_garbled_handshake_message() {
        let keys = Keypair::from_secret([10; 32]);
        let known = [(*Keypair::from_secret([11; 32]).public(), Access::FULL)];
        let cases: [&'static [u8]; 2] = [&[5, 0, 1, 2, 3, 4, 5], &[0, 0]];
        for answer in cases {
            let addr = spoiling_peer(answer).await;
            let mut store = Box::new(Small::new());
            match device_session(addr, &mut store, &keys, 1024, 3, &known).await {
                Err(Error::Protocol(SessionError::Link(LinkError::Handshake))) => {}
                other => panic!("{answer:?}: {other:?}"),
            }
        }
    }
}
