//! The conduit between two in-memory ends: whole syncs, fetches, both throttles, the
//! backlog, stalls, aborts and kept chunks, each checked through the actions alone.

use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::chunk::test_chunk;
use crate::session::{ConfigError, Incompatible, Stored};
use crate::store::scan;
use crate::throttle::ThrottleConfig;
use crate::wire::{self, Decoded, MAX_FRAME_LIMIT, Message};

type C = Conduit<'static, Vec<u8>, 8, 4>;

/// One end and the store behind it: the adapter's part, done as the module docs say.
pub(crate) struct End {
    pub(crate) conduit: C,
    pub(crate) store: BTreeMap<ChunkHash, Vec<u8>>,
    serving: Vec<u8>,
    /// Bytes received from the other end, not yet in the conduit's buffer.
    pub(crate) inbox: Vec<u8>,
    /// Bytes sent, not yet delivered.
    pub(crate) outbox: Vec<u8>,
    pub(crate) outcome: Option<Result<(), Error>>,
    pub(crate) failed: Vec<(ChunkHash, FailReason)>,
    pub(crate) shutdown: bool,
    /// Whether the store refuses every write.
    pub(crate) broken_store: bool,
    /// Chunks kept (`keep`) and not yet acknowledged.
    pub(crate) keeping: Option<Vec<Vec<u8>>>,
    /// The deadline of the last `Wait`.
    pub(crate) deadline: Option<Instant>,
    /// Whether this end writes what it is handed (a peer that never reads does not).
    pub(crate) writes: bool,
    /// Hashes the peer listed, in a listing.
    pub(crate) listed: Vec<ChunkHash>,
    /// Every range the conduit asked this end's store to summarise.
    pub(crate) summarized: Vec<KeyRange>,
    /// If set, every byte this end sends, as the other end receives it.
    pub(crate) tap: Option<Vec<u8>>,
    /// Signature checks the conduit left to this end.
    #[cfg(all(feature = "secure", feature = "std"))]
    pub(crate) deferred: usize,
    /// Over a secure link: what this end lets the peer's key do, and the keys it was
    /// asked about.
    #[cfg(feature = "secure")]
    pub(crate) access: crate::secure::Access,
    #[cfg(feature = "secure")]
    pub(crate) asked: Vec<crate::secure::PublicKey>,
    /// Over a secure link: the origins' keys this end trusts (besides the peer's and its
    /// own).
    #[cfg(feature = "secure")]
    pub(crate) origin_keys: Vec<crate::secure::PublicKey>,
}

pub(crate) fn chunks(origin: u64, n: usize, payload: usize) -> BTreeMap<ChunkHash, Vec<u8>> {
    (0..n)
        .map(|i| {
            let bytes = test_chunk(origin, i as u64 * 10, &vec![i as u8; payload]);
            (ChunkHash::of(&bytes), bytes)
        })
        .collect()
}

pub(crate) fn config(id: u64) -> Config {
    Config {
        max_frame: 256,
        ..Config::new(NodeId(id))
    }
}

impl End {
    pub(crate) fn new(config: Config, limits: Limits, store: BTreeMap<ChunkHash, Vec<u8>>) -> Self {
        let buffers = Buffers {
            receive: vec![0; 64],
            transmit: Vec::new(),
            reassembly: Vec::new(),
        };
        Self {
            conduit: C::new(config, Instant::ZERO, buffers, limits).unwrap(),
            store,
            serving: Vec::new(),
            inbox: Vec::new(),
            outbox: Vec::new(),
            outcome: None,
            failed: Vec::new(),
            shutdown: false,
            broken_store: false,
            keeping: None,
            deadline: None,
            writes: true,
            listed: Vec::new(),
            summarized: Vec::new(),
            tap: None,
            #[cfg(all(feature = "secure", feature = "std"))]
            deferred: 0,
            #[cfg(feature = "secure")]
            access: crate::secure::Access::FULL,
            #[cfg(feature = "secure")]
            asked: Vec::new(),
            #[cfg(feature = "secure")]
            origin_keys: Vec::new(),
        }
    }

