//! The gateway: an OpenAI-compatible HTTP front door over the bus. It holds no model: every
//! request becomes NATS requests to the hosts (`headstream.embeddings`, a pipeline's input
//! subject), so gateways, hosts and encoders scale separately.
//!
//! Routes: `POST /v1/embeddings` (OpenAI's request and response), `GET /v1/models[/{id}]`,
//! `POST /v1/pipelines/{name}`, `POST /v1/feedback`, `GET /v1/pipelines`, `GET /v1/hosts`, `GET /health`,
//! `GET /openapi.json` (generated from the types), `GET /metrics` (Prometheus). Errors use
//! OpenAI's shape ([`ApiError`]). Limits: body bytes and texts per request (413), requests in
//! flight (429), an answer deadline (503 with `Retry-After`); optional API keys (401); CORS
//! only for the origins configured.
#![deny(missing_docs)]

mod api;
pub mod dashboard;
mod error;
mod metrics;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

pub use api::ApiDoc;
pub use error::{ApiError, ErrorBody, ErrorDetail};

/// How the gateway behaves; [`GatewayConfig::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Most texts (embeddings) or messages (pipelines) in one request (413 past it).
    pub max_batch: usize,
    /// How long to wait for the hosts' answers (503 with `Retry-After` past it).
    pub timeout: Duration,
    /// Requests handled at once; more get 429 with `Retry-After`.
    pub max_in_flight: usize,
    /// Accepted API keys (`Authorization: Bearer <key>` on `/v1/*`); none: no authentication.
    pub api_keys: Vec<String>,
    /// Origins allowed to call from a browser (CORS); none: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Most texts per request to one host: a large batch is split and spread over the hosts.
    pub chunk_texts: usize,
    /// Where the gateway's own spans go (OTLP); requests carry a `traceparent` to the hosts
    /// either way (the caller's, or a new trace).
    pub tracer: Option<headstream_trace::Tracer>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            max_batch: headstream_message::embeddings::MAX_EMBEDDING_INPUTS,
            timeout: Duration::from_secs(30),
            max_in_flight: 256,
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            chunk_texts: 256,
            tracer: None,
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A CORS origin is not a valid header value.
    #[error("--cors-origin {0:?} is not a valid origin")]
    Origin(String),
    /// The metrics registry could not be set up.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Serving failed.
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) client: async_nats::Client,
    pub(crate) config: GatewayConfig,
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: metrics::Metrics,
    key_digests: Vec<[u8; 32]>,
    pub(crate) discovery: api::DiscoveryCache,
}

impl Shared {
    /// Whether `key` is one of the configured API keys (compared by digest, so the time taken
    /// does not depend on how much of a key matched).
    pub(crate) fn accepts(&self, key: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.key_digests
            .iter()
            .fold(false, |found, k| found | (*k == digest))
    }

    pub(crate) fn needs_key(&self) -> bool {
        !self.key_digests.is_empty()
    }
}

/// The gateway's routes over `client`.
pub fn router(client: async_nats::Client, config: GatewayConfig) -> Result<Router, GatewayError> {
    let cors = cors_layer(&config.cors_origins)?;
    let shared = Arc::new(Shared {
        client,
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
        metrics: metrics::Metrics::new()?,
        key_digests: config
            .api_keys
            .iter()
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect(),
        discovery: api::DiscoveryCache::default(),
        config,
    });
    let v1 = Router::new()
        .route("/v1/embeddings", post(api::embeddings))
        .route("/v1/models", get(api::models))
        .route("/v1/models/{id}", get(api::model))
        .route("/v1/pipelines", get(api::pipelines))
        .route("/v1/pipelines/{name}", post(api::run_pipeline))
        .route("/v1/feedback", post(api::feedback))
        .route("/v1/hosts", get(api::hosts))
        // Authentication first, then a slot in flight, both before any body is read.
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api::authenticate,
        ));
    let mut app = Router::new()
        .merge(v1)
        .route("/health", get(api::health))
        .route("/openapi.json", get(api::openapi))
        .route("/metrics", get(metrics::render))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(shared.config.max_body_bytes))
        .with_state(shared);
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    Ok(app)
}

fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, GatewayError> {
    use axum::http::{HeaderValue, Method, header};
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| GatewayError::Origin(o.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    ))
}

/// Serves the gateway on `listener` until `shutdown` resolves, then finishes the requests in
/// hand and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: async_nats::Client,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let app = router(client, config)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
