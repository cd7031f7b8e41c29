//! Python and JavaScript heads (componentize-py, componentize-js; built by `plugins/build.sh`)
//! in the same sandbox as Rust heads: their interpreter's extra WASI imports are linked deny-all,
//! and every hostile behaviour of `plugins/hostile-python` and `plugins/hostile-js` is contained
//! with the same typed failure while a Rust head in the same batch keeps answering.

use std::sync::Arc;
use std::time::Duration;

use headstream_encoder::{Encoder, EncoderOptions};
use headstream_plugin_host::{
    FailureKind, Head, HeadConfig, HostConfig, Item, Limits, PluginError, PluginHost, Runtime,
};
use headstream_test_util::{model_dir, plugin_path, script_head, workspace_root};
use serde_json::{Value, json};

const LANGS: [(&str, Runtime); 2] = [
    ("hostile-python", Runtime::Python),
    ("hostile-js", Runtime::JavaScript),
];

/// A host with a compiled-component cache shared by the tests (an interpreter takes seconds
/// to compile, a cached one milliseconds to load).
fn host() -> PluginHost {
    PluginHost::new(HostConfig {
        cache_dir: Some(cache_dir()),
        ..HostConfig::default()
    })
    .unwrap_or_else(|e| panic!("host: {e}"))
}

fn cache_dir() -> std::path::PathBuf {
    workspace_root().join("target/test-cache/components")
}

fn item<'a>(id: &'a str, text: &'a str, embedding: &'a [f32]) -> Item<'a> {
    Item {
        id,
        text,
        embedding,
        token_states: None,
        upstream: Vec::new(),
        layers: &[],
    }
}

fn hostile(host: &PluginHost, plugin: &str, config: Value, limits: Limits) -> Head {
    let head = host
        .load(
            &script_head(plugin),
            HeadConfig {
                config,
                limits,
                ..HeadConfig::default()
            },
        )
        .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    assert_eq!(head.description().name, plugin);
    head
}

fn flags_head(host: &PluginHost) -> Head {
    let config = HeadConfig {
        config: json!({ "flags": { "refund": ["refund"] } }),
        ..HeadConfig::default()
    };
    host.load(&plugin_path("keyword-flags"), config)
        .unwrap_or_else(|e| panic!("keyword-flags: {e}"))
}

/// Runs the hostile head in `mode` beside a Rust head over one batch: every hostile result
/// fails with `kind` and a message containing `message`, the Rust head answers, and the
/// hostile head answers the next clean batch (from a fresh instance after a trap).
fn contained(plugin: &str, mode: &str, kind: FailureKind, message: &str) {
    let host = host();
    let limits = Limits {
        deadline: Duration::from_millis(if mode == "loop" { 100 } else { 5_000 }),
        // SpiderMonkey takes ~150 MiB to build a 2 MiB string and lower it: with less, the huge
        // output fails as a memory-cap failure before its size can be refused.
        memory_bytes: (mode == "huge-output").then_some(200 << 20),
        ..Limits::default()
    };
    let bad = hostile(&host, plugin, json!({ "mode": mode }), limits);
    let good = flags_head(&host);
    let e = [0.0f32; 4];
    let batch = [item("1", "boom, refund please", &e), item("2", "fine", &e)];
    let bad_out = bad.run(&batch);
    assert_eq!(
        good.run(&batch)[0],
        Ok(json!({ "flags": ["refund"] })),
        "{plugin} {mode}: the Rust head still answers"
    );
    for (i, out) in bad_out.iter().enumerate() {
        match out {
            Err(f) if f.kind == kind && f.message.contains(message) => {}
            Ok(_)
                if i > 0
                    && matches!(
                        kind,
                        FailureKind::OutputTooLarge | FailureKind::MalformedOutput
                    ) => {}
            other => panic!(
                "{plugin} {mode}: item {i}: expected {kind:?} containing {message:?}, got {other:?}"
            ),
        }
    }
    let clean = bad.run(&[item("3", "calm", &e)]);
    assert_eq!(
        clean[0],
        Ok(json!({ "len": 4 })),
        "{plugin} {mode}: recovers after the failure"
    );
}

