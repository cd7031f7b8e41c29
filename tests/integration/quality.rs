//! Knowing whether a head is right in production, over a real nats-server and host: a pipeline
//! with `[quality] record = true` keeps each result's prediction in a bounded bucket; feedback
//! labels arrive from the CLI (flags, JSONL, CSV), raw NATS and the gateway; bad feedback gets
//! an error naming what is wrong and stores nothing; `headstream quality` reports what the
//! results and labels give offline, the latest label of a result counting once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use headstream_test_util::{NatsServer, workspace_root};
use serde_json::{Value, json};

use crate::gateway::{Gateway, error_of, json_of};
use crate::nats_serve::Host;

/// Our own sentences, with the answer we hold right.
const TEXTS: [(&str, &str); 10] = [
    (
        "A warm, funny film that earns every one of its tears.",
        "positive",
    ),
    ("Two hours of my life I will never get back.", "negative"),
    ("The cast is superb and the script is sharp.", "positive"),
    ("A dull, lifeless and boring film.", "negative"),
    ("I left the cinema smiling.", "positive"),
    (
        "The plot makes no sense and the jokes fall flat.",
        "negative",
    ),
    ("Not bad at all, though the ending drags.", "positive"),
    ("An ambitious mess that never finds its tone.", "negative"),
    ("A quiet triumph.", "positive"),
    ("I wanted to like it, but it is not good.", "negative"),
];

const PIPELINE: &str = "version = 1\nname = \"reviews-q\"\n[input]\nsubject = \"reviews-q.in\"\n\
    [output]\nsubject = \"reviews-q.out\"\nerrors = \"reviews-q.errors\"\n[quality]\nrecord = true\n\
    [[heads]]\nname = \"sentiment\"\nplugin = \"sentiment@^1\"\n\
    [[heads]]\nname = \"flags\"\nbuiltin = \"keyword-flags\"\n\
    [heads.config.flags]\nrefund = [\"refund\"]\n";

