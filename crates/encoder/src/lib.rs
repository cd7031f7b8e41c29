//! The shared sentence encoder: one pretrained BERT that every task head reads from.
//!
//! [`Encoder::load`] reads a sentence-transformers model directory (`config.json`,
//! `model.safetensors`, `tokenizer.json`, `modules.json`, `1_Pooling/config.json`,
//! `sentence_bert_config.json`) and reproduces sentence-transformers' output:
//! the tokenizer truncates at the model's `max_seq_length` (special tokens included) and pads
//! only to the longest text in a batch; BERT runs in f32 on candle; pooling ignores padding;
//! the vector is L2-normalised when the model has a `Normalize` module.
//!
//! [`Encoder::encode`] takes any number of texts, sorts them by token length, groups them into
//! batches bounded by [`BatchLimits`], and returns one [`EncodedText`] per input, in input
//! order. A text's result does not depend on which texts share its batch (up to float
//! rounding). On request it also returns the last hidden state of every token with the token's
//! byte span in the original text, for token-level heads.
//!
//! Every encoder has a [`Fingerprint`] over its weights, tokenizer, pooling and maximum length,
//! so a head trained on one encoder can refuse to run on another.
//!
//! ```no_run
//! use headstream_encoder::{Encoder, EncoderOptions};
//! let encoder = Encoder::load("models/all-minilm-l6-v2".as_ref(), EncoderOptions::default())?;
//! let out = encoder.encode(&["headstream encodes each text once"], false)?;
//! assert_eq!(out[0].embedding.len(), 384);
//! println!("{}", encoder.fingerprint());
//! # Ok::<(), headstream_encoder::EncoderError>(())
//! ```
#![deny(missing_docs)]

#[macro_use]
mod simd;
mod batch;
mod config;
mod fingerprint;
mod int8;
mod packed;
mod panels;

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::BertModel;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub use batch::{BatchLimits, plan_batches};
pub use config::{ModelConfig, Pooling};
pub use fingerprint::Fingerprint;
pub use simd::instruction_set;

/// This machine's f32 matrix-product rate (GFLOP/s) on the kernels and rayon pool the packed
/// path runs on, measured now on a `m × k · k × n` product (best of 20): the roof a roofline
/// compares the encoder with. Takes about a second for 2048³.
pub fn sgemm_gflops(m: usize, k: usize, n: usize) -> f64 {
    packed::sgemm_gflops(m, k, n)
}

/// This machine's int8 product rate (billions of integer operations per second, multiply-adds
/// counting two) on the kernels and pool the int8 path runs on, measured now like
/// [`sgemm_gflops`]: the roof for an int8 encoder. All sizes must be positive.
pub fn igemm_gops(m: usize, k: usize, n: usize) -> f64 {
    int8::igemm_gops(m, k, n)
}

/// Why loading or running the encoder failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncoderError {
    /// The model directory does not exist.
    #[error("no model directory at {dir}: run `headstream model fetch` or pass --model DIR")]
    NoModelDir {
        /// The directory that was looked for.
        dir: PathBuf,
    },
    /// A file the model needs is missing.
    #[error("model file {path} is missing")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A configuration file is malformed or asks for something unsupported.
    #[error("{path}: {reason}")]
    Config {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A model file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A request asks for states the encoder does not have or cannot give.
    #[error("{0}")]
    Unsupported(String),
    /// The weights do not fit the architecture, or a tensor operation failed.
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
}

/// Options for [`Encoder::load`].
#[derive(Debug, Clone, Default)]
pub struct EncoderOptions {
    /// Batch limits for [`Encoder::encode`].
    pub limits: BatchLimits,
    /// Run on the first CUDA GPU when built with the `cuda` feature and one is present.
    pub prefer_gpu: bool,
    /// Which implementation of the forward pass runs.
    pub backend: Backend,
    /// The arithmetic of the dense layers.
    pub precision: Precision,
}

/// The arithmetic of the encoder's dense layers. Part of the [`Fingerprint`]: vectors from an
/// int8 encoder are close to, not equal to, the f32 ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 weights and products: sentence-transformers' output to within 1e-5.
    #[default]
    F32,
    /// 8-bit weights (one scale per output channel), activations quantized per row at run
    /// time, integer products (packed CPU path only).
    Int8,
}

impl Precision {
    /// `f32` or `int8`, as configs and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            other => Err(format!("{other:?} is not f32 or int8")),
        }
    }
}

