//! `headstream run`: the embedded default. The shipped support-triage pipeline classifies the
//! example messages with the real encoder and real plugins (builtin ones and packages); unusable
//! lines become error records with their payload; a misbehaving head fails only its own result;
//! a bad pipeline fails at load with file and line.

use headstream_test_util::{plugin_path, workspace_root};
use serde_json::{Value, json};

use crate::headstream;

fn records(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn support_triage_example_classifies_and_reports_bad_lines()
-> Result<(), Box<dyn std::error::Error>> {
    // Its topic and flags heads are `builtin`: no `cargo plugins` needed.
    let root = workspace_root();
    let dir = tempfile::tempdir()?;
    let errors = dir.path().join("errors.jsonl");
    let run = headstream(
        &[
            "run",
            "--pipeline",
            &root.join("pipelines/support-triage.toml").to_string_lossy(),
            "--input",
            &root.join("examples/support.jsonl").to_string_lossy(),
            "--errors",
            &errors.to_string_lossy(),
        ],
        b"",
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let results = records(&run.stdout);
    let topics: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or(""),
                r["results"]["topic"]["label"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        topics,
        vec![
            ("t-101", "billing"),
            ("t-102", "technical"),
            ("t-103", "shipping"),
            ("t-104", "billing")
        ]
    );
    let first = &results[0];
    assert_eq!(
        first["results"]["flags"],
        json!({ "flags": ["refund", "urgent"] })
    );
    assert_eq!(first["meta"], json!({ "channel": "email" }));
    // The trained sentiment head (a package) and the CEL route: a negative billing message is
    // escalated, a neutral billing question (which a two-class head scores near 0.5) is not.
    assert_eq!(
        first["results"]["sentiment"]["label"], "negative",
        "{first}"
    );
    assert_eq!(first["routes"], json!(["escalate"]), "{first}");
    assert_eq!(results[3]["results"]["topic"]["label"], "billing");
    assert!(results[3].get("routes").is_none(), "{}", results[3]);
    assert!(
        first["results"]["entities"]["entities"].is_array(),
        "{first}"
    );
    assert_eq!(first["pipeline"], "support-triage");
    assert_eq!(first["errors"], json!({}));
    assert_eq!(
        first["heads"],
        json!({
            "topic": "prototype-classifier@0.1.0",
            "flags": "keyword-flags@0.1.0",
            "sentiment": "sentiment@1.1.0",
            "entities": "entities@1.1.0",
        })
    );
    assert!(
        first["encoder"]
            .as_str()
            .is_some_and(|f| f.contains("@sha256:"))
    );

    let errors = records(&std::fs::read(&errors)?);
    let kinds: Vec<&str> = errors
        .iter()
        .map(|e| e["error"]["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, vec!["empty_text", "not_json"]);
    assert_eq!(errors[1]["payload"], "not a json line");
    assert!(
        errors[1]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("line 6:"))
    );
    Ok(())
}

#[test]
fn misbehaving_head_fails_only_its_own_result() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pipeline = dir.path().join("p.toml");
    let text = format!(
        "version = 1\nname = \"mixed\"\n[input]\nsubject = \"in\"\n[output]\nsubject = \"out\"\nerrors = \"err\"\n\
         [[heads]]\nname = \"bad\"\ncomponent = {:?}\n[heads.config]\nmode = \"loop\"\n[heads.limits]\ndeadline_ms = 50\n\
         [[heads]]\nname = \"flags\"\ncomponent = {:?}\n[heads.config.flags]\nurgent = [\"asap\"]\n\
         [[heads]]\nname = \"after-bad\"\ncomponent = {:?}\nafter = [\"bad\"]\n[heads.config.flags]\n",
        plugin_path("hostile"),
        plugin_path("keyword-flags"),
        plugin_path("keyword-flags"),
    );
    std::fs::write(&pipeline, text)?;
    let run = headstream(
        &["run", "--pipeline", &pipeline.to_string_lossy()],
        b"{\"id\":\"1\",\"text\":\"boom asap\"}\n",
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out = records(&run.stdout);
    assert_eq!(
        out[0]["results"],
        json!({ "flags": { "flags": ["urgent"] } })
    );
    assert!(
        out[0]["errors"]["bad"]
            .as_str()
            .is_some_and(|e| e.starts_with("timeout:")),
        "{}",
        out[0]
    );
    assert_eq!(out[0]["errors"]["after-bad"], "upstream head bad failed");
    Ok(())
}

#[test]
fn invalid_pipeline_fails_at_load_with_file_and_line() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pipeline = dir.path().join("broken.toml");
    std::fs::write(&pipeline, "version = 1\nname = \"x\"\nbogus = true\n")?;
    let run = headstream(&["run", "--pipeline", &pipeline.to_string_lossy()], b"");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("broken.toml:3:1: bogus: unknown field `bogus`"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_refused_import_is_said_once() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "version = 1\nname = \"p\"\n[input]\nsubject = \"in\"\n[output]\nsubject = \"out\"\nerrors = \"err\"\n[[heads]]\nname = \"probe\"\ncomponent = {:?}\n",
            plugin_path("hostile-wasi").display().to_string()
        ),
    )?;
    let run = headstream(&["run", "--pipeline", &pipeline.to_string_lossy()], b"");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert_eq!(stderr.matches("does not grant").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: head probe: "), "{stderr}");
    Ok(())
}

#[test]
fn plugin_references_resolve_against_the_registry() -> Result<(), Box<dyn std::error::Error>> {
    let root = workspace_root();
    let dir = tempfile::tempdir()?;
    let pipeline = dir.path().join("p.toml");
    let write = |reference: &str| {
        std::fs::write(
            &pipeline,
            format!(
                "version = 1\nname = \"p\"\n[input]\nsubject = \"in\"\n[output]\nsubject = \"out\"\n\
                 errors = \"err\"\n[[heads]]\nname = \"mood\"\nplugin = {reference:?}\n"
            ),
        )
    };
    let registry = root.join("heads");
    let run = |pipeline: &std::path::Path| {
        headstream(
            &[
                "run",
                "--pipeline",
                &pipeline.to_string_lossy(),
                "--registry",
                &registry.to_string_lossy(),
            ],
            b"{\"id\":\"a\",\"text\":\"a dull, lifeless and boring film\"}\n",
        )
    };
    write("sentiment@^1")?;
    let out = run(&pipeline);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(result["results"]["mood"]["label"], "negative", "{result}");
    assert_eq!(result["heads"]["mood"], "sentiment@1.1.0");

    // No such version: a load error that names the reference and what exists.
    write("sentiment@^2")?;
    let out = run(&pipeline);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("no package matches sentiment@^2").count(),
        1,
        "said once: {stderr}"
    );
    assert!(stderr.contains("1.1.0"), "{stderr}");

    // A digest pin: the component's sha256 prefix picks that exact build; another refuses.
    let sha = headstream_package::Package::load(&registry.join("sentiment"))?
        .manifest
        .component
        .sha256;
    write(&format!("sentiment@sha256:{}", &sha[..16]))?;
    let out = run(&pipeline);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(result["heads"]["mood"], "sentiment@1.1.0");
    write("sentiment@sha256:000000000000")?;
    let out = run(&pipeline);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no package matches sentiment@sha256:000000000000"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&sha),
        "names the builds that exist: {stderr}"
    );
    Ok(())
}

#[test]
fn plugins_ls_lists_the_shipped_heads() -> Result<(), Box<dyn std::error::Error>> {
    let registry = workspace_root().join("heads");
    let out = headstream(
        &["plugins", "ls", "--registry", &registry.to_string_lossy()],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = records(&out.stdout);
    let names: Vec<&str> = lines.iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(
        names,
        ["entities", "news-topic", "question-type", "sentiment"]
    );
    let sentiment = &lines[3];
    assert_eq!(sentiment["version"], "1.1.0");
    assert_eq!(sentiment["kind"], "classify");
    assert!(
        sentiment["metrics"]["accuracy"]
            .as_f64()
            .is_some_and(|a| a > 0.825),
        "{sentiment}"
    );
    assert!(
        lines[0]["metrics"]["entity_f1"].as_f64().is_some(),
        "{}",
        lines[0]
    );
    Ok(())
}
