//! Every shell block of the README runs as pasted, with `bash -e`, against the binary this
//! test built: `chunk-sync` is first on the `PATH` and `cargo` does nothing (the blocks
//! build the tool with it, and this test has). The blocks' paths under `/tmp/` and their
//! ports move into a fresh directory and free ports, so that runs in parallel do not meet.
//! A block whose every command is a development one (`cargo …`, `./scripts/…`: the tests,
//! benches and the firmware, which CI runs itself) is not run here.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, temp_dir};

/// The shell blocks of `readme`, in order.
fn shell_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence == "```sh" || fence == "```bash" => {
                current = Some(String::new())
            }
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Whether every command of `block` is one CI runs itself.
fn development_only(block: &str) -> bool {
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .all(|l| l.starts_with("cargo ") || l.starts_with("./scripts/"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `block` in `dir`; fails with its output unless it exits 0 within a minute.
fn run_block(block: &str, dir: &Path) {
    let mut script = block.replace("/tmp/", &format!("{}/", dir.display()));
    for port in ["7000", "7100", "7101"] {
        script = script.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let file = |p: &Path| std::fs::File::create(p).expect("an output file");
    // In a process group of its own, so that what the block leaves running (a `serve`
    // whose `kill` line it never reached) is stopped with it.
    let mut child = Command::new("bash")
        .args(["-e", "-c", &format!("cargo() {{ :; }}\n{script}")])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("CHUNK_SYNC_STORE")
        .stdout(file(&stdout))
        .stderr(file(&stderr))
        .process_group(0)
        .spawn()
        .expect("bash");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "this README block failed ({status:?}, None: still running after a minute):\n{script}\n--- stdout\n{}\n--- stderr\n{}",
        read(&stdout),
        read(&stderr)
    );
}

#[test]
fn every_shell_block_of_the_readme_runs_as_pasted() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("the README");
    let blocks = shell_blocks(&readme);
    let runnable: Vec<&String> = blocks.iter().filter(|b| !development_only(b)).collect();
    assert!(
        runnable.len() >= 2,
        "the README's command-line blocks were not found"
    );
    for (i, block) in runnable.into_iter().enumerate() {
        let dir = temp_dir(&format!("readme-{i}"));
        std::fs::create_dir_all(&dir).expect("a directory");
        run_block(block, &dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
