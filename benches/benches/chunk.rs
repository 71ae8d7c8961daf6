//! Chunk creation (postcard encoding + BLAKE3), verification (BLAKE3 + header check, the
//! sync path) and verification with a full decode of every event, beside raw BLAKE3 of
//! the same bytes; and the same chunks signed by their origin (Ed25519): creation with
//! the signature, and verification with the signature's check, as a secure link makes;
//! and a host's checks of a batch of signatures, one at a time against in batches.
#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented items.

use chunk_sync_benches::{as_events, events, seal_one};
use chunk_sync_core::chunk::Chunker;
use chunk_sync_core::secure::{Keypair, SealCheck, Verifier};
use chunk_sync_core::{ChunkHash, ChunkView, Event, NodeId, Verified};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn chunk(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk");
    for (count, payload) in [(100u64, 64usize), (100, 256), (100, 512), (256, 4096)] {
        let log = events(count, payload);
        let views = as_events(&log);
        let (id, sealed) = seal_one(&views);
        let len = sealed.len();
        let mut buf = vec![0u8; 4 << 20];
        let label = format!("{count}x{payload}B");
        group.throughput(Throughput::Bytes(len as u64));

        group.bench_function(BenchmarkId::new("create", &label), |b| {
            b.iter(|| {
                let mut chunker = Chunker::new(NodeId(1), count as u32, 0, &mut buf).unwrap();
                for e in &views {
                    let _ = black_box(chunker.push(e));
                }
                black_box(chunker.seal().map(|s| s.id))
            });
        });
        group.bench_function(BenchmarkId::new("verify", &label), |b| {
            b.iter(|| black_box(ChunkView::verify(&id, black_box(&sealed)).map(|v| v.len())));
        });
        group.bench_function(BenchmarkId::new("verify+decode", &label), |b| {
            b.iter(|| {
                let view = ChunkView::verify(&id, black_box(&sealed)).unwrap();
                black_box(
                    view.events()
                        .map(|e| e.map_or(0, |e| e.payload.len()))
                        .sum::<usize>(),
                )
            });
        });
        group.bench_function(BenchmarkId::new("blake3", &label), |b| {
            b.iter(|| black_box(blake3::hash(black_box(&sealed))));
        });

        // The same events in the log of a key, signed by it.
        let keys = Keypair::from_secret([1; 32]);
        let origin = keys.node_id();
        let own: Vec<Event<'_>> = views.iter().map(|e| Event { origin, ..*e }).collect();
        let mut chunker = Chunker::new(origin, count as u32, 0, &mut buf[..])
            .unwrap()
            .signed_by(&keys)
            .unwrap();
        for e in &own {
            let _ = chunker.push(e);
        }
        let signed = chunker.seal().unwrap().bytes.to_vec();
        let signed_id = ChunkHash::of(&signed);
        group.throughput(Throughput::Bytes(signed.len() as u64));
        group.bench_function(BenchmarkId::new("create+sign", &label), |b| {
            b.iter(|| {
                let mut chunker = Chunker::new(origin, count as u32, 0, &mut buf[..])
                    .unwrap()
                    .signed_by(&keys)
                    .unwrap();
                for e in &own {
                    let _ = black_box(chunker.push(e));
                }
                black_box(chunker.seal().map(|s| s.id))
            });
        });
        // What a receiver does: the hash, the chunk's header, then the signature with the
        // hash it signs found on the way.
        group.bench_function(BenchmarkId::new("verify+signature", &label), |b| {
            b.iter(|| {
                let verified = Verified::new(signed_id, black_box(&signed)).unwrap();
                let view = ChunkView::parse(verified.bytes()).unwrap();
                black_box((view.len(), keys.public().verify_verified(&verified)))
            });
        });
    }
    group.finish();
}

/// Checking the signatures of a batch of received chunks (what a host does before it
/// writes them): one at a time, strictly, against in batches (`SealCheck::check_all`).
fn seal_checks(c: &mut Criterion) {
    const N: usize = chunk_sync_core::secure::CHECK_BATCH;
    let keys = Keypair::from_secret([11; 32]);
    let origin = keys.node_id();
    let mut buf = vec![0u8; 4096];
    let chunks: Vec<(ChunkHash, Vec<u8>)> = (0..N as u64)
        .map(|seq| {
            let mut chunker = Chunker::new(origin, 1, seq, &mut buf[..])
                .unwrap()
                .signed_by(&keys)
                .unwrap();
            let payload = seq.to_le_bytes();
            let event = Event {
                origin,
                seq,
                timestamp: seq,
                kind: "reading",
                privacy: chunk_sync_core::Privacy::Public,
                payload: &payload,
            };
            let _ = chunker.push(&event);
            let sealed = chunker.seal().unwrap();
            (sealed.id, sealed.bytes.to_vec())
        })
        .collect();
    let verifier = Verifier::new(*keys.public()).unwrap();
    let checks: Vec<SealCheck> = chunks
        .iter()
        .map(|(id, bytes)| SealCheck::of(&verifier, &Verified::new(*id, bytes).unwrap()).unwrap())
        .collect();
    let refs: Vec<&SealCheck> = checks.iter().collect();
    let mut group = c.benchmark_group("seal-check");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function(BenchmarkId::new("one-at-a-time", N), |b| {
        b.iter(|| black_box(refs.iter().filter(|c| c.check().is_ok()).count()));
    });
    group.bench_function(BenchmarkId::new("batched", N), |b| {
        b.iter(|| black_box(SealCheck::check_all(black_box(&refs)).len()));
    });
    group.finish();
}

criterion_group!(benches, chunk, seal_checks);
criterion_main!(benches);
