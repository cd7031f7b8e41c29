//! `headstream bench pipeline`: a pipeline end to end through NATS, served by a real
//! `headstream serve` process, against the bare encoder on the same texts: cold start (process
//! start to first result), throughput with JetStream acks and published results, latency at
//! half that rate, and the host's peak RSS.

use std::collections::HashMap;
use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use futures::StreamExt as _;
use headstream_host::ServeOptions;
use headstream_pipeline::Pipeline;
use serde_json::json;

use super::jsonl::{parse_records, read_input};
use super::{median, percentile, round};
use crate::cli::BenchPipelineArgs;

/// How long any one phase may wait for results before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(120);

/// Runs the benchmark and prints one JSON line.
pub fn run(args: &BenchPipelineArgs, threads: Option<usize>) -> anyhow::Result<()> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    let options = ServeOptions::from_pipeline(&pipeline);
    let delivery = options.jetstream.clone().with_context(|| {
        format!(
            "{}: bench pipeline measures JetStream delivery; set [delivery] mode = \"jetstream\"",
            args.pipeline.display()
        )
    })?;
    let source = args.input.display().to_string();
    let records = parse_records(&read_input(Some(&args.input))?, &source)?;
    anyhow::ensure!(!records.is_empty(), "{source} has no texts");
    let texts: Vec<&str> = (0..args.messages)
        .map(|i| records[i % records.len()].text.as_str())
        .collect();

    // The bare encoder on the same texts, batch size and threads.
    let encoder = super::load_encoder(&args.model, args.model.precision(), options.max_batch_size)?;
    encoder.encode(&texts, false)?;
    let mut passes = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        encoder.encode(&texts, false)?;
        passes.push(started.elapsed().as_secs_f64());
    }
    let encoder_rate = texts.len() as f64 / median(&mut passes);
    drop(encoder);
    eprintln!("bare encoder: {encoder_rate:.1} sentences/s");

    let log = tempfile::NamedTempFile::new().context("cannot create the host's log file")?;
    super::serve::runtime()?.block_on(async {
        let client = super::serve::connect(&args.connect).await?;
        let js = jetstream::new(client.clone());
        // A fresh stream: nothing left over from an earlier run.
        let _ = js.delete_stream(&delivery.stream).await;
        js.create_stream(stream::Config {
            name: delivery.stream.clone(),
            subjects: vec![options.subject.clone()],
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create stream {}", delivery.stream))?;
        let mut results = Results::subscribe(&client, &options).await?;

        // Cold start: a message is waiting when the host process starts.
        publish(&js, &options.subject, "cold", texts[0])
            .await?
            .await?;
        let started = Instant::now();
        let mut host = Host::start(args, threads, &log)?;
        results.wait(&["cold".to_owned()], &mut host, &log).await?;
        let cold_start = started.elapsed().as_secs_f64();
        eprintln!("cold start: {cold_start:.2}s");

        // Throughput: everything published at once, acks awaited together.
        let ids: Vec<String> = (0..texts.len()).map(|i| format!("t{i}")).collect();
        let started = Instant::now();
        let mut acks = Vec::with_capacity(texts.len());
        for (id, text) in ids.iter().zip(&texts) {
            acks.push(publish(&js, &options.subject, id, text).await?);
        }
        for ack in acks {
            ack.await.context("publish not stored")?;
        }
        results.wait(&ids, &mut host, &log).await?;
        let rate = texts.len() as f64 / started.elapsed().as_secs_f64();
        eprintln!("through NATS: {rate:.1} sentences/s");

        // Latency at half that rate.
        let latency_rate = rate / 2.0;
        let count = args.latency_messages.min(texts.len());
        let ids: Vec<String> = (0..count).map(|i| format!("l{i}")).collect();
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / latency_rate));
        let mut sent = HashMap::new();
        for (id, text) in ids.iter().zip(&texts) {
            ticks.tick().await;
            sent.insert(id.clone(), Instant::now());
            publish(&js, &options.subject, id, text).await?;
        }
        let arrived = results.wait(&ids, &mut host, &log).await?;
        let mut latencies: Vec<f64> = ids
            .iter()
            .filter_map(|id| Some((*arrived.get(id)? - *sent.get(id)?).as_secs_f64() * 1e3))
            .collect();
        latencies.sort_by(f64::total_cmp);
        // None when every timed message was unusable (only error records came).
        let at = |p: f64| percentile(&latencies, p).map(|v| round(v, 2));
        let (p50, p99) = (at(0.5), at(0.99));
        let memory = host.memory();
        host.stop();

        let result = json!({
            "bench": "pipeline",
            "pipeline": pipeline.name.get_ref(),
            "heads": pipeline.heads().len(),
            "input": args.input.file_name().map(|n| n.to_string_lossy().into_owned()),
            "messages": texts.len(),
            "batch_size": options.max_batch_size,
            "threads": threads,
            "encoder_sentences_per_s": round(encoder_rate, 1),
            "pipeline_sentences_per_s": round(rate, 1),
            "pipeline_share_of_encoder": round(rate / encoder_rate, 3),
            "latency_rate_per_s": round(latency_rate, 1),
            "latency_messages": count,
            "latency_ms": { "p50": p50, "p99": p99 },
            "cold_start_s": round(cold_start, 3),
            "host_rss_mib": memory.map(|(_, rss)| rss),
            "host_peak_rss_mib": memory.map(|(peak, _)| peak),
            "errors": results.errors,
        });
        println!("{result}");
        anyhow::Ok(())
    })
}

