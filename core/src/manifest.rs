//! Manifests: sorted, de-duplicated sets of chunk hashes with a fixed capacity, and the
//! pages in which they travel.
//!
//! Sets of hashes that come from peers are kept sorted, never in hash tables keyed by bytes
//! an attacker chooses; membership is a binary search and set algebra is a merge walk
//! ([`delta`](crate::delta)). Code that does not care about the capacity takes a plain
//! `&[ChunkHash]` that is sorted and unique, such as [`Manifest::as_slice`].
//!
//! A manifest travels in pages: a page is the run of hashes strictly after a cursor (the
//! last hash of the previous page), so paging stays correct while the set grows.
//! [`listing_cost`] is what sending a whole manifest that way costs: the baseline that
//! [`recon`](crate::recon) is measured against.

use heapless::Vec;

use crate::error::CapacityError;
use crate::hash::ChunkHash;

/// A sorted set of at most `N` chunk hashes.
///
/// Memory: `32 × N` bytes plus a `usize`, inline (it can live in a `static`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest<const N: usize> {
    ids: Vec<ChunkHash, N>,
}

impl<const N: usize> Manifest<N> {
    /// An empty manifest.
    #[must_use]
    pub const fn new() -> Self {
        Self { ids: Vec::new() }
    }

    /// Adds `id`. Returns `Ok(true)` if it was new, `Ok(false)` if it was already present,
    /// and `Err(id)` (handing it back, the set unchanged) if the manifest is full.
    pub fn insert(&mut self, id: ChunkHash) -> Result<bool, ChunkHash> {
        match self.ids.binary_search(&id) {
            Ok(_) => Ok(false),
            Err(at) => self.ids.insert(at, id).map(|()| true),
        }
    }

    /// Adds every hash of `ids` (in any order, duplicates allowed). Stops at the first one
    /// that does not fit and reports the capacity; the hashes added before it stay.
    pub fn extend_from_slice(&mut self, ids: &[ChunkHash]) -> Result<(), CapacityError> {
        for id in ids {
            self.insert(*id).map_err(|_| CapacityError {
                what: "manifest",
                capacity: N,
            })?;
        }
        Ok(())
    }

    /// Removes `id`; returns whether it was present.
    pub fn remove(&mut self, id: &ChunkHash) -> bool {
        match self.ids.binary_search(id) {
            Ok(at) => {
                self.ids.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether `id` is in the set.
    #[must_use]
    pub fn contains(&self, id: &ChunkHash) -> bool {
        self.ids.binary_search(id).is_ok()
    }

    /// The hashes, sorted and unique.
    #[must_use]
    pub fn as_slice(&self) -> &[ChunkHash] {
        &self.ids
    }

    /// Number of hashes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether another hash would be refused.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.ids.is_full()
    }

    /// The most hashes the manifest can hold: `N`.
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Removes every hash.
    pub fn clear(&mut self) {
        self.ids.clear();
    }

    /// At most `limit` hashes strictly after `after` (from the start if `None`); see
    /// [`page_after`].
    #[must_use]
    pub fn page_after(&self, after: Option<&ChunkHash>, limit: usize) -> &[ChunkHash] {
        page_after(&self.ids, after, limit)
    }
}

/// At most `limit` hashes of the sorted set `ids` that come strictly after `after` (from
/// the start if `None`). The page is empty when the cursor is at or past the end.
#[must_use]
pub fn page_after<'a>(
    ids: &'a [ChunkHash],
    after: Option<&ChunkHash>,
    limit: usize,
) -> &'a [ChunkHash] {
    let start = after.map_or(0, |a| ids.partition_point(|id| id <= a));
    let rest = &ids[start..];
    &rest[..rest.len().min(limit)]
}

/// Whether `ids` is strictly increasing: sorted, with no duplicate. Peers' pages must be.
#[must_use]
pub fn is_sorted_unique(ids: &[ChunkHash]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

/// The bytes that listing a whole manifest of `hashes` hashes costs, in frames of `frame`
/// bytes holding at most `max_page` hashes each: for every page, a request (frame header,
/// tag, a 32-byte cursor, a limit) and the page (frame header, tag, a length, 32 bytes per
/// hash, an end flag). The baseline that [`recon`](crate::recon)'s cost is compared with.
#[must_use]
pub fn listing_cost(hashes: usize, frame: usize, max_page: usize) -> usize {
    const REQUEST: usize = 4 + 1 + 1 + ChunkHash::LEN + 3;
    const PAGE_FIELDS: usize = 4 + 1 + 1;
    let per_page = (frame.saturating_sub(PAGE_FIELDS + 5) / ChunkHash::LEN)
        .min(max_page)
        .max(1);
    let pages = hashes.div_ceil(per_page).max(1);
    let varint = |n: usize| (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize;
    let page = |n: usize| PAGE_FIELDS + varint(n * ChunkHash::LEN) + n * ChunkHash::LEN;
    let rest = hashes - (pages - 1) * per_page;
    (pages - 1) * page(per_page) + page(rest) + pages * REQUEST
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec as pvec;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn h(n: u8) -> ChunkHash {
        ChunkHash::from_bytes([n; 32])
    }

    #[test]
    fn full_manifest_hands_the_hash_back() {
        let mut m = Manifest::<2>::new();
        assert_eq!(m.insert(h(2)), Ok(true));
        assert_eq!(m.insert(h(1)), Ok(true));
        assert_eq!(m.insert(h(1)), Ok(false));
        assert_eq!(m.insert(h(3)), Err(h(3)));
        assert_eq!(m.as_slice(), &[h(1), h(2)]);
        assert_eq!(
            m.extend_from_slice(&[h(9)]),
            Err(CapacityError {
                what: "manifest",
                capacity: 2
            })
        );
        assert!(m.remove(&h(1)) && !m.remove(&h(1)));
    }

    #[test]
    fn pages_follow_a_cursor() {
        let mut m = Manifest::<8>::new();
        m.extend_from_slice(&[h(5), h(1), h(3), h(7)]).unwrap();
        assert_eq!(m.page_after(None, 2), &[h(1), h(3)]);
        assert_eq!(m.page_after(Some(&h(3)), 2), &[h(5), h(7)]);
        assert_eq!(m.page_after(Some(&h(4)), 9), &[h(5), h(7)]);
        assert!(m.page_after(Some(&h(7)), 2).is_empty());
    }

    proptest! {
        #[test]
        fn stays_sorted_unique_and_bounded(bytes in pvec(0u8..40, 0..80)) {
            let mut m = Manifest::<32>::new();
            let mut model = BTreeSet::new();
            for b in bytes {
                let id = h(b);
                match m.insert(id) {
                    Ok(new) => prop_assert_eq!(new, model.insert(id)),
                    Err(back) => {
                        prop_assert_eq!(back, id);
                        prop_assert!(m.is_full() && !model.contains(&id));
                    }
                }
                prop_assert!(is_sorted_unique(m.as_slice()));
                prop_assert!(m.len() <= 32);
            }
            prop_assert!(m.as_slice().iter().eq(model.iter()));
        }

        #[test]
        fn paging_visits_every_hash_once(n in 0u8..60, limit in 1usize..9) {
            let mut m = Manifest::<64>::new();
            for b in 0..n { m.insert(h(b)).unwrap(); }
            let mut seen = std::vec::Vec::new();
            let mut cursor = None;
            loop {
                let page = m.page_after(cursor.as_ref(), limit);
                if page.is_empty() { break; }
                seen.extend_from_slice(page);
                cursor = page.last().copied();
            }
            prop_assert_eq!(seen.as_slice(), m.as_slice());
        }
    }
}
