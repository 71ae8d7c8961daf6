use super::*;
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use std::string::{String, ToString};
use std::vec::Vec;

/// An owned event for tests (the crate's `EventBuf` needs `alloc`).
#[derive(Clone, Debug, PartialEq)]
struct Ev {
    seq: u64,
    timestamp: u64,
    kind: String,
    privacy: Privacy,
    payload: Vec<u8>,
}

impl ChunkEvent for Ev {
    fn origin(&self) -> NodeId {
        NodeId(7)
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn privacy(&self) -> Privacy {
        self.privacy
    }
    fn timestamp(&self) -> u64 {
        self.timestamp
    }
    fn kind(&self) -> &str {
        &self.kind
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

fn ev(seq: u64, privacy: Privacy) -> Ev {
    Ev {
        seq,
        timestamp: 1_700_000_000_000_000 + seq * 1_000,
        kind: "sensor.reading".to_string(),
        privacy,
        payload: (0..16)
            .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i))
            .collect(),
    }
}

/// The chunk header as the derived `Serialize` and `Deserialize` encode it: the reference
/// the hand-written codec is checked against.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct PostcardHeader {
    version: u8,
    seal: u8,
    origin: NodeId,
    first_seq: u64,
    end_seq: u64,
}

/// An event as the derived `Serialize` and `Deserialize` encode it (see `PostcardHeader`).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct PostcardEvent<'a> {
    seq: u64,
    timestamp: u64,
    kind: &'a str,
    privacy: Privacy,
    #[serde(with = "serde_bytes", borrow)]
    payload: &'a [u8],
}

