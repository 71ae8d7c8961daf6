//! Chunks: the canonical encoding, the streaming [`Chunker`] and the zero-copy
//! [`ChunkView`]; with `alloc`, the original API's `EventChunkStore`.
//!
//! # Format (version 2)
//! A chunk is the postcard encoding of
//!
//! | field | type | rule |
//! |---|---|---|
//! | version | `u8` | `2` ([`FORMAT_VERSION`]) |
//! | seal | `u8` | `0`: unsigned; `1`: signed by the origin ([`ChunkView::signature`]) |
//! | origin | varint `u64` | the node whose log the events come from |
//! | first_seq | varint `u64` | first sequence number the chunk covers |
//! | end_seq | varint `u64` | one past the last sequence number it covers; `first_seq < end_seq` |
//! | events | varint count, then each event | at least one event |
//! | signature | 64 bytes, only if `seal` is `1` | Ed25519, by the origin's key |
//!
//! and each event is `seq` (varint `u64`, strictly increasing, inside the range),
//! `timestamp` (varint `u64`), `kind` (varint length + UTF-8), `privacy` (varint: `0` public,
//! `1` shareable; private is never valid here) and `payload` (varint length + bytes). Nothing
//! follows the last event but the signature.
//!
//! The signature signs the 58 bytes `"chunk-sync 2026 chunk seal"` followed by the BLAKE3
//! hash of every byte before the signature ([`ChunkView::signed_bytes`]). A receiver
//! finds that hash on its way to the chunk's hash (BLAKE3 hashes incrementally), so
//! checking a signature costs one Ed25519 verification whatever the chunk's size, and no
//! second pass over its bytes. The origin's node id is derived from the key that
//! signs (see `secure`), so a node that holds the origin's whole public key can check that
//! the origin sealed the chunk, whoever passed it on. Ed25519 signatures are deterministic:
//! the same events sealed at the same points by the same key give the same bytes.
//!
//! The crate writes and reads these bytes with its own small codec rather than with
//! postcard's serde code; tests check both against postcard's encoding of the same fields.
//!
//! A chunk's [`ChunkHash`] is the BLAKE3 hash of exactly these bytes: the bytes that are
//! stored are the bytes that are sent are the bytes that are hashed. The same events sealed
//! at the same points give the same bytes and the same hash on every node and architecture.
//!
//! # Boundaries
//! A chunker covers its origin's sequence numbers in consecutive ranges of
//! `events_per_chunk` numbers, starting where the last sealed chunk ended. A range is sealed
//! when an event beyond it arrives, when the next event would not fit the buffer (the range
//! then ends just before that event), or on an explicit [`Chunker::seal`] (the range then
//! ends after the last event seen). Private events use up sequence numbers but never enter a
//! chunk; a range with no shareable event yields no chunk. Sealed chunks never change.

use core::fmt;

use crate::error::DecodeError;
use crate::event::{ChunkEvent, Event, NodeId, Privacy};
use crate::hash::{ChunkHash, HashMismatch, Verified};
use crate::time::{Duration, Instant};
use crate::varint::{Reader, Writer};

#[cfg(feature = "alloc")]
mod event_chunk_store;
#[cfg(feature = "alloc")]
pub use event_chunk_store::{DEFAULT_MAX_CHUNK_BYTES, EventChunk, EventChunkStore};

/// The chunk format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 2;

/// Bytes a [`Chunker`] reserves at the front of its buffer for the chunk header: the
/// version, the seal, three `u64` varints and the event count.
pub const HEADER_RESERVE: usize = 2 + 3 * 10 + 5;

/// Bytes of a signed chunk's signature, at its end.
pub const SIGNATURE_LEN: usize = 64;

/// Bytes of a [`Chunker`]'s buffer that are not for events: the header's reserve at the
/// front and room for a signature at the end (kept whether the chunker signs or not, so
/// that chunks end at the same events either way). A chunk holds at most
/// `buf.len() - CHUNK_OVERHEAD` bytes of events.
pub const CHUNK_OVERHEAD: usize = HEADER_RESERVE + SIGNATURE_LEN;

/// How a chunk is sealed: the format's `seal` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Seal {
    /// No signature: the chunk is named by its hash alone.
    Unsigned,
    /// Signed by its origin: the last [`SIGNATURE_LEN`] bytes are the signature.
    Signed,
}

