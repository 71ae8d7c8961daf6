//! The bytes of reconciliation messages: queries, and the summaries that answer them.
//!
//! Numbers are postcard's varints (LEB128). A list of ranges is, per range,
//! the gap from the previous range's `hi` (from 0 for the first) and the width. A summary
//! entry is its count; if non-zero, then `first` less the range's `lo`, `end` less `first`,
//! the 16-byte fingerprint, and the runs: 0 if they are not sent, else their number plus
//! one, then for each run but the first the gap from the previous run's `hi`, and for each
//! its width (the first run starts at `first`, the last ends at `end`).

use super::{Fingerprint, KeyRange, Run, Summary};
use crate::error::{DecodeError, InsufficientSize};
use crate::event::NodeId;
use crate::varint::{self, MAX_VARINT, Reader, Writer};

/// The most bytes of a summary entry without runs, origin included.
pub const MAX_ENTRY: usize = 4 * MAX_VARINT + 16 + 1;
/// The most bytes of one run in an entry.
pub const MAX_RUN: usize = 2 * MAX_VARINT;
/// The most bytes of one range in a [`RangeList`].
pub const MAX_RANGE: usize = 2 * MAX_VARINT;

/// A query of the pulling side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query<'a> {
    /// Summaries of the server's origins after `after` (from the first if `None`), at most
    /// `limit` of them, each of the origin's whole range.
    Origins {
        /// The last origin of the previous answer.
        after: Option<NodeId>,
        /// The most entries wanted.
        limit: u16,
        /// The most runs per entry wanted.
        max_runs: u16,
    },
    /// Summaries of these ranges of one origin, one entry each, in order.
    Ranges {
        /// Whose log.
        origin: NodeId,
        /// The most runs per entry wanted.
        max_runs: u16,
        /// The ranges, ascending and disjoint.
        ranges: RangeList<'a>,
    },
}

impl<'a> Query<'a> {
    /// Writes the query into `buf` (a tag byte, then its fields as varints, the ranges as a
    /// length and their bytes) and returns the bytes written.
    ///
    /// # Errors
    /// [`InsufficientSize`] if `buf` cannot hold it.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, 0);
        match self {
            Self::Origins {
                after,
                limit,
                max_runs,
            } => {
                w.bytes(&[0]);
                match after {
                    None => w.bytes(&[0]),
                    Some(a) => {
                        w.bytes(&[1]);
                        w.varint(a.0);
                    }
                }
                w.varint(u64::from(*limit));
                w.varint(u64::from(*max_runs));
            }
            Self::Ranges {
                origin,
                max_runs,
                ranges,
            } => {
                w.bytes(&[1]);
                w.varint(origin.0);
                w.varint(u64::from(*max_runs));
                ranges.write(&mut w);
            }
        }
        fits(&w).map(|()| w.len)
    }

    /// Reads a query written by [`write`](Self::write), borrowing its ranges.
    ///
    /// # Errors
    /// [`DecodeError`] for bytes that are not one, or are followed by more.
    pub fn read(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        let small = |v: u64| u16::try_from(v).map_err(|_| DecodeError::Malformed);
        let query = match r.byte()? {
            0 => {
                let after = match r.byte()? {
                    0 => None,
                    1 => Some(NodeId(r.u64()?)),
                    _ => return Err(DecodeError::Malformed),
                };
                Self::Origins {
                    after,
                    limit: small(r.u64()?)?,
                    max_runs: small(r.u64()?)?,
                }
            }
            1 => {
                let origin = NodeId(r.u64()?);
                let max_runs = small(r.u64()?)?;
                let len = usize::try_from(r.u64()?).map_err(|_| DecodeError::Malformed)?;
                Self::Ranges {
                    origin,
                    max_runs,
                    ranges: RangeList(RangeRepr::Raw(r.take(len)?)),
                }
            }
            _ => return Err(DecodeError::Malformed),
        };
        if !r.0.is_empty() {
            return Err(DecodeError::TrailingBytes { extra: r.0.len() });
        }
        Ok(query)
    }
}

