//! The wire format: [`Message`]s in length-prefixed postcard frames.
//!
//! # Frames
//! A frame is a 4-byte little-endian body length followed by the body, the postcard
//! encoding of one [`Message`]. Each node announces in [`Hello`] the largest frame it
//! accepts (header included), between [`MIN_FRAME`] and [`MAX_FRAME_LIMIT`]; a frame is
//! refused as soon as its length prefix is read, before any of its body is buffered.
//! Chunks larger than a frame travel in pieces ([`Message::EventChunkPut`] carries an
//! offset and the chunk's total length, never the chunk's hash: the receiver knows which
//! chunk it asked for next, or computes the hash of a chunk sent for a range).
//!
//! The encoder and decoder are written by hand, over the crate's own varint writer and
//! reader: a fraction of the code serde generates for them. The derived `Serialize` and
//! `Deserialize` of [`Message`] stay the reference: tests check that both give the same
//! bytes, and read any bytes alike.
//!
//! Decoding any byte string yields a message, "need more bytes", or a typed
//! [`FrameError`]; it never panics. Messages borrow from the frame (queries, entries and
//! chunk data are not copied).
//!
//! # Message tags (protocol version 2)
//! | tag | message |
//! |---|---|
//! | 0 | [`Hello`] |
//! | 1 | `Query` (a [`recon::Query`](crate::recon::Query)) |
//! | 2 | `Answer` (summary entries, see [`recon::codec`](crate::recon::codec)) |
//! | 3 | `EventChunkGet` |
//! | 4 | `EventChunkPut` |
//! | 5 | `NotFound` |
//! | 6 | `Done` |
//! | 7 | `Error` |
//! | 8 | `GetRange` |
//! | 9 | `RangeEnd` |
//! | 10 | `Have` (live sessions) |
//! | 11 | `Resync` (live sessions) |
//! | 12 | `KeepAlive` (live sessions; any session to a peer with `KEEPALIVE`) |
//! | 13 | `EventChunkPutLz4` (to a peer that announced [`Capabilities::LZ4`]) |
//! | 14 | `GetIds` (to a peer that announced [`Capabilities::LIST`]) |
//! | 15 | `Ids` |
//! | 16 | `EventChunkPutZstd` (to a peer that announced [`Capabilities::ZSTD`]) |

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::compress::Codec;
use crate::error::{DecodeError, InsufficientSize};
use crate::event::NodeId;
use crate::hash::ChunkHash;
use crate::varint::{Reader, Writer};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// Bytes of the length prefix in front of every frame body.
pub const FRAME_HEADER: usize = 4;
/// The smallest maximum frame size a node may announce (BLE/LoRa-class links).
pub const MIN_FRAME: u32 = 256;
/// The largest maximum frame size a node may announce: 16 MiB.
pub const MAX_FRAME_LIMIT: u32 = 16 << 20;
/// The default maximum frame size: 64 KiB.
pub const DEFAULT_MAX_FRAME: u32 = 64 << 10;

/// Bytes of a `Query` or `Answer` frame that are not its query or entries: header, tag,
/// `last` and the byte string's length.
pub const RECON_OVERHEAD: usize = FRAME_HEADER + 1 + 1 + 5;
/// Bytes of an `EventChunkPut` frame that are not chunk data: header, tag and three
/// length varints.
const PUT_OVERHEAD: usize = FRAME_HEADER + 1 + 3 * 5;

