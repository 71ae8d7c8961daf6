//! Writes deterministic events as JSON lines, for `chunk-sync append` and the rsync
//! comparison (`scripts/bench-rsync.sh`).
//!
//! ```text
//! gen-events FIRST_SEQ COUNT PAYLOAD_BYTES > events.jsonl
//! ```

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use chunk_sync_benches::Rng;

fn main() -> ExitCode {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let [first, count, payload] = args[..] else {
        eprintln!("usage: gen-events FIRST_SEQ COUNT PAYLOAD_BYTES");
        return ExitCode::FAILURE;
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut raw = vec![0u8; (payload as usize).div_ceil(2)];
    for seq in first..first + count {
        let mut rng = Rng::new(seq);
        rng.fill(&mut raw);
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let privacy = if seq % 50 == 49 { "private" } else { "public" };
        let line = format!(
            "{{\"seq\":{seq},\"timestamp\":{},\"kind\":\"telemetry\",\"privacy\":\"{privacy}\",\"payload\":\"{}\"}}",
            1_700_000_000_000 + seq,
            &hex[..payload as usize]
        );
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
