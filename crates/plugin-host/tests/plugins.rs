//! The plugin host against real components built from `plugins/` (run `cargo plugins` first):
//! the shipped heads answer correctly, every hostile fixture is contained with a specific error
//! while a well-behaved head in the same batch keeps answering, and bad plugins are refused at
//! load with an error that names the problem.

use std::time::Duration;

use headstream_encoder::Fingerprint;
use headstream_plugin_host::{
    Asset, FailureKind, Head, HeadConfig, HostConfig, Item, Limits, PluginError, PluginHost,
};
use headstream_test_util::{plugin_path, safetensors_f32};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn host() -> PluginHost {
    PluginHost::new(HostConfig::default()).unwrap_or_else(|e| panic!("host: {e}"))
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

fn flags_head(host: &PluginHost) -> Head {
    let config = HeadConfig {
        config: json!({ "flags": { "urgent": ["asap", "right now"], "refund": ["refund"] } }),
        ..HeadConfig::default()
    };
    host.load(&plugin_path("keyword-flags"), config)
        .unwrap_or_else(|e| panic!("keyword-flags: {e}"))
}

fn hostile(host: &PluginHost, mode: &str, limits: Limits) -> Head {
    let config = HeadConfig {
        config: json!({ "mode": mode }),
        limits,
        ..HeadConfig::default()
    };
    host.load(&plugin_path("hostile"), config)
        .unwrap_or_else(|e| panic!("hostile {mode}: {e}"))
}

#[test]
fn rule_based_head_flags_keywords() {
    let host = host();
    let head = flags_head(&host);
    assert_eq!(head.id(), "keyword-flags@0.1.0");
    let e = [0.0f32; 4];
    let out = head.run(&[
        item("1", "I need a REFUND right now!", &e),
        item("2", "all good", &e),
    ]);
    assert_eq!(out[0], Ok(json!({ "flags": ["refund", "urgent"] })));
    assert_eq!(out[1], Ok(json!({ "flags": [] })));
}

/// A 3-label linear head over 4-d embeddings, with weights we can check by hand.
fn linear_config(threshold: Option<f32>) -> HeadConfig {
    let weight = [2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0];
    let bias = [0.0, 0.5, 0.0];
    let weights = safetensors_f32(&[("weight", &[3, 4], &weight), ("bias", &[3], &bias)]);
    let mut config = json!({ "labels": ["negative", "neutral", "positive"] });
    if let Some(t) = threshold {
        config["threshold"] = json!(t);
    }
    HeadConfig {
        config,
        assets: vec![Asset {
            name: "weights".into(),
            data: weights,
        }],
        ..HeadConfig::default()
    }
}

#[test]
fn linear_classifier_computes_softmax_of_the_layer() {
    let host = host();
    let head = host
        .load(&plugin_path("linear-classifier"), linear_config(None))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = [0.1f32, 0.2, 0.9, 0.0];
    let out = head.run(&[item("a", "text", &e)]);
    let Ok(result) = &out[0] else {
        panic!("{:?}", out[0])
    };
    // logits = [0.2, 0.9, 1.8]
    let logits = [0.2f64, 0.9, 1.8];
    let z: f64 = logits.iter().map(|l| l.exp()).sum();
    let expected: Vec<f64> = logits.iter().map(|l| l.exp() / z).collect();
    assert_eq!(result["label"], "positive");
    for (label, p) in ["negative", "neutral", "positive"].iter().zip(&expected) {
        let got = result["scores"][label].as_f64().unwrap_or(f64::NAN);
        assert!((got - p).abs() < 1e-6, "{label}: {got} vs {p}");
    }
    // A wrong-sized embedding is the head's typed error, not a crash.
    let short = [1.0f32; 3];
    let out = head.run(&[item("b", "text", &short)]);
    let Err(failure) = &out[0] else {
        panic!("{:?}", out[0])
    };
    assert_eq!(failure.kind, FailureKind::InvalidInput);
    assert!(failure.message.contains("3 values"), "{failure}");
}

#[test]
fn linear_classifier_abstains_below_threshold() {
    let host = host();
    let head = host
        .load(&plugin_path("linear-classifier"), linear_config(Some(0.9)))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = [0.1f32, 0.2, 0.3, 0.0];
    let out = head.run(&[item("a", "text", &e)]);
    assert_eq!(
        out[0].as_ref().map(|r| r["label"].clone()),
        Ok(json!("abstain"))
    );
}

#[test]
fn bad_head_config_fails_at_load_with_the_reason() {
    let host = host();
    let mut missing = linear_config(None);
    missing.assets.clear();
    let err = host
        .load(&plugin_path("linear-classifier"), missing)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("head linear-classifier: config: missing asset: weights")
    );

    let mut wrong_labels = linear_config(None);
    wrong_labels.config = json!({ "labels": ["a", "b"] });
    let err = host
        .load(&plugin_path("linear-classifier"), wrong_labels)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("head linear-classifier: config: invalid config: 2 labels for a layer with 3 outputs")
    );

    let config = HeadConfig {
        config: json!({ "mode": "config-fails" }),
        ..HeadConfig::default()
    };
    let err = host
        .load(&plugin_path("hostile"), config)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("always rejects its config"), "{err}");
}

