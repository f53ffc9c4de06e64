//! What the ledger reads from other nodes: a consensus message (`POST
//! /ledger/msg`: session header + AlephBFT message), a unit's batch, and a
//! boundary snapshot (`GET /ledger/boundary/{epoch}`). Decoding must refuse or
//! succeed, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = controlplane::chain::decode_msg(data);
    let _ = controlplane::chain::decode_batch(data);
    let _ = controlplane::chain::decode_boundary(data);
});
