//! `append` in bounded memory: events read line by line, sealed into chunks as they come
//! and written in batches, so that memory holds one open chunk per origin and one batch,
//! whatever the size of the input.
//!
//! The input is read twice: once to check every line and find what cannot be taken
//! (nothing is written, so bad input appends nothing and `--strict` can refuse before
//! anything is stored), then to write. Standard input is first copied to a temporary
//! file. Both passes need each origin's events in ascending sequence order, as a log is
//! written; an input in any other order is [`Stop::Unordered`], and the caller sorts it
//! in memory instead.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chunk_sync_core::chunk::{DEFAULT_MAX_CHUNK_BYTES, Push, Sealed};
use chunk_sync_core::secure::Keypair;
use chunk_sync_core::{ChunkError, ChunkEvent, Chunker, NodeId, Privacy};

use crate::events::parse_line;

/// Bytes of chunks written per transaction.
pub(crate) const BATCH_BYTES: usize = 4 << 20;

/// Why a pass stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A line is not an event.
    Line { line: usize, error: String },
    /// An origin's events are not in ascending sequence order (from this line on).
    Unordered,
    /// An event cannot be sealed (larger than a chunk, for example).
    Chunk { line: usize, error: ChunkError },
    /// The input could not be read, or the store failed.
    Io(String),
}

/// What a pass found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Events read.
    pub(crate) events: u64,
    /// Events whose sequence number is below where their origin's log was sealed.
    pub(crate) late: Vec<(NodeId, u64)>,
    /// Private events taken (their sequence numbers covered, their contents left out).
    pub(crate) private: u64,
    /// Chunks sealed, and the events in them.
    pub(crate) chunks: u64,
    pub(crate) sealed_events: u64,
    /// Per origin: where its sealed log ends now.
    pub(crate) sealed_through: BTreeMap<NodeId, u64>,
}

/// The input as a file: the one named, or standard input copied to a temporary file that
/// is removed when this is dropped.
#[derive(Debug)]
pub(crate) struct Input {
    path: PathBuf,
    temporary: bool,
}

impl Input {
    /// The file at `path`.
    pub(crate) fn file(path: PathBuf) -> Self {
        Self {
            path,
            temporary: false,
        }
    }

    /// Standard input, copied to a file in the temporary directory.
    pub(crate) fn stdin() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!(
            "chunk-sync-append-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let input = Self {
            path,
            temporary: true,
        };
        let mut file = File::create(&input.path)
            .map_err(|e| format!("cannot copy the events to {}: {e}", input.path.display()))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut file)
            .map_err(|e| format!("cannot read events: {e}"))?;
        Ok(input)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The whole input as text (for an input that must be sorted, or sent to a node).
    pub(crate) fn read_all(&self) -> Result<String, String> {
        std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One origin's log during a pass.
struct OriginLog {
    chunker: Chunker<Vec<u8>>,
    /// Where the log was sealed before this input: events below are late.
    start: u64,
    /// Where the last chunk sealed ends.
    sealed_end: u64,
    /// The last sequence number taken.
    last: Option<u64>,
}

/// Reads `input` line by line and seals its events: events without an origin are
/// `origin`'s, each origin's log continues at `resume(origin)`, and every chunk goes to
/// `sink`. The chunks of `signer`'s own origin are signed by it. The open tail of each origin is closed at the end.
pub(crate) fn pass(
    input: &Input,
    origin: NodeId,
    signer: Option<&Keypair>,
    events_per_chunk: u32,
    resume: &mut dyn FnMut(NodeId) -> Result<u64, String>,
    mut sink: Sink<'_>,
) -> Result<Outcome, Stop> {
    let file = File::open(input.path())
        .map_err(|e| Stop::Io(format!("cannot read {}: {e}", input.path().display())))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut logs: BTreeMap<NodeId, OriginLog> = BTreeMap::new();
    let mut out = Outcome::default();
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| Stop::Io(format!("cannot read events: {e}")))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let event =
            parse_line(line.trim_end(), origin).map_err(|error| Stop::Line { line: n, error })?;
        out.events += 1;
        let log = match logs.entry(event.origin) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let start = resume(event.origin).map_err(Stop::Io)?;
                let buf = vec![0u8; DEFAULT_MAX_CHUNK_BYTES];
                let mut chunker = Chunker::new(event.origin, events_per_chunk, start, buf)
                    .map_err(|error| Stop::Chunk { line: n, error })?;
                if let Some(keys) = signer.filter(|k| k.node_id() == event.origin) {
                    chunker = chunker
                        .signed_by(keys)
                        .map_err(|error| Stop::Chunk { line: n, error })?;
                }
                v.insert(OriginLog {
                    chunker,
                    start,
                    sealed_end: start,
                    last: None,
                })
            }
        };
        if event.seq < log.start {
            out.late.push((event.origin, event.seq));
            continue;
        }
        if log.last.is_some_and(|last| event.seq <= last) {
            return Err(Stop::Unordered);
        }
        log.last = Some(event.seq);
        if event.privacy() == Privacy::Private {
            out.private += 1;
        }
        let chunk_error = |error| Stop::Chunk { line: n, error };
        if log.chunker.push(&event).map_err(chunk_error)? == Push::SealFirst {
            seal(log, &mut out, &mut sink)?;
            // The chunk is empty now: the event is taken, or refused with an error.
            let _ = log.chunker.push(&event).map_err(chunk_error)?;
        }
    }
    for log in logs.values_mut() {
        seal(log, &mut out, &mut sink)?;
    }
    out.sealed_through = logs.iter().map(|(o, log)| (*o, log.sealed_end)).collect();
    out.late.sort_unstable();
    Ok(out)
}

