//! `headstream replay`: a pipeline over messages a JetStream stream retains, at the cost of the
//! heads alone where the embedding store has the vectors (the encoder runs only on misses).
//!
//! An ordered consumer reads the range (it never touches the live durable consumer); results go
//! to a JSONL file (written, flushed and synced batch by batch, with a checkpoint beside it) or
//! to a subject, with the usual idempotency `key`, so consumers can upsert. `--resume` continues
//! after the checkpoint: a file is cut back to what the checkpoint covered, so every result is
//! written once.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt as _;
use headstream_encoder::EncodedText;
use headstream_pipeline::Pipeline;
use headstream_runner::{Message, Runner, parse_message_within};
use serde::{Deserialize, Serialize};

use crate::cli::ReplayArgs;

/// Where a replay stands: the last stream sequence whose result is out, and (for a file) how
/// many bytes of output that is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    stream: String,
    pipeline: String,
    last_seq: u64,
    output_bytes: u64,
}

/// What a replay did, printed as one JSON object at the end.
#[derive(Debug, Default, Serialize)]
struct Summary {
    stream: String,
    pipeline: String,
    first_seq: u64,
    last_seq: u64,
    resumed_after: Option<u64>,
    messages: u64,
    unusable: u64,
    store_hits: u64,
    store_misses: u64,
    token_heads: bool,
    encode_s: f64,
    heads_s: f64,
    store_s: f64,
    wall_s: f64,
}

