//! `headstream serve`, `publish` and `request`: the NATS side.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use std::path::PathBuf;

use headstream_pipeline::{HostFile, NatsSettings, Pipeline};
use headstream_runtime::Metrics;
use headstream_runtime::live::{FileWatch, HostContext, LiveHost, Origin, StatusBoard};

use super::jsonl::read_input;
use crate::cli::{ConnectArgs, PublishArgs, RequestArgs, ServeArgs};

/// The async runtime the NATS commands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connects a one-off command as `connect` says: `--nats`, else the host config's URL, else
/// the local default; credentials and TLS from the host config.
pub async fn connect(connect: &ConnectArgs) -> anyhow::Result<async_nats::Client> {
    let host = connect.config.as_deref().map(HostFile::load).transpose()?;
    let url = connect
        .nats
        .clone()
        .or_else(|| host.as_ref().and_then(|h| h.nats.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let settings = host.map(|h| h.nats).unwrap_or_default();
    connect_once(&url, &settings).await
}

/// Live head instances a serving host has room for: its pipelines' heads, canaries and
/// shadows, twice over while a new version takes over, and the deploy checks.
const PLUGIN_INSTANCES: u32 = 256;

/// Where commands look for NATS when told nothing.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// `url` with any password or token in it replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{prefix}{shown}@{host}")
        }
        None => url.to_owned(),
    }
}

/// Connects for a one-off command: fails at once if the server cannot be reached.
pub async fn connect_once(
    url: &str,
    settings: &NatsSettings,
) -> anyhow::Result<async_nats::Client> {
    connect_with(url, settings, false).await
}

/// Connects with the host config's authentication and TLS settings. A host (`retry`) waits for
/// the server at start and reconnects forever after a connection loss (subscriptions and
/// consumers resume), logging each disconnect.
async fn connect_with(
    url: &str,
    settings: &NatsSettings,
    retry: bool,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(creds) = &settings.credentials {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("cannot read NATS credentials {}", creds.display()))?;
    }
    let secret = |var: &str| {
        std::env::var(var)
            .with_context(|| format!("the host config names ${var}, which is not set"))
    };
    if let Some(user) = &settings.user {
        let password = match &settings.password_env {
            Some(var) => secret(var)?,
            None => String::new(),
        };
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(var) = &settings.token_env {
        options = options.token(secret(var)?);
    }
    if let Some(var) = &settings.nkey_seed_env {
        options = options.nkey(secret(var)?);
    }
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if retry {
        options = options.retry_on_initial_connect().max_reconnects(None);
    }
    options
        .name("headstream")
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                other => tracing::info!("NATS: {other}"),
            }
        })
        // A comma-separated list names several servers of a cluster.
        .connect(url.split(',').map(str::trim).collect::<Vec<_>>())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", redact(url)))
}

