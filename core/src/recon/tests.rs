extern crate std;

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use proptest::prelude::*;

use super::Answer;
use super::codec::{self, EntryWriter, MAX_ENTRY, Query};
use super::*;

/// A store as the reconciliation sees it: chunks by `(origin, first_seq)`.
#[derive(Clone, Debug, Default)]
struct Model(BTreeMap<(u64, u64), (u64, ChunkHash)>);

fn id(origin: u64, first: u64, end: u64) -> ChunkHash {
    let mut bytes = [0; 24];
    bytes[..8].copy_from_slice(&origin.to_le_bytes());
    bytes[8..16].copy_from_slice(&first.to_le_bytes());
    bytes[16..].copy_from_slice(&end.to_le_bytes());
    ChunkHash::of(&bytes)
}

impl Model {
    fn add(&mut self, origin: u64, first: u64, end: u64) {
        self.0
            .insert((origin, first), (end, id(origin, first, end)));
    }

    fn summarize(&self, range: &KeyRange, runs: &mut [Run]) -> (Summary, Option<usize>) {
        let mut s = Summarizer::new(*range, runs);
        for (&(_, first), &(end, id)) in self
            .0
            .range((range.origin.0, range.lo)..(range.origin.0, range.hi))
        {
            s.push(first, end, &id).unwrap();
        }
        s.finish()
    }

    fn origins_after(&self, after: Option<NodeId>) -> impl Iterator<Item = NodeId> + '_ {
        let from = after.map_or(0, |a| a.0.saturating_add(1));
        let mut last = None;
        self.0
            .range((from, 0)..)
            .map(|(&(o, _), _)| o)
            .filter(move |o| {
                let new = last != Some(*o);
                last = Some(*o);
                new && (after.is_none() || after.is_some_and(|a| *o > a.0))
            })
            .map(NodeId)
    }

    /// The chunks of a wanted range, as the server sends them.
    fn in_range(&self, r: &KeyRange) -> impl Iterator<Item = (u64, u64)> + '_ {
        let r = *r;
        self.0
            .range((r.origin.0, r.lo)..(r.origin.0, r.hi))
            .map(|(&k, _)| k)
    }

    /// The server's answer to `query` in a frame of `frame` bytes: entries and `last`.
    fn answer(&self, query: &Query<'_>, frame: usize) -> (Vec<u8>, bool) {
        let mut buf = std::vec![0; frame];
        let mut answer = Answer::<64>::new(query, frame / MAX_ENTRY, 64).unwrap();
        if let Some((after, limit)) = answer.origins_to_list() {
            let all: Vec<NodeId> = self.origins_after(after).collect();
            let n = all.len().min(limit);
            assert!(answer.origins_listed(&all[..n], n == all.len()));
        }
        let mut runs = std::vec![Run { lo: 0, hi: 0 }; 64];
        while let Some((range, max_runs)) = answer.next_range() {
            let runs = &mut runs[..max_runs];
            let (summary, sent) = self.summarize(&range, runs);
            answer
                .summarized(&mut buf, &summary, sent.map(|n| &runs[..n]))
                .unwrap();
        }
        let (len, last) = answer.finish().unwrap();
        buf.truncate(len);
        (buf, last)
    }
}

/// Bytes of message framing around a query or an answer: header, tag, list length, `last`.
const OVERHEAD: usize = 4 + 1 + 3 + 1;

#[derive(Debug, Default)]
struct Outcome {
    wanted: Vec<KeyRange>,
    sent: usize,
    received: usize,
    round_trips: usize,
}

/// Runs a walk of `puller` against `server` to its end.
fn reconcile<const Q: usize, const E: usize, const K: usize>(
    puller: &Model,
    server: &Model,
    puller_frame: usize,
    server_frame: usize,
) -> Result<Outcome, ReconError> {
    reconcile_with::<Q, E, K, 1>(puller, server, puller_frame, server_frame)
}

