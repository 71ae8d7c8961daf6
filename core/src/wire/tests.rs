use super::*;
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use std::string::String;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| std::format!("{b:02x}")).collect()
}

fn round_trip(message: &Message<'_>) {
    let mut buf = std::vec![0u8; message.frame_len()];
    let frame = encode(message, &mut buf).unwrap();
    assert_eq!(frame.len(), message.frame_len());
    match decode(frame, MAX_FRAME_LIMIT).unwrap() {
        Decoded::Frame { message: back, len } => {
            assert_eq!(len, frame.len());
            assert_eq!(&back, message);
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Protocol version 2 is frozen: these messages always give these frames.
#[test]
fn golden_frames() {
    let hello = Message::Hello(Hello {
        protocol: 2,
        node_id: NodeId(300),
        max_frame: 256,
        max_requests: 8,
        max_ranges: 16,
        capabilities: Capabilities(Capabilities::PIECES.0 | Capabilities::RECONCILE.0),
        max_receive_rate: 1_000_000,
    });
    let mut buf = [0u8; 64];
    // length 12 | tag 0, protocol 2, node 300 (varint ac 02), max_frame 256 (80 02),
    // max_requests 8, max_ranges 16, caps 6, max_receive_rate 1,000,000 (c0 84 3d)
    assert_eq!(
        hex(encode(&hello, &mut buf).unwrap()),
        "0c000000 00 02 ac02 8002 08 10 06 c0843d".replace(' ', "")
    );
    let put = Message::EventChunkPut {
        total_len: 3,
        offset: 1,
        data: b"yz",
    };
    assert_eq!(
        hex(encode(&put, &mut buf).unwrap()),
        "06000000 04 03 01 02 797a".replace(' ', "")
    );
    let get = Message::GetRange {
        origin: NodeId(1),
        lo: 0,
        hi: 300,
    };
    assert_eq!(
        hex(encode(&get, &mut buf).unwrap()),
        "05000000 08 01 00 ac02".replace(' ', "")
    );
    let answer = Message::Answer {
        last: true,
        entries: &[0, 0],
    };
    assert_eq!(
        hex(encode(&answer, &mut buf).unwrap()),
        "05000000 02 01 02 0000".replace(' ', "")
    );
    // Live sessions: capability bit 3, and three messages.
    let optional = Capabilities(Capabilities::LZ4.0 | Capabilities::LIST.0 | Capabilities::ZSTD.0);
    assert_eq!(Capabilities::ALL.without(optional).0, 0b1000_1110);
    assert_eq!(Capabilities::KEEPALIVE.0, 1 << 7);
    assert_eq!(Capabilities::LIST.0, 1 << 5);
    assert_eq!(Capabilities::LZ4.0, 1 << 4);
    assert_eq!(Capabilities::ZSTD.0, 1 << 6);
    let have = Message::Have {
        origin: NodeId(7),
        lo: 128,
        hi: 130,
    };
    assert_eq!(
        hex(encode(&have, &mut buf).unwrap()),
        "06000000 0a 07 8001 8201".replace(' ', "")
    );
    assert_eq!(
        hex(encode(&Message::Resync, &mut buf).unwrap()),
        "01000000 0b".replace(' ', "")
    );
    assert_eq!(
        hex(encode(&Message::KeepAlive, &mut buf).unwrap()),
        "01000000 0c".replace(' ', "")
    );
}

#[test]
fn every_message_round_trips() {
    let ids = [
        ChunkHash::from_bytes([1; 32]),
        ChunkHash::from_bytes([2; 32]),
    ];
    for m in [
        Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            node_id: NodeId(u64::MAX),
            max_frame: DEFAULT_MAX_FRAME,
            max_requests: u16::MAX,
            max_ranges: u16::MAX,
            capabilities: Capabilities(u32::MAX),
            max_receive_rate: u64::MAX,
        }),
        Message::Query {
            query: b"any bytes",
        },
        Message::Query { query: &[] },
        Message::Answer {
            last: false,
            entries: &[1, 2, 3],
        },
        Message::EventChunkGet { hash: ids[0] },
        Message::EventChunkPut {
            total_len: 5,
            offset: 0,
            data: b"hello",
        },
        Message::NotFound { hash: ids[1] },
        Message::Done,
        Message::Error {
            code: ErrorCode(999),
            reason: "unknown codes survive",
        },
        Message::GetRange {
            origin: NodeId(u64::MAX),
            lo: u64::MAX - 1,
            hi: u64::MAX,
        },
        Message::RangeEnd,
        Message::Have {
            origin: NodeId(u64::MAX),
            lo: 0,
            hi: u64::MAX,
        },
        Message::Resync,
        Message::KeepAlive,
        Message::EventChunkPutLz4 {
            total_len: 70_000,
            offset: 65_536,
            len: 4_464,
            data: b"compressed",
        },
        Message::GetIds {
            origin: NodeId(u64::MAX),
            lo: 0,
            hi: u64::MAX,
        },
        Message::Ids {
            next: 1 << 40,
            ids: &[7; 64],
        },
        Message::EventChunkPutZstd {
            total_len: 70_000,
            offset: 65_536,
            len: 4_464,
            data: b"compressed",
        },
    ] {
        round_trip(&m);
    }
}

#[test]
fn incomplete_oversize_and_malformed_frames() {
    let mut buf = [0u8; 64];
    let frame = encode(&Message::Done, &mut buf).unwrap().to_vec();
    assert_eq!(
        decode(&frame[..2], 256),
        Ok(Decoded::Incomplete {
            needed: FRAME_HEADER
        })
    );
    assert_eq!(
        decode(&[9, 0, 0, 0, 6], 256),
        Ok(Decoded::Incomplete { needed: 13 })
    );
    // Refused from the header alone, whatever follows.
    assert_eq!(
        decode(&[0xff, 0xff, 0xff, 0xff], 256),
        Err(FrameError::TooLarge {
            len: u64::from(u32::MAX) + 4,
            max: 256
        })
    );
    assert_eq!(
        decode(&[253, 0, 0, 0], 256),
        Err(FrameError::TooLarge { len: 257, max: 256 })
    );
    // Unknown tag.
    assert_eq!(
        decode(&[1, 0, 0, 0, 42], 256),
        Err(FrameError::Decode(DecodeError::Malformed))
    );
    // A body longer than its message.
    assert_eq!(
        decode(&[2, 0, 0, 0, 6, 0], 256),
        Err(FrameError::Decode(DecodeError::TrailingBytes { extra: 1 }))
    );
    // A body that ends inside its message.
    assert_eq!(
        decode(&[1, 0, 0, 0, 3], 256),
        Err(FrameError::Decode(DecodeError::Truncated))
    );
    // A byte string longer than its frame.
    assert_eq!(
        decode(&[3, 0, 0, 0, 1, 9, 0], 256),
        Err(FrameError::Decode(DecodeError::Truncated))
    );
    // Invalid UTF-8 in an error reason.
    assert_eq!(
        decode(&[4, 0, 0, 0, 7, 1, 1, 0xff], 256),
        Err(FrameError::Decode(DecodeError::Malformed))
    );
    // Two frames back to back: the first is decoded and its length reported.
    let mut two = frame.clone();
    two.extend(&frame);
    assert_eq!(
        decode(&two, 256),
        Ok(Decoded::Frame {
            message: Message::Done,
            len: frame.len()
        })
    );
}

#[test]
fn small_buffers_report_the_size_needed() {
    let put = Message::EventChunkPut {
        total_len: 100,
        offset: 0,
        data: &[7; 100],
    };
    let mut buf = [0u8; 50];
    assert_eq!(
        encode(&put, &mut buf),
        Err(InsufficientSize {
            required: put.frame_len()
        })
    );
    assert_eq!(
        encode(&put, &mut buf[..2]),
        Err(InsufficientSize {
            required: put.frame_len()
        })
    );
}

/// The frame of a compressed piece: tag 13 (LZ4) or 16 (zstd), then the chunk's length,
/// the offset, the piece's length uncompressed and the compressed bytes.
#[test]
fn golden_compressed_piece() {
    let (total_len, offset, len, data) = (300, 0, 300, b"xyz".as_slice());
    let lz4 = Message::EventChunkPutLz4 {
        total_len,
        offset,
        len,
        data,
    };
    let mut buf = [0u8; 32];
    assert_eq!(
        hex(encode(&lz4, &mut buf).unwrap()),
        "0a000000 0d ac02 00 ac02 03 78797a".replace(' ', "")
    );
    let zstd = Message::EventChunkPutZstd {
        total_len,
        offset,
        len,
        data,
    };
    assert_eq!(
        hex(encode(&zstd, &mut buf).unwrap()),
        "0a000000 10 ac02 00 ac02 03 78797a".replace(' ', "")
    );
}

/// The frames of a listing: `GetIds` (tag 14, as `GetRange`), and `Ids` (tag 15: `next`,
/// then the hashes as one byte string), which `encode_ids` writes.
#[test]
fn golden_listing_frames() {
    let mut buf = [0u8; 128];
    let get = Message::GetIds {
        origin: NodeId(1),
        lo: 0,
        hi: 300,
    };
    assert_eq!(
        hex(encode(&get, &mut buf).unwrap()),
        "05000000 0e 01 00 ac02".replace(' ', "")
    );
    let id = ChunkHash::from_bytes([0xab; 32]);
    let frame = encode_ids(300, [id].iter(), &mut buf).unwrap().to_vec();
    assert_eq!(
        hex(&frame),
        std::format!("24000000 0f ac02 20 {}", "ab".repeat(32)).replace(' ', "")
    );
    let Decoded::Frame { message, .. } = decode(&frame, 256).unwrap() else {
        panic!("a frame");
    };
    assert_eq!(
        message,
        Message::Ids {
            next: 300,
            ids: &[0xab; 32]
        }
    );
    assert_eq!(
        ids_of(&[0xab; 32]).unwrap().collect::<std::vec::Vec<_>>(),
        [id]
    );
    assert!(ids_of(&[0; 33]).is_none(), "not whole hashes");
    assert_eq!(ids_capacity(256), (256 - ids_frame_len(0)) / 32);
}

proptest! {
    /// A piece compressed by the sender, with either codec, decodes as the message of
    /// that codec and decompresses to its bytes; one that would not save enough is left
    /// to be sent raw.
    #[test]
    #[cfg(feature = "lz4-compress")]
    fn compressed_pieces_round_trip(raw in pvec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 1..3000), frame in 64usize..4096) {
        use crate::session::{Encoding, Piece};
        for codec in Codec::PREFERENCE.into_iter().filter(|c| c.compresses()) {
            let mut buf = std::vec![0u8; put_compressed_buffer(raw.len())];
            let total = raw.len() as u32 + 10;
            let Some(n) = encode_put_compressed(codec, (total, 10), &raw, &mut buf, frame) else {
                continue;
            };
            prop_assert!(n <= frame);
            let Decoded::Frame { message, len } = decode(&buf[..n], frame as u32).unwrap() else {
                panic!("a whole frame");
            };
            prop_assert_eq!(len, n);
            let (total_len, offset, len, data, encoding) = match message {
                Message::EventChunkPutLz4 { total_len, offset, len, data } => (total_len, offset, len, data, Encoding::Lz4),
                Message::EventChunkPutZstd { total_len, offset, len, data } => (total_len, offset, len, data, Encoding::Zstd),
                other => panic!("a compressed piece, not {other:?}"),
            };
            prop_assert_eq!(encoding == Encoding::Zstd, codec == Codec::Zstd);
            prop_assert_eq!((total_len, offset, len as usize), (total, 10, raw.len()));
            prop_assert!(data.len() < raw.len() - raw.len() / 16 || raw.len() < 16);
            let piece = Piece { offset, total_len, len, data, encoding, last: false };
            let mut out = std::vec![0u8; raw.len()];
            prop_assert_eq!(piece.write_to(&mut out), Ok(()));
            prop_assert_eq!(out, raw.clone());
        }
    }

    /// A put head followed by the data is exactly the encoded put.
    #[test]
    fn put_head_plus_data_is_the_put_frame(data in pvec(any::<u8>(), 0..3000), offset in any::<u32>(), total in any::<u32>()) {
        let put = Message::EventChunkPut { total_len: total, offset, data: &data };
        let mut whole = std::vec![0u8; put.frame_len()];
        let whole = encode(&put, &mut whole).unwrap().to_vec();
        let mut head = [0u8; 64];
        let mut split = encode_put_head(total, offset, data.len(), &mut head).unwrap().to_vec();
        split.extend_from_slice(&data);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in pvec(any::<u8>(), 0..300), max in 0u32..400) {
        match decode(&bytes, max) {
            Ok(Decoded::Frame { len, .. }) => prop_assert!(len <= bytes.len() && len <= max as usize),
            Ok(Decoded::Incomplete { needed }) => prop_assert!(needed > bytes.len()),
            Err(_) => {}
        }
    }

    #[test]
    fn decoding_arbitrary_bodies_never_panics(mut body in pvec(any::<u8>(), 0..300), tag in 0u8..11) {
        // Start the body with a valid or nearly valid tag so decoding gets past it.
        if let Some(first) = body.first_mut() {
            *first = tag;
        }
        let mut frame = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
        frame.extend(&body);
        let _ = decode(&frame, MAX_FRAME_LIMIT);
    }

    /// A full piece and the largest answer always fit the frame size they were computed for.
    #[test]
    fn capacities_fit_their_frame(max_frame in MIN_FRAME..(1u32 << 20), seed in any::<u8>()) {
        let entries = std::vec![seed; max_frame as usize - RECON_OVERHEAD];
        let answer = Message::Answer { last: true, entries: &entries };
        prop_assert!(answer.frame_len() <= max_frame as usize);
        let data = std::vec![seed; Message::piece_capacity(max_frame)];
        let put = Message::EventChunkPut { total_len: u32::MAX, offset: u32::MAX, data: &data };
        prop_assert!(put.frame_len() <= max_frame as usize);
        prop_assert!(put.frame_len() + 16 > max_frame as usize, "capacity wastes more than 16 bytes");
    }

    #[test]
    fn puts_round_trip(data in pvec(any::<u8>(), 0..2000), offset in any::<u32>(), total in any::<u32>()) {
        round_trip(&Message::EventChunkPut { total_len: total, offset, data: &data });
    }
}

