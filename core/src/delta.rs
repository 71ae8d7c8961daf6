//! Set difference of sorted, unique hash sequences: what the other side has that we lack,
//! and the reverse.
//!
//! Every function here is a merge walk: `O(n + m)` comparisons, no allocation, no hashing
//! of attacker-chosen bytes. The inputs must be sorted and unique (as
//! [`Manifest::as_slice`](crate::Manifest::as_slice) is); unsorted input gives a wrong
//! answer but never a panic. [`PagedDelta`] does the same walk one manifest page at a time,
//! so neither side ever needs the other's whole set in memory.

use core::cmp::Ordering;
use core::fmt;

use crate::hash::ChunkHash;
use crate::manifest::is_sorted_unique;

/// The hashes of `remote` that are not in `local`: what to request (the original's
/// `compute_delta`). Both inputs sorted and unique; the output is sorted.
///
/// ```
/// use chunk_sync_core::{delta, ChunkHash};
/// let [a, b, c] = [1u8, 2, 3].map(|n| ChunkHash::from_bytes([n; 32]));
/// let (local, remote) = ([a, c], [a, b, c]);
/// let missing: Vec<_> = delta::missing(&local, &remote).collect();
/// assert_eq!(missing, [&b]);
/// ```
#[must_use]
pub fn missing<'a>(local: &'a [ChunkHash], remote: &'a [ChunkHash]) -> Missing<'a> {
    Missing {
        have: local,
        want: remote,
    }
}

/// The hashes of `local` that are not in `remote`: what the other side lacks.
#[must_use]
pub fn extra<'a>(local: &'a [ChunkHash], remote: &'a [ChunkHash]) -> Missing<'a> {
    Missing {
        have: remote,
        want: local,
    }
}

/// Both differences in one walk, in sorted order.
#[must_use]
pub fn diff<'a>(local: &'a [ChunkHash], remote: &'a [ChunkHash]) -> Diff<'a> {
    Diff { local, remote }
}

/// Iterator over the hashes of one sorted set that are not in another; see [`missing`].
#[derive(Clone, Debug)]
pub struct Missing<'a> {
    have: &'a [ChunkHash],
    want: &'a [ChunkHash],
}

impl<'a> Iterator for Missing<'a> {
    type Item = &'a ChunkHash;

    fn next(&mut self) -> Option<&'a ChunkHash> {
        loop {
            let ([w, want_rest @ ..], [h, have_rest @ ..]) = (self.want, self.have) else {
                // Nothing left to compare against: every remaining wanted hash is missing.
                let (w, rest) = self.want.split_first()?;
                self.want = rest;
                return Some(w);
            };
            match h.cmp(w) {
                Ordering::Less => self.have = have_rest,
                Ordering::Equal => {
                    self.have = have_rest;
                    self.want = want_rest;
                }
                Ordering::Greater => {
                    self.want = want_rest;
                    return Some(w);
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (
            self.want.len().saturating_sub(self.have.len()),
            Some(self.want.len()),
        )
    }
}

/// One element of a two-sided difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side<'a> {
    /// Only the remote side has it: request it.
    Missing(&'a ChunkHash),
    /// Only the local side has it: the remote lacks it.
    Extra(&'a ChunkHash),
}

/// Iterator over both differences; see [`diff`].
#[derive(Clone, Debug)]
pub struct Diff<'a> {
    local: &'a [ChunkHash],
    remote: &'a [ChunkHash],
}

impl<'a> Iterator for Diff<'a> {
    type Item = Side<'a>;

    fn next(&mut self) -> Option<Side<'a>> {
        loop {
            match (self.local, self.remote) {
                ([l, lrest @ ..], [r, rrest @ ..]) => match l.cmp(r) {
                    Ordering::Less => {
                        self.local = lrest;
                        return Some(Side::Extra(l));
                    }
                    Ordering::Greater => {
                        self.remote = rrest;
                        return Some(Side::Missing(r));
                    }
                    Ordering::Equal => {
                        self.local = lrest;
                        self.remote = rrest;
                    }
                },
                ([l, lrest @ ..], []) => {
                    self.local = lrest;
                    return Some(Side::Extra(l));
                }
                ([], [r, rrest @ ..]) => {
                    self.remote = rrest;
                    return Some(Side::Missing(r));
                }
                ([], []) => return None,
            }
        }
    }
}

/// A manifest page that breaks the paging rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PageError {
    /// The page is not strictly increasing, or does not start after the previous page.
    Unsorted,
    /// A page arrived after the last one.
    AfterLast,
    /// An empty page that is not the last one.
    Empty,
}

impl fmt::Display for PageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsorted => f.write_str("manifest page is not sorted after the previous page"),
            Self::AfterLast => f.write_str("manifest page after the last page"),
            Self::Empty => f.write_str("empty manifest page that is not the last"),
        }
    }
}

impl core::error::Error for PageError {}

