//! Decoding a verified stream from an untrusted peer: must refuse, never panic,
//! with either decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = blake3::hash(b"fuzz");
    let ranges = dataplane::verified::all_ranges();
    let _ = dataplane::verified::decode_stream(root, data, &ranges, |_| Ok(()));
    // The borrowing decoder, in memory and through a buffer smaller than a group.
    let _ = dataplane::verified::decode_buffered(root, data, &ranges, |_| Ok(()));
    let small = std::io::BufReader::with_capacity(5000, data);
    let _ = dataplane::verified::decode_buffered(root, small, &ranges, |_| Ok(()));
});
