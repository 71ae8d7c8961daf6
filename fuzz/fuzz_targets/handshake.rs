//! Fuzzes a secure link from its first byte: the handshake (Noise XX), the key's
//! authorization and the sealed records, with an honest peer whose bytes the input
//! edits on the wire, or with a peer whose bytes are the input (see
//! `chunk_sync_fuzz::secure`). A wire left untouched must end in the sync the access
//! rules say; a touched one in a typed error or a sync, never in a chunk stored that
//! does not hash to its id, nor in a key authorized that the handshake did not prove.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chunk_sync_fuzz::secure::run_secure(data);
});
