//! `token-classifier`: per-token softmax over BIO/IOB2 tags on the encoder's token states,
//! decoded into entity spans with byte offsets — the head that `headstream train --kind tokens`
//! fills with weights.
//!
//! Assets: `weights` — safetensors with `weight` (`[tags, hidden]`, f32) and `bias` (`[tags]`).
//! Config: `tags` — the tag names, one per row (e.g. `["O", "B-PER", "I-PER", ...]`).
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
}

/// Whether the token at byte `start` continues the word that ended at byte `prev_end`.
fn continues_word(text: &str, prev_end: usize, start: usize) -> bool {
    let is_punct = |c: Option<char>| c.is_some_and(|c| !c.is_alphanumeric());
    start == prev_end
        && !is_punct(text.get(start..).and_then(|s| s.chars().next()))
        && !is_punct(text.get(..prev_end).and_then(|s| s.chars().next_back()))
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
        Ok(Self { layer, tags })
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        let states = item
            .token_states
            .as_ref()
            .ok_or_else(|| HeadError::InvalidInput("token states are missing".into()))?;
        let hidden = states.hidden_size as usize;
        if hidden != self.layer.inputs() || states.states.len() != states.tokens.len() * hidden {
            return Err(HeadError::InvalidInput(format!(
                "token states of width {hidden} do not fit a head of width {}",
                self.layer.inputs()
            )));
        }
        // One entry per word: (tag, start, end, score) from its first piece, end from its last.
        let mut words: Vec<(usize, usize, usize, f32)> = Vec::new();
        for (token, row) in states.tokens.iter().zip(states.states.chunks_exact(hidden)) {
            let (start, end) = (token.start as usize, token.end as usize);
            if start == end {
                continue; // [CLS], [SEP] and other special tokens
            }
            match words.last_mut() {
                Some(word) if continues_word(&item.text, word.2, start) => word.2 = end,
                _ => {
                    let probs = softmax(&self.layer.forward(row).unwrap_or_default());
                    let best = top_k(&probs, 1).first().copied().unwrap_or(0);
                    words.push((best, start, end, probs.get(best).copied().unwrap_or(0.0)));
                }
            }
        }
        let tagged: Vec<TaggedToken<'_>> = words
            .iter()
            .map(|&(tag, start, end, score)| TaggedToken {
                tag: &self.tags[tag],
                start,
                end,
                score,
            })
            .collect();
        Ok(Output::Entities(decode_bio(&item.text, &tagged)))
    }
}

headstream_sdk::export_head!(TokenClassifier);
