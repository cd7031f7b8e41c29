//! Pipeline configs: which task heads run over a stream of texts, in what order, and where
//! results and errors go.
//!
//! A pipeline is a TOML file (see `pipelines/` for examples). [`Pipeline::load`] parses it with
//! unknown keys rejected, validates it (version, names, subjects, head references, no cycles
//! among heads that consume other heads' outputs), resolves component and asset paths relative
//! to the file, and orders the heads so every head runs after the heads it consumes. Every error
//! names the file, line, column and key ([`PipelineError`]).
//!
//! ```no_run
//! let pipeline = headstream_pipeline::Pipeline::load("pipelines/support-triage.toml".as_ref())?;
//! for head in pipeline.heads() {
//!     println!("{} <- {:?}", head.name, head.component.as_ref().or(head.package.as_ref()));
//! }
//! # Ok::<(), headstream_pipeline::PipelineError>(())
//! ```
#![deny(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The only config format version this release reads.
pub const VERSION: u32 = 1;

/// A config error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {key}: {message}", file.display())]
pub struct PipelineError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The key at fault, as a path (`heads[1].after`), or `toml` for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// `[input]`: where messages come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// NATS subject the pipeline reads (`subject = "support.in"`).
    pub subject: Spanned<String>,
    /// Largest message body accepted, in bytes (`max_message_bytes`, default 1 MiB); larger
    /// ones go to the error subject as `too_large`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Longest `text` accepted, in bytes of UTF-8 (`max_text_bytes`, default 64 KiB; the
    /// encoder reads at most 256 tokens of it); longer ones go to the error subject as
    /// `text_too_long`.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
}

fn default_confirm() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

fn default_max_message_bytes() -> usize {
    1 << 20
}
fn default_max_text_bytes() -> usize {
    64 << 10
}

/// `[output]`: where results and error records go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Subject for results (`subject = "support.out"`).
    pub subject: Spanned<String>,
    /// Subject for error records: unusable messages and their payloads (`errors = "..."`).
    pub errors: Spanned<String>,
    /// Publish results and error records through JetStream and acknowledge an input message
    /// only once the stream capturing them has stored them (`confirm = true`; needs
    /// `delivery.mode = "jetstream"` and a stream over both subjects). Without it they are
    /// core publishes: delivered to subscribers, but a stream without a leader at that moment
    /// would miss them.
    #[serde(default = "default_confirm")]
    pub confirm: Spanned<bool>,
}

/// `[delivery]`: how messages are consumed from NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// `core` (at-most-once, queue group) or `jetstream` (at-least-once, durable consumer).
    #[serde(default = "default_mode")]
    pub mode: Spanned<String>,
    /// Queue group shared by the hosts serving this pipeline (`core`); defaults to the name.
    pub queue_group: Option<String>,
    /// JetStream stream name (`jetstream`).
    pub stream: Option<String>,
    /// JetStream durable consumer name (`jetstream`).
    pub consumer: Option<String>,
    /// Deliveries before a message goes to the error subject (`jetstream`).
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Milliseconds before an unacknowledged message is redelivered (`jetstream`).
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Copies of the stream a NATS cluster keeps (`jetstream`; 1, or 3 to survive a node).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            mode: default_mode(),
            queue_group: None,
            stream: None,
            consumer: None,
            max_deliver: default_max_deliver(),
            ack_wait_ms: default_ack_wait_ms(),
            replicas: default_replicas(),
        }
    }
}

fn default_mode() -> Spanned<String> {
    Spanned::new(0..0, "core".to_owned())
}
fn default_max_deliver() -> u32 {
    5
}
fn default_ack_wait_ms() -> u64 {
    30_000
}
fn default_replicas() -> u32 {
    1
}

/// `[embeddings]`: what the host keeps of this pipeline's encodings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embeddings {
    /// Keep each message's pooled embedding in the host's embedding store (`store = true`;
    /// bucket and limits in the host config's `[embeddings]`), so history can be re-scored
    /// by heads alone.
    #[serde(default)]
    pub store: bool,
}

