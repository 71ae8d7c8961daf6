//! The pulling side of a reconciliation: which ranges to ask about, and what each answer
//! means.

use core::cmp::{max, min};
use core::fmt;

use heapless::Vec;

use super::codec::{self, MAX_ENTRY, MAX_RANGE, Query, RangeList};
use super::{KeyRange, Run, SPLIT, Summary, merge_range, subtract};
use crate::event::NodeId;

/// Why a reconciliation failed. Each is the peer's doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReconError {
    /// The walk asked about more ranges than its bound allows: a peer whose summaries
    /// keep it splitting.
    TooManyRanges {
        /// The bound.
        max: u64,
    },
    /// An answer that cannot be true of any store (named here), or bytes that are not one.
    BadSummary(&'static str),
    /// An answer to nothing asked, or with more or fewer entries than asked for.
    UnexpectedAnswer,
    /// A query that cannot be answered (named here).
    BadQuery(&'static str),
    /// An answer given to the walk while it was still resolving the one before: the
    /// caller's mistake, not the peer's (see the calling order of [`Walk`]).
    Busy,
}

impl fmt::Display for ReconError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyRanges { max } => {
                write!(f, "the peer's summaries needed more than {max} ranges")
            }
            Self::BadSummary(why) => write!(f, "the peer sent an impossible summary: {why}"),
            Self::UnexpectedAnswer => f.write_str("the peer answered a query not asked"),
            Self::BadQuery(why) => write!(f, "the peer sent a query that has no answer: {why}"),
            Self::Busy => f.write_str("an answer was given before the previous one was resolved"),
        }
    }
}

impl core::error::Error for ReconError {}

/// How much one query and its answer may hold, from the frame sizes of both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// Entries that fit one answer in this side's frames.
    pub entries: usize,
    /// Ranges that fit one query in the peer's frames.
    pub ranges: usize,
}

impl Room {
    /// The room in frames of `ours` (answers) and `theirs` (queries) bytes, less `overhead`
    /// bytes of frame header and message fields in each.
    #[must_use]
    pub const fn for_frames(ours: usize, theirs: usize, overhead: usize) -> Self {
        Self {
            entries: ours.saturating_sub(overhead) / MAX_ENTRY,
            ranges: theirs.saturating_sub(overhead) / MAX_RANGE,
        }
    }
}

/// The peer's summary of a range, held until this side's own summary of it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held<const K: usize> {
    range: KeyRange,
    summary: Summary,
    runs: Option<Vec<Run, K>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origins {
    /// The next page of origins is to be asked for, after this one.
    Next(Option<NodeId>),
    /// Every origin was listed.
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Asked<const E: usize> {
    Origins {
        after: Option<NodeId>,
        limit: usize,
    },
    Ranges {
        origin: NodeId,
        ranges: Vec<(u64, u64), E>,
    },
}

impl<const E: usize> Asked<E> {
    /// The query that asks this.
    fn query(&self, max_runs: u16) -> Query<'_> {
        match self {
            Self::Ranges { origin, ranges } => Query::Ranges {
                origin: *origin,
                max_runs,
                ranges: RangeList::new(ranges),
            },
            Self::Origins { after, limit } => Query::Origins {
                after: *after,
                limit: u16::try_from(*limit).unwrap_or(u16::MAX),
                max_runs,
            },
        }
    }
}

/// Counters of a walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Queries sent.
    pub queries: u64,
    /// Ranges asked about (origins included).
    pub ranges: u64,
    /// Ranges found wanted.
    pub wanted: u64,
}