/// Runs a hostile head and a good head over the same batch: the hostile one fails with
/// `kind`, the good one answers, and the hostile one recovers on a clean batch.
fn contained(mode: &str, kind: FailureKind, message: &str) {
    let host = host();
    let limits = Limits {
        // Short for the infinite loop; generous otherwise, so that on a loaded machine the other
        // behaviours hit their own limit before the CPU deadline.
        deadline: Duration::from_millis(if mode == "loop" { 50 } else { 2_000 }),
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    let bad = hostile(&host, mode, limits);
    let good = flags_head(&host);
    let e = [0.0f32; 4];
    let batch = [item("1", "boom, refund please", &e), item("2", "fine", &e)];
    let bad_out = bad.run(&batch);
    let good_out = good.run(&batch);
    assert_eq!(
        good_out[0],
        Ok(json!({ "flags": ["refund"] })),
        "{mode}: the good head still answers"
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
            other => {
                panic!("{mode}: item {i}: expected {kind:?} containing {message:?}, got {other:?}")
            }
        }
    }
    // The head is not switched off by one bad batch and works again on clean input.
    let clean = bad.run(&[item("3", "calm", &e)]);
    assert_eq!(
        clean[0],
        Ok(json!({ "len": 4 })),
        "{mode}: recovers after the failure"
    );
}

#[test]
fn infinite_loop_hits_the_deadline() {
    contained("loop", FailureKind::Timeout, "CPU deadline");
}

#[test]
fn memory_bomb_hits_the_cap() {
    contained("memory", FailureKind::MemoryLimit, "memory cap");
}

#[test]
fn deep_recursion_overflows_the_stack() {
    contained("recursion", FailureKind::StackOverflow, "stack");
}

#[test]
fn panic_is_reported_with_its_message() {
    contained(
        "panic",
        FailureKind::Trap,
        "hostile head panicked on purpose",
    );
}

#[test]
fn huge_output_is_refused() {
    contained(
        "huge-output",
        FailureKind::OutputTooLarge,
        "the limit is 65536",
    );
}

#[test]
fn wrong_result_count_is_malformed() {
    contained(
        "wrong-count",
        FailureKind::MalformedOutput,
        "returned 0 results for a batch of 2",
    );
}

#[test]
fn invalid_json_output_is_malformed() {
    contained("bad-json", FailureKind::MalformedOutput, "not JSON");
}

#[test]
fn entity_outside_the_text_is_malformed() {
    contained(
        "bad-span",
        FailureKind::MalformedOutput,
        "not a valid byte range",
    );
}

#[test]
fn head_that_keeps_failing_is_switched_off() {
    let host = host();
    let limits = Limits {
        max_consecutive_failures: 3,
        ..Limits::default()
    };
    let bad = hostile(&host, "panic", limits);
    let e = [0.0f32; 4];
    for _ in 0..3 {
        assert_eq!(
            bad.run(&[item("1", "boom", &e)])[0]
                .as_ref()
                .map_err(|f| f.kind),
            Err(FailureKind::Trap)
        );
    }
    assert!(bad.is_disabled());
    let out = bad.run(&[item("2", "calm", &e)]);
    let Err(f) = &out[0] else { panic!("{out:?}") };
    assert_eq!(f.kind, FailureKind::Disabled);
    assert!(
        f.message.contains("hostile@0.1.0") && f.message.contains("3 failed batches"),
        "{f}"
    );
}

