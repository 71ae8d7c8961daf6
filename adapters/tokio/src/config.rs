//! A node's settings: [`NodeConfig`] and the original document's [`ThrottleConfig`].

use std::time::Duration;

use chunk_sync_core::NodeId;
pub use chunk_sync_core::compress::Codec;
pub use chunk_sync_core::session::Compress;
use chunk_sync_core::session::Config;

/// A bandwidth limit, as in the original document: `max_bytes_per_sec` measured over
/// `window_duration`; `0` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// The long-run limit in bytes per second; `0` means unlimited.
    pub max_bytes_per_sec: u64,
    /// The accounting window; one window's budget may go out at once.
    pub window_duration: Duration,
}

impl ThrottleConfig {
    /// No limit.
    pub const UNLIMITED: Self = Self {
        max_bytes_per_sec: 0,
        window_duration: Duration::from_secs(1),
    };

    pub(crate) fn to_core(self) -> chunk_sync_core::ThrottleConfig {
        chunk_sync_core::ThrottleConfig {
            max_bytes_per_sec: self.max_bytes_per_sec,
            window_duration: core_duration(self.window_duration),
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self::UNLIMITED
    }
}

/// A node's settings.
#[derive(Clone, Copy, Debug)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The largest frame this node accepts (default 256 KiB).
    pub max_frame: u32,
    /// The largest chunk this node accepts (default 16 MiB).
    pub max_chunk_len: u32,
    /// Chunk requests in flight per session (default 32).
    pub window: u16,
    /// How long a peer may stay silent (default 30 s).
    pub idle_timeout: Duration,
    /// The cap on everything this node sends, all sessions together.
    pub throttle: ThrottleConfig,
    /// The cap on what this node sends to any one peer.
    pub peer_throttle: ThrottleConfig,
    /// The most bytes per second this node wants to receive from any one peer (`0`: no
    /// limit; default 0). Each peer is told in `Hello` and sends no faster than the lower
    /// of this and its own limits; it must be fast enough for the idle timeout (at
    /// least 256 bytes a quarter of it: 35 bytes/s with the default 30 s).
    pub receive_rate: u64,
    /// Whether a session accepted from a peer also fetches what the peer has, so that
    /// any client that reaches the listener can push chunks into this node (default
    /// `false`: the node only serves its clients).
    pub accept_pushes: bool,
    /// How long a new connection has to send its `Hello` (default 10 s).
    pub handshake_timeout: Duration,
    /// If set, every session ends after this long, whatever the peer does (default: no
    /// limit).
    pub max_duration: Option<Duration>,
    /// Chunks that may fail in one session (not found, wrong bytes, invalid) before it
    /// ends (default 1,024): the bound on what a session keeps of a peer that lists
    /// chunks it cannot deliver.
    pub max_failures: u32,
    /// Connections a listener keeps at once (default 512). When all are taken, a new one
    /// takes the place of one that has not finished its handshake (the oldest of the
    /// address with the most of them), or is closed at once if every one has. An IPv6
    /// address counts by its /64 prefix, which one host commonly holds whole.
    pub max_connections: usize,
    /// Of those, the most from one IP address (an IPv6 /64 counting as one; default
    /// `None`: as many as
    /// `max_connections`, no bound of its own). Past it, a new connection from that
    /// address takes the place of one of its own still in its handshake, or is closed at
    /// once: one address cannot hold every place. Many clients behind one address (a NAT,
    /// a host's own loopback) share it.
    pub max_connections_per_address: Option<usize>,
    /// Bytes of received chunks the node holds in memory before they are written to its
    /// store, all sessions together (default 512 MiB): past it, no session reads more
    /// until writes catch up. Each session holds at most 32 MiB of them besides.
    pub max_unwritten: usize,
    /// Whether sessions accepted by this node's listeners stay open after the first
    /// reconciliation when the peer asks (live replication; default `false`). Sessions
    /// with the peers of [`Node::add_peer`](crate::Node::add_peer) are always live;
    /// [`Node::sync_with`](crate::Node::sync_with) and the other one-shot calls never.
    pub live: bool,
    /// The node's own log ([`Node::append`](crate::Node::append)): each chunk covers a
    /// range of this many sequence numbers, or less if sealed early (default 100).
    pub events_per_chunk: u32,
    /// The own log's open chunk is sealed once its events take this many bytes (default
    /// 64 KiB; at most [`MAX_OWN_CHUNK`](crate::MAX_OWN_CHUNK)).
    pub seal_bytes: usize,
    /// The own log's open chunk is sealed once its first event is this old (default
    /// 100 ms): what an event appended waits, at most, before it can travel. `None`: only
    /// the range and the size seal a chunk (and [`Node::flush`](crate::Node::flush)).
    pub seal_delay: Option<Duration>,
    /// When the chunks this node serves travel compressed (to peers that take a codec;
    /// default [`Compress::WhenLimited`]: when the session is rate-limited, by this node's
    /// throttles or by the peer's `receive_rate`).
    pub compress: Compress,
    /// The codec compressed chunks travel in; `None` (the default): the best the peer
    /// takes, zstd before LZ4 (a device takes LZ4 at most).
    pub codec: Option<Codec>,
}

