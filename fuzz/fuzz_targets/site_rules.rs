//! A site's `_redirects` and `_headers` as a deployer wrote them: both
//! parsers accept or refuse with a message, never panic; what they accept
//! is matched against paths made of the same bytes without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_hosting::{headers, redirects};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rules_text, path) = text.split_once('\u{0}').unwrap_or((text, "/a/b/c"));
    let path = if path.starts_with('/') { path } else { "/x" };
    match redirects::parse(rules_text) {
        Ok(rules) => {
            for exists in [false, true] {
                if let Some(m) = redirects::first(&rules, path, "a=1&b=2", exists) {
                    let _ = m.rule.target(path, "a=1&b=2", &m.caps);
                }
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
    match headers::parse(rules_text) {
        Ok(rules) => {
            let _ = headers::for_path(&rules, path);
            let _ = headers::matching(&rules, path);
        }
        Err(why) => assert!(!why.is_empty()),
    }
});