#[test]
fn plugins_see_no_environment_time_or_entropy() {
    let e = [0.0f32; 4];
    let mut seen = Vec::new();
    // Two separate hosts, so nothing is shared between the two probes but the sandbox itself.
    for _ in 0..2 {
        let host = host();
        let head = hostile(&host, "probe", Limits::default());
        let out = head.run(&[item("1", "boom", &e)]);
        let Ok(probe) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(probe["env"], json!([]), "no environment: {probe}");
        assert_eq!(probe["args"], json!([]), "no arguments: {probe}");
        assert_eq!(probe["stdin_bytes"], 0, "empty stdin: {probe}");
        assert_eq!(
            probe["wall_clock_s"], 0.0,
            "the wall clock is frozen: {probe}"
        );
        assert_eq!(
            probe["monotonic_elapsed_s"], 0.0,
            "the monotonic clock is frozen: {probe}"
        );
        seen.push(probe["random_hash"].clone());
    }
    // std seeds HashMap keys from the platform's randomness: with none, every instance
    // hashes alike.
    assert_eq!(seen[0], seen[1], "randomness is not observable");
}

#[test]
fn plugin_importing_files_or_sockets_is_refused_naming_the_import() {
    let err = host()
        .load(&plugin_path("hostile-wasi"), HeadConfig::default())
        .err();
    let Some(PluginError::DisallowedImport { import, .. }) = &err else {
        panic!("{err:?}")
    };
    assert!(
        import.starts_with("wasi:sockets/") || import.starts_with("wasi:filesystem/preopens"),
        "{import}"
    );
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("does not grant")
    );
}

#[test]
fn plugin_for_another_contract_version_is_refused() {
    let err = host()
        .load(&plugin_path("hostile-wit"), HeadConfig::default())
        .err();
    assert!(matches!(err, Some(PluginError::Contract { .. })), "{err:?}");
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("headstream:plugin/head@0.1"), "{msg}");
}

#[test]
fn bloated_self_description_is_refused() {
    // A 1 MiB version would ride in every result (`name@version`), 100,000 labels in every
    // description the host shows.
    let err = host()
        .load(&plugin_path("hostile-describe"), HeadConfig::default())
        .err();
    let Some(PluginError::Setup { failure, .. }) = err else {
        panic!("expected a setup failure, got {err:?}");
    };
    assert_eq!(failure.kind, FailureKind::MalformedOutput, "{failure}");
    assert!(
        failure.message.contains("version that is not 1 to 64"),
        "{failure}"
    );
    assert!(
        failure.message.len() < 512,
        "{} bytes",
        failure.message.len()
    );
}

#[test]
fn long_error_messages_are_cut() {
    let host = host();
    let head = hostile(&host, "long-error", Limits::default());
    let e = [0.0f32; 4];
    let out = head.run(&[item("1", "boom", &e), item("2", "fine", &e)]);
    let Err(failure) = &out[0] else {
        panic!("expected a failure: {:?}", out[0]);
    };
    assert_eq!(failure.kind, FailureKind::HeadError);
    assert!(
        failure.message.len() <= 1100,
        "{} bytes",
        failure.message.len()
    );
    assert!(
        failure.message.ends_with("more bytes cut]"),
        "{}",
        failure.message
    );
    assert_eq!(out[1], Ok(json!({ "len": 4 })));
}

#[test]
fn corrupt_component_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("corrupt.wasm");
    let mut bytes = std::fs::read(plugin_path("keyword-flags"))?;
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, bytes)?;
    let err = host().load(&file, HeadConfig::default()).err();
    assert!(matches!(err, Some(PluginError::Invalid { .. })), "{err:?}");
    Ok(())
}

