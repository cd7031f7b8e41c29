//! A loaded head: its instance, limits, output checks and circuit breaker.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use headstream_encoder::Tokenized;

use crate::PluginError;
use crate::bindings::{features, types, v1, v2};
use crate::budget::{EmbedLimits, LogLimits, Refusal};
use crate::engine::{EPOCH_TICK, HeadShared, State};
use crate::runtime::Runtime;

/// Serves the `embed` host import (implemented by the runtime over the shared encoder), in two
/// steps so the host can check a head's budget between them without tokenizing twice.
pub trait Embedder: Send + Sync + fmt::Debug {
    /// Tokenizes `texts` as the encoder will run them (truncation included): each text's
    /// token count is what embedding it costs.
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokenized>, String>;

    /// Embeds tokenized texts, one pooled vector per text.
    fn embed(&self, texts: Vec<Tokenized>) -> Result<Vec<Vec<f32>>, String>;
}

impl Embedder for headstream_encoder::Encoder {
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokenized>, String> {
        headstream_encoder::Encoder::tokenize(self, texts).map_err(|e| e.to_string())
    }

    fn embed(&self, texts: Vec<Tokenized>) -> Result<Vec<Vec<f32>>, String> {
        let encoded = self
            .encode_tokenized(texts, false)
            .map_err(|e| e.to_string())?;
        Ok(encoded.into_iter().map(|e| e.embedding).collect())
    }
}

/// Per-head resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the head's linear memory; `None`: its runtime's default
    /// ([`crate::Runtime::default_memory_bytes`]: 64 MiB for Rust, 128 MiB for Python and JS).
    pub memory_bytes: Option<usize>,
    /// CPU deadline for one `run` call.
    pub deadline: Duration,
    /// CPU deadline for instantiation, `describe` and `configure` together.
    pub setup_deadline: Duration,
    /// Largest output for one text, in bytes of JSON.
    pub max_output_bytes: usize,
    /// Failed batches in a row after which the head is switched off.
    pub max_consecutive_failures: u32,
    /// What the head may ask of the encoder through `embed` while it configures.
    pub embed: EmbedLimits,
    /// How much the head may write to the host's log.
    pub log: LogLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: None,
            deadline: Duration::from_millis(100),
            setup_deadline: Duration::from_secs(5),
            max_output_bytes: 64 << 10,
            max_consecutive_failures: 5,
            embed: EmbedLimits::default(),
            log: LogLimits::default(),
        }
    }
}

/// A named asset handed to the head's `configure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// The name the head looks it up by.
    pub name: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// How a pipeline sets up one head.
#[derive(Debug, Clone, Default)]
pub struct HeadConfig {
    /// Required sha256 of the component file, if the pipeline pins one.
    pub sha256: Option<String>,
    /// Per-pipeline settings passed to `configure` (a JSON object).
    pub config: Value,
    /// Assets passed to `configure`.
    pub assets: Vec<Asset>,
    /// Resource limits.
    pub limits: Limits,
    /// Fingerprint of the encoder the head's assets were trained on (from its package
    /// manifest), checked like the one the head declares itself.
    pub encoder: Option<String>,
    /// Other encoders the head was evaluated on and approved for (the package's
    /// `approved_encoders`): a host running one of them accepts the head although `encoder`
    /// (and the head's own declaration) name another.
    pub approved_encoders: Vec<String>,
    /// Where the head's admitted log lines also go (the bus, say), from its first `configure`.
    pub log_sink: Option<Arc<dyn crate::LogSink>>,
}

/// What a task head does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskKind {
    /// One label per text.
    Classify,
    /// Spans of the text.
    Tokens,
    /// Anything else.
    Other,
}

/// A head's self-description.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// Short name.
    pub name: String,
    /// Semver version.
    pub version: String,
    /// Task kind.
    pub kind: TaskKind,
    /// Labels the head can emit.
    pub labels: Vec<String>,
    /// Whether the head wants token states.
    pub needs_token_states: bool,
    /// Encoder fingerprint the head was built for, if any.
    pub encoder: Option<String>,
    /// JSON Schema of JSON outputs, or empty.
    pub output_schema: String,
}

