//! Fuzzes the chunk parser on arbitrary bytes: the header, every event, the checks of
//! the whole chunk, its hash, and the store that takes received chunks.
//!
//! Parsing either fails or gives a view whose events are read until the end or the first
//! invalid one; a chunk is valid exactly when every event it announces reads and nothing
//! follows; verifying by the bytes' own hash gives the parse's answer, and by another
//! hash refuses the bytes. A signed chunk's signature and signed bytes split it whole,
//! and no key but the one that signed it (none here) verifies it.
#![no_main]

use chunk_sync_core::chunk::Span;
use chunk_sync_core::{ChunkError, ChunkHash, ChunkView, EventChunkStore, Verified};
use libfuzzer_sys::fuzz_target;

/// Public keys of secrets no seed holds.
fn verifiers() -> &'static [chunk_sync_core::secure::PublicKey; 2] {
    use chunk_sync_core::secure::Keypair;
    static KEYS: std::sync::OnceLock<[chunk_sync_core::secure::PublicKey; 2]> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(|| [1u8, 2].map(|s| *Keypair::from_secret([s; 32]).public()))
}

fuzz_target!(|data: &[u8]| {
    let parsed = ChunkView::parse(data);
    assert_eq!(Span::of(data), parsed.as_ref().ok().map(ChunkView::span));
    let id = ChunkHash::of(data);
    match (ChunkView::verify(&id, data), &parsed) {
        (Ok(v), Ok(p)) => assert_eq!(&v, p),
        (Err(ChunkError::Decode(e)), Err(p)) => assert_eq!(&e, p),
        (verified, parsed) => panic!("verify gave {verified:?}, parse {parsed:?}"),
    }
    let mut other = *id.as_bytes();
    other[0] ^= 1;
    assert!(matches!(
        ChunkView::verify(&ChunkHash::from_bytes(other), data),
        Err(ChunkError::HashMismatch(_))
    ));

    let valid = match parsed {
        Ok(view) => {
            assert!(view.first_seq() < view.end_seq() && !view.is_empty());
            assert!(u64::from(view.len()) <= view.end_seq() - view.first_seq());
            assert_eq!(view.bytes(), data);
            match view.signature() {
                Some(signature) => {
                    let signed = view.signed_bytes();
                    assert_eq!(signed.len() + signature.len(), data.len());
                    assert_eq!(view.seal(), chunk_sync_core::chunk::Seal::Signed);
                }
                None => assert_eq!(view.signed_bytes(), data),
            }
            // Keys no input signs with: any signature fails them, without a panic.
            for key in verifiers() {
                assert!(
                    key.verify_chunk(&view).is_err(),
                    "a forged signature passed"
                );
            }
            let mut read = 0u32;
            let mut failed = false;
            let mut prev = None;
            for event in view.events() {
                assert!(!failed, "no event after an invalid one");
                match event {
                    Ok(e) => {
                        read += 1;
                        assert_eq!(e.origin, view.origin());
                        assert!(view.first_seq() <= e.seq && e.seq < view.end_seq());
                        assert!(prev.is_none_or(|p| p < e.seq), "sequence numbers ascend");
                        assert!(e.privacy.is_shareable());
                        prev = Some(e.seq);
                    }
                    Err(_) => failed = true,
                }
            }
            assert!(read <= view.len());
            let valid = view.validate().is_ok();
            assert_eq!(valid, !failed && read == view.len());
            assert_eq!(ChunkView::validated(data).is_ok(), valid);
            valid
        }
        Err(_) => {
            assert!(ChunkView::validated(data).is_err());
            false
        }
    };

    // A store of received chunks takes exactly the valid ones, and gives them back whole.
    let store = EventChunkStore::new(16);
    let inserted = store.insert_chunk(Verified::hash_of(data));
    assert_eq!(inserted.is_ok(), valid, "{inserted:?}");
    if valid {
        let chunk = store.get_chunk(&id).expect("the chunk stored");
        assert!(chunk.view().is_ok_and(|v| v.bytes() == data));
    }
});
