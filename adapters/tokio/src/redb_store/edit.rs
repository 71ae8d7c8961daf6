//! Reading packs in a transaction, and editing them in a write transaction: the packs a
//! transaction changes are held in memory and written once each when it ends.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};
use std::ops::Range;

use chunk_sync_core::store::Fork;
use chunk_sync_core::{ChunkHash, NodeId, Span};
use redb::{ReadableTable, Table};

use super::pack::{self, Entry, PART, Pack, decode_head, parts_of};
use super::{RedbError, boxed};
use crate::error::StoreError;
use crate::store::fork_with;

/// A pack's key: its origin and the sequence number its chunks start at or after.
pub(super) type Key = (u64, u64);
/// A part of a pack's body: the pack's key and the part's number.
pub(super) type PartKey = (u64, u64, u32);

/// The table of the packs' heads, as a transaction reads it.
pub(super) trait Heads: ReadableTable<Key, &'static [u8]> {}
impl<T: ReadableTable<Key, &'static [u8]>> Heads for T {}
/// The table of the parts of the packs' bodies, as a transaction reads it.
pub(super) trait Parts: ReadableTable<PartKey, &'static [u8]> {}
impl<T: ReadableTable<PartKey, &'static [u8]>> Parts for T {}

/// The error for a pack that does not decode.
pub(super) fn damaged(key: Key) -> StoreError {
    StoreError::from(RedbError::Damaged(format!(
        "the pack of origin {:#018x} at {} is damaged",
        key.0, key.1
    )))
}

/// The bytes of a pack past which an edit writes it at once rather than when it
/// finishes: 16 times a pack's limit, so that it is written as 16 packs.
pub(super) const WRITE_AT: usize = 16 * pack::PACK_BYTES;

/// The hash of `e`, a chunk of the pack at `key`, which must be known by now.
pub(super) fn known(e: &Entry, key: Key) -> Result<ChunkHash, StoreError> {
    e.id.ok_or_else(|| damaged(key))
}

/// The key of the pack of `origin` that holds `seq`: the greatest at or before it.
pub(super) fn holder(
    heads: &impl ReadableTable<Key, &'static [u8]>,
    origin: u64,
    seq: u64,
) -> Result<Option<Key>, StoreError> {
    let mut range = heads.range((origin, 0)..=(origin, seq)).map_err(boxed)?;
    Ok(range
        .next_back()
        .transpose()
        .map_err(boxed)?
        .map(|(k, _)| k.value()))
}

/// The key of the first pack of `origin` after `key`.
pub(super) fn next_pack(
    heads: &impl ReadableTable<Key, &'static [u8]>,
    key: Key,
) -> Result<Option<Key>, StoreError> {
    let mut range = heads
        .range((Excluded(key), Included((key.0, u64::MAX))))
        .map_err(boxed)?;
    Ok(range
        .next()
        .transpose()
        .map_err(boxed)?
        .map(|(k, _)| k.value()))
}

/// The entries of the pack at `key`, as its head lists them (without the hashes of small
/// chunks: see [`resolve`]).
pub(super) fn entries_at(heads: &impl Heads, key: Key) -> Result<Vec<Entry>, StoreError> {
    let head = heads.get(key).map_err(boxed)?.ok_or_else(|| damaged(key))?;
    decode_head(head.value()).ok_or_else(|| damaged(key))
}

/// The bytes `range` of the body of the pack at `key`, read from the parts that hold them.
pub(super) fn read_body(
    parts: &impl Parts,
    key: Key,
    range: Range<usize>,
) -> Result<Vec<u8>, StoreError> {
    // A damaged head may claim any length: memory follows what the parts hold.
    let mut out = Vec::with_capacity(range.len().min(WRITE_AT));
    if range.is_empty() {
        return Ok(out);
    }
    let (first, last) = ((range.start / PART) as u32, ((range.end - 1) / PART) as u32);
    let stored = parts
        .range((key.0, key.1, first)..=(key.0, key.1, last))
        .map_err(boxed)?;
    for (expected, part) in (first..).zip(stored) {
        let (k, v) = part.map_err(boxed)?;
        let (n, bytes) = (k.value().2, v.value());
        let start = n as usize * PART;
        if n != expected || (n < last && bytes.len() != PART) {
            return Err(damaged(key));
        }
        let from = range.start.saturating_sub(start);
        let to = (range.end - start).min(bytes.len());
        out.extend_from_slice(bytes.get(from..to).ok_or_else(|| damaged(key))?);
    }
    if out.len() != range.len() {
        return Err(damaged(key));
    }
    Ok(out)
}

