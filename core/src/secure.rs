//! Authenticated, encrypted links: who the peer is, and frames only it can read.
//!
//! A [`Conduit`](crate::conduit::Conduit) made with
//! [`new_secure`](crate::conduit::Conduit::new_secure) runs a Noise handshake before
//! anything else, `Noise_XX_25519_ChaChaPoly_SHA256` (the pattern and suite libp2p uses),
//! through the `clatter` crate (no `std`, no allocator):
//!
//! | message | bytes on the wire | what it carries |
//! |---|---:|---|
//! | initiator → responder | 2 + 32 | an ephemeral key |
//! | responder → initiator | 2 + 128 | its ephemeral key, its static key and its identity key (encrypted) |
//! | initiator → responder | 2 + 96 | its static key and its identity key (encrypted) |
//!
//! One and a half round trips, 262 bytes in all; the initiator's first `Hello` travels
//! right behind the third message. Each side then knows the other's static key, proven by
//! the key exchange, and decides what that key may do ([`Access`]). The prologue binds the
//! handshake to this protocol ([`PROLOGUE`]).
//!
//! # Identity
//! A node's identity is an Ed25519 key pair ([`Keypair`]), made from 32 secret bytes the
//! application supplies; its [`PublicKey`] is the 32-byte Ed25519 public key. The same
//! secret gives the X25519 static key of the handshake (the Ed25519 scalar, whose X25519
//! public key is the Montgomery form of the Ed25519 one, as libsodium converts them). Each
//! side sends its identity key inside the handshake, encrypted, and the other side checks
//! that it converts to the static key the key exchange proved: a node proves its identity
//! key with the handshake, and signs its chunks with it ([`Keypair::sign_chunk`]).
//!
//! Its [`NodeId`] is derived from the public key
//! ([`PublicKey::node_id`]): the first 8 bytes, little-endian, of BLAKE3 in key-derivation
//! mode with the context `"chunk-sync 2026 node id"` over the 32-byte key. A `Hello` whose
//! node id is not the one the handshake's key gives ends the session
//! ([`LinkError::NodeIdNotKey`]). A 64-bit id can be
//! collided with about 2^32 work, so permissions are keyed by the whole public key,
//! never by the id.
//!
//! # Records
//! After the handshake every frame travels in a record: a 2-byte little-endian length
//! `n`, then `n` bytes of ChaCha20-Poly1305 ciphertext, the last 16 of which are the tag.
//! A record holds whole frames and is at most the receiver's `max_frame` bytes in all, so
//! a link adds [`RECORD_OVERHEAD`] = 18 bytes per frame and a session's frames are that
//! much smaller than the frame size it announces (a 256-byte frame carries 238 bytes of
//! frame). Nonces count records, so a modified, replayed, reordered, dropped or forged
//! record fails to open ([`LinkError::BadRecord`]).
//! Noise caps a message at 65,535 bytes: a secure link's `max_frame` is at most
//! [`MAX_RECORD`].
//!
//! The core has no random source: the adapter supplies 32 bytes of entropy per session
//! for the ephemeral key ([`Handshake::new`]); they must never be reused.
//!
//! # Signed chunks
//! A chunker given its origin's key pair ([`Chunker::signed_by`](crate::chunk::Chunker::signed_by))
//! signs each chunk ([`crate::chunk`] says what is signed). On a secure link a node stores a
//! chunk only if its origin's key verifies its signature ([`PublicKey::verify_chunk`]):
//! the peer's own chunks against the key the handshake proved, this node's own against its
//! key, and any other origin's against the key the adapter holds for it
//! ([`Action::OriginKey`](crate::conduit::Action::OriginKey)). The whole 32-byte key is
//! what is checked, never the 64-bit id alone, so a relay passes genuine chunks on but
//! cannot forge one, or re-sign one with another key. Signing costs one Ed25519 signature
//! per chunk, verifying one verification per chunk: choose chunks of many events where
//! that matters.

use core::fmt;
use core::str::FromStr;

use clatter::bytearray::{ByteArray, SensitiveByteArray};
use clatter::crypto::cipher::ChaChaPoly;
use clatter::crypto::dh::X25519;
use clatter::crypto::hash::Sha256;
use clatter::handshakepattern::noise_xx;
use clatter::traits::{Dh, Handshaker};
use clatter::transportstate::TransportState;
use clatter::{KeyPair, NqHandshakeCore};