/// As [`reconcile`], with up to `W` queries outstanding: each round sends every query the
/// walk has, then gives it their answers in order.
fn reconcile_with<const Q: usize, const E: usize, const K: usize, const W: usize>(
    puller: &Model,
    server: &Model,
    puller_frame: usize,
    server_frame: usize,
) -> Result<Outcome, ReconError> {
    let mut walk = Walk::<Q, E, K, W>::new(1 << 20);
    let room = Room::for_frames(puller_frame, server_frame, OVERHEAD);
    let mut out = Outcome::default();
    let mut runs = [Run { lo: 0, hi: 0 }; K];
    let mut resolve = |walk: &mut Walk<Q, E, K, W>, out: &mut Outcome| loop {
        // Resolving stops while wanted ranges wait: take them, as a fetcher would.
        while let Some(range) = walk.next_own() {
            let (mine, n) = puller.summarize(&range, &mut runs);
            assert!(walk.resolve(&mine, n.map(|n| &runs[..n])));
        }
        let before = out.wanted.len();
        out.wanted
            .extend(core::iter::from_fn(|| walk.next_wanted()));
        if out.wanted.len() == before {
            break;
        }
    };
    loop {
        resolve(&mut walk, &mut out);
        let mut answers = Vec::new();
        while let Some(query) = walk.next_query(room)? {
            let mut qbuf = [0; 70_000];
            let qlen = query.write(&mut qbuf).unwrap();
            assert!(
                qlen + OVERHEAD <= server_frame,
                "a query fits the server's frames"
            );
            let origins = matches!(query, Query::Origins { .. });
            let (entries, last) = server.answer(
                &Query::read(&qbuf[..qlen]).unwrap(),
                puller_frame - OVERHEAD,
            );
            assert!(
                entries.len() + OVERHEAD <= puller_frame,
                "an answer fits the puller's frames"
            );
            out.sent += qlen + OVERHEAD;
            out.received += entries.len() + OVERHEAD;
            answers.push((origins, entries, last));
        }
        if answers.is_empty() {
            break;
        }
        assert!(answers.len() <= W);
        out.round_trips += 1;
        for (origins, entries, last) in answers {
            if origins {
                walk.on_origins(&entries, last)?;
            } else {
                walk.on_ranges(&entries)?;
            }
            resolve(&mut walk, &mut out);
        }
    }
    assert!(walk.is_done());
    Ok(out)
}

/// What listing a whole manifest of `hashes` hashes costs in frames of `frame` bytes (at
/// most 1,024 per page).
fn manifest_cost(hashes: usize, frame: usize) -> usize {
    crate::manifest::listing_cost(hashes, frame, 1024)
}

/// A log of one origin: chunks of 1 to 4 sequence numbers, tiling `0..`.
fn log(origin: u64, sizes: &[u64]) -> Vec<(u64, u64, u64)> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            let c = (origin, at, at + n);
            at += n;
            c
        })
        .collect()
}

/// Two stores holding parts of the same logs.
fn stores() -> impl Strategy<Value = (Model, Model)> {
    (
        prop::collection::vec(prop::collection::vec(1u64..5, 0..120), 1..4),
        // How each side picks its chunks: 0 all, 1 a prefix, 2 random holes, 3 none.
        (0u8..4, 0u8..4),
        any::<u64>(),
    )
        .prop_map(|(logs, (pick_a, pick_b), seed)| {
            let mut rng = seed;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let (mut a, mut b) = (Model::default(), Model::default());
            for (i, sizes) in logs.iter().enumerate() {
                // Large ids too, as random node ids are.
                let origin = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let chunks = log(origin, sizes);
                let cut_a = (next() as usize) % (chunks.len() + 1);
                let cut_b = (next() as usize) % (chunks.len() + 1);
                for (i, &(o, f, e)) in chunks.iter().enumerate() {
                    let keep = |pick, cut, r: u64| match pick {
                        0 => true,
                        1 => i < cut,
                        2 => !r.is_multiple_of(3),
                        _ => false,
                    };
                    if keep(pick_a, cut_a, next()) {
                        a.add(o, f, e);
                    }
                    if keep(pick_b, cut_b, next()) {
                        b.add(o, f, e);
                    }
                }
            }
            (a, b)
        })
}

/// Frame sizes from the smallest up to 64 KiB, small ones more often.
fn frames() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 256usize..1024, 1 => 1024usize..65_537]
}

