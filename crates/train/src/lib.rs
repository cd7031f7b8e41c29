//! Transfer learning on the frozen shared encoder: small heads trained on its features.
//!
//! [`train_classifier`] fits multinomial logistic regression on sentence embeddings (optionally
//! few-shot, class-weighted, with `C` chosen by cross-validation); [`train_tagger`] fits a
//! per-token softmax over BIO tags on token states. Both return weights in the layout of the
//! generic `linear-classifier` / `token-classifier` plugins, which the `headstream train`
//! command packages ([`headstream_package`]). [`evaluate`] runs any package through the real
//! plugin host on labelled data and computes [`metrics`]. Sentence embeddings go through an
//! on-disk [`cache::EmbeddingCache`].
#![deny(missing_docs)]

pub mod cache;
pub mod data;
pub mod lbfgs;
pub mod logreg;
pub mod metrics;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::Path;

use headstream_encoder::Encoder;
use headstream_package::{Kind, Package};
use headstream_plugin_host::{Head, Item, Limits, PluginHost, TokenStates};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cache::EmbeddingCache;
use crate::data::{Example, TaggedSentence};
use crate::logreg::{ClassWeight, Features, FitOptions, LinearModel};

/// Why training or evaluation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The data file is unusable.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// The encoder failed.
    #[error("encoder: {0}")]
    Encoder(#[from] headstream_encoder::EncoderError),
    /// A tensor operation failed while fitting.
    #[error("fitting: {0}")]
    Fit(#[from] candle_core::Error),
    /// The embedding cache failed.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// The head could not be loaded.
    #[error(transparent)]
    Plugin(#[from] headstream_plugin_host::PluginError),
    /// Settings that cannot work together.
    #[error("{0}")]
    Invalid(String),
}

/// Texts per call into the encoder (it batches further by token budget).
const CHUNK: usize = 256;

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// Sentence embeddings of `texts`, from `cache` where present; the rest are encoded (with a
/// progress bar on a terminal) and added to it.
pub fn embed(
    encoder: &Encoder,
    texts: &[&str],
    mut cache: Option<&mut EmbeddingCache>,
) -> Result<Features, TrainError> {
    let dim = encoder.hidden_size();
    let mut rows: Vec<Option<Vec<f32>>> = texts
        .iter()
        .map(|t| cache.as_mut().and_then(|c| c.get(t).map(<[f32]>::to_vec)))
        .collect();
    let missing: Vec<usize> = (0..texts.len()).filter(|&i| rows[i].is_none()).collect();
    if !missing.is_empty() {
        let bar = progress(missing.len(), "encoding");
        for chunk in missing.chunks(CHUNK) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let encoded = encoder.encode(&batch, false)?;
            let embeddings: Vec<Vec<f32>> = encoded.into_iter().map(|e| e.embedding).collect();
            if let Some(cache) = cache.as_mut() {
                cache.insert_all(&batch, &embeddings)?;
            }
            for (&i, e) in chunk.iter().zip(embeddings) {
                rows[i] = Some(e);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }
    let mut features = Features::new(dim);
    features.data.reserve(texts.len() * dim);
    for row in rows.into_iter().flatten() {
        features.push(&row);
    }
    Ok(features)
}

/// Classifier settings.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// `C` (default 1.0, the standard probe setting); `None` chooses it from `grid` by
    /// cross-validation.
    pub c: Option<f64>,
    /// Candidates for cross-validation.
    pub grid: Vec<f64>,
    /// Folds for cross-validation (fewer when a label has fewer examples).
    pub folds: usize,
    /// Seed for fold assignment.
    pub seed: u64,
    /// Example weighting.
    pub class_weight: ClassWeight,
    /// Most L-BFGS iterations.
    pub max_iter: usize,
    /// Add each label's own name (underscores as spaces) as one training example of that
    /// label with this weight: a prior from the label's meaning, which matters in few-shot
    /// training.
    pub label_names: Option<f32>,
    /// Units of a ReLU hidden layer (a small MLP head) instead of a linear head.
    pub hidden: Option<usize>,
    /// Features: the concatenated mean-pooled states of these encoder layers, standardised
    /// (0 = embedding layer output .. N = last); empty: the sentence embedding.
    pub layers: Vec<u32>,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        Self {
            c: Some(1.0),
            grid: vec![
                0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0,
            ],
            folds: 5,
            seed: 0,
            class_weight: ClassWeight::Uniform,
            max_iter: 1000,
            label_names: None,
            hidden: None,
            layers: Vec::new(),
        }
    }
}

/// A trained head's weights and what produced them.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The linear layer.
    pub model: LinearModel,
    /// Labels (or tags), one per weight row.
    pub labels: Vec<String>,
    /// Training rows per label.
    pub per_label: BTreeMap<String, usize>,
    /// Hyper-parameters and optimiser outcome, for the manifest.
    pub hyperparameters: Value,
    /// The head's metrics on its own training data, measured natively by the trainer (token
    /// heads: entity metrics, decoded from the same feature rows it was fitted on). The
    /// packaged plugin evaluated on the same data must score exactly this: a difference means
    /// the plugin builds features, reads weights or decodes spans differently.
    pub fit: Option<Value>,
    /// The layers whose pooled states the model reads (empty: the sentence embedding).
    pub pooled_layers: Vec<u32>,
}

