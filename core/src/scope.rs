//! Which origins a right covers: [`Scope`], and the fixed-capacity [`OriginSet`] it names
//! origins with.
//!
//! A session applies two scopes to its peer (a secure link's `Access`, with the
//! `secure` feature): the origins it shows and serves, and the origins it
//! takes. An origin outside the first is, to the peer, an origin this store does not
//! hold: it is in no list of origins, its ranges summarise as empty, and a request for
//! its chunks (by range or by hash) finds nothing. An origin outside the second is one
//! this node neither asks about nor stores.

use core::fmt;

use crate::error::CapacityError;
use crate::event::NodeId;

/// The most origins an [`OriginSet`] names: 8. A peer that must reach more origins one
/// by one than that is given [`Scope::All`].
pub const MAX_SCOPE_ORIGINS: usize = 8;

/// A set of up to [`MAX_SCOPE_ORIGINS`] origins, kept sorted (lookups are a binary
/// search; no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OriginSet {
    ids: [NodeId; MAX_SCOPE_ORIGINS],
    len: u8,
}

impl OriginSet {
    /// No origin.
    pub const EMPTY: Self = Self {
        ids: [NodeId(0); MAX_SCOPE_ORIGINS],
        len: 0,
    };

    /// The set of `origins` (repeats count once).
    ///
    /// # Errors
    /// [`CapacityError`] if they are more than [`MAX_SCOPE_ORIGINS`] different origins.
    pub fn from_slice(origins: &[NodeId]) -> Result<Self, CapacityError> {
        let mut set = Self::EMPTY;
        for origin in origins {
            set.insert(*origin)?;
        }
        Ok(set)
    }

    /// Adds `origin`; returns whether it was new.
    ///
    /// # Errors
    /// [`CapacityError`] if the set is full and lacks `origin`; the set is unchanged.
    pub fn insert(&mut self, origin: NodeId) -> Result<bool, CapacityError> {
        let Err(at) = self.as_slice().binary_search(&origin) else {
            return Ok(false);
        };
        let len = self.len();
        if len == MAX_SCOPE_ORIGINS {
            return Err(CapacityError {
                what: "origin set",
                capacity: MAX_SCOPE_ORIGINS,
            });
        }
        self.ids.copy_within(at..len, at + 1);
        self.ids[at] = origin;
        self.len += 1;
        Ok(true)
    }

    /// Whether the set names `origin`.
    #[must_use]
    pub fn contains(&self, origin: NodeId) -> bool {
        self.as_slice().binary_search(&origin).is_ok()
    }

    /// The origins, ascending.
    #[must_use]
    pub fn as_slice(&self) -> &[NodeId] {
        &self.ids[..self.len()]
    }

    /// How many origins the set names.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the set names none.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for OriginSet {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl fmt::Debug for OriginSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.as_slice()).finish()
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for OriginSet {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[?]}", self.as_slice());
    }
}

/// The origins a right covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Scope {
    /// No origin.
    Nothing,
    /// Every origin.
    All,
    /// These origins only (an empty set is [`Nothing`](Self::Nothing)).
    Only(OriginSet),
}

impl Scope {
    /// Whether the right covers `origin`.
    #[must_use]
    pub fn covers(&self, origin: NodeId) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Only(set) => set.contains(origin),
        }
    }

    /// Whether the right covers no origin at all.
    #[must_use]
    pub const fn is_nothing(&self) -> bool {
        match self {
            Self::Nothing => true,
            Self::All => false,
            Self::Only(set) => set.is_empty(),
        }
    }

    /// Whether the right covers every origin.
    #[must_use]
    pub const fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }

    /// For a scope of [`Only`](Self::Only) some origins: the first of them after `after`
    /// (from the lowest if `None`), or `None` if none follows. `None` for the other scopes.
    #[must_use]
    pub(crate) fn first_only_after(&self, after: Option<NodeId>) -> Option<NodeId> {
        match self {
            Self::Only(set) => set
                .as_slice()
                .iter()
                .copied()
                .find(|o| after.is_none_or(|a| *o > a)),
            Self::Nothing | Self::All => None,
        }
    }

    /// The scope of `origins` only.
    ///
    /// # Errors
    /// [`CapacityError`] for more than [`MAX_SCOPE_ORIGINS`] different origins.
    pub fn only(origins: &[NodeId]) -> Result<Self, CapacityError> {
        OriginSet::from_slice(origins).map(Self::Only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_set_refuses_a_new_origin_and_keeps_its_own() {
        let ids: alloc::vec::Vec<NodeId> = (0..MAX_SCOPE_ORIGINS as u64).map(NodeId).collect();
        let mut set = OriginSet::from_slice(&ids).unwrap();
        assert_eq!(set.insert(NodeId(3)), Ok(false));
        let full = set.insert(NodeId(99)).unwrap_err();
        assert_eq!(full.capacity, MAX_SCOPE_ORIGINS);
        assert_eq!(set.as_slice(), &ids[..]);
        assert!(Scope::only(&[NodeId(1); 40]).is_ok());
    }

    #[test]
    fn a_scope_takes_the_room_the_docs_say() {
        // README, Capacities: 80 bytes per scope, two in each session.
        assert!(size_of::<Scope>() <= 80);
    }

    #[test]
    fn nothing_and_all_cover_as_named() {
        assert!(!Scope::Nothing.covers(NodeId(1)));
        assert!(Scope::All.covers(NodeId(1)));
        assert!(Scope::Only(OriginSet::EMPTY).is_nothing());
    }

    proptest! {
        #[test]
        fn a_set_covers_exactly_what_was_put_in(
            ids in proptest::collection::vec(0u64..40, 0..MAX_SCOPE_ORIGINS),
            probe in 0u64..40,
        ) {
            let origins: alloc::vec::Vec<NodeId> = ids.iter().copied().map(NodeId).collect();
            let scope = Scope::only(&origins).unwrap();
            prop_assert_eq!(scope.covers(NodeId(probe)), ids.contains(&probe));
            if let Scope::Only(set) = scope {
                prop_assert!(set.as_slice().windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
