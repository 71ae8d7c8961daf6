//! The device's own event log: events the application appends, with the privacy filter,
//! sealed into chunks by a [`SealPolicy`] and kept in a store shared with the runners
//! ([`SharedStore`]); each runner of a live session announces to its peer what the log
//! seals while it runs ([`Runner::follow`](crate::Runner::follow)).
//!
//! The log outlives sessions: a device appends while a link is down, and the next session
//! reconciles what was sealed meanwhile. Sealing does not wait for a session either:
//! [`Log::append`] seals when a chunk is full, and [`Log::seal_when_due`], awaited in a
//! task of its own, seals the open chunk when the policy's delay is up.

use chunk_sync_core::chunk::{Push, SealPolicy};
use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::{ChunkError, ChunkEvent, Chunker, NodeId};
use core::fmt;
use embassy_futures::select::select;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::mutex::Mutex;
use embassy_sync::signal::Signal;
use embassy_sync::watch::{DynReceiver, Watch};
use embassy_time::Timer;

use crate::store::Store;
use crate::time;

/// A [`Store`] behind an `embassy_sync` [`Mutex`], so that a [`Log`] and one or more
/// [`Runner`](crate::Runner)s use one store: each call locks it for its own duration.
#[derive(Debug)]
pub struct SharedStore<'a, M: RawMutex, S>(&'a Mutex<M, S>);

impl<'a, M: RawMutex, S> SharedStore<'a, M, S> {
    /// The store behind `mutex`.
    #[must_use]
    pub const fn new(mutex: &'a Mutex<M, S>) -> Self {
        Self(mutex)
    }

    /// Locks the store for the caller's own use (reading what it holds, for example).
    pub async fn lock(&self) -> embassy_sync::mutex::MutexGuard<'a, M, S> {
        self.0.lock().await
    }
}

impl<M: RawMutex, S> Clone for SharedStore<'_, M, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M: RawMutex, S> Copy for SharedStore<'_, M, S> {}

/// What [`Log::append`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The event is in the open chunk.
    Kept,
    /// The event is private: its sequence number is covered, its content left out.
    Private,
}

/// Why an append or a seal did not keep events.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogError<E> {
    /// The event was refused and nothing changed: of another origin, below a sequence
    /// number already taken, or too large for a chunk
    /// ([`Chunker::push`](chunk_sync_core::Chunker::push)).
    Event(ChunkError),
    /// A sealed chunk could not be stored (the store is full or failed): the events of
    /// `first_seq..end_seq` are not kept. The log goes on after them.
    Store {
        /// The store's error.
        error: E,
        /// First sequence number of the lost chunk.
        first_seq: u64,
        /// One past its last sequence number.
        end_seq: u64,
    },
}

impl<E: fmt::Display> fmt::Display for LogError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Event(e) => write!(f, "event refused: {e}"),
            Self::Store {
                error,
                first_seq,
                end_seq,
            } => write!(
                f,
                "events {first_seq}..{end_seq} sealed but not stored: {error}"
            ),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for LogError<E> {}

/// The application's own log of `origin`'s events, sealed into chunks of at most `CHUNK`
/// bytes (the buffer the log owns) and stored in a [`SharedStore`]; `PEERS` runners may
/// follow it at once ([`Log::follow`]).
///
/// Memory: `CHUNK` bytes and a few dozen more; it can live in a `static`.
pub struct Log<'s, M: RawMutex, S, const CHUNK: usize, const PEERS: usize = 2> {
    store: SharedStore<'s, M, S>,
    origin: NodeId,
    chunker: Mutex<M, Chunker<[u8; CHUNK]>>,
    /// Where the sealed part of the log ends: the `end_seq` of the last chunk sealed.
    sealed: Watch<M, u64, PEERS>,
    /// Wakes [`Log::seal_when_due`] when the open chunk's deadline may have moved.
    appended: Signal<M, ()>,
}

impl<M: RawMutex, S, const CHUNK: usize, const PEERS: usize> fmt::Debug
    for Log<'_, M, S, CHUNK, PEERS>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("origin", &self.origin)
            .field("sealed_through", &self.sealed.try_get())
            .finish_non_exhaustive()
    }
}

