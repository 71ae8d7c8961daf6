//! [`RedbStore`]: chunks on disk in redb, an embedded, crash-safe, pure-Rust database.
//!
//! Each origin's chunks are kept in packs ([`pack`]), runs of chunks consecutive in
//! `(origin, first_seq)` order stored as one entry each: storing a million small chunks
//! costs a few thousand database writes rather than millions, and serving a range of a log
//! is a sequential read. Bytes that are not a valid chunk (a library user may store any
//! bytes under their hash) are kept by hash in a table of their own. Which hash is where
//! is held in memory ([`Index`]), read from the packs when a chunk is first looked up by
//! hash.
//!
//! Chunks are written only after they were verified, in transactions that are committed
//! before the node reports them as stored (a node commits together the chunks verified
//! while its previous commit ran), so a process killed at any moment loses no reported
//! chunk and never leaves bytes that do not match their hash. With [`Durability::Disk`]
//! (the default) every commit is also synced to the disk (`fdatasync` on Linux), so this
//! holds across a power cut too; with [`Durability::Process`] commits reach the operating
//! system without waiting for the disk, as `cp` and rsync do.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chunk_sync_core::recon::{self, BlockSummary, KeyRange, Run, Summary, SummaryError};
use chunk_sync_core::store::fill_origins;
use chunk_sync_core::{ChunkHash, NodeId, Span};
use redb::ReadableTableMetadata;
use redb::backends::FileBackend;
use redb::{Database, ReadableTable, StorageBackend, TableDefinition};

use crate::error::StoreError;
use crate::store::{Inserted, NodeStore, VerifiedChunk, summary_error};
use edit::{Edit, Key, PartKey, Put};
use index::Index;
use pack::Pack;

mod edit;
mod index;
mod pack;
mod snapshot;

/// Bytes that are not a valid chunk, by hash. Stores of the first layout kept every chunk
/// here; opening one for writing moves its chunks into packs.
const LOOSE: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("chunks");
/// Seconds since the Unix epoch at which each entry of [`LOOSE`] was stored.
const STORED_AT: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("stored_at");
const PINS: TableDefinition<'_, &[u8; 32], ()> = TableDefinition::new("pins");
/// The heads of the packs, by key ([`pack`]).
const HEADS: TableDefinition<'_, Key, &[u8]> = TableDefinition::new("packs");
/// The parts of the packs' bodies, by the pack's key and the part's number.
const PARTS: TableDefinition<'_, PartKey, &[u8]> = TableDefinition::new("pack_parts");
/// The heads of the packs of the second layout (fixed entries with every hash), converted
/// and dropped when such a store is opened.
const SECOND_LAYOUT_HEADS: TableDefinition<'_, Key, &[u8]> = TableDefinition::new("pack_heads");
/// The bodies of the packs of the second layout, one entry each.
const SECOND_LAYOUT_BODIES: TableDefinition<'_, Key, &[u8]> = TableDefinition::new("pack_bodies");
/// The first layout's index of spans, dropped when such a store is converted.
const SPANS: TableDefinition<'_, (u64, u64), (u64, [u8; 32])> = TableDefinition::new("spans");
/// Summaries of whole blocks of each origin's chunks, by `(origin, block)`
/// ([`recon::BlockSummary`], see [`encode_block`]): kept once a reconciliation needed one,
/// removed in the transaction that stores or removes a chunk of the block.
const BLOCKS: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("blocks");
/// Counters and application values (`bytes`, `sealed/<origin>`, …).
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const BYTES: &str = "bytes";
/// Counters of the first layout, removed when such a store is converted.
const FIRST_LAYOUT_META: [&str; 2] = ["blocks/chunks", "blocks/bytes"];

/// Refuses a chunk longer than [`RedbStore::MAX_CHUNK`].
fn check_len(len: usize) -> Result<(), StoreError> {
    if len > RedbStore::MAX_CHUNK {
        return Err(StoreError::from(RedbError::ChunkTooLarge { len }));
    }
    Ok(())
}

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
    /// A chunk is larger than the store takes ([`RedbStore::MAX_CHUNK`] bytes): nothing of
    /// its write was stored.
    ChunkTooLarge {
        /// The chunk's length.
        len: usize,
    },
    /// A write would take the chunk bytes stored past the limit set with
    /// [`RedbStore::with_max_bytes`]: nothing of it was stored.
    Full {
        /// The limit, in bytes of chunk data.
        limit: u64,
        /// Bytes of chunk data stored before the write.
        held: u64,
        /// Bytes of chunk data the write would have added.
        adding: u64,
    },
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
            Self::ChunkTooLarge { len } => write!(
                f,
                "a chunk of {len} bytes is larger than a store takes ({} bytes)",
                RedbStore::MAX_CHUNK
            ),
            Self::Full {
                limit,
                held,
                adding,
            } => write!(
                f,
                "the store is full: it holds {held} bytes of chunks, its limit is {limit}, and \
                 {adding} more were to be stored"
            ),
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
    StoreError::from(RedbError::from(e.into()))
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
        Err(StoreError::from(RedbError::Damaged(why)))
    })
}

/// The database's own page cache (redb's default is 1 GiB, which a long write fills with
/// pages it wrote): what the store reads again is in its index and pack cache, and 16 MiB
/// served 20 concurrent pulls as fast as 32 MiB did (`scripts/bench-serve-many.sh`).
const DB_CACHE: usize = 16 << 20;

/// Opens the database in `file`, which exists, for reading and writing.
fn open_db(file: File, durability: Durability) -> Result<Database, StoreError> {
    let backend = FileBackend::new(file).map_err(boxed)?;
    let mut builder = Database::builder();
    builder.set_cache_size(DB_CACHE);
    match durability {
        Durability::Disk => builder.create_with_backend(backend),
        Durability::Process => builder.create_with_backend(UnsyncedFile(backend)),
    }
    .map_err(refused)
}

/// Creates whichever of the store's tables `db` lacks and converts a store of the first
/// layout: its chunks move from [`LOOSE`] into packs, keeping the time each was stored, and
/// its block summaries and spans are dropped. One transaction: a store is converted whole
/// or not at all.
fn with_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(boxed)?;
    {
        txn.open_table(PINS).map_err(boxed)?;
        let mut loose = txn.open_table(LOOSE).map_err(boxed)?;
        let mut stored_at = txn.open_table(STORED_AT).map_err(boxed)?;
        let mut meta = txn.open_table(META).map_err(boxed)?;
        let mut blocks = txn.open_table(BLOCKS).map_err(boxed)?;
        let mut edit = Edit::new(
            txn.open_table(HEADS).map_err(boxed)?,
            txn.open_table(PARTS).map_err(boxed)?,
        );
        let mut chunks = Vec::new();
        for entry in loose.iter().map_err(boxed)? {
            let (k, v) = entry.map_err(boxed)?;
            if let Some(span) = Span::of(v.value()) {
                chunks.push((span, ChunkHash::from_bytes(*k.value()), v.value().to_vec()));
            }
        }
        let now = unix_now();
        for (span, id, bytes) in &chunks {
            let at = stored_at.get(id.as_bytes()).map_err(boxed)?;
            let at = at.map_or(now, |v| v.value());
            // Forks were refused when these were stored: one here stays where it is.
            if edit.insert(*span, *id, bytes, at)? == Put::Added {
                loose.remove(id.as_bytes()).map_err(boxed)?;
                stored_at.remove(id.as_bytes()).map_err(boxed)?;
            }
        }
        let converted = convert_second_layout(&txn, &mut edit)?;
        edit.finish()?;
        if !chunks.is_empty() || converted {
            blocks.retain(|_, _| false).map_err(boxed)?;
        }
        for key in FIRST_LAYOUT_META {
            meta.remove(key).map_err(boxed)?;
        }
    }
    txn.delete_table(SPANS).map_err(boxed)?;
    txn.delete_table(SECOND_LAYOUT_HEADS).map_err(boxed)?;
    txn.delete_table(SECOND_LAYOUT_BODIES).map_err(boxed)?;
    txn.commit().map_err(boxed)
}

/// Whether `db` is a store of the second layout.
fn has_second_layout(db: &Database) -> Result<bool, StoreError> {
    let txn = db.begin_read().map_err(boxed)?;
    match txn.open_table(SECOND_LAYOUT_HEADS) {
        Ok(_) => Ok(true),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(boxed(e)),
    }
}