/// The postcard encoding of a chunk of these events, built from the reference types.
fn postcard_chunk(first_seq: u64, end_seq: u64, events: &[Event<'_>]) -> Vec<u8> {
    let mut buf = std::vec![0u8; 64 * 1024];
    let header = PostcardHeader {
        version: FORMAT_VERSION,
        seal: 0,
        origin: NodeId(7),
        first_seq,
        end_seq,
    };
    let mut out = postcard::to_slice(&header, &mut buf).unwrap().to_vec();
    let count = u32::try_from(events.len()).unwrap();
    out.extend_from_slice(postcard::to_slice(&count, &mut buf).unwrap());
    for e in events {
        let repr = PostcardEvent {
            seq: e.seq,
            timestamp: e.timestamp,
            kind: e.kind,
            privacy: e.privacy,
            payload: e.payload,
        };
        out.extend_from_slice(postcard::to_slice(&repr, &mut buf).unwrap());
    }
    out
}

/// Seals `events` with a buffer of `buf_len` bytes; returns (id, bytes, first, end) per chunk.
fn seal_all(events: &[Ev], per_chunk: u32, buf_len: usize) -> Vec<(ChunkHash, Vec<u8>, u64, u64)> {
    let mut buf = std::vec![0u8; buf_len];
    let mut chunker = Chunker::new(NodeId(7), per_chunk, 0, &mut buf).unwrap();
    let mut out = Vec::new();
    for e in events {
        if chunker.push(e).unwrap() == Push::SealFirst {
            let s = chunker.seal().unwrap();
            out.push((s.id, s.bytes.to_vec(), s.first_seq, s.end_seq));
            assert_ne!(chunker.push(e).unwrap(), Push::SealFirst);
        }
    }
    if let Some(s) = chunker.seal() {
        out.push((s.id, s.bytes.to_vec(), s.first_seq, s.end_seq));
    }
    out
}

/// Format version 2 is frozen: these events always give these bytes and this hash. If this
/// test fails, the chunk format changed: bump `FORMAT_VERSION` and the README's stability
/// section instead of updating the literals.
#[test]
fn golden_chunk() {
    let events: Vec<Ev> = (0..3)
        .map(|seq| Ev {
            seq,
            timestamp: 1_000 + seq,
            kind: "t".to_string(),
            privacy: if seq == 1 {
                Privacy::Shareable
            } else {
                Privacy::Public
            },
            payload: std::vec![seq as u8; 2],
        })
        .collect();
    let chunks = seal_all(&events, 4, 256);
    assert_eq!(chunks.len(), 1);
    let (id, bytes, first, end) = &chunks[0];
    assert_eq!((*first, *end), (0, 3));
    let hex: String = bytes.iter().map(|b| std::format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        // version seal origin first end count | seq ts(varint 1000) kind privacy payload ...
        "020007000303\
         00e8070174000200000\
         1e9070174010201010\
         2ea070174000202 02"
            .replace(' ', "")
    );
    assert_eq!(
        id.to_string(),
        "5e5a11d1a7ba281b85c42b701591b33db18395a708788dc0bae710f1442f4dc9"
    );
}

/// A signed chunk of format version 2 is frozen as well: the same events sealed by the
/// same key always give these bytes (Ed25519 signatures are deterministic) and this hash.
#[cfg(feature = "secure")]
#[test]
fn golden_signed_chunk() {
    let keys = crate::secure::Keypair::from_secret([7; 32]);
    let origin = keys.node_id();
    let mut buf = [0u8; 256];
    let mut chunker = Chunker::new(origin, 4, 0, &mut buf)
        .unwrap()
        .signed_by(&keys)
        .unwrap();
    for seq in 0..3 {
        let payload = [seq as u8; 2];
        let event = Event {
            origin,
            seq,
            timestamp: 1_000 + seq,
            kind: "t",
            privacy: Privacy::Public,
            payload: &payload,
        };
        assert_eq!(chunker.push(&event), Ok(Push::Added));
    }
    let sealed = chunker.seal().unwrap();
    let hex: String = sealed
        .bytes
        .iter()
        .map(|b| std::format!("{b:02x}"))
        .collect();
    assert_eq!(hex, GOLDEN_SIGNED);
    assert_eq!(
        sealed.id.to_string(),
        "5f503489deb6e3a70ebbdecc80c8ba06d415989234fe3c44bd3e48fa1e4df490"
    );
    let view = ChunkView::validated(sealed.bytes).unwrap();
    assert_eq!(view.seal(), Seal::Signed);
    assert_eq!(keys.public().verify_chunk(&view), Ok(()));
}

/// The bytes of [`golden_signed_chunk`]: header (seal byte `01`), three events, signature.
#[cfg(feature = "secure")]
const GOLDEN_SIGNED: &str = concat!(
    "0201f88ab3c390f0e4bf3500030300e80701740002000001e90701740002010102ea07017400020202",
    "8478ad2112f0a51451c93d2e3f5a4667c59ec5102b395c5fb510dd145a40edaa",
    "839aae1ad70e2cdb0eb909c88b7571716e402be722adc1819be1e125d212af00",
);

#[test]
fn private_events_never_enter_a_chunk() {
    let events: Vec<Ev> = (0..10)
        .map(|s| {
            ev(
                s,
                if s % 3 == 0 {
                    Privacy::Private
                } else {
                    Privacy::Public
                },
            )
        })
        .collect();
    for (id, bytes, ..) in seal_all(&events, 4, 1024) {
        let view = ChunkView::verify(&id, &bytes).unwrap();
        assert!(
            view.events()
                .all(|e| e.is_ok_and(|e| e.seq % 3 != 0 && e.privacy.is_shareable()))
        );
    }
}

#[test]
fn boundaries_follow_sequence_numbers() {
    let log: Vec<Ev> = (0..30).map(|s| ev(s, Privacy::Public)).collect();
    let before = seal_all(&log, 10, 4096);
    assert_eq!(
        before.iter().map(|c| (c.2, c.3)).collect::<Vec<_>>(),
        [(0, 10), (10, 20), (20, 30)]
    );

    // Reclassifying one event as private changes only the chunk that covers it; filtering
    // first and cutting the filtered list every 10 events would shift every later chunk.
    let mut reclassified = log.clone();
    reclassified[4].privacy = Privacy::Private;
    let after = seal_all(&reclassified, 10, 4096);
    assert_ne!(after[0].0, before[0].0);
    assert_eq!(after[1..], before[1..]);

    // Appending never changes a sealed chunk: resuming at its end seals only the new events.
    let mut buf = [0u8; 4096];
    let mut chunker = Chunker::new(NodeId(7), 10, 30, &mut buf).unwrap();
    assert_eq!(
        chunker.push(&ev(5, Privacy::Public)),
        Err(ChunkError::OutOfOrder {
            expected_at_least: 30,
            found: 5
        })
    );
    for s in 30..35 {
        assert_eq!(chunker.push(&ev(s, Privacy::Public)), Ok(Push::Added));
    }
    let tail = chunker.seal().unwrap();
    assert_eq!((tail.first_seq, tail.end_seq, tail.events), (30, 35, 5));
}

#[test]
fn gaps_and_empty_ranges_keep_alignment() {
    let events = [
        ev(3, Privacy::Private),
        ev(25, Privacy::Public),
        ev(27, Privacy::Public),
        ev(41, Privacy::Public),
    ];
    let chunks = seal_all(&events, 10, 1024);
    assert_eq!(
        chunks.iter().map(|c| (c.2, c.3)).collect::<Vec<_>>(),
        [(20, 30), (40, 42)]
    );
}

#[test]
fn full_buffer_seals_early_and_oversize_events_are_refused() {
    let events: Vec<Ev> = (0..6).map(|s| ev(s, Privacy::Public)).collect();
    // Room for two events per chunk.
    let one = postcard::experimental::serialized_size(&PostcardEvent {
        seq: 0,
        timestamp: events[0].timestamp,
        kind: &events[0].kind,
        privacy: Privacy::Public,
        payload: &events[0].payload,
    })
    .unwrap();
    let chunks = seal_all(&events, 100, CHUNK_OVERHEAD + 2 * one + 1);
    assert_eq!(
        chunks.iter().map(|c| (c.2, c.3)).collect::<Vec<_>>(),
        [(0, 2), (2, 4), (4, 6)]
    );

    let mut buf = [0u8; CHUNK_OVERHEAD + 8];
    let mut chunker = Chunker::new(NodeId(7), 10, 0, &mut buf).unwrap();
    assert!(matches!(
        chunker.push(&events[0]),
        Err(ChunkError::EventTooLarge { capacity: 8, size }) if size == one
    ));
    assert_eq!(chunker.next_seq(), 0, "a refused event changes nothing");
    assert_eq!(
        chunker.push(&Event {
            origin: NodeId(8),
            ..Event::default_for_tests()
        }),
        Err(ChunkError::WrongOrigin {
            expected: NodeId(7),
            found: NodeId(8)
        })
    );
}

impl Event<'static> {
    fn default_for_tests() -> Self {
        Event {
            origin: NodeId(7),
            seq: 0,
            timestamp: 0,
            kind: "",
            privacy: Privacy::Public,
            payload: b"",
        }
    }
}

