//! Range-based set reconciliation: what a peer holds that this node lacks, found at a cost
//! that follows the difference between the two stores, not their size.
//!
//! # Keys and runs
//! A chunk's key is `(origin, first_seq)`. The chunks of one origin tile its sequence
//! numbers: they never overlap, and only the origin places their boundaries, when it seals
//! them. So the chunks a store holds of one origin form *runs*, maximal series of chunks
//! each starting where the one before it ends, and a [`Run`] is the interval of sequence
//! numbers such a series covers. Between two stores, a sequence number inside a run of
//! each is inside the same chunk on both sides (a different chunk there would overlap
//! this one: a fork, which a store refuses), so a list of runs describes a set of chunks
//! exactly, at a few bytes per hole where a list of ids costs 32 bytes per chunk.
//!
//! # Summaries
//! A [`KeyRange`] of one origin holds the chunks whose `first_seq` lies in `lo..hi`. A
//! side describes what it holds there with a [`Summary`]: how many chunks, the `first_seq`
//! of the first and the `end_seq` of the last, and a [`Fingerprint`] of the chunks; and, if
//! they are few enough to send, its runs. [`Summarizer`] computes both from the chunks in
//! key order.
//!
//! # The walk
//! The pulling side drives it ([`Walk`]); the serving side answers each query from its
//! store and keeps nothing between queries.
//! 1. [`Query::Origins`]: the server summarises each of its origins' whole range, with the
//!    runs when they fit. For the common case, an append-only log that is behind at its
//!    tail, that is one run per origin, and the puller learns in this one exchange the
//!    exact sequence range it lacks.
//! 2. The puller compares each summary with its own of the same range ([`Walk::resolve`]):
//!    - the server holds nothing there, or both count and fingerprint are equal: done;
//!    - the puller holds nothing there: the whole range is wanted;
//!    - both sides' runs are known: the server's runs minus the puller's are wanted;
//!    - otherwise the range is split into parts of equal width and the parts are asked for
//!      with [`Query::Ranges`], which the server answers the same way.
//! 3. Each wanted range is for the caller to fetch whole: every chunk of the server whose
//!    `first_seq` lies in it, each checked against its own hash and against the range
//!    before it is stored.
//!
//! The walk ends: every split narrows a range of sequence numbers by the number of its
//! parts, and a range one sequence number wide holds at most one chunk on each side, which
//! is decided without runs. Its state is bounded: `Q` ranges waiting to be asked for (past
//! that a range is fetched whole rather than split: it costs bytes, never correctness), `E`
//! summaries of one reply, `K` runs each, and [`Walk::new`]'s `max_ranges` in all, past
//! which a peer that keeps the walk splitting gets [`ReconError::TooManyRanges`].
//!
//! # The fingerprint
//! Chunks are grouped in blocks of `2^BLOCK_BITS` sequence numbers (by `first_seq`). A
//! block's digest is a chain over its chunks in order: starting from 32 zero bytes, each
//! step is the BLAKE3 keyed hash (key derived from [`BLOCK_CONTEXT`]) of the digest so far
//! and the chunk's `first_seq`, `end_seq` (little-endian) and id. A range's fingerprint is a
//! chain of the same kind (key from [`RANGE_CONTEXT`]) that starts from the hash of the
//! origin and takes each block holding chunks of the range, its number and its digest; the
//! first 16 bytes of the last value are the fingerprint. It is a hash of the exact list of
//! chunks, not a sum or an XOR of their ids: two different lists with the same fingerprint
//! make a BLAKE3 collision, which nobody can find on purpose however they choose the chunks
//! (a sum of ids, as negentropy uses, can be matched by choosing a few thousand ids with
//! Wagner's k-list method). Each step is one call that keeps no streaming state, so a
//! summary in progress holds about 200 bytes, on a microcontroller too. The blocks let
//! a large store keep each whole block's summary ([`BlockSummary`]), so that a range's
//! fingerprint costs one step per block, plus the chunks of the blocks at its two edges,
//! rather than a scan.
//!
//! What a collision could do at worst is make one range look equal for one walk: the
//! puller would not ask for chunks there. It cannot make a store take a chunk: what is
//! fetched is checked by its own hash and against the range, as step 3 says.
//! Likewise equal runs with different chunks inside (a fork) end a range: the puller's
//! store would refuse the other side's chunks anyway.

use core::cmp::max;
use core::fmt;

use heapless::Vec;

