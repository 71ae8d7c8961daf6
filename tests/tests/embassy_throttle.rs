//! The embassy adapter's throttle, checked in embassy's mock time while it serves a tokio
//! node over loopback TCP. (One file: the mock driver is a process-wide clock.)

mod support;

use chunk_sync_core::session::Config;
use chunk_sync_core::store::{ChunkStore, RamStore};
use chunk_sync_core::{Duration, NodeId, ThrottleConfig, Verified};
use chunk_sync_embassy::{Resources, Runner};
use chunk_sync_tests::Node as SimNode;
use chunk_sync_tokio::{MemStore, Node, NodeConfig};
use embedded_io_adapters::tokio_1::FromTokio;
use support::MockClock;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_throttle_holds_in_mock_time() {
    let device_log = SimNode::with_log(NodeId(50), 300, 10, 64); // 30 chunks, about 30 KB
    // Boxed: 64 KiB is too much to move around a debug build's test stack.
    let mut store = Box::new(RamStore::<64, 65_536>::new());
    for bytes in device_log.store.values() {
        store.insert(Verified::hash_of(bytes)).unwrap();
    }
    let config = NodeConfig {
        accept_pushes: true,
        ..NodeConfig::new(NodeId(1))
    };
    let host = Node::new_insecure_plaintext(config, MemStore::new()).unwrap();
    let listener = host.listen("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr()).await.unwrap();

    // Mock time moves 1 ms per step.
    let clock = MockClock::start(embassy_time::Duration::from_millis(1));

    let rate = 10_000;
    let throttle = ThrottleConfig {
        max_bytes_per_sec: rate,
        window_duration: Duration::from_millis(100),
    };
    let config = Config {
        max_frame: 1024,
        throttle,
        ..Config::new(NodeId(50))
    };
    let mut resources = Box::new(Resources::<1024, 1024, 8192>::new());
    let (_handle, mut runner): (_, Runner<'_, _, _, 8, 4>) =
        Runner::new(FromTokio::new(stream), &mut *store, config, &mut resources).unwrap();
    let report = runner.run().await.unwrap();
    clock.stop().await;

    let sent = report.stats.bytes_sent;
    let took_us = report.elapsed.as_micros();
    let paced = rate * took_us / 1_000_000;
    // At most one window's budget (1,000 bytes) and one frame ahead of the rate, plus a step.
    assert!(
        paced <= sent + rate / 1_000,
        "{sent} bytes in {took_us} µs of mock time"
    );
    assert!(
        sent <= paced + 1_000 + 1_024 + rate / 1_000,
        "{sent} bytes in {took_us} µs of mock time"
    );
    assert!(sent > 20_000, "the device served its log: {sent} bytes");
    let total: usize = device_log.store.values().map(Vec::len).sum();
    for _ in 0..100 {
        if host.store().len().unwrap() == device_log.store.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        host.store().cache_size_bytes(),
        total,
        "the host stored every chunk"
    );
}