#[test]
fn a_refused_event_changes_nothing() {
    let mut buf = [0u8; CHUNK_OVERHEAD + 64];
    let mut chunker = Chunker::new(NodeId(7), 10, 0, &mut buf).unwrap();
    let mut big = ev(25, Privacy::Public);
    big.payload = std::vec![0; 100];
    assert!(matches!(
        chunker.push(&big),
        Err(ChunkError::EventTooLarge { .. })
    ));
    // The range did not move to 20..30: seq 5 still opens range 0..10.
    assert_eq!(chunker.push(&ev(5, Privacy::Public)), Ok(Push::Added));
    let sealed = chunker.seal().unwrap();
    assert_eq!((sealed.first_seq, sealed.end_seq), (0, 6));
    assert!(ChunkView::parse(sealed.bytes).unwrap().validate().is_ok());
    let last = Event {
        seq: u64::MAX,
        ..Event::default_for_tests()
    };
    assert_eq!(chunker.push(&last), Err(ChunkError::SeqExhausted));
}

#[test]
fn bad_configuration_is_refused() {
    let mut buf = [0u8; 64];
    assert_eq!(
        Chunker::new(NodeId(1), 0, 0, &mut buf).err(),
        Some(ChunkError::ZeroEventsPerChunk)
    );
    let mut tiny = [0u8; CHUNK_OVERHEAD];
    assert_eq!(
        Chunker::new(NodeId(1), 1, 0, &mut tiny).err(),
        Some(ChunkError::BufferTooSmall {
            required: CHUNK_OVERHEAD + 1
        })
    );
}

