//! The throttle's decision: admitted sends, refused sends, and `next_ready`.
#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented items.

use chunk_sync_core::{Duration, Instant, Throttle, ThrottleConfig};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn throttle(c: &mut Criterion) {
    let mut group = c.benchmark_group("throttle");
    let config = ThrottleConfig {
        max_bytes_per_sec: 1_000_000,
        window_duration: Duration::from_millis(100),
    };
    group.bench_function("try_consume_admit", |b| {
        // Time advances 1 ms per call and each call sends the rate's worth: always admitted.
        let mut t = Throttle::new(config).unwrap();
        let mut now = 0u64;
        b.iter(|| {
            now += 1_000;
            black_box(t.try_consume(Instant::from_micros(now), black_box(1_000)))
        });
    });
    group.bench_function("try_consume_refuse", |b| {
        let mut t = Throttle::new(config).unwrap();
        let _ = t.try_consume(Instant::ZERO, 10_000_000);
        b.iter(|| black_box(t.try_consume(black_box(Instant::from_micros(5)), black_box(1_000))));
    });
    group.bench_function("next_ready", |b| {
        let mut t = Throttle::new(config).unwrap();
        let _ = t.try_consume(Instant::ZERO, 250_000);
        b.iter(|| black_box(t.next_ready(black_box(Instant::from_micros(150_000)))));
    });
    group.finish();
}

criterion_group!(benches, throttle);
criterion_main!(benches);
