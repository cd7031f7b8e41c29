//! `headstream model fetch` is idempotent on a fetched model; `model info` reports the
//! fingerprint and the settings read from the model's own files.

use std::time::Instant;

use headstream_test_util::model_dir;
use serde_json::Value;

use crate::headstream;

#[test]
fn fetch_on_a_fetched_model_is_a_no_op() {
    let dir = model_dir();
    if !dir.join(headstream_fetch::MARKER_FILE).exists() {
        // A hand-made model directory (not fetched by headstream) is refused, not overwritten.
        let run = headstream(&["model", "fetch", "--dir", &dir.to_string_lossy()], b"");
        assert!(!run.status.success());
        return;
    }
    let start = Instant::now();
    let run = headstream(&["model", "fetch", "--dir", &dir.to_string_lossy()], b"");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("already present"), "{stderr}");
    // Not a timing assertion on the machine: a re-download would take seconds and print
    // "fetched"; this only guards against hashing or copying 90 MB again.
    eprintln!("second fetch took {:?}", start.elapsed());
}

#[test]
fn info_reads_settings_from_the_model_files() {
    let run = headstream(&["model", "info"], b"");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let info: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info["max_seq_length"], 256);
    assert_eq!(info["pooling"], "mean");
    assert_eq!(info["normalize"], true);
    assert_eq!(info["hidden_size"], 384);
    assert_eq!(info["layers"], 6);
    assert!(
        info["fingerprint"]
            .as_str()
            .is_some_and(|f| f.contains("@sha256:"))
    );
}

#[test]
fn help_is_available_everywhere() {
    for args in [
        &["--help"][..],
        &["model", "fetch", "--help"],
        &["embed", "--help"],
        &["bench", "encoder", "--help"],
    ] {
        let run = headstream(args, b"");
        assert!(run.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&run.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}