    /// Carries out actions until the conduit waits or closes; returns whether anything
    /// happened.
    pub(crate) fn pump(&mut self, now: Instant, mut node: Option<&mut (dyn Budget + '_)>) -> bool {
        let mut moved = false;
        for _ in 0..100_000 {
            if self.outcome.is_some() {
                return moved;
            }
            let action = self
                .conduit
                .poll_serving(now, node.as_deref_mut(), &self.serving);
            match action {
                Action::Send { frame, piece, .. } => {
                    moved = true;
                    if !self.writes {
                        return moved;
                    }
                    self.outbox.extend_from_slice(frame);
                    let mut n = frame.len();
                    if let Some(p) = piece {
                        let range = p.offset as usize..(p.offset + p.len) as usize;
                        self.outbox.extend_from_slice(&self.serving[range]);
                        n += p.len as usize;
                    }
                    self.conduit.written(now, n);
                }
                Action::Summarize { range, runs } => {
                    self.summarized.push(range);
                    let (summary, n) = crate::recon::summarize(&range, runs, |r, out| {
                        Ok::<_, ()>(scan::chunks_in(out, r, || spans(&self.store)))
                    })
                    .unwrap();
                    self.conduit.summarized(&summary, n).unwrap();
                }
                Action::Origins { after, out } => {
                    let (n, last) = scan::origins_after(out, after, || spans(&self.store));
                    self.conduit.origins(n, last).unwrap();
                }
                Action::ReadFirst(range) => {
                    let mut first = [(Span::default(), ChunkHash::default())];
                    match scan::chunks_in(&mut first, &range, || spans(&self.store)) {
                        1 => {
                            let (span, id) = first[0];
                            self.serving = self.store[&id].clone();
                            self.conduit
                                .serve_in_range(&span, self.serving.len())
                                .unwrap();
                        }
                        _ => self.conduit.not_found().unwrap(),
                    }
                }
                Action::Read(id) => match self.store.get(&id) {
                    Some(bytes) => {
                        self.serving = bytes.clone();
                        self.conduit.serve(bytes.len()).unwrap();
                    }
                    None => self.conduit.not_found().unwrap(),
                },
                Action::List { range, out } => {
                    let n = scan::chunks_in(out, &range, || spans(&self.store));
                    self.conduit.listed(n).unwrap();
                }
                Action::Listed(ids) => {
                    moved = true;
                    self.listed.extend(wire::ids_of(ids).expect("whole hashes"));
                }
                Action::Store(chunk) => {
                    moved = true;
                    if self.broken_store {
                        self.conduit.abort();
                    } else if let Some(kept) = &mut self.keeping {
                        let len = chunk.bytes().len();
                        let mut buf = self.conduit.keep(Vec::new()).unwrap();
                        buf.truncate(len);
                        kept.push(buf);
                    } else {
                        self.store.insert(chunk.id(), chunk.bytes().to_vec());
                        self.conduit.stored(Stored::Kept).unwrap();
                    }
                }
                // A deferred check, run here (an adapter may run it on another thread).
                #[cfg(all(feature = "secure", feature = "std"))]
                Action::StoreUnsealed { chunk, check } => {
                    moved = true;
                    self.deferred += 1;
                    match check.check() {
                        Ok(()) => {
                            self.store.insert(chunk.id(), chunk.bytes().to_vec());
                            self.conduit.stored(Stored::Kept).unwrap();
                        }
                        // The adapter that checked reports the failure.
                        Err(reason) => {
                            self.failed.push((chunk.id(), reason));
                            self.conduit.refused().unwrap();
                        }
                    }
                }
                Action::Connected(_) => {}
                #[cfg(feature = "secure")]
                Action::Authorize(key) => {
                    self.asked.push(key);
                    self.conduit.authorize(self.access).unwrap();
                }
                #[cfg(feature = "secure")]
                Action::OriginKey(origin) => {
                    let key = self.origin_keys.iter().find(|k| k.node_id() == origin);
                    self.conduit.origin_key(origin, key.copied()).unwrap();
                }
                Action::ChunkFailed { hash, reason } => self.failed.push((hash, reason)),
                Action::Shutdown => self.shutdown = true,
                Action::Wait(wait) => {
                    self.deadline = wait.deadline;
                    if wait.read && !self.inbox.is_empty() {
                        let n = self.conduit.receive(&self.inbox);
                        self.inbox.drain(..n);
                        moved = true;
                        continue;
                    }
                    return moved;
                }
                Action::Closed(outcome) => {
                    self.outcome = Some(outcome);
                    return true;
                }
            }
        }
        panic!("the conduit never waits");
    }

    /// Stores the kept chunks and tells the conduit.
    pub(crate) fn finish_keeping(&mut self) {
        for bytes in self.keeping.take().unwrap_or_default() {
            let len = bytes.len();
            self.store.insert(ChunkHash::of(&bytes), bytes);
            self.conduit.kept_stored(len, Stored::Kept);
        }
    }
}

/// The spans of `store`'s chunks, as the core's [`scan`] reads them.
fn spans(store: &BTreeMap<ChunkHash, Vec<u8>>) -> impl Iterator<Item = (Span, &ChunkHash)> + '_ {
    store
        .iter()
        .filter_map(|(id, b)| Span::of(b).map(|s| (s, id)))
}