#[test]
fn sha256_pin_is_enforced() -> TestResult {
    let host = host();
    let path = plugin_path("keyword-flags");
    let digest = sha256_hex(&std::fs::read(&path)?);
    let pinned = HeadConfig {
        sha256: Some(digest.clone()),
        config: json!({ "flags": {} }),
        ..HeadConfig::default()
    };
    let head = host.load(&path, pinned)?;
    assert_eq!(head.digest(), digest);
    let wrong = HeadConfig {
        sha256: Some("0".repeat(64)),
        config: json!({ "flags": {} }),
        ..HeadConfig::default()
    };
    let err = host.load(&path, wrong).err();
    assert!(
        matches!(err, Some(PluginError::DigestMismatch { .. })),
        "{err:?}"
    );
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn head_trained_on_another_encoder_is_refused() -> TestResult {
    let running = Fingerprint::parse(&format!("all-minilm-l6-v2@sha256:{}", "a".repeat(64)))
        .ok_or("fingerprint")?;
    let host = PluginHost::new(HostConfig {
        encoder: Some(running.clone()),
        ..HostConfig::default()
    })?;
    let mut other = linear_config(None);
    other.encoder = Some(format!("other-model@sha256:{}", "b".repeat(64)));
    let err = host.load(&plugin_path("linear-classifier"), other).err();
    assert!(
        matches!(err, Some(PluginError::EncoderMismatch { .. })),
        "{err:?}"
    );
    let mut same = linear_config(None);
    same.encoder = Some(running.to_string());
    host.load(&plugin_path("linear-classifier"), same)?;
    Ok(())
}

#[test]
fn compiled_components_are_cached_on_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = || HostConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..HostConfig::default()
    };
    let flags = || HeadConfig {
        config: json!({ "flags": { "x": ["x"] } }),
        ..HeadConfig::default()
    };
    PluginHost::new(config())?.load(&plugin_path("keyword-flags"), flags())?;
    let cached: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].extension().is_some_and(|e| e == "cwasm"));
    // A second host loads from the cache; a corrupt cache entry falls back to compiling.
    let e = [0.0f32; 1];
    let head = PluginHost::new(config())?.load(&plugin_path("keyword-flags"), flags())?;
    assert_eq!(
        head.run(&[item("1", "x", &e)])[0],
        Ok(json!({ "flags": ["x"] }))
    );
    std::fs::write(&cached[0], b"garbage")?;
    let head = PluginHost::new(config())?.load(&plugin_path("keyword-flags"), flags())?;
    assert_eq!(
        head.run(&[item("1", "x", &e)])[0],
        Ok(json!({ "flags": ["x"] }))
    );
    Ok(())
}

#[test]
fn template_head_works_as_shipped() {
    let host = host();
    let head = host
        .load(&plugin_path("template"), HeadConfig::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        head.description().labels,
        vec!["question".to_owned(), "statement".to_owned()]
    );
    let e = [0.5f32; 2];
    let out = head.run(&[
        item("1", "Is it raining? ", &e),
        item("2", "It is raining.", &e),
    ]);
    assert_eq!(
        out[0].as_ref().map(|r| r["label"].clone()),
        Ok(json!("question"))
    );
    assert_eq!(
        out[1].as_ref().map(|r| r["label"].clone()),
        Ok(json!("statement"))
    );
}

/// Published contract versions must not change: 0.1.0 lives on in `wit/deps/` exactly as it
/// was published, and 0.2.0 is `wit/plugin.wit`. To evolve the contract, copy the current file
/// to `wit/deps/headstream-plugin-<version>/`, bump the version in `wit/plugin.wit`, and add
/// its digest here.
#[test]
fn published_wit_is_frozen() -> TestResult {
    let root = headstream_test_util::workspace_root().join("wit");
    for (file, version, digest) in [
        (
            "deps/headstream-plugin-0.1.0/plugin.wit",
            "0.1.0",
            "2f90102c9de3cdfdb38c53efa392ba0a6fa5bdbf555d62a9d18f9ee4a25b5297",
        ),
        (
            "plugin.wit",
            "0.2.0",
            "c9979d506be4497bac929092794255511671a47da3a76cc2baf0cde1315e7c74",
        ),
    ] {
        let text = std::fs::read(root.join(file))?;
        let package = format!("package headstream:plugin@{version};");
        assert!(String::from_utf8_lossy(&text).contains(&package), "{file}");
        assert_eq!(
            sha256_hex(&text),
            digest,
            "wit/{file} changed, but headstream:plugin@{version} is published and frozen"
        );
    }
    Ok(())
}

