//! Transfer learning on the frozen shared encoder: small heads trained on its features.
//!
//! [`train_classifier`] fits multinomial logistic regression on sentence embeddings (optionally
//! few-shot, class-weighted, with `C` chosen by cross-validation); [`train_tagger`] fits a
//! per-token softmax over BIO tags on token states. Both return weights in the layout of the
//! generic `linear-classifier` / `token-classifier` plugins, which the `headstream train`
//! command packages ([`headstream_package`]). [`evaluate`] runs any package through the real
//! plugin host on labelled data and computes [`metrics`]. Sentence embeddings go through an
//! on-disk [`cache::FeatureCache`].
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

use crate::cache::FeatureCache;
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
    cache: Option<&mut FeatureCache>,
) -> Result<Features, TrainError> {
    Ok(sentence_features(encoder, texts, cache, false)?.0)
}

/// Sentence embeddings of `texts` and, with `layers`, every layer's mean-pooled states side
/// by side (layers 0..=N, `hidden` wide each), from `cache` where present; the rest are
/// encoded in one pass (with a progress bar on a terminal) and added to it.
pub fn sentence_features(
    encoder: &Encoder,
    texts: &[&str],
    mut cache: Option<&mut FeatureCache>,
    layers: bool,
) -> Result<(Features, Option<Features>), TrainError> {
    let dim = encoder.hidden_size();
    let all = 0..=encoder.num_layers();
    let width = dim * all.clone().count();
    let mut rows: Vec<Option<(Vec<f32>, Vec<f32>)>> = Vec::with_capacity(texts.len());
    for text in texts {
        let row = match cache.as_deref_mut() {
            None => None,
            Some(c) => c.get(text, layers)?,
        };
        rows.push(row);
    }
    let missing: Vec<usize> = (0..texts.len()).filter(|&i| rows[i].is_none()).collect();
    if !missing.is_empty() {
        let states = if layers {
            headstream_encoder::States::pooled_layers(all.clone())?
        } else {
            headstream_encoder::States::default()
        };
        let bar = progress(missing.len(), "encoding");
        for chunk in missing.chunks(CHUNK) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let encoded = encoder.encode_with(&batch, states)?;
            let got: Vec<(Vec<f32>, Vec<f32>)> = encoded
                .into_iter()
                .map(|e| {
                    let mut pooled = Vec::with_capacity(if layers { width } else { 0 });
                    if layers {
                        for l in all.clone() {
                            pooled.extend_from_slice(e.pooled(l).unwrap_or_default());
                        }
                    }
                    (e.embedding, pooled)
                })
                .collect();
            if let Some(cache) = cache.as_deref_mut() {
                let (embeddings, pooled): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
                    got.iter().cloned().unzip();
                cache.embeddings.insert_all(&batch, &embeddings)?;
                if layers {
                    cache.layers()?.insert_all(&batch, &pooled)?;
                }
            }
            for (&i, row) in chunk.iter().zip(got) {
                rows[i] = Some(row);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }
    let mut embeddings = Features::new(dim);
    embeddings.data.reserve(texts.len() * dim);
    let mut pooled = layers.then(|| {
        let mut f = Features::new(width);
        f.data.reserve(texts.len() * width);
        f
    });
    for (e, l) in rows.into_iter().flatten() {
        embeddings.push(&e);
        if let Some(p) = pooled.as_mut() {
            p.push(&l);
        }
    }
    Ok((embeddings, pooled))
}

/// Where a sentence head's features come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureSource {
    /// The encoder's sentence embedding.
    Embedding,
    /// The concatenated mean-pooled states of these layers (0 = the embedding layer's output
    /// .. N = the last), standardised.
    Pooled(Vec<u32>),
}

impl FeatureSource {
    /// What `train` chooses from by cross-validation unless told: the sentence embedding and
    /// the top four layers (the BERT paper's feature-based recipe). Every layer above the
    /// embedding layer's scored 0.1 point better on TREC in cross-validation, at 1.5× the
    /// search's cost: `--layers 1,2,3,4,5,6` asks for it.
    pub fn candidates(num_layers: u32) -> Vec<Self> {
        let mut candidates = vec![Self::Embedding];
        if num_layers >= 2 {
            candidates.push(Self::Pooled(
                (num_layers.saturating_sub(3).max(1)..=num_layers).collect(),
            ));
        }
        candidates
    }

