//! The flash store on `sequential-storage`'s mock flash, power cuts at any byte included.

use std::vec::Vec;

use embassy_futures::block_on;
use proptest::prelude::*;
use sequential_storage::mock_flash::{MockFlashBase, WriteCountCheck};

use super::*;

/// Eight erase pages of 1 KiB, 4-byte words.
type Flash = MockFlashBase<8, 4, 256>;
type Fs = FlashStore<Flash, 64, 1024>;
const RANGE: Range<u32> = Flash::FULL_FLASH_RANGE;

fn blank() -> Flash {
    Flash::new(WriteCountCheck::Twice, None, true)
}

fn chunk(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (seed * 31 + j * 7 + j / 251) as u8)
        .collect()
}

fn open(flash: Flash) -> Fs {
    block_on(Fs::open(flash, RANGE)).expect("open")
}

fn insert(store: &mut Fs, bytes: &[u8]) -> Result<bool, Flash> {
    block_on(store.insert(Verified::hash_of(bytes)))
}

fn read(store: &mut Fs, id: &ChunkHash) -> Option<Vec<u8>> {
    let mut out = [0; 1024];
    let len = block_on(store.read_into(id, &mut out)).expect("read")?;
    Some(out[..len].to_vec())
}

/// Every indexed chunk reads back whole and matching its hash.
fn assert_sound(store: &mut Fs) {
    for id in store.ids().copied().collect::<Vec<_>>() {
        let bytes = read(store, &id).expect("indexed chunk is readable");
        assert!(id.matches(&bytes), "chunk {id} reads back wrong bytes");
    }
}

#[test]
fn stores_reads_pages_and_reopens() {
    let mut store = open(blank());
    assert!(store.is_empty());
    let chunks: Vec<Vec<u8>> = (0..10).map(|i| chunk(i, 40 + i * 37)).collect();
    for c in &chunks {
        assert_eq!(insert(&mut store, c), Ok(true));
    }
    assert_eq!(insert(&mut store, &chunks[3]), Ok(false));
    assert_eq!(store.len(), 10);
    for c in &chunks {
        let id = ChunkHash::of(c);
        assert_eq!(block_on(store.contains(&id)), Ok(true));
        assert_eq!(read(&mut store, &id).as_deref(), Some(&c[..]));
    }
    let absent = ChunkHash::of(b"absent");
    assert_eq!(block_on(store.contains(&absent)), Ok(false));
    assert_eq!(read(&mut store, &absent), None);

    let mut sorted: Vec<ChunkHash> = chunks.iter().map(|c| ChunkHash::of(c)).collect();
    sorted.sort();
    let mut page = [ChunkHash::from_bytes([0; 32]); 4];
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let (n, last) = block_on(store.ids_after(after.as_ref(), &mut page)).unwrap();
        walked.extend_from_slice(&page[..n]);
        if last {
            break;
        }
        after = Some(page[n - 1]);
    }
    assert_eq!(walked, sorted);

    let mut small = [0; 8];
    assert!(matches!(
        block_on(store.read_into(&sorted[0], &mut small)),
        Err(ReadError::BufferTooSmall(_))
    ));

    let mut reopened = open(store.into_flash());
    assert_eq!(reopened.ids().copied().collect::<Vec<_>>(), sorted);
    assert_eq!(reopened.discarded(), 0);
    assert_sound(&mut reopened);
}

#[test]
fn refuses_what_does_not_fit_and_keeps_the_rest() {
    let mut store = open(blank());
    let max = Fs::max_chunk_len();
    assert_eq!(max, 1024 - 32);
    assert_eq!(
        insert(&mut store, &chunk(0, max + 1)),
        Err(FlashStoreError::ChunkTooLarge { len: max + 1, max })
    );
    // Within the buffer but not within one 1 KiB page with its headers.
    assert!(matches!(
        insert(&mut store, &chunk(0, max)),
        Err(FlashStoreError::ChunkTooLarge { .. })
    ));

    let mut stored = Vec::new();
    let full = loop {
        let c = chunk(stored.len(), 500);
        match insert(&mut store, &c) {
            Ok(true) => stored.push(c),
            other => break other,
        }
    };
    assert_eq!(full, Err(FlashStoreError::Full));
    // One page of the eight stays free for the map's own page moves.
    assert!(stored.len() >= 7, "only {} chunks fit", stored.len());
    // Smaller chunks may still fit; the store keeps working after a refusal.
    assert!(insert(&mut store, &chunk(999, 16)).is_ok());

    let mut reopened = open(store.into_flash());
    for c in &stored {
        assert_eq!(
            read(&mut reopened, &ChunkHash::of(c)).as_deref(),
            Some(&c[..])
        );
    }
    assert_sound(&mut reopened);

    block_on(reopened.erase()).unwrap();
    assert!(reopened.is_empty());
    assert!(open(reopened.into_flash()).is_empty());
}

