//! [`RamStore`]: chunks in fixed arrays, no allocator.

use core::fmt;

use heapless::Vec;

use super::{ChunkStore, Fork, ReadError, copy_out, fill_page, scan};
use crate::chunk::Span;
use crate::error::CapacityError;
use crate::event::NodeId;
use crate::hash::{ChunkHash, Verified};
use crate::recon::KeyRange;

#[derive(Clone, Copy, Debug)]
struct Slot {
    id: ChunkHash,
    at: usize,
    len: usize,
}

/// Up to `N` chunks holding up to `BYTES` bytes in all, in fixed arrays (it can live in a
/// `static`).
///
/// Memory: `BYTES + N × (32 + 2 × size_of::<usize>())` bytes. Chunks are packed end to
/// end; removing one moves the later ones down, so there is never fragmentation. Slots are
/// sorted by hash; the range queries of reconciliation scan them and read each chunk's
/// span from its header (`O(N)` per chunk returned), which suits the few chunks a RAM
/// store holds. Bytes that are not a chunk are kept and served, never summarised.
#[derive(Clone)]
pub struct RamStore<const N: usize, const BYTES: usize> {
    /// Sorted by id.
    slots: Vec<Slot, N>,
    data: [u8; BYTES],
    used: usize,
}

impl<const N: usize, const BYTES: usize> fmt::Debug for RamStore<N, BYTES> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamStore")
            .field("chunks", &self.slots.len())
            .field("bytes", &self.used)
            .finish()
    }
}

impl<const N: usize, const BYTES: usize> Default for RamStore<N, BYTES> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a [`RamStore`] refused a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RamStoreError {
    /// The chunk is larger than the whole store: it will never fit.
    TooLarge {
        /// The chunk's size.
        size: usize,
        /// The store's byte capacity.
        capacity: usize,
    },
    /// The store is full now (chunk slots or bytes); removing chunks makes room.
    Full(CapacityError),
    /// The chunk overlaps a different stored chunk of the same origin.
    Fork(Fork),
}

impl fmt::Display for RamStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { size, capacity } => {
                write!(
                    f,
                    "chunk of {size} bytes can never fit a store of {capacity} bytes"
                )
            }
            Self::Full(e) => fmt::Display::fmt(e, f),
            Self::Fork(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl core::error::Error for RamStoreError {}

impl<const N: usize, const BYTES: usize> RamStore<N, BYTES> {
    /// An empty store.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            slots: Vec::new(),
            data: [0; BYTES],
            used: 0,
        }
    }

    /// The stored chunk's bytes, if present.
    #[must_use]
    pub fn get(&self, id: &ChunkHash) -> Option<&[u8]> {
        let slot = self.slot(id)?;
        self.data.get(slot.at..slot.at + slot.len)
    }

    /// Removes a chunk; returns whether it was present.
    pub fn remove(&mut self, id: &ChunkHash) -> bool {
        let Ok(index) = self.slots.binary_search_by(|s| s.id.cmp(id)) else {
            return false;
        };
        let gone = self.slots.remove(index);
        self.data
            .copy_within(gone.at + gone.len..self.used, gone.at);
        self.used -= gone.len;
        for slot in self.slots.iter_mut().filter(|s| s.at > gone.at) {
            slot.at -= gone.len;
        }
        true
    }

    /// Bytes in use.
    #[must_use]
    pub const fn used_bytes(&self) -> usize {
        self.used
    }

    /// The stored hashes, sorted.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = &ChunkHash> {
        self.slots.iter().map(|s| &s.id)
    }

    /// The stored chunks' spans, with their ids.
    fn spans(&self) -> impl Iterator<Item = (Span, &ChunkHash)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| Span::of(&self.data[s.at..s.at + s.len]).map(|span| (span, &s.id)))
    }

    /// A stored chunk other than `id` whose span overlaps `span`.
    fn overlapping(&self, id: &ChunkHash, span: &Span) -> Option<ChunkHash> {
        self.spans()
            .find(|(other, other_id)| *other_id != id && other.overlaps(span))
            .map(|(_, other_id)| *other_id)
    }

    fn slot(&self, id: &ChunkHash) -> Option<&Slot> {
        self.slots
            .binary_search_by(|s| s.id.cmp(id))
            .ok()
            .map(|i| &self.slots[i])
    }
}

