//! The codecs a piece of a chunk may travel in, compressed: [`Codec::Lz4`] (the LZ4 block
//! format; safe Rust, no allocation, on every target with the `lz4` features) and
//! [`Codec::Zstd`] (hosts, feature `zstd`).
//!
//! A compressed piece is decompressed into a buffer of exactly the length it announces, and
//! neither codec writes past that buffer, whatever the compressed bytes claim: a piece that
//! would inflate further, or to less, is [`PeerMisbehaved::BadCompression`], and a bomb
//! allocates nothing. The chunk is then verified by the hash of its raw bytes, so its id
//! never depends on how it travelled.

use crate::session::PeerMisbehaved;
use crate::wire::Capabilities;

/// A codec for compressed pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Codec {
    /// The LZ4 block format: fast on both sides, and small enough for a microcontroller.
    Lz4,
    /// zstd frames at [`ZSTD_LEVEL`]: 1.2 to 1.9 times LZ4's ratio (1.6 to 1.9 times on
    /// chunks of 11 KB and more), compressing at 0.15 to 1 times its speed. Hosts only (it
    /// needs std and the C library).
    Zstd,
}

/// The zstd level pieces are compressed at. On chunk-sized input level 1 packs about as well
/// as level 3 (better in most cases measured) and is faster in every one
/// (`cargo run --release -p chunk-sync-benches --bin compress`).
pub const ZSTD_LEVEL: i32 = 1;

impl Codec {
    /// The codecs a sender tries, best first.
    pub const PREFERENCE: [Self; 2] = [Self::Zstd, Self::Lz4];

    /// The capability a peer announces when it takes pieces in this codec.
    #[must_use]
    pub const fn capability(self) -> Capabilities {
        match self {
            Self::Lz4 => Capabilities::LZ4,
            Self::Zstd => Capabilities::ZSTD,
        }
    }

    /// Whether this build compresses with it (features `lz4-compress`, `zstd`).
    #[must_use]
    pub const fn compresses(self) -> bool {
        match self {
            Self::Lz4 => cfg!(feature = "lz4-compress"),
            Self::Zstd => cfg!(feature = "zstd"),
        }
    }

    /// Compresses `raw` into the start of `out`; returns the compressed length, or `None`
    /// if it does not fit `out` (or this build does not compress with the codec).
    #[must_use]
    pub fn compress_into(self, raw: &[u8], out: &mut [u8]) -> Option<usize> {
        match self {
            #[cfg(feature = "lz4-compress")]
            Self::Lz4 => lz4_flex::block::compress_into(raw, out).ok(),
            #[cfg(feature = "zstd")]
            Self::Zstd => zstd_context::compress(raw, out),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (raw, out);
                None
            }
        }
    }

    /// Decompresses `data` into the whole of `dst`, writing nothing past it.
    ///
    /// # Errors
    /// [`PeerMisbehaved::BadCompression`] unless `data` decompresses to exactly
    /// `dst.len()` bytes (or if this build does not take the codec).
    pub fn decompress_into(self, data: &[u8], dst: &mut [u8]) -> Result<(), PeerMisbehaved> {
        let n: Option<usize> = match self {
            #[cfg(feature = "lz4")]
            Self::Lz4 => lz4_flex::block::decompress_into(data, dst).ok(),
            #[cfg(feature = "zstd")]
            Self::Zstd => zstd_context::decompress(data, dst),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = data;
                None
            }
        };
        match n {
            Some(n) if n == dst.len() => Ok(()),
            _ => Err(PeerMisbehaved::BadCompression),
        }
    }
}

/// zstd's contexts, one of each per thread, made on first use and kept: a context costs
/// more to make than a small piece costs to compress.
#[cfg(feature = "zstd")]
mod zstd_context {
    use core::cell::RefCell;

    use zstd::bulk::{Compressor, Decompressor};

    std::thread_local! {
        static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
    }