/// Replays the range and prints the summary.
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    let runtime = super::serve::runtime()?;
    let client = runtime.block_on(super::serve::connect(&args.connect))?;
    // Packages of deployed pipelines are fetched here from the cluster registry.
    let fetched = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut registry = headstream_package::Registry::chosen(&args.registry, &[]);
    let mut load = |file: Option<&Path>, deployed: Option<&str>| -> anyhow::Result<Pipeline> {
        match (file, deployed) {
            (Some(file), _) => Ok(Pipeline::load(file)?),
            (None, Some(spec)) => {
                let (pipeline, dir) =
                    runtime.block_on(fetch_deployed(&client, spec, fetched.path()))?;
                if !registry.dirs.contains(&dir) {
                    registry.dirs.push(dir);
                }
                Ok(pipeline)
            }
            (None, None) => anyhow::bail!("name a pipeline: --pipeline FILE or --deployed NAME"),
        }
    };
    let pipeline = load(args.pipeline.as_deref(), args.deployed.as_deref())?;
    let other = match (args.compare.as_deref(), args.compare_deployed.as_deref()) {
        (None, None) => None,
        (file, deployed) => Some(load(file, deployed)?),
    };
    let batch = args.batch_size as usize;
    let encoder = Arc::new(super::load_encoder(
        &args.model,
        args.model.precision(),
        batch,
    )?);
    let plugins = headstream_runner::plugin_host(&encoder, super::run::component_cache(), 64)?;
    let runner = Runner::new(&pipeline, &plugins, encoder.clone(), &registry)?;
    let other = other
        .map(|p| -> anyhow::Result<(Pipeline, Runner)> {
            let r = Runner::new(&p, &plugins, encoder.clone(), &registry)?;
            Ok((p, r))
        })
        .transpose()?;
    let mut diff = match &other {
        Some(_) => Some(super::diff::Diff::new(args.labels.as_deref())?),
        None => None,
    };
    // The bucket the hosts store into, as they read it from the same host config.
    let store = headstream_host::store_config(
        super::serve::host_file(&args.connect)?
            .as_ref()
            .map(|h| &h.embeddings),
    );
    let checkpoint_path = args.output.as_ref().map(|o| {
        let mut name = o.as_os_str().to_owned();
        name.push(".replay.json");
        PathBuf::from(name)
    });
    runtime.block_on(async {
        let jetstream = async_nats::jetstream::new(client.clone());
        let kv = match args.no_store {
            true => None,
            false => match jetstream.get_key_value(&store.bucket).await {
                Ok(kv) => Some(kv),
                Err(e) => {
                    eprintln!(
                        "no embedding store {} ({e}): every message is encoded",
                        store.bucket
                    );
                    None
                }
            },
        };
        let mut stream = jetstream
            .get_stream(&args.stream)
            .await
            .with_context(|| format!("no stream {:?} on this server", args.stream))?;
        let info = stream
            .info()
            .await
            .context("cannot read the stream's state")?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let resumed = match (&checkpoint_path, args.resume) {
            (Some(path), true) => read_checkpoint(path, &args.stream, pipeline.name.get_ref())?,
            (None, true) => {
                anyhow::bail!("--resume needs --output (the checkpoint is kept beside it)")
            }
            _ => None,
        };
        let from = match (&resumed, args.from_seq) {
            (Some(c), _) => c.last_seq + 1,
            (None, Some(seq)) => seq,
            (None, None) => first,
        };
        let to = args.to_seq.unwrap_or(last).min(last);
        if let Some(seq) = args.from_seq.filter(|s| *s < first) {
            anyhow::bail!(
                "stream {} no longer retains sequence {seq}: it holds {first}..={last}",
                args.stream
            );
        }
        let deliver_policy = match (&resumed, args.from_seq, &args.since) {
            (None, None, Some(since)) => DeliverPolicy::ByStartTime {
                start_time: since_time(since)?,
            },
            _ => DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
        };
        let mut out = match (&args.subject, &args.output, &other) {
            (Some(subject), _, _) => Output::Subject(subject.clone()),
            // Comparing: the report is what goes to stdout.
            (None, None, Some(_)) => Output::Discard,
            (None, _, _) => open_output(args.output.as_deref(), resumed.as_ref())?,
        };
        let mut summary = Summary {
            stream: args.stream.clone(),
            pipeline: pipeline.name.get_ref().clone(),
            first_seq: from,
            last_seq: from.saturating_sub(1),
            resumed_after: resumed.as_ref().map(|c| c.last_seq),
            token_heads: runner.needs_token_states(),
            ..Summary::default()
        };
        let started = Instant::now();
        if from <= to {
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    filter_subject: pipeline.input.subject.get_ref().clone(),
                    deliver_policy,
                    ..Default::default()
                })
                .await
                .context("cannot create an ordered consumer")?;
            let mut messages = consumer
                .messages()
                .await
                .context("cannot read the stream")?;
            let bar = progress(to - from + 1);
            let limit = args.limit.unwrap_or(u64::MAX);
            let mut pending: Vec<(u64, Message)> = Vec::with_capacity(batch);
            let mut done = false;
            while !done {
                let next = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
                match next {
                    Ok(Some(Ok(message))) => {
                        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                        if seq > to {
                            done = true;
                        } else {
                            summary.last_seq = seq;
                            match parse_message_within(
                                &message.payload,
                                runner.input_limits(),
                                || format!("{}-{seq}", args.stream),
                            ) {
                                Ok(m) => pending.push((seq, m)),
                                Err(_) => summary.unusable += 1,
                            }
                            bar.inc(1);
                            done = seq >= to || summary.messages + pending.len() as u64 >= limit;
                        }
                    }
                    Ok(Some(Err(e))) => anyhow::bail!("reading the stream: {e}"),
                    // Nothing more within the range (filtered subjects leave gaps).
                    Ok(None) | Err(_) => done = true,
                }
                if pending.len() >= batch || (done && !pending.is_empty()) {
                    let compare = other.as_ref().map(|(_, r)| r).zip(diff.as_mut());
                    process(
                        &runner,
                        &encoder,
                        kv.as_ref(),
                        &pending,
                        &mut out,
                        &client,
                        &mut summary,
                        compare,
                    )
                    .await?;
                    pending.clear();
                    if let (Some(path), Output::File(file)) = (&checkpoint_path, &mut out) {
                        write_checkpoint(
                            path,
                            &Checkpoint {
                                stream: args.stream.clone(),
                                pipeline: pipeline.name.get_ref().clone(),
                                last_seq: summary.last_seq,
                                output_bytes: file.stream_position()?,
                            },
                        )?;
                    }
                    if let Some(rate) = args.rate {
                        let due = Duration::from_secs_f64(summary.messages as f64 / rate);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
            bar.finish_and_clear();
        }
        if let Output::Subject(_) = out {
            client.flush().await.context("cannot flush the results")?;
        }
        summary.wall_s = started.elapsed().as_secs_f64();
        if let (Some((p, _)), Some(diff)) = (&other, &diff) {
            let (a, b) = (pipeline.name.get_ref(), p.name.get_ref());
            eprint!("{}", diff.table(a, b));
            println!("{}", diff.json(a, b));
        }
        eprintln!("{}", serde_json::to_string(&summary)?);
        Ok(())
    })
}

