//! The serving side of a session: answering the peer's manifest requests from pages the
//! adapter lists, and its chunk requests, in order, with pieces of the chunks the adapter
//! reads (or `NotFound`).

use core::cmp::min;

use heapless::{Deque, Vec};

use super::{ApiMisuse, Error, PeerMisbehaved, PieceOut, Session, Transmit};
use crate::error::InsufficientSize;
use crate::hash::ChunkHash;
use crate::manifest::is_sorted_unique;
use crate::wire::{self, Hello, MIN_FRAME, Message};

/// The smallest chunk piece sent when the throttle's window budget is smaller than a frame.
const MIN_PIECE: usize = 64;

/// The serving side: the peer's manifest request and chunk requests, and the chunk being
/// sent.
#[derive(Clone, Debug)]
pub(super) struct Serve<const PAGE: usize, const REQ: usize> {
    pub(super) listing: Listing,
    /// The page of this node's manifest being listed or sent.
    pub(super) page_out: Vec<ChunkHash, PAGE>,
    /// Chunk requests behind the one being served.
    pub(super) queue: Deque<ChunkHash, REQ>,
    pub(super) serving: Option<Serving>,
    /// Whether the peer sent `Done`.
    pub(super) peer_done: bool,
}

impl<const PAGE: usize, const REQ: usize> Serve<PAGE, REQ> {
    pub(super) const fn new() -> Self {
        Self {
            listing: Listing::Idle,
            page_out: Vec::new(),
            queue: Deque::new(),
            serving: None,
            peer_done: false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Serving {
    /// Requested by the peer; the adapter has not answered yet.
    Pending { hash: ChunkHash, reported: bool },
    /// Being sent.
    Sending {
        hash: ChunkHash,
        total_len: u32,
        offset: u32,
    },
    /// The adapter does not have it; `NotFound` is to be sent.
    NotFound { hash: ChunkHash },
}

/// Where this side is in answering the peer's manifest request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Listing {
    /// No request outstanding.
    Idle,
    /// The peer asked for a page; `reported` once the adapter was told.
    Asked {
        after: Option<ChunkHash>,
        limit: usize,
        reported: bool,
    },
    /// The page in `page_out` is to be sent.
    Ready { last: bool },
}

impl<const PAGE: usize, const REQ: usize> Session<PAGE, REQ> {
    /// The peer asks for a page of this node's manifest.
    pub(super) fn on_manifest_request(
        &mut self,
        after: Option<ChunkHash>,
        limit: u32,
    ) -> Result<(), Error> {
        let unexpected = |what| Err(Error::Peer(PeerMisbehaved::Unexpected(what)));
        if !matches!(self.serve.listing, Listing::Idle) {
            return unexpected("a manifest request before the previous page");
        }
        if limit == 0 {
            return unexpected("a manifest request for zero hashes");
        }
        let peer_frame = self.peer.map_or(MIN_FRAME, |p| p.max_frame);
        let limit = min(
            min(limit as usize, PAGE),
            Message::page_capacity(peer_frame),
        );
        self.serve.page_out.clear();
        self.serve.listing = if self.config.serve {
            Listing::Asked {
                after,
                limit,
                reported: false,
            }
        } else {
            // Nothing is shown: an empty last page, without asking the adapter.
            Listing::Ready { last: true }
        };
        Ok(())
    }

    /// The peer asks for a chunk.
    pub(super) fn on_get(&mut self, hash: ChunkHash) -> Result<(), Error> {
        let unexpected = |what| Err(Error::Peer(PeerMisbehaved::Unexpected(what)));
        if self.serve.peer_done {
            return unexpected("a chunk request after Done");
        }
        let outstanding = self.serve.queue.len() + usize::from(self.serve.serving.is_some());
        if outstanding >= self.announced_requests() {
            return Err(Error::Peer(PeerMisbehaved::TooManyRequests));
        }
        match self.serve.serving {
            None => self.serve.serving = Some(self.requested(hash)),
            Some(_) => {
                // Room was checked above against a limit no larger than `REQ`.
                let _ = self.serve.queue.push_back(hash);
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
        if self.serve.serving.is_some() {
            return unexpected("Done with requests outstanding");
        }
        self.serve.peer_done = true;
        Ok(())
    }

    /// The manifest page the peer asked for, to be filled by the adapter without a copy:
    /// the cursor (hashes strictly after it, from the first if `None`) and a buffer of
    /// `limit` hashes. Answer with [`page_listed`](Self::page_listed).
    pub fn page_to_list(&mut self) -> Option<(Option<ChunkHash>, &mut [ChunkHash])> {
        let Listing::Asked { after, limit, .. } = self.serve.listing else {
            return None;
        };
        // `limit <= PAGE` was checked when the request arrived.
        self.serve
            .page_out
            .resize(limit, ChunkHash::from_bytes([0; 32]))
            .ok()?;
        Some((after, &mut self.serve.page_out[..]))
    }

    /// Answers [`Event::ManifestPageNeeded`](super::Event::ManifestPageNeeded) after [`page_to_list`](Self::page_to_list):
    /// the first `n` hashes of its buffer are this node's next hashes, sorted; `last` says
    /// whether none follow.
    pub fn page_listed(&mut self, n: usize, last: bool) -> Result<(), ApiMisuse> {
        let Listing::Asked { after, limit, .. } = self.serve.listing else {
            return Err(ApiMisuse::NoManifestRequest);
        };
        let ids = self.serve.page_out.get(..n).unwrap_or(&[]);
        let after_cursor = match (after, ids.first()) {
            (Some(a), Some(first)) => *first > a,
            _ => true,
        };
        if n > limit || !after_cursor || !is_sorted_unique(ids) || (n == 0 && !last) {
            return Err(ApiMisuse::BadManifestPage);
        }
        self.serve.page_out.truncate(n);
        self.serve.listing = Listing::Ready { last };
        Ok(())
    }

    /// Answers [`Event::ChunkRequested`](super::Event::ChunkRequested): the adapter has the chunk, `len` bytes long, and
    /// will supply the bytes each [`Transmit::piece`] names until the chunk is sent.
    pub fn serve_chunk(&mut self, hash: &ChunkHash, len: usize) -> Result<(), ApiMisuse> {
        let total_len = u32::try_from(len)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(ApiMisuse::BadChunkLength)?;
        match self.serve.serving {
            Some(Serving::Pending { hash: h, .. }) if h == *hash => {
                self.serve.serving = Some(Serving::Sending {
                    hash: h,
                    total_len,
                    offset: 0,
                });
                Ok(())
            }
            _ => Err(ApiMisuse::NotRequested),
        }
    }

    /// Answers [`Event::ChunkRequested`](super::Event::ChunkRequested): the adapter does not have the chunk.
    pub fn chunk_not_found(&mut self, hash: &ChunkHash) -> Result<(), ApiMisuse> {
        match self.serve.serving {
            Some(Serving::Pending { hash: h, .. }) if h == *hash => {
                self.serve.serving = Some(Serving::NotFound { hash: h });
                Ok(())
            }
            _ => Err(ApiMisuse::NotRequested),
        }
    }

    pub(super) fn next_serving_frame(
        &mut self,
        peer: &Hello,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        match self.serve.serving {
            Some(Serving::NotFound { hash }) => {
                let t = Self::emit(&Message::NotFound { hash }, buf)?;
                self.next_served();
                Ok(Some(t))
            }
            Some(Serving::Sending {
                hash,
                total_len,
                offset,
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
                let head = wire::encode_put_head(&hash, total_len, offset, len as usize, buf)?;
                let t = Transmit {
                    len: head.len(),
                    piece: Some(PieceOut { hash, offset, len }),
                };
                if offset + len == total_len {
                    self.next_served();
                } else {
                    self.serve.serving = Some(Serving::Sending {
                        hash,
                        total_len,
                        offset: offset + len,
                    });
                }
                Ok(Some(t))
            }
            Some(Serving::Pending { .. }) | None => Ok(None),
        }
    }

    pub(super) fn next_served(&mut self) {
        self.serve.serving = self
            .serve
            .queue
            .pop_front()
            .map(|hash| self.requested(hash));
    }

    /// How a requested chunk starts out: awaiting the adapter's answer, or, when this side
    /// does not serve, not found without asking the adapter.
    pub(super) const fn requested(&self, hash: ChunkHash) -> Serving {
        if self.config.serve {
            Serving::Pending {
                hash,
                reported: false,
            }
        } else {
            Serving::NotFound { hash }
        }
    }

    /// The most requests this node accepts outstanding: its `Hello::max_requests`.
    pub(super) fn announced_requests(&self) -> usize {
        min(REQ, usize::from(u16::MAX))
    }
}
