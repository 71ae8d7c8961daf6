//! End to end: 256 MiB of chunks synced between two nodes in one process over loopback
//! TCP, beside a plain tokio copy of the same bytes and a copy that BLAKE3-hashes them on
//! the receiver, in the same run; the same sync over a secure link, beside a copy sealed
//! with ChaCha20-Poly1305 in records of the same size; and a sync with nothing to move,
//! plaintext and secure (the handshake's cost on the host).
#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented items.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use chunk_sync_benches::{as_events, events, seal_one_by};
use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::secure::{Keypair, MAX_RECORD, RECORD_OVERHEAD};
use chunk_sync_core::store::fill_origins;
use chunk_sync_core::{ChunkHash, NodeId, Span};
use chunk_sync_tokio::{
    MemStore, Node, NodeConfig, NodeStore, Permissions, Security, VerifiedChunk, generate_keypair,
};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// 256 chunks of about 1 MiB (256 events of 4 KiB each), of the log of `keys` and signed
/// by it if given (a secure node takes no other).
fn corpus(keys: Option<&Keypair>) -> Vec<Vec<u8>> {
    (0..256u64)
        .map(|i| {
            let mut log = events(256, 4096);
            // Consecutive ranges of one log: 256 chunks, none forking another.
            for e in &mut log {
                e.seq += i * 256;
                e.payload[0] = i as u8;
                e.payload[1] = (i >> 8) as u8;
                if let Some(keys) = keys {
                    e.origin = keys.node_id();
                }
            }
            seal_one_by(&as_events(&log), keys).1
        })
        .collect()
}

/// A store that keeps the hashes and spans of what it is given and drops the bytes: it
/// isolates the cost of the protocol, the transport and verification from the cost of
/// keeping 256 MiB.
#[derive(Default)]
struct HashesOnly(Mutex<Held>);

#[derive(Default)]
struct Held {
    ids: BTreeSet<ChunkHash>,
    spans: BTreeMap<(NodeId, u64), (u64, ChunkHash)>,
}

impl HashesOnly {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl NodeStore for HashesOnly {
    fn contains(&self, id: &ChunkHash) -> Result<bool, chunk_sync_tokio::StoreError> {
        Ok(self.held().ids.contains(id))
    }
    fn get(&self, _: &ChunkHash) -> Result<Option<bytes::Bytes>, chunk_sync_tokio::StoreError> {
        Ok(None)
    }
    fn insert(&self, chunk: VerifiedChunk) -> Result<bool, chunk_sync_tokio::StoreError> {
        let mut held = self.held();
        if let Some(span) = Span::of(chunk.bytes()) {
            held.spans
                .insert((span.origin, span.first_seq), (span.end_seq, chunk.id()));
        }
        Ok(held.ids.insert(chunk.id()))
    }
    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), chunk_sync_tokio::StoreError> {
        let held = self.held();
        let rest = held
            .ids
            .iter()
            .filter(|id| after.is_none_or(|a| *id > a))
            .copied();
        Ok(chunk_sync_core::store::fill_page(out, rest))
    }
    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), chunk_sync_tokio::StoreError> {
        let held = self.held();
        Ok(fill_origins(out, after, |above| {
            held.spans
                .keys()
                .map(|k| k.0)
                .find(|o| above.is_none_or(|a| *o > a))
        }))
    }
    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, chunk_sync_tokio::StoreError> {
        if range.lo >= range.hi {
            return Ok(0);
        }
        let held = self.held();
        let found = held
            .spans
            .range((range.origin, range.lo)..(range.origin, range.hi))
            .map(|(&(origin, first_seq), &(end_seq, id))| {
                let span = Span {
                    origin,
                    first_seq,
                    end_seq,
                };
                (span, id)
            });
        Ok(out.iter_mut().zip(found).map(|(slot, c)| *slot = c).count())
    }
    fn len(&self) -> Result<usize, chunk_sync_tokio::StoreError> {
        Ok(self.held().ids.len())
    }
}

