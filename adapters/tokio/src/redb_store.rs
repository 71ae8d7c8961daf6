//! [`RedbStore`]: chunks on disk in redb, an embedded, crash-safe, pure-Rust database.
//!
//! The chunk table is keyed by hash, so the sorted set of hashes is the table's own order:
//! manifest pages are range reads and opening a store never rescans it. Chunks are written
//! only after they were verified, in transactions that are committed before the node
//! reports them as stored (a node commits together the chunks verified while its previous
//! commit ran), so a process killed at any moment loses no reported chunk and never leaves
//! bytes that do not match their hash. With [`Durability::Disk`] (the default) every commit is also synced
//! to the disk (`fdatasync` on Linux), so this holds across a power cut too; with
//! [`Durability::Process`] commits reach the operating system without waiting for the disk,
//! as `cp` and rsync do.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chunk_sync_core::recon::{self, BlockSummary, KeyRange, Run, Summary, SummaryError};
use chunk_sync_core::store::{Fork, fill_origins};
use chunk_sync_core::{ChunkHash, NodeId, Span};
use redb::backends::FileBackend;
use redb::{Database, ReadableTable, ReadableTableMetadata, StorageBackend, TableDefinition};

use crate::error::StoreError;
use crate::store::{Inserted, NodeStore, VerifiedChunk, fork_with, summary_error};

const CHUNKS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("chunks");
/// Seconds since the Unix epoch at which each chunk was stored.
const STORED_AT: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("stored_at");
const PINS: TableDefinition<'_, &[u8; 32], ()> = TableDefinition::new("pins");
/// Each chunk's span, by `(origin, first_seq)`: `(end_seq, hash)`, so that a chunk that
/// forks a stored one is found with two range reads.
const SPANS: TableDefinition<'_, (u64, u64), (u64, [u8; 32])> = TableDefinition::new("spans");
/// Summaries of whole blocks of each origin's chunks, by `(origin, block)`
/// ([`recon::BlockSummary`], see [`encode_block`]): kept once a reconciliation needed one,
/// removed in the transaction that stores or removes a chunk of the block.
const BLOCKS: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("blocks");
/// Counters and application values (`bytes`, `sealed/<origin>`, …).
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const BYTES: &str = "bytes";
/// The number of chunks and of chunk bytes when [`BLOCKS`] was last kept in step with them:
/// a store written meanwhile by a build that does not keep it (which changes either) has
/// its block summaries dropped at the next open.
const BLOCKS_LEN: &str = "blocks/chunks";
const BLOCKS_BYTES: &str = "blocks/bytes";

mod snapshot;

/// Why a [`RedbStore`] failed: the cases a user acts on are told apart.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedbError {
    /// Another process has the store open.
    InUse,
    /// The file is not a database at all (it has no database header): some other file, or
    /// one an interrupted creation left by a version that did not create stores whole.
    NotAStore,
    /// The file is a damaged store, or a database that is not a store (redb refused it
    /// or failed on it).
    Damaged(String),
    /// The store was opened read-only and was asked to write.
    ReadOnly,
    /// The file could not be read or written.
    Io(io::Error),
    /// Any other database failure.
    Db(redb::Error),
}

impl fmt::Display for RedbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse => f.write_str("the store is in use by another process"),
            Self::NotAStore => f.write_str("the file is not a chunk store"),
            Self::Damaged(why) => write!(f, "the store file is damaged: {why}"),
            Self::ReadOnly => f.write_str("the store was opened read-only"),
            Self::Io(e) => write!(f, "store file error: {e}"),
            Self::Db(e) => write!(f, "store error: {e}"),
        }
    }
}

impl std::error::Error for RedbError {}

impl From<redb::Error> for RedbError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::DatabaseAlreadyOpen => Self::InUse,
            redb::Error::Corrupted(why) => Self::Damaged(why),
            redb::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock => Self::InUse,
            redb::Error::Io(e) => Self::Io(e),
            other => Self::Db(other),
        }
    }
}

fn boxed(e: impl Into<redb::Error>) -> StoreError {
    Box::new(RedbError::from(e.into()))
}

/// Runs `f`, turning a panic inside redb (which it raises on some damaged files) into
/// [`RedbError::Damaged`].
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the database failed on it".to_owned());
        Err(Box::new(RedbError::Damaged(why)))
    })
}

/// Opens the database in `file`, which exists, for reading and writing.
fn open_db(file: File, durability: Durability) -> Result<Database, StoreError> {
    let backend = FileBackend::new(file).map_err(boxed)?;
    let builder = Database::builder();
    match durability {
        Durability::Disk => builder.create_with_backend(backend),
        Durability::Process => builder.create_with_backend(UnsyncedFile(backend)),
    }
    .map_err(refused)
}

