//! Where verified chunks live: the [`ChunkStore`] trait and the fixed-capacity
//! [`RamStore`].
//!
//! A store only ever accepts [`Verified`] bytes, so nothing reaches it unchecked. The sync
//! session never calls a store: it reports what it received and what was requested, and
//! the adapter, which owns the store, answers.

use core::fmt;

use crate::chunk::Span;
use crate::error::InsufficientSize;
use crate::event::NodeId;
use crate::hash::{ChunkHash, Verified};
use crate::recon::KeyRange;

mod ram;
pub use ram::{RamStore, RamStoreError};

/// A place that keeps chunks by hash.
///
/// Reads take `&mut self` so that stores may keep bookkeeping such as recency.
pub trait ChunkStore {
    /// What can go wrong in this store (full, I/O, …).
    type Error: fmt::Debug + fmt::Display;

    /// Keeps a verified chunk. Returns `Ok(true)` if it was new and `Ok(false)` if the
    /// store had it already. On error nothing already stored is changed.
    fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, Self::Error>;

    /// Whether the store has the chunk.
    fn contains(&self, id: &ChunkHash) -> Result<bool, Self::Error>;

    /// The chunk's length in bytes, if the store has it.
    fn chunk_len(&self, id: &ChunkHash) -> Result<Option<usize>, Self::Error>;

    /// Copies the chunk into `buf` and returns its length, or `Ok(None)` if the store does
    /// not have it.
    fn read_into(
        &mut self,
        id: &ChunkHash,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ReadError<Self::Error>>;

    /// Fills `out` with the stored hashes that come strictly after `after` (from the first
    /// if `None`), in ascending order: one manifest page. Returns how many it wrote and
    /// whether the store holds none after them.
    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), Self::Error>;

    /// Number of chunks stored.
    fn chunk_count(&self) -> Result<usize, Self::Error>;

    /// Fills `out` with the origins of the stored chunks strictly after `after` (from the
    /// lowest if `None`), ascending. Returns how many it wrote and whether the store holds
    /// no origin after them.
    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), Self::Error>;

    /// Fills `out` with the stored chunks of `range` (those of its origin whose `first_seq`
    /// lies in it), in ascending `first_seq`: the order in which
    /// [`recon`](crate::recon) summarises them. Returns how many it wrote; fewer than
    /// `out.len()` means that the range holds no more (the next page starts one past the
    /// last `first_seq`).
    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, Self::Error>;

    /// The first stored chunk of `range` (lowest `first_seq`), if it holds any: what a
    /// node serves next for a range request.
    fn first_in(&self, range: &KeyRange) -> Result<Option<(Span, ChunkHash)>, Self::Error> {
        let mut first = [(Span::default(), ChunkHash::default())];
        let n = self.chunks_in(range, &mut first)?;
        Ok(first.get(..n).and_then(<[_]>::first).copied())
    }

    /// Whether an [`insert`](Self::insert) error is the store refusing a [`Fork`], which
    /// fails that chunk only, rather than a failure of the store.
    fn is_fork(error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

/// A borrowed store is a store, so that a driver can use one it does not own.
impl<S: ChunkStore + ?Sized> ChunkStore for &mut S {
    type Error = S::Error;

    fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, Self::Error> {
        (**self).insert(chunk)
    }
    fn contains(&self, id: &ChunkHash) -> Result<bool, Self::Error> {
        (**self).contains(id)
    }
    fn chunk_len(&self, id: &ChunkHash) -> Result<Option<usize>, Self::Error> {
        (**self).chunk_len(id)
    }
    fn read_into(
        &mut self,
        id: &ChunkHash,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ReadError<Self::Error>> {
        (**self).read_into(id, buf)
    }
    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), Self::Error> {
        (**self).ids_after(after, out)
    }
    fn chunk_count(&self) -> Result<usize, Self::Error> {
        (**self).chunk_count()
    }
    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), Self::Error> {
        (**self).origins_after(after, out)
    }
    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, Self::Error> {
        (**self).chunks_in(range, out)
    }
    fn is_fork(error: &Self::Error) -> bool {
        S::is_fork(error)
    }
}

/// A chunk refused because its span overlaps a different chunk already stored: two
/// versions of one part of a log (a fork, or a forgery claiming another node's origin).
/// The chunk stored first stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Fork {
    /// The refused chunk.
    pub refused: ChunkHash,
    /// What it covers.
    pub span: Span,
    /// The stored chunk it overlaps.
    pub existing: ChunkHash,
}

