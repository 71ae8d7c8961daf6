//! Transcripts: one session fed scripted frames, its answers checked.

use std::vec::Vec;

use super::*;
use crate::event::NodeId;
use crate::hash::ChunkHash;
use crate::recon::codec::EntryWriter;
use crate::recon::{Fingerprint, KeyRange, Query};
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
        max_ranges: 16,
        capabilities: Capabilities::ALL,
        max_receive_rate: 0,
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

/// The frame of a query.
fn query(q: &Query<'_>) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let n = q.write(&mut buf).unwrap();
    frame(&Message::Query { query: &buf[..n] })
}

/// The frame of an answer to an origins query: for each origin, what the peer holds.
fn origins_answer(entries: &[(u64, Summary, Option<&[Run]>)], last: bool) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    let mut w = EntryWriter::new(&mut buf, entries.len()).unwrap();
    for (origin, summary, runs) in entries {
        let range = KeyRange::whole(NodeId(*origin));
        w.write(Some(NodeId(*origin)), &range, summary, *runs)
            .unwrap();
    }
    let n = w.finish();
    frame(&Message::Answer {
        last,
        entries: &buf[..n],
    })
}

/// What a peer that holds one chunk of `origin` covering `lo..hi` answers.
fn one_chunk(lo: u64, hi: u64) -> Summary {
    Summary {
        count: 1,
        first: lo,
        end: hi,
        fingerprint: Fingerprint([7; 16]),
    }
}

/// Answers the session's summary questions as a store that holds nothing.
fn hold_nothing(s: &mut S) {
    let mut tx = std::vec![0u8; S::max_transmit_len()];
    while let Some(Question::Summary(_)) = s.question() {
        s.summarized(&Summary::default(), Some(0), &mut tx).unwrap();
    }
}

/// A session whose reconciliation found `origin`'s `lo..hi` wanted and asked for it.
fn requesting_range(config: Config, origin: u64, lo: u64, hi: u64) -> S {
    let mut s = open_session(config);
    let out = sent(&mut s, T0);
    assert!(matches!(decoded(&out[0]), Message::Query { .. }));
    let runs = [Run { lo, hi }];
    let answer = origins_answer(&[(origin, one_chunk(lo, hi), Some(&runs))], true);
    assert!(s.handle_input(T0, &answer).is_ok());
    assert_eq!(
        s.question(),
        Some(Question::Summary(KeyRange::whole(NodeId(origin))))
    );
    hold_nothing(&mut s);
    let out = sent(&mut s, T0);
    assert_eq!(
        decoded(&out[0]),
        Message::GetRange {
            origin: NodeId(origin),
            lo,
            hi
        }
    );
    s
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
    let err = s.handle_input(T0, &hello(1, 1024, 4)).unwrap_err();
    let expected = Error::Incompatible(Incompatible::ProtocolVersion { ours: 2, theirs: 1 });
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
    assert_eq!(s.handle_input(T0, &hello(2, 1024, 4)), Err(expected));
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
    let config = Config {
        max_chunk_len: 100,
        ..Config::new(NodeId(1))
    };
    let mut s = open_session(config);
    let put = |offset, total_len, data: &[u8]| {
        frame(&Message::EventChunkPut {
            total_len,
            offset,
            data,
        })
    };
    assert_eq!(
        s.handle_input(T0, &put(0, 1, b"x")),
        Err(Error::Peer(PeerMisbehaved::UnrequestedChunk))
    );

    // The reconciliation finds the peer's chunk of origin 9 at 0..1 wanted.
    let mut s = requesting_range(config, 9, 0, 1);
    let xyz = chunk(9, 0, b"xyz");
    let n = xyz.len() as u32;
    let id = ChunkHash::of(&xyz);
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
    // The range is open until the peer ends it; then nothing is left to pull.
    assert!(sent(&mut s, T0).is_empty());
    assert!(s.handle_input(T0, &frame(&Message::RangeEnd)).is_ok());
    let out = sent(&mut s, T0);
    assert!(matches!(decoded(&out[0]), Message::Done));
    assert_eq!(s.poll_event(), Some(Event::PullComplete));
}

#[test]
fn a_chunk_outside_its_range_fails_the_session_and_is_not_stored() {
    for (origin, seq) in [(8, 0), (9, 5), (9, 2)] {
        let mut s = requesting_range(Config::new(NodeId(1)), 9, 2, 5);
        let bytes = chunk(origin, seq, b"elsewhere");
        let put = frame(&Message::EventChunkPut {
            total_len: bytes.len() as u32,
            offset: 0,
            data: &bytes,
        });
        assert!(s.handle_input(T0, &put).is_ok());
        if seq == 2 {
            // In the range: kept; a second chunk at the same key is before the next.
            assert!(s.finish_chunk(&bytes).is_ok());
            assert!(s.handle_input(T0, &put).is_ok());
        }
        assert_eq!(s.finish_chunk(&bytes), Err(FinishError::OutsideRange));
        assert_eq!(s.error(), Some(Error::Peer(PeerMisbehaved::OutsideRange)));
    }
}