/// `[quality]`: what the host keeps to tell whether the pipeline's heads are right.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quality {
    /// Keep a compact record of each result's classifications (`record = true`), and take
    /// feedback labels for them on `headstream.feedback.<pipeline>`.
    #[serde(default)]
    pub record: bool,
}

/// `[embeddings]` in the host config: where and how much the embedding store keeps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// JetStream key-value bucket (`bucket`, default `HEADSTREAM_EMBEDDINGS`).
    pub bucket: Option<String>,
    /// Most megabytes the bucket keeps, the oldest going first (`max_mb`, default 1024).
    pub max_mb: Option<u64>,
    /// Hours a vector is kept (`max_age_hours`, default 168).
    pub max_age_hours: Option<f64>,
}

/// `[batching]`: how messages are grouped before encoding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Most messages per batch (`max_batch_size`, 1 to 1024; default 32).
    #[serde(default = "default_batch")]
    pub max_batch_size: Spanned<u32>,
    /// Longest wait in milliseconds to fill a batch (`max_wait_ms`, default 5).
    #[serde(default = "default_wait")]
    pub max_wait_ms: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_batch_size: default_batch(),
            max_wait_ms: default_wait(),
        }
    }
}

fn default_batch() -> Spanned<u32> {
    Spanned::new(0..0, 32)
}
fn default_wait() -> u64 {
    5
}

/// `[heads.limits]`: a head's resource limits (defaults from the plugin host).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory cap in MiB (`memory_mb`).
    pub memory_mb: Option<u32>,
    /// CPU deadline per batch in milliseconds (`deadline_ms`).
    pub deadline_ms: Option<u64>,
    /// Largest output per text in KiB (`max_output_kb`).
    pub max_output_kb: Option<u32>,
    /// Deadline for instantiating, describing and configuring the head, host time in `embed`
    /// included, in milliseconds (`setup_deadline_ms`).
    pub setup_deadline_ms: Option<u64>,
    /// Texts the head may embed (host `embed`) over one configure (`embed_texts`).
    pub embed_texts: Option<u32>,
    /// Encoder tokens the head may use over one configure (`embed_tokens`).
    pub embed_tokens: Option<u32>,
    /// Texts in one `embed` call (`embed_texts_per_call`).
    pub embed_texts_per_call: Option<u32>,
    /// Encoder tokens for one `embed` call (`embed_tokens_per_call`).
    pub embed_tokens_per_call: Option<u32>,
    /// Bytes of one text given to `embed` (`embed_text_bytes`).
    pub embed_text_bytes: Option<u32>,
    /// Longest log line kept, in bytes (`log_line_bytes`).
    pub log_line_bytes: Option<u32>,
    /// Log lines the head may write at once (`log_burst`).
    pub log_burst: Option<u32>,
    /// Log lines a second the head may write in the long run (`log_lines_per_s`).
    pub log_lines_per_s: Option<u32>,
}

/// One `[[heads]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The head's name in this pipeline; results are keyed by it (`name`).
    pub name: Spanned<String>,
    /// Path of a plugin component, relative to the pipeline file (`component`); absolute
    /// after [`Pipeline::load`]. A head names exactly one of `component`, `package`, `plugin`
    /// and `builtin`.
    #[serde(default, deserialize_with = "optional_path")]
    pub component: Option<PathBuf>,
    /// Path of a plugin package directory as `headstream train` writes it (component, weights,
    /// manifest), relative to the pipeline file (`package`); absolute after [`Pipeline::load`].
    #[serde(default, deserialize_with = "optional_path")]
    pub package: Option<PathBuf>,
    /// A package by registry reference (`plugin = "sentiment@^1"`): a name and a semver
    /// requirement (`name@1.2.0` pins a version; a bare `name` takes the newest), resolved
    /// against the host's registry when the pipeline is loaded.
    pub plugin: Option<Spanned<String>>,
    /// A component that ships inside the headstream binary (`builtin = "keyword-flags"`), by
    /// name; see `headstream plugins ls` and [`headstream_components::ALL`].
    pub builtin: Option<Spanned<String>>,
    /// Required sha256 of the component (`sha256`), if pinned.
    pub sha256: Option<String>,
    /// Settings passed to the head's `configure`, as a JSON object (`[heads.config]`).
    #[serde(default, deserialize_with = "table_to_json")]
    pub config: serde_json::Value,
    /// Named asset files, relative to the pipeline file (`[heads.assets]`); absolute after load.
    #[serde(default)]
    pub assets: BTreeMap<String, PathBuf>,
    /// Heads whose outputs this head consumes; it runs after them (`after = ["topic"]`).
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
    /// Resource limits (`[heads.limits]`).
    #[serde(default)]
    pub limits: Limits,
    /// Send a share of messages to another version of a `plugin` head (`[heads.canary]`).
    pub canary: Option<Canary>,
    /// Run another version of a `plugin` head beside it on every message, publishing its
    /// outputs to a subject without touching results (`[heads.shadow]`).
    pub shadow: Option<Shadow>,
}

