//! Serving a pipeline on NATS core subjects: a queue group per pipeline, micro-batches,
//! results to the output subject (and to the reply subject for requests), unusable messages to
//! the error subject with their payload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use headstream_pipeline::Pipeline;
use tokio::time::Instant;

use crate::{InputError, Message, Runner, RuntimeError, error_record, parse_message};

/// How [`serve`] consumes a pipeline's input.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Input subject.
    pub subject: String,
    /// Queue group shared by every host serving the pipeline.
    pub queue_group: String,
    /// Result subject.
    pub output: String,
    /// Error subject.
    pub errors: String,
    /// Most messages per batch.
    pub max_batch_size: usize,
    /// Longest wait to fill a batch.
    pub max_wait: Duration,
}

impl ServeOptions {
    /// The options a pipeline config asks for.
    pub fn from_pipeline(pipeline: &Pipeline) -> Self {
        Self {
            subject: pipeline.input.subject.get_ref().clone(),
            queue_group: pipeline
                .delivery
                .queue_group
                .clone()
                .unwrap_or_else(|| pipeline.name.get_ref().clone()),
            output: pipeline.output.subject.get_ref().clone(),
            errors: pipeline.output.errors.get_ref().clone(),
            max_batch_size: *pipeline.batching.max_batch_size.get_ref() as usize,
            max_wait: Duration::from_millis(pipeline.batching.max_wait_ms),
        }
    }
}

/// Serves one pipeline until `shutdown` completes, then finishes the batch in hand and returns.
pub async fn serve(
    client: async_nats::Client,
    runner: Arc<Runner>,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let mut subscription = client
        .queue_subscribe(options.subject.clone(), options.queue_group.clone())
        .await
        .map_err(|e| nats_error("subscribe to", &options.subject, e))?;
    tracing::info!(pipeline = runner.name(), subject = %options.subject, group = %options.queue_group, "serving");
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            message = subscription.next() => message,
            () = &mut shutdown => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let deadline = Instant::now() + options.max_wait;
        while batch.len() < options.max_batch_size {
            match tokio::time::timeout_at(deadline, subscription.next()).await {
                Ok(Some(message)) => batch.push(message),
                _ => break,
            }
        }
        handle_batch(&client, &runner, &options, batch).await?;
    }
    subscription.unsubscribe().await.ok();
    client
        .flush()
        .await
        .map_err(|e| nats_error("flush", "", e))?;
    Ok(())
}

async fn handle_batch(
    client: &async_nats::Client,
    runner: &Arc<Runner>,
    options: &ServeOptions,
    batch: Vec<async_nats::Message>,
) -> Result<(), RuntimeError> {
    let mut messages: Vec<Message> = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    for nats_message in batch {
        let header_id = nats_message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        match parse_message(&nats_message.payload, || {
            header_id.unwrap_or_else(generate_id)
        }) {
            Ok(message) => {
                messages.push(message);
                replies.push(nats_message.reply);
                payloads.push(nats_message.payload);
            }
            Err(error) => {
                tracing::debug!(kind = error.kind, "rejected message: {}", error.message);
                let record = Bytes::from(
                    error_record(runner.name(), &error, &nats_message.payload).to_string(),
                );
                publish(client, &options.errors, record.clone()).await?;
                if let Some(reply) = nats_message.reply {
                    publish(client, &reply, record).await?;
                }
            }
        }
    }
    if messages.is_empty() {
        return Ok(());
    }
    let worker = runner.clone();
    let outcome = tokio::task::spawn_blocking(move || worker.process(&messages))
        .await
        .map_err(|e| RuntimeError::Worker(e.to_string()))
        .and_then(|r| r);
    match outcome {
        Ok(records) => {
            for (record, reply) in records.into_iter().zip(replies) {
                let body = Bytes::from(record.to_string());
                publish(client, &options.output, body.clone()).await?;
                if let Some(reply) = reply {
                    publish(client, &reply, body).await?;
                }
            }
        }
        // The batch as a whole failed (the encoder, a worker panic): every message gets an
        // error record with its payload, and the loop goes on.
        Err(failure) => {
            tracing::error!(pipeline = runner.name(), "batch failed: {failure}");
            let error = InputError {
                kind: "processing_failed",
                message: failure.to_string(),
            };
            for (payload, reply) in payloads.iter().zip(replies) {
                let record = Bytes::from(error_record(runner.name(), &error, payload).to_string());
                publish(client, &options.errors, record.clone()).await?;
                if let Some(reply) = reply {
                    publish(client, &reply, record).await?;
                }
            }
        }
    }
    Ok(())
}

async fn publish(
    client: &async_nats::Client,
    subject: &str,
    body: Bytes,
) -> Result<(), RuntimeError> {
    client
        .publish(subject.to_owned(), body)
        .await
        .map_err(|e| nats_error("publish to", subject, e))
}

fn nats_error(action: &'static str, subject: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Nats {
        action,
        subject: subject.to_owned(),
        reason: e.to_string(),
    }
}

/// A process-unique message id for messages that bring none.
fn generate_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "hs-{:x}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
