//! The runner: one encoder pass per batch of messages, every head of a pipeline over it (in
//! dependency order, with canaries and shadows), its routes, and the typed records that go back
//! out. It knows nothing of NATS: `headstream run` drives it over JSONL, and the
//! `headstream-host` crate over the bus.
//!
//! [`Runner`] holds a pipeline's loaded heads; [`Runner::process`] encodes a batch of
//! [`Message`]s once and returns one [`ResultRecord`] per message. [`parse_message`] turns raw
//! bytes into a [`Message`] or an [`InputError`], which [`ErrorRecord::new`] turns into the
//! record for the pipeline's error subject (with the original payload). [`CoBatcher`] lets
//! several runners share one encoder thread.
#![deny(missing_docs)]

pub mod cobatch;
pub mod metrics;
mod routes;

pub use cobatch::CoBatcher;
pub use headstream_message::{
    ErrorReason, ErrorRecord, InputError, InputLimits, Message, ResultRecord, RouteMatch,
    ShadowRecord, ShadowSide, parse_message, parse_message_within,
};
pub use metrics::Metrics;
use routes::Routes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use headstream_encoder::{EncodedText, Encoder, LayerSet, States};
use headstream_package::{Package, Registry};
use headstream_pipeline::Pipeline;
use headstream_plugin_host::{
    Asset, EmbedLimits, Head, HeadConfig, HostConfig, Item, Limits, LogLimits, LogSink,
    PluginError, PluginHost, TokenStates,
};
use serde_json::{Map, Value};

/// A loaded head with its pipeline name and the heads it consumes.
pub struct Stage {
    name: String,
    head: Head,
    /// `name@version` as results report it: the package's for packaged heads, else the
    /// component's own description.
    id: String,
    /// The labels the head answers with: its package's, else its description's.
    labels: Vec<String>,
    after: Vec<String>,
    canary: Option<Candidate>,
    shadow: Option<Candidate>,
}

impl Stage {
    /// The stage's live head, then its canary's and shadow's.
    fn heads(&self) -> impl Iterator<Item = &Head> {
        std::iter::once(&self.head)
            .chain(self.canary.iter().map(|c| &c.head))
            .chain(self.shadow.iter().map(|c| &c.head))
    }
}

/// Another version of a stage's head: a canary (serving `percent` of messages) or a shadow
/// (run on every message, its outputs published to `subject`).
struct Candidate {
    head: Head,
    id: String,
    labels: Vec<String>,
    percent: f64,
    subject: String,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name)
            .field("head", &self.head.id())
            .finish()
    }
}

/// Values keyed by head name.
type PerHead<T> = BTreeMap<String, T>;

