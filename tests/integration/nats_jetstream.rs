//! `headstream serve` with JetStream delivery against a real nats-server: a durable pull
//! consumer; every message gets a result even when nats-server is killed and restarted
//! mid-stream (hosts reconnect; a message is acked only after its result is published, so a
//! redelivery is possible and marked, a loss is not); a message delivered past `max_deliver`
//! goes to the error subject with its payload instead of being retried forever. With
//! `output.confirm`, results are stored in their stream even across a cluster failover or a
//! stream that stops storing for a while.
//! Needs `cargo plugins`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt as _;
use headstream_test_util::{NatsCluster, NatsServer, plugin_path};

use crate::nats_serve::Host;
use crate::runtime;
use serde_json::Value;

const STREAM: &str = "TICKETS";
const CONSUMER: &str = "triage";

/// The tickets pipeline with extra `[output]` and `[delivery]` settings.
fn pipeline(dir: &std::path::Path, output: &str, delivery: &str) -> std::path::PathBuf {
    let path = dir.join("tickets.toml");
    let text = format!(
        r#"version = 1
name = "tickets"
[input]
subject = "tickets.in"
[output]
subject = "tickets.out"
errors = "tickets.errors"
{output}
[delivery]
mode = "jetstream"
stream = "{STREAM}"
consumer = "{CONSUMER}"
max_deliver = 3
ack_wait_ms = 2000
{delivery}
[batching]
max_batch_size = 16
max_wait_ms = 5
[[heads]]
name = "flags"
component = {:?}
[heads.config.flags]
refund = ["refund"]
"#,
        plugin_path("keyword-flags").display().to_string()
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn start_host(nats: &str, pipeline: &std::path::Path) -> Host {
    Host::serve(&[
        std::ffi::OsStr::new("--nats"),
        nats.as_ref(),
        "--pipeline".as_ref(),
        pipeline.as_os_str(),
    ])
}

/// A host like [`start_host`]'s, with `extra` arguments and its stderr kept in a file.
fn logged_host(
    nats: &str,
    pipeline: &std::path::Path,
    extra: &[&str],
) -> (Host, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    let stderr = log.reopen().unwrap_or_else(|e| panic!("{e}"));
    let mut args = vec![
        std::ffi::OsStr::new("--nats"),
        nats.as_ref(),
        "--pipeline".as_ref(),
        pipeline.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    (Host::serve_with(&args, &[], stderr), log)
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url.split(',').collect::<Vec<_>>())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Input stream, plus a stream that records every result and error record the hosts publish
/// (`replicas` copies of each; retried while a new cluster elects its JetStream leader).
async fn streams(js: &jetstream::Context, replicas: usize) -> stream::Stream {
    let create = |name: &str, subjects: &[&str]| {
        let config = stream::Config {
            name: name.into(),
            subjects: subjects.iter().map(|s| (*s).into()).collect(),
            num_replicas: replicas,
            ..Default::default()
        };
        async move {
            for _ in 0..300 {
                if let Ok(stream) = js.get_or_create_stream(config.clone()).await {
                    return stream;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("cannot create stream {}", config.name);
        }
    };
    create(STREAM, &["tickets.in"]).await;
    create("RECORDED", &["tickets.out", "tickets.errors"]).await
}

/// Publishes to JetStream, retrying while the server is away (the restart).
async fn publish(js: &jetstream::Context, body: String) {
    for _ in 0..300 {
        let stored: Result<_, jetstream::context::PublishError> =
            async { js.publish("tickets.in", body.clone().into()).await?.await }.await;
        if stored.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not publish {body}");
}

/// Records in RECORDED from sequence `*next` on.
async fn read_new(recorded: &mut stream::Stream, next: &mut u64) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Ok(info) = recorded.info().await else {
        return out;
    };
    let last = info.state.last_sequence;
    while *next <= last {
        match recorded.get_raw_message(*next).await {
            Ok(m) => {
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                out.push((m.subject.to_string(), v));
                *next += 1;
            }
            Err(_) => break,
        }
    }
    out
}

/// A nats-server-backed JetStream setup for one test: the pipeline file, a runtime, a
/// JetStream context and the stream recording every result and error record.
struct Rig {
    _dir: tempfile::TempDir,
    pipeline: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    recorded: stream::Stream,
}

impl Rig {
    /// Connects to `url` (comma-separated servers) with streams of `replicas` copies; the
    /// pipeline gets `output` and `delivery` settings on top of the defaults.
    fn new(url: &str, replicas: usize, output: &str, delivery: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pipeline = pipeline(dir.path(), output, delivery);
        let rt = runtime();
        let (js, recorded) = rt.block_on(async {
            let client = connect(url).await;
            let js = jetstream::new(client);
            let recorded = streams(&js, replicas).await;
            (js, recorded)
        });
        Self {
            _dir: dir,
            pipeline,
            rt,
            js,
            recorded,
        }
    }
}

fn ticket(i: usize) -> String {
    format!(r#"{{"id":"m{i}","text":"refund for order {i}"}}"#)
}

/// What a fault scenario produced: results by message id, and error records.
struct Outcome {
    seen: HashMap<String, Vec<Value>>,
    errors: Vec<Value>,
}

/// Publishes `total` tickets, half before and half after `fault` (run once `after` results
/// are in), and gathers results until every ticket has one and `errors` error records came.
fn through_fault(
    rig: &mut Rig,
    total: usize,
    errors: usize,
    after: usize,
    fault: impl FnOnce(),
) -> Outcome {
    let Rig {
        rt, js, recorded, ..
    } = rig;
    rt.block_on(async {
        for i in 0..total / 2 {
            publish(js, ticket(i)).await;
        }
    });
    let mut outcome = Outcome {
        seen: HashMap::new(),
        errors: Vec::new(),
    };
    let mut next = 1;
    let mut fault = Some(fault);
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while outcome.seen.len() < total || outcome.errors.len() < errors {
            if tokio::time::Instant::now() >= deadline {
                let missing: Vec<usize> = (0..total)
                    .filter(|i| !outcome.seen.contains_key(&format!("m{i}")))
                    .take(50)
                    .collect();
                panic!(
                    "only {} of {total} results and {} error records; missing (first 50) {missing:?}; errors {:?}",
                    outcome.seen.len(),
                    outcome.errors.len(),
                    outcome.errors.first()
                );
            }
            for (subject, record) in read_new(recorded, &mut next).await {
                if subject == "tickets.errors" {
                    outcome.errors.push(record);
                } else if let Some(id) = record["id"].as_str() {
                    outcome
                        .seen
                        .entry(id.to_owned())
                        .or_default()
                        .push(record.clone());
                }
            }
            if outcome.seen.len() >= after
                && let Some(fault) = fault.take()
            {
                fault();
                for i in total / 2..total {
                    publish(js, ticket(i)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(fault.is_none(), "the fault never ran");
    assert_eq!(
        outcome.errors.len(),
        errors,
        "unexpected error records: {:?}",
        outcome.errors
    );
    let expected: HashSet<String> = (0..total).map(|i| format!("m{i}")).collect();
    let got: HashSet<String> = outcome.seen.keys().cloned().collect();
    assert_eq!(got, expected, "lost or unknown ids");
    outcome
}

/// Checks every result and returns how many were repeats. A repeat carries the same id and
/// idempotency key (message, pipeline, head versions) and the same outputs; with `marked`, it
/// also says `redelivered`.
fn repeats(outcome: &Outcome, marked: bool) -> usize {
    let mut duplicates = 0;
    for (id, records) in &outcome.seen {
        assert_eq!(
            records[0]["results"]["flags"]["flags"][0], "refund",
            "{id}: {records:?}"
        );
        assert!(
            records[0]["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("tickets/"))
        );
        for extra in records.iter().skip(1) {
            duplicates += 1;
            assert_eq!(extra["id"], records[0]["id"]);
            assert_eq!(extra["key"], records[0]["key"], "{id}: {records:?}");
            assert_eq!(extra["results"], records[0]["results"], "{id}: {records:?}");
            if marked {
                assert!(
                    records.iter().any(|r| r["redelivered"].as_u64() >= Some(1)),
                    "{id}: a repeat not marked as a redelivery: {records:?}"
                );
            }
        }
    }
    duplicates
}

#[test]
fn every_message_gets_a_result_across_a_nats_server_restart() {
    let mut server = NatsServer::start();
    let url = server.url();
    let mut rig = Rig::new(&url, 1, "confirm = true", "");
    rig.rt.block_on(publish(&rig.js, "not json".into()));
    let _host = start_host(&url, &rig.pipeline);
    let total = 300;
    // Mid-stream: kill nats-server and bring it back.
    let outcome = through_fault(&mut rig, total, 1, 30, || server.restart());
    // A server killed with SIGKILL may lose its unsynced ack state and deliver a message again
    // as new, so repeats are not always marked here; they still carry the same key.
    let duplicates = repeats(&outcome, false);
    eprintln!("{total} messages across a nats-server restart: 0 lost, {duplicates} repeated");
    assert_eq!(outcome.errors[0]["error"]["kind"], "not_json");
    assert_eq!(outcome.errors[0]["payload"], "not json");
}

/// Two hosts share the stream; `stop` is done to one of them once 100 of 400 results are in.
/// Returns what came out, once both hosts are seen to have served.
fn one_of_two_hosts_stops(stop: impl FnOnce(&mut Host)) -> Outcome {
    let server = NatsServer::start();
    let url = server.url();
    let mut rig = Rig::new(&url, 1, "", "");
    let mut leaving = start_host(&url, &rig.pipeline);
    let _staying = start_host(&url, &rig.pipeline);
    let outcome = through_fault(&mut rig, 400, 0, 100, || stop(&mut leaving));
    let hosts: HashSet<&str> = outcome
        .seen
        .values()
        .flatten()
        .filter_map(|r| r["host"].as_str())
        .collect();
    assert_eq!(hosts.len(), 2, "both hosts served before one stopped");
    outcome
}

#[test]
fn a_host_killed_mid_stream_loses_nothing_and_marks_its_repeats() {
    // One host is frozen mid-stream and SIGKILLed a second later: the share of the second
    // half the server gave its open pull requests was never acked, and comes back to the
    // other host after `ack_wait` (2 s here). (Killed at once, an idle host may hold nothing.)
    let outcome = one_of_two_hosts_stops(|host| host.freeze_then_kill(Duration::from_secs(1)));
    let duplicates = repeats(&outcome, true);
    let redelivered = outcome
        .seen
        .values()
        .flatten()
        .filter(|r| r["redelivered"].as_u64().is_some())
        .count();
    eprintln!(
        "400 messages, one of two hosts SIGKILLed: 0 lost, {duplicates} repeated, {redelivered} results of redeliveries"
    );
    // The killed host held pulled, unacked messages: they came back to the survivor, marked.
    assert!(
        redelivered > 0,
        "no redelivery after killing a host mid-stream"
    );
}

#[test]
fn a_host_stopped_by_sigterm_mid_stream_loses_nothing() {
    let mut stopped = None;
    let outcome = one_of_two_hosts_stops(|host| {
        host.terminate();
        stopped = host.wait_exit(Duration::from_secs(60));
    });
    let duplicates = repeats(&outcome, true);
    let (status, took) = stopped.unwrap_or_else(|| panic!("the host did not exit on SIGTERM"));
    eprintln!(
        "400 messages, one of two hosts stopped by SIGTERM: exited in {took:?} ({status}), 0 lost, {duplicates} repeated"
    );
    // Under load with the server up, the drain finishes: a clean exit.
    assert!(status.success(), "{status}");
}

/// Starts a host with `--shutdown-timeout SECONDS` on a JetStream pipeline, waits for its first
/// result, then stops nats-server: the state in which a host used to hang on SIGTERM.
fn host_with_server_gone(seconds: &str) -> (Host, tempfile::NamedTempFile) {
    let mut server = NatsServer::start();
    let url = server.url();
    let mut rig = Rig::new(&url, 1, "", "");
    let (host, log) = logged_host(&url, &rig.pipeline, &["--shutdown-timeout", seconds]);
    let Rig {
        rt, js, recorded, ..
    } = &mut rig;
    rt.block_on(async {
        publish(js, ticket(0)).await;
        let mut next = 1;
        for _ in 0..1200 {
            if !read_new(recorded, &mut next).await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the host never served");
    });
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    (host, log)
}

#[test]
fn sigterm_with_the_server_gone_exits_within_the_shutdown_timeout() {
    let (mut host, log) = host_with_server_gone("2");
    host.terminate();
    let exited = host.wait_exit(Duration::from_secs(60));
    let log = std::fs::read_to_string(log.path()).unwrap_or_else(|e| panic!("{e}"));
    let (status, took) = exited.unwrap_or_else(|| panic!("no exit 60 s after SIGTERM:\n{log}"));
    eprintln!("SIGTERM, server gone, shutdown_timeout 2 s: exited in {took:?} ({status})");
    assert!(log.contains("at most 2 s"), "{log}");
    // The drain could not publish or flush: it gave up at the timeout, said so, and left the
    // unacked messages to JetStream.
    assert!(!status.success(), "{status}");
    assert!(
        log.contains("did not finish within the shutdown timeout (2 s)"),
        "{log}"
    );
    // Bounded by the timeout (plus the hard stop a second after it), far from forever.
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn a_shutdown_timeout_that_is_not_seconds_is_refused() {
    let run = crate::headstream(
        &[
            "serve",
            "--pipeline",
            "x.toml",
            "--shutdown-timeout",
            "soon",
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("\"soon\" is not a number of seconds (0 or more)"),
        "{stderr}"
    );
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let (mut host, log) = host_with_server_gone("120");
    host.terminate();
    std::thread::sleep(Duration::from_millis(500));
    host.terminate();
    let exited = host.wait_exit(Duration::from_secs(60));
    let log = std::fs::read_to_string(log.path()).unwrap_or_else(|e| panic!("{e}"));
    let (status, took) = exited.unwrap_or_else(|| panic!("no exit after two SIGTERMs:\n{log}"));
    eprintln!(
        "two SIGTERMs, server gone, shutdown_timeout 120 s: exited {took:?} after the second ({status})"
    );
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("second signal, exiting now"), "{log}");
}

#[test]
fn a_three_node_cluster_loses_a_node_and_nothing_is_lost() {
    let mut cluster = NatsCluster::start(3);
    // The test's own client talks to the nodes that stay.
    let survivors = cluster.nodes[1..]
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    // Results are confirmed by RECORDED (also three copies): one published while that
    // stream elects a new leader is not stored, so its input is not acked and comes again.
    let mut rig = Rig::new(&survivors, 3, "confirm = true", "replicas = 3");
    // Hosts connect to the node that will die and learn the others from it (cluster gossip).
    let first = cluster.nodes[0].url();
    let _hosts = [
        start_host(&first, &rig.pipeline),
        start_host(&first, &rig.pipeline),
    ];
    let total = 300;
    let node = &mut cluster.nodes[0];
    let outcome = through_fault(&mut rig, total, 0, 50, || node.kill());
    let duplicates = repeats(&outcome, false);
    eprintln!(
        "{total} messages, one of three cluster nodes SIGKILLed: 0 lost, {duplicates} repeated"
    );
}

#[test]
fn confirmed_results_wait_out_a_results_stream_that_stops_storing() {
    let server = NatsServer::start();
    let url = server.url();
    let mut rig = Rig::new(&url, 1, "confirm = true", "");
    let (_host, log) = logged_host(&url, &rig.pipeline, &[]);
    let total = 200;
    // Mid-stream, RECORDED stops capturing results for 7 s (as a stream without a leader
    // would): hosts keep the batch in hand, publish again, and lose nothing — and, the
    // messages kept in progress, spend none of their deliveries: neither the batch in hand nor
    // the messages pulled behind it, which 7 s (past `max_deliver` 3 × `ack_wait` 2 s) left
    // alone would run out of.
    let away = {
        let url = url.clone();
        move || {
            std::thread::spawn(move || {
                runtime().block_on(async {
                    let js = jetstream::new(connect(&url).await);
                    let set = |subjects: &[&str]| stream::Config {
                        name: "RECORDED".into(),
                        subjects: subjects.iter().map(|s| (*s).into()).collect(),
                        ..Default::default()
                    };
                    js.update_stream(set(&["tickets.errors"]))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    tokio::time::sleep(Duration::from_secs(7)).await;
                    js.update_stream(set(&["tickets.out", "tickets.errors"]))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                });
            });
        }
    };
    let outcome = through_fault(&mut rig, total, 0, 40, away);
    let duplicates = repeats(&outcome, false);
    let log = std::fs::read_to_string(log.path()).unwrap_or_else(|e| panic!("{e}"));
    let retries = log.matches("results not stored yet").count();
    eprintln!(
        "{total} confirmed results, results stream away for 7 s: 0 lost, {duplicates} repeated, {retries} retries"
    );
    assert!(retries > 0, "no publish was retried:\n{log}");
    // Retried publishes carry the result's key as `Nats-Msg-Id`: the stream stores each once.
    assert_eq!(duplicates, 0);
}

#[test]
fn a_message_past_max_deliveries_goes_to_the_error_subject() {
    let server = NatsServer::start();
    let url = server.url();
    let Rig {
        _dir,
        pipeline,
        rt,
        js,
        mut recorded,
    } = Rig::new(&url, 1, "", "");
    // Let a host create the durable consumer, then take it away.
    let host = start_host(&url, &pipeline);
    let input = rt.block_on(async {
        let input = js
            .get_stream(STREAM)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..600 {
            if input.consumer_info(CONSUMER).await.is_ok() {
                return input;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the host did not create its consumer");
    });
    drop(host);
    rt.block_on(async {
        // The killed host's pull requests linger on the server until they expire; wait them
        // out so that none of them takes (and spends) a delivery of the poison message.
        for _ in 0..100 {
            let waiting = input
                .clone()
                .consumer_info(CONSUMER)
                .await
                .map_or(1, |info| info.num_waiting);
            if waiting == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        publish(&js, r#"{"id":"poison","text":"crashes every host"}"#.into()).await;
        // Three deliveries that end without an ack, as if three hosts died on the message.
        let consumer: consumer::PullConsumer = input
            .get_consumer(CONSUMER)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut delivered = 0;
        while delivered < 3 {
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            while let Some(Ok(m)) = batch.next().await {
                delivered += 1;
                m.ack_with(AckKind::Nak(None))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    });
    let _host = start_host(&url, &pipeline);
    let mut next = 1;
    let record = rt.block_on(async {
        for _ in 0..1200 {
            if let Some((subject, record)) =
                read_new(&mut recorded, &mut next).await.into_iter().next()
            {
                assert_eq!(
                    subject, "tickets.errors",
                    "the poison message was processed: {record}"
                );
                return record;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no error record for the message past max deliveries");
    });
    assert_eq!(record["error"]["kind"], "max_deliveries", "{record}");
    assert_eq!(
        record["payload"],
        r#"{"id":"poison","text":"crashes every host"}"#
    );
    // It was acked: nothing left pending on the consumer.
    rt.block_on(async {
        for _ in 0..100 {
            let info = input
                .clone()
                .consumer_info(CONSUMER)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if (info.num_ack_pending, info.num_pending) == (0, 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the message was not acknowledged");
    });
}
