//! What a hostile head can make the host do for it, against the real encoder: every `embed`
//! limit is exceeded by the `hostile` fixture (built by `cargo plugins`) and must fail its
//! `configure` with a `config` error naming the limit, before the encoder does more than the
//! budget; time the host spends embedding counts toward the setup deadline; log floods are cut,
//! rate-limited and counted.
//!
//! The encoder is wrapped to count what it was asked to encode: the bound is on work, not on
//! wall time (this machine is shared and noisy); the times are printed for the record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use headstream_encoder::{Encoder, EncoderOptions, Tokenized};
use headstream_plugin_host::{
    Embedder, FailureKind, Head, HeadConfig, HostConfig, Item, Limits, PluginError, PluginHost,
};
use headstream_test_util::{model_dir, plugin_path};
use serde_json::{Value, json};

fn encoder() -> Arc<Encoder> {
    static ENCODER: OnceLock<Arc<Encoder>> = OnceLock::new();
    ENCODER
        .get_or_init(|| {
            Arc::new(
                Encoder::load(&model_dir(), EncoderOptions::default())
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .clone()
}

/// The real encoder, counting the texts and tokens it encodes for heads.
#[derive(Debug)]
struct Counting {
    encoder: Arc<Encoder>,
    texts: AtomicUsize,
    tokens: AtomicUsize,
}

impl Counting {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            encoder: encoder(),
            texts: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
        })
    }
    fn encoded(&self) -> (usize, usize) {
        (
            self.texts.load(Ordering::Relaxed),
            self.tokens.load(Ordering::Relaxed),
        )
    }
}

