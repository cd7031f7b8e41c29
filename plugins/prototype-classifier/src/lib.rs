//! `prototype-classifier`: zero/few-shot classification with no training. Each label is
//! described in config by example sentences (or a description); at configure time the head
//! embeds them with the host's encoder and keeps one unit-length centroid per label. A text's
//! scores are a softmax over its cosine similarity to each centroid.
//!
//! Config: `labels` — object mapping each label to a non-empty list of example texts;
//! `temperature` (default 0.05) — softmax temperature over cosines.

use headstream_sdk::{
    Assets, Config, ConfigError, Description, Head, HeadError, Item, Output, TaskKind, classify,
};

struct Prototypes {
    labels: Vec<String>,
    centroids: Vec<Vec<f32>>,
    temperature: f32,
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

impl Head for Prototypes {
    fn describe() -> Description {
        headstream_sdk::describe(
            "prototype-classifier",
            env!("CARGO_PKG_VERSION"),
            TaskKind::Classify,
        )
    }

    fn configure(config: Config, _assets: Assets) -> Result<Self, ConfigError> {
        let map: serde_json::Map<String, serde_json::Value> = config.require("labels")?;
        if map.len() < 2 {
            return Err(ConfigError::Invalid(
                "`labels` needs at least two labels".into(),
            ));
        }
        let temperature: f32 = config.get("temperature")?.unwrap_or(0.05);
        if !temperature.is_finite() || temperature <= 0.0 {
            return Err(ConfigError::Invalid(
                "`temperature` must be positive".into(),
            ));
        }
        let mut labels = Vec::new();
        let mut centroids = Vec::new();
        for (label, examples) in map {
            let examples: Vec<String> = serde_json::from_value(examples).map_err(|e| {
                ConfigError::Invalid(format!("`labels.{label}` must be a list of strings: {e}"))
            })?;
            if examples.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "`labels.{label}` has no examples"
                )));
            }
            let vectors = headstream_sdk::host::embed(&examples).map_err(|e| {
                ConfigError::Invalid(format!("cannot embed the examples of {label}: {e}"))
            })?;
            let dim = vectors.first().map_or(0, Vec::len);
            let mut centroid = vec![0.0f32; dim];
            for v in &vectors {
                centroid.iter_mut().zip(v).for_each(|(c, x)| *c += x);
            }
            normalise(&mut centroid);
            labels.push(label);
            centroids.push(centroid);
        }
        Ok(Self {
            labels,
            centroids,
            temperature,
        })
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        let dim = self.centroids.first().map_or(0, Vec::len);
        if item.embedding.len() != dim {
            return Err(HeadError::InvalidInput(format!(
                "embedding has {} values, the prototypes have {dim}",
                item.embedding.len()
            )));
        }
        let logits: Vec<f32> = self
            .centroids
            .iter()
            .map(|c| {
                c.iter()
                    .zip(&item.embedding)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    / self.temperature
            })
            .collect();
        Ok(Output::Classification(classify(&self.labels, &logits)))
    }
}

headstream_sdk::export_head!(Prototypes);
