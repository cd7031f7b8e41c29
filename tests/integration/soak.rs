//! Soak: a mixed workload — good messages, malformed ones and texts over the limit — through
//! JetStream into a host following the cluster registry, with a new head version deployed every
//! few seconds (minutes in the long run). Every good message gets a result, every bad one an
//! error record of the right kind; head errors stay at zero; the host's memory stays flat.
//!
//! The test suite runs it for 20 s; `scripts/soak.sh 30` runs it for 30 minutes
//! (`HEADSTREAM_SOAK_SECS`, `HEADSTREAM_SOAK_SWAP_SECS`, `HEADSTREAM_SOAK_RATE`) and prints the
//! report.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use headstream_test_util::NatsServer;
use serde_json::{Value, json};

use crate::memory_mib;
use crate::nats_deploy::{deploy_pipeline, deploy_plugin, sentiment_package};
use crate::nats_serve::Host;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deploys the shipped sentiment package under `version`.
fn deploy_version(dir: &std::path::Path, url: &str, version: &str) {
    let package = sentiment_package(dir, version, |_| {});
    deploy_plugin(&package, url);
}

/// What came back: results by id, error records by kind (and by message id), head errors,
/// results by head version.
#[derive(Default)]
struct Tally {
    results: HashMap<String, usize>,
    errors: BTreeMap<String, usize>,
    error_ids: HashMap<String, String>,
    head_errors: usize,
    versions: BTreeMap<String, usize>,
}

impl Tally {
    fn record(&mut self, m: &async_nats::jetstream::Message) {
        let record: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        if m.subject.as_str() == "soak.errors" {
            let kind = record["error"]["kind"].as_str().unwrap_or("?").to_owned();
            // The payload is the original message; malformed JSON still names its id.
            let payload = record["payload"].as_str().unwrap_or_default();
            let id = payload
                .split('"')
                .skip_while(|part| *part != "id")
                .nth(2)
                .unwrap_or_default();
            self.error_ids.insert(id.to_owned(), kind.clone());
            *self.errors.entry(kind).or_default() += 1;
        } else {
            let id = record["id"].as_str().unwrap_or_default().to_owned();
            *self.results.entry(id).or_default() += 1;
            if record["errors"] != json!({}) {
                self.head_errors += 1;
            }
            let version = record["heads"]["sentiment"].as_str().unwrap_or("?");
            *self.versions.entry(version.to_owned()).or_default() += 1;
        }
    }
}

