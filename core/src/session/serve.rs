//! The serving side of a session: answering the peer's queries from the summaries this
//! node's store makes, and its requests, in order, with pieces of the chunks the store
//! reads (chunks named by hash, or the chunks of a range one after another).

use core::cmp::min;

use heapless::Deque;

use super::{ApiMisuse, Asked, Error, PeerMisbehaved, PieceOut, Session, Transmit};
use crate::chunk::Span;
#[cfg(feature = "lz4-compress")]
use crate::compress::Codec;
use crate::error::InsufficientSize;
use crate::event::NodeId;
use crate::hash::ChunkHash;
use crate::recon::{Answer, KeyRange, Query, ReconError, Run, Summary};
use crate::scope::MAX_SCOPE_ORIGINS;
use crate::wire::{self, Capabilities, Hello, Message};

/// The smallest chunk piece sent when the throttle's window budget is smaller than a frame.
const MIN_PIECE: usize = 64;

/// The serving side: the peer's query being answered, its requests, and the chunk being
/// sent.
#[derive(Clone, Debug)]
pub(super) struct Serve<const R: usize, const REQ: usize> {
    pub(super) answer: Answering<R>,
    /// Requests behind the one being served.
    pub(super) queue: Deque<Request, REQ>,
    pub(super) serving: Option<Serving>,
    /// Whether the peer sent `Done`.
    pub(super) peer_done: bool,
    /// The chunks the adapter lists for the `Ids` frame being made.
    #[cfg(feature = "alloc")]
    pub(super) list: alloc::vec::Vec<(Span, ChunkHash)>,
    /// For a peer shown only some origins: those of them found in the store so far, for
    /// the origins answer being built.
    pub(super) found: heapless::Vec<NodeId, MAX_SCOPE_ORIGINS>,
}

impl<const R: usize, const REQ: usize> Serve<R, REQ> {
    pub(super) const fn new() -> Self {
        Self {
            answer: Answering::Idle,
            queue: Deque::new(),
            serving: None,
            peer_done: false,
            #[cfg(feature = "alloc")]
            list: alloc::vec::Vec::new(),
            found: heapless::Vec::new(),
        }
    }
}

/// Where this side is in answering the peer's query.
#[derive(Clone, Debug)]
pub(super) enum Answering<const R: usize> {
    /// No query outstanding.
    Idle,
    /// Asking the store, entry by entry; the entries are kept in the second half of the
    /// transmit buffer.
    Building(Answer<R>),
    /// The answer of `len` bytes of entries is to be sent.
    Ready { len: usize, last: bool },
    /// This side does not serve: an answer of `empty` empty entries is to be sent.
    Blind { empty: usize },
}

/// What follows a chunk once it is sent.
#[derive(Clone, Copy, Debug)]
pub(super) enum Then {
    /// The next request.
    Next,
    /// The next chunk of its range, in what remains of it.
    Range(KeyRange),
    /// The end of its range: the chunk had the range's last key.
    End,
}

/// A request of the peer.
#[derive(Clone, Copy, Debug)]
pub(super) enum Request {
    Chunk(ChunkHash),
    /// The chunks of a range; `lo` moves past each chunk served.
    Range(KeyRange),
    /// The hashes of the chunks of a range; `lo` moves past each page sent.
    Ids(KeyRange),
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Serving {
    /// Requested by the peer; the adapter has not answered yet.
    Pending(Request),
    /// Being sent; `then` is what follows once it is.
    Sending {
        total_len: u32,
        offset: u32,
        then: Then,
        /// A chunk asked for by hash whose origin the peer may not see unless checked:
        /// its hash, until its first piece goes out.
        unchecked: Option<ChunkHash>,
    },
    /// The adapter does not have it; `NotFound` is to be sent.
    NotFound(ChunkHash),
    /// The range holds no more; `RangeEnd` is to be sent.
    RangeEnd,
    /// The adapter listed `n` chunks of the range (in the list buffer); an `Ids` frame of
    /// them is to be sent.
    Listed { range: KeyRange, n: usize },
}

impl<const R: usize, const REQ: usize, const K: usize> Session<R, REQ, K> {
    /// The peer sends a query.
    pub(super) fn on_query(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if !matches!(self.serve.answer, Answering::Idle) {
            return Err(Error::Peer(PeerMisbehaved::Unexpected(
                "a query before the previous answer",
            )));
        }
        let bad = |why| Error::Peer(PeerMisbehaved::Recon(ReconError::BadQuery(why)));
        let query = Query::read(bytes).map_err(|_| bad("malformed"))?;
        let room = self.answer_room() / crate::recon::codec::MAX_ENTRY;
        let answer =
            Answer::new(&query, room, K).map_err(|e| Error::Peer(PeerMisbehaved::Recon(e)))?;
        let shown = match query {
            Query::Origins { .. } => self.config.serve && !self.shown.is_nothing(),
            Query::Ranges { origin, .. } => self.config.serve && self.shown.covers(origin),
        };
        self.serve.answer = if shown {
            self.serve.found.clear();
            let mut answer = answer;
            // Shown only some origins, none of them after the cursor: none to list, and
            // nothing to ask the store.
            if let Some((after, _)) = answer.origins_to_list()
                && !self.shown.is_all()
                && self.shown.first_only_after(after).is_none()
            {
                let _ = answer.origins_listed(&[], true);
            }
            Answering::Building(answer)
        } else {
            // Nothing is shown (this side does not serve, or not this origin): the answer
            // an empty store gives, without asking the adapter (no origins; an empty
            // entry per range).
            let empty = match query {
                Query::Origins { .. } => 0,
                Query::Ranges { ranges, .. } => ranges.iter().count(),
            };
            Answering::Blind { empty }
        };
        self.answer_progressed();
        Ok(())
    }