/// The implementation of BERT's forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// The packed CPU path on the CPU, candle-transformers' `BertModel` on a GPU.
    #[default]
    Auto,
    /// Dense layers on the batch's real tokens only (no padding), attention per sequence.
    Packed,
    /// candle-transformers' `BertModel` on padded batches.
    Candle,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "packed" => Ok(Self::Packed),
            "candle" => Ok(Self::Candle),
            other => Err(format!("{other:?} is not auto, packed or candle")),
        }
    }
}

/// The loaded forward pass.
enum Model {
    Candle(BertModel),
    Packed(packed::PackedBert),
}

/// A set of the encoder's layers: 0 is the embedding layer's output, 1..=N the transformer
/// layers' outputs (N, the last, is what the sentence embedding pools). Ascending iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LayerSet(u64);

impl LayerSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// The set of these layers; a layer of 64 or more (no model has one) is an error naming it.
    pub fn of(layers: impl IntoIterator<Item = u32>) -> Result<Self, EncoderError> {
        layers.into_iter().try_fold(Self::EMPTY, |s, l| {
            if l < 64 {
                Ok(Self(s.0 | 1 << l))
            } else {
                Err(EncoderError::Unsupported(format!(
                    "layer {l} asked for: layers are numbered below 64"
                )))
            }
        })
    }

    /// Both sets' layers.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether `layer` is in the set.
    pub fn contains(self, layer: u32) -> bool {
        layer < 64 && self.0 & (1 << layer) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of layers in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The layers, ascending.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |&l| self.contains(l))
    }

    /// The highest layer in the set.
    pub fn max(self) -> Option<u32> {
        (self.0 != 0).then(|| 63 - self.0.leading_zeros())
    }
}

/// What an encode call returns besides each text's sentence embedding. The default asks for
/// nothing more, and costs nothing more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct States {
    /// The last layer's per-token states ([`EncodedText::token_states`]).
    pub tokens: bool,
    /// Layers whose mean-pooled states ([`LayerOutput::pooled`]) are returned.
    pub pooled: LayerSet,
    /// Layers whose per-token states ([`LayerOutput::tokens`]) are returned.
    pub token_layers: LayerSet,
}

impl States {
    /// Only the last layer's token states, or nothing.
    pub fn tokens(tokens: bool) -> Self {
        Self {
            tokens,
            ..Self::default()
        }
    }

    /// Only the mean-pooled states of `layers`; a layer of 64 or more is an error naming it.
    pub fn pooled_layers(layers: impl IntoIterator<Item = u32>) -> Result<Self, EncoderError> {
        Ok(Self {
            pooled: LayerSet::of(layers)?,
            ..Self::default()
        })
    }

    /// Every layer either set names.
    pub fn layers(self) -> LayerSet {
        self.pooled.union(self.token_layers)
    }

    /// What either request asks for: one pass that serves both.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self {
            tokens: self.tokens || other.tokens,
            pooled: self.pooled.union(other.pooled),
            token_layers: self.token_layers.union(other.token_layers),
        }
    }

    /// Drops from `encoded` what this request did not ask for (what a pass made for a wider
    /// request carries besides), so a caller gets exactly what it asked.
    pub fn narrow(self, encoded: &mut EncodedText) {
        if !self.tokens {
            encoded.token_states = None;
        }
        encoded
            .layers
            .retain(|l| self.pooled.contains(l.layer) || self.token_layers.contains(l.layer));
        for layer in &mut encoded.layers {
            if !self.pooled.contains(layer.layer) {
                layer.pooled = None;
            }
            if !self.token_layers.contains(layer.layer) {
                layer.tokens = None;
            }
        }
    }
}

/// One layer's states for one text, as [`States`] asked for them.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerOutput {
    /// The layer (0: embedding layer output, N: last).
    pub layer: u32,
    /// Mean over the text's tokens of the layer's states (not normalised), `hidden_size` long;
    /// when asked for.
    pub pooled: Option<Vec<f32>>,
    /// Row-major `n_tokens × hidden_size` states of the layer; when asked for.
    pub tokens: Option<Vec<f32>>,
}

/// The encoder's output for one text.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedText {
    /// The pooled (and, for models that say so, L2-normalised) sentence embedding.
    pub embedding: Vec<f32>,
    /// Token ids fed to the model, `[CLS]` and `[SEP]` included, after truncation.
    pub input_ids: Vec<u32>,
    /// Byte span `(start, end)` of each token in the original text; `(0, 0)` for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// Whether the text was cut at the model's maximum length.
    pub truncated: bool,
    /// Last hidden state of every token, row-major `input_ids.len() × hidden_size`; only when
    /// requested.
    pub token_states: Option<Vec<f32>>,
    /// The states of the layers [`States`] asked for, ascending by layer; empty by default.
    pub layers: Vec<LayerOutput>,
}

