//! Whether heads are right in production.
//!
//! A host serving a pipeline with `[quality] record = true` keeps a compact [`Prediction`] of
//! each result (per classification head: its version, label and score) in a bounded JetStream
//! key-value bucket. Feedback — "the right answer for this result was X" — arrives as a
//! [`Feedback`] request on `headstream.feedback.<pipeline>`; a host serving the pipeline checks
//! it against the recorded prediction and the head's labels ([`check`]), answers the sender
//! (a [`FeedbackError`] names what is wrong, and nothing is stored), and appends the joined
//! [`Labelled`] record to the bounded `HEADSTREAM_LABELS` stream. Quality figures per head
//! version ([`report::Report`]) are computed from that stream, the latest label of each result
//! counting once.
//!
//! - **Why a key-value bucket for predictions**: a label is joined with one result, looked up by
//!   key; the bucket bounds itself (`max_bytes`, `max_age`, the oldest discarded first) like the
//!   embedding store beside it, and a value is one JSON object of ~100 bytes a head, readable
//!   with `nats kv get`.
//! - **Key**: `<pipeline>.<first 32 hex of sha256(id)>`: any message id fits the key alphabet,
//!   and a redelivered message overwrites its own record.
//! - **Why a stream for labels**: labels are an append-only history read in order, by time
//!   window; a stream keeps them durably within `max_bytes`/`max_age`, and a quality report is
//!   a replay of a subject.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub mod report;

/// Subject prefix feedback requests arrive on: `headstream.feedback.<pipeline>`.
pub const FEEDBACK_PREFIX: &str = "headstream.feedback";
/// Subject prefix accepted labels are stored under: `headstream.labels.<pipeline>`.
pub const LABELS_PREFIX: &str = "headstream.labels";
/// Longest feedback request accepted, in bytes.
pub const MAX_FEEDBACK_BYTES: usize = 4096;
/// Longest `by` (who gave the label) kept, in characters.
const MAX_BY: usize = 128;

/// Where predictions and labels are kept, and how much of them.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityConfig {
    /// Key-value bucket of predictions.
    pub predictions_bucket: String,
    /// Most bytes of predictions kept; the oldest go first.
    pub predictions_max_bytes: i64,
    /// How long a prediction is kept: feedback for an older result is refused as aged out.
    pub predictions_max_age: Duration,
    /// Stream of accepted labels.
    pub labels_stream: String,
    /// Most bytes of labels kept.
    pub labels_max_bytes: i64,
    /// Most labels kept.
    pub labels_max_messages: i64,
    /// How long a label is kept.
    pub labels_max_age: Duration,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            predictions_bucket: "HEADSTREAM_PREDICTIONS".into(),
            predictions_max_bytes: 256 << 20,
            predictions_max_age: Duration::from_secs(30 * 24 * 3600),
            labels_stream: "HEADSTREAM_LABELS".into(),
            labels_max_bytes: 256 << 20,
            labels_max_messages: 1_000_000,
            labels_max_age: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// One classification head's answer, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    /// `name@version` of the head that answered (a canary's when it served the message).
    pub version: String,
    /// The label it gave.
    pub label: String,
    /// Its score for that label.
    pub score: f64,
}

/// What a host records of one result, for joining with feedback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// When the result was made, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The result's idempotency key.
    pub key: String,
    /// First 16 hex digits of the text's sha256 (the text itself is not kept).
    pub text: String,
    /// Per classification head (an output with a string `label` and a numeric `score`).
    pub heads: BTreeMap<String, Predicted>,
}

impl Prediction {
    /// The prediction of `record` (made from `text` at `at_ms`); `None` when no head classified.
    pub fn of(record: &headstream_message::ResultRecord, text: &str, at_ms: u64) -> Option<Self> {
        let heads: BTreeMap<String, Predicted> = record
            .results
            .iter()
            .filter_map(|(head, output)| {
                let label = output.get("label")?.as_str()?;
                let score = output.get("score")?.as_f64()?;
                let version = record.heads.get(head)?;
                Some((
                    head.clone(),
                    Predicted {
                        version: version.clone(),
                        label: label.to_owned(),
                        score,
                    },
                ))
            })
            .collect();
        if heads.is_empty() {
            return None;
        }
        let digest = Sha256::digest(text.as_bytes());
        Some(Self {
            at_ms,
            key: record.key.clone(),
            text: hex(&digest[..8]),
            heads,
        })
    }
}

