//! `headstream embed`: JSONL in, JSONL out; `--tokens`; bad input names the line and leaves no
//! partial output file.

use headstream_test_util::{fixture, max_abs_diff};
use serde_json::Value;

use crate::headstream;

fn lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("output line {l:?}: {e}")))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")) as f32)
        .collect()
}

#[test]
fn embeds_jsonl_from_file_to_file_in_input_order() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("out.jsonl");
    let input = fixture("encoder/sentences.jsonl");
    let run = headstream(
        &[
            "embed",
            "--input",
            &input.to_string_lossy(),
            "--output",
            &out.to_string_lossy(),
        ],
        b"",
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = lines(&std::fs::read(&out).unwrap_or_else(|e| panic!("{e}")));
    let expected: Vec<Value> = headstream_test_util::read_jsonl(&fixture("encoder/expected.jsonl"));
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g["id"], e["id"], "ids keep input order and type");
        let d = max_abs_diff(&floats(&g["embedding"]), &floats(&e["embedding"]));
        assert!(d <= 1e-5, "id {}: {d:e}", e["id"]);
        assert_eq!(
            g.get("truncated").is_some(),
            e["truncated"] == Value::Bool(true)
        );
        assert!(
            g.get("token_states").is_none(),
            "token states only with --tokens"
        );
    }
}

#[test]
fn tokens_flag_adds_ids_offsets_and_states() {
    let input = b"{\"id\":\"a\",\"text\":\"Caf\xc3\xa9 au lait\"}\n{\"text\":\"two words\"}\n";
    let run = headstream(&["embed", "--tokens"], input);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = lines(&run.stdout);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["id"], "a");
    assert_eq!(
        got[1]["id"], "2",
        "a missing id defaults to the line number"
    );
    assert_eq!(
        got[0]["input_ids"],
        serde_json::json!([101, 7668, 8740, 21110, 2102, 102])
    );
    // Byte offsets into the original text: "Café" is 5 bytes.
    assert_eq!(
        got[0]["offsets"],
        serde_json::json!([[0, 0], [0, 5], [6, 8], [9, 12], [12, 13], [0, 0]])
    );
    let states = got[0]["token_states"]
        .as_array()
        .unwrap_or_else(|| panic!("token_states"));
    assert_eq!(states.len(), 6);
    assert!(states.iter().all(|row| floats(row).len() == 384));
    assert_eq!(floats(&got[0]["embedding"]).len(), 384);
}

#[test]
fn bad_line_is_named_and_no_output_file_is_written() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cases: [(&[u8], &str); 4] = [
        (
            b"{\"text\":\"fine\"}\nthis is not json\n",
            "stdin line 2: not JSON",
        ),
        (
            b"{\"text\":\"fine\"}\n{\"id\":\"x\"}\n",
            "stdin line 2: no \"text\" field",
        ),
        (b"{\"text\":\"caf\xe9\"}\n", "stdin line 1: not valid UTF-8"),
        (
            b"{\"text\":[\"a\"]}\n",
            "stdin line 1: \"text\" must be a string, got an array",
        ),
    ];
    for (input, message) in cases {
        let out = dir.path().join("out.jsonl");
        let run = headstream(&["embed", "--output", &out.to_string_lossy()], input);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "bad input must fail: {stderr}");
        assert!(
            stderr.contains(message),
            "expected {message:?} in {stderr:?}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "one-line reason: {stderr:?}"
        );
        assert!(!out.exists(), "no partial output for {message:?}");
        assert_eq!(
            std::fs::read_dir(dir.path())
                .map(Iterator::count)
                .unwrap_or(0),
            0,
            "no temp files left"
        );
    }
}

#[test]
fn missing_model_dir_says_how_to_fetch() {
    let run = headstream(
        &["embed", "--model", "/nonexistent/model"],
        b"{\"text\":\"x\"}\n",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("/nonexistent/model") && stderr.contains("headstream model fetch"),
        "{stderr}"
    );
}