    /// Bytes of entries an answer may hold: what fits the peer's frames and this side's
    /// buffer.
    fn answer_room(&self) -> usize {
        let peer_frame = self.peer.map_or(wire::MIN_FRAME, |p| p.max_frame) as usize;
        min(
            peer_frame.saturating_sub(wire::RECON_OVERHEAD),
            Self::frame_area() - wire::RECON_OVERHEAD,
        )
    }

    /// The peer asks for a chunk or a range.
    pub(super) fn on_request(&mut self, request: Request) -> Result<(), Error> {
        if self.serve.peer_done {
            return Err(Error::Peer(PeerMisbehaved::Unexpected(
                "a request after Done",
            )));
        }
        if let Request::Range(r) | Request::Ids(r) = request
            && r.lo >= r.hi
        {
            return Err(Error::Peer(PeerMisbehaved::Unexpected("an empty range")));
        }
        if matches!(request, Request::Ids(_)) && !Capabilities::ALL.contains(Capabilities::LIST) {
            return Err(Error::Peer(PeerMisbehaved::Unexpected(
                "GetIds, though this side did not announce LIST",
            )));
        }
        let outstanding = self.serve.queue.len() + usize::from(self.serve.serving.is_some());
        if outstanding >= self.announced_requests() {
            return Err(Error::Peer(PeerMisbehaved::TooManyRequests));
        }
        match self.serve.serving {
            None => self.serve.serving = Some(self.requested(request)),
            Some(_) => {
                // Room was checked above against a limit no larger than `REQ`.
                let _ = self.serve.queue.push_back(request);
            }
        }
        Ok(())
    }

    /// The peer has everything it wanted.
    pub(super) fn on_done(&mut self) -> Result<(), Error> {
        let unexpected = |what| Err(Error::Peer(PeerMisbehaved::Unexpected(what)));
        if self.serve.peer_done {
            return unexpected("a second Done");
        }
        if self.serve.serving.is_some() || !matches!(self.serve.answer, Answering::Idle) {
            return unexpected("Done with requests outstanding");
        }
        self.serve.peer_done = true;
        // A live session ends when either side ends it.
        self.close();
        Ok(())
    }

    /// What the answer being built needs of the store next, if anything.
    pub(super) fn answer_needs(&self) -> Option<super::Question> {
        let Answering::Building(answer) = &self.serve.answer else {
            return None;
        };
        if let Some((after, _)) = answer.origins_to_list() {
            if self.shown.is_all() {
                return Some(super::Question::Origins { after });
            }
            // Shown only some origins: whether the store holds the next of them, asked as
            // the first origin from it on.
            let next = self.shown.first_only_after(after)?;
            let before = next.0.checked_sub(1).map(NodeId);
            return Some(super::Question::Origins { after: before });
        }
        answer
            .next_range()
            .map(|(range, _)| super::Question::Summary(range))
    }

