//! The engine, the linker, the compiled-component cache and the epoch ticker.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::PluginError;
use crate::bindings::{host, types, v1::TaskHead};
use crate::budget::{EmbedCache, EmbedLimits, EmbedMeter, LogLevel, LogMeter, LogSink, Refusal};
use crate::head::Contract;
use crate::head::{Embedder, Head, HeadConfig, Limiter, Limits};
use crate::runtime::Runtime;

/// How often the epoch advances; CPU deadlines are multiples of it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Imports no plugin may have, even though WASI is linked (prefixes of import names).
const DENIED_IMPORTS: &[&str] = &["wasi:http/"];

/// Imports that grant nothing here (no directories are preopened, every socket operation is
/// denied): refused at load for native heads, which import them only to reach for them, and
/// linked deny-all for interpreters, whose standard library imports them whether or not the
/// head uses them.
const DENIED_UNLESS_INTERPRETER: &[&str] = &["wasi:sockets/", "wasi:filesystem/preopens"];

/// Settings for a [`PluginHost`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where compiled components are cached (`None`: no cache, compile on every load).
    pub cache_dir: Option<PathBuf>,
    /// Most plugin instances alive at once (pooling allocator slots).
    pub max_instances: u32,
    /// Largest linear memory any plugin may reach; per-head caps ([`crate::Limits`]) are
    /// usually lower.
    pub max_memory_bytes: usize,
    /// The running encoder's fingerprint; heads built for another encoder are refused.
    pub encoder: Option<headstream_encoder::Fingerprint>,
    /// Serves the `embed` import while heads configure.
    pub embedder: Option<Arc<dyn Embedder>>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 64,
            max_memory_bytes: 256 << 20,
            encoder: None,
            embedder: None,
        }
    }
}

/// Per-instance state: the deny-all WASI context, limits, and what the host imports need.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) head: String,
    /// Metering of the `configure` in progress (`embed` is refused outside one).
    pub(crate) embed: EmbedMeter,
    embed_limits: EmbedLimits,
    setup_deadline: Duration,
    embedder: Option<Arc<dyn Embedder>>,
    /// What the head's instances share: its embedding cache and log budget.
    shared: Arc<HeadShared>,
}

/// What every instance of one head shares, so a fresh instance (after a trap) neither resets
/// the head's log budget nor costs the encoder again for texts it embedded before.
#[derive(Debug)]
pub(crate) struct HeadShared {
    pub(crate) cache: EmbedCache,
    pub(crate) log: LogMeter,
    /// The largest linear memory any instance reached.
    pub(crate) memory_peak: std::sync::atomic::AtomicUsize,
    /// Where admitted log lines also go ([`HeadConfig::log_sink`]).
    pub(crate) log_sink: std::sync::OnceLock<Arc<dyn LogSink>>,
    /// `name@version` as the head described itself (set before its first `configure`).
    pub(crate) described: std::sync::OnceLock<String>,
}

impl HeadShared {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            cache: EmbedCache::default(),
            log: LogMeter::new(limits.log),
            memory_peak: std::sync::atomic::AtomicUsize::new(0),
            log_sink: std::sync::OnceLock::new(),
            described: std::sync::OnceLock::new(),
        }
    }
}