/// `[heads.canary]`: `percent` of messages (chosen by message id, so a redelivery takes the
/// same path) are served by `plugin` instead of the head's own reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The candidate version, a registry reference (`plugin = "sentiment@2.0.0"`).
    pub plugin: Spanned<String>,
    /// Share of messages it serves, 0 to 100 (`percent`).
    pub percent: Spanned<f64>,
}

/// `[heads.shadow]`: `plugin` runs on every message after the live head; each pair of outputs
/// goes to `subject` with whether they agree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// The candidate version, a registry reference (`plugin = "sentiment@2.0.0"`).
    pub plugin: Spanned<String>,
    /// Where the paired outputs go (`subject`).
    pub subject: Spanned<String>,
}

impl Head {
    /// Every registry reference the head names: its `plugin`, then its canary's and shadow's.
    pub fn references(&self) -> impl Iterator<Item = &Spanned<String>> {
        self.plugin
            .iter()
            .chain(self.canary.iter().map(|c| &c.plugin))
            .chain(self.shadow.iter().map(|s| &s.plugin))
    }
}

fn optional_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    String::deserialize(d).map(|s| Some(PathBuf::from(s)))
}

fn table_to_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    let table = toml::Table::deserialize(d)?;
    serde_json::to_value(table).map_err(serde::de::Error::custom)
}

/// One `[[routes]]` entry: when `when` (a CEL expression over the result record: `results`,
/// `errors`, `meta`, `id`, `text`) is true for a result, it is also published to `subject`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The route's name; results list the routes they took (`name`).
    pub name: Spanned<String>,
    /// The condition, in CEL (`when = 'results.sentiment.label == "negative"'`).
    pub when: Spanned<String>,
    /// Where matching results go (`subject`).
    pub subject: Spanned<String>,
}

/// Compiles a route condition; the error names the position inside the expression.
pub fn compile_condition(source: &str) -> Result<cel::Program, ConditionError> {
    cel::Program::compile(source).map_err(|errors| ConditionError {
        errors: errors
            .errors
            .iter()
            .map(|e| format!("{}:{}: {}", e.pos.0, e.pos.1, e.msg))
            .collect(),
    })
}

/// A route condition that does not compile as CEL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", errors.join("; "))]
pub struct ConditionError {
    /// Each error, as `line:column: message` within the condition.
    pub errors: Vec<String>,
}

/// A malformed `plugin = "name@requirement"` reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The name part is empty or has characters other than letters, digits, `-`, `_`, `.`.
    #[error("{0:?} is not a reference like \"sentiment@^1.2\"")]
    Name(String),
    /// A `sha256:` pin that is not 12 to 64 hex digits.
    #[error("{0:?}: a digest pin is `sha256:` and 12 to 64 hex digits")]
    Digest(String),
    /// A version requirement semver does not accept.
    #[error("{reference:?}: bad version requirement ({reason})")]
    Requirement {
        /// The whole reference.
        reference: String,
        /// semver's reason.
        reason: String,
    },
}

