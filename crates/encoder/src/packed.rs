//! The CPU forward pass on packed tokens: every dense layer (QKV, attention output, FFN,
//! LayerNorm, GELU) runs on the concatenated real tokens of the whole batch, so no FLOP is
//! spent on padding; only attention is computed per (head, sequence). Matrix products run on
//! weights packed once at load ([`crate::panels`], and the int8 tiles) up to a few hundred
//! rows, on `gemm` (the kernels candle's CPU backend runs on) above that, all on one rayon
//! pool, the pass itself on one of its workers; the element-wise steps are fused loops
//! compiled for AVX2+FMA when the CPU has them.
//!
//! It computes what `candle_transformers::models::bert::BertModel` computes (same weights,
//! same f32 arithmetic up to summation order); the encoder's parity tests hold it to the
//! sentence-transformers reference.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use crate::int8::QLinear;
use crate::panels::PackedF32;
use crate::{EncoderError, Precision};

/// `x · W + b` with `W` stored `in × out`, row-major.
struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// LayerNorm parameters.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// A dense layer at the encoder's precision.
enum Dense {
    /// f32: the general GEMM for large batches, panels packed at load for small ones.
    F32(Linear, PackedF32),
    Int8(QLinear),
}

/// Most rows an f32 product runs on the panels packed at load rather than on the general GEMM
/// (which packs the weights on every call): measured on AG News texts at batch 1 (~55 rows),
/// 31–38 sentences/s on the GEMM, 58–62 on the panels; 128 → 320 rows: AG News batch 1
/// 102.0 → 103.4 (its long texts), SST-2 batch 8 (~215 rows) 251.9 vs 250.1 (even).
const SMALL_ROWS: usize = 320;

impl Dense {
    fn new(linear: Linear, precision: Precision) -> Self {
        match precision {
            Precision::F32 => {
                let packed = PackedF32::new(&linear.weight, linear.inputs, linear.outputs);
                Self::F32(linear, packed)
            }
            Precision::Int8 => Self::Int8(QLinear::new(
                &linear.weight,
                linear.bias,
                linear.inputs,
                linear.outputs,
            )),
        }
    }

    fn outputs(&self) -> usize {
        match self {
            Self::F32(l, _) => l.outputs,
            Self::Int8(l) => l.outputs,
        }
    }

    /// `out = input · W + b (+ residual)`, `input` being `rows × inputs`.
    fn forward(&self, input: &[f32], rows: usize, out: &mut [f32], residual: Option<&[f32]>) {
        match self {
            Self::F32(l, packed) if rows <= SMALL_ROWS => {
                let out = &mut out[..rows * l.outputs];
                crate::panels::init_rows(out, l.outputs, &l.bias, residual);
                packed.accumulate(&input[..rows * l.inputs], out);
            }
            Self::F32(l, _) => linear(input, rows, l, out, residual),
            Self::Int8(l) => l.forward(input, rows, out, residual),
        }
    }
}

struct Layer {
    /// Query, key and value in one product: outputs `[q | k | v]`.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    up: Dense,
    down: Dense,
    output_norm: Norm,
}

/// BERT weights laid out for the packed forward pass.
pub(crate) struct PackedBert {
    hidden: usize,
    heads: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's embedding (sentence encoders feed type 0 only).
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    max_positions: usize,
}

/// The last hidden state of every real token, packed: sequence `s` owns rows
/// `starts[s]..starts[s + 1]` of a `rows × hidden` row-major matrix.
pub(crate) struct PackedStates {
    pub(crate) states: Vec<f32>,
    pub(crate) starts: Vec<usize>,
    /// Every token's state after each layer in the `keep` set, ascending by layer.
    pub(crate) kept: Vec<(u32, Vec<f32>)>,
}