impl Embedder for Counting {
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokenized>, String> {
        Embedder::tokenize(self.encoder.as_ref(), texts)
    }
    fn embed(&self, texts: Vec<Tokenized>) -> Result<Vec<Vec<f32>>, String> {
        let tokens: usize = texts.iter().map(|t| t.ids.len()).sum();
        self.texts.fetch_add(texts.len(), Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        Embedder::embed(self.encoder.as_ref(), texts)
    }
}

fn host(embedder: Arc<Counting>) -> PluginHost {
    PluginHost::new(HostConfig {
        embedder: Some(embedder),
        ..HostConfig::default()
    })
    .unwrap_or_else(|e| panic!("host: {e}"))
}

/// Loads the hostile head in `embed-flood` mode with `config` merged in.
fn flood(
    host: &PluginHost,
    config: Value,
    limits: Limits,
) -> (Result<Head, PluginError>, Duration) {
    let mut merged = json!({ "mode": "embed-flood" });
    if let (Some(m), Some(c)) = (merged.as_object_mut(), config.as_object()) {
        m.extend(c.clone());
    }
    let started = Instant::now();
    let loaded = host.load(
        &plugin_path("hostile"),
        HeadConfig {
            config: merged,
            limits,
            ..HeadConfig::default()
        },
    );
    (loaded, started.elapsed())
}

/// What a refused flood left behind: the failure's text, what the encoder ran for it, and
/// how long the load took.
struct Refused {
    message: String,
    texts: usize,
    tokens: usize,
    took: Duration,
}

/// Loads the hostile head in `embed-flood` mode with `config` and `limits` on a fresh host; the
/// load must fail with a refusal of kind `kind`.
fn refused(config: Value, limits: Limits, kind: FailureKind) -> Refused {
    let counting = Counting::new();
    let shown = config.to_string();
    let (loaded, took) = flood(&host(counting.clone()), config, limits);
    let message = match loaded {
        Err(PluginError::Setup { head, failure }) => {
            assert_eq!(head, "hostile");
            assert_eq!(failure.kind, kind, "{failure}");
            failure.to_string()
        }
        Err(other) => panic!("expected a setup failure, got {other}"),
        Ok(_) => panic!("the flooding head loaded"),
    };
    let (texts, tokens) = counting.encoded();
    eprintln!("{shown}: refused in {took:?} after {texts} texts, {tokens} tokens: {message}");
    Refused {
        message,
        texts,
        tokens,
        took,
    }
}

#[test]
fn a_call_of_1000_long_texts_is_refused_before_the_encoder_runs() {
    // The case from the field: 4,000 texts of 16 KiB, in calls of 1,000 (16 MB each).
    let r = refused(json!({}), Limits::default(), FailureKind::Config);
    assert!(r.message.contains("embed_texts_per_call"), "{}", r.message);
    assert!(
        r.message.contains("1000 texts in one call"),
        "{}",
        r.message
    );
    assert_eq!((r.texts, r.tokens), (0, 0));
}

#[test]
fn over_long_texts_are_refused_before_tokenizing() {
    let r = refused(
        json!({ "per_call": 16 }),
        Limits::default(),
        FailureKind::Config,
    );
    assert!(r.message.contains("embed_text_bytes"), "{}", r.message);
    assert_eq!((r.texts, r.tokens), (0, 0));
}

#[test]
fn many_small_calls_stop_at_the_token_budget() {
    let limits = Limits::default();
    let config = json!({ "texts": 4000, "text_bytes": 400, "per_call": 8 });
    let r = refused(config, limits, FailureKind::Config);
    assert!(r.message.contains("`embed_tokens`"), "{}", r.message);
    assert!(
        r.tokens <= limits.embed.tokens,
        "{} tokens encoded",
        r.tokens
    );
    assert!(
        r.tokens > 0,
        "nothing was encoded before the budget ran out"
    );
}

#[test]
fn one_call_over_the_per_call_token_budget_is_refused_before_the_encoder_runs() {
    // 16 texts of ~70 tokens: within the per-call text limit, over its 1,024 tokens.
    let config = json!({ "texts": 4000, "text_bytes": 400, "per_call": 16 });
    let r = refused(config, Limits::default(), FailureKind::Config);
    assert!(
        r.message.contains("`embed_tokens_per_call`"),
        "{}",
        r.message
    );
    assert_eq!((r.texts, r.tokens), (0, 0));
}

#[test]
fn many_tiny_texts_stop_at_the_text_budget() {
    let limits = Limits::default();
    let config = json!({ "texts": 4000, "text_bytes": 8, "per_call": 64 });
    let r = refused(config, limits, FailureKind::Config);
    assert!(r.message.contains("`embed_texts`"), "{}", r.message);
    assert!(r.texts <= limits.embed.texts);
}

#[test]
fn time_in_embed_counts_toward_the_setup_deadline() {
    // Budgets out of the way: only the deadline can stop it.
    let mut limits = Limits {
        setup_deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    limits.embed.texts = usize::MAX;
    limits.embed.tokens = usize::MAX;
    limits.embed.tokens_per_call = usize::MAX;
    // Calls of 64 texts of ~200 tokens: one call is many seconds of encoding.
    let config = json!({ "texts": 100000, "text_bytes": 1000, "per_call": 64 });
    let r = refused(config, limits, FailureKind::Timeout);
    eprintln!("deadline 300 ms: stopped after {:?}", r.took);
    // The host stopped inside the first call, between its passes, and said so: the guest's
    // own epoch deadline could only have stopped it after the whole call (64 texts).
    assert!(
        r.message.contains("in `embed` on the head's behalf"),
        "{}",
        r.message
    );
    assert!(
        r.texts < 64,
        "{} texts encoded: the first call ran to its end",
        r.texts
    );
}

#[test]
fn raised_limits_let_a_head_that_needs_more_through() {
    let counting = Counting::new();
    let host = host(counting.clone());
    let mut limits = Limits::default();
    limits.embed.texts = 300;
    let loaded = flood(
        &host,
        json!({ "texts": 300, "text_bytes": 8, "per_call": 50 }),
        limits,
    )
    .0;
    assert!(loaded.is_ok(), "{:?}", loaded.err().map(|e| e.to_string()));
    assert_eq!(counting.encoded().0, 300);
}

#[test]
fn a_reconfigure_takes_earlier_embeddings_from_the_cache() {
    let counting = Counting::new();
    let host = host(counting.clone());
    let head = flood(
        &host,
        json!({ "texts": 32, "text_bytes": 40, "per_call": 16 }),
        Limits::default(),
    )
    .0
    .unwrap_or_else(|e| panic!("{e}"));
    let first = counting.encoded();
    assert_eq!(first.0, 32);
    // A fresh instance configures again (as after a trap): same texts, no encoder work.
    head.reset();
    let e = [0.0f32; 4];
    let out = head.run(&[Item {
        id: "1",
        text: "fine",
        embedding: &e,
        token_states: None,
        upstream: Vec::new(),
        layers: &[],
    }]);
    assert_eq!(out, vec![Ok(json!({ "len": 4 }))]);
    assert_eq!(counting.encoded(), first);
}

#[test]
fn log_floods_are_dropped_over_the_budget_and_counted() {
    let host = PluginHost::new(HostConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let limits = Limits {
        deadline: Duration::from_secs(5),
        ..Limits::default()
    };
    let head = host
        .load(
            &plugin_path("hostile"),
            HeadConfig {
                config: json!({ "mode": "log-flood", "lines": 500 }),
                limits,
                ..HeadConfig::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let e = [0.0f32; 4];
    let batch = [Item {
        id: "1",
        text: "boom",
        embedding: &e,
        token_states: None,
        upstream: Vec::new(),
        layers: &[],
    }];
    let out = head.run(&batch);
    assert_eq!(out, vec![Ok(json!({ "len": 4 }))]);
    let dropped = head.take_log_lines_dropped();
    // 500 lines: the burst written (plus the few refilled while the loop ran), the rest
    // dropped.
    let burst = u64::from(limits.log.burst);
    assert!((400..=500 - burst).contains(&dropped), "{dropped} dropped");
    assert_eq!(head.take_log_lines_dropped(), 0);
    // The next batch at once: the bucket is empty, nearly everything is dropped.
    head.run(&batch);
    assert!(head.take_log_lines_dropped() >= 495);
}