/// Serves every pipeline until Ctrl-C / SIGTERM; in-flight batches finish first. With
/// `--deployed` and `--watch`, what is served follows the cluster registry and the files.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Load and validate everything before subscribing to anything.
    let host = args.config.as_deref().map(HostFile::load).transpose()?;
    let files: Vec<PathBuf> = host
        .iter()
        .flat_map(|h| h.pipelines.iter().map(|p| p.get_ref().clone()))
        .chain(args.pipeline.iter().cloned())
        .collect();
    let pipelines = files
        .iter()
        .map(|p| Pipeline::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    if pipelines.is_empty() && !args.deployed {
        anyhow::bail!(
            "nothing to serve: name pipelines (--pipeline, or `pipelines` in the host config) or serve the cluster registry's (--deployed)"
        );
    }
    let url = args
        .nats
        .clone()
        .or_else(|| host.as_ref().and_then(|h| h.nats.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let settings = host.as_ref().map(|h| h.nats.clone()).unwrap_or_default();
    let metrics_addr: Option<std::net::SocketAddr> = match &args.metrics {
        Some(addr) => Some(addr.parse().with_context(|| {
            format!("--metrics {addr:?} is not an address like 127.0.0.1:9464")
        })?),
        None => host
            .as_ref()
            .and_then(|h| h.metrics.as_ref())
            .and_then(|a| a.get_ref().parse().ok()),
    };
    let model_dir = if args.model.model.as_os_str() == super::DEFAULT_MODEL_DIR {
        host.as_ref()
            .and_then(|h| h.model.clone())
            .unwrap_or_else(|| args.model.model.clone())
    } else {
        args.model.model.clone()
    };
    let batch = pipelines
        .iter()
        .map(|p| *p.batching.max_batch_size.get_ref() as usize)
        .max()
        .unwrap_or(32);
    let encoder = Arc::new(super::load_encoder(&model_dir, batch)?);
    let metrics = Arc::new(Metrics::new().context("cannot set up metrics")?);
    // One plugin engine for the process: every pipeline's heads, every version during a swap,
    // and every deploy check share its instance pool.
    let plugins = Arc::new(headstream_runtime::plugin_host(
        &encoder,
        Some(super::run::component_cache()),
        PLUGIN_INSTANCES,
    )?);
    // Pipelines may come and go (--deployed, --watch): size the shared encoder thread for a
    // few of them.
    let slots = if args.deployed || args.watch {
        pipelines.len().max(4)
    } else {
        pipelines.len().max(1)
    };
    // One encoder thread for every pipeline: batches that queue while it is busy share a pass.
    let pass_metrics = metrics.clone();
    let shared = encoder.clone();
    let batcher = headstream_runtime::CoBatcher::with_fn(
        Arc::new(move |texts: &[&str], states: bool| shared.encode(texts, states)),
        batch * slots,
        2 * slots,
        Some(Box::new(move |batches, _| {
            pass_metrics.pass_batches.observe(batches as f64);
        })),
    );
    let mut registry = match (&args.registry, host.as_ref().map(|h| &h.registry)) {
        (dirs, _) if !dirs.is_empty() => headstream_package::Registry { dirs: dirs.clone() },
        (_, Some(dirs)) if !dirs.is_empty() => headstream_package::Registry { dirs: dirs.clone() },
        _ => headstream_package::Registry::from_env(),
    };
    let watched_dirs = registry.dirs.clone();
    // Packages fetched from the cluster registry live as long as this process.
    let fetched = tempfile::Builder::new()
        .prefix("headstream-packages-")
        .tempdir()
        .context("cannot create a directory for fetched packages")?;
    if args.deployed {
        registry.dirs.push(fetched.path().to_path_buf());
    }
    let grace = shutdown_timeout(args, host.as_ref());
    let host_id = host_id();
    let runtime = runtime()?;
    let served = runtime.block_on(async {
        let client = connect_with(&url, &settings, true).await?;
        if let Some(addr) = metrics_addr {
            let listener = headstream_runtime::serve_metrics(addr, metrics.clone());
            tokio::spawn(async move {
                if let Err(e) = listener.await {
                    tracing::error!("metrics endpoint {addr}: {e}");
                }
            });
        }
        let mut live = LiveHost::new(HostContext {
            client: client.clone(),
            encoder: encoder.clone(),
            batcher,
            metrics: metrics.clone(),
            host_id: host_id.clone(),
            plugins: plugins.clone(),
            registry,
        });
        let mut texts = Vec::new();
        for (file, pipeline) in files.iter().zip(&pipelines) {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            live.apply(Origin::File(file.clone()), &text, file, None)
                .await?;
            texts.push((file.clone(), text, pipeline.name.get_ref().clone()));
        }
        let _service = register_service(
            &client,
            &encoder,
            &host_id,
            metrics.clone(),
            live.status_board(),
        )
        .await?;
        let cluster = match args.deployed {
            true => Some(
                headstream_registry::ClusterRegistry::open(&client)
                    .await
                    .context("cannot open the cluster registry")?,
            ),
            false => None,
        };
        let watch = args.watch.then(|| FileWatch::new(texts, watched_dirs));
        eprintln!(
            "headstream serving {} pipeline(s) on {}{}{}",
            pipelines.len(),
            redact(&url),
            if args.deployed {
                ", following the cluster registry"
            } else {
                ""
            },
            if args.watch { ", watching files" } else { "" },
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut signals = Signals::new();
        tokio::spawn(async move {
            signals.next().await;
            let _ = stop_tx.send(());
            bound_shutdown(grace, signals).await;
        });
        let outcome = headstream_runtime::live::follow(
            &mut live,
            cluster.as_ref(),
            fetched.path(),
            watch,
            async move {
                let _ = stop_rx.await;
            },
        )
        .await;
        let finished = tokio::time::timeout(grace, live.shutdown()).await;
        outcome.context("a pipeline stopped serving")?;
        finished
            .map_err(|_| {
                anyhow::anyhow!(
                    "in-flight batches did not finish within the shutdown timeout ({} s); messages not acked will be redelivered",
                    grace.as_secs_f64()
                )
            })?
            .context("a pipeline failed while shutting down")?;
        anyhow::Ok(())
    });
    // Work still running on blocking threads (a batch in a head) is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(200));
    served
}

/// `--shutdown-timeout`, else the host config's `shutdown_timeout` (validated at load), else 5 s.
fn shutdown_timeout(args: &ServeArgs, host: Option<&HostFile>) -> Duration {
    args.shutdown_timeout
        .or_else(|| {
            host.and_then(|h| h.shutdown_timeout.as_ref())
                .and_then(|t| Duration::try_from_secs_f64(*t.get_ref()).ok())
        })
        .unwrap_or(Duration::from_secs(5))
}

/// After the first signal: announces the drain and bounds it. A second signal exits at once;
/// if the process is still here a second after `grace` (something hangs outside the drain),
/// it exits anyway. Either way nothing unacknowledged is lost: JetStream redelivers it.
async fn bound_shutdown(grace: Duration, mut signals: Signals) {
    eprintln!(
        "shutting down: finishing in-flight batches (at most {} s; a second signal exits at once)",
        grace.as_secs_f64()
    );
    let hard = grace + Duration::from_secs(1);
    let _ = std::thread::Builder::new()
        .name("headstream-shutdown".into())
        .spawn(move || {
            std::thread::sleep(hard);
            eprintln!(
                "headstream: still running {} s after the shutdown signal; exiting (messages not acked will be redelivered)",
                hard.as_secs_f64()
            );
            std::process::exit(1);
        });
    signals.next().await;
    eprintln!("headstream: second signal, exiting now (messages not acked will be redelivered)");
    std::process::exit(130);
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

/// Registers the host as a NATS micro service (`$SRV.PING|INFO|STATS`, `nats micro ls`) with
/// status endpoints: `headstream.status` (every pipeline served now, with its head versions and
/// counters) and `headstream.status.<pipeline>` (one), following deploys and removals.
async fn register_service(
    client: &async_nats::Client,
    encoder: &headstream_encoder::Encoder,
    host_id: &str,
    metrics: Arc<Metrics>,
    board: StatusBoard,
) -> anyhow::Result<async_nats::service::Service> {
    use async_nats::service::ServiceExt as _;
    use futures::StreamExt as _;
    let metadata = std::collections::HashMap::from([
        ("host".to_owned(), host_id.to_owned()),
        ("encoder".to_owned(), encoder.fingerprint().to_string()),
    ]);
    let service = client
        .service_builder()
        .description("headstream host: one encoder, task heads over NATS")
        .metadata(metadata)
        .start("headstream", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot register the NATS micro service: {e}"))?;
    let status = move |name: &str, entry: &serde_json::Value| {
        let count = |outcome: &str| metrics.messages.with_label_values(&[name, outcome]).get();
        serde_json::json!({
            "pipeline": name,
            "heads": entry["heads"],
            "source": entry["source"],
            "results": count("result"),
            "errors": count("error"),
        })
    };
    let status = Arc::new(status);
    let read = |board: &StatusBoard| match board.read() {
        Ok(b) => b.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for (name, subject) in [
        ("status", "headstream.status"),
        ("pipeline-status", "headstream.status.*"),
    ] {
        let mut endpoint = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|e| anyhow::anyhow!("cannot add the status endpoint {subject}: {e}"))?;
        let (board, status, host) = (board.clone(), status.clone(), host_id.to_owned());
        tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let served = read(&board);
                let body = match request
                    .message
                    .subject
                    .as_str()
                    .strip_prefix("headstream.status.")
                {
                    Some(pipeline) => match served.get(pipeline) {
                        Some(entry) => status(pipeline, entry),
                        None => serde_json::json!({
                            "pipeline": pipeline,
                            "error": format!("host {host} does not serve {pipeline}"),
                        }),
                    },
                    None => serde_json::json!({
                        "host": host,
                        "pipelines": served
                            .iter()
                            .map(|(name, entry)| (name.clone(), status(name, entry)))
                            .collect::<serde_json::Map<_, _>>(),
                    }),
                };
                let _ = request.respond(Ok(body.to_string().into())).await;
            }
        });
    }
    Ok(service)
}

/// Ctrl-C and SIGTERM, listened for from creation on (so a second signal is never missed).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Publishes `--text` or each JSONL line of the input as a message.
pub fn publish(args: &PublishArgs) -> anyhow::Result<()> {
    let bodies = bodies(args.send.text.as_deref(), args.send.input.as_deref())?;
    runtime()?.block_on(async {
        let client = connect(&args.send.connect).await?;
        for body in &bodies {
            client
                .publish(args.send.subject.clone(), body.clone().into())
                .await?;
        }
        client.flush().await?;
        eprintln!(
            "published {} message(s) to {}",
            bodies.len(),
            args.send.subject
        );
        anyhow::Ok(())
    })
}

/// Sends each message as a request and prints each reply (one JSON line each).
pub fn request(args: &RequestArgs) -> anyhow::Result<()> {
    let send = &args.send;
    let bodies = bodies(send.text.as_deref(), send.input.as_deref())?;
    runtime()?.block_on(async {
        let client = connect(&send.connect).await?;
        let mut stdout = std::io::stdout().lock();
        for body in bodies {
            let reply = tokio::time::timeout(
                Duration::from_millis(args.timeout_ms),
                client.request(send.subject.clone(), body.into()),
            )
            .await
            .with_context(|| format!("no reply on {} within {} ms", send.subject, args.timeout_ms))?
            .with_context(|| format!("request to {} failed", send.subject))?;
            stdout.write_all(&reply.payload)?;
            stdout.write_all(b"\n")?;
        }
        anyhow::Ok(())
    })
}

fn bodies(text: Option<&str>, input: Option<&std::path::Path>) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(text) = text {
        return Ok(vec![
            serde_json::json!({ "text": text }).to_string().into_bytes(),
        ]);
    }
    let input = read_input(input)?;
    Ok(input
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_shown_without_secrets() {
        use super::redact;
        assert_eq!(
            redact("nats://alice:s3cret@h:4222"),
            "nats://alice:***@h:4222"
        );
        assert_eq!(redact("nats://t0ken@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("tls://h:4222"), "tls://h:4222");
    }
}
