//! [`FlashStore`]: verified chunks kept in NOR flash, surviving power loss.
//!
//! Chunks are items of a `sequential-storage` map keyed by their hash. That crate writes
//! append-only with a CRC over every item header and body, so a write cut by a power loss
//! leaves either the whole item or one that is skipped when read; its pages are reused in
//! turn (wear levelling). On top of it this store keeps the sorted hashes and each chunk's
//! span in RAM, so that `contains`, manifest pages and the range queries of reconciliation
//! never scan flash, and checks every chunk against its hash when it opens.

use core::fmt;
use core::ops::Range;

use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::store::{Fork, ReadError, copy_out, scan};
use chunk_sync_core::{ChunkHash, NodeId, Span, Verified};
use embedded_storage_async::nor_flash::NorFlash;
use heapless::Vec;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};

use crate::store::Store;

type Map<F> = MapStorage<[u8; 32], F, Cache<Uncached, Uncached, Uncached, [u8; 32]>>;

/// The working buffer handed to `sequential-storage`. Some flash peripherals write from
/// word-aligned RAM only, hence the alignment.
#[repr(C, align(4))]
struct Buffer<const BUF: usize>([u8; BUF]);

/// A chunk store in NOR flash (`embedded-storage-async`), power-fail safe.
///
/// Capacities:
/// - `N`: chunks the store can hold; their hashes and spans live in RAM (`64 × N` bytes),
///   sorted by hash.
/// - `BUF`: bytes of the working buffer, which holds one stored item (the 32-byte key and
///   the chunk, rounded to the flash word); the largest chunk is
///   [`max_chunk_len`](Self::max_chunk_len). A chunk must also fit in one flash page
///   after the page and item headers.
/// - the flash range given to [`open`](Self::open): at least two erase pages; chunk
///   bytes beyond it make [`insert`](Store::insert) fail with
///   [`FlashStoreError::Full`].
///
/// RAM: `64 × N + BUF` bytes and a few words. A chunk overlapping a different stored
/// chunk of its origin is refused ([`FlashStoreError::Fork`]); range queries scan the
/// index in RAM (`O(N)` per chunk returned). Chunks are never overwritten or removed
/// one by one ([`erase`](Self::erase) clears the range).
///
/// What it promises: a chunk for which `insert` returned `Ok` is there after any power
/// loss; an interrupted `insert` leaves the chunk either whole or absent; after a failed
/// `insert` the store works on (or, if the flash itself failed, works again once
/// reopened). Cancelling an `insert` future mid-way has the effect of a power loss.
pub struct FlashStore<F: NorFlash, const N: usize, const BUF: usize> {
    map: Map<F>,
    /// Sorted by hash.
    index: Vec<Indexed, N>,
    buf: Buffer<BUF>,
    discarded: usize,
}

impl<F: NorFlash, const N: usize, const BUF: usize> fmt::Debug for FlashStore<F, N, BUF> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlashStore")
            .field("chunks", &self.index.len())
            .field("capacity", &N)
            .field("max_chunk_len", &Self::max_chunk_len())
            .field("discarded", &self.discarded)
            .finish_non_exhaustive()
    }
}

/// A stored chunk as the RAM index keeps it.
#[derive(Clone, Copy, Debug)]
struct Indexed {
    id: ChunkHash,
    /// `None` for bytes that are not a chunk: kept and served, never summarised.
    span: Option<Span>,
}

/// Why a [`FlashStore`] call failed. Nothing stored before the call is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FlashStoreError<E> {
    /// The flash driver failed.
    Flash(E),
    /// The flash range has no room left for this chunk.
    Full,
    /// The store already holds its `N` chunks (or, on open, the flash holds more).
    IndexFull {
        /// The capacity `N`.
        capacity: usize,
    },
    /// The chunk is larger than the working buffer or a flash page can hold.
    ChunkTooLarge {
        /// The chunk's length.
        len: usize,
        /// [`FlashStore::max_chunk_len`].
        max: usize,
    },
    /// The flash range is not aligned to erase pages or is smaller than two pages.
    BadRange,
    /// The flash holds data the store cannot read back (damage that
    /// `sequential-storage` could not repair), or lost a chunk it had stored.
    Corrupted,
    /// The chunk overlaps a different stored chunk of the same origin.
    Fork(Fork),
}

impl<E: fmt::Debug> fmt::Display for FlashStoreError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flash(e) => write!(f, "flash error: {e:?}"),
            Self::Full => f.write_str("flash store is full"),
            Self::IndexFull { capacity } => {
                write!(f, "flash store holds its capacity of {capacity} chunks")
            }
            Self::ChunkTooLarge { len, max } => {
                write!(f, "chunk of {len} bytes exceeds the flash store's {max}")
            }
            Self::BadRange => f.write_str("flash range must be at least two whole erase pages"),
            Self::Corrupted => f.write_str("flash store is corrupted"),
            Self::Fork(fork) => fmt::Display::fmt(fork, f),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for FlashStoreError<E> {}