impl Seal {
    const fn byte(self) -> u8 {
        match self {
            Self::Unsigned => 0,
            Self::Signed => 1,
        }
    }
}

/// The chunk header, as encoded (the event count follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    version: u8,
    /// The seal byte as read (`ChunkView::parse` checks it).
    seal: u8,
    origin: NodeId,
    first_seq: u64,
    end_seq: u64,
}

impl Header {
    /// Appends the header's encoding (see the [module docs](self)).
    fn write(&self, w: &mut Writer<'_>) {
        w.bytes(&[self.version, self.seal]);
        w.varint(self.origin.0);
        w.varint(self.first_seq);
        w.varint(self.end_seq);
    }

    /// Reads a header written by [`write`](Self::write).
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            version: r.byte()?,
            seal: r.byte()?,
            origin: NodeId(r.u64()?),
            first_seq: r.u64()?,
            end_seq: r.u64()?,
        })
    }
}

/// One event as encoded inside a chunk (its origin is the chunk's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EventRepr<'a> {
    seq: u64,
    timestamp: u64,
    kind: &'a str,
    privacy: Privacy,
    payload: &'a [u8],
}

impl<'a> EventRepr<'a> {
    /// Appends the event's encoding (see the [module docs](self)).
    fn write(&self, w: &mut Writer<'_>) {
        // Privacy is written as the variant's index, as serde numbers unit variants.
        let privacy = match self.privacy {
            Privacy::Public => 0,
            Privacy::Shareable => 1,
            Privacy::Private => 2,
        };
        w.varint(self.seq);
        w.varint(self.timestamp);
        w.byte_string(self.kind.as_bytes());
        w.varint(privacy);
        w.byte_string(self.payload);
    }

    /// Reads an event written by [`write`](Self::write), refusing what postcard refuses for
    /// the same fields.
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self {
            seq: r.u64()?,
            timestamp: r.u64()?,
            kind: core::str::from_utf8(r.byte_string()?).map_err(|_| DecodeError::Malformed)?,
            privacy: match r.u32()? {
                0 => Privacy::Public,
                1 => Privacy::Shareable,
                2 => Privacy::Private,
                _ => return Err(DecodeError::Malformed),
            },
            payload: r.byte_string()?,
        })
    }
}

/// The part of its origin's log a chunk covers. Two different chunks whose spans overlap
/// are a fork of that log: a store keeps the first and refuses the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Span {
    /// The log's node.
    pub origin: NodeId,
    /// First sequence number covered.
    pub first_seq: u64,
    /// One past the last sequence number covered.
    pub end_seq: u64,
}

impl Span {
    /// The span of the chunk in `bytes`, from its header alone (constant time), or `None`
    /// if they are not a chunk.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Option<Self> {
        ChunkView::parse(bytes).ok().map(|v| v.span())
    }

    /// Whether the two share an origin and at least one sequence number.
    #[must_use]
    pub fn overlaps(&self, other: &Self) -> bool {
        self.origin == other.origin
            && self.first_seq < other.end_seq
            && other.first_seq < self.end_seq
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sequence numbers {}..{}",
            self.origin, self.first_seq, self.end_seq
        )
    }
}

