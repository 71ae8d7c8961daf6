//! The session driver: one task per connection that moves bytes between the transport and
//! the core's `Session`, answers its events from the node's store and sleeps until its
//! deadline. It makes no protocol decision of its own.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use chunk_sync_core::progress::SyncProgress as CoreProgress;
use chunk_sync_core::session::{Event, FailReason, Session, Stats};
use chunk_sync_core::{ChunkHash, NodeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::sleep_until;
use tracing::{debug, warn};

use crate::error::{Error, StoreError};
use crate::node::Shared;
use crate::store::{Inserted, NodeStore, VerifiedChunk};

/// Manifest page capacity of host sessions.
pub(crate) const HOST_PAGE: usize = 2048;
/// Requests in flight (each way) of host sessions.
pub(crate) const HOST_REQ: usize = 64;
/// The session type host nodes drive.
pub(crate) type HostSession = Session<HOST_PAGE, HOST_REQ>;
/// Bytes queued for the transport before the driver stops asking the session for more.
const HIGH_WATER: usize = 256 << 10;
/// Receive buffer of a busy session (or one frame, if larger).
const RX_BUFFER: usize = 256 << 10;
/// Receive buffer of a new session: it grows to `RX_BUFFER` when a frame needs it, so that
/// idle connections cost little.
const RX_INITIAL: usize = 4 << 10;
/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 64;
/// Bytes of verified chunks not yet written (queued, and being written) by a blocking
/// store, past which the driver stops reading until the store catches up.
const MAX_UNWRITTEN: usize = 32 << 20;
/// Peers whose latest progress a node keeps; past it, the one whose sync started first is
/// forgotten, so that peers claiming ever new node ids cannot grow the table.
const MAX_TRACKED_PEERS: usize = 1024;
/// How long a session that failed on its store may take to tell the peer.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// A batch written on a blocking thread, and how it went.
type Write = JoinHandle<(Vec<VerifiedChunk>, Result<Inserted, StoreError>)>;

/// What a finished (or failed) session did.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) peer: Option<NodeId>,
    pub(crate) progress: CoreProgress,
    pub(crate) stats: Stats,
    pub(crate) failed: Vec<(ChunkHash, FailReason)>,
}

struct Driver<'s> {
    shared: &'s Arc<Shared>,
    session: Box<HostSession>,
    rx: Vec<u8>,
    /// The size `rx` may grow to.
    rx_max: usize,
    filled: usize,
    /// Frames to write: headers copied out of `tx`, chunk data shared with the store.
    out: VecDeque<Bytes>,
    /// Bytes of `out` not yet written.
    out_len: usize,
    /// When the transport last took bytes, or when output became pending: a peer that
    /// takes nothing for the idle timeout is dropped.
    write_progress: tokio::time::Instant,
    tx: Vec<u8>,
    assembling: Vec<u8>,
    /// Chunks verified, not handed to the store yet.
    verified: Vec<VerifiedChunk>,
    /// Bytes verified and not yet written: `verified` and the batch being written.
    unwritten_bytes: usize,
    /// Whether the store's writes block, so that they run on a blocking thread while the
    /// transfer goes on.
    background: bool,
    /// The batch being written on a blocking thread.
    writing: Option<Write>,
    /// Chunks verified but not yet written: not reported as synced until they are.
    unwritten: u64,
    /// Chunks verified and refused by the store as forks: not synced but failed.
    forked: u64,
    /// Reassembly buffers handed back by the store.
    spare: Vec<Vec<u8>>,
    serving: Option<(ChunkHash, Bytes)>,
    wanted: VecDeque<ChunkHash>,
    failed: Vec<(ChunkHash, FailReason)>,
    /// When the node-wide throttle lets this session send again.
    node_throttled: Option<chunk_sync_core::Instant>,
    started: tokio::time::Instant,
    /// The listener's id for this connection, if it was accepted by one.
    conn: Option<u64>,
}