/// Whether [`BLOCKS`] is in step with the chunks, from the counts [`BLOCKS_LEN`] and
/// [`BLOCKS_BYTES`] recorded with it.
fn blocks_in_step(
    chunks: &impl ReadableTableMetadata,
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<bool, StoreError> {
    let get = |key| -> Result<Option<u64>, StoreError> {
        Ok(meta.get(key).map_err(boxed)?.map(|v| v.value()))
    };
    let len = chunks.len().map_err(boxed)?;
    Ok(get(BLOCKS_LEN)? == Some(len) && get(BLOCKS_BYTES)? == Some(get(BYTES)?.unwrap_or(0)))
}

/// Creates whichever of the store's tables `db` lacks, and, in the same transaction, puts
/// its block summaries back in step with its chunks: drops them if a build that does not
/// keep them wrote the store meanwhile, and fills the spans table of a store made before
/// it existed.
fn with_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(boxed)?;
    {
        txn.open_table(STORED_AT).map_err(boxed)?;
        txn.open_table(PINS).map_err(boxed)?;
        let chunks = txn.open_table(CHUNKS).map_err(boxed)?;
        let mut meta = txn.open_table(META).map_err(boxed)?;
        let mut spans = txn.open_table(SPANS).map_err(boxed)?;
        let mut blocks = txn.open_table(BLOCKS).map_err(boxed)?;
        if !blocks_in_step(&chunks, &meta)? {
            if spans.is_empty().map_err(boxed)? {
                for entry in chunks.iter().map_err(boxed)? {
                    let (k, v) = entry.map_err(boxed)?;
                    if let Some(span) = Span::of(v.value()) {
                        let key = (span.origin.0, span.first_seq);
                        spans
                            .insert(key, (span.end_seq, *k.value()))
                            .map_err(boxed)?;
                    }
                }
            }
            blocks.retain(|_, _| false).map_err(boxed)?;
            let bytes = meta.get(BYTES).map_err(boxed)?.map_or(0, |v| v.value());
            meta.insert(BLOCKS_LEN, chunks.len().map_err(boxed)?)
                .map_err(boxed)?;
            meta.insert(BLOCKS_BYTES, bytes).map_err(boxed)?;
        }
    }
    txn.commit().map_err(boxed)
}

/// The error for a file redb would not open: one that does not start with a database
/// header is not a store (or is what an interrupted creation by an older version left).
fn refused(e: redb::DatabaseError) -> StoreError {
    match redb::Error::from(e) {
        redb::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            Box::new(RedbError::NotAStore)
        }
        other => Box::new(RedbError::from(other)),
    }
}

/// Creates an empty store at `path`, which does not exist: the database is made whole,
/// with its tables, under a temporary name and then linked into place, which fails rather
/// than replace a store another process created meanwhile (that one is kept).
fn create(path: &Path, durability: Durability) -> Result<(), StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".creating");
    let temporary = std::path::PathBuf::from(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&temporary)?;
    // What a killed creation left is started over, once no other process is creating it.
    if let Err(e) = file.try_lock() {
        return Err(Box::new(match e {
            std::fs::TryLockError::WouldBlock => RedbError::InUse,
            std::fs::TryLockError::Error(e) => RedbError::Io(e),
        }));
    }
    file.set_len(0)?;
    let db = open_db(file, durability)?;
    with_tables(&db)?;
    if durability == Durability::Process {
        // The one sync such a store gets: what is put in place is whole.
        File::open(&temporary)?.sync_all()?;
    }
    let placed = match std::fs::hard_link(&temporary, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        // A file system without hard links: a plain rename, if the place is still free.
        Err(_) if !path.exists() => std::fs::rename(&temporary, path),
        other => other,
    };
    drop(db);
    placed?;
    let _ = std::fs::remove_file(&temporary);
    if durability == Durability::Disk {
        // The new name reaches the disk too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which chunks [`RedbStore::gc`] removes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Remove chunks stored longer ago than this.
    pub max_age: Option<Duration>,
    /// Then remove the oldest chunks until the store holds at most this many bytes.
    pub max_bytes: Option<u64>,
}

/// What [`RedbStore::gc`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks removed.
    pub removed: u64,
    /// Bytes removed.
    pub freed: u64,
    /// Chunks kept only because they are pinned.
    pub kept_pinned: u64,
}

/// How far a chunk the store has reported as stored is safe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is synced to the disk (`fdatasync`) before its chunks count as stored:
    /// they survive the process being killed and a power cut. Writing is bounded by the
    /// disk's sustained write rate.
    #[default]
    Disk,
    /// Commits are handed to the operating system and not synced: stored chunks survive
    /// the process being killed at any moment, not a power cut, after which recent
    /// commits may be lost or the file refused as corrupt (peers hold the chunks again).
    /// [`RedbStore::flush`] syncs on demand.
    Process,
}

/// Chunks from this size on are read once for all the sessions serving them at the same
/// time, rather than copied for each.
const SHARE_FROM: usize = 64 << 10;

/// A persistent chunk store in one file.
///
/// Large chunks being served are shared: sessions that serve one at the same time hold one
/// copy of its bytes between them.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    /// With [`Durability::Process`], the file, for syncs asked for explicitly.
    unsynced: Option<File>,
    /// Large chunks some session still holds, by hash.
    serving: Mutex<BTreeMap<ChunkHash, Weak<[u8]>>>,
    /// Opened with [`RedbStore::open_read_only`]: every write is refused.
    read_only: bool,
    /// Whether the kept block summaries are in step with the chunks (a read-only store
    /// written by a build that does not keep them may have stale ones, and cannot drop them).
    trust_blocks: bool,
}

/// The database file, with redb's syncs left to the operating system.
#[derive(Debug)]
struct UnsyncedFile(FileBackend);

impl StorageBackend for UnsyncedFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.0.read(offset, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
}