use ed25519_dalek::Signer;

use crate::chunk::{ChunkView, SIGNATURE_LEN};
use crate::event::NodeId;
pub use crate::scope::{OriginSet, Scope};
use crate::session::LinkError;

/// Bytes of a record's length prefix.
pub const RECORD_HEADER: usize = 2;
/// Bytes of a record's authentication tag.
pub const TAG_LEN: usize = 16;
/// What a record adds to each frame it carries.
pub const RECORD_OVERHEAD: usize = RECORD_HEADER + TAG_LEN;
/// The largest record, prefix included, and so the largest `max_frame` of a secure link.
pub const MAX_RECORD: u32 = (RECORD_HEADER + u16::MAX as usize) as u32;
/// The Noise prologue both sides mix in: a handshake for anything else fails.
pub const PROLOGUE: &[u8] = b"chunk-sync/2 Noise_XX_25519_ChaChaPoly_SHA256";
/// The BLAKE3 key-derivation context of node ids.
const NODE_ID_CONTEXT: &str = "chunk-sync 2026 node id";
/// What a chunk's signature signs begins with this, then the 32-byte digest: a signature
/// of a chunk is never a signature of anything else.
const SEAL_DOMAIN: &[u8; 26] = b"chunk-sync 2026 chunk seal";

/// The message a chunk's signature signs, given the BLAKE3 hash of the chunk's bytes
/// before the signature: see [`crate::chunk`].
fn seal_message(digest: &[u8; 32]) -> [u8; 58] {
    let mut message = [0u8; 58];
    message[..26].copy_from_slice(SEAL_DOMAIN);
    message[26..].copy_from_slice(digest);
    message
}

/// Why a chunk's signature does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SealError {
    /// The chunk is not signed.
    Unsigned,
    /// The signature is not the origin's over these bytes (or the key is not a valid
    /// Ed25519 key).
    BadSignature,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unsigned => "the chunk is not signed",
            Self::BadSignature => "the chunk's signature is not its origin's",
        })
    }
}

impl core::error::Error for SealError {}

/// A public key made ready to verify signatures (decompressed once): keep one per origin
/// when checking many chunks (`SealCheck::of`, with `std`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    /// The node id of the key.
    origin: NodeId,
    verifying: ed25519_dalek::VerifyingKey,
}

impl Verifier {
    /// The verifier of `key`, if it is a valid Ed25519 key.
    #[must_use]
    pub fn new(key: PublicKey) -> Option<Self> {
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key.0).ok()?;
        Some(Self {
            origin: key.node_id(),
            verifying,
        })
    }

    /// The origin whose chunks it verifies.
    #[must_use]
    pub const fn origin(&self) -> NodeId {
        self.origin
    }

    /// Checks the signature of the chunk `view`, given the hash of its bytes before the
    /// signature if it is known already (hashing a received chunk finds it).
    pub(crate) fn verify(
        &self,
        view: &ChunkView<'_>,
        digest: Option<[u8; 32]>,
    ) -> Result<(), SealError> {
        let signature = view.signature().ok_or(SealError::Unsigned)?;
        let digest = digest.unwrap_or_else(|| *blake3::hash(view.signed_bytes()).as_bytes());
        self.verify_signature(&digest, signature)
    }

    /// Checks `signature` over a chunk whose bytes before it hash to `digest`.
    fn verify_signature(
        &self,
        digest: &[u8; 32],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), SealError> {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.verifying
            .verify_strict(&seal_message(digest), &signature)
            .map_err(|_| SealError::BadSignature)
    }
}

/// The signature check of a received chunk, left to the adapter by a conduit that defers
/// them ([`Conduit::defer_seal_checks`](crate::conduit::Conduit::defer_seal_checks)): the
/// origin's key (the one the conduit chose), the hash of the chunk's bytes before the
/// signature, and the signature. [`check`](Self::check) may run on any thread; an
/// Ed25519 verification costs far more than receiving and hashing a small chunk.
#[cfg(feature = "std")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealCheck {
    verifier: Verifier,
    digest: [u8; 32],
    signature: [u8; SIGNATURE_LEN],
}