fn store_of(chunks: &[Vec<u8>]) -> MemStore {
    let store = MemStore::new();
    for c in chunks {
        store
            .insert(VerifiedChunk::new(ChunkHash::of(c), c.clone()).unwrap())
            .unwrap();
    }
    store
}

/// Sends `chunks` over loopback TCP one write per chunk; the receiver reads each chunk whole
/// and, if `hash`, BLAKE3-hashes every chunk.
async fn copy(chunks: &[Vec<u8>], hash: bool) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let total: usize = chunks.iter().map(Vec::len).sum();
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    let receiver = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 2 << 20];
        let mut got = 0u64;
        for size in sizes {
            let chunk = &mut buf[..size];
            s.read_exact(chunk).await.unwrap();
            if hash {
                black_box(blake3::hash(chunk));
            }
            got += size as u64;
        }
        got
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for c in chunks {
        s.write_all(c).await.unwrap();
    }
    s.flush().await.unwrap();
    let got = receiver.await.unwrap();
    assert_eq!(got, total as u64);
    got
}

/// The plaintext a secure record holds at most.
const RECORD_PLAINTEXT: usize = MAX_RECORD as usize - RECORD_OVERHEAD;
/// ChaCha20-Poly1305's tag, at the end of each record.
const TAG: usize = 16;

/// A nonce of a counter, as Noise's transport makes them.
fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::from(bytes)
}

/// Sends `chunks` over loopback TCP as a secure link carries them: each cut into records
/// of at most [`RECORD_PLAINTEXT`] bytes, sealed with ChaCha20-Poly1305 by the sender
/// (a two-byte length, the ciphertext, the tag) and opened by the receiver, which
/// BLAKE3-hashes every chunk.
async fn copy_sealed(chunks: &[Vec<u8>]) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let total: usize = chunks.iter().map(Vec::len).sum();
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    let key = [7u8; 32];
    let receiver = tokio::spawn(async move {
        let aead = ChaCha20Poly1305::new(&key.into());
        let (mut s, _) = listener.accept().await.unwrap();
        let mut s = tokio::io::BufReader::with_capacity(256 << 10, &mut s);
        let mut chunk = vec![0u8; 2 << 20];
        let (mut got, mut n) = (0u64, 0u64);
        for size in sizes {
            let mut at = 0;
            while at < size {
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await.unwrap();
                let len = usize::from(u16::from_le_bytes(len));
                let plain = len - TAG;
                let (body, tag) = chunk[at..at + len].split_at_mut(plain);
                s.read_exact(body).await.unwrap();
                s.read_exact(tag).await.unwrap();
                let tag = chacha20poly1305::Tag::clone_from_slice(tag);
                aead.decrypt_in_place_detached(&nonce(n), &[], &mut chunk[at..at + plain], &tag)
                    .unwrap();
                n += 1;
                at += plain;
            }
            black_box(blake3::hash(&chunk[..size]));
            got += size as u64;
        }
        got
    });
    let aead = ChaCha20Poly1305::new(&key.into());
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut record = vec![0u8; MAX_RECORD as usize];
    let mut n = 0u64;
    for c in chunks {
        for piece in c.chunks(RECORD_PLAINTEXT) {
            let len = piece.len() + TAG;
            record[..2].copy_from_slice(&(len as u16).to_le_bytes());
            record[2..2 + piece.len()].copy_from_slice(piece);
            let tag = aead
                .encrypt_in_place_detached(&nonce(n), &[], &mut record[2..2 + piece.len()])
                .unwrap();
            record[2 + piece.len()..2 + len].copy_from_slice(&tag);
            n += 1;
            s.write_all(&record[..2 + len]).await.unwrap();
        }
    }
    s.flush().await.unwrap();
    let got = receiver.await.unwrap();
    assert_eq!(got, total as u64);
    got
}

/// A secure node of `keys` that lets every authenticated key in.
fn secure_node(keys: Keypair, store: impl NodeStore) -> Node {
    let config = NodeConfig {
        max_frame: MAX_RECORD,
        ..NodeConfig::new(keys.node_id())
    };
    let security = Security {
        keys,
        peers: Permissions::open(),
    };
    Node::new(config, store, security).unwrap()
}

