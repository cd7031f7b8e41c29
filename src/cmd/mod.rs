//! Implementations of the subcommands; each takes its parsed arguments.

pub mod bench;
pub mod bench_heads;
pub mod bench_pipeline;
pub mod dashboard;
pub mod deploy;
pub mod diff;
pub mod doctor;
pub mod embed;
pub mod gateway;
pub mod jsonl;
pub mod logs;
pub mod model;
pub mod new_head;
pub mod package;
pub mod quality;
pub mod replay;
pub mod run;
pub mod serve;
pub mod train;

use anyhow::Context as _;
use headstream_encoder::{Backend, BatchLimits, Encoder, EncoderOptions, Precision};
use headstream_fetch::{ModelLocation, ModelSource};

use crate::cli::ModelArgs;

/// Loads the encoder that `model` selects (see [`ModelArgs::locate`]) at `precision` with the
/// given batch size; `$HEADSTREAM_ENCODER_BACKEND` (`auto`, `packed`, `candle`) picks the forward
/// pass.
pub fn load_encoder(
    model: &ModelArgs,
    precision: Precision,
    batch_size: usize,
) -> anyhow::Result<Encoder> {
    load_encoder_at(&model.locate(None)?, precision, batch_size)
}

/// The command that puts the model where `location` looks for it.
pub fn fetch_command(location: &ModelLocation) -> String {
    match location.source {
        ModelSource::Store => "headstream model fetch".to_owned(),
        _ => format!("headstream model fetch --dir {}", location.dir.display()),
    }
}

/// [`load_encoder`] from an already chosen location; errors say where it came from.
pub fn load_encoder_at(
    location: &ModelLocation,
    precision: Precision,
    batch_size: usize,
) -> anyhow::Result<Encoder> {
    let backend = match std::env::var("HEADSTREAM_ENCODER_BACKEND") {
        Ok(value) => value
            .parse()
            .map_err(|e| anyhow::anyhow!("HEADSTREAM_ENCODER_BACKEND: {e}"))?,
        Err(_) => Backend::Auto,
    };
    let options = EncoderOptions {
        limits: BatchLimits {
            max_batch_size: batch_size,
            ..BatchLimits::default()
        },
        // The int8 path is the packed CPU one.
        prefer_gpu: precision == Precision::F32,
        backend,
        precision,
    };
    if !location.dir.is_dir() {
        let fetch = fetch_command(location);
        anyhow::bail!(
            "no model at {} ({}): run `{fetch}`, or pass --model DIR",
            location.dir.display(),
            location.source
        );
    }
    Encoder::load(&location.dir, options).with_context(|| {
        format!(
            "cannot load the encoder from {} ({})",
            location.dir.display(),
            location.source
        )
    })
}

/// Median of `xs` (sorts in place); the mean of the middle two for an even count, 0 if empty.
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[mid],
        _ => (xs[mid - 1] + xs[mid]) / 2.0,
    }
}

/// The `p`-quantile (0..=1) of ascending `sorted` values, nearest rank; `None` if empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(last))
        .copied()
}

/// `x` rounded to `digits` decimal places, for printed figures.
pub fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// `<cache>/<what>` in the per-user cache directory (`$HEADSTREAM_CACHE`, else
/// `~/.cache/headstream` on Linux); `None` (no caching, said once in the log) where there is
/// no home directory: never the working directory.
pub fn cache_dir(what: &str) -> Option<std::path::PathBuf> {
    match headstream_dirs::cache_dir() {
        Ok(dir) => Some(dir.join(what)),
        Err(e) => {
            tracing::warn!("{e}; caching nothing");
            None
        }
    }
}