#[test]
fn index_capacity_is_enforced_on_insert_and_open() {
    let mut store = open(blank());
    for i in 0..5 {
        assert_eq!(insert(&mut store, &chunk(i, 20)), Ok(true));
    }
    let flash = store.into_flash();
    let mut small = block_on(FlashStore::<Flash, 5, 1024>::open(flash, RANGE)).unwrap();
    assert_eq!(
        block_on(small.insert(Verified::hash_of(&chunk(9, 20)))),
        Err(FlashStoreError::IndexFull { capacity: 5 })
    );
    let flash = small.into_flash();
    assert!(matches!(
        block_on(FlashStore::<Flash, 4, 1024>::open(flash, RANGE)),
        Err(FlashStoreError::IndexFull { capacity: 4 })
    ));
}

#[test]
fn rejects_a_range_that_is_not_two_whole_pages() {
    for range in [0..1024, 100..4096, 0..4000] {
        assert!(matches!(
            block_on(Fs::open(blank(), range)),
            Err(FlashStoreError::BadRange)
        ));
    }
}

#[test]
fn a_chunk_whose_bytes_do_not_match_its_key_is_not_served() {
    // An item written under another chunk's hash, as a faulty writer could leave it.
    let flash = blank();
    let mut map: Map<Flash> = MapStorage::new(flash, MapConfig::new(RANGE), Cache::new_uncached());
    let mut buf = Buffer::<1024>([0; 1024]);
    let good = chunk(1, 100);
    let id = ChunkHash::of(&good);
    block_on(map.store_item(&mut buf.0, id.as_bytes(), &&chunk(2, 100)[..])).unwrap();
    let mut store = open(map.destroy().0);
    assert_eq!(store.discarded(), 1);
    assert!(store.is_empty());
    assert_eq!(read(&mut store, &id), None);
    // Storing the real chunk supersedes the bad item.
    assert_eq!(insert(&mut store, &good), Ok(true));
    let mut reopened = open(store.into_flash());
    assert_eq!(read(&mut reopened, &id).as_deref(), Some(&good[..]));
}

/// Runs `inserts` against a store on `flash`, with the power cut after `cut` more bytes
/// written or erased; returns the flash and the chunks acknowledged before the cut.
fn run_until_cut(mut flash: Flash, inserts: &[Vec<u8>], cut: u32) -> (Flash, Vec<Vec<u8>>) {
    flash.bytes_until_shutoff = Some(cut);
    let mut acked = Vec::new();
    let Ok(mut store) = block_on(Fs::open(flash.clone(), RANGE)) else {
        // Power lost while opening: nothing was acknowledged in this run.
        return (flash, acked);
    };
    for c in inserts {
        match insert(&mut store, c) {
            Ok(_) => acked.push(c.clone()),
            Err(FlashStoreError::Flash(_)) => break,
            // Full or too large: a refusal, not a power cut; go on.
            Err(_) => {}
        }
    }
    let mut flash = store.into_flash();
    flash.bytes_until_shutoff = None;
    (flash, acked)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Power lost at any byte of a series of inserts: on reopening, every acknowledged
    /// chunk is there and whole, nothing indexed is damaged, and the store takes the
    /// rest of the series.
    #[test]
    fn power_loss_at_any_byte_loses_no_acknowledged_chunk(
        sizes in proptest::collection::vec(1usize..700, 1..16),
        cut in 0u32..16_000,
    ) {
        let inserts: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(i, &len)| chunk(i, len)).collect();
        let (flash, acked) = run_until_cut(blank(), &inserts, cut);

        let mut store = block_on(Fs::open(flash, RANGE)).expect("reopens after a power cut");
        for c in &acked {
            prop_assert_eq!(read(&mut store, &ChunkHash::of(c)), Some(c.clone()));
        }
        assert_sound(&mut store);
        prop_assert_eq!(store.discarded(), 0);

        // The rest goes in (up to what the flash holds), and the acknowledged stay.
        let mut refused = false;
        for c in &inserts {
            match insert(&mut store, c) {
                Ok(_) => {}
                Err(FlashStoreError::Full | FlashStoreError::ChunkTooLarge { .. }) => refused = true,
                Err(e) => prop_assert!(false, "insert after reopening failed: {e}"),
            }
        }
        let mut reopened = open(store.into_flash());
        for c in &acked {
            prop_assert_eq!(read(&mut reopened, &ChunkHash::of(c)), Some(c.clone()));
        }
        if !refused {
            prop_assert_eq!(reopened.len(), sizes.len());
        }
        assert_sound(&mut reopened);
    }
}

/// A chunk of `origin` holding one event at `seq` (sealed over 10 sequence numbers).
fn sealed(origin: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    use chunk_sync_core::{Chunker, Event, Privacy};
    let mut buf = [0u8; 512];
    let mut chunker = Chunker::new(NodeId(origin), 10, seq, &mut buf).unwrap();
    let event = Event {
        origin: NodeId(origin),
        seq,
        timestamp: 0,
        kind: "t",
        privacy: Privacy::Public,
        payload,
    };
    let _ = chunker.push(&event).unwrap();
    chunker.seal().unwrap().bytes.to_vec()
}

