//! The store a [`Runner`](crate::Runner) answers from: [`Store`], the core's
//! [`ChunkStore`] with `async` methods, so that a store may wait on flash or another bus.
//!
//! Every core `ChunkStore` (a `RamStore`, a `&mut RamStore`, …) is a `Store` as it is;
//! the `flash` feature adds [`FlashStore`](crate::FlashStore), and a [`SharedStore`] is one
//! store used by several tasks.

use core::fmt;

use chunk_sync_core::recon::{self, KeyRange, OutOfOrder, Run, Summarizer, Summary, SummaryError};
use chunk_sync_core::store::{ChunkStore, ReadError};
use chunk_sync_core::{ChunkHash, NodeId, Span, Verified};
use embassy_sync::blocking_mutex::raw::RawMutex;

use crate::log::SharedStore;

/// Chunks read per call of [`Store::chunks_in`] by [`Store::summarize`].
const SUMMARY_PAGE: usize = 4;

/// A question a session asks its store: one of the [`Store`]'s operations with its
/// arguments, for [`Store::answer`]. A [`Runner`](crate::Runner) asks every question of
/// its conduit this way, so that its task waits on the store at one place only.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreQuestion<'a> {
    /// [`Store::summarize`] `range`, with its runs into `runs`.
    Summarize {
        /// The range.
        range: KeyRange,
        /// Room for the runs.
        runs: &'a mut [Run],
    },
    /// [`Store::origins_after`] `after`, into `out`.
    Origins {
        /// The cursor.
        after: Option<NodeId>,
        /// Room for the origins.
        out: &'a mut [NodeId],
    },
    /// [`Store::read_into`] `buf` the chunk `id`.
    Read {
        /// The chunk.
        id: ChunkHash,
        /// Where to copy it.
        buf: &'a mut [u8],
    },
    /// Read into `buf` the first chunk the store holds in `range` ([`Store::first_in`]).
    ReadFirst {
        /// The range.
        range: KeyRange,
        /// Where to copy the chunk.
        buf: &'a mut [u8],
    },
    /// [`Store::insert`] the chunk.
    Insert(Verified<'a>),
    /// [`Store::chunks_in`] `range`, into `out` (the peer asks for the hashes of a range).
    List {
        /// The range.
        range: KeyRange,
        /// Room for the chunks.
        out: &'a mut [(Span, ChunkHash)],
    },
}

/// What the store's operation for a [`StoreQuestion`] returned, in the variant of the
/// question.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreAnswer<E> {
    /// From [`Store::summarize`].
    Summary(Result<(Summary, Option<usize>), SummaryError<E>>),
    /// From [`Store::origins_after`].
    Origins(Result<(usize, bool), E>),
    /// From [`Store::read_into`].
    Read(Result<Option<usize>, ReadError<E>>),
    /// The first chunk's span and length, if the range holds one.
    ReadFirst(Result<Option<(Span, usize)>, ReadError<E>>),
    /// From [`Store::insert`].
    Insert(Result<bool, E>),
    /// From [`Store::chunks_in`].
    List(Result<usize, E>),
}

