//! Fuzzes the WebSocket client message parser: any text must give a message or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = herald::fuzzing::parse_client_message(text);
    }
});