/// Messages of every kind, their fields anywhere in their range (numbers of every varint
/// length), their byte strings of any length.
fn arb_message(
    bytes: &'static [u8],
    text: &'static str,
) -> impl Strategy<Value = Message<'static>> {
    use std::vec;
    let n = bytes.len();
    let num = || prop_oneof![0u64..300, any::<u64>()];
    let hash = || any::<[u8; 32]>().prop_map(ChunkHash::from_bytes);
    prop_oneof![
        (
            any::<u16>(),
            num(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            num()
        )
            .prop_map(
                |(protocol, node, max_frame, max_requests, max_ranges, caps, rate)| {
                    Message::Hello(Hello {
                        protocol,
                        node_id: NodeId(node),
                        max_frame,
                        max_requests,
                        max_ranges,
                        capabilities: Capabilities(caps),
                        max_receive_rate: rate,
                    })
                }
            ),
        (0..=n).prop_map(move |len| Message::Query {
            query: &bytes[..len]
        }),
        (any::<bool>(), 0..=n).prop_map(move |(last, len)| Message::Answer {
            last,
            entries: &bytes[..len]
        }),
        hash().prop_map(|hash| Message::EventChunkGet { hash }),
        (any::<u32>(), any::<u32>(), 0..=n).prop_map(move |(total_len, offset, len)| {
            Message::EventChunkPut {
                total_len,
                offset,
                data: &bytes[..len],
            }
        }),
        hash().prop_map(|hash| Message::NotFound { hash }),
        Just(Message::Done),
        (any::<u16>(), 0..=text.len()).prop_map(move |(code, len)| Message::Error {
            code: ErrorCode(code),
            reason: text.get(..len).unwrap_or(text),
        }),
        (num(), num(), num()).prop_map(|(o, lo, hi)| Message::GetRange {
            origin: NodeId(o),
            lo,
            hi
        }),
        Just(Message::RangeEnd),
        (num(), num(), num()).prop_map(|(o, lo, hi)| Message::Have {
            origin: NodeId(o),
            lo,
            hi
        }),
        Just(Message::Resync),
        Just(Message::KeepAlive),
    ]
}

