//! `headstream run`: a pipeline over JSONL, no NATS — the embedded default.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use headstream_pipeline::Pipeline;
use headstream_plugin_host::{
    Asset, Head, HeadConfig, HostConfig, Item, Limits, PluginHost, TokenStates,
};
use serde_json::{Map, Value, json};

use super::jsonl::read_input;
use crate::cli::RunArgs;

/// A loaded head with its pipeline name and the heads it consumes.
struct Stage {
    name: String,
    head: Head,
    after: Vec<String>,
}

/// Values keyed by head name: outputs under `results`, failures under `errors`.
type PerHead = Map<String, Value>;

/// One parsed input message.
struct Message {
    id: String,
    text: String,
    meta: Value,
}

/// Runs the pipeline over the input; results to the output, error records to the error sink.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    let name = pipeline.name.get_ref().clone();
    let batch = *pipeline.batching.max_batch_size.get_ref() as usize;
    let encoder = Arc::new(super::load_encoder(&args.model.model, batch)?);
    let host = PluginHost::new(HostConfig {
        cache_dir: Some(component_cache()),
        encoder: Some(encoder.fingerprint().clone()),
        embedder: Some(encoder.clone()),
        ..HostConfig::default()
    })?;
    let stages = load_stages(&host, &pipeline)?;
    let needs_tokens = stages
        .iter()
        .any(|s| s.head.description().needs_token_states);
    let heads_ids: Map<String, Value> = stages
        .iter()
        .map(|s| (s.name.clone(), json!(s.head.id())))
        .collect();
    let fingerprint = encoder.fingerprint().to_string();

    let input = read_input(args.input.as_deref())?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let mut errors: Box<dyn Write> = match &args.errors {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::stderr().lock()),
    };

    let runner = Runner {
        name: &name,
        stages: &stages,
        encoder: &encoder,
        needs_tokens,
        heads_ids,
        fingerprint,
    };
    let (mut ok, mut bad) = (0usize, 0usize);
    let mut pending: Vec<Message> = Vec::with_capacity(batch);
    for (n, line) in input.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_message(line, n + 1) {
            Ok(message) => pending.push(message),
            Err((kind, message)) => {
                bad += 1;
                let record = json!({
                    "pipeline": name,
                    "error": { "kind": kind, "message": format!("line {}: {message}", n + 1) },
                    "payload": String::from_utf8_lossy(line),
                });
                writeln!(errors, "{record}")?;
            }
        }
        if pending.len() == batch {
            ok += runner.process(&mut pending, &mut out)?;
        }
    }
    ok += runner.process(&mut pending, &mut out)?;
    out.flush()?;
    errors.flush()?;
    if bad > 0 {
        eprintln!("{ok} messages processed, {bad} rejected (error records written)");
    }
    Ok(())
}

/// What processing a batch needs.
struct Runner<'a> {
    name: &'a str,
    stages: &'a [Stage],
    encoder: &'a headstream_encoder::Encoder,
    needs_tokens: bool,
    heads_ids: Map<String, Value>,
    fingerprint: String,
}

impl Runner<'_> {
    /// Encodes the pending messages once, runs every stage, writes one result per message;
    /// returns how many were processed and leaves `pending` empty.
    fn process(&self, pending: &mut Vec<Message>, out: &mut dyn Write) -> anyhow::Result<usize> {
        if pending.is_empty() {
            return Ok(0);
        }
        let texts: Vec<&str> = pending.iter().map(|m| m.text.as_str()).collect();
        let encoded = self.encoder.encode(&texts, self.needs_tokens)?;
        let hidden = self.encoder.hidden_size();
        let items: Vec<Item<'_>> = pending
            .iter()
            .zip(&encoded)
            .map(|(m, e)| Item {
                id: &m.id,
                text: &m.text,
                embedding: &e.embedding,
                token_states: e.token_states.as_deref().map(|states| TokenStates {
                    ids: &e.input_ids,
                    offsets: &e.offsets,
                    states,
                    hidden_size: hidden,
                }),
                upstream: Vec::new(),
            })
            .collect();
        let (results, failures) = run_stages(self.stages, items);
        let n = pending.len();
        for (i, m) in pending.drain(..).enumerate() {
            let mut record = json!({
                "id": m.id,
                "pipeline": self.name,
                "meta": m.meta,
                "results": results[i],
                "errors": failures[i],
                "encoder": self.fingerprint,
                "heads": self.heads_ids,
            });
            if encoded[i].truncated {
                record["truncated"] = json!(true);
            }
            writeln!(out, "{record}")?;
        }
        Ok(n)
    }
}

