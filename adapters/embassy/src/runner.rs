//! The runner: moves bytes between the transport and the core session, answers the
//! session's events from the store and sleeps until its next deadline. It makes no protocol
//! decision of its own.

use core::cmp::min;

use chunk_sync_core::session::{Config, ConfigError, Error as SessionError, Event, Session, Stats};
use chunk_sync_core::store::ReadError;
use chunk_sync_core::{ChunkHash, Instant};
use embassy_futures::select::{Either, select};
use embassy_time::Timer;
use embedded_io_async::{Read, Write};

use crate::error::Error;
use crate::handle::{Handle, Progress, Shared};
use crate::resources::Resources;
use crate::store::Store;
use crate::time;

/// What a finished session did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Chunks found missing on this side.
    pub total_chunks: u64,
    /// Chunks received, verified and stored.
    pub synced_chunks: u64,
    /// Failed transfers (hash mismatch, not found).
    pub failed_chunks: u64,
    /// Bytes of chunk data received.
    pub bytes_transferred: u64,
    /// Bytes and frames each way.
    pub stats: Stats,
    /// How long the session took.
    pub elapsed: embassy_time::Duration,
}

/// Drives one sync session with one peer. `PAGE` and `REQ` are the session's manifest page
/// and request-window capacities.
///
/// Cancel safety: dropping [`run`](Self::run) mid-way drops the session; every chunk
/// already stored was verified, and a new session fetches only what is still missing.
#[derive(Debug)]
pub struct Runner<'r, IO, S, const PAGE: usize, const REQ: usize> {
    io: IO,
    store: S,
    session: Session<PAGE, REQ>,
    rx: &'r mut [u8],
    filled: usize,
    tx: &'r mut [u8],
    incoming: &'r mut [u8],
    outgoing: &'r mut [u8],
    page: &'r mut [ChunkHash],
    shared: &'r Shared,
}

type RunError<IO, S> = Error<<IO as embedded_io_async::ErrorType>::Error, <S as Store>::Error>;

