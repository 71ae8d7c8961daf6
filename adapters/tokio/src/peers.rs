//! The peers a node keeps live sessions with ([`Node::add_peer`]): one task per address
//! that connects, runs a live session until it ends, and connects again after a wait that
//! doubles from [`Backoff::MIN`] to [`Backoff::MAX`], each wait drawn at random from its
//! upper half (jitter), so that nodes restarted together do not reconnect in step. A
//! session that stayed up for [`Backoff::STABLE`] starts the waits over.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span, warn};

use crate::driver::Context;
use crate::error::Error;
use crate::events::NodeEvent;
use crate::node::{Mode, Node, connect};

/// The waits between attempts to reach a peer.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    attempts: u64,
    random: RandomState,
}

impl Backoff {
    /// The first wait (at most).
    pub(crate) const MIN: Duration = Duration::from_millis(100);
    /// The longest wait.
    pub(crate) const MAX: Duration = Duration::from_secs(30);
    /// How long a session must have lasted for the waits to start over.
    pub(crate) const STABLE: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self {
            next: Self::MIN,
            attempts: 0,
            random: RandomState::new(),
        }
    }

    /// The wait before the next attempt: between half the current step and all of it.
    pub(crate) fn failed(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(Self::MAX);
        self.attempts += 1;
        // A keyed hash of the attempt's number: random keys per process, no dependency.
        let draw = self.random.hash_one(self.attempts);
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(draw % nanos)
    }

    /// A session got through: the waits start over.
    pub(crate) const fn succeeded(&mut self) {
        self.next = Self::MIN;
    }
}

/// One peer's task and the switch that ends it.
#[derive(Debug)]
struct PeerTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The peers a node keeps connected, by address.
#[derive(Debug, Default)]
pub(crate) struct Peers(Mutex<HashMap<SocketAddr, PeerTask>>);

impl Peers {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, PeerTask>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The addresses kept connected.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.lock().keys().copied().collect();
        addrs.sort_unstable();
        addrs
    }

    /// Ends the peer's session (cleanly, if it is open) and its task; returns the task to
    /// await, or `None` if the address was not kept.
    pub(crate) fn remove(&self, addr: &SocketAddr) -> Option<JoinHandle<()>> {
        let peer = self.lock().remove(addr)?;
        let _ = peer.stop.send(true);
        Some(peer.task)
    }

    /// Ends every peer's session and task; returns the tasks to await.
    pub(crate) fn remove_all(&self) -> Vec<JoinHandle<()>> {
        self.lock()
            .drain()
            .map(|(_, peer)| {
                let _ = peer.stop.send(true);
                peer.task
            })
            .collect()
    }
}

impl Node {
    /// Keeps a live session with the node at `addr` from now on: it connects, reconciles,
    /// then carries the chunks either side stores later as they are stored; when the
    /// session ends (the peer went away, the network failed) it connects again, each wait
    /// between attempts twice the last, from 100 ms to 30 s, with jitter, until
    /// [`remove_peer`](Self::remove_peer) or [`shutdown`](Self::shutdown). Returns `false`
    /// if the address was kept already. What happens shows in [`events`](Self::events).
    ///
    /// Must be called within a tokio runtime.
    pub fn add_peer(&self, addr: SocketAddr) -> bool {
        let mut peers = self.shared.peers.lock();
        if peers.contains_key(&addr) || self.shared.is_closing() {
            return false;
        }
        let (stop, stopped) = watch::channel(false);
        let node = self.clone();
        let span = info_span!("peer", node = %self.node_id(), %addr);
        let task = tokio::spawn(node.keep_connected(addr, stopped).instrument(span));
        peers.insert(addr, PeerTask { stop, task });
        true
    }

    /// Stops keeping `addr` connected: its live session ends cleanly (each side finishes
    /// what it is fetching), and no new one starts. Returns whether the address was kept.
    pub async fn remove_peer(&self, addr: &SocketAddr) -> bool {
        match self.shared.peers.remove(addr) {
            Some(task) => {
                let _ = task.await;
                true
            }
            None => false,
        }
    }

    /// The addresses this node keeps live sessions with, ascending.
    #[must_use]
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared.peers.addrs()
    }

    /// Connects to `addr` and runs live sessions with it, one after another, until told
    /// to stop.
    async fn keep_connected(self, addr: SocketAddr, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        let stopped =
            |stop: &watch::Receiver<bool>, node: &Self| *stop.borrow() || node.shared.is_closing();
        while !stopped(&stop, &self) {
            let connected = tokio::select! {
                c = connect(addr) => c,
                _ = stop.wait_for(|s| *s) => return,
            };
            let error = match connected {
                Ok((stream, _)) => {
                    let context = Context {
                        addr: Some(addr),
                        stop: Some(stop.clone()),
                        ..Context::default()
                    };
                    let started = tokio::time::Instant::now();
                    let result = self.run(stream, Mode::LIVE, Vec::new(), context).await;
                    let error = result.as_ref().err().map(|f| &f.error);
                    if starts_waits_over(started.elapsed(), error) {
                        backoff.succeeded();
                    }
                    match result {
                        Ok(_) => {
                            debug!("live session ended");
                            None
                        }
                        Err(failed) => Some(failed.error.to_string()),
                    }
                }
                Err(e) => Some(e.to_string()),
            };
            if stopped(&stop, &self) {
                return;
            }
            let retry_in = backoff.failed();
            if let Some(error) = error {
                warn!(%error, ?retry_in, "live session with peer failed");
                self.shared.events.send(NodeEvent::ConnectFailed {
                    addr,
                    error,
                    retry_in,
                });
            }
            tokio::select! {
                () = tokio::time::sleep(retry_in) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Whether a live session that lasted `lasted` and ended with `error` starts the waits
/// between attempts over: it stayed up long enough, and it did not end on this node's own
/// store (full, or failing), which would end the next session the same way.
fn starts_waits_over(lasted: Duration, error: Option<&Error>) -> bool {
    lasted >= Backoff::STABLE && !matches!(error, Some(Error::Store(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_up_to_the_cap_and_start_over_after_a_success() {
        let mut b = Backoff::new();
        let mut step = Backoff::MIN;
        for _ in 0..12 {
            let wait = b.failed();
            assert!(
                wait >= step / 2 && wait <= step,
                "{wait:?} for a step of {step:?}"
            );
            step = (step * 2).min(Backoff::MAX);
        }
        assert!(b.failed() >= Backoff::MAX / 2);
        b.succeeded();
        assert!(b.failed() <= Backoff::MIN);
    }

    #[test]
    fn only_a_lasting_session_that_did_not_end_on_the_store_starts_the_waits_over() {
        let long = Backoff::STABLE;
        let short = Backoff::STABLE - Duration::from_millis(1);
        let full = Error::Store(crate::StoreError::msg("the store is full"));
        assert!(starts_waits_over(long, None));
        assert!(starts_waits_over(long, Some(&Error::Closed)));
        assert!(!starts_waits_over(short, None));
        assert!(!starts_waits_over(long, Some(&full)));
    }

    #[test]
    fn two_nodes_do_not_wait_in_step() {
        let (mut a, mut b) = (Backoff::new(), Backoff::new());
        let same = (0..8).filter(|_| a.failed() == b.failed()).count();
        assert!(same < 8);
    }
}