fn keys(m: &Model) -> BTreeSet<(u64, u64)> {
    m.0.keys().copied().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The puller ends knowing exactly what it lacks: every chunk of the server it does not
    /// hold is in a wanted range, and no chunk it holds is.
    #[test]
    fn the_puller_learns_exactly_the_difference(
        (a, b) in stores(),
        puller_frame in frames(),
        server_frame in frames(),
    ) {
        let out = reconcile::<256, 16, 8>(&a, &b, puller_frame, server_frame).unwrap();
        // Never much more than the manifest of the server's chunks would cost.
        let manifest = manifest_cost(b.0.len(), puller_frame);
        prop_assert!(
            out.sent + out.received <= manifest + manifest / 20 + 1024,
            "{} bytes against a manifest of {manifest}", out.sent + out.received
        );
        let mut fetched = BTreeSet::new();
        for w in &out.wanted {
            for key in b.in_range(w) {
                prop_assert!(fetched.insert(key), "{key:?} wanted twice");
            }
        }
        let lacking: BTreeSet<_> = keys(&b).difference(&keys(&a)).copied().collect();
        prop_assert_eq!(fetched, lacking);
    }

    /// With several queries outstanding, the puller learns the same difference, in no more
    /// round trips.
    #[test]
    fn queries_in_flight_learn_the_same_difference(
        (a, b) in stores(),
        frame in frames(),
    ) {
        let one = reconcile::<256, 16, 8>(&a, &b, frame, frame).unwrap();
        let four = reconcile_with::<256, 16, 8, 4>(&a, &b, frame, frame).unwrap();
        let fetched = |o: &Outcome| -> BTreeSet<(u64, u64)> {
            o.wanted.iter().flat_map(|w| b.in_range(w)).collect()
        };
        prop_assert_eq!(fetched(&one), fetched(&four));
        prop_assert!(four.round_trips <= one.round_trips);
    }

    /// With room for few ranges, some are fetched whole instead of split: nothing is
    /// missed, and the walk still ends.
    #[test]
    fn a_full_queue_fetches_whole_ranges_and_misses_nothing(
        (a, b) in stores(),
        frame in 256usize..1024,
    ) {
        let out = reconcile::<4, 4, 2>(&a, &b, frame, frame).unwrap();
        let mut fetched = keys(&a);
        for w in &out.wanted {
            fetched.extend(b.in_range(w));
        }
        let all: BTreeSet<_> = keys(&a).union(&keys(&b)).copied().collect();
        prop_assert_eq!(fetched, all);
    }

    /// `subtract` is the set difference of the sequence numbers covered.
    #[test]
    fn subtract_is_the_difference_of_the_covered_numbers(
        theirs in prop::collection::btree_set(0u64..200, 0..120),
        mine in prop::collection::btree_set(0u64..200, 0..120),
    ) {
        let runs = |set: &BTreeSet<u64>| {
            let mut out: Vec<Run> = Vec::new();
            for &n in set {
                match out.last_mut() {
                    Some(r) if r.hi == n => r.hi += 1,
                    _ => out.push(Run { lo: n, hi: n + 1 }),
                }
            }
            out
        };
        let (t, m) = (runs(&theirs), runs(&mine));
        let got: BTreeSet<u64> = subtract(&t, &m).flat_map(|r| r.lo..r.hi).collect();
        let want: BTreeSet<u64> = theirs.difference(&mine).copied().collect();
        prop_assert_eq!(got, want);
        let pieces: Vec<Run> = subtract(&t, &m).collect();
        prop_assert!(pieces.windows(2).all(|w| w[0].hi < w[1].lo || w[0].hi <= w[1].lo));
    }

    /// Any bytes given as an answer end in an error or a valid state, never a panic.
    #[test]
    fn any_answer_bytes_are_refused_or_taken(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut walk = Walk::<8, 4, 4>::new(100);
        let room = Room { entries: 4, ranges: 8 };
        let _ = walk.next_query(room).unwrap();
        assert_eq!(walk.on_ranges(&bytes), Err(ReconError::UnexpectedAnswer));
        if walk.on_origins(&bytes, true).is_ok() {
            let mut runs = [Run { lo: 0, hi: 0 }; 4];
            let empty = Model::default();
            while let Some(r) = walk.next_own() {
                let (s, n) = empty.summarize(&r, &mut runs);
                walk.resolve(&s, n.map(|n| &runs[..n]));
            }
        }
    }
}

#[test]
fn equal_stores_take_one_exchange() {
    let mut a = Model::default();
    for origin in 1..=10 {
        for (o, f, e) in log(origin, &[1; 1000]) {
            a.add(o, f, e);
        }
    }
    let out = reconcile::<64, 16, 8>(&a, &a.clone(), 65_536, 65_536).unwrap();
    assert!(out.wanted.is_empty());
    assert_eq!(out.round_trips, 1);
    assert!(out.sent + out.received < 500, "{out:?}");
}

