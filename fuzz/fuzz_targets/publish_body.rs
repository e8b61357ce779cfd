//! Fuzzes the publish body parser (`POST /v1/events`): any bytes must give events or a 4xx.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = herald::fuzzing::parse_publish(data, &herald::config::LimitsConfig::default()) {
        assert!(e.status.is_client_error());
    }
});