/// Why a runner could not load a pipeline or process a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// A head's asset file could not be read.
    #[error("head {head}: cannot read asset {asset} ({}): {source}", path.display())]
    Asset {
        /// The head's name in the pipeline.
        head: String,
        /// The asset's name.
        asset: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A head could not be loaded.
    #[error("head {head}: {source}")]
    Head {
        /// The head's name in the pipeline.
        head: String,
        /// Why.
        #[source]
        source: headstream_plugin_host::PluginError,
    },
    /// The plugin host could not be created.
    #[error(transparent)]
    Host(headstream_plugin_host::PluginError),
    /// Encoding a batch failed.
    #[error(transparent)]
    Encoder(#[from] headstream_encoder::EncoderError),
    /// A head asks for layers' states the encoder cannot give.
    #[error("head {head}: {source}")]
    Layers {
        /// The head's name in the pipeline.
        head: String,
        /// Why.
        #[source]
        source: headstream_encoder::EncoderError,
    },
    /// The shared encoder thread failed or stopped.
    #[error(transparent)]
    CoBatch(#[from] cobatch::CoBatchError),
    /// A route condition does not compile.
    #[error("route condition: {0}")]
    Route(headstream_pipeline::ConditionError),
    /// A `plugin = "name@version"` reference is malformed.
    #[error("plugin reference: {0}")]
    Reference(headstream_pipeline::ReferenceError),
    /// [`Runner::process_encoded`] was given another number of encodings than messages.
    #[error("{messages} messages but {encoded} encodings")]
    Encoded {
        /// Messages given.
        messages: usize,
        /// Encodings given.
        encoded: usize,
    },
}

/// Loads every head of `pipeline` into `host`, in run order; `plugin = "name@req"` references
/// resolve against `registry`.
fn load_stages(
    host: &PluginHost,
    pipeline: &Pipeline,
    registry: &Registry,
    logs: Option<&LogSinks>,
) -> Result<Vec<Stage>, RunnerError> {
    let mut stages = Vec::new();
    for spec in pipeline.heads() {
        let name = spec.name.get_ref().clone();
        let sink = |version: Option<&str>| logs.map(|make| make(&name, version));
        let mut assets = Vec::new();
        for (asset, path) in &spec.assets {
            let data = std::fs::read(path).map_err(|source| RunnerError::Asset {
                head: name.clone(),
                asset: asset.clone(),
                path: path.clone(),
                source,
            })?;
            assets.push(Asset {
                name: asset.clone(),
                data,
            });
        }
        let limits = head_limits(&spec.limits);
        let resolved = match &spec.plugin {
            Some(reference) => Some(resolve(registry, &name, reference.get_ref())?.dir),
            None => spec.package.clone(),
        };
        let candidate = |reference: &str, percent: f64, subject: &str| {
            let package = resolve(registry, &name, reference)?;
            load_package(host, &package.dir, None, &spec.config, limits, &sink)
                .map(|(head, id, labels)| Candidate {
                    head,
                    id,
                    labels,
                    percent,
                    subject: subject.to_owned(),
                })
                .map_err(|source| RunnerError::Head {
                    head: format!("{name} ({reference})"),
                    source,
                })
        };
        let canary = spec
            .canary
            .as_ref()
            .map(|c| candidate(c.plugin.get_ref(), *c.percent.get_ref(), ""))
            .transpose()?;
        let shadow = spec
            .shadow
            .as_ref()
            .map(|s| candidate(s.plugin.get_ref(), 0.0, s.subject.get_ref()))
            .transpose()?;
        let config = HeadConfig {
            sha256: spec.sha256.clone(),
            config: spec.config.clone(),
            assets,
            limits,
            // A component names its version when it describes itself.
            log_sink: sink(None),
            ..HeadConfig::default()
        };
        // `Pipeline::load` guarantees exactly one source, and that a builtin exists.
        let builtin = spec
            .builtin
            .as_ref()
            .and_then(|b| headstream_components::get(b.get_ref()));
        let with_id = |head: Head| {
            let id = head.id();
            let labels = head.description().labels.clone();
            (head, id, labels)
        };
        let loaded = match (&resolved, builtin, &spec.component) {
            (Some(dir), _, _) => load_package(
                host,
                dir,
                spec.sha256.as_deref(),
                &spec.config,
                limits,
                &sink,
            ),
            (None, Some(builtin), _) => host
                .load_bytes(builtin.origin().as_ref(), builtin.bytes, config)
                .map(with_id),
            (None, None, component) => host
                .load(
                    component.as_deref().unwrap_or(std::path::Path::new("")),
                    config,
                )
                .map(with_id),
        };
        let (head, id, labels) = loaded.map_err(|source| RunnerError::Head {
            head: name.clone(),
            source,
        })?;
        let after = spec.after.iter().map(|a| a.get_ref().clone()).collect();
        stages.push(Stage {
            name,
            head,
            id,
            labels,
            after,
            canary,
            shadow,
        });
    }
    Ok(stages)
}

/// A head's limits: the pipeline's `[heads.limits]` over the plugin host's defaults.
fn head_limits(set: &headstream_pipeline::Limits) -> Limits {
    let d = Limits::default();
    let or = |v: Option<u32>, default: usize| v.map_or(default, |v| v as usize);
    Limits {
        memory_bytes: set.memory_mb.map(|mb| mb as usize * (1 << 20)),
        deadline: set
            .deadline_ms
            .map_or(d.deadline, std::time::Duration::from_millis),
        max_output_bytes: set
            .max_output_kb
            .map_or(d.max_output_bytes, |kb| kb as usize * 1024),
        setup_deadline: set
            .setup_deadline_ms
            .map_or(d.setup_deadline, std::time::Duration::from_millis),
        embed: EmbedLimits {
            texts_per_call: or(set.embed_texts_per_call, d.embed.texts_per_call),
            tokens_per_call: or(set.embed_tokens_per_call, d.embed.tokens_per_call),
            texts: or(set.embed_texts, d.embed.texts),
            tokens: or(set.embed_tokens, d.embed.tokens),
            text_bytes: or(set.embed_text_bytes, d.embed.text_bytes),
        },
        log: LogLimits {
            line_bytes: or(set.log_line_bytes, d.log.line_bytes),
            burst: set.log_burst.unwrap_or(d.log.burst),
            lines_per_second: set.log_lines_per_s.unwrap_or(d.log.lines_per_second),
        },
        ..d
    }
}

/// What every registry reference of `pipeline` (heads, canaries, shadows) resolves to now, as
/// `name@version sha256`: a registry change that leaves this unchanged does not concern it.
pub fn resolved_versions(
    pipeline: &Pipeline,
    registry: &Registry,
) -> Result<Vec<String>, RunnerError> {
    let mut resolved = Vec::new();
    for spec in pipeline.heads() {
        let name = spec.name.get_ref();
        for reference in spec.references() {
            let m = resolve(registry, name, reference.get_ref())?.manifest;
            resolved.push(format!(
                "{name}={}@{} {}",
                m.name, m.version, m.component.sha256
            ));
        }
    }
    Ok(resolved)
}

/// The process's plugin host, bound to `encoder` (fingerprint checks, the `embed` import),
/// caching compiled components in `cache_dir`, with room for `max_instances` live head
/// instances. One per process: every runner and every package check shares its engine.
pub fn plugin_host(
    encoder: &Arc<Encoder>,
    cache_dir: Option<PathBuf>,
    max_instances: u32,
) -> Result<PluginHost, RunnerError> {
    PluginHost::new(HostConfig {
        cache_dir,
        encoder: Some(encoder.fingerprint().clone()),
        embedder: Some(encoder.clone()),
        max_instances,
        ..HostConfig::default()
    })
    .map_err(RunnerError::Host)
}

/// Loads `package` the way a pipeline would on this host — digests, encoder fingerprint,
/// compilation, instantiation and `configure` (within the default budgets) — and drops it: the
/// check a package passes before any pipeline may use it.
pub fn check_package(package: &Package, plugins: &PluginHost) -> Result<(), RunnerError> {
    let name = package.manifest.name.clone();
    plugins
        .load_package(package, &Value::Object(Map::new()), Limits::default())
        .map(drop)
        .map_err(|source| RunnerError::Head { head: name, source })
}

/// Resolves a `plugin = "name@requirement"` reference (a semver requirement or a
/// `sha256:` digest pin) against the registry.
fn resolve(registry: &Registry, head: &str, reference: &str) -> Result<Package, RunnerError> {
    let (plugin, req) =
        headstream_pipeline::parse_reference(reference).map_err(RunnerError::Reference)?;
    let package = registry
        .resolve_with(&plugin, &req.to_string(), |version, manifest| {
            req.matches(version, &manifest.component.sha256)
        })
        .map_err(|e| RunnerError::Head {
            head: head.to_owned(),
            source: PluginError::Package(e),
        })?;
    tracing::debug!(head, reference, package = %package.dir.display(), "resolved");
    Ok(package)
}

/// Loads a package head: verified package, the pipeline's config over the manifest's, and the
/// pipeline's `sha256` pin (if any) checked against the manifest's component digest.
fn load_package(
    host: &PluginHost,
    dir: &std::path::Path,
    pin: Option<&str>,
    config: &Value,
    limits: Limits,
    sink: &StageSink<'_>,
) -> Result<(Head, String, Vec<String>), PluginError> {
    let package = Package::load(dir)?;
    if let Some(pin) = pin.filter(|p| !p.eq_ignore_ascii_case(&package.manifest.component.sha256)) {
        return Err(PluginError::DigestMismatch {
            path: package.component_path(),
            expected: pin.to_owned(),
            actual: package.manifest.component.sha256.clone(),
        });
    }
    let id = format!("{}@{}", package.manifest.name, package.manifest.version);
    let head = host.load_package_with(&package, config, limits, sink(Some(&id)))?;
    let labels = match package.manifest.labels.is_empty() {
        true => head.description().labels.clone(),
        false => package.manifest.labels.clone(),
    };
    Ok((head, id, labels))
}

/// Whether message `id` goes to `head`'s canary serving `percent` of messages: a stable hash
/// (FNV-1a) of the head and message id, so every host and every redelivery agree.
fn takes_canary(head: &str, id: &str, percent: f64) -> bool {
    let hash = fnv1a(head.bytes().chain([0]).chain(id.bytes()));
    ((hash % 10_000) as f64) < percent * 100.0
}

/// 64-bit FNV-1a: a stable hash (same on every host and release), not a cryptographic one.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A result's idempotency key: pipeline, message id, and a digest of the head versions that
/// produced it. A redelivered message's result carries the same key (consumers drop repeats);
/// a result from other head versions does not.
fn idempotency_key(pipeline: &str, id: &str, heads_digest: u64) -> String {
    format!("{pipeline}/{id}/{heads_digest:016x}")
}

/// The digest of a `heads` map (head → `name@version`) that idempotency keys carry: of its
/// JSON, so keys stay the same across releases.
fn heads_digest(heads: &PerHead<String>) -> u64 {
    fnv1a(serde_json::to_string(heads).unwrap_or_default().bytes())
}

/// Whether a shadow output gives the same answer as the live one: the same `label` when both
/// have one, else the same JSON.
fn agrees(live: &Value, shadow: &Value) -> bool {
    match (live.get("label"), shadow.get("label")) {
        (Some(a), Some(b)) => a == b,
        _ => live == shadow,
    }
}

/// What [`run_stages`] produced for a batch, per item.
struct StageOutputs {
    /// When each stage ran over the batch: `(stage, start, end)`.
    timings: Vec<(String, SystemTime, SystemTime)>,
    results: Vec<PerHead<Value>>,
    failures: Vec<PerHead<String>>,
    /// Heads served by a canary: head name → `name@version`.
    canaried: Vec<PerHead<String>>,
    /// Shadow records, with their subjects.
    shadows: Vec<(String, ShadowRecord)>,
}

/// Runs every stage in order; a head whose upstream failed for a text reports that instead.
fn run_stages(pipeline: &str, stages: &[Stage], items: Vec<Item<'_>>) -> StageOutputs {
    let mut out = StageOutputs {
        timings: Vec::with_capacity(stages.len()),
        results: vec![PerHead::new(); items.len()],
        failures: vec![PerHead::new(); items.len()],
        canaried: vec![PerHead::new(); items.len()],
        shadows: Vec::new(),
    };
    for stage in stages {
        let mut runnable = Vec::new();
        let mut positions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let missing = stage
                .after
                .iter()
                .find(|dep| !out.results[i].contains_key(*dep));
            if let Some(dep) = missing {
                out.failures[i].insert(stage.name.clone(), format!("upstream head {dep} failed"));
                continue;
            }
            let mut item = item.clone();
            item.upstream = stage
                .after
                .iter()
                .map(|dep| (dep.clone(), out.results[i][dep].to_string()))
                .collect();
            runnable.push(item);
            positions.push(i);
        }
        if runnable.is_empty() {
            continue;
        }
        let started = SystemTime::now();
        let outcomes = run_split(stage, &runnable);
        out.timings
            .push((stage.name.clone(), started, SystemTime::now()));
        if let Some(shadow) = &stage.shadow {
            for ((item, live), shadowed) in runnable
                .iter()
                .zip(&outcomes)
                .zip(shadow.head.run(&runnable))
            {
                let side = |id: &str, outcome: &Result<Value, _>| ShadowSide {
                    error: outcome.as_ref().err().map(|e| format!("{e}")),
                    output: outcome.as_ref().ok().cloned(),
                    version: id.to_owned(),
                };
                let live_id = live.1.unwrap_or(&stage.id);
                let agree = matches!((&live.0, &shadowed), (Ok(a), Ok(b)) if agrees(a, b));
                out.shadows.push((
                    shadow.subject.clone(),
                    ShadowRecord {
                        agree,
                        head: stage.name.clone(),
                        id: item.id.to_owned(),
                        live: side(live_id, &live.0),
                        pipeline: pipeline.to_owned(),
                        shadow: side(&shadow.id, &shadowed),
                    },
                ));
            }
        }
        for (i, (outcome, canary)) in positions.into_iter().zip(outcomes) {
            if let Some(id) = canary {
                out.canaried[i].insert(stage.name.clone(), id.to_owned());
            }
            match outcome {
                Ok(value) => {
                    out.results[i].insert(stage.name.clone(), value);
                }
                Err(failure) => {
                    out.failures[i].insert(stage.name.clone(), failure.to_string());
                }
            }
        }
    }
    out
}

/// Runs a stage's head over `items`, sending its canary share to the canary; each outcome
/// comes with the canary's id when the canary produced it.
fn run_split<'s>(
    stage: &'s Stage,
    items: &[Item<'_>],
) -> Vec<(
    Result<Value, headstream_plugin_host::Failure>,
    Option<&'s str>,
)> {
    let Some(canary) = stage.canary.as_ref().filter(|c| c.percent > 0.0) else {
        return stage
            .head
            .run(items)
            .into_iter()
            .map(|o| (o, None))
            .collect();
    };
    let to_canary: Vec<bool> = items
        .iter()
        .map(|item| takes_canary(&stage.name, item.id, canary.percent))
        .collect();
    let pick = |want: bool| -> Vec<Item<'_>> {
        items
            .iter()
            .zip(&to_canary)
            .filter(|(_, c)| **c == want)
            .map(|(item, _)| item.clone())
            .collect()
    };
    let (live_items, canary_items) = (pick(false), pick(true));
    let mut live = if live_items.is_empty() {
        Vec::new()
    } else {
        stage.head.run(&live_items)
    }
    .into_iter();
    let mut canaried = if canary_items.is_empty() {
        Vec::new()
    } else {
        canary.head.run(&canary_items)
    }
    .into_iter();
    to_canary
        .iter()
        .filter_map(|&c| {
            if c {
                canaried.next().map(|o| (o, Some(canary.id.as_str())))
            } else {
                live.next().map(|o| (o, None))
            }
        })
        .collect()
}

