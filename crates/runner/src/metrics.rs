//! Prometheus metrics for a runner and the host serving it: messages and errors by kind, head
//! failures, routes taken, batch sizes and per-stage latency, rendered in the text format.

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder, exponential_buckets,
};

/// The host's metrics, shared by every pipeline it serves.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages handled, by pipeline and outcome (`result`, `error`).
    pub messages: IntCounterVec,
    /// Unusable messages and failed batches, by pipeline and error kind.
    pub errors: IntCounterVec,
    /// Per-text head failures, by pipeline and head.
    pub head_failures: IntCounterVec,
    /// Results published to a route's subject, by pipeline and route.
    pub routes: IntCounterVec,
    /// Messages per batch, by pipeline.
    pub batch_size: HistogramVec,
    /// Seconds per stage (`encode`, `heads`, `publish`, `batch`), by pipeline.
    pub stage_seconds: HistogramVec,
    /// Pipeline batches merged into one encoder pass.
    pub pass_batches: prometheus::Histogram,
    /// Shadow comparisons, by pipeline, head and outcome (`agree`, `disagree`).
    pub shadow: IntCounterVec,
    /// Deploys this host acted on, by kind (`pipeline`, `package`) and outcome (`activated`,
    /// `rejected`, `removed`).
    pub deploys: IntCounterVec,
    /// Log lines heads wrote over their budget, dropped by the host, by pipeline and head.
    pub head_log_dropped: IntCounterVec,
    /// Messages a canary served instead of the live head, by pipeline and head.
    pub canary: IntCounterVec,
    /// Feedback labels accepted, by pipeline, head, version and outcome (`correct`, `wrong`).
    pub feedback: IntCounterVec,
    /// Feedback requests refused, by pipeline and kind (`unknown_label`, `not_found`, ...).
    pub feedback_rejected: IntCounterVec,
    /// Head log lines (within budget) lost because the bus publisher fell behind.
    pub head_log_lost: prometheus::IntCounter,
    /// Seconds from a message's arrival at the host to its result's publishing, by pipeline.
    pub message_seconds: HistogramVec,
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let messages = counter(
            "headstream_messages_total",
            "Messages handled, by outcome (result or error record).",
            &["pipeline", "outcome"],
        )?;
        let errors = counter(
            "headstream_errors_total",
            "Error records published, by kind (not_json, no_text, max_deliveries, ...).",
            &["pipeline", "kind"],
        )?;
        let head_failures = counter(
            "headstream_head_failures_total",
            "Texts a head failed on (its result carries the error instead).",
            &["pipeline", "head"],
        )?;
        let routes = counter(
            "headstream_routes_total",
            "Results also published to a route's subject.",
            &["pipeline", "route"],
        )?;
        let shadow = counter(
            "headstream_shadow_total",
            "Shadow head outputs compared with the live head's, by outcome (agree, disagree).",
            &["pipeline", "head", "outcome"],
        )?;
        let head_log_dropped = counter(
            "headstream_head_log_lines_dropped_total",
            "Log lines a head wrote over its budget (log_burst, log_lines_per_s), dropped by the host.",
            &["pipeline", "head"],
        )?;
        let canary = counter(
            "headstream_canary_total",
            "Messages a canary version served instead of the live head.",
            &["pipeline", "head"],
        )?;
        let feedback = counter(
            "headstream_feedback_total",
            "Feedback labels accepted, by head version and outcome (correct, wrong): live accuracy is rate(correct) / rate(correct + wrong).",
            &["pipeline", "head", "version", "outcome"],
        )?;
        let feedback_rejected = counter(
            "headstream_feedback_rejected_total",
            "Feedback requests refused, by kind (not_json, invalid, not_found, unknown_label, ...).",
            &["pipeline", "kind"],
        )?;
        let deploys = counter(
            "headstream_deploys_total",
            "Deploys this host acted on, by kind and outcome (activated, rejected, removed).",
            &["kind", "outcome"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new("headstream_batch_size", "Messages per batch.")
                .buckets(exponential_buckets(1.0, 2.0, 11)?),
            &["pipeline"],
        )?;
        registry.register(Box::new(batch_size.clone()))?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "headstream_stage_seconds",
                "Seconds per batch stage: encode, heads, publish, and the whole batch.",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 18)?),
            &["pipeline", "stage"],
        )?;
        registry.register(Box::new(stage_seconds.clone()))?;
        let pass_batches = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "headstream_encoder_pass_batches",
                "Pipeline batches merged into one encoder pass (co-batching across pipelines).",
            )
            .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0]),
        )?;
        registry.register(Box::new(pass_batches.clone()))?;
        let message_seconds = HistogramVec::new(
            HistogramOpts::new(
                "headstream_message_seconds",
                "Seconds from a message's arrival at the host to its result's publishing.",
            )
            .buckets(exponential_buckets(0.0005, 1.5, 28)?),
            &["pipeline"],
        )?;
        registry.register(Box::new(message_seconds.clone()))?;
        let head_log_lost = prometheus::IntCounter::new(
            "headstream_head_log_lines_lost_total",
            "Head log lines within their budget that never reached the bus (the publisher fell behind).",
        )?;
        registry.register(Box::new(head_log_lost.clone()))?;
        Ok(Self {
            head_log_lost,
            canary,
            feedback,
            feedback_rejected,
            message_seconds,
            pass_batches,
            registry,
            messages,
            errors,
            head_failures,
            routes,
            shadow,
            deploys,
            head_log_dropped,
            batch_size,
            stage_seconds,
        })
    }

    /// The pipelines' counters and the latency histogram, as one JSON object keyed by
    /// pipeline (`messages`, `errors`, `head_failures`, `canary`, `shadow`, `latency` buckets
    /// as `[upper bound in seconds, cumulative count]`): what a host publishes every second for
    /// dashboards. Cumulative since the host started.
    pub fn snapshot(&self) -> serde_json::Value {
        use serde_json::{Value, json};
        let mut pipelines = serde_json::Map::new();
        for family in self.registry.gather() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                };
                let Some(pipeline) = label("pipeline") else {
                    continue;
                };
                let entry = pipelines.entry(pipeline).or_insert_with(|| json!({}));
                let count = metric.get_counter().get_value();
                let mut set = |group: &str, key: Option<String>, value: Value| {
                    if let Some(key) = key {
                        entry[group][key] = value;
                    }
                };
                match family.name() {
                    "headstream_messages_total" => set("messages", label("outcome"), json!(count)),
                    "headstream_errors_total" => set("errors", label("kind"), json!(count)),
                    "headstream_head_failures_total" => {
                        set("head_failures", label("head"), json!(count));
                    }
                    "headstream_canary_total" => set("canary", label("head"), json!(count)),
                    "headstream_shadow_total" => {
                        if let (Some(head), Some(outcome)) = (label("head"), label("outcome")) {
                            entry["shadow"][head][outcome] = json!(count);
                        }
                    }
                    "headstream_message_seconds" => {
                        let h = metric.get_histogram();
                        let buckets: Vec<Value> = h
                            .get_bucket()
                            .iter()
                            .map(|b| json!([b.upper_bound(), b.cumulative_count()]))
                            .collect();
                        entry["latency"] =
                            json!({ "count": h.get_sample_count(), "buckets": buckets });
                    }
                    _ => {}
                }
            }
        }
        Value::Object(pipelines)
    }

    /// Records a stage's duration.
    pub fn observe(&self, pipeline: &str, stage: &str, elapsed: Duration) {
        self.stage_seconds
            .with_label_values(&[pipeline, stage])
            .observe(elapsed.as_secs_f64());
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() -> prometheus::Result<()> {
        let m = Metrics::new()?;
        m.messages.with_label_values(&["p", "result"]).inc_by(3);
        m.errors.with_label_values(&["p", "not_json"]).inc();
        m.observe("p", "encode", Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains(r#"headstream_messages_total{outcome="result",pipeline="p"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"headstream_errors_total{kind="not_json",pipeline="p"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"headstream_stage_seconds_count{pipeline="p",stage="encode"} 1"#),
            "{text}"
        );
        Ok(())
    }
}