/// The bucket key of pipeline `pipeline`'s message `id`.
pub fn prediction_key(pipeline: &str, id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("{pipeline}.{}", hex(&digest[..16]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A feedback request: the right answer for one head's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The result's idempotency `key` (`pipeline/id/digest`); or give `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The message id; or give `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The pipeline; optional, it must match the subject's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The head in the pipeline whose answer is labelled.
    pub head: String,
    /// The right label.
    pub label: String,
    /// Who says so (a person, a team, a tool), kept with the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A label joined with the prediction it judges: what the labels stream holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labelled {
    /// When the label was accepted, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// When the result was made.
    pub predicted_at_ms: u64,
    /// The pipeline.
    pub pipeline: String,
    /// The message id.
    pub id: String,
    /// The head in the pipeline.
    pub head: String,
    /// `name@version` of what answered.
    pub version: String,
    /// The label it gave.
    pub predicted: String,
    /// Its score.
    pub score: f64,
    /// The right label.
    pub label: String,
    /// Whether the prediction was right.
    pub correct: bool,
    /// Who gave the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Why feedback was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct FeedbackError {
    /// Stable snake_case kind: `not_json`, `invalid`, `wrong_pipeline`, `not_found`,
    /// `key_mismatch`, `unknown_head`, `not_a_classification`, `unknown_label`, `unavailable`.
    pub kind: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl FeedbackError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The reply a sender gets: `{"error": {"kind", "message"}}`.
    pub fn reply(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "kind": self.kind, "message": self.message } })
    }
}

/// Parses a feedback request for `pipeline` and names the message it labels: `(request, id)`.
pub fn parse(pipeline: &str, payload: &[u8]) -> Result<(Feedback, String), FeedbackError> {
    if payload.len() > MAX_FEEDBACK_BYTES {
        return Err(FeedbackError::new(
            "invalid",
            format!(
                "the request is {} bytes, the limit is {MAX_FEEDBACK_BYTES}",
                payload.len()
            ),
        ));
    }
    let feedback: Feedback = serde_json::from_slice(payload).map_err(|e| {
        let kind = if e.is_data() { "invalid" } else { "not_json" };
        FeedbackError::new(kind, format!("not a feedback request: {e}"))
    })?;
    if let Some(p) = feedback.pipeline.as_deref().filter(|p| *p != pipeline) {
        return Err(FeedbackError::new(
            "wrong_pipeline",
            format!("the request names pipeline {p:?} but was sent for {pipeline:?}"),
        ));
    }
    if feedback.label.is_empty() || feedback.head.is_empty() {
        return Err(FeedbackError::new(
            "invalid",
            "`head` and `label` must not be empty",
        ));
    }
    if feedback
        .by
        .as_ref()
        .is_some_and(|b| b.chars().count() > MAX_BY)
    {
        return Err(FeedbackError::new(
            "invalid",
            format!("`by` is longer than {MAX_BY} characters"),
        ));
    }
    let from_key = match &feedback.key {
        Some(key) => {
            let rest = key.strip_prefix(pipeline).and_then(|r| r.strip_prefix('/'));
            let id = rest.and_then(|r| r.rsplit_once('/')).map(|(id, _)| id);
            match id {
                Some(id) if !id.is_empty() => Some(id.to_owned()),
                _ => {
                    return Err(FeedbackError::new(
                        if rest.is_none() {
                            "wrong_pipeline"
                        } else {
                            "invalid"
                        },
                        format!(
                            "{key:?} is not a result key of pipeline {pipeline:?} ({pipeline}/<id>/<digest>)"
                        ),
                    ));
                }
            }
        }
        None => None,
    };
    let id = match (from_key, &feedback.id) {
        (Some(a), Some(b)) if a != *b => {
            return Err(FeedbackError::new(
                "invalid",
                format!("the key names message {a:?} but `id` is {b:?}"),
            ));
        }
        (Some(id), _) => id,
        (None, Some(id)) if !id.is_empty() => id.clone(),
        _ => {
            return Err(FeedbackError::new(
                "invalid",
                "name the result: its `key`, or the message `id`",
            ));
        }
    };
    Ok((feedback, id))
}

