//! Work spread over the machine's cores: signing a node's own chunks in bulk, and (for the
//! sessions' writes) checking received chunks' signatures. An Ed25519 signature or check
//! costs tens of times more than sealing or receiving a small chunk, so a log of small
//! chunks is sealed in order, unsigned, and its chunks signed afterwards on every core
//! ([`sign_all`]), with the bytes a signing chunker would have sealed
//! ([`chunk::sign_sealed`](chunk_sync_core::chunk::sign_sealed)).

use std::sync::atomic::{AtomicUsize, Ordering};

use chunk_sync_core::chunk::{SIGNATURE_LEN, Sealed, sign_sealed};
use chunk_sync_core::secure::{Keypair, SealCheck};
use chunk_sync_core::session::FailReason;
use chunk_sync_core::{ChunkError, HashMismatch};

use crate::store::VerifiedChunk;

/// Work lists with fewer heavy items than this run on the calling thread.
const PARALLEL_FROM: usize = 64;

/// The most threads one list is spread over (with the caller's).
const MAX_THREADS: usize = 16;

/// A chunk on its way to a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sealing {
    /// Ready to store.
    Done(VerifiedChunk),
    /// A chunk of the signing key's own origin, sealed unsigned by a chunker with the
    /// signing chunker's buffer length and policy, with room after it for its signature:
    /// [`sign_all`] signs it.
    Unsigned(Vec<u8>),
}

impl Sealing {
    /// `sealed`, a chunk of the signing key's own origin sealed unsigned, to be signed.
    #[must_use]
    pub fn unsigned(sealed: &Sealed<'_>) -> Self {
        // Made on the thread that seals, so that the signing threads allocate nothing.
        let mut bytes = Vec::with_capacity(sealed.bytes.len() + SIGNATURE_LEN);
        bytes.extend_from_slice(sealed.bytes);
        Self::Unsigned(bytes)
    }

    /// The chunk's length once signed.
    #[must_use]
    pub fn stored_len(&self) -> usize {
        match self {
            Self::Done(chunk) => chunk.bytes().len(),
            Self::Unsigned(bytes) => bytes.len() + SIGNATURE_LEN,
        }
    }
}

/// The chunks of `batch`, in order, each unsigned one signed by `keys`: on as many threads
/// as the machine has cores (up to 16) when there are many, less those other lists in the
/// process are using.
///
/// # Errors
/// The first chunk that cannot be signed: [`ChunkError::NotOriginKey`] if it is not of
/// `keys`'s origin, or [`ChunkError::Decode`] if it is no chunk; and
/// [`ChunkError::NotOriginKey`] for an unsigned chunk without `keys`.
pub fn sign_all(
    batch: Vec<Sealing>,
    keys: Option<&Keypair>,
) -> Result<Vec<VerifiedChunk>, ChunkError> {
    let sign = |sealing: Sealing| match sealing {
        Sealing::Done(chunk) => Ok(chunk),
        Sealing::Unsigned(mut bytes) => {
            let len = bytes.len();
            let origin =
                chunk_sync_core::Span::of(&bytes).map_or_else(Default::default, |s| s.origin);
            let keys = keys.ok_or(ChunkError::NotOriginKey { origin })?;
            bytes.resize(len + SIGNATURE_LEN, 0);
            let (id, _) = sign_sealed(&mut bytes, len, keys)?;
            VerifiedChunk::new(id, bytes).map_err(|e: HashMismatch| ChunkError::HashMismatch(e))
        }
    };
    in_order(batch, |s| matches!(s, Sealing::Unsigned(_)), sign)
        .into_iter()
        .collect()
}

/// The verdict of each of `checks`, in order: [`SealCheck::check_all`] on as many threads as
/// the machine has cores (up to 16) when there are many, less those other lists in the
/// process are using. For a node that checks the signatures of chunks it holds (the
/// CLI's `verify --signatures`); a session checks those it receives this way itself.
#[must_use]
pub fn check_seals(checks: Vec<SealCheck>) -> Vec<Result<(), FailReason>> {
    in_parts(
        checks,
        |_| true,
        |part| SealCheck::check_all(&part.iter().collect::<Vec<_>>()),
    )
}

/// `f` of each item, in order: the items cut into consecutive parts with a thread's share
/// of the `heavy` ones each, on scoped threads, when there are many heavy items and more
/// than one core. A panic in `f` is raised again here.
pub(crate) fn in_order<T: Send, U: Send>(
    items: Vec<T>,
    heavy: impl Fn(&T) -> bool,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    in_parts(items, heavy, |part| part.into_iter().map(&f).collect())
}

