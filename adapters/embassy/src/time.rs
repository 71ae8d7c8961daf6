//! Conversions between `embassy_time` and the core's time, at the edge.

use chunk_sync_core::Instant as CoreInstant;
use embassy_time::Instant;

// Out of line, as `to_embassy`: called at every turn of the runner's loop, and each copy
// inlined would carry the time driver's read and the conversion.
#[inline(never)]
pub(crate) fn now() -> CoreInstant {
    CoreInstant::from_micros(Instant::now().as_micros())
}

/// The first tick at or after `t`, so that a timer never fires before the core's deadline.
#[inline(never)]
pub(crate) fn to_embassy(t: CoreInstant) -> Instant {
    const HZ: u64 = embassy_time::TICK_HZ;
    const MICROS: u64 = 1_000_000;
    let us = t.as_micros();
    let ticks = if MICROS.is_multiple_of(HZ) {
        // A tick is a whole number of microseconds (1 kHz, 1 MHz, …): one division.
        us.div_ceil(MICROS / HZ)
    } else {
        // Whole seconds, then the rest rounded up: no overflow, no 128-bit division.
        (us / MICROS)
            .saturating_mul(HZ)
            .saturating_add((us % MICROS * HZ).div_ceil(MICROS))
    };
    Instant::from_ticks(ticks)
}