/// Optional protocol features a node supports, announced in [`Hello`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(transparent)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// Chunks larger than a frame, sent in pieces (every node).
    pub const PIECES: Self = Self(1 << 1);
    /// Discovery by range-based reconciliation and transfer by ranges (every version-2
    /// node).
    pub const RECONCILE: Self = Self(1 << 2);
    /// Live sessions: the session stays open after the first reconciliation, each side
    /// announces chunks it stores later (`Have`) and keeps an idle link alive
    /// (`KeepAlive`), until one side ends it with `Done`. A session is live only if both
    /// sides announce this.
    pub const LIVE: Self = Self(1 << 3);
    /// Receives chunks compressed with LZ4 (`EventChunkPutLz4`, the LZ4 block format):
    /// a build with the `lz4` feature.
    pub const LZ4: Self = Self(1 << 4);
    /// Answers `GetIds` with the hashes of its chunks: a build with the `alloc` feature
    /// (the page of hashes it sends is kept in a `Vec`).
    pub const LIST: Self = Self(1 << 5);
    /// Receives chunks compressed with zstd (`EventChunkPutZstd`, zstd frames): a build
    /// with the `zstd` feature (hosts).
    pub const ZSTD: Self = Self(1 << 6);
    /// Takes `KeepAlive` in any session, not only a live one: a side that waits for its
    /// store to write what it received sends it, so that the peer, which may have sent
    /// everything, does not time out (every node of this version).
    pub const KEEPALIVE: Self = Self(1 << 7);
    /// What this build supports.
    pub const ALL: Self = Self(
        Self::PIECES.0
            | Self::RECONCILE.0
            | Self::LIVE.0
            | Self::KEEPALIVE.0
            | if cfg!(feature = "lz4") {
                Self::LZ4.0
            } else {
                0
            }
            | if cfg!(feature = "alloc") {
                Self::LIST.0
            } else {
                0
            }
            | if cfg!(feature = "zstd") {
                Self::ZSTD.0
            } else {
                0
            },
    );

    /// Whether every capability of `other` is in `self`.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// These capabilities but those of `other`.
    #[must_use]
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The capabilities both sides have.
    #[must_use]
    pub const fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

/// The first message of each side of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Hello {
    /// The sender's protocol version; sessions need equal versions.
    pub protocol: u16,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The largest frame the sender accepts, header included.
    pub max_frame: u32,
    /// The most requests (`EventChunkGet`, `GetRange`) the sender accepts outstanding at
    /// once.
    pub max_requests: u16,
    /// The most ranges the sender answers in one `Answer` (and asks about in one `Query`).
    pub max_ranges: u16,
    /// Optional features the sender supports.
    pub capabilities: Capabilities,
    /// The most bytes per second the sender wants to receive in this session, every frame
    /// counted (`0`: no limit). The peer sends no faster than the lower of this and its
    /// own limit.
    pub max_receive_rate: u64,
}

/// Why a peer ended a session, as sent in [`Message::Error`]. Unknown codes are kept as
/// they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The protocol versions differ.
    pub const PROTOCOL_VERSION: Self = Self(1);
    /// A frame could not be decoded.
    pub const MALFORMED: Self = Self(2);
    /// A valid message that is not allowed at this point.
    pub const UNEXPECTED: Self = Self(3);
    /// A frame exceeded the announced maximum.
    pub const FRAME_TOO_LARGE: Self = Self(4);
    /// The peer sent too much (requests, bytes) for the sender's limits.
    pub const LIMIT_EXCEEDED: Self = Self(5);
    /// The peer was silent for too long.
    pub const TIMED_OUT: Self = Self(6);
    /// The sender failed for a reason of its own.
    pub const INTERNAL: Self = Self(7);
    /// The sender does not let the receiver's key sync with it.
    pub const REFUSED: Self = Self(8);
}