#[test]
fn a_store_behind_at_the_tails_learns_each_tail_in_one_exchange() {
    let (mut a, mut b) = (Model::default(), Model::default());
    for origin in 1..=10 {
        for (i, (o, f, e)) in log(origin, &[2; 1000]).into_iter().enumerate() {
            b.add(o, f, e);
            if i < 990 {
                a.add(o, f, e);
            }
        }
    }
    let out = reconcile::<64, 16, 8>(&a, &b, 65_536, 65_536).unwrap();
    assert_eq!(out.round_trips, 1);
    assert_eq!(out.wanted.len(), 10);
    assert!(
        out.wanted.iter().all(|w| w.lo == 1980 && w.hi == 2000),
        "{:?}",
        out.wanted
    );
}

#[test]
fn the_fingerprint_follows_the_chunks_not_their_order_of_arrival() {
    let range = KeyRange::whole(NodeId(7));
    let mut runs = [Run { lo: 0, hi: 0 }; 4];
    let (mut a, mut b) = (Model::default(), Model::default());
    for (o, f, e) in log(7, &[3, 1, 4, 1, 5]) {
        a.add(o, f, e);
    }
    for (o, f, e) in log(7, &[3, 1, 4, 1, 5]).into_iter().rev() {
        b.add(o, f, e);
    }
    let (sa, ra) = a.summarize(&range, &mut runs);
    assert_eq!(ra, Some(1));
    assert_eq!(runs[0], Run { lo: 0, hi: 14 });
    assert_eq!(b.summarize(&range, &mut runs).0, sa);
    // Another chunk boundary over the same numbers (a fork) is another fingerprint.
    let mut c = Model::default();
    for (o, f, e) in log(7, &[4, 4, 1, 5]) {
        c.add(o, f, e);
    }
    assert_ne!(c.summarize(&range, &mut runs).0.fingerprint, sa.fingerprint);
    assert_eq!(c.summarize(&range, &mut runs).0.count, 4);
}

#[test]
fn a_summarizer_refuses_chunks_out_of_order() {
    let mut runs = [];
    let mut s = Summarizer::new(
        KeyRange {
            origin: NodeId(1),
            lo: 10,
            hi: 20,
        },
        &mut runs,
    );
    let h = ChunkHash::default();
    assert_eq!(s.push(9, 12, &h), Err(OutOfOrder));
    assert_eq!(s.push(20, 22, &h), Err(OutOfOrder));
    assert_eq!(s.push(12, 12, &h), Err(OutOfOrder));
    s.push(12, 15, &h).unwrap();
    assert_eq!(s.push(14, 16, &h), Err(OutOfOrder));
    s.push(15, 16, &h).unwrap();
    let (summary, runs) = s.finish();
    assert_eq!(
        (summary.count, summary.first, summary.end, runs),
        (2, 12, 16, None)
    );
}

#[test]
fn a_peer_whose_summaries_never_agree_hits_the_bound() {
    // A server that answers every range with chunks the puller can never match.
    let mut walk = Walk::<64, 16, 4>::new(200);
    let room = Room {
        entries: 16,
        ranges: 16,
    };
    let mut buf = [0; 16 * MAX_ENTRY];
    let err = loop {
        let query = match walk.next_query(room) {
            Ok(Some(q)) => q,
            Ok(None) => panic!("the walk ended"),
            Err(e) => break e,
        };
        let ranges: Vec<KeyRange> = match query {
            Query::Origins { .. } => std::vec![KeyRange::whole(NodeId(1))],
            Query::Ranges { origin, ranges, .. } => ranges
                .iter()
                .map(|r| r.unwrap())
                .map(|(lo, hi)| KeyRange { origin, lo, hi })
                .collect(),
        };
        let origins = matches!(query, Query::Origins { .. });
        let mut w = EntryWriter::new(&mut buf, ranges.len()).unwrap();
        for r in &ranges {
            // Claims two chunks, without runs, at the ends of the range.
            let s = Summary {
                count: 2,
                first: r.lo,
                end: r.hi.min((r.lo + 1) << 40),
                fingerprint: Fingerprint([9; 16]),
            };
            let s = if r.hi - r.lo < 2 {
                Summary {
                    count: 1,
                    end: r.lo + 1,
                    ..s
                }
            } else {
                s
            };
            w.write(origins.then_some(r.origin), r, &s, None).unwrap();
        }
        let n = w.finish();
        let entries = buf[..n].to_vec();
        if origins {
            walk.on_origins(&entries, true).unwrap();
        } else {
            walk.on_ranges(&entries).unwrap();
        }
        // The puller has one chunk everywhere it is asked, never the same.
        while let Some(r) = walk.next_own() {
            let s = Summary {
                count: 1,
                first: r.lo,
                end: r.lo + 1,
                fingerprint: Fingerprint([1; 16]),
            };
            walk.resolve(&s, None);
        }
        while walk.next_wanted().is_some() {}
    };
    assert_eq!(err, ReconError::TooManyRanges { max: 200 });
}

