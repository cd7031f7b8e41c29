//! `token-classifier`: per-token softmax over BIO/IOB2 tags on the encoder's token states,
//! decoded into entity spans with byte offsets — the head that `headstream train --kind tokens`
//! fills with weights.
//!
//! Assets: `weights` — safetensors with `weight` (`[tags, width]`, f32) and `bias` (`[tags]`).
//! Config: `tags` — the tag names, one per row (e.g. `["O", "B-PER", "I-PER", ...]`);
//! `window` (0 or 1, default 0) — also feed the states of the pieces before and after;
//! `shape` (default false) — also feed four word-shape features (initial capital, all capitals,
//! digit, first word), which an uncased encoder cannot see; `min_score` (default 0) — drop
//! entities whose mean tag probability is lower. `width` is `hidden × (1 + 2·window) + 4·shape`.
//!
//! Words are labelled by their first word piece (the convention training uses); a word's span
//! covers all its pieces. Decoding repairs invalid sequences (an `I-X` without a preceding `X`
//! starts a new entity), so the output is always a valid set of spans.

use headstream_sdk::{
    Assets, Config, ConfigError, Dense, Description, Head, HeadError, Item, Output, TaggedToken,
    TaskKind, decode_bio, softmax, top_k,
};
use headstream_token_features::FeatureSet;

struct TokenClassifier {
    layer: Dense,
    tags: Vec<String>,
    /// What a word's row holds besides its first piece's state (shared with training).
    features: FeatureSet,
    /// Entities scoring below this are dropped.
    min_score: f32,
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
        let min_score: f32 = config.get("min_score")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_score) {
            return Err(ConfigError::Invalid(
                "`min_score` must be within [0, 1]".into(),
            ));
        }
        Ok(Self {
            layer,
            tags,
            features: FeatureSet { window, shape },
            min_score,
        })
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        let states = item
            .token_states
            .as_ref()
            .ok_or_else(|| HeadError::InvalidInput("token states are missing".into()))?;
        let hidden = states.hidden_size as usize;
        let width = self.features.width(hidden);
        if width != self.layer.inputs() || states.states.len() != states.tokens.len() * hidden {
            return Err(HeadError::InvalidInput(format!(
                "token states of width {hidden} do not fit a head of width {}",
                self.layer.inputs()
            )));
        }
        let offsets = states
            .tokens
            .iter()
            .map(|t| (t.start as usize, t.end as usize));
        let words = headstream_token_features::words(&item.text, offsets);
        let mut row = Vec::with_capacity(width);
        let tagged: Vec<TaggedToken<'_>> = words
            .iter()
            .enumerate()
            .map(|(w, &word)| {
                row.clear();
                self.features
                    .push(&mut row, &states.states, hidden, &item.text, w, word);
                let probs = softmax(&self.layer.forward(&row).unwrap_or_default());
                let best = top_k(&probs, 1).first().copied().unwrap_or(0);
                TaggedToken {
                    tag: &self.tags[best],
                    start: word.1,
                    end: word.2,
                    score: probs.get(best).copied().unwrap_or(0.0),
                }
            })
            .collect();
        let mut entities = decode_bio(&item.text, &tagged);
        // A span with no letter or digit (a stray "?") is never an entity.
        entities.retain(|e| e.score >= self.min_score && e.text.chars().any(char::is_alphanumeric));
        Ok(Output::Entities(entities))
    }
}

headstream_sdk::export_head!(TokenClassifier);