#[test]
fn mixed_workload_with_hot_swaps_keeps_every_message_and_flat_memory() {
    let seconds = env_secs("HEADSTREAM_SOAK_SECS", 20);
    let swap_every = env_secs("HEADSTREAM_SOAK_SWAP_SECS", 5);
    // Messages offered per second, 10 every 20 ms by default (above what a host on two shared
    // cores drains, so the short run also exercises a backlog); long runs offer less.
    let per_tick = (env_secs("HEADSTREAM_SOAK_RATE", 500) / 50).max(1);
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let empty = dir.path().join("local");
    std::fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("{e}"));
    deploy_version(dir.path(), &url, "1.0.0");
    let pipeline = dir.path().join("soak.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"soak\"\n[input]\nsubject = \"soak.in\"\nmax_text_bytes = 2048\n\
         [output]\nsubject = \"soak.out\"\nerrors = \"soak.errors\"\n[delivery]\nmode = \"jetstream\"\n\
         [batching]\nmax_batch_size = 16\nmax_wait_ms = 5\n[[heads]]\nname = \"sentiment\"\n\
         plugin = \"sentiment@^1\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    deploy_pipeline(&pipeline, &url);
    let empty = empty.to_string_lossy();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let js = async_nats::jetstream::new(client.clone());
        // Every result and error record is kept in a stream and read back through an ordered
        // consumer, so the tally misses nothing however long the run (a plain subscription
        // can be cut off as a slow consumer).
        let recorded = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "SOAKREC".into(),
                subjects: vec!["soak.out".into(), "soak.errors".into()],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut records = recorded
            .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .messages()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let host = Host::serve(&["--deployed", "--nats", &url, "--registry", &empty]);
        let pid = host.pid();
        for _ in 0..240 {
            if js.get_stream("SOAK").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        let started = Instant::now();
        let mut sent: HashMap<String, &str> = HashMap::new();
        let mut tally = Tally::default();
        let mut rss = Vec::new();
        let mut swaps = 0;
        let mut next_swap = Duration::from_secs(swap_every);
        let mut i = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while started.elapsed() < Duration::from_secs(seconds) {
            tick.tick().await;
            // Of every 10 messages: 8 good, 1 malformed, 1 over the text limit.
            for _ in 0..per_tick {
                let id = format!("s{i}");
                let (kind, body) = match i % 10 {
                    8 => ("not_json", format!("{{\"id\":\"{id}\", oops")),
                    9 => (
                        "text_too_long",
                        json!({ "id": id, "text": "long ".repeat(600) }).to_string(),
                    ),
                    _ => (
                        "good",
                        json!({ "id": id, "text": format!("review {i}: it was fine") }).to_string(),
                    ),
                };
                js.publish("soak.in", body.into())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sent.insert(id, kind);
                i += 1;
            }
            while let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_millis(1), records.next()).await
            {
                tally.record(&m);
            }
            if started.elapsed() >= next_swap {
                swaps += 1;
                let version = format!("1.{swaps}.0");
                let url = url.clone();
                let dir = dir.path().to_path_buf();
                tokio::task::spawn_blocking(move || deploy_version(&dir, &url, &version));
                next_swap += Duration::from_secs(swap_every);
            }
            if rss.len() < (started.elapsed().as_secs() / 2) as usize + 1 {
                rss.push(memory_mib(pid).0);
            }
        }
        let offered = started.elapsed();
        let good = sent.values().filter(|k| **k == "good").count();
        let bad = sent.len() - good;
        let deadline = Instant::now() + Duration::from_secs(300);
        while tally.results.len() < good || tally.error_ids.len() < bad {
            assert!(
                Instant::now() < deadline,
                "drain: {} of {good} results, {} of {bad} errors",
                tally.results.len(),
                tally.error_ids.len()
            );
            if let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_secs(1), records.next()).await
            {
                tally.record(&m);
            }
        }
        let total = started.elapsed();
        rss.push(memory_mib(pid).0);
        for (id, kind) in &sent {
            if *kind == "good" {
                assert!(tally.results.contains_key(id), "{id}: no result");
            } else {
                assert_eq!(
                    tally.error_ids.get(id).map(String::as_str),
                    Some(*kind),
                    "{id}"
                );
            }
        }
        let repeated: usize = tally.results.values().map(|n| n - 1).sum();
        let warm = rss.get(rss.len().min(3) - 1).copied().unwrap_or_default();
        let last = rss.last().copied().unwrap_or_default();
        let peak = rss.iter().copied().fold(0.0, f64::max);
        let report = json!({
            "seconds": offered.as_secs(),
            "messages": sent.len(),
            "good": good,
            "results": tally.results.len(),
            "repeated_results": repeated,
            "lost": good - tally.results.len(),
            "error_records": tally.errors,
            "head_errors": tally.head_errors,
            "swaps": swaps,
            "results_by_version": tally.versions,
            "offered_msg_per_s": (sent.len() as f64 / offered.as_secs_f64()).round(),
            "throughput_msg_per_s": (sent.len() as f64 / total.as_secs_f64()).round(),
            "rss_mib": { "warm": warm.round(), "peak": peak.round(), "last": last.round(),
                         // At most ~30 samples, evenly spaced, for the report.
                         "samples": rss.iter().step_by(rss.len().div_ceil(30).max(1))
                             .map(|r| r.round()).collect::<Vec<_>>() },
        });
        println!("soak report: {report}");
        assert_eq!(tally.head_errors, 0);
        assert!(swaps >= 1, "no hot swap happened");
        assert!(
            tally.versions.len() >= 2,
            "results from one version only: {:?}",
            tally.versions
        );
        assert!(last - warm < 64.0, "memory grew {warm:.0} -> {last:.0} MiB");
    });
}