use crate::chunk::Span;
use crate::event::NodeId;
use crate::hash::{self, ChunkHash};

mod answer;
pub mod codec;
mod walk;
pub use answer::Answer;
pub use codec::{EntryWriter, Query, RangeList};
pub use walk::{ReconError, Room, Walk, WalkStats};

/// Context of the hash of one block's chunks (see the module docs).
pub const BLOCK_CONTEXT: &str = "chunk-sync 2026-12 recon block";
/// Context of the hash that makes a range's fingerprint.
pub const RANGE_CONTEXT: &str = "chunk-sync 2026-12 recon range";
/// A block holds the chunks whose `first_seq` shares all bits above the lowest
/// `BLOCK_BITS`.
pub const BLOCK_BITS: u32 = 12;
/// The most parts a range is split into.
pub const SPLIT: usize = 16;

/// A run of chunks of one origin: the sequence numbers `lo..hi` they cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Run {
    /// The first sequence number covered.
    pub lo: u64,
    /// One past the last sequence number covered.
    pub hi: u64,
}

/// The chunks of `origin` whose `first_seq` lies in `lo..hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyRange {
    /// Whose log.
    pub origin: NodeId,
    /// The lowest `first_seq` in the range.
    pub lo: u64,
    /// One past the highest `first_seq` in the range.
    pub hi: u64,
}

impl KeyRange {
    /// Every chunk of `origin`.
    #[must_use]
    pub const fn whole(origin: NodeId) -> Self {
        Self {
            origin,
            lo: 0,
            hi: u64::MAX,
        }
    }

    /// Whether a chunk of `origin` starting at `first_seq` is in the range.
    #[must_use]
    pub const fn contains(&self, origin: NodeId, first_seq: u64) -> bool {
        self.origin.0 == origin.0 && self.lo <= first_seq && first_seq < self.hi
    }
}

/// Adds `range` to a list of ranges waiting to be announced or compared, merged into
/// one of the same origin it overlaps or touches; returns `false` if it had to be added
/// and the list is full (nothing changes then).
pub(crate) fn merge_range<const N: usize>(list: &mut Vec<KeyRange, N>, range: KeyRange) -> bool {
    let touching =
        |a: &&mut KeyRange| a.origin == range.origin && a.lo <= range.hi && range.lo <= a.hi;
    match list.iter_mut().find(touching) {
        Some(a) => {
            a.lo = a.lo.min(range.lo);
            a.hi = a.hi.max(range.hi);
            true
        }
        None => list.push(range).is_ok(),
    }
}

/// The first 16 bytes of the hash of a range's chunks (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Fingerprint(pub [u8; 16]);

/// What one side holds of a [`KeyRange`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Summary {
    /// How many chunks.
    pub count: u64,
    /// The first chunk's `first_seq` (0 when there are none).
    pub first: u64,
    /// The last chunk's `end_seq` (0 when there are none).
    pub end: u64,
    /// The hash of the chunks ([`Fingerprint::default`] when there are none).
    pub fingerprint: Fingerprint,
}

/// Why a [`Summarizer`] refused a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OutOfOrder;

impl fmt::Display for OutOfOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("chunks of a range must come in key order, inside it, without overlaps")
    }
}

impl core::error::Error for OutOfOrder {}

/// The key of a block's chain: BLAKE3's `derive_key` of [`BLOCK_CONTEXT`], written out (a
/// test checks it), so that neither a summary nor a store extending one derives it again.
const BLOCK_KEY: [u8; 32] = [
    0xa8, 0xaa, 0x17, 0xf9, 0x85, 0x54, 0xd7, 0xc6, 0xe4, 0x4b, 0x31, 0x66, 0x32, 0xaf, 0xd9, 0x7d,
    0x1b, 0x95, 0xd3, 0x1a, 0x34, 0xf7, 0x22, 0x64, 0xb3, 0xe1, 0x52, 0xc3, 0xbc, 0x89, 0x70, 0xe6,
];

/// The key of a range's chain: `derive_key` of [`RANGE_CONTEXT`], written out likewise.
const RANGE_KEY: [u8; 32] = [
    0x58, 0xc5, 0x84, 0xa1, 0x72, 0x68, 0xcd, 0xd7, 0xf1, 0x41, 0xc6, 0x6d, 0x79, 0xef, 0x5e, 0xfa,
    0x45, 0x2d, 0x65, 0x20, 0x0f, 0x29, 0x0b, 0x22, 0x96, 0x60, 0xd8, 0x4a, 0x57, 0x64, 0x87, 0xb1,
];

