//! `headstream serve`, `publish` and `request`: argument wiring over `headstream-host`.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use headstream_host::{Host, HostSettings, Overrides};
use headstream_pipeline::HostFile;

use super::jsonl::read_input;
use crate::cli::{ConnectArgs, PublishArgs, RequestArgs, SendArgs, ServeArgs};

/// The async runtime the NATS commands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connects a one-off command as `connect` says: `--nats`, else the host config's URL, else
/// the local default; credentials and TLS from the host config. Fails at once if the server
/// cannot be reached.
pub async fn connect(connect: &ConnectArgs) -> anyhow::Result<async_nats::Client> {
    let (url, settings) = nats_settings(host_file(connect)?.as_ref(), connect);
    Ok(headstream_host::connect_once(&url, &settings).await?)
}

/// For an HTTP front door (gateway, dashboard): the NATS connection `connect` says (waiting
/// for the server, reconnecting after), the socket bound on `listen` and its address, and the
/// URL (credentials redacted) for the start-up line.
pub async fn connect_and_listen(
    connect: &ConnectArgs,
    listen: std::net::SocketAddr,
) -> anyhow::Result<(
    async_nats::Client,
    tokio::net::TcpListener,
    std::net::SocketAddr,
    String,
)> {
    let host = host_file(connect)?;
    let (url, settings) = nats_settings(host.as_ref(), connect);
    let client = headstream_host::connect(&url, &settings, true).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("no local address")?;
    Ok((client, listener, addr, headstream_host::redact(&url)))
}

/// The host config `--config` names, loaded and validated, if any.
pub fn host_file(connect: &ConnectArgs) -> anyhow::Result<Option<HostFile>> {
    Ok(connect.config.as_deref().map(HostFile::load).transpose()?)
}

/// The NATS URL (`--nats`, else the host config's, else the default) and the host config's
/// credentials and TLS settings.
pub fn nats_settings(
    host: Option<&HostFile>,
    connect: &ConnectArgs,
) -> (String, headstream_pipeline::NatsSettings) {
    let url = headstream_host::nats_url(connect.nats.as_deref(), host);
    (url, host.map(|h| h.nats.clone()).unwrap_or_default())
}

/// Serves every pipeline until Ctrl-C / SIGTERM; in-flight batches finish first. With
/// `--deployed` and `--watch`, what is served follows the cluster registry and the files.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Load and validate everything before connecting to anything.
    let overrides = Overrides {
        pipelines: args.pipeline.clone(),
        nats: args.nats.clone(),
        metrics: args.metrics,
        model: args.model.model.clone(),
        precision: args.model.precision,
        registry: args.registry.clone(),
        shutdown_timeout: args.shutdown_timeout,
        deployed: args.deployed,
        watch: args.watch,
        otlp_endpoint: args.otlp_endpoint.clone(),
    };
    let settings = HostSettings::resolve(args.config.as_deref(), overrides)?;
    // --model, else $HEADSTREAM_MODEL, else the host config's, else the defaults.
    let model = args.model.locate(settings.model.as_deref())?;
    let encoder = Arc::new(super::load_encoder_at(
        &model,
        settings.precision,
        settings.max_batch_size(),
    )?);
    let grace = settings.shutdown_timeout;
    let runtime = runtime()?;
    let served = runtime.block_on(async {
        let host = Host::start(settings, encoder, super::run::component_cache()).await?;
        eprintln!("headstream serving {}", host.summary());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut signals = Signals::new();
        tokio::spawn(async move {
            signals.next().await;
            let _ = stop_tx.send(());
            bound_shutdown(grace, signals).await;
        });
        host.run(async move {
            let _ = stop_rx.await;
        })
        .await
    });
    // Work still running on blocking threads (a batch in a head) is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(served?)
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

/// Ctrl-C and SIGTERM, listened for from creation on (so a second signal is never missed).
/// Ctrl-C and SIGTERM, as one stream of stop requests.
pub(crate) struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    pub(crate) async fn next(&mut self) {
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
    let tracer = producer_tracer(&args.send)?;
    runtime()?.block_on(async {
        let client = connect(&args.send.connect).await?;
        for body in &bodies {
            let sent = Sent::start(&args.send.subject);
            client
                .publish_with_headers(
                    args.send.subject.clone(),
                    sent.headers(),
                    body.clone().into(),
                )
                .await?;
            sent.end(tracer.as_ref());
        }
        client.flush().await?;
        eprintln!(
            "published {} message(s) to {}",
            bodies.len(),
            args.send.subject
        );
        anyhow::Ok(())
    })?;
    flush(tracer);
    Ok(())
}

/// Sends each message as a request and prints each reply (one JSON line each).
pub fn request(args: &RequestArgs) -> anyhow::Result<()> {
    let send = &args.send;
    let bodies = bodies(send.text.as_deref(), send.input.as_deref())?;
    let tracer = producer_tracer(send)?;
    runtime()?.block_on(async {
        let client = connect(&send.connect).await?;
        let mut stdout = std::io::stdout().lock();
        for body in bodies {
            let sent = Sent::start(&send.subject);
            let request = async_nats::Request::new()
                .payload(body.into())
                .headers(sent.headers());
            let reply = tokio::time::timeout(
                Duration::from_millis(args.timeout_ms),
                client.send_request(send.subject.clone(), request),
            )
            .await
            .with_context(|| format!("no reply on {} within {} ms", send.subject, args.timeout_ms))?
            .with_context(|| format!("request to {} failed", send.subject))?;
            sent.end(tracer.as_ref());
            stdout.write_all(&reply.payload)?;
            stdout.write_all(b"\n")?;
        }
        anyhow::Ok(())
    })?;
    flush(tracer);
    Ok(())
}

/// The exporter for `--otlp-endpoint`, if given (built before the async runtime: its HTTP
/// client blocks).
fn producer_tracer(send: &SendArgs) -> anyhow::Result<Option<headstream_trace::Tracer>> {
    send.otlp_endpoint
        .as_deref()
        .map(|endpoint| headstream_trace::Tracer::otlp(endpoint, "headstream client"))
        .transpose()
        .map_err(Into::into)
}

fn flush(tracer: Option<headstream_trace::Tracer>) {
    if let Some(tracer) = tracer {
        tracer.shutdown();
    }
}

/// One message sent: the root of its trace (a `publish` span), started when it was sent.
struct Sent {
    ids: headstream_trace::SpanIds,
    subject: String,
    start: std::time::SystemTime,
}

impl Sent {
    fn start(subject: &str) -> Self {
        Self {
            ids: headstream_trace::SpanIds::root(),
            subject: subject.to_owned(),
            start: std::time::SystemTime::now(),
        }
    }

    /// A `traceparent` header making the message a child of this span.
    fn headers(&self) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            headstream_trace::TRACEPARENT,
            self.ids.traceparent().to_string().as_str(),
        );
        headers
    }

    fn end(self, tracer: Option<&headstream_trace::Tracer>) {
        if let Some(tracer) = tracer {
            tracer.record(headstream_trace::SpanRecord {
                ids: self.ids,
                name: format!("publish {}", self.subject).into(),
                kind: headstream_trace::Kind::Producer,
                start: self.start,
                end: std::time::SystemTime::now(),
                attributes: vec![
                    ("messaging.system", "nats".to_owned()),
                    ("messaging.destination.name", self.subject),
                ],
                stages: Vec::new(),
            });
        }
    }
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
