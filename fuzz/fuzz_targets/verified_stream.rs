//! Decoding a verified stream from an untrusted peer: must refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = blake3::hash(b"fuzz");
    let _ = dataplane::verified::decode_stream(
        root,
        data,
        &dataplane::verified::all_ranges(),
        |_| Ok(()),
    );
});
