//! The original document's example, end to end over real TCP: 25 events chunked, two
//! nodes, delta sync, per-peer progress and throttling, told step by step.

use std::time::Duration;

use chunk_sync_core::{EventBuf, EventChunkStore, NodeId, Privacy};
use chunk_sync_tokio::{MemStore, Node, NodeConfig, NodeStore, ThrottleConfig, VerifiedChunk};

use crate::Result;
use crate::units::human;

fn log(origin: NodeId, count: u64) -> Vec<EventBuf> {
    (0..count)
        .map(|seq| EventBuf {
            origin,
            seq,
            timestamp: 1_700_000_000 + seq,
            kind: "sensor.temperature".into(),
            privacy: match seq % 5 {
                4 => Privacy::Private,
                3 => Privacy::Shareable,
                _ => Privacy::Public,
            },
            payload: format!(
                "{{\"node\":{},\"celsius\":{}.{}}}",
                origin.0,
                18 + seq % 7,
                seq % 10
            )
            .repeat(4)
            .into_bytes(),
        })
        .collect()
}

fn node(id: NodeId, events: &[EventBuf], throttle: ThrottleConfig) -> Result<(Node, usize)> {
    let chunks = EventChunkStore::new(10).create_chunks(events)?;
    let store = MemStore::new();
    println!(
        "{id} wrote {} events and sealed them into chunks of up to 10 sequence numbers:",
        events.len()
    );
    for c in &chunks {
        println!(
            "    {}  seq {:>2}..{:<2}  {} events  {}",
            c.id,
            c.first_seq,
            c.end_seq,
            c.events,
            human(c.bytes.len() as u64)
        );
        store.insert(VerifiedChunk::new(c.id, c.bytes.clone())?)?;
    }
    let config = NodeConfig {
        throttle,
        ..NodeConfig::new(id)
    };
    Ok((Node::new_insecure_plaintext(config, store)?, chunks.len()))
}

pub(crate) async fn run() -> Result<()> {
    println!("chunk-sync demo: two nodes replicate their event logs over loopback TCP\n");
    let (a_id, b_id) = (NodeId(1), NodeId(2));
    let a_log = log(a_id, 25);
    let private = a_log
        .iter()
        .filter(|e| e.privacy == Privacy::Private)
        .count();
    let rate = 2_000;
    let throttle = ThrottleConfig {
        max_bytes_per_sec: rate,
        window_duration: Duration::from_millis(100),
    };
    let (a, a_chunks) = node(a_id, &a_log, throttle)?;
    println!("    ({private} private events stayed out of the chunks)\n");
    let (b, b_chunks) = node(b_id, &log(b_id, 8), ThrottleConfig::UNLIMITED)?;

    let listener = a.listen("127.0.0.1:0").await?;
    println!(
        "\n{a_id} listens on {}, sending at most {}/s",
        listener.local_addr(),
        human(rate)
    );
    println!(
        "{b_id} connects: each side pages through the other's manifest, computes what it lacks,"
    );
    println!("requests only that, verifies every chunk against its hash, then stores it.\n");

    let sync = b.sync_with(listener.local_addr());
    tokio::pin!(sync);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let report = loop {
        tokio::select! {
            result = &mut sync => break result?,
            _ = tick.tick() => {
                for (label, node, peer) in [("fetching from", &b, a_id), ("fetching from", &a, b_id)] {
                    if let Some(p) = node.progress(&peer) {
                        println!(
                            "    {} {label} {peer}: {}/{} chunks, {:5.1}%, {} in {:.2}s",
                            node.node_id(), p.synced_chunks, p.total_chunks, p.progress_percent(),
                            human(p.bytes_transferred), p.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        }
    };
    let p = report.progress;
    println!(
        "\n{b_id} fetched {} of {a_id}'s chunks ({}) in {:.2}s: the throttle kept {a_id} to {}/s on average",
        p.synced_chunks,
        human(p.bytes_transferred),
        p.elapsed().as_secs_f64(),
        human(rate)
    );
    if let Some(pa) = a.progress(&b_id) {
        println!(
            "{a_id} fetched {} of {b_id}'s chunks ({})",
            pa.synced_chunks,
            human(pa.bytes_transferred)
        );
    }
    let (a_has, b_has) = (a.store().len()?, b.store().len()?);
    println!("both nodes now hold the union: {a_has} and {b_has} chunks ({a_chunks} + {b_chunks})");
    if a_has != a_chunks + b_chunks || b_has != a_has || !report.failed.is_empty() {
        return Err(crate::Failure("the demo did not converge".into()));
    }
    Ok(())
}
