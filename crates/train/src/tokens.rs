//! From word-level BIO tags to training rows on word pieces, and back.
//!
//! A sentence is joined with single spaces, so every word has a byte span in the text the
//! encoder sees. Pieces are grouped into words and turned into feature rows by
//! `headstream-token-features`, the crate the `token-classifier` plugin uses at inference
//! (adjacent pieces form a word unless punctuation separates them), and each such word is
//! labelled by its first piece. A dataset word split into several inference words
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

pub use headstream_token_features::{FeatureSet, Word, shape};

/// Inference words: (index of the first piece, start byte, end byte), special tokens skipped —
/// grouped exactly as the `token-classifier` plugin groups them (one shared crate).
pub fn inference_words(text: &str, offsets: &[(usize, usize)]) -> Vec<Word> {
    headstream_token_features::words(text, offsets.iter().copied())
}

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
    fn tag_sets_pair_every_type() {
        let s = sentence(&["a", "b"], &["I-PER", "B-LOC"]);
        assert_eq!(tag_set(&[s]), ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]);
    }
}
