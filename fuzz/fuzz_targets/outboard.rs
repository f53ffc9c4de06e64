//! A peer's outboard (`GET /blobs/{hash}/outboard`) checked against a root:
//! must refuse, never panic, whatever the announced size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dataplane::verified::exercise_outboard(blake3::hash(b"fuzz"), data);
});
