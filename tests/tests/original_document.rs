//! The original design document's snippets, each exactly as written there with only the
//! crate paths changed (`cortex_storage` and `cortex_grid` are `chunk_sync_core` and
//! `chunk_sync_tokio`), run in order around the values they name: two nodes, a real
//! delta sync over loopback TCP, progress tracking.
//!
//! The document's wire messages are written with types in place of values
//! (`Message::EventChunkGet { hash: [u8; 32] }`); the last test builds them from those
//! types.

// The snippets bind values they do not use (`let chunk = …`), and end blocks with them.
#![allow(unused_variables, clippy::let_and_return)]

use std::error::Error;

use chunk_sync_core::{ChunkHash, EventBuf, NodeId, Privacy};

type Result = std::result::Result<(), Box<dyn Error>>;

fn log(origin: NodeId, n: u64) -> Vec<EventBuf> {
    (0..n)
        .map(|seq| EventBuf {
            origin,
            seq,
            timestamp: 1_700_000_000 + seq,
            kind: "reading".into(),
            privacy: if seq % 7 == 6 {
                Privacy::Private
            } else {
                Privacy::Public
            },
            payload: format!("{{\"t\":{seq}}}").into_bytes(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_snippets_sync_two_nodes() -> Result {
    let node_id = NodeId(1);
    let events = log(node_id, 250);
    // The hash the first snippet looks up: the first chunk of these events.
    let hash = chunk_sync_core::EventChunkStore::new(100).create_chunks(&events)?[0].id;

    // EventChunkStore.
    let chunks = {
        use chunk_sync_core::EventChunkStore;

        // Create a store with chunks of 100 events each
        let store = EventChunkStore::new(100);

        // Create chunks from events
        let chunks = store.create_chunks(&events)?;

        // Retrieve a chunk by hash
        let chunk = store.get_chunk(&hash);
        assert_eq!(chunk.map(|c| c.id), Some(hash));
        chunks
    };
    assert_eq!(chunks.len(), 3);

    // EventChunkSyncManager, on node 1: each chunk is put, the first read back.
    let first;
    let node_a = {
        let (hash, data) = (chunks[0].id, chunks[0].bytes.clone());
        use chunk_sync_tokio::{EventChunkSyncManager, ThrottleConfig};
        use std::time::Duration;

        let config = ThrottleConfig {
            max_bytes_per_sec: 1_000_000, // 1 MB/s
            window_duration: Duration::from_secs(1),
        };

        let sync_manager = EventChunkSyncManager::new(node_id, config);

        // Handle incoming chunk
        sync_manager.handle_chunk_put(hash, data).await?;

        // Request chunk
        let chunk = sync_manager.handle_chunk_get(hash).await?;
        first = chunk;
        sync_manager
    };
    assert_eq!(first.as_deref(), Some(&chunks[0].bytes[..]));
    for c in &chunks[1..] {
        node_a.handle_chunk_put(c.id, c.bytes.clone()).await?;
    }
    let listener = node_a.node().listen("127.0.0.1:0").await?;

    // DeltaSyncProtocol, on node 2, which holds the first chunk already.
    let node_b = chunk_sync_tokio::EventChunkSyncManager::new(
        NodeId(2),
        chunk_sync_tokio::ThrottleConfig::UNLIMITED,
    );
    node_b
        .handle_chunk_put(chunks[0].id, chunks[0].bytes.clone())
        .await?;
    node_b.add_peer(node_id, listener.local_addr());
    // Node 2's own hashes, and node 1's, asked of node 1 over the network.
    let (local_hashes, remote_hashes) = (
        node_b.local_hashes().await?,
        node_b.remote_hashes(node_id).await?,
    );
    assert_eq!(remote_hashes, node_a.local_hashes().await?);
    let peer_id = node_id;
    let fetched = {
        let sync_manager = &node_b;
        use chunk_sync_tokio::DeltaSyncProtocol;

        let delta = DeltaSyncProtocol::new(sync_manager);

        // Compute missing chunks
        let missing = delta.compute_delta(&local_hashes, &remote_hashes).await;

        // Request missing chunks
        let chunks = delta.request_missing_chunks(peer_id, missing).await?;
        chunks
    };
    assert_eq!(fetched.progress.synced_chunks, 2, "over the network");
    assert_eq!(node_b.local_hashes().await?, remote_hashes);

    // Bandwidth throttling: the configuration as the document writes it.
    let throttle = {
        use chunk_sync_tokio::ThrottleConfig;
        use std::time::Duration;
        ThrottleConfig {
            max_bytes_per_sec: 1_000_000,            // 1 MB/s limit
            window_duration: Duration::from_secs(1), // 1 second window
        }
    };
    assert_eq!(throttle.max_bytes_per_sec, 1_000_000);

    // Progress tracking, on node 2, for a sync it counts itself.
    let (total_chunks, synced, failed, bytes) = (3, 2, 0, fetched.progress.bytes_transferred);
    let (progress, final_stats) = {
        let sync_manager = &node_b;
        // Start tracking
        sync_manager.start_sync(peer_id, total_chunks);

        // Update progress
        sync_manager.update_sync_progress(&peer_id, synced, failed, bytes);

        // Get current progress
        let progress = sync_manager.get_sync_progress(&peer_id)?;
        println!("Progress: {:.1}%", progress.progress_percent());

        // Complete sync
        let final_stats = sync_manager.complete_sync(&peer_id)?;
        (progress, final_stats)
    };
    assert!((progress.progress_percent() - 200.0 / 3.0).abs() < 0.1);
    assert_eq!(final_stats.synced_chunks, 2);
    // Completed: no longer tracked, and saying so is an error, not a panic.
    assert!(node_b.get_sync_progress(&peer_id).is_err());
    Ok(())
}

#[test]
fn the_documents_wire_messages_are_built_from_its_types() {
    use chunk_sync_core::wire::{self, Decoded, Message};
    let bytes: [u8; 32] = *ChunkHash::of(b"a chunk").as_bytes();
    let get = Message::EventChunkGet { hash: bytes.into() };
    let mut frame = [0u8; 64];
    let n = wire::encode(&get, &mut frame).unwrap().len();
    match wire::decode(&frame[..n], wire::MAX_FRAME_LIMIT) {
        Ok(Decoded::Frame {
            message: Message::EventChunkGet { hash },
            ..
        }) => assert_eq!(hash.as_bytes(), &bytes),
        other => panic!("{other:?}"),
    }
    // `EventChunkPut { hash, data }` travels as pieces of the chunk requested: the hash is
    // the request's, and the receiver checks the bytes against it.
    let data = b"chunk bytes".to_vec();
    let put = Message::EventChunkPut {
        total_len: data.len() as u32,
        offset: 0,
        data: &data,
    };
    let n = wire::encode(&put, &mut frame).unwrap().len();
    assert!(matches!(
        wire::decode(&frame[..n], wire::MAX_FRAME_LIMIT),
        Ok(Decoded::Frame {
            message: Message::EventChunkPut { .. },
            ..
        })
    ));
}
