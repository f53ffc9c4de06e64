//! A pin request's body (Pinning Service API `Pin`): parsing must accept or
//! refuse with a message, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = tessera_ipfs::pins::PinSpec::parse(data) {
        assert!(!why.is_empty());
    }
});
