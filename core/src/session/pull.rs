//! The pulling side of a session: walking the peer's manifest page by page, looking each
//! page up, requesting what this node lacks with several requests in flight, reassembling
//! and verifying what arrives, retrying and reporting failures.

use core::cmp::min;

use heapless::{Deque, Vec};

use super::{
    ApiMisuse, Error, FailReason, FinishError, PeerMisbehaved, Phase, Piece, Session, Stored,
    Transmit,
};
use crate::chunk::ChunkView;
use crate::error::InsufficientSize;
use crate::hash::{ChunkHash, Verified};
use crate::wire::{HashList, Hello, Message};

/// The pulling side: the walk over the peer's manifest, and the chunks wanted, in flight
/// and failed.
#[derive(Clone, Debug)]
pub(super) struct Pull<const PAGE: usize, const REQ: usize> {
    pub(super) walk: ManifestWalk,
    /// The last hash of the peer's manifest seen.
    pub(super) cursor: Option<ChunkHash>,
    /// The page of the peer's manifest being looked up.
    pub(super) page: Vec<ChunkHash, PAGE>,
    /// How many hashes of `page` have been looked up.
    pub(super) looked_up: usize,
    /// Chunks to request.
    pub(super) want: Deque<Want, PAGE>,
    /// Chunks to request again after a hash mismatch.
    pub(super) retry: Deque<Want, REQ>,
    pub(super) in_flight: Deque<InFlight, REQ>,
    /// Chunks that failed, until the adapter reads them.
    pub(super) failures: Deque<Failure, REQ>,
    pub(super) done_sent: bool,
    /// Whether `PullComplete` was reported.
    pub(super) reported: bool,
}

