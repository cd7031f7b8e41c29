//! The records a pipeline publishes: one [`ResultRecord`] per message on the output subject, an
//! [`ErrorRecord`] per unusable message on the error subject, a [`ShadowRecord`] per message a
//! shadow head compared. Built typed by the runner, serialised once at the publish edge; the
//! field names and their meaning are the schema consumers rely on (README, "Records").
//!
//! Fields serialise in alphabetical order, as the records always have.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::InputError;

/// A message's result: every head's output or failure, and what produced them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultRecord {
    /// Fingerprint of the encoder (`name@sha256:<hex>`).
    pub encoder: String,
    /// Each failed head's reason (`kind: message`, or `upstream head X failed`).
    pub errors: BTreeMap<String, String>,
    /// Each head's `name@version`; a canary's where the canary served the message.
    pub heads: BTreeMap<String, String>,
    /// The host that served the message (set by `serve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The message id.
    pub id: String,
    /// Idempotency key: `pipeline/id/<digest of the head versions>`; a redelivery's result
    /// carries the same key.
    pub key: String,
    /// The message's `meta`, echoed.
    pub meta: Value,
    /// The pipeline's name.
    pub pipeline: String,
    /// Earlier deliveries of the message (JetStream), when there were any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u64>,
    /// Each successful head's output.
    pub results: BTreeMap<String, Value>,
    /// Routes whose condition held: the record is also published to their subjects. Serialised
    /// as the routes' names.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "route_names")]
    pub routes: Vec<RouteMatch>,
    /// Whether the text was cut at the encoder's maximum length.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The W3C trace the message travelled in (its `traceparent` header, or a trace the host
    /// started for it when it exports traces): 32 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A route a result matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The route's name in the pipeline.
    pub name: String,
    /// The subject the result is also published to.
    pub subject: String,
}

fn route_names<S: Serializer>(routes: &[RouteMatch], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(routes.iter().map(|r| &r.name))
}

/// An unusable message on the pipeline's error subject, with its original bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorRecord {
    /// Why it could not be processed.
    pub error: ErrorReason,
    /// The original payload, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The original payload in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// The pipeline's name.
    pub pipeline: String,
}

/// The reason in an [`ErrorRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReason {
    /// Stable snake_case kind (`not_json`, `max_deliveries`, ...).
    pub kind: String,
    /// Specifics, for people.
    pub message: String,
}

impl ErrorRecord {
    /// The record for an unusable message: the reason and the original payload (as a string
    /// when it is UTF-8, else base64 under `payload_base64`).
    pub fn new(pipeline: &str, error: &InputError, payload: &[u8]) -> Self {
        let (text, base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        };
        Self {
            error: ErrorReason {
                kind: error.kind.to_owned(),
                message: error.message.clone(),
            },
            payload: text,
            payload_base64: base64,
            pipeline: pipeline.to_owned(),
        }
    }
}

/// A shadow head's output beside the live head's, for one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowRecord {
    /// Whether both give the same answer (the same `label`, else the same JSON).
    pub agree: bool,
    /// The head's name in the pipeline.
    pub head: String,
    /// The message id.
    pub id: String,
    /// What the live head said.
    pub live: ShadowSide,
    /// The pipeline's name.
    pub pipeline: String,
    /// What the shadow head said.
    pub shadow: ShadowSide,
}

/// One side of a [`ShadowRecord`]: a version and its output or failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowSide {
    /// The failure, if the head failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The output, if the head answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// `name@version`.
    pub version: String,
}

/// Records print as their JSON (one line), as they are published.
macro_rules! json_display {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let json = serde_json::to_string(self).map_err(|_| fmt::Error)?;
                f.write_str(&json)
            }
        }
    )*};
}
json_display!(ResultRecord, ErrorRecord, ShadowRecord);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn result_records_keep_their_published_shape() {
        let mut record = ResultRecord {
            encoder: "m@sha256:00".into(),
            errors: BTreeMap::from([("b".into(), "timeout: ran past its CPU deadline".into())]),
            heads: BTreeMap::from([("a".into(), "a@1.0.0".into())]),
            host: None,
            id: "1".into(),
            key: "p/1/00".into(),
            meta: json!({}),
            pipeline: "p".into(),
            redelivered: None,
            results: BTreeMap::from([("a".into(), json!({ "label": "x" }))]),
            routes: Vec::new(),
            truncated: false,
            trace_id: None,
        };
        assert_eq!(
            record.to_string(),
            r#"{"encoder":"m@sha256:00","errors":{"b":"timeout: ran past its CPU deadline"},"heads":{"a":"a@1.0.0"},"id":"1","key":"p/1/00","meta":{},"pipeline":"p","results":{"a":{"label":"x"}}}"#
        );
        record.routes.push(RouteMatch {
            name: "escalate".into(),
            subject: "support.escalations".into(),
        });
        record.truncated = true;
        record.redelivered = Some(2);
        record.host = Some("h-1".into());
        let v: Value = serde_json::from_str(&record.to_string()).unwrap_or_default();
        assert_eq!(v["routes"], json!(["escalate"]));
        assert_eq!(
            (&v["truncated"], &v["redelivered"], &v["host"]),
            (&json!(true), &json!(2), &json!("h-1"))
        );
    }

    #[test]
    fn error_records_carry_the_payload_as_text_or_base64() {
        let error = InputError {
            kind: "not_json",
            message: "expected value".into(),
        };
        assert_eq!(
            ErrorRecord::new("p", &error, b"oops").to_string(),
            r#"{"error":{"kind":"not_json","message":"expected value"},"payload":"oops","pipeline":"p"}"#
        );
        let binary = ErrorRecord::new("p", &error, b"\xff\x00");
        assert_eq!(binary.payload, None);
        assert_eq!(binary.payload_base64.as_deref(), Some("/wA="));
    }
}
