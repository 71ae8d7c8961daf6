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
    assert_eq!(sizes, [34, 130, 98]);
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

#[test]
fn a_handshake_whose_identity_key_is_not_its_static_key_fails() {
    let (ka, kb, kc) = (
        Keypair::from_secret([1; 32]),
        Keypair::from_secret([2; 32]),
        Keypair::from_secret([5; 32]),
    );
    // b proves its own static key but claims c's identity key.
    let mut liar = Handshake::new(&kb, Role::Responder, [4; 32]);
    liar.public = *kc.public();
    let mut a = Link::Handshaking(Handshake::new(&ka, Role::Initiator, [3; 32]));
    let mut b = Link::Handshaking(liar);
    let mut buf = [0u8; 256];
    let n = a.write_handshake(&mut buf).unwrap().unwrap();
    b.read_handshake(&buf[RECORD_HEADER..n]).unwrap();
    let n = b.write_handshake(&mut buf).unwrap().unwrap();
    assert_eq!(
        a.read_handshake(&buf[RECORD_HEADER..n]),
        Ok(()),
        "the message itself opens"
    );
    // a finds out as the handshake finishes on its side, with its last message.
    assert_eq!(a.write_handshake(&mut buf), Err(LinkError::Handshake));
    assert!(!a.is_open() && a.remote().is_none());
}

#[test]
fn a_key_pairs_link_key_is_the_static_key_its_handshake_proves() {
    let keys = Keypair::from_secret([9; 32]);
    assert_eq!(keys.public().link_key(), Some(X25519::pubkey(&keys.dh)));
    assert_eq!(Keypair::from_secret(*keys.secret()).public(), keys.public());
}

#[test]
fn a_public_key_that_is_no_ed25519_point_does_not_parse() {
    // y = 2 is not on the curve.
    let mut hex = std::string::String::from("02");
    hex.push_str(&"00".repeat(31));
    assert_eq!(hex.parse::<PublicKey>(), Err(KeyParseError));
    let good = Keypair::from_secret([1; 32]).public().to_string();
    assert!(good.parse::<PublicKey>().is_ok());
}

proptest::proptest! {
    /// Any change to a signed chunk (a byte of its events, header or signature) fails its
    /// origin's key, and so does a chunk signed by any other key.
    #[test]
    fn any_change_to_a_signed_chunk_fails_its_signature(
        payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
        at in proptest::prelude::any::<proptest::sample::Index>(),
        bit in 0u8..8,
        other in 10u8..200,
    ) {
        use crate::chunk::{Chunker, Push};
        let keys = Keypair::from_secret([3; 32]);
        let mut buf = [0u8; 512];
        let mut chunker = Chunker::new(keys.node_id(), 4, 0, &mut buf).unwrap().signed_by(&keys).unwrap();
        let event = crate::Event {
            origin: keys.node_id(), seq: 1, timestamp: 5, kind: "k",
            privacy: crate::Privacy::Public, payload: &payload,
        };
        proptest::prop_assert_eq!(chunker.push(&event), Ok(Push::Added));
        let bytes = chunker.seal().unwrap().bytes.to_vec();
        let view = ChunkView::validated(&bytes).unwrap();
        proptest::prop_assert_eq!(keys.public().verify_chunk(&view), Ok(()));
        let stranger = Keypair::from_secret([other; 32]);
        proptest::prop_assert_eq!(stranger.public().verify_chunk(&view), Err(SealError::BadSignature));
        let mut bad = bytes.clone();
        let i = at.index(bad.len());
        bad[i] ^= 1 << bit;
        if let Ok(view) = ChunkView::parse(&bad) {
            proptest::prop_assert!(keys.public().verify_chunk(&view).is_err());
        }
    }
}

