//! Reading packs in a transaction, and editing them in a write transaction: the packs a
//! transaction changes are held in memory and written once each when it ends.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};

use chunk_sync_core::store::Fork;
use chunk_sync_core::{ChunkHash, NodeId, Span};
use redb::{ReadableTable, Table};

use super::pack::{Entry, Pack, decode_head};
use super::{RedbError, boxed};
use crate::error::StoreError;
use crate::store::fork_with;

/// A pack's key: its origin and the sequence number its chunks start at or after.
pub(super) type Key = (u64, u64);

/// The error for a pack that does not decode.
pub(super) fn damaged(key: Key) -> StoreError {
    StoreError::from(RedbError::Damaged(format!(
        "the pack of origin {:#018x} at {} is damaged",
        key.0, key.1
    )))
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

/// The entries of the pack at `key`.
pub(super) fn entries_at(
    heads: &impl ReadableTable<Key, &'static [u8]>,
    key: Key,
) -> Result<Vec<Entry>, StoreError> {
    let head = heads.get(key).map_err(boxed)?.ok_or_else(|| damaged(key))?;
    decode_head(head.value()).ok_or_else(|| damaged(key))
}

/// Calls `f` with the key and entry of every chunk of `origin` that starts in `lo..hi`, in
/// order, until it returns `false`.
pub(super) fn scan(
    heads: &impl ReadableTable<Key, &'static [u8]>,
    origin: u64,
    lo: u64,
    hi: u64,
    mut f: impl FnMut(&Entry) -> bool,
) -> Result<(), StoreError> {
    if lo >= hi {
        return Ok(());
    }
    let start = holder(heads, origin, lo)?.unwrap_or((origin, lo));
    for pack in heads.range(start..(origin, hi)).map_err(boxed)? {
        let (key, head) = pack.map_err(boxed)?;
        let entries = decode_head(head.value()).ok_or_else(|| damaged(key.value()))?;
        for e in entries.iter().filter(|e| e.first_seq >= lo) {
            if e.first_seq >= hi || !f(e) {
                return Ok(());
            }
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
    bodies: Table<'t, Key, &'static [u8]>,
    /// Packs changed so far, by key (new ones included), as they will be written.
    dirty: BTreeMap<Key, Pack>,
    /// For each origin inserted into, the pack its last chunk went to (forgotten when a
    /// pack is made or a chunk removed, which may move the boundaries it records).
    current: BTreeMap<u64, Current>,
}

impl<'t> Edit<'t> {
    pub(super) fn new(
        heads: Table<'t, Key, &'static [u8]>,
        bodies: Table<'t, Key, &'static [u8]>,
    ) -> Self {
        Self {
            heads,
            bodies,
            dirty: BTreeMap::new(),
            current: BTreeMap::new(),
        }
    }

    /// The stored packs, as they were before this edit.
    pub(super) fn heads(&self) -> &Table<'t, Key, &'static [u8]> {
        &self.heads
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
            let head = self.heads.get(key).map_err(boxed)?;
            let body = self.bodies.get(key).map_err(boxed)?;
            let pack = match (head, body) {
                (Some(h), Some(b)) => Pack::decode(h.value(), b.value().to_vec()),
                (None, None) => Some(Pack::default()),
                _ => None,
            };
            self.dirty.insert(key, pack.ok_or_else(|| damaged(key))?);
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
                None => entries_at(&self.heads, at)?.first().copied(),
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
                None => entries_at(&self.heads, before)?.last().copied(),
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
            Ok(i) if pack.entries[i].id == id => return Ok(Put::Held),
            Ok(i) => {
                let existing = pack.entries[i].id;
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
            (span, e.id)
        };
        if let Some(fork) = fork_with(id, span, before.map(neighbour), after.map(neighbour)) {
            return Ok(Put::Fork(fork));
        }
        let entry = Entry {
            first_seq: first,
            end_seq: span.end_seq,
            stored_at,
            at: 0,
            len: 0,
            id,
        };
        self.load(key)?.insert(at, entry, bytes);
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
            let pieces = pack.pieces();
            if pieces.is_empty() {
                self.heads.remove(key).map_err(boxed)?;
                self.bodies.remove(key).map_err(boxed)?;
            }
            for (n, piece) in pieces.into_iter().enumerate() {
                let at = match n {
                    0 => key,
                    _ => (key.0, pack.entries[piece.start].first_seq),
                };
                let (head, body) = pack.encode(piece);
                self.heads.insert(at, head.as_slice()).map_err(boxed)?;
                self.bodies.insert(at, body).map_err(boxed)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, TableDefinition};

    use super::*;

    const HEADS: TableDefinition<'_, Key, &[u8]> = TableDefinition::new("heads");
    const BODIES: TableDefinition<'_, Key, &[u8]> = TableDefinition::new("bodies");

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
                txn.open_table(BODIES).unwrap(),
            );
            let out = f(&mut edit);
            edit.finish().unwrap();
            out
        };
        txn.commit().unwrap();
        out
    }

    /// Once removals have left a gap at the start of a pack, a chunk of the pack before
    /// may reach past the next pack's key: a chunk put into that gap is checked against
    /// it too.
    #[test]
    fn a_fork_with_a_chunk_of_the_pack_before_is_found() {
        let path = std::env::temp_dir().join(format!("chunk-sync-edit-{}", std::process::id()));
        let db = Database::create(&path).unwrap();
        let id = |n: u64| ChunkHash::of(&n.to_le_bytes());
        // Two packs: 0..512 and 512..514.
        edit(&db, |e| {
            for n in 0..514 {
                assert_eq!(
                    e.insert(span(n, n + 1), id(n), b"x", 0).unwrap(),
                    Put::Added
                );
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
        assert_eq!(packs(), [(1, 0), (1, 512)]);
        // The first pack's last chunk is replaced by one that reaches past 512, once the
        // second pack's first chunk is gone.
        edit(&db, |e| {
            assert!(e.remove(1, 512).unwrap().is_some());
            assert!(e.remove(1, 511).unwrap().is_some());
            let long = e.insert(span(511, 513), id(1000), b"yy", 0).unwrap();
            assert_eq!(long, Put::Added);
        });
        assert_eq!(packs(), [(1, 0), (1, 512)]);
        let fork = edit(&db, |e| {
            e.insert(span(512, 513), id(1001), b"z", 0).unwrap()
        });
        assert_eq!(
            fork,
            Put::Fork(Fork {
                refused: id(1001),
                span: span(512, 513),
                existing: id(1000),
            })
        );
        // And the same from within one edit.
        let fork = edit(&db, |e| {
            e.remove(1, 513).unwrap();
            e.insert(span(512, 514), id(1002), b"z", 0).unwrap()
        });
        assert!(matches!(fork, Put::Fork(f) if f.existing == id(1000)));
        std::fs::remove_file(&path).unwrap();
    }

    /// A chunk put at the end of a pack is checked against the first chunk after it, even
    /// when the pack between them was emptied in the same edit.
    #[test]
    fn a_fork_past_an_emptied_pack_is_found() {
        let path =
            std::env::temp_dir().join(format!("chunk-sync-edit-empty-{}", std::process::id()));
        let db = Database::create(&path).unwrap();
        let id = |n: u64| ChunkHash::of(&n.to_le_bytes());
        // Three packs: 0..512, 512..1024 and 1024..1025.
        edit(&db, |e| {
            for n in 0..1025 {
                assert_eq!(
                    e.insert(span(n, n + 1), id(n), b"x", 0).unwrap(),
                    Put::Added
                );
            }
        });
        let fork = edit(&db, |e| {
            for n in 511..1024 {
                assert!(e.remove(1, n).unwrap().is_some());
            }
            e.insert(span(511, 1025), id(2000), b"long", 0).unwrap()
        });
        assert!(
            matches!(fork, Put::Fork(f) if f.existing == id(1024)),
            "{fork:?}"
        );
    }
}
