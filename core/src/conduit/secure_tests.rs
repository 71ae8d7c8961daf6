//! Conduits over a secure link: syncs at every frame size, permissions, a Hello that lies
//! about its node id, and a wire that is tampered with, replayed or read.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use super::tests::{End, config, run, run_until};
use super::*;
use crate::chunk::test_chunk;
use crate::secure::{Access, Handshake, Keypair, MAX_RECORD, RECORD_OVERHEAD, Role};
use crate::session::LinkError;
use crate::wire::ErrorCode;

pub(super) type C = Conduit<'static, Vec<u8>, 8, 4>;

pub(super) fn keys(seed: u8) -> Keypair {
    Keypair::from_secret([seed; 32])
}

/// A chunk of one public event of `keys`'s log at `seq`, signed by it.
pub(super) fn signed_chunk(keys: &Keypair, seq: u64, payload: &[u8]) -> Vec<u8> {
    use crate::chunk::{Chunker, Push};
    let mut buf = [0u8; 1024];
    let mut chunker = Chunker::new(keys.node_id(), 10, seq, &mut buf)
        .unwrap()
        .signed_by(keys)
        .unwrap();
    let event = crate::Event {
        origin: keys.node_id(),
        seq,
        timestamp: 0,
        kind: "t",
        privacy: crate::Privacy::Public,
        payload,
    };
    assert_eq!(chunker.push(&event), Ok(Push::Added));
    chunker.seal().unwrap().bytes.to_vec()
}

/// `n` chunks of the log of `keys(seed)`, signed, with `payload` bytes each.
pub(super) fn signed(seed: u8, n: usize, payload: usize) -> BTreeMap<ChunkHash, Vec<u8>> {
    (0..n)
        .map(|i| {
            let bytes = signed_chunk(&keys(seed), i as u64 * 10, &std::vec![i as u8; payload]);
            (ChunkHash::of(&bytes), bytes)
        })
        .collect()
}

fn buffers() -> Buffers<Vec<u8>> {
    Buffers {
        receive: std::vec![0; 64],
        transmit: Vec::new(),
        reassembly: Vec::new(),
    }
}

/// An end over a secure link, of node `keys`, with `max_frame`.
pub(super) fn secure_end(
    keys: &Keypair,
    role: Role,
    max_frame: u32,
    store: BTreeMap<ChunkHash, Vec<u8>>,
) -> End {
    let config = Config {
        max_frame,
        ..Config::new(keys.node_id())
    };
    secure_end_with(keys, role, config, store)
}

/// An end over a secure link, of node `keys`, with `config`.
pub(super) fn secure_end_with(
    keys: &Keypair,
    role: Role,
    session: Config,
    store: BTreeMap<ChunkHash, Vec<u8>>,
) -> End {
    let mut end = End::new(config(1), Limits::new(), store);
    let entropy = [role as u8 + 100; 32];
    end.conduit = C::new_secure(
        session,
        Instant::ZERO,
        buffers(),
        Limits::new(),
        Handshake::new(keys, role, entropy),
    )
    .unwrap();
    end
}

/// Two ends, `a` initiating, holding `a_chunks` and `b_chunks`.
pub(super) fn pair(
    max_frame: u32,
    a_chunks: BTreeMap<ChunkHash, Vec<u8>>,
    b_chunks: BTreeMap<ChunkHash, Vec<u8>>,
) -> (End, End) {
    let a = secure_end(&keys(1), Role::Initiator, max_frame, a_chunks);
    let b = secure_end(&keys(2), Role::Responder, max_frame, b_chunks);
    (a, b)
}

#[test]
fn ends_sync_both_ways_over_a_secure_link_at_every_frame_size() {
    for max_frame in [256, 300, 1024, 65_536, MAX_RECORD] {
        let (mut a, mut b) = pair(max_frame, signed(1, 12, 300), signed(2, 5, 40));
        run(&mut a, &mut b, Duration::from_secs(60));
        assert_eq!(a.outcome, Some(Ok(())), "{max_frame}");
        assert_eq!(b.outcome, Some(Ok(())), "{max_frame}");
        assert_eq!(a.store, b.store);
        assert_eq!(a.store.len(), 17);
        // Each learned the other's key, proven by the handshake.
        assert_eq!(a.asked, [*keys(2).public()]);
        assert_eq!(b.asked, [*keys(1).public()]);
        assert_eq!(a.conduit.peer_key(), Some(keys(2).public()));
        // The session's frames leave room for the record around them.
        let peer = a.conduit.peer().unwrap();
        assert_eq!(
            peer.max_frame as usize,
            max_frame as usize - RECORD_OVERHEAD
        );
    }
}