impl<'r, IO: Read + Write, S: Store, const PAGE: usize, const REQ: usize>
    Runner<'r, IO, S, PAGE, REQ>
{
    /// A runner for a session configured by `config`, working in `resources`, and a handle
    /// to it.
    ///
    /// The largest chunk accepted is capped at `CHUNK`; the receive buffer must hold one
    /// frame of `config.max_frame` bytes and the transmit buffer
    /// `Session::max_transmit_len()` bytes.
    pub fn new<const RX: usize, const TX: usize, const CHUNK: usize, const P: usize>(
        io: IO,
        store: S,
        mut config: Config,
        resources: &'r mut Resources<RX, TX, CHUNK, P>,
    ) -> Result<(Handle<'r>, Self), ConfigError> {
        if RX < config.max_frame as usize {
            return Err(ConfigError::FrameSize(config.max_frame));
        }
        if TX < Session::<PAGE, REQ>::max_transmit_len() || P == 0 || CHUNK == 0 {
            return Err(ConfigError::Zero(
                "resources smaller than the session needs",
            ));
        }
        config.max_chunk_len = min(
            config.max_chunk_len,
            u32::try_from(CHUNK).unwrap_or(u32::MAX),
        );
        let session = Session::new(config, time::now())?;
        let Resources {
            rx,
            tx,
            incoming,
            outgoing,
            page,
            shared,
        } = resources;
        shared.reset();
        let shared: &'r Shared = shared;
        let runner = Self {
            io,
            store,
            session,
            rx,
            filled: 0,
            tx,
            incoming,
            outgoing,
            page,
            shared,
        };
        Ok((Handle::new(shared), runner))
    }

    /// The store, for reading what the session stored.
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the transport and the store back.
    pub fn into_parts(self) -> (IO, S) {
        (self.io, self.store)
    }

    /// Runs the session until it completes or fails.
    pub async fn run(&mut self) -> Result<Report, RunError<IO, S>> {
        let started = embassy_time::Instant::now();
        let result = self.exchange(started).await;
        if let Err(Error::Store(_)) = &result {
            // The session was aborted: its Error frame tells the peer, if the peer takes
            // it within the idle timeout.
            let _ = self.transmit(time::now()).await;
        }
        result
    }

    async fn exchange(
        &mut self,
        started: embassy_time::Instant,
    ) -> Result<Report, RunError<IO, S>> {
        loop {
            let now = time::now();
            if self.shared.stop_requested() {
                self.session.abort();
            }
            self.feed_input(now).await?;
            let mut answered = self.answer_events().await?;
            // The store may have waited on flash: take the time again.
            self.transmit(time::now()).await?;
            answered |= self.answer_events().await?;
            if answered {
                continue;
            }
            self.publish();
            if self.session.is_closed() {
                return match self.session.error() {
                    Some(e) => Err(Error::Protocol(e)),
                    None => Ok(self.report(started)),
                };
            }
            if self.filled == self.rx.len() {
                // Cannot happen: `rx` holds a whole frame and frames are decoded as they
                // complete. Stop rather than spin.
                self.session.abort();
                continue;
            }
            let read = self.io.read(&mut self.rx[self.filled..]);
            let result = match self.session.poll_timeout() {
                Some(deadline) => match select(read, Timer::at(time::to_embassy(deadline))).await {
                    Either::First(r) => Some(r),
                    Either::Second(()) => None,
                },
                None => Some(read.await),
            };
            match result {
                Some(Ok(0)) => return Err(Error::Closed),
                Some(Ok(n)) => self.filled += n,
                Some(Err(e)) => return Err(Error::Transport(e)),
                None => self.session.handle_timeout(time::now()),
            }
        }
    }

    /// Aborts the session on a store failure (its Error frame is still sent).
    fn store_failed(&mut self, e: S::Error) -> RunError<IO, S> {
        self.session.abort();
        Error::Store(e)
    }

    /// Until when a write may wait for the peer: the session's idle timeout from now
    /// (sending a frame was the session's last progress).
    fn write_deadline(&self) -> embassy_time::Instant {
        embassy_time::Instant::now() + time::to_embassy_duration(self.session.config().idle_timeout)
    }

    fn publish(&self) {
        let p = self.session.progress();
        self.shared.publish(Progress {
            total_chunks: p.total_chunks,
            synced_chunks: p.synced_chunks,
            failed_chunks: p.failed_chunks,
            bytes_transferred: p.bytes_transferred,
            finished: self.session.is_closed(),
        });
    }

    fn report(&self, started: embassy_time::Instant) -> Report {
        let p = self.session.progress();
        Report {
            total_chunks: p.total_chunks,
            synced_chunks: p.synced_chunks,
            failed_chunks: p.failed_chunks,
            bytes_transferred: p.bytes_transferred,
            stats: *self.session.stats(),
            elapsed: started.elapsed(),
        }
    }

    /// Feeds every whole frame received to the session, reassembling and storing chunks.
    async fn feed_input(&mut self, now: Instant) -> Result<(), RunError<IO, S>> {
        let mut start = 0;
        while start < self.filled {
            let Ok(handled) = self.session.handle_input(now, &self.rx[start..self.filled]) else {
                // The session failed; its error frame is sent next and `run` returns it.
                self.filled = 0;
                return Ok(());
            };
            if handled.consumed == 0 {
                break;
            }
            let mut complete = None;
            if let Some(piece) = handled.piece {
                let at = piece.offset as usize;
                // The session checked the piece against `max_chunk_len <= CHUNK`.
                if let Some(dst) = self.incoming.get_mut(at..at + piece.data.len()) {
                    dst.copy_from_slice(piece.data);
                }
                if piece.last {
                    complete = Some(piece.total_len as usize);
                }
            }
            start += handled.consumed;
            if let Some(len) = complete
                && let Ok(verified) = self.session.finish_chunk(&self.incoming[..len])
                && let Err(e) = self.store.insert(verified).await
            {
                return Err(self.store_failed(e));
            }
        }
        self.rx.copy_within(start..self.filled, 0);
        self.filled -= start;
        Ok(())
    }

    /// Answers the session's events from the store; returns whether there were any.
    async fn answer_events(&mut self) -> Result<bool, RunError<IO, S>> {
        let mut any = false;
        while let Some(event) = self.session.poll_event() {
            any = true;
            match event {
                Event::LookupNeeded => {
                    // One answer per hash of the page, asked of the store before the
                    // session is told (the store may wait on flash).
                    let mut have = [false; PAGE];
                    for (slot, id) in have.iter_mut().zip(self.session.lookups()) {
                        match self.store.contains(id).await {
                            Ok(found) => *slot = found,
                            Err(e) => {
                                return Err(self.store_failed(e));
                            }
                        }
                    }
                    let mut answers = have.iter();
                    let _ = self
                        .session
                        .resolve_lookups(|_| answers.next().copied().unwrap_or(true));
                }
                Event::ManifestPageNeeded { after, limit } => {
                    let limit = min(limit, self.page.len());
                    let n = match self
                        .store
                        .ids_after(after.as_ref(), &mut self.page[..limit])
                        .await
                    {
                        Ok(n) => n,
                        Err(e) => {
                            return Err(self.store_failed(e));
                        }
                    };
                    // A full page may have more after it; the next request finds out.
                    let _ = self.session.send_manifest_page(&self.page[..n], n < limit);
                }
                Event::ChunkRequested { hash } => {
                    match self.store.read_into(&hash, self.outgoing).await {
                        Ok(Some(len)) => {
                            let _ = self.session.serve_chunk(&hash, len);
                        }
                        // A chunk larger than this node's chunk buffer cannot be served.
                        Ok(None) | Err(ReadError::BufferTooSmall(_)) => {
                            let _ = self.session.chunk_not_found(&hash);
                        }
                        Err(ReadError::Store(e)) => {
                            return Err(self.store_failed(e));
                        }
                        Err(_) => {
                            let _ = self.session.chunk_not_found(&hash);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(any)
    }

    /// Writes every frame that is due.
    async fn transmit(&mut self, now: Instant) -> Result<(), RunError<IO, S>> {
        let mut wrote = false;
        loop {
            let t = match self.session.poll_transmit(now, self.tx) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(_) => {
                    // `tx` was checked against `max_transmit_len` in `new`.
                    self.session.abort();
                    return Err(Error::Protocol(SessionError::Aborted));
                }
            };
            // A peer that stops taking bytes must not hold the runner past the session's
            // idle timeout.
            let deadline = self.write_deadline();
            let header = Self::within(deadline, self.io.write_all(&self.tx[..t.len])).await;
            self.written(header)?;
            if let Some(piece) = t.piece {
                let range = piece.offset as usize..(piece.offset + piece.len) as usize;
                let data = self.outgoing.get(range).unwrap_or(&[]);
                let data = Self::within(deadline, self.io.write_all(data)).await;
                self.written(data)?;
            }
            wrote = true;
        }
        if wrote {
            let deadline = self.write_deadline();
            let flushed = Self::within(deadline, self.io.flush()).await;
            self.written(flushed)?;
        }
        Ok(())
    }

    /// Runs a write until `deadline`; `None` if the deadline came first.
    async fn within<T>(
        deadline: embassy_time::Instant,
        write: impl Future<Output = T>,
    ) -> Option<T> {
        match select(write, Timer::at(deadline)).await {
            Either::First(done) => Some(done),
            Either::Second(()) => None,
        }
    }

    /// The outcome of a write: a transport error, or a peer that took nothing for the
    /// idle timeout, which fails the session.
    fn written(&mut self, outcome: Option<Result<(), IO::Error>>) -> Result<(), RunError<IO, S>> {
        match outcome {
            Some(result) => result.map_err(Error::Transport),
            None => {
                self.session.handle_timeout(time::now());
                Err(Error::Protocol(
                    self.session.error().unwrap_or(SessionError::TimedOut),
                ))
            }
        }
    }
}