#[test]
fn forks_are_refused_and_ranges_are_answered_from_ram() {
    let mut store = open(blank());
    let chunks = [
        sealed(5, 0, b"a"),
        sealed(2, 10, b"b"),
        sealed(5, 10, b"c"),
        sealed(2, 0, b"d"),
    ];
    for c in &chunks {
        assert_eq!(insert(&mut store, c), Ok(true));
    }
    let forged = sealed(5, 10, b"forged");
    let refused = insert(&mut store, &forged).unwrap_err();
    assert!(Fs::is_fork(&refused), "{refused}");
    assert!(matches!(refused, FlashStoreError::Fork(f) if f.existing == ChunkHash::of(&chunks[2])));
    // Bytes that are not a chunk are kept, and never summarised.
    assert_eq!(insert(&mut store, &chunk(1, 50)), Ok(true));

    let check = |store: &mut Fs| {
        let mut origins = [NodeId(0); 4];
        assert_eq!(
            block_on(store.origins_after(None, &mut origins)),
            Ok((2, true))
        );
        assert_eq!(&origins[..2], &[NodeId(2), NodeId(5)]);
        assert_eq!(
            block_on(store.origins_after(Some(NodeId(2)), &mut origins)),
            Ok((1, true))
        );
        let mut page = [(Span::default(), ChunkHash::default()); 4];
        let range = KeyRange {
            origin: NodeId(5),
            lo: 0,
            hi: u64::MAX,
        };
        assert_eq!(block_on(store.chunks_in(&range, &mut page)), Ok(2));
        assert_eq!(
            (page[0].1, page[1].1),
            (ChunkHash::of(&chunks[0]), ChunkHash::of(&chunks[2]))
        );
        assert!(page[0].0.first_seq < page[1].0.first_seq);
        let tail = KeyRange { lo: 1, ..range };
        assert_eq!(block_on(store.chunks_in(&tail, &mut page)), Ok(1));
        // The summary read page by page is the one made from all of the range at once.
        let mut all = [(Span::default(), ChunkHash::default()); 8];
        let n = block_on(store.chunks_in(&range, &mut all)).unwrap();
        let mut model_runs = [chunk_sync_core::recon::Run { lo: 0, hi: 0 }; 2];
        let mut model = chunk_sync_core::recon::Summarizer::new(range, &mut model_runs);
        for (span, id) in &all[..n] {
            model.push(span.first_seq, span.end_seq, id).unwrap();
        }
        let mut runs = [chunk_sync_core::recon::Run { lo: 0, hi: 0 }; 2];
        let summary = block_on(store.summarize(&range, &mut runs)).unwrap();
        assert_eq!(summary, model.finish());
        assert_eq!(summary.0.count, 2);
    };
    check(&mut store);
    check(&mut open(store.into_flash()));
}

#[test]
fn a_summary_reads_the_store_page_by_page() {
    use chunk_sync_core::recon::{Run, Summarizer};
    let mut store = open(blank());
    for seq in (0..90).step_by(10) {
        assert_eq!(insert(&mut store, &sealed(5, seq, b"p")), Ok(true));
    }
    let range = KeyRange {
        origin: NodeId(5),
        lo: 5,
        hi: 85,
    };
    let mut all = [(Span::default(), ChunkHash::default()); 16];
    let n = block_on(store.chunks_in(&range, &mut all)).unwrap();
    assert_eq!(n, 8);
    let mut model_runs = [Run { lo: 0, hi: 0 }; 2];
    let mut model = Summarizer::new(range, &mut model_runs);
    for (span, id) in &all[..n] {
        model.push(span.first_seq, span.end_seq, id).unwrap();
    }
    let mut runs = [Run { lo: 0, hi: 0 }; 2];
    assert_eq!(
        block_on(store.summarize(&range, &mut runs)).unwrap(),
        model.finish()
    );
}

#[test]
fn a_fork_found_on_open_is_not_served() {
    let mut store = open(blank());
    let first = sealed(5, 0, b"first");
    let forged = sealed(5, 0, b"forged");
    assert_eq!(insert(&mut store, &first), Ok(true));
    // As a build that did not refuse forks would have stored it.
    let id = ChunkHash::of(&forged);
    block_on(
        store
            .map
            .store_item(&mut store.buf.0, id.as_bytes(), &&forged[..]),
    )
    .unwrap();
    let mut reopened = open(store.into_flash());
    assert_eq!(reopened.discarded(), 1);
    assert_eq!(
        reopened.ids().copied().collect::<Vec<_>>(),
        [ChunkHash::of(&first)]
    );
    assert_sound(&mut reopened);
}
