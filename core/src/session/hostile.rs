//! A hostile peer: arbitrary sequences of well-formed and malformed frames (random,
//! lying and endless summaries, queries, ranges and pieces), fed to a session through the
//! [`Conduit`] every adapter drives. Whatever arrives, nothing panics, a fatal error
//! sticks, only valid chunks, verified, and inside the range they were sent for, reach the
//! store, and the adapter is never asked to send bytes it was not given.

use std::string::String;
use std::vec;
use std::vec::Vec;

use proptest::collection::vec as pvec;
use proptest::prelude::*;

use super::tests::frame;
use super::*;
use crate::chunk::{ChunkView, Span};
use crate::compress::Codec;
use crate::conduit::{Action, Buffers, Conduit, Limits};
use crate::event::NodeId;
use crate::hash::ChunkHash;
use crate::hash::Verified;
use crate::recon::codec::EntryWriter;
use crate::recon::{self, Answer, Fingerprint, KeyRange, Query, RangeList};
use crate::scope::Scope;
use crate::store::{ChunkStore, RamStore};
use crate::wire::ErrorCode;

/// Chunks the peer may name: valid chunks for even `i` (of origin `i`, at sequence 0),
/// bytes that are no chunk for odd `i`, so that some puts are honest and some name junk by
/// its true hash.
fn pool(i: u8) -> Vec<u8> {
    if i.is_multiple_of(2) {
        crate::chunk::test_chunk(u64::from(i), 0, &std::vec![i; usize::from(i)])
    } else {
        std::vec![i; 10 + usize::from(i)]
    }
}

fn pool_hash(i: u8) -> ChunkHash {
    ChunkHash::of(&pool(i % 8))
}

/// A store of the valid chunks among `pool(from..to)`.
fn held(from: u8, to: u8) -> RamStore<8, 4096> {
    let mut store = RamStore::new();
    for bytes in (from..to).map(pool).filter(|b| Span::of(b).is_some()) {
        let chunk = Verified::hash_of(&bytes);
        store.insert(chunk).expect("room for the pool");
    }
    store
}

/// What `store` holds of `range`, as a store summarises it.
fn summary(
    store: &RamStore<8, 4096>,
    range: &KeyRange,
    runs: &mut [Run],
) -> (Summary, Option<usize>) {
    recon::summarize(range, runs, |r, out| store.chunks_in(r, out)).expect("a RAM store")
}

/// A made-up summary entry: origin, count, first, end, fingerprint byte, runs.
type Forged = (u8, u64, u64, u64, u8, Option<Vec<(u64, u64)>>);

