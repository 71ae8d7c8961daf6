//! Packs: how a [`RedbStore`](super::RedbStore) keeps an origin's chunks together.
//!
//! The chunks of one origin are kept in packs: runs of chunks that are consecutive in
//! `(origin, first_seq)` order. A pack is stored under a key, `(origin, seq)`, as a head,
//! which lists its chunks ([`encode_head`]), and a body, their bytes end to end, cut into
//! parts of [`PART`] bytes (the last one shorter) so that each part fills one database
//! page. The packs of an origin tile its sequence numbers: a pack's chunks start at or
//! after its key and before the next pack's key, so the pack that holds (or would hold) a
//! chunk is the one with the greatest key at or before the chunk's first sequence number.
//!
//! A pack holds at most [`PACK_CHUNKS`] chunks and, unless it holds one chunk, at most
//! [`PACK_BYTES`] of chunk bytes; a transaction that fills one further writes it as
//! several ([`Pack::pieces`]). Storing a chunk costs a write of the parts it changed
//! rather than a write per chunk, and serving a range reads its packs' parts in order.
//!
//! A head costs a few bytes per chunk: sequence numbers, times and lengths are varints
//! relative to the entry before, and only a chunk of [`HASH_KEPT`] bytes or more keeps its
//! hash there. A smaller chunk's hash (which would cost a third of its size or more) is
//! its bytes hashed again when it is read, and the head keeps the hash's first [`CHECK`]
//! bytes to check it against: bytes damaged on the disk are still found, and such a chunk
//! is given a hash of its own ([`damaged_id`]) that its bytes do not match, so that
//! verifying the store reports it.

use std::ops::Range;

use chunk_sync_core::ChunkHash;

/// Bytes of chunk data in each part of a body but the last: one part and its database
/// entry (key, offset and page header, 28 bytes) fit one 16 KiB page of four 4 KiB pages.
/// The last part of a body takes the fewest 4 KiB pages, a power of two, that hold it.
pub(super) const PART: usize = (16 << 10) - 64;
/// The most chunks a pack holds (a pack of small chunks reaches [`HEAD_BYTES`] first, at
/// about 1,300 of them).
pub(super) const PACK_CHUNKS: usize = 4096;
/// The most chunk bytes a pack of more than one chunk holds: its last part wastes on
/// average a few KiB of a page, under 1% of this.
pub(super) const PACK_BYTES: usize = 1 << 20;
/// The most bytes the head of a pack of more than one chunk has: it fills most of one
/// 16 KiB page.
pub(super) const HEAD_BYTES: usize = PART;
/// Chunks of at least this many bytes keep their hash in the head (it costs them at most
/// 3.2% of their size); smaller ones are hashed again when read.
pub(super) const HASH_KEPT: u32 = 1024;

/// Bytes of a small chunk's hash its head keeps: a damaged chunk passes for a whole one
/// with a chance of one in 2^64.
pub(super) const CHECK: usize = 8;

/// The hash given to a small chunk whose bytes do not match the check its head keeps:
/// the check, then zeros. No bytes hash to it (in practice), so the chunk fails every
/// verification.
pub(super) fn damaged_id(check: [u8; CHECK]) -> ChunkHash {
    let mut id = [0u8; 32];
    id[..CHECK].copy_from_slice(&check);
    ChunkHash::from_bytes(id)
}

/// How many parts a body of `len` bytes is cut into.
pub(super) const fn parts_of(len: usize) -> usize {
    len.div_ceil(PART)
}

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
    /// Its hash: always known for a chunk of a [`Pack`]; in a head read alone, only for
    /// a chunk of [`HASH_KEPT`] bytes or more (the others are hashed from the body when
    /// their hash is needed).
    pub(super) id: Option<ChunkHash>,
    /// The first [`CHECK`] bytes of its hash, as the head keeps them.
    pub(super) check: [u8; CHECK],
}

impl Entry {
    /// Where its bytes are in the body.
    pub(super) const fn bytes(&self) -> Range<usize> {
        self.at as usize..self.at as usize + self.len as usize
    }
}

const fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The zigzag code of the difference from `before` to `after`: small either way.
const fn zigzag(before: u64, after: u64) -> u64 {
    let delta = after.wrapping_sub(before) as i64;
    ((delta << 1) ^ (delta >> 63)) as u64
}

/// Bytes of `e`'s entry in a head, after an entry that ended at `end` and was stored at
/// `stored_at` (zeros for the first).
const fn entry_len(e: &Entry, end: u64, stored_at: u64) -> usize {
    varint_len(e.first_seq - end)
        + varint_len(e.end_seq - e.first_seq)
        + varint_len(zigzag(stored_at, e.stored_at))
        + varint_len(e.len as u64)
        + if e.len >= HASH_KEPT { 32 } else { CHECK }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        let low = u64::from(b & 0x7f);
        if shift == 63 && low > 1 {
            return None;
        }
        v |= low << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The entries of a head, or `None` if the bytes are not a head: entries with non-empty
/// spans, ascending and not overlapping, that end where the bytes do.
pub(super) fn decode_head(mut head: &[u8]) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    let (mut at, mut end, mut stored_at) = (0u32, 0u64, 0u64);
    while !head.is_empty() {
        let gap = take_varint(&mut head)?;
        let span = take_varint(&mut head)?;
        let delta = take_varint(&mut head)?;
        let len = u32::try_from(take_varint(&mut head)?).ok()?;
        let first_seq = end.checked_add(gap)?;
        let end_seq = first_seq.checked_add(span)?;
        // Zigzag: times may go back as well as forward from one entry to the next.
        stored_at = stored_at.wrapping_add_signed((delta >> 1) as i64 ^ -((delta & 1) as i64));
        let (id, check) = match len >= HASH_KEPT {
            true => {
                let (hash, rest) = head.split_first_chunk::<32>()?;
                head = rest;
                let id = ChunkHash::from_bytes(*hash);
                (Some(id), first_bytes(&id))
            }
            false => {
                let (check, rest) = head.split_first_chunk::<CHECK>()?;
                head = rest;
                (None, *check)
            }
        };
        if span == 0 {
            return None;
        }
        entries.push(Entry {
            first_seq,
            end_seq,
            stored_at,
            at,
            len,
            id,
            check,
        });
        end = end_seq;
        at = at.checked_add(len)?;
    }
    Some(entries)
}

/// The head listing `entries` (ascending, not overlapping).
pub(super) fn encode_head(entries: &[Entry]) -> Vec<u8> {
    let mut head = Vec::with_capacity(entries.len() * 5);
    let (mut end, mut stored_at) = (0u64, 0u64);
    for e in entries {
        let before = head.len();
        put_varint(&mut head, e.first_seq - end);
        put_varint(&mut head, e.end_seq - e.first_seq);
        put_varint(&mut head, zigzag(stored_at, e.stored_at));
        put_varint(&mut head, u64::from(e.len));
        match (e.len >= HASH_KEPT, e.id) {
            (true, Some(id)) => head.extend_from_slice(id.as_bytes()),
            _ => head.extend_from_slice(&e.check),
        }
        debug_assert_eq!(head.len() - before, entry_len(e, end, stored_at));
        end = e.end_seq;
        stored_at = e.stored_at;
    }
    head
}

/// The first [`CHECK`] bytes of `id`.
pub(super) fn first_bytes(id: &ChunkHash) -> [u8; CHECK] {
    let mut check = [0u8; CHECK];
    check.copy_from_slice(&id.as_bytes()[..CHECK]);
    check
}

/// Gives every entry of `entries` that lacks its hash the hash of its bytes in `body`
/// (which starts where the first entry's bytes do), or [`damaged_id`] if they fail its
/// check; `None` if the body is too short.
pub(super) fn resolve(entries: &mut [Entry], body: &[u8]) -> Option<()> {
    let base = entries.first().map_or(0, |e| e.at as usize);
    for e in entries.iter_mut().filter(|e| e.id.is_none()) {
        let bytes = e.bytes();
        let id = ChunkHash::of(body.get(bytes.start - base..bytes.end - base)?);
        e.id = Some(match first_bytes(&id) == e.check {
            true => id,
            false => damaged_id(e.check),
        });
    }
    Some(())
}

