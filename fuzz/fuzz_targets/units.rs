//! Durations (`--hold 500ms`, `--reorder-timeout 15s`) and sizes (`--retention-bytes 100M`)
//! from arbitrary text: a message or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_service::{parse_bytes, parse_duration};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(message) = parse_duration(&text) {
        assert!(!message.is_empty());
    }
    match parse_bytes(&text) {
        Ok(bytes) => assert!(bytes > 0),
        Err(message) => assert!(!message.is_empty()),
    }
});
