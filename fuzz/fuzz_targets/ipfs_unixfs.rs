//! dag-pb nodes and UnixFS Data from any source: decoding, file ranges and
//! HAMT steps must return errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera_ipfs::unixfs::exercise(data));
