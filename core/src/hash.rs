//! Chunk names: [`ChunkHash`], the BLAKE3 hash of a chunk's exact bytes, and [`Verified`]
//! chunk bytes, the only form in which a store accepts a chunk.
//!
//! This module is the crate's only caller of BLAKE3. A chunk's name is the hash of the very
//! bytes that are stored and sent, never of a re-serialised form, so a receiver verifies a
//! chunk by hashing what it received and nothing else.

use core::fmt;
use core::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The 32-byte BLAKE3 hash that names a chunk.
///
/// Hashes order by their bytes, so sets of them are kept sorted and compared by merge walks
/// (see [`delta`](crate::delta)). `Display` and [`FromStr`] use 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChunkHash([u8; 32]);

impl ChunkHash {
    /// Length of a hash in bytes.
    pub const LEN: usize = 32;

    /// The hash of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// A hash from its raw bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes of the hash.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `bytes` hash to `self`. BLAKE3's own comparison runs in constant time.
    #[must_use]
    pub fn matches(&self, bytes: &[u8]) -> bool {
        blake3::hash(bytes) == blake3::Hash::from_bytes(self.0)
    }

    /// Checks `bytes` against this hash and returns them as [`Verified`] on success.
    pub fn verify<'a>(&self, bytes: &'a [u8]) -> Result<Verified<'a>, HashMismatch> {
        Verified::new(*self, bytes)
    }
}

/// The hash given as its 32 bytes (the original document's `[u8; 32]`).
impl From<[u8; 32]> for ChunkHash {
    fn from(bytes: [u8; 32]) -> Self {
        Self::from_bytes(bytes)
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ParseHashError {
    /// The string is not 64 bytes long.
    Length {
        /// Bytes found.
        found: usize,
    },
    /// A character that is not a hex digit, at this byte offset.
    NotHex {
        /// Byte offset of the first bad character.
        at: usize,
    },
}

impl fmt::Display for ParseHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { found } => {
                write!(f, "a chunk hash has 64 hex digits, found {found} bytes")
            }
            Self::NotHex { at } => write!(f, "not a hex digit at offset {at} of a chunk hash"),
        }
    }
}

impl core::error::Error for ParseHashError {}

impl FromStr for ChunkHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, ParseHashError> {
        let digits = s.as_bytes();
        if digits.len() != 64 {
            return Err(ParseHashError::Length { found: s.len() });
        }
        let nibble = |at: usize| -> Result<u8, ParseHashError> {
            match digits[at] {
                c @ b'0'..=b'9' => Ok(c - b'0'),
                c @ b'a'..=b'f' => Ok(c - b'a' + 10),
                c @ b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(ParseHashError::NotHex { at }),
            }
        };
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = (nibble(2 * i)? << 4) | nibble(2 * i + 1)?;
        }
        Ok(Self(out))
    }
}

/// Hex in human-readable formats (JSON), 32 raw bytes without a length in binary ones
/// (postcard).
impl Serialize for ChunkHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HexVisitor;
        impl Visitor<'_> for HexVisitor {
            type Value = ChunkHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 hex digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ChunkHash, E> {
                v.parse().map_err(E::custom)
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(HexVisitor)
        } else {
            <[u8; 32]>::deserialize(deserializer).map(Self)
        }
    }
}

/// Received bytes that did not hash to the name they were sent under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HashMismatch {
    /// The name the bytes were sent under.
    pub expected: ChunkHash,
    /// The hash of the bytes actually received.
    pub actual: ChunkHash,
}

impl fmt::Display for HashMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chunk {} does not match its bytes, which hash to {}",
            self.expected, self.actual
        )
    }
}

impl core::error::Error for HashMismatch {}

/// Chunk bytes that are known to hash to [`id`](Self::id).
///
/// The only ways to get one are to hash the bytes ([`Verified::new`], [`ChunkHash::verify`])
/// or to seal a chunk ([`Sealed::verified`](crate::chunk::Sealed::verified)), so a store that
/// takes `Verified` cannot be handed an unverified byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified<'a> {
    id: ChunkHash,
    bytes: &'a [u8],
    /// For bytes that look like a signed chunk: the BLAKE3 hash of all but their last
    /// [`SIGNATURE_LEN`](crate::chunk::SIGNATURE_LEN) bytes, what the signature signs,
    /// found on the way to `id`.
    signed_digest: Option<[u8; 32]>,
}

/// The hash of `bytes` and, if they look like a signed chunk (format 2, seal `1`), the
/// hash of all but their signature, in one pass.
fn hashes(bytes: &[u8]) -> (ChunkHash, Option<[u8; 32]>) {
    use crate::chunk::{FORMAT_VERSION, SIGNATURE_LEN};
    match bytes {
        [FORMAT_VERSION, 1, ..] if bytes.len() > SIGNATURE_LEN => {
            let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
            let (digest, id) = hash_signed(signed, |_| signature);
            (id, Some(digest))
        }
        _ => (ChunkHash::of(bytes), None),
    }
}

