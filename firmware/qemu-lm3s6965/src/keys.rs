//! The test keys of the device and the host, public in this repository (a real device keeps
//! its own secret provisioned in flash), and the peers the device lets in.

use chunk_sync_core::NodeId;
use chunk_sync_core::secure::{Access, PublicKey};

/// This device's secret key.
pub(crate) const DEVICE_SECRET: [u8; 32] = *b"chunk-sync qemu device test key!";
/// This device's node id: its key's (`PublicKey::node_id`).
pub(crate) const DEVICE: NodeId = NodeId(0xd842_01db_36c4_7a84);
/// The host's public key (`tests/src/bin/firmware-peer.rs`): the one key let in.
pub(crate) const HOST_KEY: PublicKey = PublicKey([
    113, 39, 213, 27, 19, 208, 136, 124, 127, 12, 154, 221, 176, 53, 77, 126, 7, 106, 112, 236,
    162, 175, 123, 34, 143, 127, 123, 91, 211, 186, 202, 245,
]);
/// The peers the device lets in: the host, both ways.
pub(crate) static PEERS: [(PublicKey, Access); 1] = [(HOST_KEY, Access::FULL)];
