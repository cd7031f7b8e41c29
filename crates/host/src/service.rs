//! The host as a NATS micro service: `$SRV.PING|INFO|STATS` (`nats micro ls`) and the status
//! endpoints `headstream.status` and `headstream.status.<pipeline>`.

use std::sync::Arc;

use async_nats::service::ServiceExt as _;
use futures::StreamExt as _;
use headstream_runner::Metrics;
use serde_json::{Value, json};

use headstream_message::embeddings::{
    DISCOVER_SUBJECT, EmbeddingsAnswer, EmbeddingsError, EmbeddingsErrorKind, embeddings_subject,
};

use crate::HostError;
use crate::embeddings::EmbeddingsService;
use crate::live::StatusBoard;

/// Embeddings requests a host encodes at once (each at most one NATS payload of texts).
pub(crate) const EMBEDDINGS_IN_FLIGHT: usize = 16;

/// Registers the host as a NATS micro service with status endpoints: `headstream.status`
/// (every pipeline served now, with its head versions and counters) and
/// `headstream.status.<pipeline>` (one), following deploys and removals. The endpoints answer
/// as long as the returned service lives.
pub(crate) async fn register(
    client: &async_nats::Client,
    embeddings: EmbeddingsService,
    metrics: Arc<Metrics>,
    board: StatusBoard,
) -> Result<async_nats::service::Service, HostError> {
    let host_id = embeddings.host.clone();
    let host_id = host_id.as_str();
    let encoder_fingerprint = embeddings.fingerprint.clone();
    let failed = |subject: &str, e: &dyn std::fmt::Display| HostError::Nats {
        action: "register the micro service on",
        subject: subject.to_owned(),
        reason: e.to_string(),
    };
    let metadata = std::collections::HashMap::from([
        ("host".to_owned(), host_id.to_owned()),
        ("encoder".to_owned(), encoder_fingerprint.clone()),
    ]);
    let service = client
        .service_builder()
        .description("headstream host: one encoder, task heads over NATS")
        .metadata(metadata)
        .start("headstream", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| failed("$SRV", &e))?;
    let discovery = {
        let (host, encoder, board) = (
            host_id.to_owned(),
            encoder_fingerprint.clone(),
            board.clone(),
        );
        let dimensions = embeddings.dimensions;
        Arc::new(move || crate::embeddings::discover(&host, &encoder, dimensions, &board))
    };
    let subscription = client
        .subscribe(DISCOVER_SUBJECT)
        .await
        .map_err(|e| failed(DISCOVER_SUBJECT, &e))?;
    tokio::spawn(crate::embeddings::serve_discovery(
        client.clone(),
        subscription,
        discovery,
    ));
    let subject = embeddings_subject(&embeddings.fingerprint);
    let mut endpoint = service
        .endpoint_builder()
        .name("embeddings")
        .add(subject.clone())
        .await
        .map_err(|e| failed(&subject, &e))?;
    // Requests encode off the endpoint's loop, so requests from many callers queue at the
    // co-batcher together and share encoder passes; past EMBEDDINGS_IN_FLIGHT at once a request
    // is refused as `busy` at once (the gateway answers 503 with Retry-After), so a flood
    // neither holds threads and texts without bound nor encodes for callers long gone.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(EMBEDDINGS_IN_FLIGHT));
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                let busy = EmbeddingsAnswer::Err {
                    error: EmbeddingsError {
                        kind: EmbeddingsErrorKind::Busy,
                        message: format!(
                            "host {} has {EMBEDDINGS_IN_FLIGHT} embeddings requests in hand",
                            embeddings.host
                        ),
                        param: None,
                    },
                };
                let _ = request
                    .respond(Ok(serde_json::to_vec(&busy).unwrap_or_default().into()))
                    .await;
                continue;
            };
            let (embeddings, client) = (embeddings.clone(), client.clone());
            tokio::spawn(async move {
                let answer = embeddings.answer(&request.message.payload).await;
                drop(permit);
                let body = fit(answer, client.server_info().max_payload);
                if let Err(e) = request.respond(Ok(body.into())).await {
                    tracing::warn!("cannot answer an embeddings request: {e}");
                }
            });
        }
    });
    let status = Arc::new(Status { metrics, board });
    for (name, subject) in [
        ("status", "headstream.status"),
        ("pipeline-status", "headstream.status.*"),
    ] {
        let mut endpoint = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|e| failed(subject, &e))?;
        let (status, host) = (status.clone(), host_id.to_owned());
        tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let pipeline = request
                    .message
                    .subject
                    .as_str()
                    .strip_prefix("headstream.status.")
                    .map(str::to_owned);
                let body = status.answer(&host, pipeline.as_deref());
                let _ = request.respond(Ok(body.to_string().into())).await;
            }
        });
    }
    Ok(service)
}