#[derive(Clone, Debug)]
enum Op {
    Hello {
        protocol: u16,
        max_frame: u32,
        max_requests: u16,
        max_ranges: u16,
    },
    QueryOrigins {
        after: Option<u8>,
        limit: u16,
        max_runs: u16,
    },
    QueryRanges {
        origin: u8,
        max_runs: u16,
        ranges: Vec<(u64, u64)>,
    },
    /// An answer made up: random summaries, runs and origins.
    LyingAnswer {
        entries: Vec<Forged>,
        last: bool,
    },
    Get(u8),
    GetRange {
        origin: u8,
        lo: u64,
        hi: u64,
    },
    HonestPut(u8),
    Put {
        total_len: u32,
        offset: u32,
        data: Vec<u8>,
    },
    /// A chunk of the pool compressed (sent raw if the build does not compress with the
    /// codec).
    HonestCompressedPut(u8, Codec),
    /// A compressed piece made up: random bytes that claim to inflate to `len`.
    CompressedPut {
        codec: Codec,
        total_len: u32,
        offset: u32,
        len: u32,
        data: Vec<u8>,
    },
    GetIds {
        origin: u8,
        lo: u64,
        hi: u64,
    },
    Ids {
        next: u64,
        ids: Vec<u8>,
    },
    NotFound(u8),
    RangeEnd,
    Done,
    Error(u16, String),
    Garbage(Vec<u8>),
    Wait(u32),
    /// Answers the session's oldest query from the peer's chunks 4..8, as a store would.
    AnswerQuery,
    /// Answers the session's oldest request, honestly or with flipped bytes.
    AnswerGet {
        lie: bool,
    },
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4, any::<u64>()]
}

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Lz4), Just(Codec::Zstd)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (prop_oneof![Just(PROTOCOL_VERSION), any::<u16>()], 0u32..5000, 0u16..10, 0u16..40).prop_map(
            |(protocol, max_frame, max_requests, max_ranges)| Op::Hello { protocol, max_frame, max_requests, max_ranges }
        ),
        2 => (proptest::option::of(any::<u8>()), 0u16..20, 0u16..8)
            .prop_map(|(after, limit, max_runs)| Op::QueryOrigins { after, limit, max_runs }),
        2 => (any::<u8>(), 0u16..8, pvec((seq(), seq()), 0..20))
            .prop_map(|(origin, max_runs, ranges)| Op::QueryRanges { origin, max_runs, ranges }),
        4 => (pvec((any::<u8>(), 0u64..4, seq(), seq(), any::<u8>(), proptest::option::of(pvec((seq(), seq()), 0..6))), 0..10), any::<bool>())
            .prop_map(|(entries, last)| Op::LyingAnswer { entries, last }),
        2 => any::<u8>().prop_map(Op::Get),
        2 => (any::<u8>(), seq(), seq()).prop_map(|(origin, lo, hi)| Op::GetRange { origin, lo, hi }),
        3 => any::<u8>().prop_map(Op::HonestPut),
        2 => (0u32..2000, 0u32..2000, pvec(any::<u8>(), 0..300))
            .prop_map(|(total_len, offset, data)| Op::Put { total_len, offset, data }),
        2 => (any::<u8>(), codec()).prop_map(|(i, codec)| Op::HonestCompressedPut(i, codec)),
        2 => (codec(), 0u32..2000, 0u32..2000, 0u32..5000, pvec(any::<u8>(), 0..300))
            .prop_map(|(codec, total_len, offset, len, data)| Op::CompressedPut { codec, total_len, offset, len, data }),
        2 => (any::<u8>(), seq(), seq()).prop_map(|(origin, lo, hi)| Op::GetIds { origin, lo, hi }),
        1 => (seq(), pvec(any::<u8>(), 0..100)).prop_map(|(next, ids)| Op::Ids { next, ids }),
        1 => any::<u8>().prop_map(Op::NotFound),
        1 => Just(Op::RangeEnd),
        2 => Just(Op::Done),
        1 => (any::<u16>(), "[a-z ]{0,20}").prop_map(|(c, r)| Op::Error(c, r)),
        1 => pvec(any::<u8>(), 1..40).prop_map(Op::Garbage),
        3 => (0u32..40_000).prop_map(Op::Wait),
        8 => Just(Op::AnswerQuery),
        10 => prop_oneof![5 => Just(false), 1 => Just(true)].prop_map(|lie| Op::AnswerGet { lie }),
    ]
}

/// The frame of a query.
fn query_frame(q: &Query<'_>) -> Vec<u8> {
    let mut buf = std::vec![0u8; 4096];
    match q.write(&mut buf) {
        Ok(n) => frame(&Message::Query { query: &buf[..n] }),
        Err(_) => Vec::new(),
    }
}

/// A whole chunk as one `EventChunkPut` frame.
fn whole_put(data: &[u8]) -> Vec<u8> {
    frame(&Message::EventChunkPut {
        total_len: data.len() as u32,
        offset: 0,
        data,
    })
}