/// The pulling side of a reconciliation with one peer: a sans-IO state machine that never
/// calls a store.
///
/// `Q` is the most ranges waiting to be asked about and the most ranges found wanted and
/// not yet taken (at least `2 × K`); `E` the most entries of one answer (at least 2); `K`
/// the most runs of each entry; `W` the most queries outstanding (the server answers in
/// order). Memory: about `72 × Q + (72 + 16 × K) × E + 16 × E × W` bytes.
///
/// # Calling order
/// 1. [`next_query`](Self::next_query) until it returns `None`, sending each query (up to
///    `W` are outstanding);
/// 2. on the next answer, [`on_origins`](Self::on_origins) or
///    [`on_ranges`](Self::on_ranges), once the previous answer is resolved (step 3);
/// 3. while [`next_own`](Self::next_own) names a range, summarise it from this node's store
///    (with up to `K` runs) and give the summary to [`resolve`](Self::resolve);
/// 4. take the wanted ranges with [`next_wanted`](Self::next_wanted) and fetch them (the
///    walk stops resolving while `Q` wanted ranges are waiting);
/// 5. until [`is_done`](Self::is_done).
#[derive(Clone, Debug)]
pub struct Walk<const Q: usize, const E: usize, const K: usize, const W: usize = 1> {
    origins: Origins,
    // Plain vectors rather than ring buffers: they are short, and their code is smaller on
    // a microcontroller.
    /// Queries sent, oldest first.
    asked: Vec<Asked<E>, W>,
    /// Ranges to ask about, in order.
    queue: Vec<KeyRange, Q>,
    /// The entries of the answer being resolved; the first `resolved` of them are.
    held: Vec<Held<K>, E>,
    resolved: usize,
    /// Ranges found wanted, in order.
    wanted: Vec<KeyRange, Q>,
    /// Ranges the peer announced it holds more of, to compare with this node's store.
    announced: Vec<KeyRange, Q>,
    /// Whether announcements overflowed `announced` (or the peer asked for it): every
    /// origin is to be listed again once the walk is idle.
    again: bool,
    max_ranges: u64,
    /// Ranges asked about since the walk was last idle, against `max_ranges`.
    round: u64,
    stats: WalkStats,
}

impl<const Q: usize, const E: usize, const K: usize, const W: usize> Walk<Q, E, K, W> {
    /// A walk that asks about at most `max_ranges` ranges.
    #[must_use]
    pub const fn new(max_ranges: u64) -> Self {
        const {
            assert!(
                E >= 2 && Q >= 2 * K && Q > 0 && W > 0,
                "a walk needs E >= 2, Q >= 2 K and W >= 1"
            )
        };
        Self {
            origins: Origins::Next(None),
            asked: Vec::new(),
            queue: Vec::new(),
            held: Vec::new(),
            resolved: 0,
            wanted: Vec::new(),
            announced: Vec::new(),
            again: false,
            max_ranges,
            round: 0,
            stats: WalkStats {
                queries: 0,
                ranges: 0,
                wanted: 0,
            },
        }
    }

    /// The counters.
    #[must_use]
    pub const fn stats(&self) -> &WalkStats {
        &self.stats
    }