/// Why a pipeline cannot go to the cluster registry: a head names a local file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "head {head:?} names a local file; a deployed pipeline names heads by registry reference (plugin = \"name@version\", after `headstream deploy plugin`) or builtin (builtin = \"keyword-flags\")"
)]
pub struct NotDeployable {
    /// The head's name.
    pub head: String,
}

/// A validated pipeline with its heads in run order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Config format version (`version = 1`).
    pub version: Spanned<u32>,
    /// Pipeline name; results carry it (`name`).
    pub name: Spanned<String>,
    /// `[input]`.
    pub input: Input,
    /// `[output]`.
    pub output: Output,
    /// `[delivery]`.
    #[serde(default)]
    pub delivery: Delivery,
    /// `[batching]`.
    #[serde(default)]
    pub batching: Batching,
    /// `[embeddings]`.
    #[serde(default)]
    pub embeddings: Embeddings,
    /// `[quality]`.
    #[serde(default)]
    pub quality: Quality,
    /// `[[heads]]`, reordered by [`Pipeline::load`] so each head follows the heads it consumes.
    heads: Vec<Head>,
    /// `[[routes]]`: extra subjects a result is published to when a condition holds.
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl Pipeline {
    /// Reads, validates and resolves the pipeline file at `path`.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        Self::parse(&read_file(path)?, path)
    }

    /// Parses and validates pipeline `text` as if read from `path` (paths resolve against its
    /// directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, PipelineError> {
        let source = Source { text, path };
        let at = |span, key: &str, message| source.at(span, key, message);
        let mut pipeline: Pipeline = source.deserialize()?;
        source.check_version(&pipeline.version)?;
        check_name(&pipeline.name, "name").map_err(|m| at(pipeline.name.span(), "name", m))?;
        let route_keys: Vec<String> = (0..pipeline.routes.len())
            .map(|i| format!("routes[{i}].subject"))
            .collect();
        let shadow_keys: Vec<(String, &Spanned<String>)> = pipeline
            .heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                h.shadow
                    .as_ref()
                    .map(|s| (format!("heads[{i}].shadow.subject"), &s.subject))
            })
            .collect();
        let subjects = [
            ("input.subject", &pipeline.input.subject),
            ("output.subject", &pipeline.output.subject),
            ("output.errors", &pipeline.output.errors),
        ]
        .into_iter()
        .chain(
            route_keys
                .iter()
                .map(String::as_str)
                .zip(pipeline.routes.iter().map(|r| &r.subject)),
        )
        .chain(shadow_keys.iter().map(|(k, s)| (k.as_str(), *s)));
        for (key, subject) in subjects {
            let s = subject.get_ref();
            let wildcard_ok = key == "input.subject";
            let bad = s.is_empty()
                || s.contains(char::is_whitespace)
                || s.split('.').any(str::is_empty)
                || (!wildcard_ok && (s.contains('*') || s.contains('>')));
            if bad {
                return Err(at(
                    subject.span(),
                    key,
                    format!("{s:?} is not a valid NATS subject"),
                ));
            }
        }
        let mode = pipeline.delivery.mode.get_ref().as_str();
        if mode != "core" && mode != "jetstream" {
            return Err(at(
                pipeline.delivery.mode.span(),
                "delivery.mode",
                format!("{mode:?} is not `core` or `jetstream`"),
            ));
        }
        if *pipeline.output.confirm.get_ref() && mode != "jetstream" {
            return Err(at(
                pipeline.output.confirm.span(),
                "output.confirm",
                "needs `delivery.mode = \"jetstream\"` (core delivery has nothing to hold back)"
                    .to_owned(),
            ));
        }
        if !(1..=5).contains(&pipeline.delivery.replicas) {
            return Err(at(
                0..0,
                "delivery.replicas",
                format!("{} is outside 1..=5", pipeline.delivery.replicas),
            ));
        }
        let batch = *pipeline.batching.max_batch_size.get_ref();
        if !(1..=1024).contains(&batch) {
            return Err(at(
                pipeline.batching.max_batch_size.span(),
                "batching.max_batch_size",
                format!("{batch} is outside 1..=1024"),
            ));
        }
        if pipeline.heads.is_empty() {
            return Err(at(
                0..0,
                "heads",
                "a pipeline needs at least one [[heads]] entry".into(),
            ));
        }

        let mut index = HashMap::new();
        for (i, head) in pipeline.heads.iter().enumerate() {
            let key = format!("heads[{i}].name");
            check_name(&head.name, &key).map_err(|m| at(head.name.span(), &key, m))?;
            if index.insert(head.name.get_ref().clone(), i).is_some() {
                return Err(at(
                    head.name.span(),
                    &key,
                    format!("duplicate head name {:?}", head.name.get_ref()),
                ));
            }
        }
        for (i, head) in pipeline.heads.iter().enumerate() {
            let key = format!("heads[{i}]");
            let sources = [
                head.component.is_some(),
                head.package.is_some(),
                head.plugin.is_some(),
                head.builtin.is_some(),
            ];
            if let Some(builtin) = &head.builtin
                && headstream_components::get(builtin.get_ref()).is_none()
            {
                return Err(at(
                    builtin.span(),
                    &format!("{key}.builtin"),
                    format!(
                        "no builtin component {:?}; this binary ships {}",
                        builtin.get_ref(),
                        headstream_components::names().join(", ")
                    ),
                ));
            }
            if let Some(reference) = &head.plugin {
                parse_reference(reference.get_ref())
                    .map_err(|m| at(reference.span(), &format!("{key}.plugin"), m.to_string()))?;
            }
            match sources.iter().filter(|s| **s).count() {
                0 => {
                    return Err(at(
                        head.name.span(),
                        &key,
                        "a head needs `component` (a .wasm file), `package` (a trained package directory), `plugin` (a registry reference, name@version) or `builtin` (a component shipped in the binary)".into(),
                    ));
                }
                1 => {}
                _ => {
                    return Err(at(
                        head.name.span(),
                        &key,
                        "`component`, `package`, `plugin` and `builtin` are exclusive; name one"
                            .into(),
                    ));
                }
            }
            let candidates = [
                head.canary.as_ref().map(|c| ("canary", &c.plugin)),
                head.shadow.as_ref().map(|s| ("shadow", &s.plugin)),
            ];
            for (what, reference) in candidates.into_iter().flatten() {
                let key = format!("{key}.{what}.plugin");
                if head.plugin.is_none() {
                    return Err(at(
                        reference.span(),
                        &key,
                        format!(
                            "a {what} is another version of a registry head: the head needs `plugin = \"name@version\"`"
                        ),
                    ));
                }
                parse_reference(reference.get_ref())
                    .map_err(|m| at(reference.span(), &key, m.to_string()))?;
            }
            if let Some(canary) = &head.canary {
                let percent = *canary.percent.get_ref();
                if !(0.0..=100.0).contains(&percent) {
                    return Err(at(
                        canary.percent.span(),
                        &format!("{key}.canary.percent"),
                        format!("{percent} is outside 0..=100"),
                    ));
                }
            }
            match (&head.component, &head.package) {
                (None, Some(_)) if !head.assets.is_empty() => {
                    return Err(at(
                        head.name.span(),
                        &format!("{key}.assets"),
                        "a package brings its own assets; `assets` go with `component`".into(),
                    ));
                }
                _ => {}
            }
        }
        for (i, head) in pipeline.heads.iter().enumerate() {
            for dep in &head.after {
                let key = format!("heads[{i}].after");
                match index.get(dep.get_ref()) {
                    None => {
                        return Err(at(
                            dep.span(),
                            &key,
                            format!("unknown head {:?}", dep.get_ref()),
                        ));
                    }
                    Some(&j) if j == i => {
                        return Err(at(
                            dep.span(),
                            &key,
                            format!("head {:?} cannot consume itself", dep.get_ref()),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        let mut route_names = std::collections::HashSet::new();
        for (i, route) in pipeline.routes.iter().enumerate() {
            let key = format!("routes[{i}].name");
            check_name(&route.name, &key).map_err(|m| at(route.name.span(), &key, m))?;
            if !route_names.insert(route.name.get_ref().clone()) {
                return Err(at(
                    route.name.span(),
                    &key,
                    format!("duplicate route name {:?}", route.name.get_ref()),
                ));
            }
            compile_condition(route.when.get_ref()).map_err(|m| {
                at(
                    route.when.span(),
                    &format!("routes[{i}].when"),
                    format!("not a valid CEL expression: {m}"),
                )
            })?;
        }
        let order = topological_order(&pipeline.heads, &index).map_err(|(i, cycle)| {
            let head = &pipeline.heads[i];
            let span = head.after.first().map_or(head.name.span(), Spanned::span);
            at(
                span,
                &format!("heads[{i}].after"),
                format!("heads form a cycle: {}", cycle.join(" -> ")),
            )
        })?;

        let dir = path.parent().unwrap_or(Path::new("."));
        let mut heads: Vec<Option<Head>> = std::mem::take(&mut pipeline.heads)
            .into_iter()
            .map(Some)
            .collect();
        for i in order {
            if let Some(mut head) = heads[i].take() {
                head.component = head.component.map(|c| dir.join(c));
                head.package = head.package.map(|p| dir.join(p));
                for asset in head.assets.values_mut() {
                    *asset = dir.join(&*asset);
                }
                if !head.config.is_object() {
                    head.config = serde_json::Value::Object(serde_json::Map::new());
                }
                pipeline.heads.push(head);
            }
        }
        Ok(pipeline)
    }

    /// The heads in run order: each after every head it consumes, otherwise in file order.
    pub fn heads(&self) -> &[Head] {
        &self.heads
    }

    /// Checks that the pipeline can be deployed to the cluster registry: every head is a
    /// registry reference (`plugin = "name@version"`) or a builtin (in every host's binary),
    /// since local paths mean nothing on other hosts.
    pub fn check_deployable(&self) -> Result<(), NotDeployable> {
        match self
            .heads
            .iter()
            .find(|h| h.plugin.is_none() && h.builtin.is_none())
        {
            Some(head) => Err(NotDeployable {
                head: head.name.get_ref().clone(),
            }),
            None => Ok(()),
        }
    }
}

/// What a registry reference asks for: a semver requirement, or one exact build by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The newest version meeting the requirement (`name@^1.2`, `name@1.2.0`, bare `name`).
    Version(semver::VersionReq),
    /// The package whose component sha256 starts with this lower-case hex prefix
    /// (`name@sha256:9f2c…`, at least 12 hex digits).
    Digest(String),
}

impl Requirement {
    /// Whether a package of `version` whose component digest is `sha256` meets it. Resolvers
    /// take the newest version that does.
    pub fn matches(&self, version: &semver::Version, sha256: &str) -> bool {
        match self {
            Self::Version(req) => req.matches(version),
            Self::Digest(prefix) => sha256.starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Version(req) => write!(f, "{req}"),
            Self::Digest(hex) => write!(f, "sha256:{hex}"),
        }
    }
}

/// Splits a registry reference `name@requirement` (a bare `name` accepts any version;
/// `name@sha256:<hex>` pins a digest) into the name and what it requires.
pub fn parse_reference(reference: &str) -> Result<(String, Requirement), ReferenceError> {
    let (name, req) = reference.split_once('@').unwrap_or((reference, "*"));
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(ReferenceError::Name(reference.to_owned()));
    }
    if let Some(hex) = req.strip_prefix("sha256:") {
        let ok = (12..=64).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit());
        if !ok {
            return Err(ReferenceError::Digest(reference.to_owned()));
        }
        return Ok((
            name.to_owned(),
            Requirement::Digest(hex.to_ascii_lowercase()),
        ));
    }
    // A plain version pins it exactly (`1.2.0` means `=1.2.0`, not semver's `^1.2.0`).
    let req = if semver::Version::parse(req).is_ok() {
        format!("={req}")
    } else {
        req.to_owned()
    };
    semver::VersionReq::parse(&req)
        .map(|r| (name.to_owned(), Requirement::Version(r)))
        .map_err(|e| ReferenceError::Requirement {
            reference: reference.to_owned(),
            reason: e.to_string(),
        })
}

fn check_name(name: &Spanned<String>, key: &str) -> Result<(), String> {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{n:?} is not a valid {key} (ASCII letters, digits, '-', '_', '.'; 1-64 chars)"
        ))
    }
}

