//! The host side of the firmware test: a tokio node that syncs with the QEMU device over
//! its UART bridged to TCP, and checks that it received the device's chunks.
//!
//! ```text
//! firmware-peer 127.0.0.1:PORT
//! ```

use std::process::ExitCode;
use std::time::Duration;

use chunk_sync_core::NodeId;
use chunk_sync_tests::Node as SimNode;
use chunk_sync_tokio::{MemStore, Node, NodeConfig, NodeStore, VerifiedChunk};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: firmware-peer HOST:PORT");
        return ExitCode::FAILURE;
    };
    let log = SimNode::with_log(NodeId(1), 30, 10, 24);
    let mut store = MemStore::new();
    for (id, bytes) in &log.store {
        if store.insert(VerifiedChunk::new(*id, bytes.clone()).expect("own chunks verify")).is_err() {
            return ExitCode::FAILURE;
        }
    }
    let own = log.store.len();
    let node = match Node::new(NodeConfig { max_chunk_len: 4096, ..NodeConfig::new(NodeId(1)) }, store) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("firmware-peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    // QEMU accepts the connection once it is listening.
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(stream) = stream else {
        eprintln!("firmware-peer: cannot reach the device at {addr}");
        return ExitCode::FAILURE;
    };
    let report = match tokio::time::timeout(Duration::from_secs(120), node.sync_over(stream)).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("firmware-peer: sync failed: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("firmware-peer: the device did not finish within 120 s");
            return ExitCode::FAILURE;
        }
    };
    let held = node.with_store(|s| s.len()).unwrap_or(0);
    println!(
        "firmware-peer: fetched {} chunks ({} bytes) from {:?}; holds {held} chunks ({own} of its own)",
        report.progress.synced_chunks, report.progress.bytes_transferred, report.peer
    );
    if report.progress.synced_chunks > 0 && report.failed.is_empty() && held == own + report.progress.synced_chunks as usize {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
