//! The runner: carries out the core [`Conduit`]'s actions over an `embedded-io-async`
//! transport and a [`Store`], with `embassy_time` as the clock. Every protocol decision is
//! the conduit's; the loop is [`Runner::run`].

use chunk_sync_core::ChunkHash;
use chunk_sync_core::conduit::{Action, Buffers, Conduit, Limits};
use chunk_sync_core::recon::SummaryError;
use chunk_sync_core::session::{self, Config, ConfigError, Stats, Stored};
use chunk_sync_core::store::ReadError;
use embassy_futures::select::{Either, Either4, select, select4};
use embassy_time::Timer;
use embedded_io_async::{Read, Write};

use crate::error::Error;
use crate::handle::{Handle, Progress, Shared};
use crate::log::Follower;
use crate::resources::Resources;
use crate::store::{Store, StoreAnswer, StoreQuestion};
use crate::time;

/// What a finished session did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Chunks found missing on this side.
    pub total_chunks: u64,
    /// Chunks received, verified and stored.
    pub synced_chunks: u64,
    /// Failed transfers (hash mismatch, not found, invalid, refused as a fork).
    pub failed_chunks: u64,
    /// Bytes of chunk data received.
    pub bytes_transferred: u64,
    /// Bytes and frames each way.
    pub stats: Stats,
    /// How long the session took.
    pub elapsed: embassy_time::Duration,
}

/// Drives one sync session with one peer. `RANGES` and `REQ` are the session's capacities
/// of ranges (per query and answer) and of requests in flight.
///
/// Cancel safety: dropping [`run`](Self::run) mid-way drops the session; every chunk
/// already stored was verified, and a new session fetches only what is still missing.
///
/// ```no_run
/// use chunk_sync_embassy::core::session::Config;
/// use chunk_sync_embassy::core::store::RamStore;
/// use chunk_sync_embassy::core::NodeId;
/// use chunk_sync_embassy::{Resources, Runner};
/// use embedded_io_async::{Read, Write};
///
/// /// One sync over `link` (a UART, an embassy-net `TcpSocket`, …); in firmware the
/// /// resources and the store usually live in `static`s.
/// async fn sync_over(link: impl Read + Write, store: &mut RamStore<32, 16384>) {
///     let mut resources = Resources::<1024, 1024, 2048>::new();
///     let config = Config { max_frame: 1024, ..Config::new(NodeId(7)) };
///     let (handle, mut runner) =
///         match Runner::<_, _, 8, 4>::new(link, store, config, &mut resources) {
///             Ok(parts) => parts,
///             // Says which buffer is too small and what it needs.
///             Err(e) => return defmt_or_log(e),
///         };
///     // Another task may watch `handle.progress()` or call `handle.stop()`.
///     match runner.run().await {
///         Ok(report) => assert_eq!(report.synced_chunks, handle.progress().synced_chunks),
///         Err(e) => defmt_or_log(e),
///     }
/// }
/// # fn defmt_or_log(_: impl core::fmt::Display) {}
/// ```
#[derive(Debug)]
pub struct Runner<'r, IO, S, const RANGES: usize, const REQ: usize> {
    io: IO,
    store: S,
    conduit: Conduit<'r, &'r mut [u8], RANGES, REQ>,
    /// The chunk being served: the conduit names byte ranges of it.
    outgoing: &'r mut [u8],
    shared: &'r Shared,
    /// The node's own log, announced in a live session.
    own: Option<Follower<'r>>,
    /// Whom a secure session lets in.
    #[cfg(feature = "secure")]
    peers: crate::secure::Peers<'r>,
    /// The conduit seals pieces of the chunk being served with their frames (a secure
    /// link): it is given the chunk on every poll.
    seals_pieces: bool,
}

/// The conduit's buffers, the buffer of the chunk being served and the handle's state, out
/// of `resources` (the handle's state reset).
fn split<const RX: usize, const TX: usize, const CHUNK: usize>(
    resources: &mut Resources<RX, TX, CHUNK>,
) -> (Buffers<&mut [u8]>, &mut [u8], &Shared) {
    let Resources {
        rx,
        tx,
        incoming,
        outgoing,
        shared,
    } = resources;
    let buffers = Buffers {
        receive: &mut rx[..],
        transmit: &mut tx[..],
        reassembly: &mut incoming[..],
    };
    shared.reset();
    (buffers, &mut outgoing[..], shared)
}