/// The frame of `message` as postcard's serde encoding writes it.
fn postcard_frame(message: &Message<'_>) -> std::vec::Vec<u8> {
    let mut buf = [0u8; 512];
    let body = postcard::to_slice(message, &mut buf).unwrap();
    let mut frame = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

static BYTES: [u8; 200] = {
    let mut b = [0u8; 200];
    let mut i = 0;
    while i < b.len() {
        b[i] = (i * 37) as u8;
        i += 1;
    }
    b
};

proptest! {
    /// The encoder writes exactly the bytes postcard writes for the same message (the
    /// derived `Serialize` is the reference), counts them exactly, and reads them back.
    #[test]
    fn frames_are_postcards_encoding(m in arb_message(&BYTES, "a reason, ünïcode included")) {
        let theirs = postcard_frame(&m);
        prop_assert_eq!(m.frame_len(), theirs.len());
        let mut buf = std::vec![0u8; theirs.len()];
        prop_assert_eq!(encode(&m, &mut buf).unwrap(), &theirs[..]);
        prop_assert_eq!(
            decode(&theirs, MAX_FRAME_LIMIT),
            Ok(Decoded::Frame { message: m, len: theirs.len() })
        );
        // One byte short: refused, with the size needed.
        prop_assert_eq!(
            encode(&m, &mut buf[..theirs.len() - 1]),
            Err(InsufficientSize { required: theirs.len() })
        );
    }

    /// Any body decodes as postcard decodes it with the derived `Deserialize`: the same
    /// message, or an error of the same cause.
    #[test]
    fn decoding_agrees_with_postcard(mut body in pvec(any::<u8>(), 0..80), tag in 0u8..14) {
        if let Some(first) = body.first_mut() {
            *first = tag;
        }
        let mut frame = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
        frame.extend(&body);
        let ours = decode(&frame, MAX_FRAME_LIMIT);
        let theirs = match postcard::take_from_bytes::<Message<'_>>(&body) {
            Ok((message, [])) => Ok(Decoded::Frame { message, len: frame.len() }),
            Ok((_, extra)) => Err(FrameError::Decode(DecodeError::TrailingBytes { extra: extra.len() })),
            Err(e) => Err(FrameError::Decode(DecodeError::from_postcard(e))),
        };
        prop_assert_eq!(ours, theirs);
    }
}
