//! The application's side of a running session: a `Copy` handle to read progress and ask
//! the runner to close or stop.

use core::cell::Cell;

use critical_section::Mutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;

/// Progress of the running session, as last published by the runner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Chunks found missing on this side so far.
    pub total_chunks: u64,
    /// Chunks received, verified and stored.
    pub synced_chunks: u64,
    /// Failed transfers.
    pub failed_chunks: u64,
    /// Bytes of chunk data received.
    pub bytes_transferred: u64,
    /// Whether the session has ended (completed or failed).
    pub finished: bool,
}

/// State shared by a runner and its handles, inside [`Resources`](crate::Resources).
pub(crate) struct Shared {
    progress: Mutex<Cell<Progress>>,
    stop: Mutex<Cell<bool>>,
    close: Mutex<Cell<bool>>,
    /// Wakes the runner when the application asks for something.
    wake: Signal<CriticalSectionRawMutex, ()>,
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("stop", &self.stop_requested())
            .field("close", &self.close_requested())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) const fn new() -> Self {
        Self {
            progress: Mutex::new(Cell::new(Progress {
                total_chunks: 0,
                synced_chunks: 0,
                failed_chunks: 0,
                bytes_transferred: 0,
                finished: false,
            })),
            stop: Mutex::new(Cell::new(false)),
            close: Mutex::new(Cell::new(false)),
            wake: Signal::new(),
        }
    }

    pub(crate) fn publish(&self, progress: Progress) {
        critical_section::with(|cs| self.progress.borrow(cs).set(progress));
    }

    pub(crate) fn stop_requested(&self) -> bool {
        critical_section::with(|cs| self.stop.borrow(cs).get())
    }

    pub(crate) fn close_requested(&self) -> bool {
        critical_section::with(|cs| self.close.borrow(cs).get())
    }

    /// Resolves when the application has asked for something since the last call.
    pub(crate) async fn asked(&self) {
        self.wake.wait().await;
    }

    pub(crate) fn reset(&self) {
        self.wake.reset();
        critical_section::with(|cs| {
            self.stop.borrow(cs).set(false);
            self.close.borrow(cs).set(false);
            self.progress.borrow(cs).set(Progress::default());
        });
    }
}

/// A `Copy` handle to a [`Runner`](crate::Runner), for other tasks.
#[derive(Clone, Copy, Debug)]
pub struct Handle<'d> {
    shared: &'d Shared,
}

impl<'d> Handle<'d> {
    pub(crate) const fn new(shared: &'d Shared) -> Self {
        Self { shared }
    }

    /// The session's latest progress.
    #[must_use]
    pub fn progress(&self) -> Progress {
        critical_section::with(|cs| self.shared.progress.borrow(cs).get())
    }

    /// Asks the runner to end the session at once (the peer is told, with an error); the
    /// runner notices when it is waiting, or after the write in progress.
    pub fn stop(&self) {
        critical_section::with(|cs| self.shared.stop.borrow(cs).set(true));
        self.shared.wake.signal(());
    }

    /// Asks the runner to end a live session cleanly: it announces nothing more, finishes
    /// what it is fetching, and the session completes once the peer has done the same
    /// ([`Session::close`](chunk_sync_core::session::Session::close)). A session that is
    /// not live ends by itself; this changes nothing for it.
    pub fn close(&self) {
        critical_section::with(|cs| self.shared.close.borrow(cs).set(true));
        self.shared.wake.signal(());
    }
}
