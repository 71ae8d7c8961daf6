//! A hostile peer: arbitrary sequences of well-formed and malformed frames, fed to a
//! session through the [`Conduit`] every adapter drives. Whatever arrives, nothing
//! panics, a fatal error sticks, only valid chunks reach the store, and the adapter is
//! never asked to send bytes it was not given.

use std::string::String;
use std::vec;
use std::vec::Vec;

use proptest::collection::vec as pvec;
use proptest::prelude::*;

use super::tests::frame;
use super::*;
use crate::chunk::ChunkView;
use crate::conduit::{Action, Buffers, Conduit, Limits};
use crate::event::NodeId;
use crate::wire::{ErrorCode, HashList};

/// Chunks the peer may name: valid chunks for even `i`, bytes that are no chunk for odd
/// `i`, so that some puts are honest and some name junk by its true hash.
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

#[derive(Clone, Debug)]
enum Op {
    Hello {
        protocol: u16,
        max_frame: u32,
        max_requests: u16,
    },
    ManifestRequest {
        after: Option<u8>,
        limit: u32,
    },
    ManifestPage {
        ids: Vec<u8>,
        sorted: bool,
        last: bool,
    },
    Get(u8),
    HonestPut(u8),
    Put {
        id: u8,
        total_len: u32,
        offset: u32,
        data: Vec<u8>,
    },
    NotFound(u8),
    Done,
    Error(u16, String),
    Garbage(Vec<u8>),
    Wait(u32),
    /// Answers the session's pending manifest request with the peer's chunks 4..8.
    AnswerManifest,
    /// Answers the session's oldest pending request, honestly or with flipped bytes.
    AnswerGet {
        lie: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (prop_oneof![Just(PROTOCOL_VERSION), any::<u16>()], 0u32..5000, 0u16..10).prop_map(
            |(protocol, max_frame, max_requests)| Op::Hello { protocol, max_frame, max_requests }
        ),
        2 => (proptest::option::of(any::<u8>()), 0u32..20)
            .prop_map(|(after, limit)| Op::ManifestRequest { after, limit }),
        4 => (pvec(any::<u8>(), 0..12), any::<bool>(), any::<bool>())
            .prop_map(|(ids, sorted, last)| Op::ManifestPage { ids, sorted, last }),
        3 => any::<u8>().prop_map(Op::Get),
        4 => any::<u8>().prop_map(Op::HonestPut),
        3 => (any::<u8>(), 0u32..2000, 0u32..2000, pvec(any::<u8>(), 0..300))
            .prop_map(|(id, total_len, offset, data)| Op::Put { id, total_len, offset, data }),
        2 => any::<u8>().prop_map(Op::NotFound),
        2 => Just(Op::Done),
        1 => (any::<u16>(), "[a-z ]{0,20}").prop_map(|(c, r)| Op::Error(c, r)),
        1 => pvec(any::<u8>(), 1..40).prop_map(Op::Garbage),
        3 => (0u32..40_000).prop_map(Op::Wait),
        6 => Just(Op::AnswerManifest),
        10 => prop_oneof![5 => Just(false), 1 => Just(true)].prop_map(|lie| Op::AnswerGet { lie }),
    ]
}

fn bytes_of(op: &Op) -> Vec<u8> {
    match op {
        Op::Hello {
            protocol,
            max_frame,
            max_requests,
        } => frame(&Message::Hello(Hello {
            protocol: *protocol,
            node_id: NodeId(9),
            max_frame: *max_frame,
            max_requests: *max_requests,
            capabilities: Capabilities::ALL,
        })),
        Op::ManifestRequest { after, limit } => frame(&Message::ManifestRequest {
            after: after.map(pool_hash),
            limit: *limit,
        }),
        Op::ManifestPage { ids, sorted, last } => {
            let mut hashes: Vec<ChunkHash> = ids.iter().map(|&i| pool_hash(i)).collect();
            if *sorted {
                hashes.sort();
                hashes.dedup();
            }
            frame(&Message::ManifestPage {
                ids: HashList::new(&hashes),
                last: *last,
            })
        }
        Op::Get(i) => frame(&Message::EventChunkGet {
            hash: pool_hash(*i),
        }),
        Op::HonestPut(i) => {
            let data = pool(i % 8);
            frame(&Message::EventChunkPut {
                hash: pool_hash(*i),
                total_len: data.len() as u32,
                offset: 0,
                data: &data,
            })
        }
        Op::Put {
            id,
            total_len,
            offset,
            data,
        } => frame(&Message::EventChunkPut {
            hash: pool_hash(*id),
            total_len: *total_len,
            offset: *offset,
            data,
        }),
        Op::NotFound(i) => frame(&Message::NotFound {
            hash: pool_hash(*i),
        }),
        Op::Done => frame(&Message::Done),
        Op::Error(code, reason) => frame(&Message::Error {
            code: ErrorCode(*code),
            reason,
        }),
        Op::Garbage(bytes) => bytes.clone(),
        Op::Wait(_) | Op::AnswerManifest | Op::AnswerGet { .. } => Vec::new(),
    }
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
    /// The session's manifest request waiting for an answer.
    manifest_asked: Option<(Option<ChunkHash>, u32)>,
    /// The session's chunk requests waiting for an answer, oldest first.
    gets: Vec<ChunkHash>,
}

