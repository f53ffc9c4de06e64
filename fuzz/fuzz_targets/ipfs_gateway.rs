//! A trustless-gateway request's path, query and Accept header, and a CID in
//! text: parsing must accept or refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tessera_ipfs::gateway::exercise(data);
    if let Some(cid) = tessera_ipfs::parse_cid(data) {
        assert_eq!(
            tessera_ipfs::parse_cid(tessera_ipfs::cid_text(&cid).as_bytes()),
            Some(cid)
        );
    }
});
