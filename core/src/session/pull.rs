//! The pulling side of a session: reconciling with the peer's store ([`Walk`]), asking
//! this node's store for its own summaries, requesting what this node lacks (ranges the
//! walk found wanted, chunks the caller named) with several requests in flight,
//! reassembling and verifying what arrives, retrying and reporting failures.

use core::cmp::min;

use heapless::Deque;

use super::{
    ApiMisuse, Encoding, Error, FailReason, FinishError, PeerMisbehaved, Phase, Piece, Session,
    Stored, Transmit,
};
use crate::chunk::ChunkView;
use crate::claims::CLAIM_RETRY;
use crate::error::InsufficientSize;
use crate::hash::{ChunkHash, Verified};
use crate::recon::{KeyRange, ReconError, Room, Walk};
use crate::time::Instant;
use crate::wire::{self, Hello, Message};

/// The reconciliation of a session with `R` ranges: `R` waiting and wanted, `R` entries per
/// answer, `K` runs each, one query outstanding (see [`Walk`]: with one, an answer
/// never waits behind chunks that wait for it).
pub(super) type SessionWalk<const R: usize, const K: usize> = Walk<R, R, K, 1>;

/// Bytes of a query's own fields beside its ranges: kind, origin, counts.
const QUERY_FIELDS: usize = 16;

/// The pulling side: the walk, and the chunks and ranges wanted, in flight and failed.
#[derive(Clone, Debug)]
pub(super) struct Pull<const R: usize, const REQ: usize, const K: usize> {
    /// The reconciliation, if this side pulls.
    pub(super) walk: Option<SessionWalk<R, K>>,
    /// Chunks the caller asked for by hash.
    pub(super) want: Deque<Want, R>,
    /// Chunks to request again after a hash mismatch.
    pub(super) retry: Deque<Want, REQ>,
    pub(super) in_flight: Deque<InFlight, REQ>,
    /// Chunks that failed, until the adapter reads them.
    pub(super) failures: Deque<Failure, REQ>,
    /// Ranges another session of the node is fetching, and when to check them again: at
    /// most as many as requests in flight.
    pub(super) deferred: Deque<(KeyRange, Instant), REQ>,
    /// Range requests that ended, whose claims the node may drop.
    pub(super) finished: Deque<KeyRange, REQ>,
    /// Chunks verified whose store has not yet answered for them: `Done` waits for them,
    /// so that a peer whose session completes knows that this side kept what it took.
    pub(super) unanswered: u32,
    pub(super) done_sent: bool,
    /// Whether `PullComplete` was reported.
    pub(super) reported: bool,
}

impl<const R: usize, const REQ: usize, const K: usize> Pull<R, REQ, K> {
    /// A pull that reconciles with the peer, or (`walk: false`) only fetches what it is
    /// asked to; the walk asks about at most `max_ranges` ranges.
    pub(super) const fn new(walk: bool, max_ranges: u32) -> Self {
        Self {
            walk: if walk {
                Some(Walk::new(max_ranges as u64))
            } else {
                None
            },
            want: Deque::new(),
            retry: Deque::new(),
            in_flight: Deque::new(),
            failures: Deque::new(),
            deferred: Deque::new(),
            finished: Deque::new(),
            unanswered: 0,
            done_sent: false,
            reported: false,
        }
    }
}

