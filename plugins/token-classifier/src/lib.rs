//! `token-classifier`: per-token softmax over BIO/IOB2 tags on the encoder's token states,
//! decoded into entity spans with byte offsets — the head that `headstream train --kind tokens`
//! fills with weights.
//!
//! Assets: `weights` — safetensors with `weight` (`[tags, width]`, f32) and `bias` (`[tags]`).
//! Config: `tags` — the tag names, one per row (e.g. `["O", "B-PER", "I-PER", ...]`);
//! `window` (0 or 1, default 0) — also feed the states of the pieces before and after;
//! `shape` (default false) — also feed four word-shape features (initial capital, all capitals,
//! digit, first word), which an uncased encoder cannot see; `layers` (default: none, the last
//! layer's token states) — the encoder layers whose per-token states are concatenated for each
//! piece, asked of the host (at most 4); `decode` (`"greedy"`, the default, or `"viterbi"`) —
//! each word's most probable tag, or the best valid BIO path over the sentence;
//! `min_score` (default 0) — drop entities whose mean tag probability is lower. `width` is
//! `hidden × max(1, len(layers)) × (1 + 2·window) + 4·shape`.
//!
//! Words are labelled by their first word piece (the convention training uses); a word's span
//! covers all its pieces. Greedy decoding repairs invalid sequences (an `I-X` without a
//! preceding `X` starts a new entity); Viterbi decoding never produces one. Either way the
//! output is a valid set of spans.

use headstream_sdk::{
    Assets, Config, ConfigError, Dense, Description, Head, HeadError, Inputs, Item, LayerStates,
    Output, TaggedToken, TaskKind, decode_bio, softmax, top_k,
};
use headstream_token_features::{FeatureSet, viterbi_bio};

struct TokenClassifier {
    layer: Dense,
    tags: Vec<String>,
    /// What a word's row holds besides its first piece's state (shared with training).
    features: FeatureSet,
    /// Entities scoring below this are dropped.
    min_score: f32,
    /// Layers whose per-token states the rows hold; empty: `item.token_states`.
    layers: Vec<u32>,
    /// Best valid path instead of each word's best tag.
    viterbi: bool,
}

impl Head for TokenClassifier {
    fn describe() -> Description {
        let mut d = headstream_sdk::describe(
            "token-classifier",
            env!("CARGO_PKG_VERSION"),
            TaskKind::Tokens,
        );
        d.needs_token_states = true;
        d
    }

    fn configure(config: Config, assets: Assets) -> Result<Self, ConfigError> {
        let layer = Dense::from_safetensors(assets.require("weights")?, "weight", "bias")?;
        let tags: Vec<String> = config.require("tags")?;
        if tags.len() != layer.outputs() {
            return Err(ConfigError::Invalid(format!(
                "{} tags for a layer with {} outputs",
                tags.len(),
                layer.outputs()
            )));
        }
        if let Some(bad) = tags
            .iter()
            .find(|t| *t != "O" && !t.starts_with("B-") && !t.starts_with("I-"))
        {
            return Err(ConfigError::Invalid(format!(
                "tag {bad:?} is not O, B-X or I-X"
            )));
        }
        let window: usize = config.get("window")?.unwrap_or(0);
        if window > 1 {
            return Err(ConfigError::Invalid("`window` must be 0 or 1".into()));
        }
        let shape: bool = config.get("shape")?.unwrap_or(false);
        let layers: Vec<u32> = config.get("layers")?.unwrap_or_default();
        let viterbi = match config.get::<String>("decode")?.as_deref() {
            None | Some("greedy") => false,
            Some("viterbi") => true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "`decode` must be \"greedy\" or \"viterbi\", not {other:?}"
                )));
            }
        };
        let min_score: f32 = config.get("min_score")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_score) {
            return Err(ConfigError::Invalid(
                "`min_score` must be within [0, 1]".into(),
            ));
        }
        Ok(Self {
            layer,
            tags,
            features: FeatureSet {
                window,
                shape,
                layers: layers.len(),
            },
            min_score,
            layers,
            viterbi,
        })
    }

    fn inputs(&self) -> Inputs {
        Inputs {
            pooled_layers: Vec::new(),
            token_layers: self.layers.clone(),
        }
    }

    fn run_with(
        &self,
        batch: Vec<Item>,
        layers: Vec<LayerStates>,
    ) -> Vec<Result<Output, HeadError>> {
        if self.layers.is_empty() {
            return self.run(batch);
        }
        batch
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let states = layers.get(i).ok_or_else(|| {
                    HeadError::InvalidInput(format!("no layer states for {}", item.id))
                })?;
                let rows: Vec<&[f32]> = states.tokens.iter().map(Vec::as_slice).collect();
                self.answer(item, &rows)
            })
            .collect()
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        let states = item
            .token_states
            .as_ref()
            .ok_or_else(|| HeadError::InvalidInput("token states are missing".into()))?;
        self.answer(item, &[&states.states])
    }
}

impl TokenClassifier {
    /// The entities of `item` from its pieces' states in each of the head's layers.
    fn answer(&self, item: &Item, layers: &[&[f32]]) -> Result<Output, HeadError> {
        let states = item
            .token_states
            .as_ref()
            .ok_or_else(|| HeadError::InvalidInput("token states are missing".into()))?;
        let hidden = states.hidden_size as usize;
        let width = self.features.width(hidden);
        let expected = states.tokens.len() * hidden;
        if width != self.layer.inputs()
            || layers.len() != self.layers.len().max(1)
            || layers.iter().any(|l| l.len() != expected)
        {
            return Err(HeadError::InvalidInput(format!(
                "token states of width {hidden} in {} layers do not fit a head of width {}",
                layers.len(),
                self.layer.inputs()
            )));
        }
        let offsets = states
            .tokens
            .iter()
            .map(|t| (t.start as usize, t.end as usize));
        let words = headstream_token_features::words(&item.text, offsets);
        let mut row = Vec::with_capacity(width);
        let logits: Vec<Vec<f32>> = words
            .iter()
            .enumerate()
            .map(|(w, &word)| {
                row.clear();
                self.features
                    .push(&mut row, layers, hidden, &item.text, w, word);
                self.layer.forward(&row).unwrap_or_default()
            })
            .collect();
        let probs: Vec<Vec<f32>> = logits.iter().map(|l| softmax(l)).collect();
        let path: Vec<usize> = if self.viterbi {
            viterbi_bio(&self.tags, &logits)
        } else {
            probs
                .iter()
                .map(|p| top_k(p, 1).first().copied().unwrap_or(0))
                .collect()
        };
        let tagged: Vec<TaggedToken<'_>> = words
            .iter()
            .zip(&probs)
            .zip(&path)
            .map(|((word, probs), &best)| TaggedToken {
                tag: self.tags.get(best).map_or("O", String::as_str),
                start: word.1,
                end: word.2,
                score: probs.get(best).copied().unwrap_or(0.0),
            })
            .collect();
        let mut entities = decode_bio(&item.text, &tagged);
        // A span with no letter or digit (a stray "?") is never an entity.
        entities.retain(|e| e.score >= self.min_score && e.text.chars().any(char::is_alphanumeric));
        Ok(Output::Entities(entities))
    }
}

headstream_sdk::export_head!(TokenClassifier);
