//! Traces across the bus: `headstream request --otlp-endpoint` starts a trace and sends its
//! `traceparent` in the NATS headers; a host with `--otlp-endpoint` exports the message's
//! stages as its children; the result names the trace. The collector is a real OTLP/HTTP
//! endpoint in the test (protobuf decoded with `opentelemetry-proto`), not a mock exporter.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headstream_test_util::{NatsServer, workspace_root};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value;

use crate::nats_serve::Host;

/// An OTLP/HTTP collector on a free loopback port: every span posted to `/v1/traces`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    // Keep-alive: one request after another on the connection.
                    loop {
                        let mut length = 0usize;
                        let mut path = String::new();
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if path.is_empty() {
                                path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                            }
                            if let Some((k, v)) = line.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if path == "/v1/traces"
                            && let Ok(request) = ExportTraceServiceRequest::decode(&body[..])
                        {
                            let mut spans = sink.lock().unwrap_or_else(|e| e.into_inner());
                            for r in request.resource_spans {
                                for s in r.scope_spans {
                                    spans.extend(s.spans);
                                }
                            }
                        }
                        let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                        if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, spans }
    }

    /// The spans of `trace` (hex), once at least `n` have arrived (within 20 s).
    fn trace(&self, trace: &str, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<Span> = self
                .spans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|s| hex(&s.trace_id) == trace)
                .cloned()
                .collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
        match a.value.as_ref()?.value.as_ref()? {
            V::StringValue(s) => Some(s.clone()),
            V::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

const PIPELINE: &str = r#"version = 1
name = "traced"
[input]
subject = "traced.in"
[output]
subject = "traced.out"
errors = "traced.errors"
[batching]
max_batch_size = 8
max_wait_ms = 20
[[heads]]
name = "flags"
builtin = "keyword-flags"
[heads.config.flags]
refund = ["refund"]
[[heads]]
name = "sentiment"
package = "SENTIMENT"
"#;

fn request(url: &str, collector: &str, text: &str) -> Value {
    let args = ["request", "--subject", "traced.in", "--text", text];
    let out = crate::headstream(
        &[&args[..], &["--nats", url, "--otlp-endpoint", collector]].concat(),
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (up to 60 s) until a host answers on `subject`.
fn wait_answering(url: &str, subject: &str) {
    crate::runtime().block_on(async {
        let client = async_nats::connect(url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        crate::nats_serve::wait_answering(&client, subject).await;
    });
}

#[test]
fn a_trace_runs_from_publish_through_every_stage_to_the_result() {
    let server = NatsServer::start();
    let url = server.url();
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sentiment = workspace_root().join("heads/sentiment");
    let pipeline = PIPELINE.replace("SENTIMENT", &sentiment.to_string_lossy());
    let traced = ["--otlp-endpoint", &collector.url];
    let _host = Host::serve_pipeline(dir.path(), &pipeline, &url, &traced);
    wait_answering(&url, "traced.in");
    let result = request(&url, &collector.url, "I want a refund, this is terrible");
    let trace = result["trace_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(trace.len(), 32, "the result names its trace: {result}");
    assert_eq!(result["results"]["flags"]["flags"][0], "refund", "{result}");

    // publish (client) -> process (host) -> batch, encode, head flags, head sentiment, publish
    let spans = collector.trace(&trace, 7);
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let get = |name: &str| -> &Span {
        by_name
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("no span {name:?} in {names:?}"))
    };
    let sent = get("publish traced.in");
    let process = get("process traced");
    assert!(
        sent.parent_span_id.is_empty(),
        "the client's span is the root"
    );
    assert_eq!(
        process.parent_span_id, sent.span_id,
        "the host's span is the client's child"
    );
    assert_eq!(
        attr(process, "headstream.pipeline").as_deref(),
        Some("traced")
    );
    let duration = |s: &Span| s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
    for stage in ["batch", "encode", "head flags", "head sentiment", "publish"] {
        let s = get(stage);
        assert_eq!(
            s.parent_span_id, process.span_id,
            "{stage} is a stage of process"
        );
        assert!(
            s.start_time_unix_nano >= process.start_time_unix_nano
                && s.end_time_unix_nano <= process.end_time_unix_nano,
            "{stage} lies within process"
        );
        println!("{stage}: {} µs", duration(s) / 1000);
    }
    assert!(duration(get("encode")) > 0, "the encoder takes time");
    assert!(duration(process) < 10_000_000_000, "under 10 s");
    assert!(get("encode").start_time_unix_nano >= get("batch").end_time_unix_nano);
    assert!(get("head flags").start_time_unix_nano >= get("encode").end_time_unix_nano);
    assert!(get("publish").start_time_unix_nano >= get("head sentiment").end_time_unix_nano);
    assert_eq!(
        attr(get("head sentiment"), "headstream.head.version").as_deref(),
        Some("sentiment@1.1.0")
    );
    println!("process: {} µs", duration(process) / 1000);
}

#[test]
fn a_jetstream_message_shows_its_wait_in_the_stream() {
    use futures::StreamExt as _;
    let server = NatsServer::start();
    let url = server.url();
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = r#"version = 1
name = "queued"
[input]
subject = "queued.in"
[output]
subject = "queued.out"
errors = "queued.errors"
[delivery]
mode = "jetstream"
[[heads]]
name = "flags"
builtin = "keyword-flags"
[heads.config.flags]
refund = ["refund"]
"#;
    let traced = ["--otlp-endpoint", &collector.url];
    let _host = Host::serve_pipeline(dir.path(), pipeline, &url, &traced);
    let rt = crate::runtime();
    let result: Value = rt.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut results = client
            .subscribe("queued.out")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));
        // The stream exists once the host serves; publishing before that is not stored.
        let js = async_nats::jetstream::new(client.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        while js.get_stream("QUEUED").await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the host did not create its stream"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let out = crate::headstream(
            &[
                "publish",
                "--subject",
                "queued.in",
                "--text",
                "a refund please",
                "--nats",
                &url,
                "--otlp-endpoint",
                &collector.url,
            ],
            b"",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let message = tokio::time::timeout(Duration::from_secs(30), results.next())
            .await
            .unwrap_or_else(|_| panic!("no result within 30 s"))
            .unwrap_or_else(|| panic!("subscription ended"));
        serde_json::from_slice(&message.payload).unwrap_or_else(|e| panic!("{e}"))
    });
    let trace = result["trace_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(trace.len(), 32, "{result}");
    let spans = collector.trace(&trace, 6);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let get = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {names:?}"))
    };
    let (sent, process, queue) = (
        get("publish queued.in"),
        get("process queued"),
        get("queue"),
    );
    assert_eq!(process.parent_span_id, sent.span_id);
    assert_eq!(queue.parent_span_id, process.span_id);
    assert!(queue.end_time_unix_nano <= get("batch").start_time_unix_nano + 1_000);
    assert_eq!(process.start_time_unix_nano, queue.start_time_unix_nano);
    println!(
        "queue {} µs, then batch, encode, head flags, publish",
        queue
            .end_time_unix_nano
            .saturating_sub(queue.start_time_unix_nano)
            / 1000
    );
}
