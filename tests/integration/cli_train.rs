//! `headstream train` / `eval`: a tiny labelled set (our own sentences, tests/fixtures/train)
//! becomes a plugin package that evaluates as the trainer said, loads in the runtime through a
//! pipeline's `package = ...`, and reuses cached embeddings; tagged sentences become an entity
//! head; bad data files fail with their line number.

use std::path::Path;

use headstream_test_util::{fixture, plugin_path};
use serde_json::Value;

use crate::headstream;

fn json_out(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

fn s(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Trains the support-topic classifier of tests/fixtures/train into `package` (evaluated on the
/// test split, no embedding cache) with `extra` arguments; returns what `train` printed.
fn train_support(package: &Path, extra: &[&str]) -> Value {
    let component = plugin_path("linear-classifier");
    let (train, test) = (
        fixture("train/support_train.jsonl"),
        fixture("train/support_test.jsonl"),
    );
    let (train, test, out, component) = (s(&train), s(&test), s(package), s(&component));
    let mut args = vec![
        "train",
        "--kind",
        "classify",
        "--data",
        &train,
        "--eval",
        &test,
        "--out",
        &out,
        "--component",
        &component,
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    json_out(&headstream(&args, b""))
}

/// Checks that the trained head (evaluated through the plugin) got at least 7 of the 9
/// held-out texts right; returns its weights file's safetensors header.
fn held_out_and_header(trained: &Value, package: &Path) -> std::io::Result<String> {
    let accuracy = trained["metrics"]["accuracy"].as_f64().unwrap_or(0.0);
    assert!(
        accuracy >= 7.0 / 9.0,
        "held-out accuracy {accuracy}: {trained:#}"
    );
    let weights = std::fs::read(package.join("weights.safetensors"))?;
    Ok(String::from_utf8_lossy(&weights[8..]).into_owned())
}

/// A pipeline file in `dir` whose one head `head` is the package directory of that name.
fn package_pipeline(dir: &Path, head: &str) -> std::io::Result<std::path::PathBuf> {
    let pipeline = dir.join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "version = 1\nname = \"p\"\n[input]\nsubject = \"in\"\n[output]\nsubject = \"out\"\nerrors = \"err\"\n\
             [[heads]]\nname = \"{head}\"\npackage = \"{head}\"\n"
        ),
    )?;
    Ok(pipeline)
}

#[test]
fn a_tiny_classifier_trains_evaluates_and_serves() -> Result<(), Box<dyn std::error::Error>> {
    let component = plugin_path("linear-classifier");
    let dir = tempfile::tempdir()?;
    let (package, cache) = (dir.path().join("topic"), dir.path().join("cache"));
    let (train, test) = (
        fixture("train/support_train.jsonl"),
        fixture("train/support_test.jsonl"),
    );
    let trained = json_out(&headstream(
        &[
            "train",
            "--kind",
            "classify",
            "--data",
            &s(&train),
            "--eval",
            &s(&test),
            "--out",
            &s(&package),
            "--component",
            &s(&component),
            "--cache-dir",
            &s(&cache),
        ],
        b"",
    ));
    assert_eq!(trained["name"], "topic");
    assert_eq!(
        trained["labels"],
        serde_json::json!(["billing", "shipping", "technical"])
    );
    let accuracy = trained["metrics"]["accuracy"].as_f64().unwrap_or(0.0);
    assert!(
        accuracy >= 8.0 / 9.0,
        "held-out accuracy {accuracy}: {trained:#}"
    );
    assert_eq!(
        trained["hyperparameters"]["optimizer"]["converged"], true,
        "{trained:#}"
    );
    // By default cross-validation chose the features (the embedding or the top four layers)
    // and C, inside its search, and recorded every candidate's scores.
    let cv = &trained["hyperparameters"]["cross_validation"];
    let candidates = cv["candidates"].as_array().cloned().unwrap_or_default();
    assert_eq!(candidates.len(), 2, "{trained:#}");
    assert_eq!(candidates[0]["features"], "sentence embedding");
    assert_eq!(
        candidates[1]["features"]["pooled_layers"],
        serde_json::json!([3, 4, 5, 6])
    );
    for candidate in &candidates {
        let scores = candidate["scores"].as_array().cloned().unwrap_or_default();
        let c = candidate["c"].as_f64().unwrap_or(f64::NAN);
        // The chosen C has a scored neighbour on each side, or lies at a bound (and says so).
        let inside = scores.iter().any(|s| s["c"].as_f64() < Some(c))
            && scores.iter().any(|s| s["c"].as_f64() > Some(c));
        assert!(inside || candidate["at_grid_edge"] == true, "{candidate:#}");
    }
    let chosen = cv["chosen"].as_u64().unwrap_or(9) as usize;
    assert_eq!(
        trained["hyperparameters"]["features"], candidates[chosen]["features"],
        "{trained:#}"
    );
    assert_eq!(trained["hyperparameters"]["c"], candidates[chosen]["c"]);
    // 24 training + 9 test texts were encoded and cached.
    assert_eq!(trained["embedding_cache"]["misses"], 33, "{trained:#}");

    let manifest: Value = serde_json::from_slice(&std::fs::read(package.join("manifest.json"))?)?;
    assert!(
        manifest["encoder"]
            .as_str()
            .is_some_and(|e| e.starts_with("all-minilm-l6-v2@sha256:")),
        "{manifest:#}"
    );
    assert_eq!(manifest["kind"], "classify");
    assert_eq!(manifest["training"]["examples"], 24);
    assert_eq!(manifest["training"]["per_label"]["shipping"], 8);
    assert_eq!(
        manifest["training"]["data_sha256"].as_str(),
        Some(headstream_package::sha256_hex(&std::fs::read(&train)?).as_str())
    );
    assert_eq!(
        manifest["metrics"]["metrics"]["accuracy"],
        trained["metrics"]["accuracy"]
    );

    // `eval` on the written package gives the same figures, from the cache alone.
    let evaluated = json_out(&headstream(
        &[
            "eval",
            "--plugin",
            &s(&package),
            "--data",
            &s(&test),
            "--cache-dir",
            &s(&cache),
        ],
        b"",
    ));
    assert_eq!(evaluated["metrics"], trained["metrics"]);
    assert_eq!(evaluated["embedding_cache"]["misses"], 0, "{evaluated:#}");
    assert_eq!(evaluated["embedding_cache"]["hits"], 9, "{evaluated:#}");

    // The package serves in a pipeline like any plugin.
    let pipeline = package_pipeline(dir.path(), "topic")?;
    let run = headstream(
        &["run", "--pipeline", &s(&pipeline)],
        b"{\"id\":\"a\",\"text\":\"My parcel was sent to the wrong street\"}\n",
    );
    let result = json_out(&run);
    assert_eq!(
        result["results"]["topic"]["label"], "shipping",
        "{result:#}"
    );
    Ok(())
}

#[test]
fn a_tiny_tagger_learns_entities_as_spans() -> Result<(), Box<dyn std::error::Error>> {
    let component = plugin_path("token-classifier");
    let dir = tempfile::tempdir()?;
    let package = dir.path().join("entities");
    let data = fixture("train/entities.jsonl");
    let trained = json_out(&headstream(
        &[
            "train",
            "--kind",
            "tokens",
            "--data",
            &s(&data),
            "--eval",
            &s(&data),
            "--out",
            &s(&package),
            "--component",
            &s(&component),
            "--no-cache",
            "--dev",
            &s(&data),
        ],
        b"",
    ));
    assert_eq!(
        trained["labels"],
        serde_json::json!(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    );
    // The defaults: the last four layers' states, BIO-constrained Viterbi decoding, C chosen
    // by entity F1 on the dev split (inside what the search scored).
    let h = &trained["hyperparameters"];
    assert_eq!(
        h["features"]["layers"],
        serde_json::json!([3, 4, 5, 6]),
        "{h:#}"
    );
    assert_eq!(h["decode"], "viterbi");
    let scores = h["c_search"]["scores"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(scores.len() >= 3, "{h:#}");
    let config: Value = serde_json::from_slice(&std::fs::read(package.join("manifest.json"))?)?;
    assert_eq!(config["config"]["decode"], "viterbi");
    assert_eq!(config["config"]["layers"], serde_json::json!([3, 4, 5, 6]));
    // A linear head on token states fits its own 12 sentences (22 entities) almost perfectly.
    let f1 = trained["metrics"]["overall"]["f1"].as_f64().unwrap_or(0.0);
    assert!(f1 >= 0.9, "training-set entity F1 {f1}: {trained:#}");
    assert_eq!(trained["metrics"]["overall"]["support"], 22, "{trained:#}");
    // The packaged plugin, run by the host over the same sentences, scores exactly what the
    // trainer measured natively on its own feature rows: the plugin asks for the same layers,
    // groups words, builds features, reads the weights and decodes paths and spans as
    // training did.
    assert_eq!(trained["metrics"], trained["fit"], "{trained:#}");
    Ok(())
}

#[test]
fn bad_training_data_names_its_line_and_writes_nothing() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"text\":\"fine\",\"label\":\"a\"}\n{\"text\":\"no label\"}\n",
    )?;
    let out = dir.path().join("pkg");
    let run = headstream(
        &[
            "train",
            "--kind",
            "classify",
            "--data",
            &s(&data),
            "--out",
            &s(&out),
            "--no-cache",
            "--component",
            &s(&plugin_path("linear-classifier")),
        ],
        b"",
    );
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("bad.jsonl:2: no `label` field"), "{stderr}");
    assert!(!out.exists());

    std::fs::write(
        &data,
        "{\"text\":\"one\",\"label\":\"a\"}\n{\"text\":\"two\",\"label\":\"a\"}\n",
    )?;
    let run = headstream(
        &[
            "train",
            "--kind",
            "classify",
            "--data",
            &s(&data),
            "--out",
            &s(&out),
            "--no-cache",
            "--component",
            &s(&plugin_path("linear-classifier")),
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("every example is labelled \"a\""),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_head_over_several_layers_trains_evaluates_and_serves() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let package = dir.path().join("layered");
    let trained = train_support(&package, &["--layers", "3,6", "--c", "1"]);
    assert_eq!(
        trained["hyperparameters"]["features"]["pooled_layers"],
        serde_json::json!([3, 6]),
        "{trained:#}"
    );
    // Evaluated through the plugin, which asked the host for layers 3 and 6 and applied the
    // weights (with the standardisation folded in) to their concatenation.
    let header = held_out_and_header(&trained, &package)?;
    assert!(header.contains("\"pooled_layers\":\"3,6\""), "{header}");
    // Two layers of 384: the weights read 768 features.
    assert!(header.contains(",768]"), "{header}");
    // Served from a pipeline: the runner encodes the layers the head asks for.
    let pipeline = package_pipeline(dir.path(), "layered")?;
    let run = headstream(
        &["run", "--pipeline", &s(&pipeline)],
        b"{\"id\":\"1\",\"text\":\"I was charged twice for my subscription\"}\n",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let record: Value = serde_json::from_slice(&run.stdout)?;
    let labels = trained["labels"].as_array().cloned().unwrap_or_default();
    assert!(
        labels.contains(&record["results"]["layered"]["label"]),
        "{record}"
    );
    Ok(())
}

#[test]
fn a_small_mlp_head_trains_and_runs_in_the_linear_classifier()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let package = dir.path().join("mlp");
    let trained = train_support(&package, &["--hidden", "16", "--c", "10"]);
    let model = trained["hyperparameters"]["model"]
        .as_str()
        .unwrap_or_default();
    assert!(model.starts_with("MLP: 16 ReLU units"), "{trained:#}");
    // Evaluated through the plugin, so the component ran the hidden layer.
    let header = held_out_and_header(&trained, &package)?;
    assert!(header.contains("hidden.weight"), "{header}");
    Ok(())
}

#[test]
fn an_int8_host_serves_an_f32_head_only_once_eval_approved_it()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let package = dir.path().join("topic");
    let test = fixture("train/support_test.jsonl");
    train_support(&package, &[]);
    let pipeline = package_pipeline(dir.path(), "topic")?;
    let message = b"{\"id\":\"a\",\"text\":\"My parcel was sent to the wrong street\"}\n";
    let run_int8 = || {
        headstream(
            &["run", "--precision", "int8", "--pipeline", &s(&pipeline)],
            message,
        )
    };

    // Trained on the f32 encoder: the int8 host refuses it, naming both encoders.
    let refused = run_int8();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("+int8@sha256:") && stderr.contains(trained_encoder(&package)?.as_str()),
        "{stderr}"
    );

    let (package_arg, test_arg) = (s(&package), s(&test));
    let train_arg = s(&fixture("train/support_train.jsonl"));
    let approve = |data: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--precision",
            "int8",
            "--plugin",
            &package_arg,
            "--data",
            data,
            "--no-cache",
            "--approve",
        ];
        args.extend_from_slice(extra);
        headstream(&args, b"")
    };
    // An approval on other data than the package's own metrics is refused and records nothing;
    // so is a drop limit that is not a share.
    let elsewhere = approve(&train_arg, &[]);
    assert!(!elsewhere.status.success());
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(stderr.contains("measured on other data"), "{stderr}");
    let bad_limit = approve(&test_arg, &["--max-drop=-1"]);
    let stderr = String::from_utf8_lossy(&bad_limit.stderr);
    assert!(
        stderr.contains("is not a share between 0 and 1"),
        "{stderr}"
    );
    assert!(!run_int8().status.success());

    // Evaluated on int8 and approved: the manifest lists the int8 encoder and the host serves it.
    let approved = json_out(&approve(&test_arg, &[]));
    assert!(
        approved["encoder"]
            .as_str()
            .is_some_and(|e| e.contains("+int8@sha256:")),
        "{approved:#}"
    );
    let drop = approved["approved"]["drop"].as_f64().unwrap_or(1.0);
    assert!(drop <= 0.01, "{approved:#}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(package.join("manifest.json"))?)?;
    assert_eq!(
        manifest["approved_encoders"][0]["encoder"], approved["encoder"],
        "{manifest:#}"
    );
    let result = json_out(&run_int8());
    assert_eq!(
        result["results"]["topic"]["label"], "shipping",
        "{result:#}"
    );
    assert_eq!(result["encoder"], approved["encoder"]);
    Ok(())
}