#[cfg(feature = "std")]
impl SealCheck {
    /// The check of a chunk whose bytes before `signature` hash to `digest`.
    pub(crate) const fn new(
        verifier: Verifier,
        digest: [u8; 32],
        signature: [u8; SIGNATURE_LEN],
    ) -> Self {
        Self {
            verifier,
            digest,
            signature,
        }
    }

    /// The check of `chunk`'s signature by the key of `verifier` (the chunk's origin's
    /// key, which the caller chose), to run later or in a batch
    /// ([`check_all`](Self::check_all)).
    ///
    /// # Errors
    /// [`SealError::Unsigned`] if the chunk is not signed (or the bytes are not a chunk).
    pub fn of(verifier: &Verifier, chunk: &crate::hash::Verified<'_>) -> Result<Self, SealError> {
        let view = ChunkView::parse(chunk.bytes()).map_err(|_| SealError::Unsigned)?;
        let signature = view.signature().ok_or(SealError::Unsigned)?;
        let digest = chunk
            .signed_digest()
            .unwrap_or_else(|| *blake3::hash(view.signed_bytes()).as_bytes());
        Ok(Self::new(verifier.clone(), digest, *signature))
    }

    /// Whether the chunk's origin signed it (a strict Ed25519 verification).
    ///
    /// # Errors
    /// [`FailReason::BadSignature`](crate::session::FailReason::BadSignature).
    pub fn check(&self) -> Result<(), crate::session::FailReason> {
        self.verifier
            .verify_signature(&self.digest, &self.signature)
            .map_err(crate::session::FailReason::from)
    }

    /// The verdict of each of `checks`, in order: what [`check`](Self::check) of each
    /// would give, found in batches of up to [`CHECK_BATCH`] signatures, 2 to 3 times
    /// faster a signature than one at a time.
    ///
    /// A batch is ed25519-dalek's `verify_batch`: one equation, the sum of every
    /// signature's verification equation, each weighted by a 128-bit scalar derived from
    /// all of the batch's keys, messages and signatures. Before it, each signature's `R`
    /// must be encoded canonically and not be a point of small order, and each key not be
    /// of small order, as a strict check requires; a batch with one that is not, or that
    /// does not hold, is split in halves, down to strict checks of four or fewer. A bad
    /// signature costs its batch about twice its time and is pinpointed.
    ///
    /// What is left of the difference from strict checks: an `R` that is the sum of the
    /// point the signing equation gives and a point of small order (of order 2, 4 or 8)
    /// passes a batch when the batch's weight for it is a multiple of that order (with
    /// probability 1/2 at most, depending on the rest of the batch), and a strict check
    /// never. Only the holder of the origin's secret key can make such a signature, as it
    /// needs the signing equation: a batch accepts no forgery, and no chunk a relay
    /// changed, but for the 2^-128 chance of the weights.
    #[must_use]
    pub fn check_all(checks: &[&Self]) -> alloc::vec::Vec<Result<(), crate::session::FailReason>> {
        let mut verdicts = alloc::vec::Vec::with_capacity(checks.len());
        for batch in checks.chunks(CHECK_BATCH) {
            Self::check_batch(batch, &mut verdicts);
        }
        verdicts
    }

    /// Appends the verdicts of `checks` to `verdicts`: all at once, or, if they do not
    /// all hold, each half on its own.
    fn check_batch(
        checks: &[&Self],
        verdicts: &mut alloc::vec::Vec<Result<(), crate::session::FailReason>>,
    ) {
        if checks.len() <= STRICT_BELOW {
            verdicts.extend(checks.iter().map(|check| check.check()));
            return;
        }
        let messages: alloc::vec::Vec<[u8; 58]> = checks
            .iter()
            .map(|check| seal_message(&check.digest))
            .collect();
        let messages: alloc::vec::Vec<&[u8]> = messages.iter().map(<[u8; 58]>::as_slice).collect();
        let signatures: alloc::vec::Vec<ed25519_dalek::Signature> = checks
            .iter()
            .map(|check| ed25519_dalek::Signature::from_bytes(&check.signature))
            .collect();
        let keys: alloc::vec::Vec<ed25519_dalek::VerifyingKey> = checks
            .iter()
            .map(|check| check.verifier.verifying)
            .collect();
        let batchable = checks.iter().all(|check| check.batchable());
        if batchable && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            verdicts.extend(checks.iter().map(|_| Ok(())));
        } else {
            let (first, second) = checks.split_at(checks.len() / 2);
            Self::check_batch(first, verdicts);
            Self::check_batch(second, verdicts);
        }
    }
}

