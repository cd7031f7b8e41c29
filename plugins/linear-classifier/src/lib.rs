//! `linear-classifier`: softmax over a linear layer on the sentence embedding — the head that
//! `headstream train --kind classify` fills with weights.
//!
//! Assets: `weights` — safetensors with `weight` (`[labels, width]`, f32) and `bias`
//! (`[labels]`), and optionally a ReLU hidden layer before it, `hidden.weight` (`[width,
//! embedding]`) and `hidden.bias` (`[width]`) — the small MLP head of `train --hidden N`.
//! Config: `labels` (list of strings, required, one per row of `weight`),
//! `threshold` (optional: below this top score the result is `abstain_label`),
//! `abstain_label` (default `"abstain"`).

use headstream_sdk::{
    Assets, Config, ConfigError, Dense, Description, Head, HeadError, Item, Output, TaskKind,
    classify,
};

struct LinearClassifier {
    /// Optional ReLU hidden layer (an MLP head from `headstream train --hidden N`).
    hidden: Option<Dense>,
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
        let weights = assets.require("weights")?;
        let layer = Dense::from_safetensors(weights, "weight", "bias")?;
        let hidden = match Dense::from_safetensors(weights, "hidden.weight", "hidden.bias") {
            Ok(hidden) if hidden.outputs() == layer.inputs() => Some(hidden),
            Ok(hidden) => {
                return Err(ConfigError::Invalid(format!(
                    "hidden layer has {} units, the output layer expects {}",
                    hidden.outputs(),
                    layer.inputs()
                )));
            }
            Err(_) => None,
        };
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
            hidden,
            layer,
            labels,
            threshold,
            abstain_label,
        })
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        let expects = self.hidden.as_ref().unwrap_or(&self.layer).inputs();
        let wrong_size = || {
            HeadError::InvalidInput(format!(
                "embedding has {} values, the head expects {expects}",
                item.embedding.len()
            ))
        };
        let logits = match &self.hidden {
            Some(hidden) => {
                let mut h = hidden.forward(&item.embedding).ok_or_else(wrong_size)?;
                h.iter_mut().for_each(|v| *v = v.max(0.0));
                self.layer.forward(&h).ok_or_else(wrong_size)?
            }
            None => self.layer.forward(&item.embedding).ok_or_else(wrong_size)?,
        };
        let mut result = classify(&self.labels, &logits);
        if self.threshold.is_some_and(|t| result.score < t) {
            result.label = self.abstain_label.clone();
        }
        Ok(Output::Classification(result))
    }
}

headstream_sdk::export_head!(LinearClassifier);