/// Runs `session` over `io` until it completes or fails.
pub(crate) async fn drive<IO: AsyncRead + AsyncWrite>(
    io: IO,
    session: Box<HostSession>,
    shared: &Arc<Shared>,
    wanted: Vec<ChunkHash>,
    conn: Option<u64>,
) -> (Outcome, Result<(), Error>) {
    let max_frame = session.config().max_frame as usize;
    let background = shared.store.writes_block();
    let mut d = Driver {
        shared,
        session,
        // Several frames per read once busy, so that chunks arriving together are stored
        // together.
        rx: vec![0; RX_INITIAL],
        rx_max: max_frame.max(RX_BUFFER),
        filled: 0,
        out: VecDeque::new(),
        out_len: 0,
        write_progress: tokio::time::Instant::now(),
        tx: vec![0; HostSession::max_transmit_len()],
        assembling: Vec::new(),
        verified: Vec::new(),
        unwritten_bytes: 0,
        background,
        writing: None,
        unwritten: 0,
        forked: 0,
        spare: Vec::new(),
        serving: None,
        wanted: wanted.into(),
        failed: Vec::new(),
        node_throttled: None,
        started: tokio::time::Instant::now(),
        conn,
    };
    let result = d.run(io).await;
    // Whatever was verified is kept, even when the session ended badly.
    if let Err(e) = d.write_remaining().await {
        warn!(error = %e, "verified chunks could not be stored");
    }
    let outcome = Outcome {
        peer: d.session.peer().map(|h| h.node_id),
        progress: d.written_progress(),
        stats: *d.session.stats(),
        failed: d.failed,
    };
    (outcome, result)
}

