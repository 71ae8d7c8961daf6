//! Writes the seed corpus of the fuzz targets into `corpus/<target>/`:
//!
//! - `frame_decode`: the golden frames of the core's wire tests, and frames of the
//!   recorded sessions below, each after a four-byte frame limit;
//! - `chunk_decode`: the golden chunk of the core's chunk tests, the chunks of both
//!   stores, and a few broken ones;
//! - `session_input`: sessions between the fuzzed node and an honest peer, recorded in
//!   lockstep: a header that describes the peer's `Hello`, then every byte the peer sent
//!   after it. Each is replayed through `chunk_sync_fuzz::run` and must store as many
//!   chunks as the recorded session did.
//!
//! - `handshake`: headers of every role, frame size and access rule with the wire left
//!   alone (each replayed and checked to end as the rules say), with a few edits, and
//!   raw peers replaying what an honest peer sent (the ephemeral keys are fixed, so the
//!   handshake and the records replay).
//!
//! ```text
//! cargo run --release --example seeds      (in fuzz/)
//! ```

use std::fs;
use std::path::Path;

use chunk_sync_core::conduit::{Buffers, Conduit, Limits};
use chunk_sync_core::recon::{Query, RangeList};
use chunk_sync_core::session::{Compress, Config};
use chunk_sync_core::wire::{self, Decoded, MAX_FRAME_LIMIT, Message};
use chunk_sync_core::{ChunkHash, Instant, NodeId};
use chunk_sync_fuzz::chunks::{held, held_chunks, offered, offered_chunks};
use chunk_sync_fuzz::node::{Inbox, Node};
use chunk_sync_fuzz::setup::{FRAMES, HEADER, PEER, Reads, Setup};

/// Bytes from hex digits, spaces ignored.
fn hex(digits: &str) -> Vec<u8> {
    let digits: Vec<u8> = digits
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16))
        .collect::<Result<_, _>>()
        .expect("hex digits")
}

/// The golden frames of `core/src/wire/tests.rs`, by name.
fn golden_frames() -> Vec<(&'static str, Vec<u8>)> {
    let ids = format!("24000000 0f ac02 20 {}", "ab".repeat(32));
    vec![
        ("hello", hex("0c000000 00 02 ac02 8002 08 10 06 c0843d")),
        ("put", hex("06000000 04 03 01 02 797a")),
        ("get-range", hex("05000000 08 01 00 ac02")),
        ("answer", hex("05000000 02 01 02 0000")),
        ("have", hex("06000000 0a 07 8001 8201")),
        ("resync", hex("01000000 0b")),
        ("keep-alive", hex("01000000 0c")),
        ("put-lz4", hex("0a000000 0d ac02 00 ac02 03 78797a")),
        ("get-ids", hex("05000000 0e 01 00 ac02")),
        ("ids", hex(&ids)),
    ]
}

/// The golden chunk of `core/src/chunk/tests.rs`.
fn golden_chunk() -> Vec<u8> {
    hex("0107000303 00e8070174000200000 1e9070174010201010 2ea070174000202 02")
}

