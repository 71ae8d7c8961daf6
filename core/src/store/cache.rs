//! [`ChunkCache`]: chunks in memory under a byte budget, least recently used first out.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use super::{ChunkStore, ReadError, copy_out, fill_page};
use crate::hash::{ChunkHash, Verified};

/// Why a [`ChunkCache`] refused a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheError {
    /// The chunk alone is larger than the whole budget.
    TooLarge {
        /// The chunk's size.
        size: usize,
        /// The cache's budget in bytes.
        budget: usize,
    },
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { size, budget } => {
                write!(
                    f,
                    "chunk of {size} bytes is larger than the cache budget of {budget} bytes"
                )
            }
        }
    }
}

impl core::error::Error for CacheError {}

#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    stamp: u64,
}

/// Chunks in memory, at most `budget` bytes of chunk data; inserting past the budget
/// evicts the least recently used chunks first.
///
/// This is the original document's in-memory cache, with `cache_size_bytes` and
/// `clear_cache`. As a [`ChunkStore`] it may forget chunks: use it in front of a durable
/// store, or with [`ChunkCache::unbounded`] where nothing may be lost.
#[derive(Debug)]
pub struct ChunkCache {
    budget: usize,
    size: usize,
    clock: u64,
    entries: BTreeMap<ChunkHash, Entry>,
    /// Recency stamp → chunk, oldest first.
    recency: BTreeMap<u64, ChunkHash>,
}

impl ChunkCache {
    /// An empty cache holding at most `budget_bytes` of chunk data.
    #[must_use]
    pub const fn new(budget_bytes: usize) -> Self {
        Self {
            budget: budget_bytes,
            size: 0,
            clock: 0,
            entries: BTreeMap::new(),
            recency: BTreeMap::new(),
        }
    }

    /// A cache that never evicts.
    #[must_use]
    pub const fn unbounded() -> Self {
        Self::new(usize::MAX)
    }

    /// Bytes of chunk data held (the original's `cache_size_bytes`).
    #[must_use]
    pub const fn cache_size_bytes(&self) -> usize {
        self.size
    }

    /// The budget in bytes.
    #[must_use]
    pub const fn budget(&self) -> usize {
        self.budget
    }

    /// Changes the budget, evicting least recently used chunks until the data fits.
    pub fn set_budget(&mut self, budget_bytes: usize) {
        self.budget = budget_bytes;
        self.evict_until(0);
    }

    /// Forgets every chunk (the original's `clear_cache`).
    pub fn clear_cache(&mut self) {
        self.entries.clear();
        self.recency.clear();
        self.size = 0;
    }

    /// The chunk's bytes, marking it as recently used.
    pub fn get(&mut self, id: &ChunkHash) -> Option<&[u8]> {
        self.clock += 1;
        let entry = self.entries.get_mut(id)?;
        self.recency.remove(&entry.stamp);
        entry.stamp = self.clock;
        self.recency.insert(self.clock, *id);
        Some(&entry.bytes)
    }

    /// The chunk's bytes, without changing its recency.
    #[must_use]
    pub fn peek(&self, id: &ChunkHash) -> Option<&[u8]> {
        self.entries.get(id).map(|e| e.bytes.as_slice())
    }

    /// Removes a chunk; returns whether it was present.
    pub fn remove(&mut self, id: &ChunkHash) -> bool {
        let Some(entry) = self.entries.remove(id) else {
            return false;
        };
        self.recency.remove(&entry.stamp);
        self.size -= entry.bytes.len();
        true
    }

    /// Number of chunks held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Evicts oldest chunks until `incoming` more bytes fit the budget.
    fn evict_until(&mut self, incoming: usize) {
        while self.size.saturating_add(incoming) > self.budget {
            let Some((_, id)) = self.recency.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&id) {
                self.size -= entry.bytes.len();
            }
        }
    }
}

impl ChunkStore for ChunkCache {
    type Error = CacheError;

    /// Keeps the chunk as the most recently used, evicting others if needed.
    fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, CacheError> {
        if self.get(&chunk.id()).is_some() {
            return Ok(false);
        }
        let len = chunk.bytes().len();
        if len > self.budget {
            return Err(CacheError::TooLarge {
                size: len,
                budget: self.budget,
            });
        }
        self.evict_until(len);
        self.clock += 1;
        self.entries.insert(
            chunk.id(),
            Entry {
                bytes: chunk.bytes().to_vec(),
                stamp: self.clock,
            },
        );
        self.recency.insert(self.clock, chunk.id());
        self.size += len;
        Ok(true)
    }

    fn contains(&self, id: &ChunkHash) -> Result<bool, CacheError> {
        Ok(self.entries.contains_key(id))
    }

    fn chunk_len(&self, id: &ChunkHash) -> Result<Option<usize>, CacheError> {
        Ok(self.entries.get(id).map(|e| e.bytes.len()))
    }

    fn read_into(
        &mut self,
        id: &ChunkHash,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ReadError<CacheError>> {
        match self.get(id) {
            Some(bytes) => copy_out(bytes, buf),
            None => Ok(None),
        }
    }

    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<usize, CacheError> {
        use core::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, |a| Excluded(*a));
        Ok(fill_page(
            out,
            self.entries.range((from, Unbounded)).map(|(id, _)| id),
        ))
    }

    fn chunk_count(&self) -> Result<usize, CacheError> {
        Ok(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let mut c = ChunkCache::new(10);
        let [a, b, d] = [&b"aaaa"[..], b"bbbb", b"dddd"].map(Verified::hash_of);
        c.insert(a).unwrap();
        c.insert(b).unwrap();
        assert_eq!(c.cache_size_bytes(), 8);
        assert!(c.get(&a.id()).is_some()); // `b` is now the oldest
        c.insert(d).unwrap();
        assert_eq!(c.cache_size_bytes(), 8);
        assert!(c.peek(&b.id()).is_none());
        assert!(c.peek(&a.id()).is_some() && c.peek(&d.id()).is_some());
        assert_eq!(
            c.insert(Verified::hash_of(&[0; 11])),
            Err(CacheError::TooLarge {
                size: 11,
                budget: 10
            })
        );
        assert_eq!(c.len(), 2, "a refused chunk evicts nothing");
        c.set_budget(4);
        assert_eq!((c.len(), c.cache_size_bytes()), (1, 4));
        assert!(c.peek(&d.id()).is_some());
        c.clear_cache();
        assert_eq!((c.len(), c.cache_size_bytes()), (0, 0));
    }
}