impl Harness {
    fn has(id: &ChunkHash) -> Option<Vec<u8>> {
        (0..4).map(pool).find(|c| ChunkHash::of(c) == *id)
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.inbox.extend_from_slice(bytes);
        self.pump();
    }

    /// Carries out the conduit's actions until it waits or closes.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            if self.closed.is_some() {
                return;
            }
            match self.c.poll(self.now) {
                Action::Send { frame, piece, .. } => {
                    let mut n = frame.len();
                    if let Some(piece) = piece {
                        let end = (piece.offset + piece.len) as usize;
                        assert_eq!(piece.hash, ChunkHash::of(&self.serving));
                        assert!(
                            end <= self.serving.len(),
                            "asked to send bytes it was not given"
                        );
                        n += piece.len as usize;
                    } else {
                        match wire::decode(frame, MAX_FRAME_LIMIT) {
                            Ok(Decoded::Frame {
                                message: Message::ManifestRequest { after, limit },
                                ..
                            }) => self.manifest_asked = Some((after, limit)),
                            Ok(Decoded::Frame {
                                message: Message::EventChunkGet { hash },
                                ..
                            }) => self.gets.push(hash),
                            Ok(Decoded::Frame { .. }) => {}
                            other => panic!("the session sent a frame it cannot decode: {other:?}"),
                        }
                    }
                    let now = self.now;
                    self.c.written(now, n);
                }
                Action::Lookup(id) => {
                    let have = Self::has(&id).is_some();
                    let _ = self.c.have(have);
                }
                Action::List { after, out } => {
                    let mut ids: Vec<ChunkHash> = (0..4).map(pool_hash).collect();
                    ids.sort();
                    ids.retain(|id| after.is_none_or(|a| *id > a));
                    let n = ids.len().min(out.len());
                    out[..n].copy_from_slice(&ids[..n]);
                    let _ = self.c.listed(n, n == ids.len());
                }
                Action::Read(id) => match Self::has(&id) {
                    Some(bytes) => {
                        self.serving = bytes;
                        let _ = self.c.serve(self.serving.len());
                    }
                    None => {
                        let _ = self.c.not_found();
                    }
                },
                Action::Store(chunk) => {
                    assert!(chunk.bytes().len() <= 1 << 20, "bounded by max_chunk_len");
                    assert!(
                        ChunkView::validated(chunk.bytes()).is_ok(),
                        "only valid chunks are stored"
                    );
                    let _ = self.c.stored(Stored::Kept);
                }
                Action::Connected(_) | Action::ChunkFailed { .. } | Action::Shutdown => {}
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

    /// What the peer answers to the session's pending requests.
    fn reply(&mut self, op: &Op) -> Vec<u8> {
        match op {
            Op::AnswerManifest => {
                let Some((after, limit)) = self.manifest_asked.take() else {
                    return Vec::new();
                };
                let mut ids: Vec<ChunkHash> = (4..8).map(pool_hash).collect();
                ids.sort();
                ids.retain(|id| after.is_none_or(|a| *id > a));
                ids.truncate(limit as usize);
                frame(&Message::ManifestPage {
                    ids: HashList::new(&ids),
                    last: true,
                })
            }
            Op::AnswerGet { lie } => {
                if self.gets.is_empty() {
                    return Vec::new();
                }
                let hash = self.gets.remove(0);
                match (4..8).map(pool).find(|c| ChunkHash::of(c) == hash) {
                    Some(mut data) => {
                        if *lie {
                            data[0] ^= 1;
                        }
                        frame(&Message::EventChunkPut {
                            hash,
                            total_len: data.len() as u32,
                            offset: 0,
                            data: &data,
                        })
                    }
                    None => frame(&Message::NotFound { hash }),
                }
            }
            other => bytes_of(other),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_hostile_peer_never_panics_a_session(
        honest_hello in any::<bool>(),
        ops in pvec(op(), 0..40),
    ) {
        let config = Config {
            max_frame: 1024,
            idle_timeout: Duration::from_secs(30),
            ..Config::new(NodeId(1))
        };
        let buffers = Buffers { receive: Vec::new(), transmit: Vec::new(), reassembly: Vec::new() };
        let mut h = Harness {
            c: Conduit::new(config, Instant::ZERO, buffers, Limits::new()).unwrap(),
            now: Instant::ZERO,
            inbox: Vec::new(),
            serving: Vec::new(),
            closed: None,
            manifest_asked: None,
            gets: Vec::new(),
        };
        h.pump();
        if honest_hello {
            h.feed(&bytes_of(&Op::Hello { protocol: PROTOCOL_VERSION, max_frame: 1024, max_requests: 4 }));
        }
        let mut fatal = None;
        for op in &ops {
            if let Op::Wait(ms) = op {
                h.now += Duration::from_millis(u64::from(*ms));
                h.c.handle_timeout(h.now);
                h.pump();
            } else {
                let bytes = h.reply(op);
                h.feed(&bytes);
            }
            // A fatal error sticks.
            match (fatal, h.c.session().error()) {
                (None, e) => fatal = e,
                (Some(first), now) => prop_assert_eq!(now, Some(first)),
            }
            if fatal.is_some() {
                prop_assert!(h.c.session().poll_timeout().is_none());
            }
        }
        let stats = h.c.stats();
        prop_assert!(stats.frames_received <= ops.len() as u64 + 1);
    }
}