/// Moves the packs of a store of the second layout (heads of fixed entries with every
/// hash, one body entry per pack) into `edit`; whether there were any. The caller drops
/// the second layout's tables in the same transaction.
fn convert_second_layout(
    txn: &redb::WriteTransaction,
    edit: &mut Edit<'_>,
) -> Result<bool, StoreError> {
    let heads = match txn.open_table(SECOND_LAYOUT_HEADS) {
        Ok(heads) => heads,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(boxed(e)),
    };
    let bodies = txn.open_table(SECOND_LAYOUT_BODIES).map_err(boxed)?;
    let mut any = false;
    for pack in heads.iter().map_err(boxed)? {
        let (key, head) = pack.map_err(boxed)?;
        let key = key.value();
        let body = bodies
            .get(key)
            .map_err(boxed)?
            .ok_or_else(|| edit::damaged(key))?;
        let body = body.value();
        let entries = pack::decode_second_layout(head.value(), body.len());
        for e in entries.ok_or_else(|| edit::damaged(key))? {
            let span = Span {
                origin: NodeId(key.0),
                first_seq: e.first_seq,
                end_seq: e.end_seq,
            };
            // Only verified chunks were packed; a fork was refused when it came.
            let id = edit::known(&e, key)?;
            edit.insert(span, id, &body[e.bytes()], e.stored_at)?;
            any = true;
        }
    }
    Ok(any)
}