#[cfg(feature = "std")]
impl SealCheck {
    /// Whether the signature may be checked in a batch: its key is not of small order,
    /// and its `R` is encoded canonically and is not of small order, as a strict check
    /// requires and a batch does not check.
    fn batchable(&self) -> bool {
        let mut y = [0u8; 32];
        y.copy_from_slice(&self.signature[..32]);
        // The sign of x is the top bit; what is left is y, little-endian.
        y[31] &= 0x7f;
        !self.verifier.verifying.is_weak() && below_field_prime(&y) && !SMALL_ORDER_Y.contains(&y)
    }
}

/// Whether the 255-bit little-endian number `y` is below 2^255 - 19 (a canonical field
/// element).
#[cfg(feature = "std")]
fn below_field_prime(y: &[u8; 32]) -> bool {
    // 2^255 - 19, little-endian: 0xed, then thirty 0xff, then 0x7f.
    let mut prime = [0xffu8; 32];
    prime[0] = 0xed;
    prime[31] = 0x7f;
    // Compared from the most significant byte down.
    y.iter().rev().lt(prime.iter().rev())
}

/// The y coordinates of the eight points of small order, as the first 255 bits of their
/// encodings (the sign of x, the top bit, cleared): 1 (the identity), -1 (order 2), 0
/// (the two points of order 4), and those of the four points of order 8 (a test checks
/// them against curve25519-dalek's).
#[cfg(feature = "std")]
const SMALL_ORDER_Y: [[u8; 32]; 5] = {
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut minus_one = [0xffu8; 32];
    minus_one[0] = 0xec;
    minus_one[31] = 0x7f;
    [
        one,
        minus_one,
        [0; 32],
        [
            0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef,
            0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88,
            0x6d, 0x53, 0xfc, 0x05,
        ],
        [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10,
            0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77,
            0x92, 0xac, 0x03, 0x7a,
        ],
    ]
};

/// The most signatures [`SealCheck::check_all`] checks in one batch: past a few hundred, a
/// larger batch saves little more a signature.
#[cfg(feature = "std")]
pub const CHECK_BATCH: usize = 512;

/// Batches of this many signatures or fewer are checked one at a time (a batch saves too
/// little on so few, and halving a failed one ends there).
#[cfg(feature = "std")]
const STRICT_BELOW: usize = 4;

/// A node's public key: its identity on the wire, and the key its chunks are signed with
/// (32 bytes of Ed25519 public key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The node id this key gives: see the [module docs](self).
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        let derived = blake3::derive_key(NODE_ID_CONTEXT, &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&derived[..8]);
        NodeId(u64::from_le_bytes(id))
    }

    /// The X25519 key the handshake proves for this key (its Montgomery form), or `None`
    /// if these bytes are not an Ed25519 key.
    #[must_use]
    pub fn link_key(&self) -> Option<[u8; 32]> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0).ok()?;
        Some(key.to_montgomery().to_bytes())
    }

    /// Checks that this key signed the chunk `view` (see [`crate::chunk`]): one BLAKE3
    /// pass over the chunk and one Ed25519 verification (strict: no malleable signature
    /// or weak key passes).
    ///
    /// # Errors
    /// [`SealError::Unsigned`] or [`SealError::BadSignature`].
    pub fn verify_chunk(&self, view: &ChunkView<'_>) -> Result<(), SealError> {
        Verifier::new(*self)
            .ok_or(SealError::BadSignature)?
            .verify(view, None)
    }

    /// [`verify_chunk`](Self::verify_chunk) of bytes just checked against their hash
    /// ([`Verified::new`](crate::hash::Verified::new)): the hash the signature signs was
    /// found on the way, so this costs the Ed25519 verification alone.
    ///
    /// # Errors
    /// As [`verify_chunk`](Self::verify_chunk), and [`SealError::Unsigned`] for bytes that
    /// are not a chunk.
    pub fn verify_verified(&self, chunk: &crate::hash::Verified<'_>) -> Result<(), SealError> {
        let view = ChunkView::parse(chunk.bytes()).map_err(|_| SealError::Unsigned)?;
        Verifier::new(*self)
            .ok_or(SealError::BadSignature)?
            .verify(&view, chunk.signed_digest())
    }
}