impl Driver<'_> {
    async fn run<IO: AsyncRead + AsyncWrite>(&mut self, io: IO) -> Result<(), Error> {
        let (mut reader, mut writer) = tokio::io::split(io);
        let result = self.exchange(&mut reader, &mut writer).await;
        if let Err(Error::Store(_)) = &result {
            // The session was aborted: its Error frame tells the peer. Send it, close this
            // side, and keep reading (and dropping) until the peer closes too, so that a
            // peer busy sending reads the frame rather than a reset connection.
            self.fill_output(self.shared.clock.now());
            let _ = tokio::time::timeout(FINAL_FLUSH, async {
                for bytes in &self.out {
                    writer.write_all(bytes).await?;
                }
                writer.shutdown().await?;
                while reader.read(&mut self.rx).await? > 0 {}
                Ok::<(), std::io::Error>(())
            })
            .await;
        }
        result
    }

    /// Waits for the batch being written, then writes what is still queued.
    async fn write_remaining(&mut self) -> Result<(), Error> {
        // Each finished write starts the next batch, if any is queued.
        while let Some(write) = self.writing.take() {
            self.written(write.await)?;
        }
        Ok(())
    }

    async fn exchange<R, W>(&mut self, reader: &mut R, writer: &mut W) -> Result<(), Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut read_open = true;
        loop {
            let now = self.shared.clock.now();
            self.feed_input(now)?;
            let mut answered = self.answer_events()?;
            // Explicitly wanted chunks join the queue as it drains, before the session
            // would find it empty and send `Done`.
            self.feed_wanted();
            self.fill_output(now);
            answered |= self.answer_events()?;
            if answered {
                continue;
            }
            // A failed session ends at once; a complete one once its chunks are written.
            let failed = self.session.error();
            let written = self.writing.is_none() && self.verified.is_empty();
            if self.session.is_closed() && self.out_len == 0 && (failed.is_some() || written) {
                writer.flush().await?;
                let _ = writer.shutdown().await;
                return match failed {
                    Some(e) => Err(Error::Protocol(e)),
                    None => Ok(()),
                };
            }
            let deadline = match (self.session.poll_timeout(), self.node_throttled) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|t| self.shared.clock.to_tokio(t));
            // A peer that takes no bytes for the idle timeout is gone, even if it still
            // sends: its session ends without the Error frame it would never read.
            let stall = (self.out_len > 0).then(|| self.write_progress + self.idle_timeout());
            if stall.is_some_and(|t| tokio::time::Instant::now() >= t) {
                return Err(Error::Stalled);
            }
            let deadline = match (deadline, stall) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if self.filled == self.rx.len() && self.rx.len() < self.rx_max {
                let grown = (self.rx.len() * 4).min(self.rx_max);
                self.rx.resize(grown, 0);
            }
            let can_read =
                read_open && self.filled < self.rx.len() && self.unwritten_bytes < MAX_UNWRITTEN;
            let pending_out = self.out_len > 0;
            let slices: Vec<IoSlice<'_>> = self
                .out
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            tokio::select! {
                read = reader.read(&mut self.rx[self.filled..]), if can_read => {
                    match read? {
                        0 => {
                            read_open = false;
                            if !self.session.is_closed() {
                                return Err(Error::Closed);
                            }
                        }
                        n => self.filled += n,
                    }
                }
                written = writer.write_vectored(&slices), if pending_out => {
                    let written = written?;
                    drop(slices);
                    self.consume_out(written);
                }
                joined = async {
                    match self.writing.as_mut() {
                        Some(write) => write.await,
                        None => std::future::pending().await,
                    }
                }, if self.writing.is_some() => {
                    drop(slices);
                    self.written(joined)?;
                }
                () = sleep_until(deadline.unwrap_or_else(|| self.started + std::time::Duration::from_secs(86_400))), if deadline.is_some() => {
                    let now = self.shared.clock.now();
                    self.session.handle_timeout(now);
                    if self.node_throttled.is_some_and(|t| now >= t) {
                        self.node_throttled = None;
                    }
                }
            }
        }
    }

    fn idle_timeout(&self) -> std::time::Duration {
        self.shared.config.idle_timeout
    }

    /// Feeds every whole frame in the receive buffer to the session.
    fn feed_input(&mut self, now: chunk_sync_core::Instant) -> Result<(), Error> {
        let mut start = 0;
        while start < self.filled {
            let handled = match self.session.handle_input(now, &self.rx[start..self.filled]) {
                Ok(h) => h,
                Err(e) => {
                    self.filled = 0;
                    debug!(error = %e, "session failed on input");
                    return Ok(());
                }
            };
            if handled.consumed == 0 {
                break;
            }
            let mut last = false;
            if let Some(piece) = handled.piece {
                if piece.offset == 0 {
                    if self.assembling.capacity() == 0 {
                        self.assembling = self.spare.pop().unwrap_or_default();
                    }
                    self.assembling.clear();
                    self.assembling.reserve(piece.total_len as usize);
                }
                self.assembling.extend_from_slice(piece.data);
                last = piece.last;
            }
            let consumed = handled.consumed;
            if last {
                self.finish_chunk()?;
            }
            start += consumed;
        }
        self.rx.copy_within(start..self.filled, 0);
        self.filled -= start;
        self.store_verified()
    }

    fn finish_chunk(&mut self) -> Result<(), Error> {
        match self.session.finish_chunk(&self.assembling) {
            Ok(verified) => {
                let id = verified.id();
                // The session has just hashed exactly these bytes: hand them over as they are.
                let bytes = Bytes::from(std::mem::take(&mut self.assembling));
                self.unwritten_bytes += bytes.len();
                self.unwritten += 1;
                self.verified.push(VerifiedChunk::trusted(id, bytes));
            }
            Err(e) => warn!(error = %e, "chunk refused"),
        }
        Ok(())
    }

    /// Hands the chunks verified so far to the store in one batch (one commit for a
    /// transactional store): here, or on a blocking thread for a store whose writes block.
    /// Either way they are reported only once written.
    fn store_verified(&mut self) -> Result<(), Error> {
        if self.verified.is_empty() || self.writing.is_some() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.verified);
        if self.background {
            let shared = Arc::clone(self.shared);
            self.writing = Some(tokio::task::spawn_blocking(move || {
                let result = shared.store.insert_batch(&batch);
                (batch, result)
            }));
            return Ok(());
        }
        let inserted = self.with_store(|s| s.insert_batch(&batch))?;
        self.refused(inserted);
        self.recycle(batch);
        Ok(())
    }

    /// Reports the chunks the store refused as forks: verified, but not synced.
    fn refused(&mut self, inserted: Inserted) {
        for fork in inserted.forks {
            warn!(%fork, "chunk refused");
            self.forked += 1;
            self.failed.push((fork.refused, FailReason::Fork));
        }
    }

    /// A batch written on a blocking thread came back.
    fn written(
        &mut self,
        joined: Result<(Vec<VerifiedChunk>, Result<Inserted, StoreError>), JoinError>,
    ) -> Result<(), Error> {
        self.writing = None;
        let (batch, result) = match joined {
            Ok(done) => done,
            Err(e) => return Err(self.store_failed(Box::new(e))),
        };
        let inserted = result.map_err(|e| self.store_failed(e))?;
        self.refused(inserted);
        self.recycle(batch);
        self.store_verified()
    }

    /// Counts a written batch as synced and reuses the buffers the store did not keep,
    /// rather than fault in fresh memory.
    fn recycle(&mut self, batch: Vec<VerifiedChunk>) {
        self.unwritten -= batch.len() as u64;
        self.unwritten_bytes -= batch.iter().map(|c| c.bytes().len()).sum::<usize>();
        for chunk in batch {
            if let Ok(buf) = chunk.into_bytes().try_into_mut() {
                self.spare.push(Vec::from(buf));
            }
        }
        self.publish_progress();
    }

    /// Runs `f` on the store. A store failure aborts the session, so the peer is told with
    /// an `Error` frame rather than a dropped connection.
    fn with_store<R>(
        &mut self,
        f: impl FnOnce(&dyn NodeStore) -> Result<R, StoreError>,
    ) -> Result<R, Error> {
        let result = f(self.shared.store.as_ref());
        result.map_err(|e| self.store_failed(e))
    }

    fn store_failed(&mut self, e: StoreError) -> Error {
        self.session.abort();
        Error::Store(e)
    }

    /// Answers the session's events from the store; returns whether there were any.
    fn answer_events(&mut self) -> Result<bool, Error> {
        let mut any = false;
        while let Some(event) = self.session.poll_event() {
            any = true;
            match event {
                Event::Connected { peer } => {
                    debug!(%peer, "connected");
                    if let Some(id) = self.conn {
                        self.shared.connections.handshaken(id);
                    }
                    self.feed_wanted();
                    self.publish_progress();
                }
                Event::LookupNeeded => {
                    let store = self.shared.store.as_ref();
                    let mut failure = None;
                    let answered = self.session.resolve_lookups(|id| {
                        store.contains(id).unwrap_or_else(|e| {
                            failure = Some(e);
                            true
                        })
                    });
                    if let Some(e) = failure {
                        return Err(self.store_failed(e));
                    }
                    debug_assert!(answered.is_ok(), "the event announced lookups");
                    self.publish_progress();
                }
                Event::ManifestPageNeeded { after, limit } => {
                    let (ids, last) = self.with_store(|s| s.page_after(after.as_ref(), limit))?;
                    // The store returns sorted hashes after the cursor, at most `limit`.
                    let _ = self.session.send_manifest_page(&ids, last);
                }
                Event::ChunkRequested { hash } => match self.with_store(|s| s.get(&hash))? {
                    Some(bytes) => {
                        let _ = self.session.serve_chunk(&hash, bytes.len());
                        self.serving = Some((hash, bytes));
                    }
                    None => {
                        let _ = self.session.chunk_not_found(&hash);
                    }
                },
                Event::ChunkFailed { hash, reason } => {
                    warn!(%hash, ?reason, "chunk could not be fetched from this peer");
                    self.failed.push((hash, reason));
                    self.publish_progress();
                }
                Event::PullComplete => debug!("pull complete"),
                Event::Completed => debug!("sync complete"),
                Event::Failed(e) => warn!(error = %e, "session failed"),
                _ => {}
            }
            self.feed_wanted();
        }
        Ok(any)
    }

    /// Queues explicitly wanted chunks as room frees up.
    fn feed_wanted(&mut self) {
        while !self.wanted.is_empty() {
            let (front, _) = self.wanted.as_slices();
            let n = self.session.want(front);
            if n == 0 {
                break;
            }
            self.wanted.drain(..n);
        }
    }

    /// Moves frames from the session to the output queue while the node-wide throttle and
    /// the queue's size allow (a failed session's Error frame goes in whatever the size).
    fn fill_output(&mut self, now: chunk_sync_core::Instant) {
        while self.out_len < HIGH_WATER || self.session.error().is_some() {
            let mut node_throttle = self
                .shared
                .throttle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(at) = node_throttle.next_ready(now) {
                self.node_throttled = Some(at);
                return;
            }
            let transmit = match self.session.poll_transmit(now, &mut self.tx) {
                Ok(Some(t)) => t,
                Ok(None) => return,
                Err(e) => {
                    // `tx` is sized by `max_transmit_len`, so this is a bug; end the session.
                    warn!(error = %e, "transmit buffer too small");
                    self.session.abort();
                    return;
                }
            };
            // Admitted: the window has room.
            let _ = node_throttle.try_consume(now, transmit.wire_len() as u64);
            drop(node_throttle);
            self.push_out(Bytes::copy_from_slice(&self.tx[..transmit.len]));
            let Some(piece) = transmit.piece else {
                continue;
            };
            let data = match &self.serving {
                Some((hash, bytes)) if *hash == piece.hash => {
                    let range = piece.offset as usize..(piece.offset + piece.len) as usize;
                    let last = range.end == bytes.len();
                    let data = bytes.slice(range);
                    if last {
                        self.serving = None;
                    }
                    data
                }
                _ => {
                    warn!("session asked for bytes of a chunk not being served");
                    self.session.abort();
                    return;
                }
            };
            self.push_out(data);
        }
    }

    fn push_out(&mut self, bytes: Bytes) {
        if self.out_len == 0 {
            self.write_progress = tokio::time::Instant::now();
        }
        self.out_len += bytes.len();
        self.out.push_back(bytes);
    }

    /// Drops `written` bytes from the front of the output queue.
    fn consume_out(&mut self, mut written: usize) {
        self.out_len -= written;
        if written > 0 {
            self.write_progress = tokio::time::Instant::now();
        }
        while written > 0 {
            let Some(front) = self.out.front_mut() else {
                return;
            };
            if written >= front.len() {
                written -= front.len();
                self.out.pop_front();
            } else {
                let _ = front.split_to(written);
                written = 0;
            }
        }
    }

    /// The session's progress, counting as synced only the chunks the store has written
    /// (and as failed those it refused as forks).
    fn written_progress(&self) -> CoreProgress {
        let mut progress = *self.session.progress();
        progress.synced_chunks = progress
            .synced_chunks
            .saturating_sub(self.unwritten + self.forked);
        progress.failed_chunks += self.forked;
        progress
    }

    fn publish_progress(&self) {
        let Some(peer) = self.session.peer().map(|h| h.node_id) else {
            return;
        };
        let progress = crate::SyncProgress::from_core(&self.written_progress(), self.started);
        let mut table = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_TRACKED_PEERS && !table.contains_key(&peer) {
            let oldest = table
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                table.remove(&oldest);
            }
        }
        table.insert(peer, progress);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_session_before_hello_costs_what_the_readme_says() {
        // The README's connection row: 204 KiB of session (208,640 bytes on 64-bit
        // targets) and a 4 KiB receive buffer.
        let session = size_of::<HostSession>();
        assert!(
            (200 << 10..=205 << 10).contains(&session),
            "{session} bytes"
        );
        assert_eq!(RX_INITIAL, 4 << 10);
    }
}
