//! `chunk-sync run`: a node that listens, keeps live sessions with the peers it is given,
//! and appends the events it reads (standard input, or a JSON-lines file it follows as it
//! grows) to its own log, until interrupted. On a terminal it keeps one status line on
//! standard error; otherwise it writes one `key=value` line per thing that happens.

use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chunk_sync_core::{EventBuf, NodeId};
use chunk_sync_tokio::{Node, NodeEvent};
use tokio::sync::broadcast::error::RecvError;

use crate::events::parse_line;

/// How often a followed file is checked for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);
/// Events appended in one call at most.
const BATCH: usize = 1024;
/// The first wait before a batch the store refused is appended again; it doubles up to
/// [`APPEND_RETRY_MAX`].
const APPEND_RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two attempts to append a batch the store refused.
const APPEND_RETRY_MAX: Duration = Duration::from_secs(30);

/// Where `run` reads events from.
#[derive(Debug)]
pub(crate) enum Input {
    /// Standard input, until it ends (the node goes on running).
    Stdin,
    /// A file, followed as it grows (read from its start, so that events not yet sealed
    /// when the daemon last stopped are taken again).
    Follow(PathBuf),
    /// No input: the node only replicates.
    None,
}

/// Counters the status line shows.
#[derive(Debug, Default)]
struct Counts {
    appended: AtomicU64,
    received: AtomicU64,
    sealed: AtomicU64,
    bad_lines: AtomicU64,
    connected: AtomicU64,
}

/// Runs the daemon until `stop` resolves.
pub(crate) async fn run(
    node: Node,
    input: Input,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    let terminal = std::io::stderr().is_terminal();
    let counts = Arc::new(Counts::default());
    let watcher = tokio::spawn(watch(node.clone(), Arc::clone(&counts), terminal));
    let reader = tokio::spawn(read_input(node.clone(), input, Arc::clone(&counts)));
    stop.await;
    reader.abort();
    node.shutdown()
        .await
        .map_err(|e| format!("while stopping: {e}"))?;
    watcher.abort();
    if terminal {
        eprintln!();
    }
    log(&[("event", "stopped".into()), ("chunks", count(&node))]);
    Ok(())
}

fn count(node: &Node) -> String {
    node.store()
        .len()
        .map_or_else(|e| e.to_string(), |n| n.to_string())
}

/// One `key=value` line on standard error; values with spaces are quoted.
pub(crate) fn log(fields: &[(&str, String)]) {
    let line: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            if v.contains(' ') || v.contains('"') || v.is_empty() {
                format!("{k}={v:?}")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    eprintln!("{}", line.join(" "));
}

/// Reports what happens: a status line on a terminal, `key=value` lines otherwise.
async fn watch(node: Node, counts: Arc<Counts>, terminal: bool) {
    let mut events = node.events();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => note(&event, &counts, terminal),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick(), if terminal => status(&node, &counts),
        }
    }
}