impl RedbStore {
    /// Opens the store in `path`, creating it if it does not exist, with
    /// [`Durability::Disk`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::Disk)
    }

    /// Opens the store in `path`, creating it if it does not exist.
    ///
    /// A new store is made whole under a temporary name beside `path` (`path` with
    /// `.creating` appended) and only then put in place, so a process killed while creating
    /// it leaves either no store or an empty one, never a file that no later open accepts.
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref();
        guarded(|| {
            if !path.exists() {
                create(path, durability)?;
            }
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            let db = open_db(file.try_clone()?, durability)?;
            // Stores made before a table existed gain it here.
            with_tables(&db)?;
            Ok(Self {
                db,
                unsynced: matches!(durability, Durability::Process).then_some(file),
                serving: Mutex::default(),
                read_only: false,
                trust_blocks: true,
            })
        })
    }

    /// Opens an existing store for reading only: the file is never written (it may be on
    /// read-only media) and nothing is created. A missing or empty file is refused
    /// ([`RedbError::Io`], [`RedbError::Damaged`]); a store another process has open is
    /// [`RedbError::InUse`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(|e| Box::new(RedbError::Io(e)))?;
        if file.metadata()?.len() == 0 {
            return Err(Box::new(RedbError::Damaged("the file is empty".into())));
        }
        if let Err(e) = file.try_lock_shared() {
            return Err(Box::new(match e {
                std::fs::TryLockError::WouldBlock => RedbError::InUse,
                std::fs::TryLockError::Error(e) => RedbError::Io(e),
            }));
        }
        let backend = snapshot::Snapshot::new(file)?;
        guarded(|| {
            let db = Database::builder()
                .create_with_backend(backend)
                .map_err(refused)?;
            // A store always has its tables; a file without them is not one.
            let txn = db.begin_read().map_err(boxed)?;
            let chunks = txn.open_table(CHUNKS).map_err(|e| {
                Box::new(RedbError::Damaged(format!("not a chunk store: {e}"))) as StoreError
            })?;
            let trust_blocks = match txn.open_table(META) {
                Ok(meta) => blocks_in_step(&chunks, &meta)?,
                Err(_) => false,
            };
            drop(chunks);
            drop(txn);
            Ok(Self {
                db,
                unsynced: None,
                serving: Mutex::default(),
                read_only: true,
                trust_blocks,
            })
        })
    }

    fn serving(&self) -> std::sync::MutexGuard<'_, BTreeMap<ChunkHash, Weak<[u8]>>> {
        self.serving.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in a read transaction; a panic of the database is [`RedbError::Damaged`].
    /// The chunk `id` read in `txn`; large chunks are shared with the sessions serving
    /// them (see `serving`).
    fn read_chunk(
        &self,
        txn: &redb::ReadTransaction,
        id: &ChunkHash,
    ) -> Result<Option<Bytes>, StoreError> {
        if let Some(bytes) = self.serving().get(id).and_then(Weak::upgrade) {
            return Ok(Some(Bytes::from_owner(bytes)));
        }
        let table = txn.open_table(CHUNKS).map_err(boxed)?;
        let Some(value) = table.get(id.as_bytes()).map_err(boxed)? else {
            return Ok(None);
        };
        let value = value.value();
        if value.len() < SHARE_FROM {
            return Ok(Some(Bytes::copy_from_slice(value)));
        }
        let bytes: Arc<[u8]> = Arc::from(value);
        let mut serving = self.serving();
        if serving.len() >= 64 && serving.len().is_power_of_two() {
            serving.retain(|_, held| held.strong_count() > 0);
        }
        serving.insert(*id, Arc::downgrade(&bytes));
        Ok(Some(Bytes::from_owner(bytes)))
    }

    fn reading<T>(
        &self,
        f: impl FnOnce(redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        guarded(|| f(self.db.begin_read().map_err(boxed)?))
    }

    /// Runs `f` in a write transaction, refused with [`RedbError::ReadOnly`] on a store
    /// opened read-only; a panic of the database is [`RedbError::Damaged`].
    fn writing<T>(
        &self,
        f: impl FnOnce(redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.read_only {
            return Err(Box::new(RedbError::ReadOnly));
        }
        guarded(|| f(self.db.begin_write().map_err(boxed)?))
    }

    /// Commits everything to the disk itself, not just to the operating system, whatever
    /// the store's [`Durability`].
    pub fn flush(&self) -> Result<(), StoreError> {
        self.commit_immediate()?;
        if let Some(file) = &self.unsynced {
            file.sync_data()?;
        }
        Ok(())
    }

    fn commit_immediate(&self) -> Result<(), StoreError> {
        self.writing(|mut txn| {
            txn.set_durability(redb::Durability::Immediate);
            txn.commit().map_err(boxed)
        })
    }

    /// An application value, for example where an origin's log is sealed up to.
    pub fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.reading(|txn| {
            let table = txn.open_table(META).map_err(boxed)?;
            Ok(table.get(key).map_err(boxed)?.map(|v| v.value()))
        })
    }

    /// Stores several verified chunks and application values in one transaction: all of
    /// them or none, except the chunks refused as forks (they overlap a different stored
    /// chunk of their origin, or one earlier in `chunks`), which are reported.
    pub fn insert_all(
        &self,
        chunks: &[VerifiedChunk],
        meta: &[(&str, u64)],
    ) -> Result<Inserted, StoreError> {
        self.writing(|mut txn| {
            txn.set_durability(redb::Durability::Eventual);
            let mut done = Inserted::default();
            {
                let mut table = txn.open_table(CHUNKS).map_err(boxed)?;
                let mut stored_at = txn.open_table(STORED_AT).map_err(boxed)?;
                let mut spans = txn.open_table(SPANS).map_err(boxed)?;
                let mut blocks = txn.open_table(BLOCKS).map_err(boxed)?;
                let mut m = txn.open_table(META).map_err(boxed)?;
                let mut bytes = m.get(BYTES).map_err(boxed)?.map_or(0, |v| v.value());
                // Blocks whose kept summaries the new chunks make stale.
                let mut touched = std::collections::BTreeSet::new();
                let now = unix_now();
                for chunk in chunks {
                    let id = chunk.id();
                    let key = id.as_bytes();
                    if table.get(key).map_err(boxed)?.is_some() {
                        continue;
                    }
                    let span = Span::of(chunk.bytes());
                    if let Some(span) = span {
                        if let Some(fork) = fork_in(&spans, id, span)? {
                            done.forks.push(fork);
                            continue;
                        }
                        spans
                            .insert((span.origin.0, span.first_seq), (span.end_seq, *key))
                            .map_err(boxed)?;
                        touched.insert((span.origin.0, recon::block_of(span.first_seq)));
                    }
                    table.insert(key, chunk.bytes().as_ref()).map_err(boxed)?;
                    stored_at.insert(key, now).map_err(boxed)?;
                    bytes += chunk.bytes().len() as u64;
                    done.added += 1;
                }
                for block in touched {
                    blocks.remove(block).map_err(boxed)?;
                }
                m.insert(BYTES, bytes).map_err(boxed)?;
                m.insert(BLOCKS_LEN, table.len().map_err(boxed)?)
                    .map_err(boxed)?;
                m.insert(BLOCKS_BYTES, bytes).map_err(boxed)?;
                for (key, value) in meta {
                    m.insert(*key, *value).map_err(boxed)?;
                }
            }
            txn.commit().map_err(boxed)?;
            Ok(done)
        })
    }

    /// Bytes of chunk data stored.
    pub fn total_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.meta(BYTES)?.unwrap_or(0))
    }

    /// Calls `f` with every chunk, in hash order.
    pub fn for_each(&self, mut f: impl FnMut(ChunkHash, &[u8])) -> Result<(), StoreError> {
        self.reading(|txn| {
            let table = txn.open_table(CHUNKS).map_err(boxed)?;
            for entry in table.iter().map_err(boxed)? {
                let (k, v) = entry.map_err(boxed)?;
                f(ChunkHash::from_bytes(*k.value()), v.value());
            }
            Ok(())
        })
    }

    /// Keeps `id` through every [`gc`](Self::gc) until unpinned.
    pub fn pin(&self, id: &ChunkHash, pinned: bool) -> Result<(), StoreError> {
        self.writing(|txn| {
            {
                let mut pins = txn.open_table(PINS).map_err(boxed)?;
                if pinned {
                    pins.insert(id.as_bytes(), ()).map_err(boxed)?;
                } else {
                    pins.remove(id.as_bytes()).map_err(boxed)?;
                }
            }
            txn.commit().map_err(boxed)
        })
    }

    /// Removes chunks by age, then the oldest ones by total size, never a pinned one. A
    /// chunk that a session is serving keeps being served from memory; a chunk being
    /// fetched is not in the store yet. Runs in one transaction.
    pub fn gc(&self, policy: RetentionPolicy) -> Result<GcReport, StoreError> {
        let now = unix_now();
        self.writing(|mut txn| {
            txn.set_durability(redb::Durability::Immediate);
            let mut report = GcReport::default();
            {
                let mut chunks = txn.open_table(CHUNKS).map_err(boxed)?;
                let mut stored_at = txn.open_table(STORED_AT).map_err(boxed)?;
                let pins = txn.open_table(PINS).map_err(boxed)?;
                let mut spans = txn.open_table(SPANS).map_err(boxed)?;
                let mut blocks = txn.open_table(BLOCKS).map_err(boxed)?;
                let mut meta = txn.open_table(META).map_err(boxed)?;
                let mut bytes = meta.get(BYTES).map_err(boxed)?.map_or(0, |v| v.value());
                // Oldest first.
                let mut by_age: Vec<(u64, [u8; 32], u64)> = Vec::new();
                for entry in stored_at.iter().map_err(boxed)? {
                    let (k, at) = entry.map_err(boxed)?;
                    let key = *k.value();
                    let len = chunks
                        .get(&key)
                        .map_err(boxed)?
                        .map_or(0, |v| v.value().len() as u64);
                    by_age.push((at.value(), key, len));
                }
                by_age.sort_unstable();
                let cutoff = policy.max_age.map(|age| now.saturating_sub(age.as_secs()));
                for (at, key, len) in by_age {
                    let too_old = cutoff.is_some_and(|c| at < c);
                    let too_big = policy.max_bytes.is_some_and(|max| bytes > max);
                    if !too_old && !too_big {
                        continue;
                    }
                    if pins.get(&key).map_err(boxed)?.is_some() {
                        report.kept_pinned += 1;
                        continue;
                    }
                    if let Some(span) = chunks
                        .remove(&key)
                        .map_err(boxed)?
                        .and_then(|v| Span::of(v.value()))
                    {
                        spans
                            .remove((span.origin.0, span.first_seq))
                            .map_err(boxed)?;
                        blocks
                            .remove((span.origin.0, recon::block_of(span.first_seq)))
                            .map_err(boxed)?;
                    }
                    stored_at.remove(&key).map_err(boxed)?;
                    bytes = bytes.saturating_sub(len);
                    report.removed += 1;
                    report.freed += len;
                }
                meta.insert(BYTES, bytes).map_err(boxed)?;
                meta.insert(BLOCKS_LEN, chunks.len().map_err(boxed)?)
                    .map_err(boxed)?;
                meta.insert(BLOCKS_BYTES, bytes).map_err(boxed)?;
            }
            txn.commit().map_err(boxed)?;
            Ok(report)
        })
    }
}