/// `f` of consecutive parts of `items`, its results end to end: one part, on the calling
/// thread, unless there are many `heavy` items and helper threads are free (one a core
/// besides the caller, shared by every list in the process, [`Helpers`]); then a part
/// for the caller and for each helper, with its share of the heavy ones, on scoped
/// threads. `f` gives as many results for a part as it has items, or more or fewer as it
/// sees fit. A panic in `f` is raised again here.
pub(crate) fn in_parts<T: Send, U: Send>(
    items: Vec<T>,
    heavy: impl Fn(&T) -> bool,
    f: impl Fn(Vec<T>) -> Vec<U> + Sync,
) -> Vec<U> {
    let weight = items.iter().filter(|item| heavy(item)).count();
    if weight < PARALLEL_FROM {
        return f(items);
    }
    let helpers = Helpers::borrow();
    let threads = 1 + helpers.count;
    if threads == 1 {
        return f(items);
    }
    let share = weight.div_ceil(threads);
    let mut parts: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut part = Vec::new();
    let mut in_part = 0;
    for item in items {
        // The last part takes what is left, light items included.
        if in_part == share && parts.len() + 1 < threads {
            parts.push(std::mem::take(&mut part));
            in_part = 0;
        }
        in_part += usize::from(heavy(&item));
        part.push(item);
    }
    parts.push(part);
    let f = &f;
    let done = std::thread::scope(|scope| {
        let mut parts = parts.into_iter();
        // The first part is this thread's; the others', the helpers'.
        let first = parts.next().unwrap_or_default();
        let helping: Vec<_> = parts.map(|part| scope.spawn(move || f(part))).collect();
        let mut done = f(first);
        for helper in helping {
            done.extend(
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        done
    });
    drop(helpers);
    done
}

/// Helper threads lent out now, over every list being worked through in the process: all
/// sessions' writes and appends together use at most one helper a core besides their own
/// threads, however many run at once.
static LENT: AtomicUsize = AtomicUsize::new(0);

/// Helper threads borrowed for one list, given back when dropped.
struct Helpers {
    count: usize,
}

impl Helpers {
    /// As many helpers as are free, up to one fewer than the machine's cores (the
    /// borrowing thread is one) and [`MAX_THREADS`] in all.
    fn borrow() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
        let most = cores - 1;
        let mut lent = LENT.load(Ordering::Relaxed);
        loop {
            let count = most.saturating_sub(lent);
            if count == 0 {
                return Self { count };
            }
            match LENT.compare_exchange_weak(
                lent,
                lent + count,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Self { count },
                Err(now) => lent = now,
            }
        }
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        LENT.fetch_sub(self.count, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use chunk_sync_core::chunk::Push;
    use chunk_sync_core::{Chunker, Event, Privacy};
    use proptest::prelude::*;

    use super::*;

    /// The chunks of `n` one-event chunks of `keys`'s log, sealed signing (`sign`) or not.
    fn sealed(keys: &Keypair, n: u64, sign: bool) -> Vec<Sealing> {
        let mut chunker = Chunker::new(keys.node_id(), 1, 0, vec![0u8; 4096]).unwrap();
        if sign {
            chunker.sign_with(keys).unwrap();
        }
        let mut out = Vec::new();
        for seq in 0..n {
            let event = Event {
                origin: keys.node_id(),
                seq,
                timestamp: seq,
                kind: "k",
                privacy: Privacy::Public,
                payload: &seq.to_le_bytes(),
            };
            assert_eq!(chunker.push(&event), Ok(Push::Added));
            let s = chunker.seal().unwrap();
            out.push(if sign {
                Sealing::Done(VerifiedChunk::from(s.verified()))
            } else {
                Sealing::unsigned(&s)
            });
        }
        out
    }

    /// Signed afterwards on several threads, interleaved with chunks that need nothing,
    /// the chunks are those a signing chunker seals, in the same order.
    #[test]
    fn signing_afterwards_gives_what_signing_as_sealed_gives() {
        let keys = Keypair::from_secret([3; 32]);
        let other = Keypair::from_secret([4; 32]);
        let expected: Vec<VerifiedChunk> = sealed(&keys, 300, true)
            .into_iter()
            .zip(sealed(&other, 300, true))
            .flat_map(|(a, b)| [a, b])
            .map(|s| match s {
                Sealing::Done(c) => c,
                Sealing::Unsigned(_) => unreachable!(),
            })
            .collect();
        let batch: Vec<Sealing> = sealed(&keys, 300, false)
            .into_iter()
            .zip(sealed(&other, 300, true))
            .flat_map(|(a, b)| [a, b])
            .collect();
        assert_eq!(batch.iter().map(Sealing::stored_len).sum::<usize>(), {
            expected.iter().map(|c| c.bytes().len()).sum::<usize>()
        });
        assert_eq!(sign_all(batch, Some(&keys)).unwrap(), expected);
    }

    #[test]
    fn a_chunk_that_cannot_be_signed_is_an_error() {
        let keys = Keypair::from_secret([3; 32]);
        let other = Keypair::from_secret([4; 32]);
        assert!(matches!(
            sign_all(sealed(&keys, 1, false), None),
            Err(ChunkError::NotOriginKey { .. })
        ));
        assert!(matches!(
            sign_all(sealed(&keys, 1, false), Some(&other)),
            Err(ChunkError::NotOriginKey { .. })
        ));
        assert!(matches!(
            sign_all(vec![Sealing::Unsigned(vec![2, 0, 1])], Some(&keys)),
            Err(ChunkError::Decode(_))
        ));
    }

    proptest! {
        /// Whatever the items and which are heavy, the map keeps their order.
        #[test]
        fn in_order_keeps_the_order(items in prop::collection::vec((any::<u32>(), any::<bool>()), 0..400)) {
            let mapped = in_order(items.clone(), |(_, heavy)| *heavy, |(n, _)| u64::from(n) * 3);
            let expected: Vec<u64> = items.iter().map(|(n, _)| u64::from(*n) * 3).collect();
            prop_assert_eq!(mapped, expected);
        }
    }
}
