//! Everything the server does with the bytes of a request before touching the store:
//! head parsing, routing, ranges and chunked body decoding. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dataplane::http::exercise(data);
});
