//! A device driven by the embassy adapter keeps a live session with a host node (tokio
//! adapter) over loopback TCP: events the device appends to its [`Log`] after the session
//! started reach the host, and chunks the host seals later reach the device, each verified.
//!
//! The device's clock is embassy's mock driver, which stands still: its log seals on
//! `flush`, and no keep-alive falls due.

use std::time::Duration;

use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::session::Config;
use chunk_sync_core::store::RamStore;
use chunk_sync_core::{ChunkError, ChunkHash, Event, EventBuf, NodeId, Privacy, SealPolicy};
use chunk_sync_embassy::{Appended, Log, LogError, Resources, Runner, SharedStore};
use chunk_sync_tokio::{MemStore, Node, NodeConfig};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use embedded_io_adapters::tokio_1::FromTokio;
use tokio::net::TcpStream;

type Small = RamStore<64, 65_536>;
const DEVICE: NodeId = NodeId(60);
const HOST: NodeId = NodeId(6);

fn device_event(seq: u64, payload: &[u8]) -> Event<'_> {
    Event {
        origin: DEVICE,
        seq,
        timestamp: seq,
        kind: "adc",
        privacy: if seq % 5 == 4 {
            Privacy::Private
        } else {
            Privacy::Public
        },
        payload,
    }
}

/// Polls `done` every 10 ms for at most 20 s (so that a broken build fails, not hangs).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_log_and_a_host_log_replicate_over_one_live_session() {
    let host = Node::new_insecure_plaintext(
        NodeConfig {
            live: true,
            // It fetches from the device that connects.
            accept_pushes: true,
            events_per_chunk: 4,
            seal_delay: Some(Duration::from_millis(5)),
            ..NodeConfig::new(HOST)
        },
        MemStore::new(),
    )
    .unwrap();
    let listener = host.listen("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr()).await.unwrap();

    // Boxed: 64 KiB is too much for a debug build's test stack.
    let mut boxed = Box::new(Small::new());
    let store = Mutex::<CriticalSectionRawMutex, _>::new(&mut *boxed);
    let shared = SharedStore::new(&store);
    let log: Log<'_, _, _, 1024> = Log::new(shared, DEVICE, 5, 0, SealPolicy::UNLIMITED).unwrap();
    // Sealed before the session: the first reconciliation carries it.
    let payload = [7u8; 12];
    for seq in 0..5 {
        log.append(&device_event(seq, &payload)).await.unwrap();
    }
    assert!(!log.flush().await.unwrap(), "a full range seals on its own");

    let mut resources = Box::new(Resources::<1024, 1024, 4096>::new());
    let config = Config {
        max_frame: 1024,
        live: true,
        ..Config::new(DEVICE)
    };
    let (handle, mut runner): (_, Runner<'_, _, _, 8, 4>) =
        Runner::new(FromTokio::new(stream), shared, config, &mut resources).unwrap();
    runner.follow(log.follow().unwrap());

    let host_chunks = || host.store().ids().unwrap().len();
    let device_chunks = || store.try_lock().map_or(0, |s| s.ids().len());
    let scenario = async {
        eventually("the first reconciliation", || host_chunks() == 1).await;
        // Appended while the session runs: announced as each chunk seals.
        for seq in 5..23 {
            log.append(&device_event(seq, &payload)).await.unwrap();
        }
        assert!(log.flush().await.unwrap(), "the open tail 20..23");
        eventually("the device's chunks reaching the host", || {
            host_chunks() == 5
        })
        .await;
        // The host seals chunks later: the device fetches them.
        let events: Vec<EventBuf> = (0..10)
            .map(|seq| EventBuf {
                origin: HOST,
                seq,
                timestamp: seq,
                kind: "cmd".into(),
                privacy: Privacy::Public,
                payload: vec![1; 8],
            })
            .collect();
        host.append_batch(&events).await.unwrap();
        host.flush().await.unwrap();
        eventually("the host's chunks reaching the device", || {
            device_chunks() == 5 + 3
        })
        .await;
        handle.close();
    };
    let (report, ()) = tokio::join!(runner.run(), scenario);
    let report = report.unwrap();
    assert_eq!(report.synced_chunks, 3, "{report:?}");
    assert_eq!(report.failed_chunks, 0);
    drop(runner);

    let host_ids = host.store().ids().unwrap();
    let device = store.lock().await;
    let device_ids: Vec<ChunkHash> = device.ids().copied().collect();
    assert_eq!(device_ids, host_ids, "both hold the union");
    for id in &device_ids {
        assert_eq!(ChunkHash::of(device.get(id).unwrap()), *id);
    }
    assert_eq!(device.ids().len(), 8);
    drop(device);
    assert!(log.follow().is_some(), "the runner's follower was released");
}

#[tokio::test]
async fn a_device_log_filters_private_events_says_what_a_full_store_lost_and_goes_on() {
    // Room for two chunks.
    let mut small = RamStore::<2, 4096>::new();
    let store = Mutex::<CriticalSectionRawMutex, _>::new(&mut small);
    let log: Log<'_, _, _, 256, 1> = Log::new(
        SharedStore::new(&store),
        DEVICE,
        5,
        0,
        SealPolicy::UNLIMITED,
    )
    .unwrap();
    let payload = [3u8; 8];
    let mut follower = log.follow().unwrap();
    assert!(log.follow().is_none(), "one follower at a time");

    let mut appended = Vec::new();
    for seq in 0..10 {
        appended.push(log.append(&device_event(seq, &payload)).await.unwrap());
    }
    assert_eq!(appended[4], Appended::Private);
    assert_eq!(appended[3], Appended::Kept);
    // Sequence numbers below the log's are refused, and change nothing.
    assert!(matches!(
        log.append(&device_event(9, &payload)).await,
        Err(LogError::Event(ChunkError::OutOfOrder { .. }))
    ));
    let foreign = Event {
        origin: HOST,
        ..device_event(10, &payload)
    };
    assert!(matches!(
        log.append(&foreign).await,
        Err(LogError::Event(ChunkError::WrongOrigin { .. }))
    ));
    // An event larger than a chunk can hold.
    let huge = [0u8; 300];
    assert!(matches!(
        log.append(&device_event(10, &huge)).await,
        Err(LogError::Event(ChunkError::EventTooLarge { .. }))
    ));
    assert_eq!(store.lock().await.ids().len(), 2, "0..5 and 5..10 sealed");
    assert_eq!(
        follower.try_next(),
        Some(KeyRange {
            origin: DEVICE,
            lo: 0,
            hi: 10
        })
    );

    // The store is full: the third chunk is sealed and lost, and the error says which
    // events; the log goes on after them.
    for seq in 10..14 {
        log.append(&device_event(seq, &payload)).await.unwrap();
    }
    // The range is covered: sealed at once.
    assert!(matches!(
        log.append(&device_event(14, &payload)).await,
        Err(LogError::Store {
            first_seq: 10,
            end_seq: 15,
            ..
        })
    ));
    let mut held = store.lock().await;
    let first = held.ids().copied().next().unwrap();
    assert!(held.remove(&first));
    drop(held);
    log.append(&device_event(15, &payload)).await.unwrap();
    assert!(log.flush().await.unwrap());
    assert_eq!(store.lock().await.ids().len(), 2);
    drop(follower);
    assert!(log.follow().is_some(), "a dropped follower is released");
}
