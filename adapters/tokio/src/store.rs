//! The store a node shares between its sessions.

use chunk_sync_core::store::{ChunkCache, ChunkStore, ReadError};
use chunk_sync_core::{ChunkHash, Verified};

use crate::error::StoreError;

/// What a node needs of its chunk store. Implemented for the core's [`ChunkCache`]; a
/// persistent store implements it too.
///
/// Calls are short and synchronous; the node serialises them behind a mutex.
pub trait NodeStore: Send + 'static {
    /// Whether the store has the chunk.
    fn contains(&self, id: &ChunkHash) -> Result<bool, StoreError>;
    /// The chunk's bytes, if present.
    fn get(&mut self, id: &ChunkHash) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keeps a verified chunk; returns whether it was new.
    fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, StoreError>;
    /// Up to `limit` stored hashes strictly after `after`, ascending, and whether the store
    /// holds none beyond them.
    fn page_after(
        &self,
        after: Option<&ChunkHash>,
        limit: usize,
    ) -> Result<(Vec<ChunkHash>, bool), StoreError>;
    /// Number of chunks.
    fn len(&self) -> Result<usize, StoreError>;
    /// Whether the store is empty.
    fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().map(|n| n == 0)
    }
    /// Bytes of chunk data held in memory (the original's `cache_size_bytes`).
    fn cache_size_bytes(&self) -> usize {
        0
    }
    /// Drops what is held in memory only (the original's `clear_cache`).
    fn clear_cache(&mut self) {}
}

impl NodeStore for ChunkCache {
    fn contains(&self, id: &ChunkHash) -> Result<bool, StoreError> {
        Ok(ChunkStore::contains(self, id)?)
    }

    fn get(&mut self, id: &ChunkHash) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(len) = self.chunk_len(id)? else {
            return Ok(None);
        };
        let mut buf = vec![0; len];
        match self.read_into(id, &mut buf) {
            Ok(Some(n)) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Ok(None) => Ok(None),
            Err(ReadError::Store(e)) => Err(e.into()),
            Err(e) => Err(e.to_string().into()),
        }
    }

    fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, StoreError> {
        Ok(ChunkStore::insert(self, chunk)?)
    }

    fn page_after(
        &self,
        after: Option<&ChunkHash>,
        limit: usize,
    ) -> Result<(Vec<ChunkHash>, bool), StoreError> {
        let mut out = vec![ChunkHash::default(); limit.saturating_add(1).min(self.len())];
        let n = self.ids_after(after, &mut out)?;
        out.truncate(n);
        let last = n <= limit;
        out.truncate(limit);
        Ok((out, last))
    }

    fn len(&self) -> Result<usize, StoreError> {
        Ok(self.chunk_count()?)
    }

    fn cache_size_bytes(&self) -> usize {
        Self::cache_size_bytes(self)
    }

    fn clear_cache(&mut self) {
        Self::clear_cache(self);
    }
}
