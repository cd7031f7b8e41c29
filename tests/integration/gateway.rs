//! `headstream gateway` over a real nats-server and a real host: the official `openai` Python
//! client (PyPI, pinned in `headstream_test_util::OPENAI_PYTHON`) and `curl`, neither written
//! here, get the embeddings `headstream embed` gives (within 1e-5), pipelines answer through
//! it, and every error status it promises is produced: 400, 401, 404, 413, 429 and 503 (both
//! with `Retry-After`); CORS only when configured; SIGTERM stops it cleanly.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use headstream_test_util::{NatsServer, free_port, openai_python, workspace_root};
use serde_json::{Value, json};

use crate::nats_serve::Host;

/// A `headstream gateway` process, killed on drop.
pub(crate) struct Gateway {
    child: Child,
    url: String,
}

impl Gateway {
    pub(crate) fn start(nats: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_headstream"))
            .args([
                "gateway",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--nats",
                nats,
            ])
            .args(args)
            .env_remove("HEADSTREAM_NATS")
            .env_remove("HEADSTREAM_GATEWAY_API_KEYS")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the gateway: {e}"));
        let gateway = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while gateway.get("/health").0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no /health in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        gateway
    }

    fn curl(&self, path: &str, args: &[&str]) -> (u16, String, String) {
        curl(&self.url, path, args)
    }

    fn get(&self, path: &str) -> (u16, String, String) {
        self.curl(path, &[])
    }