    /// Whether every range was resolved (wanted ranges may still wait to be taken).
    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self.origins, Origins::Done)
            && self.asked.is_empty()
            && self.held.is_empty()
            && self.queue.is_empty()
            && self.announced.is_empty()
            && !self.again
    }

    /// The peer announced that it now holds chunks of `range` (a live session): the walk
    /// compares the range with this node's store ([`next_own`](Self::next_own)) and
    /// fetches it whole if this node holds none of it, or reconciles it otherwise.
    /// Announcements of one origin that overlap or touch are merged; past `Q` of them,
    /// the walk lists every origin again once it is idle (costing discovery, never
    /// correctness). A walk that was done starts a new round: [`new`](Self::new)'s
    /// `max_ranges` bounds each round.
    ///
    /// # Errors
    /// [`ReconError::BadSummary`] for an empty range.
    pub fn on_announce(&mut self, range: KeyRange) -> Result<(), ReconError> {
        if range.lo >= range.hi {
            return Err(ReconError::BadSummary("an empty range announced"));
        }
        self.start_round();
        if !merge_range(&mut self.announced, range) {
            self.again = true;
        }
        Ok(())
    }

    /// The peer stored more than it could announce: every origin is listed again once the
    /// walk is idle.
    pub fn on_resync(&mut self) {
        self.start_round();
        self.again = true;
    }

    fn start_round(&mut self) {
        if self.is_done() {
            self.round = 0;
        }
    }

    /// The next query to send, if one is due: none while an answer is being resolved or
    /// `W` queries are outstanding, and no page of origins while one is.
    ///
    /// # Errors
    /// [`ReconError::TooManyRanges`] once the walk would pass its bound.
    pub fn next_query(&mut self, room: Room) -> Result<Option<Query<'_>>, ReconError> {
        if self.asked.is_full() || !self.held.is_empty() {
            return Ok(None);
        }
        if self.again
            && matches!(self.origins, Origins::Done)
            && self.asked.is_empty()
            && self.queue.is_empty()
        {
            // A new listing of every origin covers what could not be announced.
            self.again = false;
            self.origins = Origins::Next(None);
        }
        let cap = min(min(room.entries, room.ranges), E);
        let max_runs = u16::try_from(K).unwrap_or(u16::MAX);
        if let Some(first) = pop_front(&mut self.queue) {
            let mut ranges = Vec::new();
            let parts = min(cap.clamp(2, SPLIT), E);
            split(&first, parts, &mut ranges);
            // More ranges of the same origin that come after these, while their parts fit
            // the query (a query's ranges ascend).
            while let Some(next) = self.queue.first().copied() {
                let after = ranges.last().is_none_or(|&(_, hi)| next.lo >= hi);
                if next.origin != first.origin
                    || !after
                    || ranges.len() + width_parts(&next, parts) > cap
                {
                    break;
                }
                self.queue.remove(0);
                split(&next, parts, &mut ranges);
            }
            self.count(ranges.len())?;
            let origin = first.origin;
            // Room: `asked` is not full (checked above).
            let _ = self.asked.push(Asked::Ranges { origin, ranges });
            return Ok(self.asked.last().map(|asked| asked.query(max_runs)));
        }
        let paging = self
            .asked
            .iter()
            .any(|a| matches!(a, Asked::Origins { .. }));
        let (Origins::Next(after), false) = (self.origins, paging) else {
            return Ok(None);
        };
        let limit = min(cap, Q).max(1);
        self.count(limit)?;
        // Room: `asked` is not full (checked above).
        let _ = self.asked.push(Asked::Origins { after, limit });
        Ok(self.asked.last().map(|asked| asked.query(max_runs)))
    }

    fn count(&mut self, ranges: usize) -> Result<(), ReconError> {
        self.stats.queries += 1;
        self.stats.ranges += ranges as u64;
        self.round += ranges as u64;
        if self.round > self.max_ranges {
            return Err(ReconError::TooManyRanges {
                max: self.max_ranges,
            });
        }
        Ok(())
    }

    /// The answer to the oldest query outstanding, whichever kind it asked:
    /// [`on_origins`](Self::on_origins) or [`on_ranges`](Self::on_ranges) (where `last`
    /// means nothing).
    ///
    /// # Errors
    /// As those two.
    pub fn on_answer(&mut self, entries: &[u8], last: bool) -> Result<(), ReconError> {
        match self.asked.first() {
            Some(Asked::Ranges { .. }) => self.on_ranges(entries),
            Some(Asked::Origins { .. }) => self.on_origins(entries, last),
            None if !self.held.is_empty() => Err(ReconError::Busy),
            None => Err(ReconError::UnexpectedAnswer),
        }
    }

    /// Whether an answer is still being resolved: the next one must wait (see the calling
    /// order).
    #[must_use]
    pub fn is_resolving(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether a wanted range waits to be taken with [`next_wanted`](Self::next_wanted).
    #[must_use]
    pub fn has_wanted(&self) -> bool {
        !self.wanted.is_empty()
    }

    /// The answer to a [`Query::Origins`]: `entries` (see [`codec`](super::codec)), and
    /// whether the peer has no origins after them.
    ///
    /// # Errors
    /// [`ReconError`] for an answer not asked for or not true of any store; nothing of it
    /// is kept then.
    pub fn on_origins(&mut self, entries: &[u8], last: bool) -> Result<(), ReconError> {
        if !self.held.is_empty() {
            return Err(ReconError::Busy);
        }
        let Some(&Asked::Origins { after, limit }) = self.asked.first() else {
            return Err(ReconError::UnexpectedAnswer);
        };
        let mut rest = entries;
        let mut previous = after;
        while !rest.is_empty() {
            if self.held.len() == limit {
                return Err(self.refuse(ReconError::UnexpectedAnswer));
            }
            let range = KeyRange::whole(NodeId(0));
            let (held, tail) = Self::entry(rest, &range, true).map_err(|e| self.refuse(e))?;
            if previous.is_some_and(|p| held.range.origin <= p) {
                return Err(self.refuse(ReconError::BadSummary("origins out of order")));
            }
            if held.summary.count == 0 {
                return Err(self.refuse(ReconError::BadSummary("an origin without chunks")));
            }
            previous = Some(held.range.origin);
            // Room: at most `limit <= E` entries.
            let _ = self.held.push(held);
            rest = tail;
        }
        if self.held.is_empty() && !last {
            return Err(self.refuse(ReconError::BadSummary("an empty page that is not the last")));
        }
        self.origins = match (last, previous) {
            (false, Some(p)) => Origins::Next(Some(p)),
            _ => Origins::Done,
        };
        self.asked.remove(0);
        Ok(())
    }

    /// The answer to a [`Query::Ranges`]: one entry per range asked about, in order.
    ///
    /// # Errors
    /// As [`on_origins`](Self::on_origins).
    pub fn on_ranges(&mut self, entries: &[u8]) -> Result<(), ReconError> {
        if !self.held.is_empty() {
            return Err(ReconError::Busy);
        }
        let Some(Asked::Ranges { origin, ranges }) = self.asked.first() else {
            return Err(ReconError::UnexpectedAnswer);
        };
        let (origin, ranges) = (*origin, ranges.clone());
        let mut rest = entries;
        for (lo, hi) in ranges {
            if rest.is_empty() {
                return Err(self.refuse(ReconError::UnexpectedAnswer));
            }
            let range = KeyRange { origin, lo, hi };
            let (held, tail) = Self::entry(rest, &range, false).map_err(|e| self.refuse(e))?;
            // Room: one entry per range asked about, at most `E`.
            let _ = self.held.push(held);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(self.refuse(ReconError::UnexpectedAnswer));
        }
        self.asked.remove(0);
        Ok(())
    }

    /// Drops what was kept of an answer found wrong.
    fn refuse(&mut self, error: ReconError) -> ReconError {
        self.held.clear();
        self.resolved = 0;
        error
    }

    /// Decodes and checks one entry for `range`.
    fn entry<'a>(
        bytes: &'a [u8],
        range: &KeyRange,
        with_origin: bool,
    ) -> Result<(Held<K>, &'a [u8]), ReconError> {
        let mut runs = [Run { lo: 0, hi: 0 }; K];
        let codec::Entry {
            origin,
            summary,
            runs: sent,
            rest,
        } = codec::decode_entry(bytes, range, with_origin, &mut runs)
            .map_err(|_| ReconError::BadSummary("not a summary"))?;
        let range = KeyRange { origin, ..*range };
        let runs = sent.map(|n| Vec::from_slice(&runs[..n]).unwrap_or_default());
        check(&range, &summary, runs.as_deref())?;
        Ok((
            Held {
                range,
                summary,
                runs,
            },
            rest,
        ))
    }

    /// The range whose summary from this node's store [`resolve`](Self::resolve) needs
    /// next, if an answer is being resolved and there is room for what it may want.
    #[must_use]
    pub fn next_own(&self) -> Option<KeyRange> {
        let room = Q - self.wanted.len();
        if room < max(2 * K, 1) {
            return None;
        }
        match self.held.get(self.resolved) {
            Some(held) => Some(held.range),
            // Between answers: the oldest range announced.
            None => self.announced.first().copied(),
        }
    }

    /// Resolves the range of [`next_own`](Self::next_own) with this node's `summary` of it
    /// and its runs (`None` if there are more than `K`; more than `K` given count as
    /// `None`).
    ///
    /// Returns `false`, and changes nothing, if no range awaits it.
    pub fn resolve(&mut self, mine: &Summary, my_runs: Option<&[Run]>) -> bool {
        let Some(range) = self.next_own() else {
            return false;
        };
        let Some(theirs) = self.held.get_mut(self.resolved) else {
            // An announced range: fetched whole if this node holds none of it, else asked
            // about (fetched whole if there is no room to ask).
            self.announced.remove(0);
            if mine.count == 0 || self.queue.push(range).is_err() {
                self.want(range);
            }
            return true;
        };
        let (r, t, their_runs) = (theirs.range, theirs.summary, theirs.runs.take());
        self.next_held();
        if t.count == 0 || (t.count == mine.count && t.fingerprint == mine.fingerprint) {
            return true;
        }
        if mine.count == 0 {
            self.want(KeyRange {
                origin: r.origin,
                lo: t.first,
                hi: min(r.hi, t.end),
            });
            return true;
        }
        let my_runs = my_runs.filter(|r| r.len() <= K);
        if let (Some(their_runs), Some(my_runs)) = (&their_runs, my_runs) {
            for d in subtract(their_runs, my_runs) {
                let (lo, hi) = (max(d.lo, r.lo), min(d.hi, r.hi));
                if lo < hi {
                    self.want(KeyRange {
                        origin: r.origin,
                        lo,
                        hi,
                    });
                }
            }
            return true;
        }
        let narrowed = KeyRange {
            origin: r.origin,
            lo: max(r.lo, min(t.first, mine.first)),
            hi: min(r.hi, max(t.end, mine.end)),
        };
        // One sequence number wide: one chunk on each side, different ones (a fork).
        if narrowed.hi - narrowed.lo > 1 && self.queue.push(narrowed).is_err() {
            // No room to split it later: fetch it whole (what this node has of it is
            // sent again, and dropped as already stored).
            self.want(narrowed);
        }
        true
    }

    /// Drops the range of [`next_own`](Self::next_own) without wanting any of it: this
    /// node takes nothing of that origin from the peer, so the walk neither fetches nor
    /// splits it.
    ///
    /// Returns `false`, and changes nothing, if no range awaits resolving.
    pub fn pass(&mut self) -> bool {
        if self.next_own().is_none() {
            return false;
        }
        if self.held.get(self.resolved).is_none() {
            self.announced.remove(0);
        } else {
            self.next_held();
        }
        true
    }

    /// Moves past the held entry being resolved; once every one is, drops the answer.
    fn next_held(&mut self) {
        self.resolved += 1;
        if self.resolved == self.held.len() {
            self.held.clear();
            self.resolved = 0;
        }
    }

    // Called from four places: one copy is smaller on a microcontroller.
    #[inline(never)]
    fn want(&mut self, range: KeyRange) {
        self.stats.wanted += 1;
        // Room: `next_own` makes sure of `2 × K` places: one resolution wants at most one
        // range per run of either side.
        let _ = self.wanted.push(range);
    }

    /// The next range found wanted: fetch every chunk of it the peer has.
    pub fn next_wanted(&mut self) -> Option<KeyRange> {
        pop_front(&mut self.wanted)
    }

    /// The range [`next_wanted`](Self::next_wanted) would give, left in place.
    #[must_use]
    pub fn peek_wanted(&self) -> Option<KeyRange> {
        self.wanted.first().copied()
    }
}