fn note(event: &NodeEvent, counts: &Counts, terminal: bool) {
    let peer = |p: &Option<NodeId>| p.map_or_else(String::new, |p| p.to_string());
    let addr = |a: &Option<std::net::SocketAddr>| a.map_or_else(String::new, |a| a.to_string());
    match event {
        NodeEvent::ChunkStored { from: Some(_), .. } => {
            counts.received.fetch_add(1, Ordering::Relaxed);
            return;
        }
        NodeEvent::ChunkStored { from: None, .. } => {
            counts.sealed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        NodeEvent::PeerConnected { .. } => {
            counts.connected.fetch_add(1, Ordering::Relaxed);
        }
        NodeEvent::PeerDisconnected { .. } => {
            let _ = counts
                .connected
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        _ => {}
    }
    if terminal {
        // Lines that matter still show, above the status line.
        eprint!("\r\x1b[2K");
    }
    match event {
        NodeEvent::PeerConnected { peer, addr: a } => log(&[
            ("event", "peer_connected".into()),
            ("peer", peer.to_string()),
            ("addr", addr(a)),
        ]),
        NodeEvent::PeerDisconnected {
            peer: p,
            addr: a,
            error,
        } => log(&[
            ("event", "peer_lost".into()),
            ("peer", peer(p)),
            ("addr", addr(a)),
            ("error", error.clone().unwrap_or_default()),
        ]),
        NodeEvent::ConnectFailed {
            addr,
            error,
            retry_in,
        } => log(&[
            ("event", "connect_failed".into()),
            ("addr", addr.to_string()),
            ("error", error.clone()),
            ("retry_in", format!("{}ms", retry_in.as_millis())),
        ]),
        _ => {}
    }
}

fn status(node: &Node, counts: &Counts) {
    eprint!(
        "\r\x1b[2K{}: {} chunks, {} peers connected, {} events appended, {} chunks sealed, {} received{}",
        node.node_id(),
        count(node),
        counts.connected.load(Ordering::Relaxed),
        counts.appended.load(Ordering::Relaxed),
        counts.sealed.load(Ordering::Relaxed),
        counts.received.load(Ordering::Relaxed),
        match counts.bad_lines.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(", {n} bad lines skipped"),
        }
    );
    let _ = std::io::stderr().flush();
}

/// Reads events and appends them; a line that is not an event is reported and skipped.
async fn read_input(node: Node, input: Input, counts: Arc<Counts>) {
    let origin = node.node_id();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<EventBuf, String>>(BATCH * 4);
    // Reading blocks: it runs on a thread of its own.
    let reading = match input {
        Input::None => return,
        Input::Stdin => std::thread::spawn(move || {
            let stdin = std::io::stdin().lock();
            lines(stdin, origin, &tx, 0);
        }),
        Input::Follow(path) => std::thread::spawn(move || follow(&path, origin, &tx)),
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut late = Late::default();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take().or_else(|| rx.try_recv().ok()) {
            match item {
                Ok(event) => batch.push(event),
                Err(why) => {
                    counts.bad_lines.fetch_add(1, Ordering::Relaxed);
                    log(&[("event", "bad_line".into()), ("error", why)]);
                }
            }
            if batch.len() == BATCH {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        // A store that refuses (full, failing) gets the same batch again after a wait that
        // grows, and reading waits meanwhile: no event is dropped. (An append the store
        // refuses takes nothing; chunks sealed that it could not store are kept:
        // `chunks_kept`.)
        let mut retry_in = APPEND_RETRY_MIN;
        let done = loop {
            match node.append_batch(&batch).await {
                Ok(done) => break done,
                Err(e) => {
                    log(&[
                        ("event", "append_failed".into()),
                        ("error", e.to_string()),
                        ("retry_in", format!("{}ms", retry_in.as_millis())),
                    ]);
                    tokio::time::sleep(retry_in).await;
                    retry_in = (retry_in * 2).min(APPEND_RETRY_MAX);
                }
            }
        };
        if done.unstored > 0 {
            // Kept by the node, and stored first by its next append (or seal).
            log(&[
                ("event", "chunks_kept".into()),
                ("chunks", done.unstored.to_string()),
            ]);
        }
        counts
            .appended
            .fetch_add(done.taken as u64, Ordering::Relaxed);
        late.add(done.late, done.late_range);
        if done.taken > 0 || rx.is_empty() {
            late.report(counts.appended.load(Ordering::Relaxed) == 0);
        }
        for (seq, why) in &done.refused {
            log(&[
                ("event", "refused_event".into()),
                ("seq", seq.to_string()),
                ("error", why.to_string()),
            ]);
        }
        batch.clear();
    }
    let _ = reading.join();
}

/// Events not taken because their sequence numbers were taken already, reported as one
/// line per run of them.
#[derive(Debug, Default)]
struct Late {
    count: usize,
    range: Option<(u64, u64)>,
}

impl Late {
    fn add(&mut self, count: usize, range: Option<(u64, u64)>) {
        self.count += count;
        if let Some((lo, hi)) = range {
            self.range = Some(self.range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
    }

    /// One line for the events counted, if any: `already_in_log` while nothing was
    /// appended yet (the start of a followed file the daemon read before it last stopped),
    /// `late_events` after.
    fn report(&mut self, at_start: bool) {
        if self.count == 0 {
            return;
        }
        let (lo, hi) = self.range.unwrap_or_default();
        let what = if at_start {
            "already_in_log"
        } else {
            "late_events"
        };
        log(&[
            ("event", what.into()),
            ("count", self.count.to_string()),
            ("seqs", format!("{lo}..={hi}")),
        ]);
        *self = Self::default();
    }
}

/// Sends each line of `input` as an event (or why it is not one), numbering lines from
/// `first_line`; returns how many lines were read.
fn lines(
    input: impl BufRead,
    origin: NodeId,
    tx: &tokio::sync::mpsc::Sender<Result<EventBuf, String>>,
    first_line: usize,
) -> usize {
    let mut n = first_line;
    for line in input.lines() {
        n += 1;
        let item = match line {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => parse_line(&line, origin).map_err(|e| format!("line {n}: {e}")),
            Err(e) => Err(format!("line {n}: {e}")),
        };
        if tx.blocking_send(item).is_err() {
            break;
        }
    }
    n
}

/// Follows `path` as it grows: reads whole lines as they are written, from its start;
/// starts over if the file is replaced by a shorter one.
fn follow(
    path: &std::path::Path,
    origin: NodeId,
    tx: &tokio::sync::mpsc::Sender<Result<EventBuf, String>>,
) {
    let mut offset = 0u64;
    let mut line_no = 0usize;
    let mut partial = String::new();
    loop {
        if tx.is_closed() {
            return;
        }
        match std::fs::File::open(path) {
            Ok(mut file) => {
                let len = file.metadata().map_or(0, |m| m.len());
                if len < offset {
                    offset = 0;
                    line_no = 0;
                    partial.clear();
                }
                if len > offset && file.seek(SeekFrom::Start(offset)).is_ok() {
                    let mut reader = BufReader::new(file);
                    let mut line = String::new();
                    while let Ok(n @ 1..) = reader.read_line(&mut line) {
                        offset += n as u64;
                        if !line.ends_with('\n') {
                            // A line still being written: kept until it ends.
                            partial.push_str(&line);
                            line.clear();
                            break;
                        }
                        partial.push_str(&line);
                        line_no = lines(partial.as_bytes(), origin, tx, line_no);
                        partial.clear();
                        line.clear();
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("cannot read {}: {e}", path.display())));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}