/// The frames in `bytes`, one after another.
fn frames_of(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Ok(Decoded::Frame { len, .. }) = wire::decode(bytes, MAX_FRAME_LIMIT) {
        frames.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    frames
}

/// One recorded session: the fuzzed node's header bits (byte 0, and byte 4 but its frame
/// size, which follows the peer) and the honest peer's settings.
struct Case {
    name: &'static str,
    h0: u8,
    h4: u8,
    peer_frame: u32,
    live: bool,
    peer_pull: bool,
    peer_compress: Compress,
}

impl Case {
    const fn new(name: &'static str, h0: u8, peer_frame: u32) -> Self {
        Self {
            name,
            h0,
            h4: 0,
            peer_frame,
            live: false,
            peer_pull: true,
            peer_compress: Compress::Never,
        }
    }
}

fn vec_buffers() -> Buffers<Vec<u8>> {
    Buffers {
        receive: Vec::new(),
        transmit: Vec::new(),
        reassembly: Vec::new(),
    }
}

/// What a recorded session gives: the seed, the frames either side sent, and how many
/// chunks the fuzzed node stored.
struct Recorded {
    seed: Vec<u8>,
    frames: Vec<Vec<u8>>,
    stored: usize,
}

/// Runs the fuzzed node, configured as the header makes it, against an honest peer, with
/// no time passing, until both close or neither has anything to say.
fn record(case: &Case) -> Recorded {
    let config = Config {
        max_frame: case.peer_frame,
        live: case.live,
        pull: case.peer_pull,
        compress: case.peer_compress,
        ..Config::new(PEER)
    };
    let conduit = Conduit::new(config, Instant::ZERO, vec_buffers(), Limits::new())
        .expect("a valid configuration");
    let mut peer = Node::new(conduit, offered(), None, false);
    let mut peer_reads = Reads::ALL;
    let mut hello = Vec::new();
    let _ = peer.pump(&mut Inbox::default(), Some(&mut hello), &mut peer_reads);
    let Ok(Decoded::Frame {
        message: Message::Hello(h),
        len,
    }) = wire::decode(&hello, MAX_FRAME_LIMIT)
    else {
        panic!("the peer opens with its Hello");
    };
    assert_eq!(len, hello.len(), "and nothing else");
    let frame = FRAMES
        .iter()
        .position(|&f| f == h.max_frame)
        .expect("a frame size a header names");
    let byte = |v: u32| u8::try_from(v).expect("fits a header byte");
    let header: [u8; HEADER] = [
        case.h0,
        byte(h.capabilities.0),
        byte(u32::from(h.max_requests)),
        byte(u32::from(h.max_ranges)),
        byte(frame as u32) | case.h4,
        0,
        0,
        0,
    ];
    let setup = Setup::parse(&header);
    assert_eq!(
        setup.peer_hello_frame(),
        hello,
        "the header gives the peer's Hello"
    );
    assert!(!setup.fixed, "recorded with vectors");

    let conduit = Conduit::new(setup.config, Instant::ZERO, vec_buffers(), setup.limits)
        .expect("a valid configuration");
    let spare = setup.keep.then_some(Vec::new as fn() -> Vec<u8>);
    let mut node = Node::new(conduit, held().clone(), spare, setup.lazy_writes);
    let mut reads = setup.reads;
    let mut node_hello = Vec::new();
    let _ = node.pump(&mut Inbox::default(), Some(&mut node_hello), &mut reads);
    let mut frames = vec![hello.clone(), node_hello.clone()];
    let (mut node_in, mut peer_in) = (Inbox::default(), Inbox::default());
    node_in.push(&hello);
    peer_in.push(&node_hello);
    let mut seed = header.to_vec();
    let mut closing = false;
    for _ in 0..100_000 {
        let (mut to_node, mut to_peer) = (Vec::new(), Vec::new());
        let _ = node.pump(&mut node_in, Some(&mut to_peer), &mut reads);
        let _ = peer.pump(&mut peer_in, Some(&mut to_node), &mut peer_reads);
        if node.closed.is_some() && peer.closed.is_some() {
            break;
        }
        let quiet = to_node.is_empty() && to_peer.is_empty();
        if quiet && node_in.is_empty() && peer_in.is_empty() {
            if case.live && !closing {
                closing = true;
                peer.conduit.close();
                continue;
            }
            break;
        }
        frames.extend(frames_of(&to_node));
        frames.extend(frames_of(&to_peer));
        seed.extend_from_slice(&to_node);
        node_in.push(&to_node);
        peer_in.push(&to_peer);
    }
    println!(
        "{:<24} {:>5} bytes, node {:?} stored {}, peer {:?} stored {}",
        case.name,
        seed.len(),
        node.closed,
        node.stored,
        peer.closed,
        peer.stored
    );
    Recorded {
        seed,
        frames,
        stored: node.stored,
    }
}

/// The frame of `message`.
fn frame(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.frame_len()];
    let len = wire::encode(message, &mut buf).expect("room").len();
    buf.truncate(len);
    buf
}

/// The frame of a query.
fn query(q: &Query<'_>) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let n = q.write(&mut buf).expect("room for the query");
    frame(&Message::Query { query: &buf[..n] })
}

/// A peer (of a session in 256-byte frames, live if `live`) that asks for everything a
/// peer may ask for: summaries of the node's origins and of ranges, its chunks by hash
/// (one it lacks too) and by range, their hashes; and, live, announces chunks.
fn requests(live: bool) -> Vec<u8> {
    let mut seed = vec![if live { 4 } else { 0 }, 0x3e, 4, 8, 0, 0, 0, 0];
    seed.extend(query(&Query::Origins {
        after: None,
        limit: 8,
        max_runs: 4,
    }));
    seed.extend(query(&Query::Ranges {
        origin: NodeId(1),
        max_runs: 4,
        ranges: RangeList::new(&[(0, 10), (10, 40)]),
    }));
    for bytes in held_chunks() {
        let hash = ChunkHash::of(&bytes);
        seed.extend(frame(&Message::EventChunkGet { hash }));
    }
    let lacking = ChunkHash::of(b"no chunk");
    seed.extend(frame(&Message::EventChunkGet { hash: lacking }));
    let range = |origin, lo, hi| (NodeId(origin), lo, hi);
    for (origin, lo, hi) in [range(3, 0, 4), range(1, 0, 100)] {
        seed.extend(frame(&Message::GetRange { origin, lo, hi }));
    }
    seed.extend(frame(&Message::GetIds {
        origin: NodeId(1),
        lo: 0,
        hi: 100,
    }));
    if live {
        seed.extend(frame(&Message::Have {
            origin: NodeId(2),
            lo: 0,
            hi: 8,
        }));
        seed.extend(frame(&Message::Resync));
        seed.extend(frame(&Message::KeepAlive));
    }
    seed.extend(frame(&Message::Done));
    seed
}

