//! The embeddings service on the bus: what a gateway (or any client) sends to
//! [`EMBEDDINGS_SUBJECT`] and what a host answers, and the discovery reply on
//! [`DISCOVER_SUBJECT`]. Vectors travel as base64 of little-endian f32 (OpenAI's
//! `encoding_format = "base64"`), about half the bytes of JSON floats and exact.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Hosts answer embeddings requests under this prefix, one subject per encoder
/// ([`embeddings_subject`]), in one queue group each (one host answers each request).
pub const EMBEDDINGS_SUBJECT: &str = "headstream.embeddings";

/// Where hosts running the encoder with `fingerprint` (`name@sha256:<hex>`) answer:
/// `headstream.embeddings.<first 16 hex of its digest>`, so a request never reaches a host
/// running another encoder (another model, or another precision).
pub fn embeddings_subject(fingerprint: &str) -> String {
    let digest = fingerprint.rsplit(':').next().unwrap_or(fingerprint);
    let short: String = digest.chars().take(16).collect();
    format!("{EMBEDDINGS_SUBJECT}.{short}")
}

/// Every host answers a request here with a [`HostStatus`] (no queue group: gather replies).
pub const DISCOVER_SUBJECT: &str = "headstream.discover";

/// Most texts one embeddings request may carry.
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// Longest text of an embeddings request, in bytes (the encoder reads at most its maximum
/// length in tokens; longer texts are truncated and reported).
pub const MAX_EMBEDDING_TEXT_BYTES: usize = 64 << 10;

/// An embeddings request: texts, and optionally the model they are meant for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    /// The texts, each non-empty (whitespace is a text).
    pub input: Vec<String>,
    /// The model the caller expects (the encoder's name, its full fingerprint, or a hub id
    /// ending in the name); a host running another encoder refuses with `model_not_found`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A host's answer: one vector per text, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsReply {
    /// The encoder's name (`all-minilm-l6-v2`, `all-minilm-l6-v2+int8`).
    pub model: String,
    /// The encoder fingerprint (`name@sha256:...`).
    pub fingerprint: String,
    /// Length of each vector.
    pub dimensions: usize,
    /// Each vector as base64 of little-endian f32 ([`f32_to_base64`]).
    pub data: Vec<String>,
    /// Tokens the encoder read, special tokens included.
    pub prompt_tokens: u64,
    /// Indices of the texts cut at the model's maximum length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<usize>,
    /// The host that answered.
    pub host: String,
}

/// Why a host refused an embeddings request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingsErrorKind {
    /// The request is malformed or past a limit (`param` names the field).
    InvalidRequest,
    /// The host runs another encoder than `model` names.
    ModelNotFound,
    /// The encoder failed.
    Encoder,
    /// The host has as many requests in hand as it takes; retry shortly or elsewhere.
    Busy,
    /// The answer would exceed the server's payload limit; send fewer texts.
    TooLarge,
}

/// A host's refusal: `{"error": {"kind", "message", "param"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingsError {
    /// What went wrong, as a stable kind.
    pub kind: EmbeddingsErrorKind,
    /// Specifics, for people.
    pub message: String,
    /// The request field at fault, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

/// A host's answer on the wire: a reply or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingsAnswer {
    /// The vectors.
    Ok(EmbeddingsReply),
    /// The refusal.
    Err {
        /// Why.
        error: EmbeddingsError,
    },
}

impl EmbeddingsRequest {
    /// Parses and checks a request body: JSON, 1..=[`MAX_EMBEDDING_INPUTS`] non-empty texts
    /// of at most [`MAX_EMBEDDING_TEXT_BYTES`] each.
    pub fn parse(body: &[u8]) -> Result<Self, EmbeddingsError> {
        let invalid = |param: &str, message: String| EmbeddingsError {
            kind: EmbeddingsErrorKind::InvalidRequest,
            message,
            param: Some(param.to_owned()),
        };
        let request: Self = serde_json::from_slice(body)
            .map_err(|e| invalid("input", format!("not an embeddings request: {e}")))?;
        request
            .check()
            .map_err(|(param, message)| invalid(param, message))?;
        Ok(request)
    }