impl fmt::Display for PublicKey {
    /// 64 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A public key that is not 64 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyParseError;

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a public key is 64 hex digits of an Ed25519 public key")
    }
}

impl core::error::Error for KeyParseError {}

impl FromStr for PublicKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(KeyParseError);
        }
        let digit = |c: u8| (c as char).to_digit(16).ok_or(KeyParseError);
        let mut key = [0u8; 32];
        for (k, pair) in key.iter_mut().zip(s.chunks_exact(2)) {
            *k = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
        }
        let key = Self(key);
        key.link_key().ok_or(KeyParseError)?;
        Ok(key)
    }
}

/// A node's key pair: Ed25519 for its identity and signatures, and the X25519 static key
/// of its handshakes, both from one secret (see the [module docs](self)). The secrets are
/// wiped from memory when the pair is dropped, and never printed.
#[derive(Clone)]
pub struct Keypair {
    signing: ed25519_dalek::SigningKey,
    /// The X25519 static secret: the Ed25519 scalar.
    dh: SensitiveByteArray<[u8; 32]>,
    public: PublicKey,
}

impl Keypair {
    /// The key pair of this secret: 32 bytes from a cryptographic random source, kept by
    /// the application (the CLI keeps them in a file of mode 0600).
    #[must_use]
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let signing = ed25519_dalek::SigningKey::from_bytes(&secret);
        let dh = SensitiveByteArray::from_slice(&signing.to_scalar_bytes());
        let public = PublicKey(signing.verifying_key().to_bytes());
        Self {
            signing,
            dh,
            public,
        }
    }

    /// The secret bytes, to store them.
    #[must_use]
    pub fn secret(&self) -> &[u8; 32] {
        self.signing.as_bytes()
    }

    /// The signature of a chunk whose bytes before the signature are `signed_bytes` (see
    /// [`crate::chunk`]); [`Chunker::signed_by`](crate::chunk::Chunker::signed_by) calls it.
    #[must_use]
    pub fn sign_chunk(&self, signed_bytes: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.sign_digest(blake3::hash(signed_bytes).as_bytes())
    }

    /// The signature of a chunk whose bytes before the signature hash to `digest`.
    pub(crate) fn sign_digest(&self, digest: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(&seal_message(digest)).to_bytes()
    }

    /// The public key.
    #[must_use]
    pub const fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The node id of the public key.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        self.public.node_id()
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Which side of the handshake a node is: the one that connected initiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Role {
    /// Sends the first handshake message (the side that connected).
    Initiator,
    /// Answers it (the side that accepted the connection).
    Responder,
}

/// What a node lets a peer's key do, decided once the handshake has proven the key
/// ([`Conduit::authorize`](crate::conduit::Conduit::authorize)): which origins it may
/// pull, and which it may push.
///
/// An origin the peer may not pull is, to the peer, one this store does not hold: no list
/// of origins names it, its ranges summarise as empty, requests for its chunks (by range
/// or by hash) find nothing, and live sessions announce nothing of it. An origin the peer
/// may not push is one this node neither asks the peer about nor stores from it
/// ([`FailReason::NotPermitted`](crate::session::FailReason::NotPermitted)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Access {
    /// The origins whose chunks the peer may fetch from this node. With none, this side
    /// answers as an empty store would: the peer learns neither hashes nor counts.
    pub pull: Scope,
    /// The origins whose chunks this node takes from the peer. With none, this side
    /// fetches nothing.
    pub push: Scope,
}

impl Access {
    /// Both ways, every origin.
    pub const FULL: Self = Self {
        pull: Scope::All,
        push: Scope::All,
    };
    /// Nothing: the session ends with [`LinkError::Refused`] before any `Hello`, and the
    /// peer is told it was refused.
    pub const NONE: Self = Self {
        pull: Scope::Nothing,
        push: Scope::Nothing,
    };
    /// The peer may fetch every origin and push none.
    pub const PULL: Self = Self {
        pull: Scope::All,
        push: Scope::Nothing,
    };
    /// The peer may push every origin and fetch none.
    pub const PUSH: Self = Self {
        pull: Scope::Nothing,
        push: Scope::All,
    };

