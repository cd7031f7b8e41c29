//! Live pipelines: what a host serves changes while it runs — deploys from the cluster registry
//! (`serve --deployed`) and edited files (`serve --watch`) — with no restart and no message
//! lost.
//!
//! Every change is loaded and checked in full (config, package digests, encoder fingerprint,
//! compilation, instantiation) *before* it takes traffic. A pipeline whose subjects and
//! delivery are unchanged swaps runners between batches (the batch in flight finishes on the
//! old one; the subscription never stops); one whose subjects changed is re-subscribed. A
//! change that fails a check is rejected with an event on `headstream.events.rejected`, a log
//! line and a metric, and the old version stays live.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use headstream_encoder::Encoder;
use headstream_package::Registry;
use headstream_pipeline::Pipeline;
use headstream_plugin_host::PluginHost;
use headstream_registry::{ClusterRegistry, EVENTS_SUBJECT, Revision};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use headstream_runner::{CoBatcher, Metrics, Runner};

use crate::{HostError, ServeOptions};

/// Where a pipeline config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A local file (`--pipeline`, the host config, `serve --watch`).
    File(PathBuf),
    /// The cluster registry's KV bucket, at a revision.
    Cluster {
        /// The KV revision.
        revision: u64,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Cluster { revision } => write!(f, "registry revision {revision}"),
        }
    }
}

