//! The embedding store: a host serving a pipeline with `[embeddings] store = true` keeps each
//! message's pooled embedding in the JetStream key-value bucket its host config names, with the
//! limits it names, keyed by encoder and text digest (a repeated text is stored once), as f16
//! within 1e-3 of what `headstream embed` gives.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use headstream_test_util::NatsServer;
use serde_json::{Value, json};

use crate::nats_serve::Host;

const TEXTS: [&str; 6] = [
    "The parcel arrived two days late",
    "Please refund my last payment",
    "The app logs me out every hour",
    "Great support, thank you!",
    "Where can I change my address?",
    "The invoice total looks wrong",
];

#[test]
fn a_storing_pipeline_keeps_each_texts_embedding_once_within_the_buckets_limits() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = dir.path().join("store.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"store\"\n[input]\nsubject = \"store.in\"\n[output]\n\
         subject = \"store.out\"\nerrors = \"store.errors\"\n[embeddings]\nstore = true\n\
         [[heads]]\nname = \"flags\"\nbuiltin = \"keyword-flags\"\n\
         [heads.config.flags]\nrefund = [\"refund\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("headstream.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\npipelines = [{:?}]\n[nats]\nurl = {:?}\n\
             [embeddings]\nbucket = \"TEST_EMBEDDINGS\"\nmax_mb = 8\nmax_age_hours = 2\n",
            pipeline.display().to_string(),
            server.url()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _host = Host::serve(&[std::ffi::OsStr::new("--config"), config.as_os_str()]);

    let runtime = crate::runtime();
    let (records, keys, bucket) = runtime.block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Every text once, the first twice; the host may still be loading at first.
        let mut records = Vec::new();
        for text in TEXTS.iter().chain(&TEXTS[..1]) {
            let started = Instant::now();
            loop {
                let body = json!({ "text": text }).to_string();
                match client.request("store.in", body.into()).await {
                    Ok(reply) => {
                        let record: Value = serde_json::from_slice(&reply.payload)
                            .unwrap_or_else(|e| panic!("{e}"));
                        records.push(record);
                        break;
                    }
                    Err(e) if started.elapsed() < Duration::from_secs(60) => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => panic!("no answer within 60 s: {e}"),
                }
            }
        }
        let jetstream = async_nats::jetstream::new(client);
        let kv = jetstream
            .get_key_value("TEST_EMBEDDINGS")
            .await
            .unwrap_or_else(|e| panic!("the bucket was not created: {e}"));
        // Written off the serving path: wait for them.
        let started = Instant::now();
        let keys = loop {
            let keys: Vec<String> = kv
                .keys()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .filter_map(|k| async move { k.ok() })
                .collect()
                .await;
            if keys.len() >= TEXTS.len() || started.elapsed() > Duration::from_secs(15) {
                break keys;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut values = Vec::new();
        for key in &keys {
            let value = kv
                .get(key)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("{key} vanished"));
            values.push((key.clone(), value));
        }
        let status = kv.status().await.unwrap_or_else(|e| panic!("{e}"));
        (records, values, status)
    });

    assert_eq!(records.len(), TEXTS.len() + 1);
    assert_eq!(keys.len(), TEXTS.len(), "one vector per distinct text");
    let info = bucket.info;
    assert_eq!(info.config.max_bytes, 8 << 20);
    assert_eq!(info.config.max_age, Duration::from_secs(2 * 3600));

    // The vector stored for each text is the encoder's, within f16.
    let fingerprint = records[0]["encoder"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let digest = fingerprint.rsplit(':').next().unwrap_or_default();
    let input: String = TEXTS
        .iter()
        .map(|t| format!("{}\n", json!({ "text": t })))
        .collect();
    let embedded = crate::headstream(&["embed"], input.as_bytes());
    assert!(embedded.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&embedded.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for (text, line) in TEXTS.iter().zip(&lines) {
        let key = headstream_store::key(digest, text);
        let (_, value) = keys
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no vector stored under {key} for {text:?}"));
        let stored = headstream_store::decode(value).unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<f32> = line["embedding"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
            .unwrap_or_default();
        let diff = headstream_test_util::max_abs_diff(&stored.embedding, &want);
        assert!(diff <= 1e-3, "{text:?}: f16 off by {diff}");
        assert!(!stored.truncated);
        assert!(stored.tokens >= 3, "{}", stored.tokens);
        assert!(value.len() < 800, "{} bytes per vector", value.len());
    }
}
