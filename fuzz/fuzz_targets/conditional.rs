//! Precondition fields (If-Match, If-None-Match, If-Modified-Since,
//! If-Unmodified-Since, If-Range): parsing entity-tag lists and HTTP-dates and
//! evaluating them. Input: lines whose first byte picks the field. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dataplane::http::conditional::exercise(data);
});
