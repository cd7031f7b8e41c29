//! From word-level BIO tags to training rows on word pieces, and back.
//!
//! A sentence is joined with single spaces, so every word has a byte span in the text the
//! encoder sees. Pieces are grouped into words exactly as the `token-classifier` plugin groups
//! them at inference (adjacent pieces form a word unless punctuation separates them), and each
//! such word is labelled by its first piece. A dataset word split into several inference words
//! (`U.S.` → `U`, `.`, `S`, `.`) gives its tag to the first and the matching `I-` tag to the
//! rest, so decoding rebuilds the original span.

use crate::data::TaggedSentence;

/// The text a tagged sentence is encoded as, and each word's byte span in it.
pub fn join(sentence: &TaggedSentence) -> (String, Vec<(usize, usize)>) {
    let mut text = String::new();
    let mut spans = Vec::with_capacity(sentence.tokens.len());
    for token in &sentence.tokens {
        if !text.is_empty() {
            text.push(' ');
        }
        let start = text.len();
        text.push_str(token);
        spans.push((start, text.len()));
    }
    (text, spans)
}

/// Whether the piece at byte `start` continues the word that ended at byte `prev_end` — the
/// same rule as `plugins/token-classifier`.
fn continues_word(text: &str, prev_end: usize, start: usize) -> bool {
    let is_punct = |c: Option<char>| c.is_some_and(|c| !c.is_alphanumeric());
    start == prev_end
        && !is_punct(text.get(start..).and_then(|s| s.chars().next()))
        && !is_punct(text.get(..prev_end).and_then(|s| s.chars().next_back()))
}

/// Inference words: (index of the first piece, start byte, end byte), special tokens skipped.
pub fn inference_words(text: &str, offsets: &[(usize, usize)]) -> Vec<Word> {
    let mut words: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &(start, end)) in offsets.iter().enumerate() {
        if start == end {
            continue;
        }
        match words.last_mut() {
            Some(word) if continues_word(text, word.2, start) => word.2 = end,
            _ => words.push((i, start, end)),
        }
    }
    words
}

/// Word-shape features the (uncased) encoder cannot see: initial capital, all capitals,
/// contains a digit, first word of the text. Must match `plugins/token-classifier`.
pub fn shape(word: &str, first: bool) -> [f32; 4] {
    let letters: Vec<char> = word.chars().filter(|c| c.is_alphabetic()).collect();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    [
        flag(word.chars().next().is_some_and(char::is_uppercase)),
        flag(letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase())),
        flag(word.chars().any(|c| c.is_ascii_digit())),
        flag(first),
    ]
}

/// What a token head sees for one word besides its first piece's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeatureSet {
    /// Neighbouring pieces on each side whose states are appended (0 or 1).
    pub window: usize,
    /// Whether the four [`shape`] features are appended.
    pub shape: bool,
}

impl FeatureSet {
    /// Width of a feature row for states `hidden` wide.
    pub fn width(self, hidden: usize) -> usize {
        hidden * (1 + 2 * self.window) + if self.shape { 4 } else { 0 }
    }

    /// Appends the features of the word `(piece, start, end)` (the `index`-th word of `text`)
    /// to `out`, exactly as the `token-classifier` plugin builds them.
    pub fn push(
        self,
        out: &mut Vec<f32>,
        states: &[f32],
        hidden: usize,
        text: &str,
        index: usize,
        (piece, start, end): Word,
    ) {
        let tokens = states.len() / hidden;
        let row = |i: usize| &states[i * hidden..(i + 1) * hidden];
        out.extend_from_slice(row(piece));
        if self.window == 1 {
            out.extend_from_slice(row(piece.saturating_sub(1)));
            out.extend_from_slice(row((piece + 1).min(tokens.saturating_sub(1))));
        }
        if self.shape {
            out.extend_from_slice(&shape(text.get(start..end).unwrap_or_default(), index == 0));
        }
    }
}

/// An inference word: (first piece, start byte, end byte).
pub type Word = (usize, usize, usize);