/// Checks `feedback` for message `id` against its recorded `prediction` (`None`: never
/// recorded, or aged out of a bucket keeping `kept`) and the labels of the pipeline's heads
/// (`labels_of(head)`: `None` for a head the pipeline does not have); the joined record.
pub fn check(
    pipeline: &str,
    id: &str,
    feedback: &Feedback,
    prediction: Option<&Prediction>,
    kept: Duration,
    labels_of: impl Fn(&str) -> Option<Vec<String>>,
    now_ms: u64,
) -> Result<Labelled, FeedbackError> {
    let head = feedback.head.as_str();
    let Some(labels) = labels_of(head) else {
        return Err(FeedbackError::new(
            "unknown_head",
            format!("pipeline {pipeline:?} has no head {head:?}"),
        ));
    };
    let Some(prediction) = prediction else {
        return Err(FeedbackError::new(
            "not_found",
            format!(
                "no prediction is recorded for message {id:?} of pipeline {pipeline:?}: it was \
                 not served with `[quality] record = true`, or it aged out (predictions are kept \
                 {} hours)",
                kept.as_secs() / 3600
            ),
        ));
    };
    if let Some(key) = feedback.key.as_deref().filter(|k| *k != prediction.key) {
        return Err(FeedbackError::new(
            "key_mismatch",
            format!(
                "{key:?} is not the result recorded for message {id:?}: that is {:?} (other head versions answered it since)",
                prediction.key
            ),
        ));
    }
    let Some(predicted) = prediction.heads.get(head) else {
        return Err(FeedbackError::new(
            "not_a_classification",
            format!(
                "head {head:?} gave no label for message {id:?} (it failed, or its output is not a classification); feedback labels classification heads"
            ),
        ));
    };
    if !labels.contains(&feedback.label) {
        let shown: Vec<&str> = labels.iter().take(20).map(String::as_str).collect();
        return Err(FeedbackError::new(
            "unknown_label",
            format!(
                "head {head:?} has no label {:?}; its labels: {}{}",
                feedback.label,
                shown.join(", "),
                if labels.len() > 20 { ", ..." } else { "" }
            ),
        ));
    }
    Ok(Labelled {
        at_ms: now_ms,
        predicted_at_ms: prediction.at_ms,
        pipeline: pipeline.to_owned(),
        id: id.to_owned(),
        head: head.to_owned(),
        version: predicted.version.clone(),
        predicted: predicted.label.clone(),
        score: predicted.score,
        label: feedback.label.clone(),
        correct: predicted.label == feedback.label,
        by: feedback.by.clone(),
    })
}

/// Why a bucket or stream could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct StoreError {
    /// The bucket or stream.
    pub what: String,
    /// What the server said.
    pub reason: String,
}

/// Opens the predictions bucket, creating it with its limits if missing.
pub async fn open_predictions(
    jetstream: &async_nats::jetstream::Context,
    config: &QualityConfig,
) -> Result<async_nats::jetstream::kv::Store, StoreError> {
    if let Ok(kv) = jetstream.get_key_value(&config.predictions_bucket).await {
        return Ok(kv);
    }
    jetstream
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: config.predictions_bucket.clone(),
            description: "headstream: each result's classifications, for joining with feedback"
                .into(),
            history: 1,
            max_age: config.predictions_max_age,
            max_bytes: config.predictions_max_bytes,
            ..Default::default()
        })
        .await
        .map_err(|e| StoreError {
            what: format!("predictions bucket {}", config.predictions_bucket),
            reason: e.to_string(),
        })
}

