//! The host side of the firmware test: a secure tokio node that, over the QEMU device's
//! UART bridged to TCP, answers the device's first handshake message with a garbled one,
//! then answers the next with the start of one and falls silent, then keeps a live
//! session with the device on a secure link (each side lets in only the other's key):
//! both fetch what they lack, and for each chunk the device seals while the session runs,
//! the host appends one event naming where that chunk ends (the device times these
//! echoes). It checks that it received the device's chunks, live ones included, and
//! answered each.
//!
//! With `--once`, for the firmware's minimal node (`src/bin/node.rs`): one secure session
//! that the device begins, both sides fetching what they lack; it checks that it received
//! the device's chunks.
//!
//! ```text
//! firmware-peer 127.0.0.1:PORT [--once]
//! ```

use std::cell::Cell;
use std::process::ExitCode;
use std::time::Duration;

use chunk_sync_core::{EventBuf, NodeId, Privacy};
use chunk_sync_tests::Node as SimNode;
use chunk_sync_tokio::{
    Access, Keypair, Node, NodeConfig, NodeEvent, Permissions, PublicKey, Security, SyncReport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The host's secret key: a test key, public in this repository.
const HOST_SECRET: [u8; 32] = *b"chunk-sync qemu host test key!!!";
/// The device's public key (`firmware/qemu-lm3s6965/src/main.rs`).
const DEVICE_KEY: PublicKey = PublicKey([
    193, 168, 49, 244, 67, 14, 78, 8, 98, 79, 164, 193, 227, 144, 48, 30, 41, 27, 96, 70, 241, 12,
    200, 97, 104, 235, 222, 189, 251, 203, 152, 153,
]);

/// The first handshake message of a session the device initiates (Noise XX's `e`, a
/// 32-byte key after the two-byte length): read whole, so that a session can be handed
/// it back.
async fn first_message(stream: &mut TcpStream) -> Result<[u8; 34], String> {
    let mut message = [0u8; 34];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut message))
        .await
        .map_err(|_| "the device went silent".to_owned())?
        .map_err(|e| e.to_string())?;
    if message[..2] != [32, 0] {
        return Err(format!(
            "not a first handshake message: {:02x?}",
            &message[..2]
        ));
    }
    Ok(message)
}

/// The device's sequence numbers from here on are appended during the live session
/// (`firmware/qemu-lm3s6965/src/main.rs`).
const DEVICE_LIVE_FROM: u64 = 40;

/// Events of the host's own log before the session; its echoes follow.
const HOST_EVENTS: u64 = 30;

/// For each live chunk of the device the node stores, appends and seals one event whose
/// payload is where that chunk ends, counting them in `echoed`.
async fn echo_live_chunks(node: &Node, mut seq: u64, echoed: &Cell<usize>) {
    let device = DEVICE_KEY.node_id();
    let host = Keypair::from_secret(HOST_SECRET).node_id();
    let mut events = node.events();
    loop {
        match events.recv().await {
            Ok(NodeEvent::ChunkStored { span, .. })
                if span.origin == device && span.first_seq >= DEVICE_LIVE_FROM =>
            {
                let echo = EventBuf {
                    origin: host,
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

/// The report of a session that ended within its time, or `None`, said on stderr.
fn finished(
    result: Result<Result<SyncReport, chunk_sync_tokio::Error>, tokio::time::error::Elapsed>,
) -> Option<SyncReport> {
    match result {
        Ok(Ok(report)) => Some(report),
        Ok(Err(e)) => {
            eprintln!("firmware-peer: sync failed: {e}");
            None
        }
        Err(_) => {
            eprintln!("firmware-peer: the device did not finish within 120 s");
            None
        }
    }
}

/// One session the device begins over `stream`, which does not live on: the device's
/// node does not ask for one. Succeeds if the host fetched the device's chunks and stored
/// them beside its `own`.
async fn sync_once(node: &Node, stream: TcpStream, own: usize) -> ExitCode {
    let session = tokio::time::timeout(Duration::from_secs(120), node.live_over_answering(stream));
    let Some(report) = finished(session.await) else {
        return ExitCode::FAILURE;
    };
    let held = node.store().len().unwrap_or(0);
    println!(
        "firmware-peer: fetched {} chunks ({} bytes) from {:?}; holds {held} chunks ({own} of its own)",
        report.progress.synced_chunks, report.progress.bytes_transferred, report.peer
    );
    let synced = report.progress.synced_chunks as usize;
    if synced > 0 && report.failed.is_empty() && held == own + synced {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, once) = match args.as_slice() {
        [addr] => (addr.clone(), false),
        [addr, once] if once == "--once" => (addr.clone(), true),
        _ => {
            eprintln!("usage: firmware-peer HOST:PORT [--once]");
            return ExitCode::FAILURE;
        }
    };
    let keys = Keypair::from_secret(HOST_SECRET);
    let host: NodeId = keys.node_id();
    let log = SimNode::with_signed_log(&keys, HOST_EVENTS, 10, 24);
    let store = log.mem_store();
    let own = log.store.len();
    let security = Security {
        keys,
        peers: Permissions::deny_all().allow(DEVICE_KEY, Access::FULL),
    };
    let node = match Node::new(
        NodeConfig {
            max_chunk_len: 4096,
            ..NodeConfig::new(host)
        },
        store,
        security,
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
    if once {
        return sync_once(&node, stream, own).await;
    }
    let mut stream = stream;
    // A garbled answer to the device's first handshake message (a 5-byte message where
    // Noise XX's second is 96 bytes): the device must refuse it and begin again. Then the
    // first bytes of an answer and silence: the device must give up on its own and begin
    // again, for the live session.
    let spoilers: [(&[u8], &str); 2] = [
        (
            &[5, 0, 1, 2, 3, 4, 5],
            "refused a garbled handshake message",
        ),
        (
            &[96, 0, 3],
            "gave up on a truncated handshake message and silence",
        ),
    ];
    for (bytes, _) in spoilers {
        let spoiled = async {
            first_message(&mut stream).await?;
            stream.write_all(bytes).await.map_err(|e| e.to_string())
        };
        if let Err(e) = spoiled.await {
            eprintln!("firmware-peer: {e}");
            return ExitCode::FAILURE;
        }
    }
    // The device began a new handshake: it dealt with both.
    let first = match first_message(&mut stream).await {
        Ok(first) => first,
        Err(e) => {
            eprintln!("firmware-peer: the device did not begin again: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (_, what) in spoilers {
        println!("firmware-peer: the device {what}, and began a new handshake");
    }
    // The live session answers the handshake the device began, its first message given
    // back ahead of the line.
    let (read, write) = stream.into_split();
    let stream = tokio::io::join(std::io::Cursor::new(first.to_vec()).chain(read), write);
    let echoed = Cell::new(0);
    let session = tokio::time::timeout(Duration::from_secs(120), node.live_over_answering(stream));
    // The echo runs until the session ends.
    let result = tokio::select! {
        result = session => result,
        () = echo_live_chunks(&node, HOST_EVENTS, &echoed) => unreachable!("the echo never ends"),
    };
    let echoed = echoed.get();
    let Some(report) = finished(result) else {
        return ExitCode::FAILURE;
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
