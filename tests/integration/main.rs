//! headstream's integration tests, linked into one binary. They run the real model (fetched on
//! first use into `models/`, or `$HEADSTREAM_MODEL`) and the real `headstream` binary.
//!
//! Module map:
//! - `dashboard`: `headstream dashboard` in Debian's Chromium (playwright-core): a deploy made
//!   while the page is open shows up without a reload; writes target/screenshots/dashboard.png.
//! - `encoder_parity`: the encoder against sentence-transformers outputs for our own sentences
//!   (`tests/fixtures/encoder`, made by `scripts/make_encoder_fixtures.py`).
//! - `cli_embed`: `headstream embed` end to end: output schema, `--tokens`, bad input.
//! - `cli_model`: `headstream model fetch|info` on the fetched model.
//! - `cli_new_head`: `headstream new-head` scaffolding.
//! - `cli_run`: `headstream run`, the embedded pipeline runner (needs `cargo plugins`).
//! - `cli_train`: `headstream train|eval` on tiny fixtures: packages, metrics, cache, errors.
//! - `host_budgets`: what a hostile head can make the host do: an `embed` flood fails the load
//!   naming the limit, a `log` flood is cut, rate-limited, escaped and counted.
//! - `heads`: shipped heads (prototype, token classifier) over the real encoder's output; needs
//!   `cargo plugins`.
//! - `nats_serve`: `headstream serve` against a real nats-server (results, replies, error
//!   records, a queue group of two hosts).
//! - `nats_deploy`: the cluster registry and live hosts: hot swap under load on two hosts,
//!   rejected deploys, rollback, canary and shadow, `serve --watch`.
//! - `nats_faults`: a hanging head cut off by its deadline and switched off while the others
//!   answer; a JetStream burst far above capacity with the host's memory bounded.
//! - `nats_jetstream`: JetStream delivery: nothing lost across a nats-server restart, messages
//!   past `max_deliver` to the error subject.
//! - `nats_logs`: heads' log lines on `headstream.logs.<pipeline>.<head>`: `headstream logs
//!   --follow` within a second and within the head's budget, read back from the stream.
//! - `nats_security`: user/password, token, NKey and TLS (custom CA, client certificates) in
//!   every command that connects; refusals without credentials; no secrets in logs or --help.
//! - `polyglot`: Python and JavaScript heads from the command line: `new-head --lang`,
//!   `plugins/build.sh`, `train --component`, `package`, one pipeline with heads in three
//!   languages.
//! - `shared_reference`: parity on all 323 sentences of `../shared/reference` (ignored by
//!   default; `.ci/run` runs them with `--ignored`, since a user's clone has no `../shared`).
//! - `soak`: a mixed workload with hot swaps for 20 s (`scripts/soak.sh` runs it for 30 min).
//! - `traces`: a W3C trace from `request` through a host's stages (OTLP/HTTP to a collector in
//!   the test), named by the result.
//! - `shared_datasets`: shipped heads and 8-shot heads against the probe's accuracy on
//!   ../shared/datasets (ignored by default, like `shared_reference`).

mod cli_anywhere;
mod cli_bench;
mod cli_embed;
mod cli_model;
mod cli_new_head;
mod cli_run;
mod cli_train;
mod components;
mod dashboard;
mod encoder_parity;
mod gateway;
mod heads;
mod host_budgets;
mod layers;
mod nats_deploy;
mod nats_faults;
mod nats_jetstream;
mod nats_logs;
mod nats_security;
mod nats_serve;
mod nats_store;
mod polyglot;
mod quality;
mod replay;
mod shared_datasets;
mod shared_reference;
mod soak;
mod traces;

use std::process::{Command, Output};

/// Runs the `headstream` binary with `args`, feeding `stdin`.
pub fn headstream(args: &[&str], stdin: &[u8]) -> Output {
    headstream_env(args, &[], stdin)
}

/// The `headstream` binary with `args`, the test model, and none of the caller's
/// `HEADSTREAM_NATS` or `HEADSTREAM_OTLP_ENDPOINT`: for a child the test drives itself.
pub fn headstream_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_headstream"));
    command
        .args(args)
        .env_remove("HEADSTREAM_NATS")
        .env_remove("HEADSTREAM_OTLP_ENDPOINT")
        .env("HEADSTREAM_MODEL", headstream_test_util::model_dir());
    command
}

/// Runs the `headstream` binary with `args` and extra environment variables, feeding `stdin`
/// (as [`headstream_command`] sets it up).
pub fn headstream_env(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = headstream_command(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start headstream: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .unwrap_or_else(|e| panic!("cannot write stdin: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("headstream did not finish: {e}"))
}

/// Runs `headstream ARGS` on `stdin`, asserting it succeeds (its stderr in the failure);
/// returns its stdout.
pub fn headstream_ok(args: &[&str], stdin: &[u8]) -> String {
    let out = headstream(args, stdin);
    assert!(
        out.status.success(),
        "headstream {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A multi-threaded async runtime for a test's NATS client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Resident and peak resident memory of process `pid`, in MiB (Linux `/proc`).
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
