//! `headstream serve`, `publish` and `request`: the NATS side.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use std::path::PathBuf;

use headstream_pipeline::{HostFile, Pipeline};
use headstream_runtime::{Runner, ServeOptions};

use super::jsonl::read_input;
use crate::cli::{PublishArgs, RequestArgs, ServeArgs};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    connect_with(url, None).await
}

async fn connect_with(
    url: &str,
    credentials: Option<&std::path::Path>,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(creds) = credentials {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("cannot read NATS credentials {}", creds.display()))?;
    }
    options
        .name("headstream")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// Serves every pipeline until Ctrl-C / SIGTERM; in-flight batches finish first.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Load and validate everything before subscribing to anything.
    let host = args.config.as_deref().map(HostFile::load).transpose()?;
    let files: Vec<&std::path::Path> = host
        .iter()
        .flat_map(|h| h.pipelines.iter().map(|p| p.get_ref().as_path()))
        .chain(args.pipeline.iter().map(PathBuf::as_path))
        .collect();
    let pipelines = files
        .iter()
        .map(|p| Pipeline::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let url = args
        .nats
        .clone()
        .or_else(|| host.as_ref().and_then(|h| h.nats.url.clone()))
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let credentials = host.as_ref().and_then(|h| h.nats.credentials.clone());
    let batch = pipelines
        .iter()
        .map(|p| *p.batching.max_batch_size.get_ref() as usize)
        .max()
        .unwrap_or(32);
    let encoder = Arc::new(super::load_encoder(&args.model.model, batch)?);
    let runners = pipelines
        .iter()
        .map(|p| Runner::new(p, encoder.clone(), Some(super::run::component_cache())).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    runtime()?.block_on(async {
        let client = connect_with(&url, credentials.as_deref()).await?;
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = tokio::task::JoinSet::new();
        for (pipeline, runner) in pipelines.iter().zip(runners) {
            let mut stopped = stop.subscribe();
            let shutdown = async move {
                let _ = stopped.recv().await;
            };
            let options = ServeOptions::from_pipeline(pipeline);
            tasks.spawn(headstream_runtime::serve(
                client.clone(),
                runner,
                options,
                shutdown,
            ));
        }
        eprintln!("headstream serving {} pipeline(s) on {}", tasks.len(), url);
        // Run until a signal, or until a pipeline stops on its own (an error: e.g. NATS
        // refused a publish).
        let stopped_early = tokio::select! {
            () = shutdown_signal() => None,
            done = tasks.join_next() => done,
        };
        let _ = stop.send(());
        let Some(first) = stopped_early else {
            eprintln!("shutting down: finishing in-flight batches");
            while let Some(done) = tasks.join_next().await {
                done.context("a pipeline task panicked")??;
            }
            return anyhow::Ok(());
        };
        tasks.abort_all();
        first.context("a pipeline task panicked")??;
        anyhow::bail!("a pipeline stopped serving")
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Publishes `--text` or each JSONL line of the input as a message.
pub fn publish(args: &PublishArgs) -> anyhow::Result<()> {
    let bodies = bodies(args.send.text.as_deref(), args.send.input.as_deref())?;
    runtime()?.block_on(async {
        let client = connect(&args.send.nats).await?;
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
        let client = connect(&send.nats).await?;
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