/// One entry of [`SPANS`] as a range read yields it.
type SpanEntry<'a> = (
    redb::AccessGuard<'a, (u64, u64)>,
    redb::AccessGuard<'a, (u64, [u8; 32])>,
);

/// A block summary as [`BLOCKS`] keeps it: digest, count, first, end (little-endian), then
/// the number of runs (255: not kept) and each run's bounds.
fn encode_block(b: &BlockSummary) -> Vec<u8> {
    let mut out = Vec::with_capacity(57 + 16 * recon::BLOCK_RUNS);
    out.extend_from_slice(&b.digest);
    for v in [b.count, b.first, b.end] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    match &b.runs {
        None => out.push(u8::MAX),
        Some(runs) => {
            out.push(runs.len() as u8);
            for r in runs {
                out.extend_from_slice(&r.lo.to_le_bytes());
                out.extend_from_slice(&r.hi.to_le_bytes());
            }
        }
    }
    out
}

/// The summary [`encode_block`] wrote, or `None` for bytes that are not one.
fn decode_block(block: u64, bytes: &[u8]) -> Option<BlockSummary> {
    let word = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let digest = bytes.get(..32)?.try_into().ok()?;
    let (count, first, end) = (word(32)?, word(40)?, word(48)?);
    let expected = match *bytes.get(56)? {
        u8::MAX => 57,
        n => 57 + 16 * usize::from(n),
    };
    if bytes.len() != expected || count == 0 {
        return None;
    }
    let runs = match bytes[56] {
        u8::MAX => None,
        0 => return None,
        n if usize::from(n) > recon::BLOCK_RUNS => return None,
        n => {
            let mut runs = recon::BlockRuns::new();
            for i in 0..usize::from(n) {
                let at = 57 + 16 * i;
                runs.push(Run {
                    lo: word(at)?,
                    hi: word(at + 8)?,
                })
                .ok()?;
            }
            Some(runs)
        }
    };
    Some(BlockSummary {
        block,
        digest,
        count,
        first,
        end,
        runs,
    })
}