#[test]
fn no_payload_byte_and_no_hash_travels_in_the_clear() {
    let secret = b"telemetry: reactor core temperature 1234.5 K, valve 7 open";
    let mut store = BTreeMap::new();
    for seq in 0..6 {
        let bytes = signed_chunk(&keys(1), seq * 10, secret);
        store.insert(ChunkHash::of(&bytes), bytes);
    }
    let ids: Vec<ChunkHash> = store.keys().copied().collect();
    let (mut a, mut b) = pair(1024, store, BTreeMap::new());
    let mut wire = Vec::new();
    for _ in 0..10_000 {
        if a.outcome.is_some() && b.outcome.is_some() {
            break;
        }
        a.pump(Instant::ZERO, None);
        b.pump(Instant::ZERO, None);
        wire.extend_from_slice(&a.outbox);
        wire.extend_from_slice(&b.outbox);
        b.inbox.append(&mut a.outbox);
        a.inbox.append(&mut b.outbox);
    }
    assert_eq!(b.outcome, Some(Ok(())));
    assert_eq!(b.store.len(), 6);
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&secret[..12]), "payload in the clear");
    assert!(!contains(b"reactor"));
    for id in &ids {
        assert!(!contains(&id.as_bytes()[..8]), "a chunk hash in the clear");
    }
}

#[test]
fn a_refused_peer_is_told_and_learns_nothing() {
    let (mut a, mut b) = pair(256, BTreeMap::new(), signed(2, 5, 40));
    b.access = Access::NONE;
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(b.outcome, Some(Err(Error::Link(LinkError::Refused))));
    assert_eq!(a.outcome, Some(Err(Error::Remote(ErrorCode::REFUSED))));
    // No Hello reached the refused peer: not even a frame size or a count.
    assert!(a.conduit.peer().is_none());
    assert!(a.store.is_empty());
    assert_eq!(a.conduit.progress().total_chunks, 0);
}

#[test]
fn pull_access_alone_serves_the_peer_and_takes_nothing_from_it() {
    let (mut a, mut b) = pair(256, signed(1, 4, 40), signed(2, 5, 40));
    b.access = Access::PULL;
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(b.outcome, Some(Ok(())));
    assert_eq!(a.store.len(), 9, "a pulled b's chunks");
    assert_eq!(b.store.len(), 5, "b took none of a's");
}

#[test]
fn push_access_alone_shows_an_empty_store() {
    let (mut a, mut b) = pair(256, signed(1, 4, 40), signed(2, 5, 40));
    b.access = Access::PUSH;
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(a.store.len(), 4, "b showed a nothing");
    assert_eq!(b.store.len(), 9, "b took a's chunks");
}

#[test]
fn a_hello_that_claims_another_node_id_ends_the_session() {
    let (mut a, mut b) = pair(256, BTreeMap::new(), signed(2, 3, 40));
    // `b` runs the link with key 2 but says it is node 7 in its Hello.
    let mut liar = C::new(
        Config {
            max_frame: 256,
            ..Config::new(NodeId(7))
        },
        Instant::ZERO,
        buffers(),
        Limits::new(),
    )
    .unwrap();
    liar.session.set_link(RECORD_OVERHEAD as u32, MAX_RECORD);
    liar.tx.grow_to(C::max_tx());
    liar.link = Some(Secured::new(Handshake::new(
        &keys(2),
        Role::Responder,
        [9; 32],
    )));
    b.conduit = liar;
    run(&mut a, &mut b, Duration::from_secs(60));
    let key = keys(2).node_id();
    assert_eq!(
        a.outcome,
        Some(Err(Error::Link(LinkError::NodeIdNotKey {
            claimed: NodeId(7),
            key
        })))
    );
    assert!(a.store.is_empty());
}

impl C {
    fn max_tx() -> usize {
        Session::<8, 4>::max_transmit_len() + RECORD_OVERHEAD
    }
}

#[test]
fn a_conduit_whose_id_is_not_its_keys_is_refused() {
    let hs = Handshake::new(&keys(1), Role::Initiator, [3; 32]);
    let wrong = C::new_secure(config(5), Instant::ZERO, buffers(), Limits::new(), hs);
    assert!(matches!(wrong, Err(ConfigError::SecureLink(_))));
    let hs = Handshake::new(&keys(1), Role::Initiator, [3; 32]);
    let large = Config {
        max_frame: MAX_RECORD + 1,
        ..Config::new(keys(1).node_id())
    };
    let too_large = C::new_secure(large, Instant::ZERO, buffers(), Limits::new(), hs);
    assert!(matches!(too_large, Err(ConfigError::SecureLink(_))));
}