/// Ranges of one origin inside a [`Query::Ranges`]: pairs `(lo, hi)` to send, or the bytes
/// received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeList<'a>(RangeRepr<'a>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeRepr<'a> {
    Pairs(&'a [(u64, u64)]),
    Raw(&'a [u8]),
}

impl<'a> RangeList<'a> {
    /// A list of these ranges, ascending and disjoint (for sending).
    #[must_use]
    pub const fn new(pairs: &'a [(u64, u64)]) -> Self {
        Self(RangeRepr::Pairs(pairs))
    }

    fn write(&self, w: &mut Writer<'_>) {
        match self.0 {
            RangeRepr::Raw(raw) => w.byte_string(raw),
            RangeRepr::Pairs(pairs) => {
                // Their length first, counted by a writer that keeps nothing.
                let mut counted = Writer::new(&mut [], 0);
                write_pairs(pairs, &mut counted);
                w.varint(counted.len as u64);
                write_pairs(pairs, w);
            }
        }
    }

    /// The ranges, each checked to be non-empty and to start at or after the end of the
    /// previous one.
    pub fn iter(&self) -> impl Iterator<Item = Result<(u64, u64), DecodeError>> + 'a {
        let (mut raw, mut pairs): (Reader<'a>, &'a [(u64, u64)]) = match self.0 {
            RangeRepr::Raw(raw) => (Reader(raw), &[]),
            RangeRepr::Pairs(pairs) => (Reader(&[]), pairs),
        };
        let mut prev: u64 = 0;
        core::iter::from_fn(move || {
            if let Some((first, rest)) = pairs.split_first() {
                pairs = rest;
                return Some(Ok(*first));
            }
            if raw.0.is_empty() {
                return None;
            }
            let item = (|| {
                let lo = prev.checked_add(raw.u64()?).ok_or(BAD_RANGE)?;
                let width = raw.u64()?;
                let hi = lo.checked_add(width).ok_or(BAD_RANGE)?;
                if width == 0 {
                    return Err(BAD_RANGE);
                }
                prev = hi;
                Ok((lo, hi))
            })();
            if item.is_err() {
                raw.0 = &[];
            }
            Some(item)
        })
    }
}

/// Each pair as the gap from the previous pair's end (from 0 for the first) and the width.
fn write_pairs(pairs: &[(u64, u64)], w: &mut Writer<'_>) {
    let mut prev = 0;
    for &(lo, hi) in pairs {
        w.varint(lo.wrapping_sub(prev));
        w.varint(hi.wrapping_sub(lo));
        prev = hi;
    }
}

/// `Ok` if everything `w` wrote fits its buffer, else the size it needs.
const fn fits(w: &Writer<'_>) -> Result<(), InsufficientSize> {
    if w.fits() {
        Ok(())
    } else {
        Err(InsufficientSize { required: w.len })
    }
}

/// Bytes of the varint of `v`.
#[must_use]
pub const fn varint_len(v: u64) -> usize {
    varint::varint_len(v)
}

const BAD_RANGE: DecodeError = DecodeError::Invalid("a range is empty or past the largest key");

/// Writes summary entries into a frame's buffer, keeping room for the entries still to
/// come: runs are sent only where they fit.
#[derive(Debug)]
pub struct EntryWriter<'b> {
    w: Writer<'b>,
    /// Entries still to be written after the current one.
    remaining: usize,
}

impl<'b> EntryWriter<'b> {
    /// A writer of `entries` entries into `buf`, which must hold [`MAX_ENTRY`] bytes for
    /// each.
    ///
    /// # Errors
    /// [`InsufficientSize`] if it cannot.
    pub fn new(buf: &'b mut [u8], entries: usize) -> Result<Self, InsufficientSize> {
        Self::resume(buf, 0, entries)
    }

    /// A writer that goes on after `written` bytes already in `buf`, with `remaining`
    /// entries still to write: for an answer built across several calls.
    ///
    /// # Errors
    /// [`InsufficientSize`] if `buf` cannot hold what is written and what remains.
    pub fn resume(
        buf: &'b mut [u8],
        written: usize,
        remaining: usize,
    ) -> Result<Self, InsufficientSize> {
        let required = written + remaining * MAX_ENTRY;
        if buf.len() < required {
            return Err(InsufficientSize { required });
        }
        Ok(Self {
            w: Writer::new(buf, written),
            remaining,
        })
    }