#[test]
fn queries_and_range_lists_read_back() {
    let pairs = [(0, 5), (5, 9), (100, u64::MAX)];
    let q = Query::Ranges {
        origin: NodeId(u64::MAX),
        max_runs: 7,
        ranges: RangeList::new(&pairs),
    };
    let mut buf = [0; 64];
    let n = q.write(&mut buf).unwrap();
    let Query::Ranges {
        origin,
        max_runs,
        ranges,
    } = Query::read(&buf[..n]).unwrap()
    else {
        panic!("not ranges");
    };
    assert_eq!((origin, max_runs), (NodeId(u64::MAX), 7));
    assert_eq!(ranges.iter().map(Result::unwrap).collect::<Vec<_>>(), pairs);
    for after in [None, Some(NodeId(0)), Some(NodeId(u64::MAX))] {
        let q = Query::Origins {
            after,
            limit: 3,
            max_runs: 2,
        };
        let n = q.write(&mut buf).unwrap();
        assert_eq!(Query::read(&buf[..n]).unwrap(), q);
    }
    assert!(Query::read(&buf[..n + 1]).is_err());
    assert_eq!(codec::varint_len(0), 1);
    assert_eq!(codec::varint_len(127), 1);
    assert_eq!(codec::varint_len(128), 2);
    assert_eq!(codec::varint_len(u64::MAX), 10);
}

#[test]
fn summarize_reads_a_store_page_by_page() {
    let mut m = Model::default();
    for (o, f, e) in log(
        5,
        &[1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 4],
    ) {
        m.add(o, f, e);
    }
    m.add(5, 100, 101);
    let range = KeyRange {
        origin: NodeId(5),
        lo: 3,
        hi: 101,
    };
    let mut calls = 0;
    let page = |r: &KeyRange, out: &mut [(Span, ChunkHash)]| {
        calls += 1;
        Ok::<_, ()>(m.page(r, out))
    };
    let mut runs = [Run { lo: 0, hi: 0 }; 4];
    let got = summarize(&range, &mut runs, page).unwrap();
    let mut direct_runs = [Run { lo: 0, hi: 0 }; 4];
    assert_eq!(got, m.summarize(&range, &mut direct_runs));
    assert_eq!(got.1, Some(2));
    assert_eq!(
        &runs[..2],
        &[Run { lo: 3, hi: 40 }, Run { lo: 100, hi: 101 }]
    );
    assert!(calls >= 3, "{calls} pages");
    // A store that answers outside the range is caught.
    let liar = |_: &KeyRange, out: &mut [(Span, ChunkHash)]| {
        out[0] = (
            Span {
                origin: NodeId(5),
                first_seq: 0,
                end_seq: 1,
            },
            ChunkHash::default(),
        );
        Ok::<_, ()>(1)
    };
    assert_eq!(
        summarize(&range, &mut runs, liar),
        Err(SummaryError::OutOfOrder)
    );
}

#[test]
fn an_answer_refuses_queries_it_cannot_answer_and_answers_in_turn() {
    let pairs = [(0, 5), (5, 9), (9, 12)];
    let ranges = Query::Ranges {
        origin: NodeId(1),
        max_runs: 2,
        ranges: RangeList::new(&pairs),
    };
    assert_eq!(
        Answer::<2>::new(&ranges, 8, 4),
        Err(ReconError::BadQuery("more ranges than an answer holds"))
    );
    assert_eq!(
        Answer::<8>::new(&ranges, 2, 4),
        Err(ReconError::BadQuery("more ranges than an answer holds"))
    );
    let mut buf = [0; 64];
    // Bytes whose second range has width zero.
    let bytes = [1, 1, 2, 4, 0, 5, 0, 0];
    let Ok(bad) = Query::read(&bytes[..]) else {
        panic!("a query")
    };
    assert_eq!(
        Answer::<8>::new(&bad, 8, 4),
        Err(ReconError::BadQuery("malformed ranges"))
    );

    let origins = Query::Origins {
        after: None,
        limit: 2,
        max_runs: 1,
    };
    let mut answer = Answer::<8>::new(&origins, 8, 4).unwrap();
    assert_eq!(answer.next_range(), None);
    assert!(
        answer
            .summarized(&mut buf, &Summary::default(), None)
            .is_err()
    );
    assert!(
        !answer.origins_listed(&[NodeId(1), NodeId(2), NodeId(3)], true),
        "more than asked"
    );
    assert!(answer.origins_listed(&[NodeId(4)], false));
    assert!(!answer.origins_listed(&[NodeId(4)], false), "listed once");
    assert_eq!(answer.next_range(), Some((KeyRange::whole(NodeId(4)), 1)));
    assert_eq!(answer.finish(), None);
    let s = Summary {
        count: 1,
        first: 3,
        end: 4,
        fingerprint: Fingerprint([7; 16]),
    };
    answer
        .summarized(&mut buf, &s, Some(&[Run { lo: 3, hi: 4 }]))
        .unwrap();
    let (len, last) = answer.finish().unwrap();
    assert!(!last);
    let mut runs = [Run { lo: 0, hi: 0 }; 1];
    let e = codec::decode_entry(&buf[..len], &KeyRange::whole(NodeId(0)), true, &mut runs).unwrap();
    assert_eq!(
        (e.origin, e.summary, e.runs, e.rest),
        (NodeId(4), s, Some(1), &[][..])
    );
}