/// Why a chunk could not be built or accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ChunkError {
    /// `events_per_chunk` is zero.
    ZeroEventsPerChunk,
    /// The chunk buffer cannot hold even the header and one byte.
    BufferTooSmall {
        /// The smallest usable buffer.
        required: usize,
    },
    /// An event of another origin was pushed to a chunker.
    WrongOrigin {
        /// The chunker's origin.
        expected: NodeId,
        /// The event's origin.
        found: NodeId,
    },
    /// An event's sequence number is not above every number already seen or sealed.
    OutOfOrder {
        /// The smallest sequence number still accepted.
        expected_at_least: u64,
        /// The event's sequence number.
        found: u64,
    },
    /// The sequence number `u64::MAX` is reserved and cannot be chunked.
    SeqExhausted,
    /// An event can never fit the chunk buffer, even alone.
    EventTooLarge {
        /// The event's encoded size.
        size: usize,
        /// The room for events in the buffer.
        capacity: usize,
    },
    /// A chunker was given a key pair whose node id is not its origin
    /// (`Chunker::signed_by`, feature `secure`).
    NotOriginKey {
        /// The chunker's origin.
        origin: NodeId,
    },
    /// A chunk to sign is signed already (`sign_sealed`, feature `secure`).
    AlreadySigned,
    /// Chunk bytes did not match their hash.
    HashMismatch(HashMismatch),
    /// Chunk bytes are not a valid chunk.
    Decode(DecodeError),
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroEventsPerChunk => f.write_str("events per chunk must be at least 1"),
            Self::BufferTooSmall { required } => {
                write!(
                    f,
                    "chunk buffer too small: at least {required} bytes required"
                )
            }
            Self::WrongOrigin { expected, found } => {
                write!(f, "event of {found} pushed to the chunker of {expected}")
            }
            Self::OutOfOrder {
                expected_at_least,
                found,
            } => write!(
                f,
                "event sequence number {found} is already chunked or out of order (next accepted: {expected_at_least})"
            ),
            Self::SeqExhausted => f.write_str("sequence number u64::MAX is reserved"),
            Self::EventTooLarge { size, capacity } => write!(
                f,
                "event of {size} encoded bytes cannot fit a chunk buffer with room for {capacity}"
            ),
            Self::NotOriginKey { origin } => {
                write!(f, "the key pair given is not the key of {origin}")
            }
            Self::AlreadySigned => f.write_str("the chunk is signed already"),
            Self::HashMismatch(e) => fmt::Display::fmt(e, f),
            Self::Decode(e) => write!(f, "invalid chunk: {e}"),
        }
    }
}

impl core::error::Error for ChunkError {}

impl From<HashMismatch> for ChunkError {
    fn from(e: HashMismatch) -> Self {
        Self::HashMismatch(e)
    }
}

impl From<DecodeError> for ChunkError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

/// What [`Chunker::push`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[must_use = "`SealFirst` means the event was not taken"]
pub enum Push {
    /// The event is in the open chunk.
    Added,
    /// The event is private: its sequence number is covered, its content left out.
    Filtered,
    /// The event belongs after the open chunk (beyond its range, or past the buffer's room).
    /// Nothing changed: call [`Chunker::seal`], then push the same event again.
    SealFirst,
}

/// A chunk the [`Chunker`] has just sealed; its bytes live in the chunker's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// The chunk's name: the hash of [`bytes`](Self::bytes).
    pub id: ChunkHash,
    /// The chunk's canonical bytes.
    pub bytes: &'a [u8],
    /// The origin of its events.
    pub origin: NodeId,
    /// First sequence number covered.
    pub first_seq: u64,
    /// One past the last sequence number covered.
    pub end_seq: u64,
    /// Number of events inside.
    pub events: u32,
}

impl<'a> Sealed<'a> {
    /// The chunk as [`Verified`] bytes, ready for a store.
    #[must_use]
    pub const fn verified(&self) -> Verified<'a> {
        Verified::trusted(self.id, self.bytes)
    }
}

/// Seals one origin's events into chunks, in a buffer the caller owns, without allocating.
///
/// ```
/// use chunk_sync_core::chunk::{Chunker, Push};
/// use chunk_sync_core::{Event, NodeId, Privacy};
///
/// let mut buf = [0u8; 1024];
/// let mut chunker = Chunker::new(NodeId(7), 10, 0, &mut buf)?;
/// let event = |seq| Event {
///     origin: NodeId(7), seq, timestamp: 1_000 + seq, kind: "temp",
///     privacy: if seq == 3 { Privacy::Private } else { Privacy::Public }, payload: b"21.5",
/// };
/// let mut sealed = Vec::new();
/// for seq in 0..25 {
///     if chunker.push(&event(seq))? == Push::SealFirst {
///         sealed.push(chunker.seal().expect("a chunk was open").id);
///         assert_eq!(chunker.push(&event(seq))?, Push::Added);
///     }
/// }
/// sealed.extend(chunker.seal().map(|c| c.id)); // the tail: sequence numbers 20..25
/// assert_eq!(sealed.len(), 3);
/// assert_eq!(chunker.next_seq(), 25);
/// # Ok::<(), chunk_sync_core::ChunkError>(())
/// ```
#[derive(Debug)]
pub struct Chunker<B> {
    /// Where the open chunk is written: a slice, an array, or (with `alloc`) a `Vec`.
    buf: B,
    /// Everything else. The code that writes chunks works on it and on the buffer as a
    /// slice, so that it exists once whatever the buffer's type.
    open: Open,
}

