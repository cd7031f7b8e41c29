//! Messages on the bus: parsing a raw body `{"id"?, "text", "meta"?}` into a [`Message`] within
//! a pipeline's [`InputLimits`], or naming what is wrong with it ([`InputError`], a stable
//! `kind`), and the records a pipeline publishes ([`ResultRecord`], [`ErrorRecord`] with the
//! original payload, [`ShadowRecord`]).
//! No I/O; every input, however hostile, gets a value or an error, never a panic (fuzzed by
//! `fuzz/fuzz_targets/message.rs`).
#![deny(missing_docs)]

pub mod embeddings;
pub mod logs;
mod record;
pub mod stats;

pub use record::{ErrorReason, ErrorRecord, ResultRecord, RouteMatch, ShadowRecord, ShadowSide};

use serde_json::{Value, json};

/// One parsed input message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Message id (from the body, the `Nats-Msg-Id` header, or generated).
    pub id: String,
    /// The text to encode.
    pub text: String,
    /// Caller metadata, echoed in the result.
    pub meta: Value,
}

/// Why a message could not be processed; `kind` is stable (`not_json`, `no_text`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// Stable snake_case kind, counted in metrics.
    pub kind: &'static str,
    /// Specifics, for people.
    pub message: String,
}

/// What a pipeline accepts from one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest body, in bytes.
    pub max_message_bytes: usize,
    /// Longest `text`, in bytes of UTF-8.
    pub max_text_bytes: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_text_bytes: 64 << 10,
        }
    }
}

/// Parses a message body `{"id"?, "text", "meta"?}` within the default [`InputLimits`];
/// `default_id` is used when it has no id.
pub fn parse_message(
    body: &[u8],
    default_id: impl FnOnce() -> String,
) -> Result<Message, InputError> {
    parse_message_within(body, InputLimits::default(), default_id)
}

/// Parses a message body `{"id"?, "text", "meta"?}`, refusing bodies and texts past `limits`.
pub fn parse_message_within(
    body: &[u8],
    limits: InputLimits,
    default_id: impl FnOnce() -> String,
) -> Result<Message, InputError> {
    let err = |kind, message: String| InputError { kind, message };
    if body.len() > limits.max_message_bytes {
        return Err(err(
            "too_large",
            format!(
                "{} bytes, the limit is {}",
                body.len(),
                limits.max_message_bytes
            ),
        ));
    }
    let text =
        std::str::from_utf8(body).map_err(|e| err("not_utf8", format!("not valid UTF-8 ({e})")))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| err("not_json", format!("not JSON ({e})")))?;
    let Value::Object(mut object) = value else {
        return Err(err("not_object", "not a JSON object".into()));
    };
    let text = match object.remove("text") {
        Some(Value::String(t)) if t.trim().is_empty() => {
            return Err(err("empty_text", "\"text\" is empty".into()));
        }
        Some(Value::String(t)) if t.len() > limits.max_text_bytes => {
            return Err(err(
                "text_too_long",
                format!(
                    "\"text\" is {} bytes, the limit is {}",
                    t.len(),
                    limits.max_text_bytes
                ),
            ));
        }
        Some(Value::String(t)) => t,
        Some(_) => return Err(err("bad_text", "\"text\" must be a string".into())),
        None => return Err(err("no_text", "no \"text\" field".into())),
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => default_id(),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(err("bad_id", "\"id\" must be a string or number".into())),
    };
    let meta = match object.remove("meta") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(err("bad_meta", "\"meta\" must be an object".into())),
    };
    Ok(Message { id, text, meta })
}

#[cfg(test)]
mod tests {
    use super::{InputLimits, parse_message, parse_message_within};

    fn kind(body: &[u8], limits: InputLimits) -> &'static str {
        match parse_message_within(body, limits, || "x".into()) {
            Ok(_) => "ok",
            Err(e) => e.kind,
        }
    }

    #[test]
    fn bad_messages_are_named() {
        let limits = InputLimits::default();
        assert_eq!(kind(b"\xff", limits), "not_utf8");
        assert_eq!(kind(b"{", limits), "not_json");
        assert_eq!(kind(b"[]", limits), "not_object");
        assert_eq!(kind(br#"{"id":1}"#, limits), "no_text");
        assert_eq!(kind(br#"{"text":"  "}"#, limits), "empty_text");
        assert_eq!(kind(br#"{"text":3}"#, limits), "bad_text");
        assert_eq!(kind(br#"{"text":"a","id":[]}"#, limits), "bad_id");
        assert_eq!(kind(br#"{"text":"a","meta":1}"#, limits), "bad_meta");
        assert_eq!(kind(br#"{"text":"a"}"#, limits), "ok");
    }

    #[test]
    fn message_and_text_sizes_are_bounded() {
        let limits = InputLimits {
            max_message_bytes: 64,
            max_text_bytes: 8,
        };
        assert_eq!(kind(br#"{"text":"12345678"}"#, limits), "ok");
        let long = parse_message_within(br#"{"text":"123456789"}"#, limits, || "x".into());
        let Err(error) = long else { panic!("{long:?}") };
        assert_eq!(error.kind, "text_too_long");
        assert!(
            error.message.contains("9 bytes, the limit is 8"),
            "{}",
            error.message
        );
        let body = format!(r#"{{"text":"{}"}}"#, "a".repeat(100));
        assert_eq!(kind(body.as_bytes(), limits), "too_large");
        // The defaults: 1 MiB bodies, 64 KiB texts.
        let text = "a ".repeat(40 << 10);
        let body = serde_json::json!({ "text": text }).to_string();
        assert!(
            matches!(parse_message(body.as_bytes(), || "x".into()), Err(e) if e.kind == "text_too_long")
        );
    }
}