enum Output {
    File(std::fs::File),
    Subject(String),
    Stdout,
    Discard,
}

/// Pipeline `NAME[@REVISION]` (default: the current one) from the cluster registry, with the
/// packages its references name fetched into a directory under `dest`.
async fn fetch_deployed(
    client: &async_nats::Client,
    spec: &str,
    dest: &Path,
) -> anyhow::Result<(Pipeline, PathBuf)> {
    let (name, revision) = match spec.split_once('@') {
        Some((name, rev)) => (
            name,
            Some(
                rev.parse::<u64>()
                    .with_context(|| format!("--deployed {spec:?}: the revision is a number"))?,
            ),
        ),
        None => (spec, None),
    };
    let cluster = headstream_registry::ClusterRegistry::open(client).await?;
    let history = cluster.history(name).await?;
    let chosen = match revision {
        Some(rev) => history
            .iter()
            .find(|r| r.revision == rev)
            .with_context(|| {
                let kept: Vec<u64> = history.iter().map(|r| r.revision).collect();
                format!("pipeline {name} has no revision {rev} (kept: {kept:?})")
            })?,
        None => history
            .iter()
            .rev()
            .find(|r| r.text.is_some())
            .with_context(|| format!("pipeline {name} was removed"))?,
    };
    let text = chosen
        .text
        .as_deref()
        .with_context(|| format!("revision {} of {name} is its removal", chosen.revision))?;
    let origin = PathBuf::from(format!("{name}@{}", chosen.revision));
    let pipeline = Pipeline::parse(text, &origin)?;
    let names: std::collections::BTreeSet<String> = pipeline
        .heads()
        .iter()
        .flat_map(|h| h.references())
        .filter_map(|r| headstream_pipeline::parse_reference(r.get_ref()).ok())
        .map(|(name, _)| name)
        .collect();
    let dir = dest.join("packages");
    for record in cluster.packages().await? {
        if names.contains(&record.name) {
            cluster
                .fetch_package(&record.name, &record.version, &dir)
                .await?;
        }
    }
    Ok((pipeline, dir))
}

