//! Claims on ranges of chunks being fetched, shared by a node's sessions, so that a chunk
//! several peers announce at once travels to the node once.
//!
//! A session about to request a range of chunks claims it through the node
//! ([`Budget::claim`](crate::conduit::Budget::claim)). While another session's claim on an
//! overlapping range of the same origin stands, the session sets the range aside for
//! [`CLAIM_RETRY`] and then asks its own store again what it holds of it: by then the
//! other session has usually stored the chunks, and a query to the peer confirms that
//! nothing is missing. A claim ends when its range request does
//! ([`Budget::release`](crate::conduit::Budget::release)); it lapses [`CLAIM_LEASE`]
//! after it was made, or when the adapter releases its session's claims at the session's
//! end, so a session whose peer never delivers holds nobody up for long. A full table grants every claim: chunks may
//! then travel twice, never be missed.

use heapless::Vec;

use crate::event::NodeId;
use crate::recon::KeyRange;
use crate::time::{Duration, Instant};

/// How long a claim stands unless its session ends first.
pub const CLAIM_LEASE: Duration = Duration::from_secs(2);

/// How long a session waits before it checks again a range another session claimed.
pub const CLAIM_RETRY: Duration = Duration::from_millis(20);

/// One claim.
#[derive(Clone, Copy, Debug)]
struct Claim {
    session: u64,
    range: KeyRange,
    until: Instant,
}

/// The claims of a node's sessions, at most `N` at once (about 40 bytes each), without
/// allocating. Sessions are named by any `u64` the adapter gives them, unique while they
/// run.
#[derive(Clone, Debug)]
pub struct ClaimTable<const N: usize> {
    claims: Vec<Claim, N>,
}

impl<const N: usize> Default for ClaimTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ClaimTable<N> {
    /// No claims.
    #[must_use]
    pub const fn new() -> Self {
        Self { claims: Vec::new() }
    }

    /// Claims `range` for `session` at `now`; returns `false` if another session's claim
    /// on an overlapping range of the same origin stands. A session may claim again what
    /// it holds (the lease starts over).
    pub fn claim(&mut self, session: u64, range: &KeyRange, now: Instant) -> bool {
        self.claims.retain(|c| c.until > now);
        let overlapping = |c: &&mut Claim| {
            c.range.origin == range.origin && c.range.lo < range.hi && range.lo < c.range.hi
        };
        let until = now + CLAIM_LEASE;
        let mut own = None;
        for c in self.claims.iter_mut().filter(overlapping) {
            if c.session != session {
                return false;
            }
            own = Some(c);
        }
        match own {
            Some(c) if c.range == *range => c.until = until,
            // Full: granted, unrecorded.
            _ => {
                let _ = self.claims.push(Claim {
                    session,
                    range: *range,
                    until,
                });
            }
        }
        true
    }

    /// Drops `session`'s claim on the range of `origin` that ends at `hi` (its request
    /// ended).
    pub fn release_range(&mut self, session: u64, origin: NodeId, hi: u64) {
        self.claims
            .retain(|c| !(c.session == session && c.range.origin == origin && c.range.hi == hi));
    }

    /// Drops every claim of `session` (it ended).
    pub fn release(&mut self, session: u64) {
        self.claims.retain(|c| c.session != session);
    }

    /// Claims recorded, lapsed ones included until the next [`claim`](Self::claim).
    #[must_use]
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    /// Whether no claim is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::NodeId;

    fn range(origin: u64, lo: u64, hi: u64) -> KeyRange {
        KeyRange {
            origin: NodeId(origin),
            lo,
            hi,
        }
    }

    const T0: Instant = Instant::ZERO;

    #[test]
    fn a_claim_holds_off_other_sessions_until_it_lapses_or_is_released() {
        let mut t = ClaimTable::<8>::new();
        assert!(t.claim(1, &range(7, 10, 20), T0));
        assert!(
            t.claim(1, &range(7, 10, 20), T0),
            "its own session may claim again"
        );
        assert!(!t.claim(2, &range(7, 15, 30), T0), "overlapping");
        assert!(
            t.claim(2, &range(7, 20, 30), T0),
            "touching is not overlapping"
        );
        assert!(t.claim(2, &range(8, 10, 20), T0), "another origin");
        assert!(!t.claim(
            3,
            &range(7, 0, 11),
            T0 + Duration::from_micros(CLAIM_LEASE.as_micros() - 1)
        ));
        assert!(t.claim(3, &range(7, 0, 11), T0 + CLAIM_LEASE), "lapsed");
        t.release(3);
        assert!(t.claim(4, &range(7, 0, 11), T0 + CLAIM_LEASE), "released");
        // A request that ended drops its claim at once, not the session's others.
        assert!(t.claim(5, &range(9, 0, 10), T0));
        assert!(t.claim(5, &range(9, 20, 30), T0));
        t.release_range(5, NodeId(9), 10);
        assert!(t.claim(6, &range(9, 0, 10), T0));
        assert!(!t.claim(6, &range(9, 25, 26), T0));
    }

    #[test]
    fn a_full_table_grants_every_claim() {
        let mut t = ClaimTable::<2>::new();
        assert!(t.claim(1, &range(1, 0, 10), T0));
        assert!(t.claim(1, &range(2, 0, 10), T0));
        assert!(t.claim(2, &range(3, 0, 10), T0));
        assert!(
            t.claim(3, &range(3, 0, 10), T0),
            "the last claim was not recorded"
        );
        assert_eq!(t.len(), 2);
    }

    proptest! {
        /// Two sessions never both hold standing claims on overlapping ranges (while the
        /// table has room), whatever they claim and release, and when.
        #[test]
        fn standing_claims_of_two_sessions_never_overlap(
            ops in prop::collection::vec((0u64..4, 0u64..3, 0u64..40, 1u64..10, 0u64..3_000, any::<bool>()), 1..60),
        ) {
            let mut t = ClaimTable::<64>::new();
            let mut now = T0;
            let mut granted: std::vec::Vec<(u64, KeyRange, Instant)> = std::vec::Vec::new();
            for (session, origin, lo, len, advance_ms, release) in ops {
                now += Duration::from_millis(advance_ms);
                if release {
                    t.release(session);
                    granted.retain(|g| g.0 != session);
                    continue;
                }
                let r = range(origin, lo, lo + len);
                let standing_other = granted.iter().any(|&(s, g, at)| {
                    s != session && g.origin == r.origin && g.lo < r.hi && r.lo < g.hi
                        && now < at + CLAIM_LEASE
                });
                prop_assert_eq!(t.claim(session, &r, now), !standing_other);
                if !standing_other {
                    granted.push((session, r, now));
                }
            }
        }
    }
}
