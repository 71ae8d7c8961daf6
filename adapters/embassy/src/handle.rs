//! The application's side of a running session: a `Copy` handle to read progress and ask
//! the runner to stop.

use core::cell::Cell;

use critical_section::Mutex;

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
#[derive(Debug)]
pub(crate) struct Shared {
    progress: Mutex<Cell<Progress>>,
    stop: Mutex<Cell<bool>>,
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
        }
    }

    pub(crate) fn publish(&self, progress: Progress) {
        critical_section::with(|cs| self.progress.borrow(cs).set(progress));
    }

    pub(crate) fn stop_requested(&self) -> bool {
        critical_section::with(|cs| self.stop.borrow(cs).get())
    }

    pub(crate) fn reset(&self) {
        critical_section::with(|cs| {
            self.stop.borrow(cs).set(false);
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

    /// Asks the runner to end the session (the peer is told); it notices at its next wake-up
    /// (input, deadline or write).
    pub fn stop(&self) {
        critical_section::with(|cs| self.shared.stop.borrow(cs).set(true));
    }
}