/// Token states of one text, borrowed from the encoder's output.
#[derive(Debug, Clone, Copy)]
pub struct TokenStates<'a> {
    /// Token ids.
    pub ids: &'a [u32],
    /// Byte span of each token in the text.
    pub offsets: &'a [(usize, usize)],
    /// Row-major `ids.len() × hidden_size` states.
    pub states: &'a [f32],
    /// Width of one state.
    pub hidden_size: usize,
}

/// One encoded text for [`Head::run`].
#[derive(Debug, Clone)]
pub struct Item<'a> {
    /// Message id.
    pub id: &'a str,
    /// Original text.
    pub text: &'a str,
    /// Sentence embedding.
    pub embedding: &'a [f32],
    /// Token states (passed only to heads that need them).
    pub token_states: Option<TokenStates<'a>>,
    /// Upstream heads' outputs: (head name, JSON output).
    pub upstream: Vec<(String, String)>,
    /// States of the encoder's layers, at least those the head's [`Inputs`] ask for.
    pub layers: &'a [headstream_encoder::LayerOutput],
}

/// The encoder's layers a head reads besides the embedding (contract 0.2.0 `features.inputs`;
/// a 0.1.0 head asks for none), as its `configure` answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Layers whose mean-pooled states the head gets, in its order.
    pub pooled_layers: Vec<u32>,
    /// Layers whose per-token states the head gets, in its order.
    pub token_layers: Vec<u32>,
}

impl Inputs {
    /// Whether the head asks for no layer at all.
    pub fn is_empty(&self) -> bool {
        self.pooled_layers.is_empty() && self.token_layers.is_empty()
    }
}

/// The most layers of per-token states one head may ask for: each costs the host a copy of
/// `tokens × hidden_size` floats per text into the head's memory.
pub const MAX_TOKEN_LAYERS: usize = 4;

/// The most pooled layers one head may ask for (more than any encoder we serve has).
pub const MAX_POOLED_LAYERS: usize = 64;

/// The contract a component implements, ready to instantiate.
pub(crate) enum Contract {
    /// `headstream:plugin@0.1.0`.
    V1(v1::TaskHeadPre<State>),
    /// `headstream:plugin@0.2.0`.
    V2(v2::TaskHeadPre<State>),
}

impl Contract {
    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Contract::V1(pre) => pre.engine(),
            Contract::V2(pre) => pre.engine(),
        }
    }
}

/// An instance's exports, by contract version: each call in the newest contract's terms.
enum Bindings {
    V1(v1::TaskHead),
    V2(v2::TaskHead),
}

impl Bindings {
    fn describe(&self, store: &mut Store<State>) -> wasmtime::Result<types::Description> {
        match self {
            Bindings::V1(b) => b.headstream_plugin0_1_0_head().call_describe(store),
            Bindings::V2(b) => b.headstream_plugin0_2_0_head().call_describe(store),
        }
    }

    /// `configure`; a 0.1.0 head asks for no layers.
    fn configure(
        &self,
        store: &mut Store<State>,
        config: &str,
        assets: &[types::Asset],
    ) -> wasmtime::Result<Result<Inputs, types::ConfigError>> {
        Ok(match self {
            Bindings::V1(b) => b
                .headstream_plugin0_1_0_head()
                .call_configure(store, config, assets)?
                .map(|()| Inputs::default()),
            Bindings::V2(b) => b
                .headstream_plugin0_2_0_head()
                .call_configure(store, config, assets)?
                .map(|i| Inputs {
                    pooled_layers: i.pooled_layers,
                    token_layers: i.token_layers,
                }),
        })
    }

    /// `run`; a 0.1.0 head gets no layers (it asked for none).
    fn run(
        &self,
        store: &mut Store<State>,
        batch: &[types::Item],
        layers: &[features::LayerStates],
    ) -> wasmtime::Result<Vec<Result<types::Output, types::HeadError>>> {
        match self {
            Bindings::V1(b) => b.headstream_plugin0_1_0_head().call_run(store, batch),
            Bindings::V2(b) => b
                .headstream_plugin0_2_0_head()
                .call_run(store, batch, layers),
        }
    }
}