    /// The layers read (empty: the sentence embedding).
    pub fn layers(&self) -> &[u32] {
        match self {
            Self::Embedding => &[],
            Self::Pooled(layers) => layers,
        }
    }

    /// How the manifest names it.
    pub fn describe(&self) -> Value {
        match self {
            Self::Embedding => json!("sentence embedding"),
            Self::Pooled(layers) => json!({ "pooled_layers": layers, "standardised": true }),
        }
    }
}

/// The columns of `layers` from rows of every layer's pooled states side by side.
fn select_layers(all: &Features, hidden: usize, layers: &[u32]) -> Features {
    let mut x = Features::new(hidden * layers.len());
    x.data.reserve(all.rows() * x.cols);
    for r in 0..all.rows() {
        let row = all.row(r);
        for &l in layers {
            let at = l as usize * hidden;
            x.data
                .extend_from_slice(row.get(at..at + hidden).unwrap_or_default());
        }
    }
    x
}

/// Classifier settings.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// `C`; `None` (the default) chooses it by cross-validation ([`logreg::search_c`]).
    pub c: Option<f64>,
    /// Where cross-validation looks for `C`.
    pub search: logreg::CSearch,
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
    /// Where the features come from: one source, or several for cross-validation to choose
    /// from (with `C`, each source's best); empty (the default): the
    /// [`FeatureSource::candidates`] of the encoder (the embedding alone with `hidden`).
    pub features: Vec<FeatureSource>,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        Self {
            c: None,
            search: logreg::CSearch::default(),
            folds: 5,
            seed: 0,
            class_weight: ClassWeight::Uniform,
            max_iter: 1000,
            label_names: None,
            hidden: None,
            features: Vec::new(),
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

/// Trains a classification head on `examples` (at least two labels): with more than one
/// feature source or no `C`, the pair that cross-validates best, then a fit on all of them.
pub fn train_classifier(
    encoder: &Encoder,
    examples: &[Example],
    options: &ClassifyOptions,
    cache: Option<&mut FeatureCache>,
) -> Result<Trained, TrainError> {
    let per_label = data::label_counts(examples);
    if per_label.len() < 2 {
        return Err(TrainError::Invalid(
            "a classifier needs examples of at least two labels".into(),
        ));
    }
    if options.hidden.is_some() && options.c.is_none() {
        return Err(TrainError::Invalid(
            "cross-validation chooses C for the linear head; give C with a hidden layer".into(),
        ));
    }
    let sources = match (&options.features[..], options.hidden) {
        ([], Some(_)) => vec![FeatureSource::Embedding],
        ([], None) => FeatureSource::candidates(encoder.num_layers()),
        (given, _) => given.to_vec(),
    };
    for source in &sources {
        let states = headstream_encoder::States::pooled_layers(source.layers().iter().copied())?;
        encoder.check(states)?;
        if let Some(l) = duplicate(source.layers()) {
            return Err(TrainError::Invalid(format!("layer {l} is named twice")));
        }
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
    let wants_layers = sources.iter().any(|s| !s.layers().is_empty());
    let (embeddings, all_layers) = sentence_features(encoder, &texts, cache, wants_layers)?;
    let hidden = encoder.hidden_size();
    let features_of = |source: &FeatureSource| match (source, &all_layers) {
        (FeatureSource::Pooled(layers), Some(all)) => {
            let mut x = select_layers(all, hidden, layers);
            let stats = standardise(&mut x);
            (x, Some(stats))
        }
        _ => (embeddings.clone(), None),
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
    let choose = sources.len() > 1 || options.c.is_none();
    let (source, c, cv) = if !choose {
        (sources[0].clone(), options.c.unwrap_or(1.0), Value::Null)
    } else if folds < 2 {
        (
            sources[0].clone(),
            options.c.unwrap_or(1.0),
            json!("skipped: a label has fewer than 2 examples"),
        )
    } else {
        let mut tried = Vec::with_capacity(sources.len());
        let mut best: Option<(usize, logreg::CChoice)> = None;
        for (i, source) in sources.iter().enumerate() {
            let (x, _) = features_of(source);
            let mut cv = logreg::CrossValidation::new(
                &x,
                &y,
                Some(&weights),
                labels.len(),
                folds,
                options.seed,
                &fit_options,
            );
            let choice = match options.c {
                Some(c) => {
                    let accuracy = cv.score(c)?;
                    logreg::CChoice {
                        c,
                        accuracy,
                        scores: cv.scores(),
                        at_bound: false,
                    }
                }
                None => logreg::search_c(&mut cv, options.search)?,
            };
            tracing::info!(features = %source.describe(), c = choice.c, accuracy = choice.accuracy, "cross-validated");
            tried.push(json!({
                "features": source.describe(),
                "c": choice.c,
                "accuracy": choice.accuracy,
                "at_grid_edge": choice.at_bound,
                "scores": choice.scores,
            }));
            // Ties go to the earlier (cheaper) source.
            if best
                .as_ref()
                .is_none_or(|(_, b)| choice.accuracy > b.accuracy)
            {
                best = Some((i, choice));
            }
        }
        let Some((i, choice)) = best else {
            return Err(TrainError::Invalid("no feature source to train on".into()));
        };
        if choice.at_bound {
            tracing::warn!(
                c = choice.c,
                "cross-validation chose C at a bound of its search: a better C may lie past it"
            );
        }
        (
            sources[i].clone(),
            choice.c,
            json!({
                "folds": folds,
                "chosen": i,
                "at_grid_edge": choice.at_bound,
                "candidates": tried,
            }),
        )
    };
    let (x, standardised) = features_of(&source);
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
        "features": source.describe(),
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
        pooled_layers: source.layers().to_vec(),
    })
}

/// A value named twice in `values`, if any.
fn duplicate(values: &[u32]) -> Option<u32> {
    values
        .iter()
        .enumerate()
        .find(|(i, v)| values[..*i].contains(v))
        .map(|(_, v)| *v)
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
    cache: Option<&mut FeatureCache>,
) -> Result<Value, TrainError> {
    match package.manifest.kind {
        Kind::Other => Err(TrainError::Invalid(format!(
            "{} is an `other` head: there is no metric to evaluate it by (classify and tokens heads have)",
            package.manifest.name
        ))),
        Kind::Classify => {
            let examples = data::read_examples(data)?;
            let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
            // Embeddings and (for a head over layers) every layer's pooled states, cached.
            let asked = &head.inputs().pooled_layers;
            let (x, all) = sentence_features(encoder, &texts, cache, !asked.is_empty())?;
            let hidden = encoder.hidden_size();
            let layers: Vec<Vec<headstream_encoder::LayerOutput>> = match &all {
                None => Vec::new(),
                Some(all) => (0..all.rows())
                    .map(|r| {
                        let row = all.row(r);
                        asked
                            .iter()
                            .filter_map(|&layer| {
                                let at = layer as usize * hidden;
                                Some(headstream_encoder::LayerOutput {
                                    layer,
                                    pooled: Some(row.get(at..at + hidden)?.to_vec()),
                                    tokens: None,
                                })
                            })
                            .collect()
                    })
                    .collect(),
            };
            let mut predicted = Vec::with_capacity(examples.len());
            for (start, chunk) in (0..examples.len())
                .step_by(CHUNK)
                .map(|s| (s, &texts[s..(s + CHUNK).min(texts.len())]))
            {
                let ids: Vec<String> = (start..start + chunk.len())
                    .map(|i| i.to_string())
                    .collect();
                let items: Vec<Item<'_>> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, text)| Item {
                        id: &ids[j],
                        text,
                        embedding: x.row(start + j),
                        token_states: None,
                        upstream: Vec::new(),
                        layers: layers.get(start + j).map_or(&[], Vec::as_slice),
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
            let token_states = headstream_encoder::States {
                tokens: true,
                token_layers: headstream_encoder::LayerSet::of(
                    head.inputs().token_layers.iter().copied(),
                )?,
                ..headstream_encoder::States::default()
            };
            let mut gold = Vec::with_capacity(sentences.len());
            let mut predicted = Vec::with_capacity(sentences.len());
            let bar = progress(sentences.len(), "evaluating");
            for chunk in sentences.chunks(CHUNK) {
                let joined: Vec<(String, Vec<(usize, usize)>)> =
                    chunk.iter().map(tokens::join).collect();
                let texts: Vec<&str> = joined.iter().map(|(t, _)| t.as_str()).collect();
                let encoded = encoder.encode_with(&texts, token_states)?;
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
