//! Read-only commands on a store another process holds: a `serve` or `run` process keeps
//! the store's database open, which no other process may then open, so it answers `ls`,
//! `stat`, `verify` and `export` itself, on a Unix socket in the store's directory
//! ([`SOCKET`]).
//!
//! It also takes `append`: the events go into the log of the node that holds the store,
//! which seals them by its own policy (an open chunk stays open across appends).
//!
//! The exchange is one request line (`ls`, `stat`, `verify`, `export stop`, `export
//! skip`, or `append ORIGIN` followed by the events' JSON lines until the end of the
//! stream) and one answer: a line `EXIT OUT_LEN ERR_LEN`, then what the command wrote to
//! its standard output and to its standard error, which the asking process writes to its
//! own and exits with `EXIT`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chunk_sync_core::NodeId;
use chunk_sync_tokio::{Node, RedbStore};

use crate::{Inspect, OnDamaged, events};

/// The socket's file name in the store's directory.
pub(crate) const SOCKET: &str = "daemon.sock";

fn socket(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Whether a process answers for the store in `dir`.
pub(crate) fn is_served(dir: &Path) -> bool {
    cfg!(unix) && socket(dir).exists()
}

impl Inspect {
    fn request(&self) -> String {
        match self {
            Self::Ls { json: false } => "ls".into(),
            Self::Ls { json: true } => "ls json".into(),
            Self::Stat { json: false } => "stat".into(),
            Self::Stat { json: true } => "stat json".into(),
            Self::Verify { json, keys } => {
                let mut line = String::from(if *json { "verify json" } else { "verify" });
                if let Some(keys) = keys {
                    line.push_str(" signatures");
                    for key in keys {
                        line.push(' ');
                        line.push_str(&key.to_string());
                    }
                }
                line
            }
            Self::Export(OnDamaged::Stop) => "export stop".into(),
            Self::Export(OnDamaged::Skip) => "export skip".into(),
        }
    }

    fn from_request(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        Some(match (words.next()?, words.next()) {
            ("ls", None) => Self::Ls { json: false },
            ("ls", Some("json")) => Self::Ls { json: true },
            ("stat", None) => Self::Stat { json: false },
            ("stat", Some("json")) => Self::Stat { json: true },
            ("verify", second) => {
                let json = second == Some("json");
                let mut next = if json { words.next() } else { second };
                let keys = match next.take() {
                    None => None,
                    Some("signatures") => Some(
                        words
                            .by_ref()
                            .map(crate::keys::parse_key)
                            .collect::<Result<Vec<_>, _>>()
                            .ok()?,
                    ),
                    Some(_) => return None,
                };
                Self::Verify { json, keys }
            }
            ("export", Some("stop")) => Self::Export(OnDamaged::Stop),
            ("export", Some("skip")) => Self::Export(OnDamaged::Skip),
            _ => return None,
        })
        .filter(|_| words.next().is_none())
    }
}

/// Answers read-only commands on `db` while it lives; the socket is removed when it is
/// dropped.
#[derive(Debug)]
pub(crate) struct Control {
    path: PathBuf,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts answering for the store in `dir` (a socket left by a process that was killed is
/// replaced).
#[cfg(unix)]
pub(crate) fn serve(
    dir: &Path,
    db: Arc<RedbStore>,
    node: Node,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<Control> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;

    let path = socket(dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                continue;
            };
            let db = Arc::clone(&db);
            let (node, runtime) = (node.clone(), runtime.clone());
            // One thread per request: an `export` of a large store does not hold up a
            // `stat`.
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(&stream);
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let code = if let Some(origin) = line.trim().strip_prefix("append ") {
                    let mut text = String::new();
                    match reader.read_to_string(&mut text) {
                        Ok(_) => append_here(&node, &runtime, origin, &text, &mut out, &mut err),
                        Err(e) => {
                            let _ = writeln!(err, "chunk-sync: cannot read the events: {e}");
                            1
                        }
                    }
                } else {
                    match Inspect::from_request(&line) {
                        Some(what) => what.run(&db, &mut out, &mut err).unwrap_or_else(|e| {
                            let _ = writeln!(err, "chunk-sync: {}", e.0);
                            1
                        }),
                        None => {
                            let _ = writeln!(err, "chunk-sync: unknown request {:?}", line.trim());
                            2
                        }
                    }
                };
                let mut stream = &stream;
                let header = format!("{code} {} {}\n", out.len(), err.len());
                let _ = stream
                    .write_all(header.as_bytes())
                    .and_then(|()| stream.write_all(&out))
                    .and_then(|()| stream.write_all(&err));
            });
        }
    });
    Ok(Control { path })
}

