//! `linear-classifier`: softmax over a linear layer on the sentence embedding, or on the
//! encoder's mean-pooled layers — the head that `headstream train --kind classify` fills with
//! weights.
//!
//! When the weights' safetensors metadata has `pooled_layers` (e.g. `"3,4,5,6"`), the head
//! asks the host for those layers' mean-pooled states and its features are their
//! concatenation, in that order (`train --layers`; the standardisation it was fitted with is
//! folded into the weights); otherwise they are the sentence embedding.
//!
//! Assets: `weights` — safetensors with `weight` (`[labels, width]`, f32) and `bias`
//! (`[labels]`), and optionally a ReLU hidden layer before it, `hidden.weight` (`[width,
//! embedding]`) and `hidden.bias` (`[width]`) — the small MLP head of `train --hidden N`.
//! Config: `labels` (list of strings, required, one per row of `weight`),
//! `threshold` (optional: below this top score the result is `abstain_label`),
//! `abstain_label` (default `"abstain"`).

use headstream_sdk::{
    Assets, Config, ConfigError, Dense, Description, Head, HeadError, Inputs, Item, LayerStates,
    Output, TaskKind, classify,
};

struct LinearClassifier {
    /// Optional ReLU hidden layer (an MLP head from `headstream train --hidden N`).
    hidden: Option<Dense>,
    layer: Dense,
    labels: Vec<String>,
    threshold: Option<f32>,
    abstain_label: String,
    /// Layers whose pooled states are the features; empty: the sentence embedding.
    pooled_layers: Vec<u32>,
}

/// The `pooled_layers` the weights were trained on, from their safetensors metadata.
fn pooled_layers(weights: &[u8]) -> Result<Vec<u32>, ConfigError> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(weights)
        .map_err(|e| ConfigError::BadAsset(format!("weights: {e}")))?;
    let Some(list) = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("pooled_layers"))
    else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(|l| {
            l.trim().parse().map_err(|_| {
                ConfigError::BadAsset(format!(
                    "weights: pooled_layers {list:?} is not a list of layers"
                ))
            })
        })
        .collect()
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
            pooled_layers: pooled_layers(weights)?,
        })
    }

    fn inputs(&self) -> Inputs {
        Inputs {
            pooled_layers: self.pooled_layers.clone(),
            token_layers: Vec::new(),
        }
    }

    fn run_with(
        &self,
        batch: Vec<Item>,
        layers: Vec<LayerStates>,
    ) -> Vec<Result<Output, HeadError>> {
        if self.pooled_layers.is_empty() {
            return self.run(batch);
        }
        batch
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let states = layers.get(i).ok_or_else(|| {
                    HeadError::InvalidInput(format!("no layer states for {}", item.id))
                })?;
                self.answer(&states.pooled.concat())
            })
            .collect()
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        self.answer(&item.embedding)
    }
}

impl LinearClassifier {
    /// The classification of one text's `features`.
    fn answer(&self, features: &[f32]) -> Result<Output, HeadError> {
        let expects = self.hidden.as_ref().unwrap_or(&self.layer).inputs();
        let wrong_size = || {
            HeadError::InvalidInput(format!(
                "features have {} values, the head expects {expects}",
                features.len()
            ))
        };
        let logits = match &self.hidden {
            Some(hidden) => {
                let mut h = hidden.forward(features).ok_or_else(wrong_size)?;
                h.iter_mut().for_each(|v| *v = v.max(0.0));
                self.layer.forward(&h).ok_or_else(wrong_size)?
            }
            None => self.layer.forward(features).ok_or_else(wrong_size)?,
        };
        let mut result = classify(&self.labels, &logits);
        if self.threshold.is_some_and(|t| result.score < t) {
            result.label = self.abstain_label.clone();
        }
        Ok(Output::Classification(result))
    }
}

headstream_sdk::export_head!(LinearClassifier);
