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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use headstream_encoder::Encoder;
use headstream_package::{Kind, Package};
use headstream_plugin_host::{Head, Item, Limits, PluginHost, TokenStates};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
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

/// The optimiser's gradient tolerance in cross-validation fits: thirty times looser than a final
/// fit's. On a TREC fold, held-out accuracy at 3e-4 was within 0.2 point of the converged
/// model's at every C tried (0.001–0.1), in half the iterations of 1e-4; 1e-3 moved it by 0.5.
const CV_GRAD_TOL: f64 = 3e-4;

/// How far (in cross-validated accuracy) a feature source's coarse C walk may end below the best
/// source scored before it and still be refined. Refining by √10 moved the shipped heads' scores
/// by at most 0.3 point; below this margin it could not change which source wins.
const REFINE_MARGIN: f64 = 0.005;

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
            let (embeddings, pooled): (Vec<Vec<f32>>, Vec<Vec<f32>>) = encoder
                .encode_with(&batch, states)?
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
                .unzip();
            if let Some(cache) = cache.as_deref_mut() {
                cache.embeddings.insert_all(&batch, &embeddings)?;
                if layers {
                    cache.layers()?.insert_all(&batch, &pooled)?;
                }
            }
            for ((&i, e), l) in chunk.iter().zip(embeddings).zip(pooled) {
                rows[i] = Some((e, l));
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
    /// embedding layer's, as a third candidate, scored 0.1 point better on TREC in
    /// cross-validation (89.4% vs 89.3%) and made the search 2.5× as long: `--layers
    /// 1,2,3,4,5,6` asks for it.
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
    /// The layers whose per-token states a token model reads (empty: the last layer's).
    pub token_layers: Vec<u32>,
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
            (Cow::Owned(x), Some(stats))
        }
        _ => (Cow::Borrowed(&embeddings), None),
    };
    let fit_options = FitOptions {
        c: 1.0,
        class_weight: options.class_weight,
        lbfgs: lbfgs::Options {
            max_iter: options.max_iter,
            ..lbfgs::Options::default()
        },
    };
    // Cross-validation fits stop at a looser tolerance than the final fit (see CV_GRAD_TOL).
    let cv_options = FitOptions {
        lbfgs: lbfgs::Options {
            grad_tol: CV_GRAD_TOL,
            ..fit_options.lbfgs
        },
        ..fit_options
    };
    let smallest = per_label.values().copied().min().unwrap_or(0);
    let folds = options.folds.min(smallest);
    let choose = sources.len() > 1 || options.c.is_none();
    let (source, c, cv, start) = if !choose {
        (
            sources[0].clone(),
            options.c.unwrap_or(1.0),
            Value::Null,
            None,
        )
    } else if folds < 2 {
        (
            sources[0].clone(),
            options.c.unwrap_or(1.0),
            json!("skipped: a label has fewer than 2 examples"),
            None,
        )
    } else {
        let mut tried = vec![Value::Null; sources.len()];
        let mut best: Option<(usize, logreg::CChoice, Option<LinearModel>)> = None;
        // The richest source first (it usually wins): a later one whose coarse walk ends
        // clearly below it is not refined.
        for (i, source) in sources.iter().enumerate().rev() {
            let (x, _) = features_of(source);
            let mut cv = logreg::CrossValidation::new(
                &x,
                &y,
                Some(&weights),
                labels.len(),
                folds,
                options.seed,
                &cv_options,
            )?;
            let choice = match options.c {
                Some(c) => {
                    let accuracy = cv.score(c)?;
                    logreg::CChoice {
                        c,
                        accuracy,
                        scores: vec![logreg::CvScore { c, accuracy }],
                        at_bound: false,
                    }
                }
                None => logreg::search_c(
                    &mut cv,
                    logreg::CSearch {
                        refine_above: best.as_ref().map(|(_, b, _)| b.accuracy - REFINE_MARGIN),
                        ..options.search
                    },
                )?,
            };
            tracing::info!(features = %source.describe(), c = choice.c, accuracy = choice.accuracy, "cross-validated");
            tried[i] = json!({
                "features": source.describe(),
                "c": choice.c,
                "accuracy": choice.accuracy,
                "at_grid_edge": choice.at_bound,
                "scores": choice.scores,
            });
            // Ties go to the cheaper source (scored later).
            if best
                .as_ref()
                .is_none_or(|(_, b, _)| choice.accuracy >= b.accuracy)
            {
                let start = cv.mean_model(choice.c);
                best = Some((i, choice, start));
            }
        }
        let Some((i, choice, start)) = best else {
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
            start,
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
        // From the folds' mean model at the chosen C, when cross-validated.
        None => {
            logreg::fit_weighted_warm(&x, &y, &weights, labels.len(), &fit_options, start.as_ref())?
        }
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
        token_layers: Vec::new(),
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
#[derive(Debug, Clone)]
pub struct TokensOptions {
    /// Features besides each word's first-piece state (`layers` is set from [`Self::layers`]).
    pub features: tokens::FeatureSet,
    /// Layers whose per-token states are concatenated for each piece (at most 4); empty: the
    /// last layer's token states.
    pub layers: Vec<u32>,
    /// `C`; `None` chooses it by entity F1 on the dev split ([`logreg::walk_c`]).
    pub c: Option<f64>,
    /// Where the dev-split search for `C` looks.
    pub search: logreg::CSearch,
    /// Share of the training sentences held out as the dev split when none is given.
    pub dev_share: f64,
    /// Seed for carving the dev split.
    pub seed: u64,
    /// Decode a sentence's tags as the best valid BIO path (else each word's best tag).
    pub viterbi: bool,
    /// Example weighting.
    pub class_weight: ClassWeight,
    /// Most L-BFGS iterations.
    pub max_iter: usize,
}

impl Default for TokensOptions {
    fn default() -> Self {
        Self {
            features: tokens::FeatureSet {
                window: 1,
                shape: true,
                layers: 0,
            },
            layers: Vec::new(),
            c: None,
            search: logreg::CSearch {
                start: Some(0.1),
                ..logreg::CSearch::default()
            },
            dev_share: 0.1,
            seed: 0,
            viterbi: true,
            class_weight: ClassWeight::Uniform,
            max_iter: 1000,
        }
    }
}

/// The token layers `train` reads by default: the last four.
pub fn default_token_layers(num_layers: u32) -> Vec<u32> {
    (num_layers.saturating_sub(3)..=num_layers).collect()
}

/// What a token head over `layers` (empty: the last layer's token states) needs encoded.
fn token_states(layers: &[u32]) -> Result<headstream_encoder::States, TrainError> {
    Ok(headstream_encoder::States {
        tokens: true,
        token_layers: headstream_encoder::LayerSet::of(layers.iter().copied())?,
        ..headstream_encoder::States::default()
    })
}

/// Feature rows (one per word with a known tag), their tags, and per sentence its gold spans
/// and the words behind its rows.
struct TaggedRows {
    x: Features,
    y: Vec<usize>,
    sentences: Vec<SentenceRows>,
}

fn tagger_rows(
    encoder: &Encoder,
    sentences: &[TaggedSentence],
    tags: &[String],
    features: tokens::FeatureSet,
    layers: &[u32],
    what: &str,
) -> Result<TaggedRows, TrainError> {
    let dim = encoder.hidden_size();
    let states = token_states(layers)?;
    encoder.check(states)?;
    let mut rows = TaggedRows {
        x: Features::new(features.width(dim)),
        y: Vec::new(),
        sentences: Vec::with_capacity(sentences.len()),
    };
    let bar = progress(sentences.len(), what);
    for chunk in sentences.chunks(CHUNK) {
        let joined: Vec<(String, Vec<(usize, usize)>)> = chunk.iter().map(tokens::join).collect();
        let texts: Vec<&str> = joined.iter().map(|(t, _)| t.as_str()).collect();
        let encoded = encoder.encode_with(&texts, states)?;
        for ((sentence, (text, spans)), enc) in chunk.iter().zip(&joined).zip(&encoded) {
            let piece_states: Option<Vec<&[f32]>> = if layers.is_empty() {
                enc.token_states.as_deref().map(|s| vec![s])
            } else {
                layers.iter().map(|&l| enc.layer_tokens(l)).collect()
            };
            let Some(piece_states) = piece_states else {
                continue;
            };
            let mut words = Vec::new();
            for (index, word, tag) in tokens::labelled_pieces(sentence, text, spans, &enc.offsets) {
                if let Some(class) = tags.iter().position(|t| *t == tag) {
                    features.push(&mut rows.x.data, &piece_states, dim, text, index, word);
                    rows.y.push(class);
                    words.push((word.1, word.2));
                }
            }
            rows.sentences
                .push((metrics::spans_from_tags(&sentence.tags, spans), words));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// Trains a per-token tagging head on `sentences`; without `C`, the fit whose entity F1 on
/// `dev` (else on a share of `sentences` held out) is best.
pub fn train_tagger(
    encoder: &Encoder,
    sentences: &[TaggedSentence],
    dev: Option<&[TaggedSentence]>,
    options: &TokensOptions,
) -> Result<Trained, TrainError> {
    if options.layers.len() > 4 {
        return Err(TrainError::Invalid(format!(
            "a token head reads at most 4 layers, not {}",
            options.layers.len()
        )));
    }
    if let Some(l) = duplicate(&options.layers) {
        return Err(TrainError::Invalid(format!("layer {l} is named twice")));
    }
    let tags = tokens::tag_set(sentences);
    let features = tokens::FeatureSet {
        layers: options.layers.len(),
        ..options.features
    };
    // The dev split: given, carved from the training sentences, or none with a fixed C.
    let carved: Option<(Vec<TaggedSentence>, Vec<TaggedSentence>)> =
        (options.c.is_none() && dev.is_none()).then(|| {
            let mut order: Vec<usize> = (0..sentences.len()).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(options.seed));
            let held = ((sentences.len() as f64 * options.dev_share).round() as usize)
                .clamp(1, sentences.len().saturating_sub(1).max(1));
            let (dev, train) = order.split_at(held.min(order.len()));
            (
                train.iter().map(|&i| sentences[i].clone()).collect(),
                dev.iter().map(|&i| sentences[i].clone()).collect(),
            )
        });
    let (train, dev) = match (&carved, dev) {
        (Some((train, dev)), _) => (&train[..], Some(&dev[..])),
        (None, dev) => (sentences, dev),
    };
    let rows = tagger_rows(encoder, train, &tags, features, &options.layers, "encoding")?;
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for &c in &rows.y {
        *per_label.entry(tags[c].clone()).or_insert(0) += 1;
    }
    if per_label.len() < 2 {
        return Err(TrainError::Invalid(
            "the data has a single tag; a tagger needs at least two".into(),
        ));
    }
    let fit_options = FitOptions {
        c: options.c.unwrap_or(1.0),
        class_weight: options.class_weight,
        lbfgs: lbfgs::Options {
            max_iter: options.max_iter,
            ..lbfgs::Options::default()
        },
    };
    let (model, c, search) = match (options.c, dev) {
        (Some(_), _) | (None, None) => (
            logreg::fit(&rows.x, &rows.y, tags.len(), &fit_options)?,
            fit_options.c,
            Value::Null,
        ),
        (None, Some(dev)) => {
            let dev_rows = tagger_rows(
                encoder,
                dev,
                &tags,
                features,
                &options.layers,
                "encoding dev",
            )?;
            let mut fits: Vec<(f64, LinearModel)> = Vec::new();
            let choice = logreg::walk_c(options.search, |c| -> Result<f64, TrainError> {
                let start = fits
                    .iter()
                    .min_by(|a, b| (a.0 / c).ln().abs().total_cmp(&(b.0 / c).ln().abs()))
                    .map(|(_, m)| m);
                let model = logreg::fit_warm(
                    &rows.x,
                    &rows.y,
                    tags.len(),
                    &FitOptions { c, ..fit_options },
                    start,
                )?;
                let f1 = tagger_fit(
                    &model,
                    &dev_rows.x,
                    &tags,
                    &dev_rows.sentences,
                    options.viterbi,
                )
                .overall
                .f1;
                tracing::info!(c, f1, iterations = model.iterations, "dev entity F1");
                fits.push((c, model));
                Ok(f1)
            })?;
            if choice.at_bound {
                tracing::warn!(
                    c = choice.c,
                    "the dev split chose C at a bound of its search"
                );
            }
            let chosen = fits
                .iter()
                .position(|(c, _)| *c == choice.c)
                .ok_or_else(|| TrainError::Invalid("the chosen C was never fitted".into()))?;
            let model = fits.swap_remove(chosen).1;
            let search = json!({
                "dev": if carved.is_some() {
                    json!({ "carved_share": options.dev_share, "seed": options.seed, "sentences": dev.len() })
                } else {
                    json!({ "sentences": dev.len() })
                },
                "metric": "entity F1",
                "f1": choice.accuracy,
                "at_grid_edge": choice.at_bound,
                "scores": choice.scores.iter().map(|s| json!({ "c": s.c, "f1": s.accuracy })).collect::<Vec<_>>(),
            });
            (model, choice.c, search)
        }
    };
    let hyperparameters = json!({
        "model": "per-token multinomial logistic regression (L2, unpenalised intercept)",
        "features": {
            "state": "first word piece of each word",
            "layers": if options.layers.is_empty() { json!("last") } else { json!(options.layers) },
            "window": options.features.window,
            "shape": options.features.shape,
        },
        "decode": if options.viterbi { "viterbi" } else { "greedy" },
        "c": c,
        "c_search": search,
        "class_weight": match options.class_weight { ClassWeight::Uniform => "uniform", ClassWeight::Balanced => "balanced" },
        "rows": rows.y.len(),
        "optimizer": { "name": "L-BFGS", "iterations": model.iterations, "converged": model.converged },
    });
    let fit = tagger_fit(&model, &rows.x, &tags, &rows.sentences, options.viterbi);
    Ok(Trained {
        model,
        labels: tags,
        per_label,
        hyperparameters,
        fit: serde_json::to_value(fit).ok(),
        pooled_layers: Vec::new(),
        token_layers: options.layers.clone(),
    })
}

/// A training sentence's gold spans, and the byte span of the word behind each of its rows.
type SentenceRows = (Vec<metrics::Span>, Vec<(usize, usize)>);

/// Entity metrics of `model` on feature rows `x` of `sentences`: each sentence's tags decoded
/// natively as the token-classifier plugin decodes them (best valid path with `viterbi`, else
/// each word's best tag), then into spans.
fn tagger_fit(
    model: &LinearModel,
    x: &Features,
    tags: &[String],
    sentences: &[SentenceRows],
    viterbi: bool,
) -> metrics::EntityMetrics {
    let mut row = 0;
    let mut gold = Vec::with_capacity(sentences.len());
    let mut predicted = Vec::with_capacity(sentences.len());
    for (spans, words) in sentences {
        let rows = row..row + words.len();
        let path: Vec<usize> = if viterbi {
            let logits: Vec<Vec<f32>> = rows.map(|i| model.logits(x.row(i))).collect();
            headstream_token_features::viterbi_bio(tags, &logits)
        } else {
            rows.map(|i| model.predict(x.row(i))).collect()
        };
        let predicted_tags: Vec<String> = path.iter().map(|&k| tags[k].clone()).collect();
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
            let token_states = token_states(&head.inputs().token_layers)?;
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
