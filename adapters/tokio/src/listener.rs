//! Accepting sessions: a [`Listener`] keeps a bounded number of connections, gives the
//! place of a connection that never finished its handshake to a new one, and backs off
//! when `accept` fails (for example when the process runs out of file descriptors).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::driver::Context;
use crate::error::Error;
use crate::node::{Mode, Node};
use crate::shared::Shared;

/// Removes its connection from the table when the connection's task ends or is aborted.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.connections.closed(self.id);
    }
}

/// How long to wait after a failed `accept`: doubling from 5 ms to 1 s, back to 5 ms after
/// a success, so that a process out of file descriptors does not spin.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    const fn new() -> Self {
        Self { next: Self::MIN }
    }

    fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        wait
    }

    const fn succeeded(&mut self) {
        self.next = Self::MIN;
    }
}

impl Node {
    /// Accepts sessions on `addr` until the returned [`Listener`] is dropped or closed,
    /// serving every peer concurrently from this node's store (and, with
    /// [`NodeConfig::accept_pushes`](crate::NodeConfig::accept_pushes), fetching what they
    /// have). At most [`NodeConfig::max_connections`](crate::NodeConfig::max_connections)
    /// connections are kept; a peer has
    /// [`handshake_timeout`](crate::NodeConfig::handshake_timeout) to send its `Hello`.
    pub async fn listen(&self, addr: impl ToSocketAddrs) -> Result<Listener, Error> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let node = self.clone();
        let accept = tokio::spawn(async move {
            let mut backoff = Backoff::new();
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        let wait = backoff.failed();
                        warn!(error = %e, ?wait, "accept failed");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                };
                backoff.succeeded();
                let Some(id) = node.shared.connections.admit(peer.ip().to_canonical()) else {
                    debug!(%peer, "connection refused: every place is taken");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let registered = Registered {
                    shared: Arc::clone(&node.shared),
                    id,
                };
                let session_node = node.clone();
                let task = tokio::spawn(async move {
                    let _registered = registered;
                    let node = session_node;
                    // A session's state (about 200 KiB) is made only once the peer has
                    // sent something, so a connection that stays silent costs little
                    // while it waits out the handshake timeout.
                    let wait = node.shared.config.handshake_timeout;
                    let mut first = [0u8; 1];
                    if !matches!(timeout(wait, stream.peek(&mut first)).await, Ok(Ok(1..))) {
                        debug!(%peer, "connection sent nothing in time");
                        return;
                    }
                    let mode = Mode {
                        pull: node.shared.config.accept_pushes,
                        serve: true,
                        live: node.shared.config.live,
                        list: false,
                    };
                    let context = Context {
                        conn: Some(id),
                        addr: Some(peer),
                        stop: None,
                        answering: false,
                    };
                    match node.run(stream, mode, Vec::new(), context).await {
                        Ok(report) => info!(
                            %peer,
                            node = %report.peer.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                            sent = report.stats.bytes_sent,
                            received = report.stats.bytes_received,
                            fetched = report.progress.synced_chunks,
                            held = node.shared.store.len().unwrap_or(0),
                            "session with client complete"
                        ),
                        Err(failed) => {
                            let synced = failed.report.progress.synced_chunks;
                            warn!(%peer, error = %failed.error, synced, "session with client ended in error");
                        }
                    }
                });
                node.shared.connections.started(id, task.abort_handle());
            }
        });
        Ok(Listener { local_addr, accept })
    }
}

/// A listening node; dropping it stops accepting (sessions already running go on).
#[derive(Debug)]
pub struct Listener {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Listener {
    /// The address the node listens on.
    #[must_use]
    pub const fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_up_to_a_second_and_reset_on_success() {
        let mut b = Backoff::new();
        let waits: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Backoff::MIN);
    }
}