impl State {
    pub(crate) fn new(
        head: String,
        limits: &Limits,
        embedder: Option<Arc<dyn Embedder>>,
        shared: Arc<HeadShared>,
        stderr: MemoryOutputPipe,
    ) -> Self {
        // Deny-all WASI: no preopens, env, args or sockets; empty stdin, stdout discarded,
        // stderr captured (bounded) so a panic message can be reported; frozen clocks; and
        // "randomness" that is a fixed byte cycle, so a head cannot observe entropy either
        // (and its outputs are reproducible).
        let wasi = WasiCtx::builder()
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5a]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0xa5]))
            .insecure_random_seed(0)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(
                limits
                    .memory_bytes
                    .unwrap_or(Runtime::Native.default_memory_bytes()),
            ),
            head,
            embed: EmbedMeter::default(),
            embed_limits: limits.embed,
            setup_deadline: limits.setup_deadline,
            embedder,
            shared,
        }
    }

    /// `embed` within the head's budget: texts and bytes checked first, then tokens (cached
    /// texts cost none), then the encoder runs in passes of about [`EMBED_CHUNK_TOKENS`] with
    /// the setup deadline checked between them, so a head past its deadline is stopped within
    /// one pass.
    fn embed_within_budget(
        &mut self,
        embedder: &dyn Embedder,
        texts: Vec<String>,
    ) -> Result<Result<Vec<Vec<f32>>, String>, Refusal> {
        let limits = self.embed_limits;
        self.embed.check_deadline(self.setup_deadline)?;
        self.embed.admit_texts(&texts, &limits)?;
        let mut vectors: Vec<Option<Vec<f32>>> =
            texts.iter().map(|t| self.shared.cache.get(t)).collect();
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| vectors[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(Ok(vectors.into_iter().flatten().collect()));
        }
        let (started, before) = (Instant::now(), self.embed.host_time);
        let uncached: Vec<&str> = missing.iter().map(|&i| texts[i].as_str()).collect();
        let tokenized = match embedder.tokenize(&uncached) {
            Ok(tokenized) => tokenized,
            Err(e) => return Ok(Err(e)),
        };
        let counts: Vec<usize> = tokenized.iter().map(|t| t.ids.len()).collect();
        self.embed.admit_tokens(counts.iter().sum(), &limits)?;
        let mut tokenized = tokenized.into_iter();
        for chunk in chunks_of_tokens(&counts, EMBED_CHUNK_TOKENS) {
            let pass: Vec<_> = tokenized.by_ref().take(chunk.len()).collect();
            let embedded = match embedder.embed(pass) {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            for (j, vector) in chunk.zip(embedded) {
                let i = missing[j];
                self.shared
                    .cache
                    .insert(texts[i].clone(), vector.clone(), limits.texts);
                vectors[i] = Some(vector);
            }
            self.embed.host_time = before + started.elapsed();
            self.embed.check_deadline(self.setup_deadline)?;
        }
        Ok(Ok(vectors.into_iter().flatten().collect()))
    }
}

/// Tokens per encoder pass inside one `embed` call (~0.3 s on two cores at the ~1,500 tokens/s
/// that small passes run at); the setup deadline is checked between passes, so the host
/// overruns it by at most one of them.
const EMBED_CHUNK_TOKENS: usize = 512;

/// Consecutive index ranges of `counts` holding about `budget` tokens each (at least one text).
fn chunks_of_tokens(counts: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut sum) = (0, 0);
    for (i, &n) in counts.iter().enumerate() {
        if i > start && sum + n > budget {
            chunks.push(start..i);
            (start, sum) = (i, 0);
        }
        sum += n;
    }
    if start < counts.len() {
        chunks.push(start..counts.len());
    }
    chunks
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for State {}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        let log = &self.shared.log;
        if !log.admit() {
            return;
        }
        let message = crate::budget::sanitize(&message, log.limits().line_bytes);
        let head = self.head.as_str();
        let level = match level {
            host::Level::Trace => LogLevel::Trace,
            host::Level::Debug => LogLevel::Debug,
            host::Level::Info => LogLevel::Info,
            host::Level::Warn => LogLevel::Warn,
            host::Level::Error => LogLevel::Error,
        };
        match level {
            LogLevel::Trace => tracing::trace!(head, "{message}"),
            LogLevel::Debug => tracing::debug!(head, "{message}"),
            LogLevel::Info => tracing::info!(head, "{message}"),
            LogLevel::Warn => tracing::warn!(head, "{message}"),
            LogLevel::Error => tracing::error!(head, "{message}"),
        }
        if let Some(sink) = self.shared.log_sink.get() {
            let described = self.shared.described.get().map_or(head, String::as_str);
            sink.line(described, level, &message);
        }
    }

    fn embed(&mut self, texts: Vec<String>) -> wasmtime::Result<Result<Vec<Vec<f32>>, String>> {
        if self.embed.started.is_none() {
            return Ok(Err(
                "embed is only available while the head configures".into()
            ));
        }
        let Some(embedder) = self.embedder.clone() else {
            return Ok(Err("this host has no encoder to embed with".into()));
        };
        // A refusal traps: the head cannot ignore it and carry on asking.
        self.embed_within_budget(embedder.as_ref(), texts)
            .map_err(wasmtime::Error::new)
    }
}

