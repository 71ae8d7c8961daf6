//! The output queue of one connection: frame headers copied out of the conduit, chunk
//! data shared with the store, written with vectored writes.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Bytes, BytesMut};

/// Most buffers handed to one vectored write.
pub(crate) const MAX_IOV: usize = 64;

/// Frames, and chunk data smaller than [`COPY_BELOW`], are copied into blocks of this
/// size, so that a frame costs no allocation of its own and small frames that follow each
/// other go out as one buffer.
const HEADER_BLOCK: usize = 64 << 10;

/// Chunk data shorter than this is copied after its frame rather than queued as a buffer
/// of its own: a vectored write then carries hundreds of small chunks instead of
/// [`MAX_IOV`] / 2.
const COPY_BELOW: usize = 4 << 10;

/// Bytes waiting for the transport, in order.
#[derive(Debug, Default)]
pub(crate) struct Output {
    queue: VecDeque<Bytes>,
    len: usize,
    /// Copied bytes after those in `queue`, not split off yet.
    headers: BytesMut,
}

impl Output {
    /// Queues a copy of `frame`.
    pub(crate) fn push_copy(&mut self, frame: &[u8]) {
        if self.headers.capacity() - self.headers.len() < frame.len() {
            self.seal();
            self.headers = BytesMut::with_capacity(HEADER_BLOCK.max(frame.len()));
        }
        self.headers.extend_from_slice(frame);
        self.len += frame.len();
    }

    /// Queues bytes after those already queued: copied if they are small, shared if not.
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if bytes.len() < COPY_BELOW {
            self.push_copy(&bytes);
        } else {
            self.seal();
            self.len += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Moves the copied bytes not yet split off to the queue.
    fn seal(&mut self) {
        if !self.headers.is_empty() {
            self.queue.push_back(self.headers.split().freeze());
        }
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `iov` with the first buffers and returns how many it used.
    pub(crate) fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let pending = (!self.headers.is_empty()).then_some(&self.headers[..]);
        iov.iter_mut()
            .zip(self.queue.iter().map(|b| &b[..]).chain(pending))
            .map(|(slot, bytes)| *slot = IoSlice::new(bytes))
            .count()
    }

    /// Drops `written` bytes from the front.
    pub(crate) fn consume(&mut self, mut written: usize) {
        self.len = self.len.saturating_sub(written);
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                // The rest was copied and not split off yet.
                let _ = self.headers.split_to(written.min(self.headers.len()));
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
        let large = Bytes::from(vec![7; COPY_BELOW]);
        out.push(large.clone());
        out.push_copy(b"hi");
        // The small ones went out as one buffer, the large one as itself.
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = out.slices(&mut iov);
        assert_eq!(n, 3);
        assert_eq!(
            (&*iov[0], iov[1].as_ptr()),
            (&b"abcdefg"[..], large.as_ptr())
        );
        out.consume(4);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = out.slices(&mut iov);
        assert_eq!(&*iov[..n][0], b"efg");
        out.consume(3 + COPY_BELOW + 1);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = out.slices(&mut iov);
        assert_eq!(&*iov[..n][0], b"i");
        out.consume(1);
        assert!(out.is_empty());
    }
}