impl<E> FlashStoreError<E> {
    fn from_storage(e: sequential_storage::Error<E>, len: usize, max: usize) -> Self {
        use sequential_storage::Error as S;
        match e {
            S::Storage { value, .. } => Self::Flash(value),
            S::FullStorage => Self::Full,
            S::ItemTooBig | S::BufferTooSmall(_) => Self::ChunkTooLarge { len, max },
            _ => Self::Corrupted,
        }
    }
}

type Result<T, F> = core::result::Result<
    T,
    FlashStoreError<<F as embedded_storage_async::nor_flash::ErrorType>::Error>,
>;

impl<F: NorFlash, const N: usize, const BUF: usize> FlashStore<F, N, BUF> {
    /// The largest chunk this store accepts, from `BUF` and the flash word size (a flash
    /// page of the range may cap it further; [`insert`](Store::insert) then reports
    /// [`FlashStoreError::ChunkTooLarge`]).
    #[must_use]
    pub const fn max_chunk_len() -> usize {
        (BUF / F::WRITE_SIZE * F::WRITE_SIZE).saturating_sub(32)
    }

    /// Opens the store kept in `range` of `flash`, empty flash included: reads every
    /// item once, checks each chunk against its hash and indexes the good ones. An item
    /// whose bytes do not match its hash, or whose chunk forks one stored before it, is
    /// left out and counted by [`discarded`](Self::discarded).
    ///
    /// # Errors
    /// [`FlashStoreError::BadRange`], [`FlashStoreError::IndexFull`] when the flash holds
    /// more than `N` chunks, or a flash failure.
    pub async fn open(flash: F, range: Range<u32>) -> Result<Self, F> {
        let config = MapConfig::try_new(range).map_err(|_| FlashStoreError::BadRange)?;
        let mut store = Self {
            map: MapStorage::new(flash, config, Cache::new_uncached()),
            index: Vec::new(),
            buf: Buffer([0; BUF]),
            discarded: 0,
        };
        store.rebuild_index().await?;
        Ok(store)
    }

    async fn rebuild_index(&mut self) -> Result<(), F> {
        let max = Self::max_chunk_len();
        let from = |e| FlashStoreError::from_storage(e, 0, max);
        let buf = &mut self.buf.0;
        // Reading through the map's repairing path first mends what a power cut left
        // half-written (the item walk below does not repair); the probe key is no chunk's.
        self.map
            .fetch_item::<&[u8]>(buf, &[0; 32])
            .await
            .map_err(from)?;
        let mut items = self.map.fetch_all_items(buf).await.map_err(from)?;
        while let Some((key, bytes)) = items.next::<&[u8]>(buf).await.map_err(from)? {
            let id = ChunkHash::from_bytes(key);
            if !id.matches(bytes) {
                self.discarded += 1;
                continue;
            }
            // The same chunk may appear twice if it was stored again after a power loss.
            if let Err(at) = self.index.binary_search_by(|i| i.id.cmp(&id)) {
                let span = Span::of(bytes);
                // A fork left by a build that did not refuse them: the chunk stored first
                // stays, the other is not served.
                let forks = |i: &Indexed| i.span.zip(span).is_some_and(|(a, b)| a.overlaps(&b));
                if self.index.iter().any(forks) {
                    self.discarded += 1;
                    continue;
                }
                self.index
                    .insert(at, Indexed { id, span })
                    .map_err(|_| FlashStoreError::IndexFull { capacity: N })?;
            }
        }
        Ok(())
    }

    /// Items found at [`open`](Self::open) whose bytes did not match their hash; they are
    /// not served, and storing the chunk again supersedes them.
    #[must_use]
    pub const fn discarded(&self) -> usize {
        self.discarded
    }

    /// Number of chunks stored (no flash access).
    #[must_use]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the store holds no chunk.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The stored hashes, ascending (no flash access).
    pub fn ids(&self) -> impl ExactSizeIterator<Item = &ChunkHash> {
        self.index.iter().map(|i| &i.id)
    }

    /// Where `id` is in the index, or where it would go.
    fn position(&self, id: &ChunkHash) -> core::result::Result<usize, usize> {
        self.index.binary_search_by(|i| i.id.cmp(id))
    }