/// Runs `a` and `b`, letting `tamper` change each batch of bytes from `a` to `b` after the
/// first `skip` batches.
fn run_tampered(a: &mut End, b: &mut End, skip: usize, tamper: impl Fn(&mut Vec<u8>)) {
    let mut batches = 0;
    for _ in 0..10_000 {
        if a.outcome.is_some() && b.outcome.is_some() {
            return;
        }
        let moved = a.pump(Instant::ZERO, None) | b.pump(Instant::ZERO, None);
        if !a.outbox.is_empty() {
            batches += 1;
            if batches > skip {
                tamper(&mut a.outbox);
            }
        }
        let sent = !a.outbox.is_empty() || !b.outbox.is_empty();
        b.inbox.append(&mut a.outbox);
        a.inbox.append(&mut b.outbox);
        if !moved && !sent {
            return;
        }
    }
}

#[test]
fn a_modified_replayed_or_forged_record_fails_the_link() {
    type Tamper = fn(&mut Vec<u8>);
    let cases: [(&str, Tamper); 3] = [
        ("modified", |bytes| {
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
        }),
        ("replayed", |bytes| {
            let again = bytes.clone();
            bytes.extend_from_slice(&again);
        }),
        ("forged", |bytes| {
            bytes.splice(0..0, [20, 0].into_iter().chain([0xa5; 20]));
        }),
    ];
    for (what, tamper) in cases {
        // The first two batches from `a` are handshake messages, the third its Hello.
        let (mut a, mut b) = pair(256, signed(1, 3, 40), BTreeMap::new());
        run_tampered(&mut a, &mut b, 2, tamper);
        assert_eq!(
            b.conduit.session().error(),
            Some(Error::Link(LinkError::BadRecord)),
            "{what}"
        );
        assert!(b.store.is_empty(), "{what}");
    }
}

#[test]
fn a_record_longer_than_the_frame_size_is_refused_before_it_is_read() {
    let (mut a, mut b) = pair(256, signed(1, 3, 40), BTreeMap::new());
    run_tampered(&mut a, &mut b, 2, |bytes| {
        bytes.splice(0..0, [0xff, 0xff]);
    });
    assert_eq!(
        b.conduit.session().error(),
        Some(Error::Link(LinkError::RecordSize {
            len: 65_537,
            max: 256
        }))
    );
}

proptest! {
    /// Whatever an initiator sends, a responder never panics, never stores a chunk, and
    /// ends with a typed error or keeps waiting within bounded state.
    #[test]
    fn garbage_never_gets_past_the_handshake(
        reads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..8),
    ) {
        let mut b = secure_end(&keys(2), Role::Responder, 256, signed(2, 3, 40));
        for read in reads {
            b.inbox.extend_from_slice(&read);
            b.pump(Instant::ZERO, None);
            b.outbox.clear();
        }
        prop_assert_eq!(b.store.len(), 3);
        prop_assert!(b.asked.is_empty());
        prop_assert!(b.conduit.peer().is_none());
    }

    /// Bytes flipped anywhere after the handshake fail the link, or (in a record not yet
    /// whole) leave the session waiting; nothing unverified is ever stored.
    #[test]
    fn flipped_bytes_are_caught(at in 0usize..400, bit in 0u8..8) {
        let (mut a, mut b) = pair(256, signed(1, 3, 40), BTreeMap::new());
        run_tampered(&mut a, &mut b, 2, |bytes| {
            if let Some(byte) = bytes.get_mut(at) {
                *byte ^= 1 << bit;
            }
        });
        for (id, bytes) in &b.store {
            prop_assert_eq!(*id, ChunkHash::of(bytes));
        }
    }
}

