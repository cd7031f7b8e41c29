//! Golden-file tests: every `tests/fixtures/pipelines/invalid/X.toml` fails to load with exactly
//! the message in `X.err` (file name, line, column, key, reason); every shipped pipeline in
//! `pipelines/` loads. `BLESS=1 cargo test -p headstream-pipeline` rewrites the `.err` files.

use std::path::{Path, PathBuf};

use headstream_pipeline::Pipeline;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn invalid_configs_fail_with_file_line_and_reason() -> Result<(), Box<dyn std::error::Error>> {
    let dir = root().join("tests/fixtures/pipelines/invalid");
    let mut checked = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for file in files {
        let err = match Pipeline::load(&file) {
            Ok(_) => panic!("{} loaded but must fail", file.display()),
            Err(e) => e,
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert_eq!(err.file, file, "the error names the file");
        let got = format!(
            "{name}:{}:{}: {}: {}\n",
            err.line, err.column, err.key, err.message
        );
        let golden = file.with_extension("err");
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&golden, &got)?;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!("{}: {e} (run with BLESS=1 to create it)", golden.display())
        });
        assert_eq!(got, want, "{}", file.display());
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} invalid fixtures found");
    Ok(())
}

#[test]
fn shipped_pipelines_load() -> Result<(), Box<dyn std::error::Error>> {
    let mut loaded = 0;
    for entry in std::fs::read_dir(root().join("pipelines"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let pipeline = Pipeline::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!pipeline.heads().is_empty());
            // Component paths are resolved against the pipeline file's own folder.
            let dir = path.parent().unwrap_or(Path::new("."));
            for head in pipeline.heads() {
                let file = head.component.as_ref().or(head.package.as_ref());
                assert!(
                    file.is_some_and(|f| f.starts_with(dir))
                        || head.plugin.is_some()
                        || head.builtin.is_some(),
                    "{}: {file:?}",
                    path.display(),
                );
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 1);
    Ok(())
}

#[test]
fn heads_run_after_the_heads_they_consume() -> Result<(), Box<dyn std::error::Error>> {
    let text = r#"
version = 1
name = "dag"
[input]
subject = "in.>"
[output]
subject = "out"
errors = "err"
[[heads]]
name = "summary"
component = "s.wasm"
after = ["topic", "sentiment"]
[[heads]]
name = "topic"
component = "t.wasm"
[[heads]]
name = "sentiment"
component = "x.wasm"
after = ["topic"]
[heads.config]
threshold = 0.5
labels = ["a", "b"]
"#;
    let p = Pipeline::parse(text, Path::new("/etc/headstream/dag.toml"))?;
    let order: Vec<&str> = p
        .heads()
        .iter()
        .map(|h| h.name.get_ref().as_str())
        .collect();
    assert_eq!(order, vec!["topic", "sentiment", "summary"]);
    assert_eq!(
        p.heads()[0].component.as_deref(),
        Some(Path::new("/etc/headstream/t.wasm"))
    );
    assert_eq!(
        p.heads()[1].config,
        serde_json::json!({ "threshold": 0.5, "labels": ["a", "b"] })
    );
    assert_eq!(p.delivery.mode.get_ref(), "core");
    assert_eq!(*p.batching.max_batch_size.get_ref(), 32);
    Ok(())
}

#[test]
fn host_file_lists_pipelines_relative_to_itself() -> Result<(), Box<dyn std::error::Error>> {
    use headstream_pipeline::HostFile;
    let shipped = HostFile::load(&root().join("headstream.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shipped.pipelines.len(), 1);
    assert!(shipped.pipelines[0].get_ref().is_file());
    assert_eq!(shipped.nats.url.as_deref(), Some("nats://127.0.0.1:4222"));

    let dir = tempfile::tempdir()?;
    let host = dir.path().join("headstream.toml");
    std::fs::write(&host, "version = 1\npipelines = [\"missing.toml\"]\n")?;
    let err = HostFile::load(&host)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let missing = dir.path().join("missing.toml");
    let expected = format!(":2:14: pipelines[0]: {} does not exist", missing.display());
    assert!(err.ends_with(&expected), "{err}");
    std::fs::write(
        &host,
        "version = 1\npipelines = []\n[nats]\nurl = \"nats://x:1\"\ntls = true\n",
    )?;
    let err = HostFile::load(&host)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(":5:1: tls: unknown field `tls`"), "{err}");
    Ok(())
}
