//! The events the device logs before any session: sensor samples with 16-byte bodies that
//! vary with their sequence number.

use chunk_sync_core::{Event, NodeId, Privacy};

/// The sample of `origin` at `seq`, its body written into `body`.
pub(crate) fn sample(origin: NodeId, seq: u64, privacy: Privacy, body: &mut [u8; 16]) -> Event<'_> {
    body.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (seq as u8).wrapping_mul(7).wrapping_add(i as u8));
    Event {
        origin,
        seq,
        timestamp: 1_000 * seq,
        kind: "adc.sample",
        privacy,
        payload: body,
    }
}