/// A protocol message. Each borrows the frame it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message<'a> {
    /// Opens a session: version, identity, limits, capabilities.
    Hello(Hello),
    /// A reconciliation query ([`recon::Query`](crate::recon::Query), in its own
    /// encoding): the receiver answers with one `Answer`, in the order queries came.
    Query {
        /// The encoded query.
        #[serde(with = "serde_bytes", borrow)]
        query: &'a [u8],
    },
    /// The answer to the oldest `Query` not answered: one summary entry per range asked
    /// about ([`recon::codec`](crate::recon::codec)).
    Answer {
        /// Whether the answer ends the sender's origins (always set for ranges).
        last: bool,
        /// The encoded entries.
        #[serde(with = "serde_bytes", borrow)]
        entries: &'a [u8],
    },
    /// Asks for a chunk by hash.
    EventChunkGet {
        /// The chunk wanted.
        hash: ChunkHash,
    },
    /// A chunk, or a piece of one: `data` is the chunk's bytes from `offset` on. Which
    /// chunk it is follows from the requests: the one asked for by hash, or the next of the
    /// range asked for.
    EventChunkPut {
        /// The whole chunk's length.
        total_len: u32,
        /// Where `data` starts in the chunk.
        offset: u32,
        /// The bytes.
        #[serde(with = "serde_bytes", borrow)]
        data: &'a [u8],
    },
    /// The sender does not have the requested chunk.
    NotFound {
        /// The chunk asked for.
        hash: ChunkHash,
    },
    /// The sender has fetched everything it wanted from the receiver.
    Done,
    /// The sender ends the session because of an error.
    Error {
        /// Why.
        code: ErrorCode,
        /// A human-readable explanation.
        reason: &'a str,
    },
    /// Asks for every chunk of `origin` whose `first_seq` lies in `lo..hi`: the receiver
    /// sends them in ascending `first_seq` as `EventChunkPut`s, then `RangeEnd`.
    GetRange {
        /// Whose chunks.
        origin: NodeId,
        /// The lowest `first_seq` wanted.
        lo: u64,
        /// One past the highest `first_seq` wanted.
        hi: u64,
    },
    /// The sender has sent every chunk it holds of the oldest `GetRange` not ended.
    RangeEnd,
    /// Live sessions: the sender has stored chunks of `origin` whose `first_seq` lies in
    /// `lo..hi` since it last said so (sealed there, or received from another node). The
    /// receiver fetches what it lacks of them.
    Have {
        /// Whose chunks.
        origin: NodeId,
        /// The lowest `first_seq` stored.
        lo: u64,
        /// One past the highest `first_seq` stored.
        hi: u64,
    },
    /// Live sessions: the sender has stored more than it could announce one by one; the
    /// receiver reconciles with its whole store again.
    Resync,
    /// Nothing else to send for a while; the link is alive. Sent in live sessions, and in
    /// any session by a side that waits for its store to write what it received, to a
    /// peer that announced [`Capabilities::KEEPALIVE`].
    KeepAlive,
    /// A piece of a chunk compressed with the LZ4 block format: `data` decompresses to the
    /// `len` bytes of the chunk from `offset` on (sent only to a peer that announced
    /// [`Capabilities::LZ4`]). As for `EventChunkPut`, the chunk it belongs to follows from
    /// the requests, and it is verified by the hash of its uncompressed bytes.
    EventChunkPutLz4 {
        /// The whole chunk's length, uncompressed.
        total_len: u32,
        /// Where the piece starts in the chunk.
        offset: u32,
        /// How many bytes of the chunk the piece holds, uncompressed.
        len: u32,
        /// The compressed bytes.
        #[serde(with = "serde_bytes", borrow)]
        data: &'a [u8],
    },
    /// Asks for the hashes of every chunk of `origin` whose `first_seq` lies in `lo..hi`
    /// (sent only to a peer that announced [`Capabilities::LIST`]): the receiver answers
    /// with `Ids` frames, in ascending `first_seq`, until one ends the range.
    GetIds {
        /// Whose chunks.
        origin: NodeId,
        /// The lowest `first_seq` wanted.
        lo: u64,
        /// One past the highest `first_seq` wanted.
        hi: u64,
    },
    /// Hashes of the oldest `GetIds` not ended: those of the sender's chunks whose
    /// `first_seq` lies from where the last `Ids` left it (or the request's `lo`) up to
    /// `next`; `next` at or past the request's `hi` ends the request.
    Ids {
        /// Where the next `Ids` of the request starts.
        next: u64,
        /// The hashes, 32 bytes each.
        #[serde(with = "serde_bytes", borrow)]
        ids: &'a [u8],
    },
    /// A piece of a chunk compressed with zstd, as `EventChunkPutLz4` is with LZ4 (sent
    /// only to a peer that announced [`Capabilities::ZSTD`]).
    EventChunkPutZstd {
        /// The whole chunk's length, uncompressed.
        total_len: u32,
        /// Where the piece starts in the chunk.
        offset: u32,
        /// How many bytes of the chunk the piece holds, uncompressed.
        len: u32,
        /// The compressed bytes: one or more zstd frames.
        #[serde(with = "serde_bytes", borrow)]
        data: &'a [u8],
    },
}