fn bytes_of(op: &Op) -> Vec<u8> {
    match op {
        Op::Hello {
            protocol,
            max_frame,
            max_requests,
            max_ranges,
        } => frame(&Message::Hello(Hello {
            protocol: *protocol,
            node_id: NodeId(9),
            max_frame: *max_frame,
            max_requests: *max_requests,
            max_ranges: *max_ranges,
            capabilities: Capabilities::ALL,
            max_receive_rate: 0,
        })),
        Op::QueryOrigins {
            after,
            limit,
            max_runs,
        } => query_frame(&Query::Origins {
            after: after.map(|a| NodeId(u64::from(a))),
            limit: *limit,
            max_runs: *max_runs,
        }),
        Op::QueryRanges {
            origin,
            max_runs,
            ranges,
        } => query_frame(&Query::Ranges {
            origin: NodeId(u64::from(*origin)),
            max_runs: *max_runs,
            ranges: RangeList::new(ranges),
        }),
        Op::LyingAnswer { entries, last } => {
            let mut buf = std::vec![0u8; 2048];
            let Ok(mut w) = EntryWriter::new(&mut buf, entries.len()) else {
                return Vec::new();
            };
            for (origin, count, first, end, fp, runs) in entries {
                let origin = NodeId(u64::from(*origin));
                let summary = Summary {
                    count: *count,
                    first: *first,
                    end: *end,
                    fingerprint: Fingerprint([*fp; 16]),
                };
                let runs: Option<Vec<Run>> = runs
                    .as_ref()
                    .map(|r| r.iter().map(|&(lo, hi)| Run { lo, hi }).collect());
                let range = KeyRange::whole(origin);
                let _ = w.write(Some(origin), &range, &summary, runs.as_deref());
            }
            let n = w.finish();
            frame(&Message::Answer {
                last: *last,
                entries: &buf[..n],
            })
        }
        Op::Get(i) => frame(&Message::EventChunkGet {
            hash: pool_hash(*i),
        }),
        Op::GetRange { origin, lo, hi } => frame(&Message::GetRange {
            origin: NodeId(u64::from(*origin)),
            lo: *lo,
            hi: *hi,
        }),
        Op::HonestPut(i) => whole_put(&pool(i % 8)),
        Op::Put {
            total_len,
            offset,
            data,
        } => frame(&Message::EventChunkPut {
            total_len: *total_len,
            offset: *offset,
            data,
        }),
        Op::HonestCompressedPut(i, codec) => {
            let data = pool(i % 8);
            #[cfg(feature = "lz4-compress")]
            {
                let mut buf = std::vec![0u8; wire::put_compressed_buffer(data.len())];
                let total = data.len() as u32;
                if let Some(n) =
                    wire::encode_put_compressed(*codec, (total, 0), &data, &mut buf, 4096)
                {
                    buf.truncate(n);
                    return buf;
                }
            }
            let _ = codec;
            whole_put(&data)
        }
        Op::CompressedPut {
            codec,
            total_len,
            offset,
            len,
            data,
        } => {
            let (total_len, offset, len) = (*total_len, *offset, *len);
            frame(&match codec {
                Codec::Lz4 => Message::EventChunkPutLz4 {
                    total_len,
                    offset,
                    len,
                    data,
                },
                Codec::Zstd => Message::EventChunkPutZstd {
                    total_len,
                    offset,
                    len,
                    data,
                },
            })
        }
        Op::GetIds { origin, lo, hi } => frame(&Message::GetIds {
            origin: NodeId(u64::from(*origin)),
            lo: *lo,
            hi: *hi,
        }),
        Op::Ids { next, ids } => frame(&Message::Ids { next: *next, ids }),
        Op::NotFound(i) => frame(&Message::NotFound {
            hash: pool_hash(*i),
        }),
        Op::RangeEnd => frame(&Message::RangeEnd),
        Op::Done => frame(&Message::Done),
        Op::Error(code, reason) => frame(&Message::Error {
            code: ErrorCode(*code),
            reason,
        }),
        Op::Garbage(bytes) => bytes.clone(),
        Op::Wait(_) | Op::AnswerQuery | Op::AnswerGet { .. } => Vec::new(),
    }
}

