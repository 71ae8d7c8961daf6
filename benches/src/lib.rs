//! Deterministic inputs for the criterion benches of chunk-sync.
//!
//! Every generator is seeded, so two runs measure the same bytes.

use chunk_sync_core::chunk::{Chunker, Push};
use chunk_sync_core::{ChunkHash, Event, EventBuf, NodeId, Privacy};

/// A small, fast, seeded pseudo-random generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with this seed.
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    /// A random hash.
    pub fn hash(&mut self) -> ChunkHash {
        let mut b = [0u8; 32];
        self.fill(&mut b);
        ChunkHash::from_bytes(b)
    }
}

/// What an event's payload looks like, for benches of compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Random bytes written as hex digits (compresses about as well as hex can).
    RandomHex,
    /// JSON telemetry records of a fleet of sensors, one after another.
    Telemetry,
    /// Service log lines.
    Log,
}

impl Payload {
    /// The style named `name` (`random`, `telemetry`, `log`).
    #[must_use]
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "random" => Some(Self::RandomHex),
            "telemetry" => Some(Self::Telemetry),
            "log" => Some(Self::Log),
            _ => None,
        }
    }

    /// The payload of event `seq`, `len` bytes of text.
    #[must_use]
    pub fn text(self, seq: u64, len: usize) -> String {
        let mut rng = Rng::new(seq);
        let mut out = String::with_capacity(len + 160);
        while out.len() < len {
            let r = rng.next_u64();
            match self {
                Self::RandomHex => out.push_str(&format!("{r:016x}")),
                Self::Telemetry => out.push_str(&format!(
                    "{{\"device\":\"sensor-{:04}\",\"seq\":{seq},\"temp_c\":{}.{:02},\"humidity\":{}.{},\"battery_v\":3.{:03},\"rssi\":-{},\"status\":\"{}\"}}",
                    r % 500,
                    15 + (r >> 9) % 15,
                    (r >> 13) % 100,
                    30 + (r >> 20) % 40,
                    (r >> 27) % 10,
                    600 + (r >> 31) % 400,
                    40 + (r >> 41) % 50,
                    if (r >> 50).is_multiple_of(20) { "degraded" } else { "ok" },
                )),
                Self::Log => out.push_str(&format!(
                    "2026-12-04T{:02}:{:02}:{:02}.{:03}Z {} chunk_sync_tokio::node: session with node-{:016x} ended: {} chunks, {} bytes in 0.{:03} s\n",
                    (seq / 3_600_000) % 24,
                    (seq / 60_000) % 60,
                    (seq / 1_000) % 60,
                    seq % 1_000,
                    ["INFO ", "INFO ", "INFO ", "DEBUG", "WARN "][(r % 5) as usize],
                    r >> 8 & 0xffff_ffff_ffff,
                    (r >> 16) % 40,
                    (r >> 24) % 100_000,
                    (r >> 40) % 1_000,
                )),
            }
        }
        out.truncate(len);
        out
    }
}

/// `count` public events of origin 1 with `payload` random bytes each.
#[must_use]
pub fn events(count: u64, payload: usize) -> Vec<EventBuf> {
    let mut rng = Rng::new(payload as u64);
    (0..count)
        .map(|seq| {
            let mut body = vec![0u8; payload];
            rng.fill(&mut body);
            EventBuf {
                origin: NodeId(1),
                seq,
                timestamp: 1_700_000_000_000_000 + seq * 1_000,
                kind: "sensor.reading".into(),
                privacy: Privacy::Public,
                payload: body,
            }
        })
        .collect()
}

/// Seals all `events` (one origin, sequence numbers from 0) into a single chunk and returns
/// its hash and bytes.
///
/// # Panics
/// If the events do not fit one chunk of 4 MiB.
#[must_use]
pub fn seal_one(events: &[Event<'_>]) -> (ChunkHash, Vec<u8>) {
    seal_one_by(events, None)
}

/// [`seal_one`], the chunk signed by `keys` if given (the events' origin must then be
/// its node id).
///
/// # Panics
/// As [`seal_one`], or if the events are not of `keys`'s origin.
#[must_use]
pub fn seal_one_by(
    events: &[Event<'_>],
    keys: Option<&chunk_sync_core::secure::Keypair>,
) -> (ChunkHash, Vec<u8>) {
    let mut buf = vec![0u8; 4 << 20];
    let per_chunk = u32::try_from(events.len()).expect("event count fits u32");
    let (origin, start) = events.first().map_or((NodeId(1), 0), |e| (e.origin, e.seq));
    let mut chunker = Chunker::new(origin, per_chunk, start, &mut buf).expect("valid chunker");
    if let Some(keys) = keys {
        chunker.sign_with(keys).expect("the events' origin's key");
    }
    for e in events {
        assert_eq!(chunker.push(e), Ok(Push::Added), "events fit one chunk");
    }
    let sealed = chunker.seal().expect("a chunk");
    (sealed.id, sealed.bytes.to_vec())
}

/// Two sorted, unique hash sets of `n` hashes each that differ in `n / 100` hashes each
/// way (1% difference).
#[must_use]
pub fn sets_with_one_percent_difference(n: usize) -> (Vec<ChunkHash>, Vec<ChunkHash>) {
    let mut rng = Rng::new(n as u64);
    let diff = (n / 100).max(1);
    let mut all: Vec<ChunkHash> = (0..n + diff).map(|_| rng.hash()).collect();
    all.sort_unstable();
    all.dedup();
    // Every 101st hash is local-only or remote-only, alternately.
    let (mut local, mut remote) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, id) in all.iter().enumerate() {
        match (i % 101 == 50, (i / 101) % 2 == 0) {
            (true, true) => local.push(*id),
            (true, false) => remote.push(*id),
            (false, _) => {
                local.push(*id);
                remote.push(*id);
            }
        }
    }
    (local, remote)
}

/// A borrowed view of an [`EventBuf`], for code that takes [`Event`].
#[must_use]
pub fn as_events(events: &[EventBuf]) -> Vec<Event<'_>> {
    events.iter().map(EventBuf::as_event).collect()
}

/// `count` chunks of `origin`, one event each of `payload` random bytes (seeded by the
/// origin), at sequence numbers `0..count`, ready for a store.
///
/// # Panics
/// If `payload` is too large for a chunk (16 MiB).
#[must_use]
pub fn single_event_chunks(
    origin: NodeId,
    count: u64,
    payload: usize,
) -> Vec<chunk_sync_tokio::VerifiedChunk> {
    let mut buf = vec![0u8; payload + 256];
    let mut body = vec![0u8; payload];
    let mut rng = Rng::new(origin.0);
    (0..count)
        .map(|seq| {
            rng.fill(&mut body);
            let mut chunker = Chunker::new(origin, 1, seq, &mut buf[..]).expect("a buffer");
            let event = Event {
                origin,
                seq,
                timestamp: seq,
                kind: "r",
                privacy: Privacy::Public,
                payload: &body,
            };
            let _ = chunker.push(&event).expect("one event fits");
            let sealed = chunker.seal().expect("one event");
            chunk_sync_tokio::VerifiedChunk::from(sealed.verified())
        })
        .collect()
}