/// Kahn's algorithm, stable in file order. On a cycle, returns a head on it and the cycle.
fn topological_order(
    heads: &[Head],
    index: &HashMap<String, usize>,
) -> Result<Vec<usize>, (usize, Vec<String>)> {
    let deps: Vec<Vec<usize>> = heads
        .iter()
        .map(|h| {
            h.after
                .iter()
                .filter_map(|d| index.get(d.get_ref()).copied())
                .collect()
        })
        .collect();
    let mut done = vec![false; heads.len()];
    let mut order = Vec::with_capacity(heads.len());
    while order.len() < heads.len() {
        let next = (0..heads.len()).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
        match next {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => {
                // Walk unfinished dependencies from any unfinished head until one repeats.
                let mut path = Vec::new();
                let mut at = (0..heads.len()).find(|&i| !done[i]).unwrap_or(0);
                while !path.contains(&at) {
                    path.push(at);
                    at = deps[at].iter().copied().find(|&d| !done[d]).unwrap_or(at);
                }
                let start = path.iter().position(|&p| p == at).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..]
                    .iter()
                    .map(|&i| heads[i].name.get_ref().clone())
                    .collect();
                cycle.push(heads[at].name.get_ref().clone());
                return Err((at, cycle));
            }
        }
    }
    Ok(order)
}

