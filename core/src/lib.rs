//! `chunk-sync-core`: the sans-IO heart of chunk-sync.
//!
//! This crate replicates append-only event logs by content-addressed chunks and holds every
//! piece of logic that does not need I/O, a clock or an allocator:
//!
//! | module | holds |
//! |---|---|
//! | [`time`] | [`Instant`] and [`Duration`]: `u64` microseconds, no clock |
//! | [`hash`] | [`ChunkHash`], the BLAKE3 name of a chunk, and [`Verified`] chunk bytes |
//! | [`error`] | leaf errors shared by several modules |
//! | [`event`] | [`Privacy`], the [`ChunkEvent`] trait and the default [`Event`] |
//! | [`chunk`] | the canonical chunk encoding, the streaming [`Chunker`] and [`ChunkView`] |
//! | [`manifest`] | [`Manifest`]: fixed-capacity sorted sets of chunk hashes, and pages of them |
//! | [`wire`] | [`Message`] and length-prefixed frames |
//! | [`compress`] | the codecs a piece of a chunk may travel in, and their bounds |
//! | [`delta`] | set difference of sorted hash sequences |
//! | [`throttle`] | the clock-agnostic bandwidth [`Throttle`] |
//! | [`progress`] | [`SyncProgress`] and the per-peer [`ProgressTable`] |
//! | [`recon`] | range-based reconciliation: summaries of key ranges, the puller's walk, the server's answers |
//! | [`store`] | the [`ChunkStore`] trait, and [`RamStore`](store::RamStore) |
//! | [`session`] | the sync protocol with one peer as a sans-IO state machine |
//! | [`claims`] | claims on ranges being fetched, shared by a node's sessions |
//! | [`conduit`] | the driving layer adapters run: a session over one byte stream, as actions |
//! | `secure` | (feature `secure`) keys, the Noise handshake and encrypted records |
//!
//! Time is always a parameter (`now`), bytes come in as slices and go out into caller
//! buffers, and every capacity is a const generic or a value the caller chooses. Nothing a
//! peer sends can make this crate panic: malformed input is a typed error.
//!
//! # Features
//! - `alloc`: `Vec`-backed conveniences (`EventChunkStore`, `EventBuf`, the `Buffer` impl for `Vec<u8>`).
//! - `std`: `alloc` plus std interop.
//! - `secure`: authenticated, encrypted links (`secure`, `Conduit::new_secure`).
//! - `lz4` / `lz4-compress`: receive / also send chunks compressed with LZ4.
//! - `zstd`: receive and send chunks compressed with zstd too (hosts: needs `std` and
//!   builds the C library; implies `lz4-compress`).
//! - `defmt` / `log`: route the crate's few log lines to one of these (never both).
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Keep the core honest about what it needs: `core` first, then `alloc`, `std` last.
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// `std` is opt-in: every std-only use must be imported explicitly, so a build that forgets a
// `cfg` fails on the host too instead of only on a microcontroller target.
#[cfg(any(feature = "std", test))]
extern crate std;

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

// Must come first: the macros it defines are used by the modules below.
#[macro_use]
mod fmt;

pub mod chunk;
pub mod claims;
pub mod compress;
pub mod conduit;
pub mod delta;
pub mod error;
pub mod event;
pub mod hash;
pub mod manifest;
pub mod progress;
pub mod recon;
pub mod scope;
#[cfg(feature = "secure")]
pub mod secure;
pub mod session;
pub mod store;
pub mod throttle;
pub mod time;
mod varint;
pub mod wire;

pub use chunk::{ChunkError, ChunkView, Chunker, SealPolicy, Sealed, Span};
pub use error::{CapacityError, DecodeError, InsufficientSize};
pub use event::{ChunkEvent, Event, NodeId, Privacy};
pub use hash::{ChunkHash, HashMismatch, Verified};
pub use manifest::Manifest;
pub use progress::{ProgressTable, SyncProgress};
pub use store::ChunkStore;
pub use throttle::{NotUntil, Throttle, ThrottleConfig};
pub use time::{Duration, Instant};
pub use wire::Message;

#[cfg(feature = "alloc")]
pub use chunk::EventChunkStore;
#[cfg(feature = "alloc")]
pub use event::EventBuf;

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