fn tensor(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, EncoderError> {
    let key = format!("{prefix}{name}");
    let t = tensors
        .get(&key)
        .ok_or_else(|| candle_core::Error::Msg(format!("weight {key} is missing")))?;
    if t.dims() != shape {
        return Err(candle_core::Error::Msg(format!(
            "weight {key} has shape {:?}, expected {shape:?}",
            t.dims()
        ))
        .into());
    }
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// A PyTorch `out × in` weight turned `in × out`.
fn transposed(weight: &[f32], outputs: usize, inputs: usize) -> Vec<f32> {
    let mut t = vec![0.0; weight.len()];
    for o in 0..outputs {
        for i in 0..inputs {
            t[i * outputs + o] = weight[o * inputs + i];
        }
    }
    t
}

impl PackedBert {
    /// Lays out the weights of a BERT checkpoint (optionally under a `bert.` prefix).
    pub(crate) fn load(
        tensors: &HashMap<String, Tensor>,
        config: &Config,
        precision: Precision,
    ) -> Result<Self, EncoderError> {
        if config.hidden_act != HiddenAct::Gelu {
            return Err(candle_core::Error::Msg(format!(
                "hidden_act {:?} is not supported by the packed CPU path",
                config.hidden_act
            ))
            .into());
        }
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let h = config.hidden_size;
        let inter = config.intermediate_size;
        if h == 0 || inter == 0 {
            return Err(candle_core::Error::Msg(format!(
                "hidden size {h} and intermediate size {inter} must not be 0"
            ))
            .into());
        }
        if precision == Precision::Int8 && inter.max(h) > crate::int8::MAX_INPUTS {
            return Err(candle_core::Error::Msg(format!(
                "int8 sums are exact for layers up to {} wide; this model has {}",
                crate::int8::MAX_INPUTS,
                inter.max(h)
            ))
            .into());
        }
        if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
            return Err(candle_core::Error::Msg(format!(
                "hidden size {h} is not a multiple of {} heads",
                config.num_attention_heads
            ))
            .into());
        }
        let get = |name: &str, shape: &[usize]| tensor(tensors, prefix, name, shape);
        let norm = |name: &str| -> Result<Norm, EncoderError> {
            Ok(Norm {
                gamma: get(&format!("{name}.weight"), &[h])?,
                beta: get(&format!("{name}.bias"), &[h])?,
            })
        };
        let linear = |name: &str, inputs: usize, outputs: usize| -> Result<Linear, EncoderError> {
            let w = get(&format!("{name}.weight"), &[outputs, inputs])?;
            Ok(Linear {
                weight: transposed(&w, outputs, inputs),
                bias: get(&format!("{name}.bias"), &[outputs])?,
                inputs,
                outputs,
            })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let at = |name: &str| format!("encoder.layer.{l}.{name}");
            let (q, k, v) = (
                linear(&at("attention.self.query"), h, h)?,
                linear(&at("attention.self.key"), h, h)?,
                linear(&at("attention.self.value"), h, h)?,
            );
            let mut weight = vec![0.0; h * 3 * h];
            for i in 0..h {
                for (part, m) in [&q, &k, &v].into_iter().enumerate() {
                    weight[i * 3 * h + part * h..i * 3 * h + (part + 1) * h]
                        .copy_from_slice(&m.weight[i * h..(i + 1) * h]);
                }
            }
            let bias = [q.bias, k.bias, v.bias].concat();
            let dense = |l: Linear| Dense::new(l, precision);
            layers.push(Layer {
                qkv: dense(Linear {
                    weight,
                    bias,
                    inputs: h,
                    outputs: 3 * h,
                }),
                attention_out: dense(linear(&at("attention.output.dense"), h, h)?),
                attention_norm: norm(&at("attention.output.LayerNorm"))?,
                up: dense(linear(&at("intermediate.dense"), h, inter)?),
                down: dense(linear(&at("output.dense"), inter, h)?),
                output_norm: norm(&at("output.LayerNorm"))?,
            });
        }
        let token_types = get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            word: get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type: token_types[..h].to_vec(),
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            max_positions: config.max_position_embeddings,
        })
    }

    /// Runs the encoder over `sequences` (token ids) and returns every token's last hidden
    /// state, packed, and a copy of the states after each layer in `keep` below the last
    /// (0: the embedding layer's output).
    pub(crate) fn forward(
        &self,
        sequences: &[&[u32]],
        keep: crate::LayerSet,
    ) -> Result<PackedStates, EncoderError> {
        let h = self.hidden;
        let mut starts = Vec::with_capacity(sequences.len() + 1);
        let mut rows = 0;
        for s in sequences {
            if s.len() > self.max_positions {
                return Err(candle_core::Error::Msg(format!(
                    "{} tokens exceed the model's {} positions",
                    s.len(),
                    self.max_positions
                ))
                .into());
            }
            starts.push(rows);
            rows += s.len();
        }
        starts.push(rows);
        let vocab = self.word.len() / h;
        let mut x = vec![0.0f32; rows * h];
        for (s, ids) in sequences.iter().enumerate() {
            for (p, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    return Err(candle_core::Error::Msg(format!(
                        "token id {id} is outside the vocabulary of {vocab}"
                    ))
                    .into());
                }
                let row = &mut x[(starts[s] + p) * h..(starts[s] + p + 1) * h];
                let (w, pos) = (
                    &self.word[id * h..(id + 1) * h],
                    &self.position[p * h..(p + 1) * h],
                );
                for j in 0..h {
                    row[j] = w[j] + pos[j] + self.token_type[j];
                }
            }
        }
        kernels::layer_norm_rows(&mut x, h, &self.embedding_norm, self.eps);
        let mut kept = Vec::with_capacity(keep.len());
        if keep.contains(0) {
            kept.push((0, x.clone()));
        }
        let inter = self.layers.first().map_or(0, |l| l.up.outputs());
        let mut qkv = vec![0.0f32; rows * 3 * h];
        let mut context = vec![0.0f32; rows * h];
        let mut by_head = vec![0.0f32; rows * h];
        let mut attended = vec![0.0f32; rows * h];
        let mut up = vec![0.0f32; rows * inter];
        for (index, layer) in (1u32..).zip(&self.layers) {
            layer.qkv.forward(&x, rows, &mut qkv, None);
            self.attention(&qkv, &starts, &mut by_head, &mut context);
            layer
                .attention_out
                .forward(&context, rows, &mut attended, Some(&x));
            kernels::layer_norm_rows(&mut attended, h, &layer.attention_norm, self.eps);
            layer.up.forward(&attended, rows, &mut up, None);
            kernels::gelu(&mut up);
            layer.down.forward(&up, rows, &mut x, Some(&attended));
            kernels::layer_norm_rows(&mut x, h, &layer.output_norm, self.eps);
            // The last layer's states are returned as `states`: no copy.
            if keep.contains(index) && index < self.layers.len() as u32 {
                kept.push((index, x.clone()));
            }
        }
        Ok(PackedStates {
            states: x,
            starts,
            kept,
        })
    }

    /// Scaled dot-product attention of every head of every sequence (no mask: only real
    /// tokens are present), into `context` (`rows × hidden`). Each (head, sequence) is a task
    /// of its own, so that a single text spreads over the threads too; the tasks write
    /// head-major into `by_head` (`heads × rows × d`), then the rows are gathered.
    fn attention(&self, qkv: &[f32], starts: &[usize], by_head: &mut [f32], context: &mut [f32]) {
        let h = self.hidden;
        let d = h / self.heads;
        let rows = context.len() / h;
        let scale = 1.0 / (d as f32).sqrt();
        by_head[..rows * h]
            .par_chunks_mut(rows * d)
            .enumerate()
            .for_each(|(head, block)| {
                let mut pieces: Vec<(usize, &mut [f32])> = Vec::with_capacity(starts.len());
                let mut rest = block;
                for w in starts.windows(2) {
                    let (mine, tail) = rest.split_at_mut((w[1] - w[0]) * d);
                    pieces.push((w[0], mine));
                    rest = tail;
                }
                pieces.into_par_iter().for_each(|(start, out)| {
                    let len = out.len() / d;
                    let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
                    kernels::attend(rows, len, h, head, d, scale, out);
                });
            });
        context
            .par_chunks_mut(h * 64)
            .enumerate()
            .for_each(|(chunk, out)| {
                for (i, row) in out.chunks_exact_mut(h).enumerate() {
                    let r = chunk * 64 + i;
                    for (head, part) in row.chunks_exact_mut(d).enumerate() {
                        part.copy_from_slice(&by_head[(head * rows + r) * d..][..d]);
                    }
                }
            });
    }
}

