//! The host: serves [`headstream_runner::Runner`]s over NATS.
//!
//! [`HostSettings::resolve`] merges the command line over the host config (`host.toml`) over
//! the defaults, once; [`Host::start`] connects (auth, TLS, reconnects), serves every pipeline
//! (core queue groups or JetStream, see [`serve`]), registers the NATS micro service and its
//! status endpoints, the embeddings endpoint (`headstream.embeddings.<encoder>`) and discovery
//! (`headstream.discover`), and starts `/metrics`; [`Host::run`] then follows the files and the
//! cluster registry ([`live`]) until told to stop, and drains in-flight batches within the
//! shutdown timeout. [`connect`] serves one-off clients (`publish`, `request`, `deploy`).
#![deny(missing_docs)]

mod connect;
mod embeddings;
mod feedback;
mod host;
pub mod live;
mod logs;
mod metrics_http;
mod serve;
mod service;

pub use connect::{ConnectError, DEFAULT_URL, connect, connect_once, nats_url, redact};
pub use host::{Host, HostSettings, Overrides, PLUGIN_INSTANCES, store_config};
pub use logs::HeadLogs;
pub use metrics_http::serve_metrics;
pub use serve::{JetStreamOptions, RunnerSlot, ServeOptions, serve};

/// Why a host could not start, keep serving, or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A pipeline's runner could not be built or failed a batch.
    #[error(transparent)]
    Runner(#[from] headstream_runner::RunnerError),
    /// A pipeline or host config is invalid (file:line:column and reason).
    #[error(transparent)]
    Config(#[from] headstream_pipeline::PipelineError),
    /// The NATS connection could not be set up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A NATS operation failed.
    #[error("NATS: cannot {action} {subject}: {reason}")]
    Nats {
        /// What was attempted (`subscribe to`, `publish to`, `flush`).
        action: &'static str,
        /// The subject involved.
        subject: String,
        /// The client's error.
        reason: String,
    },
    /// The cluster registry could not be read.
    #[error("{0}")]
    Registry(headstream_registry::RegistryError),
    /// The embedding store could not be opened (JetStream off, no permission, ...).
    #[error(transparent)]
    Store(#[from] headstream_store::StoreError),
    /// The predictions bucket or labels stream could not be opened.
    #[error("quality records: {0}")]
    Quality(String),
    /// The trace exporter could not be set up.
    #[error(transparent)]
    Trace(headstream_trace::TraceError),
    /// The worker thread running a batch or a load panicked or was cancelled.
    #[error("the worker thread failed: {0}")]
    Worker(tokio::task::JoinError),
    /// A pipeline config could not be read, or the host's scratch directory created.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was attempted (`cannot read`, `cannot create`).
        what: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A pipeline config was not applied at start.
    #[error(transparent)]
    Apply(Box<live::ApplyError>),
    /// Nothing to serve: no pipeline files and not following the cluster registry.
    #[error(
        "nothing to serve: name pipelines (--pipeline, or `pipelines` in the host config) or serve the cluster registry's (--deployed)"
    )]
    NothingToServe,
    /// The metrics registry could not be set up.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// In-flight batches outlived the shutdown timeout.
    #[error(
        "in-flight batches did not finish within the shutdown timeout ({} s); messages not acked will be redelivered",
        .0.as_secs_f64()
    )]
    ShutdownTimeout(std::time::Duration),
}