/// The pack at `key`, or `None` if there is none; with `hashed`, every chunk has its
/// hash (see [`Pack::with_body`]).
pub(super) fn read_pack(
    heads: &impl Heads,
    parts: &impl Parts,
    key: Key,
    hashed: bool,
) -> Result<Option<Pack>, StoreError> {
    let Some(head) = heads.get(key).map_err(boxed)? else {
        return Ok(None);
    };
    let entries = decode_head(head.value()).ok_or_else(|| damaged(key))?;
    let len = entries.last().map_or(0, |e| e.bytes().end);
    let body = read_body(parts, key, 0..len)?;
    Pack::with_body(entries, body, hashed)
        .map(Some)
        .ok_or_else(|| damaged(key))
}

/// Gives the entries of the pack at `key` that lack their hash (consecutive entries of
/// it) the hash of their bytes, read from its body.
pub(super) fn resolve(
    parts: &impl Parts,
    key: Key,
    entries: &mut [Entry],
) -> Result<(), StoreError> {
    let mut needed = entries.iter().filter(|e| e.id.is_none());
    let first = needed.next();
    let (Some(first), Some(last)) = (first, needed.next_back().or(first)) else {
        return Ok(());
    };
    let (lo, hi) = (first.at as usize, last.bytes().end);
    let body = read_body(parts, key, lo..hi)?;
    let from = entries.partition_point(|e| (e.at as usize) < lo);
    let to = entries.partition_point(|e| e.bytes().end <= hi);
    pack::resolve(&mut entries[from..to], &body).ok_or_else(|| damaged(key))
}

/// The entries [`scan`] resolves together: a caller that stops early hashes at most this
/// many chunks it did not need.
const SCAN_BATCH: usize = 64;

/// Calls `f` with the key and entry of every chunk of `origin` that starts in `lo..hi`, in
/// order, until it returns `false`; with `ids`, each entry has its hash.
pub(super) fn scan(
    heads: &impl Heads,
    parts: &impl Parts,
    (origin, lo, hi): (u64, u64, u64),
    ids: bool,
    mut f: impl FnMut(&Entry) -> bool,
) -> Result<(), StoreError> {
    if lo >= hi {
        return Ok(());
    }
    let start = holder(heads, origin, lo)?.unwrap_or((origin, lo));
    for pack in heads.range(start..(origin, hi)).map_err(boxed)? {
        let (key, head) = pack.map_err(boxed)?;
        let key = key.value();
        let mut entries = decode_head(head.value()).ok_or_else(|| damaged(key))?;
        let from = entries.partition_point(|e| e.first_seq < lo);
        let to = entries.partition_point(|e| e.first_seq < hi);
        for batch in entries[from..to].chunks_mut(SCAN_BATCH) {
            if ids {
                resolve(parts, key, batch)?;
            }
            for e in batch.iter() {
                if !f(e) {
                    return Ok(());
                }
            }
        }
        if to < entries.len() {
            return Ok(());
        }
    }
    Ok(())
}

/// What [`Edit::insert`] did with a chunk.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Put {
    /// It is new and now in a pack.
    Added,
    /// The store has it already.
    Held,
    /// It overlaps a different stored chunk of its origin and was refused.
    Fork(Fork),
    /// The store held it damaged (bytes that no longer match their hash): the verified
    /// copy took its place. The damaged copy went by this hash in the index.
    Repaired(ChunkHash),
}