impl Model {
    fn page(&self, r: &KeyRange, out: &mut [(Span, ChunkHash)]) -> usize {
        let found = self.0.range((r.origin.0, r.lo)..(r.origin.0, r.hi));
        let mut n = 0;
        for (slot, (&(o, first), &(end, id))) in out.iter_mut().zip(found) {
            *slot = (
                Span {
                    origin: NodeId(o),
                    first_seq: first,
                    end_seq: end,
                },
                id,
            );
            n += 1;
        }
        n
    }
}

impl Blocks for Model {
    type Error = ();

    fn next_start(&self, origin: NodeId, from: u64, hi: u64) -> Result<Option<u64>, ()> {
        assert!(from < hi, "asked for {from}..{hi}");
        Ok(self
            .0
            .range((origin.0, from)..(origin.0, hi))
            .next()
            .map(|(k, _)| k.1))
    }

    fn block(&self, origin: NodeId, block: u64) -> Result<Option<BlockSummary>, ()> {
        let (lo, hi) = block_range(block);
        let chunks = self
            .0
            .range((origin.0, lo)..(origin.0, hi))
            .map(|(&(_, first), &(end, id))| (first, end, id));
        BlockSummary::of(block, chunks).map_err(|_| ())
    }

    fn chunks_in(&self, range: &KeyRange, out: &mut [(Span, ChunkHash)]) -> Result<usize, ()> {
        Ok(self.page(range, out))
    }
}

proptest! {
    /// Summaries made of block summaries are the summaries made chunk by chunk.
    #[test]
    fn block_summaries_add_up_to_the_same_summary(
        sizes in prop::collection::vec((1u64..3000, 0u64..3), 0..60),
        lo in 0u64..40_000,
        width in 1u64..100_000,
        whole in any::<bool>(),
        max_runs in 0usize..20,
    ) {
        let mut m = Model::default();
        let mut at = 0;
        for (size, gap) in sizes {
            // Some chunks are missing: a gap of `size` before this one.
            at += gap * size;
            m.add(4, at, at + size);
            at += size;
        }
        let range = if whole { KeyRange::whole(NodeId(4)) } else {
            KeyRange { origin: NodeId(4), lo, hi: lo.saturating_add(width) }
        };
        let mut a = std::vec![Run { lo: 0, hi: 0 }; max_runs];
        let mut b = a.clone();
        let by_blocks = summarize_by_blocks(&m, &range, &mut a).unwrap();
        let by_chunks = m.summarize(&range, &mut b);
        prop_assert_eq!(by_blocks, by_chunks);
        if let Some(n) = by_chunks.1 {
            prop_assert_eq!(&a[..n], &b[..n]);
        }
    }
}

proptest! {
    /// A block's summary extended by the chunks after a prefix of it is the summary made
    /// of all of them; a chunk not after the prefix is refused.
    #[test]
    fn a_block_summary_extended_is_the_summary_of_all_its_chunks(
        sizes in prop::collection::vec((1u64..40, 0u64..3), 1..120),
        cut in 0usize..120,
    ) {
        let mut chunks = Vec::new();
        let mut at = 0;
        for (i, (size, gap)) in sizes.into_iter().enumerate() {
            at += gap * size;
            if at + size > 1 << BLOCK_BITS {
                break;
            }
            chunks.push((at, at + size, ChunkHash::of(&(i as u64).to_le_bytes())));
            at += size;
        }
        let cut = cut.min(chunks.len());
        let whole = BlockSummary::of(0, chunks.iter().copied()).unwrap();
        let prefix = BlockSummary::of(0, chunks[..cut].iter().copied()).unwrap();
        let extended = BlockSummary::extended(prefix.clone(), 0, chunks[cut..].iter().copied());
        prop_assert_eq!(extended.unwrap(), whole);
        if cut > 0 && prefix.is_some() {
            let again = BlockSummary::extended(prefix, 0, chunks[cut - 1..].iter().copied());
            prop_assert_eq!(again, Err(OutOfOrder));
        }
    }
}