    /// Whether the peer may do nothing at all (and is refused).
    #[must_use]
    pub const fn is_none(&self) -> bool {
        self.pull.is_nothing() && self.push.is_nothing()
    }
}

/// An entropy source the handshake never calls: the ephemeral key is made from the
/// entropy given to [`Handshake::new`].
#[derive(Clone, Copy, Debug, Default)]
struct GivenEntropy;

impl clatter::rand_core::RngCore for GivenEntropy {
    fn next_u32(&mut self) -> u32 {
        unreachable!("the ephemeral key is supplied")
    }
    fn next_u64(&mut self) -> u64 {
        unreachable!("the ephemeral key is supplied")
    }
    fn fill_bytes(&mut self, _: &mut [u8]) {
        unreachable!("the ephemeral key is supplied")
    }
    fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), clatter::rand_core::Error> {
        unreachable!("the ephemeral key is supplied")
    }
}

impl clatter::rand_core::CryptoRng for GivenEntropy {}

type Noise = NqHandshakeCore<X25519, ChaChaPoly, Sha256, GivenEntropy>;

/// A Noise XX handshake about to start: this node's keys, its role, and the entropy of
/// this session.
pub struct Handshake {
    noise: Noise,
    /// This side's identity key, sent with its static key.
    public: PublicKey,
    /// The peer's identity key, once its message carried it.
    peer: Option<PublicKey>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.noise.is_initiator())
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A handshake of `keys` in `role`, with 32 bytes of fresh `entropy` for the
    /// ephemeral key (from a cryptographic random source, never used twice).
    #[must_use]
    pub fn new(keys: &Keypair, role: Role, entropy: [u8; 32]) -> Self {
        let pair =
            |secret: SensitiveByteArray<[u8; 32]>| KeyPair::new(X25519::pubkey(&secret), secret);
        let ephemeral = pair(SensitiveByteArray::from_slice(&entropy));
        let noise = Noise::new(
            noise_xx(),
            PROLOGUE,
            role == Role::Initiator,
            Some(pair(keys.dh.clone())),
            Some(ephemeral),
            None,
            None,
        );
        match noise {
            Ok(noise) => Self {
                noise,
                public: keys.public,
                peer: None,
            },
            // XX is a DH pattern without pre-shared keys: `new` accepts it.
            Err(_) => unreachable!("Noise XX is a valid pattern"),
        }
    }
}

impl Handshake {
    /// The node id of this side's key.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        self.public.node_id()
    }

    /// This side's public key.
    #[must_use]
    pub const fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Whether this side's next message carries its static key (and so its identity
    /// key): the responder's only message, and the initiator's second.
    fn sends_static(&self) -> bool {
        !self.noise.is_initiator() || self.noise.get_remote_static().is_some()
    }
}

/// The state of a secure link: handshaking, then open.
// Without an allocator the handshake state (about 700 bytes) lives inline; a conduit
// holds one link, so the space is spent once per session.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Link {
    Handshaking(Handshake),
    Open {
        transport: TransportState<ChaChaPoly, Sha256>,
        remote: PublicKey,
    },
    Broken,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Handshaking(_) => "Link::Handshaking",
            Self::Open { .. } => "Link::Open",
            Self::Broken => "Link::Broken",
        })
    }
}

impl Link {
    /// The peer's key, once the handshake proved it.
    pub(crate) const fn remote(&self) -> Option<&PublicKey> {
        match self {
            Self::Open { remote, .. } => Some(remote),
            _ => None,
        }
    }

    pub(crate) const fn is_open(&self) -> bool {
        matches!(self, Self::Open { .. })
    }

    /// Moves to `Open` if the handshake is finished.
    fn finish(&mut self) -> Result<(), LinkError> {
        let Self::Handshaking(hs) = self else {
            return Ok(());
        };
        if !hs.noise.is_finished() {
            return Ok(());
        }
        // The identity key the peer sent must be the one its proven static key is.
        let proven = hs.noise.get_remote_static();
        let remote = hs
            .peer
            .filter(|peer| peer.link_key().is_some_and(|k| Some(k) == proven));
        let Self::Handshaking(hs) = core::mem::replace(self, Self::Broken) else {
            return Ok(());
        };
        match (hs.noise.finalize(), remote) {
            (Ok(transport), Some(remote)) => {
                *self = Self::Open { transport, remote };
                Ok(())
            }
            _ => Err(LinkError::Handshake),
        }
    }

