//! `headstream replay --compare`: two pipelines (or two versions of a head) side by side over
//! the same messages: per head, agreement, label flips with examples, the label distribution of
//! each side, and accuracy against a labelled file when one is given.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use headstream_runner::{Message, ResultRecord};
use serde::Serialize;
use serde_json::Value;

/// Examples kept per kind of flip.
const EXAMPLES: usize = 3;

/// The comparison of one head across the two sides.
#[derive(Debug, Default, Serialize)]
pub struct HeadDiff {
    /// Messages both sides answered.
    pub compared: u64,
    /// Of those, answered alike (same label, or the same output for heads without one).
    pub agree: u64,
    /// `from -> to`: how many, and up to three example texts.
    pub flips: BTreeMap<String, Flip>,
    /// Label counts on each side.
    pub labels_a: BTreeMap<String, u64>,
    /// Label counts on the other side.
    pub labels_b: BTreeMap<String, u64>,
    /// Messages with a known label (from `--labels`).
    pub labelled: u64,
    /// Correct answers of each side among those.
    pub correct_a: u64,
    /// Correct answers of the other side.
    pub correct_b: u64,
}

/// One kind of label flip.
#[derive(Debug, Default, Serialize)]
pub struct Flip {
    /// How many messages flipped this way.
    pub count: u64,
    /// Some of their texts.
    pub examples: Vec<String>,
}

/// Accumulates the comparison batch by batch.
#[derive(Debug, Default)]
pub struct Diff {
    heads: BTreeMap<String, HeadDiff>,
    labels: HashMap<String, String>,
}

impl Diff {
    /// A comparison; `labels` (JSONL `{"id"?, "text"?, "label"}`) gives accuracies.
    pub fn new(labels: Option<&Path>) -> anyhow::Result<Self> {
        let mut known = HashMap::new();
        if let Some(path) = labels {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
                let label = v["label"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| v["label"].as_i64().map(|l| l.to_string()))
                    .with_context(|| format!("{}:{}: no \"label\"", path.display(), n + 1))?;
                for k in ["id", "text"] {
                    if let Some(key) = v[k].as_str() {
                        known.insert(format!("{k}:{key}"), label.clone());
                    }
                }
            }
        }
        Ok(Self {
            heads: BTreeMap::new(),
            labels: known,
        })
    }

    /// Adds one batch: `a[i]` and `b[i]` are the two sides' results for `messages[i]`.
    pub fn add(&mut self, messages: &[Message], a: &[ResultRecord], b: &[ResultRecord]) {
        for ((m, a), b) in messages.iter().zip(a).zip(b) {
            let truth = self
                .labels
                .get(&format!("id:{}", m.id))
                .or_else(|| self.labels.get(&format!("text:{}", m.text)));
            for (head, out_a) in &a.results {
                let Some(out_b) = b.results.get(head) else {
                    continue;
                };
                let d = self.heads.entry(head.clone()).or_default();
                d.compared += 1;
                let (la, lb) = (out_a["label"].as_str(), out_b["label"].as_str());
                let alike = match (la, lb) {
                    (Some(x), Some(y)) => x == y,
                    _ => out_a == out_b,
                };
                d.agree += u64::from(alike);
                if let (Some(la), Some(lb)) = (la, lb) {
                    *d.labels_a.entry(la.to_owned()).or_default() += 1;
                    *d.labels_b.entry(lb.to_owned()).or_default() += 1;
                    if la != lb {
                        let flip = d.flips.entry(format!("{la} -> {lb}")).or_default();
                        flip.count += 1;
                        if flip.examples.len() < EXAMPLES {
                            flip.examples.push(m.text.clone());
                        }
                    }
                    if let Some(t) = truth {
                        d.labelled += 1;
                        d.correct_a += u64::from(la == t);
                        d.correct_b += u64::from(lb == t);
                    }
                }
            }
        }
    }

    /// The report as JSON.
    pub fn json(&self, a: &str, b: &str) -> Value {
        serde_json::json!({ "a": a, "b": b, "heads": self.heads })
    }

    /// The report as a table, for people.
    pub fn table(&self, a: &str, b: &str) -> String {
        let mut out = format!("{a} (a) vs {b} (b)\n");
        let pct = |x: u64, n: u64| 100.0 * x as f64 / n.max(1) as f64;
        for (head, d) in &self.heads {
            let _ = writeln!(
                out,
                "{head}: {} of {} agree ({:.2}%)",
                d.agree,
                d.compared,
                pct(d.agree, d.compared)
            );
            if d.labelled > 0 {
                let _ = writeln!(
                    out,
                    "  accuracy on {} labelled: a {:.2}%, b {:.2}%",
                    d.labelled,
                    pct(d.correct_a, d.labelled),
                    pct(d.correct_b, d.labelled)
                );
            }
            for (label, n) in &d.labels_a {
                let m = d.labels_b.get(label).copied().unwrap_or(0);
                let _ = writeln!(out, "  {label:<16} a {n:>7}  b {m:>7}");
            }
            for (label, m) in d
                .labels_b
                .iter()
                .filter(|(l, _)| !d.labels_a.contains_key(*l))
            {
                let _ = writeln!(out, "  {label:<16} a {:>7}  b {m:>7}", 0);
            }
            let mut flips: Vec<_> = d.flips.iter().collect();
            flips.sort_by_key(|f| std::cmp::Reverse(f.1.count));
            for (kind, flip) in flips {
                let _ = writeln!(out, "  flip {kind}: {}", flip.count);
                for text in &flip.examples {
                    let short: String = text.chars().take(100).collect();
                    let _ = writeln!(out, "    {short:?}");
                }
            }
        }
        out
    }
}