type RunError<IO, S> = Error<<IO as embedded_io_async::ErrorType>::Error, <S as Store>::Error>;

impl<'r, IO: Read + Write, S: Store, const RANGES: usize, const REQ: usize>
    Runner<'r, IO, S, RANGES, REQ>
{
    /// A runner for a session configured by `config`, working in `resources`, and a handle
    /// to it.
    ///
    /// The largest chunk accepted is capped at `CHUNK`.
    ///
    /// # Errors
    /// [`ConfigError::BufferTooSmall`] if the receive buffer cannot hold one frame of
    /// `config.max_frame` bytes or the transmit buffer `Session::max_transmit_len()`
    /// bytes, with what it needs; the session's own configuration errors.
    pub fn new<const RX: usize, const TX: usize, const CHUNK: usize>(
        io: IO,
        store: S,
        config: Config,
        resources: &'r mut Resources<RX, TX, CHUNK>,
    ) -> Result<(Handle<'r>, Self), ConfigError> {
        let (buffers, outgoing, shared) = split(resources);
        // The conduit is built inside the runner's expression: each value a device's
        // runner (a few KiB) passes through on its way costs that much stack.
        let runner = Self {
            conduit: Conduit::new(config, time::now(), buffers, Limits::new())?,
            io,
            store,
            outgoing,
            shared,
            own: None,
            #[cfg(feature = "secure")]
            peers: crate::secure::Peers::only(&[]),
            seals_pieces: false,
        };
        Ok((Handle::new(shared), runner))
    }

    /// A runner for a session over a secure link: `handshake` (of the device's keys,
    /// with fresh entropy, [`Role::Initiator`](crate::secure::Role::Initiator) on the
    /// side that connected) runs first, then every frame travels sealed. A peer whose
    /// key `peers` does not let in is refused before it learns anything of the store.
    ///
    /// Records add [`RECORD_OVERHEAD`](chunk_sync_core::secure::RECORD_OVERHEAD) bytes
    /// to each frame, counted in `config.max_frame`; the transmit buffer holds a whole
    /// record, so `TX` must be at least `config.max_frame` (the frames sent are no
    /// larger than it).
    ///
    /// # Errors
    /// As [`new`](Self::new), and
    /// [`ConfigError::SecureLink`] if `config.node_id` is not the id of the handshake's
    /// key or `config.max_frame` is past a record.
    #[cfg(feature = "secure")]
    pub fn new_secure<const RX: usize, const TX: usize, const CHUNK: usize>(
        io: IO,
        store: S,
        config: Config,
        resources: &'r mut Resources<RX, TX, CHUNK>,
        handshake: crate::secure::Handshake,
        peers: crate::secure::Peers<'r>,
    ) -> Result<(Handle<'r>, Self), ConfigError> {
        let (buffers, outgoing, shared) = split(resources);
        let now = time::now();
        let runner = Self {
            conduit: Conduit::new_secure(config, now, buffers, Limits::new(), handshake)?,
            io,
            store,
            outgoing,
            shared,
            own: None,
            peers,
            seals_pieces: true,
        };
        Ok((Handle::new(shared), runner))
    }

    /// Fetches exactly these chunks, in a session that does not reconcile (`pull: false`)
    /// or after its reconciliation.
    pub fn fetch(&mut self, ids: &'r [ChunkHash]) {
        self.conduit.fetch(ids);
    }

    /// In a live session ([`Config::live`]), announces to the peer every chunk `log` seals
    /// while the session runs ([`Log::follow`](crate::Log::follow)). What was sealed before
    /// the session the first reconciliation finds.
    pub fn follow(&mut self, log: Follower<'r>) {
        self.own = Some(log);
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
        let mut store_error = None;
        // The deadline of the last frame written and not yet flushed.
        let mut unflushed = None;
        loop {
            if self.shared.stop_requested() {
                self.conduit.abort();
            } else if self.shared.close_requested() {
                self.conduit.close();
            }
            if let Some(range) = self.own.as_mut().and_then(Follower::try_next) {
                self.conduit.announce(range);
            }
            // Over a secure link the conduit seals each piece with its frame in the
            // transmit buffer, from the chunk being served.
            let serving: &[u8] = if self.seals_pieces {
                self.outgoing
            } else {
                &[]
            };
            let wait = match self.conduit.poll_serving(time::now(), None, serving) {
                Action::Send {
                    frame,
                    piece,
                    deadline,
                } => {
                    let data = piece.map_or(&[][..], |p| {
                        let at = p.offset as usize;
                        self.outgoing.get(at..at + p.len as usize).unwrap_or(&[])
                    });
                    let len = frame.len() + data.len();
                    let io = &mut self.io;
                    let write = async {
                        io.write_all(frame).await?;
                        io.write_all(data).await
                    };
                    match select(write, Timer::at(time::to_embassy(deadline))).await {
                        Either::First(Ok(())) => {
                            self.conduit.written(time::now(), len);
                            unflushed = Some(deadline);
                        }
                        Either::First(Err(e)) => return Err(Self::failed(e, store_error)),
                        // The peer took nothing for the idle timeout: the conduit ends it.
                        Either::Second(()) => self.conduit.handle_timeout(time::now()),
                    }
                    continue;
                }
                Action::Closed(outcome) => Err(outcome),
                Action::Wait(wait) => Ok(wait),
                #[cfg(feature = "secure")]
                Action::Authorize(key) => {
                    // Asked once, by the conduit itself: it cannot refuse the answer.
                    let _ = self.conduit.authorize(self.peers.access(&key));
                    continue;
                }
                #[cfg(feature = "secure")]
                Action::OriginKey(origin) => {
                    // Asked by the conduit itself, for the chunk it holds or the origin its
                    // walk is about to fetch.
                    let _ = self
                        .conduit
                        .origin_key(origin, self.peers.origin_key(origin));
                    continue;
                }
                action => {
                    // Every question waits on the store here, and only here.
                    if let Some(question) = Self::store_question(action, self.outgoing) {
                        let answer = self.store.answer(question).await;
                        self.answered(answer, &mut store_error);
                    }
                    // Shutdown: a UART has no writing side to close; the rest needs no
                    // answer.
                    continue;
                }
            };
            // Written frames go out before waiting or closing, by the deadline the conduit
            // gave the last of them.
            if let Some(by) = unflushed.take() {
                match select(self.io.flush(), Timer::at(time::to_embassy(by))).await {
                    Either::First(Ok(())) => {}
                    Either::First(Err(e)) => return Err(Self::failed(e, store_error)),
                    Either::Second(()) => {
                        self.conduit.handle_timeout(time::now());
                        continue;
                    }
                }
            }
            self.publish(wait.is_err());
            let wait = match wait {
                Ok(wait) => wait,
                Err(outcome) => {
                    return match (outcome, store_error) {
                        (Ok(()), _) => Ok(self.report(started)),
                        (Err(_), Some(e)) => Err(Error::Store(e)),
                        (Err(session::Error::Closed), None) => Err(Error::Closed),
                        (Err(e), None) => Err(Error::Protocol(e)),
                    };
                }
            };
            if !wait.read && wait.deadline.is_none() {
                // Nothing to wait for: cannot happen unless the conduit is closing.
                self.conduit.abort();
                continue;
            }
            let timer = async {
                match wait.deadline {
                    Some(t) => Timer::at(time::to_embassy(t)).await,
                    None => core::future::pending().await,
                }
            };
            let own = &mut self.own;
            let sealed = async {
                match own.as_mut() {
                    Some(log) => log.next().await,
                    None => core::future::pending().await,
                }
            };
            let read = async {
                if wait.read {
                    self.io.read(self.conduit.receive_buffer()).await
                } else {
                    core::future::pending().await
                }
            };
            match select4(read, timer, sealed, self.shared.asked()).await {
                Either4::First(Ok(0)) => self.conduit.eof(),
                Either4::First(Ok(n)) => self.conduit.received(n),
                Either4::First(Err(e)) => return Err(Self::failed(e, store_error)),
                Either4::Second(()) => self.conduit.handle_timeout(time::now()),
                Either4::Third(range) => {
                    self.conduit.announce(range);
                }
                // The application asked for something: seen at the top of the loop.
                Either4::Fourth(()) => {}
            }
        }
    }

    /// The store's question in `action`, if it asks one; chunks are read into `outgoing`.
    fn store_question<'a>(action: Action<'a>, outgoing: &'a mut [u8]) -> Option<StoreQuestion<'a>> {
        Some(match action {
            Action::Summarize { range, runs } => StoreQuestion::Summarize { range, runs },
            Action::Origins { after, out } => StoreQuestion::Origins { after, out },
            Action::Read(id) => StoreQuestion::Read { id, buf: outgoing },
            Action::ReadFirst(range) => StoreQuestion::ReadFirst {
                range,
                buf: outgoing,
            },
            Action::Store(chunk) => StoreQuestion::Insert(chunk),
            Action::List { range, out } => StoreQuestion::List { range, out },
            _ => return None,
        })
    }

    /// Gives the conduit the store's answer.
    fn answered(&mut self, answer: StoreAnswer<S::Error>, store_error: &mut Option<S::Error>) {
        let conduit = &mut self.conduit;
        // Each answer is to the conduit's own question: it refuses none but one that does
        // not fit the question, and then ends the session itself where it must.
        let _ = match answer {
            StoreAnswer::Summary(Ok((summary, n))) => conduit.summarized(&summary, n),
            StoreAnswer::Origins(Ok((n, last))) => conduit.origins(n, last),
            StoreAnswer::Read(Ok(Some(len))) => conduit.serve(len),
            StoreAnswer::ReadFirst(Ok(Some((span, len)))) => conduit.serve_in_range(&span, len),
            StoreAnswer::Insert(Ok(_)) => conduit.stored(Stored::Kept),
            StoreAnswer::Insert(Err(e)) if S::is_fork(&e) => conduit.stored(Stored::Fork),
            StoreAnswer::List(Ok(n)) => conduit.listed(n),
            StoreAnswer::Summary(Err(SummaryError::Store(e)))
            | StoreAnswer::Origins(Err(e))
            | StoreAnswer::Read(Err(ReadError::Store(e)))
            | StoreAnswer::ReadFirst(Err(ReadError::Store(e)))
            | StoreAnswer::Insert(Err(e))
            | StoreAnswer::List(Err(e)) => {
                self.store_failed(e, store_error);
                Ok(())
            }
            // A store that breaks its own order cannot be summarised: the session cannot
            // go on with it.
            StoreAnswer::Summary(Err(_)) => {
                conduit.abort();
                Ok(())
            }
            // Not here, none more in the range, or larger than this node's chunk buffer:
            // not served (a range ends here).
            StoreAnswer::Read(_) | StoreAnswer::ReadFirst(_) => conduit.not_found(),
        };
    }

    /// A transport failure, unless the store failed first.
    fn failed(e: IO::Error, store_error: Option<S::Error>) -> RunError<IO, S> {
        store_error.map_or(Error::Transport(e), Error::Store)
    }

    /// A store failure aborts the session: the peer is told, and `run` returns the error
    /// once the conduit closes.
    fn store_failed(&mut self, e: S::Error, first: &mut Option<S::Error>) {
        self.conduit.abort();
        first.get_or_insert(e);
    }

    fn publish(&self, finished: bool) {
        let p = self.conduit.progress();
        self.shared.publish(Progress {
            total_chunks: p.total_chunks,
            synced_chunks: p.synced_chunks,
            failed_chunks: p.failed_chunks,
            bytes_transferred: p.bytes_transferred,
            finished,
        });
    }

    fn report(&self, started: embassy_time::Instant) -> Report {
        let p = self.conduit.progress();
        Report {
            total_chunks: p.total_chunks,
            synced_chunks: p.synced_chunks,
            failed_chunks: p.failed_chunks,
            bytes_transferred: p.bytes_transferred,
            stats: *self.conduit.stats(),
            elapsed: started.elapsed(),
        }
    }
}
