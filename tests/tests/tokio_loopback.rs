//! Nodes driven by the tokio adapter, over real loopback TCP (and, for paused-clock timing,
//! over an in-process duplex pipe).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::session::FailReason;
use chunk_sync_core::{ChunkHash, NodeId, Span};
use chunk_sync_tests::Node as SimNode;
use chunk_sync_tokio::{
    Compress, Error, Inserted, MemStore, Node, NodeConfig, NodeStore, StoreError, ThrottleConfig,
    VerifiedChunk,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

fn node(id: u64, chunks: &SimNode, config: impl FnOnce(NodeConfig) -> NodeConfig) -> Node {
    Node::new_insecure_plaintext(config(NodeConfig::new(NodeId(id))), chunks.mem_store()).unwrap()
}

/// A node that also fetches what the peers connecting to it have.
fn accepting(c: NodeConfig) -> NodeConfig {
    NodeConfig {
        accept_pushes: true,
        ..c
    }
}

fn ids(node: &Node) -> Vec<ChunkHash> {
    node.store().ids().unwrap()
}

fn chunks(origin: u64, events: u64, per_chunk: usize, payload: usize) -> SimNode {
    SimNode::with_log(NodeId(origin), events, per_chunk, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_over_tcp() {
    let shared = chunks(100, 200, 10, 64);
    let mut a_set = chunks(1, 300, 10, 200);
    a_set.store.extend(shared.store.clone());
    let mut b_set = chunks(2, 150, 25, 500);
    b_set.store.extend(shared.store.clone());
    let c_set = chunks(3, 90, 9, 1000);
    let (a, b, c) = (
        node(1, &a_set, accepting),
        node(2, &b_set, accepting),
        node(3, &c_set, accepting),
    );
    let mut union: Vec<ChunkHash> = [&a_set, &b_set, &c_set]
        .iter()
        .flat_map(|n| n.ids())
        .collect();
    union.sort();
    union.dedup();

    let la = a.listen("127.0.0.1:0").await.unwrap();
    let lb = b.listen("127.0.0.1:0").await.unwrap();
    let lc = c.listen("127.0.0.1:0").await.unwrap();
    let report = b.sync_with(la.local_addr()).await.unwrap();
    assert_eq!(report.peer, Some(NodeId(1)));
    assert!(report.progress.is_complete() && report.failed.is_empty());
    c.sync_with(lb.local_addr()).await.unwrap();
    a.sync_with(lc.local_addr()).await.unwrap();
    for n in [&a, &b, &c] {
        assert_eq!(ids(n), union);
    }
}

/// A memory store with hooks: what it serves, and what happens before each batch write.
struct Hooked {
    inner: MemStore,
    /// Changes the bytes served (a liar flips one).
    serve: fn(Bytes) -> Bytes,
    /// Runs before each batch write (a disk takes a moment; a gate holds it; a full store
    /// refuses it).
    before_write: Box<dyn Fn() -> Result<(), StoreError> + Send + Sync>,
    /// Whether writes block, so that the node makes them on a blocking thread.
    blocks: bool,
}

impl Hooked {
    fn new(inner: MemStore) -> Self {
        Self {
            inner,
            serve: |b| b,
            before_write: Box::new(|| Ok(())),
            blocks: false,
        }
    }

    /// A store that corrupts every chunk it serves.
    fn liar(inner: MemStore) -> Self {
        Self {
            serve: |b| {
                let mut b = b.to_vec();
                b[0] ^= 0xff;
                Bytes::from(b)
            },
            ..Self::new(inner)
        }
    }

    /// A store whose writes block until `gate` opens.
    fn gated(inner: MemStore, gate: &std::sync::Arc<Gate>) -> Self {
        let gate = gate.clone();
        Self {
            before_write: Box::new(move || {
                gate.wait();
                Ok(())
            }),
            blocks: true,
            ..Self::new(inner)
        }
    }

    /// A store that refuses every batch write while `full` is set.
    fn refusing_while(
        inner: MemStore,
        full: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        let full = full.clone();
        Self {
            before_write: Box::new(move || {
                if full.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(StoreError::msg("the store is full"));
                }
                Ok(())
            }),
            ..Self::new(inner)
        }
    }

    /// A store that behaves like a disk: its writes block and take a moment.
    fn disk_like(inner: MemStore) -> Self {
        Self {
            before_write: Box::new(|| {
                std::thread::sleep(Duration::from_millis(2));
                Ok(())
            }),
            blocks: true,
            ..Self::new(inner)
        }
    }
}

impl NodeStore for Hooked {
    fn contains(&self, id: &ChunkHash) -> Result<bool, StoreError> {
        self.inner.contains(id)
    }
    fn get(&self, id: &ChunkHash) -> Result<Option<Bytes>, StoreError> {
        Ok(self.inner.get(id)?.map(self.serve))
    }
    fn insert(&self, chunk: VerifiedChunk) -> Result<bool, StoreError> {
        self.inner.insert(chunk)
    }
    fn insert_batch(&self, chunks: &[VerifiedChunk]) -> Result<Inserted, StoreError> {
        (self.before_write)()?;
        self.inner.insert_batch(chunks)
    }
    fn writes_block(&self) -> bool {
        self.blocks
    }
    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), StoreError> {
        self.inner.ids_after(after, out)
    }
    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), StoreError> {
        self.inner.origins_after(after, out)
    }
    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError> {
        self.inner.chunks_in(range, out)
    }
    fn len(&self) -> Result<usize, StoreError> {
        self.inner.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_peer_is_refused_and_an_honest_one_serves() {
    let set = chunks(1, 120, 10, 300);
    let honest = node(1, &set, |c| c);
    let liar =
        Node::new_insecure_plaintext(NodeConfig::new(NodeId(2)), Hooked::liar(set.mem_store()))
            .unwrap();
    let me = node(3, &SimNode::default(), |c| c);
    let (lh, ll) = (
        honest.listen("127.0.0.1:0").await.unwrap(),
        liar.listen("127.0.0.1:0").await.unwrap(),
    );

    // Chunks of a range are hashed as they arrive: the liar's are no valid chunk.
    let report = me.sync_with(ll.local_addr()).await.unwrap();
    assert_eq!(report.failed.len(), 12);
    assert!(report.failed.iter().all(|(_, r)| *r == FailReason::Invalid));
    assert!(ids(&me).is_empty(), "nothing unverified is stored");
    // Chunks asked for by hash: its bytes do not match.
    let report = me.fetch_from(ll.local_addr(), set.ids()).await.unwrap();
    assert_eq!(report.failed.len(), 12);
    assert!(
        report
            .failed
            .iter()
            .all(|(_, r)| *r == FailReason::HashMismatch)
    );
    assert!(ids(&me).is_empty(), "nothing unverified is stored");

    let report = me.fetch_from(lh.local_addr(), set.ids()).await.unwrap();
    assert_eq!(report.progress.synced_chunks, 12);
    assert_eq!(ids(&me), set.ids());
}

/// A stream that fails once `left` bytes have been read from it, keeping what was read.
struct CutAfter<S> {
    inner: S,
    left: usize,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl<S> CutAfter<S> {
    fn new(inner: S, left: usize) -> Self {
        Self {
            inner,
            left,
            seen: std::sync::Arc::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CutAfter<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut")));
        }
        let room = buf.remaining().min(self.left);
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        let poll = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        self.seen
            .lock()
            .unwrap()
            .extend_from_slice(limited.filled());
        buf.advance(n);
        self.left -= n;
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CutAfter<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_without_refetching() {
    let set = chunks(1, 2_000, 10, 400); // 200 chunks, about 800 KB
    let server = node(1, &set, |c| c);
    let client = node(2, &SimNode::default(), |c| c);
    let listener = server.listen("127.0.0.1:0").await.unwrap();

    let stream = TcpStream::connect(listener.local_addr()).await.unwrap();
    let cut = client.sync_over(CutAfter::new(stream, 300_000)).await;
    assert!(matches!(cut, Err(Error::Io(_))), "{cut:?}");
    let have = ids(&client);
    assert!(
        !have.is_empty() && have.len() < 200,
        "cut mid-sync: {} chunks",
        have.len()
    );
    let remaining: Vec<&Vec<u8>> = set
        .store
        .iter()
        .filter(|(id, _)| have.binary_search(id).is_err())
        .map(|(_, c)| c)
        .collect();

    let report = client.sync_with(listener.local_addr()).await.unwrap();
    assert_eq!(ids(&client), set.ids());
    assert_eq!(report.progress.synced_chunks, remaining.len() as u64);
    assert_eq!(
        report.progress.bytes_transferred,
        remaining.iter().map(|c| c.len() as u64).sum::<u64>(),
        "only chunks not yet stored travel again"
    );
}

/// `server` and `client` sync over an in-memory pipe; returns the client's report and the
/// time it took.
async fn over_a_pipe(server: &Node, client: &Node) -> (chunk_sync_tokio::SyncReport, Duration) {
    let (a, b) = tokio::io::duplex(256 << 10);
    let start = tokio::time::Instant::now();
    let (served, fetched) = tokio::join!(server.sync_over(a), client.sync_over(b));
    let took = start.elapsed();
    served.unwrap();
    (fetched.unwrap(), took)
}

/// `server` (holding about 5 MB) and `client` sync over a pipe on the paused clock; fails
/// unless the client received at 1 MB/s within 2%. Returns the client's report.
async fn at_one_megabyte_per_second(server: Node, client: Node) -> chunk_sync_tokio::SyncReport {
    let (report, took) = over_a_pipe(&server, &client).await;
    let received = report.stats.bytes_received;
    let expected = Duration::from_micros(received);
    let off = took.as_secs_f64() / expected.as_secs_f64() - 1.0;
    assert!(
        off.abs() <= 0.02,
        "{received} bytes received at 1 MB/s took {took:?}, expected {expected:?}"
    );
    assert!(received >= 5_000_000);
    report
}

#[tokio::test(start_paused = true)]
async fn five_megabytes_at_one_megabyte_per_second_take_five_seconds() {
    let set = chunks(1, 5_000, 50, 1_000); // 100 chunks, about 5 MB
    let total: u64 = set.store.values().map(|c| c.len() as u64).sum();
    let throttle = ThrottleConfig {
        max_bytes_per_sec: 1_000_000,
        window_duration: Duration::from_millis(20),
    };
    // The chunks compress: sent raw, their bytes are what the rate counts.
    let raw = |c| NodeConfig {
        compress: Compress::Never,
        ..c
    };
    let server = node(1, &set, |c| NodeConfig { throttle, ..raw(c) });
    let client = node(2, &SimNode::default(), |c| c);
    let report = at_one_megabyte_per_second(server, client).await;
    assert_eq!(report.progress.bytes_transferred, total);
    assert!(total >= 5_000_000);
}

#[tokio::test(start_paused = true)]
async fn a_puller_that_asks_for_one_megabyte_per_second_receives_at_that_rate() {
    let set = chunks(1, 5_000, 50, 1_000); // 100 chunks, about 5 MB
    // The server has no limit of its own; the client tells it the most it wants.
    let server = node(1, &set, |c| NodeConfig {
        compress: Compress::Never,
        ..c
    });
    let client = node(2, &SimNode::default(), |c| NodeConfig {
        receive_rate: 1_000_000,
        ..c
    });
    at_one_megabyte_per_second(server, client).await;
}

/// The same pull, with the server left to its default: the link is rate-limited, so the
/// chunks travel compressed, and the client receives all of them, verified, in a fraction
/// of the bytes and of the time; the rate holds for the bytes on the wire.
#[tokio::test(start_paused = true)]
async fn a_rate_limited_pull_of_chunks_that_compress_takes_a_fraction_of_the_time() {
    let set = chunks(1, 5_000, 50, 1_000);
    let total: u64 = set.store.values().map(|c| c.len() as u64).sum();
    let server = node(1, &set, |c| c);
    let client = node(2, &SimNode::default(), |c| NodeConfig {
        receive_rate: 1_000_000,
        ..c
    });
    let (report, took) = over_a_pipe(&server, &client).await;
    assert_eq!(ids(&client), set.ids());
    assert_eq!(report.progress.bytes_transferred, total);
    let received = report.stats.bytes_received;
    assert!(
        received * 3 < total,
        "{received} bytes on the wire for {total}"
    );
    // About a second of transfer: the first window's burst and the handshake weigh more
    // than over the five seconds of the raw pull.
    let rate = received as f64 / took.as_secs_f64();
    assert!(rate <= 1_100_000.0, "{rate:.0} bytes/s");
    assert!(took < Duration::from_secs(2), "{took:?} for {total} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_peers_pull_from_one_node_at_once() {
    let set = chunks(1, 3_000, 20, 256);
    let server = node(1, &set, |c| c);
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let peer = node(100 + i, &SimNode::default(), |c| c);
        tasks.push(tokio::spawn(async move {
            let report = peer.sync_with(addr).await.unwrap();
            assert!(report.failed.is_empty());
            peer
        }));
    }
    for task in tasks {
        let peer = task.await.unwrap();
        assert_eq!(ids(&peer), set.ids());
        for id in set.ids() {
            let bytes = peer.store().get(&id).unwrap().unwrap();
            assert_eq!(ChunkHash::of(&bytes), id, "every stored chunk verifies");
        }
    }
}

/// Eight peers push their logs into one node at once whose bound on unwritten bytes, all
/// sessions together, is less than one chunk: sessions wait for each other's writes, and
/// every log arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_past_the_node_s_bound_on_unwritten_bytes_wait_for_writes_and_arrive() {
    let server = Node::new_insecure_plaintext(
        NodeConfig {
            max_unwritten: 1_000,
            ..accepting(NodeConfig::new(NodeId(1)))
        },
        Hooked::disk_like(MemStore::new()),
    )
    .unwrap();
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let mut expected = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let log = chunks(10 + i, 300, 5, 400);
        expected.extend(log.ids());
        let peer = node(10 + i, &log, |c| c);
        tasks.push(tokio::spawn(async move { peer.sync_with(addr).await }));
    }
    for task in tasks {
        let report = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("every push completes")
            .unwrap()
            .unwrap();
        assert!(report.failed.is_empty());
    }
    expected.sort();
    // The server writes what it fetched as its sessions end.
    for _ in 0..600 {
        if ids(&server).len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = ids(&server);
    assert_eq!(held.len(), expected.len());
    assert!(held == expected, "the server holds every pushed log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_in_the_background_gets_everything_or_fails_when_full() {
    let set = chunks(1, 400, 10, 2_000);
    let server = node(1, &set, |c| c);
    let listener = server.listen("127.0.0.1:0").await.unwrap();

    let me = Node::new_insecure_plaintext(
        NodeConfig::new(NodeId(2)),
        Hooked::disk_like(MemStore::new()),
    )
    .unwrap();
    let report = me.sync_with(listener.local_addr()).await.unwrap();
    assert_eq!(report.progress.synced_chunks, 40);
    assert_eq!(
        ids(&me),
        set.ids(),
        "every chunk is written before the sync ends"
    );

    // A store that fills up mid-way: the session ends with the store's error, what was
    // written stays and verifies, and the serving node goes on serving.
    let limit = 25 * 20_500;
    let full = Node::new_insecure_plaintext(
        NodeConfig::new(NodeId(3)),
        Hooked::disk_like(MemStore::with_limit(limit)),
    )
    .unwrap();
    match full.sync_with(listener.local_addr()).await {
        Err(Error::Store(_)) => {}
        other => panic!("expected a store error, got {other:?}"),
    }
    let kept = ids(&full);
    assert!(
        !kept.is_empty() && kept.len() < 40,
        "{} chunks kept",
        kept.len()
    );
    for id in &kept {
        let bytes = full.store().get(id).unwrap().unwrap();
        assert_eq!(ChunkHash::of(&bytes), *id);
    }
    let again = Node::new_insecure_plaintext(
        NodeConfig::new(NodeId(4)),
        Hooked::disk_like(MemStore::new()),
    )
    .unwrap();
    again.sync_with(listener.local_addr()).await.unwrap();
    assert_eq!(ids(&again), set.ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_chunks_are_fetched_from_the_next_peer_that_has_them() {
    let set = chunks(1, 120, 10, 300);
    let honest = node(1, &set, |c| c);
    let liar =
        Node::new_insecure_plaintext(NodeConfig::new(NodeId(2)), Hooked::liar(set.mem_store()))
            .unwrap();
    let (lh, ll) = (
        honest.listen("127.0.0.1:0").await.unwrap(),
        liar.listen("127.0.0.1:0").await.unwrap(),
    );
    // A port nobody listens on: bind one, note it, let it go.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let me = node(3, &SimNode::default(), |c| c);
    let report = me
        .pull_from_any([ll.local_addr(), gone, lh.local_addr()])
        .await;
    assert_eq!(report.attempts.len(), 3);
    let lied = report.attempts[0].as_ref().unwrap();
    assert_eq!(lied.failed.len(), 12, "every chunk from the liar failed");
    assert!(
        report.attempts[1].is_err(),
        "the unreachable peer is skipped"
    );
    let honest_report = report.attempts[2].as_ref().unwrap();
    assert_eq!(honest_report.progress.synced_chunks, 12);
    assert!(report.is_complete(), "{:?}", report.unresolved);
    assert_eq!(report.synced_chunks(), 12);
    assert_eq!(ids(&me), set.ids());

    // Nothing left to ask: the next call walks the first peer and stops there.
    let again = me.pull_from_any([lh.local_addr(), ll.local_addr()]).await;
    assert_eq!(again.attempts.len(), 1);
    assert!(again.is_complete() && again.synced_chunks() == 0);
}

/// A gate the test opens, and whether a write is waiting at it.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    waiting: std::sync::atomic::AtomicBool,
}

impl Gate {
    fn wait(&self) {
        self.waiting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_while_a_write_of_its_store_is_in_progress() {
    let (own, theirs) = (chunks(1, 100, 10, 300), chunks(2, 100, 10, 300));
    let gate = std::sync::Arc::new(Gate::default());
    let store = Hooked::gated(own.mem_store(), &gate);
    let a = std::sync::Arc::new(
        Node::new_insecure_plaintext(NodeConfig::new(NodeId(1)), store).unwrap(),
    );
    let b = node(2, &theirs, |c| c);
    let (la, lb) = (
        a.listen("127.0.0.1:0").await.unwrap(),
        b.listen("127.0.0.1:0").await.unwrap(),
    );
    let pulling = tokio::spawn({
        let a = a.clone();
        let from = lb.local_addr();
        async move { a.pull_from(from).await }
    });
    while !gate.waiting.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A write of `a`'s store is stuck at the gate; `a` still answers another peer.
    let c = node(3, &SimNode::default(), |c| c);
    let served = tokio::time::timeout(Duration::from_secs(10), c.pull_from(la.local_addr()))
        .await
        .expect("reads do not wait for a write in progress")
        .unwrap();
    assert_eq!(served.progress.synced_chunks, 10);
    assert_eq!(ids(&c), own.ids());

    gate.open();
    let pulled = pulling.await.unwrap().unwrap();
    assert_eq!(pulled.progress.synced_chunks, 10);
    assert_eq!(ids(&a).len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_more_chunks_than_a_manifest_page_gets_them_all() {
    // 3,000 one-event chunks: more than a host session's queue of wanted chunks (2,048).
    let set = chunks(1, 3_000, 1, 8);
    let server = node(1, &set, |c| c);
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let me = node(2, &SimNode::default(), |c| c);
    let report = me
        .fetch_from(listener.local_addr(), set.ids())
        .await
        .unwrap();
    assert_eq!(report.progress.synced_chunks, 3_000);
    assert!(report.failed.is_empty());
    assert_eq!(ids(&me), set.ids());
}

/// The chunks whose bytes came whole in `received`, a stream of frames cut anywhere.
fn whole_chunks(received: &[u8]) -> Vec<ChunkHash> {
    use chunk_sync_core::wire::{self, Decoded, MAX_FRAME_LIMIT, Message};
    let mut whole = Vec::new();
    let mut chunk = Vec::new();
    let mut at = 0;
    while let Ok(Decoded::Frame { message, len }) = wire::decode(&received[at..], MAX_FRAME_LIMIT) {
        if let Message::EventChunkPut {
            total_len,
            offset,
            data,
        } = message
        {
            if offset == 0 {
                chunk.clear();
            }
            chunk.extend_from_slice(data);
            if chunk.len() == total_len as usize {
                whole.push(ChunkHash::of(&chunk));
            }
        }
        at += len;
    }
    whole.sort();
    whole
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_while_its_store_is_writing_keeps_every_chunk_it_verified() {
    let set = chunks(1, 2_000, 10, 400); // 200 chunks, about 800 KB
    let server = node(1, &set, |c| c);
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    // The client's first write is held at a gate while more chunks arrive and are verified,
    // then the connection is cut.
    let gate = std::sync::Arc::new(Gate::default());
    let store = Hooked::gated(MemStore::new(), &gate);
    let client = std::sync::Arc::new(
        Node::new_insecure_plaintext(NodeConfig::new(NodeId(2)), store).unwrap(),
    );
    let limit = 300_000;
    let stream = CutAfter::new(
        TcpStream::connect(listener.local_addr()).await.unwrap(),
        limit,
    );
    let seen = stream.seen.clone();
    let cut = tokio::spawn({
        let client = client.clone();
        async move { client.sync_over(stream).await }
    });
    while seen.lock().unwrap().len() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the session hit the cut before its first write is let through.
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();
    let cut = cut.await.unwrap();
    assert!(matches!(cut, Err(Error::Io(_))), "{cut:?}");

    let verified = whole_chunks(&seen.lock().unwrap());
    assert!(verified.len() > 10, "{} chunks came whole", verified.len());
    assert_eq!(
        ids(&client),
        verified,
        "every chunk verified before the cut is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_fails_tells_its_peer() {
    let set = chunks(1, 400, 10, 2_000); // 40 chunks of about 20 KB
    let server = node(1, &set, |c| c);
    // A store written inline fails before the session can finish: the session aborts with
    // the store's error and the peer, busy sending, hears why instead of a reset
    // connection. (A store written on a blocking thread may fail after the session has
    // completed; the peer then has nothing to hear.)
    let client = Node::new_insecure_plaintext(
        NodeConfig::new(NodeId(2)),
        Hooked::new(MemStore::with_limit(100_000)),
    )
    .unwrap();
    let (a, b) = tokio::io::duplex(256 << 10);
    let (mine, theirs) = tokio::join!(client.sync_over(a), server.sync_over(b));
    assert!(matches!(mine, Err(Error::Store(_))), "{mine:?}");
    assert!(
        matches!(
            theirs,
            Err(Error::Protocol(chunk_sync_core::session::Error::Remote(_)))
        ),
        "the peer is told: {theirs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_can_be_watched_instead_of_polled() {
    let set = chunks(1, 200, 10, 100);
    let server = node(1, &set, |c| c);
    let client = node(2, &SimNode::default(), |c| c);
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let mut changes = client.progress_changes();
    let watcher = tokio::spawn(async move {
        let mut seen = 0;
        while changes.changed().await.is_ok() {
            seen += 1;
        }
        seen
    });
    let report = client.pull_from(listener.local_addr()).await.unwrap();
    assert_eq!(report.progress.synced_chunks, 20);
    let progress = client.progress(&NodeId(1)).unwrap();
    assert_eq!(
        progress.synced_chunks, 20,
        "the last change holds the final counts"
    );
    drop(client);
    let seen = watcher.await.unwrap();
    assert!(seen >= 1, "the watch changed {seen} times");
}

/// A node lists another's chunks over TCP: every hash, whatever it holds itself, with no
/// chunk fetched and nothing stored; and the hashes are the other's manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lists_the_chunks_another_holds_without_fetching_them() {
    let mut set = chunks(1, 3_000, 3, 40);
    set.store.extend(chunks(2, 50, 10, 400).store);
    let server = node(1, &set, |c| c);
    let listener = server.listen("127.0.0.1:0").await.unwrap();
    let some = chunks(1, 30, 3, 40);
    let client = node(3, &some, |c| c);
    let listed = client.list_from(listener.local_addr()).await.unwrap();
    assert_eq!(listed, set.ids());
    assert_eq!(ids(&client), some.ids(), "nothing fetched");
}

/// A store that refuses writes for a while (full): the own log's sealed chunks are kept,
/// an append fails and takes nothing while the store still refuses them, and once it takes
/// writes again the same events appended again are all stored, in order, none lost, none
/// twice.
#[tokio::test]
async fn own_chunks_the_store_refuses_are_kept_and_stored_once_it_takes_them() {
    use chunk_sync_core::{EventBuf, Privacy};
    use std::sync::atomic::{AtomicBool, Ordering};
    let full = std::sync::Arc::new(AtomicBool::new(true));
    let config = NodeConfig {
        events_per_chunk: 10,
        seal_delay: None,
        ..NodeConfig::new(NodeId(1))
    };
    let node = Node::new_insecure_plaintext(config, Hooked::refusing_while(MemStore::new(), &full))
        .unwrap();
    let events = |seqs: std::ops::Range<u64>| -> Vec<EventBuf> {
        seqs.map(|seq| EventBuf {
            origin: NodeId(1),
            seq,
            timestamp: seq,
            kind: "t".into(),
            privacy: Privacy::Public,
            payload: vec![7; 16],
        })
        .collect()
    };
    // Two chunks sealed and refused, and kept; five events stay in the open chunk.
    let done = node.append_batch(&events(0..25)).await.unwrap();
    assert_eq!((done.taken, done.sealed, done.unstored), (25, 0, 2));
    // Still refused: nothing new is taken.
    let err = node.append_batch(&events(25..40)).await.unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err}");
    assert!(ids(&node).is_empty());
    full.store(false, Ordering::SeqCst);
    let done = node.append_batch(&events(0..40)).await.unwrap();
    assert_eq!(
        (done.late, done.taken, done.sealed, done.unstored),
        (25, 15, 2, 0)
    );
    let mut spans = [(Span::default(), ChunkHash::default()); 8];
    let n = node
        .store()
        .chunks_in(&KeyRange::whole(NodeId(1)), &mut spans)
        .unwrap();
    let covered: Vec<(u64, u64)> = spans[..n]
        .iter()
        .map(|(s, _)| (s.first_seq, s.end_seq))
        .collect();
    assert_eq!(covered, [(0, 10), (10, 20), (20, 30), (30, 40)]);
}