/// Whether the chunk at `i` of `pack` is a damaged copy of the chunk `id` of `len` bytes
/// ending at `end_seq`: the same span and length, bytes that do not match what the head
/// keeps of their hash, and the hash of `id` where the head keeps one (a chunk of
/// [`pack::HASH_KEPT`] bytes or more), or the first bytes of it that the head keeps. An
/// intact chunk is never replaced, even by one whose hash shares its first bytes. A
/// stored copy equal to `bytes` (the verified chunk `id`) is intact: it is not hashed.
fn is_damaged_copy(pack: &Pack, i: usize, id: ChunkHash, bytes: &[u8], end_seq: u64) -> bool {
    let e = &pack.entries[i];
    if e.end_seq != end_seq || e.len as usize != bytes.len() || pack.chunk(i) == bytes {
        return false;
    }
    let stored = ChunkHash::of(pack.chunk(i));
    if e.len >= pack::HASH_KEPT {
        e.id == Some(id) && stored != id
    } else {
        pack::first_bytes(&stored) != e.check && pack::first_bytes(&id) == e.check
    }
}

/// The pack a run of inserts of one origin goes to, remembered so that a log's next chunk
/// needs no lookup: the pack's key and the key of the next pack of its origin with its
/// first chunk, if any.
#[derive(Clone, Copy, Debug)]
struct Current {
    key: Key,
    next: Option<(Key, Option<Entry>)>,
}

/// The packs of one write transaction being edited.
pub(super) struct Edit<'t> {
    heads: Table<'t, Key, &'static [u8]>,
    parts: Table<'t, PartKey, &'static [u8]>,
    /// Packs changed so far, by key (new ones included), as they will be written.
    dirty: BTreeMap<Key, Pack>,
    /// For each origin inserted into, the pack its last chunk went to (forgotten when a
    /// pack is made or a chunk removed, which may move the boundaries it records).
    current: BTreeMap<u64, Current>,
}

impl<'t> Edit<'t> {
    pub(super) fn new(
        heads: Table<'t, Key, &'static [u8]>,
        parts: Table<'t, PartKey, &'static [u8]>,
    ) -> Self {
        Self {
            heads,
            parts,
            dirty: BTreeMap::new(),
            current: BTreeMap::new(),
        }
    }

    /// The stored packs' heads, as they were before this edit.
    pub(super) fn heads(&self) -> &Table<'t, Key, &'static [u8]> {
        &self.heads
    }

    /// The stored packs' bodies, as they were before this edit.
    pub(super) fn parts(&self) -> &Table<'t, PartKey, &'static [u8]> {
        &self.parts
    }

    /// The first or the last chunk of the stored pack at `key`, with its hash.
    fn stored_end(&self, key: Key, last: bool) -> Result<Option<Entry>, StoreError> {
        let entries = entries_at(&self.heads, key)?;
        let end = if last {
            entries.last()
        } else {
            entries.first()
        };
        let Some(mut end) = end.copied() else {
            return Ok(None);
        };
        resolve(&self.parts, key, std::slice::from_mut(&mut end))?;
        Ok(Some(end))
    }

    /// The key of the pack that holds `seq` of `origin`, edited or stored.
    fn holder(&self, origin: u64, seq: u64) -> Result<Option<Key>, StoreError> {
        if let Some(c) = self.current.get(&origin)
            && c.key.1 <= seq
            && c.next.is_none_or(|(next, _)| seq < next.1)
        {
            return Ok(Some(c.key));
        }
        let stored = holder(&self.heads, origin, seq)?;
        let edited = self.dirty.range((origin, 0)..=(origin, seq)).next_back();
        Ok(stored.max(edited.map(|(k, _)| *k)))
    }

    /// The pack at `key`, read into the edit if it was not yet.
    fn load(&mut self, key: Key) -> Result<&mut Pack, StoreError> {
        if !self.dirty.contains_key(&key) {
            let pack = read_pack(&self.heads, &self.parts, key, true)?;
            self.dirty.insert(key, pack.unwrap_or_default());
        }
        Ok(self.dirty.get_mut(&key).expect("just loaded"))
    }

