//! The `handshake` target: the fuzzed node on a secure link (Noise XX, then sealed
//! records), either with an honest peer whose bytes reach it through a wire the input
//! tampers with, or with a peer whose every byte is the input.
//!
//! The header:
//!
//! | byte | bits |
//! |---|---|
//! | 0 | 0 the fuzzed node initiates, 1-2 its `max_frame` ([`FRAMES`]), 3 the peer may not pull, 4 the node takes nothing from the peer, 5 the peer refuses the node, 6 raw: the rest is the peer's bytes, 7 the peer's frames are the smallest |
//! | 1-3 | how received bytes are split into reads and when time passes, as bytes 5-7 of a `session_input` header ([`Reads`]) |
//!
//! Without raw, the rest is edits of the peer's bytes, four bytes each: a kind, a
//! two-byte offset into what the peer sends (little-endian) and a value. Kind 0 flips
//! the bits of `value | 1` of the byte there, 1 drops it, 2 inserts `value` before it,
//! 3 cuts the wire there (the node then sees the end of its input).
//!
//! Besides the checks of [`Node`], a run panics if the node is asked to authorize a key
//! that is not the peer's, or if a wire nobody touched, with time passing only when both
//! sides wait, does not end in the sync the access rules say: both sides done and every chunk of the peer's stored, the node's
//! refusal, or the peer's.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use chunk_sync_core::ChunkHash;
use chunk_sync_core::conduit::{Buffers, Conduit, Limits};
use chunk_sync_core::secure::{Access, Handshake, Keypair, Role, Scope};
use chunk_sync_core::session::{Config, Error, LinkError};
use chunk_sync_core::store::ChunkStore;
use chunk_sync_core::time::Instant;
use chunk_sync_core::wire::ErrorCode;

use crate::chunks::{self, Store};
use crate::node::{Inbox, Node, Pumped};
use crate::setup::{FRAMES, Reads};

/// Bytes of the header.
pub const HEADER: usize = 4;

/// Bytes of one edit of the wire.
pub const EDIT: usize = 4;

/// The fuzzed node's key pair, the peer's, and that of an origin whose chunks the peer
/// relays (both trust its key), made once.
#[must_use]
pub fn keys() -> &'static (Keypair, Keypair, Keypair) {
    static KEYS: OnceLock<(Keypair, Keypair, Keypair)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            Keypair::from_secret([0x4e; 32]),
            Keypair::from_secret([0x50; 32]),
            Keypair::from_secret([0x52; 32]),
        )
    })
}

/// The fuzzed node's chunks and the peer's, made once.
fn stores() -> &'static (Store, Store) {
    static STORES: OnceLock<(Store, Store)> = OnceLock::new();
    STORES.get_or_init(|| {
        let (node, peer, relayed) = keys();
        (
            chunks::store_of(&chunks::secure_held_chunks(node, peer)),
            chunks::store_of(&chunks::secure_offered_chunks(peer, relayed)),
        )
    })
}

/// The ids of the peer's chunks the fuzzed node lacks.
fn lacking() -> &'static BTreeSet<ChunkHash> {
    static LACKING: OnceLock<BTreeSet<ChunkHash>> = OnceLock::new();
    LACKING.get_or_init(|| {
        let (node, peer, relayed) = keys();
        let held: BTreeSet<ChunkHash> = chunks::secure_held_chunks(node, peer)
            .iter()
            .map(|c| ChunkHash::of(c))
            .collect();
        chunks::secure_offered_chunks(peer, relayed)
            .iter()
            .map(|c| ChunkHash::of(c))
            .filter(|id| !held.contains(id))
            .collect()
    })
}

/// A decoded header.
#[derive(Clone, Copy, Debug)]
pub struct SecureSetup {
    /// The fuzzed node initiates the handshake.
    pub initiates: bool,
    /// The fuzzed node's frame size.
    pub max_frame: u32,
    /// The peer's frame size.
    pub peer_frame: u32,
    /// What the fuzzed node lets the peer do.
    pub access: Access,
    /// The peer refuses the fuzzed node's key.
    pub refused: bool,
    /// The rest of the input is the peer's bytes, not edits of an honest peer's.
    pub raw: bool,
    /// How the fuzzed node's reads are split.
    pub reads: Reads,
}

impl SecureSetup {
    /// Decodes a header; every header is a valid setup.
    #[must_use]
    pub fn parse(h: &[u8; HEADER]) -> Self {
        let bit = |n: u8| h[0] & (1 << n) != 0;
        let max_frame = FRAMES[usize::from((h[0] >> 1) & 3)];
        Self {
            initiates: bit(0),
            max_frame,
            peer_frame: if bit(7) { FRAMES[0] } else { max_frame },
            access: Access {
                pull: if bit(3) { Scope::Nothing } else { Scope::All },
                push: if bit(4) { Scope::Nothing } else { Scope::All },
            },
            refused: bit(5),
            raw: bit(6),
            reads: Reads {
                max: u32::from(h[1]) * 8,
                tick: h[2],
                rng: u32::from_le_bytes([h[3], h[2], h[1], 0xa5]),
                left: 0,
            },
        }
    }
}

