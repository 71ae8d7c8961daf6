//! Frame encode and decode: a 16 KiB chunk piece and a full reconciliation answer.
#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented items.

use chunk_sync_benches::Rng;
use chunk_sync_core::wire::{self, DEFAULT_MAX_FRAME, Decoded, Message, RECON_OVERHEAD};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    let mut rng = Rng::new(7);
    let mut data = vec![0u8; 16 << 10];
    rng.fill(&mut data);
    let mut entries = vec![0u8; DEFAULT_MAX_FRAME as usize - RECON_OVERHEAD];
    rng.fill(&mut entries);
    let put = Message::EventChunkPut {
        total_len: 16 << 10,
        offset: 0,
        data: &data,
    };
    let answer = Message::Answer {
        last: false,
        entries: &entries,
    };
    let mut buf = vec![0u8; DEFAULT_MAX_FRAME as usize];
    for (name, message) in [("put_16KiB", put), ("answer_64KiB", answer)] {
        let frame = wire::encode(&message, &mut buf).unwrap().to_vec();
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| black_box(wire::encode(black_box(&message), &mut buf).map(<[u8]>::len)));
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(
                || match wire::decode(black_box(&frame), DEFAULT_MAX_FRAME) {
                    Ok(Decoded::Frame { len, .. }) => black_box(len),
                    other => panic!("{other:?}"),
                },
            );
        });
    }
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