/// Replays a seed and checks it stores `stored` chunks.
fn replay(name: &str, seed: &[u8], stored: usize) {
    let report = chunk_sync_fuzz::run(seed).expect("a header");
    println!("  replayed {name}: {report:?}");
    assert_eq!(report.stored, stored, "{name} replays as recorded");
}

/// Empties `dir` of files and writes `files` into it.
fn write_all(dir: &Path, files: &[(String, Vec<u8>)]) {
    fs::create_dir_all(dir).expect("a corpus directory");
    for entry in fs::read_dir(dir).expect("a corpus directory") {
        let path = entry.expect("an entry").path();
        if path.is_file() {
            fs::remove_file(path).expect("removable");
        }
    }
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).expect("written");
    }
    println!("{}: {} files", dir.display(), files.len());
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let (plain, live, no_pull, no_serve, list, always, fixed) = (0, 4, 8, 16, 32, 64, 128);
    let (keep, lazy, window_1) = (32, 64, 128);
    let cases = [
        Case::new("honest-256", plain, 256),
        Case::new("honest-1024", 1, 1024),
        Case::new("honest-65536", 2, 65536),
        Case::new("honest-4096-to-256", 3, 256),
        Case {
            live: true,
            ..Case::new("live-1024", 1 | live, 1024)
        },
        Case::new("compressing-256", always, 256),
        Case {
            peer_compress: Compress::Always,
            ..Case::new("compressed-256", plain, 256)
        },
        Case {
            peer_pull: false,
            ..Case::new("listing-1024", 1 | list, 1024)
        },
        Case::new("serving-only-256", no_pull, 256),
        Case::new("pulling-only-1024", 1 | no_serve, 1024),
        Case {
            h4: keep | lazy,
            ..Case::new("keep-lazy-256", plain, 256)
        },
        Case {
            h4: window_1,
            ..Case::new("window-1-1024", 1, 1024)
        },
    ];
    let mut sessions = Vec::new();
    let mut traffic: Vec<Vec<u8>> = Vec::new();
    for case in &cases {
        let recorded = record(case);
        replay(case.name, &recorded.seed, recorded.stored);
        for frame in recorded.frames {
            // One of each message and size class.
            let class = |f: &[u8]| (f.get(4).copied(), f.len().ilog2());
            if !traffic.iter().any(|t| class(t) == class(&frame)) {
                traffic.push(frame);
            }
        }
        if case.h0 & 3 != 2 {
            // The same session in fixed buffers.
            let mut seed = recorded.seed.clone();
            seed[0] |= fixed;
            replay(&format!("{} (fixed)", case.name), &seed, recorded.stored);
            if case.name == "honest-256" {
                sessions.push(("honest-256-fixed".to_string(), seed));
            }
        }
        sessions.push((case.name.to_string(), recorded.seed));
    }
    // Bytes split into reads at random, with time passing; the end of input; a peer that
    // sends the golden frames.
    let base = sessions[0].1.clone();
    let mut split = base.clone();
    split[5..8].copy_from_slice(&[3, 40, 9]);
    sessions.push(("honest-256-split-timed".to_string(), split));
    let mut eof = base;
    eof[4] |= 8;
    sessions.push(("honest-256-eof".to_string(), eof));
    let mut goldens = vec![plain, 0x3e, 4, 8, 0, 0, 0, 0];
    for (_, frame) in golden_frames().iter().skip(1) {
        goldens.extend_from_slice(frame);
    }
    sessions.push(("golden-frames".to_string(), goldens));
    sessions.push(("requests".to_string(), requests(false)));
    sessions.push(("requests-live".to_string(), requests(true)));
    for (name, seed) in &sessions[sessions.len() - 2..] {
        let report = chunk_sync_fuzz::run(seed).expect("a header");
        println!("  {name}: {report:?}");
    }
    write_all(&corpus.join("session_input"), &sessions);

    let limit = |max: u32| max.to_le_bytes().to_vec();
    let mut frames = Vec::new();
    let mut all = limit(65536);
    for (name, frame) in golden_frames() {
        frames.push((
            format!("golden-{name}"),
            [limit(256), frame.clone()].concat(),
        ));
        all.extend_from_slice(&frame);
    }
    frames.push(("golden-all".to_string(), all));
    frames.push((
        "too-large".to_string(),
        [limit(256), hex("fd000000 06")].concat(),
    ));
    traffic.sort_by_key(|f| (f.get(4).copied(), f.len()));
    traffic.truncate(30);
    for (i, frame) in traffic.iter().enumerate() {
        let tag = frame.get(4).copied().unwrap_or(0);
        frames.push((
            format!("traffic-{i:02}-tag-{tag}"),
            [limit(65536), frame.clone()].concat(),
        ));
    }
    write_all(&corpus.join("frame_decode"), &frames);
    write_all(&corpus.join("handshake"), &handshake_seeds());

    let mut chunks = vec![("golden".to_string(), golden_chunk())];
    let golden = golden_chunk();
    assert_eq!(
        ChunkHash::of(&golden).to_string(),
        "acfccfc27ba55cb70083868fb9a75b08d9b148837afb046969eaebc98a323654",
        "the golden chunk of the core's tests"
    );
    chunks.push((
        "golden-trailing-byte".to_string(),
        [golden.clone(), vec![0]].concat(),
    ));
    chunks.push((
        "golden-truncated".to_string(),
        golden[..golden.len() - 1].to_vec(),
    ));
    chunks.push(("version-9".to_string(), vec![9, 0]));
    let mut private = golden.clone();
    // The first event's privacy, after the version, origin, range, count, its seq, its
    // timestamp (two bytes) and its kind (two): private.
    assert_eq!(private[10], 0, "the first event is public");
    private[10] = 2;
    chunks.push(("golden-private-event".to_string(), private));
    let mut seen = Vec::new();
    // Signed chunks too: those of the `handshake` target's secure stores.
    let (node, peer, relayed) = chunk_sync_fuzz::secure::keys();
    let signed = chunk_sync_fuzz::chunks::secure_held_chunks(node, peer)
        .into_iter()
        .chain(chunk_sync_fuzz::chunks::secure_offered_chunks(
            peer, relayed,
        ));
    for bytes in held_chunks()
        .into_iter()
        .chain(offered_chunks())
        .chain(signed)
    {
        if !seen.contains(&bytes) {
            seen.push(bytes);
        }
    }
    for (i, bytes) in seen.into_iter().enumerate() {
        chunks.push((format!("store-{i}"), bytes));
    }
    write_all(&corpus.join("chunk_decode"), &chunks);
}

