//! Keys, node ids, the handshake between two links, and records.

use std::format;
use std::string::ToString;

use super::*;

fn open_pair() -> (Link, Link) {
    let (ka, kb) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let mut a = Link::Handshaking(Handshake::new(&ka, Role::Initiator, [3; 32]));
    let mut b = Link::Handshaking(Handshake::new(&kb, Role::Responder, [4; 32]));
    let mut buf = [0u8; 256];
    let mut sizes = std::vec::Vec::new();
    for _ in 0..3 {
        let (from, to) = if a.reads_handshake() {
            (&mut b, &mut a)
        } else {
            (&mut a, &mut b)
        };
        let n = from.write_handshake(&mut buf).unwrap().unwrap();
        sizes.push(n);
        assert_eq!(record_len(&buf), Some(n - RECORD_HEADER));
        to.read_handshake(&buf[RECORD_HEADER..n]).unwrap();
    }
    // The message sizes the module docs give.
    assert_eq!(sizes, [34, 98, 66]);
    assert_eq!(a.remote(), Some(kb.public()));
    assert_eq!(b.remote(), Some(ka.public()));
    (a, b)
}

#[test]
fn a_handshake_proves_both_keys_in_three_messages() {
    let (a, b) = open_pair();
    assert!(a.is_open() && b.is_open());
}

#[test]
fn records_round_trip_and_any_change_fails() {
    let (mut a, mut b) = open_pair();
    let mut buf = [0u8; 64];
    buf[2..7].copy_from_slice(b"hello");
    let n = a.seal(&mut buf, 5).unwrap();
    assert_eq!(n, 5 + RECORD_OVERHEAD);
    assert_ne!(&buf[2..7], b"hello");
    let mut copy = buf;
    assert_eq!(b.open(&mut buf[2..n]), Ok(5));
    assert_eq!(&buf[2..7], b"hello");
    // The same record again (a replay) is refused: its nonce is spent.
    assert_eq!(b.open(&mut copy[2..n]), Err(LinkError::BadRecord));
    // And the link stays failed.
    assert!(!b.is_open());

    let (mut a, mut b) = open_pair();
    let mut first = [0u8; 64];
    let mut second = [0u8; 64];
    let n1 = a.seal(&mut first, 3).unwrap();
    let n2 = a.seal(&mut second, 3).unwrap();
    // Out of order.
    assert_eq!(b.open(&mut second[2..n2]), Err(LinkError::BadRecord));
    let _ = n1;

    let (mut a, mut b) = open_pair();
    let n = a.seal(&mut first, 3).unwrap();
    first[n - 1] ^= 0x80;
    assert_eq!(b.open(&mut first[2..n]), Err(LinkError::BadRecord));
    // Shorter than a tag.
    assert_eq!(b.open(&mut [0u8; 15]), Err(LinkError::BadRecord));
}

#[test]
fn a_wrong_or_modified_handshake_message_fails() {
    let kb = Keypair::from_secret([2; 32]);
    let ka = Keypair::from_secret([1; 32]);
    let mut a = Link::Handshaking(Handshake::new(&ka, Role::Initiator, [3; 32]));
    let mut b = Link::Handshaking(Handshake::new(&kb, Role::Responder, [4; 32]));
    let mut buf = [0u8; 256];
    let n = a.write_handshake(&mut buf).unwrap().unwrap();
    b.read_handshake(&buf[2..n]).unwrap();
    let n = b.write_handshake(&mut buf).unwrap().unwrap();
    buf[40] ^= 1;
    assert_eq!(a.read_handshake(&buf[2..n]), Err(LinkError::Handshake));
    // A message with a payload, or of the wrong length, fails too.
    let mut c = Link::Handshaking(Handshake::new(&kb, Role::Responder, [5; 32]));
    assert_eq!(c.read_handshake(&[7; 40]), Err(LinkError::Handshake));
    let mut d = Link::Handshaking(Handshake::new(&kb, Role::Responder, [5; 32]));
    assert_eq!(d.read_handshake(&[7; 10]), Err(LinkError::Handshake));
    // Writing out of turn does nothing.
    let mut e = Link::Handshaking(Handshake::new(&kb, Role::Responder, [5; 32]));
    assert_eq!(e.write_handshake(&mut buf), Ok(None));
}

#[test]
fn node_ids_come_from_keys_and_keys_print_as_hex() {
    let key = *Keypair::from_secret([1; 32]).public();
    // Fixed forever: a node's id must not change between releases.
    let id = key.node_id();
    assert_eq!(id, Keypair::from_secret([1; 32]).node_id());
    assert_ne!(id, Keypair::from_secret([2; 32]).node_id());
    let derived = blake3::derive_key("chunk-sync 2026 node id", &key.0);
    assert_eq!(id.0.to_le_bytes(), derived[..8]);
    let hex = key.to_string();
    assert_eq!(hex.len(), 64);
    assert_eq!(hex.parse::<PublicKey>(), Ok(key));
    assert_eq!(hex.to_uppercase().parse::<PublicKey>(), Ok(key));
    for bad in ["", "00", &hex[1..], &format!("{}g", &hex[1..])] {
        assert_eq!(bad.parse::<PublicKey>(), Err(KeyParseError), "{bad}");
    }
    let shown = format!("{:?}", Keypair::from_secret([0x42; 32]));
    assert!(!shown.contains("42, 42") && !shown.contains("4242"));
}