/// A conduit in fixed buffers, as a device runs it, that initiates a handshake and gets
/// `answer` back: how it ends, or what it waits for.
fn device_answered(answer: &[u8], read: usize) -> Result<Result<(), Error>, Wait> {
    let keys = keys(1);
    let (mut rx, mut tx, mut re) = ([0u8; 1024], [0u8; 1024], [0u8; 2048]);
    let buffers = Buffers {
        receive: &mut rx[..],
        transmit: &mut tx[..],
        reassembly: &mut re[..],
    };
    let config = Config {
        max_frame: 1024,
        ..Config::new(keys.node_id())
    };
    let handshake = Handshake::new(&keys, Role::Initiator, [1; 32]);
    let mut c = Conduit::<&mut [u8], 8, 4>::new_secure(
        config,
        Instant::ZERO,
        buffers,
        Limits::new(),
        handshake,
    )
    .unwrap();
    let serving = [0u8; 2048];
    let mut input = answer;
    for _ in 0..1000 {
        match c.poll_serving(Instant::ZERO, None, &serving) {
            Action::Send { frame, .. } => {
                let n = frame.len();
                c.written(Instant::ZERO, n);
            }
            Action::Wait(wait) if input.is_empty() => return Err(wait),
            Action::Wait(_) => {
                let n = c.receive(&input[..read.min(input.len())]);
                input = &input[n..];
            }
            Action::Closed(outcome) => return Ok(outcome),
            _ => {}
        }
    }
    panic!("the conduit never waits");
}

#[test]
fn a_device_ends_at_once_on_a_garbled_handshake_message() {
    for read in 1..8 {
        let outcome = device_answered(&[5, 0, 1, 2, 3, 4, 5], read);
        assert_eq!(
            outcome,
            Ok(Err(Error::Link(LinkError::Handshake))),
            "{read}"
        );
    }
}

/// `chunk`'s bytes with the last event byte changed, signed again by `signer`: a chunk
/// that claims `chunk`'s origin but carries another key's signature (or, with the origin's
/// own key, a chunk the origin never sealed).
fn re_signed(chunk: &[u8], signer: &Keypair) -> Vec<u8> {
    use crate::chunk::SIGNATURE_LEN;
    let mut bytes = chunk.to_vec();
    let body = bytes.len() - SIGNATURE_LEN;
    bytes[body - 1] ^= 0x55;
    let signature = signer.sign_chunk(&bytes[..body]);
    bytes[body..].copy_from_slice(&signature);
    bytes
}

pub(super) fn store_of(chunks: impl IntoIterator<Item = Vec<u8>>) -> BTreeMap<ChunkHash, Vec<u8>> {
    chunks
        .into_iter()
        .map(|bytes| (ChunkHash::of(&bytes), bytes))
        .collect()
}

#[test]
fn a_relay_passes_on_chunks_of_an_origin_the_receiver_trusts() {
    // b relays the log of node 3 to a, which holds node 3's whole key.
    let (mut a, mut b) = pair(256, BTreeMap::new(), signed(3, 4, 60));
    a.origin_keys = std::vec![*keys(3).public()];
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(a.store, b.store);
    assert!(a.failed.is_empty());
}

#[test]
fn the_walk_passes_an_origin_without_a_trusted_key_and_fetches_nothing_of_it() {
    // b relays node 3's log beside its own; a holds no key for node 3 (a key whose node id
    // is another is no key for it).
    let mut relay = signed(3, 4, 60);
    let own = signed(2, 3, 60);
    relay.extend(own.clone());
    for max_frame in [256, 65_536] {
        let (mut a, mut b) = pair(max_frame, BTreeMap::new(), relay.clone());
        a.origin_keys = std::vec![*keys(4).public()];
        run(&mut a, &mut b, Duration::from_secs(60));
        assert_eq!(a.outcome, Some(Ok(())), "{max_frame}");
        assert_eq!(
            a.store, own,
            "{max_frame}: b's own log, nothing of node 3's"
        );
        assert!(
            a.failed.is_empty(),
            "{max_frame}: nothing fetched to refuse"
        );
        assert_eq!(a.conduit.progress().total_chunks, 3, "{max_frame}");
        let origin = keys(3).node_id();
        assert!(
            a.summarized.iter().all(|r| r.origin != origin),
            "{max_frame}: the store was asked about node 3"
        );
        // Trusted, node 3's log is fetched too.
        let (mut a, mut b) = pair(max_frame, BTreeMap::new(), relay.clone());
        a.origin_keys = std::vec![*keys(3).public()];
        run(&mut a, &mut b, Duration::from_secs(60));
        assert_eq!(a.store, relay, "{max_frame}");
    }
}