/// One step of a block's chain: the digest so far, then the chunk.
fn chunk_step(digest: &[u8; 32], first: u64, end: u64, id: &ChunkHash) -> [u8; 32] {
    let mut input = [0; 80];
    input[..32].copy_from_slice(digest);
    input[32..40].copy_from_slice(&first.to_le_bytes());
    input[40..48].copy_from_slice(&end.to_le_bytes());
    input[48..].copy_from_slice(id.as_bytes());
    hash::keyed_hash(&BLOCK_KEY, &input)
}

/// The start of a range's chain: the origin.
fn range_start(origin: NodeId) -> [u8; 32] {
    hash::keyed_hash(&RANGE_KEY, &origin.0.to_le_bytes())
}

/// One step of a range's chain: the value so far, then a block and its digest.
fn block_step(chain: &[u8; 32], block: u64, digest: &[u8; 32]) -> [u8; 32] {
    let mut input = [0; 72];
    input[..32].copy_from_slice(chain);
    input[32..40].copy_from_slice(&block.to_le_bytes());
    input[40..].copy_from_slice(digest);
    hash::keyed_hash(&RANGE_KEY, &input)
}

/// Counts chunks given in key order: how many, the hull, and the runs (as many as fit).
#[derive(Debug)]
struct Tally<'r> {
    count: u64,
    first: u64,
    end: u64,
    runs: &'r mut [Run],
    /// Runs found; more than `runs.len()` means they did not fit.
    run_count: usize,
}

impl<'r> Tally<'r> {
    const fn new(runs: &'r mut [Run]) -> Self {
        Self {
            count: 0,
            first: 0,
            end: 0,
            runs,
            run_count: 0,
        }
    }

    /// Adds `count` chunks covering the run `run`, which starts at or after the end of the
    /// previous one (a run of one chunk, or a block's run).
    fn add(&mut self, run: Run, count: u64) -> Result<(), OutOfOrder> {
        if run.hi <= run.lo || count == 0 || (self.count > 0 && run.lo < self.end) {
            return Err(OutOfOrder);
        }
        if self.count > 0 && run.lo == self.end {
            if let Some(last) = self.runs.get_mut(self.run_count - 1) {
                last.hi = run.hi;
            }
        } else {
            self.run_count += 1;
            if let Some(slot) = self.runs.get_mut(self.run_count - 1) {
                *slot = run;
            }
        }
        if self.count == 0 {
            self.first = run.lo;
        }
        self.count += count;
        self.end = run.hi;
        Ok(())
    }

    /// Counts runs as more than fit: what a block whose runs are not kept adds.
    fn overflow(&mut self) {
        self.run_count = self.run_count.max(self.runs.len() + 1);
    }

    fn runs(&self) -> Option<usize> {
        (self.run_count <= self.runs.len()).then_some(self.run_count)
    }
}

/// The block a chunk starting at `first_seq` belongs to.
#[must_use]
pub const fn block_of(first_seq: u64) -> u64 {
    first_seq >> BLOCK_BITS
}

/// The sequence numbers of `block`: `lo..hi` (`hi` saturates at `u64::MAX` for the last).
#[must_use]
pub const fn block_range(block: u64) -> (u64, u64) {
    let lo = block << BLOCK_BITS;
    (lo, lo.saturating_add(1 << BLOCK_BITS))
}

/// The most runs a [`BlockSummary`] keeps.
pub const BLOCK_RUNS: usize = 16;

/// The runs of a [`BlockSummary`].
pub type BlockRuns = Vec<Run, BLOCK_RUNS>;

/// What a store may keep of all the chunks of one block of an origin, so that the summary of
/// a range that covers the block whole needs neither its chunks nor their hashes
/// ([`Summarizer::push_block`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSummary {
    /// The block ([`block_of`]).
    pub block: u64,
    /// The chain of its chunks (see the module docs).
    pub digest: [u8; 32],
    /// How many chunks.
    pub count: u64,
    /// The first chunk's `first_seq`.
    pub first: u64,
    /// The last chunk's `end_seq`.
    pub end: u64,
    /// Its runs, or `None` if there are more than [`BLOCK_RUNS`].
    pub runs: Option<BlockRuns>,
}

