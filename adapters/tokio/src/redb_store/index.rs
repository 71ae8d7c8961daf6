//! Which hash is where: the in-memory index of a [`RedbStore`](super::RedbStore), read from
//! the packs when it is first needed and kept in step with every commit after that.
//!
//! Most of it is a few runs sorted by hash, 48 bytes per chunk (hash, origin, first
//! sequence number), searched by bisection; the chunks stored since the last run was made
//! are in a hash table of at most [`MERGE_AT`] entries, which stays in the processor's
//! caches. A million small chunks are indexed at the cost of sixteen sorts and a few
//! sequential merges rather than a million cache misses into one large table.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use chunk_sync_core::ChunkHash;

use super::edit::Key;

/// Entries in the hash table past which they become a sorted run (in tests, few, so that
/// merges happen often).
const MERGE_AT: usize = if cfg!(test) { 64 } else { 1 << 16 };

/// Where the store's chunks are: each packed chunk's origin and first sequence number,
/// and which hashes are kept loose (not valid chunks, see `LOOSE`).
#[derive(Debug, Default)]
pub(super) struct Index {
    /// Runs sorted by hash, each longer than the next.
    runs: Vec<Vec<(ChunkHash, Key)>>,
    recent: HashMap<ChunkHash, Key, Ids>,
    loose: HashSet<ChunkHash, Ids>,
}

impl Index {
    /// The index of a store holding the packed chunks `packed` (in any order) and the
    /// loose ones `loose`: one sort.
    pub(super) fn of(
        mut packed: Vec<(ChunkHash, Key)>,
        loose: impl IntoIterator<Item = ChunkHash>,
    ) -> Self {
        sort(&mut packed);
        let mut index = Self::default();
        index.runs.extend((!packed.is_empty()).then_some(packed));
        index.loose.extend(loose);
        index
    }

    /// Where the packed chunk `id` is.
    pub(super) fn packed(&self, id: &ChunkHash) -> Option<Key> {
        if let Some(key) = self.recent.get(id) {
            return Some(*key);
        }
        self.runs.iter().find_map(|run| {
            let at = run.binary_search_by(|(other, _)| order(other, id)).ok()?;
            Some(run[at].1)
        })
    }

    /// Whether `id` is kept loose.
    pub(super) fn is_loose(&self, id: &ChunkHash) -> bool {
        self.loose.contains(id)
    }

    /// Whether the store has `id`.
    pub(super) fn contains(&self, id: &ChunkHash) -> bool {
        self.is_loose(id) || self.packed(id).is_some()
    }

    /// Records a new chunk: packed at `key`, or loose.
    pub(super) fn add(&mut self, id: ChunkHash, place: Option<Key>) {
        match place {
            None => {
                self.loose.insert(id);
            }
            // Read from the packs after the commit that stored it: it is there already.
            Some(_) if self.packed(&id).is_some() => {}
            Some(key) => {
                self.recent.insert(id, key);
                if self.recent.len() >= MERGE_AT {
                    self.merge();
                }
            }
        }
    }

    /// What a commit did: `added` (with their places), then `removed`.
    pub(super) fn apply(&mut self, added: &[(ChunkHash, Option<Key>)], removed: &[ChunkHash]) {
        for (id, place) in added {
            self.add(*id, *place);
        }
        self.remove_all(removed);
    }

    /// Forgets removed chunks (one pass over the sorted runs).
    pub(super) fn remove_all(&mut self, ids: &[ChunkHash]) {
        if ids.is_empty() {
            return;
        }
        let gone: HashSet<&ChunkHash, Ids> = ids.iter().collect();
        self.recent.retain(|id, _| !gone.contains(id));
        self.loose.retain(|id| !gone.contains(id));
        for run in &mut self.runs {
            run.retain(|(id, _)| !gone.contains(id));
        }
        self.runs.retain(|run| !run.is_empty());
    }

    /// How many chunks the store has.
    pub(super) fn len(&self) -> usize {
        let runs: usize = self.runs.iter().map(Vec::len).sum();
        runs + self.recent.len() + self.loose.len()
    }

    /// Every hash, in no particular order.
    pub(super) fn ids(&self) -> impl Iterator<Item = &ChunkHash> {
        let sorted = self.runs.iter().flatten().map(|(id, _)| id);
        sorted.chain(self.recent.keys()).chain(&self.loose)
    }

    /// Moves the hash table's entries into a sorted run of their own, then merges the
    /// last two runs while the last is as long as the one before: as in a binary counter,
    /// each entry is moved about log2(n / [`MERGE_AT`]) times in all, and a lookup
    /// searches that many runs.
    fn merge(&mut self) {
        let mut run: Vec<(ChunkHash, Key)> = self.recent.drain().collect();
        sort(&mut run);
        while let Some(last) = self.runs.last()
            && last.len() <= run.len()
        {
            run = merged(last, &run);
            self.runs.pop();
        }
        self.runs.push(run);
    }
}

