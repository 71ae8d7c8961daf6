//! Live replication between tokio nodes over loopback TCP, printed as Markdown tables:
//! latency from `append` to the chunk being stored on a peer, along a chain of nodes, the
//! cost of an idle live session, the append rate two live peers keep up with, and the
//! sealing policy's trade-off between latency and wire overhead.
//!
//! ```text
//! cargo run --release -p chunk-sync-benches --bin live [-- SECONDS [idle-seconds]]
//! ```
//!
//! Every connection goes through a relay in this process that counts the bytes each way,
//! so wire figures are what crossed the sockets (frames, not TCP/IP headers). An event is
//! 50 bytes of payload; latency is, for each event, the time from its `append` returning
//! on the first node to the `ChunkStored` event of its chunk on the node measured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chunk_sync_core::{EventBuf, NodeId, Privacy};
use chunk_sync_tokio::{Listener, MemStore, Node, NodeConfig, NodeEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

const PAYLOAD: usize = 50;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let idle_secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let run = Duration::from_secs(secs);

    println!("## Latency, 1,000 events/s appended on A, seal delay 10 ms ({secs} s)\n");
    println!("| path | events | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    let one = latency(2, 1_000, Duration::from_millis(10), run).await;
    println!("{}", one.row("A → B"));
    let chain = latency(5, 1_000, Duration::from_millis(10), run).await;
    println!("{}", chain.row("A → B → C → D → E, at E"));
    println!(
        "\np99 at E is {:.1}× the single hop's p99.\n",
        chain.p(99.0).as_secs_f64() / one.p(99.0).as_secs_f64()
    );

    println!("## An idle live session ({idle_secs} s, idle timeout 30 s)\n");
    let idle = idle_bytes(Duration::from_secs(idle_secs)).await;
    println!(
        "{idle} bytes both ways in {idle_secs} s: {:.0} bytes per minute.\n",
        idle as f64 * 60.0 / idle_secs as f64
    );

    println!(
        "## Throughput: A appends as fast as it can in batches of 1,000, two live peers ({secs} s)\n"
    );
    throughput(run).await;

    println!("\n## Sealing policy: delay against latency and wire overhead (A → B)\n");
    println!("| events/s | seal delay | p50 | p99 | events per chunk | wire bytes per event |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let each = Duration::from_secs(secs.clamp(1, 3));
    for rate in [100, 1_000, 10_000] {
        for delay_ms in [1, 10, 100] {
            let m = latency(2, rate, Duration::from_millis(delay_ms), each).await;
            println!(
                "| {rate} | {delay_ms} ms | {} | {} | {:.1} | {:.1} |",
                ms(m.p(50.0)),
                ms(m.p(99.0)),
                m.events as f64 / m.chunks.max(1) as f64,
                m.wire as f64 / m.events.max(1) as f64
            );
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn config(id: u64, delay: Duration) -> NodeConfig {
    NodeConfig {
        live: true,
        accept_pushes: true,
        events_per_chunk: 1_000_000,
        seal_delay: Some(delay),
        ..NodeConfig::new(NodeId(id))
    }
}

fn event(seq: u64) -> EventBuf {
    EventBuf {
        origin: NodeId(1),
        seq,
        timestamp: seq,
        kind: "reading".into(),
        privacy: Privacy::Public,
        payload: vec![seq as u8; PAYLOAD],
    }
}

/// What one latency run measured.
struct Measured {
    latencies: Vec<Duration>,
    events: u64,
    chunks: u64,
    wire: u64,
}

impl Measured {
    fn p(&self, pct: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * pct / 100.0).round() as usize;
        self.latencies[i]
    }

    fn row(&self, path: &str) -> String {
        format!(
            "| {path} | {} | {} | {} | {} |",
            self.latencies.len(),
            ms(self.p(50.0)),
            ms(self.p(99.0)),
            ms(self.latencies.last().copied().unwrap_or_default())
        )
    }
}

/// A relay from a local port to `to` that counts the bytes it carries, both ways.
async fn relay(to: SocketAddr, count: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(to).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pipe(ri, wo, Arc::clone(&count)));
            tokio::spawn(pipe(ro, wi, Arc::clone(&count)));
        }
    });
    addr
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        count.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// A chain of `n` live nodes, each connected to the one before it through a counting
/// relay; returns the nodes, their listeners and the byte count.
async fn chain(n: u64, delay: Duration) -> (Vec<Node>, Vec<Listener>, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let nodes: Vec<Node> = (1..=n)
        .map(|id| Node::new_insecure_plaintext(config(id, delay), MemStore::new()).unwrap())
        .collect();
    let mut listeners = Vec::new();
    for pair in nodes.windows(2) {
        let listener = pair[0].listen("127.0.0.1:0").await.unwrap();
        let via = relay(listener.local_addr(), Arc::clone(&count)).await;
        listeners.push(listener);
        pair[1].add_peer(via);
    }
    // Every session's handshake done before the clock starts.
    wait_connected(&nodes).await;
    (nodes, listeners, count)
}

async fn wait_connected(nodes: &[Node]) {
    for _ in 0..500 {
        if nodes.iter().all(|n| !n.progress_all().is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Appends `rate` events a second on the first of a chain of `n` nodes for `run`, and
/// measures each event's latency to the last.
async fn latency(n: u64, rate: u64, delay: Duration, run: Duration) -> Measured {
    let (nodes, _listeners, count) = chain(n, delay).await;
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    let mut stored = last.events();
    let before = count.load(Ordering::Relaxed);
    let appended: Arc<std::sync::Mutex<HashMap<u64, Instant>>> = Arc::default();
    let writer = {
        let first = first.clone();
        let appended = Arc::clone(&appended);
        tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / rate as f64);
            let start = tokio::time::Instant::now();
            let total = (run.as_secs_f64() * rate as f64) as u64;
            for seq in 0..total {
                tokio::time::sleep_until(start + period.mul_f64(seq as f64)).await;
                first.append(event(seq)).await.unwrap();
                appended.lock().unwrap().insert(seq, Instant::now());
            }
            total
        })
    };
    let mut arrived: HashMap<u64, Instant> = HashMap::new();
    let mut chunks = 0;
    let total = loop {
        if writer.is_finished() {
            break writer.await.unwrap();
        }
        collect(
            &mut stored,
            &mut arrived,
            &mut chunks,
            Duration::from_millis(50),
        )
        .await;
    };
    first.flush().await.unwrap();
    while (arrived.len() as u64) < total {
        if !collect(
            &mut stored,
            &mut arrived,
            &mut chunks,
            Duration::from_secs(5),
        )
        .await
        {
            break;
        }
    }
    let wire = count.load(Ordering::Relaxed) - before;
    let mut latencies: Vec<Duration> = {
        let appended = appended.lock().unwrap();
        arrived
            .iter()
            .filter_map(|(seq, at)| appended.get(seq).map(|t| at.saturating_duration_since(*t)))
            .collect()
    };
    latencies.sort();
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    Measured {
        latencies,
        events: total,
        chunks,
        wire,
    }
}

/// Notes when each event's chunk was stored, for up to `wait`; returns whether any
/// arrived.
async fn collect(
    rx: &mut Receiver<NodeEvent>,
    arrived: &mut HashMap<u64, Instant>,
    chunks: &mut u64,
    wait: Duration,
) -> bool {
    match tokio::time::timeout(wait, rx.recv()).await {
        Ok(Ok(NodeEvent::ChunkStored { span, .. })) => {
            let now = Instant::now();
            *chunks += 1;
            for seq in span.first_seq..span.end_seq {
                arrived.entry(seq).or_insert(now);
            }
            true
        }
        Ok(Ok(_)) => true,
        Ok(Err(RecvError::Lagged(n))) => panic!("the bench missed {n} events"),
        Ok(Err(RecvError::Closed)) | Err(_) => false,
    }
}

/// Bytes an idle live session carries in `run`.
async fn idle_bytes(run: Duration) -> u64 {
    let (nodes, _listeners, count) = chain(2, Duration::from_millis(10)).await;
    let before = count.load(Ordering::Relaxed);
    tokio::time::sleep(run).await;
    let bytes = count.load(Ordering::Relaxed) - before;
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    bytes
}

/// A appends batches of 1,000 events as fast as it can for `run`, with two live peers;
/// prints the rate appended and the rate each peer stored.
async fn throughput(run: Duration) {
    let count = Arc::new(AtomicU64::new(0));
    let delay = Duration::from_millis(10);
    let a = Node::new_insecure_plaintext(config(1, delay), MemStore::new()).unwrap();
    let listener = a.listen("127.0.0.1:0").await.unwrap();
    let peers: Vec<Node> = (2..=3)
        .map(|id| Node::new_insecure_plaintext(config(id, delay), MemStore::new()).unwrap())
        .collect();
    for p in &peers {
        p.add_peer(relay(listener.local_addr(), Arc::clone(&count)).await);
    }
    let mut all = vec![a.clone()];
    all.extend(peers.iter().cloned());
    wait_connected(&all).await;
    let stored: Vec<Arc<AtomicU64>> = peers.iter().map(|_| Arc::default()).collect();
    for (p, n) in peers.iter().zip(&stored) {
        let mut rx = p.events();
        let n = Arc::clone(n);
        tokio::spawn(async move {
            while let Ok(event) = rx.recv().await {
                if let NodeEvent::ChunkStored { span, .. } = event {
                    n.fetch_max(span.end_seq, Ordering::Relaxed);
                }
            }
        });
    }
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < run {
        let batch: Vec<EventBuf> = (seq..seq + 1_000).map(event).collect();
        a.append_batch(&batch).await.unwrap();
        seq += 1_000;
    }
    let appended_in = start.elapsed();
    a.flush().await.unwrap();
    // The peers' lag when the appending stopped, then how long they took to catch up.
    let lag: Vec<u64> = stored
        .iter()
        .map(|n| seq - n.load(Ordering::Relaxed))
        .collect();
    while stored.iter().any(|n| n.load(Ordering::Relaxed) < seq) && start.elapsed() < run * 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let caught_up = start.elapsed();
    println!("| what | figure |");
    println!("|---|---:|");
    println!(
        "| appended on A | {seq} events in {:.2} s: {:.0} events/s |",
        appended_in.as_secs_f64(),
        seq as f64 / appended_in.as_secs_f64()
    );
    for (i, n) in stored.iter().enumerate() {
        let got = n.load(Ordering::Relaxed);
        println!(
            "| stored on peer {} | {got} events; {} behind when appending stopped; all of them {:.2} s after the start: {:.0} events/s |",
            i + 1,
            lag[i],
            caught_up.as_secs_f64(),
            got as f64 / caught_up.as_secs_f64()
        );
    }
    println!(
        "| wire | {:.1} bytes per event per peer |",
        count.load(Ordering::Relaxed) as f64 / seq as f64 / 2.0
    );
    drop(listener);
    for n in all {
        n.shutdown().await.unwrap();
    }
}
