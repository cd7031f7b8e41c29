//! The composition root of a serving host: settings resolved once, then everything it serves
//! started on one connection, one encoder thread and one plugin engine.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use headstream_encoder::{Encoder, Precision};
use headstream_package::Registry;
use headstream_pipeline::{HostFile, NatsSettings, Pipeline};
use headstream_registry::ClusterRegistry;
use headstream_runner::{CoBatcher, Metrics};

use crate::live::{FileWatch, HostContext, LiveHost};
use crate::{HostError, connect, nats_url, redact};

/// Live head instances a serving host has room for: its pipelines' heads, canaries and
/// shadows, twice over while a new version takes over, and the deploy checks.
pub const PLUGIN_INSTANCES: u32 = 256;

/// What the command line says; each value set here wins over the host config's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Pipeline files to serve besides the host config's.
    pub pipelines: Vec<PathBuf>,
    /// NATS URL (`--nats`, `$HEADSTREAM_NATS`).
    pub nats: Option<String>,
    /// Metrics address (`--metrics`).
    pub metrics: Option<SocketAddr>,
    /// Model directory, when not the default.
    pub model: Option<PathBuf>,
    /// Encoder precision (`--precision`).
    pub precision: Option<Precision>,
    /// Package directories (`--registry`).
    pub registry: Vec<PathBuf>,
    /// Drain time after a shutdown signal (`--shutdown-timeout`).
    pub shutdown_timeout: Option<Duration>,
    /// Serve the cluster registry's pipelines and follow its changes (`--deployed`).
    pub deployed: bool,
    /// Follow edits of the pipeline files and package directories (`--watch`).
    pub watch: bool,
    /// OTLP/HTTP collector for traces (`--otlp-endpoint`).
    pub otlp_endpoint: Option<String>,
}

/// Everything a host needs to start, resolved once from the command line, the host config
/// and the defaults, and validated before anything connects.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Pipeline files with the text read and the pipeline it validated to.
    pub pipelines: Vec<(PathBuf, String, Pipeline)>,
    /// NATS URL (comma-separated for a cluster).
    pub url: String,
    /// NATS authentication and TLS.
    pub nats: NatsSettings,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The model directory, if the command line or the host config names one.
    pub model: Option<PathBuf>,
    /// The encoder's precision (default f32).
    pub precision: Precision,
    /// Package directories `plugin = "name@version"` references resolve against.
    pub registry: Registry,
    /// Serve the cluster registry's pipelines and follow its changes.
    pub deployed: bool,
    /// Follow edits of the pipeline files and package directories.
    pub watch: bool,
    /// How long in-flight batches get to finish after the stop signal (default 5 s).
    pub shutdown_timeout: Duration,
    /// The embedding store's bucket and limits (the host config's `[embeddings]`).
    pub store: headstream_store::StoreConfig,
    /// Where traces go (OTLP/HTTP), if anywhere.
    pub otlp_endpoint: Option<String>,
}