    pub(crate) fn post(&self, path: &str, body: &str, key: Option<&str>) -> (u16, String, String) {
        post(&self.url, path, body, key)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(sent.success());
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no exit 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `curl` with `args` against `url` + `path`: status, headers (lower-case), body.
fn curl(url: &str, path: &str, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "-H", "Expect:"])
        .args(args)
        .arg(format!("{url}{path}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_owned())
}

/// POSTs JSON `body` to `url` + `path` with `key` as the bearer token, if any.
fn post(url: &str, path: &str, body: &str, key: Option<&str>) -> (u16, String, String) {
    let auth = key.map(|k| format!("Authorization: Bearer {k}"));
    let mut args = vec![
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
    ];
    if let Some(auth) = &auth {
        args.extend(["-H", auth.as_str()]);
    }
    curl(url, path, &args)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The error object of an OpenAI-shaped error body.
pub(crate) fn error_of(status: u16, body: &str) -> (u16, String, String) {
    let e = &json_of(body)["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "{body}");
    (
        status,
        e["type"].as_str().unwrap_or_default().to_owned(),
        e["code"].as_str().unwrap_or_default().to_owned(),
    )
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
        .collect()
}

/// What `headstream embed` gives for `texts`.
fn reference(texts: &[&str]) -> Vec<Vec<f32>> {
    let input: String = texts
        .iter()
        .map(|t| format!("{}\n", json!({ "text": t })))
        .collect();
    let out = crate::headstream(&["embed"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| floats(&json_of(l)["embedding"]))
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diff = headstream_test_util::max_abs_diff(got, want);
    assert!(diff <= 1e-5, "{what}: max |diff| {diff}");
}

const TEXTS: [&str; 3] = [
    "My parcel has not arrived yet",
    "The app crashes when I open it",
    "I was charged twice this month, please refund me",
];

#[test]
fn the_openai_client_and_curl_get_what_embed_gives_and_every_error_status() {
    let python = openai_python();
    let server = NatsServer::start();
    let root = workspace_root();
    let _host = Host::serve(&[
        "--pipeline",
        &root.join("pipelines/support-triage.toml").to_string_lossy(),
        "--nats",
        &server.url(),
    ]);
    let key = "sk-test-4b1d";
    let mut gateway = Gateway::start(
        &server.url(),
        &["--max-body-bytes", "65536", "--max-batch", "64"],
        &[("HEADSTREAM_GATEWAY_API_KEYS", &format!("other-key, {key}"))],
    );
    // Ready once a host answers embeddings (it loads the model and heads first).
    let started = Instant::now();
    loop {
        let (status, _, body) = gateway.post("/v1/embeddings", r#"{"input":"ping"}"#, Some(key));
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no host within 60 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let want = reference(&TEXTS);

    // The official client: one text at a time, a float batch, a base64 batch.
    let out = Command::new(&python)
        .arg(root.join("tests/fixtures/gateway/openai_client.py"))
        .arg(format!("{}/v1", gateway.url))
        .arg(key)
        .args(TEXTS)
        .output()
        .unwrap_or_else(|e| panic!("python: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = json_of(&String::from_utf8_lossy(&out.stdout));
    for (i, want) in want.iter().enumerate() {
        assert_close(&floats(&client["single"][i]), want, "openai single");
        assert_close(&floats(&client["float"][i]), want, "openai float batch");
    }
    assert_eq!(client["float_index"], json!([0, 1, 2]));
    let b64 = client["base64"].as_str().unwrap_or_default();
    let decoded = headstream_message::embeddings::base64_to_f32(b64).unwrap_or_default();
    assert_close(&decoded, &want[0], "openai base64");
    assert_eq!(client["model"], "all-minilm-l6-v2");
    assert_eq!(client["wrong_model"], 404);
    // Real token counts: [CLS] ... [SEP] per text.
    let tokens = client["prompt_tokens"].as_u64().unwrap_or(0);
    assert!((3 * 8..=3 * 16).contains(&tokens), "{tokens} tokens");

    // curl, both encodings.
    let body = json!({ "input": TEXTS, "model": "all-minilm-l6-v2" }).to_string();
    let (status, _, answer) = gateway.post("/v1/embeddings", &body, Some(key));
    assert_eq!(status, 200, "{answer}");
    let answer = json_of(&answer);
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["usage"]["prompt_tokens"], tokens);
    assert_eq!(answer["usage"]["total_tokens"], tokens);
    for (i, want) in want.iter().enumerate() {
        assert_eq!(answer["data"][i]["object"], "embedding");
        assert_close(&floats(&answer["data"][i]["embedding"]), want, "curl float");
    }
    let body =
        json!({ "input": TEXTS[1], "model": "all-minilm-l6-v2", "encoding_format": "base64" });
    let (status, _, answer) = gateway.post("/v1/embeddings", &body.to_string(), Some(key));
    assert_eq!(status, 200, "{answer}");
    let b64 = json_of(&answer)["data"][0]["embedding"]
        .as_str()
        .map(str::to_owned);
    let decoded = headstream_message::embeddings::base64_to_f32(&b64.unwrap_or_default());
    assert_close(&decoded.unwrap_or_default(), &want[1], "curl base64");

    // Pipelines: one message, a batch, a bad message; listing; hosts; models.
    let (status, _, record) = gateway.post(
        "/v1/pipelines/support-triage",
        r#"{"id":"g-1","text":"The app crashes when I open it","meta":{"from":"http"}}"#,
        Some(key),
    );
    assert_eq!(status, 200, "{record}");
    let record = json_of(&record);
    assert_eq!(record["id"], "g-1");
    assert_eq!(record["meta"]["from"], "http");
    assert_eq!(record["results"]["topic"]["label"], "technical", "{record}");
    assert_eq!(
        record["trace_id"].as_str().map(str::len),
        Some(32),
        "a request without a trace starts one: {record}"
    );
    // A caller's W3C trace reaches the host: the result names it.
    let (status, _, traced) = gateway.curl(
        "/v1/pipelines/support-triage",
        &[
            "-H",
            &format!("Authorization: Bearer {key}"),
            "-H",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"text":"where is my parcel"}"#,
        ],
    );
    assert_eq!(status, 200, "{traced}");
    assert_eq!(
        json_of(&traced)["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let batch = json!({ "messages": TEXTS.iter().enumerate()
        .map(|(i, t)| json!({ "id": format!("b-{i}"), "text": t })).collect::<Vec<_>>() });
    let (status, _, records) = gateway.post(
        "/v1/pipelines/support-triage",
        &batch.to_string(),
        Some(key),
    );
    assert_eq!(status, 200, "{records}");
    let records = json_of(&records);
    assert_eq!(records["results"][2]["id"], "b-2");
    assert_eq!(
        records["results"][0]["results"]["topic"]["label"],
        "shipping"
    );
    let (status, _, listed) = gateway.curl(
        "/v1/pipelines",
        &["-H", &format!("Authorization: Bearer {key}")],
    );
    assert_eq!(status, 200);
    let listed = json_of(&listed);
    assert_eq!(listed["data"][0]["name"], "support-triage", "{listed}");
    assert_eq!(listed["data"][0]["input"], "support.in");
    let (_, _, hosts) = gateway.curl(
        "/v1/hosts",
        &["-H", &format!("Authorization: Bearer {key}")],
    );
    assert_eq!(
        json_of(&hosts)["data"].as_array().map(Vec::len),
        Some(1),
        "{hosts}"
    );
    let (_, _, models) = gateway.curl(
        "/v1/models",
        &["-H", &format!("Authorization: Bearer {key}")],
    );
    assert_eq!(
        json_of(&models)["data"][0]["id"],
        "all-minilm-l6-v2",
        "{models}"
    );

    // The host's budget for callers: at most 16 embeddings requests in hand; a flood past it
    // is refused at once as `busy`, the rest answered in full.
    let fingerprint = json_of(&models)["data"][0]["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let subject = headstream_message::embeddings::embeddings_subject(&fingerprint);
    let runtime = crate::runtime();
    let answers: Vec<Value> = runtime.block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let body = json!({ "input": vec!["a sentence to encode for the flood"; 64] }).to_string();
        let requests = (0..48).map(|_| {
            let request = async_nats::Request::new()
                .payload(body.clone().into())
                .timeout(Some(Duration::from_secs(60)));
            client.send_request(subject.clone(), request)
        });
        futures::future::join_all(requests)
            .await
            .into_iter()
            .map(|r| {
                let message = r.unwrap_or_else(|e| panic!("{e}"));
                serde_json::from_slice(&message.payload).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    });
    let busy = answers
        .iter()
        .filter(|a| a["error"]["kind"] == "busy")
        .count();
    let full = answers
        .iter()
        .filter(|a| a["data"].as_array().is_some_and(|d| d.len() == 64))
        .count();
    assert_eq!(busy + full, 48, "every answer is busy or complete");
    assert!(
        busy >= 48 - 16 - 8 && full >= 16,
        "{busy} busy, {full} answered"
    );

    // 400s.
    for (body, what) in [
        ("{not json", "bad JSON"),
        (r#"{"input":[""]}"#, "an empty text"),
        (r#"{"input":[[101, 102]]}"#, "token ids"),
        (
            r#"{"input":"a","encoding_format":"float16"}"#,
            "an unknown encoding",
        ),
        (r#"{"input":"a","dimensions":128}"#, "other dimensions"),
        (r#"{"model":"all-minilm-l6-v2"}"#, "no input"),
    ] {
        let (status, _, body) = gateway.post("/v1/embeddings", body, Some(key));
        assert_eq!(error_of(status, &body).0, 400, "{what}: {body}");
    }
    let (status, _, body) = gateway.post(
        "/v1/pipelines/support-triage",
        r#"{"text":"   "}"#,
        Some(key),
    );
    assert_eq!(error_of(status, &body).0, 400, "an empty message: {body}");
    // 401.
    for bad in [None, Some("sk-wrong")] {
        let (status, _, body) = gateway.post("/v1/embeddings", r#"{"input":"a"}"#, bad);
        assert_eq!(
            error_of(status, &body),
            (
                401,
                "invalid_request_error".into(),
                "invalid_api_key".into()
            )
        );
    }
    // 404s.
    let (status, _, body) = gateway.post(
        "/v1/embeddings",
        r#"{"input":"a","model":"text-embedding-3-small"}"#,
        Some(key),
    );
    assert_eq!(error_of(status, &body).2, "model_not_found");
    let (status, _, body) = gateway.post("/v1/pipelines/nosuch", r#"{"text":"a"}"#, Some(key));
    assert_eq!(
        error_of(status, &body),
        (
            404,
            "invalid_request_error".into(),
            "pipeline_not_found".into()
        )
    );
    let (status, _, body) = gateway.get("/v2/anything");
    assert_eq!(error_of(status, &body).0, 404);
    // 413: the body, then the batch.
    let big = json!({ "input": "word ".repeat(20_000) }).to_string();
    let (status, _, body) = gateway.post("/v1/embeddings", &big, Some(key));
    assert_eq!(error_of(status, &body).2, "request_too_large", "{status}");
    let many = json!({ "input": vec!["a text"; 65] }).to_string();
    let (status, _, body) = gateway.post("/v1/embeddings", &many, Some(key));
    assert_eq!(
        error_of(status, &body),
        (
            413,
            "invalid_request_error".into(),
            "request_too_large".into()
        )
    );

    // No CORS unless configured.
    let (_, head, _) = gateway.curl("/health", &["-H", "Origin: http://example.test"]);
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    // Docs and metrics.
    let (status, _, spec) = gateway.get("/openapi.json");
    assert_eq!(status, 200);
    let spec = json_of(&spec);
    for path in [
        "/v1/embeddings",
        "/v1/pipelines/{name}",
        "/v1/models",
        "/health",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} not in the OpenAPI document"
        );
    }
    assert!(spec["components"]["schemas"]["EmbeddingsBody"].is_object());
    let (_, _, metrics) = gateway.get("/metrics");
    for line in [
        r#"headstream_gateway_requests_total{route="/v1/embeddings",status="401"} 2"#,
        r#"headstream_gateway_requests_total{route="/v1/embeddings",status="413"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    // SIGTERM: a clean exit.
    assert!(gateway.terminate().success());
}

#[test]
fn no_host_in_time_is_503_and_a_full_gateway_is_429_both_with_retry_after() {
    let server = NatsServer::start();
    let gateway = Gateway::start(
        &server.url(),
        &[
            "--max-in-flight",
            "1",
            "--timeout-ms",
            "4000",
            "--cors-origin",
            "http://app.test",
        ],
        &[],
    );
    // No host at all: 503 at once.
    let (status, head, body) = gateway.post("/v1/embeddings", r#"{"input":"a"}"#, None);
    assert_eq!(
        error_of(status, &body),
        (503, "server_error".into(), "no_host_available".into())
    );
    assert!(head.contains("retry-after: 1"), "{head}");

    // A host that announces itself and then never answers (a hung host, injected here): the
    // one request in flight waits out the deadline (503), and another meanwhile is refused
    // (429).
    let runtime = crate::runtime();
    let client = runtime
        .block_on(async_nats::connect(server.url()))
        .unwrap_or_else(|e| panic!("{e}"));
    let fingerprint = format!("hung-model@sha256:{}", "ab".repeat(32));
    let status = json!({ "host": "hung-1", "version": "0", "encoder": fingerprint,
                         "dimensions": 384, "pipelines": [] });
    let mut discover = runtime
        .block_on(client.subscribe("headstream.discover"))
        .unwrap_or_else(|e| panic!("{e}"));
    let responder = client.clone();
    runtime.spawn(async move {
        use futures::StreamExt as _;
        while let Some(message) = discover.next().await {
            if let Some(reply) = message.reply {
                let _ = responder.publish(reply, status.to_string().into()).await;
            }
        }
    });
    let subject = headstream_message::embeddings::embeddings_subject(&fingerprint);
    let mut hung = runtime
        .block_on(client.queue_subscribe(subject, "q".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    runtime
        .block_on(client.flush())
        .unwrap_or_else(|e| panic!("{e}"));
    let first = {
        let url = gateway.url.clone();
        std::thread::spawn(move || post(&url, "/v1/embeddings", r#"{"input":"a"}"#, None))
    };
    // Once the hung host has the first request, that request holds the only slot until its
    // 4 s deadline: a second one is refused at once.
    let held = runtime.block_on(async {
        use futures::StreamExt as _;
        tokio::time::timeout(Duration::from_secs(10), hung.next()).await
    });
    assert!(
        matches!(held, Ok(Some(_))),
        "the first request never reached the host"
    );
    let (status, head, body) = gateway.post("/v1/embeddings", r#"{"input":"b"}"#, None);
    assert_eq!(
        error_of(status, &body),
        (429, "rate_limit_error".into(), "rate_limit_exceeded".into())
    );
    assert!(head.contains("retry-after: 1"), "{head}");
    let (status, head, body) = first
        .join()
        .unwrap_or_else(|_| panic!("the first request panicked"));
    assert_eq!(error_of(status, &body).0, 503, "{body}");
    assert!(head.contains("retry-after"), "{head}");

    // CORS for the configured origin only.
    let (_, head, _) = gateway.curl("/health", &["-H", "Origin: http://app.test"]);
    assert!(
        head.contains("access-control-allow-origin: http://app.test"),
        "{head}"
    );
    let (_, head, _) = gateway.curl("/health", &["-H", "Origin: http://evil.test"]);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}
