//! The original document's API on the tokio adapter: `EventChunkSyncManager`,
//! `DeltaSyncProtocol`, `ThrottleConfig` and the progress methods.

use std::time::Duration;

use chunk_sync_core::{ChunkHash, EventBuf, EventChunkStore, NodeId, Privacy};
use chunk_sync_tokio::{DeltaSyncProtocol, Error, EventChunkSyncManager, ThrottleConfig};

fn events(origin: NodeId, n: u64) -> Vec<EventBuf> {
    (0..n)
        .map(|seq| EventBuf {
            origin,
            seq,
            timestamp: seq,
            kind: "demo".into(),
            privacy: if seq % 5 == 4 {
                Privacy::Private
            } else {
                Privacy::Public
            },
            payload: vec![seq as u8; 32],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_and_delta_sync_over_the_network() {
    let config = ThrottleConfig {
        max_bytes_per_sec: 1_000_000,
        window_duration: Duration::from_secs(1),
    };
    let a = EventChunkSyncManager::new(NodeId(1), config);
    let b = EventChunkSyncManager::new(NodeId(2), config);

    // Node A chunks 25 events, 10 per chunk, and stores the chunks.
    let chunks = EventChunkStore::new(10)
        .create_chunks(&events(NodeId(1), 25))
        .unwrap();
    assert_eq!(chunks.len(), 3);
    for c in &chunks {
        assert!(a.handle_chunk_put(c.id, c.bytes.clone()).await.unwrap());
    }
    // A put whose bytes do not match its hash is refused and nothing is stored.
    let mut forged = chunks[0].bytes.clone();
    forged[3] ^= 1;
    assert!(matches!(
        b.handle_chunk_put(chunks[0].id, forged).await,
        Err(Error::HashMismatch(_))
    ));
    assert_eq!(b.handle_chunk_get(chunks[0].id).await.unwrap(), None);
    // B already has the first chunk.
    b.handle_chunk_put(chunks[0].id, chunks[0].bytes.clone())
        .await
        .unwrap();
    assert_eq!(
        a.handle_chunk_get(chunks[1].id).await.unwrap().as_deref(),
        Some(&chunks[1].bytes[..])
    );
    let size: usize = chunks.iter().map(|c| c.bytes.len()).sum();
    assert_eq!(a.cache_size_bytes(), size);

    let listener = a.node().listen("127.0.0.1:0").await.unwrap();
    b.add_peer(NodeId(1), listener.local_addr());
    let delta = DeltaSyncProtocol::new(&b);
    let local = vec![chunks[0].id];
    let remote: Vec<ChunkHash> = chunks.iter().map(|c| c.id).collect();
    let missing = delta.compute_delta(&local, &remote).await;
    assert_eq!(missing.len(), 2);

    b.start_sync(NodeId(1), missing.len() as u64);
    let report = delta
        .request_missing_chunks(NodeId(1), missing.clone())
        .await
        .unwrap();
    assert_eq!(report.progress.synced_chunks, 2);
    assert!(report.progress.is_complete());
    for id in &missing {
        assert!(
            b.handle_chunk_get(*id).await.unwrap().is_some(),
            "fetched over the network"
        );
    }
    let progress = b.get_sync_progress(&NodeId(1)).unwrap();
    assert_eq!(progress.progress_percent(), 100.0);
    assert!(progress.elapsed() < Duration::from_secs(60));
    assert_eq!(b.complete_sync(&NodeId(1)).unwrap().synced_chunks, 2);
    assert!(matches!(
        b.get_sync_progress(&NodeId(1)),
        Err(Error::NotTracked(NodeId(1)))
    ));

    // Manual progress tracking, as in the original document.
    b.start_sync(NodeId(9), 4);
    assert!(b.update_sync_progress(&NodeId(9), 3, 1, 4096));
    assert_eq!(
        b.get_sync_progress(&NodeId(9)).unwrap().progress_percent(),
        75.0
    );
    assert!(!b.update_sync_progress(&NodeId(8), 1, 0, 0));

    assert!(matches!(
        delta.request_missing_chunks(NodeId(7), missing).await,
        Err(Error::UnknownPeer(NodeId(7)))
    ));
    b.clear_cache();
    assert_eq!(b.cache_size_bytes(), 0);
}
