//! Log macros routed to `log`, `defmt` or nothing.
//!
//! The rest of the crate logs only through these macros, never through `defmt::`, `log::`
//! or `println!` directly, so that logging costs nothing when both features are off.
//! Features are additive: with both on (`--all-features` on a host), `log` wins, since a
//! host build has no `defmt` logger to link.
#![allow(unused_macros)]

macro_rules! warn {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(all(feature = "defmt", not(feature = "log")))]
        ::defmt::warn!($s $(, $x)*);
        #[cfg(feature = "log")]
        ::log::warn!($s $(, $x)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        let _ = ($( & $x ),*);
    }};
}

macro_rules! debug {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(all(feature = "defmt", not(feature = "log")))]
        ::defmt::debug!($s $(, $x)*);
        #[cfg(feature = "log")]
        ::log::debug!($s $(, $x)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        let _ = ($( & $x ),*);
    }};
}