/// The plugin-host view of one encoded text: embedding, token states with their spans and the
/// layers' states, when the encoder produced them.
pub fn item<'a>(
    id: &'a str,
    text: &'a str,
    encoded: &'a EncodedText,
    hidden_size: usize,
) -> Item<'a> {
    Item {
        id,
        text,
        embedding: &encoded.embedding,
        token_states: encoded.token_states.as_deref().map(|states| TokenStates {
            ids: &encoded.input_ids,
            offsets: &encoded.offsets,
            states,
            hidden_size,
        }),
        upstream: Vec::new(),
        layers: &encoded.layers,
    }
}

/// What `head` (stage `stage`) reads of the encoder besides embeddings, checked against what
/// `encoder` has: a layer it lacks fails the pipeline's load, naming the head.
fn head_states(stage: &str, head: &Head, encoder: &Encoder) -> Result<States, RunnerError> {
    let inputs = head.inputs();
    let named = |source| RunnerError::Layers {
        head: stage.to_owned(),
        source,
    };
    let states = States {
        tokens: head.wants_token_states(),
        pooled: LayerSet::of(inputs.pooled_layers.iter().copied()).map_err(named)?,
        token_layers: LayerSet::of(inputs.token_layers.iter().copied()).map_err(named)?,
    };
    encoder.check(states).map_err(named)?;
    Ok(states)
}