impl fmt::Display for Fork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chunk {} ({}) forks the log: it overlaps the stored chunk {}",
            self.refused, self.span, self.existing
        )
    }
}

impl core::error::Error for Fork {}

/// Why [`ChunkStore::read_into`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReadError<E> {
    /// The buffer cannot hold the chunk.
    BufferTooSmall(InsufficientSize),
    /// The store failed.
    Store(E),
}

impl<E: fmt::Display> fmt::Display for ReadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall(e) => fmt::Display::fmt(e, f),
            Self::Store(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for ReadError<E> {}

/// Fills `out` from the ascending hashes `ids` (those after the page's cursor) and returns
/// how many it wrote and whether none are left: the answer of [`ChunkStore::ids_after`],
/// for any store that can walk its hashes in order.
pub fn fill_page(out: &mut [ChunkHash], ids: impl IntoIterator<Item = ChunkHash>) -> (usize, bool) {
    let mut ids = ids.into_iter();
    let n = out
        .iter_mut()
        .zip(ids.by_ref())
        .map(|(dst, id)| *dst = id)
        .count();
    (n, ids.next().is_none())
}

/// Fills `out` with origins after `after`, each found by `next_above` (the lowest origin
/// strictly above the one given, or the lowest of all for `None`): the answer of
/// [`ChunkStore::origins_after`] for a store that can find the next origin.
pub fn fill_origins(
    out: &mut [NodeId],
    after: Option<NodeId>,
    mut next_above: impl FnMut(Option<NodeId>) -> Option<NodeId>,
) -> (usize, bool) {
    let mut above = after;
    for (n, slot) in out.iter_mut().enumerate() {
        let Some(origin) = next_above(above) else {
            return (n, true);
        };
        *slot = origin;
        above = Some(origin);
    }
    (out.len(), next_above(above).is_none())
}

/// The answers of [`ChunkStore::origins_after`] and [`ChunkStore::chunks_in`] for a store
/// that keeps its chunks' spans in no useful order (a few, in RAM): each answer scans
/// `spans()` (each chunk's span and a reference to its id) once per origin or chunk
/// written (`O(N)` each).
pub mod scan {
    use super::fill_origins;
    use crate::chunk::Span;
    use crate::event::NodeId;
    use crate::hash::ChunkHash;
    use crate::recon::KeyRange;

    /// [`ChunkStore::origins_after`](super::ChunkStore::origins_after) over `spans()`.
    pub fn origins_after<'a, I: Iterator<Item = (Span, &'a ChunkHash)>>(
        out: &mut [NodeId],
        after: Option<NodeId>,
        spans: impl Fn() -> I,
    ) -> (usize, bool) {
        // Each origin in turn: the smallest one above the previous.
        fill_origins(out, after, |above| {
            spans()
                .map(|(span, _)| span.origin)
                .filter(|o| above.is_none_or(|a| *o > a))
                .min()
        })
    }

    /// [`ChunkStore::chunks_in`](super::ChunkStore::chunks_in) over `spans()`.
    pub fn chunks_in<'a, I: Iterator<Item = (Span, &'a ChunkHash)>>(
        out: &mut [(Span, ChunkHash)],
        range: &KeyRange,
        spans: impl Fn() -> I,
    ) -> usize {
        // Each chunk in turn: the lowest `first_seq` of the range above the previous one.
        let mut from = range.lo;
        let mut n = 0;
        for slot in out.iter_mut() {
            let next = spans()
                .filter(|(span, _)| {
                    span.first_seq >= from && range.contains(span.origin, span.first_seq)
                })
                .min_by_key(|(span, _)| span.first_seq);
            let Some(found) = next else {
                break;
            };
            *slot = (found.0, *found.1);
            n += 1;
            match found.0.first_seq.checked_add(1) {
                Some(f) => from = f,
                None => break,
            }
        }
        n
    }
}

/// Copies a stored chunk's `bytes` into a reader's `buf` and returns its length, or reports
/// the size needed: the answer of [`ChunkStore::read_into`], for any store.
///
/// # Errors
/// [`ReadError::BufferTooSmall`] if `buf` is shorter than `bytes`.
pub fn copy_out<E>(bytes: &[u8], buf: &mut [u8]) -> Result<Option<usize>, ReadError<E>> {
    let out = buf
        .get_mut(..bytes.len())
        .ok_or(ReadError::BufferTooSmall(InsufficientSize {
            required: bytes.len(),
        }))?;
    out.copy_from_slice(bytes);
    Ok(Some(bytes.len()))
}