#[test]
fn invalid_chunks_are_refused() {
    let (id, bytes, ..) =
        seal_all(&[ev(0, Privacy::Public), ev(1, Privacy::Public)], 4, 512).remove(0);
    let mut tampered = bytes.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(matches!(
        ChunkView::verify(&id, &tampered),
        Err(ChunkError::HashMismatch(_))
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    let validate = |b| ChunkView::parse(b).and_then(|v| v.validate());
    assert_eq!(
        validate(&longer),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    assert_eq!(
        validate(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Truncated)
    );
    assert_eq!(validate(&bytes), Ok(()));
    assert_eq!(ChunkView::parse(&[]), Err(DecodeError::Truncated));
    assert_eq!(
        ChunkView::parse(&[9, 0]),
        Err(DecodeError::UnsupportedVersion {
            found: 9,
            supported: 2
        })
    );
    // A private event smuggled into a chunk (privacy byte of the first event set to 2).
    let mut private = bytes.clone();
    let kind = bytes
        .windows(14)
        .position(|w| w == b"sensor.reading")
        .unwrap();
    assert_eq!(private[kind + 14], 0, "privacy byte of the first event");
    private[kind + 14] = 2;
    let view = ChunkView::parse(&private).unwrap();
    assert_eq!(
        view.validate(),
        Err(DecodeError::Invalid("private event inside a chunk"))
    );
    let mut events = view.events();
    assert!(events.next().unwrap().is_err());
    assert!(
        events.next().is_none(),
        "iteration ends at the first invalid event"
    );
}

/// The most one event of [`arb_events`] encodes to: seq (< 300, two varint bytes), timestamp
/// (ten), kind (one length byte and twelve), privacy (one), payload (one length byte and 95).
const MAX_EVENT: usize = 2 + 10 + 13 + 1 + 96;

fn arb_events() -> impl Strategy<Value = Vec<Ev>> {
    pvec(
        (
            0u64..4,
            any::<u64>(),
            "[a-z.]{0,12}",
            0u8..3,
            pvec(any::<u8>(), 0..96),
        ),
        1..60,
    )
    .prop_map(|raw| {
        let mut seq = 0;
        raw.into_iter()
            .map(|(gap, timestamp, kind, p, payload)| {
                seq += gap;
                let e = Ev {
                    seq,
                    timestamp,
                    kind,
                    privacy: [Privacy::Public, Privacy::Shareable, Privacy::Private][p as usize],
                    payload,
                };
                seq += 1;
                e
            })
            .collect()
    })
}

/// [`MAX_EVENT`] is the worst case of [`arb_events`]: that event fits a chunk of exactly that
/// room, and one byte less refuses it.
#[test]
fn the_largest_generated_event_needs_max_event_bytes() {
    let worst = Ev {
        seq: 299,
        timestamp: u64::MAX,
        kind: "a".repeat(12),
        privacy: Privacy::Public,
        payload: std::vec![0xff; 95],
    };
    let mut buf = std::vec![0u8; CHUNK_OVERHEAD + MAX_EVENT];
    let mut chunker = Chunker::new(NodeId(7), 1000, 0, &mut buf).unwrap();
    assert_eq!(chunker.push(&worst), Ok(Push::Added));
    let mut buf = std::vec![0u8; CHUNK_OVERHEAD + MAX_EVENT - 1];
    let mut chunker = Chunker::new(NodeId(7), 1000, 0, &mut buf).unwrap();
    assert!(matches!(
        chunker.push(&worst),
        Err(ChunkError::EventTooLarge {
            size: MAX_EVENT,
            ..
        })
    ));
}

proptest! {
    /// Every shareable event comes back exactly once, in order, from chunks that verify,
    /// cover disjoint consecutive ranges, are postcard's encoding of the reference types,
    /// and are the same bytes when sealed twice.
    #[test]
    fn round_trip_and_determinism(events in arb_events(), per_chunk in 1u32..12, room in MAX_EVENT..800) {
        let chunks = seal_all(&events, per_chunk, CHUNK_OVERHEAD + room);
        prop_assert_eq!(&chunks, &seal_all(&events, per_chunk, CHUNK_OVERHEAD + room));
        let mut decoded = Vec::new();
        let mut last_end = 0;
        for (id, bytes, first, end) in &chunks {
            let view = ChunkView::verify(id, bytes).unwrap();
            prop_assert_eq!((view.first_seq(), view.end_seq()), (*first, *end));
            prop_assert!(*first >= last_end && end - first <= u64::from(per_chunk));
            last_end = *end;
            prop_assert_eq!(view.validate(), Ok(()));
            let events: Vec<_> = view.events().map(Result::unwrap).collect();
            prop_assert_eq!(bytes, &postcard_chunk(*first, *end, &events), "not postcard's encoding");
            for e in view.events() {
                let e = e.unwrap();
                decoded.push((e.seq, e.timestamp, e.kind.to_string(), e.privacy, e.payload.to_vec()));
            }
        }
        let expected: Vec<_> = events
            .iter()
            .filter(|e| e.privacy.is_shareable())
            .map(|e| (e.seq, e.timestamp, e.kind.clone(), e.privacy, e.payload.clone()))
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    /// Discarding where one would seal closes the same ranges: a pass that only checks
    /// its input finds the chunks a sealing pass makes.
    #[test]
    fn discarding_closes_the_ranges_sealing_closes(events in arb_events(), per_chunk in 1u32..12, room in MAX_EVENT..800) {
        let sealed: Vec<(u64, u64)> = seal_all(&events, per_chunk, CHUNK_OVERHEAD + room)
            .into_iter()
            .map(|(_, _, first, end)| (first, end))
            .collect();
        let mut buf = std::vec![0u8; CHUNK_OVERHEAD + room];
        let mut chunker = Chunker::new(NodeId(7), per_chunk, 0, &mut buf).unwrap();
        let mut discarded = Vec::new();
        for e in &events {
            if chunker.push(e).unwrap() == Push::SealFirst {
                let (first, end, _) = chunker.discard().unwrap();
                discarded.push((first, end));
                prop_assert_ne!(chunker.push(e).unwrap(), Push::SealFirst);
            }
        }
        discarded.extend(chunker.discard().map(|(first, end, _)| (first, end)));
        prop_assert_eq!(discarded, sealed);
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(mut bytes in pvec(any::<u8>(), 0..200), versioned in any::<bool>()) {
        // Most random inputs fail at the version byte; half start with a valid one.
        if versioned && !bytes.is_empty() {
            bytes[0] = FORMAT_VERSION;
        }
        if let Ok(view) = ChunkView::parse(&bytes) {
            let read = view.events().count();
            prop_assert!(read <= view.len() as usize);
            if view.validate().is_ok() {
                prop_assert_eq!(read, view.len() as usize);
            }
        }
    }

    #[test]
    fn flipping_any_byte_is_caught(events in arb_events(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let chunks = seal_all(&events, 8, 2048);
        if let Some((id, bytes, ..)) = chunks.first() {
            let mut bad = bytes.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(ChunkView::verify(id, &bad).is_err());
            // Without the hash, a flipped byte is either caught by the format or decodes to
            // other events: never a panic.
            if let Ok(view) = ChunkView::parse(&bad) {
                let _ = view.validate();
            }
        }
    }
}

#[cfg(feature = "alloc")]
mod event_chunk_store {
    use super::*;
    use crate::EventBuf;

    fn buf(seq: u64, privacy: Privacy) -> EventBuf {
        let e = ev(seq, privacy);
        EventBuf {
            origin: NodeId(7),
            seq,
            timestamp: e.timestamp,
            kind: e.kind,
            privacy,
            payload: e.payload,
        }
    }

    #[test]
    fn appending_seals_only_new_events() {
        let store = EventChunkStore::new(10);
        let mut log: Vec<EventBuf> = (0..25).map(|s| buf(s, Privacy::Public)).collect();
        let first = store.create_chunks(&log).unwrap();
        assert_eq!(
            first
                .iter()
                .map(|c| (c.first_seq, c.end_seq))
                .collect::<Vec<_>>(),
            [(0, 10), (10, 20), (20, 25)]
        );
        log.extend((25..40).map(|s| buf(s, Privacy::Public)));
        let second = store.create_chunks(&log).unwrap();
        assert_eq!(
            second
                .iter()
                .map(|c| (c.first_seq, c.end_seq))
                .collect::<Vec<_>>(),
            [(25, 35), (35, 40)]
        );
        assert_eq!(store.len(), 5);
        for c in first.iter().chain(&second) {
            assert_eq!(store.get_chunk(&c.id).as_ref(), Some(c));
        }
    }

    #[test]
    fn a_private_tail_stays_open() {
        let store = EventChunkStore::new(10);
        let mut log: Vec<EventBuf> = (0..12)
            .map(|s| {
                buf(
                    s,
                    if s < 10 {
                        Privacy::Public
                    } else {
                        Privacy::Private
                    },
                )
            })
            .collect();
        assert_eq!(store.create_chunks(&log).unwrap().len(), 1);
        // Seq 10 and 11 sealed nothing, so when 11 becomes shareable it is still chunked.
        log[11].privacy = Privacy::Shareable;
        let next = store.create_chunks(&log).unwrap();
        assert_eq!(
            next.iter()
                .map(|c| (c.first_seq, c.end_seq, c.events))
                .collect::<Vec<_>>(),
            [(10, 12, 1)]
        );
    }

    #[test]
    fn errors_leave_the_store_unchanged() {
        let store = EventChunkStore::new(10).with_max_chunk_bytes(CHUNK_OVERHEAD + 200);
        let mut log: Vec<EventBuf> = (0..3).map(|s| buf(s, Privacy::Public)).collect();
        log[2].payload = std::vec![0; 300];
        assert!(matches!(
            store.create_chunks(&log),
            Err(ChunkError::EventTooLarge { .. })
        ));
        assert!(store.is_empty());
        log[2] = buf(1, Privacy::Public);
        assert!(matches!(
            store.create_chunks(&log),
            Err(ChunkError::OutOfOrder { .. })
        ));
        assert!(store.is_empty());
    }

    #[test]
    fn received_chunks_are_validated() {
        let origin = EventChunkStore::new(10);
        let chunk = origin
            .create_chunks(&[buf(0, Privacy::Public)])
            .unwrap()
            .remove(0);
        let replica = EventChunkStore::new(10);
        assert_eq!(
            replica.insert_chunk(Verified::hash_of(&chunk.bytes)),
            Ok(true)
        );
        assert_eq!(
            replica.insert_chunk(Verified::hash_of(&chunk.bytes)),
            Ok(false)
        );
        assert!(
            replica
                .insert_chunk(Verified::hash_of(b"not a chunk"))
                .is_err()
        );
        assert_eq!(replica.hashes(), [chunk.id]);
    }
}

fn public(seq: u64, payload: usize) -> Ev {
    Ev {
        seq,
        timestamp: seq,
        kind: "t".to_string(),
        privacy: Privacy::Public,
        payload: std::vec![1; payload],
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_live_chunk_is_due_by_delay_size_or_a_covered_range() {
    let mut buf = [0u8; 4096];
    let policy = SealPolicy {
        max_bytes: 100,
        max_delay: Some(Duration::from_millis(10)),
    };
    let mut c = Chunker::new(NodeId(7), 4, 0, &mut buf)
        .unwrap()
        .with_policy(policy);
    let t0 = Instant::ZERO + Duration::from_secs(5);
    assert_eq!(c.seal_deadline(), None, "nothing open");
    assert_eq!(c.push_at(&public(0, 10), t0).unwrap(), Push::Added);
    assert_eq!(c.push_at(&public(1, 10), t0 + ms(3)).unwrap(), Push::Added);
    // The delay counts from the first event.
    assert_eq!(c.seal_deadline(), Some(t0 + ms(10)));
    assert!(!c.seal_due(t0 + ms(9)) && c.seal_due(t0 + ms(10)));
    let sealed = c.seal().unwrap();
    assert_eq!((sealed.first_seq, sealed.end_seq, sealed.events), (0, 2, 2));
    // The next chunk starts where that one ended, and its delay counts afresh.
    let t1 = t0 + ms(20);
    assert_eq!(c.push_at(&public(2, 10), t1).unwrap(), Push::Added);
    assert_eq!(c.seal_deadline(), Some(t1 + ms(10)));
    // Its range of 4 covered (2..6): due at once.
    for seq in 3..6 {
        assert_eq!(c.push_at(&public(seq, 1), t1).unwrap(), Push::Added);
    }
    assert!(c.seal_due(t1));
    let sealed = c.seal().unwrap();
    assert_eq!((sealed.first_seq, sealed.end_seq), (2, 6));
    // Past `max_bytes`: due at once.
    assert_eq!(c.push_at(&public(6, 120), t1).unwrap(), Push::Added);
    assert!(c.seal_due(t1));
}

#[test]
fn private_events_alone_open_no_chunk() {
    let mut buf = [0u8; 1024];
    let policy = SealPolicy {
        max_bytes: usize::MAX,
        max_delay: Some(MS),
    };
    let mut c = Chunker::new(NodeId(7), 10, 0, &mut buf)
        .unwrap()
        .with_policy(policy);
    let private = Ev {
        privacy: Privacy::Private,
        ..public(0, 4)
    };
    assert_eq!(c.push_at(&private, Instant::ZERO).unwrap(), Push::Filtered);
    assert_eq!(c.seal_deadline(), None);
}

proptest! {
    /// Sealing whenever the policy says so gives chunks in order, none overlapping, each within the
    /// policy: no event waits longer than the delay past the moment it was due, and no
    /// chunk's events pass `max_bytes` by more than their last event.
    #[test]
    fn sealing_by_the_policy_keeps_chunks_in_order_and_within_it(
        per_chunk in 1u32..20,
        max_bytes in 16usize..400,
        delay_ms in 1u64..50,
        events in pvec((0u64..3, 0u64..20, 0usize..60), 1..200),
    ) {
        let mut buf = [0u8; 2048];
        let policy = SealPolicy { max_bytes, max_delay: Some(Duration::from_millis(delay_ms)) };
        let mut c = Chunker::new(NodeId(7), per_chunk, 0, &mut buf).unwrap().with_policy(policy);
        let mut now = Instant::ZERO;
        let mut seq = 0;
        let mut spans = Vec::new();
        let mut opened: Option<Instant> = None;
        for (gap, wait_ms, payload) in events {
            seq += gap;
            now += Duration::from_millis(wait_ms);
            // The adapter seals what is due before it appends.
            if let Some(t) = c.seal_deadline().filter(|&t| t <= now) {
                prop_assert!(opened.is_some_and(|o| t <= o + Duration::from_millis(delay_ms)));
                let s = c.seal().unwrap();
                // Past `max_bytes` by one event at most (60 bytes of payload and its
                // fields), plus the header.
                prop_assert!(s.bytes.len() <= max_bytes + 60 + 24 + CHUNK_OVERHEAD);
                spans.push((s.first_seq, s.end_seq));
                opened = None;
            }
            match c.push_at(&public(seq, payload), now).unwrap() {
                Push::SealFirst => {
                    let s = c.seal().unwrap();
                    spans.push((s.first_seq, s.end_seq));
                    prop_assert_eq!(c.push_at(&public(seq, payload), now).unwrap(), Push::Added);
                    opened = Some(now);
                }
                Push::Added => { opened.get_or_insert(now); }
                Push::Filtered => {}
            }
            seq += 1;
        }
        if let Some(s) = c.seal() {
            spans.push((s.first_seq, s.end_seq));
        }
        for w in spans.windows(2) {
            // A range with no event to seal is skipped, never overlapped.
            prop_assert!(w[0].1 <= w[1].0, "chunks in order: {:?}", spans);
        }
        for &(lo, hi) in &spans {
            prop_assert!(lo < hi && hi - lo <= u64::from(per_chunk));
        }
    }
}

proptest! {
    /// Any bytes read as a header or an event give what postcard gives for the reference
    /// types: the same fields, or an error of the same cause.
    #[test]
    fn reading_agrees_with_postcard(
        e in arb_events(),
        noise in pvec(any::<u8>(), 0..48),
        (at, byte, cut) in (any::<prop::sample::Index>(), any::<u8>(), any::<prop::sample::Index>()),
    ) {
        // A valid event with one byte changed and cut short, or noise.
        let mut bytes = noise;
        if let Some(e) = e.first() {
            let repr = PostcardEvent {
                seq: e.seq,
                timestamp: e.timestamp,
                kind: &e.kind,
                privacy: e.privacy,
                payload: &e.payload,
            };
            let mut buf = std::vec![0u8; 4096];
            let mut valid = postcard::to_slice(&repr, &mut buf).unwrap().to_vec();
            let len = valid.len();
            valid[at.index(len)] = byte;
            valid.truncate(1 + cut.index(len));
            if byte % 2 == 0 {
                bytes = valid;
            }
        }
        let theirs = postcard::take_from_bytes::<PostcardHeader>(&bytes)
            .map(|(h, rest)| ((h.version, h.seal, h.origin, h.first_seq, h.end_seq), rest.len()))
            .map_err(DecodeError::from_postcard);
        let mut r = Reader(&bytes);
        let ours = Header::read(&mut r)
            .map(|h| ((h.version, h.seal, h.origin, h.first_seq, h.end_seq), r.0.len()));
        prop_assert_eq!(ours, theirs);

        let theirs = postcard::take_from_bytes::<PostcardEvent<'_>>(&bytes)
            .map(|(e, rest)| ((e.seq, e.timestamp, e.kind, e.privacy, e.payload), rest.len()))
            .map_err(DecodeError::from_postcard);
        let mut r = Reader(&bytes);
        let ours = EventRepr::read(&mut r)
            .map(|e| ((e.seq, e.timestamp, e.kind, e.privacy, e.payload), r.0.len()));
        prop_assert_eq!(ours, theirs);
    }
}

#[cfg(feature = "secure")]
proptest! {
    /// Sealing unsigned and signing afterwards gives the chunks a signing chunker seals,
    /// byte for byte and hash for hash.
    #[test]
    fn signing_sealed_chunks_gives_what_a_signing_chunker_seals(events in arb_events(), per_chunk in 1u32..12, room in MAX_EVENT..800) {
        let keys = crate::secure::Keypair::from_secret([9; 32]);
        let origin = keys.node_id();
        let seal = |signed: bool| {
            let mut buf = std::vec![0u8; CHUNK_OVERHEAD + room];
            let mut chunker = Chunker::new(origin, per_chunk, 0, &mut buf).unwrap();
            if signed {
                chunker.sign_with(&keys).unwrap();
            }
            let mut out = Vec::new();
            let mut take = |s: Sealed<'_>| {
                if signed {
                    out.push((s.id, s.bytes.to_vec()));
                } else {
                    let mut signed = s.bytes.to_vec();
                    signed.resize(s.bytes.len() + SIGNATURE_LEN, 0);
                    let (id, len) = sign_sealed(&mut signed, s.bytes.len(), &keys).unwrap();
                    assert_eq!(len, signed.len());
                    out.push((id, signed));
                }
            };
            for e in &events {
                let event = Event {
                    origin,
                    seq: e.seq,
                    timestamp: e.timestamp,
                    kind: &e.kind,
                    privacy: e.privacy,
                    payload: &e.payload,
                };
                if chunker.push(&event).unwrap() == Push::SealFirst {
                    take(chunker.seal().unwrap());
                    assert_ne!(chunker.push(&event).unwrap(), Push::SealFirst);
                }
            }
            if let Some(s) = chunker.seal() {
                take(s);
            }
            out
        };
        let signed = seal(true);
        // Only private events seal nothing.
        prop_assume!(!signed.is_empty());
        prop_assert_eq!(&seal(false), &signed);
        for (id, bytes) in &signed {
            prop_assert_eq!(ChunkHash::of(bytes), *id);
        }
    }
}

/// `sign_sealed` takes only an unsigned chunk of the key's own origin, into room enough.
#[cfg(feature = "secure")]
#[test]
fn sign_sealed_refuses_what_it_cannot_sign() {
    let keys = crate::secure::Keypair::from_secret([9; 32]);
    let unsigned = test_chunk(keys.node_id().0, 0, b"x");
    let n = unsigned.len();
    let with_room = |chunk: &[u8], room: usize| {
        let mut buf = chunk.to_vec();
        buf.resize(chunk.len() + room, 0);
        buf
    };
    let mut signed = with_room(&unsigned, SIGNATURE_LEN + 10);
    let (_, len) = sign_sealed(&mut signed, n, &keys).unwrap();
    assert_eq!(len, n + SIGNATURE_LEN);
    assert_eq!(
        sign_sealed(&mut signed, len, &keys),
        Err(ChunkError::AlreadySigned)
    );
    let other = test_chunk(keys.node_id().0 ^ 1, 0, b"x");
    assert!(matches!(
        sign_sealed(&mut with_room(&other, SIGNATURE_LEN), other.len(), &keys),
        Err(ChunkError::NotOriginKey { .. })
    ));
    let mut short = with_room(&unsigned, SIGNATURE_LEN - 1);
    assert_eq!(
        sign_sealed(&mut short, n, &keys),
        Err(ChunkError::BufferTooSmall { required: len })
    );
    assert_eq!(
        short,
        with_room(&unsigned, SIGNATURE_LEN - 1),
        "nothing changed"
    );
    let mut room = with_room(&unsigned, SIGNATURE_LEN);
    assert!(matches!(
        sign_sealed(&mut room, n - 1, &keys),
        Err(ChunkError::Decode(_))
    ));
    assert!(matches!(
        sign_sealed(&mut room, n + SIGNATURE_LEN + 1, &keys),
        Err(ChunkError::Decode(_))
    ));
}