/// The training rows of one encoded sentence: (word index, word, tag) for every inference word
/// inside a dataset word.
pub fn labelled_pieces<'a>(
    sentence: &'a TaggedSentence,
    text: &str,
    spans: &[(usize, usize)],
    offsets: &[(usize, usize)],
) -> Vec<(usize, Word, std::borrow::Cow<'a, str>)> {
    let mut rows = Vec::new();
    let mut word = 0;
    for (index, (piece, start, end)) in inference_words(text, offsets).into_iter().enumerate() {
        while word < spans.len() && spans[word].1 <= start {
            word += 1;
        }
        let Some(&(ws, _)) = spans.get(word).filter(|s| s.0 <= start) else {
            continue;
        };
        let tag = &sentence.tags[word];
        let tag = if start == ws {
            std::borrow::Cow::Borrowed(tag.as_str())
        } else {
            match tag.split_once('-') {
                Some((_, kind)) => std::borrow::Cow::Owned(format!("I-{kind}")),
                None => std::borrow::Cow::Borrowed(tag.as_str()),
            }
        };
        rows.push((index, (piece, start, end), tag));
    }
    rows
}

/// The tag set for `sentences`: `O` first, then `B-X`, `I-X` for every entity type, sorted.
pub fn tag_set(sentences: &[TaggedSentence]) -> Vec<String> {
    let kinds: std::collections::BTreeSet<&str> = sentences
        .iter()
        .flat_map(|s| &s.tags)
        .filter_map(|t| t.split_once('-').map(|(_, k)| k))
        .collect();
    std::iter::once("O".to_owned())
        .chain(
            kinds
                .into_iter()
                .flat_map(|k| [format!("B-{k}"), format!("I-{k}")]),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentence(tokens: &[&str], tags: &[&str]) -> TaggedSentence {
        TaggedSentence {
            tokens: tokens.iter().map(|s| (*s).to_owned()).collect(),
            tags: tags.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn words_split_by_punctuation_pass_their_tag_on() {
        let s = sentence(
            &["U.S.", "troops", "left", "Neuchatel"],
            &["B-LOC", "O", "O", "B-LOC"],
        );
        let (text, spans) = join(&s);
        assert_eq!(text, "U.S. troops left Neuchatel");
        // [CLS] u . s . troops left ne ##uch ##ate ##l [SEP]
        let offsets = [
            (0, 0),
            (0, 1),
            (1, 2),
            (2, 3),
            (3, 4),
            (5, 11),
            (12, 16),
            (17, 19),
            (19, 22),
            (22, 25),
            (25, 26),
            (0, 0),
        ];
        let rows: Vec<(usize, String)> = labelled_pieces(&s, &text, &spans, &offsets)
            .into_iter()
            .map(|(_, (p, _, _), t)| (p, t.into_owned()))
            .collect();
        let expected: Vec<(usize, String)> = [
            (1, "B-LOC"),
            (2, "I-LOC"),
            (3, "I-LOC"),
            (4, "I-LOC"),
            (5, "O"),
            (6, "O"),
            (7, "B-LOC"),
        ]
        .iter()
        .map(|(p, t)| (*p, (*t).to_owned()))
        .collect();
        assert_eq!(rows, expected);
    }

    #[test]
    fn shape_features_see_case_digits_and_position() {
        assert_eq!(shape("Berlin", false), [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(shape("NATO", true), [1.0, 1.0, 0.0, 1.0]);
        assert_eq!(shape("1996", false), [0.0, 0.0, 1.0, 0.0]);
        assert_eq!(shape("I", false), [1.0, 0.0, 0.0, 0.0]);
        let features = FeatureSet {
            window: 1,
            shape: true,
        };
        assert_eq!(features.width(2), 10);
        let states = [0.0, 0.1, 1.0, 1.1, 2.0, 2.1];
        let mut row = Vec::new();
        features.push(&mut row, &states, 2, "Ab", 0, (1, 0, 2));
        assert_eq!(row, [1.0, 1.1, 0.0, 0.1, 2.0, 2.1, 1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn tag_sets_pair_every_type() {
        let s = sentence(&["a", "b"], &["I-PER", "B-LOC"]);
        assert_eq!(tag_set(&[s]), ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]);
    }
}