/// The fingerprint is part of the wire format: these bytes may not change within a protocol
/// version.
#[test]
fn golden_fingerprint() {
    let mut m = Model::default();
    for (o, f, e) in log(42, &[1, 2, 3]) {
        m.add(o, f, e);
    }
    m.add(42, 5000, 5001);
    let mut runs = [Run { lo: 0, hi: 0 }; 2];
    let (s, n) = m.summarize(&KeyRange::whole(NodeId(42)), &mut runs);
    assert_eq!((s.count, s.first, s.end, n), (4, 0, 5001, Some(2)));
    let hex: std::string::String = s
        .fingerprint
        .0
        .iter()
        .map(|b| std::format!("{b:02x}"))
        .collect();
    assert_eq!(hex, "86c0e6ae3f954fdcd4ec19d6df045891");
}

#[test]
fn the_chain_keys_are_derived_from_their_contexts() {
    assert_eq!(BLOCK_KEY, hash::derive_key(BLOCK_CONTEXT));
    assert_eq!(RANGE_KEY, hash::derive_key(RANGE_CONTEXT));
}

#[test]
fn a_summary_in_progress_is_small() {
    assert!(
        size_of::<Summarizer<'_>>() <= 256,
        "{}",
        size_of::<Summarizer<'_>>()
    );
}

/// A narrow range queued behind the parts of a lower one is not merged into a query after
/// them: a query's ranges ascend.
#[test]
fn queued_ranges_go_into_a_query_in_order() {
    let (mut a, mut b) = (Model::default(), Model::default());
    for seq in 0..67 {
        b.add(1, seq, seq + 1);
        if seq % 2 == 0 {
            a.add(1, seq, seq + 1);
        }
    }
    a.add(1, 1023, 1024);
    b.add(1, 1023, 1024);
    let out = reconcile::<256, 16, 1>(&a, &b, 4096, 4096).unwrap();
    let fetched: BTreeSet<_> = out.wanted.iter().flat_map(|w| b.in_range(w)).collect();
    let lacking: BTreeSet<_> = keys(&b).difference(&keys(&a)).copied().collect();
    assert_eq!(fetched, lacking);
}