/// Appends the events of `text` (JSON lines; `origin` is `-` for the node's own) to the
/// node's log: all of them or, if a line is not an event, none. Returns the exit status.
fn append_here(
    node: &Node,
    runtime: &tokio::runtime::Handle,
    origin: &str,
    text: &str,
    out: &mut Vec<u8>,
    err: &mut Vec<u8>,
) -> u8 {
    use std::io::Write;
    let origin = origin.parse().map_or(node.node_id(), NodeId);
    let events = match events::read(text.as_bytes(), origin) {
        Ok(events) => events,
        Err(why) => {
            let _ = writeln!(err, "chunk-sync: {why}; nothing appended");
            return 1;
        }
    };
    match runtime.block_on(node.append_batch(&events)) {
        Ok(done) => {
            let _ = writeln!(
                out,
                "appended {} of {} events ({} private left out) to the log of the node holding the store, which seals them within its seal delay",
                done.taken,
                events.len(),
                done.private
            );
            if let Some((lo, hi)) = done.late_range {
                let _ = writeln!(
                    err,
                    "chunk-sync: {} events not taken: their sequence numbers were taken already ({lo}..={hi})",
                    done.late
                );
            }
            for (seq, why) in &done.refused {
                let _ = writeln!(err, "chunk-sync: event {seq} not taken: {why}");
            }
            0
        }
        Err(e) => {
            let _ = writeln!(err, "chunk-sync: {e}");
            1
        }
    }
}

/// Without Unix sockets, nothing answers: read-only commands wait for the store.
#[cfg(not(unix))]
pub(crate) fn serve(
    dir: &Path,
    _db: Arc<RedbStore>,
    _node: Node,
    _runtime: tokio::runtime::Handle,
) -> std::io::Result<Control> {
    Ok(Control { path: socket(dir) })
}

/// Runs `what` through the process that holds the store in `dir`.
#[cfg(unix)]
pub(crate) fn ask(dir: &Path, what: Inspect) -> Result<ExitCode, String> {
    let stream = std::os::unix::net::UnixStream::connect(socket(dir)).map_err(|e| e.to_string())?;
    exchange(stream, &what.request(), "")
}

/// Appends the events of `text` through the process that holds the store in `dir`, to
/// its log (`origin`: events that name none take it; by default the node's own). `None`
/// if no process answers (the socket was left by one that was killed).
#[cfg(unix)]
pub(crate) fn append(
    dir: &Path,
    origin: Option<u64>,
    text: &str,
) -> Option<Result<ExitCode, String>> {
    let origin = origin.map_or_else(|| "-".to_owned(), |o| o.to_string());
    let stream = std::os::unix::net::UnixStream::connect(socket(dir)).ok()?;
    Some(exchange(stream, &format!("append {origin}"), text))
}

/// Sends `request` and `body`, and passes the answer on.
#[cfg(unix)]
fn exchange(
    mut stream: std::os::unix::net::UnixStream,
    request: &str,
    body: &str,
) -> Result<ExitCode, String> {
    use std::io::{BufRead, BufReader, Read, Write};

    writeln!(stream, "{request}").map_err(|e| e.to_string())?;
    stream
        .write_all(body.as_bytes())
        .map_err(|e| e.to_string())?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).map_err(|e| e.to_string())?;
    let fields: Vec<u64> = header
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [code, out_len, err_len] = fields[..] else {
        return Err("the process holding the store gave no answer".into());
    };
    let mut out = vec![0; usize::try_from(out_len).map_err(|e| e.to_string())?];
    let mut err = vec![0; usize::try_from(err_len).map_err(|e| e.to_string())?];
    reader
        .read_exact(&mut out)
        .and_then(|()| reader.read_exact(&mut err))
        .map_err(|e| e.to_string())?;
    // A reader that stops early (`export | head`) is not an error.
    let _ = std::io::stdout().lock().write_all(&out);
    let _ = std::io::stderr().lock().write_all(&err);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[cfg(not(unix))]
pub(crate) fn ask(_dir: &Path, _what: Inspect) -> Result<ExitCode, String> {
    Err("no process answers for it on this platform".into())
}

#[cfg(not(unix))]
pub(crate) fn append(
    _dir: &Path,
    _origin: Option<u64>,
    _text: &str,
) -> Option<Result<ExitCode, String>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunk_sync_tokio::generate_keypair;

    /// Every read-only command travels to the serving process and back as it was, and a
    /// line that is none of them is refused.
    #[test]
    fn requests_round_trip_and_others_are_refused() {
        let keys: Vec<_> = (0..2)
            .map(|_| *generate_keypair().unwrap().public())
            .collect();
        let all = [
            Inspect::Ls { json: false },
            Inspect::Ls { json: true },
            Inspect::Stat { json: false },
            Inspect::Stat { json: true },
            Inspect::Verify {
                json: false,
                keys: None,
            },
            Inspect::Verify {
                json: true,
                keys: None,
            },
            Inspect::Verify {
                json: false,
                keys: Some(Vec::new()),
            },
            Inspect::Verify {
                json: true,
                keys: Some(keys),
            },
            Inspect::Export(OnDamaged::Stop),
            Inspect::Export(OnDamaged::Skip),
        ];
        for what in all {
            assert_eq!(Inspect::from_request(&what.request()), Some(what.clone()));
        }
        for line in [
            "",
            "ls yaml",
            "verify json json",
            "verify signatures nothex",
            "gc",
            "export",
        ] {
            assert_eq!(Inspect::from_request(line), None, "{line:?}");
        }
    }
}
