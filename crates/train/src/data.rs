//! Labelled data: classification examples from JSONL or CSV, tagged sentences from JSONL, and
//! deterministic few-shot sampling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use serde_json::Value;

/// A text and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The text.
    pub text: String,
    /// Its label.
    pub label: String,
}

/// A sentence as words with one BIO/IOB2 tag per word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedSentence {
    /// The words.
    pub tokens: Vec<String>,
    /// One tag per word (`O`, `B-X`, `I-X`).
    pub tags: Vec<String>,
}

/// Why a data file is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A row is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file has no examples.
    #[error("{}: no examples", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Every example has the same label; nothing to learn.
    #[error("{}: every example is labelled {label:?}; a classifier needs at least two labels", path.display())]
    SingleClass {
        /// The file.
        path: PathBuf,
        /// The only label.
        label: String,
    },
}

fn read(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        DataError::Row {
            path: path.to_path_buf(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            message: "not valid UTF-8".into(),
        }
    })
}

/// Reads classification examples: JSONL objects with string `text` and `label` (a `.csv` file
/// instead needs a header naming `text` and `label` columns). Blank lines are skipped; any
/// malformed row is an error naming its line, and a file without examples is an error.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, DataError> {
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let examples = if is_csv {
        read_csv(path)?
    } else {
        read_jsonl(path)?
    };
    if examples.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(examples)
}

/// Refuses data a classifier cannot learn from: every example with the same label.
pub fn require_two_labels(path: &Path, examples: &[Example]) -> Result<(), DataError> {
    match examples.first() {
        Some(first) if examples.iter().all(|e| e.label == first.label) => {
            Err(DataError::SingleClass {
                path: path.to_path_buf(),
                label: first.label.clone(),
            })
        }
        _ => Ok(()),
    }
}

fn row(path: &Path, line: usize, message: impl Into<String>) -> DataError {
    DataError::Row {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// A JSONL row: its 1-based line number and its object.
type Row = (usize, serde_json::Map<String, Value>);

fn jsonl_objects(path: &Path) -> Result<Vec<Row>, DataError> {
    let text = read(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| row(path, i + 1, format!("not JSON ({e})")))?;
        let Value::Object(map) = value else {
            return Err(row(path, i + 1, "not a JSON object"));
        };
        rows.push((i + 1, map));
    }
    Ok(rows)
}

fn string_field(
    path: &Path,
    line: usize,
    map: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<String, DataError> {
    match map.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(row(path, line, format!("`{key}` is empty"))),
        Some(_) => Err(row(path, line, format!("`{key}` is not a string"))),
        None => Err(row(path, line, format!("no `{key}` field"))),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Example>, DataError> {
    jsonl_objects(path)?
        .into_iter()
        .map(|(line, map)| {
            Ok(Example {
                text: string_field(path, line, &map, "text")?,
                label: string_field(path, line, &map, "label")?,
            })
        })
        .collect()
}

fn read_csv(path: &Path) -> Result<Vec<Example>, DataError> {
    let text = read(path)?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| row(path, 1, format!("bad CSV header ({e})")))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| row(path, 1, format!("the header has no `{name}` column")))
    };
    let (text_col, label_col) = (column("text")?, column("label")?);
    let mut examples = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            row(path, line, format!("bad CSV row ({e})"))
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let field = |col: usize, name: &str| match record.get(col) {
            Some(v) if !v.trim().is_empty() => Ok(v.to_owned()),
            _ => Err(row(path, line, format!("`{name}` is empty"))),
        };
        examples.push(Example {
            text: field(text_col, "text")?,
            label: field(label_col, "label")?,
        });
    }
    Ok(examples)
}