impl BlockSummary {
    /// The summary of `block` from its chunks `(first_seq, end_seq, id)` in key order, or
    /// `None` if it has none.
    ///
    /// # Errors
    /// [`OutOfOrder`] for chunks out of order, overlapping, or outside the block.
    pub fn of(
        block: u64,
        chunks: impl IntoIterator<Item = (u64, u64, ChunkHash)>,
    ) -> Result<Option<Self>, OutOfOrder> {
        Self::extended(None, block, chunks)
    }

    /// The summary of `block` once `chunks` are added to what `kept` summarizes (`None`:
    /// the block held none), each after the one before it and after `kept`'s last chunk:
    /// what [`BlockSummary::of`] gives for all of them, at the cost of the new ones alone.
    /// A store that appends chunks keeps its summaries up to date this way.
    ///
    /// # Errors
    /// [`OutOfOrder`] for chunks out of order, overlapping, outside the block, or not
    /// after `kept`'s last one.
    pub fn extended(
        kept: Option<Self>,
        block: u64,
        chunks: impl IntoIterator<Item = (u64, u64, ChunkHash)>,
    ) -> Result<Option<Self>, OutOfOrder> {
        let mut runs = [Run { lo: 0, hi: 0 }; BLOCK_RUNS];
        let mut tally = Tally::new(&mut runs);
        let mut digest = [0; 32];
        if let Some(kept) = &kept {
            if kept.block != block || kept.count == 0 {
                return Err(OutOfOrder);
            }
            digest = kept.digest;
            (tally.count, tally.first, tally.end) = (kept.count, kept.first, kept.end);
            match &kept.runs {
                Some(runs) => {
                    tally.runs[..runs.len()].copy_from_slice(runs);
                    tally.run_count = runs.len();
                }
                None => tally.overflow(),
            }
        }
        for (first, end, id) in chunks {
            if block_of(first) != block {
                return Err(OutOfOrder);
            }
            tally.add(Run { lo: first, hi: end }, 1)?;
            digest = chunk_step(&digest, first, end, &id);
        }
        if tally.count == 0 {
            return Ok(None);
        }
        let kept = tally
            .runs()
            .and_then(|n| Vec::from_slice(&tally.runs[..n]).ok());
        Ok(Some(Self {
            block,
            digest,
            count: tally.count,
            first: tally.first,
            end: tally.end,
            runs: kept,
        }))
    }
}

/// Computes the [`Summary`] and the runs of a range from its chunks, given in key order
/// one by one ([`push`](Self::push)) or, for blocks the range covers whole, a block at a
/// time ([`push_block`](Self::push_block)).
#[derive(Debug)]
pub struct Summarizer<'r> {
    range: KeyRange,
    /// The range's chain so far.
    chain: [u8; 32],
    /// The block being added chunk by chunk, and its chain so far.
    block: Option<(u64, [u8; 32])>,
    tally: Tally<'r>,
}

impl<'r> Summarizer<'r> {
    /// Starts a summary of `range`, keeping up to `runs.len()` runs in `runs`.
    pub fn new(range: KeyRange, runs: &'r mut [Run]) -> Self {
        Self {
            range,
            chain: range_start(range.origin),
            block: None,
            tally: Tally::new(runs),
        }
    }

    /// Adds the next chunk of the range.
    ///
    /// # Errors
    /// [`OutOfOrder`] if it is outside the range, empty, or does not start at or after the
    /// end of the previous one.
    pub fn push(&mut self, first_seq: u64, end_seq: u64, id: &ChunkHash) -> Result<(), OutOfOrder> {
        if !self.range.contains(self.range.origin, first_seq) {
            return Err(OutOfOrder);
        }
        self.tally.add(
            Run {
                lo: first_seq,
                hi: end_seq,
            },
            1,
        )?;
        let block = block_of(first_seq);
        if self.block.as_ref().is_none_or(|(b, _)| *b != block) {
            self.close_block();
            self.block = Some((block, [0; 32]));
        }
        if let Some((_, digest)) = &mut self.block {
            *digest = chunk_step(digest, first_seq, end_seq, id);
        }
        Ok(())
    }