    /// Checks the limits of [`EmbeddingsRequest::parse`]: the field at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self.input.len() {
            0 => return Err(("input", "no texts to embed".into())),
            n if n > MAX_EMBEDDING_INPUTS => {
                return Err((
                    "input",
                    format!("{n} texts; at most {MAX_EMBEDDING_INPUTS} per request"),
                ));
            }
            _ => {}
        }
        for (i, text) in self.input.iter().enumerate() {
            if text.is_empty() {
                return Err(("input", format!("input[{i}] is empty")));
            }
            if text.len() > MAX_EMBEDDING_TEXT_BYTES {
                return Err((
                    "input",
                    format!(
                        "input[{i}] is {} bytes; at most {MAX_EMBEDDING_TEXT_BYTES}",
                        text.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `requested` names the encoder called `name` with fingerprint `fingerprint`: the
/// name, the full fingerprint, or a hub id whose last segment is the name (case-insensitive:
/// `sentence-transformers/all-MiniLM-L6-v2`).
pub fn model_matches(requested: &str, name: &str, fingerprint: &str) -> bool {
    let requested = requested.trim();
    let last = requested.rsplit('/').next().unwrap_or(requested);
    requested.eq_ignore_ascii_case(fingerprint) || last.eq_ignore_ascii_case(name)
}

/// `v` as base64 of its little-endian bytes (OpenAI's `encoding_format = "base64"`).
pub fn f32_to_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The vector [`f32_to_base64`] wrote; `None` if `text` is not base64 of a whole number of f32.
pub fn base64_to_f32(text: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    (bytes.len() % 4 == 0).then(|| {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// One host's answer on [`DISCOVER_SUBJECT`]: who it is and what it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's id (hostname and process id).
    pub host: String,
    /// headstream's version on the host.
    pub version: String,
    /// Its encoder fingerprint.
    pub encoder: String,
    /// Length of its encoder's vectors.
    #[serde(default)]
    pub dimensions: usize,
    /// The pipelines it serves now.
    pub pipelines: Vec<PipelineStatus>,
}

/// A pipeline as a host serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineStatus {
    /// Its name.
    pub name: String,
    /// Where its messages come in.
    pub input: String,
    /// Where results go.
    pub output: String,
    /// `core` (request/reply works) or `jetstream` (through a stream; results on `output`).
    pub delivery: String,
    /// Head name to `name@version`.
    pub heads: serde_json::Value,
    /// Where it was loaded from (file or cluster revision).
    pub source: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_through_base64() {
        let v = [0.0f32, -1.5, 3.25e-7, f32::MAX];
        assert_eq!(base64_to_f32(&f32_to_base64(&v)).as_deref(), Some(&v[..]));
        assert_eq!(base64_to_f32("AAA="), None, "not whole f32s");
        assert_eq!(base64_to_f32("not base64!"), None);
    }

    #[test]
    fn requests_are_checked() {
        let parse = |s: &str| EmbeddingsRequest::parse(s.as_bytes());
        assert!(parse(r#"{"input":["a","b"],"model":"x"}"#).is_ok());
        for (body, needle) in [
            (r#"{"input":[]}"#, "no texts"),
            (r#"{"input":["a",""]}"#, "input[1] is empty"),
            (r#"{"input":"a"}"#, "not an embeddings request"),
            ("{", "not an embeddings request"),
        ] {
            let err = parse(body).err().map(|e| e.message).unwrap_or_default();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let many = serde_json::json!({ "input": vec!["a"; MAX_EMBEDDING_INPUTS + 1] });
        assert!(parse(&many.to_string()).is_err());
        let long = serde_json::json!({ "input": ["x".repeat(MAX_EMBEDDING_TEXT_BYTES + 1)] });
        assert!(parse(&long.to_string()).is_err());
    }

    #[test]
    fn each_encoder_has_its_subject() {
        let fp = format!("all-minilm-l6-v2@sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(
            embeddings_subject(&fp),
            "headstream.embeddings.0123456789abcdef"
        );
    }

    #[test]
    fn models_match_by_name_fingerprint_or_hub_id() {
        let fp = "all-minilm-l6-v2@sha256:ab";
        for ok in [
            "all-minilm-l6-v2",
            "sentence-transformers/all-MiniLM-L6-v2",
            fp,
        ] {
            assert!(model_matches(ok, "all-minilm-l6-v2", fp), "{ok}");
        }
        for bad in ["text-embedding-3-small", "all-minilm-l12-v2", ""] {
            assert!(!model_matches(bad, "all-minilm-l6-v2", fp), "{bad}");
        }
    }

    #[test]
    fn answers_parse_as_reply_or_error() {
        let err = r#"{"error":{"kind":"model_not_found","message":"m"}}"#;
        assert!(matches!(
            serde_json::from_str::<EmbeddingsAnswer>(err),
            Ok(EmbeddingsAnswer::Err { .. })
        ));
    }
}