/// Reads tagged sentences: JSONL objects with `tokens` and `tags`, lists of strings of equal
/// length, tags being `O`, `B-X` or `I-X`.
pub fn read_tagged(path: &Path) -> Result<Vec<TaggedSentence>, DataError> {
    let mut sentences = Vec::new();
    for (line, map) in jsonl_objects(path)? {
        let list = |key: &str| -> Result<Vec<String>, DataError> {
            let Some(Value::Array(items)) = map.get(key) else {
                return Err(row(path, line, format!("`{key}` is not a list")));
            };
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| row(path, line, format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let (tokens, tags) = (list("tokens")?, list("tags")?);
        if tokens.len() != tags.len() {
            return Err(row(
                path,
                line,
                format!("{} tokens but {} tags", tokens.len(), tags.len()),
            ));
        }
        if let Some(bad) = tags
            .iter()
            .find(|t| *t != "O" && !t.starts_with("B-") && !t.starts_with("I-"))
        {
            return Err(row(path, line, format!("tag {bad:?} is not O, B-X or I-X")));
        }
        if let Some(bad) = tokens
            .iter()
            .find(|t| t.is_empty() || t.contains(char::is_whitespace))
        {
            return Err(row(
                path,
                line,
                format!("token {bad:?} is empty or has whitespace"),
            ));
        }
        if tokens.is_empty() {
            continue;
        }
        sentences.push(TaggedSentence { tokens, tags });
    }
    if sentences.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(sentences)
}

/// Counts examples per label, in label order.
pub fn label_counts(examples: &[Example]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in examples {
        *counts.entry(e.label.clone()).or_insert(0) += 1;
    }
    counts
}

/// Picks `shots` examples of every label (all of a label that has fewer), the same ones for the
/// same data and `seed` on every machine (ChaCha8 stream), in shuffled order.
pub fn sample_shots(examples: &[Example], shots: usize, seed: u64) -> Vec<Example> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        by_label.entry(&e.label).or_default().push(i);
    }
    let mut picked = Vec::new();
    for indices in by_label.values_mut() {
        indices.shuffle(&mut rng);
        picked.extend(indices.iter().take(shots).copied());
    }
    picked.shuffle(&mut rng);
    picked.into_iter().map(|i| examples[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).ok();
        path
    }

    fn examples(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| Example {
                text: format!("text {i}"),
                label: ["a", "b", "c"][i % 3].into(),
            })
            .collect()
    }

    #[test]
    fn few_shot_sampling_is_deterministic_per_seed() {
        let data = examples(300);
        let a = sample_shots(&data, 8, 3);
        assert_eq!(a, sample_shots(&data, 8, 3));
        assert_ne!(a, sample_shots(&data, 8, 4));
        assert_eq!(a.len(), 24);
        for (label, n) in label_counts(&a) {
            assert_eq!(n, 8, "{label}");
        }
        // Pinned: the sample must not change across releases or machines.
        let texts: Vec<&str> = a.iter().take(3).map(|e| e.text.as_str()).collect();
        assert_eq!(texts, PINNED_SEED_3);
    }

    const PINNED_SEED_3: [&str; 3] = ["text 128", "text 89", "text 25"];

    #[test]
    fn small_labels_give_what_they_have() {
        let mut data = examples(30);
        data.push(Example {
            text: "rare".into(),
            label: "z".into(),
        });
        let sample = sample_shots(&data, 4, 0);
        assert_eq!(label_counts(&sample)["z"], 1);
        assert_eq!(sample.len(), 13);
    }

    #[test]
    fn malformed_rows_name_their_line() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cases = [
            (
                "{\"text\":\"a\",\"label\":\"x\"}\n\n[1]\n",
                "d.jsonl:3: not a JSON object",
            ),
            (
                "{\"text\":\"a\",\"label\":\"x\"}\nnope\n",
                "d.jsonl:2: not JSON",
            ),
            ("{\"text\":\"a\"}\n", "d.jsonl:1: no `label` field"),
            (
                "{\"text\":\"a\",\"label\":1}\n",
                "d.jsonl:1: `label` is not a string",
            ),
            (
                "{\"text\":\" \",\"label\":\"x\"}\n",
                "d.jsonl:1: `text` is empty",
            ),
        ];
        for (text, expected) in cases {
            let path = file(&dir, "d.jsonl", text);
            let err = read_examples(&path).map(|_| ()).err().ok_or("accepted")?;
            assert!(err.to_string().contains(expected), "{err} vs {expected}");
        }
        let path = file(&dir, "d.csv", "text,label\nhello,x\n\"bad\nrow,y\nok,\n");
        let err = read_examples(&path).map(|_| ()).err().ok_or("accepted")?;
        assert!(err.to_string().contains("d.csv:"), "{err}");
        let path = file(&dir, "n.csv", "body,label\nhello,x\n");
        let err = read_examples(&path).map(|_| ()).err().ok_or("accepted")?;
        assert!(
            err.to_string()
                .ends_with("n.csv:1: the header has no `text` column"),
            "{err}"
        );
        let path = file(
            &dir,
            "t.jsonl",
            "{\"tokens\":[\"a\",\"b\"],\"tags\":[\"O\"]}\n",
        );
        let err = read_tagged(&path).map(|_| ()).err().ok_or("accepted")?;
        assert!(
            err.to_string().ends_with("t.jsonl:1: 2 tokens but 1 tags"),
            "{err}"
        );
        let path = file(
            &dir,
            "u.jsonl",
            "{\"tokens\":[\"a\"],\"tags\":[\"X-PER\"]}\n",
        );
        let err = read_tagged(&path).map(|_| ()).err().ok_or("accepted")?;
        assert!(
            err.to_string()
                .ends_with(":1: tag \"X-PER\" is not O, B-X or I-X"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn csv_reads_quoted_fields_and_empty_or_single_label_data_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = file(&dir, "d.csv", "label,text\npos,\"good, really\"\nneg,bad\n");
        let data = read_examples(&path)?;
        assert_eq!(data[0].text, "good, really");
        assert_eq!(data[1].label, "neg");
        let path = file(&dir, "e.jsonl", "\n");
        let err = read_examples(&path).map(|_| ()).err().ok_or("accepted")?;
        assert!(err.to_string().ends_with("e.jsonl: no examples"), "{err}");
        let path = file(
            &dir,
            "s.jsonl",
            "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"x\"}\n",
        );
        let data = read_examples(&path)?;
        let err = require_two_labels(&path, &data).err().ok_or("accepted")?;
        assert!(
            err.to_string().contains("every example is labelled \"x\""),
            "{err}"
        );
        Ok(())
    }
}
