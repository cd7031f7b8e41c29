//! Quality figures over labelled predictions, each with the count it rests on and a 95%
//! interval: a team should not act on twelve labels.
//!
//! - **Proportions** (accuracy, per-label precision and recall, accuracy by score bucket):
//!   Wilson score intervals, which stay inside [0, 1] and keep their coverage at small counts
//!   and near 0 or 1, where the normal approximation does not (Brown, Cai & DasGupta 2001).
//! - **Macro-F1 and expected calibration error** are not proportions: their intervals are
//!   percentile bootstraps (1,000 resamples of the labelled set, a fixed seed, so the same labels
//!   always give the same figures).
//! - **Calibration**: ten equal-width buckets of the predicted label's score; the expected
//!   calibration error is the count-weighted mean gap between a bucket's accuracy and its mean
//!   score (Guo et al. 2017).

use std::collections::BTreeMap;

use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use crate::Labelled;

/// z for a two-sided 95% interval.
const Z: f64 = 1.959_964;
/// Bootstrap resamples for the intervals of macro-F1 and ECE.
const RESAMPLES: usize = 1000;
/// Calibration buckets over [0, 1].
const BUCKETS: usize = 10;

/// A figure with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The figure on the labels given.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end of the 95% interval.
    pub high: f64,
}

/// A proportion: `hits` of `count`, with its Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Proportion {
    /// Successes.
    pub hits: u64,
    /// Trials it rests on.
    pub count: u64,
    /// `hits / count` (0 when `count` is 0) and its Wilson 95% interval.
    #[serde(flatten)]
    pub estimate: Estimate,
}

impl Proportion {
    /// `hits` of `count`, with its Wilson score interval (0..1 when `count` is 0).
    pub fn new(hits: u64, count: u64) -> Self {
        if count == 0 {
            return Self {
                hits,
                count,
                estimate: Estimate {
                    value: 0.0,
                    low: 0.0,
                    high: 1.0,
                },
            };
        }
        let n = count as f64;
        let p = hits as f64 / n;
        let z2 = Z * Z;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        Self {
            hits,
            count,
            estimate: Estimate {
                value: p,
                low: (centre - half).max(0.0),
                high: (centre + half).min(1.0),
            },
        }
    }
}

/// One label's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerLabel {
    /// Of the predictions of this label, the share that were right.
    pub precision: Proportion,
    /// Of the texts whose right answer is this label, the share predicted so.
    pub recall: Proportion,
    /// Harmonic mean of the two (0 when either is 0).
    pub f1: f64,
}

/// One calibration bucket: predictions whose score lies in `[low, high)` (the last includes 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Lower edge.
    pub low: f64,
    /// Upper edge.
    pub high: f64,
    /// Mean score of the predictions in it.
    pub mean_score: f64,
    /// Their accuracy.
    pub accuracy: Proportion,
}

/// Calibration of the predicted label's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Expected calibration error over the buckets, with its bootstrap interval.
    pub ece: Estimate,
    /// The non-empty buckets, ascending.
    pub buckets: Vec<Bucket>,
}

/// The quality of one head version over a set of labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Labels it rests on.
    pub count: u64,
    /// Share of predictions equal to the label.
    pub accuracy: Proportion,
    /// Mean F1 over the labels seen (as answer or prediction), with its bootstrap interval.
    pub macro_f1: Estimate,
    /// Per label, every label seen.
    pub per_label: BTreeMap<String, PerLabel>,
    /// The labels in the confusion matrix's order.
    pub labels: Vec<String>,
    /// `confusion[i][j]`: texts whose right answer is `labels[i]` predicted as `labels[j]`.
    pub confusion: Vec<Vec<u64>>,
    /// How far the scores are from the accuracy they promise.
    pub calibration: Calibration,
}

