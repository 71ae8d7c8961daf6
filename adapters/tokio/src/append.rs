//! A node's own log and its life: appending events ([`Node::append`]), the task that
//! seals the open chunk when the sealing policy says so, what the node tells the
//! application ([`Node::events`]), and a clean shutdown ([`Node::shutdown`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::{ChunkError, ChunkEvent, EventBuf, Span};
use tokio::sync::{Notify, broadcast};
use tracing::{debug, warn};

use crate::error::{Error, StoreError};
use crate::events::NodeEvent;
use crate::log::{Appended, OwnLog};
use crate::node::Node;
use crate::shared::Shared;
use crate::signing::{Sealing, sign_all};
use crate::store::VerifiedChunk;
use chunk_sync_core::secure::Keypair;

/// How long [`Node::shutdown`] waits for live sessions to end cleanly.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// Appends one event to this node's own log: see [`append_batch`](Self::append_batch).
    ///
    /// # Errors
    /// As [`append_batch`](Self::append_batch).
    pub async fn append(&self, event: EventBuf) -> Result<Appended, Error> {
        self.append_batch(std::slice::from_ref(&event)).await
    }

    /// Appends events to this node's own log (their origin must be this node's id), in
    /// order of sequence number. Private events use up their sequence numbers and stay
    /// here. Events go into the open chunk, which is sealed and stored when its range of
    /// [`events_per_chunk`](crate::NodeConfig::events_per_chunk) sequence numbers is
    /// covered, when its events reach [`seal_bytes`](crate::NodeConfig::seal_bytes), or
    /// [`seal_delay`](crate::NodeConfig::seal_delay) after its first event (by a task of
    /// the node); each chunk stored is announced to the node's live peers.
    ///
    /// An event is not durable until its chunk is stored: at most `seal_delay` after it
    /// was appended, or at once with [`flush`](Self::flush).
    ///
    /// Returns what was taken; events whose sequence numbers were taken already (sealed,
    /// or in the open chunk), of another origin, or too large for a chunk are counted
    /// there, not taken, and the rest are. The first append reads where the log ends from the store.
    ///
    /// A chunk sealed that the store refuses (full, or failing) is kept in memory and
    /// stored first by the next append, [`flush`](Self::flush) or seal, so that the log's
    /// chunks reach the store in order; the events in it are taken
    /// ([`Appended::unstored`] counts such chunks).
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails to read where the log ends, or still refuses
    /// the chunks kept from before: then nothing is taken, so that appending the same
    /// events once the store has room loses none (those taken already count as late);
    /// also if a chunk sealed is a fork (another process appended to this origin's log in
    /// the same store), which is not kept, since storing it again cannot succeed.
    pub async fn append_batch<E: ChunkEvent>(&self, events: &[E]) -> Result<Appended, Error> {
        let now = self.shared.clock.now();
        // Held until what this call sealed is stored or kept: the own log's chunks reach
        // the store in order.
        let mut guard = self.shared.log.lock().await;
        let log = match &mut *guard {
            Some(log) => log,
            empty => empty.insert(self.open_log()?),
        };
        let earlier = log.take_unstored();
        store_keeping(&self.shared, log, earlier).await?;
        let (mut report, sealed) = log.push(events, now);
        self.wake_sealer(log.deadline().is_some());
        let sealed = sign(sealed, log.keys().cloned()).await?;
        if report.late > 0 {
            warn!(late = report.late, range = ?report.late_range, "events whose sequence numbers were taken already were not taken");
        }
        let count = sealed.len();
        match store_own(&self.shared, sealed).await {
            Ok(()) => report.sealed = count,
            // Kept: the events in them are taken, and stored with the next call.
            Err(refused) if !refused.chunks.is_empty() => {
                warn!(error = %refused.error, chunks = count, "the store refused chunks of the own log; they are kept and stored first next time");
                report.unstored = count;
                log.keep_unstored(refused.chunks);
            }
            Err(refused) => return Err(refused.error),
        }
        Ok(report)
    }

    /// Seals the own log's open chunk now and stores it (nothing if it holds no event),
    /// after any chunks the store refused before.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails to keep them: they are kept, as
    /// [`append_batch`](Self::append_batch) keeps them.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut guard = self.shared.log.lock().await;
        let Some(log) = guard.as_mut() else {
            return Ok(());
        };
        let sealed = seal_with_unstored(log).map_err(|e| Error::Store(e.into()))?;
        store_keeping(&self.shared, log, sealed).await
    }

    /// What happens on this node from now on: chunks stored, peers connected and lost.
    /// A receiver that falls more than [`EVENT_CAPACITY`](crate::EVENT_CAPACITY) events
    /// behind misses the oldest and is told how many.
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.shared.events.subscribe()
    }

    /// Ends the node's live replication cleanly: the own log's open chunk is sealed and
    /// stored, every live session (with [`add_peer`](Self::add_peer)'s peers and with
    /// peers accepted by listeners) finishes what it is fetching and ends with `Done`, no
    /// new one starts, and the call returns once they ended or after
    /// [`SHUTDOWN_TIMEOUT`]. Listeners keep accepting one-shot sessions until dropped.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails to keep the last chunk.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let flushed = self.flush().await;
        let _ = self.shared.closing.send(true);
        self.shared.seal_wake.notify_one();
        let tasks = self.shared.peers.remove_all();
        let ended = async {
            for task in tasks {
                let _ = task.await;
            }
            // Sessions accepted by listeners end when their peers do.
            while self.shared.connections.len() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, ended).await.is_err() {
            warn!("live sessions did not end within the shutdown timeout");
        }
        flushed
    }

    /// The own log, continuing after the last chunk of this node's origin in the store.
    fn open_log(&self) -> Result<OwnLog, Error> {
        let config = &self.shared.config;
        let (summary, _) = self
            .store()
            .summarize(&KeyRange::whole(config.node_id), &mut [])
            .map_err(Error::Store)?;
        let next = if summary.count > 0 { summary.end } else { 0 };
        OwnLog::new(
            config.node_id,
            config.events_per_chunk,
            next,
            config.seal_policy(),
            self.shared.security.as_ref().map(|s| &s.keys),
        )
        .map_err(|e| Error::Store(e.into()))
    }

    /// Tells the sealing task that the open chunk's deadline may have changed, starting
    /// the task if it does not run yet.
    fn wake_sealer(&self, open: bool) {
        if open && self.shared.start_sealer() {
            let wake = Arc::clone(&self.shared.seal_wake);
            tokio::spawn(seal_when_due(Arc::downgrade(&self.shared), wake));
        }
        self.shared.seal_wake.notify_one();
    }
}

