//! Fuzzes a session's whole input path: a conduit over a small `RamStore`, configured by
//! the input's first bytes (see `chunk_sync_fuzz::setup`), sends its `Hello`, receives a
//! valid `Hello` of the peer, then the rest of the input as what the peer sends, split
//! into reads and with time passing as the header says. Every action is carried out as an
//! adapter does; `chunk_sync_fuzz::node` lists the checks on what the conduit asks, among
//! them that every chunk it stores hashes to its id and is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chunk_sync_fuzz::run(data);
});