impl<const N: usize, const BYTES: usize> ChunkStore for RamStore<N, BYTES> {
    type Error = RamStoreError;

    fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, RamStoreError> {
        let id = chunk.id();
        let bytes = chunk.bytes();
        let Err(index) = self.slots.binary_search_by(|s| s.id.cmp(&id)) else {
            return Ok(false);
        };
        if bytes.len() > BYTES {
            return Err(RamStoreError::TooLarge {
                size: bytes.len(),
                capacity: BYTES,
            });
        }
        // A scan of the headers: the store holds few chunks.
        if let Some((span, existing)) = Span::of(bytes).and_then(|span| {
            self.overlapping(&id, &span)
                .map(|existing| (span, existing))
        }) {
            return Err(RamStoreError::Fork(Fork {
                refused: id,
                span,
                existing,
            }));
        }
        if self.slots.is_full() {
            return Err(RamStoreError::Full(CapacityError {
                what: "RAM store chunk slots",
                capacity: N,
            }));
        }
        let Some(room) = self.data.get_mut(self.used..self.used + bytes.len()) else {
            return Err(RamStoreError::Full(CapacityError {
                what: "RAM store bytes",
                capacity: BYTES,
            }));
        };
        room.copy_from_slice(bytes);
        let slot = Slot {
            id,
            at: self.used,
            len: bytes.len(),
        };
        // Cannot fail: fullness was checked above.
        let _ = self.slots.insert(index, slot);
        self.used += bytes.len();
        Ok(true)
    }

    fn contains(&self, id: &ChunkHash) -> Result<bool, RamStoreError> {
        Ok(self.slot(id).is_some())
    }

    fn chunk_len(&self, id: &ChunkHash) -> Result<Option<usize>, RamStoreError> {
        Ok(self.slot(id).map(|s| s.len))
    }

    fn read_into(
        &mut self,
        id: &ChunkHash,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ReadError<RamStoreError>> {
        match self.get(id) {
            Some(bytes) => copy_out(bytes, buf),
            None => Ok(None),
        }
    }

    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), RamStoreError> {
        let start = after.map_or(0, |a| self.slots.partition_point(|s| s.id <= *a));
        Ok(fill_page(out, self.slots[start..].iter().map(|s| s.id)))
    }