/// The chunks the store refused before and the open chunk, sealed and signed. If sealing
/// fails, the chunks refused before are kept.
fn seal_with_unstored(log: &mut OwnLog) -> Result<Vec<VerifiedChunk>, ChunkError> {
    let mut all = log.take_unstored();
    match log.seal() {
        Ok(sealed) => {
            all.extend(sealed);
            Ok(all)
        }
        Err(e) => {
            log.keep_unstored(all);
            Err(e)
        }
    }
}

/// What the store refused of the own log's chunks: why, and the chunks to store again
/// (none for a fork, which storing again cannot mend).
struct Refused {
    error: Error,
    chunks: Vec<VerifiedChunk>,
}

/// [`store_own`] with the own log held, keeping in it the chunks the store refuses, to be
/// stored again.
async fn store_keeping(
    shared: &Arc<Shared>,
    log: &mut OwnLog,
    sealed: Vec<VerifiedChunk>,
) -> Result<(), Error> {
    store_own(shared, sealed).await.map_err(|refused| {
        log.keep_unstored(refused.chunks);
        refused.error
    })
}

/// Chunks sealed from the own log, signed: on a blocking thread, and on every core, when
/// there are many (a bulk append), so that signing them holds up no other task.
async fn sign(sealed: Vec<Sealing>, keys: Option<Keypair>) -> Result<Vec<VerifiedChunk>, Error> {
    let unsigned = sealed
        .iter()
        .filter(|s| matches!(s, Sealing::Unsigned(_)))
        .count();
    let signed = if unsigned > 16 {
        tokio::task::spawn_blocking(move || sign_all(sealed, keys.as_ref()))
            .await
            .map_err(|e| Error::Store(e.into()))?
    } else {
        sign_all(sealed, keys.as_ref())
    };
    signed.map_err(|e| Error::Store(e.into()))
}

/// Stores `sealed` (on a blocking thread for a store whose writes wait on a disk) and
/// tells the node's sessions and the application.
async fn store_own(shared: &Arc<Shared>, sealed: Vec<VerifiedChunk>) -> Result<(), Refused> {
    if sealed.is_empty() {
        return Ok(());
    }
    let (sealed, inserted) = if shared.store.writes_block() {
        let writer = Arc::clone(shared);
        tokio::task::spawn_blocking(move || {
            let inserted = writer.store.insert_batch(&sealed);
            (sealed, inserted)
        })
        .await
        .map_err(|e| Refused {
            error: Error::Store(e.into()),
            chunks: Vec::new(),
        })?
    } else {
        let inserted = shared.store.insert_batch(&sealed);
        (sealed, inserted)
    };
    let inserted = match inserted {
        Ok(inserted) => inserted,
        Err(e) => {
            return Err(Refused {
                error: Error::Store(e),
                chunks: sealed,
            });
        }
    };
    if let Some(fork) = inserted.forks.first() {
        // The log continued past chunks that another process appended meanwhile.
        return Err(Refused {
            error: Error::Store(StoreError::from(*fork)),
            chunks: Vec::new(),
        });
    }
    for chunk in &sealed {
        if let Some(span) = Span::of(chunk.bytes()) {
            debug!(id = %chunk.id(), %span, "sealed");
            shared.events.send(NodeEvent::ChunkStored {
                id: chunk.id(),
                span,
                from: None,
            });
        }
    }
    Ok(())
}

/// The task that seals the own log's open chunk once its deadline passes; it ends when
/// the node is gone (its last handle dropped) or shuts down. It holds the node only while
/// it reads the deadline or seals, so that it never keeps a dropped node alive.
async fn seal_when_due(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        // Registered before the deadline is read, so that no wake-up is missed.
        notified.as_mut().enable();
        let deadline = {
            let Some(node) = shared.upgrade() else {
                return;
            };
            if node.is_closing() {
                return;
            }
            let deadline = node.log.lock().await.as_ref().and_then(OwnLog::deadline);
            deadline.map(|t| node.clock.to_tokio(t))
        };
        match deadline {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = &mut notified => continue,
            },
            None => {
                notified.await;
                continue;
            }
        }
        let Some(node) = shared.upgrade() else {
            return;
        };
        let now = node.clock.now();
        let mut guard = node.log.lock().await;
        let Some(log) = guard
            .as_mut()
            .filter(|log| log.deadline().is_some_and(|t| t <= now))
        else {
            continue;
        };
        let sealed = match seal_with_unstored(log) {
            Ok(sealed) => sealed,
            Err(e) => {
                warn!(error = %e, "a sealed chunk of the own log could not be signed");
                continue;
            }
        };
        if let Err(e) = store_keeping(&node, log, sealed).await {
            warn!(error = %e, "a sealed chunk of the own log could not be stored");
        }
    }
}
