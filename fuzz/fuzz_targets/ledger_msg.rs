//! A consensus message from another node (`POST /ledger/msg`): decoding the
//! session header and the AlephBFT message must refuse or succeed, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = controlplane::chain::decode_msg(data);
});