/// Why a pipeline config was not applied (the old version, if any, stays live).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The config does not parse or validate (file:line:column and reason).
    #[error(transparent)]
    Config(#[from] headstream_pipeline::PipelineError),
    /// A cluster registry key holds a config of another name.
    #[error("{}: the config is named {name:?} but was deployed as {expected:?}", path.display())]
    Misnamed {
        /// Where the config came from.
        path: PathBuf,
        /// The config's own name.
        name: String,
        /// The name it was deployed under.
        expected: String,
    },
    /// A deployed config names a head by local file.
    #[error(transparent)]
    NotDeployable(#[from] headstream_pipeline::NotDeployable),
    /// Its heads did not load (package, digest, encoder, compile, configure).
    #[error(transparent)]
    Load(#[from] HostError),
}

/// What a host needs to build and serve pipelines.
#[derive(Debug, Clone)]
pub struct HostContext {
    /// The NATS connection results, errors and events go out on.
    pub client: async_nats::Client,
    /// The shared encoder.
    pub encoder: Arc<Encoder>,
    /// The shared encoder thread.
    pub batcher: CoBatcher,
    /// The host's metrics.
    pub metrics: Arc<Metrics>,
    /// This host's id in results and events.
    pub host_id: String,
    /// The process's plugin host: one engine for every runner and package check.
    pub plugins: Arc<PluginHost>,
    /// Package directories `plugin = "name@version"` references resolve against.
    pub registry: Registry,
    /// The embedding store's bucket and limits; opened when a pipeline first stores.
    pub store: headstream_store::StoreConfig,
    /// The store's writer, once opened (shared by every pipeline that stores).
    pub store_writer: Arc<tokio::sync::OnceCell<headstream_store::Writer>>,
    /// Where predictions and feedback labels are kept, and how much of them.
    pub quality: headstream_quality::QualityConfig,
    /// The predictions bucket and its writer, once opened (shared by every recording pipeline).
    pub quality_stores: Arc<tokio::sync::OnceCell<QualityStores>>,
    /// Where heads' log lines go on the bus.
    pub head_logs: crate::HeadLogs,
    /// Where traces go, if anywhere.
    pub tracer: Option<headstream_trace::Tracer>,
}

impl HostContext {
    /// The embedding store's writer: the bucket is opened (created with its limits if
    /// missing) the first time a pipeline stores.
    async fn store_writer(&self) -> Result<headstream_store::Writer, HostError> {
        self.store_writer
            .get_or_try_init(|| async {
                let jetstream = async_nats::jetstream::new(self.client.clone());
                let kv = headstream_store::open(&jetstream, &self.store).await?;
                tracing::info!(bucket = %self.store.bucket, "embedding store open");
                Ok::<_, HostError>(headstream_store::Writer::spawn(kv, STORE_QUEUE))
            })
            .await
            .cloned()
    }
}

impl HostContext {
    /// The predictions bucket and labels stream: opened (created with their limits if missing)
    /// the first time a pipeline records.
    async fn quality_stores(&self) -> Result<QualityStores, HostError> {
        self.quality_stores
            .get_or_try_init(|| async {
                let jetstream = async_nats::jetstream::new(self.client.clone());
                let opened = |e: headstream_quality::StoreError| {
                    HostError::Quality(e.to_string())
                };
                let kv = headstream_quality::open_predictions(&jetstream, &self.quality)
                    .await
                    .map_err(opened)?;
                headstream_quality::open_labels(&jetstream, &self.quality)
                    .await
                    .map_err(opened)?;
                tracing::info!(bucket = %self.quality.predictions_bucket, stream = %self.quality.labels_stream, "quality records open");
                Ok::<_, HostError>(QualityStores {
                    writer: headstream_store::Writer::spawn(kv.clone(), STORE_QUEUE),
                    predictions: kv,
                })
            })
            .await
            .cloned()
    }
}

/// The predictions bucket, and the writer that puts into it off the serving path.
#[derive(Debug, Clone)]
pub struct QualityStores {
    /// The bucket, for reading predictions back.
    pub predictions: async_nats::jetstream::kv::Store,
    /// Puts predictions from a bounded queue; past it they are dropped and counted.
    pub writer: headstream_store::Writer,
}

/// Vectors waiting to be written to the embedding store; past it they are dropped, never
/// waited for.
const STORE_QUEUE: usize = 8192;

struct Served {
    origin: Origin,
    text: String,
    pipeline: Pipeline,
    options: ServeOptions,
    /// What the pipeline's references resolved to (`name@version` of every head, canary and
    /// shadow), to tell whether a registry change concerns it.
    resolved: Vec<String>,
    slot: watch::Sender<Arc<Runner>>,
    stop: Option<oneshot::Sender<()>>,
    /// The feedback service, for a pipeline that records.
    feedback: Option<tokio::task::AbortHandle>,
    generation: u64,
}

/// What a host serves now, by pipeline: `{"heads": {name: "name@version"}, "source": ...}`;
/// shared with whoever reports status (the NATS micro-service endpoints).
pub type StatusBoard = Arc<std::sync::RwLock<BTreeMap<String, Value>>>;

/// The pipelines a host serves, changed while it runs.
pub struct LiveHost {
    cx: HostContext,
    board: StatusBoard,
    served: BTreeMap<String, Served>,
    /// Configs that could not be loaded yet (say, a package not fetched yet), retried on every
    /// registry change.
    pending: BTreeMap<String, (Origin, String, PathBuf)>,
    tasks: JoinSet<(String, u64, Result<(), HostError>)>,
    generation: u64,
}

impl std::fmt::Debug for LiveHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHost")
            .field("host", &self.cx.host_id)
            .field("served", &self.served.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch, for events.
pub(crate) fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl LiveHost {
    /// A host serving nothing yet.
    pub fn new(cx: HostContext) -> Self {
        Self {
            cx,
            board: StatusBoard::default(),
            served: BTreeMap::new(),
            pending: BTreeMap::new(),
            tasks: JoinSet::new(),
            generation: 0,
        }
    }

    /// The pipelines being served.
    pub fn pipelines(&self) -> impl Iterator<Item = &str> {
        self.served.keys().map(String::as_str)
    }

    /// The live status of what this host serves, kept current by every change.
    pub fn status_board(&self) -> StatusBoard {
        self.board.clone()
    }

    fn post(&self, pipeline: &str, status: Option<Value>) {
        let mut board = match self.board.write() {
            Ok(board) => board,
            Err(poisoned) => poisoned.into_inner(),
        };
        match status {
            Some(status) => board.insert(pipeline.to_owned(), status),
            None => board.remove(pipeline),
        };
    }

    /// Publishes a deploy event on `headstream.events.<kind>` and counts it.
    async fn event(&self, kind: &str, what: &str, mut body: Value) {
        body["event"] = json!(kind);
        body["kind"] = json!(what);
        body["host"] = json!(self.cx.host_id);
        body["at_ms"] = json!(now_ms() as u64);
        self.cx
            .metrics
            .deploys
            .with_label_values(&[what, kind])
            .inc();
        let subject = format!("{EVENTS_SUBJECT}.{kind}");
        if let Err(e) = self
            .cx
            .client
            .publish(subject.clone(), body.to_string().into())
            .await
        {
            tracing::warn!("cannot publish the {kind} event: {e}");
        }
    }

    /// Loads pipeline config `text` (from `origin`; `path` names it in errors and anchors its
    /// relative paths) and serves it, replacing the pipeline of the same name. Nothing changes
    /// unless every check passes; a failure is published as a `rejected` event and returned.
    /// `expected` (a cluster key) must match the config's name. Returns the pipeline's name.
    pub async fn apply(
        &mut self,
        origin: Origin,
        text: &str,
        path: &Path,
        expected: Option<&str>,
    ) -> Result<String, ApplyError> {
        let outcome = self.try_apply(origin.clone(), text, path, expected).await;
        if let Err(reason) = &outcome {
            tracing::error!(source = %origin, "pipeline rejected, the old version stays live: {reason}");
            let name = expected.map(str::to_owned);
            self.event(
                "rejected",
                "pipeline",
                json!({ "pipeline": name, "source": origin.to_string(), "reason": reason.to_string() }),
            )
            .await;
            if let Some(name) = name {
                self.pending
                    .insert(name, (origin, text.to_owned(), path.to_owned()));
            }
        }
        outcome
    }

    /// Serves a pipeline of the host's start: like [`apply`](Self::apply), but a failure is only
    /// returned (the host does not start, and its caller reports why once): there is no old
    /// version to keep live and no one subscribed to events yet.
    pub(crate) async fn apply_at_start(
        &mut self,
        file: &Path,
        text: &str,
    ) -> Result<String, ApplyError> {
        self.try_apply(Origin::File(file.to_owned()), text, file, None)
            .await
    }

    async fn try_apply(
        &mut self,
        origin: Origin,
        text: &str,
        path: &Path,
        expected: Option<&str>,
    ) -> Result<String, ApplyError> {
        let pipeline = Pipeline::parse(text, path)?;
        let name = pipeline.name.get_ref().clone();
        if let Some(expected) = expected.filter(|e| **e != name) {
            return Err(ApplyError::Misnamed {
                path: path.to_owned(),
                name,
                expected: expected.to_owned(),
            });
        }
        if matches!(origin, Origin::Cluster { .. }) {
            pipeline.check_deployable()?;
        }
        self.pending.remove(&name);
        if let Some(served) = self.served.get(&name)
            && served.text == text
            && served.origin == origin
        {
            return Ok(name);
        }
        let (runner, resolved) = self.build(&pipeline).await?;
        self.install(origin, text.to_owned(), pipeline, runner, resolved)
            .await;
        Ok(name)
    }

    /// Loads a runner for `pipeline` off the async threads (compiling components can take a
    /// while), with what its references resolved to.
    async fn build(&self, pipeline: &Pipeline) -> Result<(Runner, Vec<String>), HostError> {
        let cx = self.cx.clone();
        let pipeline = pipeline.clone();
        let writer = match pipeline.embeddings.store {
            true => Some(cx.store_writer().await?),
            false => None,
        };
        let recorder = match pipeline.quality.record {
            true => Some(cx.quality_stores().await?.writer),
            false => None,
        };
        tokio::task::spawn_blocking(move || {
            let resolved = headstream_runner::resolved_versions(&pipeline, &cx.registry)?;
            let digest = cx.encoder.fingerprint().digest().to_owned();
            let name = pipeline.name.get_ref().clone();
            let logs = cx.head_logs.clone();
            let sinks = move |head: &str, version: Option<&str>| logs.sink(&name, head, version);
            let mut runner = Runner::with_logs(
                &pipeline,
                &cx.plugins,
                cx.encoder,
                &cx.registry,
                Some(&sinks),
            )?
            .with_metrics(cx.metrics)
            .with_co_batcher(cx.batcher);
            if let Some(writer) = writer {
                runner = runner.with_embedding_sink(Arc::new(move |text: &str, e| {
                    let value = headstream_store::encode(&e.embedding, e.truncated, e.n_tokens());
                    writer.offer(headstream_store::key(&digest, text), value);
                }));
            }
            if let Some(recorder) = recorder {
                let pipeline = pipeline.name.get_ref().clone();
                runner = runner.with_result_sink(Arc::new(move |record, text| {
                    let at = now_ms() as u64;
                    let Some(prediction) = headstream_quality::Prediction::of(record, text, at)
                    else {
                        return;
                    };
                    if let Ok(value) = serde_json::to_vec(&prediction) {
                        let key = headstream_quality::prediction_key(&pipeline, &record.id);
                        recorder.offer(key, value);
                    }
                }));
            }
            Ok((runner, resolved))
        })
        .await
        .map_err(HostError::Worker)?
    }

    async fn install(
        &mut self,
        origin: Origin,
        text: String,
        pipeline: Pipeline,
        runner: Runner,
        resolved: Vec<String>,
    ) {
        let name = pipeline.name.get_ref().clone();
        let mut options = ServeOptions::from_pipeline(&pipeline);
        options.host = Some(self.cx.host_id.clone());
        options.tracer.clone_from(&self.cx.tracer);
        let heads = json!(runner.head_versions());
        let runner = Arc::new(runner);
        let body = json!({
            "pipeline": name,
            "source": origin.to_string(),
            "heads": heads,
        });
        match self.served.get_mut(&name) {
            // Same subjects and delivery: swap the runner between batches.
            Some(served) if served.options == options => {
                served.slot.send_replace(runner);
                if pipeline.quality.record != served.feedback.is_some() {
                    if let Some(old) = served.feedback.take() {
                        old.abort();
                    }
                    let slot = served.slot.clone();
                    let feedback = self.spawn_feedback(&pipeline, &slot).await;
                    if let Some(served) = self.served.get_mut(&name) {
                        served.feedback = feedback;
                    }
                }
                let Some(served) = self.served.get_mut(&name) else {
                    return;
                };
                served.origin = origin;
                served.text = text;
                served.pipeline = pipeline;
                served.resolved = resolved;
                tracing::info!(pipeline = %name, %heads, "swapped");
            }
            _ => {
                if let Some(old) = self.served.remove(&name) {
                    old.stop();
                }
                let (ready, subscribed) = oneshot::channel();
                let (slot, stop, generation) = self.spawn(&name, &options, runner, ready);
                let feedback = self.spawn_feedback(&pipeline, &slot).await;
                self.served.insert(
                    name.clone(),
                    Served {
                        origin,
                        text,
                        pipeline,
                        options,
                        resolved,
                        slot,
                        stop: Some(stop),
                        feedback,
                        generation,
                    },
                );
                // Activated once messages published from now on are served; a subscription
                // that fails surfaces through `stopped`.
                if tokio::time::timeout(Duration::from_secs(30), subscribed)
                    .await
                    .is_err()
                {
                    tracing::warn!(pipeline = %name, "subscribing takes longer than 30 s");
                }
                tracing::info!(pipeline = %name, %heads, "serving");
            }
        }
        let (input, output, delivery) = match self.served.get(&name) {
            Some(served) => (
                served.options.subject.clone(),
                served.options.output.clone(),
                match served.options.jetstream {
                    Some(_) => "jetstream",
                    None => "core",
                },
            ),
            None => (String::new(), String::new(), "core"),
        };
        self.post(
            &name,
            Some(json!({
                "heads": body["heads"],
                "source": body["source"],
                "input": input,
                "output": output,
                "delivery": delivery,
            })),
        );
        self.event("activated", "pipeline", body).await;
    }

    /// Starts serving `options` with `runner`; returns the runner slot, the stop signal and
    /// the task's generation.
    fn spawn(
        &mut self,
        name: &str,
        options: &ServeOptions,
        runner: Arc<Runner>,
        ready: oneshot::Sender<()>,
    ) -> (watch::Sender<Arc<Runner>>, oneshot::Sender<()>, u64) {
        self.generation += 1;
        let generation = self.generation;
        let (slot, receiver) = watch::channel(runner);
        let (stop, stopped) = oneshot::channel::<()>();
        let name = name.to_owned();
        let client = self.cx.client.clone();
        let options = options.clone();
        self.tasks.spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            let outcome = crate::serve(client, receiver, options, Some(ready), shutdown).await;
            (name, generation, outcome)
        });
        (slot, stop, generation)
    }

    /// Starts the feedback service of `pipeline` when it records predictions.
    async fn spawn_feedback(
        &self,
        pipeline: &Pipeline,
        slot: &watch::Sender<Arc<Runner>>,
    ) -> Option<tokio::task::AbortHandle> {
        if !pipeline.quality.record {
            return None;
        }
        // Opened already by `build`; an error there refused the pipeline.
        let stores = self.cx.quality_stores().await.ok()?;
        let service = crate::feedback::FeedbackService {
            client: self.cx.client.clone(),
            pipeline: pipeline.name.get_ref().clone(),
            runner: slot.subscribe(),
            predictions: stores.predictions,
            config: self.cx.quality.clone(),
            metrics: self.cx.metrics.clone(),
        };
        Some(tokio::spawn(service.run()).abort_handle())
    }

    /// Stops serving pipeline `name` (its batch in hand finishes first).
    pub async fn remove(&mut self, name: &str, origin: Origin) {
        self.pending.remove(name);
        if let Some(served) = self.served.remove(name) {
            served.stop();
            self.post(name, None);
            tracing::info!(pipeline = %name, source = %origin, "removed");
            self.event(
                "removed",
                "pipeline",
                json!({ "pipeline": name, "source": origin.to_string() }),
            )
            .await;
        }
    }

    /// Re-resolves every pipeline after the registry changed: pipelines whose references now
    /// name other versions get new runners (checked first, swapped between batches), and
    /// configs that could not load before are tried again.
    pub async fn refresh(&mut self) {
        let registry = self.cx.registry.clone();
        let names: Vec<String> = self.served.keys().cloned().collect();
        for name in names {
            let Some(served) = self.served.get(&name) else {
                continue;
            };
            let pipeline = served.pipeline.clone();
            let now = {
                let (p, r) = (pipeline.clone(), registry.clone());
                tokio::task::spawn_blocking(move || headstream_runner::resolved_versions(&p, &r))
                    .await
                    .map_err(HostError::Worker)
                    .and_then(|r| r.map_err(HostError::from))
            };
            if now.as_ref().is_ok_and(|now| *now == served.resolved) {
                continue;
            }
            let (origin, text) = (served.origin.clone(), served.text.clone());
            match self.build(&pipeline).await {
                Ok((runner, resolved)) => {
                    self.install(origin, text, pipeline, runner, resolved).await;
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::error!(pipeline = %name, "new versions rejected, the old ones stay live: {reason}");
                    self.event(
                        "rejected",
                        "pipeline",
                        json!({ "pipeline": name, "source": origin.to_string(), "reason": reason.to_string() }),
                    )
                    .await;
                }
            }
        }
        let pending = std::mem::take(&mut self.pending);
        for (name, (origin, text, path)) in pending {
            if self
                .try_apply(origin.clone(), &text, &path, Some(&name))
                .await
                .is_err()
            {
                self.pending.insert(name, (origin, text, path));
            }
        }
    }

    /// Fetches package `name@version` from the cluster into `dir` and checks that it loads on
    /// this host (digests, encoder fingerprint, compilation, instantiation); a package that
    /// fails is removed and reported as a `rejected` event. Returns whether it was accepted.
    pub async fn accept_package(
        &mut self,
        cluster: &ClusterRegistry,
        name: &str,
        version: &str,
        dir: &Path,
    ) -> bool {
        let id = format!("{name}@{version}");
        let fetched = cluster.fetch_package(name, version, dir).await;
        let checked = match fetched {
            Ok(package) => {
                let cx = self.cx.clone();
                let dir = package.dir.clone();
                let checked = tokio::task::spawn_blocking(move || {
                    headstream_runner::check_package(&package, &cx.plugins)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                if checked.is_err() {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                checked
            }
            Err(e) => Err(e.to_string()),
        };
        match checked {
            Ok(()) => {
                tracing::info!(package = %id, "package fetched and checked");
                self.event("activated", "package", json!({ "package": id }))
                    .await;
                true
            }
            Err(reason) => {
                tracing::error!(package = %id, "package rejected: {reason}");
                self.event(
                    "rejected",
                    "package",
                    json!({ "package": id, "reason": reason }),
                )
                .await;
                false
            }
        }
    }

    /// Waits for a served pipeline to stop on its own — which is always a failure: NATS refused
    /// a publish, or its subscription ended. Pipelines stopped by a change are not reported;
    /// with none served this waits until one is served and stops.
    pub async fn stopped(&mut self) -> (String, HostError) {
        loop {
            let Some(done) = self.tasks.join_next().await else {
                return std::future::pending().await;
            };
            let (name, generation, outcome) = match done {
                Ok(done) => done,
                Err(e) => return ("?".to_owned(), HostError::Worker(e)),
            };
            let current = self
                .served
                .get(&name)
                .is_some_and(|s| s.generation == generation);
            match outcome {
                _ if !current => {
                    if let Err(e) = outcome {
                        tracing::warn!(pipeline = %name, "a replaced subscription ended with: {e}");
                    }
                }
                Err(e) => {
                    self.served.remove(&name);
                    return (name, e);
                }
                Ok(()) => {
                    self.served.remove(&name);
                    let error = HostError::Nats {
                        action: "keep serving",
                        subject: name.clone(),
                        reason: "the subscription ended".to_owned(),
                    };
                    return (name, error);
                }
            }
        }
    }

    /// Stops every pipeline and waits for the batches in hand to finish.
    pub async fn shutdown(mut self) -> Result<(), HostError> {
        for (_, served) in std::mem::take(&mut self.served) {
            served.stop();
        }
        let mut first = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok((_, _, Err(e))) if first.is_ok() => first = Err(e),
                Err(e) if first.is_ok() => first = Err(HostError::Worker(e)),
                _ => {}
            }
        }
        first
    }
}

impl Served {
    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Served {
    // However it ends (removed, replaced, its subscription failed), its feedback service ends.
    fn drop(&mut self) {
        if let Some(feedback) = self.feedback.take() {
            feedback.abort();
        }
    }
}

/// Follows the cluster registry until `shutdown`: fetches and checks every package (already
/// stored, then as deployed) into `package_dir`, and serves every deployed pipeline, applying
/// changes and removals as they come. Also polls `watched` files when given (`serve --watch`).
pub async fn follow(
    live: &mut LiveHost,
    cluster: Option<&ClusterRegistry>,
    package_dir: &Path,
    watched: Option<FileWatch>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HostError> {
    tokio::pin!(shutdown);
    let mut packages = match cluster {
        Some(c) => {
            // Packages first, so pipelines find what they reference.
            // Each is fetched once here, accepted or not; the watch below replays them.
            let mut fetched = HashSet::new();
            for record in c.packages().await.map_err(registry_error)? {
                live.accept_package(c, &record.name, &record.version, package_dir)
                    .await;
                fetched.insert((record.name, record.version));
            }
            Some((c.watch_packages().await.map_err(registry_error)?, fetched))
        }
        None => None,
    };
    let mut pipelines = match cluster {
        Some(c) => Some(c.watch_pipelines().await.map_err(registry_error)?),
        None => None,
    };
    let mut watched = watched;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            Some((name, version)) = async {
                match packages.as_mut() {
                    Some((w, _)) => w.next().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(c) = cluster else { continue };
                // The watch starts with every stored package; skip those fetched at start
                // (a re-deploy of the same version comes later and is fetched again).
                if let Some((_, fetched)) = packages.as_mut()
                    && fetched.remove(&(name.clone(), version.clone()))
                {
                    continue;
                }
                if live.accept_package(c, &name, &version, package_dir).await {
                    live.refresh().await;
                }
            }
            Some(revision) = async {
                match pipelines.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            } => apply_revision(live, revision).await,
            _ = tick.tick(), if watched.is_some() => {
                if let Some(w) = watched.as_mut() {
                    w.poll(live).await;
                }
            }
            (name, e) = live.stopped() => {
                tracing::error!(pipeline = %name, "stopped serving: {e}");
                return Err(e);
            }
        }
    }
}

async fn apply_revision(live: &mut LiveHost, revision: Revision) {
    let origin = Origin::Cluster {
        revision: revision.revision,
    };
    match revision.text {
        Some(text) => {
            let path = PathBuf::from(format!(
                "{}/{}@{}",
                headstream_registry::PIPELINES_BUCKET,
                revision.name,
                revision.revision
            ));
            let _ = live.apply(origin, &text, &path, Some(&revision.name)).await;
        }
        None => live.remove(&revision.name, origin).await,
    }
}

fn registry_error(e: headstream_registry::RegistryError) -> HostError {
    HostError::Registry(e)
}

/// `serve --watch`: pipeline files and package directories polled for changes.
#[derive(Debug)]
pub struct FileWatch {
    files: Vec<PathBuf>,
    /// Last text seen per file, and the pipeline it named.
    seen: HashMap<PathBuf, (String, Option<String>)>,
    registry_dirs: Vec<PathBuf>,
    registry_state: Vec<(PathBuf, Option<SystemTime>)>,
}

impl FileWatch {
    /// Watches `files` (pipeline configs, already being served with the given texts) and the
    /// package directories of `registry_dirs`.
    pub fn new(files: Vec<(PathBuf, String, String)>, registry_dirs: Vec<PathBuf>) -> Self {
        let seen = files
            .iter()
            .map(|(path, text, name)| (path.clone(), (text.clone(), Some(name.clone()))))
            .collect();
        let mut watch = Self {
            files: files.into_iter().map(|(p, _, _)| p).collect(),
            seen,
            registry_state: Vec::new(),
            registry_dirs,
        };
        watch.registry_state = watch.registry_snapshot();
        watch
    }

    fn registry_snapshot(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        let mut state = Vec::new();
        for dir in &self.registry_dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let manifest = entry.path().join(headstream_package::MANIFEST);
                let modified = std::fs::metadata(&manifest).and_then(|m| m.modified()).ok();
                if modified.is_some() {
                    state.push((manifest, modified));
                }
            }
        }
        state.sort();
        state
    }

    async fn poll(&mut self, live: &mut LiveHost) {
        for path in self.files.clone() {
            let text = std::fs::read_to_string(&path).ok();
            let previous = self.seen.get(&path).cloned();
            match (text, previous) {
                (Some(text), Some((old, _))) if text == old => {}
                (Some(text), previous) => {
                    let old_name = previous.and_then(|(_, n)| n);
                    let name = live
                        .apply(Origin::File(path.clone()), &text, &path, None)
                        .await
                        .ok()
                        .or_else(|| old_name.clone());
                    if let Some(old) = old_name.filter(|o| Some(o) != name.as_ref()) {
                        live.remove(&old, Origin::File(path.clone())).await;
                    }
                    self.seen.insert(path, (text, name));
                }
                // Deleted: stop serving what it configured.
                (None, Some((_, name))) => {
                    if let Some(name) = name {
                        live.remove(&name, Origin::File(path.clone())).await;
                    }
                    self.seen.remove(&path);
                }
                (None, None) => {}
            }
        }
        let state = self.registry_snapshot();
        if state != self.registry_state {
            self.registry_state = state;
            live.refresh().await;
        }
    }
}