impl HostSettings {
    /// Merges `cli` over the host config at `config` (if any) over the defaults; reads and
    /// validates every pipeline file. Fails with file:line for a bad config and when there is
    /// nothing to serve.
    pub fn resolve(config: Option<&Path>, cli: Overrides) -> Result<Self, HostError> {
        let host = config.map(HostFile::load).transpose()?;
        let files = host
            .iter()
            .flat_map(|h| h.pipelines.iter().map(|p| p.get_ref().clone()))
            .chain(cli.pipelines);
        let mut pipelines = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| HostError::Io {
                what: "cannot read",
                path: file.clone(),
                source,
            })?;
            let pipeline = Pipeline::parse(&text, &file)?;
            pipelines.push((file, text, pipeline));
        }
        if pipelines.is_empty() && !cli.deployed {
            return Err(HostError::NothingToServe);
        }
        let from_file = host.as_ref();
        // Validated when the host config was loaded.
        let file_metrics = from_file
            .and_then(|h| h.metrics.as_ref())
            .and_then(|a| a.get_ref().parse().ok());
        let file_timeout = from_file
            .and_then(|h| h.shutdown_timeout.as_ref())
            .and_then(|t| Duration::try_from_secs_f64(*t.get_ref()).ok());
        Ok(Self {
            pipelines,
            url: nats_url(cli.nats.as_deref(), from_file),
            nats: from_file.map(|h| h.nats.clone()).unwrap_or_default(),
            metrics: cli.metrics.or(file_metrics),
            model: cli
                .model
                .or_else(|| from_file.and_then(|h| h.model.clone())),
            // Validated when the host config was loaded.
            precision: cli
                .precision
                .or_else(|| {
                    from_file
                        .and_then(|h| h.precision.as_ref())
                        .and_then(|p| p.get_ref().parse().ok())
                })
                .unwrap_or_default(),
            registry: Registry::chosen(&cli.registry, from_file.map_or(&[][..], |h| &h.registry)),
            deployed: cli.deployed,
            watch: cli.watch,
            shutdown_timeout: cli
                .shutdown_timeout
                .or(file_timeout)
                .unwrap_or(Duration::from_secs(5)),
            store: store_config(from_file.map(|h| &h.embeddings)),
            otlp_endpoint: cli
                .otlp_endpoint
                .or_else(|| from_file.and_then(|h| h.otlp_endpoint.clone())),
        })
    }

    /// The largest batch any of the pipelines asks for (32 with none): what the encoder is
    /// sized for.
    pub fn max_batch_size(&self) -> usize {
        self.pipelines
            .iter()
            .map(|(_, _, p)| *p.batching.max_batch_size.get_ref() as usize)
            .max()
            .unwrap_or(32)
    }
}

/// A running host: connected, serving its pipelines, registered as a micro service.
#[derive(Debug)]
pub struct Host {
    live: LiveHost,
    cluster: Option<ClusterRegistry>,
    watch: Option<FileWatch>,
    /// Packages fetched from the cluster registry, kept as long as the host.
    fetched: tempfile::TempDir,
    _service: async_nats::service::Service,
    summary: String,
    grace: Duration,
    tracer: Option<headstream_trace::Tracer>,
    /// The heartbeat's task, stopped with the host.
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Host {
    /// Connects (waiting for the server, reconnecting forever after), starts `/metrics`,
    /// serves every pipeline of `settings` (each loaded and checked before it subscribes) and
    /// registers the micro service. Compiled components are cached in `component_cache`.
    pub async fn start(
        settings: HostSettings,
        encoder: Arc<Encoder>,
        component_cache: Option<PathBuf>,
    ) -> Result<Self, HostError> {
        let metrics = Arc::new(Metrics::new()?);
        // One plugin engine for the process: every pipeline's heads, every version during a
        // swap, and every deploy check share its instance pool.
        let plugins = Arc::new(headstream_runner::plugin_host(
            &encoder,
            component_cache,
            PLUGIN_INSTANCES,
        )?);
        let batcher = co_batcher(&settings, &encoder, &metrics);
        let embeddings_batcher = batcher.clone();
        let mut registry = settings.registry.clone();
        let fetched = packages_dir()?;
        if settings.deployed {
            registry.dirs.push(fetched.path().to_path_buf());
        }
        let client = connect(&settings.url, &settings.nats, true).await?;
        if let Some(addr) = settings.metrics {
            spawn_metrics(addr, metrics.clone());
        }
        let host_id = host_id();
        let tracer = match settings.otlp_endpoint.clone() {
            // The exporter's blocking HTTP client must be built off the async threads.
            Some(endpoint) => {
                let service = format!("headstream {host_id}");
                let tracer = tokio::task::spawn_blocking(move || {
                    headstream_trace::Tracer::otlp(&endpoint, &service)
                })
                .await
                .map_err(HostError::Worker)?
                .map_err(HostError::Trace)?;
                Some(tracer)
            }
            None => None,
        };
        let mut live = LiveHost::new(HostContext {
            client: client.clone(),
            encoder: encoder.clone(),
            batcher,
            metrics: metrics.clone(),
            host_id: host_id.clone(),
            plugins,
            registry,
            store: settings.store.clone(),
            store_writer: Arc::default(),
            quality: headstream_quality::QualityConfig::default(),
            quality_stores: Arc::default(),
            head_logs: crate::HeadLogs::spawn(client.clone(), host_id.clone(), &metrics).await,
            tracer: tracer.clone(),
        });
        for (file, text, _) in &settings.pipelines {
            live.apply_at_start(file, text)
                .await
                .map_err(|e| HostError::Apply(Box::new(e)))?;
        }
        let embeddings = crate::embeddings::EmbeddingsService {
            batcher: embeddings_batcher,
            name: encoder.fingerprint().name().to_owned(),
            fingerprint: encoder.fingerprint().to_string(),
            dimensions: encoder.hidden_size(),
            host: host_id.clone(),
        };
        let service =
            crate::service::register(&client, embeddings, metrics.clone(), live.status_board())
                .await?;
        let cluster = match settings.deployed {
            true => Some(
                ClusterRegistry::open(&client)
                    .await
                    .map_err(HostError::Registry)?,
            ),
            false => None,
        };
        let watch = settings.watch.then(|| {
            let texts = settings.pipelines.iter().map(|(file, text, pipeline)| {
                (file.clone(), text.clone(), pipeline.name.get_ref().clone())
            });
            FileWatch::new(texts.collect(), settings.registry.dirs.clone())
        });
        Ok(Self {
            live,
            cluster,
            watch,
            fetched,
            _service: service,
            summary: summary(&settings),
            grace: settings.shutdown_timeout,
            tracer,
            // Started once the host serves: a host that failed to start never announces itself.
            heartbeat: crate::logs::spawn_heartbeat(
                client.clone(),
                host_id.clone(),
                metrics.clone(),
                Duration::from_secs(1),
            ),
        })
    }

    /// What the host serves, for its start-up line: `2 pipeline(s) on nats://…, watching files`.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Serves until `stop` completes (or a pipeline fails), then stops every subscription and
    /// waits at most the shutdown timeout for the batches in hand; what is not acknowledged by
    /// then is redelivered by JetStream.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<(), HostError> {
        let outcome = crate::live::follow(
            &mut self.live,
            self.cluster.as_ref(),
            self.fetched.path(),
            self.watch.take(),
            stop,
        )
        .await;
        let finished = tokio::time::timeout(self.grace, self.live.shutdown()).await;
        self.heartbeat.abort();
        if let Some(tracer) = self.tracer.take() {
            // Every clone (the served pipelines' too) is done: send the rest and stop, off the
            // async threads (the exporter blocks).
            let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        }
        outcome?;
        finished.map_err(|_| HostError::ShutdownTimeout(self.grace))?
    }
}

