//! What a token head sees of one word, in one place for both sides: `headstream train` builds
//! its training rows with it, and the `token-classifier` plugin (built for `wasm32-wasip2`) its
//! inference rows, so the two cannot drift apart (a drift would silently collapse entity F1).
//!
//! Word pieces are grouped into words (adjacent pieces form a word unless punctuation
//! separates them); a word is represented by its first piece's states in one or more layers,
//! optionally its neighbours' ([`FeatureSet::window`]), and four word-shape features
//! ([`shape`]). [`viterbi_bio`] decodes a sentence's tag scores into the best valid BIO path,
//! for both sides too.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;

/// A word: (index of its first piece, start byte, end byte).
pub type Word = (usize, usize, usize);

/// Whether the piece at byte `start` continues the word that ended at byte `prev_end`: no gap
/// and no punctuation on either side.
pub fn continues_word(text: &str, prev_end: usize, start: usize) -> bool {
    let is_punct = |c: Option<char>| c.is_some_and(|c| !c.is_alphanumeric());
    start == prev_end
        && !is_punct(text.get(start..).and_then(|s| s.chars().next()))
        && !is_punct(text.get(..prev_end).and_then(|s| s.chars().next_back()))
}

/// The words of `text` from its pieces' byte `offsets` (special tokens, with empty spans,
/// skipped).
pub fn words(text: &str, offsets: impl IntoIterator<Item = (usize, usize)>) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    for (i, (start, end)) in offsets.into_iter().enumerate() {
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
/// contains a digit, first word of the text.
pub fn shape(word: &str, first: bool) -> [f32; 4] {
    let mut letters = word.chars().filter(|c| c.is_alphabetic());
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let all_caps = letters.clone().nth(1).is_some() && letters.all(char::is_uppercase);
    [
        flag(word.chars().next().is_some_and(char::is_uppercase)),
        flag(all_caps),
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
    /// Encoder layers whose states are concatenated for each piece (0 counts as 1: the last
    /// layer's token states alone).
    pub layers: usize,
}

impl FeatureSet {
    /// Width of a feature row for states `hidden` wide.
    pub fn width(self, hidden: usize) -> usize {
        hidden * self.layers.max(1) * (1 + 2 * self.window) + if self.shape { 4 } else { 0 }
    }

    /// Appends the features of `word` (the `index`-th word of `text`) to `out`: its first
    /// piece's states in each of `layers` (row-major, `hidden` wide, over the same pieces),
    /// then with a window the previous and the next piece's, then the shape features.
    pub fn push(
        self,
        out: &mut Vec<f32>,
        layers: &[&[f32]],
        hidden: usize,
        text: &str,
        index: usize,
        (piece, start, end): Word,
    ) {
        let tokens = layers.first().map_or(0, |l| l.len() / hidden.max(1));
        let mut pieces = [piece, 0, 0];
        let mut n = 1;
        if self.window == 1 {
            pieces[1] = piece.saturating_sub(1);
            pieces[2] = (piece + 1).min(tokens.saturating_sub(1));
            n = 3;
        }
        for &p in &pieces[..n] {
            for states in layers {
                out.extend_from_slice(states.get(p * hidden..(p + 1) * hidden).unwrap_or_default());
            }
        }
        if self.shape {
            out.extend_from_slice(&shape(text.get(start..end).unwrap_or_default(), index == 0));
        }
    }
}

/// The best *valid* BIO/IOB2 tag sequence: `scores[t][k]` is token `t`'s additive score for
/// tag `tags[k]` (log-probabilities, or the logits of a softmax, which give the same path);
/// the answer is one tag index per token, maximising the sum of scores over paths where every
/// `I-X` follows a `B-X` or an `I-X` (never `O`, another type, or the start). Tags that are not
/// `O`, `B-X` or `I-X` count as `O`. Time `O(tokens × tags²)`.
pub fn viterbi_bio<T: AsRef<str>>(tags: &[T], scores: &[Vec<f32>]) -> Vec<usize> {
    let n = tags.len();
    if n == 0 || scores.is_empty() {
        return Vec::new();
    }
    let inside: Vec<Option<&str>> = tags.iter().map(|t| t.as_ref().strip_prefix("I-")).collect();
    let kind: Vec<Option<&str>> = tags
        .iter()
        .map(|t| {
            let t = t.as_ref();
            t.strip_prefix("B-").or_else(|| t.strip_prefix("I-"))
        })
        .collect();
    let allowed = |from: Option<usize>, to: usize| match inside[to] {
        None => true,
        Some(x) => from.is_some_and(|f| kind[f] == Some(x)),
    };
    let score_of = |row: &Vec<f32>, k: usize| {
        row.get(k)
            .copied()
            .filter(|v| !v.is_nan())
            .unwrap_or(f32::MIN)
    };
    let mut best: Vec<f32> = (0..n)
        .map(|k| {
            if allowed(None, k) {
                score_of(&scores[0], k)
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let mut back: Vec<Vec<usize>> = Vec::with_capacity(scores.len());
    back.push(alloc::vec![0; n]);
    for row in &scores[1..] {
        let mut next = alloc::vec![f32::NEG_INFINITY; n];
        let mut from = alloc::vec![0; n];
        for k in 0..n {
            let emit = score_of(row, k);
            for (j, &b) in best.iter().enumerate() {
                if b > f32::NEG_INFINITY && allowed(Some(j), k) && b + emit > next[k] {
                    next[k] = b + emit;
                    from[k] = j;
                }
            }
        }
        best = next;
        back.push(from);
    }
    let mut k = (0..n)
        .max_by(|&a, &b| best[a].total_cmp(&best[b]))
        .unwrap_or(0);
    let mut path = alloc::vec![0; scores.len()];
    for t in (0..scores.len()).rev() {
        path[t] = k;
        k = back[t][k];
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_group_into_words_split_by_punctuation() {
        // "U.S. rates" → pieces u . s . rates (offsets as the tokenizer gives them), plus
        // [CLS] and [SEP] with empty spans.
        let text = "U.S. rates";
        let offsets = [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (5, 10), (0, 0)];
        assert_eq!(
            words(text, offsets),
            [(1, 0, 1), (2, 1, 2), (3, 2, 3), (4, 3, 4), (5, 5, 10)]
        );
        // "playing" as "play" + "##ing": one word.
        assert_eq!(words("playing", [(0, 4), (4, 7)]), [(0, 0, 7)]);
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
            layers: 1,
        };
        assert_eq!(features.width(2), 10);
        let states = [0.0, 0.1, 1.0, 1.1, 2.0, 2.1];
        let mut row = Vec::new();
        features.push(&mut row, &[&states], 2, "Ab", 0, (1, 0, 2));
        assert_eq!(row, [1.0, 1.1, 0.0, 0.1, 2.0, 2.1, 1.0, 0.0, 0.0, 1.0]);
        // Two layers: each piece's states in layer order, then the neighbours'.
        let other = [5.0, 5.1, 6.0, 6.1, 7.0, 7.1];
        let two = FeatureSet {
            layers: 2,
            ..features
        };
        let mut row = Vec::new();
        two.push(&mut row, &[&states, &other], 2, "Ab", 0, (1, 0, 2));
        assert_eq!(two.width(2), row.len());
        assert_eq!(
            row,
            [
                1.0, 1.1, 6.0, 6.1, 0.0, 0.1, 5.0, 5.1, 2.0, 2.1, 7.0, 7.1, 1.0, 0.0, 0.0, 1.0
            ]
        );
    }

    #[test]
    fn rows_have_the_stated_width() {
        let hidden = 3;
        let states: Vec<f32> = (0..12).map(|i| i as f32).collect();
        for set in [
            FeatureSet::default(),
            FeatureSet {
                window: 1,
                shape: false,
                layers: 1,
            },
            FeatureSet {
                window: 1,
                shape: true,
                layers: 1,
            },
        ] {
            let mut out = Vec::new();
            set.push(&mut out, &[&states], hidden, "Ab cd", 0, (1, 0, 2));
            assert_eq!(out.len(), set.width(hidden));
            assert_eq!(&out[..3], &[3.0, 4.0, 5.0]);
        }
    }
}