/// A [`Chunker`]'s state besides its buffer.
#[derive(Debug)]
struct Open {
    origin: NodeId,
    per_chunk: u64,
    /// First sequence number of the open chunk's range.
    range_start: u64,
    /// Every sequence number below this has been pushed or sealed.
    next_seq: u64,
    /// Where the open chunk's range ends if sealed now because of a `SealFirst`.
    pending_end: Option<u64>,
    count: u32,
    /// Bytes of events written after `HEADER_RESERVE`.
    len: usize,
    policy: SealPolicy,
    /// When the open chunk's first event came ([`push_at`](Chunker::push_at)).
    opened_at: Option<Instant>,
    /// The origin's key, if chunks are signed ([`Chunker::signed_by`]).
    #[cfg(feature = "secure")]
    signer: Option<crate::secure::Keypair>,
}

/// When a live log's open chunk is due to be sealed ([`Chunker::seal_due`]), beside the
/// range of `events_per_chunk` sequence numbers every chunk keeps to.
///
/// The delay bounds latency: an event waits at most `max_delay` in the open chunk before
/// the chunk can be sent. The size bounds overhead: each chunk costs a header (a few
/// bytes), its hash in the store, and a few dozen bytes of announcement and request on a
/// live session, so chunks of a few events cost more per event than chunks of hundreds.
/// Choose `max_delay` as the latency the application can accept (a seal every 10 ms at
/// 1,000 events/s makes chunks of about 10 events), and `max_bytes` near the largest
/// frame, so that a chunk travels in one piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SealPolicy {
    /// Seal once the open chunk's events take this many bytes (the chunk may pass it by
    /// its last event). Past the buffer's room the chunk is sealed anyway.
    pub max_bytes: usize,
    /// Seal once the open chunk's first event is this old; `None`: no limit.
    pub max_delay: Option<Duration>,
}

impl SealPolicy {
    /// No limit but the range and the buffer: what [`Chunker::new`] starts with.
    pub const UNLIMITED: Self = Self {
        max_bytes: usize::MAX,
        max_delay: None,
    };
}

impl<B: AsMut<[u8]>> Chunker<B> {
    /// A chunker for `origin`'s log, whose first unsealed sequence number is `start_seq`
    /// (`0` for a new log; the previous chunk's `end_seq` otherwise), sealing ranges of
    /// `events_per_chunk` sequence numbers into `buf`.
    ///
    /// A chunk can hold at most `buf.len() - CHUNK_OVERHEAD` bytes of events
    /// ([`CHUNK_OVERHEAD`]). Chunks are unsigned unless `signed_by`
    /// the origin's key.
    pub fn new(
        origin: NodeId,
        events_per_chunk: u32,
        start_seq: u64,
        mut buf: B,
    ) -> Result<Self, ChunkError> {
        if events_per_chunk == 0 {
            return Err(ChunkError::ZeroEventsPerChunk);
        }
        if buf.as_mut().len() <= CHUNK_OVERHEAD {
            return Err(ChunkError::BufferTooSmall {
                required: CHUNK_OVERHEAD + 1,
            });
        }
        Ok(Self {
            buf,
            open: Open {
                origin,
                per_chunk: u64::from(events_per_chunk),
                range_start: start_seq,
                next_seq: start_seq,
                pending_end: None,
                count: 0,
                len: 0,
                policy: SealPolicy::UNLIMITED,
                opened_at: None,
                #[cfg(feature = "secure")]
                signer: None,
            },
        })
    }

    /// The same chunker, signing every chunk it seals with `keys`, the origin's key pair
    /// (see the [module docs](self)).
    ///
    /// # Errors
    /// [`ChunkError::NotOriginKey`] if the chunker's origin is not the node id of `keys`.
    #[cfg(feature = "secure")]
    pub fn signed_by(mut self, keys: &crate::secure::Keypair) -> Result<Self, ChunkError> {
        self.sign_with(keys)?;
        Ok(self)
    }

    /// [`signed_by`](Self::signed_by) in place: chunks sealed from now on are signed by
    /// `keys`.
    ///
    /// # Errors
    /// As [`signed_by`](Self::signed_by).
    #[cfg(feature = "secure")]
    pub fn sign_with(&mut self, keys: &crate::secure::Keypair) -> Result<(), ChunkError> {
        if keys.node_id() != self.open.origin {
            return Err(ChunkError::NotOriginKey {
                origin: self.open.origin,
            });
        }
        self.open.signer = Some(keys.clone());
        Ok(())
    }