/// A pipeline ready to process batches: its heads loaded, sharing one encoder.
pub struct Runner {
    name: String,
    limits: InputLimits,
    routes: Routes,
    metrics: Option<Arc<Metrics>>,
    batcher: Option<CoBatcher>,
    stages: Vec<Stage>,
    encoder: Arc<Encoder>,
    /// What the heads read besides embeddings: every head's token states and layers.
    states: States,
    heads_ids: PerHead<String>,
    /// [`heads_digest`] of `heads_ids`: the key digest of every result no canary touched.
    heads_digest: u64,
    fingerprint: String,
    sink: Option<Arc<EmbeddingSink>>,
    result_sink: Option<Arc<ResultSink>>,
}

/// Makes a head's log sink from its stage name in the pipeline and, when known before it loads
/// (packages), its `name@version`; otherwise the sink takes the version the head describes.
pub type LogSinks = dyn Fn(&str, Option<&str>) -> Arc<dyn LogSink> + Send + Sync;

/// One stage's sink maker: from the head's `name@version` when known before it loads.
type StageSink<'a> = dyn Fn(Option<&str>) -> Option<Arc<dyn LogSink>> + 'a;

/// Hears every message's text and encoding once it is encoded (the host's embedding store).
pub type EmbeddingSink = dyn Fn(&str, &EncodedText) + Send + Sync;