impl<'a> Message<'a> {
    /// Chunk bytes that fit one `EventChunkPut` in a frame of `max_frame` bytes.
    #[must_use]
    pub const fn piece_capacity(max_frame: u32) -> usize {
        (max_frame as usize).saturating_sub(PUT_OVERHEAD)
    }

    /// The size of this message's frame, header included.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        // A writer with no room counts what it would write.
        let mut w = Writer::new(&mut [], FRAME_HEADER);
        self.write_body(&mut w);
        w.len
    }

    /// Writes the body: postcard's encoding of the message (the variant's tag, then its
    /// fields in order), written by hand in one pass for every message.
    fn write_body(&self, w: &mut Writer<'_>) {
        match *self {
            Self::Hello(h) => {
                w.varint(tag::HELLO);
                w.varint(u64::from(h.protocol));
                w.varint(h.node_id.0);
                w.varint(u64::from(h.max_frame));
                w.varint(u64::from(h.max_requests));
                w.varint(u64::from(h.max_ranges));
                w.varint(u64::from(h.capabilities.0));
                w.varint(h.max_receive_rate);
            }
            Self::Query { query } => {
                w.varint(tag::QUERY);
                w.byte_string(query);
            }
            Self::Answer { last, entries } => {
                w.varint(tag::ANSWER);
                w.bytes(&[u8::from(last)]);
                w.byte_string(entries);
            }
            Self::EventChunkGet { hash } | Self::NotFound { hash } => {
                let is_get = matches!(self, Self::EventChunkGet { .. });
                w.varint(if is_get { tag::GET } else { tag::NOT_FOUND });
                w.bytes(hash.as_bytes());
            }
            Self::EventChunkPut {
                total_len,
                offset,
                data,
            } => {
                put_fields(w, total_len, offset, data.len());
                w.bytes(data);
            }
            Self::Done => w.varint(tag::DONE),
            Self::Error { code, reason } => {
                w.varint(tag::ERROR);
                w.varint(u64::from(code.0));
                w.byte_string(reason.as_bytes());
            }
            Self::GetRange { origin, lo, hi }
            | Self::Have { origin, lo, hi }
            | Self::GetIds { origin, lo, hi } => {
                w.varint(match self {
                    Self::GetRange { .. } => tag::GET_RANGE,
                    Self::Have { .. } => tag::HAVE,
                    _ => tag::GET_IDS,
                });
                w.varint(origin.0);
                w.varint(lo);
                w.varint(hi);
            }
            Self::RangeEnd => w.varint(tag::RANGE_END),
            Self::Resync => w.varint(tag::RESYNC),
            Self::KeepAlive => w.varint(tag::KEEP_ALIVE),
            Self::EventChunkPutLz4 {
                total_len,
                offset,
                len,
                data,
            } => {
                put_compressed_fields(w, Codec::Lz4, (total_len, offset, len), data.len());
                w.bytes(data);
            }
            Self::EventChunkPutZstd {
                total_len,
                offset,
                len,
                data,
            } => {
                put_compressed_fields(w, Codec::Zstd, (total_len, offset, len), data.len());
                w.bytes(data);
            }
            Self::Ids { next, ids } => {
                w.varint(tag::IDS);
                w.varint(next);
                w.byte_string(ids);
            }
        }
    }

    /// Reads a body written by [`write_body`](Self::write_body).
    fn read_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let tag = u64::from(r.u32()?);
        let message = match tag {
            tag::HELLO => Self::Hello(Hello {
                protocol: r.u16()?,
                node_id: NodeId(r.u64()?),
                max_frame: r.u32()?,
                max_requests: r.u16()?,
                max_ranges: r.u16()?,
                capabilities: Capabilities(r.u32()?),
                max_receive_rate: r.u64()?,
            }),
            tag::QUERY => Self::Query {
                query: r.byte_string()?,
            },
            tag::ANSWER => Self::Answer {
                last: r.bool()?,
                entries: r.byte_string()?,
            },
            tag::GET | tag::NOT_FOUND => {
                // `take(32)` gives 32 bytes or fails: the conversion always succeeds.
                let bytes = r.take(32)?.try_into().map_err(|_| DecodeError::Truncated)?;
                let hash = ChunkHash::from_bytes(bytes);
                if tag == tag::GET {
                    Self::EventChunkGet { hash }
                } else {
                    Self::NotFound { hash }
                }
            }
            tag::PUT => Self::EventChunkPut {
                total_len: r.u32()?,
                offset: r.u32()?,
                data: r.byte_string()?,
            },
            tag::DONE => Self::Done,
            tag::ERROR => Self::Error {
                code: ErrorCode(r.u16()?),
                reason: core::str::from_utf8(r.byte_string()?)
                    .map_err(|_| DecodeError::Malformed)?,
            },
            tag::GET_RANGE | tag::HAVE | tag::GET_IDS => {
                let (origin, lo, hi) = (NodeId(r.u64()?), r.u64()?, r.u64()?);
                match tag {
                    tag::GET_RANGE => Self::GetRange { origin, lo, hi },
                    tag::HAVE => Self::Have { origin, lo, hi },
                    _ => Self::GetIds { origin, lo, hi },
                }
            }
            tag::IDS => Self::Ids {
                next: r.u64()?,
                ids: r.byte_string()?,
            },
            tag::RANGE_END => Self::RangeEnd,
            tag::RESYNC => Self::Resync,
            tag::KEEP_ALIVE => Self::KeepAlive,
            tag::PUT_LZ4 => Self::EventChunkPutLz4 {
                total_len: r.u32()?,
                offset: r.u32()?,
                len: r.u32()?,
                data: r.byte_string()?,
            },
            tag::PUT_ZSTD => Self::EventChunkPutZstd {
                total_len: r.u32()?,
                offset: r.u32()?,
                len: r.u32()?,
                data: r.byte_string()?,
            },
            _ => return Err(DecodeError::Malformed),
        };
        Ok(message)
    }
}