/// Why a head produced no result for a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The call ran past its CPU deadline.
    Timeout,
    /// The head hit its memory cap.
    MemoryLimit,
    /// The head overflowed its stack (e.g. unbounded recursion).
    StackOverflow,
    /// The head trapped (a panic, an `unreachable`, an out-of-bounds access).
    Trap,
    /// The head returned something that breaks the contract (wrong count, bad JSON, bad span).
    MalformedOutput,
    /// The head's output for one text is over the size limit.
    OutputTooLarge,
    /// The head rejected the input.
    InvalidInput,
    /// The head reported an error for this text.
    HeadError,
    /// The head rejected its configuration.
    Config,
    /// The head is switched off after repeated failures.
    Disabled,
}

impl FailureKind {
    /// Stable snake_case name for error records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::Trap => "trap",
            FailureKind::MalformedOutput => "malformed_output",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::InvalidInput => "invalid_input",
            FailureKind::HeadError => "head_error",
            FailureKind::Config => "config",
            FailureKind::Disabled => "disabled",
        }
    }
}

/// A head's failure on one text (or on a whole batch, repeated per text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Specifics, for people.
    pub message: String,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Memory cap that remembers when it refused growth, so the failure can be named, and the
/// largest linear memory it granted.
pub(crate) struct Limiter {
    inner: StoreLimits,
    pub(crate) memory_denied: bool,
    pub(crate) memory_peak: usize,
}