#[test]
fn interpreters_are_detected_and_run_within_their_default_memory() {
    let host = host();
    for (plugin, runtime) in LANGS {
        let head = hostile(&host, plugin, json!({ "mode": "none" }), Limits::default());
        assert_eq!(head.runtime(), runtime, "{plugin}");
        let e = [0.5f32; 384];
        let out = head.run(&[item("1", "héllo", &e), item("2", "", &e)]);
        assert_eq!(
            out,
            vec![Ok(json!({ "len": 6 })), Ok(json!({ "len": 0 }))],
            "{plugin}"
        );
        eprintln!("{plugin}: memory peak {} KiB", head.memory_peak() >> 10);
        assert!(
            head.memory_peak() > 1 << 20,
            "{plugin}: {}",
            head.memory_peak()
        );
    }
    assert_eq!(flags_head(&host).runtime(), Runtime::Native);
}

#[test]
fn infinite_loops_hit_the_deadline() {
    for (plugin, _) in LANGS {
        contained(plugin, "loop", FailureKind::Timeout, "CPU deadline");
    }
}

#[test]
fn memory_bombs_hit_the_cap() {
    for (plugin, _) in LANGS {
        contained(plugin, "memory", FailureKind::MemoryLimit, "memory cap");
    }
}

#[test]
fn deep_recursion_is_stopped() {
    // With its recursion limit lifted CPython exhausts the wasm stack (a trap, the instance
    // replaced); SpiderMonkey stops at its own guard with a catchable "too much recursion".
    contained(
        "hostile-python",
        "recursion",
        FailureKind::StackOverflow,
        "stack",
    );
    contained(
        "hostile-js",
        "recursion",
        FailureKind::HeadError,
        "recursion",
    );
}

#[test]
fn huge_outputs_are_refused() {
    for (plugin, _) in LANGS {
        contained(
            plugin,
            "huge-output",
            FailureKind::OutputTooLarge,
            "the limit is 65536",
        );
    }
}

#[test]
fn exceptions_fail_the_batch_naming_the_exception() {
    contained(
        "hostile-python",
        "exception",
        FailureKind::HeadError,
        "RuntimeError: hostile head raised on purpose",
    );
    contained(
        "hostile-js",
        "exception",
        FailureKind::HeadError,
        "Error: hostile head threw on purpose",
    );
}

#[test]
fn exiting_the_interpreter_or_fetching_is_a_trap() {
    contained("hostile-python", "exit", FailureKind::Trap, "");
    // componentize-js built without http: `fetch` exists but has no transport.
    contained("hostile-js", "fetch", FailureKind::Trap, "unreachable");
}

#[test]
fn wrong_result_counts_are_malformed() {
    for (plugin, _) in LANGS {
        contained(
            plugin,
            "wrong-count",
            FailureKind::MalformedOutput,
            "returned 0 results for a batch of 2",
        );
    }
    contained(
        "hostile-js",
        "bad-span",
        FailureKind::MalformedOutput,
        "not a valid byte range",
    );
}

#[test]
fn config_errors_fail_the_load_naming_them() {
    for (plugin, _) in LANGS {
        let err = host()
            .load(
                &script_head(plugin),
                HeadConfig {
                    config: json!({ "mode": "config-fails" }),
                    ..HeadConfig::default()
                },
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("always rejects its config"), "{plugin}: {err}");
        let err = host()
            .load(&script_head(plugin), HeadConfig::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("missing `mode`"), "{plugin}: {err}");
    }
}

/// What `plugin`'s `probe` mode sees, on two separate hosts (nothing shared but the sandbox).
fn probes(plugin: &str) -> [Value; 2] {
    let e = [0.0f32; 4];
    let probe = || {
        let host = host();
        let limits = Limits {
            deadline: Duration::from_secs(5),
            ..Limits::default()
        };
        let head = hostile(&host, plugin, json!({ "mode": "probe" }), limits);
        let out = head.run(&[item("1", "boom", &e)]);
        let Ok(probe) = &out[0] else {
            panic!("{out:?}")
        };
        eprintln!("{plugin} probe: {probe}");
        probe.clone()
    };
    [probe(), probe()]
}

fn denied(probe: &Value, attempts: &[&str]) {
    for attempt in attempts {
        assert!(
            probe[attempt]
                .as_str()
                .is_some_and(|s| s.starts_with("denied")),
            "{attempt}: {probe}"
        );
    }
}