/// Hears every served message's result record and text (the host's prediction records).
pub type ResultSink = dyn Fn(&ResultRecord, &str) + Send + Sync;

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("name", &self.name)
            .field("stages", &self.stages)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Loads `pipeline`'s heads into `plugins` (the process's plugin host, bound to `encoder`:
    /// see [`plugin_host`]), resolving registry references against `registry`.
    pub fn new(
        pipeline: &Pipeline,
        plugins: &PluginHost,
        encoder: Arc<Encoder>,
        registry: &Registry,
    ) -> Result<Self, RunnerError> {
        Self::with_logs(pipeline, plugins, encoder, registry, None)
    }

    /// [`Runner::new`], every head's log lines (canaries' and shadows' too) also going to a
    /// sink from `logs(stage, version)` from its first `configure` on.
    pub fn with_logs(
        pipeline: &Pipeline,
        plugins: &PluginHost,
        encoder: Arc<Encoder>,
        registry: &Registry,
        logs: Option<&LogSinks>,
    ) -> Result<Self, RunnerError> {
        let stages = load_stages(plugins, pipeline, registry, logs)?;
        let states = stages
            .iter()
            .flat_map(|s| s.heads().map(|h| head_states(&s.name, h, &encoder)))
            .try_fold(States::default(), |all, one| one.map(|one| all.union(one)))?;
        let heads_ids = stages
            .iter()
            .map(|s| (s.name.clone(), s.id.clone()))
            .collect();
        let fingerprint = encoder.fingerprint().to_string();
        let routes = Routes::compile(pipeline)?;
        Ok(Self {
            name: pipeline.name.get_ref().clone(),
            limits: InputLimits {
                max_message_bytes: pipeline.input.max_message_bytes,
                max_text_bytes: pipeline.input.max_text_bytes,
            },
            routes,
            metrics: None,
            batcher: None,
            stages,
            encoder,
            states,
            heads_digest: heads_digest(&heads_ids),
            heads_ids,
            fingerprint,
            sink: None,
            result_sink: None,
        })
    }

    /// Calls `sink` with every message's text and encoding once it is encoded.
    pub fn with_embedding_sink(mut self, sink: Arc<EmbeddingSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Hands every result [`Runner::process_batch`] makes, with its text, to `sink` (not those
    /// of [`Runner::process_encoded`]: replays are not served results).
    pub fn with_result_sink(mut self, sink: Arc<ResultSink>) -> Self {
        self.result_sink = Some(sink);
        self
    }

    /// The labels pipeline head `head` answers with (its live version's and its canary's: their
    /// packages', else as the heads describe them); `None` when the pipeline has no such head.
    pub fn head_labels(&self, head: &str) -> Option<Vec<String>> {
        let stage = self.stages.iter().find(|s| s.name == head)?;
        let mut labels: Vec<String> = std::iter::once(&stage.labels)
            .chain(stage.canary.iter().map(|c| &c.labels))
            .flatten()
            .cloned()
            .collect();
        labels.sort();
        labels.dedup();
        Some(labels)
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the pipeline accepts from one message.
    pub fn input_limits(&self) -> InputLimits {
        self.limits
    }

    /// Records stage latencies and head failures in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Encodes through `batcher`, sharing encoder passes with the other pipelines using it.
    pub fn with_co_batcher(mut self, batcher: CoBatcher) -> Self {
        self.batcher = Some(batcher);
        self
    }

    /// The metrics this runner records into, if any.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_deref()
    }

    /// Encodes the messages once, runs every head, and returns one result record per message.
    pub fn process(&self, messages: &[Message]) -> Result<Vec<ResultRecord>, RunnerError> {
        self.process_batch(messages).map(|p| p.records)
    }

    /// Like [`Runner::process`], also returning the shadow heads' records.
    pub fn process_batch(&self, messages: &[Message]) -> Result<Processed, RunnerError> {
        if messages.is_empty() {
            return Ok(Processed::default());
        }
        let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
        let started = std::time::Instant::now();
        let encode_start = SystemTime::now();
        let encoded = match &self.batcher {
            Some(batcher) => {
                batcher.encode(texts.iter().map(|t| (*t).to_owned()).collect(), self.states)?
            }
            None => self.encoder.encode_with(&texts, self.states)?,
        };
        let encoded_at = std::time::Instant::now();
        if let Some(sink) = &self.sink {
            for (m, e) in messages.iter().zip(&encoded) {
                sink(&m.text, e);
            }
        }
        let encode = (encode_start, encode_start + (encoded_at - started));
        let processed = self.run_heads(messages, &encoded, Some(encode))?;
        if let Some(sink) = &self.result_sink {
            for (record, m) in processed.records.iter().zip(messages) {
                sink(record, &m.text);
            }
        }
        Ok(processed)
    }

    /// What the heads read besides embeddings (token states, layers' states): what
    /// [`Runner::process_encoded`]'s encodings must carry.
    pub fn states(&self) -> States {
        self.states
    }

    /// Whether the heads read the last layer's token states.
    pub fn needs_token_states(&self) -> bool {
        self.states.tokens
    }

    /// Runs every head over messages already encoded (`encoded[i]` is `messages[i]`'s, from
    /// this runner's encoder: `headstream replay` reads them from the embedding store).
    pub fn process_encoded(
        &self,
        messages: &[Message],
        encoded: &[EncodedText],
    ) -> Result<Processed, RunnerError> {
        if messages.len() != encoded.len() {
            return Err(RunnerError::Encoded {
                messages: messages.len(),
                encoded: encoded.len(),
            });
        }
        self.run_heads(messages, encoded, None)
    }

    fn run_heads(
        &self,
        messages: &[Message],
        encoded: &[EncodedText],
        encode: Option<(SystemTime, SystemTime)>,
    ) -> Result<Processed, RunnerError> {
        let encode_time = encode
            .and_then(|(a, b)| b.duration_since(a).ok())
            .unwrap_or(Duration::ZERO);
        let encoded_at = std::time::Instant::now();
        let hidden = self.encoder.hidden_size();
        let items: Vec<Item<'_>> = messages
            .iter()
            .zip(encoded)
            .map(|(m, e)| item(&m.id, &m.text, e, hidden))
            .collect();
        let outputs = run_stages(&self.name, &self.stages, items);
        if let Some(m) = &self.metrics {
            self.record(m, &outputs, encode_time, encoded_at.elapsed());
        }
        let records = messages
            .iter()
            .zip(outputs.results.into_iter().zip(outputs.failures))
            .zip(outputs.canaried)
            .zip(encoded)
            .map(|(((m, (results, errors)), canaried), e)| {
                let mut heads = self.heads_ids.clone();
                let digest = if canaried.is_empty() {
                    self.heads_digest
                } else {
                    heads.extend(canaried);
                    heads_digest(&heads)
                };
                let mut record = ResultRecord {
                    encoder: self.fingerprint.clone(),
                    errors,
                    heads,
                    host: None,
                    id: m.id.clone(),
                    key: idempotency_key(&self.name, &m.id, digest),
                    meta: m.meta.clone(),
                    pipeline: self.name.clone(),
                    redelivered: None,
                    results,
                    routes: Vec::new(),
                    truncated: e.truncated,
                    trace_id: None,
                };
                record.routes = self.routes.matching(&record, &m.text);
                record
            })
            .collect();
        Ok(Processed {
            records,
            shadows: outputs.shadows,
            timings: Timings {
                encode,
                heads: outputs
                    .timings
                    .into_iter()
                    .map(|(stage, start, end)| {
                        let id = self.heads_ids.get(&stage).cloned().unwrap_or_default();
                        (stage, id, start, end)
                    })
                    .collect(),
            },
        })
    }

    /// Counts a processed batch into `m`: stage times, head failures, dropped log lines and
    /// shadow agreement.
    fn record(&self, m: &Metrics, outputs: &StageOutputs, encode: Duration, heads: Duration) {
        m.observe(&self.name, "encode", encode);
        m.observe(&self.name, "heads", heads);
        for failed in &outputs.failures {
            for head in failed.keys() {
                m.head_failures.with_label_values(&[&self.name, head]).inc();
            }
        }
        for stage in &self.stages {
            let dropped: u64 = stage.heads().map(Head::take_log_lines_dropped).sum();
            if dropped > 0 {
                m.head_log_dropped
                    .with_label_values(&[&self.name, &stage.name])
                    .inc_by(dropped);
            }
        }
        for canaried in &outputs.canaried {
            for head in canaried.keys() {
                m.canary.with_label_values(&[&self.name, head]).inc();
            }
        }
        for (_, shadow) in &outputs.shadows {
            let outcome = if shadow.agree { "agree" } else { "disagree" };
            m.shadow
                .with_label_values(&[&self.name, &shadow.head, outcome])
                .inc();
        }
    }

    /// The heads this runner serves, `name` → `name@version` (canaries and shadows not
    /// included).
    pub fn head_versions(&self) -> &BTreeMap<String, String> {
        &self.heads_ids
    }
}

/// A processed batch: one result record per message, and the shadow heads' records.
#[derive(Debug, Default)]
pub struct Processed {
    /// Result records, in message order.
    pub records: Vec<ResultRecord>,
    /// Shadow records `(subject, record)`: live and shadow outputs side by side.
    pub shadows: Vec<(String, ShadowRecord)>,
    /// When the batch's stages ran (for traces).
    pub timings: Timings,
}

/// When a batch's stages ran: batch-wide, so every message of the batch shares them.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    /// The encoder's pass (`None` when the encodings came from elsewhere: replay).
    pub encode: Option<(SystemTime, SystemTime)>,
    /// Each head's run over the batch, in run order: `(stage, name@version, start, end)`.
    pub heads: Vec<(String, String, SystemTime, SystemTime)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn idempotency_keys_are_stable_across_releases() {
        // The key a release before typed records gave this result: consumers that drop
        // repeats by key must see the same key from every release.
        let heads = PerHead::from([("flood".to_owned(), "hostile@0.1.0".to_owned())]);
        assert_eq!(
            idempotency_key("hostile", "1", heads_digest(&heads)),
            "hostile/1/62b0feb2a9cf53ee"
        );
        let other = PerHead::from([("flood".to_owned(), "hostile@0.2.0".to_owned())]);
        assert_ne!(heads_digest(&heads), heads_digest(&other));
    }

    #[test]
    fn canary_shares_follow_the_percentage_and_the_id_alone() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("m{i}")).collect();
        let share = |percent| {
            ids.iter()
                .filter(|id| takes_canary("sentiment", id, percent))
                .count()
        };
        assert_eq!(share(0.0), 0);
        assert_eq!(share(100.0), ids.len());
        let ten = share(10.0);
        assert!((800..=1200).contains(&ten), "{ten} of 10000 at 10%");
        // The split is a function of the head and the id alone, the same on every host, every
        // redelivery and every release (pinned: a rolling upgrade must not move messages).
        let canaried: Vec<&str> = ids[..100]
            .iter()
            .map(String::as_str)
            .filter(|id| takes_canary("sentiment", id, 10.0))
            .collect();
        assert_eq!(
            canaried,
            ["m5", "m12", "m22", "m29", "m32", "m41", "m61", "m93", "m98"]
        );
        // ...and a head's split is its own: another head splits the same ids differently.
        let both = ids
            .iter()
            .filter(|id| takes_canary("sentiment", id, 50.0) && takes_canary("topic", id, 50.0))
            .count();
        assert!((2000..=3000).contains(&both), "{both}");
    }

    #[test]
    fn shadows_agree_on_labels_else_on_the_whole_output() {
        assert!(agrees(
            &json!({"label": "a", "score": 0.9}),
            &json!({"label": "a", "score": 0.6})
        ));
        assert!(!agrees(&json!({"label": "a"}), &json!({"label": "b"})));
        assert!(agrees(&json!({"flags": ["x"]}), &json!({"flags": ["x"]})));
        assert!(!agrees(&json!({"flags": ["x"]}), &json!({"flags": []})));
    }
}