/// Bytes of one chunk's entry in a head of the second layout: first and end sequence
/// numbers, the time it was stored and its length, little-endian, then its hash.
const SECOND_LAYOUT_ENTRY: usize = 8 + 8 + 8 + 4 + 32;

/// The entries of a head of the second layout, each with its hash, for a body of
/// `body_len` bytes; `None` if the head is not one or does not match the body.
pub(super) fn decode_second_layout(head: &[u8], body_len: usize) -> Option<Vec<Entry>> {
    if !head.len().is_multiple_of(SECOND_LAYOUT_ENTRY) {
        return None;
    }
    let mut entries = Vec::with_capacity(head.len() / SECOND_LAYOUT_ENTRY);
    let mut at = 0u32;
    for raw in head.chunks_exact(SECOND_LAYOUT_ENTRY) {
        let word = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[24..28].try_into().expect("4 bytes"));
        let id = ChunkHash::from_bytes(raw[28..].try_into().expect("32 bytes"));
        if word(0) >= word(8) {
            return None;
        }
        entries.push(Entry {
            first_seq: word(0),
            end_seq: word(8),
            stored_at: word(16),
            at,
            len,
            id: Some(id),
            check: first_bytes(&id),
        });
        at = at.checked_add(len)?;
    }
    (at as usize == body_len).then_some(entries)
}

/// A pack: its entries and its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Pack<B = Vec<u8>> {
    /// Its chunks, ascending, each with its hash (but in a pack read for serving ranges,
    /// whose small chunks are hashed only when one is looked up by hash).
    pub(super) entries: Vec<Entry>,
    /// Their bytes, end to end.
    pub(super) body: B,
    /// How many bytes its body had when it was read (0 for a new pack).
    pub(super) stored: usize,
    /// How many bytes at the start of its body are as they were read.
    pub(super) unchanged: usize,
}

impl<B: AsRef<[u8]>> Pack<B> {
    /// The pack stored as `head` and `body`, or `None` if they do not make one (the store
    /// reads a head once and goes through [`with_body`](Self::with_body)).
    #[cfg(test)]
    pub(super) fn decode(head: &[u8], body: B) -> Option<Self> {
        Self::with_body(decode_head(head)?, body, true)
    }

    /// The pack of `entries`, as its head lists them, and `body`, or `None` if they do not
    /// match; with `hashed`, the chunks whose hash the head does not keep are hashed
    /// ([`resolve`]), otherwise they are left without one.
    pub(super) fn with_body(mut entries: Vec<Entry>, body: B, hashed: bool) -> Option<Self> {
        let len = entries.last().map_or(0, |e| e.bytes().end);
        if len != body.as_ref().len() {
            return None;
        }
        if hashed {
            resolve(&mut entries, body.as_ref())?;
        }
        Some(Self {
            entries,
            body,
            stored: len,
            unchanged: len,
        })
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
        self.unchanged = self.unchanged.min(at);
        for later in &mut self.entries[i..] {
            later.at += entry.len;
        }
        self.entries.insert(i, entry);
    }

