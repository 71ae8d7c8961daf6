//! A clock-agnostic bandwidth throttle: the decision "send now, or not until instant T".
//!
//! [`ThrottleConfig`] keeps the original document's meaning: at most `max_bytes_per_sec`
//! bytes per second, measured over windows of `window_duration`; `0` means unlimited. Three
//! defects of the original are fixed:
//! - a window's budget is `max_bytes_per_sec × window_duration`, not `max_bytes_per_sec`
//!   whatever the window length;
//! - a send larger than the room left in a window is admitted and its excess is carried
//!   into the following windows as debt, so the long-run average is the configured rate
//!   exactly and no send is ever refused for good;
//! - time going backwards never panics: elapsed time counts as zero.
//!
//! The throttle holds no clock: every call takes `now`. All maths is integer (Cortex-M
//! cores without an FPU run it as fast as any other): budgets are kept in byte·µs/s, so a
//! rate of 1 byte per second over a 1 ms window is exact, not rounded to zero.
//!
//! Guarantee: counting windows from the first send, the bytes admitted inside any one
//! window never exceed the window's budget plus the last send admitted in it.

use core::fmt;

use crate::time::{Duration, Instant};

/// Byte·µs per byte·s: the scale of the throttle's internal units.
const SCALE: u64 = 1_000_000;

/// The throttle's settings, as in the original document, in the core's own time
/// ([`Duration`]: microseconds, no clock): what the core's sessions and the embassy
/// runner take. Host code, with `std::time::Duration`, uses `chunk_sync_tokio::ThrottleConfig`
/// (the same fields), which converts to this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ThrottleConfig {
    /// The long-run rate limit, in bytes per second; `0` means unlimited.
    pub max_bytes_per_sec: u64,
    /// The accounting window; its budget is `max_bytes_per_sec × window_duration`. It must
    /// be non-zero unless the rate is unlimited.
    pub window_duration: Duration,
}

impl ThrottleConfig {
    /// No limit.
    pub const UNLIMITED: Self = Self {
        max_bytes_per_sec: 0,
        window_duration: Duration::from_secs(1),
    };

    /// `bytes_per_sec` over one-second windows (`0` = unlimited).
    #[must_use]
    pub const fn per_second(bytes_per_sec: u64) -> Self {
        Self {
            max_bytes_per_sec: bytes_per_sec,
            window_duration: Duration::from_secs(1),
        }
    }

    /// Whether the configuration limits nothing.
    #[must_use]
    pub const fn is_unlimited(&self) -> bool {
        self.max_bytes_per_sec == 0
    }

    /// The budget of one window in whole bytes (rounded down), or `None` if unlimited.
    #[must_use]
    pub const fn window_budget(&self) -> Option<u64> {
        if self.is_unlimited() {
            None
        } else {
            Some(
                self.max_bytes_per_sec
                    .saturating_mul(self.window_duration.as_micros())
                    / SCALE,
            )
        }
    }
}

impl Default for ThrottleConfig {
    /// [`ThrottleConfig::UNLIMITED`].
    fn default() -> Self {
        Self::UNLIMITED
    }
}

/// A [`ThrottleConfig`] that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ThrottleConfigError {
    /// A rate limit with a zero-length window.
    ZeroWindow,
}

impl fmt::Display for ThrottleConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroWindow => f.write_str("a throttle window must be longer than zero"),
        }
    }
}

impl core::error::Error for ThrottleConfigError {}

/// "Not now": the earliest instant at which the throttle admits a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NotUntil {
    earliest: Instant,
}

impl NotUntil {
    /// The earliest instant at which a send is admitted.
    #[must_use]
    pub const fn earliest(&self) -> Instant {
        self.earliest
    }

    /// How long to wait from `now`.
    #[must_use]
    pub const fn wait_time_from(&self, now: Instant) -> Duration {
        self.earliest.saturating_duration_since(now)
    }
}

impl fmt::Display for NotUntil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "throttled until {}µs", self.earliest.as_micros())
    }
}

/// The throttle state machine. Memory: 56 bytes.
///
/// ```
/// use chunk_sync_core::{Duration, Instant, Throttle, ThrottleConfig};
///
/// let mut t = Throttle::new(ThrottleConfig::per_second(1_000))?;
/// let t0 = Instant::ZERO;
/// assert!(t.try_consume(t0, 600).is_ok());
/// assert!(t.try_consume(t0, 600).is_ok()); // 1,200 bytes: 200 carried as debt
/// let wait = t.try_consume(t0, 1).unwrap_err();
/// assert_eq!(wait.earliest(), t0 + Duration::from_secs(1));
/// # Ok::<(), chunk_sync_core::throttle::ThrottleConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    /// Budget per window in byte·µs/s; `0` when unlimited.
    budget: u64,
    window_us: u64,
    /// Start of the current window; `None` before the first send.
    window_start: Option<Instant>,
    /// Bytes admitted in the current window, debt included, in byte·µs/s.
    used: u64,
}