/// The seeds of the `handshake` target.
fn handshake_seeds() -> Vec<(String, Vec<u8>)> {
    use chunk_sync_fuzz::secure::run_secure;
    let (initiates, no_pull, no_push, refused, raw, small_peer) = (1, 8, 16, 32, 64, 128);
    let mut seeds = Vec::new();
    let mut add = |name: String, seed: Vec<u8>| {
        let report = run_secure(&seed).expect("a header");
        println!(
            "  {name}: {:?} {:?} stored {}",
            report.node, report.peer, report.stored
        );
        seeds.push((name, seed));
        report
    };
    for role in [0, initiates] {
        let side = if role == initiates {
            "initiator"
        } else {
            "responder"
        };
        for (i, frame) in FRAMES.iter().enumerate() {
            let h0 = role | (i as u8) << 1;
            let report = add(format!("{side}-{frame}"), vec![h0, 0, 0, 0]);
            assert_eq!(report.node, Some(Ok(())), "an honest sync");
            // The same bytes from a raw peer: the handshake and the records replay (the
            // ephemeral keys are fixed), though they arrive before the node asks.
            let mut replay = vec![h0 | raw, 0, 0, 0];
            replay.extend_from_slice(&report.received);
            add(format!("{side}-{frame}-raw-replay"), replay);
        }
        let rules = [
            ("no-pull", no_pull),
            ("no-push", no_push),
            ("refuses-peer", no_pull | no_push),
            ("refused", refused),
            ("small-peer", small_peer | 2 << 1),
        ];
        for (name, bits) in rules {
            add(format!("{side}-{name}"), vec![role | bits, 0, 0, 0]);
        }
        add(format!("{side}-split-timed"), vec![role, 3, 40, 9]);
        for (name, edit) in [
            ("flip-0", [0, 0, 0, 0x80]),
            ("flip-40", [0, 40, 0, 1]),
            ("flip-150", [0, 150, 0, 4]),
            ("drop-60", [1, 60, 0, 0]),
            ("insert-120", [2, 120, 0, 7]),
            ("cut-33", [3, 33, 0, 0]),
            ("cut-300", [3, 44, 1, 0]),
        ] {
            let mut seed = vec![role | 1 << 1, 0, 0, 0];
            seed.extend_from_slice(&edit);
            let report = add(format!("{side}-{name}"), seed);
            assert!(
                report.node != Some(Ok(())) || !report.touched,
                "{name} is refused"
            );
        }
        let mut garbage = vec![role | raw, 0, 0, 0];
        garbage.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
        add(format!("{side}-raw-garbage"), garbage);
    }
    seeds
}