/// What the session asked of the peer and the peer has not answered.
#[derive(Clone, Debug)]
enum Asked {
    Chunk(ChunkHash),
    Range(KeyRange),
}

/// The shipped driving layer, a [`Conduit`], with a store holding chunks 0..4 of the pool.
struct Harness {
    c: Conduit<'static, Vec<u8>, 8, 4>,
    now: Instant,
    /// Bytes from the peer not yet taken by the conduit.
    inbox: Vec<u8>,
    serving: Vec<u8>,
    /// The outcome, once closed.
    closed: Option<Result<(), Error>>,
    /// The session's queries waiting for an answer, oldest first.
    queries: Vec<Vec<u8>>,
    /// The session's requests waiting for an answer, oldest first.
    requests: Vec<Asked>,
    /// The ranges the session asked for, to check what it stores against.
    ranges: Vec<KeyRange>,
    /// The origins the session shows the peer and those it takes from it.
    shown: Scope,
    taken: Scope,
}

impl Harness {
    fn feed(&mut self, bytes: &[u8]) {
        self.inbox.extend_from_slice(bytes);
        self.pump();
    }

    /// Carries out the conduit's actions until it waits or closes.
    fn pump(&mut self) {
        let own = held(0, 4);
        for _ in 0..10_000 {
            if self.closed.is_some() {
                return;
            }
            match self.c.poll(self.now) {
                Action::Send { frame, piece, .. } => {
                    let mut n = frame.len();
                    if let Some(piece) = piece {
                        let end = (piece.offset + piece.len) as usize;
                        assert!(
                            end <= self.serving.len(),
                            "asked to send bytes it was not given"
                        );
                        let origin = Span::of(&self.serving).map(|s| s.origin);
                        assert!(
                            origin.is_some_and(|o| self.shown.covers(o)),
                            "a piece of a chunk of an origin not shown"
                        );
                        n += piece.len as usize;
                    } else {
                        match wire::decode(frame, MAX_FRAME_LIMIT) {
                            Ok(Decoded::Frame {
                                message: Message::Query { query },
                                ..
                            }) => self.queries.push(query.to_vec()),
                            Ok(Decoded::Frame {
                                message: Message::EventChunkGet { hash },
                                ..
                            }) => self.requests.push(Asked::Chunk(hash)),
                            Ok(Decoded::Frame {
                                message: Message::GetRange { origin, lo, hi },
                                ..
                            }) => {
                                let range = KeyRange { origin, lo, hi };
                                self.ranges.push(range);
                                self.requests.push(Asked::Range(range));
                            }
                            Ok(Decoded::Frame { .. }) => {}
                            other => panic!("the session sent a frame it cannot decode: {other:?}"),
                        }
                    }
                    let now = self.now;
                    self.c.written(now, n);
                }
                Action::Summarize { range, runs } => {
                    assert!(
                        self.shown.covers(range.origin) || self.taken.covers(range.origin),
                        "the store asked about an origin neither shown nor taken"
                    );
                    let (summary, n) = summary(&own, &range, runs);
                    let _ = self.c.summarized(&summary, n);
                }
                Action::Origins { after, out } => {
                    let (n, last) = own.origins_after(after, out).expect("a RAM store");
                    let _ = self.c.origins(n, last);
                }
                Action::Read(id) => match own.get(&id) {
                    Some(bytes) => {
                        self.serving = bytes.to_vec();
                        let _ = self.c.serve(self.serving.len());
                    }
                    None => {
                        let _ = self.c.not_found();
                    }
                },
                Action::ReadFirst(range) => {
                    assert!(self.shown.covers(range.origin), "a range not shown read");
                    let first = own.first_in(&range).expect("a RAM store");
                    match first.and_then(|(span, id)| Some((span, own.get(&id)?))) {
                        Some((span, bytes)) => {
                            self.serving = bytes.to_vec();
                            let _ = self.c.serve_in_range(&span, self.serving.len());
                        }
                        None => {
                            let _ = self.c.not_found();
                        }
                    }
                }
                Action::Store(chunk) => {
                    assert!(chunk.bytes().len() <= 1 << 20, "bounded by max_chunk_len");
                    assert_eq!(chunk.id(), ChunkHash::of(chunk.bytes()), "verified");
                    let view = ChunkView::validated(chunk.bytes());
                    assert!(view.is_ok(), "only valid chunks are stored");
                    let span = view.map(|v| v.span()).unwrap_or_default();
                    assert!(
                        self.taken.covers(span.origin),
                        "a chunk of an origin not taken"
                    );
                    let wanted_by_hash = (0..8).any(|i| pool_hash(i) == chunk.id());
                    assert!(
                        wanted_by_hash
                            || self
                                .ranges
                                .iter()
                                .any(|r| r.contains(span.origin, span.first_seq)),
                        "a chunk of a range is in it"
                    );
                    let _ = self.c.stored(Stored::Kept);
                }
                Action::List { range, out } => {
                    assert!(self.shown.covers(range.origin), "a range not shown listed");
                    let n = own.chunks_in(&range, out).expect("a RAM store");
                    let _ = self.c.listed(n);
                }
                Action::Listed(ids) => {
                    assert!(ids.len().is_multiple_of(32), "whole hashes");
                }
                Action::Connected(_) | Action::ChunkFailed { .. } | Action::Shutdown => {}
                #[cfg(feature = "secure")]
                Action::Authorize(_) | Action::OriginKey(_) => unreachable!("a plain conduit"),
                #[cfg(all(feature = "secure", feature = "std"))]
                Action::StoreUnsealed { .. } => unreachable!("a plain conduit"),
                Action::Wait(wait) => {
                    if wait.read && !self.inbox.is_empty() {
                        let n = self.c.receive(&self.inbox);
                        self.inbox.drain(..n);
                        continue;
                    }
                    return;
                }
                Action::Closed(outcome) => {
                    if let Err(e) = outcome {
                        assert_eq!(
                            self.c.session().error(),
                            Some(e),
                            "the outcome is the session's error"
                        );
                    }
                    self.closed = Some(outcome);
                    return;
                }
            }
        }
        panic!("the conduit never waits");
    }