#[test]
fn impossible_answers_are_refused() {
    let mut s = open_session(Config::new(NodeId(1)));
    let _ = sent(&mut s, T0);
    // Origins out of order.
    let answer = origins_answer(
        &[(5, one_chunk(0, 1), None), (3, one_chunk(0, 1), None)],
        true,
    );
    assert_eq!(
        s.clone().handle_input(T0, &answer),
        Err(Error::Peer(PeerMisbehaved::Recon(
            crate::recon::ReconError::BadSummary("origins out of order")
        )))
    );
    // An answer to nothing asked.
    assert!(s.handle_input(T0, &origins_answer(&[], true)).is_ok());
    assert_eq!(
        s.handle_input(T0, &origins_answer(&[], true)),
        Err(Error::Peer(PeerMisbehaved::Recon(
            crate::recon::ReconError::UnexpectedAnswer
        )))
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
    let mut tx = std::vec![0u8; S::max_transmit_len()];
    assert_eq!(
        s.summarized(&Summary::default(), None, &mut tx),
        Err(ApiMisuse::NotAsked)
    );
    assert_eq!(s.origins_listed(0, true), Err(ApiMisuse::NotAsked));
    assert_eq!(s.serve_chunk(10), Err(ApiMisuse::NotAsked));
    assert_eq!(s.chunk_not_found(), Err(ApiMisuse::NotAsked));
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

/// A session that does not reconcile, asked to fetch `id`, with its request in flight.
fn requesting(config: Config, id: ChunkHash) -> S {
    let mut s = open_session(Config {
        pull: false,
        ..config
    });
    assert_eq!(s.want(&[id]), 1);
    let out = sent(&mut s, T0);
    assert!(matches!(decoded(&out[0]), Message::EventChunkGet { hash } if hash == id));
    s
}

/// Feeds `bytes` as one whole piece of the chunk requested next and finishes it.
fn deliver(s: &mut S, bytes: &[u8]) -> Result<ChunkHash, FinishError> {
    let put = frame(&Message::EventChunkPut {
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
    assert_eq!(private[10], 0, "the privacy byte of the one event");
    private[10] = 2;
    let mut trailing = valid.clone();
    trailing.push(0);
    for bad in [b"random bytes".to_vec(), private, trailing] {
        let id = ChunkHash::of(&bad);
        let mut s = requesting(Config::new(NodeId(1)), id);
        assert!(matches!(
            deliver(&mut s, &bad),
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
    assert_eq!(deliver(&mut s, &valid), Ok(id));
}

#[test]
fn a_session_that_does_not_serve_shows_nothing_and_sends_no_chunk() {
    let mut s = open_session(Config {
        serve: false,
        ..Config::new(NodeId(1))
    });
    let _ = sent(&mut s, T0);
    let origins = query(&Query::Origins {
        after: None,
        limit: 16,
        max_runs: 4,
    });
    assert!(s.handle_input(T0, &origins).is_ok());
    // The adapter is never asked anything.
    assert_eq!(s.question(), None);
    let mut messages: Vec<Vec<u8>> = sent(&mut s, T0);
    let id = ChunkHash::of(&chunk(1, 0, b"mine"));
    let get = frame(&Message::EventChunkGet { hash: id });
    let range = frame(&Message::GetRange {
        origin: NodeId(1),
        lo: 0,
        hi: 10,
    });
    for request in [&get, &range, &get] {
        assert!(s.handle_input(T0, request).is_ok());
        assert_eq!(s.question(), None);
    }
    messages.extend(sent(&mut s, T0));
    let messages: Vec<_> = messages.iter().map(|f| decoded(f)).collect();
    assert_eq!(
        messages,
        [
            Message::Answer {
                last: true,
                entries: &[]
            },
            Message::NotFound { hash: id },
            Message::RangeEnd,
            Message::NotFound { hash: id },
        ]
    );
}

#[test]
fn a_peer_whose_chunks_keep_failing_is_dropped_at_the_limit() {
    let mut s = open_session(Config {
        max_failures: 3,
        pull: false,
        ..Config::new(NodeId(1))
    });
    let ids: Vec<ChunkHash> = (0..8u8).map(|i| ChunkHash::from_bytes([i; 32])).collect();
    assert_eq!(s.want(&ids), 8);
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
        serve: false,
        ..Config::new(NodeId(1))
    });
    let _ = sent(&mut s, T0);
    // A peer that sends a frame every second is never idle…
    let request = query(&Query::Origins {
        after: None,
        limit: 1,
        max_runs: 0,
    });
    for second in 1..5 {
        let now = Instant::from_millis(second * 1_000);
        s.handle_timeout(now);
        assert!(s.handle_input(now, &request).is_ok());
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
    // …and the Hello did not count: the first query goes at once, too.
    let h = hello(PROTOCOL_VERSION, 1024, 4);
    assert!(s.handle_input(T0, &h).is_ok());
    let request = s.poll_transmit(T0, &mut buf).unwrap().unwrap();
    assert!(matches!(
        decoded(&buf[..request.len]),
        Message::Query { .. }
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

/// A listing asks for the range it finds with `GetIds`, takes pages of hashes that move
/// the range on, and refuses a page listing more chunks than the sequence numbers it
/// passes (a peer cannot make a listing grow without bound), or one that does not move on.
#[test]
#[cfg(feature = "alloc")]
fn a_listing_takes_pages_that_move_on_and_refuses_more_hashes_than_the_range_holds() {
    let listing = || {
        let mut s = open_session(Config {
            list: true,
            serve: false,
            ..Config::new(NodeId(1))
        });
        let out = sent(&mut s, T0);
        assert!(matches!(decoded(&out[0]), Message::Query { .. }));
        let runs = [Run { lo: 10, hi: 110 }];
        let answer = origins_answer(&[(5, one_chunk(10, 110), Some(&runs))], true);
        assert!(s.handle_input(T0, &answer).is_ok());
        // Its own store is taken as empty, without a question.
        assert_eq!(s.question(), None);
        let out = sent(&mut s, T0);
        assert_eq!(
            decoded(&out[0]),
            Message::GetIds {
                origin: NodeId(5),
                lo: 10,
                hi: 110
            }
        );
        s
    };
    let mut s = listing();
    let page = frame(&Message::Ids {
        next: 15,
        ids: &[1; 96],
    });
    let handled = s.handle_input(T0, &page).unwrap();
    assert_eq!(handled.listed, Some(&[1u8; 96][..]));
    let last = frame(&Message::Ids {
        next: 110,
        ids: &[2; 32],
    });
    assert_eq!(
        s.handle_input(T0, &last).unwrap().listed.map(<[u8]>::len),
        Some(32)
    );
    let out = sent(&mut s, T0);
    assert_eq!(decoded(&out[0]), Message::Done, "the listing is over");

    for bad in [
        Message::Ids {
            next: 11,
            ids: &[1; 64],
        },
        Message::Ids { next: 10, ids: &[] },
        Message::Ids { next: 5, ids: &[] },
        Message::Ids {
            next: 20,
            ids: &[1; 33],
        },
    ] {
        let mut s = listing();
        let err = s.handle_input(T0, &frame(&bad)).unwrap_err();
        assert_eq!(err, Error::Peer(PeerMisbehaved::BadPiece), "{bad:?}");
    }
    // A page that goes back behind where the listing stands.
    let mut s = listing();
    assert!(s.handle_input(T0, &page).is_ok());
    let back = frame(&Message::Ids { next: 12, ids: &[] });
    let err = s.handle_input(T0, &back).unwrap_err();
    assert_eq!(err, Error::Peer(PeerMisbehaved::BadPiece));
}

/// A build that does not announce a codec refuses a piece in it, even one it asked for,
/// with a typed error naming it.
#[test]
fn a_piece_in_a_codec_this_build_does_not_take_is_refused() {
    let s = requesting_range(Config::new(NodeId(1)), 9, 0, 1);
    let (total_len, offset, len, data) = (3, 0, 3, b"xyz".as_slice());
    for (message, codec, encoding) in [
        (
            Message::EventChunkPutZstd {
                total_len,
                offset,
                len,
                data,
            },
            Capabilities::ZSTD,
            Encoding::Zstd,
        ),
        (
            Message::EventChunkPutLz4 {
                total_len,
                offset,
                len,
                data,
            },
            Capabilities::LZ4,
            Encoding::Lz4,
        ),
    ] {
        let bytes = frame(&message);
        let mut session = s.clone();
        let result = session
            .handle_input(T0, &bytes)
            .map(|h| h.piece.map(|p| p.encoding));
        if Capabilities::ALL.contains(codec) {
            // Taken, to be decompressed (`Piece::write_to`) and verified as any piece.
            assert_eq!(result, Ok(Some(encoding)));
        } else {
            assert!(
                matches!(result, Err(Error::Peer(PeerMisbehaved::Unexpected(why))) if why.contains("did not announce")),
                "{result:?}"
            );
        }
    }
}

/// A peer shown only some origins learns nothing of the others from the origins the
/// session lists: whatever the store holds besides them, and wherever the peer starts and
/// however many it asks for, it gets the same answer frames.
#[cfg(feature = "secure")]
#[test]
fn a_peer_shown_some_origins_learns_nothing_of_the_others_from_their_listing() {
    use crate::scope::Scope;
    let shown = [10u64, 30];
    let answers = |store: &[u64], after: Option<u64>, limit: u16| -> Vec<Vec<u8>> {
        let mut s = S::new(Config::new(NodeId(1)), T0).unwrap();
        let scope = Scope::only(&shown.map(NodeId)).unwrap();
        s.restrict(scope, Scope::Nothing);
        let _ = sent(&mut s, T0);
        let h = hello(PROTOCOL_VERSION, 1024, 4);
        assert!(s.handle_input(T0, &h).is_ok());
        let _ = s.poll_event();
        let _ = sent(&mut s, T0);
        let mut frames = Vec::new();
        // Two queries: the one asked, then the next page after what it listed.
        let mut cursor = after.map(NodeId);
        for _ in 0..2 {
            let q = query(&Query::Origins {
                after: cursor,
                limit,
                max_runs: 4,
            });
            assert!(s.handle_input(T0, &q).is_ok());
            let mut tx = std::vec![0u8; S::max_transmit_len()];
            let mut listed = Vec::new();
            loop {
                match s.question() {
                    Some(Question::Origins { after }) => {
                        let later: Vec<NodeId> = store
                            .iter()
                            .map(|o| NodeId(*o))
                            .filter(|o| after.is_none_or(|a| *o > a))
                            .collect();
                        let buf = s.origins_buffer();
                        let n = later.len().min(buf.len());
                        buf[..n].copy_from_slice(&later[..n]);
                        s.origins_listed(n, n == later.len()).unwrap();
                    }
                    Some(Question::Summary(range)) => {
                        listed.push(range.origin);
                        s.summarized(&one_chunk(0, 1), Some(0), &mut tx).unwrap();
                    }
                    _ => break,
                }
            }
            frames.extend(sent(&mut s, T0));
            // Only shown origins the store holds are listed, in order.
            assert!(
                listed
                    .iter()
                    .all(|o| shown.contains(&o.0) && store.contains(&o.0))
            );
            assert!(listed.windows(2).all(|w| w[0] < w[1]));
            match listed.last() {
                Some(last) => cursor = Some(*last),
                None => break,
            }
        }
        frames
    };
    let plain = [10u64, 30];
    let crowded = [1u64, 5, 10, 11, 12, 20, 29, 30, 31, 50, u64::MAX];
    for after in [
        None,
        Some(0),
        Some(5),
        Some(10),
        Some(11),
        Some(29),
        Some(30),
        Some(99),
    ] {
        for limit in 1..=3 {
            assert_eq!(
                answers(&plain, after, limit),
                answers(&crowded, after, limit),
                "after {after:?}, limit {limit}"
            );
        }
    }
    // A shown origin the store does not hold is not listed either.
    assert_eq!(answers(&[10], None, 2), answers(&[5, 10, 20], None, 2));
}

/// A side waiting for its store (a verified chunk not yet answered for) sends `KeepAlive`
/// outside a live session only to a peer that announced it takes them; its idle time
/// starts again while it waits, up to `MAX_STORE_WAITS` times, and then it times out.
#[test]
fn a_side_waiting_for_its_store_keeps_the_link_alive_for_a_while() {
    for (capabilities, sends) in [
        (Capabilities::ALL, true),
        (Capabilities::ALL.without(Capabilities::KEEPALIVE), false),
    ] {
        let mut s = S::new(Config::new(NodeId(1)), T0).unwrap();
        let hello = frame(&Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            node_id: NodeId(2),
            max_frame: 1024,
            max_requests: 4,
            max_ranges: 16,
            capabilities,
            max_receive_rate: 0,
        }));
        let _ = s.handle_input(T0, &hello).unwrap();
        let _ = sent(&mut s, T0);
        // As `finish_chunk` leaves it for a chunk the store has yet to answer for.
        s.pull.unanswered = 1;
        let idle = s.config.idle_timeout;
        assert_eq!(s.keepalive_at().is_some(), sends);
        let mut now = T0;
        for _ in 0..MAX_STORE_WAITS {
            now = s.poll_timeout().unwrap().max(now + idle);
            s.handle_timeout(now);
            assert!(s.error().is_none(), "waiting for its store is not idle");
            let frames = sent(&mut s, now);
            assert_eq!(
                frames
                    .iter()
                    .any(|f| matches!(decoded(f), Message::KeepAlive)),
                sends
            );
        }
        now = s.poll_timeout().unwrap().max(now + idle);
        s.handle_timeout(now);
        assert_eq!(
            s.error(),
            Some(Error::TimedOut),
            "a store that never answers"
        );
    }
}