    /// Writes this side's next handshake message into `out`, prefix included, if it is
    /// this side's turn; returns its length.
    pub(crate) fn write_handshake(&mut self, out: &mut [u8]) -> Result<Option<usize>, LinkError> {
        let Self::Handshaking(hs) = self else {
            return Ok(None);
        };
        if hs.noise.is_finished() || !hs.noise.is_write_turn() {
            return Ok(None);
        }
        let body = out.get_mut(RECORD_HEADER..).ok_or(LinkError::Handshake)?;
        let identity = hs.public.0;
        let payload: &[u8] = if hs.sends_static() { &identity } else { &[] };
        let Ok(n) = hs.noise.write_message(payload, body) else {
            *self = Self::Broken;
            return Err(LinkError::Handshake);
        };
        out[..RECORD_HEADER].copy_from_slice(&(n as u16).to_le_bytes());
        self.finish()?;
        Ok(Some(RECORD_HEADER + n))
    }

    /// Whether the link waits for the peer's handshake message.
    pub(crate) fn reads_handshake(&self) -> bool {
        matches!(self, Self::Handshaking(hs) if !hs.noise.is_write_turn())
    }

    /// Reads the peer's handshake message (without its prefix).
    pub(crate) fn read_handshake(&mut self, message: &[u8]) -> Result<(), LinkError> {
        let Self::Handshaking(hs) = self else {
            return Err(LinkError::Handshake);
        };
        // A message that carries the peer's static key carries its 32-byte identity key
        // as payload, and only that; the first message carries nothing.
        let mut payload = [0u8; 32];
        let read = hs.noise.read_message(message, &mut payload);
        let has_static = hs.noise.get_remote_static().is_some();
        match read {
            Ok(32) if has_static && hs.peer.is_none() => hs.peer = Some(PublicKey(payload)),
            Ok(0) if !has_static => {}
            _ => {
                *self = Self::Broken;
                return Err(LinkError::Handshake);
            }
        }
        self.finish()
    }

    /// Seals the `plain_len` bytes at `buf[RECORD_HEADER..]` into a record in place
    /// (prefix and tag added); returns the record's length.
    pub(crate) fn seal(&mut self, buf: &mut [u8], plain_len: usize) -> Result<usize, LinkError> {
        let Self::Open { transport, .. } = self else {
            return Err(LinkError::Handshake);
        };
        let n = plain_len + TAG_LEN;
        if n > usize::from(u16::MAX) {
            return Err(LinkError::RecordSize {
                len: n as u32,
                max: MAX_RECORD,
            });
        }
        let body = buf
            .get_mut(RECORD_HEADER..RECORD_HEADER + n)
            .ok_or(LinkError::Handshake)?;
        if transport.send_in_place(body, plain_len).is_err() {
            *self = Self::Broken;
            return Err(LinkError::BadRecord);
        }
        buf[..RECORD_HEADER].copy_from_slice(&(n as u16).to_le_bytes());
        Ok(RECORD_HEADER + n)
    }

    /// Opens the record body `body` (ciphertext and tag) in place; returns the length of
    /// the plaintext at its start.
    pub(crate) fn open(&mut self, body: &mut [u8]) -> Result<usize, LinkError> {
        let Self::Open { transport, .. } = self else {
            return Err(LinkError::BadRecord);
        };
        let len = body.len();
        if len < TAG_LEN {
            return Err(LinkError::BadRecord);
        }
        match transport.receive_in_place(body, len) {
            Ok(n) => Ok(n),
            Err(_) => {
                *self = Self::Broken;
                Err(LinkError::BadRecord)
            }
        }
    }
}

/// The length a record prefix announces, if `bytes` hold one.
pub(crate) fn record_len(bytes: &[u8]) -> Option<usize> {
    let prefix = bytes.get(..RECORD_HEADER)?;
    Some(usize::from(u16::from_le_bytes([prefix[0], prefix[1]])))
}

#[cfg(test)]
mod tests;