#[test]
fn python_sees_no_files_network_environment_time_or_entropy() {
    let seen = probes("hostile-python");
    for probe in &seen {
        assert_eq!(probe["env"], json!([]), "{probe}");
        denied(
            probe,
            &["read_file", "list_root", "write_file", "connect", "resolve"],
        );
        assert_eq!(probe["wall_clock_s"], 0.0, "{probe}");
        assert_eq!(probe["monotonic_elapsed_s"], 0.0, "{probe}");
    }
    let entropy = |p: &Value| (p["random"].clone(), p["urandom"].clone());
    assert_eq!(
        entropy(&seen[0]),
        entropy(&seen[1]),
        "randomness is not observable"
    );
}

#[test]
fn javascript_sees_no_network_time_or_entropy() {
    let seen = probes("hostile-js");
    for probe in &seen {
        denied(probe, &["process_env", "require"]);
        assert_eq!(probe["wall_clock_ms"], 0, "{probe}");
        assert_eq!(probe["monotonic_elapsed_ms"], 0, "{probe}");
    }
    let entropy = |p: &Value| (p["random"].clone(), p["crypto_random"].clone());
    assert_eq!(
        entropy(&seen[0]),
        entropy(&seen[1]),
        "randomness is not observable"
    );
}

#[test]
fn log_floods_are_cut_to_the_budget() {
    for (plugin, _) in LANGS {
        let host = host();
        let limits = Limits {
            deadline: Duration::from_secs(10),
            ..Limits::default()
        };
        // 1 KiB lines: JavaScript's bindings encode strings in interpreted JS (~30 ms per
        // 64 KiB), and the budget is on lines.
        let config = json!({ "mode": "log-flood", "lines": 500, "line_bytes": 1024 });
        let head = hostile(&host, plugin, config, limits);
        let e = [0.0f32; 4];
        assert_eq!(
            head.run(&[item("1", "boom", &e)]),
            vec![Ok(json!({ "len": 4 }))]
        );
        let dropped = head.take_log_lines_dropped();
        let burst = u64::from(limits.log.burst);
        assert!(
            (400..=500 - burst).contains(&dropped),
            "{plugin}: {dropped} dropped"
        );
    }
}

#[test]
fn embed_floods_are_refused_within_the_setup_deadline() {
    let encoder = Arc::new(
        Encoder::load(&model_dir(), EncoderOptions::default()).unwrap_or_else(|e| panic!("{e}")),
    );
    for (plugin, _) in LANGS {
        let host = PluginHost::new(HostConfig {
            embedder: Some(encoder.clone()),
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let err = host
            .load(
                &script_head(plugin),
                HeadConfig {
                    config: json!({ "mode": "embed-flood", "text_bytes": 1024 }),
                    ..HeadConfig::default()
                },
            )
            .err();
        let Some(PluginError::Setup { failure, .. }) = &err else {
            panic!("{plugin}: {err:?}")
        };
        // The first call is over the per-call budget: configure fails before the encoder runs.
        assert_eq!(failure.kind, FailureKind::Config, "{plugin}: {failure}");
        assert!(
            failure.message.contains("embed budget exceeded"),
            "{plugin}: {failure}"
        );
        eprintln!("{plugin}: refused in {:?}: {failure}", started.elapsed());
    }
}

#[test]
fn sleeping_does_not_hold_the_host() {
    // Time is frozen for heads: a sleep of a million seconds returns at once (WASI's own timer
    // would block the host thread in `poll`, where no CPU deadline reaches). The head runs on
    // its own thread so that a regression fails here instead of hanging the suite.
    let host = std::sync::Arc::new(host());
    let (tx, rx) = std::sync::mpsc::channel();
    let runner = host.clone();
    std::thread::spawn(move || {
        let head = hostile(
            &runner,
            "hostile-python",
            json!({ "mode": "sleep" }),
            Limits::default(),
        );
        let e = [0.0f32; 4];
        let _ = tx.send(head.run(&[item("1", "boom", &e)]));
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("a sleeping head held its call for 60 s"));
    assert_eq!(out, vec![Ok(json!({ "slept": true }))]);
}
