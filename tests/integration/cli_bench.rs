//! `headstream bench encoder`, `bench heads` and `bench pipeline` run end to end and print the figures the
//! README's Performance section and benches/compare.sh read (small inputs: these check the
//! commands, not the speed). `bench pipeline` starts a real `serve` process on a real
//! nats-server. Needs `cargo plugins` for the pipeline's heads.

use headstream_test_util::{NatsServer, fixture, plugin_path};
use serde_json::Value;

use crate::headstream;

fn run(args: &[&str]) -> Value {
    let out = headstream(args, b"");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A report's `latency_ms` has a positive p50 and a p99 no lower.
fn assert_latencies(report: &Value) {
    let at = |p: &str| report["latency_ms"][p].as_f64().unwrap_or(-1.0);
    assert!(at("p50") > 0.0 && at("p99") >= at("p50"), "{report}");
}

#[test]
fn bench_encoder_reports_throughput_roofline_and_latency() {
    let input = fixture("encoder/sentences.jsonl");
    let input = input.to_str().unwrap_or_default();
    let batched = run(&[
        "--threads",
        "2",
        "bench",
        "encoder",
        "--input",
        input,
        "--batch-size",
        "8",
        "--passes",
        "1",
        "--warmup",
        "0",
        "--roofline",
    ]);
    assert_eq!(batched["engine"], "headstream");
    assert_eq!(batched["backend"], "packed");
    assert_eq!(batched["n_texts"], 26);
    for field in [
        "sentences_per_s",
        "gflops",
        "gflop_per_pass",
        "sgemm_peak_gflops",
    ] {
        assert!(
            batched[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {batched}"
        );
    }
    let share = batched["roofline_share"].as_f64().unwrap_or(-1.0);
    assert!(share > 0.0 && share < 2.0, "roofline share {share}");
    // Batches of one time each text: latency percentiles.
    let single = run(&[
        "bench",
        "encoder",
        "--input",
        input,
        "--batch-size",
        "1",
        "--passes",
        "1",
        "--warmup",
        "0",
    ]);
    assert_latencies(&single);
    // The same figures from candle-transformers' BERT on request.
    let out = crate::headstream_env(
        &[
            "bench", "encoder", "--input", input, "--passes", "1", "--warmup", "0",
        ],
        &[("HEADSTREAM_ENCODER_BACKEND", "candle")],
        b"",
    );
    let candle: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        candle["backend"],
        "candle",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = crate::headstream_env(
        &["bench", "encoder", "--input", input],
        &[("HEADSTREAM_ENCODER_BACKEND", "onnx")],
        b"",
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("HEADSTREAM_ENCODER_BACKEND"),
        "the error names the variable"
    );
}

#[test]
fn bench_pipeline_serves_ten_heads_through_nats() {
    let server = NatsServer::start();
    let url = server.url();
    let input = fixture("encoder/sentences.jsonl");
    let report = run(&[
        "--threads",
        "2",
        "bench",
        "pipeline",
        "--input",
        input.to_str().unwrap_or_default(),
        "--nats",
        &url,
        "--messages",
        "40",
        "--latency-messages",
        "10",
    ]);
    assert_eq!(report["pipeline"], "bench");
    assert_eq!(report["heads"], 10);
    assert_eq!(report["messages"], 40);
    // The fixture's two blank texts (ids 11 and 12 of 26, twice in 40 messages) go to the
    // error subject; the benchmark counts them as answered, not lost.
    assert_eq!(report["errors"], 4, "{report}");
    for field in [
        "encoder_sentences_per_s",
        "pipeline_sentences_per_s",
        "pipeline_share_of_encoder",
        "cold_start_s",
        "host_peak_rss_mib",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {report}"
        );
    }
    assert_latencies(&report);
}

#[test]
fn bench_heads_measures_heads_over_the_layers_they_ask_for() {
    let input = fixture("encoder/sentences.jsonl");
    let input = input.to_string_lossy();
    let common = [
        "bench",
        "heads",
        "--input",
        &input,
        "--batch-size",
        "4",
        "--passes",
        "1",
        "--heads",
        "2",
    ];
    for (extra, pooled, tokens) in [
        (&[][..], "[]", "[]"),
        (&["--layers", "3,4,5,6"][..], "[3,4,5,6]", "[]"),
        (&["--token-layers", "3,4,5,6"][..], "[]", "[3,4,5,6]"),
    ] {
        let args: Vec<&str> = common.iter().chain(extra).copied().collect();
        let report = run(&args);
        assert_eq!(report["pooled_layers"].to_string(), pooled, "{report}");
        assert_eq!(report["token_layers"].to_string(), tokens, "{report}");
        for field in [
            "encoder_us_per_message",
            "encoder_plain_us_per_message",
            "all_heads_us_per_message",
            "all_heads_share_of_encoder",
        ] {
            assert!(
                report[field].as_f64().is_some_and(|v| v > 0.0),
                "{field}: {report}"
            );
        }
    }
    // Another head, given its own config: the hostile head's layers mode, which only reports
    // what it received, measures what the layers' states alone cost the host.
    let hostile = plugin_path("hostile");
    let hostile = hostile.to_string_lossy();
    let config = r#"{"mode":"layers","tokens":[3,4,5,6]}"#;
    let with_config = |config: &'static str| -> Vec<String> {
        common
            .iter()
            .copied()
            .chain([
                "--plugin",
                &hostile,
                "--token-layers",
                "3,4,5,6",
                "--config",
                config,
            ])
            .map(str::to_owned)
            .collect()
    };
    let args = with_config(config);
    let report = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(report["plugin"], "hostile.wasm", "{report}");
    assert_eq!(report["config"]["mode"], "layers", "{report}");
    assert_eq!(report["token_layers"].to_string(), "[3,4,5,6]", "{report}");
    assert!(
        report["all_heads_us_per_message"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{report}"
    );
    let args = with_config("[1]");
    let out = headstream(&args.iter().map(String::as_str).collect::<Vec<_>>(), b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--config must be a JSON object"),
        "{stderr}"
    );
    // A fifth per-token layer is over a head's budget: the load fails, naming it.
    let args: Vec<&str> = common
        .iter()
        .chain(&["--token-layers", "1,2,3,4,5"])
        .copied()
        .collect();
    let out = headstream(&args, b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("at most 4"),
        "{stderr}"
    );
}