/// In a live session, chunks of an untrusted origin stored and announced later (and a
/// resync) fetch nothing either, while the peer's own new chunks still flow.
#[test]
fn a_live_session_fetches_nothing_of_an_origin_without_a_trusted_key() {
    let live = |seed: u8| Config {
        max_frame: 256,
        live: true,
        ..Config::new(keys(seed).node_id())
    };
    let mut a = secure_end_with(&keys(1), Role::Initiator, live(1), BTreeMap::new());
    let mut b = secure_end_with(&keys(2), Role::Responder, live(2), signed(3, 2, 20));
    let second = Duration::from_secs(1);
    let t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + second);
    assert_eq!((a.outcome, b.outcome), (None, None), "still live");
    assert!(a.store.is_empty());
    // b stores more of node 3's log, and of its own, and tells a.
    let more = |seed: u8| -> BTreeMap<ChunkHash, Vec<u8>> {
        (2..4)
            .map(|i| {
                let bytes = signed_chunk(&keys(seed), i * 10, &[i as u8; 20]);
                (ChunkHash::of(&bytes), bytes)
            })
            .collect()
    };
    b.store.extend(more(3));
    b.store.extend(more(2));
    for seed in [3, 2] {
        assert!(b.conduit.announce(KeyRange::whole(keys(seed).node_id())));
    }
    assert!(b.conduit.announce_all());
    let t = run_until(&mut a, &mut b, t, t + second);
    assert_eq!(a.store, more(2), "only b's own log");
    assert!(a.failed.is_empty());
    a.conduit.close();
    run_until(&mut a, &mut b, t, t + second);
    assert_eq!(a.outcome, Some(Ok(())));
}

#[test]
fn chunks_of_an_origin_without_a_trusted_key_asked_for_by_hash_are_refused() {
    let relay = signed(3, 4, 60);
    let ids: &'static [ChunkHash] = relay.keys().copied().collect::<Vec<_>>().leak();
    let (mut a, mut b) = pair(256, BTreeMap::new(), relay);
    a.conduit.fetch(ids);
    run(&mut a, &mut b, Duration::from_secs(60));
    assert!(a.store.is_empty(), "nothing stored");
    assert_eq!(a.failed.len(), ids.len());
    assert!(
        a.failed
            .iter()
            .all(|(_, reason)| *reason == FailReason::UnknownOrigin)
    );
}

#[test]
fn forged_re_signed_and_unsigned_chunks_are_refused_and_genuine_ones_kept() {
    let origin = keys(3);
    let genuine = signed_chunk(&origin, 0, b"genuine");
    // Changed after signing; changed and signed by the relay; changed and signed by a key
    // of its own that claims node 3's id (no such key can be made, but the receiver does
    // not rely on that).
    let mut forged = signed_chunk(&origin, 10, b"forged!");
    let body = forged.len() - crate::chunk::SIGNATURE_LEN;
    forged[body - 1] ^= 1;
    let by_relay = re_signed(&signed_chunk(&origin, 20, b"resign"), &keys(2));
    let unsigned = test_chunk(origin.node_id().0, 30, b"unsigned");
    let relay_store = store_of([genuine.clone(), forged, by_relay, unsigned]);
    // Checked by the conduit, and by the adapter when the conduit defers the checks.
    // Deferring needs `std` (the adapter runs the checks on other threads).
    for defer in [false, cfg!(feature = "std")] {
        let _ = defer;
        let (mut a, mut b) = pair(256, BTreeMap::new(), relay_store.clone());
        a.origin_keys = std::vec![*origin.public()];
        #[cfg(feature = "std")]
        if defer {
            a.conduit.defer_seal_checks();
        }
        run(&mut a, &mut b, Duration::from_secs(60));
        assert_eq!(
            a.store,
            store_of([genuine.clone()]),
            "only the genuine chunk is kept"
        );
        let mut reasons: Vec<FailReason> = a.failed.iter().map(|(_, r)| *r).collect();
        reasons.sort_by_key(|r| std::format!("{r:?}"));
        assert_eq!(
            reasons,
            [
                FailReason::BadSignature,
                FailReason::BadSignature,
                FailReason::Unsigned
            ]
        );
        // The three signed chunks' checks were the adapter's; the unsigned one was
        // refused by the conduit.
        #[cfg(feature = "std")]
        assert_eq!(a.deferred, if defer { 3 } else { 0 });
    }
}

#[test]
fn the_peers_own_chunks_and_this_nodes_own_need_no_key_from_the_adapter() {
    // b holds its own chunks and one of a's (say, a restore from a backup).
    let mut b_store = signed(2, 3, 50);
    b_store.extend(signed(1, 1, 50));
    let (mut a, mut b) = pair(256, BTreeMap::new(), b_store);
    // No trusted origin keys at all: the handshake proved b's key, and a knows its own.
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(a.store, b.store);
}

#[test]
fn a_plaintext_conduit_asks_nothing_of_origins() {
    // Without a secure link, chunks are named by their hash alone.
    let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
    let mut b = End::new(config(2), Limits::new(), store_of([test_chunk(9, 0, b"x")]));
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(a.store.len(), 1);
}
