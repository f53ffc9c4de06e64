//! A function's spec and script as a deployer sent them: the spec parses or
//! is refused with a message, and the script compiles or is refused with
//! the error, never a panic or a crash of the engine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = tessera_functions::FunctionSpec::parse(data) {
        assert!(!why.is_empty());
    }
    if let Err(why) = tessera_functions::check_script("fuzz", data) {
        assert!(!why.is_empty());
    }
});
