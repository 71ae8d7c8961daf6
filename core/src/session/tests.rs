//! Transcripts: one session fed scripted frames, its answers checked.

use std::vec::Vec;

use super::*;
use crate::event::NodeId;
use crate::wire::{ErrorCode, FrameError, encode};

type S = Session<16, 4>;
const T0: Instant = Instant::ZERO;

/// The whole frame of `message`.
pub(super) fn frame(message: &Message<'_>) -> Vec<u8> {
    let mut buf = std::vec![0u8; message.frame_len()];
    encode(message, &mut buf).unwrap().to_vec()
}

fn hello(protocol: u16, max_frame: u32, max_requests: u16) -> Vec<u8> {
    frame(&Message::Hello(Hello {
        protocol,
        node_id: NodeId(2),
        max_frame,
        max_requests,
        capabilities: Capabilities::ALL,
    }))
}

/// Every frame the session wants to send now, decoded to (tag name, raw frame).
fn sent(s: &mut S, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = std::vec![0u8; S::max_transmit_len()];
    while let Some(t) = s.poll_transmit(now, &mut buf).unwrap() {
        assert!(t.piece.is_none(), "no chunk data in these transcripts");
        out.push(buf[..t.len].to_vec());
    }
    out
}

pub(super) use crate::chunk::test_chunk as chunk;

fn decoded(frame: &[u8]) -> Message<'_> {
    match wire::decode(frame, MAX_FRAME_LIMIT).unwrap() {
        Decoded::Frame { message, .. } => message,
        Decoded::Incomplete { .. } => panic!("incomplete frame"),
    }
}

/// Answers every pending lookup with `have`, as an adapter does one hash at a time.
fn resolve_lookups(s: &mut S, mut have: impl FnMut(&ChunkHash) -> bool) {
    while let Some(id) = s.next_lookup() {
        s.answer_lookup(have(&id)).unwrap();
    }
}

/// Answers the pending manifest request with `ids`.
fn send_page(s: &mut S, ids: &[ChunkHash], last: bool) {
    let (_, out) = s.page_to_list().expect("a page was asked for");
    out[..ids.len()].copy_from_slice(ids);
    s.page_listed(ids.len(), last).unwrap();
}

fn open_session(config: Config) -> S {
    let mut s = S::new(config, T0).unwrap();
    let out = sent(&mut s, T0);
    assert!(matches!(decoded(&out[0]), Message::Hello(h) if h.max_requests == 4));
    let h = hello(PROTOCOL_VERSION, 1024, 4);
    assert_eq!(s.handle_input(T0, &h).unwrap().consumed, h.len());
    assert_eq!(s.poll_event(), Some(Event::Connected { peer: NodeId(2) }));
    s
}