/// The enum tag of each message (see the table in the module docs).
mod tag {
    pub(super) const HELLO: u64 = 0;
    pub(super) const QUERY: u64 = 1;
    pub(super) const ANSWER: u64 = 2;
    pub(super) const GET: u64 = 3;
    pub(super) const PUT: u64 = 4;
    pub(super) const NOT_FOUND: u64 = 5;
    pub(super) const DONE: u64 = 6;
    pub(super) const ERROR: u64 = 7;
    pub(super) const GET_RANGE: u64 = 8;
    pub(super) const RANGE_END: u64 = 9;
    pub(super) const HAVE: u64 = 10;
    pub(super) const RESYNC: u64 = 11;
    pub(super) const KEEP_ALIVE: u64 = 12;
    pub(super) const PUT_LZ4: u64 = 13;
    pub(super) const GET_IDS: u64 = 14;
    pub(super) const IDS: u64 = 15;
    pub(super) const PUT_ZSTD: u64 = 16;
}

/// The fields of an `EventChunkPut` before its data: the tag, the lengths and the offset.
fn put_fields(w: &mut Writer<'_>, total_len: u32, offset: u32, data_len: usize) {
    w.varint(tag::PUT);
    w.varint(u64::from(total_len));
    w.varint(u64::from(offset));
    w.varint(data_len as u64);
}

/// The fields of a compressed piece (`EventChunkPutLz4`, `EventChunkPutZstd`) before its
/// data.
fn put_compressed_fields(
    w: &mut Writer<'_>,
    codec: Codec,
    (total_len, offset, len): (u32, u32, u32),
    data_len: usize,
) {
    w.varint(match codec {
        Codec::Lz4 => tag::PUT_LZ4,
        Codec::Zstd => tag::PUT_ZSTD,
    });
    w.varint(u64::from(total_len));
    w.varint(u64::from(offset));
    w.varint(u64::from(len));
    w.varint(data_len as u64);
}