async fn publish(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    text: &str,
) -> anyhow::Result<PublishAckFuture> {
    let body = json!({ "id": id, "text": text }).to_string();
    js.publish(subject.to_owned(), body.into())
        .await
        .with_context(|| format!("cannot publish to {subject}"))
}

/// Results and error records as they arrive, each stamped when it arrived (by tasks that
/// read the subscriptions all along, so a result is not timed by when the benchmark looks).
struct Results {
    arrivals: tokio::sync::mpsc::UnboundedReceiver<Arrival>,
    early: HashMap<String, Instant>,
    /// Ids whose error record came before anyone waited for them.
    failed: std::collections::HashSet<String>,
    errors: usize,
}

enum Arrival {
    Result(String, Instant),
    /// An error record, with the id of the message it carries when it has one: that message
    /// is answered too (unusable texts in the input are not lost, just not timed).
    Error(Option<String>),
}

impl Results {
    async fn subscribe(
        client: &async_nats::Client,
        options: &ServeOptions,
    ) -> anyhow::Result<Self> {
        let mut output = client.subscribe(options.output.clone()).await?;
        let mut error_records = client.subscribe(options.errors.clone()).await?;
        client.flush().await?;
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let results = tx.clone();
        tokio::spawn(async move {
            while let Some(message) = output.next().await {
                let now = Instant::now();
                let id = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned));
                if let Some(id) = id
                    && results.send(Arrival::Result(id, now)).is_err()
                {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(record) = error_records.next().await {
                let id = serde_json::from_slice::<serde_json::Value>(&record.payload)
                    .ok()
                    .and_then(|v| {
                        serde_json::from_str::<serde_json::Value>(v["payload"].as_str()?).ok()
                    })
                    .and_then(|m| m["id"].as_str().map(str::to_owned));
                if tx.send(Arrival::Error(id)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            arrivals,
            early: HashMap::new(),
            failed: std::collections::HashSet::new(),
            errors: 0,
        })
    }

    /// Waits until every id in `ids` has a result or an error record; the arrival time of each
    /// result.
    async fn wait(
        &mut self,
        ids: &[String],
        host: &mut Host,
        log: &tempfile::NamedTempFile,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut got = HashMap::with_capacity(ids.len());
        let mut failed = std::collections::HashSet::new();
        for id in ids {
            if let Some(t) = self.early.remove(id) {
                got.insert(id.clone(), t);
            }
            if self.failed.remove(id) {
                failed.insert(id.clone());
            }
        }
        while got.len() + failed.len() < ids.len() {
            let next = tokio::select! {
                a = self.arrivals.recv() => a,
                () = tokio::time::sleep_until(deadline) => None,
            };
            match next {
                Some(Arrival::Result(id, at)) => {
                    if wanted.contains(id.as_str()) {
                        got.entry(id).or_insert(at);
                    } else {
                        self.early.insert(id, at);
                    }
                }
                Some(Arrival::Error(id)) => {
                    self.errors += 1;
                    match id {
                        Some(id) if wanted.contains(id.as_str()) => {
                            failed.insert(id);
                        }
                        Some(id) => {
                            self.failed.insert(id);
                        }
                        None => {}
                    }
                }
                None => {
                    host.check(log)?;
                    anyhow::bail!(
                        "{} of {} results did not come within {PATIENCE:?}",
                        ids.len() - got.len() - failed.len(),
                        ids.len()
                    );
                }
            }
        }
        Ok(got)
    }
}

/// The `headstream serve` process under test.
struct Host(Child);

impl Host {
    fn start(
        args: &BenchPipelineArgs,
        threads: Option<usize>,
        log: &tempfile::NamedTempFile,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut command = Command::new(exe);
        if let Some(threads) = threads {
            command.arg("--threads").arg(threads.to_string());
        }
        command
            .arg("serve")
            .arg("--pipeline")
            .arg(&args.pipeline)
            .arg("--model")
            .arg(args.model.locate(None)?.dir)
            .arg("--precision")
            .arg(args.model.precision().as_str());
        if let Some(nats) = &args.connect.nats {
            command.arg("--nats").arg(nats);
        }
        if let Some(config) = &args.connect.config {
            command.arg("--config").arg(config);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log.reopen().context("cannot open the host's log file")?)
            .spawn()
            .context("cannot start headstream serve")?;
        Ok(Self(child))
    }

    /// An error with the host's log if it has exited.
    fn check(&mut self, log: &tempfile::NamedTempFile) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.0.try_wait() {
            let mut text = String::new();
            let _ = log.reopen().map(|mut f| f.read_to_string(&mut text));
            anyhow::bail!("headstream serve exited ({status}):\n{text}");
        }
        Ok(())
    }

    /// (peak, current) resident memory in MiB, where /proc tells.
    fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024)
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}
