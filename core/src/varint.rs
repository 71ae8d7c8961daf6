//! Integers and byte strings as postcard encodes them, written and read by hand: chunks,
//! wire messages and the reconciliation codec are made of nothing else, and one small
//! writer and reader for all of them is much less code than postcard's serde machinery
//! for each type.
//!
//! Integers are unsigned LEB128 varints (7 bits a byte, least significant first, the high
//! bit set on every byte but the last); a byte string is its length as a varint, then its
//! bytes. The reader refuses what postcard refuses, with the same cause: input that ends
//! inside a value is [`DecodeError::Truncated`], anything else invalid
//! [`DecodeError::Malformed`].

use crate::error::DecodeError;

/// The most bytes a varint of a `u64` takes.
pub(crate) const MAX_VARINT: usize = 10;

/// Writes into a buffer, each write after the last; past the buffer's end it only counts,
/// so that one pass both writes what fits and measures what all of it needs.
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
    /// Bytes written (or counted) from the start of `buf`.
    pub(crate) len: usize,
}

impl core::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Writer").field("len", &self.len).finish()
    }
}

impl<'b> Writer<'b> {
    /// A writer that goes on after the first `len` bytes of `buf`.
    pub(crate) const fn new(buf: &'b mut [u8], len: usize) -> Self {
        Self { buf, len }
    }

    /// Whether everything written so far fits the buffer.
    pub(crate) const fn fits(&self) -> bool {
        self.len <= self.buf.len()
    }

    /// Bytes of the buffer not yet written.
    pub(crate) const fn room(&self) -> usize {
        self.buf.len().saturating_sub(self.len)
    }

    /// The buffer, to take the written bytes from.
    pub(crate) fn into_buf(self) -> &'b mut [u8] {
        self.buf
    }

    /// Appends `bytes`. Once one write did not fit, no later one does: what fits is always
    /// a prefix of what was written.
    // Out of line on a bare-metal target, as `varint` and the reader's `varint`: called
    // from every encoder, where a copy at each call would cost more flash than the call.
    // A host inlines them: they are on the path of every event sealed and read.
    #[cfg_attr(target_os = "none", inline(never))]
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
        }
        self.len = end;
    }

    /// Appends `v` as a varint.
    #[cfg_attr(target_os = "none", inline(never))]
    pub(crate) fn varint(&mut self, mut v: u64) {
        let mut out = [0u8; MAX_VARINT];
        let mut n = 0;
        for byte in &mut out {
            n += 1;
            // The low 7 bits of `v`: the cast keeps exactly them.
            *byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                break;
            }
            *byte |= 0x80;
        }
        self.bytes(out.get(..n).unwrap_or_default());
    }

    /// Appends a byte string: its length, then its bytes.
    pub(crate) fn byte_string(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.bytes(bytes);
    }
}

/// Bytes of the varint of `v`.
#[must_use]
pub(crate) const fn varint_len(v: u64) -> usize {
    let bits = u64::BITS - (v | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// Reads from the front of a byte slice.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    /// The next byte.
    pub(crate) fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.0.split_first().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(first)
    }

    /// A varint of an integer type of `bits` bits (16, 32 or 64), by postcard's rules: at
    /// most as many bytes as the type needs, and a last byte that sets no bit above the
    /// type's. Out of line on a bare-metal target (see [`Writer::bytes`]).
    #[cfg_attr(target_os = "none", inline(never))]
    fn varint(&mut self, bits: u32) -> Result<u64, DecodeError> {
        let max_bytes = bits.div_ceil(7);
        let max_last = (1u8 << (bits % 7)) - 1;
        let mut v = 0u64;
        for i in 0..max_bytes {
            let byte = self.byte()?;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i == max_bytes - 1 && byte > max_last {
                    return Err(DecodeError::Malformed);
                }
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed)
    }

    /// A `u64` varint.
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.varint(u64::BITS)
    }

    /// A `u32` varint.
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        // `varint` keeps the value within the type's bits.
        self.varint(u32::BITS).map(|v| v as u32)
    }

    /// A `u16` varint.
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        // `varint` keeps the value within the type's bits.
        self.varint(u16::BITS).map(|v| v as u16)
    }

    /// A `bool`: one byte, 0 or 1.
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed),
        }
    }

    /// A byte string: its length (a `usize` varint), then its bytes.
    pub(crate) fn byte_string(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint(usize::BITS)?;
        // `varint` keeps the value within `usize`.
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(v: u64) -> std::vec::Vec<u8> {
        let mut buf = [0u8; MAX_VARINT];
        let mut w = Writer::new(&mut buf, 0);
        w.varint(v);
        let len = w.len;
        buf[..len].to_vec()
    }

    #[test]
    fn edges_of_each_length() {
        assert_eq!(written(0), [0]);
        assert_eq!(written(127), [0x7f]);
        assert_eq!(written(128), [0x80, 0x01]);
        assert_eq!(written(300), [0xac, 0x02]);
        assert_eq!(written(u64::MAX).len(), MAX_VARINT);
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), MAX_VARINT);
    }

    #[test]
    fn a_writer_past_its_buffer_counts() {
        let mut buf = [0u8; 3];
        let mut w = Writer::new(&mut buf, 1);
        w.bytes(&[7, 8]);
        assert!(w.fits());
        w.varint(300);
        assert!(!w.fits());
        assert_eq!(w.len, 5);
        assert_eq!(buf, [0, 7, 8]);
    }

    proptest! {
        /// Postcard writes the same bytes and reads them back to the same value.
        #[test]
        fn varints_are_postcards(v in any::<u64>()) {
            let ours = written(v);
            let mut theirs = [0u8; MAX_VARINT];
            let theirs = postcard::to_slice(&v, &mut theirs).unwrap();
            prop_assert_eq!(&ours[..], &theirs[..]);
            prop_assert_eq!(varint_len(v), ours.len());
            prop_assert_eq!(Reader(&ours).u64(), Ok(v));
        }

        /// Any bytes read as an integer, a `bool` or a byte string give what postcard
        /// gives, error causes included.
        #[test]
        fn reading_agrees_with_postcard(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            fn theirs<'a, T: serde::Deserialize<'a>>(
                bytes: &'a [u8],
            ) -> Result<(T, usize), DecodeError> {
                postcard::take_from_bytes::<T>(bytes)
                    .map(|(v, rest)| (v, rest.len()))
                    .map_err(DecodeError::from_postcard)
            }
            fn ours<'a, T>(
                bytes: &'a [u8],
                read: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
            ) -> Result<(T, usize), DecodeError> {
                let mut r = Reader(bytes);
                read(&mut r).map(|v| (v, r.0.len()))
            }
            prop_assert_eq!(ours(&bytes, Reader::u64), theirs::<u64>(&bytes));
            prop_assert_eq!(ours(&bytes, Reader::u32), theirs::<u32>(&bytes));
            prop_assert_eq!(ours(&bytes, Reader::u16), theirs::<u16>(&bytes));
            prop_assert_eq!(ours(&bytes, Reader::bool), theirs::<bool>(&bytes));
            prop_assert_eq!(
                ours(&bytes, Reader::byte_string),
                theirs::<&serde_bytes::Bytes>(&bytes).map(|(v, n)| (&v[..], n))
            );
        }
    }
}
