//! Rights by origin over a secure link: a peer sees, fetches and pushes exactly the
//! origins its key may, whether it asks by reconciliation, by range or by hash.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use super::secure_tests::{keys, pair, secure_end, secure_end_with, signed};
use super::tests::{End, run, run_until};
use super::*;
use crate::chunk::Span;
use crate::scope::Scope;
use crate::secure::{Access, Role};

fn id(seed: u8) -> NodeId {
    keys(seed).node_id()
}

fn only(seeds: &[u8]) -> Scope {
    Scope::only(&seeds.iter().map(|s| id(*s)).collect::<Vec<_>>()).unwrap()
}

/// The chunks of `store` whose origin `scope` covers.
fn covered(store: &BTreeMap<ChunkHash, Vec<u8>>, scope: &Scope) -> BTreeMap<ChunkHash, Vec<u8>> {
    store
        .iter()
        .filter(|(_, b)| scope.covers(Span::of(b).unwrap().origin))
        .map(|(h, b)| (*h, b.clone()))
        .collect()
}

/// Lets `end` check the chunks of every origin of seeds 1 to 6.
fn trusting(mut end: End) -> End {
    end.origin_keys = (1..=6).map(|s| *keys(s).public()).collect();
    end
}

/// An end of node `seed` that fetches only the chunks it is given by hash.
fn fetcher(role: Role, seed: u8, store: BTreeMap<ChunkHash, Vec<u8>>) -> End {
    let config = Config {
        max_frame: 256,
        pull: false,
        ..Config::new(id(seed))
    };
    secure_end_with(&keys(seed), role, config, store)
}

/// b holds its own log and those of nodes 3 and 4.
fn relay_store() -> BTreeMap<ChunkHash, Vec<u8>> {
    let mut store = signed(2, 3, 40);
    store.extend(signed(3, 4, 40));
    store.extend(signed(4, 5, 40));
    store
}

#[test]
fn a_peer_with_pull_rights_for_one_origin_gets_exactly_that_origin() {
    for max_frame in [256, 1024, 65_536] {
        let (a, mut b) = pair(max_frame, BTreeMap::new(), relay_store());
        let mut a = trusting(a);
        b.access = Access {
            pull: only(&[3]),
            push: Scope::Nothing,
        };
        run(&mut a, &mut b, Duration::from_secs(60));
        assert_eq!(a.outcome, Some(Ok(())), "{max_frame}");
        assert_eq!(b.outcome, Some(Ok(())), "{max_frame}");
        assert_eq!(a.store, signed(3, 4, 40), "{max_frame}");
        // Nothing of the other origins reached a, not even as a failure, nor their
        // names: a only ever compared node 3's log with its own.
        assert!(a.failed.is_empty(), "{max_frame}");
        assert!(!a.summarized.is_empty());
        assert!(
            a.summarized.iter().all(|r| r.origin == id(3)),
            "{max_frame}"
        );
    }
}

#[test]
fn chunks_asked_for_by_hash_are_served_only_of_the_origins_the_peer_may_pull() {
    let store = relay_store();
    let ids: &'static [ChunkHash] = Vec::leak(store.keys().copied().collect());
    // a knows every hash (say, from an old listing) and asks for each one.
    let mut a = trusting(fetcher(Role::Initiator, 1, BTreeMap::new()));
    let mut b = secure_end(&keys(2), Role::Responder, 256, store.clone());
    a.conduit.fetch(ids);
    b.access = Access {
        pull: only(&[2, 4]),
        push: Scope::Nothing,
    };
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(a.store, covered(&store, &only(&[2, 4])));
    // Node 3's chunks were not found: the answer of a store that does not hold them.
    assert_eq!(a.failed.len(), 4);
    assert!(a.failed.iter().all(|(_, r)| *r == FailReason::NotFound));
}

#[test]
fn a_peer_with_push_rights_for_one_origin_gives_exactly_that_origin() {
    let (a, b) = pair(256, relay_store(), BTreeMap::new());
    let (mut a, mut b) = (trusting(a), trusting(b));
    // b takes from a (node 2) only node 4's chunks, and shows a nothing.
    b.access = Access {
        pull: Scope::Nothing,
        push: only(&[4]),
    };
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(b.outcome, Some(Ok(())));
    assert_eq!(b.store, signed(4, 5, 40));
    assert!(b.failed.is_empty(), "b did not even ask for the others");
    assert_eq!(a.store.len(), 12, "a took nothing");
}

#[test]
fn a_chunk_of_an_origin_not_taken_is_refused_even_when_asked_for_by_hash() {
    let store = relay_store();
    let ids: &'static [ChunkHash] = Vec::leak(store.keys().copied().collect());
    let mut a = trusting(secure_end(&keys(1), Role::Initiator, 256, store.clone()));
    let mut b = trusting(fetcher(Role::Responder, 2, BTreeMap::new()));
    b.conduit.fetch(ids);
    b.access = Access {
        pull: Scope::Nothing,
        push: only(&[3]),
    };
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(b.store, signed(3, 4, 40));
    let refused = b
        .failed
        .iter()
        .filter(|(_, r)| *r == FailReason::NotPermitted)
        .count();
    assert_eq!(refused, 8, "the chunks of nodes 2 and 4: {:?}", b.failed);
}

