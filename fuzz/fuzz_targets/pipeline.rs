//! Any pipeline config text: a validated pipeline, or an error that names the file (with line
//! and column); registry references parse or are refused, never panic.
#![no_main]

use std::path::Path;

use headstream_pipeline::{Pipeline, parse_reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Pipeline::parse(text, Path::new("fuzz.toml")) {
        Ok(pipeline) => {
            assert!(!pipeline.heads().is_empty());
            let _ = pipeline.check_deployable();
        }
        Err(error) => assert!(error.to_string().starts_with("fuzz.toml")),
    }
    let _ = parse_reference(text);
});
