//! Packs: how a [`RedbStore`](super::RedbStore) keeps an origin's chunks together.
//!
//! The chunks of one origin are kept in packs: runs of chunks that are consecutive in
//! `(origin, first_seq)` order. A pack is two entries under the same key, `(origin, seq)`,
//! in two tables: its head, which lists its chunks (span, time stored, length and hash, in
//! [`ENTRY`] bytes each, ascending), and its body, their bytes end to end. The packs of an
//! origin tile its sequence numbers: a pack's chunks start at or after its key and before
//! the next pack's key, so the pack that holds (or would hold) a chunk is the one with the
//! greatest key at or before the chunk's first sequence number.
//!
//! A pack holds at most [`PACK_CHUNKS`] chunks and, unless it holds one chunk, at most
//! [`PACK_BYTES`] of chunk bytes; a transaction that fills one further writes it as
//! several ([`Pack::pieces`]). Storing a chunk costs one write per pack a transaction
//! touches rather than one per chunk, and serving a range reads its packs in order.

use std::ops::Range;

use chunk_sync_core::ChunkHash;

/// Bytes of one chunk's entry in a head: first and end sequence numbers, the time it was
/// stored (seconds since the Unix epoch) and its length, little-endian, then its hash.
pub(super) const ENTRY: usize = 8 + 8 + 8 + 4 + 32;
/// The most chunks a pack holds.
pub(super) const PACK_CHUNKS: usize = 512;
/// The most chunk bytes a pack of more than one chunk holds.
pub(super) const PACK_BYTES: usize = 64 << 10;

/// One chunk of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// First sequence number the chunk covers.
    pub(super) first_seq: u64,
    /// One past the last.
    pub(super) end_seq: u64,
    /// When it was stored, in seconds since the Unix epoch.
    pub(super) stored_at: u64,
    /// Where its bytes start in the body (not written: the sum of the lengths before it).
    pub(super) at: u32,
    /// How many bytes it has.
    pub(super) len: u32,
    /// Its hash.
    pub(super) id: ChunkHash,
}

impl Entry {
    /// Where its bytes are in the body.
    pub(super) const fn bytes(&self) -> Range<usize> {
        self.at as usize..self.at as usize + self.len as usize
    }
}

/// The entries of a head, or `None` if the bytes are not a head: a whole number of
/// entries, with non-empty spans, ascending and not overlapping.
pub(super) fn decode_head(head: &[u8]) -> Option<Vec<Entry>> {
    if !head.len().is_multiple_of(ENTRY) {
        return None;
    }
    let mut entries = Vec::with_capacity(head.len() / ENTRY);
    let mut at = 0u32;
    let mut end = 0u64;
    for raw in head.chunks_exact(ENTRY) {
        let word = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[24..28].try_into().expect("4 bytes"));
        let entry = Entry {
            first_seq: word(0),
            end_seq: word(8),
            stored_at: word(16),
            at,
            len,
            id: ChunkHash::from_bytes(raw[28..].try_into().expect("32 bytes")),
        };
        let first = entries.is_empty();
        if entry.first_seq >= entry.end_seq || (!first && entry.first_seq < end) {
            return None;
        }
        end = entry.end_seq;
        at = at.checked_add(len)?;
        entries.push(entry);
    }
    Some(entries)
}

/// The head listing `entries`.
pub(super) fn encode_head(entries: &[Entry]) -> Vec<u8> {
    let mut head = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        for word in [e.first_seq, e.end_seq, e.stored_at] {
            head.extend_from_slice(&word.to_le_bytes());
        }
        head.extend_from_slice(&e.len.to_le_bytes());
        head.extend_from_slice(e.id.as_bytes());
    }
    head
}

/// A pack: its entries and its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Pack<B = Vec<u8>> {
    /// Its chunks, ascending.
    pub(super) entries: Vec<Entry>,
    /// Their bytes, end to end.
    pub(super) body: B,
}

impl<B: AsRef<[u8]>> Pack<B> {
    /// The pack stored as `head` and `body`, or `None` if they do not make one.
    pub(super) fn decode(head: &[u8], body: B) -> Option<Self> {
        let entries = decode_head(head)?;
        let len = entries.last().map_or(0, |e| e.bytes().end);
        (len == body.as_ref().len()).then_some(Self { entries, body })
    }

    /// The index of the chunk starting at `first_seq`, or where it would go (found at
    /// once for a chunk after the last, as a log's next chunk is).
    pub(super) fn find(&self, first_seq: u64) -> Result<usize, usize> {
        match self.entries.last() {
            Some(last) if last.first_seq < first_seq => Err(self.entries.len()),
            _ => self
                .entries
                .binary_search_by_key(&first_seq, |e| e.first_seq),
        }
    }

    /// The index of the first chunk starting at or after `seq`.
    pub(super) fn first_from(&self, seq: u64) -> usize {
        self.entries.partition_point(|e| e.first_seq < seq)
    }

    /// The bytes of the chunk at `i`.
    pub(super) fn chunk(&self, i: usize) -> &[u8] {
        &self.body.as_ref()[self.entries[i].bytes()]
    }
}

