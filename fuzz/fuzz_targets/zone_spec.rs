//! A CDN zone's spec as an owner sent it: parsing must accept or refuse with a
//! message, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = tessera_cdn::ZoneSpec::parse(data) {
        assert!(!why.is_empty());
    }
});