    /// What the peer answers to the session's pending queries and requests.
    fn reply(&mut self, op: &Op) -> Vec<u8> {
        let peer = held(4, 8);
        match op {
            Op::AnswerQuery => {
                if self.queries.is_empty() {
                    return Vec::new();
                }
                let bytes = self.queries.remove(0);
                let query = Query::read(&bytes).expect("the session sends queries it can read");
                let mut answer =
                    Answer::<64>::new(&query, 64, DEFAULT_RUNS).expect("a valid query");
                if let Some((after, limit)) = answer.origins_to_list() {
                    let mut origins = std::vec![NodeId(0); limit];
                    let (n, last) = peer
                        .origins_after(after, &mut origins)
                        .expect("a RAM store");
                    assert!(answer.origins_listed(&origins[..n], last));
                }
                let mut buf = std::vec![0u8; 64 * 100];
                while let Some((range, max_runs)) = answer.next_range() {
                    let mut runs = std::vec![Run { lo: 0, hi: 0 }; max_runs];
                    let (summary, n) = summary(&peer, &range, &mut runs);
                    answer
                        .summarized(&mut buf, &summary, n.map(|n| &runs[..n]))
                        .unwrap();
                }
                let (len, last) = answer.finish().unwrap();
                frame(&Message::Answer {
                    last,
                    entries: &buf[..len],
                })
            }
            Op::AnswerGet { lie } => {
                if self.requests.is_empty() {
                    return Vec::new();
                }
                let put = |mut data: Vec<u8>| {
                    if *lie {
                        data[0] ^= 1;
                    }
                    frame(&Message::EventChunkPut {
                        total_len: data.len() as u32,
                        offset: 0,
                        data: &data,
                    })
                };
                match self.requests.remove(0) {
                    Asked::Chunk(hash) => match peer.get(&hash) {
                        Some(data) => put(data.to_vec()),
                        None => frame(&Message::NotFound { hash }),
                    },
                    Asked::Range(range) => {
                        let mut found = [(Span::default(), ChunkHash::default()); 8];
                        let n = peer.chunks_in(&range, &mut found).expect("a RAM store");
                        let mut out: Vec<u8> = found[..n]
                            .iter()
                            .filter_map(|(_, id)| peer.get(id))
                            .flat_map(|data| put(data.to_vec()))
                            .collect();
                        out.extend(frame(&Message::RangeEnd));
                        out
                    }
                }
            }
            other => bytes_of(other),
        }
    }
}