/// The encoder fingerprint a package was trained on.
fn trained_encoder(package: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let manifest: Value = serde_json::from_slice(&std::fs::read(package.join("manifest.json"))?)?;
    Ok(manifest["encoder"].as_str().unwrap_or_default().to_owned())
}

/// Whether `got` matches `want`: equal, except numbers within 1e-4 (batch composition moves
/// encoder outputs by ~1e-6).
fn close(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => {
            (a.as_f64().unwrap_or(f64::NAN) - b.as_f64().unwrap_or(f64::NAN)).abs() < 1e-4
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| close(v, w)))
        }
        _ => got == want,
    }
}

#[test]
fn packages_trained_on_the_last_layer_score_as_they_did() -> Result<(), Box<dyn std::error::Error>>
{
    // The 1.0.0 sentiment and entities heads (last-layer features, contract 0.1.0 components,
    // greedy entity decoding), and what they answered when they shipped.
    let dir = fixture("packages-1.0");
    let texts = std::fs::read(dir.join("texts.jsonl"))?;
    let run = crate::headstream_env(
        &["run", "--pipeline", &s(&dir.join("pipeline.toml"))],
        &[("HEADSTREAM_REGISTRY", &s(&dir))],
        &texts,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let expected = std::fs::read_to_string(dir.join("expected.jsonl"))?;
    let got: Vec<Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let want: Vec<Value> = expected
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["id"], w["id"]);
        assert_eq!(g["heads"], w["heads"], "{g:#}");
        assert!(close(&g["results"], &w["results"]), "got {g:#}\nwant {w:#}");
    }
    Ok(())
}