/// The concatenated mean-pooled states of `layers` for each text (no cache: they are only
/// needed while training).
pub fn pooled_features(
    encoder: &Encoder,
    texts: &[&str],
    layers: &[u32],
) -> Result<Features, TrainError> {
    let states = headstream_encoder::States::pooled_layers(layers.iter().copied())?;
    let mut features = Features::new(encoder.hidden_size() * layers.len());
    let bar = progress(texts.len(), "encoding layers");
    for chunk in texts.chunks(CHUNK) {
        for e in encoder.encode_with(chunk, states)? {
            let mut row = Vec::with_capacity(features.cols);
            for &l in layers {
                row.extend_from_slice(e.pooled(l).unwrap_or_default());
            }
            features.push(&row);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(features)
}

/// Standardises `x`'s columns in place (zero mean, unit variance over its rows); returns each
/// column's mean and scale (1 where a column is constant).
fn standardise(x: &mut Features) -> (Vec<f32>, Vec<f32>) {
    let (n, d) = (x.rows().max(1) as f64, x.cols);
    let mut mean = vec![0f64; d];
    let mut square = vec![0f64; d];
    for row in x.data.chunks(d) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += f64::from(v);
            square[j] += f64::from(v) * f64::from(v);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
    let scale: Vec<f32> = square
        .iter()
        .zip(&mean)
        .map(|(s, &m)| {
            let var = s / n - f64::from(m) * f64::from(m);
            if var > 1e-12 { var.sqrt() as f32 } else { 1.0 }
        })
        .collect();
    for row in x.data.chunks_mut(d) {
        for ((v, &m), &s) in row.iter_mut().zip(&mean).zip(&scale) {
            *v = (*v - m) / s;
        }
    }
    (mean, scale)
}

/// Trains a classification head on `examples` (at least two labels).
pub fn train_classifier(
    encoder: &Encoder,
    examples: &[Example],
    options: &ClassifyOptions,
    cache: Option<&mut EmbeddingCache>,
) -> Result<Trained, TrainError> {
    let per_label = data::label_counts(examples);
    if per_label.len() < 2 {
        return Err(TrainError::Invalid(
            "a classifier needs examples of at least two labels".into(),
        ));
    }
    let labels: Vec<String> = per_label.keys().cloned().collect();
    let mut y: Vec<usize> = examples
        .iter()
        .map(|e| labels.iter().position(|l| *l == e.label).unwrap_or(0))
        .collect();
    let names: Vec<String> = labels.iter().map(|l| l.replace('_', " ")).collect();
    let mut texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let mut weights = vec![1.0f32; texts.len()];
    if let Some(weight) = options.label_names {
        texts.extend(names.iter().map(String::as_str));
        y.extend(0..labels.len());
        weights.extend(std::iter::repeat_n(weight, labels.len()));
    }
    let (x, standardised) = if options.layers.is_empty() {
        (embed(encoder, &texts, cache)?, None)
    } else {
        let mut x = pooled_features(encoder, &texts, &options.layers)?;
        let stats = standardise(&mut x);
        (x, Some(stats))
    };
    let fit_options = FitOptions {
        c: 1.0,
        class_weight: options.class_weight,
        lbfgs: lbfgs::Options {
            max_iter: options.max_iter,
            ..lbfgs::Options::default()
        },
    };
    let smallest = per_label.values().copied().min().unwrap_or(0);
    let folds = options.folds.min(smallest);
    if options.hidden.is_some() && options.c.is_none() {
        return Err(TrainError::Invalid(
            "cross-validation chooses C for the linear head; give C with a hidden layer".into(),
        ));
    }
    let (c, cv) = match options.c {
        Some(c) => (c, Value::Null),
        None if folds >= 2 && !options.grid.is_empty() => {
            let scores = logreg::cross_validate(
                &x,
                &y,
                Some(&weights),
                labels.len(),
                &options.grid,
                folds,
                options.seed,
                &fit_options,
            )?;
            let c = logreg::best_c(&scores).unwrap_or(1.0);
            // The best C at an end of the grid: a better one may lie past it.
            let edge = [options.grid.first(), options.grid.last()].contains(&Some(&c));
            if edge {
                tracing::warn!(c, "cross-validation chose C at the end of its grid");
            }
            (
                c,
                json!({ "folds": folds, "scores": scores, "at_grid_edge": edge }),
            )
        }
        None => (1.0, json!("skipped: a label has fewer than 2 examples")),
    };
    let fit_options = FitOptions { c, ..fit_options };
    let mut model = match options.hidden {
        Some(units) => logreg::fit_mlp(
            &x,
            &y,
            &weights,
            labels.len(),
            units,
            options.seed,
            &fit_options,
        )?,
        None => logreg::fit_weighted(&x, &y, &weights, labels.len(), &fit_options)?,
    };
    if let Some((mean, scale)) = &standardised {
        model.fold_standardisation(mean, scale);
    }
    let hyperparameters = json!({
        "model": match options.hidden {
            Some(units) => format!("MLP: {units} ReLU units, then softmax (L2 on both layers)"),
            None => "multinomial logistic regression (L2, unpenalised intercept)".to_owned(),
        },
        "features": if options.layers.is_empty() {
            json!("sentence embedding")
        } else {
            json!({ "pooled_layers": options.layers, "standardised": true })
        },
        "c": c,
        "class_weight": match options.class_weight { ClassWeight::Uniform => "uniform", ClassWeight::Balanced => "balanced" },
        "cross_validation": cv,
        "label_names": options.label_names.map(|w| json!({ "weight": w })),
        "optimizer": { "name": "L-BFGS", "iterations": model.iterations, "converged": model.converged },
    });
    Ok(Trained {
        fit: None,
        model,
        labels,
        per_label,
        hyperparameters,
        pooled_layers: options.layers.clone(),
    })
}

/// Token tagger settings.
#[derive(Debug, Clone, Copy)]
pub struct TokensOptions {
    /// Features besides each word's first-piece state.
    pub features: tokens::FeatureSet,
    /// `C`.
    pub c: f64,
    /// Example weighting.
    pub class_weight: ClassWeight,
    /// Most L-BFGS iterations.
    pub max_iter: usize,
}

/// Trains a per-token tagging head on `sentences`.
pub fn train_tagger(
    encoder: &Encoder,
    sentences: &[TaggedSentence],
    options: &TokensOptions,
) -> Result<Trained, TrainError> {
    let tags = tokens::tag_set(sentences);
    let dim = encoder.hidden_size();
    let mut x = Features::new(options.features.width(dim));
    let mut y = Vec::new();
    let mut sentence_rows: Vec<SentenceRows> = Vec::with_capacity(sentences.len());
    let bar = progress(sentences.len(), "encoding");
    for chunk in sentences.chunks(CHUNK) {
        let joined: Vec<(String, Vec<(usize, usize)>)> = chunk.iter().map(tokens::join).collect();
        let texts: Vec<&str> = joined.iter().map(|(t, _)| t.as_str()).collect();
        let encoded = encoder.encode(&texts, true)?;
        for ((sentence, (text, spans)), enc) in chunk.iter().zip(&joined).zip(&encoded) {
            let Some(states) = enc.token_states.as_deref() else {
                continue;
            };
            let mut words = Vec::new();
            for (index, word, tag) in tokens::labelled_pieces(sentence, text, spans, &enc.offsets) {
                if let Some(class) = tags.iter().position(|t| *t == tag) {
                    options
                        .features
                        .push(&mut x.data, states, dim, text, index, word);
                    y.push(class);
                    words.push((word.1, word.2));
                }
            }
            sentence_rows.push((metrics::spans_from_tags(&sentence.tags, spans), words));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for &c in &y {
        *per_label.entry(tags[c].clone()).or_insert(0) += 1;
    }
    if per_label.len() < 2 {
        return Err(TrainError::Invalid(
            "the data has a single tag; a tagger needs at least two".into(),
        ));
    }
    let model = logreg::fit(
        &x,
        &y,
        tags.len(),
        &FitOptions {
            c: options.c,
            class_weight: options.class_weight,
            lbfgs: lbfgs::Options {
                max_iter: options.max_iter,
                ..lbfgs::Options::default()
            },
        },
    )?;
    let hyperparameters = json!({
        "model": "per-token multinomial logistic regression (L2, unpenalised intercept)",
        "features": {
            "state": "first word piece of each word",
            "window": options.features.window,
            "shape": options.features.shape,
        },
        "c": options.c,
        "class_weight": match options.class_weight { ClassWeight::Uniform => "uniform", ClassWeight::Balanced => "balanced" },
        "rows": y.len(),
        "optimizer": { "name": "L-BFGS", "iterations": model.iterations, "converged": model.converged },
    });
    let fit = tagger_fit(&model, &x, &tags, &sentence_rows);
    Ok(Trained {
        model,
        labels: tags,
        per_label,
        hyperparameters,
        fit: serde_json::to_value(fit).ok(),
        pooled_layers: Vec::new(),
    })
}

/// A training sentence's gold spans, and the byte span of the word behind each of its rows.
type SentenceRows = (Vec<metrics::Span>, Vec<(usize, usize)>);

/// Entity metrics of `model` on its own training rows: each row's tag predicted natively, the
/// tags of a sentence decoded into spans as the token-classifier plugin decodes them.
fn tagger_fit(
    model: &LinearModel,
    x: &Features,
    tags: &[String],
    sentences: &[SentenceRows],
) -> metrics::EntityMetrics {
    let mut row = 0;
    let mut gold = Vec::with_capacity(sentences.len());
    let mut predicted = Vec::with_capacity(sentences.len());
    for (spans, words) in sentences {
        let predicted_tags: Vec<String> = (row..row + words.len())
            .map(|i| tags[model.predict(x.row(i))].clone())
            .collect();
        row += words.len();
        gold.push(spans.clone());
        predicted.push(metrics::spans_from_tags(&predicted_tags, words));
    }
    metrics::entities(&gold, &predicted)
}

/// Loads `package` into `host` for evaluation (generous deadline: this is offline work).
pub fn load_for_eval(host: &PluginHost, package: &Package) -> Result<Head, TrainError> {
    let limits = Limits {
        deadline: std::time::Duration::from_secs(30),
        ..Limits::default()
    };
    Ok(host.load_package(package, &json!({}), limits)?)
}

/// Runs `head` (a loaded `package`) over the labelled data in `data` and returns its metrics
/// as JSON: classification metrics for classify packages, entity metrics for token packages.
pub fn evaluate(
    encoder: &Encoder,
    package: &Package,
    head: &Head,
    data: &Path,
    cache: Option<&mut EmbeddingCache>,
) -> Result<Value, TrainError> {
    match package.manifest.kind {
        Kind::Other => Err(TrainError::Invalid(format!(
            "{} is an `other` head: there is no metric to evaluate it by (classify and tokens heads have)",
            package.manifest.name
        ))),
        Kind::Classify => {
            let examples = data::read_examples(data)?;
            let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
            // A head over layers' states gets them fresh; embeddings come from the cache.
            let inputs = head.inputs();
            let states =
                headstream_encoder::States::pooled_layers(inputs.pooled_layers.iter().copied())?;
            let x = inputs
                .pooled_layers
                .is_empty()
                .then(|| embed(encoder, &texts, cache))
                .transpose()?;
            let mut predicted = Vec::with_capacity(examples.len());
            for (start, chunk) in (0..examples.len())
                .step_by(CHUNK)
                .map(|s| (s, &texts[s..(s + CHUNK).min(texts.len())]))
            {
                let ids: Vec<String> = (start..start + chunk.len())
                    .map(|i| i.to_string())
                    .collect();
                let encoded = match &x {
                    Some(_) => Vec::new(),
                    None => encoder.encode_with(chunk, states)?,
                };
                let items: Vec<Item<'_>> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, text)| Item {
                        id: &ids[j],
                        text,
                        embedding: match &x {
                            Some(x) => x.row(start + j),
                            None => &encoded[j].embedding,
                        },
                        token_states: None,
                        upstream: Vec::new(),
                        layers: encoded.get(j).map_or(&[], |e| &e.layers),
                    })
                    .collect();
                for outcome in head.run(&items) {
                    predicted.push(match outcome {
                        Ok(v) => v["label"].as_str().unwrap_or("<no label>").to_owned(),
                        Err(_) => "<failed>".to_owned(),
                    });
                }
            }
            let expected: Vec<String> = examples.into_iter().map(|e| e.label).collect();
            let m = metrics::classify(&package.manifest.labels, &expected, &predicted);
            Ok(serde_json::to_value(m).unwrap_or(Value::Null))
        }
        Kind::Tokens => {
            let sentences = data::read_tagged(data)?;
            let dim = encoder.hidden_size();
            let mut gold = Vec::with_capacity(sentences.len());
            let mut predicted = Vec::with_capacity(sentences.len());
            let bar = progress(sentences.len(), "evaluating");
            for chunk in sentences.chunks(CHUNK) {
                let joined: Vec<(String, Vec<(usize, usize)>)> =
                    chunk.iter().map(tokens::join).collect();
                let texts: Vec<&str> = joined.iter().map(|(t, _)| t.as_str()).collect();
                let encoded = encoder.encode(&texts, true)?;
                let ids: Vec<String> = (0..chunk.len()).map(|i| i.to_string()).collect();
                let items: Vec<Item<'_>> = encoded
                    .iter()
                    .zip(&texts)
                    .zip(&ids)
                    .map(|((e, text), id)| Item {
                        id,
                        text,
                        embedding: &e.embedding,
                        token_states: e.token_states.as_deref().map(|states| TokenStates {
                            ids: &e.input_ids,
                            offsets: &e.offsets,
                            states,
                            hidden_size: dim,
                        }),
                        upstream: Vec::new(),
                        layers: &e.layers,
                    })
                    .collect();
                for ((sentence, (_, spans)), outcome) in
                    chunk.iter().zip(&joined).zip(head.run(&items))
                {
                    gold.push(metrics::spans_from_tags(&sentence.tags, spans));
                    let entities = outcome
                        .ok()
                        .and_then(|v| v.get("entities").and_then(Value::as_array).cloned())
                        .unwrap_or_default();
                    predicted.push(
                        entities
                            .iter()
                            .filter_map(|e| {
                                Some((
                                    e["start"].as_u64()? as usize,
                                    e["end"].as_u64()? as usize,
                                    e["label"].as_str()?.to_owned(),
                                ))
                            })
                            .collect(),
                    );
                }
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            let m = metrics::entities(&gold, &predicted);
            Ok(serde_json::to_value(m).unwrap_or(Value::Null))
        }
    }
}
