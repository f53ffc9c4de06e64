//! A CAR from an origin, a peer or an owner's import: the reader must return
//! an error, never panic nor allocate past its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera_ipfs::car::exercise(data));