/// Takes the first of `v`, if any.
fn pop_front<T, const N: usize>(v: &mut Vec<T, N>) -> Option<T> {
    (!v.is_empty()).then(|| v.remove(0))
}

/// Checks that a summary can be true of a store for `range`.
fn check(range: &KeyRange, s: &Summary, runs: Option<&[Run]>) -> Result<(), ReconError> {
    let bad = |why| Err(ReconError::BadSummary(why));
    if s.count == 0 {
        return match runs {
            Some(r) if !r.is_empty() => bad("runs of no chunks"),
            _ => Ok(()),
        };
    }
    if s.first < range.lo || s.first >= range.hi || s.end <= s.first {
        return bad("chunks outside the range");
    }
    if s.count > s.end - s.first {
        return bad("more chunks than sequence numbers");
    }
    let Some(runs) = runs else {
        return Ok(());
    };
    let (Some(head), Some(tail)) = (runs.first(), runs.last()) else {
        return bad("no runs of some chunks");
    };
    if head.lo != s.first || tail.hi != s.end || runs.len() as u64 > s.count {
        return bad("runs that do not match the chunks");
    }
    let ordered = runs.iter().all(|r| r.lo < r.hi)
        && runs.windows(2).all(|w| w[0].hi < w[1].lo)
        && tail.lo < range.hi;
    if !ordered {
        return bad("runs out of order");
    }
    Ok(())
}

/// How many parts [`split`] makes of `range`.
fn width_parts(range: &KeyRange, parts: usize) -> usize {
    usize::try_from(range.hi - range.lo).map_or(parts, |w| min(w, parts))
}

/// Splits `range` into `parts` ranges of equal width (fewer if it is narrower), appended to
/// `out` as far as it has room.
pub(super) fn split<const E: usize>(range: &KeyRange, parts: usize, out: &mut Vec<(u64, u64), E>) {
    // `lo + floor(width × i / n)`, without 128-bit arithmetic (costly on a
    // microcontroller): with `width = q × n + r`, it is `q × i + floor(r × i / n)`, and
    // `r × i < n² <= SPLIT²`.
    let n = width_parts(range, parts) as u64;
    let width = range.hi - range.lo;
    let (q, r) = (width / n.max(1), width % n.max(1));
    let at = |i: u64| range.lo + q * i + r * i / n.max(1);
    for i in 0..n {
        if out.push((at(i), at(i + 1))).is_err() {
            return;
        }
    }
}
