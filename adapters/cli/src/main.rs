//! `chunk-sync`: replicate append-only event logs between nodes, from a terminal.
//!
//! Run without arguments (or with `demo`) for a guided demonstration.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::secure::{SealCheck, Verifier};
use chunk_sync_core::session::FailReason;
use chunk_sync_core::{ChunkHash, ChunkView, EventChunkStore, NodeId, Privacy, Verified};
use chunk_sync_tokio::{
    Access, Codec, Compress, Durability, Keypair, Node, NodeConfig, NodeStore, Permissions,
    PublicKey, RedbError, RedbStore, RetentionPolicy, Sealing, Security, SyncReport,
    ThrottleConfig, VerifiedChunk, sign_all,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod control;
mod daemon;
mod demo;
mod events;
mod grant;
mod ingest;
mod keys;
mod units;

use chunk_sync_core::Sealed;
use ingest::{Input, Sink, Stop};
use units::{human, parse_rate, parse_size};

/// Replicate append-only event logs between nodes by content-addressed chunks.
#[derive(Debug, Parser)]
#[command(
    name = "chunk-sync",
    version,
    about,
    after_help = "Exit status: 0 on success; 1 on an error, said in one line on standard error \
(for `verify`: a chunk that does not match its hash); 2 on a bad argument; 70 if the store's \
database failed inside (the store file may be damaged).\n\nThe store's directory may come from \
the CHUNK_SYNC_STORE environment variable instead of --store."
)]
struct Cli {
    /// Log what the node does on standard error: sessions with their peers and bytes
    /// (`-v`), and their steps (`-vv`). `RUST_LOG` (for example
    /// `RUST_LOG=chunk_sync_tokio=debug`) chooses instead.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Two nodes over loopback TCP: chunking, delta sync, throttling, progress (the default).
    Demo,
    /// Read events as JSON lines, drop private ones, seal chunks into the store.
    ///
    /// Each line is one event, a JSON object with these fields (others are ignored; blank
    /// lines are skipped):
    ///
    ///   seq          integer, required: the event's number in its origin's log
    ///   kind         string, required: what happened ("boot", "temp", ...)
    ///   privacy      "public", "shareable" or "private", required: a private event takes its
    ///                sequence number but never enters a chunk
    ///   timestamp    integer, optional (0): in whatever unit the application uses
    ///   payload      string, optional: the event's content as text
    ///   payload_hex  string, optional: its content as hex bytes (instead of payload)
    ///   origin       integer, optional: whose log (default --origin, or this store's node id)
    ///
    /// The input is read twice (standard input is copied to a temporary file first): once
    /// to check it, so that bad input stores nothing, then to store it, in bounded memory.
    #[command(verbatim_doc_comment)]
    Append {
        #[command(flatten)]
        store: StoreArg,
        /// Sequence numbers per chunk.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        events_per_chunk: u32,
        /// Read events from this file instead of standard input.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Origin of events that do not name one (default: this store's node id).
        #[arg(long)]
        origin: Option<u64>,
        /// Refuse the whole input, and exit with an error, if any event cannot be taken
        /// (its sequence number is already sealed into a chunk).
        #[arg(long)]
        strict: bool,
    },
    /// Print this node's public key (making the key on first use), for peers to allow
    /// with `--allow`.
    Key {
        /// The store's directory.
        #[arg(long, env = "CHUNK_SYNC_STORE")]
        store: PathBuf,
        /// The key file (default: node.key in the store's directory).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Serve the store to any number of peers until interrupted.
    Serve {
        #[command(flatten)]
        store: StoreArg,
        /// Address to listen on, for example 127.0.0.1:7000.
        #[arg(long)]
        listen: String,
        /// Also fetch what connecting peers have, so that clients can push chunks into
        /// this store (off by default: clients only pull). Each client pushes only the
        /// origins its grant lets it push (`--allow KEY:push=…`; all, for a key alone or
        /// an `--open` node).
        #[arg(long)]
        accept_pushes: bool,
        /// Connections kept at once; past it, one that has not sent its Hello gives up its
        /// place, or the new one is closed.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
        /// Of those, the most from one IP address, an IPv6 /64 counting as one (default: no
        /// bound but --max-connections);
        /// past it, one from that address that has not sent its Hello gives up its place,
        /// or the new one is closed.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections_per_address: Option<u32>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Run a live node until interrupted: listen, keep live sessions with the peers
    /// named (reconnecting when they go away), and append the events it reads to its own
    /// log (JSON lines, as `append` takes them), sealing chunks by age and size.
    ///
    /// Events in the open chunk are in memory until it is sealed (at most --seal-delay):
    /// a followed file is read again from its start after a restart, so nothing of it is
    /// lost; events from standard input still unsealed when the process is killed are.
    /// Interrupting it (Ctrl-C, SIGTERM) seals the open chunk and ends every live
    /// session cleanly.
    Run {
        #[command(flatten)]
        store: StoreArg,
        /// Address to listen on, for example 127.0.0.1:7000.
        #[arg(long)]
        listen: Option<String>,
        /// A peer to keep a live session with (this node fetches what it has and offers
        /// what it lacks); repeat for more.
        #[arg(long)]
        peer: Vec<String>,
        /// Append the events of this JSON-lines file, following it as it grows (from its
        /// start: events already in the log are skipped).
        #[arg(long, conflicts_with = "no_input")]
        follow: Option<PathBuf>,
        /// Read no events (by default they come from standard input).
        #[arg(long)]
        no_input: bool,
        /// Sequence numbers per chunk.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        events_per_chunk: u32,
        /// Seal the open chunk once its first event is this old (for example 10ms): the
        /// most an event waits before it can travel.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        seal_delay: Duration,
        /// Seal the open chunk once its events take this much (for example 64KiB).
        #[arg(long, default_value = "64KiB", value_parser = parse_size)]
        seal_bytes: u64,
        /// Also fetch what peers connecting to this node have (off by default: they get
        /// what they ask for, and give only to nodes that name them with --peer).
        #[arg(long)]
        accept_pushes: bool,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Fetch what the store lacks from a peer; chunks it cannot give are asked of the next.
    Pull {
        #[command(flatten)]
        store: StoreArg,
        /// A peer's address; repeat to name fallbacks, asked in order for what the previous
        /// ones could not give (unreachable, wrong bytes, not found).
        #[arg(long, required = true)]
        from: Vec<String>,
        #[command(flatten)]
        net: NetArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Fetch what the store lacks from a peer and give it what it lacks.
    Sync {
        #[command(flatten)]
        store: StoreArg,
        /// The peer's address.
        #[arg(long)]
        with: String,
        #[command(flatten)]
        net: NetArgs,
        #[command(flatten)]
        output: Output,
    },
    /// List the chunks of the store, by origin and sequence number: hash, origin,
    /// sequence range, events, size.
    Ls {
        #[command(flatten)]
        store: ReadStoreArg,
        /// One JSON object per chunk: `id`, `origin`, `first_seq`, `end_seq`, `events`,
        /// `bytes` (or `id` and `error` for one that is no valid chunk).
        #[arg(long)]
        json: bool,
    },
    /// Summarise the store.
    Stat {
        #[command(flatten)]
        store: ReadStoreArg,
        /// One JSON object: `node_id` (null before one is chosen), `chunks`, `bytes`, and
        /// `origins`, each with `origin`, `chunks` and `end_seq`.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash and decode every chunk; exit with an error if any is corrupt.
    Verify {
        #[command(flatten)]
        store: ReadStoreArg,
        /// One JSON object: `verified` (chunks checked) and `corrupt` (their hashes), and
        /// with --signatures `signatures` (signatures that hold) and `unchecked` (chunks
        /// of origins without a key given).
        #[arg(long)]
        json: bool,
        /// Also check the signature of each chunk of the store's own origin (its key file,
        /// if it has one) and of the origins given with --trust-origin: a chunk whose
        /// signature is missing or does not hold is corrupt. Chunks of other origins are
        /// counted, not checked.
        #[arg(long)]
        signatures: bool,
        /// An origin whose chunks' signatures --signatures checks too (repeatable).
        #[arg(long = "trust-origin", value_name = "KEY", value_parser = keys::parse_key, requires = "signatures")]
        trust_origin: Vec<PublicKey>,
    },
    /// Write every event of the store as JSON lines, from chunks checked against their
    /// hashes.
    Export {
        #[command(flatten)]
        store: ReadStoreArg,
        /// What to do if a chunk is damaged (reported on stderr either way, and the exit
        /// status is an error): export nothing, or export the others.
        #[arg(long, value_enum, default_value_t = OnDamaged::Stop)]
        on_damaged: OnDamaged,
    },
    /// Remove old chunks by age and total size; pinned chunks stay.
    Gc {
        #[command(flatten)]
        store: StoreArg,
        /// Remove chunks stored longer ago than this (for example 7d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
        /// Then remove the oldest chunks until the store holds at most this (for example 500MB).
        #[arg(long, value_parser = parse_size)]
        max_bytes: Option<u64>,
        /// Keep this chunk through every gc.
        #[arg(long)]
        pin: Vec<ChunkHash>,
        /// Stop keeping this chunk.
        #[arg(long)]
        unpin: Vec<ChunkHash>,
        /// First remove the chunks whose bytes no longer match their hash (those `verify`
        /// reports), pinned or not, so that the next pull or sync fetches them again from
        /// a peer.
        #[arg(long)]
        damaged: bool,
    },
    /// Print a completion script for a shell, for example
    /// `chunk-sync completions bash > /etc/bash_completion.d/chunk-sync`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), for example `chunk-sync man | man -l -`.
    Man,
}

/// The store of a command that only reads it.
#[derive(Debug, Args)]
struct ReadStoreArg {
    /// The store's directory.
    #[arg(long, env = "CHUNK_SYNC_STORE")]
    store: PathBuf,
}

#[derive(Debug, Args)]
struct StoreArg {
    /// The store's directory.
    #[arg(long, env = "CHUNK_SYNC_STORE")]
    store: PathBuf,
    /// How far stored chunks are safe: `process` (they survive the process being killed;
    /// the operating system writes them to the disk later, as cp and rsync leave files) or
    /// `disk` (every commit is synced to the disk first: they survive a power cut too;
    /// writing is then bounded by the disk).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Process)]
    durability: DurabilityArg,
    /// The most bytes of chunks the store holds (e.g. `10GiB`): a write that would pass it
    /// stores nothing of itself and fails (the session ends with an error); nothing stored
    /// is removed. No limit when not given; `gc --max-bytes` makes room.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_store_bytes: Option<u64>,
}

/// `--durability`: see `chunk_sync_tokio::Durability`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    /// Stored chunks survive the process being killed.
    Process,
    /// Stored chunks survive a power cut.
    Disk,
}

/// `export --on-damaged`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnDamaged {
    /// Export nothing: every chunk is checked before the first event is written.
    Stop,
    /// Leave damaged chunks out and export the rest.
    Skip,
}

/// How `pull` and `sync` report.
#[derive(Clone, Copy, Debug, Args)]
struct Output {
    /// One JSON object per peer tried: `peer` (the address), `node_id`, `fetched_chunks`,
    /// `chunk_bytes`, `failed`, `bytes_sent`, `bytes_received`, `seconds`; or `peer` and
    /// `error`.
    #[arg(long, conflicts_with = "quiet")]
    json: bool,
    /// Print nothing on success (errors still go to standard error).
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct NetArgs {
    /// Limit the transfer to this rate, for example 1MB/s or 250KiB/s (0: no limit):
    /// `pull` caps what it downloads (the peer is asked to send no faster), `serve` what
    /// it uploads to each client, `sync` and `run` each way, per peer.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    rate: u64,
    /// Chunk requests in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// End each session after this long, whatever the peer does (for example 5m); by
    /// default a session ends only when it is done or its peer falls silent for 30 s.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// When the chunks this node sends travel compressed: `auto` when the link is
    /// rate-limited (by this `--rate` or the peer's), where it saves time; `always`; or
    /// `never`. The receiver decompresses and verifies every chunk by the hash of its own
    /// bytes either way.
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    compress: CompressArg,
    /// The codec compressed chunks travel in: `auto`, the best the peer takes (zstd, which
    /// packs events 1.2 to 1.9 times as well, then LZ4, which devices take); `lz4`; or
    /// `zstd` (a peer that does not take it gets chunks uncompressed).
    #[arg(long, value_enum, default_value_t = CodecArg::Auto)]
    codec: CodecArg,
    #[command(flatten)]
    security: SecurityArgs,
}

/// Who may sync with this node. Every session is authenticated and encrypted (a Noise
/// handshake proves each side's key; ChaCha20-Poly1305 seals every frame). A peer that
/// connects to this node must have an allowed key (`--allow`, `--allow-file`) unless the
/// node is `--open`; a peer this command connects to (`pull`, `sync`, `run --peer`) is
/// trusted by its address unless keys are allowed, which then pin it.
#[derive(Debug, Args)]
struct SecurityArgs {
    /// A peer key allowed to sync with this node (repeatable): 64 hex digits, as
    /// `chunk-sync key` prints them, alone (pull and push everything) or with rights by
    /// origin: `KEY:pull=SCOPE:push=SCOPE`, where SCOPE is `all`, `none`, or origins
    /// separated by commas, each `self` (the peer's own log) or a key. A right left out
    /// is `all`. Keys named are trusted origins. Example: `KEY:pull=none:push=self`, a
    /// device that may only upload its own log.
    #[arg(long = "allow", value_name = "GRANT", value_parser = grant::parse)]
    allow: Vec<grant::Grant>,
    /// A file of grants, one per line, as `--allow` takes them (fields may also be
    /// separated by spaces; `#` starts a comment).
    #[arg(long, value_name = "FILE")]
    allow_file: Option<PathBuf>,
    /// The key of an origin whose chunks this node takes when peers pass them on
    /// (repeatable). A chunk is stored only if its origin signed it: a peer's own chunks
    /// are checked against its key, and allowed keys are trusted origins too. Any other
    /// origin is left out: its chunks are not fetched, and the command says which.
    #[arg(long = "trust-origin", value_name = "KEY", value_parser = keys::parse_key)]
    trust_origin: Vec<PublicKey>,
    /// Let any peer that completes the handshake sync with this node: authenticated and
    /// encrypted, not restricted.
    #[arg(long)]
    open: bool,
    /// This node's key file (default: node.key in the store's directory, made on first
    /// use with mode 0600).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// INSECURE: sync in the clear with peers that do the same, without handshake,
    /// encryption or permissions: anyone who reaches the node reads and pushes everything.
    /// For tests and links already secured end to end.
    #[arg(long, conflicts_with_all = ["allow", "allow_file", "open", "key", "trust_origin"])]
    insecure_plaintext: bool,
}

/// `--compress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CompressArg {
    /// When the link is rate-limited.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `--codec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CodecArg {
    /// The best the peer takes.
    Auto,
    /// LZ4.
    Lz4,
    /// zstd.
    Zstd,
}

/// A failure, reported as one line.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    log_to_stderr(cli.verbose);
    // A panic never reaches the user as a backtrace: the store turns what its database
    // raises on a damaged file into an error, and anything else is one line here.
    static REPORTED: AtomicBool = AtomicBool::new(false);
    std::panic::set_hook(Box::new(|info| {
        let in_database = info.location().is_some_and(|l| l.file().contains("redb"));
        if !in_database {
            eprintln!("chunk-sync: internal error: {info}");
            REPORTED.store(true, Ordering::Relaxed);
        }
    }));
    std::panic::catch_unwind(|| run_command(cli)).unwrap_or_else(|_| {
        if !REPORTED.load(Ordering::Relaxed) {
            eprintln!("chunk-sync: the store's database failed; the store file may be damaged");
        }
        ExitCode::from(70)
    })
}

/// Sends the libraries' `tracing` lines to standard error: those `RUST_LOG` selects, or
/// with `-v` the node's info lines and with `-vv` its debug lines; none otherwise.
fn log_to_stderr(verbose: u8) {
    let filter = match (std::env::var("RUST_LOG"), verbose) {
        (Ok(spec), _) if !spec.is_empty() => spec,
        (_, 0) => return,
        (_, 1) => "chunk_sync_tokio=info,chunk_sync=info".to_owned(),
        _ => "chunk_sync_tokio=debug,chunk_sync_core=debug,chunk_sync=debug".to_owned(),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn run_command(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chunk-sync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::Demo))) {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("chunk-sync: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Demo => demo::run().await?,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "chunk-sync", &mut script);
            print_all(&script)?;
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(|e| format!("cannot write the manual page: {e}"))?;
            print_all(&page)?;
        }
        Command::Append {
            store,
            events_per_chunk,
            input,
            origin,
            strict,
        } => append(&store, events_per_chunk, input, origin, strict)?,
        Command::Key { store, key } => {
            let path = keys::key_path(&store, key.as_deref());
            if key.is_none() && !path.exists() {
                std::fs::create_dir_all(&store)
                    .map_err(|e| format!("cannot create {}: {e}", store.display()))?;
            }
            println!("{}", keys::load_or_create(&path)?.public());
        }
        Command::Serve {
            store,
            listen,
            accept_pushes,
            max_connections,
            max_connections_per_address,
            net,
        } => {
            let places = (max_connections, max_connections_per_address);
            serve(&store, &listen, accept_pushes, places, &net).await?;
        }
        Command::Run {
            store,
            listen,
            peer,
            follow,
            no_input,
            events_per_chunk,
            seal_delay,
            seal_bytes,
            accept_pushes,
            net,
        } => {
            let input = match (follow, no_input) {
                (Some(path), _) => daemon::Input::Follow(path),
                (None, true) => daemon::Input::None,
                (None, false) => daemon::Input::Stdin,
            };
            let live = Live {
                listen,
                peers: peer,
                events_per_chunk,
                seal_delay,
                seal_bytes,
                accept_pushes,
            };
            run_live(&store, live, input, &net).await?;
        }
        Command::Pull {
            store,
            from,
            net,
            output,
        } => exchange(&store, &from, &net, false, output).await?,
        Command::Sync {
            store,
            with,
            net,
            output,
        } => exchange(&store, std::slice::from_ref(&with), &net, true, output).await?,
        Command::Ls { store, json } => return inspect(&store.store, Inspect::Ls { json }),
        Command::Stat { store, json } => return inspect(&store.store, Inspect::Stat { json }),
        Command::Verify {
            store,
            json,
            signatures,
            trust_origin,
        } => {
            // A key file that cannot be read is an error, not a store without a key.
            let own = if signatures {
                store_key(&store.store)?
            } else {
                None
            };
            let keys = signatures.then(|| {
                own.map(|k| *k.public())
                    .into_iter()
                    .chain(trust_origin)
                    .collect()
            });
            return inspect(&store.store, Inspect::Verify { json, keys });
        }
        Command::Export { store, on_damaged } => {
            return inspect(&store.store, Inspect::Export(on_damaged));
        }
        Command::Gc {
            store,
            max_age,
            max_bytes,
            pin,
            unpin,
            damaged,
        } => {
            let db = open_existing(&store)?;
            if damaged {
                let removed = db.remove_damaged()?;
                for id in &removed {
                    eprintln!("removed damaged chunk {id}");
                }
                println!("gc: removed {} damaged chunks", removed.len());
            }
            for id in &pin {
                db.pin(id, true)?;
            }
            for id in &unpin {
                db.pin(id, false)?;
            }
            let report = db.gc(RetentionPolicy { max_age, max_bytes })?;
            println!(
                "gc: removed {} chunks ({}), kept {} pinned; {} chunks ({}) remain",
                report.removed,
                human(report.freed),
                report.kept_pinned,
                db.len()?,
                human(db.total_bytes()?)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

const DB_FILE: &str = "chunks.redb";

fn open(store: &StoreArg) -> Result<RedbStore> {
    let dir = &store.store;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create store directory {}: {e}", dir.display()))?;
    open_file(store)
}

fn open_existing(store: &StoreArg) -> Result<RedbStore> {
    let dir = &store.store;
    if !dir.join(DB_FILE).is_file() {
        return Err(Failure(format!("no store at {}", dir.display())));
    }
    open_file(store)
}

/// Opens an existing store without writing to it: on read-only media too, and nothing is
/// created.
fn open_read_only(dir: &Path) -> Result<RedbStore> {
    if !dir.join(DB_FILE).is_file() {
        return Err(Failure(format!("no store at {}", dir.display())));
    }
    RedbStore::open_read_only(dir.join(DB_FILE)).map_err(|e| cannot_open(dir, &e))
}

fn open_file(store: &StoreArg) -> Result<RedbStore> {
    let dir = &store.store;
    let durability = match store.durability {
        DurabilityArg::Process => Durability::Process,
        DurabilityArg::Disk => Durability::Disk,
    };
    RedbStore::open_with(dir.join(DB_FILE), durability)
        .map(|s| s.with_max_bytes(store.max_store_bytes))
        .map_err(|e| cannot_open(dir, &e))
}

/// One line for a store that cannot be opened.
fn cannot_open(dir: &Path, e: &chunk_sync_tokio::StoreError) -> Failure {
    let dir = dir.display();
    match e.downcast_ref::<RedbError>() {
        Some(RedbError::InUse) => Failure(format!("store {dir} is in use by another process")),
        Some(RedbError::NotAStore) => Failure(format!(
            "cannot open store {dir}: its file {DB_FILE} is not a chunk store"
        )),
        Some(RedbError::Damaged(why)) => Failure(format!(
            "store {dir} is damaged ({why}); fetch its chunks again from a peer into a new store"
        )),
        _ => Failure(format!("cannot open store {dir}: {e}")),
    }
}

/// This store's node id: its key's ([`PublicKey::node_id`](chunk_sync_tokio::PublicKey::node_id)),
/// chosen once (with the key, made on first use) and kept in the store.
fn node_id(db: &RedbStore, dir: &Path) -> Result<NodeId> {
    if let Some(id) = db.meta("node_id")? {
        return Ok(NodeId(id));
    }
    let id = keys::load_or_create(&keys::key_path(dir, None))?.node_id();
    db.insert_all(&[], &[("node_id", id.0)])?;
    Ok(id)
}

/// The key of a store `append` creates: kept in memory until the store is (the input is
/// checked first), unless the directory already holds one.
fn new_key(store: &StoreArg) -> Result<Keypair> {
    let path = keys::key_path(&store.store, None);
    if path.exists() {
        return Ok(keys::load(&path)?);
    }
    Ok(chunk_sync_tokio::generate_keypair()
        .map_err(|e| format!("cannot make a key: the system's random source failed: {e}"))?)
}

/// Says on standard error which origins `append` sealed without a signature: secure peers
/// refuse those chunks.
fn warn_unsigned<'a>(origins: impl Iterator<Item = &'a NodeId>, signer: Option<&Keypair>) {
    let own = signer.map(Keypair::node_id);
    let unsigned: Vec<String> = origins
        .filter(|o| Some(**o) != own)
        .map(ToString::to_string)
        .collect();
    if !unsigned.is_empty() {
        eprintln!(
            "chunk-sync: chunks of {} are not signed (only an origin's own key signs its log): secure peers refuse them",
            unsigned.join(", ")
        );
    }
}

/// The key `append` signs the store's own chunks with: a new store's, or the key file
/// beside the store. A store without one (made by `--insecure-plaintext` nodes from
/// another key path) appends unsigned chunks, which secure peers refuse.
fn signing_key(store: &StoreArg, new_key: Option<&Keypair>) -> Result<Option<Keypair>> {
    if let Some(key) = new_key {
        return Ok(Some(key.clone()));
    }
    store_key(&store.store)
}

/// The key file beside the store in `dir`, if it has one.
fn store_key(dir: &Path) -> Result<Option<Keypair>> {
    let path = keys::key_path(dir, None);
    if path.exists() {
        return Ok(Some(keys::load(&path)?));
    }
    Ok(None)
}

/// Opens (creating) the store, and saves `key` beside it if it has none yet.
fn open_with_key(store: &StoreArg, key: Option<&Keypair>) -> Result<RedbStore> {
    let db = open(store)?;
    let path = keys::key_path(&store.store, None);
    if let Some(key) = key
        && !path.exists()
    {
        keys::save(&path, key)?;
    }
    Ok(db)
}

fn append(
    store: &StoreArg,
    events_per_chunk: u32,
    input: Option<PathBuf>,
    origin: Option<u64>,
    strict: bool,
) -> Result<()> {
    let input = match input {
        Some(path) => Input::file(path),
        None => Input::stdin()?,
    };
    // A node holding the store takes the events into its log.
    if control::is_served(&store.store) {
        if strict {
            return Err(Failure(format!(
                "store {} is held by a running node: --strict needs the store itself",
                store.store.display()
            )));
        }
        if let Some(answer) = control::append(&store.store, origin, &input.read_all()?) {
            return match answer.map_err(Failure)? {
                code if code == ExitCode::SUCCESS => Ok(()),
                _ => Err(Failure(
                    "the node holding the store did not take the events".into(),
                )),
            };
        }
    }
    // The store is created only once the input is known to be good.
    let db = if store.store.join(DB_FILE).is_file() {
        Some(open(store)?)
    } else {
        None
    };
    // Events that name no origin take this store's id (a new store's is chosen now and
    // kept with the first chunks).
    let (own, new_key) = match (origin, &db) {
        (Some(o), _) => (NodeId(o), None),
        (None, Some(db)) => (node_id(db, &store.store)?, None),
        (None, None) => {
            let keys = new_key(store)?;
            (keys.node_id(), Some(keys))
        }
    };
    let new_id = new_key.as_ref().map(Keypair::node_id);
    let signer = signing_key(store, new_key.as_ref())?;
    let resume = |o: NodeId| match &db {
        Some(db) => resume_point(db, o).map_err(|Failure(e)| e),
        None => Ok(0),
    };
    let checked = match ingest::pass(
        &input,
        own,
        signer.as_ref(),
        events_per_chunk,
        &mut { resume },
        Sink::Check,
    ) {
        Ok(checked) => checked,
        Err(Stop::Unordered) => {
            let text = input.read_all()?;
            return append_sorted(store, db, own, new_key, events_per_chunk, &text, strict);
        }
        Err(stop) => return Err(stopped(stop)),
    };
    report_late(&checked.late, strict)?;
    let db = match db {
        Some(db) => db,
        None => open_with_key(store, new_key.as_ref())?,
    };
    // Written as sealed, a batch at a time; the sealing points and a new store's id go
    // with the last batch, and the first. The store's own chunks are sealed unsigned and
    // signed a batch at a time, on every core.
    let mut batch: Vec<Sealing> = Vec::new();
    let mut batch_bytes = 0;
    let mut added = 0;
    let mut forks = Vec::new();
    let mut first_meta: Vec<(&str, u64)> = new_id.map(|id| ("node_id", id.0)).into_iter().collect();
    let mut write = |batch: &mut Vec<Sealing>,
                     meta: &[(&str, u64)]|
     -> std::result::Result<(), String> {
        let chunks = sign_all(std::mem::take(batch), signer.as_ref()).map_err(|e| e.to_string())?;
        let inserted = db.insert_all(&chunks, meta).map_err(|e| e.to_string())?;
        added += inserted.added;
        forks.extend(inserted.forks);
        Ok(())
    };
    let resume = |o: NodeId| resume_point(&db, o).map_err(|Failure(e)| e);
    let own_signed = signer.as_ref().map(Keypair::node_id);
    let mut store_batches = |sealed: &Sealed<'_>| {
        let sealing = if Some(sealed.origin) == own_signed {
            Sealing::unsigned(sealed)
        } else {
            Sealing::Done(VerifiedChunk::from(sealed.verified()))
        };
        // Counted as stored: signed, if it is to be.
        batch_bytes += sealing.stored_len();
        batch.push(sealing);
        if batch_bytes >= ingest::BATCH_BYTES {
            write(&mut batch, &std::mem::take(&mut first_meta))?;
            batch_bytes = 0;
        }
        Ok(())
    };
    let written = ingest::pass(
        &input,
        own,
        None,
        events_per_chunk,
        &mut { resume },
        Sink::Seal(&mut store_batches),
    )
    .map_err(stopped)?;
    let keys: Vec<(String, u64)> = written
        .sealed_through
        .iter()
        .map(|(o, end)| (format!("sealed/{}", o.0), *end))
        .collect();
    let mut meta: Vec<(&str, u64)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    meta.extend(first_meta.iter().copied());
    write(&mut batch, &meta)?;
    db.flush()?;
    if let Some(fork) = forks.first() {
        return Err(Failure(format!(
            "{} of the new chunks overlap chunks already in the store for the same origin and were not stored, for example: {fork}",
            forks.len()
        )));
    }
    warn_unsigned(written.sealed_through.keys(), signer.as_ref());
    println!(
        "appended {} of {} events ({} private left out) as {added} new chunks holding {} events; {} chunks in the store",
        written.events - written.late.len() as u64,
        written.events,
        written.private,
        written.sealed_events,
        db.len()?
    );
    Ok(())
}

/// What stopped a pass over the input, as the command's error.
fn stopped(stop: Stop) -> Failure {
    Failure(match stop {
        Stop::Line { line, error } => format!("line {line}: {error}"),
        Stop::Chunk { line, error } => format!("cannot chunk the events: line {line}: {error}"),
        Stop::Io(e) => e,
        Stop::Unordered => "the events are not in sequence order".into(),
    })
}

/// Where `origin`'s log continues in `db`: where `append` last sealed it, or past its last
/// chunk (sealed by a `run` node, or fetched), whichever is further.
fn resume_point(db: &RedbStore, origin: NodeId) -> Result<u64> {
    let sealed = db.meta(&format!("sealed/{}", origin.0))?.unwrap_or(0);
    let (held, _) = db.summarize(&KeyRange::whole(origin), &mut [])?;
    let end = if held.count > 0 { held.end } else { 0 };
    Ok(sealed.max(end))
}

/// Says which events cannot be taken (their sequence numbers are sealed already); with
/// `strict`, refuses the whole input if there are any.
fn report_late(late: &[(NodeId, u64)], strict: bool) -> Result<()> {
    if late.is_empty() {
        return Ok(());
    }
    let line = format!(
        "{} events not taken: their sequence numbers are already sealed into chunks, which never change ({})",
        late.len(),
        seq_ranges(late)
    );
    if strict {
        return Err(Failure(format!("{line}; nothing appended (--strict)")));
    }
    eprintln!("chunk-sync: {line}");
    Ok(())
}

/// `append` of an input whose events are not in sequence order for each origin: all of
/// it is read and sorted in memory.
fn append_sorted(
    store: &StoreArg,
    db: Option<RedbStore>,
    own: NodeId,
    new_key: Option<Keypair>,
    events_per_chunk: u32,
    text: &str,
    strict: bool,
) -> Result<()> {
    let events = events::read(text.as_bytes(), own)?;
    let db = match db {
        Some(db) => db,
        None => open_with_key(store, new_key.as_ref())?,
    };
    let new_id = new_key.as_ref().map(Keypair::node_id);
    let signer = signing_key(store, new_key.as_ref())?;
    let mut chunker = EventChunkStore::new(events_per_chunk as usize);
    if let Some(keys) = &signer {
        chunker = chunker.with_signer(keys.clone());
    }
    let mut origins: Vec<NodeId> = events.iter().map(|e| e.origin).collect();
    origins.sort();
    origins.dedup();
    for o in &origins {
        chunker.resume(*o, resume_point(&db, *o)?);
    }
    // Events at or below the sealed point cannot be taken: sealed chunks never change.
    let mut late: Vec<(NodeId, u64)> = events
        .iter()
        .filter(|e| e.seq < chunker.sealed_through(e.origin))
        .map(|e| (e.origin, e.seq))
        .collect();
    late.sort_unstable();
    report_late(&late, strict)?;
    let private = events
        .iter()
        .filter(|e| e.privacy == Privacy::Private && e.seq >= chunker.sealed_through(e.origin))
        .count();
    let chunks = chunker
        .create_chunks(&events)
        .map_err(|e| format!("cannot chunk the events: {e}"))?;
    let verified: Vec<VerifiedChunk> = chunks
        .iter()
        .map(|c| VerifiedChunk::new(c.id, c.bytes.clone()))
        .collect::<std::result::Result<_, _>>()?;
    let keys: Vec<(String, u64)> = origins
        .iter()
        .map(|o| (format!("sealed/{}", o.0), chunker.sealed_through(*o)))
        .collect();
    let mut meta: Vec<(&str, u64)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    if let Some(id) = new_id {
        meta.push(("node_id", id.0));
    }
    let inserted = db.insert_all(&verified, &meta)?;
    db.flush()?;
    if let Some(fork) = inserted.forks.first() {
        return Err(Failure(format!(
            "{} of the new chunks overlap chunks already in the store for the same origin and were not stored, for example: {fork}",
            inserted.forks.len()
        )));
    }
    warn_unsigned(origins.iter(), signer.as_ref());
    let sealed: u32 = chunks.iter().map(|c| c.events).sum();
    println!(
        "appended {} of {} events ({private} private left out) as {} new chunks holding {sealed} events; {} chunks in the store",
        events.len() - late.len(),
        events.len(),
        inserted.added,
        db.len()?
    );
    Ok(())
}

/// `node-5: 0..=9, 12; node-7: 3` for sorted, unique `(origin, seq)` pairs.
fn seq_ranges(seqs: &[(NodeId, u64)]) -> String {
    let mut origins: Vec<String> = Vec::new();
    for run in seqs.chunk_by(|a, b| a.0 == b.0) {
        let mut ranges: Vec<String> = Vec::new();
        for r in run.chunk_by(|a, b| b.1 == a.1 + 1) {
            let (first, last) = (r[0].1, r[r.len() - 1].1);
            ranges.push(if first == last {
                first.to_string()
            } else {
                format!("{first}..={last}")
            });
        }
        origins.push(format!("{}: {}", run[0].0, ranges.join(", ")));
    }
    origins.join("; ")
}

/// Which way a command's `--rate` limits the transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RateLimits {
    /// What this node sends (`serve`).
    Upload,
    /// What this node receives: each peer is asked to send no faster (`pull`).
    Download,
    /// Both (`sync`, `run`).
    Both,
}

fn node_config(
    db: &RedbStore,
    store: &StoreArg,
    net: &NetArgs,
    limits: RateLimits,
) -> Result<NodeConfig> {
    let rate = |applies: bool| if applies { net.rate } else { 0 };
    Ok(NodeConfig {
        window: net.parallel,
        max_duration: net.timeout,
        throttle: ThrottleConfig {
            max_bytes_per_sec: rate(limits != RateLimits::Download),
            window_duration: Duration::from_millis(100),
        },
        receive_rate: rate(limits != RateLimits::Upload),
        compress: match net.compress {
            CompressArg::Auto => Compress::WhenLimited,
            CompressArg::Always => Compress::Always,
            CompressArg::Never => Compress::Never,
        },
        codec: match net.codec {
            CodecArg::Auto => None,
            CodecArg::Lz4 => Some(Codec::Lz4),
            CodecArg::Zstd => Some(Codec::Zstd),
        },
        ..NodeConfig::new(node_id(db, &store.store)?)
    })
}

/// The node for a network command: secure unless `--insecure-plaintext`.
fn make_node(
    config: NodeConfig,
    db: Arc<RedbStore>,
    store: &StoreArg,
    security: &SecurityArgs,
) -> Result<Node> {
    if security.insecure_plaintext {
        return Ok(Node::new_insecure_plaintext(config, db)?);
    }
    let path = keys::key_path(&store.store, security.key.as_deref());
    let keys = keys::load_or_create(&path)?;
    if keys.node_id() != config.node_id {
        return Err(Failure(format!(
            "store {} has node id {} but its key {} gives {}: use the store's own key, or a new store",
            store.store.display(),
            config.node_id,
            path.display(),
            keys.node_id()
        )));
    }
    let mut allowed = security.allow.clone();
    if let Some(file) = &security.allow_file {
        allowed.extend(keys::read_allow_file(file)?);
    }
    let mut peers = if security.open {
        Permissions::open()
    } else {
        Permissions::deny_all()
    };
    if allowed.is_empty() {
        peers = peers.trust_dialed(Access::FULL);
    }
    for grant in allowed {
        peers = peers.allow(grant.key, grant.access);
        for origin in grant.origins {
            peers = peers.trust_origin(origin);
        }
    }
    for key in &security.trust_origin {
        peers = peers.trust_origin(*key);
    }
    Ok(Node::new(config, db, Security { keys, peers })?)
}

async fn serve(
    store: &StoreArg,
    listen: &str,
    accept_pushes: bool,
    (max_connections, per_address): (u32, Option<u32>),
    net: &NetArgs,
) -> Result<()> {
    let before = Before::look(store);
    let db = Arc::new(open(store)?);
    let config = NodeConfig {
        accept_pushes,
        max_connections: max_connections as usize,
        max_connections_per_address: per_address.map(|n| n as usize),
        ..node_config(&db, store, net, RateLimits::Upload)?
    };
    let node = make_node(config, Arc::clone(&db), store, &net.security)?;
    let control = answer_for(store, &db, &node)?;
    let listener = match node.listen(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            if !before.file {
                drop((control, node, db));
                before.remove_new_store(store);
            }
            return Err(Failure(format!("cannot listen on {listen}: {e}")));
        }
    };
    let _control = control;
    println!(
        "{} serving {} chunks on {}",
        node.node_id(),
        node.store().len()?,
        listener.local_addr()
    );
    let _ = std::io::stdout().flush();
    shutdown_signal().await?;
    drop(listener);
    println!("stopped");
    Ok(())
}

/// Answers read-only commands on the store, and appends to its node's log, while this
/// process holds it.
fn answer_for(store: &StoreArg, db: &Arc<RedbStore>, node: &Node) -> Result<control::Control> {
    let runtime = tokio::runtime::Handle::current();
    control::serve(&store.store, Arc::clone(db), node.clone(), runtime).map_err(|e| {
        Failure(format!(
            "cannot answer for store {} on {}: {e}",
            store.store.display(),
            control::SOCKET
        ))
    })
}

/// `run`'s settings.
struct Live {
    listen: Option<String>,
    peers: Vec<String>,
    events_per_chunk: u32,
    seal_delay: Duration,
    seal_bytes: u64,
    accept_pushes: bool,
}

async fn run_live(store: &StoreArg, live: Live, input: daemon::Input, net: &NetArgs) -> Result<()> {
    if live.listen.is_none() && live.peers.is_empty() {
        return Err(Failure(
            "give --listen, --peer or both: a node with neither replicates with nobody".into(),
        ));
    }
    // Every peer's name is resolved before anything is opened: a typo fails at once. A
    // peer that cannot be reached is tried again and again while the node runs.
    let mut peers = Vec::new();
    for name in &live.peers {
        let addr = tokio::net::lookup_host(name.as_str())
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| format!("--peer {name}: not an address (host:port) that resolves"))?;
        peers.push(addr);
    }
    let db = Arc::new(open(store)?);
    let config = NodeConfig {
        live: true,
        accept_pushes: live.accept_pushes,
        events_per_chunk: live.events_per_chunk,
        seal_delay: Some(live.seal_delay),
        seal_bytes: usize::try_from(live.seal_bytes).unwrap_or(usize::MAX),
        ..node_config(&db, store, net, RateLimits::Both)?
    };
    let node = make_node(config, Arc::clone(&db), store, &net.security)?;
    let _control = answer_for(store, &db, &node)?;
    let listener = match &live.listen {
        Some(addr) => Some(
            node.listen(addr.as_str())
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    match &listener {
        Some(l) => println!(
            "{} running with {} chunks on {}",
            node.node_id(),
            node.store().len()?,
            l.local_addr()
        ),
        None => println!(
            "{} running with {} chunks",
            node.node_id(),
            node.store().len()?
        ),
    }
    let _ = std::io::stdout().flush();
    for addr in peers {
        node.add_peer(addr);
    }
    let stop = async {
        let _ = shutdown_signal().await;
    };
    daemon::run(node, input, stop).await?;
    drop(listener);
    Ok(())
}

/// Waits for Ctrl-C, or on Unix for SIGTERM too, so that the store is closed cleanly.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

async fn exchange(
    store: &StoreArg,
    peers: &[String],
    net: &NetArgs,
    both: bool,
    output: Output,
) -> Result<()> {
    // A store this command creates is removed again if it fails before storing anything.
    let before = Before::look(store);
    let db = open(store)?;
    let limits = if both {
        RateLimits::Both
    } else {
        RateLimits::Download
    };
    let config = node_config(&db, store, net, limits)?;
    let node = make_node(config, Arc::new(db), store, &net.security)?;
    let bar = (std::io::stderr().is_terminal() && !output.quiet && !output.json).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos}/{len} chunks {msg} [{elapsed_precise}, eta {eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    // The session's future borrows the node: it ends with this block.
    let (attempts, unresolved) = {
        let sync = async {
            if both {
                (vec![node.sync_with(peers[0].as_str()).await], None)
            } else {
                let report = node.pull_from_any(peers.iter().map(String::as_str)).await;
                let unresolved = report.unresolved.len();
                (report.attempts, Some(unresolved))
            }
        };
        tokio::pin!(sync);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                done = &mut sync => break done,
                _ = tick.tick() => {
                    // The session under way: the one started last.
                    let all = node.progress_all();
                    if let (Some(bar), Some(p)) = (&bar, all.values().min_by_key(|p| p.elapsed())) {
                        bar.set_length(p.total_chunks);
                        bar.set_position(p.synced_chunks);
                        let rate = p.bytes_transferred as f64 / p.elapsed().as_secs_f64().max(1e-3);
                        bar.set_message(format!("{} at {}/s", human(p.bytes_transferred), human(rate as u64)));
                    }
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let attempts_ok = attempts.iter().filter(|a| a.is_ok()).count();
    let mut last_error = None;
    let mut failed = 0;
    let mut why = None;
    let mut untrusted = Vec::new();
    for (peer, attempt) in peers.iter().zip(attempts) {
        match attempt {
            Ok(report) => {
                summarise(&report, peer, both, output);
                for origin in &report.untrusted {
                    if !untrusted.contains(origin) {
                        untrusted.push(*origin);
                    }
                }
                failed = report.failed.len();
                why = why.or(report.failed.first().map(|(_, reason)| *reason));
            }
            Err(e) => {
                let e = describe(peer, e);
                if output.json {
                    println!("{}", serde_json::json!({ "peer": peer, "error": e.0 }));
                }
                // With fallbacks, say why a peer was skipped and go on.
                if peers.len() > 1 {
                    eprintln!("chunk-sync: {}", e.0);
                }
                last_error = Some(e);
            }
        }
    }
    if !untrusted.is_empty() && !output.quiet && !output.json {
        let names: Vec<String> = untrusted.iter().map(ToString::to_string).collect();
        let (logs, origins) = if names.len() == 1 {
            ("log", "that origin")
        } else {
            ("logs", "those origins")
        };
        eprintln!(
            "chunk-sync: left out the {logs} of {}: no key is trusted for {origins} (trust one with --trust-origin KEY)",
            names.join(", ")
        );
    }
    // `unresolved` is what no peer could give; a two-way sync has one peer.
    let missing = unresolved.unwrap_or(failed);
    let result = match last_error {
        Some(e) if peers.len() == 1 => Err(e),
        Some(_) if attempts_ok == 0 => Err(Failure("no peer could be synced with".into())),
        _ if missing > 0 => Err(Failure(match why {
            Some(FailReason::UnknownOrigin) => format!(
                "{missing} chunks could not be fetched: no key is trusted for their origin (trust one with --trust-origin KEY)"
            ),
            Some(reason) => format!("{missing} chunks could not be fetched, for example: {reason}"),
            None => format!("{missing} chunks could not be fetched"),
        })),
        _ => Ok(()),
    };
    if result.is_err() && !before.file && node.store().is_empty().unwrap_or(false) {
        // The node holds the file until dropped.
        drop(node);
        before.remove_new_store(store);
    }
    result
}

/// Writes `bytes` to standard output; a reader that closed the pipe early (`| head`) is
/// not an error.
fn print_all(bytes: &[u8]) -> Result<()> {
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure(format!("cannot write to standard output: {e}")))
        }
        _ => Ok(()),
    }
}

/// Whether a store's directory and file existed before the command, so that a store the
/// command created, and that holds nothing because the command failed, can be removed: a
/// failed command leaves no store behind.
#[derive(Clone, Copy, Debug)]
struct Before {
    dir: bool,
    file: bool,
    key: bool,
}

impl Before {
    fn look(store: &StoreArg) -> Self {
        Self {
            dir: store.store.exists(),
            file: store.store.join(DB_FILE).is_file(),
            key: store.store.join(keys::KEY_FILE).is_file(),
        }
    }

    /// Removes the store's file, and its directory if the command made it.
    fn remove_new_store(self, store: &StoreArg) {
        let _ = std::fs::remove_file(store.store.join(DB_FILE));
        if !self.key {
            let _ = std::fs::remove_file(store.store.join(keys::KEY_FILE));
        }
        if !self.dir {
            let _ = std::fs::remove_dir(&store.store);
        }
    }
}

/// What a session did, on standard output: one line of at most about 80 columns, one JSON
/// object, or nothing.
fn summarise(report: &SyncReport, peer: &str, both: bool, output: Output) {
    let p = report.progress;
    let secs = p.elapsed().as_secs_f64();
    let node = report
        .peer
        .map_or_else(|| peer.to_owned(), |id| id.to_string());
    if output.json {
        let summary = serde_json::json!({
            "peer": peer,
            "node_id": report.peer.map(|id| id.0),
            "fetched_chunks": p.synced_chunks,
            "chunk_bytes": p.bytes_transferred,
            "failed": report.failed.len(),
            "untrusted_origins": report.untrusted.iter().map(|id| id.0).collect::<Vec<_>>(),
            "bytes_sent": report.stats.bytes_sent,
            "bytes_received": report.stats.bytes_received,
            "seconds": secs,
        });
        println!("{summary}");
    } else if !output.quiet {
        let failed = match report.failed.len() {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        let gave = if both {
            format!(", sent {}", human(report.stats.bytes_sent))
        } else {
            String::new()
        };
        println!(
            "{} {} chunks ({}) from {node} in {secs:.2} s{gave}{failed}",
            if both { "synced: fetched" } else { "pulled" },
            p.synced_chunks,
            human(p.bytes_transferred),
        );
    }
}

/// One clear line for a failed sync.
fn describe(peer: &str, e: chunk_sync_tokio::Error) -> Failure {
    match e {
        chunk_sync_tokio::Error::Io(io) => Failure(format!("cannot sync with {peer}: {io}")),
        other => Failure(format!("sync with {peer} failed: {other}")),
    }
}

fn ls(db: &RedbStore, json: bool, out: &mut dyn Write) -> Result<()> {
    let mut failed = None;
    db.for_each(|id, bytes| {
        let line = match ChunkView::parse(bytes) {
            Ok(v) if json => serde_json::json!({
                "id": id.to_string(),
                "origin": v.origin().0,
                "first_seq": v.first_seq(),
                "end_seq": v.end_seq(),
                "events": v.len(),
                "bytes": bytes.len(),
            })
            .to_string(),
            Err(e) if json => {
                serde_json::json!({ "id": id.to_string(), "error": e.to_string() }).to_string()
            }
            Ok(v) => format!(
                "{id}  {}  {:>10}..{:<10} {:>6} events  {}",
                v.origin(),
                v.first_seq(),
                v.end_seq(),
                v.len(),
                human(bytes.len() as u64)
            ),
            Err(e) => format!("{id}  invalid chunk: {e}"),
        };
        if let Err(e) = writeln!(out, "{line}") {
            failed.get_or_insert(e);
        }
    })?;
    failed.map_or(Ok(()), |e| Err(e.into()))
}

fn stat(db: &RedbStore, json: bool, out: &mut dyn Write) -> Result<()> {
    let mut origins = std::collections::BTreeMap::<u64, (u64, u64)>::new();
    db.for_each(|_, bytes| {
        if let Ok(v) = ChunkView::parse(bytes) {
            let entry = origins.entry(v.origin().0).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(v.end_seq());
        }
    })?;
    if json {
        let origins: Vec<serde_json::Value> = origins
            .iter()
            .map(|(origin, (chunks, end))| {
                serde_json::json!({ "origin": origin, "chunks": chunks, "end_seq": end })
            })
            .collect();
        let summary = serde_json::json!({
            "node_id": db.meta("node_id")?,
            "chunks": db.len()?,
            "bytes": db.total_bytes()?,
            "origins": origins,
        });
        writeln!(out, "{summary}")?;
        return Ok(());
    }
    match db.meta("node_id")? {
        Some(id) => writeln!(out, "node id: {}", NodeId(id))?,
        None => writeln!(
            out,
            "node id: not chosen yet (the first append, serve or pull chooses it)"
        )?,
    }
    writeln!(out, "chunks:  {} ({})", db.len()?, human(db.total_bytes()?))?;
    for (origin, (chunks, end)) in origins {
        writeln!(
            out,
            "origin {}: {chunks} chunks, sequence numbers up to {end}",
            NodeId(origin)
        )?;
    }
    Ok(())
}

/// A read-only command: `ls`, `stat`, `verify` or `export`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Inspect {
    Ls {
        json: bool,
    },
    Stat {
        json: bool,
    },
    /// With `keys`, the signatures of the chunks of their origins are checked too.
    Verify {
        json: bool,
        keys: Option<Vec<PublicKey>>,
    },
    Export(OnDamaged),
}

impl Inspect {
    /// Runs it on `db`, writing what it prints to `out` and `err`; returns the exit
    /// status.
    pub(crate) fn run(
        self,
        db: &RedbStore,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<u8> {
        match self {
            Self::Ls { json } => ls(db, json, out).map(|()| 0),
            Self::Stat { json } => stat(db, json, out).map(|()| 0),
            Self::Verify { json, keys } => verify(db, json, keys.as_deref(), out, err),
            Self::Export(on_damaged) => export(db, on_damaged, out, err),
        }
    }
}

/// Runs a read-only command on the store: from its file, or, while a `serve` or `run`
/// process holds the store, through that process.
fn inspect(store: &Path, what: Inspect) -> Result<ExitCode> {
    let db = match open_read_only(store) {
        Ok(db) => db,
        Err(e) if control::is_served(store) => {
            return control::ask(store, what).map_err(|why| {
                Failure(format!(
                    "{}; and through the process serving it: {why}",
                    e.0
                ))
            });
        }
        Err(e) => return Err(e),
    };
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    let code = what.run(&db, &mut out, &mut err)?;
    let _ = out.flush();
    Ok(ExitCode::from(code))
}

/// The chunk, if its bytes match its hash and are a valid chunk.
fn sound<'a>(id: &ChunkHash, bytes: &'a [u8]) -> Option<ChunkView<'a>> {
    id.matches(bytes)
        .then(|| ChunkView::validated(bytes).ok())
        .flatten()
}

/// Signatures checked together: a few MiB of checks at a time.
const VERIFY_BATCH: usize = 1 << 14;

fn verify(
    db: &RedbStore,
    json: bool,
    keys: Option<&[PublicKey]>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8> {
    // Each key made ready to verify once.
    let trusted: std::collections::HashMap<NodeId, Verifier> = keys
        .unwrap_or_default()
        .iter()
        .filter_map(|k| Verifier::new(*k))
        .map(|v| (v.origin(), v))
        .collect();
    let (mut total, mut signed) = (0u64, 0u64);
    let mut unchecked = 0u64;
    // Corrupt chunks, each with why.
    let mut corrupt: Vec<(ChunkHash, &str)> = Vec::new();
    let mut pending: Vec<(ChunkHash, SealCheck)> = Vec::new();
    let mut check = |pending: &mut Vec<(ChunkHash, SealCheck)>, corrupt: &mut Vec<_>| {
        let (ids, checks): (Vec<ChunkHash>, Vec<SealCheck>) = pending.drain(..).unzip();
        for (id, verdict) in ids.into_iter().zip(chunk_sync_tokio::check_seals(checks)) {
            match verdict {
                Ok(()) => signed += 1,
                Err(_) => corrupt.push((id, "its signature does not hold")),
            }
        }
    };
    db.for_each(|id, bytes| {
        total += 1;
        // The hash, and the hash the signature signs, in one pass.
        let verified = Verified::hash_of(bytes);
        let view = match ChunkView::validated(bytes) {
            Ok(view) if verified.id() == id => view,
            _ => return corrupt.push((id, "it does not match its hash or is no valid chunk")),
        };
        if keys.is_none() {
            return;
        }
        match trusted.get(&view.origin()) {
            None => unchecked += 1,
            Some(verifier) => match SealCheck::of(verifier, &verified) {
                Ok(seal) => {
                    pending.push((id, seal));
                    if pending.len() == VERIFY_BATCH {
                        check(&mut pending, &mut corrupt);
                    }
                }
                Err(_) => corrupt.push((id, "it is not signed")),
            },
        }
    })?;
    check(&mut pending, &mut corrupt);
    corrupt.sort_unstable();
    if json {
        let ids: Vec<String> = corrupt.iter().map(|(id, _)| id.to_string()).collect();
        let mut report = serde_json::json!({ "verified": total, "corrupt": ids });
        if keys.is_some() {
            report["signatures"] = signed.into();
            report["unchecked"] = unchecked.into();
        }
        writeln!(out, "{report}")?;
        return Ok(u8::from(!corrupt.is_empty()));
    }
    for (id, why) in &corrupt {
        writeln!(err, "corrupt chunk {id}: {why}")?;
    }
    if corrupt.is_empty() {
        match keys {
            None => writeln!(out, "verified {total} chunks: all match their hashes")?,
            Some(_) => writeln!(
                out,
                "verified {total} chunks: all match their hashes; {signed} signatures hold, \
                 {unchecked} chunks of origins without a key given not checked"
            )?,
        }
        Ok(0)
    } else {
        writeln!(
            err,
            "chunk-sync: {} of {total} chunks are corrupt",
            corrupt.len()
        )?;
        Ok(1)
    }
}

/// Writes the events of a chunk checked against its hash and the format.
fn write_events(out: &mut impl Write, view: &ChunkView<'_>) -> std::io::Result<()> {
    for event in view.events() {
        events::write(out, &event.map_err(std::io::Error::other)?)?;
    }
    Ok(())
}

/// Writes the events of every chunk, each chunk checked against its hash and the format
/// first, in log order. Damaged chunks are reported on stderr; the exit status says whether
/// there were any.
fn export(
    db: &RedbStore,
    on_damaged: OnDamaged,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8> {
    let report = |err: &mut dyn Write, id: &ChunkHash| {
        writeln!(
            err,
            "chunk-sync: damaged chunk {id}: it does not match its hash or is no valid chunk"
        )
    };
    if on_damaged == OnDamaged::Stop {
        // A first pass finds damage before anything is written.
        let mut damaged: Vec<ChunkHash> = Vec::new();
        db.for_each(|id, bytes| {
            if sound(&id, bytes).is_none() {
                damaged.push(id);
            }
        })?;
        for id in &damaged {
            report(err, id)?;
        }
        if !damaged.is_empty() {
            return Err(Failure(format!(
                "{} damaged chunks; nothing exported (--on-damaged skip exports the rest)",
                damaged.len()
            )));
        }
    }
    // The store gives its chunks in log order (each origin's by sequence number, origins
    // ascending), a pack at a time: the events are written as they come, in bounded
    // memory whatever the store's size.
    // A store of the first layout, read as it is, gives its chunks by hash: they are
    // sorted first, in memory.
    let in_order = db.gives_log_order();
    let mut out = std::io::BufWriter::new(out);
    let mut damaged = 0u64;
    let mut failed: Option<std::io::Error> = None;
    let mut by_hash: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    db.for_each(|id, bytes| {
        if failed.is_some() {
            return;
        }
        let Some(view) = sound(&id, bytes) else {
            damaged += 1;
            if let Err(e) = report(err, &id) {
                failed = Some(e);
            }
            return;
        };
        if !in_order {
            by_hash.push((view.origin().0, view.first_seq(), bytes.to_vec()));
        } else if let Err(e) = write_events(&mut out, &view) {
            failed = Some(e);
        }
    })?;
    by_hash.sort();
    let written = failed.map_or_else(
        || {
            for (_, _, bytes) in &by_hash {
                let view = ChunkView::parse(bytes).map_err(std::io::Error::other)?;
                write_events(&mut out, &view)?;
            }
            out.flush()
        },
        Err,
    );
    match written {
        // A reader that stops early (`export | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    if damaged == 0 {
        Ok(0)
    } else {
        writeln!(
            err,
            "chunk-sync: {damaged} damaged chunks left out of the export"
        )?;
        Ok(1)
    }
}
