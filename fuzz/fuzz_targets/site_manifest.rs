//! A site's manifest and spec as a node fetched them from peers: parsing
//! and compiling accept or refuse with a message, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match tessera_hosting::Manifest::parse(data) {
        Ok(m) => {
            let v = tessera_hosting::Version::compile([0; 32], &m)
                .expect("a checked manifest compiles");
            for path in m.files.keys().take(16) {
                let _ = v.resolve(path, "");
            }
            let _ = v.resolve("/missing/path", "q=1");
        }
        Err(why) => assert!(!why.is_empty()),
    }
    if let Err(why) = tessera_hosting::SiteSpec::parse(data) {
        assert!(!why.is_empty());
    }
});