    /// How many origins the answer being built lists at most.
    pub(super) fn origins_limit(&self) -> usize {
        match &self.serve.answer {
            // One at a time for a peer shown only some origins.
            Answering::Building(answer) if !self.shown.is_all() => {
                answer.origins_to_list().map_or(0, |(_, n)| n.min(1))
            }
            Answering::Building(answer) => answer.origins_to_list().map_or(0, |(_, n)| n),
            _ => 0,
        }
    }

    /// The most runs the entry being written may carry.
    pub(super) fn answer_runs(&self) -> usize {
        match &self.serve.answer {
            Answering::Building(answer) => answer.next_range().map_or(0, |(_, n)| n),
            _ => 0,
        }
    }

    /// The store listed its first `n` origins in the origins buffer (ascending, after the
    /// cursor asked), and `last` if none follow them.
    ///
    /// A peer shown only some origins ([`Scope::Only`](crate::scope::Scope::Only)) learns
    /// nothing of the others, not even how many there are or where: the store is asked
    /// about each shown origin in turn (whether it holds it), the answer lists those it
    /// holds, and it is the last when no shown origin follows.
    pub(super) fn answer_origins(&mut self, n: usize, last: bool) -> Result<(), ApiMisuse> {
        let origins = self.origins.get_mut(..n).ok_or(ApiMisuse::BadListing)?;
        let Answering::Building(answer) = &mut self.serve.answer else {
            return Err(ApiMisuse::NotAsked);
        };
        let Some((after, limit)) = answer.origins_to_list() else {
            return Err(ApiMisuse::NotAsked);
        };
        if !self.shown.is_all() {
            let Some(probed) = self.shown.first_only_after(after) else {
                return Err(ApiMisuse::NotAsked);
            };
            // The store's first origin from `probed` on.
            let first = origins.first().copied();
            if origins.len() > 1 || first.is_some_and(|o| o < probed) || (first.is_none() && !last)
            {
                return Err(ApiMisuse::BadListing);
            }
            if first == Some(probed) {
                // At most one a shown origin: room.
                let _ = self.serve.found.push(probed);
            }
            let more = self.shown.first_only_after(Some(probed)).is_some();
            if self.serve.found.len() < limit && more {
                answer.list_after(probed);
            } else if !answer.origins_listed(&self.serve.found, !more) {
                return Err(ApiMisuse::BadListing);
            }
            self.answer_progressed();
            return Ok(());
        }
        let ascending = origins.windows(2).all(|w| w[0] < w[1])
            && origins
                .first()
                .is_none_or(|first| after.is_none_or(|a| *first > a));
        if !ascending || (origins.is_empty() && !last) {
            return Err(ApiMisuse::BadListing);
        }
        if !answer.origins_listed(origins, last) {
            return Err(ApiMisuse::BadListing);
        }
        self.answer_progressed();
        Ok(())
    }

    /// The store's summary of the range the answer being built asked about; the entry is
    /// written into the second half of `tx`, the transmit buffer.
    pub(super) fn answer_summary(
        &mut self,
        summary: &Summary,
        runs: Option<&[Run]>,
        tx: &mut [u8],
    ) -> Result<(), ApiMisuse> {
        let room = self.answer_room();
        let Answering::Building(answer) = &mut self.serve.answer else {
            return Err(ApiMisuse::NotAsked);
        };
        let area = tx
            .get_mut(Self::frame_area()..)
            .and_then(|area| area.get_mut(..room))
            .ok_or(ApiMisuse::NotAsked)?;
        answer
            .summarized(area, summary, runs)
            .map_err(|_| ApiMisuse::BadListing)?;
        self.answer_progressed();
        Ok(())
    }

    fn answer_progressed(&mut self) {
        if let Answering::Building(answer) = &self.serve.answer
            && let Some((len, last)) = answer.finish()
        {
            self.serve.answer = Answering::Ready { len, last };
        }
    }

    /// The answer frame, if one is ready: written into `frame` from the entries in `area`.
    pub(super) fn next_answer_frame(
        &mut self,
        frame: &mut [u8],
        area: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        let (len, last) = match self.serve.answer {
            Answering::Ready { len, last } => (len, last),
            Answering::Blind { empty } => {
                let zeros = area
                    .get_mut(..empty)
                    .ok_or(InsufficientSize { required: empty })?;
                zeros.fill(0);
                (empty, true)
            }
            Answering::Idle | Answering::Building(_) => return Ok(None),
        };
        let entries = area.get(..len).ok_or(InsufficientSize { required: len })?;
        let t = Self::emit(&Message::Answer { last, entries }, frame)?;
        self.serve.answer = Answering::Idle;
        Ok(Some(t))
    }