fn load_stages(host: &PluginHost, pipeline: &Pipeline) -> anyhow::Result<Vec<Stage>> {
    let mut stages = Vec::new();
    for spec in pipeline.heads() {
        let name = spec.name.get_ref().clone();
        let mut assets = Vec::new();
        for (asset, path) in &spec.assets {
            let data = std::fs::read(path).with_context(|| {
                format!(
                    "head {name}: cannot read asset {asset} ({})",
                    path.display()
                )
            })?;
            assets.push(Asset {
                name: asset.clone(),
                data,
            });
        }
        let defaults = Limits::default();
        let limits = Limits {
            memory_bytes: spec
                .limits
                .memory_mb
                .map_or(defaults.memory_bytes, |mb| mb as usize * (1 << 20)),
            deadline: spec
                .limits
                .deadline_ms
                .map_or(defaults.deadline, std::time::Duration::from_millis),
            max_output_bytes: spec
                .limits
                .max_output_kb
                .map_or(defaults.max_output_bytes, |kb| kb as usize * 1024),
            ..defaults
        };
        let config = HeadConfig {
            sha256: spec.sha256.clone(),
            config: spec.config.clone(),
            assets,
            limits,
            encoder: None,
        };
        let head = host
            .load(&spec.component, config)
            .with_context(|| format!("head {name}"))?;
        let after = spec.after.iter().map(|a| a.get_ref().clone()).collect();
        stages.push(Stage { name, head, after });
    }
    Ok(stages)
}

/// Runs every stage in order; a head whose upstream failed for a text reports that instead.
fn run_stages(stages: &[Stage], items: Vec<Item<'_>>) -> (Vec<PerHead>, Vec<PerHead>) {
    let mut results = vec![Map::new(); items.len()];
    let mut failures = vec![Map::new(); items.len()];
    for stage in stages {
        let mut runnable = Vec::new();
        let mut positions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let missing = stage
                .after
                .iter()
                .find(|dep| !results[i].contains_key(*dep));
            if let Some(dep) = missing {
                failures[i].insert(
                    stage.name.clone(),
                    json!(format!("upstream head {dep} failed")),
                );
                continue;
            }
            let mut item = item.clone();
            item.upstream = stage
                .after
                .iter()
                .map(|dep| (dep.clone(), results[i][dep].to_string()))
                .collect();
            runnable.push(item);
            positions.push(i);
        }
        if runnable.is_empty() {
            continue;
        }
        for (i, outcome) in positions.into_iter().zip(stage.head.run(&runnable)) {
            match outcome {
                Ok(value) => {
                    results[i].insert(stage.name.clone(), value);
                }
                Err(failure) => {
                    failures[i].insert(stage.name.clone(), json!(failure.to_string()));
                }
            }
        }
    }
    (results, failures)
}

fn parse_message(line: &[u8], line_no: usize) -> Result<Message, (&'static str, String)> {
    let text =
        std::str::from_utf8(line).map_err(|e| ("not_utf8", format!("not valid UTF-8 ({e})")))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| ("not_json", format!("not JSON ({e})")))?;
    let Value::Object(mut object) = value else {
        return Err(("not_object", "not a JSON object".into()));
    };
    let text = match object.remove("text") {
        Some(Value::String(t)) if t.trim().is_empty() => {
            return Err(("empty_text", "\"text\" is empty".into()));
        }
        Some(Value::String(t)) => t,
        Some(_) => return Err(("bad_text", "\"text\" must be a string".into())),
        None => return Err(("no_text", "no \"text\" field".into())),
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => line_no.to_string(),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(("bad_id", "\"id\" must be a string or number".into())),
    };
    let meta = match object.remove("meta") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(("bad_meta", "\"meta\" must be an object".into())),
    };
    Ok(Message { id, text, meta })
}

/// Where compiled components are cached: `$HEADSTREAM_CACHE`, else `~/.cache/headstream`.
fn component_cache() -> PathBuf {
    std::env::var_os("HEADSTREAM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/headstream")))
        .unwrap_or_else(|| PathBuf::from(".headstream-cache"))
        .join("components")
}
