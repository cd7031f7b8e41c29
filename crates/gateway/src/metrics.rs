//! The gateway's Prometheus metrics: requests by route and status, latency by route, texts
//! embedded.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::Shared;

/// The gateway's counters, in their own registry.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    seconds: HistogramVec,
    pub(crate) texts: IntCounter,
}

impl Metrics {
    pub(crate) fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "headstream_gateway_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "headstream_gateway_request_seconds",
                "HTTP request latency by route",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
            &["route"],
        )?;
        let texts = IntCounter::new(
            "headstream_gateway_texts_total",
            "texts sent to the hosts for embeddings",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(texts.clone()))?;
        Ok(Self {
            registry,
            requests,
            seconds,
            texts,
        })
    }
}

/// Counts and times every request by its route (the matched pattern, never the raw path).
pub(crate) async fn track(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &shared.metrics;
    m.seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}

/// `GET /metrics`: the Prometheus text format.
pub(crate) async fn render(State(shared): State<Arc<Shared>>) -> Response {
    let mut out = Vec::new();
    match prometheus::TextEncoder::new().encode(&shared.metrics.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => crate::ApiError::internal(format!("metrics: {e}")).into_response(),
    }
}