/// Runs two ends until both close or `limit` of virtual time passed; returns the time.
pub(crate) fn run(a: &mut End, b: &mut End, limit: Duration) -> Instant {
    run_until(a, b, Instant::ZERO, Instant::ZERO + limit)
}

/// Runs both ends from `now` until both close, or nothing moves and no deadline of an end
/// still open comes before `until`; returns the time reached.
pub(crate) fn run_until(a: &mut End, b: &mut End, mut now: Instant, until: Instant) -> Instant {
    for _ in 0..1_000_000 {
        if a.outcome.is_some() && b.outcome.is_some() {
            return now;
        }
        let mut moved = a.pump(now, None) | b.pump(now, None);
        if !a.outbox.is_empty() || !b.outbox.is_empty() {
            moved = true;
            for end in [&mut *a, &mut *b] {
                if let Some(tap) = &mut end.tap {
                    tap.extend_from_slice(&end.outbox);
                }
            }
            b.inbox.append(&mut a.outbox);
            a.inbox.append(&mut b.outbox);
        }
        if moved {
            continue;
        }
        let open = |e: &End| e.deadline.filter(|_| e.outcome.is_none());
        match [open(a), open(b)].into_iter().flatten().min() {
            Some(t) if t <= until => {
                now = now.max(t);
                a.conduit.handle_timeout(now);
                b.conduit.handle_timeout(now);
            }
            _ => return now,
        }
    }
    panic!(
        "no end at {now:?}: deadlines {:?} {:?}, outcomes {:?} {:?}",
        a.deadline, b.deadline, a.outcome, b.outcome
    );
}

#[test]
fn two_ends_sync_both_ways_and_count_chunks_once_stored() {
    let mut a = End::new(config(1), Limits::new(), chunks(1, 12, 300));
    let mut b = End::new(config(2), Limits::new(), chunks(2, 5, 40));
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(b.outcome, Some(Ok(())));
    assert_eq!(a.store, b.store);
    assert_eq!(a.store.len(), 17);
    let (pa, pb) = (a.conduit.progress(), b.conduit.progress());
    assert_eq!((pa.total_chunks, pa.synced_chunks), (5, 5));
    assert_eq!((pb.total_chunks, pb.synced_chunks), (12, 12));
    assert!(a.failed.is_empty() && b.failed.is_empty());
}

/// An end that fetches exactly `ids` and serves nothing.
fn fetcher(ids: &'static [ChunkHash]) -> End {
    let fetching = Config {
        pull: false,
        serve: false,
        ..config(1)
    };
    let mut end = End::new(fetching, Limits::new(), BTreeMap::new());
    end.conduit.fetch(ids);
    end
}

#[test]
fn a_fetch_of_more_chunks_than_a_page_gets_them_all_before_done() {
    let server = chunks(3, 30, 20);
    let ids: Vec<ChunkHash> = server.keys().copied().collect();
    let mut a = fetcher(ids.leak());
    let mut b = End::new(config(2), Limits::new(), server.clone());
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(a.store, server);
    assert_eq!(a.conduit.progress().synced_chunks, 30);
}

#[test]
fn a_chunk_the_peer_lacks_is_reported_failed() {
    let missing = ChunkHash::of(b"nobody has this");
    let mut a = fetcher(vec![missing].leak());
    let mut b = End::new(config(2), Limits::new(), chunks(2, 2, 10));
    run(&mut a, &mut b, Duration::from_secs(60));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(a.failed, vec![(missing, FailReason::NotFound)]);
}

/// A reassembly `Vec` that held a large chunk does not lend its room to a small one: a
/// small chunk kept from it would hold that memory while counted at its length.
#[test]
fn a_vec_buffer_is_made_anew_for_a_much_smaller_chunk() {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    assert!(Buffer::prepare(&mut buf, 100));
    assert!(buf.is_empty() && buf.capacity() >= 100);
    assert!(
        buf.capacity() <= 100 + 25 + SPARE_ROOM,
        "{}",
        buf.capacity()
    );
    // A buffer about the right size is reused as it is.
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    buf.extend_from_slice(&[7; 4000]);
    let at = buf.as_ptr();
    assert!(Buffer::prepare(&mut buf, 4000));
    assert!(buf.is_empty() && buf.as_ptr() == at);
}