    /// Takes the chunk at index `i` out.
    pub(super) fn remove(&mut self, i: usize) -> Entry {
        let gone = self.entries.remove(i);
        self.body.drain(gone.bytes());
        self.unchanged = self.unchanged.min(gone.at as usize);
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
        let (mut bytes, mut head) = (0usize, 0usize);
        let (mut end, mut stored_at) = (0u64, 0u64);
        for (i, e) in self.entries.iter().enumerate() {
            let len = e.len as usize;
            let mut entry = entry_len(e, end, stored_at);
            let full = i - start == PACK_CHUNKS
                || (i > start && (bytes + len > PACK_BYTES || head + entry > HEAD_BYTES));
            if full {
                pieces.push(start..i);
                start = i;
                (bytes, head) = (0, 0);
                entry = entry_len(e, 0, 0);
            }
            bytes += len;
            head += entry;
            (end, stored_at) = (e.end_seq, e.stored_at);
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

    /// The entry of a chunk of `bytes` (times go up and down between entries).
    fn entry(first_seq: u64, end_seq: u64, n: u8, bytes: &[u8]) -> Entry {
        Entry {
            first_seq,
            end_seq,
            stored_at: 1_700_000_000 + u64::from(n % 5) * 7,
            at: 0,
            len: bytes.len() as u32,
            id: Some(ChunkHash::of(bytes)),
            check: first_bytes(&ChunkHash::of(bytes)),
        }
    }

    /// The same chunks and bytes: what a pack read back must have.
    fn same<A: AsRef<[u8]>, B: AsRef<[u8]>>(a: &Pack<A>, b: &Pack<B>) -> bool {
        a.entries == b.entries && a.body.as_ref() == b.body.as_ref()
    }

    #[test]
    fn a_head_that_is_cut_or_does_not_match_its_body_is_refused() {
        let mut pack = Pack::default();
        pack.insert(0, entry(0, 2, 1, b"ab"), b"ab");
        pack.insert(1, entry(2, 3, 2, b"c"), b"c");
        let (head, body) = pack.encode(0..2);
        assert!(same(&Pack::decode(&head, body.to_vec()).unwrap(), &pack));
        assert_eq!(Pack::decode(&head[..head.len() - 1], body), None);
        assert_eq!(Pack::decode(&head, &body[..2]), None);
        assert_eq!(decode_head(&encode_head(&[entry(3, 3, 1, b"")])), None);
        // A varint that runs past the head, or past 64 bits.
        assert_eq!(decode_head(&[0x80]), None);
        assert_eq!(decode_head(&[0xff; 11]), None);
    }

    /// A small chunk costs a few bytes of head and no hash; a large one keeps its hash.
    #[test]
    fn heads_are_small_and_keep_only_the_hashes_of_large_chunks() {
        let small = vec![1u8; 80];
        let large = vec![2u8; HASH_KEPT as usize];
        let mut pack = Pack::default();
        for seq in 0..100u64 {
            let e = entry(1_000_000 + seq, 1_000_001 + seq, 0, &small);
            pack.insert(seq as usize, e, &small);
        }
        let (head, _) = pack.encode(0..100);
        assert!(head.len() <= 100 * (4 + CHECK) + 12, "{} bytes", head.len());
        let entries = decode_head(&head).unwrap();
        assert!(entries.iter().all(|e| e.id.is_none()));
        // A damaged small chunk is found by its check, and given a hash nothing matches.
        let (head, body) = pack.encode(0..100);
        let mut damaged = body.to_vec();
        damaged[5 * 80 + 3] ^= 1;
        let read = Pack::decode(&head, damaged).unwrap();
        assert_eq!(
            read.entries[5].id,
            Some(damaged_id(first_bytes(&ChunkHash::of(&small))))
        );
        assert_eq!(read.entries[4].id, Some(ChunkHash::of(&small)));
        pack.insert(100, entry(2_000_000, 2_000_005, 3, &large), &large);
        let entries = decode_head(&pack.encode(0..101).0).unwrap();
        assert_eq!(entries[100].id, Some(ChunkHash::of(&large)));
        assert_eq!(entries[100].first_seq, 2_000_000);
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
                        pack.insert(at, entry(first, first + 2, i as u8, &bytes), &bytes);
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
            prop_assert!(same(&Pack::decode(&head, body.to_vec()).unwrap(), &pack));
            let pieces = pack.pieces();
            let mut next = 0;
            for piece in &pieces {
                prop_assert_eq!(piece.start, next);
                next = piece.end;
                let (head, body) = pack.encode(piece.clone());
                let part = Pack::decode(&head, body).unwrap();
                prop_assert!(part.entries.len() <= PACK_CHUNKS);
                prop_assert!(part.entries.len() == 1 || body.len() <= PACK_BYTES);
                prop_assert!(part.entries.len() == 1 || head.len() <= HEAD_BYTES);
                for (j, e) in part.entries.iter().enumerate() {
                    prop_assert_eq!(part.chunk(j), pack.chunk(piece.start + j));
                    prop_assert_eq!(e.id, pack.entries[piece.start + j].id);
                }
            }
            prop_assert_eq!(next, pack.entries.len());
        }
    }
}