    /// The same chunker, sealing by `policy` as well ([`seal_due`](Self::seal_due)).
    #[must_use]
    pub const fn with_policy(mut self, policy: SealPolicy) -> Self {
        self.open.policy = policy;
        self
    }

    /// [`push`](Self::push) at time `now`: a live log's open chunk remembers when its
    /// first event came, for the policy's `max_delay`.
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn push_at<E: ChunkEvent + ?Sized>(
        &mut self,
        event: &E,
        now: Instant,
    ) -> Result<Push, ChunkError> {
        let pushed = self.push(event)?;
        if self.open.count > 0 && self.open.opened_at.is_none() {
            self.open.opened_at = Some(now);
        }
        Ok(pushed)
    }

    /// Whether the open chunk is due to be sealed at `now`: it holds an event, and its
    /// range is covered, or its events reach the policy's `max_bytes`, or its first event
    /// (as [`push_at`](Self::push_at) saw it) is `max_delay` old.
    #[must_use]
    pub fn seal_due(&self, now: Instant) -> bool {
        self.seal_deadline().is_some_and(|t| now >= t)
    }

    /// When the open chunk is due to be sealed ([`seal_due`](Self::seal_due)), if it holds
    /// an event and any rule will make it due.
    #[must_use]
    pub fn seal_deadline(&self) -> Option<Instant> {
        self.open.seal_deadline()
    }

    /// The smallest sequence number the chunker still accepts.
    #[must_use]
    pub const fn next_seq(&self) -> u64 {
        self.open.next_seq
    }

    /// Events in the open (unsealed) chunk.
    #[must_use]
    pub const fn open_events(&self) -> u32 {
        self.open.count
    }

    /// Adds an event to the open chunk, or says why not.
    ///
    /// On error nothing changes. On [`Push::SealFirst`] nothing changes but where the
    /// open chunk's range ends if it is sealed next.
    pub fn push<E: ChunkEvent + ?Sized>(&mut self, event: &E) -> Result<Push, ChunkError> {
        self.open.push(event, self.buf.as_mut())
    }

    /// Closes the open chunk where [`seal`](Self::seal) would, without encoding or hashing
    /// it: for a caller that only checks its input (which events fit, where chunks end)
    /// before sealing it for real. Returns the range the chunk would have covered and its
    /// number of events, or `None` if it holds no event.
    pub fn discard(&mut self) -> Option<(u64, u64, u32)> {
        self.open.discard()
    }

    /// Seals the open chunk and returns it, or `None` if it holds no event.
    ///
    /// The next chunk's range starts where this one ends.
    pub fn seal(&mut self) -> Option<Sealed<'_>> {
        self.open.seal(self.buf.as_mut())
    }
}

impl Open {
    fn seal_deadline(&self) -> Option<Instant> {
        if self.count == 0 {
            return None;
        }
        let opened = self.opened_at.unwrap_or(Instant::ZERO);
        let covered = self.next_seq >= self.range_start.saturating_add(self.per_chunk);
        if covered || self.len >= self.policy.max_bytes {
            return Some(opened);
        }
        self.policy.max_delay.map(|d| opened + d)
    }