/// What a host serves, for its start-up line.
fn summary(settings: &HostSettings) -> String {
    let mut summary = format!(
        "{} pipeline(s) on {}",
        settings.pipelines.len(),
        redact(&settings.url)
    );
    if settings.deployed {
        summary.push_str(", following the cluster registry");
    }
    if settings.watch {
        summary.push_str(", watching files");
    }
    summary
}

/// A directory for packages fetched from the cluster registry, removed with the host.
fn packages_dir() -> Result<tempfile::TempDir, HostError> {
    tempfile::Builder::new()
        .prefix("headstream-packages-")
        .tempdir()
        .map_err(|source| HostError::Io {
            what: "cannot create",
            path: std::env::temp_dir(),
            source,
        })
}

/// Serves `/metrics` on `addr` in the background; a failure (say, the port is taken) is logged.
fn spawn_metrics(addr: SocketAddr, metrics: Arc<Metrics>) {
    let listener = crate::serve_metrics(addr, metrics);
    tokio::spawn(async move {
        if let Err(e) = listener.await {
            tracing::error!("metrics endpoint {addr}: {e}");
        }
    });
}

/// One encoder thread for every pipeline: batches that queue while it is busy share a pass.
/// Pipelines may come and go (`deployed`, `watch`): it is sized for a few of them.
fn co_batcher(
    settings: &HostSettings,
    encoder: &Arc<Encoder>,
    metrics: &Arc<Metrics>,
) -> CoBatcher {
    let slots = match settings.deployed || settings.watch {
        true => settings.pipelines.len().max(4),
        false => settings.pipelines.len().max(1),
    };
    let (shared, pass_metrics) = (encoder.clone(), metrics.clone());
    CoBatcher::with_fn(
        Arc::new(move |texts: &[&str], states: headstream_encoder::States| {
            shared.encode_with(texts, states)
        }),
        settings.max_batch_size() * slots,
        2 * slots,
        Some(Box::new(move |batches, _| {
            pass_metrics.pass_batches.observe(batches as f64);
        })),
    )
}