/// The monotonic clock's timers, replaced: with time frozen, every timer is due at once. WASI's
/// own would wait for real (a `sleep` blocks the host thread in `poll`, which no epoch deadline
/// interrupts); this way a head that sleeps returns at once, and one that sleeps in a loop
/// spins into its CPU deadline.
fn freeze_clock_subscriptions(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: wasmtime::StoreContextMut<'_, State>, (_duration,): (u64,)| {
            due_now(&mut store.data_mut().table).map(|p| (p,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: wasmtime::StoreContextMut<'_, State>, (_when,): (u64,)| {
            due_now(&mut store.data_mut().table).map(|p| (p,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The `wasi:clocks/monotonic-clock` version wasmtime-wasi links (imports of other 0.2.x
/// versions resolve to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A pollable that is ready at once.
struct DueNow;

impl wasmtime_wasi::p2::Pollable for DueNow {
    fn ready<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async {})
    }
}

fn due_now(
    table: &mut ResourceTable,
) -> wasmtime::Result<wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>> {
    let due = table.push(DueNow)?;
    wasmtime_wasi::p2::subscribe(table, due)
}

/// Clocks for plugins: always zero, so a plugin cannot observe time.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Loads and runs task-head plugins. One per process; cheap to share by reference.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<State>,
    config: HostConfig,
    engine_key: String,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.config.cache_dir)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Creates the engine (epoch interruption, pooling allocator) and starts its epoch ticker.
    pub fn new(config: HostConfig) -> Result<Self, PluginError> {
        let engine_err = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        // An interpreter component links a dozen core modules (CPython: libc, libpython, the
        // WASI emulation libraries, its runtime, the app); a Rust one three.
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 16)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .max_memory_size(config.max_memory_bytes)
            .max_unused_warm_slots(8);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Bounded address-space reservation: each memory slot reserves only what it may use.
            .memory_reservation(config.max_memory_bytes as u64)
            .memory_guard_size(64 << 10)
            .max_wasm_stack(512 << 10);
        let engine = Engine::new(&wasm).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        freeze_clock_subscriptions(&mut linker).map_err(engine_err)?;
        TaskHead::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(engine_err)?;

        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("headstream-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            engine,
            linker,
            config,
            engine_key,
        })
    }

    /// The running encoder's fingerprint, if the host was given one.
    pub fn encoder(&self) -> Option<&headstream_encoder::Fingerprint> {
        self.config.encoder.as_ref()
    }

    /// Loads the plugin component at `path`: digest pin, compile (or cache), import policy,
    /// contract check, `describe`, encoder check, `configure`.
    pub fn load(&self, path: &Path, config: HeadConfig) -> Result<Head, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(path, &bytes, config)
    }

    /// Loads a component held in memory (one embedded in the binary, say) exactly as [`load`]
    /// loads a file; `origin` names it in errors and logs (`builtin:keyword-flags`).
    ///
    /// [`load`]: Self::load
    pub fn load_bytes(
        &self,
        origin: &Path,
        bytes: &[u8],
        config: HeadConfig,
    ) -> Result<Head, PluginError> {
        let path = origin;
        let digest = hex(&Sha256::digest(bytes));
        if let Some(expected) = config
            .sha256
            .as_ref()
            .filter(|e| !e.eq_ignore_ascii_case(&digest))
        {
            return Err(PluginError::DigestMismatch {
                path: path.to_owned(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        let runtime = Runtime::detect(bytes);
        let mut config = config;
        config
            .limits
            .memory_bytes
            .get_or_insert(runtime.default_memory_bytes());
        let component = self.compile(path, bytes, &digest)?;
        self.check_imports(path, &component, runtime)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Contract {
                path: path.to_owned(),
                reason: format!("{e:#}"),
            })?;
        // The newest contract first; a component of an older one is served as it was.
        let pre = match crate::bindings::v2::TaskHeadPre::new(pre.clone()) {
            Ok(v2) => Contract::V2(v2),
            Err(newest) => match crate::bindings::v1::TaskHeadPre::new(pre) {
                Ok(v1) => Contract::V1(v1),
                Err(oldest) => {
                    return Err(PluginError::Contract {
                        path: path.to_owned(),
                        reason: format!(
                            "implements no contract this host serves: not 0.2.0 ({newest:#}), not 0.1.0 ({oldest:#})"
                        ),
                    });
                }
            },
        };
        Head::start(
            path,
            pre,
            digest,
            runtime,
            config,
            self.config.encoder.as_ref(),
            self.config.embedder.clone(),
        )
    }

    /// Loads a verified plugin package: its component (pinned to the manifest's digest), its
    /// assets, the manifest's configuration with `overrides` applied, and its encoder
    /// fingerprint, which must match this host's.
    pub fn load_package(
        &self,
        package: &headstream_package::Package,
        overrides: &serde_json::Value,
        limits: crate::Limits,
    ) -> Result<Head, PluginError> {
        self.load_package_with(package, overrides, limits, None)
    }

    /// [`load_package`](Self::load_package), the head's log lines also going to `log_sink`
    /// from its first `configure` on.
    pub fn load_package_with(
        &self,
        package: &headstream_package::Package,
        overrides: &serde_json::Value,
        limits: crate::Limits,
        log_sink: Option<Arc<dyn LogSink>>,
    ) -> Result<Head, PluginError> {
        let assets = package
            .read_assets()?
            .into_iter()
            .map(|(name, data)| crate::Asset { name, data })
            .collect();
        let config = HeadConfig {
            sha256: Some(package.manifest.component.sha256.clone()),
            config: package.config_with(overrides),
            assets,
            limits,
            encoder: package.manifest.encoder.clone(),
            approved_encoders: package
                .manifest
                .approved_encoders
                .iter()
                .map(|a| a.encoder.clone())
                .collect(),
            log_sink,
        };
        self.load(&package.component_path(), config)
    }

    fn compile(&self, path: &Path, bytes: &[u8], digest: &str) -> Result<Component, PluginError> {
        let cached = self
            .config
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{digest}-{}.cwasm", self.engine_key)));
        if let Some(component) = cached
            .as_ref()
            .filter(|f| f.is_file())
            .and_then(|f| self.load_cached(f))
        {
            tracing::debug!(plugin = %path.display(), "loaded compiled component from cache");
            return Ok(component);
        }
        let component =
            Component::from_binary(&self.engine, bytes).map_err(|e| PluginError::Invalid {
                path: path.to_owned(),
                reason: format!("{e:#}"),
            })?;
        if let Some(Err(e)) = cached.as_ref().map(|file| write_cache(&component, file)) {
            tracing::warn!(plugin = %path.display(), "cannot cache the compiled component: {e}");
        }
        Ok(component)
    }

    #[allow(unsafe_code)]
    fn load_cached(&self, file: &Path) -> Option<Component> {
        // Read into memory rather than mmap: a cache file replaced or truncated by another
        // process must not be able to fault a running host.
        let bytes = std::fs::read(file).ok()?;
        // SAFETY: the file is in headstream's own cache directory, named by the digest of the
        // source component and this engine's compatibility hash, and was written by
        // `Component::serialize` of this wasmtime version (to a temporary name, then renamed, so
        // it is never partial). wasmtime validates the header and engine compatibility again.
        match unsafe { Component::deserialize(&self.engine, &bytes) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(file = %file.display(), "ignoring unusable cached component: {e:#}");
                None
            }
        }
    }

    fn check_imports(
        &self,
        path: &Path,
        component: &Component,
        runtime: Runtime,
    ) -> Result<(), PluginError> {
        for (name, _) in component.component_type().imports(&self.engine) {
            let denied = |list: &[&str]| list.iter().any(|d| name.starts_with(d));
            if denied(DENIED_IMPORTS)
                || (!runtime.links_denied_wasi() && denied(DENIED_UNLESS_INTERPRETER))
            {
                return Err(PluginError::DisallowedImport {
                    path: path.to_owned(),
                    import: name.to_owned(),
                });
            }
        }
        Ok(())
    }
}

fn write_cache(component: &Component, file: &Path) -> std::io::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_hold_about_the_budget_and_every_text_once() {
        let chunks = super::chunks_of_tokens(&[300, 300, 100, 600, 10, 10], 512);
        assert_eq!(chunks, vec![0..1, 1..3, 3..4, 4..6]);
        assert!(super::chunks_of_tokens(&[], 512).is_empty());
    }
}
