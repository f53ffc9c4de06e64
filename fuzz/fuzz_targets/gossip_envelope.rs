//! A gossip datagram from the network: the envelope must be refused or opened,
//! never panic; an opened one was signed by the node it names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((kind, _id, body)) = controlplane::cluster::open(data) {
        assert!(kind < 0x40);
        assert!(body.len() <= controlplane::cluster::MAX_DATAGRAM);
    }
});
