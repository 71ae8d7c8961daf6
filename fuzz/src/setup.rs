//! The header of a `session_input` input: how the fuzzed node is configured, what the
//! peer's `Hello` says, how received bytes are split into reads and when time passes.
//!
//! | byte | bits |
//! |---|---|
//! | 0 | 0-1 the node's `max_frame` ([`FRAMES`]), 2 live, 3 no pull, 4 no serve, 5 list, 6 always compress, 7 fixed buffers |
//! | 1 | the peer's capabilities |
//! | 2 | the peer's `max_requests` |
//! | 3 | the peer's `max_ranges` |
//! | 4 | 0-1 the peer's `max_frame` ([`FRAMES`]), 2 the peer's receive rate limited, 3 end of input at the end, 4 close at the end, 5 keep buffers, 6 writes complete late, 7 a window of one request |
//! | 5 | reads: `0` up to the end of a frame (by the length prefixes), else up to 8 × this many bytes |
//! | 6 | the chance, in 256ths, that time passes before a read |
//! | 7 | the seed of the choices of read lengths and times |

use chunk_sync_core::NodeId;
use chunk_sync_core::conduit::Limits;
use chunk_sync_core::session::{Compress, Config};
use chunk_sync_core::time::Duration;
use chunk_sync_core::wire::{self, Capabilities, FRAME_HEADER, Hello, Message, PROTOCOL_VERSION};

/// Bytes of the header.
pub const HEADER: usize = 8;

/// The frame sizes a header chooses from.
pub const FRAMES: [u32; 4] = [256, 1024, 65536, 4096];

/// The fuzzed node's id; the peer is node 2.
pub const NODE: NodeId = NodeId(1);
/// The peer's id.
pub const PEER: NodeId = NodeId(2);

/// The receive rate a peer with bit 2 of byte 4 announces (bytes per second).
pub const PEER_RATE: u64 = 1_000_000;

/// A decoded header.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// The fuzzed node's configuration.
    pub config: Config,
    /// Its conduit's limits.
    pub limits: Limits,
    /// The peer's `Hello`.
    pub peer: Hello,
    /// Buffers of fixed size (slices) rather than vectors.
    pub fixed: bool,
    /// Chunks are stored by taking the conduit's reassembly buffer (vectors only).
    pub keep: bool,
    /// Writes complete only once the conduit waits.
    pub lazy_writes: bool,
    /// Once all input is read, the peer closes its side.
    pub eof_at_end: bool,
    /// Once all input is read, the node closes a live session.
    pub close_at_end: bool,
    /// How reads are split and when time passes.
    pub reads: Reads,
}

impl Setup {
    /// Decodes a header; every header is a valid setup.
    #[must_use]
    pub fn parse(h: &[u8; HEADER]) -> Self {
        let bit = |byte: u8, n: u8| byte & (1 << n) != 0;
        let config = Config {
            max_frame: FRAMES[usize::from(h[0] & 3)],
            live: bit(h[0], 2),
            pull: !bit(h[0], 3),
            serve: !bit(h[0], 4),
            list: bit(h[0], 5),
            compress: if bit(h[0], 6) {
                Compress::Always
            } else {
                Compress::WhenLimited
            },
            window: if bit(h[4], 7) { 1 } else { 8 },
            ..Config::new(NODE)
        };
        let keep = bit(h[4], 5) && !bit(h[0], 7);
        let lazy_writes = bit(h[4], 6);
        let limits = Limits {
            backlog: if lazy_writes { 4096 } else { 0 },
            unstored: if keep { 1 } else { usize::MAX },
            ..Limits::new()
        };
        let peer = Hello {
            protocol: PROTOCOL_VERSION,
            node_id: PEER,
            max_frame: FRAMES[usize::from(h[4] & 3)],
            max_requests: u16::from(h[2]),
            max_ranges: u16::from(h[3]),
            capabilities: Capabilities(u32::from(h[1])),
            max_receive_rate: if bit(h[4], 2) { PEER_RATE } else { 0 },
        };
        Self {
            config,
            limits,
            peer,
            fixed: bit(h[0], 7),
            keep,
            lazy_writes,
            eof_at_end: bit(h[4], 3),
            close_at_end: bit(h[4], 4),
            reads: Reads {
                max: u32::from(h[5]) * 8,
                tick: h[6],
                rng: u32::from_le_bytes([h[7], h[6], h[5], 0x5a]),
                left: 0,
            },
        }
    }

    /// The frame of the peer's `Hello`.
    #[must_use]
    pub fn peer_hello_frame(&self) -> Vec<u8> {
        let message = Message::Hello(self.peer);
        let mut buf = vec![0u8; message.frame_len()];
        let len = wire::encode(&message, &mut buf)
            .expect("room for the frame")
            .len();
        buf.truncate(len);
        buf
    }
}

/// How received bytes are split into reads, and when time passes before one.
#[derive(Clone, Copy, Debug)]
pub struct Reads {
    /// The longest read; `0`: a frame at a time, by the length prefixes.
    pub max: u32,
    /// The chance, in 256ths, that time passes before a read.
    pub tick: u8,
    /// The state of the choices (xorshift).
    pub rng: u32,
    /// Bytes of the frame being read that the conduit has not taken yet.
    pub left: usize,
}

/// How far time jumps when it passes: around the session's timers (a third of the idle
/// timeout, the handshake timeout, the idle timeout).
const JUMPS: [Duration; 6] = [
    Duration::from_millis(1),
    Duration::from_millis(50),
    Duration::from_secs(1),
    Duration::from_secs(11),
    Duration::from_secs(31),
    Duration::from_micros(1),
];

impl Reads {
    /// Every byte there is, in one read; time passes only for deadlines.
    pub const ALL: Self = Self {
        max: u32::MAX,
        tick: 0,
        rng: 1,
        left: 0,
    };

    fn next(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        x
    }

    /// How many of the `pending` bytes the next read offers (at least one if any).
    pub fn len(&mut self, pending: &[u8]) -> usize {
        let n = match self.max {
            0 => {
                if self.left == 0 {
                    self.left = pending
                        .first_chunk::<FRAME_HEADER>()
                        .map_or(pending.len(), |head| {
                            FRAME_HEADER.saturating_add(u32::from_le_bytes(*head) as usize)
                        });
                }
                self.left
            }
            u32::MAX => pending.len(),
            max => 1 + (self.next() % max) as usize,
        };
        n.min(pending.len())
    }

    /// The conduit took `n` bytes of the read.
    pub const fn took(&mut self, n: usize) {
        self.left = self.left.saturating_sub(n);
    }

    /// How far time moves on before the next read, if it does.
    pub fn tick(&mut self) -> Option<Duration> {
        if self.tick == 0 {
            return None;
        }
        let r = self.next();
        ((r & 0xff) < u32::from(self.tick)).then(|| JUMPS[(r >> 8) as usize % JUMPS.len()])
    }
}