fn open_output(path: Option<&Path>, resumed: Option<&Checkpoint>) -> anyhow::Result<Output> {
    let Some(path) = path else {
        return Ok(Output::Stdout);
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(resumed.is_none())
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if let Some(c) = resumed {
        // What the checkpoint covers stays; anything written after it goes.
        file.set_len(c.output_bytes)?;
        file.seek(std::io::SeekFrom::Start(c.output_bytes))?;
    }
    Ok(Output::File(file))
}

#[allow(clippy::too_many_arguments)]
async fn process(
    runner: &Runner,
    encoder: &headstream_encoder::Encoder,
    kv: Option<&async_nats::jetstream::kv::Store>,
    pending: &[(u64, Message)],
    out: &mut Output,
    client: &async_nats::Client,
    summary: &mut Summary,
    compare: Option<(&Runner, &mut super::diff::Diff)>,
) -> anyhow::Result<()> {
    let messages: Vec<Message> = pending.iter().map(|(_, m)| m.clone()).collect();
    let digest = encoder.fingerprint().digest().to_owned();
    let mut encoded: Vec<Option<EncodedText>> = vec![None; messages.len()];
    let t = Instant::now();
    // Both versions' heads are served by one encoding: what either reads.
    let states = compare.as_ref().map_or(runner.states(), |(other, _)| {
        runner.states().union(other.states())
    });
    if let (Some(kv), true) = (kv, states == headstream_encoder::States::default()) {
        // The batch's lookups in flight together: one round trip each would be most of a
        // replay's time.
        let values = futures::future::join_all(
            messages
                .iter()
                .map(|m| kv.get(headstream_store::key(&digest, &m.text))),
        )
        .await;
        for (slot, value) in encoded.iter_mut().zip(values) {
            if let Ok(Some(value)) = value
                && let Ok(stored) = headstream_store::decode(&value)
                && stored.embedding.len() == encoder.hidden_size()
            {
                *slot = Some(EncodedText {
                    embedding: stored.embedding,
                    input_ids: Vec::new(),
                    offsets: Vec::new(),
                    truncated: stored.truncated,
                    token_states: None,
                    layers: Vec::new(),
                });
            }
        }
    }
    summary.store_s += t.elapsed().as_secs_f64();
    let misses: Vec<usize> = (0..messages.len())
        .filter(|&i| encoded[i].is_none())
        .collect();
    summary.store_hits += (messages.len() - misses.len()) as u64;
    summary.store_misses += misses.len() as u64;
    if !misses.is_empty() {
        let t = Instant::now();
        let texts: Vec<&str> = misses.iter().map(|&i| messages[i].text.as_str()).collect();
        let fresh = tokio::task::block_in_place(|| encoder.encode_with(&texts, states))?;
        for (i, e) in misses.into_iter().zip(fresh) {
            encoded[i] = Some(e);
        }
        summary.encode_s += t.elapsed().as_secs_f64();
    }
    let encoded: Vec<EncodedText> = encoded.into_iter().flatten().collect();
    let t = Instant::now();
    let processed = tokio::task::block_in_place(|| runner.process_encoded(&messages, &encoded))?;
    summary.heads_s += t.elapsed().as_secs_f64();
    summary.messages += messages.len() as u64;
    if let Some((other, diff)) = compare {
        let theirs = tokio::task::block_in_place(|| other.process_encoded(&messages, &encoded))?;
        diff.add(&messages, &processed.records, &theirs.records);
    }
    match out {
        Output::File(file) => {
            let mut text = String::new();
            for record in &processed.records {
                text.push_str(&record.to_string());
                text.push('\n');
            }
            file.write_all(text.as_bytes())?;
            file.sync_data()?;
        }
        Output::Stdout => {
            let mut stdout = std::io::stdout().lock();
            for record in &processed.records {
                writeln!(stdout, "{record}")?;
            }
        }
        Output::Discard => {}
        Output::Subject(subject) => {
            for record in &processed.records {
                client
                    .publish(subject.clone(), record.to_string().into())
                    .await
                    .context("cannot publish a result")?;
            }
        }
    }
    Ok(())
}

fn read_checkpoint(
    path: &Path,
    stream: &str,
    pipeline: &str,
) -> anyhow::Result<Option<Checkpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let c: Checkpoint = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a replay checkpoint", path.display()))?;
    anyhow::ensure!(
        c.stream == stream && c.pipeline == pipeline,
        "{} is a checkpoint of {} over {}, not of {pipeline} over {stream}",
        path.display(),
        c.pipeline,
        c.stream
    );
    Ok(Some(c))
}

fn write_checkpoint(path: &Path, c: &Checkpoint) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(c)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `--since`: an RFC 3339 time, or a duration back from now (`90s`, `15m`, `2h`, `7d`).
pub(crate) fn since_time(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(t);
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: f64 = number
        .parse()
        .with_context(|| format!("--since {text:?}: an RFC 3339 time or a duration like 15m"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => anyhow::bail!("--since {text:?}: the unit is s, m, h or d"),
    };
    Ok(time::OffsetDateTime::now_utc() - time::Duration::seconds_f64(seconds))
}

fn progress(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} messages ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}
