//! WebSocket frames from a client (RFC 6455): header, lengths, masking,
//! fragmentation, control frames, UTF-8. Must never panic or overrun.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dataplane::websocket::exercise(data);
});