/// A group of runs that each move `total` bytes (about 256 MiB): ten samples over 20 s.
fn group_of_256mib<'c>(
    c: &'c mut Criterion,
    name: &str,
    total: u64,
) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(total));
    group
}

fn sync(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Each node on a runtime of its own with one worker, as two processes on two cores
    // would be: on one runtime, the two ends of a connection wake each other on the same
    // worker and share its core.
    let one_worker = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let (server_rt, client_rt) = (one_worker(), one_worker());
    let chunks = corpus(None);
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let server =
        Node::new_insecure_plaintext(NodeConfig::new(NodeId(1)), store_of(&chunks)).unwrap();
    let listener = server_rt.block_on(server.listen("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr();

    let mut group = group_of_256mib(c, "sync_256MiB", total);
    group.bench_function("tokio_copy", |b| {
        b.iter(|| rt.block_on(copy(&chunks, false)))
    });
    group.bench_function("tokio_copy+blake3", |b| {
        b.iter(|| rt.block_on(copy(&chunks, true)))
    });
    group.bench_function("chunk_sync", |b| {
        b.iter(|| {
            let client =
                Node::new_insecure_plaintext(NodeConfig::new(NodeId(2)), MemStore::new()).unwrap();
            let report = client_rt.block_on(client.sync_with(addr)).unwrap();
            assert_eq!(report.progress.bytes_transferred, total);
            black_box(report)
        });
    });
    group.bench_function("chunk_sync_verify_only", |b| {
        b.iter(|| {
            let client =
                Node::new_insecure_plaintext(NodeConfig::new(NodeId(3)), HashesOnly::default())
                    .unwrap();
            let report = client_rt.block_on(client.sync_with(addr)).unwrap();
            assert_eq!(report.progress.bytes_transferred, total);
            black_box(report)
        });
    });
    group.finish();

    // The server's own log, signed.
    let server_keys = generate_keypair().unwrap();
    let chunks = corpus(Some(&server_keys));
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let secure_server = secure_node(server_keys, store_of(&chunks));
    let secure_listener = server_rt
        .block_on(secure_server.listen("127.0.0.1:0"))
        .unwrap();
    let secure_addr = secure_listener.local_addr();
    let mut group = group_of_256mib(c, "sync_256MiB_secure", total);
    group.bench_function("tokio_copy+chacha20poly1305+blake3", |b| {
        b.iter(|| rt.block_on(copy_sealed(&chunks)))
    });
    group.bench_function("chunk_sync_secure_verify_only", |b| {
        b.iter(|| {
            let client = secure_node(generate_keypair().unwrap(), HashesOnly::default());
            let report = client_rt.block_on(client.sync_with(secure_addr)).unwrap();
            assert_eq!(report.progress.bytes_transferred, total);
            black_box(report)
        });
    });
    group.finish();

    // A sync with nothing to move: connect, (handshake,) Hello, one reconciliation round.
    let empty = Node::new_insecure_plaintext(NodeConfig::new(NodeId(7)), MemStore::new()).unwrap();
    let empty_listener = rt.block_on(empty.listen("127.0.0.1:0")).unwrap();
    let secure_empty = secure_node(generate_keypair().unwrap(), MemStore::new());
    let secure_empty_listener = rt.block_on(secure_empty.listen("127.0.0.1:0")).unwrap();
    let mut group = c.benchmark_group("empty_sync");
    group.bench_function("plaintext", |b| {
        let client =
            Node::new_insecure_plaintext(NodeConfig::new(NodeId(8)), MemStore::new()).unwrap();
        b.iter(|| {
            black_box(
                rt.block_on(client.sync_with(empty_listener.local_addr()))
                    .unwrap(),
            )
        });
    });
    group.bench_function("secure", |b| {
        let client = secure_node(generate_keypair().unwrap(), MemStore::new());
        let addr = secure_empty_listener.local_addr();
        b.iter(|| black_box(rt.block_on(client.sync_with(addr)).unwrap()));
    });
    group.finish();
}

criterion_group!(benches, sync);
criterion_main!(benches);