fn read_file(path: &Path) -> Result<String, PipelineError> {
    std::fs::read_to_string(path).map_err(|e| PipelineError {
        file: path.to_owned(),
        line: 1,
        column: 1,
        key: "file".into(),
        message: format!("cannot read: {e}"),
    })
}

/// A config file's text, for locating errors in it.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    /// An error at byte `span` of the file, for `key`.
    fn at(&self, span: std::ops::Range<usize>, key: &str, message: String) -> PipelineError {
        let (line, column) = line_col(self.text, span.start);
        PipelineError {
            file: self.path.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message,
        }
    }

    /// Deserializes the whole file; TOML and schema errors name the key when one is known.
    fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, PipelineError> {
        toml::from_str(self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim();
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next());
            let key = missing
                .or_else(|| self.text.get(span.clone()).filter(|k| is_bare_key(k)))
                .unwrap_or("toml")
                .to_owned();
            self.at(span, &key, message.to_owned())
        })
    }

    fn check_version(&self, version: &Spanned<u32>) -> Result<(), PipelineError> {
        if *version.get_ref() == VERSION {
            return Ok(());
        }
        let message = format!(
            "unsupported version {} (this headstream reads version {VERSION})",
            version.get_ref()
        );
        Err(self.at(version.span(), "version", message))
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn is_bare_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The host config file (`headstream.toml`): which pipelines a host serves and how it reaches
/// NATS. Paths are relative to the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    /// Config format version (`version = 1`).
    pub version: Spanned<u32>,
    /// Pipeline files to serve (`pipelines = ["pipelines/a.toml", ...]`); absolute after load.
    /// May be empty (a host serving only deployed pipelines, or a config used for its `[nats]`
    /// settings by `publish`, `request` and `deploy`).
    #[serde(default)]
    pub pipelines: Vec<Spanned<PathBuf>>,
    /// `[nats]`: the connection.
    #[serde(default)]
    pub nats: NatsSettings,
    /// Address to serve Prometheus metrics on (`metrics = "127.0.0.1:9464"`); none by default.
    pub metrics: Option<Spanned<String>>,
    /// Model directory (`model = "models/all-minilm-l6-v2"`), relative to this file; the CLI's
    /// `--model` or `$HEADSTREAM_MODEL` win.
    pub model: Option<PathBuf>,
    /// Directories of plugin packages that `plugin = "name@version"` references resolve
    /// against (`registry = ["heads"]`), relative to this file.
    #[serde(default)]
    pub registry: Vec<PathBuf>,
    /// Arithmetic of the encoder's dense layers (`precision = "int8"`; default `"f32"`); the
    /// CLI's `--precision` wins.
    pub precision: Option<Spanned<String>>,
    /// Seconds a host takes to finish in-flight batches after SIGTERM before it exits anyway
    /// (`shutdown_timeout = 5`); the CLI's `--shutdown-timeout` wins.
    pub shutdown_timeout: Option<Spanned<f64>>,
    /// `[embeddings]`: the embedding store's bucket and limits.
    #[serde(default)]
    pub embeddings: StoreSettings,
    /// OTLP/HTTP collector to export traces to (`otlp_endpoint = "http://127.0.0.1:4318"`);
    /// none by default. The CLI's `--otlp-endpoint` wins.
    pub otlp_endpoint: Option<String>,
}