impl Pack {
    /// Puts a chunk in at index `i` (as [`Pack::find`] gave it).
    pub(super) fn insert(&mut self, i: usize, mut entry: Entry, bytes: &[u8]) {
        let at = self
            .entries
            .get(i)
            .map_or(self.body.len(), |e| e.at as usize);
        entry.at = at as u32;
        entry.len = bytes.len() as u32;
        if at == self.body.len() {
            self.body.extend_from_slice(bytes);
        } else {
            self.body.splice(at..at, bytes.iter().copied());
        }
        for later in &mut self.entries[i..] {
            later.at += entry.len;
        }
        self.entries.insert(i, entry);
    }

    /// Takes the chunk at index `i` out.
    pub(super) fn remove(&mut self, i: usize) -> Entry {
        let gone = self.entries.remove(i);
        self.body.drain(gone.bytes());
        for later in &mut self.entries[i..] {
            later.at -= gone.len;
        }
        gone
    }

    /// Splits the pack into runs of entries that each fit the limits, in order: each is
    /// written as a pack of its own (the first under the pack's key, the others under
    /// their first chunk's first sequence number).
    pub(super) fn pieces(&self) -> Vec<Range<usize>> {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut bytes = 0usize;
        for (i, e) in self.entries.iter().enumerate() {
            let len = e.len as usize;
            let full = i - start == PACK_CHUNKS || (i > start && bytes + len > PACK_BYTES);
            if full {
                pieces.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += len;
        }
        if start < self.entries.len() {
            pieces.push(start..self.entries.len());
        }
        pieces
    }

    /// The head and body of the entries in `piece` (one of [`Pack::pieces`]).
    pub(super) fn encode(&self, piece: Range<usize>) -> (Vec<u8>, &[u8]) {
        let entries = &self.entries[piece];
        let bytes = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => first.at as usize..last.bytes().end,
            _ => 0..0,
        };
        (encode_head(entries), &self.body[bytes])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(first_seq: u64, end_seq: u64, n: u8) -> Entry {
        Entry {
            first_seq,
            end_seq,
            stored_at: u64::from(n) * 7,
            at: 0,
            len: 0,
            id: ChunkHash::of(&[n]),
        }
    }

    #[test]
    fn a_head_that_overlaps_or_is_cut_is_refused() {
        let mut pack = Pack::default();
        pack.insert(0, entry(0, 2, 1), b"ab");
        pack.insert(1, entry(2, 3, 2), b"c");
        let (head, body) = pack.encode(0..2);
        assert_eq!(Pack::decode(&head, body.to_vec()), Some(pack.clone()));
        assert_eq!(Pack::decode(&head[..head.len() - 1], body), None);
        assert_eq!(Pack::decode(&head, &body[..2]), None);
        let overlapping = encode_head(&[entry(0, 2, 1), entry(1, 3, 2)]);
        assert_eq!(decode_head(&overlapping), None);
        assert_eq!(decode_head(&encode_head(&[entry(3, 3, 1)])), None);
    }

    proptest! {
        /// Chunks put in and taken out in any order leave the pack that holds exactly the
        /// others, ascending, each with its own bytes; it survives encoding, and its
        /// pieces cover it in order within the limits.
        #[test]
        fn a_pack_holds_what_was_put_in_and_not_taken_out(
            ops in prop::collection::vec((0u64..600, 1usize..3000, any::<bool>()), 1..700),
        ) {
            let mut pack = Pack::default();
            let mut model = std::collections::BTreeMap::new();
            for (i, (slot, len, put)) in ops.into_iter().enumerate() {
                let first = slot * 2;
                match pack.find(first) {
                    Ok(at) if !put => {
                        pack.remove(at);
                        model.remove(&first);
                    }
                    Err(at) if put => {
                        let bytes = vec![i as u8; len];
                        pack.insert(at, entry(first, first + 2, i as u8), &bytes);
                        model.insert(first, bytes);
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(pack.entries.len(), model.len());
            for (i, (first, bytes)) in model.iter().enumerate() {
                prop_assert_eq!(pack.entries[i].first_seq, *first);
                prop_assert_eq!(pack.chunk(i), bytes.as_slice());
            }
            let (head, body) = pack.encode(0..pack.entries.len());
            prop_assert_eq!(Pack::decode(&head, body.to_vec()), Some(pack.clone()));
            let pieces = pack.pieces();
            let mut next = 0;
            for piece in &pieces {
                prop_assert_eq!(piece.start, next);
                next = piece.end;
                let (head, body) = pack.encode(piece.clone());
                let part = Pack::decode(&head, body).unwrap();
                prop_assert!(part.entries.len() <= PACK_CHUNKS);
                prop_assert!(part.entries.len() == 1 || body.len() <= PACK_BYTES);
                for (j, e) in part.entries.iter().enumerate() {
                    prop_assert_eq!(part.chunk(j), pack.chunk(piece.start + j));
                    prop_assert_eq!(e.id, pack.entries[piece.start + j].id);
                }
            }
            prop_assert_eq!(next, pack.entries.len());
        }
    }
}