fn cli(args: &[&str], stdin: &[u8]) -> (bool, Vec<Value>, String) {
    let out = crate::headstream(args, stdin);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn feedback_joins_recorded_predictions_and_quality_reports_what_they_give_offline() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let registry = workspace_root().join("heads");
    let registry = registry.to_string_lossy();
    let url = server.url();
    let _host = Host::serve_pipeline(dir.path(), PIPELINE, &url, &["--registry", &registry]);

    // Serve every text; keep each result's predicted label.
    let runtime = crate::runtime();
    let (records, kv_status, stream_info) = runtime.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut records = Vec::new();
        for (i, (text, _)) in TEXTS.iter().enumerate() {
            let started = Instant::now();
            let body = json!({ "id": format!("r-{i}"), "text": text }).to_string();
            let record: Value = loop {
                match client.request("reviews-q.in", body.clone().into()).await {
                    Ok(reply) => {
                        break serde_json::from_slice(&reply.payload)
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                    Err(_) if started.elapsed() < Duration::from_secs(90) => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => panic!("no answer within 90 s: {e}"),
                }
            };
            records.push(record);
        }
        // Predictions are written off the serving path: wait for them.
        let jetstream = async_nats::jetstream::new(client);
        let kv = jetstream
            .get_key_value("HEADSTREAM_PREDICTIONS")
            .await
            .unwrap_or_else(|e| panic!("the predictions bucket was not created: {e}"));
        let started = Instant::now();
        loop {
            let keys: Vec<String> = kv
                .keys()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .filter_map(|k| async move { k.ok() })
                .collect()
                .await;
            if keys.len() >= TEXTS.len() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{keys:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let status = kv.status().await.unwrap_or_else(|e| panic!("{e}"));
        let mut stream = jetstream
            .get_stream("HEADSTREAM_LABELS")
            .await
            .unwrap_or_else(|e| panic!("the labels stream was not created: {e}"));
        let info = stream
            .info()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .clone();
        (records, status, info)
    });
    // Both stores are bounded.
    assert_eq!(kv_status.info.config.max_bytes, 256 << 20);
    assert_eq!(
        kv_status.info.config.max_age,
        Duration::from_secs(30 * 24 * 3600)
    );
    assert_eq!(stream_info.config.max_bytes, 256 << 20);
    assert_eq!(stream_info.config.max_messages, 1_000_000);

    let predicted: Vec<String> = records
        .iter()
        .map(|r| {
            r["results"]["sentiment"]["label"]
                .as_str()
                .unwrap_or_else(|| panic!("no sentiment label: {r}"))
                .to_owned()
        })
        .collect();
    let nats = ["--nats", &url];

    // Labels for texts 0..6 from JSONL (0 by key), 6..8 from CSV, 8 from flags.
    let mut jsonl = String::new();
    for (i, (_, label)) in TEXTS.iter().enumerate().take(6) {
        let line = match i {
            0 => json!({ "key": records[0]["key"], "head": "sentiment", "label": label }),
            _ => json!({ "id": format!("r-{i}"), "head": "sentiment", "label": label }),
        };
        jsonl.push_str(&format!("{line}\n"));
    }
    let file = dir.path().join("labels.jsonl");
    std::fs::write(&file, &jsonl).unwrap_or_else(|e| panic!("{e}"));
    let file = file.to_string_lossy().into_owned();
    let (ok, replies, stderr) = cli(
        &[
            &[
                "feedback",
                "--pipeline",
                "reviews-q",
                "--file",
                &file,
                "--by",
                "test",
            ][..],
            &nats,
        ]
        .concat(),
        b"",
    );
    assert!(ok, "{stderr}: {replies:?}");
    assert_eq!(replies.len(), 6);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply["accepted"], true, "{reply}");
        assert_eq!(reply["labelled"]["predicted"], predicted[i].as_str());
        assert_eq!(reply["labelled"]["version"], "sentiment@1.1.0");
        assert_eq!(reply["labelled"]["by"], "test");
    }
    let csv = dir.path().join("labels.csv");
    std::fs::write(
        &csv,
        format!(
            "id,head,label\nr-6,sentiment,{}\nr-7,sentiment,{}\n",
            TEXTS[6].1, TEXTS[7].1
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let csv = csv.to_string_lossy().into_owned();
    let (ok, replies, stderr) = cli(
        &[
            &["feedback", "--pipeline", "reviews-q", "--file", &csv][..],
            &nats,
        ]
        .concat(),
        b"",
    );
    assert!(ok && replies.len() == 2, "{stderr}");
    let one = [
        "feedback",
        "--pipeline",
        "reviews-q",
        "--id",
        "r-8",
        "--head",
        "sentiment",
    ];
    let (ok, _, stderr) = cli(&[&one[..], &["--label", TEXTS[8].1], &nats].concat(), b"");
    assert!(ok, "{stderr}");
    // A first, wrong label for r-9, then its correction: only the latest counts.
    let nine = [
        "feedback",
        "--pipeline",
        "reviews-q",
        "--id",
        "r-9",
        "--head",
        "sentiment",
    ];
    let wrong = if TEXTS[9].1 == "positive" {
        "negative"
    } else {
        "positive"
    };
    assert!(cli(&[&nine[..], &["--label", wrong], &nats].concat(), b"").0);

    // Bad feedback: an error each, naming what is wrong; nothing stored.
    let bad = [
        (
            vec![
                "--id",
                "r-404",
                "--head",
                "sentiment",
                "--label",
                "positive",
            ],
            "not_found",
        ),
        (
            vec!["--id", "r-1", "--head", "topic", "--label", "positive"],
            "unknown_head",
        ),
        (
            vec!["--id", "r-1", "--head", "flags", "--label", "positive"],
            "not_a_classification",
        ),
        (
            vec!["--id", "r-1", "--head", "sentiment", "--label", "neutral"],
            "unknown_label",
        ),
        (
            vec![
                "--key",
                "reviews-q/r-1/0000",
                "--head",
                "sentiment",
                "--label",
                "positive",
            ],
            "key_mismatch",
        ),
        (
            vec![
                "--key",
                "other/r-1/0000",
                "--head",
                "sentiment",
                "--label",
                "positive",
            ],
            "wrong_pipeline",
        ),
    ];
    for (args, kind) in &bad {
        let (ok, replies, stderr) = cli(
            &[
                &["feedback", "--pipeline", "reviews-q"][..],
                &args[..],
                &nats,
            ]
            .concat(),
            b"",
        );
        assert!(!ok, "{args:?} was accepted");
        assert_eq!(
            replies[0]["error"]["kind"], *kind,
            "{args:?}: {}",
            replies[0]
        );
        assert!(stderr.contains("1 refused"), "{stderr}");
    }
    // Raw NATS: malformed JSON and unknown fields.
    runtime.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for (body, kind) in [
            ("{not json", "not_json"),
            (
                r#"{"id":"r-1","head":"sentiment","label":"positive","extra":1}"#,
                "invalid",
            ),
        ] {
            let reply = client
                .request("headstream.feedback.reviews-q", body.into())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
            assert_eq!(reply["error"]["kind"], kind, "{body}: {reply}");
        }
    });

    // The gateway: the correction for r-9, and its refusals as OpenAI-style errors.
    let gateway = Gateway::start(&url, &[], &[]);
    let body =
        json!({ "pipeline": "reviews-q", "id": "r-9", "head": "sentiment", "label": TEXTS[9].1 });
    let (status, _, answer) = gateway.post("/v1/feedback", &body.to_string(), None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(json_of(&answer)["labelled"]["label"], TEXTS[9].1);
    for (body, want) in [
        (
            json!({ "pipeline": "reviews-q", "id": "r-1", "head": "sentiment", "label": "meh" }),
            (400, "unknown_label"),
        ),
        (
            json!({ "pipeline": "reviews-q", "id": "nope", "head": "sentiment", "label": "positive" }),
            (404, "result_not_found"),
        ),
        (
            json!({ "pipeline": "reviews-q", "id": "r-1", "head": "topic", "label": "positive" }),
            (404, "head_not_found"),
        ),
        (
            json!({ "pipeline": "nobody", "id": "r-1", "head": "sentiment", "label": "positive" }),
            (503, "no_host_available"),
        ),
        (
            json!({ "id": "r-1", "head": "sentiment", "label": "positive" }),
            (400, ""),
        ),
    ] {
        let (status, _, answer) = gateway.post("/v1/feedback", &body.to_string(), None);
        let (status, _, code) = error_of(status, &answer);
        assert_eq!((status, code.as_str()), want, "{body}: {answer}");
    }

    // Quality: exactly what the results and our labels give, each result once.
    let (ok, reports, stderr) = cli(
        &[&["quality", "reviews-q", "--json"][..], &nats].concat(),
        b"",
    );
    assert!(ok, "{stderr}");
    let heads = reports[0]["heads"].as_array().cloned().unwrap_or_default();
    assert_eq!(heads.len(), 1, "{}", reports[0]);
    let report = &heads[0]["report"];
    assert_eq!(heads[0]["version"], "sentiment@1.1.0");
    let right = TEXTS
        .iter()
        .zip(&predicted)
        .filter(|((_, label), p)| label == p)
        .count();
    assert_eq!(report["count"], TEXTS.len());
    assert_eq!(report["accuracy"]["hits"], right, "{report}");
    let accuracy = right as f64 / TEXTS.len() as f64;
    assert!((report["accuracy"]["value"].as_f64().unwrap_or(-1.0) - accuracy).abs() < 1e-12);
    let (low, high) = (
        report["accuracy"]["low"].as_f64().unwrap_or(2.0),
        report["accuracy"]["high"].as_f64().unwrap_or(-1.0),
    );
    assert!(
        low <= accuracy && accuracy <= high && high - low > 0.2,
        "ten labels: a wide interval {report}"
    );
    // The confusion matrix is the offline one.
    let labels: Vec<String> = report["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut want = BTreeMap::new();
    for ((_, label), p) in TEXTS.iter().zip(&predicted) {
        *want.entry((label.to_string(), p.clone())).or_insert(0u64) += 1;
    }
    for (i, truth) in labels.iter().enumerate() {
        for (j, guess) in labels.iter().enumerate() {
            let got = report["confusion"][i][j].as_u64().unwrap_or(u64::MAX);
            let expected = want
                .get(&(truth.clone(), guess.clone()))
                .copied()
                .unwrap_or(0);
            assert_eq!(got, expected, "{truth} as {guess}: {report}");
        }
    }
    let buckets = report["calibration"]["buckets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let in_buckets: u64 = buckets
        .iter()
        .filter_map(|b| b["accuracy"]["count"].as_u64())
        .sum();
    assert_eq!(in_buckets, TEXTS.len() as u64);
    // The table form names the head version and the interval.
    let table = crate::headstream(
        &[&["quality", "reviews-q", "sentiment"][..], &nats].concat(),
        b"",
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("sentiment@1.1.0") && table.contains("95% Wilson"),
        "{table}"
    );
}
