//! `headstream serve` with JetStream delivery against a real nats-server: a durable pull
//! consumer; every message gets a result even when nats-server is killed and restarted
//! mid-stream (hosts reconnect; a message is acked only after its result is published, so a
//! redelivery is possible and marked, a loss is not); a message delivered past `max_deliver`
//! goes to the error subject with its payload instead of being retried forever.
//! Needs `cargo plugins`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt as _;
use headstream_test_util::{NatsServer, plugin_path};

use crate::nats_serve::Host;
use serde_json::Value;

const STREAM: &str = "TICKETS";
const CONSUMER: &str = "triage";

fn pipeline(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tickets.toml");
    let text = format!(
        r#"version = 1
name = "tickets"
[input]
subject = "tickets.in"
[output]
subject = "tickets.out"
errors = "tickets.errors"
[delivery]
mode = "jetstream"
stream = "{STREAM}"
consumer = "{CONSUMER}"
max_deliver = 3
ack_wait_ms = 2000
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Input stream, plus a stream that records every result and error record the hosts publish.
async fn streams(js: &jetstream::Context) -> stream::Stream {
    js.get_or_create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["tickets.in".into()],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    js.get_or_create_stream(stream::Config {
        name: "RECORDED".into(),
        subjects: vec!["tickets.out".into(), "tickets.errors".into()],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Publishes to JetStream, retrying while the server is away (the restart).
async fn publish(js: &jetstream::Context, body: String) {
    for _ in 0..100 {
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

#[test]
fn every_message_gets_a_result_across_a_nats_server_restart() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline(dir.path());
    let url = server.url();
    let rt = runtime();
    let _guard = rt.enter();
    let client = rt.block_on(connect(&url));
    let js = jetstream::new(client.clone());
    let mut recorded = rt.block_on(streams(&js));
    let total = 300;
    rt.block_on(async {
        for i in 0..total / 2 {
            publish(
                &js,
                format!(r#"{{"id":"m{i}","text":"refund for order {i}"}}"#),
            )
            .await;
        }
        publish(&js, "not json".into()).await;
    });
    let _host = start_host(&url, &pipeline);
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    let mut errors = Vec::new();
    let mut next = 1;
    let mut restarted = false;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while seen.len() < total || errors.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {total} results and {} error records",
                seen.len(),
                errors.len()
            );
            for (subject, record) in read_new(&mut recorded, &mut next).await {
                if subject == "tickets.errors" {
                    errors.push(record);
                } else if let Some(id) = record["id"].as_str() {
                    seen.entry(id.to_owned()).or_default().push(record.clone());
                }
            }
            if !restarted && seen.len() >= 30 {
                // Mid-stream: kill nats-server and bring it back; then publish the rest.
                restarted = true;
                server.restart();
                for i in total / 2..total {
                    publish(
                        &js,
                        format!(r#"{{"id":"m{i}","text":"refund for order {i}"}}"#),
                    )
                    .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(restarted);
    let expected: HashSet<String> = (0..total).map(|i| format!("m{i}")).collect();
    let got: HashSet<String> = seen.keys().cloned().collect();
    assert_eq!(got, expected, "lost or unknown ids");
    let mut duplicates = 0;
    for (id, records) in &seen {
        assert_eq!(
            records[0]["results"]["flags"]["flags"][0], "refund",
            "{id}: {records:?}"
        );
        // A second result is a redelivery: the same id (the consumer's idempotency key) and
        // the same outputs. It says `redelivered` when the server still knew it had delivered
        // the message; a server killed with SIGKILL may lose its unsynced ack state and deliver
        // it again as new.
        for extra in records.iter().skip(1) {
            duplicates += 1;
            assert_eq!(extra["id"], records[0]["id"]);
            assert_eq!(extra["results"], records[0]["results"], "{id}: {records:?}");
        }
    }
    eprintln!("{total} messages across a restart: 0 lost, {duplicates} redelivered duplicates");
    assert_eq!(errors[0]["error"]["kind"], "not_json");
    assert_eq!(errors[0]["payload"], "not json");
}

#[test]
fn a_message_past_max_deliveries_goes_to_the_error_subject() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = pipeline(dir.path());
    let url = server.url();
    let rt = runtime();
    let _guard = rt.enter();
    let client = rt.block_on(connect(&url));
    let js = jetstream::new(client.clone());
    let mut recorded = rt.block_on(streams(&js));
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