    /// Adds a whole block of chunks at once, as [`push`](Self::push) would add each of them.
    ///
    /// # Errors
    /// [`OutOfOrder`] unless the range covers the block whole and the block comes after
    /// everything added so far.
    pub fn push_block(&mut self, b: &BlockSummary) -> Result<(), OutOfOrder> {
        let (lo, hi) = block_range(b.block);
        let inside = self.range.lo <= lo && hi <= self.range.hi;
        let after = self.block.as_ref().is_none_or(|(open, _)| *open < b.block);
        let counted = b
            .runs
            .as_ref()
            .is_none_or(|r| !r.is_empty() && r.len() as u64 <= b.count);
        if !inside || !after || !counted || block_of(b.first) != b.block {
            return Err(OutOfOrder);
        }
        match &b.runs {
            Some(runs) => {
                let mut left = b.count;
                for (i, run) in runs.iter().enumerate() {
                    // The chunks are counted with the first run; each run holds at least one.
                    let n = if i == 0 {
                        left - (runs.len() as u64 - 1)
                    } else {
                        1
                    };
                    left -= n;
                    self.tally.add(*run, n)?;
                }
            }
            None => {
                let hull = Run {
                    lo: b.first,
                    hi: b.end,
                };
                // Runs are not kept: the hull stands for them, and they count as too many.
                self.tally.add(hull, b.count)?;
                self.tally.overflow();
            }
        }
        self.close_block();
        self.chain = block_step(&self.chain, b.block, &b.digest);
        Ok(())
    }

    /// Adds a page of chunks a store gave for `asked` (a part of the range, from
    /// [`ChunkStore::chunks_in`](crate::store::ChunkStore::chunks_in)), and returns the part
    /// to ask for next if the page was `full` (as many chunks as asked for): the loop of a
    /// store read page by page, whether it answers at once or later.
    ///
    /// # Errors
    /// [`OutOfOrder`] for chunks of another origin, or as [`push`](Self::push).
    pub fn push_page(
        &mut self,
        asked: &KeyRange,
        chunks: &[(Span, ChunkHash)],
        full: bool,
    ) -> Result<Option<KeyRange>, OutOfOrder> {
        for (span, id) in chunks {
            if span.origin != self.range.origin {
                return Err(OutOfOrder);
            }
            self.push(span.first_seq, span.end_seq, id)?;
        }
        Ok(match chunks.last() {
            Some((span, _)) if full => span
                .first_seq
                .checked_add(1)
                .map(|lo| KeyRange { lo, ..*asked }),
            _ => None,
        })
    }

    fn close_block(&mut self) {
        if let Some((b, digest)) = self.block.take() {
            self.chain = block_step(&self.chain, b, &digest);
        }
    }

    /// The summary, and how many runs were written to the buffer, or `None` if they did not
    /// fit in it.
    #[must_use]
    pub fn finish(mut self) -> (Summary, Option<usize>) {
        self.close_block();
        let mut summary = Summary {
            count: self.tally.count,
            first: self.tally.first,
            end: self.tally.end,
            fingerprint: Fingerprint::default(),
        };
        if summary.count > 0 {
            let mut fp = [0; 16];
            fp.copy_from_slice(&self.chain[..16]);
            summary.fingerprint = Fingerprint(fp);
        }
        (summary, self.tally.runs())
    }
}

/// Why [`summarize`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SummaryError<E> {
    /// The store failed.
    Store(E),
    /// The store gave chunks outside the range, out of order or overlapping.
    OutOfOrder,
}