/// A chunk that could not be fetched.
#[derive(Clone, Copy, Debug)]
pub(super) struct Failure {
    pub(super) hash: ChunkHash,
    pub(super) reason: FailReason,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Want {
    hash: ChunkHash,
    attempts: u8,
}

/// What a request in flight asked for.
#[derive(Clone, Copy, Debug)]
enum Request {
    /// One chunk by hash.
    Chunk(Want),
    /// Every chunk of a range the peer holds; `lo` moves past each chunk received.
    Range(KeyRange),
    /// The hashes of the chunks of a range (a listing); `lo` moves past each page. Only
    /// with `alloc`, which alone takes `Ids`.
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    Ids(KeyRange),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct InFlight {
    request: Request,
    /// The length of the chunk arriving, once its first piece did.
    total_len: Option<u32>,
    received: u32,
    /// Chunks of a range received.
    chunks: u32,
}

impl InFlight {
    pub(super) fn is_complete(&self) -> bool {
        self.total_len == Some(self.received)
    }
}

impl<const R: usize, const REQ: usize, const K: usize> Session<R, REQ, K> {
    /// The peer does not have the chunk requested next.
    pub(super) fn on_not_found(&mut self, hash: ChunkHash) -> Result<(), Error> {
        match self.pull.in_flight.front() {
            Some(InFlight {
                request: Request::Chunk(want),
                total_len: None,
                ..
            }) if want.hash == hash => {}
            _ => {
                return Err(Error::Peer(PeerMisbehaved::Unexpected(
                    "NotFound for a chunk not requested next",
                )));
            }
        }
        self.pull.in_flight.pop_front();
        // Room: `failures` and `in_flight` share the limit `REQ` (see `next_request`).
        let _ = self.pull.failures.push_back(Failure {
            hash,
            reason: FailReason::NotFound,
        });
        self.count_failure()
    }

    /// The peer has sent all it holds of the range requested next.
    pub(super) fn on_range_end(&mut self) -> Result<(), Error> {
        match self.pull.in_flight.front() {
            Some(&InFlight {
                request: Request::Range(range),
                total_len: None,
                chunks,
                ..
            }) => {
                self.pull.in_flight.pop_front();
                // Room: it held at most what was in flight. Full, the claim lapses.
                let _ = self.pull.finished.push_back(range);
                if chunks == 0 {
                    // The peer's summary or announcement said it holds chunks there: it
                    // lied, or dropped them since. Either way a failure, so that a peer
                    // announcing chunks it never serves ends up refused.
                    return self.count_failure();
                }
                Ok(())
            }
            _ => Err(Error::Peer(PeerMisbehaved::Unexpected(
                "RangeEnd for no range requested next",
            ))),
        }
    }

    /// Hashes of the peer's chunks, for the listing requested next: its range goes on
    /// from `next`, or ends there.
    #[cfg(feature = "alloc")]
    pub(super) fn on_ids<'a>(&mut self, next: u64, ids: &'a [u8]) -> Result<&'a [u8], Error> {
        let Some(InFlight {
            request: Request::Ids(range),
            ..
        }) = self.pull.in_flight.front_mut()
        else {
            return Err(Error::Peer(PeerMisbehaved::Unexpected(
                "Ids for no listing requested next",
            )));
        };
        // Each page moves the range on, and lists at most one chunk per sequence number it
        // passes (chunks of an origin start at different ones): a peer cannot list more
        // than the range holds.
        // A page that does not move the range on is refused before anything subtracts.
        if next <= range.lo {
            return Err(Error::Peer(PeerMisbehaved::BadPiece));
        }
        let passed = min(next, range.hi) - range.lo;
        if !ids.len().is_multiple_of(32) || (ids.len() / 32) as u64 > passed {
            return Err(Error::Peer(PeerMisbehaved::BadPiece));
        }
        if next < range.hi {
            range.lo = next;
        } else {
            self.pull.in_flight.pop_front();
        }
        Ok(ids)
    }

    /// The answer to this side's oldest query.
    pub(super) fn on_answer(&mut self, entries: &[u8], last: bool) -> Result<(), Error> {
        let Some(walk) = &mut self.pull.walk else {
            return Err(Error::Peer(PeerMisbehaved::Unexpected(
                "an answer to no query",
            )));
        };
        walk.on_answer(entries, last).map_err(|e| {
            // An answer while the last is resolved is one more than was asked for: the
            // session reads no frame while it asks the store about an answer.
            let e = if e == ReconError::Busy {
                ReconError::UnexpectedAnswer
            } else {
                e
            };
            Error::Peer(PeerMisbehaved::Recon(e))
        })
    }