/// Opens the labels stream, creating it with its limits if missing.
pub async fn open_labels(
    jetstream: &async_nats::jetstream::Context,
    config: &QualityConfig,
) -> Result<async_nats::jetstream::stream::Stream, StoreError> {
    use async_nats::jetstream::stream;
    jetstream
        .get_or_create_stream(stream::Config {
            name: config.labels_stream.clone(),
            description: Some("headstream: feedback labels joined with predictions".into()),
            subjects: vec![format!("{LABELS_PREFIX}.>")],
            max_bytes: config.labels_max_bytes,
            max_messages: config.labels_max_messages,
            max_age: config.labels_max_age,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| StoreError {
            what: format!("labels stream {}", config.labels_stream),
            reason: e.to_string(),
        })
}

/// Reads pipeline `pipeline`'s labels from `stream` (from `deliver_policy` on), oldest first.
pub async fn read_labels(
    stream: &async_nats::jetstream::stream::Stream,
    pipeline: &str,
    deliver_policy: async_nats::jetstream::consumer::DeliverPolicy,
) -> Result<Vec<Labelled>, StoreError> {
    let failed = |e: &dyn std::fmt::Display| StoreError {
        what: format!("labels of pipeline {pipeline}"),
        reason: e.to_string(),
    };
    let subject = format!("{LABELS_PREFIX}.{pipeline}");
    let last = stream
        .clone()
        .info()
        .await
        .map_err(|e| failed(&e))?
        .state
        .last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
            Ok(Some(Ok(message))) => {
                let (seq, pending) = message
                    .info()
                    .map(|i| (i.stream_sequence, i.pending))
                    .unwrap_or((last, 0));
                match serde_json::from_slice::<Labelled>(&message.payload) {
                    Ok(l) => out.push(l),
                    Err(e) => tracing::warn!("labels stream sequence {seq}: not a label: {e}"),
                }
                if seq >= last || pending == 0 {
                    break;
                }
            }
            Ok(Some(Err(e))) => return Err(failed(&e)),
            // Nothing more within half a second: the filtered subject has no later labels.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

/// The latest label of each (message, head), in the order they were given.
pub fn latest(labels: Vec<Labelled>) -> Vec<Labelled> {
    let mut last: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        last.insert((l.id.clone(), l.head.clone()), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let mut labels: Vec<Option<Labelled>> = labels.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| labels[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction() -> Prediction {
        Prediction {
            at_ms: 5,
            key: "reviews/m-1/abcd".into(),
            text: "00".into(),
            heads: BTreeMap::from([(
                "sentiment".to_owned(),
                Predicted {
                    version: "sentiment@1.1.0".into(),
                    label: "positive".into(),
                    score: 0.9,
                },
            )]),
        }
    }

    fn labels(head: &str) -> Option<Vec<String>> {
        (head == "sentiment" || head == "flags")
            .then(|| vec!["negative".to_owned(), "positive".to_owned()])
    }

    fn checked(body: &str) -> Result<Labelled, FeedbackError> {
        let (f, id) = parse("reviews", body.as_bytes())?;
        let p = prediction();
        let found = (id == "m-1").then_some(&p);
        check(
            "reviews",
            &id,
            &f,
            found,
            Duration::from_secs(7200),
            labels,
            9,
        )
    }

    #[test]
    fn good_feedback_is_joined_with_its_prediction() {
        let l = checked(r#"{"id":"m-1","head":"sentiment","label":"negative","by":"ana"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                l.version.as_str(),
                l.predicted.as_str(),
                l.label.as_str(),
                l.correct
            ),
            ("sentiment@1.1.0", "positive", "negative", false)
        );
        assert_eq!(
            (l.at_ms, l.predicted_at_ms, l.by.as_deref()),
            (9, 5, Some("ana"))
        );
        let by_key = checked(r#"{"key":"reviews/m-1/abcd","head":"sentiment","label":"positive"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(by_key.correct);
    }

    #[test]
    fn bad_feedback_gets_an_error_that_names_what_is_wrong() {
        let cases = [
            ("{not json", "not_json", "not a feedback request"),
            (r#"{"id":"m-1","head":"sentiment"}"#, "invalid", "label"),
            (
                r#"{"id":"m-1","head":"sentiment","label":"x","extra":1}"#,
                "invalid",
                "extra",
            ),
            (
                r#"{"head":"sentiment","label":"positive"}"#,
                "invalid",
                "name the result",
            ),
            (
                r#"{"id":"m-1","pipeline":"other","head":"sentiment","label":"positive"}"#,
                "wrong_pipeline",
                "other",
            ),
            (
                r#"{"key":"other/m-1/abcd","head":"sentiment","label":"positive"}"#,
                "wrong_pipeline",
                "other/m-1",
            ),
            (
                r#"{"id":"m-2","head":"sentiment","label":"positive"}"#,
                "not_found",
                "aged out (predictions are kept 2 hours)",
            ),
            (
                r#"{"key":"reviews/m-1/ffff","head":"sentiment","label":"positive"}"#,
                "key_mismatch",
                "reviews/m-1/abcd",
            ),
            (
                r#"{"id":"m-1","head":"topic","label":"positive"}"#,
                "unknown_head",
                "\"topic\"",
            ),
            (
                r#"{"id":"m-1","head":"flags","label":"positive"}"#,
                "not_a_classification",
                "\"flags\"",
            ),
            (
                r#"{"id":"m-1","head":"sentiment","label":"neutral"}"#,
                "unknown_label",
                "negative, positive",
            ),
        ];
        for (body, kind, says) in cases {
            let e = checked(body)
                .err()
                .unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(e.kind, kind, "{body}: {e}");
            assert!(e.message.contains(says), "{body}: {e}");
            assert_eq!(e.reply()["error"]["kind"], kind);
        }
        let big = format!(
            r#"{{"id":"m-1","head":"sentiment","label":"{}"}}"#,
            "x".repeat(5000)
        );
        assert_eq!(checked(&big).err().map(|e| e.kind), Some("invalid"));
    }

    #[test]
    fn a_prediction_keeps_only_classifications_with_their_versions() {
        let record = headstream_message::ResultRecord {
            encoder: "e".into(),
            errors: BTreeMap::new(),
            heads: BTreeMap::from([
                ("s".to_owned(), "sentiment@1.1.0".to_owned()),
                ("f".to_owned(), "keyword-flags@0.1.0".to_owned()),
            ]),
            host: None,
            id: "m".into(),
            key: "p/m/d".into(),
            meta: serde_json::Value::Null,
            pipeline: "p".into(),
            redelivered: None,
            results: BTreeMap::from([
                (
                    "s".to_owned(),
                    serde_json::json!({"label": "positive", "score": 0.75}),
                ),
                ("f".to_owned(), serde_json::json!({"flags": ["refund"]})),
            ]),
            routes: Vec::new(),
            truncated: false,
            trace_id: None,
        };
        let p = Prediction::of(&record, "hello", 7).unwrap_or_else(|| panic!("a prediction"));
        assert_eq!(p.heads.len(), 1);
        assert_eq!(p.heads["s"].version, "sentiment@1.1.0");
        assert_eq!(p.text.len(), 16);
        let key = prediction_key("p", "any id / with spaces");
        assert!(key.starts_with("p.") && key.len() == 2 + 32, "{key}");
        assert!(key[2..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_latest_label_of_a_result_counts_once() {
        let mk = |id: &str, label: &str, at| Labelled {
            at_ms: at,
            predicted_at_ms: 0,
            pipeline: "p".into(),
            id: id.into(),
            head: "h".into(),
            version: "h@1".into(),
            predicted: "a".into(),
            score: 0.5,
            label: label.into(),
            correct: label == "a",
            by: None,
        };
        let kept = latest(vec![mk("1", "a", 1), mk("2", "b", 2), mk("1", "b", 3)]);
        let ids: Vec<(&str, &str)> = kept
            .iter()
            .map(|l| (l.id.as_str(), l.label.as_str()))
            .collect();
        assert_eq!(ids, [("2", "b"), ("1", "b")]);
    }
}