#[test]
fn an_answer_caps_the_runs_asked_for_at_its_buffer() {
    let origins = Query::Origins {
        after: None,
        limit: 1,
        max_runs: u16::MAX,
    };
    let mut answer = Answer::<4>::new(&origins, 4, 3).unwrap();
    assert!(answer.origins_listed(&[NodeId(1)], true));
    assert_eq!(answer.next_range(), Some((KeyRange::whole(NodeId(1)), 3)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A server that answers every query with well-formed entries of its own choosing
    /// (counts, hulls, runs and fingerprints at random, true or not) never panics the walk,
    /// which ends, or stops at its bound with a typed error; every range it wants lies
    /// inside a range it asked about.
    #[test]
    fn a_lying_server_ends_the_walk_or_meets_its_bound(seed in any::<u64>(), frame in 256usize..2048) {
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut walk = Walk::<64, 8, 4, 2>::new(2_000);
        let room = Room::for_frames(frame, frame, OVERHEAD);
        let mine = Model::default();
        let mut runs = [Run { lo: 0, hi: 0 }; 4];
        let mut asked_hull: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut wanted = Vec::new();
        let outcome: Result<(), ReconError> = (|| loop {
            while let Some(r) = walk.next_own() {
                // This side holds one chunk at the start of every range, or none.
                let (mut s, _) = mine.summarize(&r, &mut runs);
                if next() % 2 == 0 && r.hi - r.lo > 1 {
                    s = Summary { count: 1, first: r.lo, end: r.lo + 1, fingerprint: Fingerprint([3; 16]) };
                }
                let own = [Run { lo: s.first, hi: s.end }];
                walk.resolve(&s, (s.count > 0).then_some(&own[..]));
            }
            wanted.extend(core::iter::from_fn(|| walk.next_wanted()));
            let mut pending = Vec::new();
            while let Some(q) = walk.next_query(room)? {
                let (origins, ranges): (bool, Vec<KeyRange>) = match q {
                    Query::Origins { after, limit, .. } => {
                        let n = (next() % u64::from(limit)) as usize + 1;
                        let from = after.map_or(0, |a| a.0 + 1);
                        let mut os: Vec<u64> = (0..n).map(|_| from + next() % 50).collect();
                        os.sort_unstable();
                        os.dedup();
                        (true, os.into_iter().map(|o| KeyRange::whole(NodeId(o))).collect())
                    }
                    Query::Ranges { origin, ranges, .. } => (
                        false,
                        ranges.iter().map(|r| r.unwrap()).map(|(lo, hi)| KeyRange { origin, lo, hi }).collect(),
                    ),
                };
                for r in &ranges {
                    let e = asked_hull.entry(r.origin.0).or_insert((r.lo, r.hi));
                    *e = (e.0.min(r.lo), e.1.max(r.hi));
                }
                let mut buf = std::vec![0; frame];
                let mut w = EntryWriter::new(&mut buf, ranges.len()).unwrap();
                for r in &ranges {
                    let width = r.hi - r.lo;
                    let first = r.lo + next() % width.min(1 << 40);
                    let end = first.saturating_add(1 + next() % 1000);
                    let count = 1 + next() % (end - first);
                    let empty = !origins && next() % 5 == 0;
                    let s = Summary { count: if empty { 0 } else { count }, first, end, fingerprint: Fingerprint([(next() % 4) as u8; 16]) };
                    let run = [Run { lo: first, hi: end }];
                    let with_runs = (next() % 2 == 0).then_some(&run[..]);
                    w.write(origins.then_some(r.origin), r, &s, with_runs).unwrap();
                }
                let len = w.finish();
                buf.truncate(len);
                pending.push((origins, buf, next() % 3 == 0));
            }
            if pending.is_empty() {
                return Ok(());
            }
            for (origins, entries, last) in pending {
                let answered = if origins { walk.on_origins(&entries, last) } else { walk.on_ranges(&entries) };
                match answered {
                    Ok(()) => {}
                    Err(ReconError::BadSummary(_)) => return Ok(()),
                    Err(e) => return Err(e),
                }
                while let Some(r) = walk.next_own() {
                    let (s, _) = mine.summarize(&r, &mut runs);
                    walk.resolve(&s, Some(&[]));
                }
            }
        })();
        match outcome {
            Ok(()) | Err(ReconError::TooManyRanges { max: 2_000 }) => {}
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
        for w in &wanted {
            let hull = asked_hull.get(&w.origin.0).copied();
            prop_assert!(hull.is_some_and(|(lo, hi)| lo <= w.lo && w.hi <= hi), "{w:?} outside {hull:?}");
            prop_assert!(w.lo < w.hi);
        }
    }
}

#[test]
fn a_walk_costs_what_its_docs_say() {
    const fn formula(q: usize, e: usize, k: usize, w: usize) -> usize {
        72 * q + (72 + 16 * k) * e + 16 * e * w
    }
    let host = size_of::<Walk<1024, 64, 16, 4>>();
    let device = size_of::<Walk<16, 4, 4, 1>>();
    assert!(host <= formula(1024, 64, 16, 4) + 1024, "{host}");
    assert!(device <= formula(16, 4, 4, 1) + 256, "{device}");
    assert!(
        host * 10 >= formula(1024, 64, 16, 4) * 9,
        "{host}: the docs overstate it"
    );
}

proptest! {
    /// Splitting is exact: the parts tile the range at `lo + floor(width × i / n)`.
    #[test]
    fn a_split_tiles_its_range_at_exact_points(
        lo in any::<u64>(),
        width in prop_oneof![1u64..40, any::<u64>()],
        parts in 2usize..=SPLIT,
    ) {
        let hi = lo.saturating_add(width).max(lo + u64::from(lo < u64::MAX));
        prop_assume!(lo < hi);
        let range = KeyRange { origin: NodeId(1), lo, hi };
        let mut out = heapless::Vec::<(u64, u64), SPLIT>::new();
        walk::split(&range, parts, &mut out);
        let n = out.len() as u128;
        prop_assert_eq!(n, u128::from(hi - lo).min(parts as u128));
        for (i, &(a, b)) in out.iter().enumerate() {
            let at = |i: u128| lo + (u128::from(hi - lo) * i / n) as u64;
            prop_assert_eq!((a, b), (at(i as u128), at(i as u128 + 1)));
            prop_assert!(a < b);
        }
    }
}
