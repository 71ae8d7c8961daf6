//! Events as JSON lines, in and out.

use std::io::{BufRead, Write};

use chunk_sync_core::{EventBuf, NodeId, Privacy};
use serde::{Deserialize, Serialize};

/// One event as a JSON line. `payload` is text; `payload_hex` carries bytes that are not.
/// Fields it does not name are ignored, so that a log with more fields can be appended.
#[derive(Debug, Serialize, Deserialize)]
struct JsonEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<u64>,
    seq: u64,
    #[serde(default)]
    timestamp: u64,
    kind: String,
    privacy: Privacy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads every event; an error names the line. Events without an origin get `origin`.
pub(crate) fn read(input: impl BufRead, origin: NodeId) -> Result<Vec<EventBuf>, String> {
    let mut events = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read events: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(parse_line(&line, origin).map_err(|err| format!("line {}: {err}", n + 1))?);
    }
    Ok(events)
}

/// One event from one JSON line; an event without an origin gets `origin`.
pub(crate) fn parse_line(line: &str, origin: NodeId) -> Result<EventBuf, String> {
    let e: JsonEvent = serde_json::from_str(line).map_err(|err| err.to_string())?;
    let payload = match (e.payload, e.payload_hex) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(hex)) => from_hex(&hex).ok_or("payload_hex is not hex")?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => return Err("give payload or payload_hex, not both".into()),
    };
    Ok(EventBuf {
        origin: e.origin.map_or(origin, NodeId),
        seq: e.seq,
        timestamp: e.timestamp,
        kind: e.kind,
        privacy: e.privacy,
        payload,
    })
}

/// Writes one event as a JSON line.
pub(crate) fn write(out: &mut impl Write, e: &chunk_sync_core::Event<'_>) -> std::io::Result<()> {
    let (payload, payload_hex) = match std::str::from_utf8(e.payload) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(e.payload.iter().map(|b| format!("{b:02x}")).collect()),
        ),
    };
    let json = JsonEvent {
        origin: Some(e.origin.0),
        seq: e.seq,
        timestamp: e.timestamp,
        kind: e.kind.to_owned(),
        privacy: e.privacy,
        payload,
        payload_hex,
    };
    serde_json::to_writer(&mut *out, &json)?;
    writeln!(out)
}
