//! `headstream feedback` (labels for results, sent to the hosts that serve the pipeline) and
//! `headstream quality` (live quality per head version, from the labels stream).

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use headstream_quality::{FEEDBACK_PREFIX, Feedback, Labelled, QualityConfig, report::Report};
use serde_json::{Value, json};

use crate::cli::{FeedbackArgs, QualityArgs};
use crate::cmd::serve::{connect, runtime};

/// Sends one label (flags) or a file of them; prints each reply as a JSON line. Fails when any
/// was refused.
pub fn feedback(args: &FeedbackArgs) -> anyhow::Result<()> {
    let requests = match &args.file {
        Some(path) => read_feedback(path)?,
        None => vec![Feedback {
            key: args.key.clone(),
            id: args.id.clone(),
            pipeline: None,
            head: args.head.clone().unwrap_or_default(),
            label: args.label.clone().unwrap_or_default(),
            by: args.by.clone(),
        }],
    };
    let subject = format!("{FEEDBACK_PREFIX}.{}", args.pipeline);
    let (accepted, refused) = runtime()?.block_on(async {
        let client = connect(&args.connect).await?;
        let mut stdout = std::io::stdout().lock();
        let (mut accepted, mut refused) = (0u64, 0u64);
        for mut request in requests {
            if request.by.is_none() {
                request.by.clone_from(&args.by);
            }
            let body = serde_json::to_vec(&request)?;
            let reply = tokio::time::timeout(
                Duration::from_millis(args.timeout_ms),
                client.request(subject.clone(), body.into()),
            )
            .await
            .with_context(|| {
                format!(
                    "no host answered on {subject} within {} ms (is pipeline {:?} served with `[quality] record = true`?)",
                    args.timeout_ms, args.pipeline
                )
            })?
            .with_context(|| format!("feedback request to {subject} failed"))?;
            let answer: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
            if answer["accepted"] == true {
                accepted += 1;
            } else {
                refused += 1;
            }
            stdout.write_all(&reply.payload)?;
            stdout.write_all(b"\n")?;
        }
        anyhow::Ok((accepted, refused))
    })?;
    eprintln!("{accepted} accepted, {refused} refused");
    anyhow::ensure!(
        refused == 0,
        "{refused} of {} labels were refused (the replies say why)",
        accepted + refused
    );
    Ok(())
}

/// Feedback requests from JSONL (`{"id"|"key","head","label","by"}` a line) or CSV with a
/// header naming `id` or `key`, `head`, `label` and optionally `by`; `-` reads stdin.
fn read_feedback(path: &std::path::Path) -> anyhow::Result<Vec<Feedback>> {
    let name = path.display().to_string();
    let text = if name == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?
    };
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if csv {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut out = Vec::new();
        for (i, row) in reader.deserialize::<Feedback>().enumerate() {
            // Line 1 is the header.
            out.push(row.with_context(|| format!("{name}:{}", i + 2))?);
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for (i, line) in text.as_bytes().lines().enumerate() {
        let line = line.with_context(|| format!("{name}:{}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{name}:{}: not a feedback line", i + 1))?,
        );
    }
    Ok(out)
}

/// Prints the live quality of a pipeline's heads, per version, from the labels stream.
pub fn quality(args: &QualityArgs) -> anyhow::Result<()> {
    let config = QualityConfig::default();
    let deliver_policy = match &args.since {
        Some(since) => DeliverPolicy::ByStartTime {
            start_time: crate::cmd::replay::since_time(since)?,
        },
        None => DeliverPolicy::All,
    };
    let labels = runtime()?.block_on(async {
        let client = connect(&args.connect).await?;
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream.get_stream(&config.labels_stream).await.with_context(|| {
            format!(
                "no labels stream {} (no host has served a pipeline with `[quality] record = true` on this server yet)",
                config.labels_stream
            )
        })?;
        headstream_quality::read_labels(&stream, &args.pipeline, deliver_policy)
            .await
            .map_err(anyhow::Error::from)
    })?;
    let mut labels = headstream_quality::latest(labels);
    if let Some(head) = &args.head {
        labels.retain(|l| l.head == *head);
    }
    let mut by_version: BTreeMap<(String, String), Vec<&Labelled>> = BTreeMap::new();
    for l in &labels {
        by_version
            .entry((l.head.clone(), l.version.clone()))
            .or_default()
            .push(l);
    }
    if let Some(last) = args.last {
        for labelled in by_version.values_mut() {
            let skip = labelled.len().saturating_sub(last);
            labelled.drain(..skip);
        }
    }
    let reports: Vec<Value> = by_version
        .iter()
        .filter_map(|((head, version), labelled)| {
            let report = Report::new(labelled)?;
            Some(json!({
                "head": head,
                "version": version,
                "first_label_ms": labelled.first().map(|l| l.at_ms),
                "last_label_ms": labelled.last().map(|l| l.at_ms),
                "report": report,
            }))
        })
        .collect();
    let window = json!({ "since": args.since, "last": args.last });
    if args.json {
        println!(
            "{}",
            json!({ "pipeline": args.pipeline, "window": window, "heads": reports })
        );
        return Ok(());
    }
    if reports.is_empty() {
        println!("no labels for pipeline {:?} in this window", args.pipeline);
        return Ok(());
    }
    for r in &reports {
        print_report(r);
    }
    Ok(())
}

fn print_report(r: &Value) {
    let rep = &r["report"];
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("-".to_owned(), |x| format!("{:.1}", 100.0 * x))
    };
    let est = |v: &Value| {
        format!(
            "{} [{}, {}]",
            pct(&v["value"]),
            pct(&v["low"]),
            pct(&v["high"])
        )
    };
    println!(
        "{} ({}): {} labels",
        r["head"].as_str().unwrap_or_default(),
        r["version"].as_str().unwrap_or_default(),
        rep["count"]
    );
    println!("  accuracy   {}  (95% Wilson)", est(&rep["accuracy"]));
    println!("  macro-F1   {}  (95% bootstrap)", est(&rep["macro_f1"]));
    println!(
        "  ECE        {}  (10 buckets)",
        est(&rep["calibration"]["ece"])
    );
    println!(
        "  {:<24} {:>8} {:>8} {:>7} {:>7}",
        "label", "precision", "recall", "f1", "support"
    );
    if let Some(per) = rep["per_label"].as_object() {
        for (label, v) in per {
            println!(
                "  {:<24} {:>8} {:>8} {:>7.3} {:>7}",
                label,
                pct(&v["precision"]["value"]),
                pct(&v["recall"]["value"]),
                v["f1"].as_f64().unwrap_or(0.0),
                v["recall"]["count"]
            );
        }
    }
}