impl NodeConfig {
    /// Defaults for a host service.
    #[must_use]
    pub const fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            max_frame: 256 << 10,
            max_chunk_len: 16 << 20,
            window: 32,
            idle_timeout: Duration::from_secs(30),
            throttle: ThrottleConfig::UNLIMITED,
            peer_throttle: ThrottleConfig::UNLIMITED,
            receive_rate: 0,
            accept_pushes: false,
            handshake_timeout: Duration::from_secs(10),
            max_duration: None,
            max_failures: chunk_sync_core::session::DEFAULT_MAX_FAILURES,
            max_connections: 512,
            max_connections_per_address: None,
            max_unwritten: 512 << 20,
            live: false,
            events_per_chunk: 100,
            seal_bytes: 64 << 10,
            seal_delay: Some(Duration::from_millis(100)),
            compress: Compress::WhenLimited,
            codec: None,
        }
    }

    pub(crate) fn session_config(&self, pull: bool, serve: bool) -> Config {
        Config {
            max_frame: self.max_frame,
            max_chunk_len: self.max_chunk_len,
            window: self.window,
            idle_timeout: core_duration(self.idle_timeout),
            handshake_timeout: core_duration(self.handshake_timeout),
            max_duration: self.max_duration.map(core_duration),
            max_failures: self.max_failures,
            throttle: stricter(self.peer_throttle, self.throttle).to_core(),
            receive_rate: self.receive_rate,
            pull,
            serve,
            live: self.live,
            compress: self.compress,
            codec: self.codec,
            ..Config::new(self.node_id)
        }
    }
}

/// The limit a session gets: the stricter of the per-peer and the node-wide one, so that
/// no frame (no chunk piece) is larger than the node's budget for a window and a peer on
/// a slow node still hears from it within its idle timeout.
fn stricter(peer: ThrottleConfig, node: ThrottleConfig) -> ThrottleConfig {
    match (peer.max_bytes_per_sec, node.max_bytes_per_sec) {
        (_, 0) => peer,
        (0, _) => node,
        (p, n) if p <= n => peer,
        _ => node,
    }
}

impl NodeConfig {
    /// The sealing policy of the node's own log.
    pub(crate) fn seal_policy(&self) -> chunk_sync_core::SealPolicy {
        chunk_sync_core::SealPolicy {
            max_bytes: self.seal_bytes,
            max_delay: self.seal_delay.map(core_duration),
        }
    }
}

pub(crate) fn core_duration(d: Duration) -> chunk_sync_core::Duration {
    chunk_sync_core::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_held_to_the_stricter_of_the_peer_and_node_limits() {
        let rate = |n| ThrottleConfig {
            max_bytes_per_sec: n,
            ..ThrottleConfig::UNLIMITED
        };
        let config = |peer, node| NodeConfig {
            peer_throttle: rate(peer),
            throttle: rate(node),
            ..NodeConfig::new(NodeId(1))
        };
        let limit = |c: NodeConfig| c.session_config(true, true).throttle.max_bytes_per_sec;
        assert_eq!(limit(config(0, 0)), 0);
        assert_eq!(
            limit(config(0, 2_000)),
            2_000,
            "no piece above the node's budget"
        );
        assert_eq!(limit(config(5_000, 0)), 5_000);
        assert_eq!(limit(config(5_000, 2_000)), 2_000);
        assert_eq!(limit(config(1_000, 2_000)), 1_000);
    }
}
