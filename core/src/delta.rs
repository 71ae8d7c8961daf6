//! Set difference of sorted, unique hash sequences: what the other side has that we lack,
//! and the reverse.
//!
//! Every function here is a merge walk: `O(n + m)` comparisons, no allocation, no hashing
//! of attacker-chosen bytes. The inputs must be sorted and unique (as
//! [`Manifest::as_slice`](crate::Manifest::as_slice) is); unsorted input gives a wrong
//! answer but never a panic.

use core::cmp::Ordering;

use crate::hash::ChunkHash;

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

    }
}
