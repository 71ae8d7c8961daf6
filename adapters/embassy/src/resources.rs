//! The memory a runner works in, owned by the application.

use crate::handle::Shared;

/// Buffers for one [`Runner`](crate::Runner): `RX` bytes of received frames (at least the
/// session's `max_frame`), `TX` bytes for frame headers and control frames (at least
/// `Session::max_transmit_len()`), and `CHUNK` bytes each to reassemble one incoming chunk
/// and to hold the chunk being served (the largest chunk this node sends or accepts).
///
/// Memory: `RX + TX + 2 × CHUNK` bytes and a few dozen for the [`Handle`](crate::Handle)'s
/// state. `const fn new()`, so it can be a `static` (for example in a `StaticCell`).
#[derive(Debug)]
pub struct Resources<const RX: usize, const TX: usize, const CHUNK: usize> {
    pub(crate) rx: [u8; RX],
    pub(crate) tx: [u8; TX],
    pub(crate) incoming: [u8; CHUNK],
    pub(crate) outgoing: [u8; CHUNK],
    pub(crate) shared: Shared,
}

impl<const RX: usize, const TX: usize, const CHUNK: usize> Resources<RX, TX, CHUNK> {
    /// Zeroed buffers.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            rx: [0; RX],
            tx: [0; TX],
            incoming: [0; CHUNK],
            outgoing: [0; CHUNK],
            shared: Shared::new(),
        }
    }
}

impl<const RX: usize, const TX: usize, const CHUNK: usize> Default for Resources<RX, TX, CHUNK> {
    fn default() -> Self {
        Self::new()
    }
}
