//! Pieces shared by the embassy tests, each of which is its own process (the embassy-time
//! mock driver is a process-wide clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use embassy_time::MockDriver;
use tokio::task::JoinHandle;

/// Moves embassy's mock time by `step` every 100 µs of real time until stopped. Mock time
/// runs only when this task moves it.
pub(crate) struct MockClock {
    stop: Arc<AtomicBool>,
    ticking: JoinHandle<()>,
}

impl MockClock {
    /// Starts ticking.
    pub(crate) fn start(step: embassy_time::Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ticking = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    MockDriver::get().advance(step);
                    tokio::time::sleep(std::time::Duration::from_micros(100)).await;
                }
            }
        });
        Self { stop, ticking }
    }

    /// Stops ticking.
    pub(crate) async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.ticking.await.unwrap();
    }
}
