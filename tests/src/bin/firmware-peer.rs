//! The host side of the firmware test: a tokio node that, over the QEMU device's UART
//! bridged to TCP, first garbles a frame, then sends a truncated frame and falls silent,
//! then keeps a live session with the device: both fetch what they lack, and for each
//! chunk the device seals while the session runs, the host appends one event naming where
//! that chunk ends (the device times these echoes). It checks that it received the
//! device's chunks, live ones included, and answered each.
//!
//! ```text
//! firmware-peer 127.0.0.1:PORT
//! ```

use std::cell::Cell;
use std::process::ExitCode;
use std::time::Duration;

use chunk_sync_core::wire::{self, Decoded, ErrorCode, MAX_FRAME_LIMIT, Message};
use chunk_sync_core::{EventBuf, NodeId, Privacy};
use chunk_sync_tests::Node as SimNode;
use chunk_sync_tokio::{Node, NodeConfig, NodeEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads frames until `want` accepts one; returns what it returned.
async fn read_until<T>(
    stream: &mut TcpStream,
    mut want: impl FnMut(&Message<'_>) -> Option<T>,
) -> Result<T, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        while let Ok(Decoded::Frame { message, len }) = wire::decode(&buf, MAX_FRAME_LIMIT) {
            if let Some(found) = want(&message) {
                return Ok(found);
            }
            buf.drain(..len);
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .map_err(|_| "the device went silent".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the device closed the line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits for the device's Error frame; returns its code.
async fn error_frame(stream: &mut TcpStream) -> Result<u16, String> {
    read_until(stream, |m| match m {
        Message::Error { code, .. } => Some(code.0),
        _ => None,
    })
    .await
}

/// Waits for the device's Hello, sends `bytes` and waits for the device's Error frame;
/// fails unless it carries `expected`.
async fn spoil(stream: &mut TcpStream, bytes: &[u8], expected: ErrorCode) -> Result<(), String> {
    read_until(stream, |m| matches!(m, Message::Hello(_)).then_some(())).await?;
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    match error_frame(stream).await? {
        code if code == expected.0 => Ok(()),
        code => Err(format!(
            "the device answered with error code {code}, not {}",
            expected.0
        )),
    }
}

/// The device's sequence numbers from here on are appended during the live session
/// (`firmware/qemu-lm3s6965/src/main.rs`).
const DEVICE_LIVE_FROM: u64 = 40;
const DEVICE: NodeId = NodeId(0xD1);

/// Events of the host's own log before the session; its echoes follow.
const HOST_EVENTS: u64 = 30;

/// For each live chunk of the device the node stores, appends and seals one event whose
/// payload is where that chunk ends, counting them in `echoed`.
async fn echo_live_chunks(node: &Node, mut seq: u64, echoed: &Cell<usize>) {
    let mut events = node.events();
    loop {
        match events.recv().await {
            Ok(NodeEvent::ChunkStored { span, .. })
                if span.origin == DEVICE && span.first_seq >= DEVICE_LIVE_FROM =>
            {
                let echo = EventBuf {
                    origin: NodeId(1),
                    seq,
                    timestamp: seq,
                    kind: "echo".into(),
                    privacy: Privacy::Public,
                    payload: span.end_seq.to_le_bytes().to_vec(),
                };
                seq += 1;
                let taken = node.append(echo).await.map(|a| a.taken);
                match (taken, node.flush().await) {
                    (Ok(1), Ok(())) => echoed.set(echoed.get() + 1),
                    // The device then never sees every echo and fails the run.
                    (taken, flushed) => {
                        eprintln!("firmware-peer: cannot seal an echo: {taken:?}, {flushed:?}");
                    }
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: firmware-peer HOST:PORT");
        return ExitCode::FAILURE;
    };
    let log = SimNode::with_log(NodeId(1), HOST_EVENTS, 10, 24);
    let store = log.mem_store();
    let own = log.store.len();
    let node = match Node::new(
        NodeConfig {
            max_chunk_len: 4096,
            ..NodeConfig::new(NodeId(1))
        },
        store,
    ) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("firmware-peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    // QEMU accepts the connection once it is listening.
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(&addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(stream) = stream else {
        eprintln!("firmware-peer: cannot reach the device at {addr}");
        return ExitCode::FAILURE;
    };
    let mut stream = stream;
    // A garbled frame (a whole frame, 5-byte body, unknown message tag): the device must
    // refuse it. Then the first bytes of a 40-byte frame and silence: the device must give
    // up on its own. Each time it says why and syncs again later.
    let spoilers: [(&[u8], ErrorCode, &str); 2] = [
        (
            &[5, 0, 0, 0, 0xee, 1, 2, 3, 4],
            ErrorCode::MALFORMED,
            "refused a garbled frame",
        ),
        (
            &[40, 0, 0, 0, 3],
            ErrorCode::TIMED_OUT,
            "gave up on a truncated frame and silence",
        ),
    ];
    for (bytes, expected, what) in spoilers {
        if let Err(e) = spoil(&mut stream, bytes, expected).await {
            eprintln!("firmware-peer: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "firmware-peer: the device {what} (error code {})",
            expected.0
        );
    }
    let echoed = Cell::new(0);
    let session = tokio::time::timeout(Duration::from_secs(120), node.live_over(stream));
    // The echo runs until the session ends.
    let result = tokio::select! {
        result = session => result,
        () = echo_live_chunks(&node, HOST_EVENTS, &echoed) => unreachable!("the echo never ends"),
    };
    let echoed = echoed.get();
    let report = match result {
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
    let held = node.store().len().unwrap_or(0);
    println!(
        "firmware-peer: fetched {} chunks ({} bytes) from {:?}, {echoed} of them sealed during the live session and echoed; holds {held} chunks ({own} of its own, {echoed} echoes)",
        report.progress.synced_chunks, report.progress.bytes_transferred, report.peer
    );
    if report.progress.synced_chunks > 0
        && echoed > 0
        && report.failed.is_empty()
        && held == own + echoed + report.progress.synced_chunks as usize
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
