//! Secure nodes: the node's keys, and what each peer's key may do.

use std::collections::BTreeMap;

use chunk_sync_core::NodeId;

pub use chunk_sync_core::secure::{Access, Keypair, OriginSet, PublicKey, Scope};

/// What a secure node ([`Node::new`](crate::Node::new)) is and whom it
/// lets in: its key pair (its node id is the key's,
/// [`PublicKey::node_id`]) and the access of each peer key.
#[derive(Clone, Debug)]
pub struct Security {
    /// This node's static key pair.
    pub keys: Keypair,
    /// What each peer key may do.
    pub peers: Permissions,
}

/// Access by peer key: keys listed get theirs, every other key the default
/// ([`Access::NONE`] unless the node is [`open`](Self::open)).
#[derive(Clone, Debug)]
pub struct Permissions {
    default: Access,
    keys: BTreeMap<PublicKey, Access>,
    /// The access of peers this node connected to, whatever their key.
    dialed: Option<Access>,
    /// The keys of origins whose chunks this node takes from any peer that may push.
    origins: BTreeMap<NodeId, PublicKey>,
}

impl Permissions {
    /// No key may sync until [`allow`](Self::allow)ed.
    #[must_use]
    pub const fn deny_all() -> Self {
        Self {
            default: Access::NONE,
            keys: BTreeMap::new(),
            dialed: None,
            origins: BTreeMap::new(),
        }
    }

    /// Any key that completes the handshake may pull and push: an open node, whose peers
    /// are authenticated (each proves its key and node id) but not restricted.
    #[must_use]
    pub const fn open() -> Self {
        Self {
            default: Access::FULL,
            keys: BTreeMap::new(),
            dialed: None,
            origins: BTreeMap::new(),
        }
    }

    /// Gives `key` `access`, whatever the default, and trusts it as an origin
    /// ([`trust_origin`](Self::trust_origin)).
    #[must_use]
    pub fn allow(mut self, key: PublicKey, access: Access) -> Self {
        self.keys.insert(key, access);
        self.trust_origin(key)
    }

    /// Takes chunks of `key`'s log from any peer that may push, not only from `key`
    /// itself: chunks signed by `key`, passed on by relays. A peer's own chunks are
    /// checked against the key its handshake proved, and need no entry here. Chunks of
    /// an origin with no trusted key are not fetched (the report names the origin,
    /// [`SyncReport::untrusted`](crate::SyncReport::untrusted)), and one that comes anyway
    /// is refused
    /// ([`FailReason::UnknownOrigin`](chunk_sync_core::session::FailReason::UnknownOrigin)).
    /// Keys are matched whole: a second key whose node id is taken by a key already
    /// trusted is ignored.
    #[must_use]
    pub fn trust_origin(mut self, key: PublicKey) -> Self {
        self.origins.entry(key.node_id()).or_insert(key);
        self
    }

    /// The key trusted for `origin`'s chunks, if any.
    #[must_use]
    pub fn origin_key(&self, origin: NodeId) -> Option<PublicKey> {
        self.origins.get(&origin).copied()
    }

    /// Gives peers this node connects to (`sync_with`, `pull_from`, `add_peer`…)
    /// `access` whatever their key: the application chose their address. Peers that
    /// connect to this node still need an allowed key.
    #[must_use]
    pub const fn trust_dialed(mut self, access: Access) -> Self {
        self.dialed = Some(access);
        self
    }

    /// What `key` may do, in a session this node accepted (`accepted`) or opened.
    #[must_use]
    pub fn access(&self, key: &PublicKey, accepted: bool) -> Access {
        match (self.dialed, accepted) {
            (Some(access), false) => access,
            _ => self.keys.get(key).copied().unwrap_or(self.default),
        }
    }
}

impl Default for Permissions {
    /// [`deny_all`](Self::deny_all).
    fn default() -> Self {
        Self::deny_all()
    }
}

/// 32 bytes from the operating system's random source: the entropy of one handshake.
pub(crate) fn entropy() -> std::io::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes)
}

/// A new key pair from the operating system's random source.
///
/// # Errors
/// The random source failed.
pub fn generate_keypair() -> std::io::Result<Keypair> {
    entropy().map(Keypair::from_secret)
}
