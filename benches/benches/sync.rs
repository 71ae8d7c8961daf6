//! End to end: 256 MiB of chunks synced between two nodes in one process over loopback
//! TCP, beside a plain tokio copy of the same bytes and a copy that BLAKE3-hashes them on
//! the receiver, in the same run.
#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented items.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chunk_sync_benches::{as_events, events, seal_one};
use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::store::fill_origins;
use chunk_sync_core::{ChunkHash, NodeId, Span};
use chunk_sync_tokio::{MemStore, Node, NodeConfig, NodeStore, VerifiedChunk};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// 256 chunks of about 1 MiB (256 events of 4 KiB each).
fn corpus() -> Vec<Vec<u8>> {
    (0..256u64)
        .map(|i| {
            let mut log = events(256, 4096);
            // Consecutive ranges of one log: 256 chunks, none forking another.
            for e in &mut log {
                e.seq += i * 256;
                e.payload[0] = i as u8;
                e.payload[1] = (i >> 8) as u8;
            }
            seal_one(&as_events(&log)).1
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

fn sync(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let chunks = corpus();
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let server = Node::new(NodeConfig::new(NodeId(1)), store_of(&chunks)).unwrap();
    let listener = rt.block_on(server.listen("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr();

    let mut group = c.benchmark_group("sync_256MiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(total));
    group.bench_function("tokio_copy", |b| {
        b.iter(|| rt.block_on(copy(&chunks, false)))
    });
    group.bench_function("tokio_copy+blake3", |b| {
        b.iter(|| rt.block_on(copy(&chunks, true)))
    });
    group.bench_function("chunk_sync", |b| {
        b.iter(|| {
            let client = Node::new(NodeConfig::new(NodeId(2)), MemStore::new()).unwrap();
            let report = rt.block_on(client.sync_with(addr)).unwrap();
            assert_eq!(report.progress.bytes_transferred, total);
            black_box(report)
        });
    });
    group.bench_function("chunk_sync_verify_only", |b| {
        b.iter(|| {
            let client = Node::new(NodeConfig::new(NodeId(3)), HashesOnly::default()).unwrap();
            let report = rt.block_on(client.sync_with(addr)).unwrap();
            assert_eq!(report.progress.bytes_transferred, total);
            black_box(report)
        });
    });
    group.finish();
}

criterion_group!(benches, sync);
criterion_main!(benches);
