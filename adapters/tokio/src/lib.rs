//! `chunk-sync-tokio`: chunk-sync for host services on tokio.
//!
//! A [`Node`] owns a store and a node-wide throttle and runs any number of sync sessions
//! concurrently: it listens on TCP ([`Node::listen`]), syncs with a peer by address
//! ([`Node::sync_with`]) or over any `AsyncRead + AsyncWrite` stream ([`Node::sync_over`]),
//! so TLS or QUIC streams plug in. Each session is the core's sans-IO
//! [`Conduit`](chunk_sync_core::conduit::Conduit) (a [`Session`](chunk_sync_core::session::Session)
//! and everything between it and a byte stream), driven by one task that does the socket
//! I/O and the store calls; this crate makes no protocol decision of its own.
//!
//! Stores implement [`NodeStore`] ([`MemStore`], and `RedbStore` with the `redb` feature);
//! they synchronise themselves, so sessions read concurrently and never wait for a write in
//! progress, and a store whose writes wait on a disk is written on a blocking thread while
//! the transfer goes on, its chunks counted as synced only once written.
//!
//! The original document's API is here with the same meaning: [`EventChunkSyncManager`],
//! [`ThrottleConfig`], [`DeltaSyncProtocol`] and the progress methods.
//!
//! ```no_run
//! use chunk_sync_tokio::{EventChunkSyncManager, ThrottleConfig};
//! use chunk_sync_tokio::core::NodeId;
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), chunk_sync_tokio::Error> {
//! let config = ThrottleConfig { max_bytes_per_sec: 1_000_000, window_duration: Duration::from_secs(1) };
//! let manager = EventChunkSyncManager::new(NodeId(1), config);
//! let listener = manager.node().listen("127.0.0.1:7000").await?;
//! let report = manager.node().sync_with("127.0.0.1:7001").await?;
//! println!("{:.1}% synced", report.progress.progress_percent());
//! # drop(listener); Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub use chunk_sync_core as core;

mod append;
mod config;
mod connections;
mod driver;
mod error;
mod events;
mod listener;
mod log;
mod manager;
mod node;
mod output;
mod peers;
mod progress;
#[cfg(feature = "redb")]
mod redb_store;
mod security;
mod shared;
mod signing;
mod store;
mod time;
mod writes;

pub use append::SHUTDOWN_TIMEOUT;
/// The most hashes [`Node::list_from`] keeps of one peer (16,777,216: 512 MiB of them).
pub const MAX_LISTED: usize = 1 << 24;

pub use config::{Codec, Compress, NodeConfig, ThrottleConfig};
pub use error::{Error, StoreError};
pub use events::{EVENT_CAPACITY, NodeEvent};
pub use listener::Listener;
pub use log::{Appended, MAX_OWN_CHUNK};
pub use manager::{DEFAULT_CACHE_LIMIT, DeltaSyncProtocol, EventChunkSyncManager};
pub use node::{FailoverReport, Node};
pub use progress::{SyncProgress, SyncReport};
#[cfg(feature = "redb")]
pub use redb_store::{Durability, GcReport, RedbError, RedbStore, RetentionPolicy};
pub use security::{
    Access, Keypair, OriginSet, Permissions, PublicKey, Scope, Security, generate_keypair,
};
pub use signing::{Sealing, check_seals, sign_all};
pub use store::{Inserted, MemStore, MemoryLimit, NodeStore, VerifiedChunk};