/// The error for a file redb would not open: one that does not start with a database
/// header is not a store (or is what an interrupted creation by an older version left).
fn refused(e: redb::DatabaseError) -> StoreError {
    match redb::Error::from(e) {
        redb::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            StoreError::from(RedbError::NotAStore)
        }
        other => StoreError::from(RedbError::from(other)),
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
        return Err(StoreError::from(match e {
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

/// The index of the store `txn` reads: every pack read, and the chunks whose heads do not
/// keep their hash hashed again.
fn read_index(txn: &redb::ReadTransaction) -> Result<Index, StoreError> {
    let mut packed = Vec::new();
    match txn.open_table(HEADS) {
        Ok(heads) => {
            let parts = txn.open_table(PARTS).map_err(boxed)?;
            for pack in heads.iter().map_err(boxed)? {
                let (key, head) = pack.map_err(boxed)?;
                let key = key.value();
                let mut entries =
                    pack::decode_head(head.value()).ok_or_else(|| edit::damaged(key))?;
                resolve_or_mark(&parts, key, &mut entries);
                for e in entries {
                    packed.push((edit::known(&e, key)?, (key.0, e.first_seq)));
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(boxed(e)),
    }
    let mut loose = Vec::new();
    for entry in loose_table(txn)?.iter().map_err(boxed)? {
        loose.push(ChunkHash::from_bytes(*entry.map_err(boxed)?.0.value()));
    }
    Ok(Index::of(packed, loose))
}

/// Gives the entries of the pack at `key` their hashes from its body; if its body cannot be
/// read, those lacking one get [`pack::damaged_id`], which no bytes match, so that the
/// rest of the store stays usable and `verify` reports them.
fn resolve_or_mark(parts: &impl edit::Parts, key: Key, entries: &mut [pack::Entry]) {
    if edit::resolve(parts, key, entries).is_err() {
        for e in entries.iter_mut().filter(|e| e.id.is_none()) {
            e.id = Some(pack::damaged_id(e.check));
        }
    }
}

/// The table of loose bytes, which every store has: a file without it is not a store.
fn loose_table(
    txn: &redb::ReadTransaction,
) -> Result<redb::ReadOnlyTable<&'static [u8; 32], &'static [u8]>, StoreError> {
    txn.open_table(LOOSE)
        .map_err(|e| StoreError::from(RedbError::Damaged(format!("not a chunk store: {e}"))))
}

/// Whether the store `txn` reads has chunks kept by the first layout (in [`LOOSE`]
/// though they have a span).
fn has_first_layout(txn: &redb::ReadTransaction) -> Result<bool, StoreError> {
    for entry in loose_table(txn)?.iter().map_err(boxed)? {
        if Span::of(entry.map_err(boxed)?.1.value()).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How many chunks the store `txn` reads holds, from the packs' heads alone.
fn count_chunks(txn: &redb::ReadTransaction) -> Result<usize, StoreError> {
    let mut n = loose_table(txn)?.len().map_err(boxed)? as usize;
    if let Ok(heads) = txn.open_table(HEADS) {
        for pack in heads.iter().map_err(boxed)? {
            let (key, head) = pack.map_err(boxed)?;
            let entries = pack::decode_head(head.value());
            n += entries.ok_or_else(|| edit::damaged(key.value()))?.len();
        }
    }
    Ok(n)
}

/// What a commit did to the index: the chunks it added, with their places, and those it
/// removed.
type Change = (Vec<(ChunkHash, Option<Key>)>, Vec<ChunkHash>);

/// A pack read for serving, with the key of the next pack of its origin.
#[derive(Debug)]
struct Served {
    key: Key,
    next: Option<u64>,
    pack: Pack<Bytes>,
    /// The entries whose bytes do not match their hash (damaged on the disk), ascending:
    /// never served.
    damaged: Vec<usize>,
}

impl Served {
    /// Whether `seq` of `origin` belongs in this pack.
    fn holds(&self, origin: u64, seq: u64) -> bool {
        self.key.0 == origin && self.key.1 <= seq && self.next.is_none_or(|next| seq < next)
    }
}

/// The packs read most recently, shared by every session reading from them: a session
/// serving a range reads each pack once, and sessions serving the same chunks hold one
/// copy of them. Every commit empties it.
#[derive(Debug, Default)]
struct Cache {
    /// Commits so far: a pack read before the latest is not kept.
    generation: u64,
    packs: VecDeque<Arc<Served>>,
    bytes: usize,
}

/// The most bytes of packs [`Cache`] keeps (it always keeps the latest, whatever its size).
const CACHE_BYTES: usize = 32 << 20;

impl Cache {
    fn find(&self, origin: u64, seq: u64) -> Option<Arc<Served>> {
        self.packs.iter().find(|p| p.holds(origin, seq)).cloned()
    }

    fn keep(&mut self, served: &Arc<Served>) {
        self.bytes += served.pack.body.len();
        self.packs.push_front(Arc::clone(served));
        while self.bytes > CACHE_BYTES && self.packs.len() > 1 {
            let old = self.packs.pop_back().expect("more than one");
            self.bytes -= old.pack.body.len();
        }
    }
}

/// A persistent chunk store in one file.
///
/// The store keeps in memory which hash is where: 48 bytes per chunk (a million chunks,
/// 48 MB) and a table of the chunks stored since it last sorted them (at most 65,536),
/// read from the packs when a chunk is first looked up by hash (chunks under 1 KiB, whose
/// hashes the packs do not keep, are hashed again then). Storing, counting, and serving and
/// summarising ranges do without it. Packs being served are shared: sessions that serve the
/// same chunks at the same time hold one copy of them between them.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    /// With [`Durability::Process`], the file, for syncs asked for explicitly.
    unsynced: Option<File>,
    /// Made when it is first needed ([`RedbStore::with_index`]): a process that only
    /// appends, pulls or serves ranges never hashes the store's small chunks again nor
    /// holds 48 bytes per chunk.
    index: RwLock<Option<Index>>,
    /// Held while the index is read, so that it is read once.
    reading_index: Mutex<()>,
    /// While the index is read: the commits that ended meanwhile, to be done again on it.
    pending: Mutex<Option<Vec<Change>>>,
    cache: Mutex<Cache>,
    /// Held through each write transaction, from its start to the index's update after its
    /// commit, and while the index is read: so that the index sees the commits in order,
    /// each once.
    writes: Mutex<()>,
    /// Opened with [`RedbStore::open_read_only`]: every write is refused.
    read_only: bool,
    /// The most bytes of chunk data the store takes ([`RedbStore::with_max_bytes`]).
    max_bytes: Option<u64>,
    /// Whether the kept block summaries may be used: not in a store of the first layout
    /// opened read-only, whose chunks are not in packs.
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
    /// A store written by an earlier version, which kept every chunk by hash, is converted
    /// to packs in one transaction.
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
            // A file without the store's tables is refused now, not at its first use.
            loose_table(&db.begin_read().map_err(boxed)?)?;
            Ok(Self {
                db,
                unsynced: matches!(durability, Durability::Process).then_some(file),
                index: RwLock::new(None),
                reading_index: Mutex::new(()),
                pending: Mutex::new(None),
                writes: Mutex::new(()),
                cache: Mutex::default(),
                read_only: false,
                max_bytes: None,
                trust_blocks: true,
            })
        })
    }

    /// Opens an existing store for reading only: the file is never written (it may be on
    /// read-only media) and nothing is created. A missing or empty file is refused
    /// ([`RedbError::Io`], [`RedbError::Damaged`]); a store another process has open is
    /// [`RedbError::InUse`]. A store of the first layout is read as it is: its chunks
    /// are listed, read and exported, but not summarized by range. A store of the second
    /// layout is converted in memory (which costs memory of the order of its size; open it
    /// for writing once to convert the file).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(|e| StoreError::from(RedbError::Io(e)))?;
        if file.metadata()?.len() == 0 {
            return Err(StoreError::from(RedbError::Damaged(
                "the file is empty".into(),
            )));
        }
        if let Err(e) = file.try_lock_shared() {
            return Err(StoreError::from(match e {
                std::fs::TryLockError::WouldBlock => RedbError::InUse,
                std::fs::TryLockError::Error(e) => RedbError::Io(e),
            }));
        }
        let backend = snapshot::Snapshot::new(file)?;
        guarded(|| {
            // The same bounded page cache as a writable store: redb's default (1 GiB)
            // would hold every page a scan reads.
            let db = Database::builder()
                .set_cache_size(DB_CACHE)
                .create_with_backend(backend)
                .map_err(refused)?;
            // A store of the second layout is converted, in memory only: the snapshot
            // keeps every write.
            if has_second_layout(&db)? {
                with_tables(&db)?;
            }
            // A store always has its tables; a file without them is not one.
            let first_layout = has_first_layout(&db.begin_read().map_err(boxed)?)?;
            Ok(Self {
                db,
                unsynced: None,
                index: RwLock::new(None),
                reading_index: Mutex::new(()),
                pending: Mutex::new(None),
                writes: Mutex::new(()),
                cache: Mutex::default(),
                read_only: true,
                max_bytes: None,
                trust_blocks: !first_layout,
            })
        })
    }

    /// The largest chunk the store takes, 1 GiB: a pack keeps lengths and offsets in 32
    /// bits, which a chunk this large still leaves room for beside a pack's others.
    /// (Sessions take chunks of at most 16 MiB; a chunker seals at most 1 MiB.)
    pub const MAX_CHUNK: usize = 1 << 30;

    /// Limits the chunk data the store takes to `max_bytes` (`None`: no limit, the
    /// default). A write that would pass it stores nothing and fails with
    /// [`RedbError::Full`]; what is stored is never evicted, and a store already past a
    /// lowered limit takes nothing more until `gc` or `remove_damaged` make room. The
    /// limit counts chunk bytes ([`total_bytes`](Self::total_bytes)), not the file, which
    /// is larger (see the README's figures).
    #[must_use]
    pub const fn with_max_bytes(mut self, max_bytes: Option<u64>) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The limit of [`with_max_bytes`](Self::with_max_bytes).
    #[must_use]
    pub const fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// Calls `f` with the index, reading it from the packs first if it was not yet.
    ///
    /// A lookup by hash (a peer's request) waits for no commit under way.
    fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> Result<T, StoreError> {
        {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(index) = index.as_ref() {
                return Ok(f(index));
            }
        }
        // Read once, from a snapshot, without waiting for a commit under way: the commits
        // that end meanwhile are recorded (`committed`) and done again on what was read
        // before it is put in place. One the snapshot holds already changes nothing done
        // again: adding a chunk the index has, or removing one it lacks.
        let _one = self
            .reading_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(index) = index.as_ref() {
                return Ok(f(index));
            }
        }
        *self.pending() = Some(Vec::new());
        let read = self.reading(|txn| read_index(&txn));
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        let ended = self.pending().take().unwrap_or_default();
        let mut read = read?;
        for (added, removed) in &ended {
            read.apply(added, removed);
        }
        Ok(f(index.insert(read)))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Vec<Change>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After a commit: the index learns what it added and removed, and the packs read
    /// before it are no longer served.
    fn committed(&self, added: &[(ChunkHash, Option<Key>)], removed: &[ChunkHash]) {
        {
            let mut cache = self.cache();
            cache.generation += 1;
            cache.packs.clear();
            cache.bytes = 0;
        }
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        match index.as_mut() {
            Some(index) => index.apply(added, removed),
            // Being read: done again on what is read. Not read at all: it will be read
            // with this commit in it.
            None => {
                if let Some(ended) = self.pending().as_mut() {
                    ended.push((added.to_vec(), removed.to_vec()));
                }
            }
        }
    }

    /// The pack of `origin` that holds `seq`, or if none does, the first after it.
    fn served(&self, origin: u64, seq: u64) -> Result<Option<Arc<Served>>, StoreError> {
        let generation = {
            let cache = self.cache();
            if let Some(served) = cache.find(origin, seq) {
                return Ok(Some(served));
            }
            cache.generation
        };
        let served = self.reading(|txn| {
            let heads = txn.open_table(HEADS).map_err(boxed)?;
            let key = match edit::holder(&heads, origin, seq)? {
                Some(key) => key,
                None => match edit::next_pack(&heads, (origin, seq))? {
                    Some(key) => key,
                    None => return Ok(None),
                },
            };
            let parts = txn.open_table(PARTS).map_err(boxed)?;
            let pack = edit::read_pack(&heads, &parts, key, false)?;
            let pack = pack.ok_or_else(|| edit::damaged(key))?;
            // Every chunk is hashed once, as its pack is read for serving (the pack is then
            // shared by every session that serves from it): a chunk damaged on the disk
            // is served to no one, where the receiver of a range could not tell.
            let damaged = pack
                .entries
                .iter()
                .enumerate()
                .filter(|(i, e)| {
                    let stored = ChunkHash::of(pack.chunk(*i));
                    match e.id {
                        Some(id) => stored != id,
                        None => pack::first_bytes(&stored) != e.check,
                    }
                })
                .map(|(i, _)| i)
                .collect();
            let pack = Pack {
                entries: pack.entries,
                body: Bytes::from(pack.body),
                stored: pack.stored,
                unchanged: pack.unchanged,
            };
            let next = edit::next_pack(&heads, key)?.map(|k| k.1);
            Ok(Some(Arc::new(Served {
                key,
                next,
                pack,
                damaged,
            })))
        })?;
        if let Some(served) = &served {
            let mut cache = self.cache();
            if cache.generation == generation {
                cache.keep(served);
            }
        }
        Ok(served)
    }

    /// The packed chunk of `origin` that starts at `first_seq`, if it is `id`.
    fn packed(
        &self,
        id: &ChunkHash,
        (origin, first_seq): Key,
    ) -> Result<Option<Bytes>, StoreError> {
        let cached = self.cache().find(origin, first_seq);
        if let Some(served) = cached {
            let pack = &served.pack;
            let Ok(i) = pack.find(first_seq) else {
                return Ok(None);
            };
            let bytes = pack.chunk(i);
            // Every chunk of a served pack was hashed as it was read: a damaged one is not
            // served, and a small one (whose hash the head does not keep) is hashed again.
            let matches = served.damaged.binary_search(&i).is_err()
                && pack.entries[i]
                    .id
                    .map_or_else(|| ChunkHash::of(bytes) == *id, |known| known == *id);
            return Ok(matches.then(|| Bytes::copy_from_slice(bytes)));
        }
        // Not being served: only the chunk's own parts are read.
        self.reading(|txn| {
            let heads = txn.open_table(HEADS).map_err(boxed)?;
            let Some(key) = edit::holder(&heads, origin, first_seq)? else {
                return Ok(None);
            };
            let entries = edit::entries_at(&heads, key)?;
            let Ok(i) = entries.binary_search_by_key(&first_seq, |e| e.first_seq) else {
                return Ok(None);
            };
            let parts = txn.open_table(PARTS).map_err(boxed)?;
            let bytes = edit::read_body(&parts, key, entries[i].bytes())?;
            // The hash is checked whether or not the head keeps it.
            Ok((ChunkHash::of(&bytes) == *id).then(|| Bytes::from(bytes)))
        })
    }

    /// Runs `f` in a read transaction; a panic of the database is [`RedbError::Damaged`].
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
            return Err(StoreError::from(RedbError::ReadOnly));
        }
        let _writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        guarded(|| f(self.db.begin_write().map_err(boxed)?))
    }

    /// [`writing`](Self::writing), unless another write transaction is under way: then
    /// nothing is done.
    fn try_writing(
        &self,
        f: impl FnOnce(redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::from(RedbError::ReadOnly));
        }
        let _writes = match self.writes.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
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
            let mut added = Vec::new();
            let mut repaired = Vec::new();
            {
                let mut loose = txn.open_table(LOOSE).map_err(boxed)?;
                let mut stored_at = txn.open_table(STORED_AT).map_err(boxed)?;
                let mut blocks = txn.open_table(BLOCKS).map_err(boxed)?;
                let mut m = txn.open_table(META).map_err(boxed)?;
                let mut edit = Edit::new(
                    txn.open_table(HEADS).map_err(boxed)?,
                    txn.open_table(PARTS).map_err(boxed)?,
                );
                let held = m.get(BYTES).map_err(boxed)?.map_or(0, |v| v.value());
                let mut bytes = held;
                // The chunks added to each block, in the order they were added.
                let mut touched: BTreeMap<Key, Vec<(u64, u64, ChunkHash)>> = BTreeMap::new();
                let now = unix_now();
                for chunk in chunks {
                    let id = chunk.id();
                    check_len(chunk.bytes().len())?;
                    let place = match Span::of(chunk.bytes()) {
                        Some(span) => match edit.insert(span, id, chunk.bytes(), now)? {
                            Put::Held => {
                                done.held.push(id);
                                continue;
                            }
                            // Held, and intact again: found by its hash from now on.
                            Put::Repaired(damaged) => {
                                // Its block's summary, if made while it was damaged, is made
                                // again when needed.
                                let block = (span.origin.0, recon::block_of(span.first_seq));
                                blocks.remove(block).map_err(boxed)?;
                                done.held.push(id);
                                repaired.push(damaged);
                                added.push((id, Some((span.origin.0, span.first_seq))));
                                continue;
                            }
                            Put::Fork(fork) => {
                                done.forks.push(fork);
                                continue;
                            }
                            Put::Added => {
                                let block = (span.origin.0, recon::block_of(span.first_seq));
                                let chunk = (span.first_seq, span.end_seq, id);
                                touched.entry(block).or_default().push(chunk);
                                Some((span.origin.0, span.first_seq))
                            }
                        },
                        None => {
                            let key = id.as_bytes();
                            if loose
                                .insert(key, chunk.bytes().as_ref())
                                .map_err(boxed)?
                                .is_some()
                            {
                                done.held.push(id);
                                continue;
                            }
                            stored_at.insert(key, now).map_err(boxed)?;
                            None
                        }
                    };
                    added.push((id, place));
                    bytes += chunk.bytes().len() as u64;
                    done.added += 1;
                }
                if let Some(limit) = self.max_bytes
                    && bytes > limit
                    && bytes > held
                {
                    // Dropped without a commit: nothing of the batch is stored.
                    let adding = bytes - held;
                    return Err(StoreError::from(RedbError::Full {
                        limit,
                        held,
                        adding,
                    }));
                }
                for (block, added) in touched {
                    keep_block(&edit, &mut blocks, block, added)?;
                }
                edit.finish()?;
                m.insert(BYTES, bytes).map_err(boxed)?;
                for (key, value) in meta {
                    m.insert(*key, *value).map_err(boxed)?;
                }
            }
            txn.commit().map_err(boxed)?;
            // A repaired chunk's damaged copy went by another hash if the head keeps only
            // the first bytes of its hash; its own hash now finds it.
            repaired.retain(|damaged| added.iter().all(|(id, _)| id != damaged));
            self.committed(&added, &repaired);
            Ok(done)
        })
    }

    /// Bytes of chunk data stored.
    pub fn total_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.meta(BYTES)?.unwrap_or(0))
    }

    /// Calls `f` with every chunk: each origin's in sequence order, origins ascending,
    /// then the bytes that are not valid chunks, in hash order.
    pub fn for_each(&self, mut f: impl FnMut(ChunkHash, &[u8])) -> Result<(), StoreError> {
        self.reading(|txn| {
            if let (Ok(heads), Ok(parts)) = (txn.open_table(HEADS), txn.open_table(PARTS)) {
                for head in heads.iter().map_err(boxed)? {
                    let key = head.map_err(boxed)?.0.value();
                    let pack = edit::read_pack(&heads, &parts, key, true)?;
                    let pack = pack.ok_or_else(|| edit::damaged(key))?;
                    for (i, e) in pack.entries.iter().enumerate() {
                        f(edit::known(e, key)?, pack.chunk(i));
                    }
                }
            }
            let table = txn.open_table(LOOSE).map_err(boxed)?;
            for entry in table.iter().map_err(boxed)? {
                let (k, v) = entry.map_err(boxed)?;
                f(ChunkHash::from_bytes(*k.value()), v.value());
            }
            Ok(())
        })
    }

    /// Whether [`for_each`](Self::for_each) gives the chunks in log order: always but for a
    /// store of the first layout opened read-only (not converted), whose chunks come in
    /// the order of their hashes.
    #[must_use]
    pub const fn gives_log_order(&self) -> bool {
        self.trust_blocks
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
        self.take_out(|edit, loose, stored_at, pins, mut bytes| {
            let mut report = GcReport::default();
            // Every chunk, oldest first: when stored, hash, place (`None`: loose), length.
            let mut by_age: Vec<(u64, ChunkHash, Option<Key>, u64)> = Vec::new();
            for pack in edit.heads().iter().map_err(boxed)? {
                let (key, head) = pack.map_err(boxed)?;
                let key = key.value();
                let mut entries =
                    pack::decode_head(head.value()).ok_or_else(|| edit::damaged(key))?;
                resolve_or_mark(edit.parts(), key, &mut entries);
                for e in entries {
                    let place = Some((key.0, e.first_seq));
                    let id = edit::known(&e, key)?;
                    by_age.push((e.stored_at, id, place, u64::from(e.len)));
                }
            }
            for entry in stored_at.iter().map_err(boxed)? {
                let (k, at) = entry.map_err(boxed)?;
                let key = *k.value();
                let len = loose.get(&key).map_err(boxed)?;
                let len = len.map_or(0, |v| v.value().len() as u64);
                by_age.push((at.value(), ChunkHash::from_bytes(key), None, len));
            }
            by_age.sort_unstable();
            let cutoff = policy.max_age.map(|age| now.saturating_sub(age.as_secs()));
            let mut out = Vec::new();
            for (at, id, place, len) in by_age {
                let too_old = cutoff.is_some_and(|c| at < c);
                let too_big = policy.max_bytes.is_some_and(|max| bytes > max);
                if !too_old && !too_big {
                    continue;
                }
                if pins.get(id.as_bytes()).map_err(boxed)?.is_some() {
                    report.kept_pinned += 1;
                    continue;
                }
                out.push((id, place, len));
                bytes = bytes.saturating_sub(len);
                report.removed += 1;
                report.freed += len;
            }
            Ok((out, report))
        })
    }

    /// Takes out every chunk whose bytes no longer match their hash (damaged on the disk),
    /// and returns their hashes: a damaged chunk serves no one, and once it is out the
    /// next sync fetches it again from a peer that has it. Chunks that are intact stay,
    /// pinned or not.
    ///
    /// # Errors
    /// [`RedbError::Damaged`] if the store's own structure (a pack's head or a part of
    /// its body) cannot be read: nothing is taken out then.
    pub fn remove_damaged(&self) -> Result<Vec<ChunkHash>, StoreError> {
        let removed = self.take_out(|edit, loose, _, _, _| {
            let mut out = Vec::new();
            let mut keys = Vec::new();
            for pack in edit.heads().iter().map_err(boxed)? {
                keys.push(pack.map_err(boxed)?.0.value());
            }
            for key in keys {
                let pack = edit::read_pack(edit.heads(), edit.parts(), key, true)?;
                let pack = pack.ok_or_else(|| edit::damaged(key))?;
                for (i, e) in pack.entries.iter().enumerate() {
                    let id = edit::known(e, key)?;
                    if ChunkHash::of(pack.chunk(i)) != id {
                        out.push((id, Some((key.0, e.first_seq)), u64::from(e.len)));
                    }
                }
            }
            for entry in loose.iter().map_err(boxed)? {
                let (k, v) = entry.map_err(boxed)?;
                let id = ChunkHash::from_bytes(*k.value());
                if ChunkHash::of(v.value()) != id {
                    out.push((id, None, v.value().len() as u64));
                }
            }
            let ids = out.iter().map(|(id, _, _)| *id).collect();
            Ok((out, ids))
        })?;
        Ok(removed)
    }

    /// In one write transaction: `pick` chooses chunks (hash, place, `None` for a loose
    /// one, and length) from the store's tables and its count of bytes, and they are
    /// taken out, with the
    /// summaries of their blocks and their bytes' count; returns what `pick` reported.
    fn take_out<T>(
        &self,
        pick: impl FnOnce(
            &Edit<'_>,
            &redb::Table<'_, &'static [u8; 32], &'static [u8]>,
            &redb::Table<'_, &'static [u8; 32], u64>,
            &redb::Table<'_, &'static [u8; 32], ()>,
            u64,
        ) -> Result<(Vec<(ChunkHash, Option<Key>, u64)>, T), StoreError>,
    ) -> Result<T, StoreError> {
        self.writing(|mut txn| {
            txn.set_durability(redb::Durability::Immediate);
            let mut removed = Vec::new();
            let report;
            {
                let mut loose = txn.open_table(LOOSE).map_err(boxed)?;
                let mut stored_at = txn.open_table(STORED_AT).map_err(boxed)?;
                let pins = txn.open_table(PINS).map_err(boxed)?;
                let mut blocks = txn.open_table(BLOCKS).map_err(boxed)?;
                let mut meta = txn.open_table(META).map_err(boxed)?;
                let mut edit = Edit::new(
                    txn.open_table(HEADS).map_err(boxed)?,
                    txn.open_table(PARTS).map_err(boxed)?,
                );
                let mut bytes = meta.get(BYTES).map_err(boxed)?.map_or(0, |v| v.value());
                let (picked, picked_report) = pick(&edit, &loose, &stored_at, &pins, bytes)?;
                report = picked_report;
                for (id, place, len) in picked {
                    match place {
                        Some((origin, first_seq)) => {
                            edit.remove(origin, first_seq)?;
                            blocks
                                .remove((origin, recon::block_of(first_seq)))
                                .map_err(boxed)?;
                        }
                        None => {
                            loose.remove(id.as_bytes()).map_err(boxed)?;
                            stored_at.remove(id.as_bytes()).map_err(boxed)?;
                        }
                    }
                    removed.push(id);
                    bytes = bytes.saturating_sub(len);
                }
                edit.finish()?;
                meta.insert(BYTES, bytes).map_err(boxed)?;
            }
            txn.commit().map_err(boxed)?;
            // A small chunk damaged since the index was read is in it under its true hash,
            // which the store no longer knows (it was taken out under the hash no bytes
            // match): then the index is read again when next needed.
            let stale = {
                let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
                index
                    .as_ref()
                    .is_some_and(|index| removed.iter().any(|id| !index.contains(id)))
            };
            self.committed(&[], &removed);
            if stale {
                *self.index.write().unwrap_or_else(PoisonError::into_inner) = None;
            }
            Ok(report)
        })
    }
}