    /// The first pack of the origin after `key`, with its first chunk (the first chunk
    /// after `key`, if that pack was emptied).
    fn next_after(&mut self, key: Key) -> Result<Option<(Key, Option<Entry>)>, StoreError> {
        let Some(next) = self.pack_after(key)? else {
            return Ok(None);
        };
        let mut at = next;
        loop {
            let first = match self.dirty.get(&at) {
                Some(pack) => pack.entries.first().copied(),
                None => self.stored_end(at, false)?,
            };
            if first.is_some() {
                return Ok(Some((next, first)));
            }
            match self.pack_after(at)? {
                Some(later) => at = later,
                None => return Ok(Some((next, None))),
            }
        }
    }

    /// The key of the first pack of the origin after `key`, edited or stored.
    fn pack_after(&self, key: Key) -> Result<Option<Key>, StoreError> {
        let stored = next_pack(&self.heads, key)?;
        let edited = self
            .dirty
            .range((Excluded(key), Included((key.0, u64::MAX))))
            .next()
            .map(|(k, _)| *k);
        Ok([stored, edited].into_iter().flatten().min())
    }

    /// The last chunk of the origin before the pack at `key`.
    fn last_before(&mut self, key: Key) -> Result<Option<Entry>, StoreError> {
        let mut at = key;
        loop {
            let stored = match at.1 {
                0 => None,
                seq => holder(&self.heads, at.0, seq - 1)?,
            };
            let edited = self.dirty.range((at.0, 0)..at).next_back().map(|(k, _)| *k);
            let Some(before) = stored.max(edited) else {
                return Ok(None);
            };
            let last = match self.dirty.get(&before) {
                Some(pack) => pack.entries.last().copied(),
                None => self.stored_end(before, true)?,
            };
            if last.is_some() {
                return Ok(last);
            }
            // An emptied pack: the one before it.
            at = before;
        }
    }

    /// Puts a chunk of `span` into the pack that holds its place, unless the store has it
    /// or it forks a stored chunk.
    pub(super) fn insert(
        &mut self,
        span: Span,
        id: ChunkHash,
        bytes: &[u8],
        stored_at: u64,
    ) -> Result<Put, StoreError> {
        let (origin, first) = (span.origin.0, span.first_seq);
        let key = match self.holder(origin, first)? {
            Some(key) => key,
            None => {
                // Before every pack of the origin: a pack of its own.
                self.dirty.insert((origin, first), Pack::default());
                self.current.clear();
                (origin, first)
            }
        };
        let next = match self.current.get(&origin) {
            Some(c) if c.key == key => c.next,
            _ => {
                let next = self.next_after(key)?;
                self.current.insert(origin, Current { key, next });
                next
            }
        };
        let next_first = next.and_then(|(_, first)| first);
        let pack = self.load(key)?;
        let at = match pack.find(first) {
            Ok(i) if is_damaged_copy(pack, i, id, bytes, span.end_seq) => {
                // The same chunk as was stored (its hash, or for a small chunk the first
                // bytes of it that the head keeps): the verified bytes take the place of
                // the damaged ones.
                let damaged = pack.remove(i);
                pack.insert(
                    i,
                    Entry {
                        id: Some(id),
                        ..damaged
                    },
                    bytes,
                );
                return Ok(Put::Repaired(damaged.id.unwrap_or(id)));
            }
            Ok(i) if pack.entries[i].id == Some(id) => return Ok(Put::Held),
            Ok(i) => {
                let existing = known(&pack.entries[i], key)?;
                return Ok(Put::Fork(Fork {
                    refused: id,
                    span,
                    existing,
                }));
            }
            Err(i) => i,
        };
        let before = match at {
            0 => None,
            i => Some(pack.entries[i - 1]),
        };
        let after = pack.entries.get(at).copied();
        let before = match before {
            Some(e) => Some(e),
            None => self.last_before(key)?,
        };
        let after = after.or(next_first);
        let neighbour = |e: Entry| {
            let span = Span {
                origin: NodeId(origin),
                first_seq: e.first_seq,
                end_seq: e.end_seq,
            };
            known(&e, key).map(|id| (span, id))
        };
        let before = before.map(neighbour).transpose()?;
        let after = after.map(neighbour).transpose()?;
        if let Some(fork) = fork_with(id, span, before, after) {
            return Ok(Put::Fork(fork));
        }
        let entry = Entry {
            first_seq: first,
            end_seq: span.end_seq,
            stored_at,
            at: 0,
            len: 0,
            id: Some(id),
            check: pack::first_bytes(&id),
        };
        let pack = self.load(key)?;
        pack.insert(at, entry, bytes);
        if pack.body.len() >= WRITE_AT {
            // A transaction that stores this much of one origin writes as it goes, so
            // that it holds at most this much of a pack in memory.
            let pack = self.dirty.remove(&key).expect("just loaded");
            self.current.clear();
            self.write_pack(key, &pack)?;
        }
        Ok(Put::Added)
    }