impl Throttle {
    /// A throttle with nothing sent yet.
    pub fn new(config: ThrottleConfig) -> Result<Self, ThrottleConfigError> {
        let window_us = config.window_duration.as_micros();
        if !config.is_unlimited() && window_us == 0 {
            return Err(ThrottleConfigError::ZeroWindow);
        }
        Ok(Self {
            config,
            budget: config.max_bytes_per_sec.saturating_mul(window_us),
            window_us,
            window_start: None,
            used: 0,
        })
    }

    /// A throttle that admits everything.
    #[must_use]
    pub const fn unlimited() -> Self {
        Self {
            config: ThrottleConfig::UNLIMITED,
            budget: 0,
            window_us: 1,
            window_start: None,
            used: 0,
        }
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> ThrottleConfig {
        self.config
    }

    /// Changes the limit. Debt already incurred is kept and repaid at the new rate.
    pub fn reconfigure(&mut self, config: ThrottleConfig) -> Result<(), ThrottleConfigError> {
        let mut next = Self::new(config)?;
        next.window_start = self.window_start;
        next.used = if next.budget == 0 { 0 } else { self.used };
        *self = next;
        Ok(())
    }

    /// Admits `bytes` at `now`, or says when a send will be admitted.
    ///
    /// A send is admitted whenever the current window has room left, whatever its size;
    /// what exceeds the room is carried into the following windows. Zero bytes are always
    /// admitted.
    pub fn try_consume(&mut self, now: Instant, bytes: u64) -> Result<(), NotUntil> {
        if self.budget == 0 || bytes == 0 {
            return Ok(());
        }
        let (start, used) = self.window_at(now);
        self.window_start = Some(start);
        self.used = used;
        if used < self.budget {
            self.used = used.saturating_add(bytes.saturating_mul(SCALE));
            Ok(())
        } else {
            Err(self.not_until(start, used))
        }
    }

    /// `None` if a send would be admitted at `now`, otherwise when it will be.
    #[must_use]
    pub fn next_ready(&self, now: Instant) -> Option<Instant> {
        if self.budget == 0 {
            return None;
        }
        let (start, used) = self.window_at(now);
        (used >= self.budget).then(|| self.not_until(start, used).earliest)
    }

    /// The window containing `now` and the usage carried into it.
    fn window_at(&self, now: Instant) -> (Instant, u64) {
        let Some(start) = self.window_start else {
            return (now, self.used);
        };
        let Some(elapsed) = now.checked_duration_since(start) else {
            warn!(
                "throttle: time went backwards by {}us",
                start.as_micros() - now.as_micros()
            );
            return (start, self.used);
        };
        let windows = elapsed.as_micros() / self.window_us;
        if windows == 0 {
            return (start, self.used);
        }
        let start = start + Duration::from_micros(windows.saturating_mul(self.window_us));
        (
            start,
            self.used
                .saturating_sub(windows.saturating_mul(self.budget)),
        )
    }

    /// The first window boundary at which the carried usage drops below the budget.
    fn not_until(&self, start: Instant, used: u64) -> NotUntil {
        let windows = used / self.budget;
        NotUntil {
            earliest: start + Duration::from_micros(windows.saturating_mul(self.window_us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec as pvec;
    use proptest::prelude::*;

    fn at(us: u64) -> Instant {
        Instant::from_micros(us)
    }

    #[test]
    fn documented_size() {
        assert_eq!(size_of::<Throttle>(), 56);
    }

    #[test]
    fn unlimited_admits_everything() {
        let mut t = Throttle::new(ThrottleConfig::UNLIMITED).unwrap();
        for i in 0..1000 {
            assert!(t.try_consume(at(0), u64::MAX - i).is_ok());
        }
        assert_eq!(t.next_ready(at(0)), None);
    }

    #[test]
    fn budget_scales_with_the_window() {
        // The original admitted `max_bytes_per_sec` per window, whatever its length.
        let cfg = ThrottleConfig {
            max_bytes_per_sec: 1_000,
            window_duration: Duration::from_millis(100),
        };
        assert_eq!(cfg.window_budget(), Some(100));
        let mut t = Throttle::new(cfg).unwrap();
        assert!(t.try_consume(at(0), 100).is_ok());
        assert_eq!(
            t.try_consume(at(50_000), 1).unwrap_err().earliest(),
            at(100_000)
        );
        assert!(t.try_consume(at(100_000), 1).is_ok());
    }

    #[test]
    fn oversize_send_is_admitted_and_repaid() {
        let mut t = Throttle::new(ThrottleConfig::per_second(1_000)).unwrap();
        assert!(t.try_consume(at(0), 3_500).is_ok());
        let wait = t.try_consume(at(10), 1).unwrap_err();
        assert_eq!(wait.earliest(), at(3_000_000));
        assert_eq!(
            wait.wait_time_from(at(10)),
            Duration::from_micros(2_999_990)
        );
        assert_eq!(t.next_ready(at(2_999_999)), Some(at(3_000_000)));
        assert_eq!(t.next_ready(at(3_000_000)), None);
        assert!(t.try_consume(at(3_000_000), 400).is_ok());
    }

    #[test]
    fn time_going_backwards_is_tolerated() {
        let mut t = Throttle::new(ThrottleConfig::per_second(10)).unwrap();
        assert!(t.try_consume(at(5_000_000), 10).is_ok());
        let wait = t.try_consume(at(1), 10).unwrap_err();
        assert_eq!(wait.earliest(), at(6_000_000));
        assert_eq!(wait.wait_time_from(at(7_000_000)), Duration::ZERO);
    }

    #[test]
    fn zero_window_is_refused() {
        let cfg = ThrottleConfig {
            max_bytes_per_sec: 1,
            window_duration: Duration::ZERO,
        };
        assert_eq!(
            Throttle::new(cfg).unwrap_err(),
            ThrottleConfigError::ZeroWindow
        );
        let unlimited = ThrottleConfig {
            max_bytes_per_sec: 0,
            window_duration: Duration::ZERO,
        };
        assert!(Throttle::new(unlimited).is_ok());
    }

    #[test]
    fn tiny_budgets_are_exact() {
        // 1 byte per second over 1 ms windows: 0.001 byte per window, no rounding to zero.
        let cfg = ThrottleConfig {
            max_bytes_per_sec: 1,
            window_duration: Duration::from_millis(1),
        };
        let mut t = Throttle::new(cfg).unwrap();
        assert!(t.try_consume(at(0), 2).is_ok());
        assert_eq!(t.next_ready(at(0)), Some(at(2_000_000)));
    }

    proptest! {
        /// Random sends at random times: per window, admitted bytes stay within the budget
        /// plus one send, and a refusal's `earliest` is in the future and admits.
        #[test]
        fn window_budget_holds(
            rate in 1u64..100_000,
            window_ms in 1u64..2_000,
            steps in pvec((0u64..300_000, 1u64..50_000), 1..300),
        ) {
            let cfg = ThrottleConfig { max_bytes_per_sec: rate, window_duration: Duration::from_millis(window_ms) };
            let mut t = Throttle::new(cfg).unwrap();
            let budget = u128::from(rate) * u128::from(window_ms) * 1_000;
            let window_us = window_ms * 1_000;
            let (mut now, mut first, mut current, mut in_window, mut max_send) = (0u64, None, 0u64, 0u128, 0u128);
            for (dt, bytes) in steps {
                now += dt;
                match t.try_consume(at(now), bytes) {
                    Ok(()) => {
                        let start = *first.get_or_insert(now);
                        let w = (now - start) / window_us;
                        if w != current { current = w; in_window = 0; }
                        let scaled = u128::from(bytes) * 1_000_000;
                        in_window += scaled;
                        max_send = max_send.max(scaled);
                        prop_assert!(in_window <= budget + max_send);
                    }
                    Err(wait) => {
                        prop_assert!(wait.earliest() > at(now));
                        prop_assert_eq!(t.next_ready(at(now)), Some(wait.earliest()));
                        prop_assert_eq!(t.next_ready(wait.earliest()), None);
                    }
                }
            }
        }

        /// Under saturating demand (send whenever allowed) the long-run rate is the
        /// configured one within 1%.
        #[test]
        fn long_run_rate_is_exact(
            rate in 1_000u64..100_000_000,
            window_ms in 1u64..1_000,
            send_permille in 10u64..3_000,
        ) {
            let cfg = ThrottleConfig { max_bytes_per_sec: rate, window_duration: Duration::from_millis(window_ms) };
            let mut t = Throttle::new(cfg).unwrap();
            // Sends from 1% to 3x a window's budget.
            let send = (cfg.window_budget().unwrap() * send_permille / 1_000).max(1);
            // Long enough that one window plus one send is well under 1% of the total.
            let horizon_us = (300 * window_ms * 1_000).max(400 * send * 1_000_000 / rate);
            let (mut now, mut sent) = (0u64, 0u128);
            while now < horizon_us {
                match t.try_consume(at(now), send) {
                    Ok(()) => sent += u128::from(send),
                    Err(wait) => now = wait.earliest().as_micros(),
                }
            }
            let expected = u128::from(rate) * u128::from(now) / 1_000_000;
            let diff = sent.abs_diff(expected);
            prop_assert!(diff * 100 <= expected, "sent {} expected {}", sent, expected);
        }
    }
}