/// `answer` as JSON, or a `too_large` refusal that says how many texts fit when it would
/// exceed the server's `max_payload` (a reply the server refuses would reach no one).
fn fit(answer: EmbeddingsAnswer, max_payload: usize) -> Vec<u8> {
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    if body.len() <= max_payload {
        return body;
    }
    let per_text = match &answer {
        EmbeddingsAnswer::Ok(reply) => body.len() / reply.data.len().max(1),
        EmbeddingsAnswer::Err { .. } => body.len(),
    };
    let refusal = EmbeddingsAnswer::Err {
        error: EmbeddingsError {
            kind: EmbeddingsErrorKind::TooLarge,
            message: format!(
                "the answer would be {} bytes, over the server's limit of {max_payload}: send at most {} texts per request",
                body.len(),
                (max_payload / per_text.max(1)).saturating_sub(1).max(1)
            ),
            param: Some("input".into()),
        },
    };
    serde_json::to_vec(&refusal).unwrap_or_default()
}

/// What the status endpoints read: the board of served pipelines and the counters.
struct Status {
    metrics: Arc<Metrics>,
    board: StatusBoard,
}

impl Status {
    /// The status of `pipeline`, or of every pipeline served now.
    fn answer(&self, host: &str, pipeline: Option<&str>) -> Value {
        let served = match self.board.read() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match pipeline {
            Some(name) => match served.get(name) {
                Some(entry) => self.pipeline(name, entry),
                None => json!({
                    "pipeline": name,
                    "error": format!("host {host} does not serve {name}"),
                }),
            },
            None => json!({
                "host": host,
                "pipelines": served
                    .iter()
                    .map(|(name, entry)| (name.clone(), self.pipeline(name, entry)))
                    .collect::<serde_json::Map<_, _>>(),
            }),
        }
    }

    fn pipeline(&self, name: &str, entry: &Value) -> Value {
        let count = |outcome: &str| {
            self.metrics
                .messages
                .with_label_values(&[name, outcome])
                .get()
        };
        json!({
            "pipeline": name,
            "heads": entry["heads"],
            "source": entry["source"],
            "results": count("result"),
            "errors": count("error"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_served_pipelines_with_their_counters() -> prometheus::Result<()> {
        let metrics = Arc::new(Metrics::new()?);
        metrics
            .messages
            .with_label_values(&["support", "result"])
            .inc_by(3);
        let board = StatusBoard::default();
        if let Ok(mut b) = board.write() {
            b.insert(
                "support".to_owned(),
                json!({"heads": {"sentiment": "sentiment@1.0.0"}, "source": "p.toml"}),
            );
        }
        let status = Status { metrics, board };
        let all = status.answer("h-1", None);
        assert_eq!(all["host"], "h-1");
        assert_eq!(all["pipelines"]["support"]["results"], 3);
        assert_eq!(all["pipelines"]["support"]["errors"], 0);
        assert_eq!(
            all["pipelines"]["support"]["heads"]["sentiment"],
            "sentiment@1.0.0"
        );
        assert_eq!(status.answer("h-1", Some("support"))["source"], "p.toml");
        assert_eq!(
            status.answer("h-1", Some("other"))["error"],
            "host h-1 does not serve other"
        );
        Ok(())
    }
}
