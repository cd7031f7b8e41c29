//! Integer dense layers: `x · W + b` with `W` quantized once at load to 8-bit integers (one
//! scale per output channel) and `x` quantized per row at run time, the products summed in
//! 32-bit integers.
//!
//! Activations are quantized symmetrically per row to 13 bits (±4095): with 8-bit weights
//! every product and every sum over an input up to [`MAX_INPUTS`] wide stays inside an `i32`,
//! so the integer arithmetic is exact and the only error is the rounding of weights and
//! activations. The products run on `i16` lanes (`vpmaddwd`: sixteen multiplies and eight
//! pairwise sums per instruction, no saturation) on the tiles of [`crate::panels`], the
//! weights packed once at load, as bytes, in the order a tile reads them (a quarter of the f32
//! weights' memory traffic, which bounds small batches).

use rayon::prelude::*;

use crate::panels::{self, PANEL, TILE_ROWS};

/// Largest quantized activation magnitude (13 bits).
const ACTIVATION_MAX: f32 = 4095.0;
/// Largest quantized weight magnitude.
const WEIGHT_MAX: f32 = 127.0;
/// Widest input the integer sums are exact for: `4095 · 127 · MAX_INPUTS` fits an `i32`.
pub(crate) const MAX_INPUTS: usize = (i32::MAX as usize) / (4095 * 127);

/// A dense layer with 8-bit weights packed for the integer tiles.
pub(crate) struct QLinear {
    /// `[panel][k2 / 2][16 columns][2]`: each column's weights for inputs `2j` and `2j + 1`
    /// side by side, as `vpmaddwd` multiplies them (widened) with a broadcast pair of
    /// activations.
    packed: Vec<i8>,
    /// Per output channel: the weight scale (weight ≈ quantized × scale).
    scales: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
    /// Inputs rounded up to even (a zero weight pads an odd width).
    k2: usize,
}

impl QLinear {
    /// Quantizes `weight` (`inputs × outputs`, row-major, as the f32 path stores it).
    pub(crate) fn new(weight: &[f32], bias: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        let k2 = inputs.next_multiple_of(2);
        let scales: Vec<f32> = (0..outputs)
            .map(|o| {
                let amax = (0..inputs)
                    .map(|i| weight[i * outputs + o].abs())
                    .fold(0.0f32, f32::max);
                if amax > 0.0 { amax / WEIGHT_MAX } else { 1.0 }
            })
            .collect();
        let mut packed = vec![0i8; outputs.div_ceil(PANEL) * k2 * PANEL];
        for o in 0..outputs {
            let (panel, col) = (o / PANEL, o % PANEL);
            for i in 0..inputs {
                let q = (weight[i * outputs + o] / scales[o]).round();
                let at = panel * k2 * PANEL + (i / 2) * PANEL * 2 + col * 2 + i % 2;
                packed[at] = q.clamp(-WEIGHT_MAX, WEIGHT_MAX) as i8;
            }
        }
        Self {
            packed,
            scales,
            bias,
            inputs,
            outputs,
            k2,
        }
    }

    /// `out = input · W + b (+ residual)`, `input` being `rows × inputs`.
    pub(crate) fn forward(
        &self,
        input: &[f32],
        rows: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        let (k, k2, n) = (self.inputs, self.k2, self.outputs);
        let out = &mut out[..rows * n];
        panels::init_rows(out, n, &self.bias, residual);
        let mut quantized = vec![0i16; rows * k2];
        let mut row_scales = vec![0.0f32; rows];
        // Rows in a few chunks per thread (the product's threads would otherwise wait).
        let chunk = rows.div_ceil(2 * rayon::current_num_threads()).max(4);
        quantized
            .par_chunks_mut(chunk * k2)
            .zip(row_scales.par_chunks_mut(chunk))
            .zip(input[..rows * k].par_chunks(chunk * k))
            .for_each(|((quantized, scales), input)| {
                quantize_rows(input, k, k2, quantized, scales);
            });
        panels::for_each_tile(out, n, 2 * rows * k * n, |first, panel, out, lead| {
            let count = out.rows.len();
            let a = &quantized[first * k2..(first + count) * k2];
            let b = &self.packed[panel * k2 * PANEL..(panel + 1) * k2 * PANEL];
            let next = self
                .packed
                .get((panel + 1) * k2 * PANEL..(panel + 2) * k2 * PANEL);
            let mut acc = [[0i32; PANEL]; TILE_ROWS];
            panels::tile_i16(
                a,
                k2,
                b,
                next.filter(|_| lead).unwrap_or(b),
                &mut acc[..count],
            );
            let cols = panel * PANEL..(panel * PANEL + PANEL).min(n);
            dequantize(
                &acc[..count],
                &row_scales[first..],
                &self.scales[cols.clone()],
                out.rows,
                cols.start - out.col0,
            );
        });
    }
}