/// `[nats]` in the host config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL (`url = "nats://127.0.0.1:4222"`); the CLI's `--nats` wins.
    pub url: Option<String>,
    /// Credentials file for NATS authentication (`credentials = "host.creds"`).
    pub credentials: Option<PathBuf>,
    /// User name for user/password authentication (`user`); the password is read from the
    /// environment variable named by `password_env`, never from this file.
    pub user: Option<String>,
    /// Environment variable holding the password (`password_env = "NATS_PASSWORD"`).
    pub password_env: Option<String>,
    /// Environment variable holding an authentication token (`token_env = "NATS_TOKEN"`).
    pub token_env: Option<String>,
    /// Environment variable holding an NKey seed (`nkey_seed_env = "NATS_NKEY_SEED"`, a
    /// `SU...` user seed); the host signs the server's challenge with it.
    pub nkey_seed_env: Option<String>,
    /// CA certificate (PEM) to verify the server with (`tls_ca`); enables TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (`tls_cert`, with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS (`tls_key`).
    pub tls_key: Option<PathBuf>,
}

impl HostFile {
    /// Reads and validates the host config at `path`; every listed pipeline file must exist.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = read_file(path)?;
        let source = Source { text: &text, path };
        let at = |span, key: &str, message| source.at(span, key, message);
        let mut host: HostFile = source.deserialize()?;
        source.check_version(&host.version)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for (i, pipeline) in host.pipelines.iter_mut().enumerate() {
            let resolved = dir.join(pipeline.get_ref());
            if !resolved.is_file() {
                return Err(at(
                    pipeline.span(),
                    &format!("pipelines[{i}]"),
                    format!("{} does not exist", resolved.display()),
                ));
            }
            *pipeline.get_mut() = resolved;
        }
        let nats = &mut host.nats;
        for file in [
            &mut nats.credentials,
            &mut nats.tls_ca,
            &mut nats.tls_cert,
            &mut nats.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            *file = dir.join(&*file);
        }
        if nats.tls_cert.is_some() != nats.tls_key.is_some() {
            return Err(at(
                0..0,
                "nats.tls_cert",
                "`tls_cert` and `tls_key` go together".into(),
            ));
        }
        if let Some(model) = host.model.as_mut() {
            *model = dir.join(&*model);
        }
        for registry in &mut host.registry {
            *registry = dir.join(&*registry);
        }
        if let Some(timeout) = &host.shutdown_timeout
            && !(timeout.get_ref().is_finite() && *timeout.get_ref() >= 0.0)
        {
            return Err(at(
                timeout.span(),
                "shutdown_timeout",
                format!(
                    "{} is not a number of seconds (0 or more)",
                    timeout.get_ref()
                ),
            ));
        }
        if let Some(precision) = &host.precision
            && !matches!(precision.get_ref().as_str(), "f32" | "int8")
        {
            return Err(at(
                precision.span(),
                "precision",
                format!("{:?} is not \"f32\" or \"int8\"", precision.get_ref()),
            ));
        }
        if let Some(addr) = &host.metrics
            && addr.get_ref().parse::<std::net::SocketAddr>().is_err()
        {
            return Err(at(
                addr.span(),
                "metrics",
                format!(
                    "{:?} is not an address like \"127.0.0.1:9464\"",
                    addr.get_ref()
                ),
            ));
        }
        Ok(host)
    }
}
