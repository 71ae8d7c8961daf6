//! Writes deterministic events as JSON lines, for `chunk-sync append` and the rsync
//! comparison (`scripts/bench-rsync.sh`).
//!
//! ```text
//! gen-events FIRST_SEQ COUNT PAYLOAD_BYTES [random|telemetry|log] > events.jsonl
//! ```
//!
//! Payloads are random hex digits by default, or JSON telemetry records or log lines
//! (for benches of compression).

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use chunk_sync_benches::Payload;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<u64> = args.iter().take(3).filter_map(|a| a.parse().ok()).collect();
    let style = args
        .get(3)
        .map_or(Some(Payload::RandomHex), |s| Payload::named(s));
    let ([first, count, payload], Some(style)) = (numbers[..].try_into().unwrap_or([0; 3]), style)
    else {
        eprintln!("usage: gen-events FIRST_SEQ COUNT PAYLOAD_BYTES [random|telemetry|log]");
        return ExitCode::FAILURE;
    };
    if numbers.len() != 3 {
        eprintln!("usage: gen-events FIRST_SEQ COUNT PAYLOAD_BYTES [random|telemetry|log]");
        return ExitCode::FAILURE;
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for seq in first..first + count {
        let privacy = if seq % 50 == 49 { "private" } else { "public" };
        let text = style.text(seq, payload as usize);
        let text = serde_json::to_string(&text).expect("a string");
        let line = format!(
            "{{\"seq\":{seq},\"timestamp\":{},\"kind\":\"telemetry\",\"privacy\":\"{privacy}\",\"payload\":{text}}}",
            1_700_000_000_000 + seq,
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
