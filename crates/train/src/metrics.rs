//! Evaluation metrics: accuracy, macro-F1, per-class scores and the confusion matrix for
//! classification; entity-level precision/recall/F1 (CoNLL conventions: a predicted entity
//! counts only if its span and type both match exactly) for token tagging.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Precision, recall and F1 of one class or entity type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    /// Of the predictions of this class, the share that were right.
    pub precision: f64,
    /// Of the examples of this class, the share that were found.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Examples (entities) of this class in the reference.
    pub support: usize,
}

fn scores(tp: usize, predicted: usize, support: usize) -> Scores {
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Scores {
        precision,
        recall,
        f1,
        support,
    }
}

/// Classification metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassifyMetrics {
    /// Examples evaluated.
    pub examples: usize,
    /// Share of exact label matches.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1.
    pub macro_f1: f64,
    /// Scores per label.
    pub per_class: BTreeMap<String, Scores>,
    /// The labels in the order of the confusion matrix's rows and columns.
    pub labels: Vec<String>,
    /// `confusion[true][predicted]` counts; a prediction outside `labels` (e.g. an abstention)
    /// is counted in an extra last column when any occur.
    pub confusion: Vec<Vec<usize>>,
}

/// Scores `predicted` against `expected` (same length), over the union of `labels` and every
/// label seen in `expected`.
pub fn classify(labels: &[String], expected: &[String], predicted: &[String]) -> ClassifyMetrics {
    let mut all: Vec<String> = labels.to_vec();
    for e in expected {
        if !all.contains(e) {
            all.push(e.clone());
        }
    }
    let index = |l: &str| all.iter().position(|x| x == l);
    let k = all.len();
    let has_other = predicted.iter().any(|p| index(p).is_none());
    let mut confusion = vec![vec![0usize; k + usize::from(has_other)]; k];
    for (e, p) in expected.iter().zip(predicted) {
        if let Some(t) = index(e) {
            confusion[t][index(p).unwrap_or(k)] += 1;
        }
    }
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let per_class: BTreeMap<String, Scores> = all
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let support: usize = confusion[i].iter().sum();
            let predicted: usize = (0..k).map(|t| confusion[t][i]).sum();
            (label.clone(), scores(confusion[i][i], predicted, support))
        })
        .collect();
    let macro_f1 = per_class.values().map(|s| s.f1).sum::<f64>() / k.max(1) as f64;
    ClassifyMetrics {
        examples: expected.len(),
        accuracy: correct as f64 / expected.len().max(1) as f64,
        macro_f1,
        per_class,
        labels: all,
        confusion,
    }
}

/// An entity: byte span and type.
pub type Span = (usize, usize, String);

/// Entity-level metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityMetrics {
    /// Sentences evaluated.
    pub sentences: usize,
    /// Micro-averaged over all entities.
    pub overall: Scores,
    /// Per entity type.
    pub per_type: BTreeMap<String, Scores>,
}

/// Scores predicted entity sets against the reference, sentence by sentence.
pub fn entities(expected: &[Vec<Span>], predicted: &[Vec<Span>]) -> EntityMetrics {
    let mut counts: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (gold, pred) in expected.iter().zip(predicted) {
        let gold: BTreeSet<&Span> = gold.iter().collect();
        let pred: BTreeSet<&Span> = pred.iter().collect();
        for span in &pred {
            let entry = counts.entry(span.2.clone()).or_default();
            entry.1 += 1;
            if gold.contains(span) {
                entry.0 += 1;
            }
        }
        for span in &gold {
            counts.entry(span.2.clone()).or_default().2 += 1;
        }
    }
    let (tp, pr, gs) = counts
        .values()
        .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    EntityMetrics {
        sentences: expected.len(),
        overall: scores(tp, pr, gs),
        per_type: counts
            .into_iter()
            .map(|(t, (tp, pr, gs))| (t, scores(tp, pr, gs)))
            .collect(),
    }
}

/// Entity spans of a tag sequence over items with byte spans, CoNLL style: an entity starts at
/// `B-X`, or at `I-X` not continuing an `X` entity, and runs over the `I-X` that follow.
pub fn spans_from_tags(tags: &[String], offsets: &[(usize, usize)]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize, &str)> = None;
    for (tag, &(start, end)) in tags.iter().zip(offsets) {
        let (prefix, kind) = tag.split_once('-').unwrap_or((tag, ""));
        match (prefix, current.as_mut()) {
            ("I", Some((_, e, k))) if *k == kind => *e = end,
            ("B" | "I", _) => {
                if let Some((s, e, k)) = current.take() {
                    out.push((s, e, k.to_owned()));
                }
                current = Some((start, end, kind));
            }
            _ => {
                if let Some((s, e, k)) = current.take() {
                    out.push((s, e, k.to_owned()));
                }
            }
        }
    }
    if let Some((s, e, k)) = current {
        out.push((s, e, k.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn classification_metrics_match_hand_counts() {
        let labels = strings(&["neg", "pos"]);
        let expected = strings(&["neg", "neg", "pos", "pos", "pos"]);
        let predicted = strings(&["neg", "pos", "pos", "pos", "abstain"]);
        let m = classify(&labels, &expected, &predicted);
        assert_eq!(m.confusion, vec![vec![1, 1, 0], vec![0, 2, 1]]);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        let neg = m.per_class["neg"];
        assert_eq!((neg.precision, neg.recall, neg.support), (1.0, 0.5, 2));
        let pos = m.per_class["pos"];
        assert!(
            (pos.precision - 2.0 / 3.0).abs() < 1e-12 && (pos.recall - 2.0 / 3.0).abs() < 1e-12
        );
        let f1_neg = 2.0 * 0.5 / 1.5;
        assert!((m.macro_f1 - (f1_neg + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn entity_metrics_need_exact_span_and_type() {
        let gold = vec![vec![(0, 5, "PER".to_owned()), (10, 16, "LOC".to_owned())]];
        let pred = vec![vec![
            (0, 5, "PER".to_owned()),
            (10, 15, "LOC".to_owned()),
            (20, 22, "ORG".to_owned()),
        ]];
        let m = entities(&gold, &pred);
        assert!((m.overall.precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.overall.recall - 0.5).abs() < 1e-12);
        assert_eq!(m.per_type["PER"].f1, 1.0);
        assert_eq!(m.per_type["ORG"].support, 0);
    }

    #[test]
    fn tag_spans_follow_conll_conventions() {
        let tags = strings(&["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG"]);
        let offsets: Vec<(usize, usize)> = (0..7).map(|i| (i * 2, i * 2 + 1)).collect();
        assert_eq!(
            spans_from_tags(&tags, &offsets),
            vec![
                (0, 3, "PER".to_owned()),
                (6, 9, "LOC".to_owned()),
                (10, 11, "LOC".to_owned()),
                (12, 13, "ORG".to_owned()),
            ]
        );
    }
}