/// One change the wire makes to the peer's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    Flip(u8),
    Drop,
    Insert(u8),
    Cut,
}

/// The wire from the peer to the fuzzed node, applying edits at offsets of what the peer
/// sends.
#[derive(Debug)]
struct Wire {
    /// The edits by offset, in input order for one offset.
    edits: Vec<(usize, Edit)>,
    /// The next edit to apply.
    next: usize,
    /// Bytes the peer sent so far.
    sent: usize,
    /// Whether an edit changed what the node received.
    touched: bool,
    /// Whether the wire is cut.
    cut: bool,
}

impl Wire {
    fn new(data: &[u8]) -> Self {
        let mut edits: Vec<(usize, Edit)> = data
            .chunks_exact(EDIT)
            .map(|e| {
                let at = usize::from(u16::from_le_bytes([e[1], e[2]]));
                let edit = match e[0] % 4 {
                    0 => Edit::Flip(e[3] | 1),
                    1 => Edit::Drop,
                    2 => Edit::Insert(e[3]),
                    _ => Edit::Cut,
                };
                (at, edit)
            })
            .collect();
        edits.sort_by_key(|&(at, _)| at);
        Self {
            edits,
            next: 0,
            sent: 0,
            touched: false,
            cut: false,
        }
    }

    /// Passes `bytes` the peer sent on, edited, into `out`, and records them in `log`.
    fn pass(&mut self, bytes: &[u8], out: &mut Inbox, log: &mut Vec<u8>) {
        let mut edited = Vec::with_capacity(bytes.len());
        for &b in bytes {
            let mut byte = Some(b);
            while let Some(&(at, edit)) = self.edits.get(self.next) {
                if at != self.sent {
                    break;
                }
                self.next += 1;
                self.touched |= !self.cut;
                match edit {
                    Edit::Flip(mask) => byte = byte.map(|b| b ^ mask),
                    Edit::Drop => byte = None,
                    Edit::Insert(v) => edited.push(v),
                    Edit::Cut => self.cut = true,
                }
            }
            self.sent += 1;
            if let Some(b) = byte.filter(|_| !self.cut) {
                edited.push(b);
            }
        }
        out.push(&edited);
        log.extend_from_slice(&edited);
    }
}

/// A node of `keys` in `role` over `store`, letting its peer do `access`.
fn node(
    keys: &Keypair,
    role: Role,
    max_frame: u32,
    store: Store,
    access: Access,
) -> Node<'static, Vec<u8>> {
    let config = Config {
        max_frame,
        ..Config::new(keys.node_id())
    };
    let buffers = Buffers {
        receive: Vec::new(),
        transmit: Vec::new(),
        reassembly: Vec::new(),
    };
    // A fixed ephemeral key per role: the peer's bytes are the same on every run, so the
    // input's offsets keep their meaning.
    let entropy = [role as u8 + 0x10; 32];
    let handshake = Handshake::new(keys, role, entropy);
    let conduit = Conduit::new_secure(config, Instant::ZERO, buffers, Limits::new(), handshake)
        .expect("a valid secure configuration");
    let mut node = Node::new(conduit, store, None, false);
    node.secure = true;
    node.access = access;
    node
}

/// How a run ended: the fuzzed node's outcome and the peer's, if they closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecureReport {
    /// The fuzzed node's outcome.
    pub node: Option<Result<(), Error>>,
    /// The honest peer's (never, with a raw peer).
    pub peer: Option<Result<(), Error>>,
    /// Chunks the fuzzed node stored.
    pub stored: usize,
    /// Whether the wire changed a byte of what the node received.
    pub touched: bool,
    /// Every byte the node received.
    pub received: Vec<u8>,
}