impl Report {
    /// The figures over `labelled` (one head version's, deduplicated); `None` when empty.
    pub fn new(labelled: &[&Labelled]) -> Option<Self> {
        if labelled.is_empty() {
            return None;
        }
        let mut labels: Vec<String> = labelled
            .iter()
            .flat_map(|l| [l.label.clone(), l.predicted.clone()])
            .collect();
        labels.sort();
        labels.dedup();
        let index = |label: &str| labels.binary_search_by(|l| l.as_str().cmp(label)).ok();
        let pairs: Vec<(usize, usize, f64)> = labelled
            .iter()
            .filter_map(|l| Some((index(&l.label)?, index(&l.predicted)?, l.score)))
            .collect();
        let k = labels.len();
        let confusion = confusion_of(&pairs, k);
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let count = pairs.len() as u64;
        let per_label = labels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let predicted: u64 = (0..k).map(|t| confusion[t][i]).sum();
                let actual: u64 = confusion[i].iter().sum();
                let precision = Proportion::new(confusion[i][i], predicted);
                let recall = Proportion::new(confusion[i][i], actual);
                let f1 = f1(confusion[i][i], predicted, actual);
                (
                    label.clone(),
                    PerLabel {
                        precision,
                        recall,
                        f1,
                    },
                )
            })
            .collect();

        // Bootstrap: resample the labelled pairs with replacement.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6865_6164);
        let mut f1s = Vec::with_capacity(RESAMPLES);
        let mut eces = Vec::with_capacity(RESAMPLES);
        let mut sample = Vec::with_capacity(pairs.len());
        for _ in 0..RESAMPLES {
            sample.clear();
            sample.extend((0..pairs.len()).map(|_| pairs[rng.random_range(0..pairs.len())]));
            f1s.push(macro_f1(&confusion_of(&sample, k), k));
            eces.push(calibration_of(&sample).0);
        }
        let (ece, buckets) = calibration_of(&pairs);
        Some(Self {
            count,
            accuracy: Proportion::new(correct, count),
            macro_f1: percentile_interval(macro_f1(&confusion, k), &mut f1s),
            per_label,
            labels,
            confusion,
            calibration: Calibration {
                ece: percentile_interval(ece, &mut eces),
                buckets,
            },
        })
    }
}

fn confusion_of(pairs: &[(usize, usize, f64)], k: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; k]; k];
    for &(truth, predicted, _) in pairs {
        m[truth][predicted] += 1;
    }
    m
}

fn f1(tp: u64, predicted: u64, actual: u64) -> f64 {
    if tp == 0 {
        return 0.0;
    }
    let p = tp as f64 / predicted as f64;
    let r = tp as f64 / actual as f64;
    2.0 * p * r / (p + r)
}

/// Mean F1 over the labels that occur (as answer or prediction) in `m`.
fn macro_f1(m: &[Vec<u64>], k: usize) -> f64 {
    let mut sum = 0.0;
    let mut seen = 0;
    for (i, row) in m.iter().enumerate().take(k) {
        let predicted: u64 = m.iter().map(|r| r[i]).sum();
        let actual: u64 = row.iter().sum();
        if predicted + actual == 0 {
            continue;
        }
        seen += 1;
        sum += f1(row[i], predicted, actual);
    }
    if seen == 0 { 0.0 } else { sum / seen as f64 }
}