#[test]
fn hashing_a_signed_chunk_finds_what_its_signature_signs_on_the_way() {
    use crate::chunk::{Chunker, Push};
    use crate::hash::{ChunkHash, Verified};
    let keys = Keypair::from_secret([8; 32]);
    for payload_len in [0, 1, 900, 1024, 5000] {
        let payload = std::vec![0xa7; payload_len];
        let mut buf = std::vec![0u8; 8192];
        let mut chunker = Chunker::new(keys.node_id(), 4, 0, &mut buf[..])
            .unwrap()
            .signed_by(&keys)
            .unwrap();
        let event = crate::Event {
            origin: keys.node_id(),
            seq: 0,
            timestamp: 0,
            kind: "k",
            privacy: crate::Privacy::Public,
            payload: &payload,
        };
        assert_eq!(chunker.push(&event), Ok(Push::Added));
        let sealed = chunker.seal().unwrap();
        let (id, bytes) = (sealed.id, sealed.bytes.to_vec());
        let verified = Verified::hash_of(&bytes);
        let view = ChunkView::parse(&bytes).unwrap();
        assert_eq!(verified.id(), ChunkHash::of(&bytes));
        assert_eq!(id, verified.id(), "sealing hashes in one pass too");
        assert_eq!(keys.public().verify_verified(&verified), Ok(()));
        let stranger = Keypair::from_secret([9; 32]);
        assert_eq!(
            stranger.public().verify_verified(&verified),
            Err(SealError::BadSignature)
        );
        assert_eq!(
            verified.signed_digest(),
            Some(*blake3::hash(view.signed_bytes()).as_bytes())
        );
        let verifier = Verifier::new(*keys.public()).unwrap();
        assert_eq!(verifier.verify(&view, verified.signed_digest()), Ok(()));
        // A digest of other bytes does not pass.
        assert_eq!(
            verifier.verify(&view, Some([0; 32])),
            Err(SealError::BadSignature)
        );
    }
}

/// The check of a signature by `keys` over `digest`, as a conduit that defers checks makes
/// it.
#[cfg(feature = "std")]
fn check_of(keys: &Keypair, digest: [u8; 32]) -> SealCheck {
    let verifier = Verifier::new(*keys.public()).unwrap();
    SealCheck::new(verifier, digest, keys.sign_digest(&digest))
}

#[cfg(feature = "std")]
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Checked in batches, every signature gets the verdict a strict check of it alone
    /// gives, whichever are bad and however many.
    #[test]
    fn batched_checks_give_each_signature_its_own_verdict(
        signers in proptest::collection::vec(0u8..3, 0..40),
        damage in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 0u8..3), 0..6),
    ) {
        let keys = [1u8, 2, 3].map(|k| Keypair::from_secret([k; 32]));
        let mut checks: std::vec::Vec<SealCheck> = signers
            .iter()
            .enumerate()
            .map(|(i, &k)| check_of(&keys[usize::from(k)], [u8::try_from(i).unwrap(); 32]))
            .collect();
        if !checks.is_empty() {
            for (at, how) in &damage {
                let check = &mut checks[at.index(signers.len())];
                match how {
                    // A signature changed on the way, bytes signed changed, a stranger's key.
                    0 => check.signature[7] ^= 1,
                    1 => check.digest[0] ^= 0x80,
                    _ => check.verifier = Verifier::new(*keys[(usize::from(check.digest[1]) + 1) % 3].public()).unwrap(),
                }
            }
        }
        let refs: std::vec::Vec<&SealCheck> = checks.iter().collect();
        let each: std::vec::Vec<_> = checks.iter().map(SealCheck::check).collect();
        proptest::prop_assert_eq!(SealCheck::check_all(&refs), each);
    }
}