impl Limiter {
    pub(crate) fn new(memory_bytes: usize) -> Self {
        let inner = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(32)
            .tables(64)
            .memories(8)
            .table_elements(100_000)
            .build();
        Self {
            inner,
            memory_denied: false,
            memory_peak: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_denied |= !ok;
        if ok {
            self.memory_peak = self.memory_peak.max(desired);
        }
        Ok(ok)
    }
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// A live instance: its store (with the head's configured state) and bindings.
struct Instance {
    store: Store<State>,
    bindings: Bindings,
    stderr: MemoryOutputPipe,
}

/// A loaded, configured head. Safe to share across threads; calls are serialised per head.
pub struct Head {
    path: PathBuf,
    digest: String,
    runtime: Runtime,
    description: Description,
    pre: Contract,
    inputs: Inputs,
    config_json: String,
    config: HeadConfig,
    embedder: Option<Arc<dyn Embedder>>,
    shared: Arc<HeadShared>,
    instance: Mutex<Option<Instance>>,
    consecutive_failures: AtomicU32,
    disabled: AtomicBool,
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Head")
            .field("path", &self.path)
            .field("description", &self.description)
            .field("disabled", &self.is_disabled())
            .finish_non_exhaustive()
    }
}

fn ticks(deadline: Duration) -> u64 {
    (deadline.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}

impl Head {
    pub(crate) fn start(
        path: &Path,
        pre: Contract,
        digest: String,
        runtime: Runtime,
        config: HeadConfig,
        encoder: Option<&headstream_encoder::Fingerprint>,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Result<Self, PluginError> {
        let file_name = path.display().to_string();
        let setup_err = |head: &str, failure| PluginError::Setup {
            head: head.to_owned(),
            failure,
        };
        let shared = Arc::new(HeadShared::new(&config.limits));
        if let Some(sink) = &config.log_sink {
            let _ = shared.log_sink.set(sink.clone());
        }
        let mut instance = instantiate(
            &pre,
            &file_name,
            &config.limits,
            embedder.clone(),
            shared.clone(),
        )
        .map_err(|f| setup_err(&file_name, f))?;
        instance
            .store
            .set_epoch_deadline(ticks(config.limits.setup_deadline));
        let described = instance.bindings.describe(&mut instance.store);
        let description = described.map_err(|e| setup_err(&file_name, classify(&e, &instance)))?;
        check_description(&description).map_err(|f| setup_err(&file_name, f))?;
        let description = convert_description(description);
        if let Some(running) = encoder {
            for wanted in [&description.encoder, &config.encoder]
                .into_iter()
                .flatten()
            {
                let compatible = std::iter::once(wanted)
                    .chain(&config.approved_encoders)
                    .filter_map(|w| headstream_encoder::Fingerprint::parse(w))
                    .any(|w| w.is_compatible(running));
                if !compatible {
                    return Err(PluginError::EncoderMismatch {
                        head: description.name.clone(),
                        expected: wanted.clone(),
                        actual: running.to_string(),
                    });
                }
            }
        }
        let config_json = config.config.to_string();
        instance.store.data_mut().head = description.name.clone();
        let _ = shared
            .described
            .set(format!("{}@{}", description.name, description.version));
        let mut head = Self {
            path: path.to_owned(),
            digest,
            runtime,
            description,
            pre,
            inputs: Inputs::default(),
            config_json,
            config,
            embedder,
            shared,
            instance: Mutex::new(None),
            consecutive_failures: AtomicU32::new(0),
            disabled: AtomicBool::new(false),
        };
        head.inputs = head
            .configure(&mut instance)
            .map_err(|f| setup_err(&head.description.name, f))?;
        *head.lock() = Some(instance);
        Ok(head)
    }

    /// The head's self-description.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// The encoder's layers the head reads (none for a 0.1.0 head).
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// Whether the head gets the last layer's token states (`item.token-states`): it said so in
    /// its description, or it reads layers' per-token states (which belong to those tokens).
    pub fn wants_token_states(&self) -> bool {
        self.description.needs_token_states || !self.inputs.token_layers.is_empty()
    }

    /// The contract version the component implements (`0.1.0`, `0.2.0`).
    pub fn contract(&self) -> &'static str {
        match self.pre {
            Contract::V1(_) => "0.1.0",
            Contract::V2(_) => "0.2.0",
        }
    }

    /// sha256 of the component file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The language runtime the component carries (Rust heads are [`Runtime::Native`]).
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// `name@version`, as results name the head that produced them.
    pub fn id(&self) -> String {
        format!("{}@{}", self.description.name, self.description.version)
    }

    /// Drops the live instance; the next [`Head::run`] starts and configures a fresh one (what
    /// happens after a trap). For benchmarks and operators who want a clean slate.
    pub fn reset(&self) {
        *self.lock() = None;
    }

    /// Log lines the head wrote over its budget ([`Limits::log`]) that the host dropped since
    /// the last call of this: what a metrics counter adds.
    pub fn take_log_lines_dropped(&self) -> u64 {
        self.shared.log.take_unmetered()
    }

    /// The largest linear memory any instance of the head has reached, in bytes (what its
    /// memory cap must allow).
    pub fn memory_peak(&self) -> usize {
        self.shared.memory_peak.load(Ordering::Relaxed)
    }

    /// A memory-cap failure if `call` was refused memory, even though it returned.
    fn refused_memory(&self, instance: &Instance, call: &str) -> Option<Failure> {
        instance.store.data().limiter.memory_denied.then(|| {
            // `load_bytes` resolved the cap to the runtime's default when none was set.
            let cap = self.config.limits.memory_bytes.unwrap_or_default();
            Failure::new(
                FailureKind::MemoryLimit,
                format!("{call} exceeded its memory cap of {} MiB", cap >> 20),
            )
        })
    }

    fn note_memory(&self, instance: &Instance) {
        let peak = instance.store.data().limiter.memory_peak;
        self.shared.memory_peak.fetch_max(peak, Ordering::Relaxed);
    }

    /// Whether the circuit breaker has switched the head off.
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instance>> {
        // A panic while holding the lock cannot leave the Option inconsistent; keep going.
        self.instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Configures `instance`; the layers it asks for, checked against their budget.
    fn configure(&self, instance: &mut Instance) -> Result<Inputs, Failure> {
        let assets: Vec<types::Asset> = self
            .config
            .assets
            .iter()
            .map(|a| types::Asset {
                name: &a.name,
                data: &a.data,
            })
            .collect();
        instance
            .store
            .set_epoch_deadline(ticks(self.config.limits.setup_deadline));
        instance.store.data_mut().embed.start();
        let result = instance
            .bindings
            .configure(&mut instance.store, &self.config_json, &assets);
        let meter = &mut instance.store.data_mut().embed;
        meter.started = None;
        if meter.texts > 0 {
            tracing::debug!(head = %self.description.name, texts = meter.texts, tokens = meter.tokens, host_ms = meter.host_time.as_millis() as u64, "embedded for configure");
        }
        self.report_dropped_lines();
        self.note_memory(instance);
        // Refused memory while configuring: whatever it answered, it is not fit to serve.
        if let Some(failure) = self.refused_memory(instance, "configure") {
            return Err(failure);
        }
        match result {
            Ok(Ok(inputs)) => check_inputs(&inputs).map(|()| inputs),
            Ok(Err(e)) => Err(Failure::new(FailureKind::Config, config_error(e))),
            Err(e) => Err(classify(&e, instance)),
        }
    }

    /// Runs the head over `items`; one result per item, in order. A failure of the whole call
    /// (trap, timeout, memory, malformed output) is repeated for every item of the batch.
    pub fn run(&self, items: &[Item<'_>]) -> Vec<Result<Value, Failure>> {
        if self.is_disabled() {
            let failure = Failure::new(
                FailureKind::Disabled,
                format!(
                    "head {} is switched off after {} failed batches in a row",
                    self.id(),
                    self.config.limits.max_consecutive_failures
                ),
            );
            return vec![Err(failure); items.len()];
        }
        match self.run_batch(items) {
            Ok(results) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                results
            }
            Err(failure) => {
                let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(head = %self.id(), failures = n, "batch failed: {failure}");
                if n >= self.config.limits.max_consecutive_failures {
                    self.disabled.store(true, Ordering::Relaxed);
                    tracing::error!(head = %self.id(), "switched off after {n} failed batches in a row");
                }
                vec![Err(failure); items.len()]
            }
        }
    }

    fn run_batch(&self, items: &[Item<'_>]) -> Result<Vec<Result<Value, Failure>>, Failure> {
        // The batch is lowered into the head straight from the encoder's buffers: the host
        // builds only the small records (tokens, upstream outputs, slices of layer states).
        let tokens: Vec<Option<Vec<types::Token>>> =
            items.iter().map(|i| self.tokens_to_wit(i)).collect();
        let upstream: Vec<Vec<types::Upstream<'_>>> = items
            .iter()
            .map(|i| {
                i.upstream
                    .iter()
                    .map(|(head, output)| types::Upstream { head, output })
                    .collect()
            })
            .collect();
        let batch: Vec<types::Item<'_>> = items
            .iter()
            .zip(&tokens)
            .zip(&upstream)
            .map(|((item, tokens), upstream)| self.to_wit(item, tokens.as_deref(), upstream))
            .collect();
        let states = match &self.pre {
            Contract::V1(_) => Vec::new(),
            Contract::V2(_) => items
                .iter()
                .map(|i| self.layers_of(i))
                .collect::<Result<_, _>>()?,
        };
        let layers: Vec<features::LayerStates<'_>> = states
            .iter()
            .map(|(pooled, tokens)| features::LayerStates { pooled, tokens })
            .collect();
        let mut slot = self.lock();
        let instance = match slot.as_mut() {
            Some(instance) => instance,
            None => {
                let mut fresh = instantiate(
                    &self.pre,
                    &self.description.name,
                    &self.config.limits,
                    self.embedder.clone(),
                    self.shared.clone(),
                )?;
                let inputs = self.configure(&mut fresh)?;
                if inputs != self.inputs {
                    return Err(Failure::new(
                        FailureKind::Config,
                        format!(
                            "a fresh instance asked for other layers ({inputs:?}) than the first ({:?})",
                            self.inputs
                        ),
                    ));
                }
                slot.insert(fresh)
            }
        };
        instance
            .store
            .set_epoch_deadline(ticks(self.config.limits.deadline));
        let outputs = instance.bindings.run(&mut instance.store, &batch, &layers);
        self.report_dropped_lines();
        self.note_memory(instance);
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                let failure = classify(&e, instance);
                // A trapped instance refuses further calls: start afresh next time.
                *slot = None;
                return Err(failure);
            }
        };
        // Refused memory and carried on (an interpreter raises MemoryError and its SDK turns
        // it into an answer): the batch fails as a memory-cap failure whatever it answered,
        // and the instance, in whatever state it was left, is replaced.
        if let Some(failure) = self.refused_memory(instance, "run") {
            *slot = None;
            return Err(failure);
        }
        drop(slot);
        if outputs.len() != items.len() {
            return Err(Failure::new(
                FailureKind::MalformedOutput,
                format!(
                    "returned {} results for a batch of {}",
                    outputs.len(),
                    items.len()
                ),
            ));
        }
        Ok(outputs
            .into_iter()
            .zip(items)
            .map(|(out, item)| self.check_output(out, item))
            .collect())
    }

    /// One summary line for the log lines the head wrote over its budget since the last one.
    fn report_dropped_lines(&self) {
        let dropped = self.shared.log.take_unreported();
        if dropped > 0 {
            let l = self.shared.log.limits();
            tracing::warn!(
                head = %self.description.name,
                dropped,
                "suppressed {dropped} log lines over the head's budget ({} lines at once, {} a second; `log_burst` / `log_lines_per_s` under [heads.limits])",
                l.burst,
                l.lines_per_second
            );
        }
    }

    /// The states of the layers the head asked for, in its order: (pooled, per-token).
    #[allow(
        clippy::type_complexity,
        reason = "two lists of borrowed slices, named at the use"
    )]
    fn layers_of<'a>(&self, item: &Item<'a>) -> Result<(Vec<&'a [f32]>, Vec<&'a [f32]>), Failure> {
        type Pick = for<'l> fn(&'l headstream_encoder::LayerOutput) -> Option<&'l [f32]>;
        let states = |wanted: &[u32], what: &str, pick: Pick| {
            wanted
                .iter()
                .map(|&layer| {
                    item.layers
                        .iter()
                        .find(|l| l.layer == layer)
                        .and_then(pick)
                        .ok_or_else(|| {
                            Failure::new(
                                FailureKind::InvalidInput,
                                format!(
                                    "the host did not encode the {what} states of layer {layer} for {}",
                                    item.id
                                ),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let pooled = states(&self.inputs.pooled_layers, "pooled", |l| {
            l.pooled.as_deref()
        })?;
        let tokens = states(&self.inputs.token_layers, "per-token", |l| {
            l.tokens.as_deref()
        })?;
        Ok((pooled, tokens))
    }

    /// The item's tokens, for a head that gets token states.
    fn tokens_to_wit(&self, item: &Item<'_>) -> Option<Vec<types::Token>> {
        let t = item
            .token_states
            .as_ref()
            .filter(|_| self.wants_token_states())?;
        Some(
            t.ids
                .iter()
                .zip(t.offsets)
                .map(|(&id, &(start, end))| types::Token {
                    id,
                    start: start as u32,
                    end: end as u32,
                })
                .collect(),
        )
    }

    fn to_wit<'a>(
        &self,
        item: &Item<'a>,
        tokens: Option<&'a [types::Token]>,
        upstream: &'a [types::Upstream<'a>],
    ) -> types::Item<'a> {
        let token_states =
            item.token_states
                .as_ref()
                .zip(tokens)
                .map(|(t, tokens)| types::TokenStates {
                    tokens,
                    hidden_size: t.hidden_size as u32,
                    states: t.states,
                });
        types::Item {
            id: item.id,
            text: item.text,
            embedding: item.embedding,
            token_states,
            upstream,
        }
    }

    fn check_output(
        &self,
        out: Result<types::Output, types::HeadError>,
        item: &Item<'_>,
    ) -> Result<Value, Failure> {
        let max = self.config.limits.max_output_bytes;
        let too_large = |n: usize| {
            Failure::new(
                FailureKind::OutputTooLarge,
                format!("output for {} is {n} bytes, the limit is {max}", item.id),
            )
        };
        let malformed = |m: String| Failure::new(FailureKind::MalformedOutput, m);
        let said = |m: String| crate::budget::sanitize(&m, MESSAGE_BYTES);
        match out {
            Err(types::HeadError::InvalidInput(m)) => {
                Err(Failure::new(FailureKind::InvalidInput, said(m)))
            }
            Err(types::HeadError::Failed(m)) => Err(Failure::new(FailureKind::HeadError, said(m))),
            Ok(types::Output::Json(text)) => {
                if text.len() > max {
                    return Err(too_large(text.len()));
                }
                serde_json::from_str(&text)
                    .map_err(|e| malformed(format!("output is not JSON: {e}")))
            }
            Ok(types::Output::Classification(c)) => {
                let size: usize =
                    c.label.len() + c.scores.iter().map(|s| s.label.len() + 16).sum::<usize>();
                if size > max {
                    return Err(too_large(size));
                }
                let finite = c.score.is_finite() && c.scores.iter().all(|s| s.score.is_finite());
                if !finite {
                    return Err(malformed(
                        "classification score is not a finite number".into(),
                    ));
                }
                let scores: Map<String, Value> = c
                    .scores
                    .into_iter()
                    .map(|s| (s.label, json!(s.score)))
                    .collect();
                Ok(json!({ "label": c.label, "score": c.score, "scores": scores }))
            }
            Ok(types::Output::Entities(entities)) => {
                let size: usize = entities
                    .iter()
                    .map(|e| e.text.len() + e.label.len() + 48)
                    .sum();
                if size > max {
                    return Err(too_large(size));
                }
                let mut list = Vec::with_capacity(entities.len());
                for e in entities {
                    let (start, end) = (e.start as usize, e.end as usize);
                    if item.text.get(start..end).is_none() {
                        return Err(malformed(format!(
                            "entity span {start}..{end} is not a valid byte range of the {}-byte text",
                            item.text.len()
                        )));
                    }
                    list.push(json!({ "text": e.text, "label": e.label, "start": start, "end": end, "score": e.score }));
                }
                Ok(json!({ "entities": list }))
            }
        }
    }
}

/// Refuses layer requests past their budget ([`MAX_TOKEN_LAYERS`], [`MAX_POOLED_LAYERS`]) or
/// asking for a layer twice.
fn check_inputs(inputs: &Inputs) -> Result<(), Failure> {
    let over = |what: &str, n: usize, max: usize| {
        Failure::new(
            FailureKind::Config,
            format!("asks for {n} layers of {what} states; a head may ask for at most {max}"),
        )
    };
    if inputs.token_layers.len() > MAX_TOKEN_LAYERS {
        return Err(over(
            "per-token",
            inputs.token_layers.len(),
            MAX_TOKEN_LAYERS,
        ));
    }
    if inputs.pooled_layers.len() > MAX_POOLED_LAYERS {
        return Err(over(
            "pooled",
            inputs.pooled_layers.len(),
            MAX_POOLED_LAYERS,
        ));
    }
    for (what, layers) in [
        ("pooled", &inputs.pooled_layers),
        ("per-token", &inputs.token_layers),
    ] {
        for (i, layer) in layers.iter().enumerate() {
            if layers[..i].contains(layer) {
                return Err(Failure::new(
                    FailureKind::Config,
                    format!("asks for the {what} states of layer {layer} twice"),
                ));
            }
        }
    }
    Ok(())
}

fn instantiate(
    pre: &Contract,
    head: &str,
    limits: &Limits,
    embedder: Option<Arc<dyn Embedder>>,
    shared: Arc<HeadShared>,
) -> Result<Instance, Failure> {
    let stderr = MemoryOutputPipe::new(8 << 10);
    let state = State::new(head.to_owned(), limits, embedder, shared, stderr.clone());
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(ticks(limits.setup_deadline));
    let bindings = match pre {
        Contract::V1(pre) => pre.instantiate(&mut store).map(Bindings::V1),
        Contract::V2(pre) => pre.instantiate(&mut store).map(Bindings::V2),
    };
    let bindings = match bindings {
        Ok(b) => b,
        Err(e) => {
            let memory = store.data().limiter.memory_denied;
            return Err(if memory {
                Failure::new(
                    FailureKind::MemoryLimit,
                    format!("instantiation exceeds the memory cap: {e:#}"),
                )
            } else {
                Failure::new(FailureKind::Trap, format!("cannot instantiate: {e:#}"))
            });
        }
    };
    Ok(Instance {
        store,
        bindings,
        stderr,
    })
}

/// Names a wasmtime error from a call, using the store's limiter and the guest's stderr.
fn classify(err: &wasmtime::Error, instance: &Instance) -> Failure {
    let stderr = instance.stderr.contents();
    let said = String::from_utf8_lossy(&stderr);
    // The guest's last words, without the std hint about backtraces; a panic is named as such.
    let last = said
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with("note:"));
    let said = match last {
        Some(line) if said.contains("panicked at") => format!("panicked: {line}"),
        Some(line) => line.to_owned(),
        None => String::new(),
    };
    let memory_denied = instance.store.data().limiter.memory_denied;
    // The host stopped the call from inside a host function (over budget, past the deadline).
    match err.downcast_ref::<Refusal>() {
        Some(refusal @ Refusal::Budget { .. }) => {
            return Failure::new(FailureKind::Config, refusal.to_string());
        }
        Some(refusal @ Refusal::Deadline { .. }) => {
            return Failure::new(FailureKind::Timeout, refusal.to_string());
        }
        None => {}
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::new(FailureKind::Timeout, "ran past its CPU deadline"),
        Some(Trap::StackOverflow) => {
            Failure::new(FailureKind::StackOverflow, "overflowed its stack")
        }
        _ if memory_denied => Failure::new(
            FailureKind::MemoryLimit,
            format!(
                "exceeded its memory cap{}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(" ({said})")
                }
            ),
        ),
        Some(trap) if !said.is_empty() => {
            Failure::new(FailureKind::Trap, format!("{said} ({trap})"))
        }
        Some(trap) => Failure::new(FailureKind::Trap, trap.to_string()),
        None => Failure::new(FailureKind::Trap, format!("{err:#}")),
    }
}