/// The summary of `block` of `origin` made from its chunks in [`SPANS`].
fn make_block(
    spans: &impl ReadableTable<(u64, u64), (u64, [u8; 32])>,
    origin: u64,
    block: u64,
) -> Result<Option<BlockSummary>, StoreError> {
    let (lo, hi) = recon::block_range(block);
    let mut chunks = Vec::new();
    for entry in spans.range((origin, lo)..(origin, hi)).map_err(boxed)? {
        let (span, id) = span_entry(entry)?;
        chunks.push((span.first_seq, span.end_seq, id));
    }
    BlockSummary::of(block, chunks).map_err(|_| summary_error(SummaryError::OutOfOrder))
}

/// The tables of one transaction as [`recon::summarize_by_blocks`] reads them; the blocks it
/// had to make are listed in `made`.
struct Tables<'a, S, B> {
    spans: &'a S,
    blocks: &'a B,
    /// Whether the kept summaries may be used (see [`RedbStore::trust_blocks`]).
    trusted: bool,
    made: std::cell::RefCell<Vec<(u64, u64)>>,
}

impl<S, B> recon::Blocks for Tables<'_, S, B>
where
    S: ReadableTable<(u64, u64), (u64, [u8; 32])>,
    B: ReadableTable<(u64, u64), &'static [u8]>,
{
    type Error = StoreError;

    fn next_start(&self, origin: NodeId, from: u64, hi: u64) -> Result<Option<u64>, StoreError> {
        if from >= hi {
            return Ok(None);
        }
        let mut range = self
            .spans
            .range((origin.0, from)..(origin.0, hi))
            .map_err(boxed)?;
        range
            .next()
            .map(|e| span_entry(e).map(|(span, _)| span.first_seq))
            .transpose()
    }

    fn block(&self, origin: NodeId, block: u64) -> Result<Option<BlockSummary>, StoreError> {
        if self.trusted
            && let Some(kept) = self.blocks.get((origin.0, block)).map_err(boxed)?
            && let Some(b) = decode_block(block, kept.value())
        {
            return Ok(Some(b));
        }
        self.made.borrow_mut().push((origin.0, block));
        make_block(self.spans, origin.0, block)
    }

    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError> {
        spans_in(self.spans, range, out)
    }
}

/// The chunks of `range` in [`SPANS`], as `NodeStore::chunks_in` gives them.
fn spans_in(
    spans: &impl ReadableTable<(u64, u64), (u64, [u8; 32])>,
    range: &KeyRange,
    out: &mut [(Span, ChunkHash)],
) -> Result<usize, StoreError> {
    if range.lo >= range.hi {
        return Ok(0);
    }
    let keys = (range.origin.0, range.lo)..(range.origin.0, range.hi);
    let mut n = 0;
    for (slot, entry) in out.iter_mut().zip(spans.range(keys).map_err(boxed)?) {
        *slot = span_entry(entry)?;
        n += 1;
    }
    Ok(n)
}

