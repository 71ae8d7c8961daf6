//! `chunk-sync run` as a user runs it: live daemons as real processes over real TCP, with
//! stores on disk, killed and restarted.
//!
//! Waits poll the stores with `stat` (a read-only open, which works while a daemon holds
//! the store) and are bounded only so that a broken build fails instead of hanging.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{BIN, ok, run, temp_dir};

/// A `run` daemon and the address it listens on.
struct Daemon {
    child: Child,
    addr: String,
    stderr: PathBuf,
}

impl Daemon {
    fn start(store: &Path, args: &[&str]) -> Self {
        Self::start_on(store, "127.0.0.1:0", args)
    }

    fn start_on(store: &Path, listen: &str, args: &[&str]) -> Self {
        let stderr = store.with_extension("log");
        std::fs::create_dir_all(store).unwrap();
        let log = std::fs::File::create(&stderr).unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--store", store.to_str().unwrap()])
            .args(["--listen", listen, "--open"])
            .args(if args.contains(&"--seal-delay") {
                &[][..]
            } else {
                &["--seal-delay", "10ms"][..]
            })
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn run");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("run prints its address");
        let addr = line.trim().rsplit(' ').next().expect("address").to_owned();
        Self {
            child,
            addr,
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Stops it as Ctrl-C would, and waits for it.
    fn interrupt(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn event_lines(seqs: std::ops::Range<u64>) -> String {
    seqs.map(|seq| {
        format!("{{\"seq\":{seq},\"timestamp\":{seq},\"kind\":\"k\",\"privacy\":\"public\",\"payload\":\"event {seq}\"}}\n")
    })
    .collect()
}

fn append_to(file: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The store's chunk count, as `stat` reads it.
fn chunks(store: &Path) -> usize {
    let out = run(&["stat", "--store", store.to_str().unwrap()], None);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("chunks:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_daemons_replicate_as_events_are_written_and_catch_up_after_a_kill() {
    let (a, b) = (temp_dir("run-a"), temp_dir("run-b"));
    let (a_events, b_events) = (a.with_extension("jsonl"), b.with_extension("jsonl"));
    append_to(&a_events, &event_lines(0..250));
    append_to(&b_events, "");
    let da = Daemon::start(
        &a,
        &["--follow", a_events.to_str().unwrap(), "--accept-pushes"],
    );
    let db = Daemon::start(
        &b,
        &["--follow", b_events.to_str().unwrap(), "--peer", &da.addr],
    );
    // 250 events, 100 a chunk: three chunks on A, all of them on B.
    wait_for("A's chunks on B", || chunks(&b) == 3);
    // Written while both run, on either side: a line that is not an event is skipped
    // with one line of log, and the daemon goes on.
    append_to(&b_events, "this is not an event\n");
    append_to(&b_events, &event_lines(0..30));
    append_to(&a_events, &event_lines(250..260));
    wait_for("B's events on A", || chunks(&a) == 5);
    wait_for("A's new events on B", || chunks(&b) == 5);
    assert!(db.log().contains("event=bad_line"), "{}", db.log());

    // B is killed; A goes on; B restarts, reads its file again and catches up.
    db.kill();
    append_to(&a_events, &event_lines(260..400));
    wait_for("A's chunks", || chunks(&a) >= 7);
    let db = Daemon::start(
        &b,
        &["--follow", b_events.to_str().unwrap(), "--peer", &da.addr],
    );
    let a_count = chunks(&a);
    wait_for("B to catch up", || chunks(&b) == a_count);
    assert!(db.log().contains("event=already_in_log"), "{}", db.log());
    assert!(db.interrupt().success());
    assert!(da.interrupt().success());
    for store in [&a, &b] {
        let out = ok(&["verify", "--store", store.to_str().unwrap()], None);
        assert!(out.contains("all match their hashes"), "{out}");
    }
    // Nothing fetched twice: both hold the same set, and no chunk forked another.
    let ls = |s: &Path| ok(&["ls", "--store", s.to_str().unwrap()], None);
    assert_eq!(ls(&a), ls(&b));
}

#[test]
fn ten_daemons_in_a_ring_converge_on_events_appended_at_two() {
    let stores: Vec<PathBuf> = (0..10).map(|i| temp_dir(&format!("ring-{i}"))).collect();
    let files: Vec<PathBuf> = stores.iter().map(|s| s.with_extension("jsonl")).collect();
    // Ports chosen up front, so that each daemon can name the one before it, the first
    // the last (not listening yet: it is tried again until it is).
    let ports: Vec<String> = (0..10)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    // The logs of 0 and 6 travel through the others, which take them signed by their keys.
    let key = |store: &PathBuf| {
        let out = run(&["key", "--store", store.to_str().unwrap()], None);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (key0, key6) = (key(&stores[0]), key(&stores[6]));
    let daemons: Vec<Daemon> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            append_to(&files[i], "");
            let prev = &ports[(i + 9) % 10];
            let args = [
                "--follow",
                files[i].to_str().unwrap(),
                "--peer",
                prev,
                "--trust-origin",
                &key0,
                "--trust-origin",
                &key6,
            ];
            Daemon::start_on(store, &ports[i], &args)
        })
        .collect();
    append_to(&files[0], &event_lines(0..100));
    append_to(&files[6], &event_lines(0..200));
    for store in &stores {
        wait_for("every daemon to hold all three chunks", || {
            chunks(store) == 3
        });
    }
    for d in daemons {
        assert!(d.interrupt().success());
    }
}

#[test]
fn run_refuses_bad_arguments_with_one_line() {
    let store = temp_dir("run-bad");
    let out = run(
        &[
            "run",
            "--store",
            store.to_str().unwrap(),
            "--peer",
            "no such host:nowhere",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--peer no such host:nowhere"), "{stderr}");
    assert!(!store.join("chunks.redb").exists(), "nothing created");
    let out = run(&["run", "--store", store.to_str().unwrap()], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --listen, --peer or both"));
}

#[test]
fn append_goes_through_the_node_holding_the_store_and_keeps_its_open_chunk() {
    let store = temp_dir("run-append");
    let daemon = Daemon::start(&store, &["--no-input", "--seal-delay", "1h"]);
    let dir = store.to_str().unwrap();
    // Two appends of 3 and 2 events: one open chunk across both (the delay is an hour),
    // sealed into one chunk when the node stops.
    let out = ok(&["append", "--store", dir], Some(&event_lines(0..3)));
    assert!(out.contains("appended 3 of 3 events"), "{out}");
    ok(&["append", "--store", dir], Some(&event_lines(3..5)));
    assert_eq!(chunks(&store), 0, "still open");
    // Bad input takes nothing; `--strict` needs the store itself.
    let bad = run(&["append", "--store", dir], Some("not json\n"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nothing appended"));
    let strict = run(
        &["append", "--store", dir, "--strict"],
        Some(&event_lines(5..6)),
    );
    assert!(!strict.status.success());
    assert!(daemon.interrupt().success());
    let ls = ok(&["ls", "--store", dir], None);
    assert_eq!(ls.lines().count(), 1, "{ls}");
    assert!(ls.contains("0..5"), "{ls}");
}

/// A daemon whose store is full keeps the events it read: it appends the same batch
/// again after growing waits instead of dropping it, and once restarted without the
/// limit it stores every event of its file.
#[test]
fn a_full_store_pauses_the_daemon_s_input_and_loses_no_event() {
    let store = temp_dir("run-full");
    let events = store.with_extension("jsonl");
    append_to(&events, &event_lines(0..50));
    let file = events.to_str().unwrap();
    let daemon = Daemon::start(&store, &["--follow", file, "--max-store-bytes", "100"]);
    // The open chunk is sealed after its delay and refused; the next batch waits for it.
    std::thread::sleep(Duration::from_millis(500));
    append_to(&events, &event_lines(50..60));
    wait_for("two attempts", || daemon.log().contains("retry_in=200ms"));
    let log = daemon.log();
    assert!(log.contains("event=append_failed"), "{log}");
    assert!(log.contains("the store is full"), "{log}");
    assert_eq!(chunks(&store), 0);
    // Stopping cannot store the open chunk either: the daemon says so.
    assert!(!daemon.interrupt().success());
    let daemon = Daemon::start(&store, &["--follow", file]);
    wait_for("every event stored", || {
        let out = ok(&["stat", "--store", store.to_str().unwrap()], None);
        out.contains("sequence numbers up to 60")
    });
    assert!(daemon.interrupt().success());
}
