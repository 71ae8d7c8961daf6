//! `chunk-sync-embassy`: the chunk-sync session on microcontrollers.
//!
//! A [`Runner`] drives the core's sans-IO [`Conduit`](chunk_sync_core::conduit::Conduit)
//! (the same driving layer the host adapter runs) over any `embedded_io_async::{Read, Write}`
//! transport (an embassy-net `TcpSocket`, a
//! UART, …) with `embassy_time` as the clock, answering the session from a [`Store`]: any
//! core [`ChunkStore`](chunk_sync_core::store::ChunkStore) (for example a `RamStore`) is
//! one, and with the `flash` feature `FlashStore` keeps chunks in NOR flash, power-fail
//! safe (documented when that feature is on). Memory
//! comes from caller-owned [`Resources`] with a `const fn new()`, so everything can live in
//! a `static`; nothing is allocated. As in embassy-net, [`Runner::new`] returns a `Copy`
//! [`Handle`] (progress, stop) and the [`Runner`], whose [`run`](Runner::run) must be
//! awaited, typically in a task of its own.
//!
//! With the `secure` feature, `Runner::new_secure` runs the session over an
//! authenticated and encrypted link (see the `secure` module), letting in only the peer
//! keys the device lists and storing only chunks their origin signed; `Log::signed_by`
//! signs the device's own log with its key, as its peers require.
//!
//! The library picks no time driver, tick rate or timer queue: the application does.
//!
//! The transport is used from one task: the runner writes what is due, then waits for
//! input or its next deadline. Frames should be small on such links (the session's
//! `max_frame`), so that neither side blocks long on a write.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub use chunk_sync_core as core;

mod error;
#[cfg(feature = "flash")]
mod flash;
mod handle;
mod log;
mod resources;
mod runner;
#[cfg(feature = "secure")]
pub mod secure;
mod store;
mod time;

pub use error::Error;
#[cfg(feature = "flash")]
pub use flash::{FlashStore, FlashStoreError};
pub use handle::{Handle, Progress};
pub use log::{Appended, Follower, Log, LogError, SharedStore};
pub use resources::Resources;
pub use runner::{Report, Runner};
pub use store::{Store, StoreAnswer, StoreQuestion};
