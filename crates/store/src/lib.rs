//! The embedding store. A host serving a pipeline with `[embeddings] store = true` keeps each
//! message's pooled embedding in a JetStream key-value bucket, so history can later be re-scored
//! by heads alone (the encoder is the whole cost of a message; a head costs microseconds).
//!
//! - **Why key-value, not the object store**: values are small (under 1 KiB), looked up one
//!   message at a time by key, and the bucket bounds itself (`max_bytes`, `max_age`) with the
//!   server discarding the oldest; the object store is for large blobs in chunks.
//! - **Key**: `<first 16 hex of the encoder fingerprint's digest>.<sha256 of the text>`: a
//!   vector is only ever found for the encoder that made it, and the same text is stored once.
//! - **Value**: `HSE1`, flags (bit 0: truncated), encoding (1: f16), dimensions (u16), tokens
//!   (u16), then the vector as little-endian f16: 778 bytes for 384 dimensions, a fifth of
//!   JSON floats. f16 keeps 11 significant bits; the effect on the shipped heads is measured
//!   (README, "Measured").
//!
//! [`Writer`] puts from a bounded queue off the serving path: when the queue is full a vector
//! is dropped and counted, never waited for, so storing cannot slow serving down.
#![deny(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The bucket hosts store into unless the host config names another.
pub const DEFAULT_BUCKET: &str = "HEADSTREAM_EMBEDDINGS";

const MAGIC: &[u8; 4] = b"HSE1";
const F16: u8 = 1;
const HEADER: usize = 10;

/// Why the store could not be opened or a value read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The bucket could not be created or opened.
    #[error("embedding store bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket's name.
        bucket: String,
        /// What the server said.
        reason: String,
    },
    /// A stored value is not one this release wrote.
    #[error("not a stored embedding: {0}")]
    Format(&'static str),
}

/// The store's limits (the host config's `[embeddings]`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Bucket name.
    pub bucket: String,
    /// Most bytes the bucket keeps; the oldest values go first.
    pub max_bytes: i64,
    /// How long a value is kept.
    pub max_age: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            bucket: DEFAULT_BUCKET.to_owned(),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A vector as the store gives it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The pooled embedding (from f16).
    pub embedding: Vec<f32>,
    /// Whether the text was cut at the model's maximum length.
    pub truncated: bool,
    /// Tokens the encoder read.
    pub tokens: u16,
}

/// The key of `text`'s vector from the encoder whose fingerprint digest is `digest` (hex).
pub fn key(digest: &str, text: &str) -> String {
    let short: String = digest.chars().take(16).collect();
    let text: String = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{short}.{text}")
}

/// The stored form of a vector.
pub fn encode(embedding: &[f32], truncated: bool, tokens: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 2 * embedding.len());
    out.extend_from_slice(MAGIC);
    out.push(u8::from(truncated));
    out.push(F16);
    out.extend_from_slice(&(embedding.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&(tokens.min(u16::MAX as usize) as u16).to_le_bytes());
    for x in embedding.iter().take(u16::MAX as usize) {
        out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes());
    }
    out
}

/// Reads a value [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Stored, StoreError> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(StoreError::Format("no HSE1 header"));
    }
    if bytes[5] != F16 {
        return Err(StoreError::Format("unknown encoding"));
    }
    let dims = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    let tokens = u16::from_le_bytes([bytes[8], bytes[9]]);
    let data = &bytes[HEADER..];
    if data.len() != 2 * dims {
        return Err(StoreError::Format("length does not match the dimensions"));
    }
    Ok(Stored {
        embedding: data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        truncated: bytes[4] & 1 == 1,
        tokens,
    })
}

/// Opens the bucket of `config`, creating it with its limits if it does not exist.
pub async fn open(
    jetstream: &async_nats::jetstream::Context,
    config: &StoreConfig,
) -> Result<async_nats::jetstream::kv::Store, StoreError> {
    let failed = |e: &dyn std::fmt::Display| StoreError::Bucket {
        bucket: config.bucket.clone(),
        reason: e.to_string(),
    };
    if let Ok(store) = jetstream.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    jetstream
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: config.bucket.clone(),
            description: "headstream: pooled embeddings by encoder and text digest".into(),
            history: 1,
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))
}

/// Counts of a [`Writer`]'s work.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Values the server stored.
    pub written: AtomicU64,
    /// Values dropped because the queue was full or the server refused them.
    pub dropped: AtomicU64,
}

/// Puts values into the bucket from a bounded queue, off the caller's path.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: tokio::sync::mpsc::Sender<(String, Bytes)>,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer task on the current runtime, queueing at most `capacity` values.
    pub fn spawn(store: async_nats::jetstream::kv::Store, capacity: usize) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let counts = stats.clone();
        tokio::spawn(async move {
            while let Some((key, value)) = rx.recv().await {
                match store.put(&key, value).await {
                    Ok(_) => counts.written.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::debug!("embedding store: cannot put {key}: {e}");
                        counts.dropped.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        Self { queue, stats }
    }

    /// Queues `value` under `key`; `false` (and counted as dropped) when the queue is full.
    pub fn offer(&self, key: String, value: Vec<u8>) -> bool {
        let queued = self.queue.try_send((key, value.into())).is_ok();
        if !queued {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_within_f16() {
        let v: Vec<f32> = (0..384).map(|i| ((i as f32) * 0.37).sin() * 0.2).collect();
        let back = decode(&encode(&v, true, 300)).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.truncated);
        assert_eq!(back.tokens, 300);
        assert_eq!(back.embedding.len(), 384);
        let worst = v
            .iter()
            .zip(&back.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{worst}");
        assert_eq!(encode(&v, false, 7).len(), HEADER + 768);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode(b"HSE").is_err());
        assert!(decode(b"XXXX\0\x01\x01\0\0\0\0\0").is_err());
        let mut short = encode(&[1.0, 2.0], false, 1);
        short.pop();
        assert!(decode(&short).is_err());
    }

    #[test]
    fn keys_name_the_encoder_and_the_text() {
        let k = key(&"ab".repeat(32), "hello");
        assert!(k.starts_with("abababababababab."), "{k}");
        assert_eq!(k.len(), 16 + 1 + 64);
        assert_ne!(k, key(&"ab".repeat(32), "hello "));
        assert_ne!(k, key(&"cd".repeat(32), "hello"));
    }
}