#[test]
fn kept_chunks_count_once_acknowledged_and_hold_back_done_and_the_close() {
    let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
    a.keeping = Some(Vec::new());
    let mut b = End::new(config(2), Limits::new(), chunks(2, 4, 100));
    // A store slower than the idle timeout: a waits without timing out, and its
    // `KeepAlive`s keep b, which has sent everything, from timing out too.
    let idle = config(1).idle_timeout;
    let t = run(&mut a, &mut b, Duration::from_secs(4 * idle.as_secs()));
    assert!(t >= Instant::ZERO + idle + idle, "reached {t:?}");
    assert_eq!(
        a.outcome, None,
        "not closed while kept chunks are unwritten"
    );
    assert_eq!(
        b.outcome, None,
        "the peer does not complete before a's store answered"
    );
    assert_eq!(a.conduit.progress().synced_chunks, 0);
    assert_eq!(a.keeping.as_ref().map(Vec::len), Some(4));
    a.finish_keeping();
    run_until(&mut a, &mut b, t, t + Duration::from_secs(5));
    assert_eq!(a.outcome, Some(Ok(())));
    assert_eq!(b.outcome, Some(Ok(())));
    assert_eq!(a.conduit.progress().synced_chunks, 4);
    assert_eq!(a.store, b.store);
}

#[test]
fn a_fork_counts_as_failed_not_synced() {
    let mut s = End::new(config(1), Limits::new(), BTreeMap::new());
    s.conduit.session.chunk_stored(Stored::Fork);
    assert_eq!(s.conduit.progress().failed_chunks, 1);
    assert_eq!(s.conduit.progress().synced_chunks, 0);
}

#[test]
fn a_store_failure_tells_the_peer_then_lingers_until_it_hangs_up() {
    let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
    a.broken_store = true;
    let mut b = End::new(config(2), Limits::new(), chunks(2, 3, 50));
    run(&mut a, &mut b, Duration::from_secs(60));
    assert!(
        a.shutdown,
        "the writing side was shut after the Error frame"
    );
    assert_eq!(a.outcome, Some(Err(Error::Aborted)));
    assert!(
        matches!(b.outcome, Some(Err(Error::Remote(_)))),
        "{:?}",
        b.outcome
    );
    // Here the peer never hangs up: the linger ends it.
    let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
    a.conduit.abort();
    assert!(a.pump(Instant::ZERO, None));
    assert!(a.shutdown);
    assert_eq!(a.outcome, None);
    assert_eq!(a.deadline, Some(Instant::ZERO + Duration::from_secs(1)));
    a.conduit
        .handle_timeout(Instant::ZERO + Duration::from_secs(1));
    a.pump(Instant::ZERO + Duration::from_secs(1), None);
    assert_eq!(a.outcome, Some(Err(Error::Aborted)));
}

#[test]
fn a_peer_that_closes_early_fails_the_session() {
    let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
    a.pump(Instant::ZERO, None);
    a.conduit.eof();
    a.pump(Instant::ZERO, None);
    assert_eq!(a.outcome, Some(Err(Error::Closed)));
}

#[test]
fn a_peer_that_takes_no_bytes_stalls_within_the_idle_timeout() {
    let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
    a.writes = false;
    a.pump(Instant::ZERO, None);
    // The Hello was handed out and never written: nothing more is, one frame at a time.
    assert!(matches!(
        a.conduit.poll(Instant::ZERO),
        Action::Wait(Wait {
            deadline: Some(t),
            ..
        }) if t == Instant::ZERO + Duration::from_secs(10)
    ));
    let idle = a.conduit.session().config().idle_timeout;
    a.conduit.handle_timeout(Instant::ZERO + idle);
    a.writes = true;
    a.pump(Instant::ZERO + idle, None);
    assert_eq!(a.outcome, Some(Err(Error::Stalled)));
}

