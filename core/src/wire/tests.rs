use super::*;
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use std::string::String;
use std::vec::Vec;

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

/// Protocol version 1 is frozen: these messages always give these frames.
#[test]
fn golden_frames() {
    let hello = Message::Hello(Hello {
        protocol: 1,
        node_id: NodeId(300),
        max_frame: 256,
        max_requests: 8,
        capabilities: Capabilities::ALL,
    });
    let mut buf = [0u8; 64];
    // length 8 | tag 0, protocol 1, node 300 (varint ac 02), max_frame 256 (80 02),
    // max_requests 8, caps 3
    assert_eq!(
        hex(encode(&hello, &mut buf).unwrap()),
        "0800000000 01ac0280020803".replace(' ', "")
    );
    let put = Message::EventChunkPut {
        hash: ChunkHash::from_bytes([0xab; 32]),
        total_len: 3,
        offset: 1,
        data: b"yz",
    };
    let frame = encode(&put, &mut buf).unwrap();
    assert_eq!(
        hex(frame),
        std::format!("26000000 04{} 03 01 02 797a", "ab".repeat(32)).replace(' ', "")
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
            capabilities: Capabilities(u32::MAX),
        }),
        Message::ManifestRequest {
            after: None,
            limit: 7,
        },
        Message::ManifestRequest {
            after: Some(ids[1]),
            limit: u32::MAX,
        },
        Message::ManifestPage {
            ids: HashList::new(&ids),
            last: true,
        },
        Message::ManifestPage {
            ids: HashList::new(&[]),
            last: false,
        },
        Message::EventChunkGet { hash: ids[0] },
        Message::EventChunkPut {
            hash: ids[1],
            total_len: 5,
            offset: 0,
            data: b"hello",
        },
        Message::NotFound { hash: ids[0] },
        Message::Done,
        Message::Error {
            code: ErrorCode(999),
            reason: "unknown codes survive",
        },
    ] {
        round_trip(&m);
    }
}

#[test]
fn hash_lists_compare_by_content() {
    let ids = [ChunkHash::from_bytes([9; 32])];
    let page = Message::ManifestPage {
        ids: HashList::new(&ids),
        last: false,
    };
    let mut buf = [0u8; 128];
    let frame = encode(&page, &mut buf).unwrap();
    let Ok(Decoded::Frame {
        message: Message::ManifestPage { ids: decoded, .. },
        ..
    }) = decode(frame, 128)
    else {
        panic!("not a page");
    };
    assert_eq!(decoded.iter().collect::<Vec<_>>(), ids);
    assert_eq!(decoded.iter().len(), 1);
    // A decoded list equals a list built from the same hashes, and differs from others.
    assert_eq!(decoded, HashList::new(&ids));
    assert_ne!(decoded, HashList::new(&[ChunkHash::from_bytes([8; 32])]));
    assert_ne!(decoded, HashList::new(&[]));
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
    // A hash list of 33 bytes.
    let mut bad_page = std::vec![36, 0, 0, 0, 2, 33];
    bad_page.extend([0u8; 34]);
    assert_eq!(
        decode(&bad_page, 256),
        Err(FrameError::Decode(DecodeError::Malformed))
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
        hash: ChunkHash::default(),
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

proptest! {
    /// A put head followed by the data is exactly the encoded put.
    #[test]
    fn put_head_plus_data_is_the_put_frame(data in pvec(any::<u8>(), 0..3000), offset in any::<u32>(), total in any::<u32>()) {
        let hash = ChunkHash::of(&data);
        let put = Message::EventChunkPut { hash, total_len: total, offset, data: &data };
        let mut whole = std::vec![0u8; put.frame_len()];
        let whole = encode(&put, &mut whole).unwrap().to_vec();
        let mut head = [0u8; 64];
        let mut split = encode_put_head(&hash, total, offset, data.len(), &mut head).unwrap().to_vec();
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
    fn decoding_arbitrary_bodies_never_panics(mut body in pvec(any::<u8>(), 0..300), tag in 0u8..9) {
        // Start the body with a valid or nearly valid tag so decoding gets past it.
        if let Some(first) = body.first_mut() {
            *first = tag;
        }
        let mut frame = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
        frame.extend(&body);
        let _ = decode(&frame, MAX_FRAME_LIMIT);
    }

    /// A full page and a full piece always fit the frame size they were computed for.
    #[test]
    fn capacities_fit_their_frame(max_frame in MIN_FRAME..(1u32 << 20), seed in any::<u8>()) {
        let ids = std::vec![ChunkHash::from_bytes([seed; 32]); Message::page_capacity(max_frame)];
        let page = Message::ManifestPage { ids: HashList::new(&ids), last: true };
        prop_assert!(page.frame_len() <= max_frame as usize);
        let data = std::vec![seed; Message::piece_capacity(max_frame)];
        let put = Message::EventChunkPut { hash: ChunkHash::default(), total_len: u32::MAX, offset: u32::MAX, data: &data };
        prop_assert!(put.frame_len() <= max_frame as usize);
        prop_assert!(put.frame_len() + 16 > max_frame as usize, "capacity wastes more than 16 bytes");
    }

    #[test]
    fn puts_round_trip(data in pvec(any::<u8>(), 0..2000), offset in any::<u32>(), total in any::<u32>()) {
        round_trip(&Message::EventChunkPut { hash: ChunkHash::of(&data), total_len: total, offset, data: &data });
    }
}
