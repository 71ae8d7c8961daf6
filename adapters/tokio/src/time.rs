//! Conversions between tokio's clock and the core's time, at the edge.
//!
//! tokio's `Instant` is used (not std's) so that tests with a paused clock
//! (`#[tokio::test(start_paused = true)]`) drive sessions deterministically.

use chunk_sync_core::Instant as CoreInstant;
use tokio::time::{Duration, Instant};

/// The node's clock: core instants are microseconds since `epoch`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    pub(crate) fn now(self) -> CoreInstant {
        self.to_core(Instant::now())
    }

    pub(crate) fn to_core(self, t: Instant) -> CoreInstant {
        let micros = t.saturating_duration_since(self.epoch).as_micros();
        CoreInstant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    pub(crate) fn to_tokio(self, t: CoreInstant) -> Instant {
        // Far beyond any deadline a session sets; `Instant` cannot represent "never".
        let far = self.epoch + Duration::from_secs(86_400 * 365 * 30);
        self.epoch
            .checked_add(Duration::from_micros(t.as_micros()))
            .map_or(far, |i| i.min(far))
    }
}