/// Keeps the summary of `block` (origin, block number) in step with the chunks `added` to
/// it in this transaction (ascending, as they came): added after the block's last chunk,
/// they extend its kept summary, or start one for a block that held none, at one hash
/// step each, so that a store that appends never has to make its summaries again when
/// it is first asked; otherwise the kept summary is dropped, to be made when needed.
fn keep_block(
    edit: &Edit<'_>,
    blocks: &mut redb::Table<'_, (u64, u64), &'static [u8]>,
    (origin, block): Key,
    added: Vec<(u64, u64, ChunkHash)>,
) -> Result<(), StoreError> {
    let kept = blocks.get((origin, block)).map_err(boxed)?;
    let kept = kept.map(|v| decode_block(block, v.value()));
    let base = match kept {
        Some(Some(summary)) => Some(Some(summary)),
        // Damaged: made again when needed.
        Some(None) => None,
        None => {
            let (lo, hi) = recon::block_range(block);
            let mut held = false;
            edit::scan(edit.heads(), edit.parts(), (origin, lo, hi), false, |_| {
                held = true;
                false
            })?;
            (!held).then_some(None)
        }
    };
    let summary = base.and_then(|kept| BlockSummary::extended(kept, block, added).ok().flatten());
    match summary {
        Some(summary) => blocks.insert((origin, block), encode_block(&summary).as_slice()),
        None => blocks.remove((origin, block)).map(|_| None),
    }
    .map_err(boxed)?;
    Ok(())
}