#[test]
fn the_backlog_bounds_what_is_handed_out_unwritten() {
    let limits = Limits {
        backlog: 1000,
        ..Limits::new()
    };
    let server = chunks(2, 8, 300);
    let ids: &'static [ChunkHash] = server.keys().copied().collect::<Vec<_>>().leak();
    let mut b = End::new(config(2), limits, server);
    let mut a = fetcher(ids);
    // b hands out its Hello and the transport takes nothing; a's requests arrive.
    b.writes = false;
    a.pump(Instant::ZERO, None);
    b.pump(Instant::ZERO, None);
    b.inbox.append(&mut a.outbox);
    b.conduit.receive(&b.inbox);
    let mut handed = 0;
    loop {
        match b.conduit.poll(Instant::ZERO) {
            Action::Send { frame, piece, .. } => {
                handed += frame.len() + piece.map_or(0, |p| p.len as usize);
            }
            Action::Read(id) => {
                let bytes = b.store[&id].clone();
                b.serving = bytes;
                b.conduit.serve(b.serving.len()).unwrap();
            }
            Action::Wait(_) => break,
            Action::Connected(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(handed > 0);
    assert!(handed < 1000 + 256, "{handed} bytes handed out unwritten");
}

#[test]
fn the_node_throttle_reaches_the_wait_deadline() {
    let mut node = Throttle::new(ThrottleConfig::per_second(1000)).unwrap();
    let mut b = End::new(config(2), Limits::new(), chunks(2, 8, 300));
    let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
    let mut now = Instant::ZERO;
    let mut waits = 0;
    while b.outcome.is_none() && waits < 10_000 {
        let moved = a.pump(now, None) | b.pump(now, Some(&mut node));
        b.inbox.append(&mut a.outbox);
        a.inbox.append(&mut b.outbox);
        if !moved {
            let next = [a.deadline, b.deadline]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            now = now.max(next);
            a.conduit.handle_timeout(now);
            b.conduit.handle_timeout(now);
            waits += 1;
        }
    }
    assert_eq!(b.outcome, Some(Ok(())));
    let sent = b.conduit.stats().bytes_sent;
    let secs = (now - Instant::ZERO).as_micros() as f64 / 1e6;
    // One window's budget may go at once; after that the node's rate holds.
    assert!(
        sent as f64 <= 1000.0 * (secs + 1.0),
        "{sent} bytes in {secs} s"
    );
    assert!(secs > 1.0, "throttled: {secs} s");
}

#[test]
fn buffers_too_small_say_what_they_need() {
    let small = |receive: usize| Buffers {
        receive: vec![0u8; receive],
        transmit: Vec::new(),
        reassembly: Vec::new(),
    };
    let mut rx = [0u8; 100];
    let mut tx = [0u8; 10];
    let mut re = [0u8; 100];
    let slices = Buffers {
        receive: &mut rx[..],
        transmit: &mut tx[..],
        reassembly: &mut re[..],
    };
    assert_eq!(
        Conduit::<&mut [u8], 8, 4>::new(config(1), Instant::ZERO, slices, Limits::new()).err(),
        Some(ConfigError::BufferTooSmall {
            buffer: "receive",
            len: 100,
            needed: 256
        })
    );
    let mut rx = [0u8; 256];
    let slices = Buffers {
        receive: &mut rx[..],
        transmit: &mut tx[..],
        reassembly: &mut re[..],
    };
    assert!(matches!(
        Conduit::<&mut [u8], 8, 4>::new(config(1), Instant::ZERO, slices, Limits::new()),
        Err(ConfigError::BufferTooSmall {
            buffer: "transmit",
            ..
        })
    ));
    // A growable buffer is fine from any size.
    assert!(C::new(config(1), Instant::ZERO, small(0), Limits::new()).is_ok());
}

#[test]
fn a_reassembly_buffer_caps_the_largest_chunk_accepted() {
    let mut rx = [0u8; 256];
    let mut tx = [0u8; 1024];
    let mut re = [0u8; 100];
    let c = Conduit::<&mut [u8], 8, 4>::new(
        config(1),
        Instant::ZERO,
        Buffers {
            receive: &mut rx[..],
            transmit: &mut tx[..],
            reassembly: &mut re[..],
        },
        Limits::new(),
    )
    .unwrap();
    assert_eq!(c.session().config().max_chunk_len, 100);
}

#[test]
fn answers_that_were_not_asked_for_change_nothing() {
    let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
    assert_eq!(
        a.conduit.summarized(&Summary::default(), None),
        Err(ApiMisuse::NotAsked)
    );
    assert_eq!(a.conduit.serve(10), Err(ApiMisuse::NotAsked));
    assert_eq!(a.conduit.not_found(), Err(ApiMisuse::NotAsked));
    assert_eq!(a.conduit.origins(0, true), Err(ApiMisuse::NotAsked));
    assert_eq!(a.conduit.stored(Stored::Kept), Err(ApiMisuse::NotAsked));
    assert!(a.conduit.keep(vec![1]).is_err());
    // The first action is still the Hello.
    let Action::Send { frame, .. } = a.conduit.poll(Instant::ZERO) else {
        panic!("expected the Hello");
    };
    assert!(matches!(
        wire::decode(frame, MAX_FRAME_LIMIT),
        Ok(Decoded::Frame {
            message: Message::Hello(_),
            ..
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the two stores hold and however small the frames, both end with the union.
    #[test]
    fn any_two_stores_end_with_their_union(
        a_chunks in 0usize..20,
        b_chunks in 0usize..20,
        shared in 0usize..5,
        payload in 1usize..400,
        frame in prop_oneof![Just(256u32), Just(300), Just(1024)],
    ) {
        let mut sa = chunks(1, a_chunks, payload);
        let mut sb = chunks(2, b_chunks, payload / 2 + 1);
        for (id, bytes) in chunks(3, shared, 7) {
            sa.insert(id, bytes.clone());
            sb.insert(id, bytes);
        }
        let mut union = sa.clone();
        union.extend(sb.clone());
        let cfg = |id| Config { max_frame: frame, ..config(id) };
        let mut a = End::new(cfg(1), Limits::new(), sa);
        let mut b = End::new(cfg(2), Limits { backlog: 700, ..Limits::new() }, sb);
        run(&mut a, &mut b, Duration::from_secs(120));
        prop_assert_eq!(a.outcome, Some(Ok(())));
        prop_assert_eq!(b.outcome, Some(Ok(())));
        prop_assert_eq!(&a.store, &union);
        prop_assert_eq!(&b.store, &union);
    }

    /// Logs of the same origins held in parts (tails, holes, nothing, everything) on each
    /// side: each side fetches exactly what it lacks, over any frame size.
    #[test]
    fn parts_of_the_same_logs_reconcile_to_the_union(
        logs in prop::collection::vec(0usize..40, 1..4),
        seed in any::<u64>(),
        frame in prop_oneof![Just(256u32), Just(301), Just(1024), Just(65_536)],
    ) {
        let mut rng = seed | 1;
        let (mut sa, mut sb) = (BTreeMap::new(), BTreeMap::new());
        for (o, &n) in logs.iter().enumerate() {
            // One way of picking per origin: 0 random, 1 a prefix for one side, 2 all for both.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let way = rng % 3;
            let cut = (rng >> 8) as usize % (n + 1);
            for (i, (id, bytes)) in chunks(o as u64 + 1, n, 20).into_iter().enumerate() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let (in_a, in_b) = match way {
                    0 => (rng & 1 == 0, rng & 2 == 0),
                    1 => (true, i < cut),
                    _ => (true, true),
                };
                if in_a {
                    sa.insert(id, bytes.clone());
                }
                if in_b {
                    sb.insert(id, bytes);
                }
            }
        }
        let mut union = sa.clone();
        union.extend(sb.clone());
        let lacks = |s: &BTreeMap<ChunkHash, Vec<u8>>| union.keys().filter(|k| !s.contains_key(*k)).count() as u64;
        let (a_lacks, b_lacks) = (lacks(&sa), lacks(&sb));
        let cfg = |id| Config { max_frame: frame, ..config(id) };
        let mut a = End::new(cfg(1), Limits::new(), sa);
        let mut b = End::new(cfg(2), Limits::new(), sb);
        run(&mut a, &mut b, Duration::from_secs(600));
        prop_assert_eq!(a.outcome, Some(Ok(())));
        prop_assert_eq!(b.outcome, Some(Ok(())));
        prop_assert_eq!(&a.store, &union);
        prop_assert_eq!(&b.store, &union);
        prop_assert!(a.conduit.progress().synced_chunks >= a_lacks);
        prop_assert!(b.conduit.progress().synced_chunks >= b_lacks);
        prop_assert_eq!(a.conduit.progress().failed_chunks + b.conduit.progress().failed_chunks, 0);
    }
}

/// `a` pulls `b`'s chunks; returns the virtual seconds until `a` has them all and the
/// bytes `b` sent, or how `a`'s session ended if it failed.
fn pull_time(a_config: Config, b_config: Config) -> Result<(f64, u64), Error> {
    let mut b = End::new(b_config, Limits::new(), chunks(2, 200, 400));
    let mut a = End::new(a_config, Limits::new(), BTreeMap::new());
    let end = run(&mut a, &mut b, Duration::from_secs(3_600));
    if let Some(Err(e)) = a.outcome {
        return Err(e);
    }
    assert_eq!(a.store, b.store);
    let secs = (end - Instant::ZERO).as_micros() as f64 / 1e6;
    Ok((secs, b.conduit.stats().bytes_sent))
}

#[test]
fn the_receiver_sets_the_rate_the_sender_keeps_and_the_lower_limit_wins() {
    let rate = 20_000;
    // Raw: the rate is what is checked, whatever the build's codecs.
    let raw = |config: Config| Config {
        compress: crate::session::Compress::Never,
        ..config
    };
    let receiving = Config {
        receive_rate: rate,
        ..config(1)
    };
    // Only the receiver limits: the sender keeps its rate, over short windows.
    let (secs, sent) = pull_time(receiving, raw(config(2))).unwrap();
    let achieved = sent as f64 / secs;
    assert!(
        (achieved / rate as f64 - 1.0).abs() < 0.02,
        "{sent} bytes in {secs:.2} s: {achieved:.0} bytes/s for {rate}"
    );
    // The sender's own limit is lower: it wins.
    let slower = Config {
        throttle: ThrottleConfig {
            max_bytes_per_sec: rate / 2,
            window_duration: Duration::from_millis(20),
        },
        ..config(2)
    };
    let (secs, sent) = pull_time(receiving, raw(slower)).unwrap();
    let achieved = sent as f64 / secs;
    assert!(
        (achieved / (rate / 2) as f64 - 1.0).abs() < 0.02,
        "{achieved:.0} bytes/s for {}",
        rate / 2
    );
    // The receiver's is lower: it wins over the sender's.
    let faster = Config {
        throttle: ThrottleConfig {
            max_bytes_per_sec: rate * 4,
            window_duration: Duration::from_millis(20),
        },
        ..config(2)
    };
    let (secs, sent) = pull_time(receiving, raw(faster)).unwrap();
    let achieved = sent as f64 / secs;
    assert!((achieved / rate as f64 - 1.0).abs() < 0.02, "{achieved:.0}");
}

/// On a rate-limited link, chunks that compress travel compressed: the same pull takes a
/// fraction of the bytes and of the time, and ends with the same store; with
/// `Compress::Never`, or when the receiver does not take LZ4, they go raw.
#[test]
#[cfg(feature = "lz4-compress")]
fn a_rate_limited_link_carries_compressible_chunks_compressed() {
    use crate::session::Compress;
    let receiving = Config {
        receive_rate: 20_000,
        ..config(1)
    };
    let (raw_secs, raw_sent) = pull_time(
        receiving,
        Config {
            compress: Compress::Never,
            ..config(2)
        },
    )
    .unwrap();
    let (secs, sent) = pull_time(receiving, config(2)).unwrap();
    assert!(
        sent * 3 < raw_sent && secs * 3.0 < raw_secs,
        "compressed: {sent} bytes in {secs:.2} s; raw: {raw_sent} bytes in {raw_secs:.2} s"
    );
    // A fast link is not compressed unless asked to be.
    let (_, fast) = pull_time(config(1), config(2)).unwrap();
    let (_, always) = pull_time(
        config(1),
        Config {
            compress: Compress::Always,
            ..config(2)
        },
    )
    .unwrap();
    assert!(always * 3 < fast, "{always} bytes compressed, {fast} raw");
}

/// The tags of the frames in `stream`, the bytes of a plain link.
#[cfg(all(feature = "lz4-compress", feature = "zstd"))]
fn tags(stream: &[u8]) -> Vec<u8> {
    let mut tags = Vec::new();
    let mut rest = stream;
    while let Some((head, body)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*head) as usize;
        tags.push(body[0]);
        rest = &body[len..];
    }
    tags
}

/// Pieces travel in zstd when both sides speak it, in LZ4 to a peer that takes only LZ4,
/// and in the codec the sender's `Config::codec` names, if the peer takes it.
#[test]
#[cfg(all(feature = "lz4-compress", feature = "zstd"))]
fn pieces_travel_in_the_best_codec_both_sides_speak() {
    use crate::compress::Codec;
    use crate::session::Compress;
    use crate::wire::{Capabilities, Decoded, Hello, Message};
    const LZ4: u8 = 13;
    const ZSTD: u8 = 16;
    let serving = |codec| Config {
        compress: Compress::Always,
        codec,
        ..config(2)
    };
    let sent = |b_config: Config, a_takes_zstd: bool| -> Vec<u8> {
        let mut a = End::new(config(1), Limits::new(), BTreeMap::new());
        let mut b = End::new(b_config, Limits::new(), chunks(2, 20, 400));
        b.tap = Some(Vec::new());
        if !a_takes_zstd {
            // a's Hello as a build without zstd sends it.
            a.pump(Instant::ZERO, None);
            let Ok(Decoded::Frame {
                message: Message::Hello(hello),
                len,
            }) = wire::decode(&a.outbox, 1 << 16)
            else {
                panic!("a's Hello goes first");
            };
            let hello = Message::Hello(Hello {
                capabilities: hello.capabilities.without(Capabilities::ZSTD),
                ..hello
            });
            let mut frame = std::vec![0u8; hello.frame_len()];
            wire::encode(&hello, &mut frame).unwrap();
            a.outbox.splice(..len, frame);
        }
        run(&mut a, &mut b, Duration::from_secs(60));
        assert_eq!(a.outcome, Some(Ok(())));
        assert_eq!(a.store, b.store);
        tags(b.tap.as_deref().unwrap())
    };
    let codecs = |tags: Vec<u8>| (tags.contains(&LZ4), tags.contains(&ZSTD));
    assert_eq!(codecs(sent(serving(None), true)), (false, true));
    assert_eq!(codecs(sent(serving(None), false)), (true, false));
    assert_eq!(codecs(sent(serving(Some(Codec::Lz4)), true)), (true, false));
    assert_eq!(
        codecs(sent(serving(Some(Codec::Zstd)), false)),
        (false, false)
    );
}

/// A listing session learns the hash of every chunk the peer holds, whatever this side
/// holds, stores nothing and fetches no chunk; with 256-byte frames too (six hashes a
/// frame).
#[test]
#[cfg(feature = "alloc")]
fn a_listing_gets_every_hash_of_the_peer_and_no_chunk() {
    let mut theirs = chunks(2, 300, 40);
    theirs.extend(chunks(3, 20, 10));
    for frame in [256, 4096, 65_536] {
        let cfg = |id| Config {
            max_frame: frame,
            ..config(id)
        };
        let listing = Config {
            list: true,
            serve: false,
            ..cfg(1)
        };
        // It holds some of them already: they are listed too.
        let mine: BTreeMap<_, _> = theirs
            .iter()
            .take(7)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut a = End::new(listing, Limits::new(), mine.clone());
        let mut b = End::new(cfg(2), Limits::new(), theirs.clone());
        run(&mut a, &mut b, Duration::from_secs(60));
        assert_eq!(a.outcome, Some(Ok(())), "{frame}-byte frames");
        let mut listed = a.listed.clone();
        listed.sort();
        let expected: Vec<ChunkHash> = theirs.keys().copied().collect();
        assert_eq!(listed, expected, "{frame}-byte frames");
        assert_eq!(a.store, mine, "nothing stored");
        assert_eq!(a.conduit.progress().synced_chunks, 0, "nothing fetched");
    }
}

/// A node that does not announce `LIST` (it cannot list) is refused by a listing at the
/// handshake.
#[test]
#[cfg(feature = "alloc")]
fn a_listing_needs_a_peer_that_lists() {
    let listing = Config {
        list: true,
        serve: false,
        ..config(1)
    };
    let mut a = End::new(listing, Limits::new(), BTreeMap::new());
    // The peer's Hello without LIST, as a build without `alloc` sends it.
    let hello = Message::Hello(Hello {
        protocol: wire::PROTOCOL_VERSION,
        node_id: NodeId(2),
        max_frame: 256,
        max_requests: 8,
        max_ranges: 8,
        capabilities: wire::Capabilities::ALL.without(wire::Capabilities::LIST),
        max_receive_rate: 0,
    });
    let mut buf = [0u8; 64];
    a.inbox
        .extend_from_slice(wire::encode(&hello, &mut buf).unwrap());
    a.pump(Instant::ZERO, None);
    assert_eq!(
        a.outcome,
        Some(Err(Error::Incompatible(Incompatible::MissingCapabilities)))
    );
}

#[test]
fn a_receive_rate_too_slow_for_the_idle_timeout_is_refused() {
    // This side's own setting: refused before any session.
    let slow = Config {
        receive_rate: 10,
        ..config(1)
    };
    assert!(matches!(
        slow.check(),
        Err(ConfigError::RateTooLow { rate: 10, .. })
    ));
    // A peer asking for it (a lying or broken Hello): the sender refuses the session.
    let mut b = End::new(config(2), Limits::new(), chunks(2, 4, 100));
    let mut hello = std::vec![0u8; 64];
    let n = wire::encode(
        &Message::Hello(Hello {
            protocol: wire::PROTOCOL_VERSION,
            node_id: NodeId(1),
            max_frame: 1024,
            max_requests: 4,
            max_ranges: 16,
            capabilities: wire::Capabilities::ALL,
            max_receive_rate: 10,
        }),
        &mut hello,
    )
    .unwrap()
    .len();
    b.inbox.extend_from_slice(&hello[..n]);
    b.pump(Instant::ZERO, None);
    assert!(matches!(
        b.outcome,
        Some(Err(Error::Incompatible(Incompatible::RateTooLow {
            theirs: 10,
            ..
        })))
    ));
}
