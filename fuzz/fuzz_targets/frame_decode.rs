//! Fuzzes the wire decoder and the reconciliation codec on arbitrary bytes.
//!
//! The first four bytes (little-endian) are the largest frame accepted, clamped to
//! `MIN_FRAME..=MAX_FRAME_LIMIT`; the rest is decoded frame after frame. Each message
//! decoded is encoded again and must decode to the same message, in a frame no longer
//! than the one read; the queries, summary entries and hashes a message carries are
//! decoded too, and re-encoded where an encoder exists. The bytes after the prefix are
//! also fed whole to the query, entry and hash readers.
#![no_main]

use chunk_sync_core::NodeId;
use chunk_sync_core::recon::codec::{EntryWriter, MAX_ENTRY, MAX_RUN, decode_entry};
use chunk_sync_core::recon::{KeyRange, Query, Run};
use chunk_sync_core::wire::{self, Decoded, FRAME_HEADER, MAX_FRAME_LIMIT, MIN_FRAME, Message};
use libfuzzer_sys::fuzz_target;

/// Runs an entry may carry here.
const RUNS: usize = 16;
/// The longest varint.
const VARINT: usize = 10;

fuzz_target!(|data: &[u8]| {
    let Some((head, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max_frame = u32::from_le_bytes(*head).clamp(MIN_FRAME, MAX_FRAME_LIMIT);
    codecs(rest);
    while let Ok(Decoded::Frame { message, len }) = wire::decode(rest, max_frame) {
        assert!(
            (FRAME_HEADER..=rest.len()).contains(&len) && len <= max_frame as usize,
            "a frame of {len} bytes out of {} with a limit of {max_frame}",
            rest.len()
        );
        round_trip(&message, len, max_frame);
        carried(&message);
        rest = &rest[len..];
    }
});

/// Encodes `message`, read from a frame of `len` bytes, and decodes it again.
fn round_trip(message: &Message<'_>, len: usize, max_frame: u32) {
    let frame_len = message.frame_len();
    assert!(
        frame_len <= len,
        "{message:?} re-encodes longer than it came"
    );
    let mut buf = vec![0u8; frame_len];
    let frame = wire::encode(message, &mut buf).expect("frame_len is enough room");
    assert_eq!(frame.len(), frame_len, "frame_len is the frame's length");
    match wire::decode(frame, max_frame) {
        Ok(Decoded::Frame { message: back, len }) => {
            assert_eq!(len, frame_len, "the whole frame is read back");
            assert_eq!(&back, message, "a message re-encoded reads back the same");
        }
        other => panic!("{message:?} re-encoded does not decode: {other:?}"),
    }
    // A buffer one byte short is refused, not overrun.
    if let Some(short) = buf.get_mut(..frame_len - 1) {
        assert!(
            wire::encode(message, short).is_err(),
            "{message:?} fits one byte less"
        );
    }
}

/// Decodes what a message carries in its own encodings.
fn carried(message: &Message<'_>) {
    match *message {
        Message::Query { query } => query_round_trip(query),
        Message::Answer { entries, .. } => {
            entries_round_trip(entries, true);
            entries_round_trip(entries, false);
        }
        Message::Ids { ids, .. } => {
            if let Some(hashes) = wire::ids_of(ids) {
                assert_eq!(hashes.len() * 32, ids.len());
                assert!(hashes.zip(ids.chunks(32)).all(|(h, b)| h.as_bytes() == b));
            } else {
                assert!(!ids.len().is_multiple_of(32));
            }
        }
        _ => {}
    }
}

/// Feeds bytes to each of the codec's readers.
fn codecs(bytes: &[u8]) {
    query_round_trip(bytes);
    entries_round_trip(bytes, true);
    entries_round_trip(bytes, false);
    let _ = wire::ids_of(bytes).map(Iterator::count);
}

/// Reads a query; if it is one, checks its ranges and writes and reads it again.
fn query_round_trip(bytes: &[u8]) {
    let Ok(query) = Query::read(bytes) else {
        return;
    };
    if let Query::Ranges { ranges, .. } = query {
        let mut prev = 0;
        for range in ranges.iter() {
            let Ok((lo, hi)) = range else { break };
            assert!(prev <= lo && lo < hi, "ranges ascend and are not empty");
            prev = hi;
        }
    }
    let mut buf = vec![0u8; bytes.len()];
    let n = query
        .write(&mut buf)
        .expect("a query fits the bytes it came from");
    assert_eq!(
        Query::read(&buf[..n]),
        Ok(query),
        "a query re-written reads back"
    );
}

/// Reads summary entries one after another, for a range from 0 and for one near the top
/// of the keys, and writes each again to read it back.
fn entries_round_trip(bytes: &[u8], with_origin: bool) {
    for lo in [0, u64::MAX - 2] {
        let range = KeyRange {
            origin: NodeId(7),
            lo,
            hi: u64::MAX,
        };
        let mut rest = bytes;
        let mut runs = [Run { lo: 0, hi: 0 }; RUNS];
        while !rest.is_empty() {
            let Ok(entry) = decode_entry(rest, &range, with_origin, &mut runs) else {
                break;
            };
            assert!(
                entry.rest.len() < rest.len(),
                "an entry takes a byte at least"
            );
            let s = entry.summary;
            if s.count > 0 {
                assert!(lo <= s.first && s.first <= s.end, "{s:?} in {range:?}");
            }
            let sent = entry.runs.map(|n| &runs[..n]);
            let mut buf = vec![0u8; MAX_ENTRY + VARINT + RUNS * MAX_RUN];
            let mut w = EntryWriter::new(&mut buf, 1).expect("room for one entry");
            let origin = with_origin.then_some(entry.origin);
            w.write(origin, &range, &s, sent)
                .expect("room for the entry");
            let n = w.finish();
            let mut again = [Run { lo: 0, hi: 0 }; RUNS];
            let back = decode_entry(&buf[..n], &range, with_origin, &mut again)
                .expect("an entry re-written reads back");
            assert_eq!(
                (back.origin, back.summary, back.runs, back.rest.len()),
                (entry.origin, s, entry.runs, 0),
                "an entry re-written reads back the same"
            );
            if let Some(n) = entry.runs {
                assert_eq!(again[..n], runs[..n], "its runs read back the same");
            }
            rest = entry.rest;
        }
    }
}
