//! Feedback labels for a pipeline's results: a host serving a pipeline with `[quality] record =
//! true` answers requests on `headstream.feedback.<pipeline>` (one queue group, so each request
//! is handled once however many hosts serve it), checks each against the recorded prediction and
//! the head's labels, stores accepted labels in the labels stream (acknowledged before the
//! sender hears `accepted`), and counts both outcomes.

use std::sync::Arc;

use futures::StreamExt as _;
use headstream_quality::{FEEDBACK_PREFIX, FeedbackError, LABELS_PREFIX, QualityConfig};
use headstream_runner::{Metrics, Runner};
use serde_json::json;
use tokio::sync::watch;

/// What the feedback service of one pipeline needs.
pub(crate) struct FeedbackService {
    pub client: async_nats::Client,
    pub pipeline: String,
    pub runner: watch::Receiver<Arc<Runner>>,
    pub predictions: async_nats::jetstream::kv::Store,
    pub config: QualityConfig,
    pub metrics: Arc<Metrics>,
}

impl FeedbackService {
    /// Answers feedback requests until the subscription ends.
    pub async fn run(self) {
        let subject = format!("{FEEDBACK_PREFIX}.{}", self.pipeline);
        let mut requests = match self
            .client
            .queue_subscribe(subject.clone(), subject.clone())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(pipeline = %self.pipeline, "cannot subscribe to {subject}: {e}");
                return;
            }
        };
        let jetstream = async_nats::jetstream::new(self.client.clone());
        tracing::info!(pipeline = %self.pipeline, %subject, "taking feedback");
        while let Some(request) = requests.next().await {
            let reply = match self.handle(&jetstream, &request.payload).await {
                Ok(labelled) => {
                    let outcome = if labelled.correct { "correct" } else { "wrong" };
                    self.metrics
                        .feedback
                        .with_label_values(&[
                            &self.pipeline,
                            &labelled.head,
                            &labelled.version,
                            outcome,
                        ])
                        .inc();
                    json!({ "accepted": true, "labelled": labelled })
                }
                Err(e) => {
                    self.metrics
                        .feedback_rejected
                        .with_label_values(&[&self.pipeline, e.kind])
                        .inc();
                    tracing::debug!(pipeline = %self.pipeline, "feedback refused: {e}");
                    e.reply()
                }
            };
            if let Some(to) = request.reply
                && let Err(e) = self.client.publish(to, reply.to_string().into()).await
            {
                tracing::warn!(pipeline = %self.pipeline, "cannot answer a feedback request: {e}");
            }
        }
    }

    async fn handle(
        &self,
        jetstream: &async_nats::jetstream::Context,
        payload: &[u8],
    ) -> Result<headstream_quality::Labelled, FeedbackError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| FeedbackError {
            kind: "unavailable",
            message: format!("{what}: {e}; nothing was stored, send it again"),
        };
        let (feedback, id) = headstream_quality::parse(&self.pipeline, payload)?;
        let key = headstream_quality::prediction_key(&self.pipeline, &id);
        let stored = self
            .predictions
            .get(&key)
            .await
            .map_err(|e| unavailable("cannot read the predictions bucket", &e))?;
        let prediction = match stored {
            Some(bytes) => Some(
                serde_json::from_slice::<headstream_quality::Prediction>(&bytes)
                    .map_err(|e| unavailable("a recorded prediction does not parse", &e))?,
            ),
            None => None,
        };
        let runner = self.runner.borrow().clone();
        let labelled = headstream_quality::check(
            &self.pipeline,
            &id,
            &feedback,
            prediction.as_ref(),
            self.config.predictions_max_age,
            |head| runner.head_labels(head),
            crate::live::now_ms() as u64,
        )?;
        let body =
            serde_json::to_vec(&labelled).map_err(|e| unavailable("cannot write the label", &e))?;
        jetstream
            .publish(format!("{LABELS_PREFIX}.{}", self.pipeline), body.into())
            .await
            .map_err(|e| unavailable("cannot store the label", &e))?
            .await
            .map_err(|e| unavailable("the labels stream did not store the label", &e))?;
        Ok(labelled)
    }
}