    fn push<E: ChunkEvent + ?Sized>(
        &mut self,
        event: &E,
        buf: &mut [u8],
    ) -> Result<Push, ChunkError> {
        let seq = event.seq();
        if event.origin() != self.origin {
            return Err(ChunkError::WrongOrigin {
                expected: self.origin,
                found: event.origin(),
            });
        }
        if seq < self.next_seq {
            return Err(ChunkError::OutOfOrder {
                expected_at_least: self.next_seq,
                found: seq,
            });
        }
        // `u64::MAX` is reserved: a range covering it would have no end.
        let Some(after) = seq.checked_add(1) else {
            return Err(ChunkError::SeqExhausted);
        };
        let range_end = self.range_start.saturating_add(self.per_chunk);
        let mut range_start = self.range_start;
        if seq >= range_end {
            if self.count > 0 {
                self.pending_end = Some(range_end);
                return Ok(Push::SealFirst);
            }
            // The open range holds nothing to seal: move to the range that contains `seq`,
            // keeping ranges aligned to where the last sealed chunk ended.
            range_start += (seq - range_start) / self.per_chunk * self.per_chunk;
        }
        if !event.privacy().is_shareable() {
            self.range_start = range_start;
            self.next_seq = after;
            self.pending_end = None;
            return Ok(Push::Filtered);
        }
        let repr = EventRepr {
            seq,
            timestamp: event.timestamp(),
            kind: event.kind(),
            privacy: event.privacy(),
            payload: event.payload(),
        };
        let room = buf.len() - SIGNATURE_LEN;
        let (at, capacity) = (HEADER_RESERVE + self.len, room - HEADER_RESERVE);
        let mut w = Writer::new(&mut buf[..room], at);
        repr.write(&mut w);
        if w.fits() {
            self.len = w.len - HEADER_RESERVE;
            self.count += 1;
            self.range_start = range_start;
            self.next_seq = after;
            self.pending_end = None;
            Ok(Push::Added)
        } else if self.count > 0 {
            // Seal early: the range ends just before this event.
            self.pending_end = Some(seq);
            Ok(Push::SealFirst)
        } else {
            Err(ChunkError::EventTooLarge {
                size: w.len - at,
                capacity,
            })
        }
    }

    fn discard(&mut self) -> Option<(u64, u64, u32)> {
        if self.count == 0 {
            return None;
        }
        let end_seq = self.pending_end.take().unwrap_or(self.next_seq);
        let first_seq = self.range_start;
        let events = self.count;
        self.opened_at = None;
        self.range_start = end_seq;
        self.next_seq = self.next_seq.max(end_seq);
        self.count = 0;
        self.len = 0;
        Some((first_seq, end_seq, events))
    }

    fn seal<'b>(&mut self, buf: &'b mut [u8]) -> Option<Sealed<'b>> {
        if self.count == 0 {
            return None;
        }
        let end_seq = self.pending_end.take().unwrap_or(self.next_seq);
        let mut head = [0u8; HEADER_RESERVE];
        let mut w = Writer::new(&mut head, 0);
        #[cfg(feature = "secure")]
        let seal = if self.signer.is_some() {
            Seal::Signed
        } else {
            Seal::Unsigned
        };
        #[cfg(not(feature = "secure"))]
        let seal = Seal::Unsigned;
        let header = Header {
            version: FORMAT_VERSION,
            seal: seal.byte(),
            origin: self.origin,
            first_seq: self.range_start,
            end_seq,
        };
        header.write(&mut w);
        w.varint(u64::from(self.count));
        // Invariant: a header and a count always fit `HEADER_RESERVE`, which is sized for
        // the longest varints; the fallback is unreachable.
        if !w.fits() {
            return None;
        }
        let head_len = w.len;
        let start = HEADER_RESERVE - head_len;
        buf[start..HEADER_RESERVE].copy_from_slice(&head[..head_len]);
        let events = self.count;
        self.opened_at = None;
        let first_seq = self.range_start;
        self.range_start = end_seq;
        self.next_seq = self.next_seq.max(end_seq);
        self.count = 0;
        let end = HEADER_RESERVE + core::mem::take(&mut self.len);
        #[cfg(feature = "secure")]
        let (end, id) = match &self.signer {
            Some(keys) => {
                let mut signature = [0u8; SIGNATURE_LEN];
                let (_, id) = crate::hash::hash_signed(&buf[start..end], |digest| {
                    signature = keys.sign_digest(digest);
                    signature
                });
                // Room: `push` keeps `SIGNATURE_LEN` bytes free at the end of the buffer.
                buf[end..end + SIGNATURE_LEN].copy_from_slice(&signature);
                (end + SIGNATURE_LEN, id)
            }
            None => (end, ChunkHash::of(&buf[start..end])),
        };
        #[cfg(not(feature = "secure"))]
        let id = ChunkHash::of(&buf[start..end]);
        let bytes = &buf[start..end];
        Some(Sealed {
            id,
            bytes,
            origin: self.origin,
            first_seq,
            end_seq,
            events,
        })
    }
}

