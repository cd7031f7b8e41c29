//! The host's embeddings endpoint (`headstream.embeddings.<encoder digest>`, a micro-service
//! endpoint, so one host of the queue group answers each request) and its discovery answer
//! (`headstream.discover`, every host answers). Texts are encoded through the same co-batcher
//! as the pipelines' batches, so embeddings traffic shares encoder passes with them.

use std::sync::Arc;

use headstream_encoder::EncodedText;
use headstream_message::embeddings::{
    EmbeddingsAnswer, EmbeddingsError, EmbeddingsErrorKind, EmbeddingsReply, EmbeddingsRequest,
    HostStatus, PipelineStatus, f32_to_base64, model_matches,
};
use headstream_runner::CoBatcher;

use crate::live::StatusBoard;

/// What the endpoint needs of the host: its encoder's identity, the co-batcher, its id.
#[derive(Debug, Clone)]
pub(crate) struct EmbeddingsService {
    pub(crate) batcher: CoBatcher,
    pub(crate) name: String,
    pub(crate) fingerprint: String,
    pub(crate) dimensions: usize,
    pub(crate) host: String,
}

impl EmbeddingsService {
    /// The answer to one request body: vectors, or a typed refusal.
    pub(crate) async fn answer(&self, body: &[u8]) -> EmbeddingsAnswer {
        match self.try_answer(body).await {
            Ok(reply) => EmbeddingsAnswer::Ok(reply),
            Err(error) => EmbeddingsAnswer::Err { error },
        }
    }

    async fn try_answer(&self, body: &[u8]) -> Result<EmbeddingsReply, EmbeddingsError> {
        let request = EmbeddingsRequest::parse(body)?;
        if let Some(model) = request
            .model
            .as_deref()
            .filter(|m| !model_matches(m, &self.name, &self.fingerprint))
        {
            return Err(EmbeddingsError {
                kind: EmbeddingsErrorKind::ModelNotFound,
                message: format!(
                    "the model {model:?} is not served here: this encoder is {} ({})",
                    self.name, self.fingerprint
                ),
                param: Some("model".into()),
            });
        }
        let batcher = self.batcher.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            batcher.encode(request.input, headstream_encoder::States::default())
        })
        .await
        .map_err(|e| encoder_failed(&e))?
        .map_err(|e| encoder_failed(&e))?;
        Ok(self.reply(&encoded))
    }

    fn reply(&self, encoded: &[EncodedText]) -> EmbeddingsReply {
        EmbeddingsReply {
            model: self.name.clone(),
            fingerprint: self.fingerprint.clone(),
            dimensions: self.dimensions,
            data: encoded
                .iter()
                .map(|e| f32_to_base64(&e.embedding))
                .collect(),
            prompt_tokens: encoded.iter().map(|e| e.n_tokens() as u64).sum(),
            truncated: (0..encoded.len())
                .filter(|&i| encoded[i].truncated)
                .collect(),
            host: self.host.clone(),
        }
    }
}

fn encoder_failed(e: &dyn std::fmt::Display) -> EmbeddingsError {
    EmbeddingsError {
        kind: EmbeddingsErrorKind::Encoder,
        message: e.to_string(),
        param: None,
    }
}

/// This host's answer on `headstream.discover`: id, version, encoder and what it serves.
pub(crate) fn discover(
    host: &str,
    encoder: &str,
    dimensions: usize,
    board: &StatusBoard,
) -> HostStatus {
    let served = match board.read() {
        Ok(b) => b.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    HostStatus {
        host: host.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        encoder: encoder.to_owned(),
        dimensions,
        pipelines: served
            .iter()
            .map(|(name, entry)| PipelineStatus {
                name: name.clone(),
                input: text(&entry["input"]),
                output: text(&entry["output"]),
                delivery: text(&entry["delivery"]),
                heads: entry["heads"].clone(),
                source: text(&entry["source"]),
            })
            .collect(),
    }
}

/// Answers `headstream.discover` until the subscription ends.
pub(crate) async fn serve_discovery(
    client: async_nats::Client,
    mut subscription: async_nats::Subscriber,
    status: Arc<dyn Fn() -> HostStatus + Send + Sync>,
) {
    use futures::StreamExt as _;
    while let Some(message) = subscription.next().await {
        if let Some(reply) = message.reply {
            let body = serde_json::to_vec(&status()).unwrap_or_default();
            if let Err(e) = client.publish(reply, body.into()).await {
                tracing::debug!("cannot answer discovery: {e}");
            }
        }
    }
}