    /// The pulling side's next frame: a query, a chunk or range request, or `Done`.
    ///
    /// A query the walk refuses to make (past its bound on ranges) fails the session.
    pub(super) fn next_pull_frame(
        &mut self,
        peer: &Hello,
        frame: &mut [u8],
        area: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        if let Some(walk) = &mut self.pull.walk {
            let mut room = Room::for_frames(
                (self.config.max_frame - self.link_overhead) as usize,
                peer.max_frame as usize,
                wire::RECON_OVERHEAD + QUERY_FIELDS,
            );
            let theirs = usize::from(peer.max_ranges);
            room.entries = min(room.entries, theirs);
            room.ranges = min(room.ranges, theirs);
            match walk.next_query(room) {
                Ok(Some(query)) => {
                    let n = query.write(area)?;
                    let query = Message::Query { query: &area[..n] };
                    let t = Self::emit(&query, frame)?;
                    self.stats.queries_sent += 1;
                    self.stats.discovery_sent += t.len as u64;
                    return Ok(Some(t));
                }
                Ok(None) => {}
                Err(e) => {
                    self.fail(Error::Peer(PeerMisbehaved::Recon(e)));
                    return Ok(None);
                }
            }
        }
        if !self.window_full(peer) {
            if let Some(want) = self.pull.retry.front().or(self.pull.want.front()).copied() {
                let t = Self::emit(&Message::EventChunkGet { hash: want.hash }, frame)?;
                if self.pull.retry.pop_front().is_none() {
                    self.pull.want.pop_front();
                }
                self.start(Request::Chunk(want));
                return Ok(Some(t));
            }
            if let Some(range) = self.pull.walk.as_mut().and_then(Walk::next_wanted) {
                let (origin, lo, hi) = (range.origin, range.lo, range.hi);
                let (get, request) = if cfg!(feature = "alloc") && self.config.list {
                    (Message::GetIds { origin, lo, hi }, Request::Ids(range))
                } else {
                    (Message::GetRange { origin, lo, hi }, Request::Range(range))
                };
                let t = Self::emit(&get, frame)?;
                self.start(request);
                return Ok(Some(t));
            }
        }
        if self.pull_finished()
            && self.pull.unanswered == 0
            && !self.pull.done_sent
            && self.may_finish()
        {
            let t = Self::emit(&Message::Done, frame)?;
            self.pull.done_sent = true;
            return Ok(Some(t));
        }
        Ok(None)
    }

    /// A request went out.
    fn start(&mut self, request: Request) {
        // Room was checked by `window_full`.
        let _ = self.pull.in_flight.push_back(InFlight {
            request,
            total_len: None,
            received: 0,
            chunks: 0,
        });
    }