/// Signs the chunk in `buf[..len]`, a chunk of `keys`'s own origin sealed without a
/// signature, in place: its seal byte is set and the signature written after it, in `buf`'s
/// next [`SIGNATURE_LEN`] bytes. Returns the signed chunk's hash and length.
///
/// The result is, byte for byte, the chunk a chunker [signed by](Chunker::signed_by)
/// `keys` seals from the same events with the same buffer length and policy (every chunker
/// keeps room for a signature, so both close their chunks at the same events). It lets a
/// caller seal a log in order and sign its chunks on many threads: an Ed25519 signature
/// costs far more than sealing a small chunk.
///
/// # Errors
/// [`ChunkError::Decode`] if `buf[..len]` is not a valid chunk (or `len` is past `buf`),
/// [`ChunkError::AlreadySigned`] if it is signed, [`ChunkError::NotOriginKey`] if its
/// origin is not the node id of `keys`, and [`ChunkError::BufferTooSmall`] if `buf` has no
/// room for the signature. Nothing is changed then.
#[cfg(feature = "secure")]
pub fn sign_sealed(
    buf: &mut [u8],
    len: usize,
    keys: &crate::secure::Keypair,
) -> Result<(ChunkHash, usize), ChunkError> {
    let unsigned = buf
        .get(..len)
        .ok_or(ChunkError::Decode(DecodeError::Truncated))?;
    let view = ChunkView::validated(unsigned)?;
    if view.seal() != Seal::Unsigned {
        return Err(ChunkError::AlreadySigned);
    }
    if view.origin() != keys.node_id() {
        return Err(ChunkError::NotOriginKey {
            origin: view.origin(),
        });
    }
    let signed_len = len + SIGNATURE_LEN;
    let Some(out) = buf.get_mut(..signed_len) else {
        return Err(ChunkError::BufferTooSmall {
            required: signed_len,
        });
    };
    let (body, signature) = out.split_at_mut(len);
    // The seal byte follows the version byte.
    body[1] = Seal::Signed.byte();
    let (_, id) = crate::hash::hash_signed(body, |digest| {
        signature.copy_from_slice(&keys.sign_digest(digest));
        &*signature
    });
    Ok((id, signed_len))
}

/// A chunk that borrows its bytes: the header decoded, the events decoded as they are read.
///
/// [`ChunkView::verify`] costs one BLAKE3 pass plus a constant-time header check: that is
/// the check on the sync path, where a node stores and forwards the bytes as they are.
/// Each event is checked against the rules of the format as [`events`](Self::events)
/// reaches it; [`validate`](Self::validate) checks them all at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkView<'a> {
    bytes: &'a [u8],
    origin: NodeId,
    first_seq: u64,
    end_seq: u64,
    count: u32,
    /// Offset of the first event in `bytes`.
    events_at: usize,
    /// Where the events end: the signature, if any, follows.
    events_end: usize,
}

impl<'a> ChunkView<'a> {
    /// Checks `bytes` against `id`, then decodes the header.
    pub fn verify(id: &ChunkHash, bytes: &'a [u8]) -> Result<Self, ChunkError> {
        let verified = id.verify(bytes)?;
        Ok(Self::parse(verified.bytes())?)
    }