    fn chunk_count(&self) -> Result<usize, RamStoreError> {
        Ok(self.slots.len())
    }

    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), RamStoreError> {
        Ok(scan::origins_after(out, after, || self.spans()))
    }

    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, RamStoreError> {
        Ok(scan::chunks_in(out, range, || self.spans()))
    }

    fn is_fork(error: &RamStoreError) -> bool {
        matches!(error, RamStoreError::Fork(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_read_remove_and_limits() {
        let mut s = RamStore::<2, 10>::new();
        let a = Verified::hash_of(b"aaaa");
        let b = Verified::hash_of(b"bbbbbb");
        assert_eq!(s.insert(a), Ok(true));
        assert_eq!(s.insert(a), Ok(false));
        assert_eq!(s.insert(b), Ok(true));
        let c = Verified::hash_of(b"c");
        assert!(matches!(s.insert(c), Err(RamStoreError::Full(_))));
        assert_eq!(
            s.insert(Verified::hash_of(&[0; 11])),
            Err(RamStoreError::TooLarge {
                size: 11,
                capacity: 10
            })
        );
        let mut buf = [0u8; 4];
        assert_eq!(s.read_into(&a.id(), &mut buf), Ok(Some(4)));
        assert_eq!(&buf, b"aaaa");
        assert!(
            matches!(s.read_into(&b.id(), &mut buf), Err(ReadError::BufferTooSmall(e)) if e.required == 6)
        );
        assert!(s.remove(&a.id()));
        assert_eq!(s.get(&b.id()), Some(&b"bbbbbb"[..]));
        assert_eq!(s.used_bytes(), 6);
        assert_eq!(s.insert(c), Ok(true));
        assert_eq!(s.get(&c.id()), Some(&b"c"[..]));
        let mut page = [ChunkHash::default(); 1];
        let first = *s.ids().next().unwrap();
        assert_eq!(s.ids_after(None, &mut page), Ok((1, false)));
        assert_eq!(page[0], first);
        assert_eq!(s.ids_after(Some(&first), &mut page), Ok((1, true)));
        assert_ne!(page[0], first);
        assert_eq!(s.chunk_count(), Ok(2));
    }

    #[test]
    fn a_chunk_that_overlaps_a_stored_one_of_its_origin_is_a_fork() {
        use crate::chunk::test_chunk as chunk;
        let mut s = RamStore::<8, 1024>::new();
        let first = chunk(1, 0, b"first");
        let forged = chunk(1, 0, b"forged");
        let other_origin = chunk(2, 0, b"forged");
        let next = chunk(1, 1, b"next");
        assert_eq!(s.insert(Verified::hash_of(&first)), Ok(true));
        let refused = s.insert(Verified::hash_of(&forged));
        assert_eq!(
            refused,
            Err(RamStoreError::Fork(Fork {
                refused: ChunkHash::of(&forged),
                span: Span::of(&forged).unwrap(),
                existing: ChunkHash::of(&first),
            }))
        );
        assert_eq!(s.insert(Verified::hash_of(&other_origin)), Ok(true));
        assert_eq!(s.insert(Verified::hash_of(&next)), Ok(true));
        assert_eq!(s.insert(Verified::hash_of(&first)), Ok(false));
        assert_eq!(s.chunk_count(), Ok(3));
    }

    #[test]
    fn range_queries_walk_origins_and_chunks_in_key_order() {
        use crate::chunk::test_chunk as chunk;
        use crate::recon::{self, Run, Summarizer};
        let mut s = RamStore::<16, 4096>::new();
        let chunks: std::vec::Vec<_> = [(3, 40), (1, 20), (3, 0), (1, 0), (7, 5), (3, 20)]
            .iter()
            .map(|&(o, seq)| chunk(o, seq, b"x"))
            .collect();
        for c in &chunks {
            assert_eq!(s.insert(Verified::hash_of(c)), Ok(true));
        }
        // Bytes that are not a chunk are never summarised.
        assert_eq!(s.insert(Verified::hash_of(b"not a chunk")), Ok(true));
        let mut origins = [NodeId(0); 2];
        assert_eq!(s.origins_after(None, &mut origins), Ok((2, false)));
        assert_eq!(origins, [NodeId(1), NodeId(3)]);
        assert_eq!(
            s.origins_after(Some(NodeId(3)), &mut origins),
            Ok((1, true))
        );
        assert_eq!(origins[0], NodeId(7));
        assert_eq!(
            s.origins_after(Some(NodeId(7)), &mut origins),
            Ok((0, true))
        );

        let range = KeyRange {
            origin: NodeId(3),
            lo: 0,
            hi: 40,
        };
        let mut page = [(Span::default(), ChunkHash::default()); 4];
        assert_eq!(s.chunks_in(&range, &mut page), Ok(2));
        let mut expected: std::vec::Vec<(Span, ChunkHash)> = chunks
            .iter()
            .map(|c| (Span::of(c).unwrap(), ChunkHash::of(c)))
            .filter(|(span, _)| range.contains(span.origin, span.first_seq))
            .collect();
        expected.sort();
        assert_eq!(&page[..2], &expected[..]);

        let mut runs = [Run { lo: 0, hi: 0 }; 4];
        let got = recon::summarize(&range, &mut runs, |r, out| s.chunks_in(r, out)).unwrap();
        let mut model_runs = [Run { lo: 0, hi: 0 }; 4];
        let mut model = Summarizer::new(range, &mut model_runs);
        for (span, id) in &expected {
            model.push(span.first_seq, span.end_seq, id).unwrap();
        }
        assert_eq!(got, model.finish());
        assert_eq!(got.0.count, 2);
    }
}