    /// The request being served, if the adapter must answer for it.
    pub(super) fn serving_needs(&self) -> Option<super::Question> {
        match self.serve.serving {
            Some(Serving::Pending(Request::Chunk(hash))) => Some(super::Question::Chunk(hash)),
            Some(Serving::Pending(Request::Range(range))) => Some(super::Question::First(range)),
            Some(Serving::Pending(Request::Ids(range))) => Some(super::Question::List(range)),
            _ => None,
        }
    }

    /// The chunks the adapter listed for the `Ids` frame being made (none without
    /// `alloc`, which alone lists).
    fn listed_chunks(&self) -> &[(Span, ChunkHash)] {
        #[cfg(feature = "alloc")]
        {
            &self.serve.list
        }
        #[cfg(not(feature = "alloc"))]
        {
            &[]
        }
    }

    /// How many chunks an `Ids` frame to the peer lists at most.
    fn ids_page(&self) -> usize {
        let frame = self.peer.map_or(wire::MIN_FRAME, |p| p.max_frame);
        min(wire::ids_capacity(frame), wire::MAX_IDS)
    }

    /// The buffer for the chunks [`Question::List`](super::Question::List) asks for: as
    /// many as one `Ids` frame to the peer holds (empty when nothing was asked, and
    /// without the `alloc` feature, which alone lists).
    pub fn list_buffer(&mut self) -> &mut [(Span, ChunkHash)] {
        #[cfg(feature = "alloc")]
        {
            let n = match (self.asked, self.serve.serving) {
                (Some(Asked::Serving), Some(Serving::Pending(Request::Ids(_)))) => self.ids_page(),
                _ => 0,
            };
            let empty = (Span::default(), ChunkHash::from_bytes([0; 32]));
            self.serve.list.resize(n, empty);
            &mut self.serve.list
        }
        #[cfg(not(feature = "alloc"))]
        {
            &mut []
        }
    }

    /// Answers [`Question::List`](super::Question::List): the store's first `n` chunks of
    /// the range, ascending, are in [`list_buffer`](Self::list_buffer) (`n` less than the
    /// buffer's length: there are no more).
    pub fn listed(&mut self, n: usize) -> Result<(), ApiMisuse> {
        let (Some(Asked::Serving), Some(Serving::Pending(Request::Ids(range)))) =
            (self.asked, self.serve.serving)
        else {
            return Err(ApiMisuse::NotAsked);
        };
        let mut after = range.lo;
        for (span, _) in self.list_buffer().get(..n).ok_or(ApiMisuse::BadListing)? {
            if !range.contains(span.origin, span.first_seq) || span.first_seq < after {
                return Err(ApiMisuse::OutsideRange);
            }
            after = span.first_seq + 1;
        }
        self.asked = None;
        self.serve.serving = Some(Serving::Listed { range, n });
        Ok(())
    }

    /// Answers [`Question::Chunk`](super::Question::Chunk): the adapter has the chunk, `len`
    /// bytes long, and will supply the bytes each [`Transmit::piece`] names until the chunk
    /// is sent.
    pub fn serve_chunk(&mut self, len: usize) -> Result<(), ApiMisuse> {
        let total_len = chunk_len(len)?;
        match (self.asked, self.serve.serving) {
            (Some(Asked::Serving), Some(Serving::Pending(Request::Chunk(hash)))) => {
                self.asked = None;
                let unchecked = (!self.shown.is_all()).then_some(hash);
                self.start_sending(total_len, Then::Next, unchecked);
                Ok(())
            }
            _ => Err(ApiMisuse::NotAsked),
        }
    }

    /// Answers [`Question::First`](super::Question::First): the first chunk the store holds
    /// in the range has this span and is `len` bytes long; the adapter supplies its bytes
    /// as for [`serve_chunk`](Self::serve_chunk).
    pub fn serve_in_range(&mut self, span: &Span, len: usize) -> Result<(), ApiMisuse> {
        let total_len = chunk_len(len)?;
        let (Some(Asked::Serving), Some(Serving::Pending(Request::Range(range)))) =
            (self.asked, self.serve.serving)
        else {
            return Err(ApiMisuse::NotAsked);
        };
        if !range.contains(span.origin, span.first_seq) {
            return Err(ApiMisuse::OutsideRange);
        }
        self.asked = None;
        // What follows starts past this chunk's key.
        let rest = KeyRange {
            lo: span.first_seq + 1,
            ..range
        };
        let then = if rest.lo < rest.hi {
            Then::Range(rest)
        } else {
            Then::End
        };
        self.start_sending(total_len, then, None);
        Ok(())
    }