impl<const PAGE: usize, const REQ: usize> Pull<PAGE, REQ> {
    /// A pull that walks the peer's manifest, or (`walk: false`) only fetches what it is
    /// asked to.
    pub(super) const fn new(walk: bool) -> Self {
        Self {
            walk: if walk {
                ManifestWalk::NeedPage
            } else {
                ManifestWalk::Done
            },
            cursor: None,
            page: Vec::new(),
            looked_up: 0,
            want: Deque::new(),
            retry: Deque::new(),
            in_flight: Deque::new(),
            failures: Deque::new(),
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

#[derive(Clone, Copy, Debug)]
pub(super) struct InFlight {
    hash: ChunkHash,
    attempts: u8,
    total_len: Option<u32>,
    received: u32,
}

impl InFlight {
    pub(super) fn is_complete(&self) -> bool {
        self.total_len == Some(self.received)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ManifestWalk {
    /// The next page must be asked for (once the wanted hashes are requested).
    NeedPage,
    /// A page was asked for, with this limit.
    Requested(usize),
    /// A page is held for lookups; `reported` once the adapter was told, `last` if it is
    /// the peer's last page.
    Lookups { reported: bool, last: bool },
    /// The last page was looked up.
    Done,
}

impl<const PAGE: usize, const REQ: usize> Session<PAGE, REQ> {
    /// The peer does not have the chunk requested next.
    pub(super) fn on_not_found(&mut self, hash: ChunkHash) -> Result<(), Error> {
        let unexpected = |what| Err(Error::Peer(PeerMisbehaved::Unexpected(what)));
        match self.pull.in_flight.front() {
            Some(f) if f.hash == hash && f.total_len.is_none() => {}
            _ => return unexpected("NotFound for a chunk not requested next"),
        }
        self.pull.in_flight.pop_front();
        // Room: `failures` and `in_flight` share the limit `REQ` (see `next_request`).
        let _ = self.pull.failures.push_back(Failure {
            hash,
            reason: FailReason::NotFound,
        });
        self.count_failure()
    }

    /// The pulling side's next frame: a manifest request, a chunk request, or `Done`.
    pub(super) fn next_pull_frame(
        &mut self,
        peer: &Hello,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        if matches!(self.pull.walk, ManifestWalk::NeedPage)
            && self.pull.want.is_empty()
            && self.pull.retry.is_empty()
        {
            let limit = min(PAGE, Message::page_capacity(self.config.max_frame));
            let request = Message::ManifestRequest {
                after: self.pull.cursor,
                limit: limit as u32,
            };
            let t = Self::emit(&request, buf)?;
            self.pull.walk = ManifestWalk::Requested(limit);
            return Ok(Some(t));
        }
        if let Some(next) = self.next_request(peer) {
            let t = Self::emit(&Message::EventChunkGet { hash: next.hash }, buf)?;
            // Room was checked by `next_request`.
            let _ = self.pull.in_flight.push_back(InFlight {
                hash: next.hash,
                attempts: next.attempts,
                total_len: None,
                received: 0,
            });
            if self.pull.retry.pop_front().is_none() {
                self.pull.want.pop_front();
            }
            return Ok(Some(t));
        }
        if self.pull_finished() && !self.pull.done_sent {
            let t = Self::emit(&Message::Done, buf)?;
            self.pull.done_sent = true;
            return Ok(Some(t));
        }
        Ok(None)
    }

    pub(super) fn on_page(&mut self, ids: HashList<'_>, last: bool) -> Result<(), Error> {
        let ManifestWalk::Requested(limit) = self.pull.walk else {
            return Err(Error::Peer(PeerMisbehaved::Unexpected(
                "a manifest page not asked for",
            )));
        };
        if ids.len() > limit {
            return Err(Error::Peer(PeerMisbehaved::OversizePage));
        }
        if ids.is_empty() && !last {
            return Err(Error::Peer(PeerMisbehaved::EmptyPage));
        }
        self.pull.page.clear();
        for id in ids.iter() {
            let after_previous = match self.pull.page.last().or(self.pull.cursor.as_ref()) {
                Some(prev) => id > *prev,
                None => true,
            };
            if !after_previous {
                self.pull.page.clear();
                return Err(Error::Peer(PeerMisbehaved::UnsortedPage));
            }
            // Cannot fail: `ids.len() <= limit <= PAGE`.
            let _ = self.pull.page.push(id);
        }
        if let Some(end) = self.pull.page.last() {
            self.pull.cursor = Some(*end);
        }
        // An empty page is always the last one (checked above).
        self.pull.walk = if self.pull.page.is_empty() {
            ManifestWalk::Done
        } else {
            ManifestWalk::Lookups {
                reported: false,
                last,
            }
        };
        self.pull.looked_up = 0;
        Ok(())
    }

    pub(super) fn on_piece<'a>(
        &mut self,
        hash: ChunkHash,
        total_len: u32,
        offset: u32,
        data: &'a [u8],
    ) -> Result<Piece<'a>, Error> {
        let max = self.config.max_chunk_len;
        let Some(front) = self.pull.in_flight.front_mut() else {
            return Err(Error::Peer(PeerMisbehaved::UnrequestedChunk));
        };
        if front.hash != hash {
            return Err(Error::Peer(PeerMisbehaved::UnrequestedChunk));
        }
        if total_len > max {
            return Err(Error::Peer(PeerMisbehaved::ChunkTooLarge {
                len: total_len,
                max,
            }));
        }
        let fits = u32::try_from(data.len())
            .ok()
            .and_then(|n| offset.checked_add(n))
            .is_some_and(|end| end <= total_len);
        let consistent = front.total_len.is_none_or(|t| t == total_len);
        if total_len == 0 || data.is_empty() || offset != front.received || !consistent || !fits {
            return Err(Error::Peer(PeerMisbehaved::BadPiece));
        }
        front.total_len = Some(total_len);
        // `fits` checked that this neither overflows nor passes `total_len`.
        front.received = offset + data.len() as u32;
        Ok(Piece {
            hash,
            offset,
            total_len,
            data,
            last: front.is_complete(),
        })
    }

    /// Verifies the chunk whose last piece just arrived, given all of its bytes in order:
    /// its hash, then every rule of the chunk format ([`ChunkView::validate`]: header,
    /// range, events, no private event).
    ///
    /// On success the bytes are [`Verified`] and may be stored. Otherwise nothing may be
    /// stored: a hash mismatch is counted as failed and asked for again, or reported with
    /// [`Event::ChunkFailed`](super::Event::ChunkFailed) once `max_attempts` are used up; bytes that match their hash
    /// but are not a valid chunk are reported at once ([`FailReason::Invalid`]), since no
    /// peer can give other bytes by that name. Past `max_failures`, the session fails.
    pub fn finish_chunk<'b>(&mut self, bytes: &'b [u8]) -> Result<Verified<'b>, FinishError> {
        let Some(front) = self.pull.in_flight.front().copied() else {
            return Err(FinishError::ApiMisuse(ApiMisuse::NoChunkToFinish));
        };
        if !front.is_complete() || front.total_len != u32::try_from(bytes.len()).ok() {
            return Err(FinishError::ApiMisuse(ApiMisuse::NoChunkToFinish));
        }
        self.pull.in_flight.pop_front();
        let result = Verified::new(front.hash, bytes)
            .map_err(FinishError::HashMismatch)
            .and_then(|verified| {
                ChunkView::validated(bytes)
                    .map(|_| verified)
                    .map_err(FinishError::Invalid)
            });
        // Room in `retry` and `failures`: they hold at most what was in flight.
        match result {
            Ok(_) => {
                // Synced once the store says so ([`chunk_stored`](Self::chunk_stored)).
                self.progress.bytes_transferred += bytes.len() as u64;
            }
            Err(FinishError::Invalid(_)) => {
                let _ = self.pull.failures.push_back(Failure {
                    hash: front.hash,
                    reason: FailReason::Invalid,
                });
                let _ = self.count_failure();
            }
            Err(_) => {
                let attempts = front.attempts + 1;
                if attempts < self.config.max_attempts {
                    let _ = self.pull.retry.push_back(Want {
                        hash: front.hash,
                        attempts,
                    });
                } else {
                    let _ = self.pull.failures.push_back(Failure {
                        hash: front.hash,
                        reason: FailReason::HashMismatch,
                    });
                }
                let _ = self.count_failure();
            }
        }
        self.check_completion();
        result
    }

    /// Tells the session what the store did with a chunk [`finish_chunk`](Self::finish_chunk)
    /// verified: it counts as synced once kept; a fork counts as failed (and towards
    /// `max_failures`). The fork is not reported again as [`Event::ChunkFailed`](super::Event::ChunkFailed): the
    /// adapter, which got the store's answer, knows.
    pub fn chunk_stored(&mut self, stored: Stored) {
        match stored {
            Stored::Kept => self.progress.synced_chunks += 1,
            Stored::Fork => {
                let _ = self.count_failure();
            }
        }
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

    /// The next hash of the peer's manifest page to look up, if any awaits one: answer
    /// with [`answer_lookup`](Self::answer_lookup), one hash at a time, so that a store
    /// that waits (flash, a disk) needs no buffer of answers.
    #[must_use]
    pub fn next_lookup(&self) -> Option<ChunkHash> {
        if !matches!(self.pull.walk, ManifestWalk::Lookups { .. })
            || !matches!(self.phase, Phase::Open)
        {
            return None;
        }
        self.pull.page.get(self.pull.looked_up).copied()
    }

    /// Answers the lookup of [`next_lookup`](Self::next_lookup): whether this node already
    /// has the chunk. If not, it is requested. After the page's last hash the walk goes on.
    pub fn answer_lookup(&mut self, have: bool) -> Result<(), ApiMisuse> {
        let id = self.next_lookup().ok_or(ApiMisuse::NoLookupsPending)?;
        if !have {
            // Room: a page is asked for only once `want` is empty, and holds at most
            // `PAGE` hashes.
            let _ = self.pull.want.push_back(Want {
                hash: id,
                attempts: 0,
            });
            self.progress.total_chunks += 1;
        }
        self.pull.looked_up += 1;
        if self.pull.looked_up == self.pull.page.len() {
            self.pull.page.clear();
            self.pull.looked_up = 0;
            self.pull.walk = match self.pull.walk {
                ManifestWalk::Lookups { last: false, .. } => ManifestWalk::NeedPage,
                _ => ManifestWalk::Done,
            };
            self.check_completion();
        }
        Ok(())
    }

    /// Asks for these chunks, in a session that does not walk the peer's manifest
    /// (`pull: false`) or whose walk is over. Returns how many were queued (none otherwise):
    /// the queue holds `PAGE` hashes, so the rest must be fed as it drains, before
    /// `poll_transmit` finds the queue empty and sends `Done`: the
    /// [`Conduit`](crate::conduit::Conduit) does so ([`fetch`](crate::conduit::Conduit::fetch)).
    pub fn want(&mut self, ids: &[ChunkHash]) -> usize {
        if self.pull.done_sent || matches!(self.phase, Phase::Failed(_) | Phase::Completed) {
            return 0;
        }
        let room = if matches!(self.pull.walk, ManifestWalk::Done) {
            PAGE - self.pull.want.len()
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

    /// The next chunk to request, if the window has room.
    pub(super) fn next_request(&self, peer: &Hello) -> Option<Want> {
        let window = min(
            min(
                usize::from(self.config.window),
                usize::from(peer.max_requests),
            ),
            REQ,
        );
        // Failures wait in a queue bounded by `REQ` until the adapter reads them, so the
        // two together never exceed it.
        if self.pull.in_flight.len() >= window
            || self.pull.in_flight.len() + self.pull.failures.len() >= REQ
        {
            return None;
        }
        self.pull.retry.front().or(self.pull.want.front()).copied()
    }

    pub(super) fn pull_finished(&self) -> bool {
        matches!(self.pull.walk, ManifestWalk::Done)
            && self.pull.want.is_empty()
            && self.pull.retry.is_empty()
            && self.pull.in_flight.is_empty()
    }
}