/// Most FLOPs a product may have to run on one thread (below that, threads cost more).
pub(crate) const PARALLEL_FLOPS: usize = 1 << 21;

/// `out = input · W + b (+ residual)`, `input` being `rows × W.inputs`.
fn linear(input: &[f32], rows: usize, layer: &Linear, out: &mut [f32], residual: Option<&[f32]>) {
    let (k, n) = (layer.inputs, layer.outputs);
    let out = &mut out[..rows * n];
    match residual {
        Some(r) => {
            for (o, r) in out.chunks_exact_mut(n).zip(r.chunks_exact(n)) {
                for j in 0..n {
                    o[j] = r[j] + layer.bias[j];
                }
            }
        }
        None => {
            for o in out.chunks_exact_mut(n) {
                o.copy_from_slice(&layer.bias);
            }
        }
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && 2 * rows * k * n > PARALLEL_FLOPS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    assert!(input.len() >= rows * k && layer.weight.len() == k * n);
    // SAFETY: the pointers cover `rows × k` (input), `k × n` (weight) and `rows × n` (out)
    // row-major matrices, as the strides say (lengths asserted above); `out` is a unique
    // borrow, so it aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            input.as_ptr(),
            1,
            k as isize,
            layer.weight.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// This machine's f32 matrix-product rate in GFLOP/s on the kernels and thread pool the
/// packed path uses: the best of several `m × k · k × n` products.
pub(crate) fn sgemm_gflops(m: usize, k: usize, n: usize) -> f64 {
    let layer = Linear {
        weight: (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect(),
        bias: vec![0.0; n],
        inputs: k,
        outputs: n,
    };
    let input: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut out = vec![0.0f32; m * n];
    linear(&input, m, &layer, &mut out, None);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        for _ in 0..4 {
            linear(&input, m, &layer, &mut out, None);
        }
        best = best.min(started.elapsed().as_secs_f64() / 4.0);
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// Element-wise kernels, compiled twice: for AVX2+FMA (chosen at run time) and for the
/// baseline target.
mod kernels {
    use rayon::prelude::*;

    use super::Norm;
    use crate::panels::{PANEL, TILE_ROWS, tile_f32};

    /// `e^x` for f32, branch-free so that loops over it vectorize (Cephes' polynomial,
    /// within 2 ulp of `f32::exp` on the range that does not underflow).
    #[inline(always)]
    #[allow(clippy::excessive_precision)] // the published constants, verbatim
    fn exp(x: f32) -> f32 {
        // Round x·log2(e) to an integer with the 1.5·2^23 trick (no float-to-int conversion,
        // no call to floor): the low bits of `shifted` are then n itself.
        const SHIFT: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        let shifted = x * std::f32::consts::LOG2_E + SHIFT;
        let n = shifted - SHIFT;
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = 1.987_569_1e-4_f32;
        let p = p.mul_add(r, 1.398_199_9e-3);
        let p = p.mul_add(r, 8.333_452e-3);
        let p = p.mul_add(r, 4.166_579_6e-2);
        let p = p.mul_add(r, 1.666_666_5e-1);
        let p = p.mul_add(r, 5.000_000_1e-1);
        let y = (p * r).mul_add(r, r) + 1.0;
        let n_bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
        y * f32::from_bits(n_bits.wrapping_add(127) << 23)
    }

    /// Sum in eight lanes (a reduction the compiler can vectorize).
    #[inline(always)]
    fn sum(x: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder().iter().sum::<f32>();
        for c in chunks {
            for l in 0..8 {
                acc[l] += c[l];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// Sum of squared differences from `mean`, in eight lanes.
    #[inline(always)]
    fn sum_sq(x: &[f32], mean: f32) -> f32 {
        let mut acc = [0.0f32; 8];
        let chunks = x.chunks_exact(8);
        let tail = chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>();
        for c in chunks {
            for l in 0..8 {
                acc[l] += (c[l] - mean) * (c[l] - mean);
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[cfg(test)]
    pub(super) fn exp_for_test(x: f32) -> f32 {
        exp(x)
    }

    /// `erf(x)` within 1.5e-7 (Abramowitz & Stegun 7.1.26, the form PyTorch's vectorized CPU
    /// erf also takes), branch-free. Five terms instead of Numerical Recipes' ten: AG News
    /// batch 1 f32 103.7 → 107.9 texts/s, int8 124.1 → 130.6 (medians of 3, alternated); the
    /// 323 reference embeddings stay within 3.7e-7 of sentence-transformers.
    #[inline(always)]
    #[allow(clippy::excessive_precision)] // the published constants, verbatim
    fn erf(x: f32) -> f32 {
        let z = x.abs();
        let t = 1.0 / 0.327_591_1_f32.mul_add(z, 1.0);
        let r = 1.061_405_429_f32;
        let r = r.mul_add(t, -1.453_152_027);
        let r = r.mul_add(t, 1.421_413_741);
        let r = r.mul_add(t, -0.284_496_736);
        let r = r.mul_add(t, 0.254_829_592);
        let erfc = r * t * exp(-z * z);
        (1.0 - erfc).copysign(x)
    }

    dispatch! {
        fn gelu_chunk(x: &mut [f32]) {
            // Blocks of 32: four independent vectors in flight hide the polynomials' latency.
            let mut blocks = x.chunks_exact_mut(32);
            for block in &mut blocks {
                for v in block.iter_mut() {
                    *v = gelu_one(*v);
                }
            }
            for v in blocks.into_remainder() {
                *v = gelu_one(*v);
            }
        }
    }

    #[inline(always)]
    fn gelu_one(v: f32) -> f32 {
        0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
    }

    /// GELU (the exact, erf form) in place.
    pub(super) fn gelu(x: &mut [f32]) {
        x.par_chunks_mut(16 * 1024).for_each(gelu_chunk);
    }

    dispatch! {
        fn norm_rows(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
            for row in x.chunks_exact_mut(width) {
                let mean = sum(row) / width as f32;
                let var = sum_sq(row, mean) / width as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                    *v = (*v - mean) * inv * g + b;
                }
            }
        }
    }

    /// LayerNorm of every `width`-wide row, in place.
    pub(super) fn layer_norm_rows(x: &mut [f32], width: usize, norm: &Norm, eps: f32) {
        x.par_chunks_mut(width * 64)
            .for_each(|rows| norm_rows(rows, width, &norm.gamma, &norm.beta, eps));
    }

    dispatch! {
        /// Attention of one head of one sequence: `qkv` is the sequence's `len × 3h` rows
        /// (`[q | k | v]`), `out` the head's `len × d` context rows. Both products (queries ·
        /// keys, probabilities · values) run on the f32 tiles, keys and values packed into
        /// panels first (zeros past the sequence's end, so they add nothing).
        fn attend(
            qkv: &[f32],
            len: usize,
            h: usize,
            head: usize,
            d: usize,
            scale: f32,
            out: &mut [f32]
        ) {
            let row = |i: usize, part: usize| {
                let at = i * 3 * h + part * h + head * d;
                &qkv[at..at + d]
            };
            let width = len.div_ceil(PANEL) * PANEL;
            let queries: Vec<f32> = (0..len).flat_map(|i| row(i, 0)).map(|q| q * scale).collect();
            let mut keys = vec![0.0f32; width * d];
            for j in 0..len {
                let (panel, col) = (j / PANEL, j % PANEL);
                for (t, k) in row(j, 1).iter().enumerate() {
                    keys[(panel * d + t) * PANEL + col] = *k;
                }
            }
            let mut probabilities = vec![0.0f32; len * width];
            product(&queries, d, &keys, width, &mut probabilities);
            for scores in probabilities.chunks_exact_mut(width) {
                let inv = softmax(&mut scores[..len]);
                scores[..len].iter_mut().for_each(|p| *p *= inv);
                scores[len..].fill(0.0);
            }
            let mut values = vec![0.0f32; d.div_ceil(PANEL) * width * PANEL];
            for j in 0..len {
                for (c, v) in row(j, 2).iter().enumerate() {
                    values[((c / PANEL) * width + j) * PANEL + c % PANEL] = *v;
                }
            }
            product(&probabilities, width, &values, d, out);
        }
    }

    /// `out = a · B` for `a` of `rows × k` and `B` packed in 16-column panels (`[panel][k][16]`)
    /// of `n` columns, on the f32 tiles, on this thread.
    fn product(a: &[f32], k: usize, packed: &[f32], n: usize, out: &mut [f32]) {
        let mut acc = [[0.0f32; PANEL]; TILE_ROWS];
        for (rows, out) in a.chunks(TILE_ROWS * k).zip(out.chunks_mut(TILE_ROWS * n)) {
            let count = rows.len() / k;
            for (panel, b) in packed.chunks_exact(k * PANEL).enumerate() {
                tile_f32(rows, k, b, b, &mut acc[..count]);
                let cols = panel * PANEL..(panel * PANEL + PANEL).min(n);
                for (o, acc) in out.chunks_exact_mut(n).zip(&acc) {
                    o[cols.clone()].copy_from_slice(&acc[..cols.len()]);
                }
            }
        }
    }

    /// Softmax numerators of `scores` in place; returns 1 / their sum.
    #[inline(always)]
    fn softmax(scores: &mut [f32]) -> f32 {
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
        for s in scores.iter_mut() {
            *s = exp(*s - max);
        }
        1.0 / sum(scores)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_and_exp_match_the_reference_functions() {
        let mut worst_exp = 0.0f32;
        let mut worst_gelu = 0.0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.0005 * 20.0; // -200..200 for exp's clamp, fine steps near 0
            let want = f64::from(x).exp();
            if want > 1e-30 && want < 1e30 {
                let got = f64::from(super::kernels::exp_for_test(x));
                worst_exp = worst_exp.max(((got - want) / want).abs() as f32);
            }
            let x = i as f32 * 0.0005; // -10..10
            let mut g = [x];
            super::kernels::gelu(&mut g);
            let want =
                0.5 * f64::from(x) * (1.0 + libm_erf(f64::from(x) / std::f64::consts::SQRT_2));
            worst_gelu = worst_gelu.max((f64::from(g[0]) - want).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(worst_gelu < 2e-6, "gelu absolute error {worst_gelu}");
    }

    /// erf in f64 (Abramowitz–Stegun 7.1.28 is too coarse; this is the series/continued
    /// fraction pair, accurate to ~1e-15).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 2.5 {
            // Maclaurin series.
            let mut term = x;
            let mut total = x;
            for n in 1..80 {
                term *= -x * x / n as f64;
                total += term / (2 * n + 1) as f64;
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // Continued fraction for erfc.
            let z = x.abs();
            let mut f = 0.0;
            for n in (1..60).rev() {
                f = (n as f64 / 2.0) / (z + f);
            }
            let erfc = (-z * z).exp() / (std::f64::consts::PI.sqrt() * (z + f));
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn transposed_swaps_rows_and_columns() {
        // 2 outputs × 3 inputs.
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(super::transposed(&w, 2, 3), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::panels::tests::matrix;

    /// Time of the dense products of a whole MiniLM-L6 forward pass (six layers' weights, 42 MB
    /// in f32: more than the L3, as in a real pass), per precision and number of rows
    /// (`cargo test --release -p headstream-encoder packed::speed -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn dense_layer_stack() {
        let (h, inter) = (384, 1536);
        for precision in [Precision::F32, Precision::Int8] {
            let dense = |k: usize, n: usize, seed: u64| {
                let linear = Linear {
                    weight: matrix(k * n, seed).iter().map(|v| v * 0.05).collect(),
                    bias: matrix(n, seed + 1),
                    inputs: k,
                    outputs: n,
                };
                Dense::new(linear, precision)
            };
            let layers: Vec<[Dense; 4]> = (0..6)
                .map(|l| {
                    [
                        dense(h, 3 * h, 10 * l),
                        dense(h, h, 10 * l + 2),
                        dense(h, inter, 10 * l + 4),
                        dense(inter, h, 10 * l + 6),
                    ]
                })
                .collect();
            for rows in [22, 55, 704] {
                let x = matrix(rows * inter, 99);
                let mut out = vec![0.0f32; rows * inter];
                let reps = (2000 / rows).max(3);
                let mut times = Vec::new();
                for _ in 0..5 {
                    let started = std::time::Instant::now();
                    for _ in 0..reps {
                        for layer in &layers {
                            for d in layer {
                                d.forward(std::hint::black_box(&x), rows, &mut out, None);
                            }
                        }
                    }
                    times.push(started.elapsed().as_secs_f64() / reps as f64);
                }
                times.sort_by(f64::total_cmp);
                let flops =
                    2.0 * rows as f64 * 6.0 * (4.0 * (h * h) as f64 + 2.0 * (h * inter) as f64);
                eprintln!(
                    "{precision} {rows} rows: {:.0} µs a pass (median of 5), {:.1} GFLOP/s",
                    times[2] * 1e6,
                    flops / times[2] / 1e9
                );
            }
        }
    }
}
