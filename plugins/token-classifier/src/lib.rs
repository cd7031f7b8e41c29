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

struct TokenClassifier {
    layer: Dense,
    tags: Vec<String>,
    /// Neighbouring pieces on each side whose states are appended (0 or 1).
    window: usize,
    /// Whether the four word-shape features are appended.
    shape: bool,
    /// Entities scoring below this are dropped.
    min_score: f32,
}

/// Whether the token at byte `start` continues the word that ended at byte `prev_end`.
fn continues_word(text: &str, prev_end: usize, start: usize) -> bool {
    let is_punct = |c: Option<char>| c.is_some_and(|c| !c.is_alphanumeric());
    start == prev_end
        && !is_punct(text.get(start..).and_then(|s| s.chars().next()))
        && !is_punct(text.get(..prev_end).and_then(|s| s.chars().next_back()))
}

/// Word-shape features the (uncased) encoder cannot see: initial capital, all capitals,
/// contains a digit, first word of the text. Must match `headstream-train`'s `tokens::shape`.
fn shape(word: &str, first: bool) -> [f32; 4] {
    let letters: Vec<char> = word.chars().filter(|c| c.is_alphabetic()).collect();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    [
        flag(word.chars().next().is_some_and(char::is_uppercase)),
        flag(letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase())),
        flag(word.chars().any(|c| c.is_ascii_digit())),
        flag(first),
    ]
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
            window,
            shape,
            min_score,
        })
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        let states = item
            .token_states
            .as_ref()
            .ok_or_else(|| HeadError::InvalidInput("token states are missing".into()))?;
        let hidden = states.hidden_size as usize;
        let width = hidden * (1 + 2 * self.window) + if self.shape { 4 } else { 0 };
        if width != self.layer.inputs() || states.states.len() != states.tokens.len() * hidden {
            return Err(HeadError::InvalidInput(format!(
                "token states of width {hidden} do not fit a head of width {}",
                self.layer.inputs()
            )));
        }
        // Words: (first piece, start, end); special tokens ([CLS], [SEP]) have empty spans.
        let mut words: Vec<(usize, usize, usize)> = Vec::new();
        for (i, token) in states.tokens.iter().enumerate() {
            let (start, end) = (token.start as usize, token.end as usize);
            if start == end {
                continue;
            }
            match words.last_mut() {
                Some(word) if continues_word(&item.text, word.2, start) => word.2 = end,
                _ => words.push((i, start, end)),
            }
        }
        let row = |i: usize| &states.states[i * hidden..(i + 1) * hidden];
        let last = states.tokens.len().saturating_sub(1);
        let mut features = Vec::with_capacity(width);
        let tagged: Vec<TaggedToken<'_>> = words
            .iter()
            .enumerate()
            .map(|(w, &(piece, start, end))| {
                features.clear();
                features.extend_from_slice(row(piece));
                if self.window == 1 {
                    features.extend_from_slice(row(piece.saturating_sub(1)));
                    features.extend_from_slice(row((piece + 1).min(last)));
                }
                if self.shape {
                    let word = item.text.get(start..end).unwrap_or_default();
                    features.extend_from_slice(&shape(word, w == 0));
                }
                let probs = softmax(&self.layer.forward(&features).unwrap_or_default());
                let best = top_k(&probs, 1).first().copied().unwrap_or(0);
                TaggedToken {
                    tag: &self.tags[best],
                    start,
                    end,
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