    fn start_sending(&mut self, total_len: u32, then: Then, unchecked: Option<ChunkHash>) {
        self.serve.serving = Some(Serving::Sending {
            total_len,
            offset: 0,
            then,
            unchecked,
        });
    }

    /// Answers [`Question::Chunk`](super::Question::Chunk) or
    /// [`Question::First`](super::Question::First): the store has no such chunk (for a
    /// range: none more in it).
    pub fn chunk_not_found(&mut self) -> Result<(), ApiMisuse> {
        if self.asked != Some(Asked::Serving) {
            return Err(ApiMisuse::NotAsked);
        }
        self.asked = None;
        match self.serve.serving {
            Some(Serving::Pending(Request::Chunk(hash))) => {
                self.serve.serving = Some(Serving::NotFound(hash));
                Ok(())
            }
            Some(Serving::Pending(Request::Range(_))) => {
                self.serve.serving = Some(Serving::RangeEnd);
                Ok(())
            }
            _ => Err(ApiMisuse::NotAsked),
        }
    }

    pub(super) fn next_serving_frame(
        &mut self,
        peer: &Hello,
        buf: &mut [u8],
        serving: &[u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        match self.serve.serving {
            Some(Serving::Listed { range, n }) => {
                let t = self.ids_frame(range, n, buf)?;
                Ok(Some(t))
            }
            Some(Serving::NotFound(hash)) => {
                let t = Self::emit(&Message::NotFound { hash }, buf)?;
                self.next_served();
                Ok(Some(t))
            }
            Some(Serving::RangeEnd) => {
                let t = Self::emit(&Message::RangeEnd, buf)?;
                self.next_served();
                Ok(Some(t))
            }
            Some(Serving::Sending {
                total_len,
                offset,
                then,
                unchecked: Some(hash),
            }) => {
                // Sent only if its origin is shown (the whole chunk is needed to know:
                // without it, nothing is).
                let shown = Span::of(serving).is_some_and(|s| self.shown.covers(s.origin));
                self.serve.serving = Some(if shown {
                    Serving::Sending {
                        total_len,
                        offset,
                        then,
                        unchecked: None,
                    }
                } else {
                    Serving::NotFound(hash)
                });
                self.next_serving_frame(peer, buf, serving)
            }
            Some(Serving::Sending {
                total_len,
                offset,
                then,
                unchecked: None,
            }) => {
                // A piece fits the peer's frames and, when throttled, one window's budget, so
                // that frames keep flowing and the peer's idle timer is fed.
                let budget = self
                    .throttle
                    .config()
                    .window_budget()
                    .map_or(usize::MAX, |b| b as usize);
                let cap = min(
                    Message::piece_capacity(peer.max_frame),
                    budget.max(MIN_PIECE),
                );
                let len = min(cap, (total_len - offset) as usize) as u32;
                let t = match self.compressed_piece(peer, (total_len, offset, len), buf, serving) {
                    Some(t) => t,
                    None => Transmit {
                        len: wire::encode_put_head(total_len, offset, len as usize, buf)?.len(),
                        piece: Some(PieceOut { offset, len }),
                    },
                };
                self.serve.serving = if offset + len < total_len {
                    Some(Serving::Sending {
                        total_len,
                        offset: offset + len,
                        then,
                        unchecked: None,
                    })
                } else {
                    match then {
                        Then::Next => self.next_served_request(),
                        Then::Range(rest) => Some(Serving::Pending(Request::Range(rest))),
                        Then::End => Some(Serving::RangeEnd),
                    }
                };
                Ok(Some(t))
            }
            Some(Serving::Pending(_)) | None => Ok(None),
        }
    }

    /// The piece `offset..offset + len` of the chunk being served, `serving` (all of it,
    /// or nothing if the adapter did not give it), as a whole compressed frame in `buf`:
    /// if the peer takes compressed pieces, [`Config::compress`](super::Config::compress)
    /// says so for this link, and compressing saves enough. Without the `lz4-compress`
    /// feature, never.
    #[cfg_attr(not(feature = "lz4-compress"), allow(clippy::unused_self))]
    fn compressed_piece(
        &self,
        peer: &Hello,
        (total_len, offset, len): (u32, u32, u32),
        buf: &mut [u8],
        serving: &[u8],
    ) -> Option<Transmit> {
        #[cfg(feature = "lz4-compress")]
        {
            let codec = self.codec()?;
            if serving.len() != total_len as usize {
                return None;
            }
            let raw = serving.get(offset as usize..(offset + len) as usize)?;
            let max = peer.max_frame as usize;
            let n = wire::encode_put_compressed(codec, (total_len, offset), raw, buf, max)?;
            Some(Transmit {
                len: n,
                piece: None,
            })
        }
        #[cfg(not(feature = "lz4-compress"))]
        {
            let _ = (peer, total_len, offset, len, buf, serving);
            None
        }
    }

    /// The codec the pieces this side serves travel in, if any: the one
    /// [`Config::codec`](super::Config::codec) names or the best both sides speak, when
    /// [`Config::compress`](super::Config::compress) says to compress on this link.
    #[cfg(feature = "lz4-compress")]
    pub(crate) fn codec(&self) -> Option<Codec> {
        let wanted = match self.config.compress {
            super::Compress::Never => false,
            super::Compress::WhenLimited => !self.throttle.config().is_unlimited(),
            super::Compress::Always => true,
        };
        let takes = self.peer.as_ref().filter(|_| wanted)?.capabilities;
        let usable = |c: &Codec| c.compresses() && takes.contains(c.capability());
        match self.config.codec {
            Some(codec) => Some(codec).filter(usable),
            None => Codec::PREFERENCE.into_iter().find(usable),
        }
    }

    /// The `Ids` frame of the `n` chunks listed of `range`, and what follows it: the rest
    /// of the range, or the next request.
    fn ids_frame(
        &mut self,
        range: KeyRange,
        n: usize,
        buf: &mut [u8],
    ) -> Result<Transmit, InsufficientSize> {
        // As many as fit the buffer go now; the rest are listed again for the next.
        let capacity = wire::ids_capacity(u32::try_from(buf.len()).unwrap_or(u32::MAX));
        let fit = min(n, capacity);
        let more = fit < n || n == self.ids_page();
        let sent = self.listed_chunks().get(..fit).unwrap_or(&[]);
        let next = match sent.last() {
            Some((span, _)) if more => span.first_seq + 1,
            None if more => {
                return Err(InsufficientSize {
                    required: wire::ids_frame_len(1),
                });
            }
            _ => range.hi,
        };
        let ids = sent.iter().map(|(_, id)| id);
        let frame_len = wire::encode_ids(next, ids, buf)?.len();
        self.serve.serving = if next < range.hi {
            Some(Serving::Pending(Request::Ids(KeyRange {
                lo: next,
                ..range
            })))
        } else {
            self.next_served_request()
        };
        Ok(Transmit {
            len: frame_len,
            piece: None,
        })
    }

    pub(super) fn next_served(&mut self) {
        self.serve.serving = self.next_served_request();
    }

    fn next_served_request(&mut self) -> Option<Serving> {
        self.serve
            .queue
            .pop_front()
            .map(|request| self.requested(request))
    }

    /// How a request starts out: awaiting the adapter's answer, or, when this side does
    /// not serve (or not the range's origin), answered as by an empty store without
    /// asking the adapter. (The origin of a chunk asked for by hash is checked once the
    /// adapter has read it: see [`next_serving_frame`](Self::next_serving_frame).)
    pub(super) fn requested(&self, request: Request) -> Serving {
        let shown = match request {
            Request::Chunk(_) => self.config.serve,
            Request::Range(r) | Request::Ids(r) => self.config.serve && self.shown.covers(r.origin),
        };
        match (shown, request) {
            (true, _) => Serving::Pending(request),
            (false, Request::Chunk(hash)) => Serving::NotFound(hash),
            (false, Request::Range(_)) => Serving::RangeEnd,
            (false, Request::Ids(range)) => Serving::Listed { range, n: 0 },
        }
    }

    /// The most requests this node accepts outstanding: its `Hello::max_requests`.
    pub(super) fn announced_requests(&self) -> usize {
        min(REQ, usize::from(u16::MAX))
    }
}

/// A chunk length as the wire carries it: 1 to `u32::MAX` bytes.
fn chunk_len(len: usize) -> Result<u32, ApiMisuse> {
    u32::try_from(len)
        .ok()
        .filter(|&n| n > 0)
        .ok_or(ApiMisuse::BadChunkLength)
}