    /// The spans of the stored chunks, with their ids.
    fn spans(&self) -> impl Iterator<Item = (Span, &ChunkHash)> + '_ {
        self.index.iter().filter_map(|i| i.span.map(|s| (s, &i.id)))
    }

    /// Erases the whole flash range: every chunk is gone.
    ///
    /// # Errors
    /// A flash failure; the store is then empty in RAM and should be reopened.
    pub async fn erase(&mut self) -> Result<(), F> {
        self.index.clear();
        self.discarded = 0;
        self.map
            .erase_all()
            .await
            .map_err(|e| FlashStoreError::from_storage(e, 0, Self::max_chunk_len()))
    }

    /// Gives the flash back (for example to reopen it after a simulated power loss).
    pub fn into_flash(self) -> F {
        self.map.destroy().0
    }
}

impl<F: NorFlash, const N: usize, const BUF: usize> Store for FlashStore<F, N, BUF> {
    type Error = FlashStoreError<F::Error>;

    async fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, F> {
        let id = chunk.id();
        let Err(at) = self.position(&id) else {
            return Ok(false);
        };
        let (len, max) = (chunk.bytes().len(), Self::max_chunk_len());
        if len > max {
            return Err(FlashStoreError::ChunkTooLarge { len, max });
        }
        let span = Span::of(chunk.bytes());
        if let Some(span) = span
            && let Some((_, existing)) = self.spans().find(|(s, _)| s.overlaps(&span))
        {
            return Err(FlashStoreError::Fork(Fork {
                refused: id,
                span,
                existing: *existing,
            }));
        }
        if self.index.is_full() {
            return Err(FlashStoreError::IndexFull { capacity: N });
        }
        self.map
            .store_item(&mut self.buf.0, id.as_bytes(), &chunk.bytes())
            .await
            .map_err(|e| FlashStoreError::from_storage(e, len, max))?;
        // Room was checked above.
        let _ = self.index.insert(at, Indexed { id, span });
        Ok(true)
    }

    async fn contains(&mut self, id: &ChunkHash) -> Result<bool, F> {
        Ok(self.position(id).is_ok())
    }

    async fn read_into(
        &mut self,
        id: &ChunkHash,
        out: &mut [u8],
    ) -> core::result::Result<Option<usize>, ReadError<Self::Error>> {
        if self.position(id).is_err() {
            return Ok(None);
        }
        let max = Self::max_chunk_len();
        let found = self
            .map
            .fetch_item::<&[u8]>(&mut self.buf.0, id.as_bytes())
            .await
            .map_err(|e| ReadError::Store(FlashStoreError::from_storage(e, 0, max)))?;
        // Indexed chunks were checked when stored or opened; flash that lost one is damaged.
        let bytes = found.ok_or(ReadError::Store(FlashStoreError::Corrupted))?;
        copy_out(bytes, out)
    }

    async fn ids_after(
        &mut self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), F> {
        let start = after.map_or(0, |a| self.index.partition_point(|i| i.id <= *a));
        let rest = &self.index[start..];
        let n = rest.len().min(out.len());
        for (slot, i) in out.iter_mut().zip(rest) {
            *slot = i.id;
        }
        Ok((n, n == rest.len()))
    }

    async fn chunk_count(&mut self) -> Result<usize, F> {
        Ok(self.index.len())
    }

    async fn origins_after(
        &mut self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), F> {
        Ok(scan::origins_after(out, after, || self.spans()))
    }

    async fn chunks_in(
        &mut self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, F> {
        Ok(scan::chunks_in(out, range, || self.spans()))
    }

    fn is_fork(error: &Self::Error) -> bool {
        matches!(error, FlashStoreError::Fork(_))
    }
}

/// A borrowed flash store is a store, so that one store can serve session after session.
impl<F: NorFlash, const N: usize, const BUF: usize> Store for &mut FlashStore<F, N, BUF> {
    type Error = FlashStoreError<F::Error>;

    async fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, F> {
        (**self).insert(chunk).await
    }

    async fn contains(&mut self, id: &ChunkHash) -> Result<bool, F> {
        (**self).contains(id).await
    }

    async fn read_into(
        &mut self,
        id: &ChunkHash,
        out: &mut [u8],
    ) -> core::result::Result<Option<usize>, ReadError<Self::Error>> {
        (**self).read_into(id, out).await
    }

    async fn ids_after(
        &mut self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), F> {
        (**self).ids_after(after, out).await
    }

    async fn chunk_count(&mut self) -> Result<usize, F> {
        (**self).chunk_count().await
    }

    async fn origins_after(
        &mut self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), F> {
        (**self).origins_after(after, out).await
    }

    async fn chunks_in(
        &mut self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, F> {
        (**self).chunks_in(range, out).await
    }

    fn is_fork(error: &Self::Error) -> bool {
        matches!(error, FlashStoreError::Fork(_))
    }
}

#[cfg(test)]
mod tests;