fn config_error(e: types::ConfigError) -> String {
    let said = |m: String| crate::budget::sanitize(&m, MESSAGE_BYTES);
    match e {
        types::ConfigError::Invalid(m) => format!("invalid config: {}", said(m)),
        types::ConfigError::MissingAsset(m) => format!("missing asset: {}", said(m)),
        types::ConfigError::BadAsset(m) => format!("bad asset: {}", said(m)),
    }
}

/// Longest head error or config error message kept; the rest is cut (a head's messages land
/// in result records, logs and deploy events).
const MESSAGE_BYTES: usize = 1 << 10;

/// Refuses a description whose strings could bloat every result, log line and metric that
/// names the head: names and versions are short identifiers, labels a bounded set.
fn check_description(d: &types::Description) -> Result<(), Failure> {
    let identifier = |what: &str, value: &str, max: usize| {
        let ok = !value.is_empty()
            && value.len() <= max
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
        if ok {
            Ok(())
        } else {
            Err(Failure::new(
                FailureKind::MalformedOutput,
                format!(
                    "describe returned a {what} that is not 1 to {max} letters, digits or -_.+ ({} bytes: {:?})",
                    value.len(),
                    crate::budget::sanitize(value, 64)
                ),
            ))
        }
    };
    identifier("name", &d.name, 64)?;
    identifier("version", &d.version, 64)?;
    let too_long = |what: &str, n: usize, max: usize| {
        Failure::new(
            FailureKind::MalformedOutput,
            format!("describe returned {what} of {n}; at most {max}"),
        )
    };
    if d.labels.len() > 4096 {
        return Err(too_long("a label list", d.labels.len(), 4096));
    }
    if let Some(label) = d.labels.iter().find(|l| l.len() > 256) {
        return Err(too_long("a label", label.len(), 256));
    }
    if let Some(encoder) = d.encoder.as_ref().filter(|e| e.len() > 256) {
        return Err(too_long("an encoder fingerprint", encoder.len(), 256));
    }
    if d.output_schema.len() > 64 << 10 {
        return Err(too_long(
            "an output schema",
            d.output_schema.len(),
            64 << 10,
        ));
    }
    Ok(())
}

fn convert_description(d: types::Description) -> Description {
    Description {
        name: d.name,
        version: d.version,
        kind: match d.kind {
            types::TaskKind::Classify => TaskKind::Classify,
            types::TaskKind::Tokens => TaskKind::Tokens,
            types::TaskKind::Other => TaskKind::Other,
        },
        labels: d.labels,
        needs_token_states: d.needs_token_states,
        encoder: d.encoder,
        output_schema: d.output_schema,
    }
}
