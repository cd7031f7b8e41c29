//! Implementations of the subcommands; each takes its parsed arguments.

pub mod bench;
pub mod embed;
pub mod jsonl;
pub mod model;

use anyhow::Context as _;
use headstream_encoder::{BatchLimits, Encoder, EncoderOptions};

/// Where `model fetch` puts the model and where the other commands look for it.
pub const DEFAULT_MODEL_DIR: &str = "models/all-minilm-l6-v2";

/// Loads the encoder from `dir` with the given batch size.
pub fn load_encoder(dir: &std::path::Path, batch_size: usize) -> anyhow::Result<Encoder> {
    let options = EncoderOptions {
        limits: BatchLimits {
            max_batch_size: batch_size,
            ..BatchLimits::default()
        },
        prefer_gpu: true,
    };
    Encoder::load(dir, options)
        .with_context(|| format!("cannot load the encoder from {}", dir.display()))
}