    pub(super) fn compress(raw: &[u8], out: &mut [u8]) -> Option<usize> {
        COMPRESSOR.with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Compressor::new(super::ZSTD_LEVEL).ok();
            }
            slot.as_mut()?.compress_to_buffer(raw, out).ok()
        })
    }

    /// One-shot decompression writes straight into `dst` and allocates no window, whatever
    /// window the frame asks for (zstd's single-pass mode).
    pub(super) fn decompress(data: &[u8], dst: &mut [u8]) -> Option<usize> {
        DECOMPRESSOR.with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Decompressor::new().ok();
            }
            slot.as_mut()?.decompress_to_buffer(data, dst).ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec as pvec;
    use proptest::prelude::*;

    use super::*;

    fn codecs() -> impl Iterator<Item = Codec> {
        Codec::PREFERENCE.into_iter().filter(|c| c.compresses())
    }

    /// A bomb (4 KiB out of a few bytes, into an announced 100), a piece that inflates to
    /// less than it announces, and bytes that are not the codec's are each refused.
    #[test]
    fn lying_pieces_are_refused_by_every_codec() {
        let raw = [7u8; 4096];
        for codec in codecs() {
            let mut packed = std::vec![0u8; 8192];
            let n = codec.compress_into(&raw, &mut packed).unwrap();
            assert!(n < 200, "{codec:?}: {n}");
            let packed = &packed[..n];
            let mut out = std::vec![0u8; 4096];
            assert_eq!(codec.decompress_into(packed, &mut out), Ok(()));
            assert_eq!(out, raw);
            let bad = Err(PeerMisbehaved::BadCompression);
            assert_eq!(
                codec.decompress_into(packed, &mut [0u8; 100]),
                bad,
                "{codec:?}"
            );
            assert_eq!(
                codec.decompress_into(packed, &mut [0u8; 5000]),
                bad,
                "{codec:?}"
            );
            assert_eq!(codec.decompress_into(b"\xff\xff\xff\xff", &mut out), bad);
            assert_eq!(codec.decompress_into(&[], &mut out), bad);
        }
    }

    /// Both codecs are built into the host build the tests run in (the tokio adapter
    /// enables them), so none of the tests above is vacuous there.
    #[test]
    #[cfg(all(feature = "lz4-compress", feature = "zstd"))]
    fn the_host_build_compresses_with_both() {
        assert_eq!(codecs().count(), 2);
    }

    proptest! {
        /// Whatever the bytes, a codec's output decompresses to them, and not into a
        /// buffer one byte short.
        #[test]
        fn every_codec_round_trips(raw in pvec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..5000)) {
            for codec in codecs() {
                let mut packed = std::vec![0u8; raw.len() * 2 + 64];
                let n = codec.compress_into(&raw, &mut packed).unwrap();
                let mut out = std::vec![0u8; raw.len()];
                prop_assert_eq!(codec.decompress_into(&packed[..n], &mut out), Ok(()));
                prop_assert_eq!(&out, &raw);
                if !raw.is_empty() {
                    let mut short = std::vec![0u8; raw.len() - 1];
                    prop_assert_eq!(
                        codec.decompress_into(&packed[..n], &mut short),
                        Err(PeerMisbehaved::BadCompression)
                    );
                }
            }
        }

        /// Random bytes given as compressed data (behind zstd's magic number too, so that
        /// its frame decoder reads them) never panic.
        #[test]
        fn garbage_never_panics(data in pvec(any::<u8>(), 0..600), len in 0usize..3000) {
            let mut zstd_like = std::vec![0x28, 0xb5, 0x2f, 0xfd];
            zstd_like.extend_from_slice(&data);
            for codec in [Codec::Lz4, Codec::Zstd] {
                for bytes in [&data, &zstd_like] {
                    let mut out = std::vec![0u8; len];
                    let _ = codec.decompress_into(bytes, &mut out);
                }
            }
        }
    }
}
