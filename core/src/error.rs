//! Leaf errors shared by several modules.
//!
//! Each operation has its own error enum (in its module); the types here are the pieces
//! they share. All of them implement [`core::error::Error`] and, with the `defmt` feature,
//! `defmt::Format`.

use core::fmt;

/// A fixed-capacity container is full. Nothing was changed; the rejected item, if any, is
/// handed back by the operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CapacityError {
    /// What is full, e.g. `"manifest"`.
    pub what: &'static str,
    /// Its capacity, in the container's own unit (items or bytes).
    pub capacity: usize,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is full (capacity {})", self.what, self.capacity)
    }
}

impl core::error::Error for CapacityError {}

/// A caller-supplied output buffer is too small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InsufficientSize {
    /// The number of bytes the buffer needs.
    pub required: usize,
}

impl fmt::Display for InsufficientSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "output buffer too small: {} bytes required",
            self.required
        )
    }
}

impl core::error::Error for InsufficientSize {}

/// Bytes that do not decode as what they claim to be.
///
/// The crate's decoders read postcard's encoding by hand and report its errors by cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    Truncated,
    /// The input is not a valid encoding (bad varint, unknown tag, invalid UTF-8, …).
    Malformed,
    /// A valid value was followed by this many unexpected bytes.
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The format version is not one this build understands.
    UnsupportedVersion {
        /// Version found in the input.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// A value decoded, but breaks a rule of the format (named here).
    Invalid(&'static str),
}

impl DecodeError {
    /// Maps a deserialisation error of postcard to the cause it stands for: the decoders
    /// are tested against postcard's.
    #[cfg(test)]
    pub(crate) fn from_postcard(err: postcard::Error) -> Self {
        match err {
            postcard::Error::DeserializeUnexpectedEnd => Self::Truncated,
            _ => Self::Malformed,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("input ends in the middle of a value"),
            Self::Malformed => f.write_str("input is not a valid encoding"),
            Self::TrailingBytes { extra } => write!(f, "{extra} unexpected bytes after the value"),
            Self::UnsupportedVersion { found, supported } => {
                write!(
                    f,
                    "format version {found} is not supported (this build reads {supported})"
                )
            }
            Self::Invalid(rule) => write!(f, "invalid value: {rule}"),
        }
    }
}

impl core::error::Error for DecodeError {}