/// The summary of `block` of `origin` made from its packed chunks.
fn make_block(
    heads: &impl edit::Heads,
    parts: &impl edit::Parts,
    origin: u64,
    block: u64,
) -> Result<Option<BlockSummary>, StoreError> {
    let (lo, hi) = recon::block_range(block);
    let mut chunks = Vec::new();
    edit::scan(heads, parts, (origin, lo, hi), true, |e| {
        chunks.extend(e.id.map(|id| (e.first_seq, e.end_seq, id)));
        true
    })?;
    BlockSummary::of(block, chunks).map_err(|_| summary_error(SummaryError::OutOfOrder))
}

/// The packed chunks of `range`, as `NodeStore::chunks_in` gives them.
fn packed_in(
    heads: &impl edit::Heads,
    parts: &impl edit::Parts,
    range: &KeyRange,
    out: &mut [(Span, ChunkHash)],
) -> Result<usize, StoreError> {
    let mut n = 0;
    if out.is_empty() {
        return Ok(0);
    }
    let bounds = (range.origin.0, range.lo, range.hi);
    edit::scan(heads, parts, bounds, true, |e| {
        let span = Span {
            origin: range.origin,
            first_seq: e.first_seq,
            end_seq: e.end_seq,
        };
        let Some(id) = e.id else { return true };
        out[n] = (span, id);
        n += 1;
        n < out.len()
    })?;
    Ok(n)
}

/// The tables of one transaction as [`recon::summarize_by_blocks`] reads them; the blocks it
/// had to make are listed in `made`.
struct Tables<'a, H, P, B> {
    heads: &'a H,
    parts: &'a P,
    blocks: &'a B,
    /// Whether the kept summaries may be used (see [`RedbStore::trust_blocks`]).
    trusted: bool,
    made: std::cell::RefCell<Vec<(u64, u64)>>,
}

