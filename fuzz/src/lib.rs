//! What the fuzz targets and the seed generator share: the chunks a fuzzed node holds
//! ([`chunks`]), the header that configures a fuzzed session ([`setup`]), and a node that
//! carries out every action of a [`Conduit`](chunk_sync_core::conduit::Conduit) from a
//! `RamStore` and checks what the conduit asks of it ([`node`]).
//!
//! [`run`] is the whole of the `session_input` target: a node that has sent its `Hello`
//! receives a peer's `Hello`, then the fuzz input, as a peer would send it.
//! [`secure::run_secure`] is the whole of the `handshake` target: a node on a secure link
//! with a peer behind a wire the input tampers with, or a peer that is the input.

pub mod chunks;
pub mod node;
pub mod secure;
pub mod setup;

use chunk_sync_core::conduit::{Buffer, Buffers, Conduit};
use chunk_sync_core::session::Error;
use chunk_sync_core::time::Instant;

use node::{Inbox, Node, Pumped, REASSEMBLY, TRANSMIT};
use setup::{HEADER, Setup};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// The outcome, if the conduit closed.
    pub closed: Option<Result<(), Error>>,
    /// Chunks the store kept.
    pub stored: usize,
    /// Actions carried out.
    pub polls: u64,
}

/// Runs a session on `data`: a [`Setup`] header, then the bytes the peer sends after its
/// `Hello`. `None` if `data` is shorter than the header.
///
/// # Panics
/// If the conduit does what it must not: see [`Node`].
#[must_use]
pub fn run(data: &[u8]) -> Option<Report> {
    let (head, rest) = data.split_first_chunk::<HEADER>()?;
    let setup = Setup::parse(head);
    let mut input = setup.peer_hello_frame();
    input.extend_from_slice(rest);
    Some(if setup.fixed {
        let mut rx = vec![0u8; setup.config.max_frame as usize];
        let mut tx = vec![0u8; TRANSMIT];
        let mut re = vec![0u8; REASSEMBLY];
        let buffers = Buffers {
            receive: &mut rx[..],
            transmit: &mut tx[..],
            reassembly: &mut re[..],
        };
        drive(&setup, buffers, None, input)
    } else {
        let buffers = Buffers {
            receive: Vec::new(),
            transmit: Vec::new(),
            reassembly: Vec::new(),
        };
        let spare = setup.keep.then_some(Vec::new as fn() -> Vec<u8>);
        drive(&setup, buffers, spare, input)
    })
}

/// A node in `buffers` that sends its `Hello`, then receives `input`; when it has nothing
/// to read it closes or sees the end of input as `setup` says, or waits for its next
/// deadline, until it closes or runs out of steps.
fn drive<B: Buffer>(
    setup: &Setup,
    buffers: Buffers<B>,
    spare: Option<fn() -> B>,
    input: Vec<u8>,
) -> Report {
    let conduit = Conduit::new(setup.config, Instant::ZERO, buffers, setup.limits)
        .expect("every setup is a valid configuration");
    let mut node = Node::new(conduit, chunks::held().clone(), spare, setup.lazy_writes);
    node.max_polls = 20_000 + 40 * input.len() as u64;
    let mut reads = setup.reads;
    // This side's `Hello` goes out before anything arrives.
    let mut inbox = Inbox::default();
    let _ = node.pump(&mut inbox, None, &mut reads);
    inbox.push(&input);
    let (mut closing, mut eof) = (false, false);
    while let Pumped::Waiting(wait) = node.pump(&mut inbox, None, &mut reads) {
        if inbox.is_empty() && setup.close_at_end && !closing {
            closing = true;
            node.conduit.close();
        } else if inbox.is_empty() && setup.eof_at_end && !eof {
            eof = true;
            node.conduit.eof();
        } else if let Some(deadline) = wait.deadline {
            node.now = node.now.max(deadline);
            node.conduit.handle_timeout(node.now);
        } else {
            break;
        }
    }
    Report {
        closed: node.closed,
        stored: node.stored,
        polls: node.polls,
    }
}
