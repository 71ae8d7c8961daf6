//! LZ4 (the block format) and zstd (levels 1 and 3), as chunk-sync sends compressed
//! pieces, on the bytes of real chunks of three kinds of payload: ratio, compression and
//! decompression rates on one thread, beside BLAKE3 (which every chunk costs anyway) on the
//! same bytes. Prints a Markdown table.
//!
//! ```text
//! cargo run --release -p chunk-sync-benches --bin compress
//! ```

use std::hint::black_box;
use std::time::Instant;

use chunk_sync_benches::Payload;
use chunk_sync_core::chunk::Push;
use chunk_sync_core::{Chunker, Event, NodeId, Privacy};

/// Chunks of `per_chunk` events of `payload` bytes each, 4 MB of them in all.
fn chunks(style: Payload, per_chunk: u32, payload: usize) -> Vec<Vec<u8>> {
    let texts: Vec<String> = (0..(4 << 20) / payload as u64)
        .map(|seq| style.text(seq, payload))
        .collect();
    let mut buf = vec![0u8; 1 << 20];
    let mut chunker = Chunker::new(NodeId(1), per_chunk, 0, &mut buf).expect("a chunker");
    let mut out = Vec::new();
    for (seq, text) in texts.iter().enumerate() {
        let event = Event {
            origin: NodeId(1),
            seq: seq as u64,
            timestamp: 1_700_000_000_000 + seq as u64,
            kind: "telemetry",
            privacy: Privacy::Public,
            payload: text.as_bytes(),
        };
        if chunker.push(&event) == Ok(Push::SealFirst) {
            out.extend(chunker.seal().map(|s| s.bytes.to_vec()));
            assert_ne!(chunker.push(&event), Ok(Push::SealFirst));
        }
    }
    out.extend(chunker.seal().map(|s| s.bytes.to_vec()));
    out
}

/// MB/s of `f` over `bytes` bytes, repeated for about half a second.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut rounds = 0u32;
    while rounds < 3 || start.elapsed().as_secs_f64() < 0.5 {
        f();
        rounds += 1;
    }
    bytes as f64 * f64::from(rounds) / start.elapsed().as_secs_f64() / 1e6
}

/// One codec's figures on `chunks`: ratio, compression and decompression rates (MB/s).
fn measure(
    chunks: &[Vec<u8>],
    compress: &mut dyn FnMut(&[u8], &mut [u8]) -> usize,
    decompress: &mut dyn FnMut(&[u8], &mut [u8]) -> usize,
) -> (f64, f64, f64) {
    let raw: usize = chunks.iter().map(Vec::len).sum();
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(1 << 20)];
    let compressed: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| {
            let n = compress(c, &mut out);
            out[..n].to_vec()
        })
        .collect();
    let packed: usize = compressed.iter().map(Vec::len).sum();
    let c_rate = rate(raw, || {
        for c in chunks {
            black_box(compress(c, &mut out));
        }
    });
    let d_rate = rate(raw, || {
        for (c, raw) in compressed.iter().zip(chunks) {
            assert_eq!(decompress(c, &mut out[..raw.len()]), raw.len(), "whole");
        }
    });
    (raw as f64 / packed as f64, c_rate, d_rate)
}

fn main() {
    println!("| payload | chunk | LZ4: ratio, compress, decompress | zstd 1 | zstd 3 | BLAKE3 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, style) in [
        ("JSON telemetry", Payload::Telemetry),
        ("log lines", Payload::Log),
        ("random hex", Payload::RandomHex),
    ] {
        for (per_chunk, payload) in [(5u32, 200usize), (50, 200), (50, 1_000)] {
            let chunks = chunks(style, per_chunk, payload);
            let raw: usize = chunks.iter().map(Vec::len).sum();
            let lz4 = measure(
                &chunks,
                &mut |c, out| lz4_flex::block::compress_into(c, out).expect("room"),
                &mut |c, out| lz4_flex::block::decompress_into(c, out).expect("whole"),
            );
            let zstd = [1, 3].map(|level| {
                let mut compressor = zstd::bulk::Compressor::new(level).expect("a context");
                let mut decompressor = zstd::bulk::Decompressor::new().expect("a context");
                measure(
                    &chunks,
                    &mut |c, out| compressor.compress_to_buffer(c, out).expect("room"),
                    &mut |c, out| decompressor.decompress_to_buffer(c, out).expect("whole"),
                )
            });
            let hash = rate(raw, || {
                for c in &chunks {
                    black_box(blake3::hash(c));
                }
            });
            let cell = |(ratio, c, d): (f64, f64, f64)| format!("{ratio:.2}×, {c:.0}, {d:.0} MB/s");
            println!(
                "| {name}, {per_chunk} events of {payload} B | {:.1} KB | {} | {} | {} | {hash:.0} MB/s |",
                raw as f64 / chunks.len() as f64 / 1e3,
                cell(lz4),
                cell(zstd[0]),
                cell(zstd[1]),
            );
        }
    }
}
