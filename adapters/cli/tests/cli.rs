//! The `chunk-sync` binary as a user runs it: real processes, real TCP, stores on disk.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::{BIN, ok, run, temp_dir};

/// Runs and expects failure with one clear line on stderr and no panic.
fn fails(args: &[&str], expect: &str) {
    let out = run(args, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "chunk-sync {args:?} should fail");
    assert!(
        stderr.contains(expect),
        "chunk-sync {args:?}: expected `{expect}` in: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// A `serve` process and the address it listens on.
struct Server(Child, String);

impl Server {
    fn start(store: &Path, extra: &[&str]) -> Self {
        Self::spawn(store, extra, Stdio::null())
    }

    /// As [`start`](Self::start), with the process's standard error going to `stderr`.
    fn spawn(store: &Path, extra: &[&str], stderr: Stdio) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--store",
                store.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(
                if extra
                    .iter()
                    .any(|a| a.starts_with("--allow") || *a == "--insecure-plaintext")
                {
                    &[][..]
                } else {
                    &["--open"][..]
                },
            )
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("serve prints its address");
        let addr = line.trim().rsplit(' ').next().expect("address").to_owned();
        Self(child, addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn events(n: u64, payload: usize) -> String {
    (0..n)
        .map(|seq| {
            let privacy = ["public", "shareable", "private"][(seq % 3) as usize];
            let body = "x".repeat(payload);
            format!("{{\"seq\":{seq},\"timestamp\":{},\"kind\":\"k{}\",\"privacy\":\"{privacy}\",\"payload\":\"{seq}{body}\"}}\n", 1000 + seq, seq % 4)
        })
        .collect()
}

#[test]
fn append_serve_pull_verify_export_round_trip() {
    let (a, b) = (temp_dir("a"), temp_dir("b"));
    let input = events(100, 20);
    let out = ok(
        &[
            "append",
            "--store",
            a.to_str().unwrap(),
            "--events-per-chunk",
            "10",
        ],
        Some(&input),
    );
    assert!(
        out.contains("appended 100 of 100 events (33 private left out)"),
        "{out}"
    );
    assert!(ok(&["stat", "--store", a.to_str().unwrap()], None).contains("chunks:  10"));

    let server = Server::start(&a, &[]);
    let out = ok(
        &["pull", "--from", &server.1, "--store", b.to_str().unwrap()],
        None,
    );
    assert!(out.starts_with("pulled 10 chunks"), "{out}");
    drop(server);

    assert!(ok(&["verify", "--store", b.to_str().unwrap()], None).contains("verified 10 chunks"));
    assert_eq!(
        ok(&["ls", "--store", b.to_str().unwrap()], None)
            .lines()
            .count(),
        10
    );
    let exported = ok(&["export", "--store", b.to_str().unwrap()], None);
    // The events are the store's own: of the node id its key gives.
    let origin = exported
        .split(',')
        .next()
        .and_then(|f| f.strip_prefix("{\"origin\":"))
        .unwrap();
    let expected: Vec<String> = input
        .lines()
        .filter(|l| !l.contains("\"private\""))
        .map(|l| l.replacen('{', &format!("{{\"origin\":{origin},"), 1))
        .collect();
    assert_eq!(exported.lines().collect::<Vec<_>>(), expected);

    // Appending more seals only the new events; the old chunks do not change.
    let before = ok(&["ls", "--store", a.to_str().unwrap()], None);
    let more: String = events(105, 20)
        .lines()
        .skip(100)
        .map(|l| format!("{l}\n"))
        .collect();
    ok(
        &[
            "append",
            "--store",
            a.to_str().unwrap(),
            "--events-per-chunk",
            "10",
        ],
        Some(&more),
    );
    let after = ok(&["ls", "--store", a.to_str().unwrap()], None);
    assert!(before.lines().all(|l| after.contains(l)));
    assert_eq!(after.lines().count(), 11);
}

#[test]
fn sync_goes_both_ways_and_gc_keeps_pins() {
    let (a, b) = (temp_dir("sa"), temp_dir("sb"));
    ok(
        &[
            "append",
            "--store",
            a.to_str().unwrap(),
            "--events-per-chunk",
            "5",
        ],
        Some(&events(20, 10)),
    );
    ok(
        &[
            "append",
            "--store",
            b.to_str().unwrap(),
            "--events-per-chunk",
            "5",
        ],
        Some(&events(10, 10)),
    );
    let server = Server::start(&a, &["--accept-pushes"]);
    let out = ok(
        &["sync", "--with", &server.1, "--store", b.to_str().unwrap()],
        None,
    );
    assert!(out.starts_with("synced: fetched 4 chunks"), "{out}");
    drop(server);
    let a_ls = ok(&["ls", "--store", a.to_str().unwrap()], None);
    let b_ls = ok(&["ls", "--store", b.to_str().unwrap()], None);
    assert_eq!(a_ls, b_ls, "both stores hold the union");
    assert_eq!(a_ls.lines().count(), 6);

    let pinned = a_ls
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let out = ok(
        &[
            "gc",
            "--store",
            a.to_str().unwrap(),
            "--max-bytes",
            "0",
            "--pin",
            &pinned,
        ],
        None,
    );
    assert!(
        out.contains("removed 5 chunks") && out.contains("kept 1 pinned"),
        "{out}"
    );
    assert!(ok(&["ls", "--store", a.to_str().unwrap()], None).starts_with(&pinned));
}

#[test]
fn mistakes_get_one_clear_line() {
    let dir = temp_dir("errors");
    fails(
        &[
            "pull",
            "--from",
            "127.0.0.1:1",
            "--store",
            dir.to_str().unwrap(),
            "--rate",
            "fast",
        ],
        "invalid rate `fast`",
    );
    fails(&["ls", "--store", dir.to_str().unwrap()], "no store at");
    let out = run(
        &["append", "--store", dir.to_str().unwrap()],
        Some("{\"seq\": \"one\"}\n"),
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("line 1:"));

    // A closed port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    fails(
        &[
            "pull",
            "--from",
            &port.to_string(),
            "--store",
            dir.to_str().unwrap(),
        ],
        "cannot sync with",
    );

    // An address in use.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fails(
        &["serve", "--store", dir.to_str().unwrap(), "--listen", &addr],
        "cannot listen on",
    );

    // A corrupt store file.
    let bad = temp_dir("corrupt");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("chunks.redb"), b"this is not a database").unwrap();
    fails(
        &["stat", "--store", bad.to_str().unwrap()],
        "chunks.redb is not a chunk store",
    );
}

#[test]
fn a_peer_with_another_protocol_version_is_refused() {
    use chunk_sync_core::wire::{self, Capabilities, Hello, Message};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let hello = Message::Hello(Hello {
            protocol: 1,
            node_id: chunk_sync_core::NodeId(5),
            max_frame: 4096,
            max_requests: 4,
            max_ranges: 16,
            capabilities: Capabilities::ALL,
            max_receive_rate: 0,
        });
        let mut buf = [0u8; 64];
        stream
            .write_all(wire::encode(&hello, &mut buf).unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let dir = temp_dir("version");
    fails(
        &[
            "pull",
            "--from",
            &addr,
            "--store",
            dir.to_str().unwrap(),
            "--insecure-plaintext",
        ],
        "protocol version 1, this node speaks 2",
    );
    fake.join().unwrap();
}

/// Starts a pull and kills it (SIGKILL) after `after`.
fn killed_pull(from: &str, store: &Path, after: Duration) {
    let mut pull = Command::new(BIN)
        .args(["pull", "--from", from, "--store", store.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    pull.kill().unwrap();
    pull.wait().unwrap();
}

fn chunk_count(store: &Path) -> usize {
    ok(&["ls", "--store", store.to_str().unwrap()], None)
        .lines()
        .count()
}

#[test]
fn a_killed_pull_resumes_without_refetching() {
    let (a, b) = (temp_dir("ka"), temp_dir("kb"));
    // 40 chunks of about 25 KB; at 200 KB/s a whole pull takes about 5 s.
    ok(
        &[
            "append",
            "--store",
            a.to_str().unwrap(),
            "--events-per-chunk",
            "10",
        ],
        Some(&events(400, 2500)),
    );
    // Raw: compressed, the pull would be over before the first kill.
    let server = Server::start(&a, &["--rate", "200KB/s", "--compress", "never"]);
    let mut stored = 0;
    // Kill the pull at several points; each time the store is intact and only grows. A pull
    // killed while it created the store leaves none, which is an empty store; on a slow
    // machine the later kill points make sure that some chunks were stored.
    for (kills, after) in [300, 700, 1100, 1600, 2200].into_iter().enumerate() {
        if kills >= 3 && stored > 0 {
            break;
        }
        killed_pull(&server.1, &b, Duration::from_millis(after));
        if !b.join("chunks.redb").exists() {
            assert_eq!(
                stored, 0,
                "a store that was there is gone after a kill at {after} ms"
            );
            continue;
        }
        let now = chunk_count(&b);
        assert!(
            now >= stored && now < 40,
            "{now} chunks stored after a kill at {after} ms"
        );
        assert!(
            ok(&["verify", "--store", b.to_str().unwrap()], None)
                .contains(&format!("verified {now} chunks"))
        );
        stored = now;
    }
    assert!(stored > 0, "some chunks were stored before the kills");

    let out = ok(
        &["pull", "--from", &server.1, "--store", b.to_str().unwrap()],
        None,
    );
    assert!(
        out.starts_with(&format!("pulled {} chunks", 40 - stored)),
        "no chunk travels twice: {out}"
    );
    drop(server);
    assert_eq!(
        ok(&["ls", "--store", b.to_str().unwrap()], None),
        ok(&["ls", "--store", a.to_str().unwrap()], None)
    );
}

#[test]
fn pull_falls_back_to_the_next_peer() {
    let (a, c) = (temp_dir("fa"), temp_dir("fc"));
    let a_str = a.to_str().unwrap();
    ok(
        &["append", "--store", a_str, "--events-per-chunk", "10"],
        Some(&events(50, 20)),
    );
    let server = Server::start(&a, &[]);
    // An address nobody listens on.
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = run(
        &[
            "pull",
            "--from",
            &gone,
            "--from",
            &server.1,
            "--store",
            c.to_str().unwrap(),
        ],
        None,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("pulled 5 chunks"), "{stdout}");
    assert!(
        stderr.contains(&gone),
        "the skipped peer is named: {stderr}"
    );
    assert!(ok(&["verify", "--store", c.to_str().unwrap()], None).contains("verified 5 chunks"));

    fails(
        &[
            "pull",
            "--from",
            &gone,
            "--from",
            &gone,
            "--store",
            c.to_str().unwrap(),
        ],
        "no peer could be synced with",
    );
}

/// A store of `n` events, 10 per chunk, each payload marked so it can be found in the file.
fn store_with(name: &str, n: u64) -> PathBuf {
    let dir = temp_dir(name);
    let input: String = (0..n)
        .map(|seq| {
            format!(
                "{{\"seq\":{seq},\"kind\":\"k\",\"privacy\":\"public\",\"payload\":\"MARK{seq:05}\"}}\n"
            )
        })
        .collect();
    let store = dir.to_str().unwrap();
    ok(
        &["append", "--store", store, "--events-per-chunk", "10"],
        Some(&input),
    );
    dir
}

#[test]
fn a_damaged_store_file_gets_one_line_and_an_error_never_a_panic() {
    let dir = store_with("damaged", 2_000);
    let file = dir.join("chunks.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let store = dir.to_str().unwrap();
    for command in ["verify", "export", "ls", "stat"] {
        fails(&[command, "--store", store], "is damaged");
    }
    fails(
        &["pull", "--from", "127.0.0.1:1", "--store", store],
        "is damaged",
    );
}

#[test]
fn export_checks_every_chunk_and_never_prints_a_damaged_event() {
    let dir = store_with("flipped", 100);
    let file = dir.join("chunks.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(9)
        .position(|w| w == b"MARK00042")
        .expect("the payload is in the file");
    bytes[at + 8] = b'9';
    std::fs::write(&file, &bytes).unwrap();
    let store = dir.to_str().unwrap();

    let out = run(&["export", "--store", store], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("damaged chunk"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "stop is the default: nothing exported"
    );

    let out = run(&["export", "--store", store, "--on-damaged", "skip"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "damage is an error even when skipped"
    );
    assert_eq!(stdout.lines().count(), 90, "the other nine chunks");
    assert!(!stdout.contains("MARK00049") && !stdout.contains("MARK00042"));
    fails(&["verify", "--store", store], "1 of 10 chunks are corrupt");
    // Taken out, the damaged chunk is missing, for the next sync to fetch again.
    let out = run(&["gc", "--store", store, "--damaged"], None);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("removed 1 damaged chunks"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed damaged chunk"));
    let out = run(&["verify", "--store", store], None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified 9 chunks"));
}

#[test]
fn read_only_commands_create_and_change_nothing() {
    let dir = temp_dir("read-only");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("chunks.redb");
    std::fs::write(&file, b"").unwrap();
    let store = dir.to_str().unwrap();
    fails(
        &["verify", "--store", store],
        "is damaged (the file is empty)",
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "still empty");

    let dir = store_with("untouched", 30);
    let file = dir.join("chunks.redb");
    let before = std::fs::read(&file).unwrap();
    let store = dir.to_str().unwrap();
    for command in ["verify", "export", "ls", "stat"] {
        ok(&[command, "--store", store], None);
    }
    assert!(
        std::fs::read(&file).unwrap() == before,
        "not one byte written"
    );
}

#[test]
fn events_at_or_below_the_sealed_point_are_reported_and_refused_with_strict() {
    let dir = store_with("late", 20);
    let store = dir.to_str().unwrap();
    // A changed payload at 3, a late 15, and a new 25.
    let input = "{\"seq\":3,\"kind\":\"k\",\"privacy\":\"public\",\"payload\":\"changed\"}\n\
                 {\"seq\":15,\"kind\":\"k\",\"privacy\":\"private\",\"payload\":\"late\"}\n\
                 {\"seq\":25,\"kind\":\"k\",\"privacy\":\"public\",\"payload\":\"new\"}\n";
    let append = ["append", "--store", store];
    let strict: Vec<&str> = append.iter().copied().chain(["--strict"]).collect();
    let out = run(&strict, Some(input));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("2 events not taken") && stderr.contains(": 3, 15"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing appended"), "{stderr}");
    assert_eq!(chunk_count(&dir), 2);

    let out = run(&append, Some(input));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 events not taken"), "{stderr}");
    assert!(stdout.contains("appended 1 of 3 events"), "{stdout}");
    assert_eq!(chunk_count(&dir), 3);
}

#[test]
fn a_rate_too_slow_for_any_peer_is_refused_with_the_lowest_that_works() {
    let dir = store_with("slow", 10);
    fails(
        &[
            "serve",
            "--store",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "1",
        ],
        "at least 35 B/s",
    );
}

#[test]
fn export_into_a_closed_pipe_is_not_an_error() {
    let dir = store_with("pipe", 5_000);
    let mut child = Command::new(BIN)
        .args(["export", "--store", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone (as with `| head -1`).
    let out = child.wait_with_output().unwrap();
    assert!(first.contains("MARK00000"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn commands_that_fail_before_storing_leave_no_store_behind() {
    let dir = temp_dir("nothing-left");
    let store = dir.join("store");
    let s = store.to_str().unwrap();
    // Nobody listens on this port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for args in [
        vec!["pull", "--store", s, "--from", &port.to_string()],
        vec!["sync", "--store", s, "--with", &port.to_string()],
    ] {
        let out = run(&args, None);
        assert!(!out.status.success());
        assert!(!store.exists(), "{args:?} left {}", store.display());
    }
    // A bad line, the third: nothing is stored, no store is made.
    let out = run(
        &["append", "--store", s],
        Some("{\"seq\":0,\"kind\":\"a\",\"privacy\":\"public\"}\n\n{\"seq\":1}\n"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
    assert!(!store.exists());
    // A store that existed stays, with what it held.
    ok(
        &["append", "--store", s],
        Some("{\"seq\":0,\"kind\":\"a\",\"privacy\":\"public\"}\n"),
    );
    assert!(
        !run(&["pull", "--store", s, "--from", &port.to_string()], None)
            .status
            .success()
    );
    assert!(ok(&["stat", "--store", s], None).contains("chunks:  1"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn events_may_carry_fields_the_format_does_not_name_and_the_store_may_come_from_the_environment() {
    let dir = temp_dir("extra-fields");
    let store = dir.join("store");
    let line = "{\"seq\":0,\"kind\":\"a\",\"privacy\":\"public\",\"host\":\"web-1\",\"level\":3}\n";
    let out = Command::new(BIN)
        .args(["append"])
        .env("CHUNK_SYNC_STORE", &store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(line.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("appended 1 of 1 events"));
    let listed = ok(&["ls", "--store", store.to_str().unwrap()], None);
    assert!(listed.contains("node-"), "{listed}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_and_the_manual_page_come_from_the_same_definition_as_the_help() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = ok(&["completions", shell], None);
        for command in ["append", "serve", "pull", "sync", "run", "verify"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let page = ok(&["man"], None);
    assert!(page.contains(".TH chunk-sync 1"), "{page}");
    assert!(
        page.contains("CHUNK_SYNC_STORE"),
        "the exit status and environment are in it"
    );
    assert!(!run(&["completions", "tcsh"], None).status.success());
}

#[test]
fn serve_with_v_says_who_it_served_and_how_much() {
    let dir = temp_dir("serve-v");
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(
        &["append", "--store", a.to_str().unwrap()],
        Some(&events(20, 5)),
    );
    let mut server = Server::spawn(&a, &["-v"], Stdio::piped());
    let addr = server.1.clone();
    ok(
        &["pull", "--store", b.to_str().unwrap(), "--from", &addr],
        None,
    );
    let mut stderr = BufReader::new(server.0.stderr.take().unwrap());
    let mut logged = String::new();
    stderr.read_line(&mut logged).unwrap();
    drop(server);
    assert!(logged.contains("session with client complete"), "{logged}");
    assert!(
        logged.contains("fetched=0") && logged.contains("node=node-"),
        "{logged}"
    );
    let held = format!("held={}", chunk_count(&a));
    assert!(logged.contains(&held), "what the store holds now: {logged}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_output_parses_and_quiet_prints_nothing() {
    use serde_json::Value;
    let dir = temp_dir("json");
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    ok(
        &[
            "append",
            "--store",
            a.to_str().unwrap(),
            "--events-per-chunk",
            "10",
        ],
        Some(&events(30, 5)),
    );
    let server = Server::start(&a, &[]);
    let out = ok(
        &[
            "pull",
            "--json",
            "--store",
            b.to_str().unwrap(),
            "--from",
            &server.1,
        ],
        None,
    );
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["fetched_chunks"], 3, "{summary}");
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["peer"], server.1.as_str());
    assert!(summary["chunk_bytes"].as_u64().unwrap() > 0);
    assert!(summary["node_id"].is_u64());
    let quiet = ok(
        &[
            "pull",
            "-q",
            "--store",
            c.to_str().unwrap(),
            "--from",
            &server.1,
        ],
        None,
    );
    assert_eq!(quiet, "", "nothing on success");
    drop(server);

    let b = b.to_str().unwrap();
    let listed: Vec<Value> = ok(&["ls", "--json", "--store", b], None)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["first_seq"], 0);
    assert_eq!(listed[0]["end_seq"], 10);
    assert!(listed[0]["events"].as_u64().unwrap() <= 10);
    assert_eq!(listed[0]["id"].as_str().unwrap().len(), 64);
    let stat: Value =
        serde_json::from_str(ok(&["stat", "--json", "--store", b], None).trim()).unwrap();
    assert_eq!(stat["chunks"], 3);
    assert_eq!(stat["origins"][0]["end_seq"], 30);
    let verified: Value =
        serde_json::from_str(ok(&["verify", "--json", "--store", b], None).trim()).unwrap();
    assert_eq!(verified["verified"], 3);
    assert_eq!(verified["corrupt"].as_array().unwrap().len(), 0);
    // An unreachable peer: the error as JSON too, and a failing exit status.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let failed = run(
        &["pull", "--json", "--store", b, "--from", &port.to_string()],
        None,
    );
    assert!(!failed.status.success());
    let line: Value = serde_json::from_slice(failed.stdout.trim_ascii()).unwrap_or(Value::Null);
    assert!(line["error"].is_string(), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pull at a rate the puller sets receives chunks that compress compressed, and stores
/// every one of them whole; with `--compress never` on the server they come raw.
#[test]
fn a_rate_limited_pull_receives_compressible_chunks_compressed() {
    let (a, b, c) = (temp_dir("lz-a"), temp_dir("lz-b"), temp_dir("lz-c"));
    ok(
        &["append", "--store", a.to_str().unwrap()],
        Some(&events(600, 400)),
    );
    let pulled = |server: &Server, into: &Path| {
        let out = ok(
            &[
                "pull",
                "--json",
                "--rate",
                "4MB/s",
                "--from",
                &server.1,
                "--store",
                into.to_str().unwrap(),
            ],
            None,
        );
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let field = |name: &str| report[name].as_u64().unwrap();
        (field("bytes_received"), field("chunk_bytes"))
    };
    let (received, bytes) = pulled(&Server::start(&a, &[]), &b);
    assert!(
        received * 3 < bytes,
        "{received} bytes received for {bytes}"
    );
    let (raw, same) = pulled(&Server::start(&a, &["--compress", "never"]), &c);
    assert!(
        same == bytes && raw > bytes,
        "{raw} bytes received raw for {bytes}"
    );
    for store in [&b, &c] {
        assert!(
            ok(&["verify", "--store", store.to_str().unwrap()], None)
                .contains(&format!("verified {} chunks", chunk_count(&a)))
        );
    }
}

/// The key `chunk-sync key` prints for `store`.
fn key_of(store: &Path) -> String {
    let out = ok(&["key", "--store", store.to_str().unwrap()], None);
    let key = out.trim().to_owned();
    assert_eq!(key.len(), 64, "{key}");
    key
}

#[test]
fn a_key_is_made_on_first_use_private_to_its_owner_and_kept() {
    let dir = store_with("key-first-use", 5);
    let file = dir.join("node.key");
    let key = key_of(&dir);
    assert!(file.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(key_of(&dir), key, "the same key every time");
    // The store's node id is its key's: `ls --json` shows it.
    let fresh = temp_dir("key-fresh");
    let other = key_of(&fresh);
    assert_ne!(other, key);
}

#[test]
fn only_allowed_keys_may_sync_and_a_refused_peer_is_told_why() {
    let served = store_with("allow-served", 20);
    let (allowed, stranger) = (temp_dir("allow-allowed"), temp_dir("allow-stranger"));
    let allowed_key = key_of(&allowed);
    let _ = key_of(&stranger);
    let server = Server::start(&served, &["--allow", &allowed_key]);

    let out = run(
        &[
            "pull",
            "--store",
            stranger.to_str().unwrap(),
            "--from",
            &server.1,
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refused this node's key"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    ok(
        &[
            "pull",
            "--store",
            allowed.to_str().unwrap(),
            "--from",
            &server.1,
        ],
        None,
    );
    let listed = ok(&["ls", "--store", allowed.to_str().unwrap()], None);
    assert!(!listed.is_empty());

    // An allow file does the same.
    let list = served.with_extension("allowed");
    drop(server);
    std::fs::write(
        &list,
        format!("# the stranger, now allowed\n{}\n", key_of(&stranger)),
    )
    .unwrap();
    let server = Server::start(&served, &["--allow-file", list.to_str().unwrap()]);
    ok(
        &[
            "pull",
            "--store",
            stranger.to_str().unwrap(),
            "--from",
            &server.1,
        ],
        None,
    );
}

#[test]
fn a_plaintext_peer_and_a_secure_one_do_not_sync() {
    let served = store_with("plain-served", 5);
    let server = Server::start(&served, &["--insecure-plaintext"]);
    let client = temp_dir("plain-client");
    let out = run(
        &[
            "pull",
            "--store",
            client.to_str().unwrap(),
            "--from",
            &server.1,
        ],
        None,
    );
    assert!(!out.status.success());
    ok(
        &[
            "pull",
            "--store",
            client.to_str().unwrap(),
            "--from",
            &server.1,
            "--insecure-plaintext",
        ],
        None,
    );
}

#[test]
fn a_bad_key_file_or_key_is_one_clear_line() {
    let served = store_with("badkey", 3);
    let store = served.to_str().unwrap();
    let key = served.join("node.key");
    // A first serve keeps the store's node id, its key's.
    drop(Server::start(&served, &[]));
    let genuine = std::fs::read(&key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        fails(&["key", "--store", store], "chmod 600");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(&key, "not a key\n").unwrap();
    fails(&["key", "--store", store], "is not a chunk-sync key");
    std::fs::write(&key, &genuine).unwrap();
    fails(
        &[
            "serve",
            "--store",
            store,
            "--listen",
            "127.0.0.1:0",
            "--allow",
            "abc",
        ],
        "64 hex digits",
    );
    let other = temp_dir("badkey-other").join("node.key");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    let _ = key_of(other.parent().unwrap());
    std::fs::write(served.join("node.key"), std::fs::read(&other).unwrap()).unwrap();
    fails(
        &[
            "serve",
            "--store",
            store,
            "--listen",
            "127.0.0.1:0",
            "--open",
        ],
        "gives",
    );
}

#[test]
fn a_relay_passes_an_origins_chunks_only_to_nodes_that_trust_its_key() {
    // a's own log reaches c through b: c takes it only with a's key.
    let a = store_with("relay-origin", 20);
    let (b, c) = (temp_dir("relay-b"), temp_dir("relay-c"));
    let server = Server::start(&a, &[]);
    ok(
        &["pull", "--store", b.to_str().unwrap(), "--from", &server.1],
        None,
    );
    drop(server);
    let relay = Server::start(&b, &[]);
    let out = run(
        &["pull", "--store", c.to_str().unwrap(), "--from", &relay.1],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("pulled 0 chunks"),
        "c fetched chunks of an origin it does not trust"
    );
    assert!(
        stderr.contains("left out the log of node-")
            && stderr.contains("no key is trusted for that origin"),
        "{stderr}"
    );
    assert!(ok(&["ls", "--store", c.to_str().unwrap()], None).is_empty());
    let a_key = key_of(&a);
    let out = ok(
        &[
            "pull",
            "--store",
            c.to_str().unwrap(),
            "--from",
            &relay.1,
            "--trust-origin",
            &a_key,
        ],
        None,
    );
    assert!(out.starts_with("pulled 2 chunks"), "{out}");
    assert_eq!(
        ok(&["ls", "--store", c.to_str().unwrap()], None),
        ok(&["ls", "--store", a.to_str().unwrap()], None)
    );
}

#[test]
fn append_says_which_origins_it_cannot_sign() {
    let dir = temp_dir("unsigned-origin");
    let store = dir.to_str().unwrap();
    let input = "{\"seq\":0,\"kind\":\"k\",\"privacy\":\"public\",\"payload\":\"x\"}\n";
    let own = run(&["append", "--store", store], Some(input));
    assert!(own.status.success());
    assert!(own.stderr.is_empty(), "the store's own log is signed");
    let other = run(&["append", "--store", store, "--origin", "5"], Some(input));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(other.status.success());
    assert!(
        stderr.contains("node-5") && stderr.contains("secure peers refuse them"),
        "{stderr}"
    );
}

#[test]
fn a_grant_by_origin_lets_a_peer_pull_one_log_and_push_only_its_own() {
    // r holds the logs of a and d; c holds its own and e's. c may pull a's log from r and
    // push only its own.
    let [a, d, c, e] = [("a", 20), ("d", 30), ("c", 10), ("e", 20)]
        .map(|(name, n)| store_with(&format!("grant-{name}"), n));
    let r = temp_dir("grant-r");
    let pull = |into: &Path, from: &Path| {
        let server = Server::start(from, &[]);
        let key = key_of(from);
        ok(
            &[
                "pull",
                "--store",
                into.to_str().unwrap(),
                "--from",
                &server.1,
                "--trust-origin",
                &key,
            ],
            None,
        );
    };
    pull(&r, &a);
    pull(&r, &d);
    pull(&c, &e);
    let listed = |s: &Path| -> std::collections::BTreeSet<String> {
        let out = ok(&["ls", "--store", s.to_str().unwrap()], None);
        out.lines().map(str::to_owned).collect()
    };
    let (la, ld, le) = (listed(&a), listed(&d), listed(&e));
    let (r_before, c_before) = (listed(&r), listed(&c));
    let c_own: std::collections::BTreeSet<String> = c_before.difference(&le).cloned().collect();
    assert_eq!(c_own.len(), 1);

    let grant = format!("{}:pull={}:push=self", key_of(&c), key_of(&a));
    let relay = Server::start(&r, &["--allow", &grant, "--accept-pushes"]);
    ok(
        &[
            "sync",
            "--store",
            c.to_str().unwrap(),
            "--with",
            &relay.1,
            "--trust-origin",
            &key_of(&a),
        ],
        None,
    );
    let c_after = listed(&c);
    let c_wants: std::collections::BTreeSet<String> = c_before.union(&la).cloned().collect();
    assert_eq!(c_after, c_wants, "c got a's log, nothing of d's");
    assert!(c_after.is_disjoint(&ld));
    let r_after = listed(&r);
    let r_wants: std::collections::BTreeSet<String> = r_before.union(&c_own).cloned().collect();
    assert_eq!(r_after, r_wants, "r took c's own log, nothing of e's");

    // A grant that names no right correctly is refused with one line.
    let out = run(
        &[
            "serve",
            "--store",
            r.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--allow",
            &format!("{}:read=all", key_of(&c)),
        ],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the rights are pull and push"), "{stderr}");
}

#[test]
fn verify_checks_signatures_of_the_own_log_and_of_trusted_origins() {
    let a = store_with("sig-a", 100);
    let store = a.to_str().unwrap();
    let out = ok(&["verify", "--store", store, "--signatures"], None);
    assert!(out.contains("10 signatures hold"), "{out}");
    // A key file that cannot be used is said, not taken for a store without a key.
    let key = a.join("node.key");
    let mode = std::fs::metadata(&key).unwrap().permissions();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    fails(&["verify", "--store", store, "--signatures"], "key file");
    std::fs::set_permissions(&key, mode).unwrap();
    assert!(
        out.contains("0 chunks of origins without a key given"),
        "{out}"
    );
    // Chunks of another node's origin, which this store cannot sign: unsigned.
    let b = store_with("sig-b", 10);
    let stat = ok(&["stat", "--store", b.to_str().unwrap()], None);
    let origin = stat
        .split("origin node-")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .expect("stat names the origin");
    let input = "{\"seq\":0,\"kind\":\"k\",\"privacy\":\"public\",\"payload\":\"x\"}\n";
    ok(
        &["append", "--store", store, "--origin", origin],
        Some(input),
    );
    let out = ok(&["verify", "--store", store, "--signatures"], None);
    assert!(
        out.contains("1 chunks of origins without a key given not checked"),
        "{out}"
    );
    let key = key_of(&b);
    let trusting = [
        "verify",
        "--store",
        store,
        "--signatures",
        "--trust-origin",
        &key,
    ];
    fails(&trusting, "1 of 11 chunks are corrupt");
    let out = run(&trusting, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is not signed"));
    let json = run(
        &[
            "verify",
            "--store",
            store,
            "--json",
            "--signatures",
            "--trust-origin",
            &key,
        ],
        None,
    );
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["signatures"], 10);
    assert_eq!(report["corrupt"].as_array().unwrap().len(), 1);
    // A key to trust needs --signatures.
    fails(
        &["verify", "--store", store, "--trust-origin", &key],
        "--signatures",
    );
}

/// A store with a limit: a pull stops with one clear line before passing it, keeps what it
/// stored, and a later pull without the limit fetches only the rest; an append that would
/// pass it stores nothing.
#[test]
fn a_store_limit_stops_a_pull_and_an_append_with_one_line_and_loses_nothing() {
    let src = store_with("limit-src", 2_000);
    let dst = temp_dir("limit-dst");
    let d = dst.to_str().unwrap();
    let server = Server::start(&src, &[]);
    let limited = [
        "pull",
        "--from",
        &server.1,
        "--store",
        d,
        "--max-store-bytes",
        "20KB",
    ];
    let out = run(&limited, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the store is full"), "{stderr}");
    assert!(stderr.contains("its limit is 20000"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let kept = chunk_count(&dst);
    assert!(kept < 200, "{kept} chunks kept under a 20 KB limit");
    let out = ok(&["pull", "--from", &server.1, "--store", d], None);
    assert!(
        out.contains(&format!("pulled {} chunks", 200 - kept)),
        "{out}"
    );
    assert_eq!(chunk_count(&dst), 200);
    let out = run(
        &["append", "--store", d, "--max-store-bytes", "1KB"],
        Some(&events(50, 20)),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the store is full"), "{stderr}");
    assert_eq!(chunk_count(&dst), 200);
    fails(
        &[
            "pull",
            "--from",
            &server.1,
            "--store",
            d,
            "--max-store-bytes",
            "lots",
        ],
        "--max-store-bytes",
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&dst);
}
