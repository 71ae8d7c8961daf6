//! Delta: the merge walk over sorted hash sets, beside a `HashSet` difference (the original
//! document's method), at n = 1e3, 1e5 and 1e6 hashes per side with 1% difference.
#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented items.

use std::collections::HashSet;

use chunk_sync_benches::sets_with_one_percent_difference;
use chunk_sync_core::ChunkHash;
use chunk_sync_core::delta;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn delta(c: &mut Criterion) {
    let mut group = c.benchmark_group("delta");
    group.sample_size(20);
    for n in [1_000usize, 100_000, 1_000_000] {
        let (local, remote) = sets_with_one_percent_difference(n);
        // Per hash walked, both sides counted: the unit the README quotes.
        group.throughput(Throughput::Elements((local.len() + remote.len()) as u64));
        group.bench_function(BenchmarkId::new("merge_missing", n), |b| {
            b.iter(|| black_box(delta::missing(black_box(&local), black_box(&remote)).count()));
        });
        group.bench_function(BenchmarkId::new("merge_both_ways", n), |b| {
            b.iter(|| black_box(delta::diff(black_box(&local), black_box(&remote)).count()));
        });
        group.bench_function(BenchmarkId::new("hashset_missing", n), |b| {
            b.iter(|| {
                let have: HashSet<&ChunkHash> = local.iter().collect();
                black_box(remote.iter().filter(|id| !have.contains(id)).count())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, delta);
criterion_main!(benches);