/// The span and id in an entry of [`SPANS`].
fn span_entry(
    entry: Result<SpanEntry<'_>, redb::StorageError>,
) -> Result<(Span, ChunkHash), StoreError> {
    let (k, v) = entry.map_err(boxed)?;
    let ((origin, first_seq), (end_seq, hash)) = (k.value(), v.value());
    let span = Span {
        origin: NodeId(origin),
        first_seq,
        end_seq,
    };
    Ok((span, ChunkHash::from_bytes(hash)))
}

/// The fork `span` of chunk `id` makes with the stored spans, if any.
fn fork_in(
    spans: &impl ReadableTable<(u64, u64), (u64, [u8; 32])>,
    id: ChunkHash,
    span: Span,
) -> Result<Option<Fork>, StoreError> {
    let at = (span.origin.0, span.first_seq);
    let neighbour = span_entry;
    let before = spans
        .range((span.origin.0, 0)..=at)
        .map_err(boxed)?
        .next_back()
        .map(neighbour)
        .transpose()?;
    let after = spans
        .range((
            std::ops::Bound::Excluded(at),
            std::ops::Bound::Included((span.origin.0, u64::MAX)),
        ))
        .map_err(boxed)?
        .next()
        .map(neighbour)
        .transpose()?;
    Ok(fork_with(id, span, before, after))
}

impl Drop for RedbStore {
    /// Leaves the file as its [`Durability`] promises: synced to the disk, or handed to the
    /// operating system.
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let _ = match self.unsynced {
            None => self.flush(),
            Some(_) => self.commit_immediate(),
        };
    }
}

impl NodeStore for RedbStore {
    fn contains(&self, id: &ChunkHash) -> Result<bool, StoreError> {
        self.reading(|txn| {
            let table = txn.open_table(CHUNKS).map_err(boxed)?;
            Ok(table.get(id.as_bytes()).map_err(boxed)?.is_some())
        })
    }

    fn get(&self, id: &ChunkHash) -> Result<Option<Bytes>, StoreError> {
        let shared = |bytes: Arc<[u8]>| Some(Bytes::from_owner(bytes));
        let held = self.serving().get(id).and_then(Weak::upgrade);
        if let Some(bytes) = held {
            return Ok(shared(bytes));
        }
        self.reading(|txn| self.read_chunk(&txn, id))
    }

    fn writes_block(&self) -> bool {
        true
    }

    fn insert(&self, chunk: VerifiedChunk) -> Result<bool, StoreError> {
        let mut done = self.insert_all(std::slice::from_ref(&chunk), &[])?;
        match done.forks.pop() {
            Some(fork) => Err(Box::new(fork)),
            None => Ok(done.added == 1),
        }
    }

