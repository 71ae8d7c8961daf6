//! Conversions between `embassy_time` and the core's time, at the edge.

use chunk_sync_core::Instant as CoreInstant;
use embassy_time::Instant;

pub(crate) fn now() -> CoreInstant {
    CoreInstant::from_micros(Instant::now().as_micros())
}

pub(crate) fn to_embassy(t: CoreInstant) -> Instant {
    Instant::from_micros(t.as_micros())
}