    /// Takes the chunk of `origin` that starts at `first_seq` out, if the store has it.
    pub(super) fn remove(
        &mut self,
        origin: u64,
        first_seq: u64,
    ) -> Result<Option<Entry>, StoreError> {
        let Some(key) = self.holder(origin, first_seq)? else {
            return Ok(None);
        };
        self.current.clear();
        let pack = self.load(key)?;
        Ok(pack.find(first_seq).ok().map(|i| pack.remove(i)))
    }

    /// Writes every edited pack, split where it outgrew the limits; an emptied one is
    /// removed.
    pub(super) fn finish(mut self) -> Result<(), StoreError> {
        for (key, pack) in std::mem::take(&mut self.dirty) {
            self.write_pack(key, &pack)?;
        }
        Ok(())
    }

    /// Writes the edited pack at `key`, split where it outgrew the limits; emptied, it is
    /// removed.
    fn write_pack(&mut self, key: Key, pack: &Pack) -> Result<(), StoreError> {
        let pieces = pack.pieces();
        if pieces.is_empty() {
            self.heads.remove(key).map_err(boxed)?;
        }
        // The first piece stays under the pack's key: only the parts it changed are
        // written, and those past its end removed.
        let kept = pieces
            .first()
            .map_or(0, |p| pack.entries[p.end - 1].bytes().end);
        for n in parts_of(kept)..parts_of(pack.stored) {
            self.parts.remove((key.0, key.1, n as u32)).map_err(boxed)?;
        }
        for (n, piece) in pieces.into_iter().enumerate() {
            let (at, unchanged) = match n {
                0 => (key, pack.unchanged),
                _ => ((key.0, pack.entries[piece.start].first_seq), 0),
            };
            let (head, body) = pack.encode(piece);
            self.heads.insert(at, head.as_slice()).map_err(boxed)?;
            self.write_parts(at, body, unchanged)?;
        }
        Ok(())
    }