/// A place that keeps chunks by hash, with `async` methods. The contract is
/// [`ChunkStore`]'s: only [`Verified`] bytes go in, and a failed call changes nothing
/// already stored.
// The futures are polled by the runner's own task, which embassy executors never move to
// another thread, so they carry no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// What can go wrong in this store (full, flash, …).
    type Error: fmt::Debug + fmt::Display;

    /// Keeps a verified chunk. Returns `Ok(true)` if it was new and `Ok(false)` if the
    /// store had it already.
    async fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, Self::Error>;

    /// Whether the store has the chunk.
    async fn contains(&mut self, id: &ChunkHash) -> Result<bool, Self::Error>;

    /// Copies the chunk into `buf` and returns its length, or `Ok(None)` if the store does
    /// not have it.
    async fn read_into(
        &mut self,
        id: &ChunkHash,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ReadError<Self::Error>>;

    /// Fills `out` with the stored hashes strictly after `after` (from the first if
    /// `None`), ascending: one manifest page. Returns how many it wrote and whether the
    /// store holds none after them.
    async fn ids_after(
        &mut self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), Self::Error>;

    /// Number of chunks stored.
    async fn chunk_count(&mut self) -> Result<usize, Self::Error>;

    /// Fills `out` with the origins of the stored chunks strictly after `after`,
    /// ascending; returns how many and whether none follow
    /// ([`ChunkStore::origins_after`]).
    async fn origins_after(
        &mut self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), Self::Error>;

    /// Fills `out` with the stored chunks of `range` in ascending `first_seq`; returns how
    /// many ([`ChunkStore::chunks_in`]).
    async fn chunks_in(
        &mut self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, Self::Error>;

    /// What the store holds of `range`, for reconciliation: its [`Summary`], and its runs
    /// written into `runs` if they fit (`None` if not); read through
    /// [`chunks_in`](Self::chunks_in) a few chunks at a time, so that what is held across
    /// the store's waits is the summary in progress (about 200 bytes) and that page.
    ///
    /// # Errors
    /// [`SummaryError::Store`] if the store fails, [`SummaryError::OutOfOrder`] if it
    /// breaks the order `chunks_in` promises.
    async fn summarize(
        &mut self,
        range: &KeyRange,
        runs: &mut [Run],
    ) -> Result<(Summary, Option<usize>), SummaryError<Self::Error>> {
        let mut s = Summarizer::new(*range, runs);
        let mut page = [(Span::default(), ChunkHash::default()); SUMMARY_PAGE];
        let mut rest = Some(*range);
        while let Some(next) = rest {
            let n = self
                .chunks_in(&next, &mut page)
                .await
                .map_err(SummaryError::Store)?;
            let chunks = page.get(..n).ok_or(SummaryError::OutOfOrder)?;
            rest = s
                .push_page(&next, chunks, n == SUMMARY_PAGE)
                .map_err(|OutOfOrder| SummaryError::OutOfOrder)?;
        }
        Ok(s.finish())
    }

    /// The first stored chunk of `range` (lowest `first_seq`), if it holds any: what a
    /// node serves next for a range request.
    async fn first_in(
        &mut self,
        range: &KeyRange,
    ) -> Result<Option<(Span, ChunkHash)>, Self::Error> {
        let mut first = [(Span::default(), ChunkHash::default())];
        let n = self.chunks_in(range, &mut first).await?;
        Ok(first.get(..n).and_then(<[_]>::first).copied())
    }

    /// Answers one question of a session with the operation it names. A store that must
    /// prepare for each operation (a lock, a bus) does so once here, for any of them.
    async fn answer(&mut self, question: StoreQuestion<'_>) -> StoreAnswer<Self::Error> {
        match question {
            StoreQuestion::Summarize { range, runs } => {
                StoreAnswer::Summary(self.summarize(&range, runs).await)
            }
            StoreQuestion::Origins { after, out } => {
                StoreAnswer::Origins(self.origins_after(after, out).await)
            }
            StoreQuestion::Read { id, buf } => StoreAnswer::Read(self.read_into(&id, buf).await),
            StoreQuestion::ReadFirst { range, buf } => {
                let read = match self.first_in(&range).await {
                    Ok(Some((span, id))) => {
                        self.read_into(&id, buf).await.map(|n| n.map(|n| (span, n)))
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(ReadError::Store(e)),
                };
                StoreAnswer::ReadFirst(read)
            }
            StoreQuestion::Insert(chunk) => StoreAnswer::Insert(self.insert(chunk).await),
            StoreQuestion::List { range, out } => {
                StoreAnswer::List(self.chunks_in(&range, out).await)
            }
        }
    }

    /// Whether an [`insert`](Self::insert) error is the store refusing a fork (a chunk
    /// overlapping a different stored chunk of its origin), which fails that chunk only,
    /// rather than a failure of the store.
    fn is_fork(error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

impl<S: ChunkStore> Store for S {
    type Error = S::Error;

    async fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, Self::Error> {
        ChunkStore::insert(self, chunk)
    }

    async fn contains(&mut self, id: &ChunkHash) -> Result<bool, Self::Error> {
        ChunkStore::contains(self, id)
    }

    async fn read_into(
        &mut self,
        id: &ChunkHash,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ReadError<Self::Error>> {
        ChunkStore::read_into(self, id, buf)
    }

    async fn ids_after(
        &mut self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), Self::Error> {
        ChunkStore::ids_after(self, after, out)
    }

    async fn chunk_count(&mut self) -> Result<usize, Self::Error> {
        ChunkStore::chunk_count(self)
    }

    async fn origins_after(
        &mut self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), Self::Error> {
        ChunkStore::origins_after(self, after, out)
    }

    async fn chunks_in(
        &mut self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, Self::Error> {
        ChunkStore::chunks_in(self, range, out)
    }

    async fn summarize(
        &mut self,
        range: &KeyRange,
        runs: &mut [Run],
    ) -> Result<(Summary, Option<usize>), SummaryError<Self::Error>> {
        // The store answers at once: no page needs to be held across a wait.
        recon::summarize(range, runs, |r, out| ChunkStore::chunks_in(self, r, out))
    }

    async fn first_in(
        &mut self,
        range: &KeyRange,
    ) -> Result<Option<(Span, ChunkHash)>, Self::Error> {
        ChunkStore::first_in(self, range)
    }

    async fn answer(&mut self, question: StoreQuestion<'_>) -> StoreAnswer<Self::Error> {
        // The default would do, but every operation here answers at once: without its
        // awaits, the caller's future keeps no state for them.
        match question {
            StoreQuestion::Summarize { range, runs } => {
                StoreAnswer::Summary(recon::summarize(&range, runs, |r, out| {
                    ChunkStore::chunks_in(self, r, out)
                }))
            }
            StoreQuestion::Origins { after, out } => {
                StoreAnswer::Origins(ChunkStore::origins_after(self, after, out))
            }
            StoreQuestion::Read { id, buf } => {
                StoreAnswer::Read(ChunkStore::read_into(self, &id, buf))
            }
            StoreQuestion::ReadFirst { range, buf } => {
                let read = match ChunkStore::first_in(self, &range) {
                    Ok(Some((span, id))) => {
                        ChunkStore::read_into(self, &id, buf).map(|n| n.map(|n| (span, n)))
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(ReadError::Store(e)),
                };
                StoreAnswer::ReadFirst(read)
            }
            StoreQuestion::Insert(chunk) => StoreAnswer::Insert(ChunkStore::insert(self, chunk)),
            StoreQuestion::List { range, out } => {
                StoreAnswer::List(ChunkStore::chunks_in(self, &range, out))
            }
        }
    }

    fn is_fork(error: &Self::Error) -> bool {
        S::is_fork(error)
    }
}

impl<M: RawMutex, S: Store> Store for SharedStore<'_, M, S> {
    type Error = S::Error;

    async fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, Self::Error> {
        self.lock().await.insert(chunk).await
    }

    async fn contains(&mut self, id: &ChunkHash) -> Result<bool, Self::Error> {
        self.lock().await.contains(id).await
    }

    async fn read_into(
        &mut self,
        id: &ChunkHash,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ReadError<Self::Error>> {
        self.lock().await.read_into(id, buf).await
    }

    async fn ids_after(
        &mut self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), Self::Error> {
        self.lock().await.ids_after(after, out).await
    }

    async fn chunk_count(&mut self) -> Result<usize, Self::Error> {
        self.lock().await.chunk_count().await
    }

    async fn origins_after(
        &mut self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), Self::Error> {
        self.lock().await.origins_after(after, out).await
    }

    async fn chunks_in(
        &mut self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, Self::Error> {
        self.lock().await.chunks_in(range, out).await
    }

    async fn summarize(
        &mut self,
        range: &KeyRange,
        runs: &mut [Run],
    ) -> Result<(Summary, Option<usize>), SummaryError<Self::Error>> {
        // One lock for the whole summary: a chunk sealed meanwhile is announced after it.
        self.lock().await.summarize(range, runs).await
    }

    async fn first_in(
        &mut self,
        range: &KeyRange,
    ) -> Result<Option<(Span, ChunkHash)>, Self::Error> {
        self.lock().await.first_in(range).await
    }

    async fn answer(&mut self, question: StoreQuestion<'_>) -> StoreAnswer<Self::Error> {
        // One lock for the whole question.
        self.lock().await.answer(question).await
    }

    fn is_fork(error: &Self::Error) -> bool {
        S::is_fork(error)
    }
}

#[cfg(test)]
mod tests {
    use std::format;
    use std::string::String;

    use chunk_sync_core::store::RamStore;
    use chunk_sync_core::{Chunker, Event, Privacy};
    use embassy_futures::block_on;

    use super::*;

    /// A store that has only the required methods, so that the trait's default `answer`
    /// answers its questions.
    struct Plain(RamStore<8, 4096>);

    impl Store for Plain {
        type Error = <RamStore<8, 4096> as ChunkStore>::Error;

        async fn insert(&mut self, chunk: Verified<'_>) -> Result<bool, Self::Error> {
            ChunkStore::insert(&mut self.0, chunk)
        }
        async fn contains(&mut self, id: &ChunkHash) -> Result<bool, Self::Error> {
            ChunkStore::contains(&self.0, id)
        }
        async fn read_into(
            &mut self,
            id: &ChunkHash,
            buf: &mut [u8],
        ) -> Result<Option<usize>, ReadError<Self::Error>> {
            ChunkStore::read_into(&mut self.0, id, buf)
        }
        async fn ids_after(
            &mut self,
            after: Option<&ChunkHash>,
            out: &mut [ChunkHash],
        ) -> Result<(usize, bool), Self::Error> {
            ChunkStore::ids_after(&self.0, after, out)
        }
        async fn chunk_count(&mut self) -> Result<usize, Self::Error> {
            ChunkStore::chunk_count(&self.0)
        }
        async fn origins_after(
            &mut self,
            after: Option<NodeId>,
            out: &mut [NodeId],
        ) -> Result<(usize, bool), Self::Error> {
            ChunkStore::origins_after(&self.0, after, out)
        }
        async fn chunks_in(
            &mut self,
            range: &KeyRange,
            out: &mut [(Span, ChunkHash)],
        ) -> Result<usize, Self::Error> {
            ChunkStore::chunks_in(&self.0, range, out)
        }
    }

    /// Every question, asked of `store`: the answers and the buffers they filled.
    fn ask_all<S: Store>(store: &mut S, chunk: Verified<'_>) -> String {
        fn ask<S: Store>(store: &mut S, question: StoreQuestion<'_>) -> String {
            format!("{:?}\n", block_on(store.answer(question)))
        }
        let range = KeyRange {
            origin: NodeId(1),
            lo: 0,
            hi: 100,
        };
        let empty = KeyRange { lo: 50, ..range };
        let (id, len) = (chunk.id(), chunk.bytes().len());
        let mut runs = [Run { lo: 0, hi: 0 }; 4];
        let mut out = [NodeId(0); 4];
        let mut buf = [0u8; 512];
        let mut log = ask(store, StoreQuestion::Insert(chunk));
        log += &ask(store, StoreQuestion::Insert(chunk));
        log += &ask(
            store,
            StoreQuestion::Summarize {
                range,
                runs: &mut runs,
            },
        );
        log += &ask(
            store,
            StoreQuestion::Origins {
                after: None,
                out: &mut out,
            },
        );
        log += &ask(
            store,
            StoreQuestion::Read {
                id,
                buf: &mut buf[..4],
            },
        );
        log += &ask(store, StoreQuestion::Read { id, buf: &mut buf });
        log += &ask(
            store,
            StoreQuestion::ReadFirst {
                range: empty,
                buf: &mut buf,
            },
        );
        log += &ask(
            store,
            StoreQuestion::ReadFirst {
                range,
                buf: &mut buf,
            },
        );
        log + &format!("{runs:?} {out:?} {:?}", &buf[..len])
    }

    #[test]
    fn the_default_answer_is_a_chunk_stores() {
        let mut seal = [0u8; 256];
        let mut chunker = Chunker::new(NodeId(1), 10, 0, &mut seal).unwrap();
        for seq in [0, 3] {
            let event = Event {
                origin: NodeId(1),
                seq,
                timestamp: seq,
                kind: "k",
                privacy: Privacy::Public,
                payload: b"body",
            };
            assert_eq!(
                chunker.push(&event),
                Ok(chunk_sync_core::chunk::Push::Added)
            );
        }
        let sealed = chunker.seal().unwrap();
        let by_default = ask_all(&mut Plain(RamStore::new()), sealed.verified());
        let at_once = ask_all(&mut RamStore::<8, 4096>::new(), sealed.verified());
        assert_eq!(by_default, at_once);
        assert!(at_once.contains("Summary(Ok"), "{at_once}");
    }
}