/// The difference between the local set and a remote set that arrives page by page.
///
/// Pages must be sorted, unique and each must start after the previous one (as
/// [`page_after`](crate::manifest::page_after) produces them). Each call returns the
/// difference for the key range the page covers: from the previous page's last hash
/// (exclusive) to this page's last hash (inclusive), or to the end for the last page. The
/// local set is passed on every call and may grow between pages; only a binary search is
/// repeated, never the walk.
#[derive(Clone, Debug, Default)]
pub struct PagedDelta {
    cursor: Option<ChunkHash>,
    done: bool,
}

impl PagedDelta {
    /// A walk that has seen no page.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            cursor: None,
            done: false,
        }
    }

    /// The last remote hash seen: where to ask for the next page from.
    #[must_use]
    pub const fn cursor(&self) -> Option<&ChunkHash> {
        self.cursor.as_ref()
    }

    /// Whether the last page has been fed.
    #[must_use]
    pub const fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds the next remote page; `last` says whether the remote set ends with it.
    ///
    /// On error nothing changes.
    pub fn page<'a>(
        &mut self,
        local: &'a [ChunkHash],
        page: &'a [ChunkHash],
        last: bool,
    ) -> Result<Diff<'a>, PageError> {
        if self.done {
            return Err(PageError::AfterLast);
        }
        let starts_after = match (self.cursor.as_ref(), page.first()) {
            (Some(c), Some(first)) => first > c,
            _ => true,
        };
        if !starts_after || !is_sorted_unique(page) {
            return Err(PageError::Unsorted);
        }
        if page.is_empty() && !last {
            return Err(PageError::Empty);
        }
        let from = self
            .cursor
            .as_ref()
            .map_or(0, |c| local.partition_point(|id| id <= c));
        let to = match (last, page.last()) {
            (false, Some(end)) => local.partition_point(|id| id <= end),
            _ => local.len(),
        };
        if let Some(end) = page.last() {
            self.cursor = Some(*end);
        }
        self.done = last;
        Ok(diff(&local[from..to.max(from)], page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::btree_set;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    fn ids(set: &BTreeSet<u16>) -> Vec<ChunkHash> {
        set.iter()
            .map(|n| {
                let mut b = [0u8; 32];
                b[..2].copy_from_slice(&n.to_be_bytes());
                ChunkHash::from_bytes(b)
            })
            .collect()
    }

    #[test]
    fn empty_sides() {
        let a = ids(&[1, 2].into());
        assert_eq!(missing(&[], &a).count(), 2);
        assert_eq!(missing(&a, &[]).count(), 0);
        assert_eq!(extra(&a, &[]).count(), 2);
    }

    #[test]
    fn bad_pages_are_refused_without_change() {
        let a = ids(&[1, 2, 3].into());
        let mut walk = PagedDelta::new();
        assert_eq!(
            walk.page(&a, &[a[2], a[1]], false).err(),
            Some(PageError::Unsorted)
        );
        assert_eq!(walk.page(&a, &a[1..2], false).map(|d| d.count()), Ok(1));
        assert_eq!(
            walk.page(&a, &a[..1], false).err(),
            Some(PageError::Unsorted)
        );
        assert_eq!(walk.page(&a, &a[2..], true).map(|d| d.count()), Ok(0));
        assert_eq!(walk.page(&a, &[], true).err(), Some(PageError::AfterLast));
        assert_eq!(
            PagedDelta::new().page(&a, &[], false).err(),
            Some(PageError::Empty)
        );
    }

    proptest! {
        #[test]
        fn equals_btreeset_difference(
            l in btree_set(any::<u16>(), 0..300),
            r in btree_set(any::<u16>(), 0..300),
        ) {
            let (local, remote) = (ids(&l), ids(&r));
            let want_missing = ids(&r.difference(&l).copied().collect());
            let want_extra = ids(&l.difference(&r).copied().collect());
            prop_assert_eq!(missing(&local, &remote).copied().collect::<Vec<_>>(), want_missing.clone());
            prop_assert_eq!(extra(&local, &remote).copied().collect::<Vec<_>>(), want_extra.clone());
            let (mut m, mut e) = (Vec::new(), Vec::new());
            for side in diff(&local, &remote) {
                match side { Side::Missing(h) => m.push(*h), Side::Extra(h) => e.push(*h) }
            }
            prop_assert_eq!(m, want_missing);
            prop_assert_eq!(e, want_extra);
        }

        #[test]
        fn paged_equals_whole(
            l in btree_set(any::<u8>(), 0..120),
            r in btree_set(any::<u8>(), 0..120),
            page_len in 1usize..20,
        ) {
            let to16 = |s: &BTreeSet<u8>| s.iter().map(|&n| u16::from(n) << 8).collect::<BTreeSet<u16>>();
            let (local, remote) = (ids(&to16(&l)), ids(&to16(&r)));
            let whole: Vec<_> = diff(&local, &remote).collect();
            let mut walk = PagedDelta::new();
            let mut paged = Vec::new();
            let pages: Vec<&[ChunkHash]> = remote.chunks(page_len).collect();
            if pages.is_empty() {
                paged.extend(walk.page(&local, &[], true).unwrap());
            }
            for (i, page) in pages.iter().enumerate() {
                paged.extend(walk.page(&local, page, i + 1 == pages.len()).unwrap());
            }
            prop_assert!(walk.is_done());
            prop_assert_eq!(paged, whole);
        }
    }
}
