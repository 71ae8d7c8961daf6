//! Live sessions between two in-memory ends, in virtual time: chunks stored later are
//! announced and fetched, an idle link costs only keep-alives, a silent peer times out,
//! lying announcements end in failure, and either side ends the session.

use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::tests::{End, chunks, config, run_until};
use super::*;
use crate::chunk::test_chunk;
use crate::session::PeerMisbehaved;
use crate::wire::Message;

fn live(id: u64) -> Config {
    Config {
        live: true,
        ..config(id)
    }
}

/// Stores a new chunk of `origin` at `seq` on `end` and returns the range to announce.
fn store_new(end: &mut End, origin: u64, seq: u64) -> KeyRange {
    let bytes = test_chunk(origin, seq, b"late");
    end.store.insert(ChunkHash::of(&bytes), bytes);
    KeyRange {
        origin: NodeId(origin),
        lo: seq,
        hi: seq + 1,
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_live_session_stays_open_and_carries_chunks_stored_later() {
    let mut a = End::new(live(1), Limits::new(), chunks(1, 5, 30));
    let mut b = End::new(live(2), Limits::new(), chunks(2, 3, 30));
    let t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    assert_eq!(
        (a.outcome, b.outcome),
        (None, None),
        "a live session stays open"
    );
    assert_eq!(a.store, b.store);
    assert!(a.conduit.session().is_live() && b.conduit.session().is_live());

    // Chunks stored later, on either side, are announced and fetched.
    let range = store_new(&mut a, 1, 500);
    assert!(a.conduit.announce(range));
    let range = store_new(&mut b, 2, 700);
    assert!(b.conduit.announce(range));
    let t = run_until(&mut a, &mut b, t, t + SECOND);
    assert_eq!(a.store, b.store);
    assert_eq!(a.store.len(), 10);
    assert_eq!(b.conduit.progress().synced_chunks, 6);
    assert_eq!(a.conduit.progress().synced_chunks, 4);
    assert!(a.failed.is_empty() && b.failed.is_empty());

    // One side ends it; the other follows.
    a.conduit.close();
    run_until(&mut a, &mut b, t, t + SECOND);
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(b.outcome, Some(Ok(())));
}

#[test]
fn a_peer_that_is_not_live_makes_a_one_shot_session() {
    let mut a = End::new(live(1), Limits::new(), chunks(1, 5, 30));
    let mut b = End::new(config(2), Limits::new(), chunks(2, 3, 30));
    run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(b.outcome, Some(Ok(())));
    assert_eq!(a.store, b.store);
    assert!(!a.conduit.session().is_live());
}

#[test]
fn an_idle_live_session_costs_only_keepalives_and_a_silent_peer_times_out() {
    let mut a = End::new(live(1), Limits::new(), chunks(1, 5, 30));
    let mut b = End::new(live(2), Limits::new(), chunks(2, 3, 30));
    let t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    let before = (a.conduit.stats().bytes_sent, b.conduit.stats().bytes_sent);
    let minutes = 10;
    let t = run_until(&mut a, &mut b, t, t + Duration::from_secs(60 * minutes));
    assert_eq!((a.outcome, b.outcome), (None, None));
    // A third of the 30 s idle timeout: 6 keep-alives of 5 bytes a minute, each way.
    for (after, before) in [
        (a.conduit.stats().bytes_sent, before.0),
        (b.conduit.stats().bytes_sent, before.1),
    ] {
        let per_minute = (after - before) / minutes;
        assert!(
            (25..=35).contains(&per_minute),
            "{per_minute} bytes a minute"
        );
    }

    // `b` stops sending anything: `a` gives up after its idle timeout.
    b.writes = false;
    run_until(&mut a, &mut b, t, t + Duration::from_secs(31));
    assert_eq!(a.outcome, Some(Err(Error::TimedOut)));
}

#[test]
fn an_announcement_of_chunks_held_already_fetches_nothing() {
    let shared = chunks(1, 5, 30);
    let mut a = End::new(live(1), Limits::new(), shared.clone());
    let mut b = End::new(live(2), Limits::new(), shared);
    let t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    // A chunk both already hold (a third node gave it to each): announced, not fetched.
    let late = test_chunk(1, 900, b"both");
    for end in [&mut a, &mut b] {
        end.store.insert(ChunkHash::of(&late), late.clone());
    }
    let range = KeyRange {
        origin: NodeId(1),
        lo: 900,
        hi: 901,
    };
    assert!(a.conduit.announce(range));
    run_until(&mut a, &mut b, t, t + SECOND);
    assert_eq!(b.conduit.progress().synced_chunks, 0);
    assert_eq!(b.conduit.progress().bytes_transferred, 0);
    assert!(b.failed.is_empty());
}

#[test]
fn a_peer_announcing_chunks_it_never_serves_is_refused() {
    let mut a = End::new(live(1), Limits::new(), chunks(1, 2, 30));
    let refusing = Config {
        max_failures: 3,
        ..live(2)
    };
    let mut b = End::new(refusing, Limits::new(), BTreeMap::new());
    let mut t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    for seq in 0..5 {
        if b.outcome.is_some() {
            break;
        }
        let lie = KeyRange {
            origin: NodeId(40 + seq),
            lo: 0,
            hi: 10,
        };
        assert!(a.conduit.announce(lie));
        t = run_until(&mut a, &mut b, t, t + SECOND);
    }
    assert_eq!(
        b.outcome,
        Some(Err(Error::Peer(PeerMisbehaved::TooManyFailures { max: 3 })))
    );
    assert_eq!(b.store.len(), 2, "what was stored stays");
}

#[test]
fn more_announcements_than_fit_become_one_resync() {
    let mut a = End::new(live(1), Limits::new(), chunks(1, 2, 30));
    let mut b = End::new(live(2), Limits::new(), BTreeMap::new());
    let t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    // Twenty origins at once, more than the 8 announcements a session holds.
    for origin in 100..120 {
        let range = store_new(&mut a, origin, 3);
        assert!(a.conduit.announce(range));
    }
    run_until(&mut a, &mut b, t, t + SECOND);
    assert_eq!(a.store, b.store);
    assert_eq!(b.store.len(), 22);
}

#[test]
fn announcing_everything_makes_the_peer_reconcile_again() {
    let mut a = End::new(live(1), Limits::new(), chunks(1, 2, 30));
    let mut b = End::new(live(2), Limits::new(), BTreeMap::new());
    let t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    // Stored without a word: the adapter lost count of them.
    for origin in 5..8 {
        store_new(&mut a, origin, 0);
    }
    let t = run_until(&mut a, &mut b, t, t + SECOND);
    assert_eq!(b.store.len(), 2);
    assert!(a.conduit.announce_all());
    run_until(&mut a, &mut b, t, t + SECOND);
    assert_eq!(a.store, b.store);
}

#[test]
fn a_flood_of_announcements_costs_one_round_at_a_time() {
    let mut a = End::new(live(1), Limits::new(), chunks(1, 5, 30));
    let mut b = End::new(live(2), Limits::new(), chunks(2, 3, 30));
    let t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    let sent = |end: &End| end.conduit.stats().bytes_sent;

    // A thousand `Resync`s and a thousand `Have`s of ranges `b` holds, at once: they wait
    // merged while a round runs, so they cost `b` a round or two (each a query or a few),
    // not one query per announcement.
    let mut flood = Vec::new();
    let mut frame = [0u8; 64];
    for _ in 0..1_000 {
        let have = Message::Have {
            origin: NodeId(1),
            lo: 0,
            hi: 50,
        };
        for message in [Message::Resync, have] {
            flood.extend_from_slice(crate::wire::encode(&message, &mut frame).unwrap());
        }
    }
    let before = sent(&b);
    b.inbox.extend_from_slice(&flood);
    let t = run_until(&mut a, &mut b, t, t + SECOND);
    let cost = sent(&b) - before;
    assert!(
        cost > 0 && cost * 20 < flood.len() as u64,
        "{cost} bytes sent for a flood of {} bytes",
        flood.len()
    );
    assert_eq!((a.outcome, b.outcome), (None, None), "the session goes on");

    // And still carries what is stored later.
    let range = store_new(&mut a, 1, 800);
    assert!(a.conduit.announce(range));
    run_until(&mut a, &mut b, t, t + SECOND);
    assert_eq!(a.store, b.store);
}

#[test]
fn announcements_are_refused_outside_an_open_live_session() {
    let range = KeyRange {
        origin: NodeId(1),
        lo: 0,
        hi: 1,
    };
    let mut a = End::new(live(1), Limits::new(), chunks(1, 2, 30));
    assert!(!a.conduit.announce(range), "before the peer's Hello");
    let mut b = End::new(config(2), Limits::new(), BTreeMap::new());
    run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + SECOND);
    assert!(!a.conduit.announce(range), "the peer is not live");
}

/// Two live ends with frames of `frame` bytes: `a` holds `a_logs` logs of six chunks,
/// `b` holds `b_logs` others.
fn live_pair(frame: u32, a_logs: usize, b_logs: usize) -> (End, End) {
    let cfg = |id| Config {
        max_frame: frame,
        ..live(id)
    };
    let mut a_store = BTreeMap::new();
    for o in 0..a_logs as u64 {
        a_store.extend(chunks(o, 6, 20));
    }
    let mut b_store = BTreeMap::new();
    for o in 0..b_logs as u64 {
        b_store.extend(chunks(o + 2, 6, 20));
    }
    (
        End::new(cfg(1), Limits::new(), a_store),
        End::new(cfg(2), Limits::new(), b_store),
    )
}

/// A few rounds of pumping, a millisecond, then a chunk of `origin` at `seq` appears on
/// one side and is announced (sequence numbers past the first logs' `0..60`, so that no
/// chunk forks another).
fn store_later(
    a: &mut End,
    b: &mut End,
    now: &mut Instant,
    steps: usize,
    on_a: bool,
    origin: u64,
    seq: u64,
) {
    for _ in 0..steps {
        a.pump(*now, None);
        b.pump(*now, None);
        b.inbox.append(&mut a.outbox);
        a.inbox.append(&mut b.outbox);
    }
    *now += Duration::from_millis(1);
    let (end, origin) = if on_a {
        (a, origin + 10)
    } else {
        (b, origin + 20)
    };
    let range = store_new(end, origin, 100 + seq);
    end.conduit.announce(range);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Chunks stored on either side at any moment, during the first reconciliation or
    /// after it, end up on both sides, whatever the frame size; nothing fails.
    #[test]
    fn chunks_stored_at_any_moment_reach_the_peer(
        frame in prop::sample::select(vec![256u32, 1024, 65536]),
        a_logs in 0usize..4,
        b_logs in 0usize..4,
        late in prop::collection::vec((any::<bool>(), 0u64..6, 0u64..40, 0usize..40), 1..30),
    ) {
        let (mut a, mut b) = live_pair(frame, a_logs, b_logs);
        let mut now = Instant::ZERO;
        for (on_a, origin, seq, steps) in late {
            store_later(&mut a, &mut b, &mut now, steps, on_a, origin, seq);
        }
        run_until(&mut a, &mut b, now, now + Duration::from_secs(5));
        prop_assert_eq!(a.outcome, None);
        prop_assert_eq!(b.outcome, None);
        prop_assert_eq!(&a.store, &b.store);
        prop_assert!(a.failed.is_empty() && b.failed.is_empty());
        prop_assert_eq!(a.conduit.progress().failed_chunks, 0);
        prop_assert_eq!(b.conduit.progress().failed_chunks, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A live session closed by either side at any moment (during the first
    /// reconciliation, with announcements in flight either way, or idle) ends cleanly on
    /// both sides, without waiting for a timeout.
    #[test]
    fn a_live_session_closed_at_any_moment_ends_on_both_sides(
        frame in prop::sample::select(vec![256u32, 1024, 65536]),
        a_logs in 0usize..4,
        b_logs in 0usize..4,
        late in prop::collection::vec((any::<bool>(), 0u64..6, 0u64..40, 0usize..40), 1..20),
        close_at in 0usize..20,
        close_a in any::<bool>(),
    ) {
        let (mut a, mut b) = live_pair(frame, a_logs, b_logs);
        let mut now = Instant::ZERO;
        let mut closed = false;
        for (i, (on_a, origin, seq, steps)) in late.into_iter().enumerate() {
            store_later(&mut a, &mut b, &mut now, steps, on_a, origin, seq);
            if i == close_at {
                if close_a { a.conduit.close() } else { b.conduit.close() }
                closed = true;
            }
        }
        if !closed {
            a.conduit.close();
        }
        // Well within the idle timeout (30 s): no side waits for it.
        run_until(&mut a, &mut b, now, now + Duration::from_secs(5));
        prop_assert_eq!(a.outcome, Some(Ok(())));
        prop_assert_eq!(b.outcome, Some(Ok(())));
    }
}