/// Writes a linear-classifier package trained (by hand) on the encoder `fingerprint`.
fn write_package(
    dir: &std::path::Path,
    fingerprint: &str,
) -> Result<headstream_package::Package, Box<dyn std::error::Error>> {
    let config = linear_config(None);
    let manifest = headstream_package::Manifest {
        format: headstream_package::FORMAT,
        name: "sentiment".into(),
        version: "1.0.0".into(),
        kind: headstream_package::Kind::Classify,
        labels: vec!["negative".into(), "neutral".into(), "positive".into()],
        encoder: Some(fingerprint.into()),
        component: headstream_package::FileRef {
            file: String::new(),
            sha256: String::new(),
        },
        assets: Default::default(),
        config: config.config,
        training: None,
        metrics: None,
        approved_encoders: Vec::new(),
    };
    let component = std::fs::read(plugin_path("linear-classifier"))?;
    let weights = &config.assets[0].data;
    Ok(headstream_package::write(
        dir,
        manifest,
        &component,
        &[("weights", "weights.safetensors", weights)],
    )?)
}

#[test]
fn packages_load_on_their_encoder_and_are_refused_on_another() -> TestResult {
    let running = Fingerprint::parse(&format!("all-minilm-l6-v2@sha256:{}", "a".repeat(64)))
        .ok_or("fingerprint")?;
    let host = PluginHost::new(HostConfig {
        encoder: Some(running.clone()),
        ..HostConfig::default()
    })?;
    let dir = tempfile::tempdir()?;
    let same = write_package(&dir.path().join("same"), &running.to_string())?;
    let head = host.load_package(&same, &json!({ "threshold": 0.99 }), Limits::default())?;
    let e = [0.1f32, 0.2, 0.9, 0.0];
    let out = head.run(&[item("a", "text", &e)]);
    // The manifest's labels and weights, with the pipeline's threshold on top.
    assert_eq!(
        out[0].as_ref().ok().map(|v| v["label"].clone()),
        Some(json!("abstain"))
    );

    let other = write_package(
        &dir.path().join("other"),
        &format!("other-model@sha256:{}", "b".repeat(64)),
    )?;
    let err = host
        .load_package(&other, &json!({}), Limits::default())
        .err();
    assert!(
        matches!(&err, Some(PluginError::EncoderMismatch { expected, .. }) if expected.starts_with("other-model@")),
        "{err:?}"
    );
    let err = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("was built for encoder other-model@sha256:"),
        "{err}"
    );
    Ok(())
}

/// The hostile head in `layers` mode, asking for `pooled` and `tokens` layers.
fn layers_head(host: &PluginHost, pooled: &[u32], tokens: &[u32]) -> Result<Head, PluginError> {
    let config = HeadConfig {
        config: json!({ "mode": "layers", "pooled": pooled, "tokens": tokens }),
        ..HeadConfig::default()
    };
    host.load(&plugin_path("hostile"), config)
}

fn layer(layer: u32, pooled: Option<f32>, tokens: Option<f32>) -> headstream_encoder::LayerOutput {
    headstream_encoder::LayerOutput {
        layer,
        pooled: pooled.map(|v| vec![v; 4]),
        tokens: tokens.map(|v| vec![v; 8]),
    }
}