    /// Writes the next entry: what this side holds of `range` (the whole origin's range for
    /// an answer to [`Query::Origins`], whose entries also carry the origin). `runs` are
    /// written if given and if they fit beside the room kept for the entries after this one.
    ///
    /// # Panics
    /// Never; writing more entries than announced is refused with [`InsufficientSize`].
    pub fn write(
        &mut self,
        origin: Option<NodeId>,
        range: &KeyRange,
        summary: &Summary,
        runs: Option<&[Run]>,
    ) -> Result<(), InsufficientSize> {
        self.remaining = self
            .remaining
            .checked_sub(1)
            .ok_or(InsufficientSize { required: 0 })?;
        if let Some(origin) = origin {
            self.w.varint(origin.0);
        }
        self.w.varint(summary.count);
        if summary.count > 0 {
            self.w.varint(summary.first.wrapping_sub(range.lo));
            self.w.varint(summary.end.wrapping_sub(summary.first));
            self.w.bytes(&summary.fingerprint.0);
            let keep = self.remaining * MAX_ENTRY;
            let fits = runs.filter(|runs| {
                let need = MAX_VARINT + runs.len() * MAX_RUN;
                self.w.room() >= keep + need
            });
            match fits {
                None => self.w.varint(0),
                Some(runs) => {
                    self.w.varint(runs.len() as u64 + 1);
                    let mut prev = None;
                    for run in runs {
                        if let Some(p) = prev {
                            self.w.varint(run.lo.wrapping_sub(p));
                        }
                        self.w.varint(run.hi.wrapping_sub(run.lo));
                        prev = Some(run.hi);
                    }
                }
            }
        }
        fits(&self.w)
    }

    /// The bytes written.
    #[must_use]
    pub fn finish(self) -> usize {
        self.w.len
    }
}

/// One entry read by [`decode_entry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The origin: the entry's own in an answer to [`Query::Origins`], else the range's.
    pub origin: NodeId,
    /// What the server holds.
    pub summary: Summary,
    /// How many runs were written to the caller's buffer (`None`: none were sent).
    pub runs: Option<usize>,
    /// The bytes after the entry.
    pub rest: &'a [u8],
}

/// Reads the entry at the front of `bytes`, for `range` (whose `origin` is replaced by the
/// entry's own when `with_origin`), writing its runs into `runs`.
///
/// # Errors
/// [`DecodeError`] for bytes that are not an entry, or runs that do not fit `runs` or do not
/// fit the summary (see [`Walk`](super::Walk) for the checks against the range).
pub fn decode_entry<'a>(
    bytes: &'a [u8],
    range: &KeyRange,
    with_origin: bool,
    runs: &mut [Run],
) -> Result<Entry<'a>, DecodeError> {
    const BAD: DecodeError = DecodeError::Invalid("a summary's numbers do not add up");
    let mut r = Reader(bytes);
    let origin = if with_origin {
        NodeId(r.u64()?)
    } else {
        range.origin
    };
    let count = r.u64()?;
    if count == 0 {
        return Ok(Entry {
            origin,
            summary: Summary::default(),
            runs: None,
            rest: r.0,
        });
    }
    let first = range.lo.checked_add(r.u64()?).ok_or(BAD)?;
    let end = first.checked_add(r.u64()?).ok_or(BAD)?;
    let mut fp = [0; 16];
    fp.copy_from_slice(r.take(16)?);
    let summary = Summary {
        count,
        first,
        end,
        fingerprint: Fingerprint(fp),
    };
    let sent = r.u64()?;
    if sent == 0 {
        return Ok(Entry {
            origin,
            summary,
            runs: None,
            rest: r.0,
        });
    }
    let n = usize::try_from(sent - 1).map_err(|_| BAD)?;
    let out = runs
        .get_mut(..n)
        .ok_or(DecodeError::Invalid("more runs than asked for"))?;
    let mut at = first;
    for (i, run) in out.iter_mut().enumerate() {
        if i > 0 {
            at = at.checked_add(r.u64()?).ok_or(BAD)?;
        }
        let hi = at.checked_add(r.u64()?).ok_or(BAD)?;
        *run = Run { lo: at, hi };
        at = hi;
    }
    Ok(Entry {
        origin,
        summary,
        runs: Some(n),
        rest: r.0,
    })
}