impl EncodedText {
    /// Number of tokens the model saw for this text.
    pub fn n_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// The mean-pooled states of `layer`, if they were asked for.
    pub fn pooled(&self, layer: u32) -> Option<&[f32]> {
        self.layer(layer).and_then(|l| l.pooled.as_deref())
    }

    /// The per-token states of `layer`, if they were asked for.
    pub fn layer_tokens(&self, layer: u32) -> Option<&[f32]> {
        self.layer(layer).and_then(|l| l.tokens.as_deref())
    }

    fn layer(&self, layer: u32) -> Option<&LayerOutput> {
        self.layers.iter().find(|l| l.layer == layer)
    }
}

/// A loaded encoder: tokenizer, BERT weights, pooling, fingerprint. Cheap to share by reference
/// across threads.
pub struct Encoder {
    config: ModelConfig,
    tokenizer: Tokenizer,
    model: Model,
    device: Device,
    pad_id: u32,
    fingerprint: Fingerprint,
    limits: BatchLimits,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("dir", &self.config.dir)
            .field("fingerprint", &self.fingerprint.to_string())
            .field("device", &self.device)
            .field("backend", &self.backend())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One text's output from a forward pass: embedding, token states and layers if requested.
type Forwarded = (Vec<f32>, Option<Vec<f32>>, Vec<LayerOutput>);

/// A tokenized text, ready to batch.
#[derive(Debug, Clone)]
pub struct Tokenized {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Byte span of each token in the original text.
    pub offsets: Vec<(usize, usize)>,
    /// Whether truncation removed tokens.
    pub truncated: bool,
}

impl Encoder {
    /// Loads the sentence-transformers model in `dir`.
    pub fn load(dir: &std::path::Path, options: EncoderOptions) -> Result<Self, EncoderError> {
        let config = ModelConfig::load(dir)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            EncoderError::Tokenizer(format!("{}: {e}", dir.join("tokenizer.json").display()))
        })?;
        // tokenizer.json may carry its own truncation (128) and fixed padding; sentence-transformers
        // replaces both: truncate at max_seq_length, pad to the longest text in a batch (done here).
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);

        let device = select_device(options.prefer_gpu)?;
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, &device)?;
        let packed = match options.backend {
            Backend::Packed => true,
            Backend::Candle => false,
            Backend::Auto => device.is_cpu(),
        };
        let model = if packed {
            if !device.is_cpu() {
                return Err(EncoderError::Config {
                    path: weights_path,
                    reason: "the packed backend runs on the CPU only".to_owned(),
                });
            }
            Model::Packed(packed::PackedBert::load(
                &tensors,
                &config.bert,
                options.precision,
            )?)
        } else if options.precision != Precision::F32 {
            return Err(EncoderError::Config {
                path: weights_path,
                reason: format!(
                    "precision {} runs on the packed CPU path only",
                    options.precision
                ),
            });
        } else {
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
            Model::Candle(BertModel::load(vb, &config.bert)?)
        };
        let fingerprint = Fingerprint::compute(&config, options.precision)?;
        tracing::debug!(dir = %dir.display(), %fingerprint, "encoder loaded");
        Ok(Self {
            config,
            tokenizer,
            model,
            device,
            pad_id,
            fingerprint,
            limits: options.limits,
        })
    }

    /// The encoder's identity; heads built for one encoder refuse any other.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Floating-point operations of one forward pass over texts of these token counts
    /// (multiply-adds count two; the matrix products and attention, not the element-wise
    /// steps): the work a roofline compares with the machine's matrix-product rate.
    pub fn flops(&self, lengths: &[usize]) -> f64 {
        let b = &self.config.bert;
        let (h, inter) = (b.hidden_size as f64, b.intermediate_size as f64);
        let tokens: f64 = lengths.iter().map(|&l| l as f64).sum();
        let squares: f64 = lengths.iter().map(|&l| (l * l) as f64).sum();
        let dense = 2.0 * tokens * (3.0 * h * h + h * h + 2.0 * h * inter);
        let attention = 4.0 * squares * h;
        b.num_hidden_layers as f64 * (dense + attention)
    }

    /// Which forward pass runs: [`Backend::Packed`] or [`Backend::Candle`].
    pub fn backend(&self) -> Backend {
        match self.model {
            Model::Candle(_) => Backend::Candle,
            Model::Packed(_) => Backend::Packed,
        }
    }

    /// The configuration read from the model directory.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Width of embeddings and token states.
    pub fn hidden_size(&self) -> usize {
        self.config.bert.hidden_size
    }

    /// Number of transformer layers: [`LayerSet`]s name layers `0..=num_layers()`.
    pub fn num_layers(&self) -> u32 {
        self.config.bert.num_hidden_layers as u32
    }

    /// Checks that the encoder can give what `states` asks for.
    pub fn check(&self, states: States) -> Result<(), EncoderError> {
        let n = self.num_layers();
        if let Some(max) = states.layers().max().filter(|&m| m > n) {
            return Err(EncoderError::Unsupported(format!(
                "layer {max} asked for: the encoder has layers 0 (embeddings) to {n}"
            )));
        }
        if self.backend() == Backend::Candle && states.layers().iter().any(|l| l != n) {
            return Err(EncoderError::Unsupported(format!(
                "the candle backend gives the last layer ({n}) only; run the packed CPU backend for earlier layers"
            )));
        }
        Ok(())
    }

    /// Batch limits used by [`Encoder::encode`].
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Tokenizes texts with the encoder's settings (truncation, no padding).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokenized>, EncoderError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| Tokenized {
                ids: e.get_ids().to_vec(),
                offsets: e.get_offsets().to_vec(),
                truncated: !e.get_overflowing().is_empty(),
            })
            .collect())
    }

    /// Encodes `texts`, returning one result per text in input order. With `token_states`,
    /// each result also carries the last hidden state of every token.
    pub fn encode(
        &self,
        texts: &[&str],
        token_states: bool,
    ) -> Result<Vec<EncodedText>, EncoderError> {
        self.encode_with(texts, States::tokens(token_states))
    }

    /// Encodes `texts` like [`Encoder::encode`], returning also the layer states `states`
    /// asks for.
    pub fn encode_with(
        &self,
        texts: &[&str],
        states: States,
    ) -> Result<Vec<EncodedText>, EncoderError> {
        let tokenized = self.tokenize(texts)?;
        self.encode_tokenized_with(tokenized, states)
    }

    /// Encodes already tokenized texts (see [`Encoder::tokenize`]), in input order.
    pub fn encode_tokenized(
        &self,
        tokenized: Vec<Tokenized>,
        token_states: bool,
    ) -> Result<Vec<EncodedText>, EncoderError> {
        self.encode_tokenized_with(tokenized, States::tokens(token_states))
    }

    /// Encodes already tokenized texts, with the layer states `states` asks for.
    pub fn encode_tokenized_with(
        &self,
        tokenized: Vec<Tokenized>,
        states: States,
    ) -> Result<Vec<EncodedText>, EncoderError> {
        self.check(states)?;
        let lengths: Vec<usize> = tokenized.iter().map(|t| t.ids.len()).collect();
        let mut results: Vec<Option<EncodedText>> = vec![None; tokenized.len()];
        let mut tokenized: Vec<Option<Tokenized>> = tokenized.into_iter().map(Some).collect();
        for batch in plan_batches(&lengths, self.limits) {
            let items: Vec<Tokenized> = batch.iter().filter_map(|&i| tokenized[i].take()).collect();
            let encoded = self.forward_batch(&items, states)?;
            for (i, (item, (embedding, token_states, layers))) in
                batch.into_iter().zip(items.into_iter().zip(encoded))
            {
                results[i] = Some(EncodedText {
                    embedding,
                    input_ids: item.ids,
                    offsets: item.offsets,
                    truncated: item.truncated,
                    token_states,
                    layers,
                });
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Runs BERT on one batch; returns (embedding, token states, layers) per item.
    fn forward_batch(
        &self,
        items: &[Tokenized],
        states: States,
    ) -> Result<Vec<Forwarded>, EncoderError> {
        match &self.model {
            Model::Candle(model) => self.forward_padded(model, items, states),
            Model::Packed(model) => self.forward_packed(model, items, states),
        }
    }

    /// One text's [`LayerOutput`]s from whole-batch layer states (`rows` of the text: `span`).
    fn layer_outputs(
        &self,
        kept: &[(u32, &[f32])],
        span: (usize, usize),
        states: States,
    ) -> Vec<LayerOutput> {
        let h = self.hidden_size();
        kept.iter()
            .map(|(layer, all)| {
                let rows = &all[span.0 * h..span.1 * h];
                LayerOutput {
                    layer: *layer,
                    pooled: states.pooled.contains(*layer).then(|| mean_rows(rows, h)),
                    tokens: states.token_layers.contains(*layer).then(|| rows.to_vec()),
                }
            })
            .collect()
    }

    /// The packed path: real tokens only, pooled per sequence.
    fn forward_packed(
        &self,
        model: &packed::PackedBert,
        items: &[Tokenized],
        states: States,
    ) -> Result<Vec<Forwarded>, EncoderError> {
        let h = self.hidden_size();
        let sequences: Vec<&[u32]> = items.iter().map(|t| t.ids.as_slice()).collect();
        // On a worker of the pool: the pass's many parallel steps then fork from a worker
        // (work stealing) instead of each being injected from outside and waited on.
        let packed = rayon::scope(|_| model.forward(&sequences, states.layers()))?;
        // The last layer is `packed.states` itself, not a copy.
        let last = self.num_layers();
        let kept: Vec<(u32, &[f32])> = packed
            .kept
            .iter()
            .map(|(l, s)| (*l, s.as_slice()))
            .chain(
                states
                    .layers()
                    .contains(last)
                    .then_some((last, packed.states.as_slice())),
            )
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for w in packed.starts.windows(2) {
            let rows = &packed.states[w[0] * h..w[1] * h];
            let mut pooled = match self.config.pooling {
                Pooling::Mean => mean_rows(rows, h),
                Pooling::Cls => {
                    let mut first = rows[..h.min(rows.len())].to_vec();
                    first.resize(h, 0.0);
                    first
                }
                Pooling::Max => {
                    let mut max = vec![f32::NEG_INFINITY; h];
                    for row in rows.chunks_exact(h) {
                        for (p, v) in max.iter_mut().zip(row) {
                            *p = p.max(*v);
                        }
                    }
                    max
                }
            };
            if self.config.normalize {
                let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                pooled.iter_mut().for_each(|p| *p /= norm);
            }
            let layers = self.layer_outputs(&kept, (w[0], w[1]), states);
            out.push((pooled, states.tokens.then(|| rows.to_vec()), layers));
        }
        Ok(out)
    }

    /// candle-transformers' BERT on one padded batch.
    fn forward_padded(
        &self,
        model: &BertModel,
        items: &[Tokenized],
        states: States,
    ) -> Result<Vec<Forwarded>, EncoderError> {
        let batch = items.len();
        let seq = items.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        if batch == 0 || seq == 0 {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        for t in items {
            ids.extend_from_slice(&t.ids);
            ids.resize(ids.len() + seq - t.ids.len(), self.pad_id);
            mask.extend(std::iter::repeat_n(1u32, t.ids.len()));
            mask.resize(mask.len() + seq - t.ids.len(), 0);
        }
        let ids = Tensor::from_vec(ids, (batch, seq), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch, seq), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = model.forward(&ids, &type_ids, Some(&mask))?;
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let pooled = match self.config.pooling {
            Pooling::Mean => {
                let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
                let counts = mask_f.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
            Pooling::Cls => hidden.i((.., 0))?.contiguous()?,
            Pooling::Max => {
                // Padded positions get -1e9, as sentence-transformers does, so they never win.
                let penalty = ((mask_f.ones_like()? - &mask_f)? * -1e9)?;
                hidden.broadcast_add(&penalty)?.max(1)?
            }
        };
        let pooled = if self.config.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        let embeddings = pooled.to_vec2::<f32>()?;
        // `check` allowed only the last layer here: it is `hidden`.
        let per_text: Vec<Option<Vec<f32>>> = if states.tokens || !states.layers().is_empty() {
            let hidden = hidden.to_vec3::<f32>()?;
            hidden
                .into_iter()
                .zip(items)
                .map(|(rows, t)| Some(rows.into_iter().take(t.ids.len()).flatten().collect()))
                .collect()
        } else {
            vec![None; batch]
        };
        let last = self.num_layers();
        Ok(embeddings
            .into_iter()
            .zip(per_text)
            .map(|(embedding, rows)| {
                let layers = match &rows {
                    Some(rows) if !states.layers().is_empty() => {
                        let n = rows.len() / self.hidden_size().max(1);
                        self.layer_outputs(&[(last, rows.as_slice())], (0, n), states)
                    }
                    _ => Vec::new(),
                };
                (embedding, rows.filter(|_| states.tokens), layers)
            })
            .collect())
    }
}

/// Mean of the `width`-wide rows of `rows`.
fn mean_rows(rows: &[f32], width: usize) -> Vec<f32> {
    let mut mean = vec![0.0f32; width];
    for row in rows.chunks_exact(width) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    let n = (rows.len() / width.max(1)).max(1) as f32;
    mean.iter_mut().for_each(|m| *m /= n);
    mean
}

fn select_device(prefer_gpu: bool) -> Result<Device, EncoderError> {
    if prefer_gpu && cfg!(feature = "cuda") {
        return Ok(Device::cuda_if_available(0)?);
    }
    Ok(Device::Cpu)
}