#[cfg(feature = "std")]
#[test]
fn batches_are_bounded_and_a_bad_signature_is_found_in_any_of_them() {
    let keys = Keypair::from_secret([5; 32]);
    let n = CHECK_BATCH + 40;
    let mut checks: std::vec::Vec<SealCheck> = (0..n)
        .map(|i| check_of(&keys, *blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect();
    checks[3].signature[40] ^= 2;
    checks[CHECK_BATCH + 1].digest[9] ^= 1;
    let refs: std::vec::Vec<&SealCheck> = checks.iter().collect();
    let verdicts = SealCheck::check_all(&refs);
    assert_eq!(verdicts.len(), n);
    for (i, verdict) in verdicts.iter().enumerate() {
        let bad = i == 3 || i == CHECK_BATCH + 1;
        assert_eq!(verdict.is_err(), bad, "signature {i}");
    }
}

/// A key of small order (here the identity point) verifies any signature whose `R` is
/// `[s]B` in a batch's equation; a strict check refuses the key, and so do batches.
#[cfg(feature = "std")]
#[test]
fn a_key_of_small_order_is_refused_in_a_batch_too() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = Verifier::new(PublicKey(identity)).unwrap();
    // R = B (the base point, compressed), s = 1: [1]B = B + [k]·identity for every k.
    let mut signature = [0x66u8; SIGNATURE_LEN];
    signature[0] = 0x58;
    signature[32..].fill(0);
    signature[32] = 1;
    let keys = Keypair::from_secret([6; 32]);
    let mut checks: std::vec::Vec<SealCheck> = (0u8..8).map(|i| check_of(&keys, [i; 32])).collect();
    checks.push(SealCheck::new(weak.clone(), [9; 32], signature));
    let probe = [ed25519_dalek::Signature::from_bytes(&signature)];
    let message = seal_message(&[9; 32]);
    assert!(
        ed25519_dalek::verify_batch(&[&message[..]], &probe, &[weak.verifying]).is_ok(),
        "the batch equation alone accepts it"
    );
    let refs: std::vec::Vec<&SealCheck> = checks.iter().collect();
    let verdicts = SealCheck::check_all(&refs);
    assert!(verdicts[..8].iter().all(Result::is_ok));
    assert!(verdicts[8].is_err());
}

/// The table of small-order y coordinates is the y of each of the eight points of small
/// order, and nothing else.
#[cfg(feature = "std")]
#[test]
fn the_small_order_table_is_the_eight_torsion_points() {
    let mut ys: std::vec::Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
        .iter()
        .map(|point| {
            let mut y = point.compress().to_bytes();
            y[31] &= 0x7f;
            y
        })
        .collect();
    ys.sort_unstable();
    ys.dedup();
    let mut table = SMALL_ORDER_Y.to_vec();
    table.sort_unstable();
    assert_eq!(ys, table);
}

#[cfg(feature = "std")]
#[test]
fn only_canonical_field_elements_are_below_the_prime() {
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    let mut p_minus_one = p;
    p_minus_one[0] = 0xec;
    let mut p_plus_one = p;
    p_plus_one[0] = 0xee;
    assert!(below_field_prime(&p_minus_one));
    assert!(!below_field_prime(&p));
    assert!(!below_field_prime(&p_plus_one));
    assert!(below_field_prime(&[0; 32]));
    let mut top = [0u8; 32];
    top[31] = 0x7f;
    assert!(below_field_prime(&top));
}

/// A signature with `R` the identity (the nonce 0, s = k·a) satisfies the equation a batch
/// checks, exactly; only the key's holder can make it, and a strict check refuses it. So
/// does a batch that holds it.
#[cfg(feature = "std")]
#[test]
fn a_signature_with_r_of_small_order_is_refused_in_a_batch_too() {
    use sha2::Digest;
    let keys = Keypair::from_secret([8; 32]);
    let digest = [4u8; 32];
    let message = seal_message(&digest);
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let k = curve25519_dalek::Scalar::from_bytes_mod_order_wide(
        &sha2::Sha512::new()
            .chain_update(identity)
            .chain_update(keys.public().0)
            .chain_update(message)
            .finalize()
            .into(),
    );
    let s = k * keys.signing.to_scalar();
    let mut signature = [0u8; SIGNATURE_LEN];
    signature[..32].copy_from_slice(&identity);
    signature[32..].copy_from_slice(s.as_bytes());
    let verifier = Verifier::new(*keys.public()).unwrap();
    let probe = [ed25519_dalek::Signature::from_bytes(&signature)];
    assert!(
        ed25519_dalek::verify_batch(&[&message[..]], &probe, &[verifier.verifying]).is_ok(),
        "the batch equation alone accepts it"
    );
    let mut checks: std::vec::Vec<SealCheck> = (0u8..8).map(|i| check_of(&keys, [i; 32])).collect();
    checks.push(SealCheck::new(verifier, digest, signature));
    assert!(checks[8].check().is_err(), "a strict check refuses it");
    let refs: std::vec::Vec<&SealCheck> = checks.iter().collect();
    let verdicts = SealCheck::check_all(&refs);
    assert!(verdicts[..8].iter().all(Result::is_ok));
    assert!(verdicts[8].is_err());
}