/// Hashes a signed chunk in one pass: the BLAKE3 hash of `signed` (what its signature
/// signs), then `signature(that hash)` appended, giving the chunk's hash.
#[cfg_attr(not(feature = "secure"), allow(dead_code))]
pub(crate) fn hash_signed<S: AsRef<[u8]>>(
    signed: &[u8],
    signature: impl FnOnce(&[u8; 32]) -> S,
) -> ([u8; 32], ChunkHash) {
    let mut hasher = blake3::Hasher::new();
    hasher.update(signed);
    let digest = *hasher.finalize().as_bytes();
    hasher.update(signature(&digest).as_ref());
    (digest, ChunkHash(*hasher.finalize().as_bytes()))
}

impl<'a> Verified<'a> {
    /// Hashes `bytes` and accepts them if they hash to `expected`.
    pub fn new(expected: ChunkHash, bytes: &'a [u8]) -> Result<Self, HashMismatch> {
        let (actual, signed_digest) = hashes(bytes);
        if actual == expected {
            Ok(Self {
                id: actual,
                bytes,
                signed_digest,
            })
        } else {
            Err(HashMismatch { expected, actual })
        }
    }

    /// Names `bytes` by their hash.
    #[must_use]
    pub fn hash_of(bytes: &'a [u8]) -> Self {
        let (id, signed_digest) = hashes(bytes);
        Self {
            id,
            bytes,
            signed_digest,
        }
    }

    /// Bytes whose hash was computed by this crate just now (sealing, incremental hashing).
    pub(crate) const fn trusted(id: ChunkHash, bytes: &'a [u8]) -> Self {
        Self {
            id,
            bytes,
            signed_digest: None,
        }
    }

    /// The hash of a signed chunk's bytes before its signature, if hashing found it.
    #[cfg_attr(not(feature = "secure"), allow(dead_code))]
    pub(crate) const fn signed_digest(&self) -> Option<[u8; 32]> {
        self.signed_digest
    }

    /// The chunk's name.
    #[must_use]
    pub const fn id(&self) -> ChunkHash {
        self.id
    }

    /// The chunk's bytes.
    #[must_use]
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The 32-byte key of [`keyed_hash`] for `context`, a string fixed in the code that names a
/// purpose (BLAKE3's key derivation), so that hashes made for one purpose are never taken
/// for those of another, nor for a chunk's name.
#[must_use]
pub fn derive_key(context: &str) -> [u8; 32] {
    blake3::derive_key(context, &[])
}

/// The BLAKE3 keyed hash of `input`, in one call: no streaming state is kept (a streaming
/// hasher holds 1.9 KiB), so a chain of these costs 32 bytes of state, which suits
/// [`recon`](crate::recon)'s fingerprints on a microcontroller.
#[must_use]
pub fn keyed_hash(key: &[u8; 32], input: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key, input).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;

    #[test]
    fn known_answer() {
        // BLAKE3 of the empty input, from the BLAKE3 test vectors.
        assert_eq!(
            ChunkHash::of(b"").to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn verify_rejects_other_bytes() {
        let id = ChunkHash::of(b"chunk");
        assert_eq!(id.verify(b"chunk").map(|v| v.id()), Ok(id));
        let err = id.verify(b"chunK").unwrap_err();
        assert_eq!(err.expected, id);
        assert_eq!(err.actual, ChunkHash::of(b"chunK"));
        assert!(!id.matches(b""));
    }

    #[test]
    fn parse_errors_are_typed() {
        assert_eq!(
            "ab".parse::<ChunkHash>(),
            Err(ParseHashError::Length { found: 2 })
        );
        let mut s = ChunkHash::of(b"x").to_string();
        s.replace_range(10..11, "g");
        assert_eq!(
            s.parse::<ChunkHash>(),
            Err(ParseHashError::NotHex { at: 10 })
        );
        // A multi-byte character must not panic on a char boundary.
        let s = "é".repeat(32);
        assert_eq!(
            s.parse::<ChunkHash>(),
            Err(ParseHashError::NotHex { at: 0 })
        );
    }

    #[test]
    fn postcard_is_32_raw_bytes() {
        let id = ChunkHash::of(b"x");
        let mut buf = [0u8; 64];
        let out = postcard::to_slice(&id, &mut buf).unwrap();
        assert_eq!(out, id.as_bytes());
        assert_eq!(postcard::from_bytes::<ChunkHash>(out).unwrap(), id);
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in any::<[u8; 32]>()) {
            let id = ChunkHash::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<ChunkHash>(), Ok(id));
            prop_assert_eq!(id.to_string().to_uppercase().parse::<ChunkHash>(), Ok(id));
        }

        #[test]
        fn parsing_any_string_never_panics(s in ".{0,80}") {
            let _ = s.parse::<ChunkHash>();
        }
    }
}