/// Runs the fuzzed node on `data`: a [`SecureSetup`] header, then the wire's edits or the
/// raw peer's bytes. `None` if `data` is shorter than the header.
///
/// # Panics
/// If the node does what it must not: see the module's documentation.
#[must_use]
pub fn run_secure(data: &[u8]) -> Option<SecureReport> {
    let (head, rest) = data.split_first_chunk::<HEADER>()?;
    let setup = SecureSetup::parse(head);
    let (node_keys, peer_keys, relayed) = keys();
    let (role, peer_role) = if setup.initiates {
        (Role::Initiator, Role::Responder)
    } else {
        (Role::Responder, Role::Initiator)
    };
    let mut n = node(
        node_keys,
        role,
        setup.max_frame,
        stores().0.clone(),
        setup.access,
    );
    n.max_polls = 200_000;
    n.origin_keys = vec![*relayed.public()];
    let peer_access = if setup.refused {
        Access::NONE
    } else {
        Access::FULL
    };
    let mut p = (!setup.raw).then(|| {
        node(
            peer_keys,
            peer_role,
            setup.peer_frame,
            stores().1.clone(),
            peer_access,
        )
    });
    if let Some(p) = p.as_mut() {
        p.origin_keys = vec![*relayed.public()];
    }
    let mut wire = Wire::new(if setup.raw { &[] } else { rest });
    let (mut to_node, mut to_peer) = (Inbox::default(), Inbox::default());
    if setup.raw {
        to_node.push(rest);
    }
    let (mut reads, mut peer_reads) = (setup.reads, Reads::ALL);
    let mut eof = false;
    let mut received = Vec::new();
    if setup.raw {
        received.extend_from_slice(rest);
    }
    for _ in 0..10_000 {
        let before = (to_node.taken(), to_peer.taken());
        let mut out = Vec::new();
        let node_waits = n.pump(&mut to_node, Some(&mut out), &mut reads);
        to_peer.push(&out);
        let mut sent = !out.is_empty();
        let mut peer_waits = Pumped::Closed;
        if let Some(p) = p.as_mut() {
            out.clear();
            peer_waits = p.pump(&mut to_peer, Some(&mut out), &mut peer_reads);
            wire.pass(&out, &mut to_node, &mut received);
            sent |= !out.is_empty();
        }
        if matches!(node_waits, Pumped::OutOfSteps) || matches!(peer_waits, Pumped::OutOfSteps) {
            break;
        }
        let after = (to_node.taken(), to_peer.taken());
        if n.closed.is_some() && p.as_ref().is_none_or(|p| p.closed.is_some()) {
            break;
        }
        if sent || before != after {
            continue;
        }
        // Nothing moved: the end of the input, then time.
        let no_more_input = setup.raw || wire.cut || p.as_ref().is_some_and(|p| p.closed.is_some());
        if no_more_input && to_node.is_empty() && !eof && n.closed.is_none() {
            eof = true;
            n.conduit.eof();
            continue;
        }
        let deadline = |w: Pumped| match w {
            Pumped::Waiting(wait) => wait.deadline,
            _ => None,
        };
        let Some(next) = [deadline(node_waits), deadline(peer_waits)]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        let now = n.now.max(next);
        n.now = now;
        n.conduit.handle_timeout(now);
        if let Some(p) = p.as_mut() {
            p.now = now;
            p.conduit.handle_timeout(now);
        }
    }
    for key in &n.asked {
        assert_eq!(key, peer_keys.public(), "a key the handshake did not prove");
    }
    // Time that jumps before reads may pass the handshake's or the session's timeouts.
    if let Some(p) = p.as_ref()
        && !wire.touched
        && setup.reads.tick == 0
    {
        check_untouched(&setup, &mut n, p);
    }
    Some(SecureReport {
        node: n.closed,
        peer: p.as_ref().and_then(|p| p.closed),
        stored: n.stored,
        touched: wire.touched,
        received,
    })
}

/// A wire nobody touched ends as the access rules say.
fn check_untouched(setup: &SecureSetup, n: &mut Node<'_, Vec<u8>>, p: &Node<'_, Vec<u8>>) {
    if setup.refused {
        // Whichever side decides first ends it; if the node allowed the peer, it is told.
        let told = Error::Remote(ErrorCode::REFUSED);
        if setup.access != Access::NONE {
            assert_eq!(n.closed, Some(Err(told)), "the peer refused the node");
        }
        assert!(
            matches!(n.closed, Some(Err(_))),
            "a refused node ends in error"
        );
        assert_eq!(n.stored, 0);
    } else if setup.access == Access::NONE {
        let refused = Error::Link(LinkError::Refused);
        assert_eq!(n.closed, Some(Err(refused)), "the node refused the peer");
        assert_eq!(p.stored, 0, "a refused peer gets nothing");
    } else {
        assert_eq!(n.closed, Some(Ok(())), "an untouched sync completes");
        assert_eq!(p.closed, Some(Ok(())), "an untouched sync completes");
        let expected = if setup.access.push.is_all() {
            lacking().len()
        } else {
            0
        };
        assert_eq!(
            n.stored, expected,
            "the node stores what it lacks, if it takes any"
        );
        if setup.access.pull.is_nothing() {
            assert_eq!(p.stored, 0, "a peer that may not pull gets nothing");
        }
        for id in lacking() {
            let mut buf = vec![0u8; 16384];
            let held = n.store.read_into(id, &mut buf).expect("a readable store");
            assert_eq!(held.is_some(), setup.access.push.is_all(), "chunk {id:?}");
            if let Some(len) = held {
                assert_eq!(ChunkHash::of(&buf[..len]), *id);
            }
        }
    }
}