#[test]
fn a_head_gets_the_layers_it_asks_for_in_its_order() -> TestResult {
    let host = host();
    let head = layers_head(&host, &[3, 1], &[2])?;
    assert_eq!(head.contract(), "0.2.0");
    assert_eq!(head.inputs().pooled_layers, [3, 1]);
    assert_eq!(head.inputs().token_layers, [2]);
    let e = [0.5f32; 4];
    // Two tokens of width 4; the encoder gave more layers than the head asked for.
    let layers = [
        layer(1, Some(1.0), None),
        layer(2, Some(9.0), Some(2.0)),
        layer(3, Some(3.0), Some(9.0)),
    ];
    let states = [0.0f32; 8];
    let text = "hi there";
    let item = Item {
        token_states: Some(headstream_plugin_host::TokenStates {
            ids: &[1, 2],
            offsets: &[(0, 2), (3, 8)],
            states: &states,
            hidden_size: 4,
        }),
        layers: &layers,
        ..item("a", text, &e)
    };
    let out = head.run(&[item.clone(), item]);
    let want = json!({ "pooled": [[4, 3], [4, 1]], "tokens": [[8, 2]], "token_count": 2, "layers_given": 2 });
    assert_eq!(out, vec![Ok(want.clone()), Ok(want)]);
    Ok(())
}

#[test]
fn a_layer_the_host_did_not_encode_fails_the_batch_naming_it() -> TestResult {
    let host = host();
    let head = layers_head(&host, &[5], &[])?;
    let e = [0.5f32; 4];
    let out = head.run(&[item("a", "text", &e)]);
    let Err(failure) = &out[0] else {
        panic!("expected a failure, got {out:?}");
    };
    assert_eq!(failure.kind, FailureKind::InvalidInput);
    assert!(
        failure.message.contains("pooled states of layer 5"),
        "{failure}"
    );
    Ok(())
}

#[test]
fn asking_past_the_layer_budget_fails_the_load() {
    let host = host();
    for (pooled, tokens, says) in [
        (
            &[][..],
            &[0, 1, 2, 3, 4][..],
            "asks for 5 layers of per-token states; a head may ask for at most 4",
        ),
        (
            &[2, 2][..],
            &[][..],
            "asks for the pooled states of layer 2 twice",
        ),
    ] {
        let err = layers_head(&host, pooled, tokens).err();
        let Some(PluginError::Setup { failure, .. }) = &err else {
            panic!("expected a setup failure, got {err:?}");
        };
        assert_eq!(failure.kind, FailureKind::Config);
        assert!(failure.message.contains(says), "{failure}");
    }
    // Every layer pooled is within budget (the encoder then checks it has them).
    let all: Vec<u32> = (0..=6).collect();
    assert!(layers_head(&host, &all, &[3, 4, 5, 6]).is_ok());
}

#[test]
fn a_contract_0_1_0_component_loads_and_answers_as_the_0_2_0_build_does() -> TestResult {
    // The sentiment head of 1.0.0 (kept in tests/fixtures/packages-1.0) ships a
    // linear-classifier built against 0.1.0; the one in plugins/ is now built against 0.2.0.
    // Same weights, same answers.
    let root = headstream_test_util::workspace_root();
    let old_package = root.join("tests/fixtures/packages-1.0/sentiment");
    let weights = std::fs::read(old_package.join("weights.safetensors"))?;
    let config = || HeadConfig {
        config: json!({ "labels": ["negative", "positive"] }),
        assets: vec![Asset {
            name: "weights".into(),
            data: weights.clone(),
        }],
        ..HeadConfig::default()
    };
    let host = host();
    let old_path = old_package.join("head.wasm");
    let old_bytes = std::fs::read(&old_path)?;
    let old = host.load_bytes(&old_path, &old_bytes, config())?;
    let new = host.load(&plugin_path("linear-classifier"), config())?;
    assert_eq!(old.contract(), "0.1.0");
    assert_eq!(new.contract(), "0.2.0");
    assert!(old.inputs().is_empty() && new.inputs().is_empty());
    let embeddings: Vec<Vec<f32>> = (0..4)
        .map(|k| {
            (0..384)
                .map(|i| ((i * 7 + k * 13) % 17) as f32 / 17.0 - 0.5)
                .collect()
        })
        .collect();
    let items: Vec<Item<'_>> = embeddings
        .iter()
        .map(|e| item("x", "some text", e))
        .collect();
    let (a, b) = (old.run(&items), new.run(&items));
    assert!(a.iter().all(Result::is_ok), "{a:?}");
    assert_eq!(a, b);
    Ok(())
}