    pub(super) fn on_piece<'a>(
        &mut self,
        total_len: u32,
        offset: u32,
        len: u32,
        data: &'a [u8],
        encoding: Encoding,
    ) -> Result<Piece<'a>, Error> {
        let max = self.config.max_chunk_len;
        let Some(front) = self
            .pull
            .in_flight
            .front_mut()
            .filter(|f| !matches!(f.request, Request::Ids(_)))
        else {
            return Err(Error::Peer(PeerMisbehaved::UnrequestedChunk));
        };
        if total_len > max {
            return Err(Error::Peer(PeerMisbehaved::ChunkTooLarge {
                len: total_len,
                max,
            }));
        }
        let fits = offset.checked_add(len).is_some_and(|end| end <= total_len);
        let consistent = front.total_len.is_none_or(|t| t == total_len);
        if total_len == 0
            || len == 0
            || data.is_empty()
            || offset != front.received
            || !consistent
            || !fits
        {
            return Err(Error::Peer(PeerMisbehaved::BadPiece));
        }
        front.total_len = Some(total_len);
        // `fits` checked that this neither overflows nor passes `total_len`.
        front.received = offset + len;
        Ok(Piece {
            offset,
            total_len,
            len,
            data,
            encoding,
            last: front.is_complete(),
        })
    }

    /// Verifies the chunk whose last piece just arrived, given all of its bytes in order:
    /// its hash (the one requested, or, for a chunk of a range, the one it has, which must
    /// then lie in the range after the chunk before it), then every rule of the chunk
    /// format ([`ChunkView::validate`]: header, range, events, no private event).
    ///
    /// On success the bytes are [`Verified`] and may be stored. Otherwise nothing may be
    /// stored: a hash mismatch is counted as failed and asked for again, or reported with
    /// [`Event::ChunkFailed`](super::Event::ChunkFailed) once `max_attempts` are used up;
    /// bytes that match their hash but are not a valid chunk are reported at once
    /// ([`FailReason::Invalid`]), since no peer can give other bytes by that name. Past
    /// `max_failures`, the session fails; a chunk outside its range fails it at once
    /// ([`PeerMisbehaved::OutsideRange`]).
    pub fn finish_chunk<'b>(&mut self, bytes: &'b [u8]) -> Result<Verified<'b>, FinishError> {
        let Some(front) = self.pull.in_flight.front().copied() else {
            return Err(FinishError::ApiMisuse(ApiMisuse::NoChunkToFinish));
        };
        if !front.is_complete() || front.total_len != u32::try_from(bytes.len()).ok() {
            return Err(FinishError::ApiMisuse(ApiMisuse::NoChunkToFinish));
        }
        let result = match front.request {
            Request::Chunk(want) => {
                self.pull.in_flight.pop_front();
                self.finish_wanted(want, bytes)
            }
            Request::Range(range) => self.finish_in_range(range, bytes),
            // No piece is taken for a listing (see `on_piece`).
            Request::Ids(_) => return Err(FinishError::ApiMisuse(ApiMisuse::NoChunkToFinish)),
        };
        if result.is_ok() {
            // Synced once the store says so ([`chunk_stored`](Self::chunk_stored)).
            self.progress.bytes_transferred += bytes.len() as u64;
            self.pull.unanswered = self.pull.unanswered.saturating_add(1);
        }
        self.check_completion();
        result
    }

    /// Checks a chunk asked for by hash (already out of flight). A hash names no origin, so
    /// the origin is checked here, once the header is read: one this side does not take
    /// from the peer is refused ([`FailReason::NotPermitted`]). (A chunk sent for a range
    /// is of the range's origin, and the walk asks only for origins this side takes.)
    fn finish_wanted<'b>(
        &mut self,
        want: Want,
        bytes: &'b [u8],
    ) -> Result<Verified<'b>, FinishError> {
        let result = Verified::new(want.hash, bytes)
            .map_err(FinishError::HashMismatch)
            .and_then(|verified| {
                let view = ChunkView::validated(bytes).map_err(FinishError::Invalid)?;
                if self.taken.covers(view.origin()) {
                    Ok(verified)
                } else {
                    Err(FinishError::NotPermitted)
                }
            });
        // Room in `retry` and `failures`: they hold at most what was in flight.
        match result {
            Ok(_) => {}
            Err(FinishError::Invalid(_)) => self.failed(want.hash, FailReason::Invalid),
            Err(FinishError::NotPermitted) => self.failed(want.hash, FailReason::NotPermitted),
            Err(_) => {
                let attempts = want.attempts + 1;
                if attempts < self.config.max_attempts {
                    let _ = self.pull.retry.push_back(Want {
                        hash: want.hash,
                        attempts,
                    });
                    let _ = self.count_failure();
                } else {
                    self.failed(want.hash, FailReason::HashMismatch);
                }
            }
        }
        result
    }

    /// Checks a chunk sent for `range` (still in flight: more may follow).
    fn finish_in_range<'b>(
        &mut self,
        range: KeyRange,
        bytes: &'b [u8],
    ) -> Result<Verified<'b>, FinishError> {
        if let Some(front) = self.pull.in_flight.front_mut() {
            // Whatever it is, the peer did send a chunk for the range.
            front.chunks = front.chunks.saturating_add(1);
        }
        let verified = Verified::hash_of(bytes);
        let view = match ChunkView::validated(bytes) {
            Ok(view) => view,
            Err(e) => {
                self.reset_front();
                self.failed(verified.id(), FailReason::Invalid);
                return Err(FinishError::Invalid(e));
            }
        };
        if !range.contains(view.origin(), view.first_seq()) {
            self.fail(Error::Peer(PeerMisbehaved::OutsideRange));
            return Err(FinishError::OutsideRange);
        }
        if let Some(InFlight {
            request: Request::Range(r),
            ..
        }) = self.pull.in_flight.front_mut()
        {
            // The next chunk starts where this one ends, or later.
            r.lo = view.end_seq();
        }
        self.reset_front();
        self.progress.total_chunks += 1;
        Ok(verified)
    }

    /// The chunk of the range in flight is over: the next one starts afresh.
    fn reset_front(&mut self) {
        if let Some(front) = self.pull.in_flight.front_mut() {
            front.total_len = None;
            front.received = 0;
        }
    }

    /// Reports a chunk as failed and counts it.
    fn failed(&mut self, hash: ChunkHash, reason: FailReason) {
        // Room: what failed was in flight (see `window_full`); a range that sends several
        // invalid chunks in a row may find the queue full before the adapter reads it,
        // and then only the count grows.
        let _ = self.pull.failures.push_back(Failure { hash, reason });
        let _ = self.count_failure();
    }

    /// Tells the session what the store did with a chunk [`finish_chunk`](Self::finish_chunk)
    /// verified: it counts as synced once kept; a fork counts as failed (and towards
    /// `max_failures`). The fork is not reported again as
    /// [`Event::ChunkFailed`](super::Event::ChunkFailed): the adapter, which got the
    /// store's answer, knows.
    pub fn chunk_stored(&mut self, stored: Stored) {
        self.answered();
        match stored {
            Stored::Kept => self.progress.synced_chunks += 1,
            Stored::Fork => {
                let _ = self.count_failure();
            }
        }
    }

    /// Refuses a chunk [`finish_chunk`](Self::finish_chunk) verified that must not be
    /// stored after all (on a secure link, its signature does not hold): reported with
    /// [`Event::ChunkFailed`](super::Event::ChunkFailed) and counted as failed.
    pub fn chunk_refused(&mut self, hash: ChunkHash, reason: FailReason) {
        self.answered();
        self.failed(hash, reason);
    }

    /// Counts a chunk the adapter refused after checking it itself (its signature, for a
    /// conduit that defers the checks): it counts as failed and towards `max_failures`,
    /// and is not reported as [`Event::ChunkFailed`](super::Event::ChunkFailed), as the
    /// adapter knows.
    pub fn chunk_check_failed(&mut self) {
        self.answered();
        let _ = self.count_failure();
    }

    /// One verified chunk is answered for: stored, or refused after all.
    fn answered(&mut self) {
        self.pull.unanswered = self.pull.unanswered.saturating_sub(1);
        self.store_waits = 0;
    }

    /// Counts a failed chunk; past `max_failures` the session fails.
    pub(super) fn count_failure(&mut self) -> Result<(), Error> {
        self.progress.failed_chunks += 1;
        if self.progress.failed_chunks > u64::from(self.config.max_failures) {
            let max = self.config.max_failures;
            return Err(self.fail(Error::Peer(PeerMisbehaved::TooManyFailures { max })));
        }
        Ok(())
    }

    /// The range of this node's store the walk needs summarised next, if any. Ranges of
    /// origins this side does not take are passed over first, without a question.
    pub(super) fn own_summary_needed(&mut self) -> Option<KeyRange> {
        if !matches!(self.phase, Phase::Open) {
            return None;
        }
        loop {
            let walk = self.pull.walk.as_mut()?;
            let range = walk.next_own()?;
            if self.taken.covers(range.origin) {
                return Some(range);
            }
            walk.pass();
            self.check_completion();
        }
    }

    /// Gives the walk this node's summary of the range it asked for.
    pub(super) fn resolve_own(&mut self, summary: &crate::recon::Summary, runs: Option<usize>) {
        let runs = runs.and_then(|n| self.runs.get(..n));
        if let Some(walk) = &mut self.pull.walk {
            walk.resolve(summary, runs);
        }
        self.check_completion();
    }

    /// Asks for these chunks by hash, in a session that does not reconcile
    /// (`pull: false`) or whose reconciliation is over. Returns how many were queued (none
    /// otherwise): the queue holds `RANGES` hashes, so the rest must be fed as it drains,
    /// before `poll_transmit` finds the queue empty and sends `Done`: the
    /// [`Conduit`](crate::conduit::Conduit) does so ([`fetch`](crate::conduit::Conduit::fetch)).
    pub fn want(&mut self, ids: &[ChunkHash]) -> usize {
        if self.pull.done_sent || matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            return 0;
        }
        let room = if self.pull.walk.as_ref().is_none_or(Walk::is_done) {
            R - self.pull.want.len()
        } else {
            0
        };
        for id in &ids[..min(room, ids.len())] {
            // Room was computed above.
            let _ = self.pull.want.push_back(Want {
                hash: *id,
                attempts: 0,
            });
            self.progress.total_chunks += 1;
        }
        min(room, ids.len())
    }

    /// Whether no further request may go out now.
    fn window_full(&self, peer: &Hello) -> bool {
        let window = min(
            min(
                usize::from(self.config.window),
                usize::from(peer.max_requests),
            ),
            REQ,
        );
        // Failures wait in a queue bounded by `REQ` until the adapter reads them, so the
        // two together never exceed it.
        self.pull.in_flight.len() >= window
            || self.pull.in_flight.len() + self.pull.failures.len() >= REQ
    }

    /// Claims the ranges wanted next through `claim` (the node's
    /// [`ClaimTable`](crate::claims::ClaimTable), shared with its other sessions); sets
    /// aside each range another session is fetching, to ask this node's store about it
    /// again after [`CLAIM_RETRY`]. With no room to set one aside, it is fetched anyway.
    ///
    /// Only when a range request is what the session sends next (a request fits the
    /// window, and no chunk asked for by hash goes first): the node's table is not
    /// consulted on every frame while the window is full.
    pub(crate) fn claim_wanted(&mut self, now: Instant, claim: &mut dyn FnMut(&KeyRange) -> bool) {
        let next_is_range = self
            .peer
            .as_ref()
            .is_some_and(|peer| !self.window_full(peer))
            && self.pull.retry.is_empty()
            && self.pull.want.is_empty()
            // A listing fetches no chunk: it claims nothing.
            && !self.config.list;
        let Some(walk) = self.pull.walk.as_mut().filter(|_| next_is_range) else {
            return;
        };
        while let Some(range) = walk.peek_wanted() {
            if self.pull.deferred.is_full() || claim(&range) {
                return;
            }
            walk.next_wanted();
            // Room checked above.
            let _ = self.pull.deferred.push_back((range, now + CLAIM_RETRY));
        }
    }

    /// Hands the ranges set aside whose wait is over back to the walk, which asks the
    /// store what it holds of them now (the session's next [`question`](Self::question)).
    pub(crate) fn recheck_deferred(&mut self, now: Instant) {
        let Some(walk) = self.pull.walk.as_mut() else {
            return;
        };
        while let Some(&(range, at)) = self.pull.deferred.front() {
            if at > now {
                return;
            }
            self.pull.deferred.pop_front();
            // A range wanted is never empty.
            let _ = walk.on_announce(range);
        }
    }

    /// A range request that ended since the last call, for the node to drop its claim.
    pub(crate) fn take_finished_range(&mut self) -> Option<KeyRange> {
        self.pull.finished.pop_front()
    }

    /// When the first range set aside is checked again.
    pub(super) fn deferred_until(&self) -> Option<Instant> {
        self.pull.deferred.front().map(|&(_, at)| at)
    }

    pub(super) fn pull_finished(&self) -> bool {
        self.pull
            .walk
            .as_ref()
            .is_none_or(|w| w.is_done() && !w.has_wanted())
            && self.pull.want.is_empty()
            && self.pull.retry.is_empty()
            && self.pull.in_flight.is_empty()
            && self.pull.deferred.is_empty()
    }
}