/// Sorts by hash: by the first 16 bytes as a number, then (for the rare equal ones) by all.
fn sort(run: &mut [(ChunkHash, Key)]) {
    run.sort_unstable_by_key(|(id, _)| head(id));
    let mut at = 0;
    while at < run.len() {
        let same = run[at..].partition_point(|(id, _)| head(id) == head(&run[at].0));
        run[at..at + same].sort_unstable_by_key(|(id, _)| *id);
        at += same;
    }
}

/// Two runs sorted by hash, as one.
fn merged(a: &[(ChunkHash, Key)], b: &[(ChunkHash, Key)]) -> Vec<(ChunkHash, Key)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if order(&a[i].0, &b[j].0).is_le() {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The order of hashes (their bytes'), decided by their first 16 bytes read as one number
/// unless those are equal.
fn order(a: &ChunkHash, b: &ChunkHash) -> std::cmp::Ordering {
    head(a).cmp(&head(b)).then_with(|| a.cmp(b))
}

/// The first 16 bytes of a hash as a number: the hashes' order, but for equal ones.
fn head(id: &ChunkHash) -> u128 {
    u128::from_be_bytes(id.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// How the index's tables hash chunk hashes. They are uniform already, but a peer can
/// grind chunks until their hashes share the bits a table looks at, so a key drawn at
/// random for each store is mixed into all of them: each 16 bytes are folded into the
/// state with a 128-bit multiply of their halves, each xored with the key (the
/// construction of foldhash and of ahash's fallback): two multiplies per hash.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ids {
    key: [u64; 2],
}

impl Default for Ids {
    fn default() -> Self {
        let random = std::hash::RandomState::new();
        Self {
            key: [random.hash_one(0u8), random.hash_one(1u8)],
        }
    }
}

impl BuildHasher for Ids {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            key: self.key,
            state: 0,
        }
    }
}

/// The hasher [`Ids`] builds.
#[derive(Debug)]
pub(super) struct IdHasher {
    key: [u64; 2],
    state: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for part in bytes.chunks(16) {
            let mut words = [0u8; 16];
            words[..part.len()].copy_from_slice(part);
            let (a, b) = words.split_at(8);
            let [a, b] = [a, b].map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
            let product = u128::from(a ^ self.key[0] ^ self.state) * u128::from(b ^ self.key[1]);
            self.state = (product as u64) ^ ((product >> 64) as u64);
        }
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any adds and removals, across merges, leave the index knowing exactly the
        /// chunks added and not removed, each at its place.
        #[test]
        fn the_index_knows_what_was_added_and_not_removed(
            ops in prop::collection::vec((0u32..300, 0u8..10), 1..60),
        ) {
            let mut index = Index::default();
            let mut model = std::collections::BTreeMap::new();
            let mut n = 0u64;
            for (count, op) in ops {
                if op == 0 {
                    // Removes every third chunk added so far.
                    let gone: Vec<ChunkHash> = model.keys().step_by(3).copied().collect();
                    index.remove_all(&gone);
                    for id in &gone {
                        model.remove(id);
                    }
                    continue;
                }
                for _ in 0..count {
                    n += 1;
                    let id = ChunkHash::of(&n.to_le_bytes());
                    let place = (op != 1).then_some((n % 7, n));
                    index.add(id, place);
                    model.insert(id, place);
                }
            }
            prop_assert_eq!(index.len(), model.len());
            let mut ids: Vec<ChunkHash> = index.ids().copied().collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, model.keys().copied().collect::<Vec<_>>());
            for (id, place) in &model {
                prop_assert_eq!(index.packed(id), *place);
                prop_assert_eq!(index.is_loose(id), place.is_none());
            }
            let absent = ChunkHash::of(b"never added");
            prop_assert!(!index.contains(&absent));
            // Read at once, as when a store is opened, it knows the same.
            let packed = model.iter().filter_map(|(id, p)| p.map(|p| (*id, p))).collect();
            let loose = model.iter().filter(|(_, p)| p.is_none()).map(|(id, _)| *id);
            let read = Index::of(packed, loose);
            prop_assert_eq!(read.len(), model.len());
            for (id, place) in &model {
                prop_assert_eq!(read.packed(id), *place);
            }
        }
    }

    /// Hashes equal in their first 16 bytes (which a peer could grind for) are still told
    /// apart in the sorted runs.
    #[test]
    fn hashes_that_share_their_first_bytes_are_found() {
        let mut index = Index::default();
        let ids: Vec<ChunkHash> = (0..500u32)
            .map(|n| {
                let mut bytes = [7u8; 32];
                bytes[28..].copy_from_slice(&(n.wrapping_mul(2_654_435_761)).to_be_bytes());
                if n % 5 == 0 {
                    bytes[0] = n as u8;
                }
                ChunkHash::from_bytes(bytes)
            })
            .collect();
        for (n, id) in ids.iter().enumerate() {
            index.add(*id, Some((0, n as u64)));
        }
        assert!(index.runs.len() > 1, "merged into runs");
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(index.packed(id), Some((0, n as u64)));
        }
    }
}