/// Bytes of an `Ids` frame that are not hashes, at most: header, tag, `next` and the
/// length.
const IDS_OVERHEAD: usize = FRAME_HEADER + 1 + 10 + 5;

/// The most hashes a node puts in one `Ids` frame (64 KiB of them).
pub const MAX_IDS: usize = 2048;

/// How many hashes one `Ids` frame of at most `max_frame` bytes holds.
#[must_use]
pub const fn ids_capacity(max_frame: u32) -> usize {
    (max_frame as usize).saturating_sub(IDS_OVERHEAD) / 32
}

/// The most bytes an `Ids` frame of `n` hashes takes.
#[must_use]
pub const fn ids_frame_len(n: usize) -> usize {
    IDS_OVERHEAD + 32 * n
}

/// Writes at the start of `buf` the `Ids` frame of `ids` and `next`, and returns it.
pub fn encode_ids<'b, 'i>(
    next: u64,
    ids: impl ExactSizeIterator<Item = &'i ChunkHash>,
    buf: &'b mut [u8],
) -> Result<&'b [u8], InsufficientSize> {
    let mut w = Writer::new(buf, FRAME_HEADER);
    w.varint(tag::IDS);
    w.varint(next);
    w.varint((ids.len() * 32) as u64);
    for id in ids {
        w.bytes(id.as_bytes());
    }
    finish_frame(w, 0)
}

/// The hashes an `Ids` frame carries, or `None` if its bytes are not a whole number of
/// hashes.
pub fn ids_of(bytes: &[u8]) -> Option<impl ExactSizeIterator<Item = ChunkHash> + '_> {
    let (hashes, rest) = bytes.as_chunks::<32>();
    rest.is_empty()
        .then(|| hashes.iter().map(|h| ChunkHash::from_bytes(*h)))
}

/// Why bytes from a peer are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces a frame larger than allowed.
    TooLarge {
        /// The announced frame length, header included.
        len: u64,
        /// The largest frame accepted.
        max: u32,
    },
    /// The body is not a valid message.
    Decode(DecodeError),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            Self::Decode(e) => write!(f, "malformed frame: {e}"),
        }
    }
}

impl core::error::Error for FrameError {}

/// What [`decode`] found at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The buffer holds only part of a frame: `needed` bytes in all are required (the
    /// header alone, while it is incomplete).
    Incomplete {
        /// Total bytes the buffer must hold.
        needed: usize,
    },
    /// A whole frame.
    Frame {
        /// The message.
        message: Message<'a>,
        /// Bytes of the buffer it used; drop them before decoding the next frame.
        len: usize,
    },
}

/// Writes `message` as a frame at the start of `buf` and returns the frame.
pub fn encode<'b>(message: &Message<'_>, buf: &'b mut [u8]) -> Result<&'b [u8], InsufficientSize> {
    let mut w = Writer::new(buf, FRAME_HEADER);
    message.write_body(&mut w);
    finish_frame(w, 0)
}

/// Writes the frame header of an `EventChunkPut` whose `data_len` data bytes the caller
/// sends right after it, and returns the header.
///
/// The header followed by the data is byte for byte the frame [`encode`] writes for the
/// same `EventChunkPut`, so a sender can write chunk data straight from where it is kept
/// instead of copying it into the frame buffer.
pub fn encode_put_head(
    total_len: u32,
    offset: u32,
    data_len: usize,
    buf: &mut [u8],
) -> Result<&[u8], InsufficientSize> {
    let mut w = Writer::new(buf, FRAME_HEADER);
    put_fields(&mut w, total_len, offset, data_len);
    finish_frame(w, data_len)
}