/// Runs `ops` against a session (restricted to `scopes`, shown and taken, if given),
/// checking the invariants as it goes.
fn run_hostile(honest_hello: bool, ops: &[Op], scopes: Option<(Scope, Scope)>) {
    let config = Config {
        max_frame: 1024,
        idle_timeout: Duration::from_secs(30),
        max_ranges: 64,
        ..Config::new(NodeId(1))
    };
    let buffers = Buffers {
        receive: Vec::new(),
        transmit: Vec::new(),
        reassembly: Vec::new(),
    };
    let mut h = Harness {
        c: Conduit::new(config, Instant::ZERO, buffers, Limits::new()).unwrap(),
        now: Instant::ZERO,
        inbox: Vec::new(),
        serving: Vec::new(),
        closed: None,
        queries: Vec::new(),
        requests: Vec::new(),
        ranges: Vec::new(),
        shown: scopes.map_or(Scope::All, |s| s.0),
        taken: scopes.map_or(Scope::All, |s| s.1),
    };
    #[cfg(feature = "secure")]
    if let Some((shown, taken)) = scopes {
        h.c.restrict_for_test(shown, taken);
    }
    h.pump();
    if honest_hello {
        h.feed(&bytes_of(&Op::Hello {
            protocol: PROTOCOL_VERSION,
            max_frame: 1024,
            max_requests: 4,
            max_ranges: 16,
        }));
    }
    let mut fatal = None;
    // Frames the peer sent (an answer to a range may be several).
    let mut frames_fed = 1;
    for op in ops {
        if let Op::Wait(ms) = op {
            h.now += Duration::from_millis(u64::from(*ms));
            h.c.handle_timeout(h.now);
            h.pump();
        } else {
            let bytes = h.reply(op);
            let mut at = 0;
            while let Some(head) = bytes.get(at..at + 4) {
                frames_fed += 1;
                at += 4 + u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            }
            h.feed(&bytes);
        }
        // A fatal error sticks.
        match (fatal, h.c.session().error()) {
            (None, e) => fatal = e,
            (Some(first), now) => assert_eq!(now, Some(first)),
        }
        if fatal.is_some() {
            assert!(h.c.session().poll_timeout().is_none());
        }
    }
    let stats = h.c.stats();
    assert!(stats.frames_received <= frames_fed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_hostile_peer_never_panics_a_session(
        honest_hello in any::<bool>(),
        ops in pvec(op(), 0..40),
    ) {
        run_hostile(honest_hello, &ops, None);
    }

    /// A session that shows only origin 0 of its store (which holds origins 0 and 2) and
    /// takes only origin 4 (the peer holds 4 and 6): whatever the peer asks or sends,
    /// the store is never asked about origin 2 or 6, no piece of origin 2 goes out, and
    /// nothing of origin 6 is stored.
    #[cfg(feature = "secure")]
    #[test]
    fn a_hostile_peer_gets_and_gives_only_the_origins_of_its_rights(
        honest_hello in any::<bool>(),
        ops in pvec(op(), 0..40),
    ) {
        let scopes = (Scope::only(&[NodeId(0)]).unwrap(), Scope::only(&[NodeId(4)]).unwrap());
        run_hostile(honest_hello, &ops, Some(scopes));
    }
}