/// The embedding store's settings: the host config's `[embeddings]` over the defaults.
pub fn store_config(
    file: Option<&headstream_pipeline::StoreSettings>,
) -> headstream_store::StoreConfig {
    let d = headstream_store::StoreConfig::default();
    let Some(f) = file else { return d };
    headstream_store::StoreConfig {
        bucket: f.bucket.clone().unwrap_or(d.bucket),
        max_bytes: f
            .max_mb
            .map_or(d.max_bytes, |mb| (mb as i64).saturating_mul(1 << 20)),
        max_age: f
            .max_age_hours
            .and_then(|h| Duration::try_from_secs_f64(h * 3600.0).ok())
            .unwrap_or(d.max_age),
    }
}

/// This host's id in results and service info: hostname and process id.
fn host_id() -> String {
    let name = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{name}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The repository's example pipeline (32 messages per batch).
    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/support-triage.toml")
    }

    #[test]
    fn the_command_line_wins_over_the_host_config_over_the_defaults()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let config = write(
            dir.path(),
            "host.toml",
            &format!(
                r#"
version = 1
pipelines = [{:?}]
metrics = "127.0.0.1:9464"
registry = ["heads"]
shutdown_timeout = 2
precision = "int8"
[nats]
url = "nats://from-file:4222"
"#,
                example()
            ),
        )?;
        let from_file = HostSettings::resolve(Some(&config), Overrides::default())?;
        assert_eq!(from_file.url, "nats://from-file:4222");
        assert_eq!(from_file.metrics, "127.0.0.1:9464".parse().ok());
        assert_eq!(from_file.registry.dirs, [dir.path().join("heads")]);
        assert_eq!(from_file.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(from_file.precision, Precision::Int8);
        assert_eq!(from_file.pipelines.len(), 1);
        assert_eq!(from_file.max_batch_size(), 32);

        let cli = Overrides {
            nats: Some("nats://cli:4222".to_owned()),
            metrics: "127.0.0.1:1".parse().ok(),
            registry: vec![PathBuf::from("elsewhere")],
            shutdown_timeout: Some(Duration::from_millis(500)),
            precision: Some(Precision::F32),
            ..Overrides::default()
        };
        let merged = HostSettings::resolve(Some(&config), cli)?;
        assert_eq!(merged.url, "nats://cli:4222");
        assert_eq!(merged.metrics, "127.0.0.1:1".parse().ok());
        assert_eq!(merged.registry.dirs, [PathBuf::from("elsewhere")]);
        assert_eq!(merged.shutdown_timeout, Duration::from_millis(500));
        assert_eq!(merged.precision, Precision::F32);
        Ok(())
    }

    #[test]
    fn a_bad_pipeline_fails_with_its_line_and_an_empty_host_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let text = std::fs::read_to_string(example())?;
        let line = 1 + text
            .lines()
            .position(|l| l == "max_batch_size = 32")
            .unwrap_or_default();
        let text = text.replace("max_batch_size = 32", "max_batch_size = \"many\"");
        let bad = write(dir.path(), "bad.toml", &text)?;
        let cli = Overrides {
            pipelines: vec![bad],
            ..Overrides::default()
        };
        let error = HostSettings::resolve(None, cli)
            .err()
            .map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(
                |e| e.contains(&format!("bad.toml:{line}:18:")) && e.contains("\"many\"")
            ),
            "{error:?}"
        );
        assert!(matches!(
            HostSettings::resolve(None, Overrides::default()),
            Err(HostError::NothingToServe)
        ));
        let deployed = Overrides {
            deployed: true,
            ..Overrides::default()
        };
        assert!(HostSettings::resolve(None, deployed)?.pipelines.is_empty());
        Ok(())
    }
}