    /// One transaction, one commit.
    fn insert_batch(&self, chunks: &[VerifiedChunk]) -> Result<Inserted, StoreError> {
        self.insert_all(chunks, &[])
    }

    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), StoreError> {
        self.reading(|txn| {
            let table = txn.open_table(CHUNKS).map_err(boxed)?;
            let range = match after {
                Some(a) => table.range::<&[u8; 32]>((
                    std::ops::Bound::Excluded(a.as_bytes()),
                    std::ops::Bound::Unbounded,
                )),
                None => table.range::<&[u8; 32]>(..),
            }
            .map_err(boxed)?;
            let mut n = 0;
            for entry in range {
                let (k, _) = entry.map_err(boxed)?;
                let Some(slot) = out.get_mut(n) else {
                    return Ok((n, false));
                };
                *slot = ChunkHash::from_bytes(*k.value());
                n += 1;
            }
            Ok((n, true))
        })
    }

    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), StoreError> {
        self.reading(|txn| {
            let spans = txn.open_table(SPANS).map_err(boxed)?;
            let mut failed = None;
            let found = fill_origins(out, after, |above| {
                let from = match above {
                    None => std::ops::Bound::Unbounded,
                    Some(a) => std::ops::Bound::Excluded((a.0, u64::MAX)),
                };
                let next = spans
                    .range((from, std::ops::Bound::Unbounded))
                    .map_err(boxed)
                    .and_then(|mut r| r.next().map(span_entry).transpose());
                next.unwrap_or_else(|e| {
                    failed = Some(e);
                    None
                })
                .map(|(span, _)| span.origin)
            });
            failed.map_or(Ok(found), Err)
        })
    }

    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError> {
        self.reading(|txn| spans_in(&txn.open_table(SPANS).map_err(boxed)?, range, out))
    }

    /// The span lookup and the read in one read transaction.
    fn first_in(&self, range: &KeyRange) -> Result<Option<(Span, Bytes)>, StoreError> {
        self.reading(|txn| {
            let mut first = [(Span::default(), ChunkHash::default())];
            if spans_in(&txn.open_table(SPANS).map_err(boxed)?, range, &mut first)? == 0 {
                return Ok(None);
            }
            let (span, id) = first[0];
            Ok(self.read_chunk(&txn, &id)?.map(|bytes| (span, bytes)))
        })
    }

    /// From the block summaries the store keeps; those it did not have yet are made and,
    /// unless the store is read-only, kept (made again in a write transaction, which no
    /// insert can interleave with).
    fn summarize(
        &self,
        range: &KeyRange,
        runs: &mut [Run],
    ) -> Result<(Summary, Option<usize>), StoreError> {
        let (summary, made) = self.reading(|txn| {
            let spans = txn.open_table(SPANS).map_err(boxed)?;
            let blocks = txn.open_table(BLOCKS).map_err(boxed)?;
            let tables = Tables {
                spans: &spans,
                blocks: &blocks,
                trusted: self.trust_blocks,
                made: Default::default(),
            };
            let summary =
                recon::summarize_by_blocks(&tables, range, runs).map_err(summary_error)?;
            Ok((summary, tables.made.into_inner()))
        })?;
        if !made.is_empty() && !self.read_only {
            self.writing(|mut txn| {
                // Only a cache: losing it to a crash costs a recomputation.
                txn.set_durability(redb::Durability::None);
                {
                    let spans = txn.open_table(SPANS).map_err(boxed)?;
                    let mut blocks = txn.open_table(BLOCKS).map_err(boxed)?;
                    for (origin, block) in made {
                        if let Some(b) = make_block(&spans, origin, block)? {
                            blocks
                                .insert((origin, block), encode_block(&b).as_slice())
                                .map_err(boxed)?;
                        }
                    }
                }
                txn.commit().map_err(boxed)
            })?;
        }
        Ok(summary)
    }

    fn len(&self) -> Result<usize, StoreError> {
        self.reading(|txn| {
            let table = txn.open_table(CHUNKS).map_err(boxed)?;
            Ok(usize::try_from(table.len().map_err(boxed)?).unwrap_or(usize::MAX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh path for a test's store file.
    fn temp_path(name: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("chunk-sync-redb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// A store's summary of every chunk of origin 1, from what it keeps and made chunk by
    /// chunk: the two must be equal.
    fn kept_and_plain(s: &RedbStore) -> [(Summary, Option<usize>); 2] {
        let whole = KeyRange::whole(NodeId(1));
        let (mut a, mut b) = ([Run { lo: 0, hi: 0 }; 4], [Run { lo: 0, hi: 0 }; 4]);
        [
            s.summarize(&whole, &mut a).unwrap(),
            recon::summarize(&whole, &mut b, |r, out| s.chunks_in(r, out)).unwrap(),
        ]
    }

    fn chunk(n: u8, len: usize) -> VerifiedChunk {
        let bytes = vec![n; len];
        VerifiedChunk::new(ChunkHash::of(&bytes), bytes).unwrap()
    }

    #[test]
    fn answers_range_queries() {
        let path = temp_path("ranges");
        crate::store::tests::answers_range_queries(&RedbStore::open(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn kept_block_summaries_follow_inserts_removals_and_reopens() {
        let path = temp_path("blocks");
        let whole = KeyRange::whole(NodeId(1));
        let same = |s: &RedbStore| {
            let [kept, plain] = kept_and_plain(s);
            assert_eq!(kept, plain);
        };
        {
            let s = RedbStore::open(&path).unwrap();
            crate::store::tests::summaries_follow_inserts(&s);
            same(&s);
            let mut runs = [Run { lo: 0, hi: 0 }; 4];
            let kept = s
                .reading(|txn| txn.open_table(BLOCKS).map_err(boxed)?.len().map_err(boxed))
                .unwrap();
            assert!(kept > 0, "block summaries are kept");
            // Removing chunks removes the summaries of their blocks.
            s.gc(RetentionPolicy {
                max_age: None,
                max_bytes: Some(0),
            })
            .unwrap();
            assert_eq!(s.summarize(&whole, &mut runs).unwrap().0.count, 0);
            s.insert(crate::store::tests::chunk(1, 4096, 1, "again"))
                .unwrap();
            same(&s);
        }
        same(&RedbStore::open_read_only(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
    }

    /// A store written by a build that keeps neither block summaries nor spans (simulated
    /// here by writing its tables directly) is put back in step when it is next opened.
    #[test]
    fn block_summaries_written_around_are_dropped_and_spans_rebuilt() {
        let path = temp_path("around");
        {
            let s = RedbStore::open(&path).unwrap();
            s.insert(crate::store::tests::chunk(1, 0, 1, "a")).unwrap();
            let [kept, plain] = kept_and_plain(&s);
            assert_eq!(kept, plain);
            // The other build stores a chunk of the same block, and forgets every span.
            let c = crate::store::tests::chunk(1, 1, 1, "b");
            let txn = s.db.begin_write().unwrap();
            {
                let mut chunks = txn.open_table(CHUNKS).unwrap();
                chunks
                    .insert(c.id().as_bytes(), c.bytes().as_ref())
                    .unwrap();
                let mut meta = txn.open_table(META).unwrap();
                let bytes = meta.get(BYTES).unwrap().unwrap().value();
                meta.insert(BYTES, bytes + c.bytes().len() as u64).unwrap();
                txn.open_table(SPANS).unwrap().retain(|_, _| false).unwrap();
            }
            txn.commit().unwrap();
        }
        let read_only = RedbStore::open_read_only(&path).unwrap();
        assert!(
            !read_only.trust_blocks,
            "a read-only store does not use stale summaries"
        );
        drop(read_only);
        let [kept, plain] = kept_and_plain(&RedbStore::open(&path).unwrap());
        assert_eq!(kept.0.count, 2);
        assert_eq!(kept, plain);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_damaged_block_summary_is_not_used() {
        let b = BlockSummary::of(
            0,
            [(0, 1, ChunkHash::default()), (1, 2, ChunkHash::default())],
        )
        .unwrap()
        .unwrap();
        let bytes = encode_block(&b);
        assert_eq!(decode_block(0, &bytes), Some(b));
        assert_eq!(decode_block(0, &bytes[..bytes.len() - 1]), None);
        let mut no_runs = bytes[..57].to_vec();
        no_runs[56] = 0;
        assert_eq!(decode_block(0, &no_runs), None);
    }

    #[test]
    fn reopens_with_its_chunks_and_pages_synced_to_disk() {
        reopens_with_its_chunks_and_pages(Durability::Disk, Durability::Disk);
    }

    #[test]
    fn reopens_with_its_chunks_and_pages_left_to_the_os() {
        reopens_with_its_chunks_and_pages(Durability::Process, Durability::Process);
    }

    #[test]
    fn the_file_is_the_same_whatever_the_durability() {
        reopens_with_its_chunks_and_pages(Durability::Process, Durability::Disk);
    }

    fn reopens_with_its_chunks_and_pages(write: Durability, reopen: Durability) {
        let dir = temp_path(&format!("{write:?}-{reopen:?}"));
        let ids: Vec<ChunkHash> = {
            let s = RedbStore::open_with(&dir, write).unwrap();
            let chunks: Vec<_> = (0..5).map(|n| chunk(n, 100 + usize::from(n))).collect();
            for c in &chunks {
                assert!(s.insert(c.clone()).unwrap());
            }
            assert!(!s.insert(chunks[0].clone()).unwrap());
            s.insert_all(&[], &[("sealed/1", 42)]).unwrap();
            chunks.iter().map(VerifiedChunk::id).collect()
        };
        let s = RedbStore::open_with(&dir, reopen).unwrap();
        assert_eq!(s.len().unwrap(), 5);
        assert_eq!(s.total_bytes().unwrap(), 100 + 101 + 102 + 103 + 104);
        assert_eq!(s.meta("sealed/1").unwrap(), Some(42));
        let mut sorted = ids.clone();
        sorted.sort();
        let mut page = [ChunkHash::default(); 3];
        assert_eq!(s.ids_after(None, &mut page).unwrap(), (3, false));
        assert_eq!(&page[..], &sorted[..3]);
        let cursor = page[2];
        assert_eq!(s.ids_after(Some(&cursor), &mut page).unwrap(), (2, true));
        assert_eq!(&page[..2], &sorted[3..]);
        assert_eq!(s.ids().unwrap(), sorted);
        assert_eq!(s.get(&ids[2]).unwrap().unwrap().len(), 102);

        s.pin(&ids[0], true).unwrap();
        let report = s
            .gc(RetentionPolicy {
                max_age: None,
                max_bytes: Some(250),
            })
            .unwrap();
        assert!(s.total_bytes().unwrap() <= 250 || report.kept_pinned > 0);
        assert!(s.contains(&ids[0]).unwrap(), "pinned chunks survive");
        let report = s
            .gc(RetentionPolicy {
                max_age: None,
                max_bytes: Some(0),
            })
            .unwrap();
        assert_eq!(report.kept_pinned, 1);
        assert_eq!(s.len().unwrap(), 1);
        s.flush().unwrap();
        drop(s);
        std::fs::remove_file(&dir).unwrap();
    }

    fn place(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("chunk-sync-create-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn what_a_killed_creation_left_is_started_over() {
        for durability in [Durability::Disk, Durability::Process] {
            let dir = place(&format!("{durability:?}"));
            let path = dir.join("chunks.redb");
            // A creation killed before its database was whole: half-written bytes under
            // the temporary name, nothing at the store's own.
            std::fs::write(dir.join("chunks.redb.creating"), vec![0; 70_000]).unwrap();
            assert!(
                RedbStore::open_read_only(&path).is_err(),
                "there is no store yet"
            );
            let s = RedbStore::open_with(&path, durability).unwrap();
            assert_eq!(s.len().unwrap(), 0);
            assert!(
                s.insert(VerifiedChunk::new(ChunkHash::of(b"x"), b"x".to_vec()).unwrap())
                    .unwrap()
            );
            drop(s);
            assert!(
                !dir.join("chunks.redb.creating").exists(),
                "the temporary is removed"
            );
            assert_eq!(RedbStore::open_read_only(&path).unwrap().len().unwrap(), 1);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_and_kept() {
        let dir = place("headerless");
        let path = dir.join("chunks.redb");
        let bytes = vec![0; 70_000];
        std::fs::write(&path, &bytes).unwrap();
        let e = RedbStore::open_with(&path, Durability::Disk).unwrap_err();
        assert!(
            matches!(e.downcast_ref(), Some(RedbError::NotAStore)),
            "{e}"
        );
        let e = RedbStore::open_read_only(&path).unwrap_err();
        assert!(
            matches!(e.downcast_ref(), Some(RedbError::NotAStore)),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the file is not touched"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_created_meanwhile_by_another_process_is_kept() {
        let dir = place("raced");
        let path = dir.join("chunks.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            assert!(
                s.insert(VerifiedChunk::new(ChunkHash::of(b"y"), b"y".to_vec()).unwrap())
                    .unwrap()
            );
        }
        // The other creator lost the race: its link finds the place taken.
        create(&path, Durability::Disk).unwrap();
        assert_eq!(RedbStore::open(&path).unwrap().len().unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