    /// Writes the parts of the body of the pack at `key` that are not wholly within its
    /// first `unchanged` bytes.
    fn write_parts(&mut self, key: Key, body: &[u8], unchanged: usize) -> Result<(), StoreError> {
        // Part `n` holds bytes `n * PART..(n + 1) * PART`: those before `unchanged / PART`
        // are as stored.
        for (n, part) in body.chunks(PART).enumerate().skip(unchanged / PART) {
            self.parts
                .insert((key.0, key.1, n as u32), part)
                .map_err(boxed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, TableDefinition};

    use super::*;

    const HEADS: TableDefinition<'_, Key, &[u8]> = TableDefinition::new("heads");
    const PARTS: TableDefinition<'_, PartKey, &[u8]> = TableDefinition::new("parts");
    /// Where the tests' packs split: their heads are full, at 12 bytes an entry (four
    /// one-byte varints and the check).
    const N: u64 = (pack::HEAD_BYTES / (4 + pack::CHECK)) as u64;

    fn span(first_seq: u64, end_seq: u64) -> Span {
        Span {
            origin: NodeId(1),
            first_seq,
            end_seq,
        }
    }

    /// Runs `f` on an edit of `db` and commits it.
    fn edit<T>(db: &Database, f: impl FnOnce(&mut Edit<'_>) -> T) -> T {
        let txn = db.begin_write().unwrap();
        let out = {
            let mut edit = Edit::new(
                txn.open_table(HEADS).unwrap(),
                txn.open_table(PARTS).unwrap(),
            );
            let out = f(&mut edit);
            edit.finish().unwrap();
            out
        };
        txn.commit().unwrap();
        out
    }

    /// The bytes of test chunk `n`, and its hash.
    fn bytes(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }
    fn id(n: u64) -> ChunkHash {
        ChunkHash::of(&bytes(n))
    }

    /// Once removals have left a gap at the start of a pack, a chunk of the pack before
    /// may reach past the next pack's key: a chunk put into that gap is checked against
    /// it too.
    #[test]
    fn a_fork_with_a_chunk_of_the_pack_before_is_found() {
        let path = std::env::temp_dir().join(format!("chunk-sync-edit-{}", std::process::id()));
        let db = Database::create(&path).unwrap();
        // Two packs: 0..N and N..N + 2.
        edit(&db, |e| {
            for n in 0..N + 2 {
                let put = e.insert(span(n, n + 1), id(n), &bytes(n), 0).unwrap();
                assert_eq!(put, Put::Added);
            }
        });
        let packs = || {
            let txn = db.begin_read().unwrap();
            let heads = txn.open_table(HEADS).unwrap();
            let keys: Vec<Key> = heads
                .iter()
                .unwrap()
                .map(|e| e.unwrap().0.value())
                .collect();
            keys
        };
        assert_eq!(packs(), [(1, 0), (1, N)]);
        // The first pack's last chunk is replaced by one that reaches past N, once the
        // second pack's first chunk is gone.
        edit(&db, |e| {
            assert!(e.remove(1, N).unwrap().is_some());
            assert!(e.remove(1, N - 1).unwrap().is_some());
            let long = e.insert(span(N - 1, N + 1), id(1 << 40), &bytes(1 << 40), 0);
            assert_eq!(long.unwrap(), Put::Added);
        });
        assert_eq!(packs(), [(1, 0), (1, N)]);
        let fork = edit(&db, |e| {
            e.insert(span(N, N + 1), id(1 << 41), &bytes(1 << 41), 0)
                .unwrap()
        });
        assert_eq!(
            fork,
            Put::Fork(Fork {
                refused: id(1 << 41),
                span: span(N, N + 1),
                existing: id(1 << 40),
            })
        );
        // And the same from within one edit.
        let fork = edit(&db, |e| {
            e.remove(1, N + 1).unwrap();
            e.insert(span(N, N + 2), id(1 << 42), &bytes(1 << 42), 0)
                .unwrap()
        });
        assert!(matches!(fork, Put::Fork(f) if f.existing == id(1 << 40)));
        std::fs::remove_file(&path).unwrap();
    }

    /// A chunk put at the end of a pack is checked against the first chunk after it, even
    /// when the pack between them was emptied in the same edit.
    #[test]
    fn a_fork_past_an_emptied_pack_is_found() {
        let path =
            std::env::temp_dir().join(format!("chunk-sync-edit-empty-{}", std::process::id()));
        let db = Database::create(&path).unwrap();
        // Three packs: 0..N, N..2N and 2N..2N + 1.
        edit(&db, |e| {
            for n in 0..2 * N + 1 {
                let put = e.insert(span(n, n + 1), id(n), &bytes(n), 0).unwrap();
                assert_eq!(put, Put::Added);
            }
        });
        let fork = edit(&db, |e| {
            for n in N - 1..2 * N {
                assert!(e.remove(1, n).unwrap().is_some());
            }
            e.insert(span(N - 1, 2 * N + 1), id(1 << 40), &bytes(1 << 40), 0)
                .unwrap()
        });
        assert!(
            matches!(fork, Put::Fork(f) if f.existing == id(2 * N)),
            "{fork:?}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