/// ECE and the non-empty buckets of `pairs`.
fn calibration_of(pairs: &[(usize, usize, f64)]) -> (f64, Vec<Bucket>) {
    let mut hits = [0u64; BUCKETS];
    let mut counts = [0u64; BUCKETS];
    let mut scores = [0f64; BUCKETS];
    for &(truth, predicted, score) in pairs {
        let score = if score.is_finite() {
            score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let b = ((score * BUCKETS as f64) as usize).min(BUCKETS - 1);
        counts[b] += 1;
        scores[b] += score;
        if truth == predicted {
            hits[b] += 1;
        }
    }
    let n = pairs.len().max(1) as f64;
    let mut ece = 0.0;
    let mut buckets = Vec::new();
    for b in 0..BUCKETS {
        if counts[b] == 0 {
            continue;
        }
        let c = counts[b] as f64;
        let mean_score = scores[b] / c;
        let accuracy = Proportion::new(hits[b], counts[b]);
        ece += c / n * (accuracy.estimate.value - mean_score).abs();
        buckets.push(Bucket {
            low: b as f64 / BUCKETS as f64,
            high: (b + 1) as f64 / BUCKETS as f64,
            mean_score,
            accuracy,
        });
    }
    (ece, buckets)
}

/// `value` with the 2.5th and 97.5th percentiles of its bootstrap `samples`.
fn percentile_interval(value: f64, samples: &mut [f64]) -> Estimate {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples.is_empty() {
            return value;
        }
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i]
    };
    Estimate {
        value,
        low: at(0.025),
        high: at(0.975),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(label: &str, predicted: &str, score: f64) -> Labelled {
        Labelled {
            at_ms: 0,
            predicted_at_ms: 0,
            pipeline: "p".into(),
            id: "x".into(),
            head: "h".into(),
            version: "h@1.0.0".into(),
            predicted: predicted.into(),
            score,
            label: label.into(),
            correct: label == predicted,
            by: None,
        }
    }

    #[test]
    fn wilson_intervals_match_the_textbook_and_stay_inside_0_1() {
        // 81 of 100: the Wilson interval is 0.7222..0.8749 (Newcombe 1998's method 3).
        let p = Proportion::new(81, 100);
        assert!((p.estimate.low - 0.7222).abs() < 1e-3, "{p:?}");
        assert!((p.estimate.high - 0.8749).abs() < 1e-3, "{p:?}");
        let all = Proportion::new(12, 12);
        assert_eq!(all.estimate.high, 1.0);
        assert!(all.estimate.low > 0.7 && all.estimate.low < 0.8, "{all:?}");
        let none = Proportion::new(0, 0);
        assert_eq!((none.estimate.low, none.estimate.high), (0.0, 1.0));
    }

    #[test]
    fn the_figures_are_those_of_the_confusion_matrix() {
        // 3 labels, 10 labelled: 7 right.
        let rows = [
            ("a", "a", 0.95),
            ("a", "a", 0.85),
            ("a", "b", 0.55),
            ("b", "b", 0.9),
            ("b", "b", 0.75),
            ("b", "a", 0.6),
            ("c", "c", 0.99),
            ("c", "c", 0.97),
            ("c", "b", 0.45),
            ("a", "a", 0.65),
        ];
        let owned: Vec<Labelled> = rows.iter().map(|&(l, p, s)| labelled(l, p, s)).collect();
        let refs: Vec<&Labelled> = owned.iter().collect();
        let r = Report::new(&refs).unwrap_or_else(|| panic!("a report"));
        assert_eq!(r.count, 10);
        assert_eq!(r.accuracy.hits, 7);
        assert_eq!(r.labels, ["a", "b", "c"]);
        assert_eq!(
            r.confusion,
            vec![vec![3, 1, 0], vec![1, 2, 0], vec![0, 1, 2]]
        );
        // a: precision 3/4, recall 3/4; b: 2/4, 2/3; c: 2/2, 2/3.
        let f = |p: f64, r: f64| 2.0 * p * r / (p + r);
        let want = (f(0.75, 0.75) + f(0.5, 2.0 / 3.0) + f(1.0, 2.0 / 3.0)) / 3.0;
        assert!((r.macro_f1.value - want).abs() < 1e-12, "{:?}", r.macro_f1);
        assert!(r.macro_f1.low <= want && want <= r.macro_f1.high);
        assert_eq!(r.per_label["b"].precision.count, 4);
        assert_eq!(r.per_label["b"].recall.count, 3);
        // Buckets: [0.4,0.5) 1 wrong; [0.5,0.6) 1 wrong; [0.6,0.7) 1 wrong 1 right; ...
        let gaps: f64 = r
            .calibration
            .buckets
            .iter()
            .map(|b| {
                b.accuracy.count as f64 / 10.0 * (b.accuracy.estimate.value - b.mean_score).abs()
            })
            .sum();
        assert!((r.calibration.ece.value - gaps).abs() < 1e-12);
        assert!(r.calibration.buckets.iter().all(|b| b.accuracy.count > 0));
        let total: u64 = r.calibration.buckets.iter().map(|b| b.accuracy.count).sum();
        assert_eq!(total, 10);
        // The same labels give the same figures, intervals included.
        assert_eq!(Report::new(&refs), Some(r));
    }
}