dispatch! {
    /// Adds each tile sum, scaled back by its row's and column's scales, to the output rows
    /// (the tile's columns start at `col` of each row's slice).
    fn dequantize(
        acc: &[[i32; PANEL]],
        row_scales: &[f32],
        col_scales: &[f32],
        out: &mut [&mut [f32]],
        col: usize
    ) {
        let cols = col_scales.len();
        for ((row, acc), s) in out.iter_mut().zip(acc).zip(row_scales) {
            for ((o, a), w) in row[col..col + cols].iter_mut().zip(acc).zip(col_scales) {
                *o += *a as f32 * (s * w);
            }
        }
    }
}

/// This machine's int8 product rate (billions of integer operations per second, a
/// multiply-add counting two) on the tiles and thread pool the int8 path uses: the best of
/// several `m × k · k × n` products, quantization of the activations included.
pub(crate) fn igemm_gops(m: usize, k: usize, n: usize) -> f64 {
    let weight: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
    let layer = QLinear::new(&weight, vec![0.0; n], k, n);
    let input: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut out = vec![0.0f32; m * n];
    layer.forward(&input, m, &mut out, None);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        for _ in 0..4 {
            layer.forward(&input, m, &mut out, None);
        }
        best = best.min(started.elapsed().as_secs_f64() / 4.0);
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

dispatch! {
    /// Quantizes each `k`-wide row of `input` to `k2` `i16` (the padding column zero) with its
    /// own scale (value ≈ quantized × scale), rounded to nearest, ties to even.
    fn quantize_rows(input: &[f32], k: usize, k2: usize, out: &mut [i16], scales: &mut [f32]) {
        for ((row, q), scale) in input
            .chunks_exact(k)
            .zip(out.chunks_exact_mut(k2))
            .zip(scales.iter_mut())
        {
            let mut lanes = [0.0f32; 8];
            let chunks = row.chunks_exact(8);
            let tail = chunks.remainder().iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for c in chunks {
                for l in 0..8 {
                    // A plain comparison (one vmaxps), not f32::max's NaN handling.
                    let a = c[l].abs();
                    lanes[l] = if a > lanes[l] { a } else { lanes[l] };
                }
            }
            let amax = lanes.iter().fold(tail, |m, v| m.max(*v));
            *scale = if amax > 0.0 {
                amax / ACTIVATION_MAX
            } else {
                1.0
            };
            let inv = ACTIVATION_MAX / amax.max(f32::MIN_POSITIVE);
            for (q, v) in q.iter_mut().zip(row) {
                *q = round_to_i16(v * inv);
            }
        }
    }
}

/// `x` (at most 2^22 in magnitude) rounded to the nearest integer, ties to even, as the
/// low 16 bits: adding 1.5 · 2^23 leaves exactly the rounded integer in the low bits of the
/// mantissa. Unlike a saturating float-to-int cast, this compiles to a few vector
/// instructions.
#[inline(always)]
fn round_to_i16(x: f32) -> i16 {
    const SHIFT: f32 = 12_582_912.0;
    (x + SHIFT).to_bits() as u16 as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panels::tests::{SHAPES, matrix, reference};

    #[test]
    fn rounding_by_the_mantissa_equals_rounding_ties_to_even() {
        for i in -40_000..=40_000 {
            let x = i as f32 * 0.125 - 0.0625 * (i % 3) as f32;
            assert_eq!(round_to_i16(x), x.round_ties_even() as i16, "{x}");
        }
        for x in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 4095.0, -4095.0, 4094.5, -4094.5,
        ] {
            assert_eq!(round_to_i16(x), x.round_ties_even() as i16, "{x}");
        }
    }

    #[test]
    fn integer_products_track_the_f32_ones_at_every_shape() {
        for (rows, k, n) in SHAPES {
            let (x, w, bias) = (matrix(rows * k, 1), matrix(k * n, 2), matrix(n, 3));
            let layer = QLinear::new(&w, bias.clone(), k, n);
            let mut out = vec![0.0; rows * n];
            layer.forward(&x, rows, &mut out, None);
            let want = reference(&x, &w, &bias, k, n);
            let (mut dot, mut nw, mut no) = (0.0f64, 0.0f64, 0.0f64);
            for (o, w) in out.iter().zip(&want) {
                dot += f64::from(*o) * f64::from(*w);
                nw += f64::from(*w).powi(2);
                no += f64::from(*o).powi(2);
            }
            let cosine = dot / (nw.sqrt() * no.sqrt());
            assert!(cosine > 0.9999, "{rows}×{k}×{n}: cosine {cosine}");
            let worst = out
                .iter()
                .zip(&want)
                .map(|(o, w)| (o - w).abs())
                .fold(0.0f32, f32::max);
            // Each weight is off by at most half a step (1/254 of its column's largest).
            assert!(
                worst < 0.01 * (k as f32).sqrt(),
                "{rows}×{k}×{n}: worst error {worst}"
            );
        }
    }

    #[test]
    fn the_residual_is_added_and_the_tile_sums_exactly() {
        let (rows, k, n) = (9, 40, 32);
        let (x, w, bias, residual) = (
            matrix(rows * k, 4),
            matrix(k * n, 5),
            matrix(n, 6),
            matrix(rows * n, 7),
        );
        let layer = QLinear::new(&w, bias, k, n);
        let (mut with, mut without) = (vec![0.0; rows * n], vec![0.0; rows * n]);
        layer.forward(&x, rows, &mut with, Some(&residual));
        layer.forward(&x, rows, &mut without, None);
        for ((a, b), r) in with.iter().zip(&without).zip(&residual) {
            assert!((a - b - r).abs() < 1e-5);
        }
        // The dispatched tile (AVX2 when the CPU has it) gives exactly the integer sums.
        let mut quantized = vec![0i16; rows * layer.k2];
        let mut scales = vec![0.0; rows];
        quantize_rows(&x, k, layer.k2, &mut quantized, &mut scales);
        let b = &layer.packed[..layer.k2 * PANEL];
        let mut fast = [[0i32; PANEL]; TILE_ROWS];
        panels::tile_i16(&quantized, layer.k2, b, b, &mut fast);
        for (r, fast) in fast.iter().enumerate() {
            for (c, got) in fast.iter().enumerate() {
                let want: i32 = (0..layer.k2)
                    .map(|i| {
                        i32::from(quantized[r * layer.k2 + i])
                            * i32::from(b[(i / 2) * 2 * PANEL + 2 * c + i % 2])
                    })
                    .sum();
                assert_eq!(*got, want, "row {r} column {c}");
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::panels::tests::matrix;

    /// Rate of whole int8 products of a batch of one (`cargo test --release -p
    /// headstream-encoder int8::speed -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn small_batch_rates() {
        for (rows, k, n) in [
            (22, 384, 1152),
            (22, 384, 1536),
            (22, 1536, 384),
            (700, 384, 1152),
        ] {
            let (x, w) = (matrix(rows * k, 1), matrix(k * n, 2));
            let layer = QLinear::new(&w, vec![0.0; n], k, n);
            let mut out = vec![0.0; rows * n];
            let reps = 40_000_000 / (rows * k * n / 1000).max(1);
            let started = std::time::Instant::now();
            for _ in 0..reps {
                layer.forward(std::hint::black_box(&x), rows, &mut out, None);
            }
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{rows}×{k}×{n}: {:.1} GMAC/s, {:.1} µs a product",
                (reps * rows * k * n) as f64 / secs / 1e9,
                secs / reps as f64 * 1e6
            );
        }
    }
}
