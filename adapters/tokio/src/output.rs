//! The output queue of one connection: frame headers copied out of the conduit, chunk
//! data shared with the store, written with vectored writes.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Bytes, BytesMut};

/// Most buffers handed to one vectored write.
pub(crate) const MAX_IOV: usize = 64;

/// Frame headers are copied into blocks of this size, so that a frame costs no allocation
/// of its own.
const HEADER_BLOCK: usize = 16 << 10;

/// Bytes waiting for the transport, in order.
#[derive(Debug, Default)]
pub(crate) struct Output {
    queue: VecDeque<Bytes>,
    len: usize,
    /// Where copied frames go; split off as they are queued.
    headers: BytesMut,
}

impl Output {
    /// Queues a copy of `frame`.
    pub(crate) fn push_copy(&mut self, frame: &[u8]) {
        if self.headers.capacity() < frame.len() {
            self.headers = BytesMut::with_capacity(HEADER_BLOCK.max(frame.len()));
        }
        self.headers.extend_from_slice(frame);
        let copied = self.headers.split().freeze();
        self.push(copied);
    }

    /// Queues bytes after those already queued.
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `iov` with the first buffers and returns how many it used.
    pub(crate) fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        iov.iter_mut()
            .zip(&self.queue)
            .map(|(slot, bytes)| *slot = IoSlice::new(bytes))
            .count()
    }

    /// Drops `written` bytes from the front.
    pub(crate) fn consume(&mut self, mut written: usize) {
        self.len = self.len.saturating_sub(written);
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
            } else {
                let _ = front.split_to(written);
                written = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consuming_splits_buffers_at_any_point() {
        let mut out = Output::default();
        out.push_copy(b"abc");
        out.push(Bytes::new());
        out.push(Bytes::from_static(b"defg"));
        assert_eq!(out.slices(&mut [IoSlice::new(&[]); MAX_IOV]), 2);
        out.consume(4);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = out.slices(&mut iov);
        assert_eq!(&*iov[..n][0], b"efg");
        out.consume(3);
        assert!(out.is_empty());
    }
}
