//! Transcripts: one session fed scripted frames, its answers checked.

use std::vec::Vec;

use super::*;
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

fn decoded(frame: &[u8]) -> Message<'_> {
    match wire::decode(frame, MAX_FRAME_LIMIT).unwrap() {
        Decoded::Frame { message, .. } => message,
        Decoded::Incomplete { .. } => panic!("incomplete frame"),
    }
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
    let id = ChunkHash::of(b"xyz");
    let page = frame(&Message::ManifestPage {
        ids: HashList::new(&[id]),
        last: true,
    });
    assert!(s.handle_input(T0, &page).is_ok());
    assert_eq!(s.poll_event(), Some(Event::LookupNeeded));
    assert_eq!(s.lookups(), &[id]);
    s.resolve_lookups(|_| false).unwrap();
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
        s.clone().handle_input(T0, &put(1, 3, b"y")),
        Err(Error::Peer(PeerMisbehaved::BadPiece))
    );
    assert_eq!(
        s.clone().handle_input(T0, &put(0, 2, b"xyz")),
        Err(Error::Peer(PeerMisbehaved::BadPiece))
    );

    // In order, the pieces arrive; the whole chunk verifies once.
    let first = put(0, 3, b"xy");
    let h = s.handle_input(T0, &first).unwrap();
    assert_eq!(h.piece.map(|p| (p.offset, p.last)), Some((0, false)));
    let second = put(2, 3, b"z");
    let h = s.handle_input(T0, &second).unwrap();
    assert_eq!(h.piece.map(|p| p.last), Some(true));
    assert_eq!(
        s.handle_input(T0, &first),
        Err(Error::ApiMisuse(ApiMisuse::FinishChunkFirst)),
        "not fatal: the caller must finish the chunk first"
    );
    assert_eq!(s.finish_chunk(b"xyz").map(|v| v.id()), Ok(id));
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
    assert_eq!(
        s.resolve_lookups(|_| true),
        Err(ApiMisuse::NoLookupsPending)
    );
    assert_eq!(
        s.send_manifest_page(&[], true),
        Err(ApiMisuse::NoManifestRequest)
    );
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