/// Where a pass's chunks go: into a store, or nowhere (a pass that only checks the input
/// closes them where they would be sealed, without hashing them).
pub(crate) enum Sink<'a> {
    /// Only check: nothing is sealed.
    Check,
    /// Seal each chunk and give it to this.
    Seal(&'a mut dyn FnMut(&Sealed<'_>) -> Result<(), String>),
}

/// Closes `log`'s open chunk, if it holds an event, into `sink`.
fn seal(log: &mut OriginLog, out: &mut Outcome, sink: &mut Sink<'_>) -> Result<(), Stop> {
    let (end, events) = match sink {
        Sink::Check => match log.chunker.discard() {
            Some((_, end, events)) => (end, events),
            None => return Ok(()),
        },
        Sink::Seal(sink) => match log.chunker.seal() {
            Some(sealed) => {
                sink(&sealed).map_err(Stop::Io)?;
                (sealed.end_seq, sealed.events)
            }
            None => return Ok(()),
        },
    };
    log.sealed_end = end;
    out.chunks += 1;
    out.sealed_events += u64::from(events);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use chunk_sync_core::{ChunkHash, EventBuf, EventChunkStore};
    use chunk_sync_tokio::{Sealing, VerifiedChunk, sign_all};
    use proptest::prelude::*;

    use super::*;

    /// `events` as a JSON-lines file.
    fn file_of(events: &[EventBuf]) -> (tempfile_path::Guard, Input) {
        let guard = tempfile_path::Guard::new();
        let mut f = File::create(guard.path()).unwrap();
        for e in events {
            let event = chunk_sync_core::Event {
                origin: e.origin,
                seq: e.seq,
                timestamp: e.timestamp,
                kind: &e.kind,
                privacy: e.privacy,
                payload: &e.payload,
            };
            crate::events::write(&mut f, &event).unwrap();
        }
        f.flush().unwrap();
        let input = Input::file(guard.path().to_owned());
        (guard, input)
    }

    /// A path in the temporary directory, removed when dropped.
    mod tempfile_path {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU64, Ordering};

        static NEXT: AtomicU64 = AtomicU64::new(0);

        pub(super) struct Guard(PathBuf);

        impl Guard {
            pub(super) fn new() -> Self {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                Self(
                    std::env::temp_dir()
                        .join(format!("chunk-sync-ingest-test-{}-{n}", std::process::id())),
                )
            }
            pub(super) fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn event(origin: u64, seq: u64, private: bool, len: usize) -> EventBuf {
        EventBuf {
            origin: NodeId(origin),
            seq,
            timestamp: seq,
            kind: "k".into(),
            privacy: if private {
                Privacy::Private
            } else {
                Privacy::Public
            },
            payload: vec![b'a' + (seq % 26) as u8; len],
        }
    }

    /// The chunks a pass seals, by hash.
    fn sealed_by_pass(
        input: &Input,
        per_chunk: u32,
        resume: u64,
    ) -> Result<(Vec<ChunkHash>, Outcome), Stop> {
        let mut ids = Vec::new();
        let mut keep = |s: &Sealed<'_>| {
            ids.push(s.id);
            Ok(())
        };
        let outcome = pass(
            input,
            NodeId(0),
            None,
            per_chunk,
            &mut |_| Ok(resume),
            Sink::Seal(&mut keep),
        )?;
        // A pass that only checks finds the same.
        let checked = pass(
            input,
            NodeId(0),
            None,
            per_chunk,
            &mut |_| Ok(resume),
            Sink::Check,
        )?;
        assert_eq!(
            (
                checked.chunks,
                checked.sealed_events,
                &checked.sealed_through
            ),
            (
                outcome.chunks,
                outcome.sealed_events,
                &outcome.sealed_through
            )
        );
        ids.sort();
        Ok((ids, outcome))
    }

    proptest! {
        /// Events in order, from any number of origins, interleaved, with private ones and
        /// a log sealed up to some point already: the pass seals exactly the chunks the
        /// in-memory `EventChunkStore` seals, and counts the same late events.
        #[test]
        fn a_pass_seals_what_the_in_memory_chunker_seals(
            per_origin in prop::collection::vec(prop::collection::vec((1u64..4, any::<bool>(), 0usize..40), 0..40), 1..4),
            per_chunk in 1u32..12,
            resume in 0u64..20,
        ) {
            let mut events = Vec::new();
            for (o, steps) in per_origin.iter().enumerate() {
                let mut seq = 0;
                for &(gap, private, len) in steps {
                    seq += gap;
                    events.push(event(o as u64 + 1, seq, private, len));
                }
            }
            // Interleaved by sequence number: each origin's order is kept.
            events.sort_by_key(|e| (e.seq, e.origin));
            let (_guard, input) = file_of(&events);
            let (ids, outcome) = sealed_by_pass(&input, per_chunk, resume).unwrap();
            let store = EventChunkStore::new(per_chunk as usize);
            for o in 1..=per_origin.len() as u64 {
                store.resume(NodeId(o), resume);
            }
            let mut expected: Vec<ChunkHash> = store.create_chunks(&events).unwrap().iter().map(|c| c.id).collect();
            expected.sort();
            prop_assert_eq!(ids, expected);
            let late = events.iter().filter(|e| e.seq < resume).count();
            prop_assert_eq!(outcome.late.len(), late);
            prop_assert_eq!(outcome.events, events.len() as u64);
            for o in 1..=per_origin.len() as u64 {
                if let Some(end) = outcome.sealed_through.get(&NodeId(o)) {
                    prop_assert_eq!(*end, store.sealed_through(NodeId(o)));
                }
            }
        }
    }

    /// Sealed unsigned and signed by `sign_all` on several threads, a store's own chunks
    /// are those a pass that signs as it seals makes, in the same order; other origins'
    /// chunks pass through as they were.
    #[test]
    fn signing_a_batch_afterwards_gives_what_signing_as_sealed_gives() {
        let keys = Keypair::from_secret([3; 32]);
        let own = keys.node_id();
        let events: Vec<EventBuf> = (0..600)
            .flat_map(|seq| {
                let mut mine = event(0, seq, false, 20);
                mine.origin = own;
                [mine, event(5, seq, false, 10)]
            })
            .collect();
        let (_guard, input) = file_of(&events);
        let mut signed_as_sealed = Vec::new();
        pass(
            &input,
            own,
            Some(&keys),
            2,
            &mut |_| Ok(0),
            Sink::Seal(&mut |s: &Sealed<'_>| {
                signed_as_sealed.push(s.id);
                Ok(())
            }),
        )
        .unwrap();
        let mut batch = Vec::new();
        pass(
            &input,
            own,
            None,
            2,
            &mut |_| Ok(0),
            Sink::Seal(&mut |s: &Sealed<'_>| {
                batch.push(if s.origin == own {
                    Sealing::unsigned(s)
                } else {
                    Sealing::Done(VerifiedChunk::from(s.verified()))
                });
                Ok(())
            }),
        )
        .unwrap();
        assert_eq!(batch.len(), 600);
        let signed: Vec<ChunkHash> = sign_all(batch, Some(&keys))
            .unwrap()
            .iter()
            .map(VerifiedChunk::id)
            .collect();
        assert_eq!(signed, signed_as_sealed);
        let unsigned = vec![Sealing::Unsigned(vec![0; 10])];
        assert!(sign_all(unsigned, None).is_err(), "no key to sign with");
    }

    #[test]
    fn a_bad_line_names_its_number_and_an_unordered_input_is_said_to_be() {
        let guard = tempfile_path::Guard::new();
        std::fs::write(
            guard.path(),
            "{\"seq\":0,\"kind\":\"k\",\"privacy\":\"public\"}\n\n{\"seq\":1,\"kind\":\"k\"}\n",
        )
        .unwrap();
        let input = Input::file(guard.path().to_owned());
        match sealed_by_pass(&input, 10, 0) {
            Err(Stop::Line { line: 3, error }) => assert!(error.contains("privacy"), "{error}"),
            other => panic!("{other:?}"),
        }
        let events = [event(1, 5, false, 3), event(1, 2, false, 3)];
        let (_guard, input) = file_of(&events);
        assert!(matches!(
            sealed_by_pass(&input, 10, 0),
            Err(Stop::Unordered)
        ));
        // The same sequence number twice is not in ascending order either.
        let events = [event(1, 5, false, 3), event(1, 5, false, 3)];
        let (_guard, input) = file_of(&events);
        assert!(matches!(
            sealed_by_pass(&input, 10, 0),
            Err(Stop::Unordered)
        ));
    }

    #[test]
    fn an_event_larger_than_a_chunk_names_its_line() {
        let events = [
            event(1, 0, false, 3),
            event(1, 1, false, DEFAULT_MAX_CHUNK_BYTES),
        ];
        let (_guard, input) = file_of(&events);
        assert!(matches!(
            sealed_by_pass(&input, 10, 0),
            Err(Stop::Chunk {
                line: 2,
                error: ChunkError::EventTooLarge { .. }
            })
        ));
    }
}