impl<H, P, B> recon::Blocks for Tables<'_, H, P, B>
where
    H: edit::Heads,
    P: edit::Parts,
    B: ReadableTable<(u64, u64), &'static [u8]>,
{
    type Error = StoreError;

    fn next_start(&self, origin: NodeId, from: u64, hi: u64) -> Result<Option<u64>, StoreError> {
        let mut first = None;
        edit::scan(self.heads, self.parts, (origin.0, from, hi), false, |e| {
            first = Some(e.first_seq);
            false
        })?;
        Ok(first)
    }

    fn block(&self, origin: NodeId, block: u64) -> Result<Option<BlockSummary>, StoreError> {
        if self.trusted
            && let Some(kept) = self.blocks.get((origin.0, block)).map_err(boxed)?
            && let Some(b) = decode_block(block, kept.value())
        {
            return Ok(Some(b));
        }
        self.made.borrow_mut().push((origin.0, block));
        make_block(self.heads, self.parts, origin.0, block)
    }

    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError> {
        packed_in(self.heads, self.parts, range, out)
    }
}

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
        self.with_index(|index| index.contains(id))
    }

    fn get(&self, id: &ChunkHash) -> Result<Option<Bytes>, StoreError> {
        let (place, loose) = self.with_index(|index| (index.packed(id), index.is_loose(id)))?;
        if let Some(place) = place {
            return self.packed(id, place);
        }
        if !loose {
            return Ok(None);
        }
        self.reading(|txn| {
            let table = txn.open_table(LOOSE).map_err(boxed)?;
            let value = table.get(id.as_bytes()).map_err(boxed)?;
            Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
        })
    }

    fn writes_block(&self) -> bool {
        true
    }

    fn insert(&self, chunk: VerifiedChunk) -> Result<bool, StoreError> {
        let mut done = self.insert_all(std::slice::from_ref(&chunk), &[])?;
        match done.forks.pop() {
            Some(fork) => Err(fork.into()),
            None => Ok(done.added == 1),
        }
    }

    /// One transaction, one commit.
    fn insert_batch(&self, chunks: &[VerifiedChunk]) -> Result<Inserted, StoreError> {
        self.insert_all(chunks, &[])
    }

    /// From the index in memory: each page looks at every hash.
    fn ids_after(
        &self,
        after: Option<&ChunkHash>,
        out: &mut [ChunkHash],
    ) -> Result<(usize, bool), StoreError> {
        let mut later: Vec<ChunkHash> = self.with_index(|index| {
            index
                .ids()
                .filter(|id| after.is_none_or(|a| *id > a))
                .copied()
                .collect()
        })?;
        let last = later.len() <= out.len();
        if !last {
            later.select_nth_unstable(out.len());
            later.truncate(out.len());
        }
        later.sort_unstable();
        out[..later.len()].copy_from_slice(&later);
        Ok((later.len(), last))
    }

    fn ids(&self) -> Result<Vec<ChunkHash>, StoreError> {
        let mut ids: Vec<ChunkHash> = self.with_index(|index| index.ids().copied().collect())?;
        ids.sort_unstable();
        Ok(ids)
    }

    fn origins_after(
        &self,
        after: Option<NodeId>,
        out: &mut [NodeId],
    ) -> Result<(usize, bool), StoreError> {
        self.reading(|txn| {
            let heads = txn.open_table(HEADS).map_err(boxed)?;
            let mut failed = None;
            let found = fill_origins(out, after, |above| {
                let from = match above {
                    None => std::ops::Bound::Unbounded,
                    Some(a) => std::ops::Bound::Excluded((a.0, u64::MAX)),
                };
                let next = heads
                    .range((from, std::ops::Bound::Unbounded))
                    .map_err(boxed)
                    .and_then(|mut r| r.next().transpose().map_err(boxed));
                next.unwrap_or_else(|e| {
                    failed = Some(e);
                    None
                })
                .map(|(key, _)| NodeId(key.value().0))
            });
            failed.map_or(Ok(found), Err)
        })
    }

    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, StoreError> {
        self.reading(|txn| {
            let heads = txn.open_table(HEADS).map_err(boxed)?;
            let parts = txn.open_table(PARTS).map_err(boxed)?;
            packed_in(&heads, &parts, range, out)
        })
    }

    /// From the packs read for serving: a session serving a range reads each pack once.
    fn first_in(&self, range: &KeyRange) -> Result<Option<(Span, Bytes)>, StoreError> {
        let origin = range.origin.0;
        let mut seq = range.lo;
        while seq < range.hi {
            let Some(served) = self.served(origin, seq)? else {
                return Ok(None);
            };
            let pack = &served.pack;
            let mut i = pack.first_from(seq);
            while served.damaged.binary_search(&i).is_ok() {
                i += 1;
            }
            if let Some(e) = pack.entries.get(i) {
                if e.first_seq >= range.hi {
                    return Ok(None);
                }
                let span = Span {
                    origin: range.origin,
                    first_seq: e.first_seq,
                    end_seq: e.end_seq,
                };
                // A copy: a session sending the chunk keeps it, not the whole pack (up to
                // 1 MiB), so that memory stays with the cache's bound however many serve.
                let bytes = Bytes::copy_from_slice(&pack.body[e.bytes()]);
                return Ok(Some((span, bytes)));
            }
            match served.next {
                Some(next) => seq = next,
                None => return Ok(None),
            }
        }
        Ok(None)
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
            let heads = txn.open_table(HEADS).map_err(boxed)?;
            let parts = txn.open_table(PARTS).map_err(boxed)?;
            let blocks = txn.open_table(BLOCKS).map_err(boxed)?;
            let tables = Tables {
                heads: &heads,
                parts: &parts,
                blocks: &blocks,
                trusted: self.trust_blocks,
                made: Default::default(),
            };
            let summary =
                recon::summarize_by_blocks(&tables, range, runs).map_err(summary_error)?;
            Ok((summary, tables.made.into_inner()))
        })?;
        // Kept only if no write is under way: a summary waits for no commit.
        if !made.is_empty() && !self.read_only {
            self.try_writing(|mut txn| {
                // Only a cache: losing it to a crash costs a recomputation.
                txn.set_durability(redb::Durability::None);
                {
                    let heads = txn.open_table(HEADS).map_err(boxed)?;
                    let parts = txn.open_table(PARTS).map_err(boxed)?;
                    let mut blocks = txn.open_table(BLOCKS).map_err(boxed)?;
                    for (origin, block) in made {
                        if let Some(b) = make_block(&heads, &parts, origin, block)? {
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
        let counted = self.index.read().unwrap_or_else(PoisonError::into_inner);
        match counted.as_ref() {
            Some(index) => Ok(index.len()),
            None => self.reading(|txn| count_chunks(&txn)),
        }
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

    /// Chunks of one event each of `origin`, at the sequence numbers of `seqs`, each with
    /// `payload`.
    fn one_event_chunks(
        origin: u64,
        seqs: std::ops::Range<u64>,
        payload: &str,
    ) -> Vec<VerifiedChunk> {
        seqs.map(|seq| crate::store::tests::chunk(origin, seq, 1, payload))
            .collect()
    }

    fn chunk(n: u8, len: usize) -> VerifiedChunk {
        let bytes = vec![n; len];
        VerifiedChunk::new(ChunkHash::of(&bytes), bytes).unwrap()
    }

    /// A first lookup (which reads the index) while a commit is under way and the commit
    /// (which updates the index at its end) both end: neither waits on the other forever.
    #[test]
    fn a_first_lookup_during_a_commit_and_the_commit_both_end() {
        let path = temp_path("first-lookup");
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let id = chunk(1, 100).id();
        let (done, finished) = std::sync::mpsc::channel();
        let writer = {
            let (store, done) = (Arc::clone(&store), done.clone());
            std::thread::spawn(move || {
                let reader = store
                    .writing(|_txn| {
                        // A first lookup starts while this commit holds the writes.
                        let (looking, done) = (Arc::clone(&store), done.clone());
                        let reader = std::thread::spawn(move || {
                            let found = looking.contains(&id).unwrap();
                            let _ = done.send("lookup");
                            found
                        });
                        std::thread::sleep(Duration::from_millis(100));
                        // The commit's end: the index learns what it added.
                        store.committed(&[], &[]);
                        Ok(reader)
                    })
                    .unwrap();
                let _ = done.send("commit");
                reader
            })
        };
        drop(done);
        let mut seen: Vec<&str> = (0..2)
            .map(|_| {
                // Either ends within milliseconds unless they wait on each other.
                finished
                    .recv_timeout(Duration::from_secs(30))
                    .expect("the lookup and the commit wait on each other")
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, ["commit", "lookup"]);
        assert!(!writer.join().unwrap().join().unwrap());
        std::fs::remove_file(&path).unwrap();
    }

    /// Chunks whose bytes were damaged on the disk are served to no one, and a verified
    /// copy of the same chunk from a peer takes their place; a different chunk of the
    /// same span is still a fork, and an intact chunk stays as it is.
    #[test]
    fn a_damaged_chunk_is_repaired_by_a_verified_copy_of_it() {
        use crate::store::tests::chunk as chunk_of;
        let path = temp_path("repair");
        // One pack: a small chunk (its head keeps 8 bytes of its hash), then a large one
        // (its whole hash).
        let small = chunk_of(1, 0, 2, "s");
        let large = chunk_of(1, 2, 40, &"L".repeat(60));
        assert!(small.bytes().len() < 1024 && large.bytes().len() >= 1024);
        {
            let store = RedbStore::open(&path).unwrap();
            store.insert_batch(&[small.clone(), large.clone()]).unwrap();
            // A byte of each changes on the disk.
            store
                .writing(|txn| {
                    {
                        let mut parts = txn.open_table(PARTS).map_err(boxed)?;
                        let key = (1, 0, 0);
                        let mut body = parts.get(key).map_err(boxed)?.unwrap().value().to_vec();
                        body[10] ^= 1;
                        body[small.bytes().len() + 500] ^= 1;
                        parts.insert(key, body.as_slice()).map_err(boxed)?;
                    }
                    txn.commit().map_err(boxed)
                })
                .unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.get(&small.id()).unwrap(), None, "not served damaged");
        assert_eq!(store.get(&large.id()).unwrap(), None, "not served damaged");
        assert_eq!(
            store.first_in(&KeyRange::whole(NodeId(1))).unwrap(),
            None,
            "nor in a range"
        );
        // Nor by hash from the pack the range read left in the cache.
        assert_eq!(store.get(&large.id()).unwrap(), None);
        assert_eq!(store.get(&small.id()).unwrap(), None);
        // Found and taken out, they are missing: the next sync fetches them again.
        let copy = temp_path("repair-copy");
        std::fs::copy(&path, &copy).unwrap();
        {
            let taken_out = RedbStore::open(&copy).unwrap();
            let removed = taken_out.remove_damaged().unwrap();
            assert_eq!(removed.len(), 2);
            assert!(removed.contains(&large.id()));
            assert!(!taken_out.contains(&small.id()).unwrap());
            assert!(!taken_out.contains(&large.id()).unwrap());
            assert!(taken_out.ids().unwrap().is_empty());
            assert_eq!(taken_out.total_bytes().unwrap(), 0);
            assert!(taken_out.remove_damaged().unwrap().is_empty());
        }
        std::fs::remove_file(&copy).unwrap();
        // A different chunk of the small one's span is a fork, as before.
        let other = chunk_of(1, 0, 2, "t");
        assert_eq!(store.insert_batch(&[other]).unwrap().forks.len(), 1);
        // The verified copies repair them.
        let done = store.insert_batch(&[small.clone(), large.clone()]).unwrap();
        assert!(done.forks.is_empty() && done.added == 0);
        assert_eq!(store.get(&small.id()).unwrap(), Some(small.bytes().clone()));
        assert_eq!(store.get(&large.id()).unwrap(), Some(large.bytes().clone()));
        let first = store.first_in(&KeyRange::whole(NodeId(1))).unwrap();
        assert_eq!(first.map(|(_, bytes)| bytes), Some(small.bytes().clone()));
        let mut intact = 0;
        store
            .for_each(|id, bytes| intact += usize::from(ChunkHash::of(bytes) == id))
            .unwrap();
        assert_eq!(intact, 2);
        drop(store);
        // And after reopening.
        let store = RedbStore::open(&path).unwrap();
        assert!(store.contains(&small.id()).unwrap());
        assert_eq!(store.get(&large.id()).unwrap(), Some(large.bytes().clone()));
        // An intact chunk is held, not replaced.
        assert_eq!(
            store
                .insert_batch(std::slice::from_ref(&small))
                .unwrap()
                .held,
            [small.id()]
        );
        drop(store);
        std::fs::remove_file(&path).unwrap();
    }

    /// The index read for a first lookup while commits go on holds every chunk they
    /// stored, whichever ends first.
    #[test]
    fn an_index_read_while_commits_go_on_misses_none_of_them() {
        use crate::store::tests::chunk as chunk_of;
        for round in 0..8u64 {
            let path = temp_path(&format!("index-race-{round}"));
            let store = Arc::new(RedbStore::open(&path).unwrap());
            let first: Vec<VerifiedChunk> = (0..2_000).map(|i| chunk_of(1, i, 1, "a")).collect();
            store.insert_batch(&first).unwrap();
            let writer = {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    (2_000..2_040)
                        .map(|i| {
                            let c = chunk_of(1, i, 1, "a");
                            store.insert(c.clone()).unwrap();
                            c.id()
                        })
                        .collect::<Vec<_>>()
                })
            };
            // The first lookup, while the writer commits.
            std::thread::sleep(Duration::from_millis(round));
            assert!(store.contains(&first[0].id()).unwrap());
            let later = writer.join().unwrap();
            for id in first.iter().map(VerifiedChunk::id).chain(later) {
                assert!(store.contains(&id).unwrap(), "round {round}");
            }
            assert_eq!(store.ids().unwrap().len(), 2_040);
            drop(store);
            std::fs::remove_file(&path).unwrap();
        }
    }

    /// A small chunk damaged after the index was read is in it under its true hash; taken
    /// out, it is not found any more.
    #[test]
    fn a_chunk_damaged_after_the_index_was_read_is_gone_once_taken_out() {
        use crate::store::tests::chunk as chunk_of;
        let path = temp_path("stale-index");
        let store = RedbStore::open(&path).unwrap();
        let small = chunk_of(1, 0, 2, "s");
        store.insert(small.clone()).unwrap();
        assert!(store.contains(&small.id()).unwrap(), "the index is read");
        store
            .writing(|txn| {
                {
                    let mut parts = txn.open_table(PARTS).map_err(boxed)?;
                    let mut body = parts
                        .get((1, 0, 0))
                        .map_err(boxed)?
                        .unwrap()
                        .value()
                        .to_vec();
                    body[10] ^= 1;
                    parts.insert((1, 0, 0), body.as_slice()).map_err(boxed)?;
                }
                txn.commit().map_err(boxed)
            })
            .unwrap();
        assert_eq!(store.remove_damaged().unwrap().len(), 1);
        assert!(!store.contains(&small.id()).unwrap());
        assert!(store.ids().unwrap().is_empty());
        drop(store);
        std::fs::remove_file(&path).unwrap();
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

    /// A store of the first layout kept every chunk by hash (simulated here by writing its
    /// tables directly): read-only, its chunks are read as they are and its summaries not
    /// trusted; opened for writing, its chunks move into packs, with the time each was
    /// stored, and its summaries are made again.
    /// A store of the second layout (one body entry per pack, every hash in the head) is
    /// read converted in memory when opened read-only, without writing the file, and
    /// converted in the file when opened for writing.
    #[test]
    fn a_store_of_the_second_layout_is_read_and_converted() {
        let path = temp_path("second-layout");
        let chunks: Vec<VerifiedChunk> = (0..3)
            .map(|n| crate::store::tests::chunk(1, n * 2, 2, &"p".repeat(200 * n as usize)))
            .collect();
        {
            let s = RedbStore::open(&path).unwrap();
            let txn = s.db.begin_write().unwrap();
            {
                let mut head = Vec::new();
                let mut body = Vec::new();
                for (n, c) in chunks.iter().enumerate() {
                    let n = n as u64;
                    for word in [n * 2, n * 2 + 2, 1_000 + n] {
                        head.extend_from_slice(&word.to_le_bytes());
                    }
                    head.extend_from_slice(&(c.bytes().len() as u32).to_le_bytes());
                    head.extend_from_slice(c.id().as_bytes());
                    body.extend_from_slice(c.bytes());
                }
                let mut heads = txn.open_table(SECOND_LAYOUT_HEADS).unwrap();
                heads.insert((1, 0), head.as_slice()).unwrap();
                let mut bodies = txn.open_table(SECOND_LAYOUT_BODIES).unwrap();
                bodies.insert((1, 0), body.as_slice()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(BYTES, body.len() as u64).unwrap();
            }
            txn.commit().unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        {
            let read_only = RedbStore::open_read_only(&path).unwrap();
            assert_eq!(read_only.len().unwrap(), 3);
            for c in &chunks {
                assert_eq!(read_only.get(&c.id()).unwrap().as_ref(), Some(c.bytes()));
            }
        }
        assert!(
            std::fs::read(&path).unwrap() == before,
            "the file is not written"
        );
        let s = RedbStore::open(&path).unwrap();
        let [kept, plain] = kept_and_plain(&s);
        assert_eq!(kept.0.count, 3);
        assert_eq!(kept, plain);
        assert!(!has_second_layout(&s.db).unwrap());
        let mut seen = Vec::new();
        s.for_each(|id, bytes| seen.push((id, bytes.to_vec())))
            .unwrap();
        let expected: Vec<_> = chunks
            .iter()
            .map(|c| (c.id(), c.bytes().to_vec()))
            .collect();
        assert_eq!(seen, expected);
        // Kept their times: 1,000 seconds after the epoch is older than any age.
        let report = s
            .gc(RetentionPolicy {
                max_age: Some(Duration::from_secs(3600)),
                max_bytes: None,
            })
            .unwrap();
        assert_eq!(report.removed, 3);
        std::fs::remove_file(&path).unwrap();
    }

    /// A small chunk of a pack read for serving a range has no hash until it is looked up
    /// by one: `get` then hashes its bytes, finds it by its own hash and by no other.
    #[test]
    fn a_chunk_of_a_served_pack_is_found_by_its_hash_only() {
        let path = temp_path("served-get");
        let s = RedbStore::open_with(&path, Durability::Process).unwrap();
        let chunks = one_event_chunks(6, 0..5, "small");
        s.insert_batch(&chunks).unwrap();
        let range = KeyRange::whole(NodeId(6));
        let (_, first) = s.first_in(&range).unwrap().unwrap();
        assert_eq!(&first[..], chunks[0].bytes());
        for c in &chunks {
            assert_eq!(s.get(&c.id()).unwrap().as_ref(), Some(c.bytes()));
        }
        let other = (chunks[0].id(), (6, 1));
        assert_eq!(
            s.packed(&other.0, other.1).unwrap(),
            None,
            "not the chunk at 1"
        );
        drop(s);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_chunk_larger_than_a_store_takes_is_refused() {
        assert!(check_len(RedbStore::MAX_CHUNK).is_ok());
        let err = check_len(RedbStore::MAX_CHUNK + 1).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<RedbError>(),
                Some(RedbError::ChunkTooLarge { len }) if *len == RedbStore::MAX_CHUNK + 1
            ),
            "{err}"
        );
    }

    /// A store with a byte limit takes batches while they fit, refuses whole the one that
    /// would pass it (keeping everything it had), still takes chunks it holds already,
    /// and takes more once `gc` made room; the limit is the process's, not the file's.
    #[test]
    fn a_full_store_refuses_a_batch_whole_and_keeps_what_it_had() {
        let path = temp_path("full");
        let payload = "f".repeat(1_000);
        let chunks = one_event_chunks(6, 0..10, &payload);
        let len = chunks[0].bytes().len() as u64;
        let s = RedbStore::open(&path)
            .unwrap()
            .with_max_bytes(Some(4 * len));
        assert_eq!(s.max_bytes(), Some(4 * len));
        assert_eq!(s.insert_batch(&chunks[..3]).unwrap().added, 3);
        let err = s.insert_batch(&chunks[3..5]).unwrap_err();
        match err.downcast_ref::<RedbError>() {
            Some(&RedbError::Full {
                limit,
                held,
                adding,
            }) => assert_eq!((limit, held, adding), (4 * len, 3 * len, 2 * len)),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(
            s.len().unwrap(),
            3,
            "nothing of the refused batch is stored"
        );
        assert_eq!(s.total_bytes().unwrap(), 3 * len);
        // A chunk held already adds nothing, and one more fits exactly.
        assert_eq!(s.insert_batch(&chunks[..1]).unwrap().held.len(), 1);
        assert_eq!(s.insert_batch(&chunks[3..4]).unwrap().added, 1);
        assert!(s.insert_batch(&chunks[4..5]).is_err());
        // gc of everything makes room.
        let policy = RetentionPolicy {
            max_age: None,
            max_bytes: Some(0),
        };
        assert_eq!(s.gc(policy).unwrap().removed, 4);
        assert_eq!(s.insert_batch(&chunks[4..8]).unwrap().added, 4);
        drop(s);
        // Reopened without a limit, it takes the rest.
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.max_bytes(), None);
        assert_eq!(s.insert_batch(&chunks[8..]).unwrap().added, 2);
        drop(s);
        std::fs::remove_file(&path).unwrap();
    }

    /// One transaction storing more of one origin than an edit keeps in memory (it writes
    /// such a pack as it goes): every chunk reads back, the store verifies, and a reopened
    /// store has them all.
    #[test]
    fn a_batch_larger_than_an_edit_keeps_is_stored_whole() {
        let path = temp_path("large-batch");
        let big = "y".repeat(700_000);
        let chunks = one_event_chunks(4, 0..30, &big);
        let total: usize = chunks.iter().map(|c| c.bytes().len()).sum();
        assert!(total > edit::WRITE_AT, "{total} bytes in one batch");
        {
            let s = RedbStore::open_with(&path, Durability::Process).unwrap();
            assert_eq!(s.insert_batch(&chunks).unwrap().added, chunks.len());
            for c in &chunks {
                assert_eq!(s.get(&c.id()).unwrap().as_ref(), Some(c.bytes()));
            }
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.len().unwrap(), chunks.len());
        let mut seen = 0;
        s.for_each(|id, bytes| {
            assert_eq!(ChunkHash::of(bytes), id);
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, chunks.len());
        drop(s);
        std::fs::remove_file(&path).unwrap();
    }

    /// The database pages a store uses, against the bytes of the chunks it holds: a log of
    /// small chunks stored a few at a time (as a pull stores them), and one of chunks of
    /// 16,000 bytes and more.
    #[test]
    fn pages_in_use_stay_close_to_the_chunk_bytes() {
        for (payload, chunks, batch, bound) in [(50, 20_000u64, 40, 1.3), (16_000, 320, 8, 1.05)] {
            let path = temp_path(&format!("pages-{payload}"));
            let s = RedbStore::open_with(&path, Durability::Process).unwrap();
            let mut bytes = 0;
            for start in (0..chunks).step_by(batch) {
                let batch = one_event_chunks(1, start..start + batch as u64, &"x".repeat(payload));
                bytes += batch.iter().map(|c| c.bytes().len() as u64).sum::<u64>();
                assert_eq!(s.insert_batch(&batch).unwrap().added, batch.len());
            }
            let used = s
                .writing(|txn| {
                    let stats = txn.stats().map_err(boxed)?;
                    Ok(stats.allocated_pages() * stats.page_size() as u64)
                })
                .unwrap();
            let ratio = used as f64 / bytes as f64;
            assert!(
                ratio <= bound,
                "{payload}-byte events: {used} bytes of pages for {bytes}: {ratio:.3}"
            );
            drop(s);
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_store_of_the_first_layout_is_read_and_converted() {
        let path = temp_path("first-layout");
        let (a, b) = (
            crate::store::tests::chunk(1, 0, 1, "a"),
            crate::store::tests::chunk(1, 1, 1, "b"),
        );
        {
            let s = RedbStore::open(&path).unwrap();
            s.insert(a.clone()).unwrap();
            let [kept, plain] = kept_and_plain(&s);
            assert_eq!(kept, plain);
            // The first layout stores a chunk of the same block.
            let txn = s.db.begin_write().unwrap();
            {
                let mut chunks = txn.open_table(LOOSE).unwrap();
                chunks
                    .insert(b.id().as_bytes(), b.bytes().as_ref())
                    .unwrap();
                txn.open_table(STORED_AT)
                    .unwrap()
                    .insert(b.id().as_bytes(), 1234)
                    .unwrap();
                let mut meta = txn.open_table(META).unwrap();
                let bytes = meta.get(BYTES).unwrap().unwrap().value();
                meta.insert(BYTES, bytes + b.bytes().len() as u64).unwrap();
            }
            txn.commit().unwrap();
        }
        let read_only = RedbStore::open_read_only(&path).unwrap();
        assert!(
            !read_only.trust_blocks,
            "a read-only store does not use stale summaries"
        );
        assert_eq!(read_only.len().unwrap(), 2);
        assert_eq!(read_only.get(&b.id()).unwrap().as_ref(), Some(b.bytes()));
        assert!(!read_only.gives_log_order(), "its chunks come by hash");
        drop(read_only);
        let s = RedbStore::open(&path).unwrap();
        assert!(s.gives_log_order(), "converted, they come in log order");
        let [kept, plain] = kept_and_plain(&s);
        assert_eq!(kept.0.count, 2);
        assert_eq!(kept, plain);
        let loose = s
            .reading(|txn| txn.open_table(LOOSE).map_err(boxed)?.len().map_err(boxed))
            .unwrap();
        assert_eq!(loose, 0, "every chunk is in a pack");
        // Kept its time: a gc by age removes it and not the other.
        let report = s
            .gc(RetentionPolicy {
                max_age: Some(Duration::from_secs(3600)),
                max_bytes: None,
            })
            .unwrap();
        assert_eq!(report.removed, 1);
        assert!(s.contains(&a.id()).unwrap() && !s.contains(&b.id()).unwrap());
        std::fs::remove_file(&path).unwrap();
    }

    /// What a batch of a model run puts in: runs of one-event chunks of an origin from a
    /// first sequence number, some longer chunks (which may fork), in the order given.
    fn batch(runs: &[(u64, u64, u64, u8)]) -> Vec<VerifiedChunk> {
        let mut chunks = Vec::new();
        for &(origin, first, count, kind) in runs {
            for i in 0..count {
                chunks.push(match kind % 4 {
                    0 => crate::store::tests::chunk(origin, first + i, 1, "r"),
                    // Descending: each before the previous one.
                    1 => crate::store::tests::chunk(origin, first + count - i, 1, "r"),
                    2 => crate::store::tests::chunk(origin, first + 3 * i, 3, "long"),
                    _ => crate::store::tests::chunk(origin, first + 2 * i, 2, "fork"),
                });
            }
        }
        chunks
    }

    /// Everything a store answers about origin 1..=3, as comparable values.
    fn contents(s: &dyn NodeStore, probes: &[(u64, u64, u64)]) -> Vec<String> {
        let mut seen = vec![format!("len {}", s.len().unwrap())];
        let ids = s.ids().unwrap();
        for id in &ids {
            seen.push(format!("{id:?} {:?}", s.get(id).unwrap().map(|b| b.len())));
        }
        for origin in 1..=3 {
            let whole = KeyRange::whole(NodeId(origin));
            let mut out = vec![(Span::default(), ChunkHash::default()); 20_000];
            let n = s.chunks_in(&whole, &mut out).unwrap();
            seen.push(format!("{origin}: {:?}", &out[..n]));
            let mut runs = [Run { lo: 0, hi: 0 }; 4];
            seen.push(format!("{:?}", s.summarize(&whole, &mut runs).unwrap()));
        }
        for &(origin, lo, len) in probes {
            let range = KeyRange {
                origin: NodeId(origin),
                lo,
                hi: lo + len,
            };
            let first = s.first_in(&range).unwrap();
            seen.push(format!(
                "{range:?} {:?}",
                first.map(|(span, b)| (span, ChunkHash::of(&b)))
            ));
        }
        seen
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        /// Batches of chunks stored in any order (runs, descending runs, holes filled
        /// later, forks) and removals leave a `RedbStore` answering every query as a
        /// `MemStore` given the same chunks does, across packs split and emptied, and
        /// after reopening.
        #[test]
        fn answers_as_a_memory_store_given_the_same_chunks(
            batches in proptest::collection::vec(
                proptest::collection::vec((1u64..=3, 0u64..3000, 1u64..700, 0u8..4), 1..4),
                1..5,
            ),
            probes in proptest::collection::vec((1u64..=3, 0u64..4000, 1u64..200), 8),
            keep in 0u64..60_000,
        ) {
            let path = temp_path("model");
            let s = RedbStore::open_with(&path, Durability::Process).unwrap();
            let mut model = crate::MemStore::new();
            for runs in &batches {
                let chunks = batch(runs);
                let (done, expected) = (s.insert_batch(&chunks).unwrap(), model.insert_batch(&chunks).unwrap());
                proptest::prop_assert_eq!(done, expected);
            }
            proptest::prop_assert_eq!(contents(&s, &probes), contents(&model, &probes));
            // Removing the oldest down to `keep` bytes: the model keeps what is left.
            s.gc(RetentionPolicy { max_age: None, max_bytes: Some(keep) }).unwrap();
            proptest::prop_assert!(s.total_bytes().unwrap() <= keep);
            model = crate::MemStore::new();
            let mut left = Vec::new();
            s.for_each(|id, bytes| left.push(VerifiedChunk::new(id, bytes.to_vec()).unwrap())).unwrap();
            model.insert_batch(&left).unwrap();
            proptest::prop_assert_eq!(contents(&s, &probes), contents(&model, &probes));
            // Into the holes the removals left, chunks that overlap what is left.
            for runs in &batches {
                let shifted: Vec<_> = runs.iter().map(|&(o, first, n, kind)| (o, first + 1, n, kind + 2)).collect();
                let more = batch(&shifted);
                proptest::prop_assert_eq!(s.insert_batch(&more).unwrap(), model.insert_batch(&more).unwrap());
            }
            proptest::prop_assert_eq!(contents(&s, &probes), contents(&model, &probes));
            drop(s);
            let s = RedbStore::open_read_only(&path).unwrap();
            proptest::prop_assert_eq!(contents(&s, &probes), contents(&model, &probes));
            drop(s);
            std::fs::remove_file(&path).unwrap();
        }
    }

    /// A store that is given its chunks in order keeps every block's summary as it goes:
    /// the first reconciliation has none to make.
    #[test]
    fn appended_chunks_keep_their_block_summaries() {
        let path = temp_path("appended");
        let s = RedbStore::open_with(&path, Durability::Process).unwrap();
        for first in (0..10_000).step_by(1000) {
            let chunks = one_event_chunks(1, first..first + 1000, "a");
            s.insert_batch(&chunks).unwrap();
        }
        let kept = || {
            s.reading(|txn| txn.open_table(BLOCKS).map_err(boxed)?.len().map_err(boxed))
                .unwrap()
        };
        assert_eq!(kept(), 3, "blocks 0, 1 and 2 of 4,096 sequence numbers");
        let [by_blocks, plain] = kept_and_plain(&s);
        assert_eq!(by_blocks, plain);
        // Removing a chunk drops its block's summary, which is made again when needed.
        s.gc(RetentionPolicy {
            max_age: None,
            max_bytes: Some(s.total_bytes().unwrap() - 1),
        })
        .unwrap();
        assert_eq!(kept(), 2);
        let [by_blocks, plain] = kept_and_plain(&s);
        assert_eq!(by_blocks, plain);
        assert_eq!(kept(), 3);
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
