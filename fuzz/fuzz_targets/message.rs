//! Any bytes on a pipeline's input subject: a message within the limits, or an error record
//! that is valid JSON and carries the payload back intact.
#![no_main]

use headstream_message::{ErrorRecord, InputLimits, parse_message_within};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = InputLimits {
        max_message_bytes: 4096,
        max_text_bytes: 512,
    };
    match parse_message_within(data, limits, || "generated".to_owned()) {
        Ok(message) => {
            assert!(!message.text.trim().is_empty());
            assert!(message.text.len() <= limits.max_text_bytes);
            assert!(data.len() <= limits.max_message_bytes);
            assert!(message.meta.is_object());
        }
        Err(error) => {
            assert!(!error.kind.is_empty() && !error.message.is_empty());
            let record = ErrorRecord::new("fuzz", &error, data);
            let text = record.to_string();
            let back: serde_json::Value = serde_json::from_str(&text).expect("records are JSON");
            match (back["payload"].as_str(), back["payload_base64"].as_str()) {
                (Some(payload), None) => assert_eq!(payload.as_bytes(), data),
                (None, Some(_)) => assert!(std::str::from_utf8(data).is_err()),
                other => panic!("payload missing or doubled: {other:?}"),
            }
        }
    }
});