/// A store of the logs of nodes 3 to 5 from `picks`: chunk `i` of node `o` is held by
/// the store when `picks[o][i]` says so (one sequence of chunks per origin, so two stores
/// never fork).
fn part(all: &[BTreeMap<ChunkHash, Vec<u8>>], picks: &[Vec<bool>]) -> BTreeMap<ChunkHash, Vec<u8>> {
    let mut store = BTreeMap::new();
    for (chunks, picks) in all.iter().zip(picks) {
        for ((h, b), take) in chunks.iter().zip(picks) {
            if *take {
                store.insert(*h, b.clone());
            }
        }
    }
    store
}

fn scope_strategy() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just(Scope::All),
        Just(Scope::Nothing),
        proptest::collection::vec(1u8..=5, 0..4).prop_map(|seeds| only(&seeds)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the rights, each side ends with what it had and exactly the peer's chunks
    /// of the origins it may take from it.
    #[test]
    fn each_side_gets_exactly_the_origins_its_rights_cover(
        a_picks in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), 3),
        b_picks in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), 3),
        pull in scope_strategy(),
        push in scope_strategy(),
        max_frame in prop_oneof![Just(256u32), Just(2048)],
    ) {
        let relayed: Vec<_> = (3..=5).map(|s| signed(s, 4, 30)).collect();
        let mut a_store = signed(1, 3, 30);
        a_store.extend(part(&relayed, &a_picks));
        let mut b_store = signed(2, 3, 30);
        b_store.extend(part(&relayed, &b_picks));
        let (a, b) = pair(max_frame, a_store.clone(), b_store.clone());
        let (mut a, mut b) = (trusting(a), trusting(b));
        // b decides what a may do; a lets b do anything.
        b.access = Access { pull, push };
        run(&mut a, &mut b, Duration::from_secs(120));
        if b.access.is_none() {
            prop_assert_eq!(&a.store, &a_store);
            prop_assert_eq!(&b.store, &b_store);
            return Ok(());
        }
        prop_assert_eq!(&a.outcome, &Some(Ok(())));
        prop_assert_eq!(&b.outcome, &Some(Ok(())));
        let mut a_wants = a_store.clone();
        a_wants.extend(covered(&b_store, &pull));
        let mut b_wants = b_store.clone();
        b_wants.extend(covered(&a_store, &push));
        prop_assert_eq!(&a.store, &a_wants);
        prop_assert_eq!(&b.store, &b_wants);
        prop_assert!(a.failed.is_empty() && b.failed.is_empty());
        // a never heard of an origin it may not pull: it asked its store only about
        // those, and about its own origins when b asked.
        let a_origins: Vec<NodeId> = a_store.values().map(|c| Span::of(c).unwrap().origin).collect();
        for range in &a.summarized {
            prop_assert!(pull.covers(range.origin) || a_origins.contains(&range.origin));
        }
    }
}

#[test]
fn a_live_session_announces_and_passes_on_only_the_origins_the_peer_may_see() {
    let live = |seed: u8| Config {
        max_frame: 256,
        live: true,
        ..Config::new(id(seed))
    };
    let mut a = trusting(secure_end_with(
        &keys(1),
        Role::Initiator,
        live(1),
        BTreeMap::new(),
    ));
    let mut b = trusting(secure_end_with(
        &keys(2),
        Role::Responder,
        live(2),
        BTreeMap::new(),
    ));
    b.access = Access {
        pull: only(&[3]),
        push: Scope::Nothing,
    };
    let second = Duration::from_secs(1);
    let t = run_until(&mut a, &mut b, Instant::ZERO, Instant::ZERO + second);
    assert_eq!(
        (a.outcome, b.outcome),
        (None, None),
        "a live session stays open"
    );
    assert!(b.conduit.session().is_live());
    // b receives chunks of nodes 3 and 4 later (from another peer, say).
    let late = |seed: u8| signed(seed, 2, 20);
    let range = |seed: u8| KeyRange {
        origin: id(seed),
        lo: 0,
        hi: 20,
    };
    b.store.extend(late(3));
    b.store.extend(late(4));
    assert!(b.conduit.announce(range(3)));
    assert!(
        !b.conduit.announce(range(4)),
        "node 4 is not announced to a"
    );
    // A resync (an adapter that lost count) shows a nothing more either.
    assert!(b.conduit.announce_all());
    let t = run_until(&mut a, &mut b, t, t + second);
    assert_eq!(a.store, late(3));
    assert!(a.failed.is_empty());
    a.conduit.close();
    run_until(&mut a, &mut b, t, t + second);
    assert_eq!(a.outcome, Some(Ok(())));
}