impl<E: fmt::Display> fmt::Display for SummaryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => fmt::Display::fmt(e, f),
            Self::OutOfOrder => fmt::Display::fmt(&OutOfOrder, f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for SummaryError<E> {}

/// Chunks read per call of a store's page function by [`summarize`].
const PAGE: usize = 8;

/// Summarises `range` from a store, reading its chunks page by page with `page` (a store's
/// [`chunks_in`](crate::store::ChunkStore::chunks_in)), and writes its runs into `runs` if
/// they fit: the [`Summary`] and how many runs were written (`None`: more than fit).
///
/// # Errors
/// [`SummaryError`] if the store fails or breaks the order `chunks_in` promises.
pub fn summarize<E>(
    range: &KeyRange,
    runs: &mut [Run],
    page: impl FnMut(&KeyRange, &mut [(Span, ChunkHash)]) -> Result<usize, E>,
) -> Result<(Summary, Option<usize>), SummaryError<E>> {
    let mut s = Summarizer::new(*range, runs);
    push_pages(&mut s, *range, page)?;
    Ok(s.finish())
}

/// Adds the chunks of `range` to `s`, read page by page with `page`.
fn push_pages<E>(
    s: &mut Summarizer<'_>,
    range: KeyRange,
    mut page: impl FnMut(&KeyRange, &mut [(Span, ChunkHash)]) -> Result<usize, E>,
) -> Result<(), SummaryError<E>> {
    let mut buf = [(Span::default(), ChunkHash::default()); PAGE];
    let mut rest = Some(range);
    while let Some(next) = rest {
        let n = page(&next, &mut buf).map_err(SummaryError::Store)?;
        let chunks = buf.get(..n).ok_or(SummaryError::OutOfOrder)?;
        rest = s
            .push_page(&next, chunks, n == PAGE)
            .map_err(|OutOfOrder| SummaryError::OutOfOrder)?;
    }
    Ok(())
}

/// A store that keeps a [`BlockSummary`] of each block, for [`summarize_by_blocks`].
pub trait Blocks {
    /// What can go wrong in the store.
    type Error;

    /// The `first_seq` of the first chunk of `origin` that starts in `from..hi`, if any.
    fn next_start(&self, origin: NodeId, from: u64, hi: u64) -> Result<Option<u64>, Self::Error>;

    /// The summary of all the chunks of `block` of `origin` (`None` if it has none).
    fn block(&self, origin: NodeId, block: u64) -> Result<Option<BlockSummary>, Self::Error>;

    /// The chunks of `range`, as [`ChunkStore::chunks_in`](crate::store::ChunkStore::chunks_in)
    /// gives them.
    fn chunks_in(
        &self,
        range: &KeyRange,
        out: &mut [(Span, ChunkHash)],
    ) -> Result<usize, Self::Error>;
}

/// [`summarize`] for a store that keeps block summaries: the blocks `range` covers whole
/// cost one summary each, and only the chunks of the blocks at its two edges are read.
///
/// # Errors
/// As [`summarize`].
pub fn summarize_by_blocks<B: Blocks>(
    store: &B,
    range: &KeyRange,
    runs: &mut [Run],
) -> Result<(Summary, Option<usize>), SummaryError<B::Error>> {
    let mut s = Summarizer::new(*range, runs);
    let mut cursor = range.lo;
    while let Some(start) = store
        .next_start(range.origin, cursor, range.hi)
        .map_err(SummaryError::Store)?
    {
        if start < cursor || start >= range.hi {
            return Err(SummaryError::OutOfOrder);
        }
        let block = block_of(start);
        let (lo, hi) = block_range(block);
        if range.lo <= lo && hi <= range.hi {
            if let Some(b) = store
                .block(range.origin, block)
                .map_err(SummaryError::Store)?
            {
                s.push_block(&b)
                    .map_err(|OutOfOrder| SummaryError::OutOfOrder)?;
            }
        } else {
            let edge = KeyRange {
                origin: range.origin,
                lo: start,
                hi: hi.min(range.hi),
            };
            push_pages(&mut s, edge, |r, out| store.chunks_in(r, out))?;
        }
        if hi >= range.hi {
            break;
        }
        cursor = hi;
    }
    Ok(s.finish())
}

/// The sequence numbers of `theirs` that are in no run of `mine`, as runs in ascending
/// order: what one side covers and the other does not. Both inputs sorted and disjoint
/// (unsorted input gives a wrong answer, never a panic).
#[must_use]
pub const fn subtract<'a>(theirs: &'a [Run], mine: &'a [Run]) -> Subtract<'a> {
    Subtract {
        theirs,
        mine,
        from: None,
    }
}

/// The iterator of [`subtract`].
#[derive(Clone, Debug)]
pub struct Subtract<'a> {
    theirs: &'a [Run],
    mine: &'a [Run],
    /// Where the rest of the first run of `theirs` starts, once part of it was passed.
    from: Option<u64>,
}

impl Iterator for Subtract<'_> {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        loop {
            let their = *self.theirs.first()?;
            let from = self.from.map_or(their.lo, |f| max(f, their.lo));
            if from >= their.hi {
                self.theirs = &self.theirs[1..];
                self.from = None;
                continue;
            }
            // Runs of mine that end before `from` cannot cut anything that follows.
            while self.mine.first().is_some_and(|m| m.hi <= from) {
                self.mine = &self.mine[1..];
            }
            match self.mine.first() {
                Some(m) if m.lo < their.hi => {
                    self.from = Some(m.hi);
                    if m.lo > from {
                        return Some(Run { lo: from, hi: m.lo });
                    }
                }
                _ => {
                    self.theirs = &self.theirs[1..];
                    self.from = None;
                    return Some(Run {
                        lo: from,
                        hi: their.hi,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