#[test]
fn few_shot_heads_read_the_top_four_layers_at_the_measured_c()
-> Result<(), Box<dyn std::error::Error>> {
    // `--shots` fixes the recipe that measured best at 8 shots (heads/README.md): the top four
    // layers, C = 0.01, the label names as examples; the packaged head asks for those layers.
    let dir = tempfile::tempdir()?;
    let package = dir.path().join("few");
    let trained = json_out(&headstream(
        &[
            "train",
            "--kind",
            "classify",
            "--data",
            &s(&fixture("train/support_train.jsonl")),
            "--eval",
            &s(&fixture("train/support_test.jsonl")),
            "--shots",
            "4",
            "--out",
            &s(&package),
        ],
        b"",
    ));
    let h = &trained["hyperparameters"];
    assert_eq!(
        h["features"]["pooled_layers"],
        serde_json::json!([3, 4, 5, 6]),
        "{trained:#}"
    );
    assert_eq!(h["c"], 0.01, "{trained:#}");
    assert_eq!(h["label_names"]["weight"], 2.0, "{trained:#}");
    assert_eq!(h["cross_validation"], Value::Null, "{trained:#}");
    assert_eq!(trained["examples"], 12, "{trained:#}");
    assert!(
        trained["metrics"]["accuracy"].as_f64().is_some(),
        "{trained:#}"
    );
    Ok(())
}
