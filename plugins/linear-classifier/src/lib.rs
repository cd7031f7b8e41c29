//! `linear-classifier`: softmax over a linear layer on the sentence embedding — the head that
//! `headstream train --kind classify` fills with weights.
//!
//! Assets: `weights` — safetensors with `weight` (`[labels, hidden]`, f32) and `bias`
//! (`[labels]`). Config: `labels` (list of strings, required, one per row of `weight`),
//! `threshold` (optional: below this top score the result is `abstain_label`),
//! `abstain_label` (default `"abstain"`).

use headstream_sdk::{
    Assets, Config, ConfigError, Dense, Description, Head, HeadError, Item, Output, TaskKind,
    classify,
};

struct LinearClassifier {
    layer: Dense,
    labels: Vec<String>,
    threshold: Option<f32>,
    abstain_label: String,
}

impl Head for LinearClassifier {
    fn describe() -> Description {
        headstream_sdk::describe(
            "linear-classifier",
            env!("CARGO_PKG_VERSION"),
            TaskKind::Classify,
        )
    }

    fn configure(config: Config, assets: Assets) -> Result<Self, ConfigError> {
        let layer = Dense::from_safetensors(assets.require("weights")?, "weight", "bias")?;
        let labels: Vec<String> = config.require("labels")?;
        if labels.len() != layer.outputs() {
            return Err(ConfigError::Invalid(format!(
                "{} labels for a layer with {} outputs",
                labels.len(),
                layer.outputs()
            )));
        }
        let threshold: Option<f32> = config.get("threshold")?;
        if threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(ConfigError::Invalid(
                "`threshold` must be within [0, 1]".into(),
            ));
        }
        let abstain_label = config
            .get("abstain_label")?
            .unwrap_or_else(|| "abstain".to_owned());
        Ok(Self {
            layer,
            labels,
            threshold,
            abstain_label,
        })
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        let logits = self.layer.forward(&item.embedding).ok_or_else(|| {
            HeadError::InvalidInput(format!(
                "embedding has {} values, the head expects {}",
                item.embedding.len(),
                self.layer.inputs()
            ))
        })?;
        let mut result = classify(&self.labels, &logits);
        if self.threshold.is_some_and(|t| result.score < t) {
            result.label = self.abstain_label.clone();
        }
        Ok(Output::Classification(result))
    }
}

headstream_sdk::export_head!(LinearClassifier);
