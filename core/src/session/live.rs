//! Live sessions ([`Config::live`](super::Config::live)): a session that stays open after
//! the first reconciliation. Each side announces the chunks it stores later with `Have`
//! (ranges of one origin, merged while they wait; past `RANGES` of them, one `Resync`),
//! and the other fetches what it lacks of them through its walk
//! ([`Walk::on_announce`](crate::recon::Walk::on_announce)): fetched whole when it holds
//! none of the range, reconciled otherwise, with the same verification, throttle and
//! bounds as the first reconciliation. A side with nothing to send for a third of the
//! idle timeout sends `KeepAlive`, and only frames received keep a live session from
//! timing out, so a silent peer is still found. The session ends when one side calls
//! [`Session::close`]: it finishes what it is fetching and sends `Done`; the peer, on
//! `Done`, does the same.

use super::{Error, PeerMisbehaved, Phase, Session, Transmit};
use crate::error::InsufficientSize;
use crate::recon::{KeyRange, merge_range};
use crate::time::{Duration, Instant};
use crate::wire::{Capabilities, Message};

impl<const RANGES: usize, const REQ: usize, const RUNS: usize> Session<RANGES, REQ, RUNS> {
    /// Whether the session is live: this side asked for it
    /// ([`Config::live`](super::Config::live)) and the peer's `Hello` agreed.
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.config.live && self.peer_announced(Capabilities::LIVE)
    }

    /// Whether the peer's `Hello` (once it came) announced `capability`.
    fn peer_announced(&self, capability: Capabilities) -> bool {
        self.peer
            .is_some_and(|p| p.capabilities.contains(capability))
    }

    /// Announces to the peer, in a live session, that this node has stored chunks of
    /// `range` (sealed here, or received from another node). Ranges of one origin that
    /// overlap or touch are sent as one; past `RANGES` waiting, one `Resync` replaces them
    /// (the peer reconciles again). Returns whether the announcement will go out: not
    /// before the peer's `Hello` (its first reconciliation, which comes after, sees the
    /// chunks), nor in a session that is not live or is ending, nor for an origin the
    /// peer may not see.
    pub fn announce(&mut self, range: KeyRange) -> bool {
        if !self.announcing() || range.lo >= range.hi {
            return false;
        }
        if !self.shown.covers(range.origin) {
            // The peer may not see that origin: nothing to tell it.
            return false;
        }
        // A `Resync` waiting covers it.
        if !self.resync && !merge_range(&mut self.announce, range) {
            self.announce_all();
        }
        true
    }

    /// Whether announcements go out: a live session, open, not ending.
    fn announcing(&self) -> bool {
        self.is_live() && !self.closing && matches!(self.phase, Phase::Open)
    }

    /// Announces, in a live session, that this node stored more than it can name (an
    /// adapter that lost count of what it stored): one `Resync` tells the peer to
    /// reconcile with the whole store again. Returns whether it will go out, as
    /// [`announce`](Self::announce) does.
    pub fn announce_all(&mut self) -> bool {
        if !self.announcing() {
            return false;
        }
        self.announce.clear();
        self.resync = true;
        true
    }

    /// Ends a live session from this side: nothing more is announced, what is being
    /// fetched is finished, then `Done` goes out, and the session completes once the peer
    /// has done the same (a peer's `Done` makes this side close too). A session that is not
    /// live ends by itself; this only stops it waiting.
    pub fn close(&mut self) {
        self.closing = true;
        self.announce.clear();
        self.resync = false;
    }

    /// Whether this side may send `Done` once it has fetched what it wanted.
    pub(super) fn may_finish(&self) -> bool {
        !self.is_live() || self.closing
    }

    /// When the next `KeepAlive` is due: in a live session, and in any session while this
    /// side waits for its store to answer for chunks it verified, to a peer that takes
    /// `KeepAlive` there (the peer, which may have sent everything, then hears from it
    /// before its idle timeout).
    pub(super) fn keepalive_at(&self) -> Option<Instant> {
        let open = matches!(self.phase, Phase::Open) && !self.pull.done_sent;
        let interval = Duration::from_micros(self.config.idle_timeout.as_micros() / 3);
        let waiting = self.pull.unanswered > 0 && self.peer_announced(Capabilities::KEEPALIVE);
        (open && (self.is_live() || waiting)).then(|| self.last_sent + interval)
    }

    /// The next announcement for the peer, if any.
    pub(super) fn next_announce_frame(
        &mut self,
        frame: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        // Nothing waits once the session is ending: `close` dropped it.
        if self.resync {
            let t = Self::emit(&Message::Resync, frame)?;
            self.resync = false;
            return Ok(Some(t));
        }
        let Some(&KeyRange { origin, lo, hi }) = self.announce.first() else {
            return Ok(None);
        };
        let t = Self::emit(&Message::Have { origin, lo, hi }, frame)?;
        self.announce.remove(0);
        Ok(Some(t))
    }

    /// The peer announced chunks of a range (`None`: of everything).
    pub(super) fn on_have(&mut self, range: Option<KeyRange>) -> Result<(), Error> {
        if !self.is_live() {
            return Err(Error::Peer(PeerMisbehaved::Unexpected(
                "Have or Resync in a session that is not live",
            )));
        }
        let Some(walk) = self.pull.walk.as_mut().filter(|_| !self.closing) else {
            // Not pulling, or ending: nothing more is fetched.
            return Ok(());
        };
        match range {
            Some(range) => walk
                .on_announce(range)
                .map_err(|e| Error::Peer(PeerMisbehaved::Recon(e))),
            None => {
                walk.on_resync();
                Ok(())
            }
        }
    }
}
