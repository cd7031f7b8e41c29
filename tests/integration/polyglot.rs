//! Heads in Python and JavaScript through the command line, as a user meets them:
//! `new-head --lang python|js` scaffolds a head that `plugins/build.sh` builds and `run` runs;
//! `train --component` packages a trained Python head, `package` a written JavaScript head, and
//! one pipeline runs both beside a Rust head.

use std::path::{Path, PathBuf};
use std::process::Output;

use headstream_test_util::{script_head, workspace_root};
use serde_json::{Value, json};

use crate::headstream;

fn build(dir: &Path, out: &Path) {
    let run = std::process::Command::new(workspace_root().join("plugins/build.sh"))
        .arg(dir)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("plugins/build.sh: {e}"));
    assert!(
        run.status.success(),
        "plugins/build.sh {}: {}",
        dir.display(),
        String::from_utf8_lossy(&run.stderr)
    );
}

fn records(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn pipeline(dir: &Path, heads: &str) -> PathBuf {
    let file = dir.join("pipeline.toml");
    let text = format!(
        "version = 1\nname = \"poly\"\n[input]\nsubject = \"poly.in\"\n[output]\nsubject = \"poly.out\"\nerrors = \"poly.errors\"\n{heads}"
    );
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    file
}

#[test]
fn new_head_scaffolds_python_and_javascript_heads_that_build_and_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap_or_else(|e| panic!("{e}"));
    // A JavaScript head imports the SDK by a relative path, as in the repository's plugins/.
    std::os::unix::fs::symlink(
        workspace_root().join("plugins/sdk-js"),
        plugins.join("sdk-js"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = plugins.to_string_lossy();
    for (name, lang) in [("asker-py", "python"), ("asker-js", "js")] {
        let out = headstream(&["new-head", name, "--lang", lang, "--dir", &p], b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("build.sh"),
            "says how to build it"
        );
        let file = plugins
            .join(name)
            .join(if lang == "js" { "head.js" } else { "app.py" });
        let source = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
        let class = if lang == "js" { "AskerJs" } else { "AskerPy" };
        assert!(
            source.contains(&format!("`{name}`:")) && source.contains(&format!("class {class}")),
            "the head is named for itself: {source}"
        );
        assert!(!source.contains("Template"), "{source}");
        let wasm = dir.path().join(format!("{name}.wasm"));
        build(&plugins.join(name), &wasm);
        let file = pipeline(
            dir.path(),
            &format!(
                "[[heads]]\nname = \"q\"\ncomponent = \"{}\"\n",
                wasm.display()
            ),
        );
        let input =
            b"{\"id\":\"1\",\"text\":\"Is it open?\"}\n{\"id\":\"2\",\"text\":\"It is open.\"}\n";
        let out = records(&crate::headstream_ok(
            &["run", "--pipeline", &file.to_string_lossy()],
            input,
        ));
        assert_eq!(out.len(), 2, "{lang}");
        assert_eq!(out[0]["heads"]["q"], format!("{name}@0.1.0"), "{lang}");
        assert_eq!(
            out[0]["results"]["q"]["label"], "question",
            "{lang}: {}",
            out[0]
        );
        assert_eq!(
            out[1]["results"]["q"]["label"], "statement",
            "{lang}: {}",
            out[1]
        );
        let again = headstream(&["new-head", name, "--lang", lang, "--dir", &p], b"");
        assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    }
    // A JavaScript head outside a checkout has no SDK to import: said, not scaffolded.
    let bare = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = headstream(
        &[
            "new-head",
            "lost",
            "--lang",
            "js",
            "--dir",
            &bare.path().to_string_lossy(),
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sdk-js"));
}

/// Packages of the example heads: `support-rules` (plugins/rules-classifier, Python, trained
/// on the support fixture) and `pii-flags` (plugins/pii-flags, JavaScript, written).
pub(crate) fn script_packages(dir: &Path) -> (PathBuf, PathBuf) {
    let root = workspace_root();
    let rules = dir.join("support-rules");
    let summary: Value = serde_json::from_str(&crate::headstream_ok(
        &[
            "train",
            "--kind",
            "classify",
            "--data",
            &root
                .join("tests/fixtures/train/support_train.jsonl")
                .to_string_lossy(),
            "--eval",
            &root
                .join("tests/fixtures/train/support_test.jsonl")
                .to_string_lossy(),
            "--component",
            &script_head("rules-classifier").to_string_lossy(),
            "--name",
            "support-rules",
            "--out",
            &rules.to_string_lossy(),
        ],
        b"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let accuracy = summary["metrics"]["accuracy"].as_f64().unwrap_or_default();
    assert!(accuracy >= 0.85, "the Python head evaluates: {summary}");
    let pii = dir.join("pii-flags");
    let summary: Value = serde_json::from_str(&crate::headstream_ok(
        &[
            "package",
            &script_head("pii-flags").to_string_lossy(),
            "--out",
            &pii.to_string_lossy(),
        ],
        b"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["runtime"], "javascript", "{summary}");
    assert_eq!(summary["kind"], "tokens", "{summary}");
    assert_eq!(
        summary["encoder"],
        Value::Null,
        "a rules head works on any encoder"
    );
    (rules, pii)
}

#[test]
fn python_and_javascript_packages_run_beside_a_rust_head() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (rules, pii) = script_packages(dir.path());
    let heads = format!(
        r#"[[heads]]
name = "flags"
builtin = "keyword-flags"
[heads.config.flags]
urgent = ["asap"]
[[heads]]
name = "topic"
package = "{}"
[[heads.config.rules]]
label = "billing"
any = ["chargeback"]
[[heads]]
name = "pii"
package = "{}"
"#,
        rules.display(),
        pii.display()
    );
    let file = pipeline(dir.path(), &heads);
    let texts = [
        "My parcel never arrived, the tracking number shows nothing asap",
        "The app crashes every time I open the settings page",
        "I filed a chargeback, the courier lost my parcel",
        "Write to jöhn.doe@example.com or call +44 20 7946 0958 — card 4111 1111 1111 1111, from 10.0.0.7",
        "Order 1234567890123 is late and 4111 1111 1111 1112 is not a card",
    ];
    let input: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({ "id": i.to_string(), "text": t }).to_string() + "\n")
        .collect();
    let out = records(&crate::headstream_ok(
        &["run", "--pipeline", &file.to_string_lossy()],
        input.as_bytes(),
    ));
    assert_eq!(out.len(), texts.len());
    for r in &out {
        assert_eq!(r["errors"], json!({}), "{r}");
        assert_eq!(r["heads"]["topic"], "support-rules@1.0.0", "{r}");
        assert_eq!(r["heads"]["pii"], "pii-flags@1.0.0", "{r}");
    }
    // Rust
    assert_eq!(out[0]["results"]["flags"]["flags"], json!(["urgent"]));
    // Python: the trained layer decides unless a rule matches.
    assert_eq!(
        out[0]["results"]["topic"]["label"], "shipping",
        "{}",
        out[0]
    );
    assert_eq!(
        out[1]["results"]["topic"]["label"], "technical",
        "{}",
        out[1]
    );
    assert_eq!(out[2]["results"]["topic"]["label"], "billing", "{}", out[2]);
    assert_eq!(out[2]["results"]["topic"]["score"], 1.0, "the rule decided");
    assert!(
        out[2]["results"]["topic"]["scores"]["shipping"]
            .as_f64()
            .unwrap_or_default()
            > 0.0,
        "the model's probabilities stay"
    );
    // JavaScript: byte offsets into the UTF-8 text.
    let text = texts[3];
    let entities = out[3]["results"]["pii"]["entities"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found: Vec<(String, String)> = entities
        .iter()
        .map(|e| {
            let (s, t) = (
                e["start"].as_u64().unwrap_or(0) as usize,
                e["end"].as_u64().unwrap_or(0) as usize,
            );
            assert_eq!(text.get(s..t), e["text"].as_str(), "{e}");
            (
                e["label"].as_str().unwrap_or("").to_owned(),
                text[s..t].to_owned(),
            )
        })
        .collect();
    let want = [
        ("EMAIL", "jöhn.doe@example.com"),
        ("PHONE", "+44 20 7946 0958"),
        ("CARD", "4111 1111 1111 1111"),
        ("IP", "10.0.0.7"),
    ];
    assert_eq!(
        found,
        want.map(|(l, t)| (l.to_owned(), t.to_owned())).to_vec(),
        "{}",
        out[3]
    );
    assert_eq!(
        out[4]["results"]["pii"]["entities"],
        json!([]),
        "an order number and a number failing Luhn are not personal data: {}",
        out[4]
    );

    // A package that would not configure is never written.
    let bad = headstream(
        &[
            "package",
            &script_head("pii-flags").to_string_lossy(),
            "--out",
            &dir.path().join("bad").to_string_lossy(),
            "--config",
            r#"{"kinds": ["SSN"]}"#,
        ],
        b"",
    );
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("`kinds` must be a list of"), "{said}");
    assert!(!dir.path().join("bad/manifest.json").exists());
}

#[test]
fn the_python_sdk_unit_tests_pass() {
    // Natively, against bindings the pinned componentize-py generates (plugins/sdk-python/test.sh).
    let run = std::process::Command::new(workspace_root().join("plugins/sdk-python/test.sh"))
        .output()
        .unwrap_or_else(|e| panic!("plugins/sdk-python/test.sh: {e}"));
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{said}");
    assert!(
        said.contains("Ran 9 tests") && said.contains("OK"),
        "{said}"
    );
}

#[test]
fn the_javascript_sdk_unit_tests_pass() {
    // Natively in Node (`npm test` in plugins/sdk-js; the host import resolves to a module that
    // refuses to be called: only a component has a host).
    let run = std::process::Command::new("npm")
        .args(["test", "--silent"])
        .current_dir(workspace_root().join("plugins/sdk-js"))
        .output()
        .unwrap_or_else(|e| panic!("npm test: {e}"));
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        said.contains("# pass 7") && said.contains("# fail 0"),
        "{said}"
    );
}

/// Trains the support fixture head on pooled layers with `component` (the builtin Rust
/// linear classifier when `None`), with `--eval`, and returns train's summary.
fn train_on_layers(dir: &Path, name: &str, component: Option<&Path>, layers: &str) -> Output {
    let root = workspace_root();
    let data = root.join("tests/fixtures/train/support_train.jsonl");
    let eval = root.join("tests/fixtures/train/support_test.jsonl");
    let out = dir.join(name);
    let mut args = vec![
        "train".to_owned(),
        "--kind".into(),
        "classify".into(),
        "--data".into(),
        data.to_string_lossy().into_owned(),
        "--eval".into(),
        eval.to_string_lossy().into_owned(),
        "--layers".into(),
        layers.into(),
        "--c".into(),
        "0.1".into(),
        "--name".into(),
        name.into(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ];
    if let Some(component) = component {
        args.extend([
            "--component".into(),
            component.to_string_lossy().into_owned(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    headstream(&args, b"")
}

#[test]
fn python_and_javascript_heads_read_the_layers_their_weights_were_trained_on() {
    // The same recipe (layers 3-6 pooled, C = 0.1) packaged in three languages: train fits the
    // same weights, and each head asks for those layers and scores exactly what the Rust one
    // does on the held-out set, text by text.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let js = script_head("linear-classifier-js");
    let py = script_head("rules-classifier");
    let mut metrics = Vec::new();
    for (name, component) in [
        ("rust", None),
        ("js", Some(js.as_path())),
        ("py", Some(py.as_path())),
    ] {
        let out = train_on_layers(dir.path(), name, component, "3,4,5,6");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            summary["hyperparameters"]["features"]["pooled_layers"],
            json!([3, 4, 5, 6]),
            "{name}: {summary}"
        );
        metrics.push(summary["metrics"].clone());
    }
    assert!(
        metrics[0]["accuracy"].as_f64().unwrap_or_default() >= 0.85,
        "{}",
        metrics[0]
    );
    assert_eq!(
        metrics[0]["accuracy"], metrics[1]["accuracy"],
        "JavaScript: {}",
        metrics[1]
    );
    assert_eq!(
        metrics[0]["accuracy"], metrics[2]["accuracy"],
        "Python: {}",
        metrics[2]
    );

    // One pipeline with the three: the same label for every text, probabilities within f32
    // rounding (the Rust head sums in a different order).
    let heads: String = ["rust", "js", "py"]
        .iter()
        .map(|n| {
            format!(
                "[[heads]]\nname = \"{n}\"\npackage = \"{}\"\n",
                dir.path().join(n).display()
            )
        })
        .collect();
    let file = pipeline(dir.path(), &heads);
    let input =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/train/support_test.jsonl"))
            .unwrap_or_else(|e| panic!("{e}"));
    let out = records(&crate::headstream_ok(
        &["run", "--pipeline", &file.to_string_lossy()],
        input.as_bytes(),
    ));
    assert_eq!(out.len(), input.lines().count());
    for r in &out {
        assert_eq!(r["errors"], json!({}), "{r}");
        let rust = &r["results"]["rust"];
        for other in ["js", "py"] {
            let o = &r["results"][other];
            assert_eq!(rust["label"], o["label"], "{other}: {r}");
            let (a, b) = (
                rust["score"].as_f64().unwrap_or(-1.0),
                o["score"].as_f64().unwrap_or(1.0),
            );
            assert!((a - b).abs() < 1e-4, "{other}: {a} vs {b}: {r}");
        }
    }
}

#[test]
fn train_refuses_a_component_that_would_not_read_its_weights_layers() {
    // The 1.0.0 linear classifier implements contract 0.1.0: it cannot ask for layers, so
    // weights fitted on them would meet the sentence embedding. Nothing is written.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let old = workspace_root().join("tests/fixtures/packages-1.0/sentiment/head.wasm");
    let out = train_on_layers(dir.path(), "old", Some(&old), "5,6");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("would not read what its weights were trained on (pooled layers 5,6")
            && said.contains("contract 0.1.0")
            && said.contains("--layers embedding"),
        "{said}"
    );
    assert!(!dir.path().join("old/manifest.json").exists());
    // On the embedding it reads, it trains.
    let out = train_on_layers(dir.path(), "old", Some(&old), "embedding");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("old/manifest.json").exists());
}
