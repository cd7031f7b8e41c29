//! What a hostile head can make the host do for it, end to end through `headstream run` and a
//! pipeline's runner: an `embed` flood at configure time fails the load with an error naming
//! the head, the limit and how to raise it; a `log` flood costs the host's stderr a few KiB
//! instead of megabytes, cannot forge host log lines, and is counted in the metrics.

use std::sync::Arc;
use std::time::Instant;

use headstream_encoder::{Encoder, EncoderOptions};
use headstream_package::Registry;
use headstream_pipeline::Pipeline;
use headstream_runner::{Metrics, Runner, parse_message};
use headstream_test_util::{model_dir, plugin_path};

use super::headstream_env;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A pipeline of one hostile head named `head`, with extra `[heads.config]` (its `mode`...)
/// and `[heads.limits]` lines, beside keyword flags; one batch per message.
pub(crate) fn hostile_pipeline(
    dir: &std::path::Path,
    head: &str,
    config: &str,
    limits: &str,
) -> std::path::PathBuf {
    let file = dir.join("hostile.toml");
    let text = format!(
        "version = 1\nname = \"hostile\"\n[input]\nsubject = \"in\"\n[output]\nsubject = \"out\"\nerrors = \"err\"\n\
         [batching]\nmax_batch_size = 1\n\
         [[heads]]\nname = \"{head}\"\ncomponent = {:?}\n[heads.config]\n{config}\n[heads.limits]\n{limits}\n\
         [[heads]]\nname = \"flags\"\ncomponent = {:?}\n[heads.config.flags]\nurgent = [\"asap\"]\n",
        plugin_path("hostile"),
        plugin_path("keyword-flags"),
    );
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    file
}

#[test]
fn an_embed_flood_fails_the_load_naming_the_head_and_the_limit() -> TestResult {
    let dir = tempfile::tempdir()?;
    // The case from the field: 4,000 texts of 16 KiB asked for at configure time (in calls of
    // 1,000).
    let pipeline = hostile_pipeline(dir.path(), "flood", "mode = \"embed-flood\"", "");
    let started = Instant::now();
    let run = headstream_env(
        &["run", "--pipeline", &pipeline.to_string_lossy()],
        &[],
        b"{\"text\":\"hello\"}\n",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!("embed flood: exit in {:?}: {stderr}", started.elapsed());
    assert!(!run.status.success());
    for part in [
        "head flood",
        "config:",
        "embed budget exceeded: 1000 texts in one call",
        "the limit is 64",
        "`embed_texts_per_call` under [heads.limits]",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
    // Raised where the message says, the same head asking for less loads and answers.
    let pipeline = hostile_pipeline(
        dir.path(),
        "flood",
        "mode = \"embed-flood\"\ntexts = 300\ntext_bytes = 8\nper_call = 100",
        // (and a generous setup deadline: the suite runs many encoders at once)
        "embed_texts_per_call = 100\nembed_texts = 300\nsetup_deadline_ms = 120000",
    );
    let run = headstream_env(
        &["run", "--pipeline", &pipeline.to_string_lossy()],
        &[],
        b"{\"text\":\"hello asap\"}\n",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let out: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    assert_eq!(out["results"]["flood"], serde_json::json!({ "len": 10 }));
    Ok(())
}

#[test]
fn a_log_flood_costs_the_host_a_few_kib_and_forges_no_lines() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Logs 64 KiB lines (with a newline and a terminal escape in each) until its deadline, on
    // every message, until the circuit breaker switches it off.
    let pipeline = hostile_pipeline(
        dir.path(),
        "flood",
        "mode = \"log-flood\"",
        "deadline_ms = 100",
    );
    let input: String = (0..8)
        .map(|i| format!("{{\"id\":\"{i}\",\"text\":\"boom {i} asap\"}}\n"))
        .collect();
    let run = headstream_env(
        &["run", "--pipeline", &pipeline.to_string_lossy()],
        &[],
        input.as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let records: Vec<serde_json::Value> = run
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()?;
    assert_eq!(records.len(), 8);
    for r in &records {
        assert_eq!(
            r["results"]["flags"],
            serde_json::json!({ "flags": ["urgent"] })
        );
    }
    let flood_lines = stderr.lines().filter(|l| l.contains("FORGED")).count();
    eprintln!(
        "log flood over 8 batches: {} bytes of stderr, {flood_lines} flood lines kept",
        run.stderr.len()
    );
    // Before the budget: ~22 MB per batch. Now: the burst of 20 lines of at most 1 KiB, a line
    // or so per batch after it, a summary and a failure line per batch.
    assert!(run.stderr.len() < 64 << 10, "{} bytes", run.stderr.len());
    assert!((1..=28).contains(&flood_lines), "{flood_lines} flood lines");
    assert!(stderr.contains("suppressed"), "{stderr}");
    assert!(stderr.contains("more bytes cut]"), "{stderr}");
    // The head's newline and terminal escape (an OSC sequence setting the terminal's title) are
    // shown escaped, never as a line or a sequence of their own; and the host's log has no
    // colour codes of its own when stderr is not a terminal.
    assert!(!stderr.lines().any(|l| l.starts_with("FORGED")), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "a terminal escape reached the log"
    );
    assert!(stderr.contains(r"\u{1b}]0;pwned\u{7}"), "{stderr}");
    Ok(())
}

#[test]
fn dropped_log_lines_are_counted_in_the_metrics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = hostile_pipeline(
        dir.path(),
        "flood",
        "mode = \"log-flood\"\nlines = 100\nline_bytes = 100",
        "log_burst = 5\nlog_lines_per_s = 1",
    );
    let pipeline = Pipeline::load(&file)?;
    let encoder = Arc::new(Encoder::load(&model_dir(), EncoderOptions::default())?);
    let metrics = Arc::new(Metrics::new()?);
    let plugins = headstream_runner::plugin_host(&encoder, None, 8)?;
    let runner = Runner::new(&pipeline, &plugins, encoder, &Registry { dirs: Vec::new() })?
        .with_metrics(metrics.clone());
    let message =
        parse_message(br#"{"id":"1","text":"boom"}"#, || "x".into()).map_err(|e| e.message)?;
    runner.process(std::slice::from_ref(&message))?;
    let dropped = metrics
        .head_log_dropped
        .with_label_values(&["hostile", "flood"])
        .get();
    // 100 lines, a burst of 5 (and perhaps one refilled) written.
    assert!((94..=95).contains(&dropped), "{dropped} dropped");
    runner.process(std::slice::from_ref(&message))?;
    let more = metrics
        .head_log_dropped
        .with_label_values(&["hostile", "flood"])
        .get();
    assert!(more >= dropped + 98, "{more} after a second batch");
    Ok(())
}