impl<'s, M: RawMutex, S: Store, const CHUNK: usize, const PEERS: usize>
    Log<'s, M, S, CHUNK, PEERS>
{
    /// The log of `origin`, whose sealed part ends at `start_seq` (`0` for a new log; after
    /// a reset, the `end_seq` of the last chunk of `origin` in the store), sealing ranges of
    /// `events_per_chunk` sequence numbers, and earlier by `policy`, into `store`.
    ///
    /// # Errors
    /// As [`Chunker::new`](chunk_sync_core::Chunker::new): no events per chunk, or a
    /// `CHUNK` too small for a chunk header and one byte.
    pub fn new(
        store: SharedStore<'s, M, S>,
        origin: NodeId,
        events_per_chunk: u32,
        start_seq: u64,
        policy: SealPolicy,
    ) -> Result<Self, ChunkError> {
        let chunker =
            Chunker::new(origin, events_per_chunk, start_seq, [0; CHUNK])?.with_policy(policy);
        Ok(Self {
            store,
            origin,
            chunker: Mutex::new(chunker),
            sealed: Watch::new_with(start_seq),
            appended: Signal::new(),
        })
    }

    /// The same log, signing every chunk it seals with `keys`, the origin's key pair (a
    /// secure peer takes only chunks their origin signed; feature `secure`).
    ///
    /// # Errors
    /// [`ChunkError::NotOriginKey`] if the log's origin is not the node id of `keys`.
    #[cfg(feature = "secure")]
    pub fn signed_by(mut self, keys: &crate::secure::Keypair) -> Result<Self, ChunkError> {
        self.chunker.get_mut().sign_with(keys)?;
        Ok(self)
    }

    /// The log's origin.
    #[must_use]
    pub const fn origin(&self) -> NodeId {
        self.origin
    }

    /// The store the log seals into.
    #[must_use]
    pub const fn store(&self) -> SharedStore<'s, M, S> {
        self.store
    }

    /// Appends one event. A private event only takes its sequence number; a chunk that is
    /// full, or whose range the event passes, is sealed and stored first.
    ///
    /// # Errors
    /// [`LogError::Event`] if the event is refused (nothing changed);
    /// [`LogError::Store`] if a chunk sealed could not be stored: its events are lost, and
    /// the error says which. If the chunk was sealed to make room for this event, the event
    /// was not taken and may be appended again (its sequence number is `end_seq` or
    /// above); if the event completed the chunk, it is among those lost.
    pub async fn append<E: ChunkEvent + ?Sized>(
        &self,
        event: &E,
    ) -> Result<Appended, LogError<S::Error>> {
        let mut chunker = self.chunker.lock().await;
        let now = time::now();
        let mut pushed = chunker.push_at(event, now).map_err(LogError::Event)?;
        if pushed == Push::SealFirst {
            self.seal_into_store(&mut chunker).await?;
            pushed = chunker.push_at(event, now).map_err(LogError::Event)?;
        }
        let appended = match pushed {
            Push::Added => Appended::Kept,
            Push::Filtered => Appended::Private,
            // An empty chunk takes any event that fits a chunk at all.
            Push::SealFirst => return Err(LogError::Event(ChunkError::SeqExhausted)),
        };
        if chunker.seal_due(now) {
            self.seal_into_store(&mut chunker).await?;
        }
        drop(chunker);
        self.appended.signal(());
        Ok(appended)
    }

    /// Seals the open chunk now, if it holds an event; returns whether it did.
    ///
    /// # Errors
    /// [`LogError::Store`] if the store refused the chunk.
    pub async fn flush(&self) -> Result<bool, LogError<S::Error>> {
        let mut chunker = self.chunker.lock().await;
        self.seal_into_store(&mut chunker).await
    }

    /// Seals the open chunk whenever the policy makes it due (its first event is
    /// `max_delay` old); runs until the store refuses a chunk, and returns that error.
    /// Await it in a task of its own: without it, a chunk is sealed only when full or
    /// [`flush`](Self::flush)ed.
    pub async fn seal_when_due(&self) -> LogError<S::Error> {
        loop {
            let deadline = self.chunker.lock().await.seal_deadline();
            match deadline {
                Some(at) => {
                    let _ = select(Timer::at(time::to_embassy(at)), self.appended.wait()).await;
                }
                None => self.appended.wait().await,
            }
            let mut chunker = self.chunker.lock().await;
            if chunker.seal_due(time::now())
                && let Err(e) = self.seal_into_store(&mut chunker).await
            {
                return e;
            }
        }
    }

    /// A follower of what the log seals, for one live [`Runner`](crate::Runner)
    /// ([`Runner::follow`](crate::Runner::follow)); `None` while `PEERS` followers exist
    /// (a follower is released when dropped).
    #[must_use]
    pub fn follow(&self) -> Option<Follower<'_>> {
        let mut sealed = self.sealed.dyn_receiver()?;
        let from = sealed.try_get().unwrap_or(0);
        Some(Follower {
            origin: self.origin,
            sealed,
            from,
        })
    }

    async fn seal_into_store(
        &self,
        chunker: &mut Chunker<[u8; CHUNK]>,
    ) -> Result<bool, LogError<S::Error>> {
        let Some(sealed) = chunker.seal() else {
            return Ok(false);
        };
        let (first_seq, end_seq) = (sealed.first_seq, sealed.end_seq);
        let stored = self.store.lock().await.insert(sealed.verified()).await;
        // The chunker has moved past the chunk either way: announce what follows from
        // here, and say what was lost.
        self.sealed.sender().send(end_seq);
        stored.map(|_| true).map_err(|error| LogError::Store {
            error,
            first_seq,
            end_seq,
        })
    }
}

/// What a [`Log`] seals, as ranges to announce: held by one [`Runner`](crate::Runner).
pub struct Follower<'a> {
    origin: NodeId,
    sealed: DynReceiver<'a, u64>,
    /// Where the next range to announce starts.
    from: u64,
}

impl fmt::Debug for Follower<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follower")
            .field("origin", &self.origin)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Follower<'_> {
    /// The range sealed since the last call, once there is one.
    pub(crate) async fn next(&mut self) -> KeyRange {
        loop {
            let end = self.sealed.changed().await;
            if let Some(range) = self.take(end) {
                return range;
            }
        }
    }

    /// The range sealed since the last call, if any, without waiting.
    pub fn try_next(&mut self) -> Option<KeyRange> {
        let end = self.sealed.try_changed()?;
        self.take(end)
    }

    fn take(&mut self, end: u64) -> Option<KeyRange> {
        let lo = self.from;
        self.from = end.max(lo);
        (end > lo).then_some(KeyRange {
            origin: self.origin,
            lo,
            hi: end,
        })
    }
}
