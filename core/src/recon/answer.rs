//! The serving side of a reconciliation: answering one query from the store.

use heapless::Vec;

use super::codec::{EntryWriter, Query};
use super::{KeyRange, ReconError, Run, Summary};
use crate::error::InsufficientSize;
use crate::event::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Asked<const E: usize> {
    Origins {
        after: Option<NodeId>,
        limit: usize,
        /// The origins listed by the store, and whether none follow them.
        listed: Option<(Vec<NodeId, E>, bool)>,
    },
    Ranges {
        origin: NodeId,
        ranges: Vec<(u64, u64), E>,
    },
}

/// The answer to one [`Query`], built entry by entry from the store's summaries into a
/// buffer the caller keeps: a sans-IO state machine that never calls a store.
///
/// `E` is the most entries of one answer.
///
/// # Calling order
/// 1. [`Answer::new`] with the query;
/// 2. for a [`Query::Origins`], [`origins_to_list`](Self::origins_to_list), then
///    [`origins_listed`](Self::origins_listed) with what the store lists;
/// 3. while [`next_range`](Self::next_range) names a range, summarise it (with up to its
///    `max_runs` runs) and give the summary to [`summarized`](Self::summarized);
/// 4. [`finish`](Self::finish): the bytes of the entries, and whether the answer ends the
///    server's origins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<const E: usize> {
    asked: Asked<E>,
    max_runs: usize,
    /// Entries written.
    done: usize,
    /// Bytes written.
    written: usize,
}

impl<const E: usize> Answer<E> {
    /// Starts the answer to `query`, whose answer may hold `room` entries (what fits the
    /// puller's frames and the caller's buffer), with at most `runs_room` runs each (what
    /// the caller's buffer of runs holds; the query may ask for fewer).
    ///
    /// # Errors
    /// [`ReconError::BadQuery`] for ranges that are malformed, out of order, or more than
    /// fit.
    pub fn new(query: &Query<'_>, room: usize, runs_room: usize) -> Result<Self, ReconError> {
        let room = room.min(E);
        let (asked, max_runs) = match query {
            Query::Origins {
                after,
                limit,
                max_runs,
            } => {
                let limit = usize::from(*limit).min(room);
                if limit == 0 {
                    return Err(ReconError::BadQuery("no room for any origin"));
                }
                let asked = Asked::Origins {
                    after: *after,
                    limit,
                    listed: None,
                };
                (asked, *max_runs)
            }
            Query::Ranges {
                origin,
                max_runs,
                ranges,
            } => {
                let mut list = Vec::new();
                for range in ranges.iter() {
                    let range = range.map_err(|_| ReconError::BadQuery("malformed ranges"))?;
                    if list.len() == room || list.push(range).is_err() {
                        return Err(ReconError::BadQuery("more ranges than an answer holds"));
                    }
                }
                if list.is_empty() {
                    return Err(ReconError::BadQuery("no ranges"));
                }
                let asked = Asked::Ranges {
                    origin: *origin,
                    ranges: list,
                };
                (asked, *max_runs)
            }
        };
        Ok(Self {
            asked,
            max_runs: usize::from(max_runs).min(runs_room),
            done: 0,
            written: 0,
        })
    }

    /// For a [`Query::Origins`] whose origins are not listed yet: list the store's origins
    /// after this one, at most this many.
    #[must_use]
    pub fn origins_to_list(&self) -> Option<(Option<NodeId>, usize)> {
        match &self.asked {
            Asked::Origins {
                after,
                limit,
                listed: None,
            } => Some((*after, *limit)),
            _ => None,
        }
    }

    /// What the store listed for [`origins_to_list`](Self::origins_to_list), and whether
    /// none follow. Returns `false`, and changes nothing, if no listing was due or the list
    /// is longer than asked for.
    pub fn origins_listed(&mut self, origins: &[NodeId], last: bool) -> bool {
        let Asked::Origins {
            limit,
            listed: listed @ None,
            ..
        } = &mut self.asked
        else {
            return false;
        };
        match Vec::from_slice(origins) {
            Ok(list) if origins.len() <= *limit => {
                *listed = Some((list, last));
                true
            }
            _ => false,
        }
    }

    /// For a [`Query::Origins`] whose origins are not listed yet: list the store's origins
    /// after `past` instead, none of those up to it being shown (a later cursor only).
    pub fn list_after(&mut self, past: NodeId) {
        if let Asked::Origins {
            after,
            listed: None,
            ..
        } = &mut self.asked
            && after.is_none_or(|a| past > a)
        {
            *after = Some(past);
        }
    }

    /// The range whose summary [`summarized`](Self::summarized) needs next, and the most
    /// runs wanted with it.
    #[must_use]
    pub fn next_range(&self) -> Option<(KeyRange, usize)> {
        let range = match &self.asked {
            Asked::Origins {
                listed: Some((list, _)),
                ..
            } => KeyRange::whole(*list.get(self.done)?),
            Asked::Origins { listed: None, .. } => return None,
            Asked::Ranges { origin, ranges } => {
                let &(lo, hi) = ranges.get(self.done)?;
                KeyRange {
                    origin: *origin,
                    lo,
                    hi,
                }
            }
        };
        Some((range, self.max_runs))
    }

    /// Writes the entry of [`next_range`](Self::next_range) into `buf` (the same buffer on
    /// every call, of [`MAX_ENTRY`](super::codec::MAX_ENTRY) bytes per entry at least).
    ///
    /// # Errors
    /// [`InsufficientSize`] if `buf` is too small, or no range awaits a summary.
    pub fn summarized(
        &mut self,
        buf: &mut [u8],
        summary: &Summary,
        runs: Option<&[Run]>,
    ) -> Result<(), InsufficientSize> {
        let (range, _) = self.next_range().ok_or(InsufficientSize { required: 0 })?;
        // Entries of an answer to `Origins` carry their origin.
        let origin = matches!(self.asked, Asked::Origins { .. }).then_some(range.origin);
        let mut w = EntryWriter::resume(buf, self.written, self.entries() - self.done)?;
        w.write(
            origin,
            &range,
            summary,
            runs.filter(|r| r.len() <= self.max_runs),
        )?;
        self.written = w.finish();
        self.done += 1;
        Ok(())
    }

    /// The entries the answer holds: one per range, or per origin listed.
    fn entries(&self) -> usize {
        match &self.asked {
            Asked::Origins {
                listed: Some((list, _)),
                ..
            } => list.len(),
            Asked::Origins { listed: None, .. } => 0,
            Asked::Ranges { ranges, .. } => ranges.len(),
        }
    }

    /// Once every entry is written: the bytes of `buf` that hold them, and whether the
    /// answer ends the server's origins (always `true` for ranges).
    #[must_use]
    pub fn finish(&self) -> Option<(usize, bool)> {
        let last = match &self.asked {
            Asked::Origins {
                listed: Some((_, last)),
                ..
            } => *last,
            Asked::Origins { listed: None, .. } => return None,
            Asked::Ranges { .. } => true,
        };
        (self.done == self.entries()).then_some((self.written, last))
    }
}
