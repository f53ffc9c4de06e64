//! The HTTP/3 request-handling path after QPACK: header extraction, routing,
//! ranges. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dataplane::server::exercise_h3_request(data);
});
