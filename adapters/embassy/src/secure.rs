//! Secure sessions on a device (feature `secure`): which peer keys the device lets in,
//! and what each may do. The device's key pair and the entropy of each handshake come
//! from the application ([`Handshake::new`]): from a key provisioned in flash and the
//! chip's random number generator.

use chunk_sync_core::NodeId;

pub use chunk_sync_core::secure::{Access, Handshake, Keypair, OriginSet, PublicKey, Role, Scope};

/// The peer keys a device lets in: each listed key gets its access, every other key
/// `default` ([`Access::NONE`] in [`Peers::only`]). Borrowed, so that the list can live
/// in flash or a `static`. An access names origins one by one ([`Scope::Only`], up to
/// [`MAX_SCOPE_ORIGINS`](chunk_sync_core::scope::MAX_SCOPE_ORIGINS)) or all of them: a
/// gateway that may fetch only the device's own log is
/// `Access { pull: Scope::Only(own), push: Scope::Nothing }`.
///
/// Each listed key is also trusted as an origin ([`origin_key`](Self::origin_key)): the
/// device takes chunks signed by it from any peer that may push. A peer's own chunks are
/// checked against the key its handshake proved, listed or not.
#[derive(Clone, Copy, Debug)]
pub struct Peers<'a> {
    /// Known keys and what each may do.
    pub keys: &'a [(PublicKey, Access)],
    /// The access of every other key.
    pub default: Access,
}

impl<'a> Peers<'a> {
    /// Only the keys listed, each with its access; every other key is refused.
    #[must_use]
    pub const fn only(keys: &'a [(PublicKey, Access)]) -> Self {
        Self {
            keys,
            default: Access::NONE,
        }
    }

    /// What `key` may do.
    #[must_use]
    pub fn access(&self, key: &PublicKey) -> Access {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map_or(self.default, |&(_, access)| access)
    }

    /// The listed key whose node id is `origin`, if any: the key its chunks must be
    /// signed by.
    #[must_use]
    pub fn origin_key(&self, origin: NodeId) -> Option<PublicKey> {
        self.keys
            .iter()
            .map(|(k, _)| *k)
            .find(|k| k.node_id() == origin)
    }
}
