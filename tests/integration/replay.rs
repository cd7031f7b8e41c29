//! `headstream replay` over a real stream and embedding store: a host serves a storing pipeline
//! (the 1.0.0 sentiment head, over the embedding, and a builtin) while messages go into a JetStream stream; the host
//! stops; a replay gives the live results again from the stored vectors alone (no encoding),
//! and again from the encoder with `--no-store`; a replay SIGKILLed half-way and `--resume`d
//! writes every result exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use headstream_test_util::{NatsServer, model_dir, workspace_root};
use serde_json::{Value, json};

use crate::nats_serve::Host;

const N: usize = 60;

fn text(i: usize) -> String {
    let kinds = [
        "I loved how quickly the refund came through",
        "The update broke everything and support never answered",
        "Delivery was late again, third time this month",
        "Great app, works exactly as described",
        "I want my money back for this broken charger",
    ];
    format!("{} (ticket {i})", kinds[i % kinds.len()])
}

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstream"))
        .arg("replay")
        .args(args)
        .env("HEADSTREAM_MODEL", model_dir())
        .env_remove("HEADSTREAM_NATS")
        .output()
        .unwrap_or_else(|e| panic!("replay: {e}"))
}

/// The summary replay prints last on stderr.
fn summary(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn by_id(records: &[Value]) -> BTreeMap<String, Value> {
    records
        .iter()
        .map(|r| (r["id"].as_str().unwrap_or_default().to_owned(), r.clone()))
        .collect()
}

#[test]
fn replay_scores_history_from_the_store_and_resumes_after_sigkill() {
    let server = NatsServer::start();
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = dir.path().join("rv.toml");
    std::fs::write(
        &pipeline,
        format!(
            "version = 1\nname = \"rv\"\n[input]\nsubject = \"rv.in\"\n[output]\n\
             subject = \"rv.out\"\nerrors = \"rv.errors\"\n[embeddings]\nstore = true\n\
             [[heads]]\nname = \"sentiment\"\npackage = {:?}\n\
             [[heads]]\nname = \"flags\"\nbuiltin = \"keyword-flags\"\n\
             [heads.config.flags]\nrefund = [\"refund\", \"money back\"]\n",
            root.join("tests/fixtures/packages-1.0/sentiment")
                .display()
                .to_string()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("headstream.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\npipelines = [{:?}]\n[nats]\nurl = {:?}\n[embeddings]\nbucket = \"RV_EMBEDDINGS\"\n",
            pipeline.display().to_string(),
            server.url()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Live: the stream retains the input while a host serves (and stores) it.
    let mut host = Host::serve(&[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    let runtime = crate::runtime();
    let live = runtime.block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let jetstream = async_nats::jetstream::new(client.clone());
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: "RV".into(),
                subjects: vec!["rv.in".into()],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        while client
            .request("headstream.status", "".into())
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no host in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut results = client
            .subscribe("rv.out")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));
        for i in 0..N {
            let body = json!({ "id": format!("m-{i}"), "text": text(i) }).to_string();
            jetstream
                .publish("rv.in", body.into())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut live = Vec::new();
        while live.len() < N {
            let message = tokio::time::timeout(Duration::from_secs(30), results.next())
                .await
                .unwrap_or_else(|_| panic!("only {} live results", live.len()))
                .unwrap_or_else(|| panic!("subscription ended"));
            live.push(serde_json::from_slice::<Value>(&message.payload).unwrap_or_default());
        }
        // The vectors are written off the serving path: wait for all of them.
        let kv = jetstream
            .get_key_value("RV_EMBEDDINGS")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        loop {
            let keys = kv
                .keys()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .count()
                .await;
            if keys >= N {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{keys} of {N} stored"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        live
    });
    host.kill();
    let live = by_id(&live);

    let url = server.url();
    let common = [
        "--pipeline",
        pipeline.to_str().unwrap_or_default(),
        "--stream",
        "RV",
        "--nats",
        &url,
        "--config",
        config.to_str().unwrap_or_default(),
    ];
    let compare = |replayed: &[Value], exact: bool| {
        let replayed = by_id(replayed);
        assert_eq!(replayed.len(), N);
        for (id, want) in &live {
            let got = &replayed[id];
            assert_eq!(got["key"], want["key"], "{id}: same pipeline, same key");
            assert_eq!(got["results"]["flags"], want["results"]["flags"], "{id}");
            let (g, w) = (&got["results"]["sentiment"], &want["results"]["sentiment"]);
            assert_eq!(g["label"], w["label"], "{id}");
            let diff =
                (g["score"].as_f64().unwrap_or(0.0) - w["score"].as_f64().unwrap_or(1.0)).abs();
            assert!(
                diff <= if exact { 1e-6 } else { 2e-3 },
                "{id}: score off by {diff}"
            );
        }
    };

    // From the store: heads only.
    let out1 = dir.path().join("out1.jsonl");
    let mut args = common.to_vec();
    args.extend(["--output", out1.to_str().unwrap_or_default()]);
    let s = summary(&replay(&args));
    assert_eq!(
        (
            s["messages"].as_u64(),
            s["store_hits"].as_u64(),
            s["store_misses"].as_u64()
        ),
        (Some(N as u64), Some(N as u64), Some(0)),
        "{s}"
    );
    assert_eq!(s["encode_s"], 0.0, "{s}");
    compare(&records(&out1), false);

    // Without the store: every message encoded, the live results exactly.
    let out2 = dir.path().join("out2.jsonl");
    let mut args = common.to_vec();
    args.extend(["--output", out2.to_str().unwrap_or_default(), "--no-store"]);
    let s = summary(&replay(&args));
    assert_eq!(
        (s["store_hits"].as_u64(), s["store_misses"].as_u64()),
        (Some(0), Some(N as u64)),
        "{s}"
    );
    compare(&records(&out2), true);

    // SIGKILLed half-way, then resumed: every result once.
    let out3 = dir.path().join("out3.jsonl");
    let mut args = common.to_vec();
    args.extend([
        "--output",
        out3.to_str().unwrap_or_default(),
        "--rate",
        "30",
        "--batch-size",
        "4",
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_headstream"))
        .arg("replay")
        .args(&args)
        .env("HEADSTREAM_MODEL", model_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    while records(&out3).len() < N / 3 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let before = records(&out3).len();
    assert!(before > 0 && before < N, "killed after {before} results");
    args.push("--resume");
    let s = summary(&replay(&args));
    assert!(s["resumed_after"].as_u64().is_some(), "{s}");
    let all = records(&out3);
    let keys: BTreeSet<&str> = all
        .iter()
        .map(|r| r["key"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(all.len(), N, "every result once after the resume");
    assert_eq!(keys.len(), N);
    compare(&all, false);

    // A version change side by side: the same sentiment package abstaining below 0.9.
    let v2 = dir.path().join("rv2.toml");
    let text2 = std::fs::read_to_string(&pipeline)
        .unwrap_or_default()
        .replace("name = \"rv\"", "name = \"rv2\"")
        .replace(
            "[[heads]]\nname = \"flags\"",
            "[heads.config]\nthreshold = 0.9\n[[heads]]\nname = \"flags\"",
        );
    std::fs::write(&v2, text2).unwrap_or_else(|e| panic!("{e}"));
    let labels = dir.path().join("labels.jsonl");
    let truth: String = (0..N)
        .map(|i| {
            let label = if [0, 3].contains(&(i % 5)) {
                "positive"
            } else {
                "negative"
            };
            format!("{}\n", json!({ "id": format!("m-{i}"), "label": label }))
        })
        .collect();
    std::fs::write(&labels, truth).unwrap_or_else(|e| panic!("{e}"));
    let mut args = common.to_vec();
    args.extend([
        "--compare",
        v2.to_str().unwrap_or_default(),
        "--labels",
        labels.to_str().unwrap_or_default(),
    ]);
    let out = replay(&args);
    let s = summary(&out);
    assert_eq!(s["store_hits"].as_u64(), Some(N as u64), "{s}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    let sentiment = &report["heads"]["sentiment"];
    let flips = sentiment["flips"].as_object().cloned().unwrap_or_default();
    let flipped: u64 = flips
        .values()
        .map(|f| f["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sentiment["compared"].as_u64(), Some(N as u64), "{report}");
    assert_eq!(
        sentiment["agree"].as_u64(),
        Some(N as u64 - flipped),
        "{report}"
    );
    assert!(flipped > 0, "the threshold changed nothing: {report}");
    assert!(flips.keys().all(|k| k.ends_with("-> abstain")), "{report}");
    assert_eq!(sentiment["labelled"].as_u64(), Some(N as u64));
    assert!(
        sentiment["correct_b"].as_u64() <= sentiment["correct_a"].as_u64(),
        "abstaining cannot be right more often: {report}"
    );
    assert_eq!(
        report["heads"]["flags"]["agree"].as_u64(),
        Some(N as u64),
        "{report}"
    );
    let table = String::from_utf8_lossy(&out.stderr);
    assert!(
        table.contains("rv (a) vs rv2 (b)") && table.contains("accuracy on 60 labelled"),
        "{table}"
    );

    // A deployed pipeline (packages from the cluster registry), by name and by revision,
    // pinned to 1.0 (the 1.1.0 heads read layers, which the store does not hold),
    // against the file: the same heads give the same answers.
    let deployed = dir.path().join("rv-deployed.toml");
    let text3 = std::fs::read_to_string(&pipeline)
        .unwrap_or_default()
        .replace("name = \"rv\"", "name = \"rv-deployed\"")
        .replace(
            &format!(
                "package = {:?}",
                root.join("tests/fixtures/packages-1.0/sentiment")
                    .display()
                    .to_string()
            ),
            "plugin = \"sentiment@~1.0\"",
        );
    std::fs::write(&deployed, text3).unwrap_or_else(|e| panic!("{e}"));
    for what in [
        vec![
            "deploy",
            "plugin",
            root.join("tests/fixtures/packages-1.0/sentiment")
                .to_str()
                .unwrap_or_default(),
        ],
        vec!["deploy", "pipeline", deployed.to_str().unwrap_or_default()],
    ] {
        let mut what = what;
        what.extend(["--nats", &url]);
        let out = crate::headstream(&what, b"");
        assert!(
            out.status.success(),
            "{what:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let args = [
        "--deployed",
        "rv-deployed",
        "--compare",
        pipeline.to_str().unwrap_or_default(),
        "--stream",
        "RV",
        "--nats",
        &url,
        "--config",
        config.to_str().unwrap_or_default(),
    ];
    let out = replay(&args);
    let s = summary(&out);
    assert_eq!(s["pipeline"], "rv-deployed", "{s}");
    assert_eq!(s["store_hits"].as_u64(), Some(N as u64), "{s}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report["heads"]["sentiment"]["agree"].as_u64(),
        Some(N as u64),
        "{report}"
    );
    // Another encoder (int8) finds none of the f32 vectors: every message a miss, never a
    // wrong vector.
    let mut args = common.to_vec();
    args.extend([
        "--precision",
        "int8",
        "--output",
        out2.to_str().unwrap_or_default(),
    ]);
    let s = summary(&replay(&args));
    assert_eq!(
        (s["store_hits"].as_u64(), s["store_misses"].as_u64()),
        (Some(0), Some(N as u64)),
        "{s}"
    );
    // A range the stream does not retain.
    let mut args = common.to_vec();
    args.extend(["--from-seq", "0"]);
    let gone = replay(&args);
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        !gone.status.success() && stderr.contains("no longer retains sequence 0"),
        "{stderr}"
    );
    let bad = replay(&[
        "--deployed",
        "rv-deployed@999999",
        "--stream",
        "RV",
        "--nats",
        &url,
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(stderr.contains("has no revision 999999"), "{stderr}");
}