    /// Decodes the header and checks it: version, a non-empty range, at least one event
    /// and no more events than sequence numbers. It reads no event and checks no hash.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let Some(&version) = bytes.first() else {
            return Err(DecodeError::Truncated);
        };
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut r = Reader(bytes);
        let header = Header::read(&mut r)?;
        let count = r.u32()?;
        let events_end = match header.seal {
            0 => bytes.len(),
            1 => bytes
                .len()
                .checked_sub(SIGNATURE_LEN)
                .filter(|&end| end >= bytes.len() - r.0.len())
                .ok_or(DecodeError::Truncated)?,
            _ => return Err(DecodeError::Invalid("unknown chunk seal")),
        };
        if header.first_seq >= header.end_seq {
            return Err(DecodeError::Invalid("chunk range is empty"));
        }
        if count == 0 {
            return Err(DecodeError::Invalid("chunk holds no event"));
        }
        if u64::from(count) > header.end_seq - header.first_seq {
            return Err(DecodeError::Invalid(
                "more events than sequence numbers in range",
            ));
        }
        Ok(Self {
            bytes,
            origin: header.origin,
            first_seq: header.first_seq,
            end_seq: header.end_seq,
            count,
            events_at: bytes.len() - r.0.len(),
            events_end,
        })
    }

    /// Decodes every event and checks every rule of the format (see the
    /// [module docs](self)), including that nothing follows the last event.
    pub fn validate(&self) -> Result<(), DecodeError> {
        self.events().try_for_each(|e| e.map(drop))
    }

    /// [`parse`](Self::parse) and [`validate`](Self::validate): the whole check of bytes
    /// that already match their hash, as a node makes before it stores a received chunk.
    pub fn validated(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let view = Self::parse(bytes)?;
        view.validate()?;
        Ok(view)
    }

    /// The chunk's bytes.
    #[must_use]
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The origin of its events.
    #[must_use]
    pub const fn origin(&self) -> NodeId {
        self.origin
    }

    /// Whether the chunk is signed.
    #[must_use]
    pub const fn seal(&self) -> Seal {
        if self.events_end < self.bytes.len() {
            Seal::Signed
        } else {
            Seal::Unsigned
        }
    }

    /// The origin's signature, if the chunk is signed: its last [`SIGNATURE_LEN`] bytes.
    #[must_use]
    pub fn signature(&self) -> Option<&'a [u8; SIGNATURE_LEN]> {
        self.bytes.get(self.events_end..)?.try_into().ok()
    }

    /// The bytes a signature signs the digest of: all of a chunk's but its signature.
    #[must_use]
    pub fn signed_bytes(&self) -> &'a [u8] {
        &self.bytes[..self.events_end]
    }

    /// First sequence number covered.
    #[must_use]
    pub const fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// One past the last sequence number covered.
    #[must_use]
    pub const fn end_seq(&self) -> u64 {
        self.end_seq
    }

    /// The part of its origin's log the chunk covers.
    #[must_use]
    pub const fn span(&self) -> Span {
        Span {
            origin: self.origin,
            first_seq: self.first_seq,
            end_seq: self.end_seq,
        }
    }

    /// Number of events the header announces.
    #[must_use]
    pub const fn len(&self) -> u32 {
        self.count
    }

    /// Always `false`: a chunk announces at least one event.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The events in sequence order, borrowing the chunk's bytes. Each is checked as it is
    /// decoded; the first invalid one yields an error and ends the iteration.
    #[must_use]
    pub fn events(&self) -> Events<'a> {
        Events {
            rest: &self.bytes[self.events_at..self.events_end],
            origin: self.origin,
            next_seq: self.first_seq,
            end_seq: self.end_seq,
            left: self.count,
            failed: false,
        }
    }
}

/// Iterator over the events of a [`ChunkView`].
#[derive(Clone, Debug)]
pub struct Events<'a> {
    rest: &'a [u8],
    origin: NodeId,
    /// Lowest sequence number the next event may have.
    next_seq: u64,
    end_seq: u64,
    left: u32,
    failed: bool,
}

impl<'a> Events<'a> {
    fn decode_next(&mut self) -> Result<Event<'a>, DecodeError> {
        let mut r = Reader(self.rest);
        let e = EventRepr::read(&mut r)?;
        let rest = r.0;
        if e.seq < self.next_seq || e.seq >= self.end_seq {
            return Err(DecodeError::Invalid(
                "event sequence number out of order or out of range",
            ));
        }
        if !e.privacy.is_shareable() {
            return Err(DecodeError::Invalid("private event inside a chunk"));
        }
        self.left -= 1;
        if self.left == 0 && !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { extra: rest.len() });
        }
        // `e.seq < end_seq`, so this cannot overflow.
        self.next_seq = e.seq + 1;
        self.rest = rest;
        Ok(Event {
            origin: self.origin,
            seq: e.seq,
            timestamp: e.timestamp,
            kind: e.kind,
            privacy: e.privacy,
            payload: e.payload,
        })
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<Event<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.failed {
            return None;
        }
        let item = self.decode_next();
        self.failed = item.is_err();
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed { 0 } else { self.left as usize };
        (0, Some(left))
    }
}

/// A valid chunk of one public event of `origin` at `seq`, for tests.
#[cfg(test)]
pub(crate) fn test_chunk(origin: u64, seq: u64, payload: &[u8]) -> std::vec::Vec<u8> {
    let mut buf = [0u8; 512];
    let mut chunker = Chunker::new(NodeId(origin), 10, seq, &mut buf).unwrap();
    let event = Event {
        origin: NodeId(origin),
        seq,
        timestamp: 0,
        kind: "t",
        privacy: Privacy::Public,
        payload,
    };
    let _ = chunker.push(&event).unwrap();
    chunker.seal().unwrap().bytes.to_vec()
}

#[cfg(test)]
mod tests;