/// Puts the length prefix in front of the body `w` wrote (which the caller completes with
/// `more` bytes sent after it) and returns the bytes written.
fn finish_frame(w: Writer<'_>, more: usize) -> Result<&[u8], InsufficientSize> {
    let len = w.len;
    let too_small = InsufficientSize { required: len };
    let body_len = (len - FRAME_HEADER).checked_add(more).ok_or(too_small)?;
    let prefix = u32::try_from(body_len).map_err(|_| too_small)?;
    if !w.fits() {
        return Err(too_small);
    }
    let frame = w.into_buf().get_mut(..len).ok_or(too_small)?;
    if let Some(head) = frame.first_chunk_mut::<FRAME_HEADER>() {
        *head = prefix.to_le_bytes();
    }
    Ok(frame)
}

/// Bytes of a compressed piece's frame that are not compressed data, at most: header, tag
/// and four length varints.
#[cfg(feature = "lz4-compress")]
const PUT_COMPRESSED_OVERHEAD: usize = FRAME_HEADER + 1 + 4 * 5;

/// The buffer [`encode_put_compressed`] needs to compress `raw_len` bytes with any codec:
/// the frame's head and the most LZ4 may write (zstd is given as much room).
#[cfg(feature = "lz4-compress")]
#[must_use]
pub const fn put_compressed_buffer(raw_len: usize) -> usize {
    PUT_COMPRESSED_OVERHEAD + lz4_flex::block::get_maximum_output_size(raw_len)
}

/// Writes at the start of `buf` the frame of a piece compressed with `codec`
/// (`EventChunkPutLz4`, `EventChunkPutZstd`): `raw`, the chunk's bytes from `offset` on.
/// Returns its length; `None` if compressing them does not save at least a sixteenth of
/// them, if the frame would be longer than `max_frame`, if `buf` is shorter than
/// [`put_compressed_buffer`] says (LZ4 wants room for its worst case), or if this build
/// does not compress with `codec`.
#[cfg(feature = "lz4-compress")]
pub fn encode_put_compressed(
    codec: Codec,
    (total_len, offset): (u32, u32),
    raw: &[u8],
    buf: &mut [u8],
    max_frame: usize,
) -> Option<usize> {
    let data = buf.get_mut(PUT_COMPRESSED_OVERHEAD..put_compressed_buffer(raw.len()))?;
    let n = codec.compress_into(raw, data)?;
    let mut head = [0u8; PUT_COMPRESSED_OVERHEAD];
    let mut w = Writer::new(&mut head, FRAME_HEADER);
    let len = u32::try_from(raw.len()).ok()?;
    put_compressed_fields(&mut w, codec, (total_len, offset, len), n);
    let start = w.len;
    if n >= raw.len() - raw.len() / 16 || start + n > max_frame {
        return None;
    }
    let body = u32::try_from(start - FRAME_HEADER + n).ok()?;
    head[..FRAME_HEADER].copy_from_slice(&body.to_le_bytes());
    buf.copy_within(PUT_COMPRESSED_OVERHEAD..PUT_COMPRESSED_OVERHEAD + n, start);
    buf[..start].copy_from_slice(&head[..start]);
    Some(start + n)
}

/// Decodes the frame at the start of `buf`, refusing any frame longer than `max_frame`
/// bytes as soon as its header is complete.
pub fn decode(buf: &[u8], max_frame: u32) -> Result<Decoded<'_>, FrameError> {
    let Some((head, rest)) = buf.split_first_chunk::<FRAME_HEADER>() else {
        return Ok(Decoded::Incomplete {
            needed: FRAME_HEADER,
        });
    };
    let body_len = u32::from_le_bytes(*head);
    let len = u64::from(body_len) + FRAME_HEADER as u64;
    if len > u64::from(max_frame) {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    // `len <= max_frame <= u32::MAX`, so these conversions are lossless.
    let (len, body_len) = (len as usize, body_len as usize);
    let Some(body) = rest.get(..body_len) else {
        return Ok(Decoded::Incomplete { needed: len });
    };
    let mut r = Reader(body);
    let message = Message::read_body(&mut r).map_err(FrameError::Decode)?;
    if !r.0.is_empty() {
        return Err(FrameError::Decode(DecodeError::TrailingBytes {
            extra: r.0.len(),
        }));
    }
    Ok(Decoded::Frame { message, len })
}

#[cfg(test)]
mod tests;