#[test]
fn another_protocol_version_ends_the_session_on_both_sides() {
    let mut s = S::new(Config::new(NodeId(1)), T0).unwrap();
    let _ = sent(&mut s, T0);
    let err = s.handle_input(T0, &hello(2, 1024, 4)).unwrap_err();
    let expected = Error::Incompatible(Incompatible::ProtocolVersion { ours: 1, theirs: 2 });
    assert_eq!(err, expected);
    // The peer is told why, and the error sticks.
    let out = sent(&mut s, T0);
    assert!(matches!(
        decoded(&out[0]),
        Message::Error {
            code: ErrorCode::PROTOCOL_VERSION,
            ..
        }
    ));
    assert_eq!(s.handle_input(T0, &hello(1, 1024, 4)), Err(expected));
    assert_eq!(s.poll_event(), Some(Event::Failed(expected)));
    assert_eq!(s.poll_event(), None);
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn oversize_and_malformed_frames_are_fatal() {
    let mut s = open_session(Config {
        max_frame: 512,
        ..Config::new(NodeId(1))
    });
    let err = s.handle_input(T0, &[0xff, 0xff, 0, 0]).unwrap_err();
    assert_eq!(
        err,
        Error::Frame(FrameError::TooLarge {
            len: 65_539,
            max: 512
        })
    );
    let out = sent(&mut s, T0);
    assert!(matches!(
        decoded(&out[0]),
        Message::Error {
            code: ErrorCode::FRAME_TOO_LARGE,
            ..
        }
    ));

    let mut s = open_session(Config::new(NodeId(1)));
    assert!(matches!(
        s.handle_input(T0, &[1, 0, 0, 0, 99]),
        Err(Error::Frame(FrameError::Decode(_)))
    ));
}

#[test]
fn messages_before_hello_and_a_second_hello_are_refused() {
    let mut s = S::new(Config::new(NodeId(1)), T0).unwrap();
    let get = frame(&Message::EventChunkGet {
        hash: ChunkHash::default(),
    });
    assert_eq!(
        s.handle_input(T0, &get),
        Err(Error::Peer(PeerMisbehaved::Unexpected(
            "a message before Hello"
        )))
    );
    let mut s = open_session(Config::new(NodeId(1)));
    assert!(matches!(
        s.handle_input(T0, &hello(1, 1024, 4)),
        Err(Error::Peer(_))
    ));
}

#[test]
fn a_flood_of_requests_is_refused() {
    let mut s = open_session(Config::new(NodeId(1)));
    for n in 0..4u8 {
        let get = frame(&Message::EventChunkGet {
            hash: ChunkHash::from_bytes([n; 32]),
        });
        assert!(s.handle_input(T0, &get).is_ok());
    }
    let fifth = frame(&Message::EventChunkGet {
        hash: ChunkHash::from_bytes([9; 32]),
    });
    assert_eq!(
        s.handle_input(T0, &fifth),
        Err(Error::Peer(PeerMisbehaved::TooManyRequests))
    );
}

#[test]
fn unrequested_and_misplaced_pieces_are_refused() {
    let mut s = open_session(Config {
        max_chunk_len: 100,
        ..Config::new(NodeId(1))
    });
    let put = |offset, total_len, data: &[u8]| {
        frame(&Message::EventChunkPut {
            hash: ChunkHash::of(b"x"),
            total_len,
            offset,
            data,
        })
    };
    assert_eq!(
        s.handle_input(T0, &put(0, 1, b"x")),
        Err(Error::Peer(PeerMisbehaved::UnrequestedChunk))
    );

    // Make the session request one chunk: a one-hash manifest page it lacks.
    let mut s = open_session(Config {
        max_chunk_len: 100,
        ..Config::new(NodeId(1))
    });
    let out = sent(&mut s, T0);
    assert!(matches!(
        decoded(&out[0]),
        Message::ManifestRequest { after: None, .. }
    ));
    let xyz = chunk(9, 0, b"xyz");
    let n = xyz.len() as u32;
    let id = ChunkHash::of(&xyz);
    let page = frame(&Message::ManifestPage {
        ids: HashList::new(&[id]),
        last: true,
    });
    assert!(s.handle_input(T0, &page).is_ok());
    assert_eq!(s.poll_event(), Some(Event::LookupNeeded));
    assert_eq!(s.next_lookup(), Some(id));
    resolve_lookups(&mut s, |_| false);
    let out = sent(&mut s, T0);
    assert!(matches!(decoded(&out[0]), Message::EventChunkGet { hash } if hash == id));

    let put = |offset, total_len, data: &[u8]| {
        frame(&Message::EventChunkPut {
            hash: id,
            total_len,
            offset,
            data,
        })
    };
    assert_eq!(
        s.clone().handle_input(T0, &put(0, 101, b"x")),
        Err(Error::Peer(PeerMisbehaved::ChunkTooLarge {
            len: 101,
            max: 100
        }))
    );
    assert_eq!(
        s.clone().handle_input(T0, &put(1, n, b"y")),
        Err(Error::Peer(PeerMisbehaved::BadPiece))
    );
    assert_eq!(
        s.clone().handle_input(T0, &put(0, 2, &xyz)),
        Err(Error::Peer(PeerMisbehaved::BadPiece))
    );

    // In order, the pieces arrive; the whole chunk verifies once.
    let first = put(0, n, &xyz[..2]);
    let h = s.handle_input(T0, &first).unwrap();
    assert_eq!(h.piece.map(|p| (p.offset, p.last)), Some((0, false)));
    let second = put(2, n, &xyz[2..]);
    let h = s.handle_input(T0, &second).unwrap();
    assert_eq!(h.piece.map(|p| p.last), Some(true));
    assert_eq!(
        s.handle_input(T0, &first),
        Err(Error::ApiMisuse(ApiMisuse::FinishChunkFirst)),
        "not fatal: the caller must finish the chunk first"
    );
    assert_eq!(s.finish_chunk(&xyz).map(|v| v.id()), Ok(id));
    assert_eq!(
        s.progress().synced_chunks,
        0,
        "synced once the store kept it"
    );
    s.chunk_stored(Stored::Kept);
    assert_eq!(s.progress().synced_chunks, 1);
    // Nothing left to pull: the session says Done.
    let out = sent(&mut s, T0);
    assert!(matches!(decoded(&out[0]), Message::Done));
    assert_eq!(s.poll_event(), Some(Event::PullComplete));
}

#[test]
fn an_unsorted_page_is_refused() {
    let mut s = open_session(Config::new(NodeId(1)));
    let _ = sent(&mut s, T0);
    let ids = [
        ChunkHash::from_bytes([2; 32]),
        ChunkHash::from_bytes([1; 32]),
    ];
    let page = frame(&Message::ManifestPage {
        ids: HashList::new(&ids),
        last: false,
    });
    assert_eq!(
        s.handle_input(T0, &page),
        Err(Error::Peer(PeerMisbehaved::UnsortedPage))
    );
}

#[test]
fn the_idle_timer_fires_only_at_its_deadline() {
    let mut s = open_session(Config {
        idle_timeout: Duration::from_secs(2),
        ..Config::new(NodeId(1))
    });
    assert_eq!(s.poll_timeout(), Some(Instant::from_millis(2_000)));
    s.handle_timeout(Instant::from_millis(1_999));
    assert_eq!(s.error(), None, "a spurious call is a no-op");
    s.handle_timeout(Instant::from_millis(2_000));
    assert_eq!(s.error(), Some(Error::TimedOut));
}

#[test]
fn answers_out_of_turn_are_api_misuse() {
    let mut s = open_session(Config::new(NodeId(1)));
    assert_eq!(s.answer_lookup(true), Err(ApiMisuse::NoLookupsPending));
    assert_eq!(s.page_listed(0, true), Err(ApiMisuse::NoManifestRequest));
    assert_eq!(
        s.serve_chunk(&ChunkHash::default(), 10),
        Err(ApiMisuse::NotRequested)
    );
    assert_eq!(
        s.finish_chunk(b""),
        Err(FinishError::ApiMisuse(ApiMisuse::NoChunkToFinish))
    );
    assert_eq!(s.error(), None);
}

#[test]
fn bad_configurations_are_refused() {
    assert_eq!(
        S::new(
            Config {
                max_frame: 100,
                ..Config::new(NodeId(1))
            },
            T0
        )
        .err(),
        Some(ConfigError::FrameSize(100))
    );
    assert!(
        S::new(
            Config {
                window: 0,
                ..Config::new(NodeId(1))
            },
            T0
        )
        .is_err()
    );
    assert!(
        S::new(
            Config {
                max_attempts: 0,
                ..Config::new(NodeId(1))
            },
            T0
        )
        .is_err()
    );
}

/// A session that asked for `id` (a one-hash manifest page it lacked) and has it in flight.
fn requesting(config: Config, id: ChunkHash) -> S {
    let mut s = open_session(config);
    let _ = sent(&mut s, T0);
    let page = frame(&Message::ManifestPage {
        ids: HashList::new(&[id]),
        last: true,
    });
    assert!(s.handle_input(T0, &page).is_ok());
    assert_eq!(s.poll_event(), Some(Event::LookupNeeded));
    resolve_lookups(&mut s, |_| false);
    let out = sent(&mut s, T0);
    assert!(matches!(decoded(&out[0]), Message::EventChunkGet { hash } if hash == id));
    s
}

/// Feeds `bytes` as one whole piece of `id` and finishes it.
fn deliver(s: &mut S, id: ChunkHash, bytes: &[u8]) -> Result<ChunkHash, FinishError> {
    let put = frame(&Message::EventChunkPut {
        hash: id,
        total_len: bytes.len() as u32,
        offset: 0,
        data: bytes,
    });
    let h = s.handle_input(T0, &put).unwrap();
    assert_eq!(h.piece.map(|p| p.last), Some(true));
    s.finish_chunk(bytes).map(|v| v.id())
}

#[test]
fn bytes_that_match_their_hash_but_are_no_valid_chunk_are_refused() {
    let valid = chunk(9, 0, b"xyz");
    // The same chunk with its event marked private (`2`): matching hash, forbidden content.
    let mut private = valid.clone();
    assert_eq!(private[9], 0, "the privacy byte of the one event");
    private[9] = 2;
    let mut trailing = valid.clone();
    trailing.push(0);
    for bad in [b"random bytes".to_vec(), private, trailing] {
        let id = ChunkHash::of(&bad);
        let mut s = requesting(Config::new(NodeId(1)), id);
        assert!(matches!(
            deliver(&mut s, id, &bad),
            Err(FinishError::Invalid(_))
        ));
        assert_eq!(
            s.poll_event(),
            Some(Event::ChunkFailed {
                hash: id,
                reason: FailReason::Invalid
            })
        );
        // Not asked for again: no peer can give other bytes by that name.
        let out = sent(&mut s, T0);
        assert!(matches!(decoded(&out[0]), Message::Done));
        assert_eq!(
            (s.progress().synced_chunks, s.progress().failed_chunks),
            (0, 1)
        );
    }
    let id = ChunkHash::of(&valid);
    let mut s = requesting(Config::new(NodeId(1)), id);
    assert_eq!(deliver(&mut s, id, &valid), Ok(id));
}

#[test]
fn a_session_that_does_not_serve_shows_nothing_and_sends_no_chunk() {
    let mut s = open_session(Config {
        serve: false,
        ..Config::new(NodeId(1))
    });
    let _ = sent(&mut s, T0);
    let request = frame(&Message::ManifestRequest {
        after: None,
        limit: 16,
    });
    assert!(s.handle_input(T0, &request).is_ok());
    let id = ChunkHash::of(&chunk(1, 0, b"mine"));
    let get = frame(&Message::EventChunkGet { hash: id });
    assert!(s.handle_input(T0, &get).is_ok());
    assert!(s.handle_input(T0, &get).is_ok());
    // The adapter is never asked for a page or a chunk.
    while let Some(event) = s.poll_event() {
        assert!(
            !matches!(
                event,
                Event::ManifestPageNeeded { .. } | Event::ChunkRequested { .. }
            ),
            "{event:?}"
        );
    }
    let out = sent(&mut s, T0);
    let messages: Vec<_> = out.iter().map(|f| decoded(f)).collect();
    assert!(messages.contains(&Message::ManifestPage {
        ids: HashList::new(&[]),
        last: true
    }));
    assert_eq!(
        messages
            .iter()
            .filter(|m| **m == Message::NotFound { hash: id })
            .count(),
        2
    );
    assert!(
        !messages
            .iter()
            .any(|m| matches!(m, Message::EventChunkPut { .. }))
    );
}

#[test]
fn a_peer_whose_chunks_keep_failing_is_dropped_at_the_limit() {
    let mut s = open_session(Config {
        max_failures: 3,
        ..Config::new(NodeId(1))
    });
    let _ = sent(&mut s, T0);
    let ids: Vec<ChunkHash> = (0..8u8).map(|i| ChunkHash::from_bytes([i; 32])).collect();
    let page = frame(&Message::ManifestPage {
        ids: HashList::new(&ids),
        last: true,
    });
    assert!(s.handle_input(T0, &page).is_ok());
    assert_eq!(s.poll_event(), Some(Event::LookupNeeded));
    resolve_lookups(&mut s, |_| false);
    let requested: Vec<ChunkHash> = sent(&mut s, T0)
        .iter()
        .filter_map(|f| match decoded(f) {
            Message::EventChunkGet { hash } => Some(hash),
            _ => None,
        })
        .collect();
    assert_eq!(requested.len(), 4, "the peer's window");
    let mut result = Ok(());
    for hash in &requested {
        result = s
            .handle_input(T0, &frame(&Message::NotFound { hash: *hash }))
            .map(drop);
        if result.is_err() {
            break;
        }
    }
    let expected = Error::Peer(PeerMisbehaved::TooManyFailures { max: 3 });
    assert_eq!(result, Err(expected));
    assert_eq!(s.error(), Some(expected));
    let out = sent(&mut s, T0);
    assert!(matches!(
        decoded(&out[0]),
        Message::Error {
            code: ErrorCode::LIMIT_EXCEEDED,
            ..
        }
    ));
}

#[test]
fn a_peer_that_sends_no_hello_is_dropped_at_the_handshake_timeout() {
    let mut s = S::new(
        Config {
            handshake_timeout: Duration::from_secs(3),
            ..Config::new(NodeId(1))
        },
        T0,
    )
    .unwrap();
    let _ = sent(&mut s, T0);
    assert_eq!(s.poll_timeout(), Some(Instant::from_millis(3_000)));
    s.handle_timeout(Instant::from_millis(2_999));
    assert_eq!(s.error(), None);
    s.handle_timeout(Instant::from_millis(3_000));
    assert_eq!(s.error(), Some(Error::HandshakeTimedOut));
    // Once the Hello is in, only the idle timeout counts.
    let mut s = open_session(Config {
        handshake_timeout: Duration::from_secs(3),
        ..Config::new(NodeId(1))
    });
    assert_eq!(s.poll_timeout(), Some(Instant::from_millis(30_000)));
    s.handle_timeout(Instant::from_millis(3_000));
    assert_eq!(s.error(), None);
}

#[test]
fn a_session_that_outlives_its_deadline_ends_whatever_the_peer_does() {
    let mut s = open_session(Config {
        max_duration: Some(Duration::from_secs(5)),
        idle_timeout: Duration::from_secs(2),
        ..Config::new(NodeId(1))
    });
    let _ = sent(&mut s, T0);
    // A peer that sends a frame every second is never idle…
    let request = frame(&Message::ManifestRequest {
        after: None,
        limit: 1,
    });
    for second in 1..5 {
        let now = Instant::from_millis(second * 1_000);
        s.handle_timeout(now);
        let _ = s.handle_input(now, &request);
        while let Some(Event::ManifestPageNeeded { .. }) = s.poll_event() {
            send_page(&mut s, &[ChunkHash::from_bytes([second as u8; 32])], false);
        }
        let _ = sent(&mut s, now);
        assert_eq!(s.error(), None);
    }
    // …but the deadline is the deadline.
    assert_eq!(s.poll_timeout(), Some(Instant::from_millis(5_000)));
    s.handle_timeout(Instant::from_millis(5_000));
    assert_eq!(s.error(), Some(Error::DeadlinePassed));
}

#[test]
fn a_hello_announcing_frames_above_the_protocol_limit_is_refused() {
    let mut s = S::new(Config::new(NodeId(1)), T0).unwrap();
    let _ = sent(&mut s, T0);
    let theirs = MAX_FRAME_LIMIT + 1;
    assert_eq!(
        s.handle_input(T0, &hello(PROTOCOL_VERSION, theirs, 4)),
        Err(Error::Incompatible(Incompatible::FrameTooLarge { theirs }))
    );
}

#[test]
fn the_hello_never_waits_for_the_throttle_and_too_slow_rates_are_refused() {
    let slow = ThrottleConfig {
        max_bytes_per_sec: 40,
        window_duration: Duration::from_millis(100),
    };
    let mut s = S::new(
        Config {
            throttle: slow,
            ..Config::new(NodeId(1))
        },
        T0,
    )
    .unwrap();
    // A frame first uses up the window…
    let mut buf = std::vec![0u8; S::max_transmit_len()];
    let hello_frame = s.poll_transmit(T0, &mut buf).unwrap().unwrap();
    assert!(matches!(
        decoded(&buf[..hello_frame.len]),
        Message::Hello(_)
    ));
    // …and the Hello did not count: the manifest request goes at once, too.
    let h = hello(PROTOCOL_VERSION, 1024, 4);
    assert!(s.handle_input(T0, &h).is_ok());
    let request = s.poll_transmit(T0, &mut buf).unwrap().unwrap();
    assert!(matches!(
        decoded(&buf[..request.len]),
        Message::ManifestRequest { .. }
    ));

    // 30 s idle timeout: a 256-byte frame must get out within 7.5 s, so 35 B/s at least.
    let too_slow = ThrottleConfig {
        max_bytes_per_sec: 1,
        ..slow
    };
    assert_eq!(
        S::new(
            Config {
                throttle: too_slow,
                ..Config::new(NodeId(1))
            },
            T0
        )
        .err(),
        Some(ConfigError::RateTooLow { rate: 1, min: 35 })
    );
    assert!(check_rate(ThrottleConfig::UNLIMITED, Duration::from_secs(1)).is_ok());
}
