//! Dense layers on weights packed once at load into 16-column panels, computed by tiles of up
//! to 6 rows × 16 columns: the f32 products of small batches (where repacking the weights on
//! every call, as a general GEMM does, costs as much as the product) and every int8 product.
//!
//! [`for_each_tile`] walks the output in blocks of rows (a panel stays in cache across a
//! block's tiles) and spreads the blocks over the rayon pool, or, for a short text, shares of
//! the panels (each thread then writes its own columns of every row, in place).

use rayon::prelude::*;

/// Columns per packed panel (two AVX2 registers).
pub(crate) const PANEL: usize = 16;
/// Rows per tile.
pub(crate) const TILE_ROWS: usize = 6;
/// Rows a thread takes at a time: the packed panel is reused across them from L1/L2.
const BLOCK_ROWS: usize = 48;

/// Sets every `n`-wide row of `out` to `bias` (plus the matching row of `residual`).
pub(crate) fn init_rows(out: &mut [f32], n: usize, bias: &[f32], residual: Option<&[f32]>) {
    match residual {
        Some(r) => {
            for (o, r) in out.chunks_exact_mut(n).zip(r.chunks_exact(n)) {
                for j in 0..n {
                    o[j] = r[j] + bias[j];
                }
            }
        }
        None => {
            for o in out.chunks_exact_mut(n) {
                o.copy_from_slice(bias);
            }
        }
    }
}

/// One tile's output: up to [`TILE_ROWS`] consecutive rows, each a slice of its output row
/// that starts at column `col0` and covers (at least) the tile's panel.
pub(crate) struct TileOut<'a, 'b> {
    /// The rows' slices.
    pub(crate) rows: &'a mut [&'b mut [f32]],
    /// The output column each slice starts at.
    pub(crate) col0: usize,
}

/// Calls `tile(first_row, panel, out, lead)` for every tile of the `rows × n` output `out`,
/// where `out` holds the tile's (up to [`TILE_ROWS`]) output rows and `lead` says that the
/// tile is the first of its panel in a block (the one that may pull the next panel into
/// cache while the others reuse this one). Within a block of rows each panel is read once
/// for all the block's tiles. In parallel when the product's `flops` make it worth it: by
/// balanced blocks of rows, or, for at most [`SHARE_PANELS_UP_TO`] rows, by shares of the
/// panels (each thread writing its own columns of every row).
pub(crate) fn for_each_tile(
    out: &mut [f32],
    n: usize,
    flops: usize,
    tile: impl Fn(usize, usize, TileOut<'_, '_>, bool) + Sync,
) {
    let rows = out.len() / n;
    let panels = n.div_ceil(PANEL);
    let block =
        |first: usize, segments: &mut [&mut [f32]], col0: usize, panels: std::ops::Range<usize>| {
            for panel in panels {
                for (t, rows) in segments.chunks_mut(TILE_ROWS).enumerate() {
                    tile(first + t * TILE_ROWS, panel, TileOut { rows, col0 }, t == 0);
                }
            }
        };
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && flops > super::packed::PARALLEL_FLOPS;
    if !parallel {
        let mut segments: Vec<&mut [f32]> = out.chunks_exact_mut(n).collect();
        for (b, segments) in segments.chunks_mut(BLOCK_ROWS).enumerate() {
            block(b * BLOCK_ROWS, segments, 0, 0..panels);
        }
    } else if rows > SHARE_PANELS_UP_TO {
        // Blocks of at most `BLOCK_ROWS` rows (whole tiles), as many as a multiple of the
        // threads so that none is left with a stub (a 55-row text in blocks of 48 left one
        // thread 7 rows).
        let blocks = rows.div_ceil(BLOCK_ROWS).next_multiple_of(threads);
        let share = rows.div_ceil(blocks).next_multiple_of(TILE_ROWS);
        out.par_chunks_mut(share * n)
            .enumerate()
            .for_each(|(b, out)| {
                let mut segments: Vec<&mut [f32]> = out.chunks_exact_mut(n).collect();
                block(b * share, &mut segments, 0, 0..panels);
            });
    } else {
        // Few rows: each thread takes a share of the panels, and so of the columns of every
        // row; every weight is read once, by one thread.
        let share = panels.div_ceil(threads);
        let mut parts: Vec<Vec<&mut [f32]>> = (0..panels.div_ceil(share))
            .map(|_| Vec::with_capacity(rows))
            .collect();
        for row in out.chunks_exact_mut(n) {
            let mut rest = row;
            for part in &mut parts {
                let (mine, tail) = rest.split_at_mut((share * PANEL).min(rest.len()));
                part.push(mine);
                rest = tail;
            }
        }
        parts
            .into_par_iter()
            .enumerate()
            .for_each(|(p, mut segments)| {
                let first = p * share;
                block(
                    0,
                    &mut segments,
                    first * PANEL,
                    first..(first + share).min(panels),
                );
            });
    }
}

/// Up to this many rows (one short text), products (f32 and int8) share out the panels between
/// threads rather than the rows: the weights then stream from memory once instead of once per
/// thread, which is what a batch of one is bound by, and the split is balanced to the panel.
/// Measured at batch 1, 2 threads, alternated runs: f32 SST-2 sentences 111.7 → 125 texts/s
/// (median of 4), AG News 59.7 → 63.0 (median of 6); writing each thread's columns in place
/// instead of on a copy of the rows: f32 AG News 99.6 → 101.9, int8 (which shared rows until
/// then) SST-2 209.5 → 235.4, AG News 107.7 → 112.8; 64 → 128 rows: AG News f32 101.7 → 103.6,
/// int8 123.3 → 124.2 (medians of 3).
const SHARE_PANELS_UP_TO: usize = 128;

/// f32 weights packed in panels: `[panel][k][16 columns]`.
pub(crate) struct PackedF32 {
    packed: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl PackedF32 {
    /// Packs `weight` (`inputs × outputs`, row-major).
    pub(crate) fn new(weight: &[f32], inputs: usize, outputs: usize) -> Self {
        let panels = outputs.div_ceil(PANEL);
        let mut packed = vec![0.0; panels * inputs * PANEL];
        for i in 0..inputs {
            for o in 0..outputs {
                packed[(o / PANEL) * inputs * PANEL + i * PANEL + o % PANEL] =
                    weight[i * outputs + o];
            }
        }
        Self {
            packed,
            inputs,
            outputs,
        }
    }

    /// `out += input · W` for `input` of `rows × inputs` (`out` holds the bias already).
    pub(crate) fn accumulate(&self, input: &[f32], out: &mut [f32]) {
        let (k, n) = (self.inputs, self.outputs);
        let flops = 2 * (out.len() / n) * k * n;
        for_each_tile(out, n, flops, |first, panel, out, lead| {
            let count = out.rows.len();
            let a = &input[first * k..(first + count) * k];
            let b = &self.packed[panel * k * PANEL..(panel + 1) * k * PANEL];
            let next = self
                .packed
                .get((panel + 1) * k * PANEL..(panel + 2) * k * PANEL);
            let mut acc = [[0.0f32; PANEL]; TILE_ROWS];
            tile_f32(
                a,
                k,
                b,
                next.filter(|_| lead).unwrap_or(b),
                &mut acc[..count],
            );
            let (at, cols) = (panel * PANEL - out.col0, (n - panel * PANEL).min(PANEL));
            for (row, acc) in out.rows.iter_mut().zip(&acc) {
                for (o, a) in row[at..at + cols].iter_mut().zip(acc) {
                    *o += a;
                }
            }
        });
    }
}

/// `acc[r][c] = Σ_k a[r][k] · b[k][c]` over one panel, for up to [`TILE_ROWS`] rows (`acc`
/// is overwritten), pulling `next` (as long as `b`: the next panel, or `b` itself) towards
/// the cache meanwhile.
pub(crate) fn tile_f32(a: &[f32], k: usize, b: &[f32], next: &[f32], acc: &mut [[f32; PANEL]]) {
    assert!(acc.len() <= TILE_ROWS, "a tile of {} rows", acc.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features `avx2::tile_f32` is compiled for.
        #[allow(unsafe_code)]
        unsafe {
            return avx2::tile_f32(a, k, b, next, acc);
        }
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        *acc = [0.0; PANEL];
        for (x, b) in a[r * k..(r + 1) * k].iter().zip(b.chunks_exact(PANEL)) {
            for c in 0..PANEL {
                acc[c] = x.mul_add(b[c], acc[c]);
            }
        }
    }
}

/// `acc[r][c] = Σ_k a[r][k] · b[k][c]` over one int8 panel: `a` rows are `k2` `i16` (pairs
/// of activations), `b` is `[k2 / 2][16][2]` 8-bit weights (widened to 16 bits as they load);
/// up to [`TILE_ROWS`] rows, `acc` overwritten; `next` as for [`tile_f32`].
pub(crate) fn tile_i16(a: &[i16], k2: usize, b: &[i8], next: &[i8], acc: &mut [[i32; PANEL]]) {
    assert!(acc.len() <= TILE_ROWS, "a tile of {} rows", acc.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, which `avx2::tile_i16` is compiled for.
        #[allow(unsafe_code)]
        unsafe {
            return avx2::tile_i16(a, k2, b, next, acc);
        }
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        *acc = [0; PANEL];
        let a = &a[r * k2..(r + 1) * k2];
        for (pair, b) in a.chunks_exact(2).zip(b.chunks_exact(PANEL * 2)) {
            for c in 0..PANEL {
                acc[c] += i32::from(pair[0]) * i32::from(b[2 * c])
                    + i32::from(pair[1]) * i32::from(b[2 * c + 1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::PANEL;

    macro_rules! by_rows {
        ($kernel:ident, $a:expr, $k:expr, $b:expr, $next:expr, $acc:expr) => {
            match $acc.len() {
                6 => $kernel::<6>($a, $k, $b, $next, $acc),
                5 => $kernel::<5>($a, $k, $b, $next, $acc),
                4 => $kernel::<4>($a, $k, $b, $next, $acc),
                3 => $kernel::<3>($a, $k, $b, $next, $acc),
                2 => $kernel::<2>($a, $k, $b, $next, $acc),
                1 => $kernel::<1>($a, $k, $b, $next, $acc),
                _ => {}
            }
        };
    }

    /// Which cache level the next panel is pulled into.
    const HINT: i32 = _MM_HINT_T0;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn tile_f32(a: &[f32], k: usize, b: &[f32], next: &[f32], acc: &mut [[f32; PANEL]]) {
        by_rows!(rows_f32, a, k, b, next, acc)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn tile_i16(a: &[i16], k2: usize, b: &[i8], next: &[i8], acc: &mut [[i32; PANEL]]) {
        by_rows!(rows_i16, a, k2, b, next, acc)
    }

    /// `R` rows × 16 columns in `2R` f32 registers, one FMA per register per input.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn rows_f32<const R: usize>(
        a: &[f32],
        k: usize,
        b: &[f32],
        next: &[f32],
        acc: &mut [[f32; PANEL]],
    ) {
        assert!(
            a.len() >= R * k && b.len() >= k * PANEL && next.len() >= k * PANEL && acc.len() >= R
        );
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        let (a, b, next) = (a.as_ptr(), b.as_ptr(), next.as_ptr());
        for i in 0..k {
            // SAFETY: `i < k`: the panel's 16 values of input `i` lie inside `b` and `next`
            // (`k × 16`) and each row's value `i` inside its `k` of `a` (asserted above).
            #[allow(unsafe_code)]
            unsafe {
                // One step of a panel is one cache line.
                _mm_prefetch::<HINT>(next.add(i * PANEL).cast());
                let b0 = _mm256_loadu_ps(b.add(i * PANEL));
                let b1 = _mm256_loadu_ps(b.add(i * PANEL + 8));
                for r in 0..R {
                    let x = _mm256_set1_ps(a.add(r * k + i).read());
                    lo[r] = _mm256_fmadd_ps(x, b0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(x, b1, hi[r]);
                }
            }
        }
        for r in 0..R {
            // SAFETY: each row of `acc` holds 16 f32: two unaligned 8-lane stores.
            #[allow(unsafe_code)]
            unsafe {
                let out = acc[r].as_mut_ptr();
                _mm256_storeu_ps(out, lo[r]);
                _mm256_storeu_ps(out.add(8), hi[r]);
            }
        }
    }

    /// `R` rows × 16 columns in `2R` i32 registers: per pair of inputs, one `vpmaddwd` (two
    /// products summed per lane) and one add per register.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn rows_i16<const R: usize>(
        a: &[i16],
        k2: usize,
        b: &[i8],
        next: &[i8],
        acc: &mut [[i32; PANEL]],
    ) {
        assert!(
            a.len() >= R * k2
                && b.len() >= k2 * PANEL
                && next.len() >= k2 * PANEL
                && acc.len() >= R
                && k2.is_multiple_of(2)
        );
        let mut lo = [_mm256_setzero_si256(); R];
        let mut hi = [_mm256_setzero_si256(); R];
        let (a, b, next) = (a.as_ptr(), b.as_ptr(), next.as_ptr());
        for pair in 0..k2 / 2 {
            // SAFETY: `pair < k2 / 2`, so the 32 bytes of the panel's step `pair` lie inside
            // `b` and `next` (`k2 × 16` long) and each row's pair `2 · pair` inside its `k2`
            // of `a` (asserted above); unaligned loads are allowed.
            #[allow(unsafe_code)]
            unsafe {
                // Two steps of a panel are one cache line.
                _mm_prefetch::<HINT>(next.add(pair * 2 * PANEL).cast());
                let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(pair * 2 * PANEL).cast()));
                let b1 =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(pair * 2 * PANEL + PANEL).cast()));
                for r in 0..R {
                    let two = a.add(r * k2 + 2 * pair).cast::<i32>().read_unaligned();
                    let x = _mm256_set1_epi32(two);
                    lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(x, b0));
                    hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(x, b1));
                }
            }
        }
        for r in 0..R {
            // SAFETY: each row of `acc` holds 16 `i32`: two unaligned 8-lane stores.
            #[allow(unsafe_code)]
            unsafe {
                let out = acc[r].as_mut_ptr();
                _mm256_storeu_si256(out.cast(), lo[r]);
                _mm256_storeu_si256(out.add(8).cast(), hi[r]);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix in [-1, 1).
    pub(crate) fn matrix(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `x · w + bias` in f64, rounded.
    pub(crate) fn reference(x: &[f32], w: &[f32], bias: &[f32], k: usize, n: usize) -> Vec<f32> {
        let rows = x.len() / k;
        let mut out = vec![0.0; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[i * n + c]))
                    .sum();
                out[r * n + c] = (f64::from(bias[c]) + dot) as f32;
            }
        }
        out
    }

    /// Odd widths, partial panels and partial tiles; one row, a few, and several blocks; on
    /// one thread, by shares of the panels (≤ 128 rows) and by blocks of rows.
    pub(crate) const SHAPES: [(usize, usize, usize); 8] = [
        (1, 384, 384),
        (3, 384, 1152),
        (7, 33, 20),
        (13, 384, 1152),
        (61, 1536, 48),
        (100, 64, 16),
        (100, 384, 400),
        (150, 384, 72),
    ];

    #[test]
    fn packed_f32_products_equal_the_plain_ones() {
        for (rows, k, n) in SHAPES {
            let (x, w, bias) = (matrix(rows * k, 1), matrix(k * n, 2), matrix(n, 3));
            let packed = PackedF32::new(&w, k, n);
            let mut out = vec![0.0; rows * n];
            init_rows(&mut out, n, &bias, None);
            packed.accumulate(&x, &mut out);
            let want = reference(&x, &w, &bias, k, n);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(o, w)| (o - w).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{rows}×{k}×{n}: worst error {worst}");
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Kernel rates on data hot in L1 (`cargo test --release -p headstream-encoder speed --
    /// --ignored --nocapture`): how many multiply-adds per second each tile sustains. On the
    /// 2-vCPU AMD EPYC (AVX2, no VNNI) this project measures on, all of them run at ~48 GMAC/s
    /// per thread: one integer multiply instruction per cycle against two FMAs, so int8
    /// arithmetic is no faster than f32 there; its gains are the smaller weights.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn tile_rates() {
        let k = 384;
        let a32 = tests::matrix(6 * k, 1);
        let b32 = tests::matrix(k * PANEL, 2);
        let a16: Vec<i16> = a32.iter().map(|v| (v * 4000.0) as i16).collect();
        let b16: Vec<i8> = b32.iter().map(|v| (v * 120.0) as i8).collect();
        let reps = 200_000;
        let mut acc32 = [[0.0f32; PANEL]; TILE_ROWS];
        let started = std::time::Instant::now();
        for _ in 0..reps {
            tile_f32(std::hint::black_box(&a32), k, &b32, &b32, &mut acc32);
        }
        let f32_rate = (reps * 6 * 16 * k) as f64 / started.elapsed().as_secs_f64() / 1e9;
        let mut acc16 = [[0i32; PANEL]; TILE_ROWS];
        let started = std::time::Instant::now();
        for _ in 0..reps {
            tile_i16(std::hint::black_box(&a16), k, &b16, &b16, &mut acc16);
        }
        let i16_rate = (reps * 6 * 16 * k) as f64 / started.elapsed().as_secs_f64() / 1e9;
        let a8: Vec<u8> = a32.iter().map(|v| ((v + 1.0) * 60.0) as u8).collect();
        let b8: Vec<i8> = b32.iter().map(|v| (v * 120.0) as i8).collect();
        // ONNX Runtime's AVX2 u8×s8 step (vpmaddubsw, vpmaddwd with ones) and one that widens
        // with shifts instead of the second multiply.
        for variant in 0..2 {
            let mut acc8 = [[0i32; PANEL]; TILE_ROWS];
            let started = std::time::Instant::now();
            for _ in 0..reps {
                #[allow(unsafe_code)]
                unsafe {
                    probe::u8_tile(variant, std::hint::black_box(&a8), k, &b8, &mut acc8);
                }
            }
            let rate = (reps * 6 * 16 * k) as f64 / started.elapsed().as_secs_f64() / 1e9;
            eprintln!("u8×s8 tile, variant {variant}: {rate:.1} GMAC/s");
            std::hint::black_box(acc8);
        }
        eprintln!("GMAC/s on one thread: f32 tile {f32_rate:.1}, i16 tile {i16_rate:.1}");
        std::hint::black_box((acc32, acc16));
    }

    #[allow(unsafe_code)]
    mod probe {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn u8_tile(
            variant: u32,
            a: &[u8],
            k: usize,
            b: &[i8],
            acc: &mut [[i32; 16]; 6],
        ) {
            let mut lo = [_mm256_setzero_si256(); 6];
            let mut hi = [_mm256_setzero_si256(); 6];
            let ones = _mm256_set1_epi16(1);
            let (ap, bp) = (a.as_ptr(), b.as_ptr());
            unsafe {
                for q in 0..k / 4 {
                    let b0 = _mm256_loadu_si256(bp.add(q * 64).cast());
                    let b1 = _mm256_loadu_si256(bp.add(q * 64 + 32).cast());
                    for r in 0..6 {
                        let x =
                            _mm256_set1_epi32(ap.add(r * k + 4 * q).cast::<i32>().read_unaligned());
                        let p0 = _mm256_maddubs_epi16(x, b0);
                        let p1 = _mm256_maddubs_epi16(x, b1);
                        if variant == 0 {
                            lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(p0, ones));
                            hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(p1, ones));
                        } else {
                            lo[r] = _mm256_add_epi32(
                                lo[r],
                                _mm256_srai_epi32(_mm256_slli_epi32(p0, 16), 16),
                            );
                            lo[r] = _mm256_add_epi32(lo[r], _mm256_srai_epi32(p0, 16));
                            hi[r] = _mm256_add_epi32(
                                hi[r],
                                _mm256_srai_epi32(_mm256_slli_epi32(p1, 16), 16),
                            );
                            hi[r] = _mm256_add_epi32(hi[r], _mm256_srai_epi32(p1, 16));
                        }
                    }
                }
                for r in 0..6 {
                    _mm256_storeu_si256(acc[r].as_mut_ptr().cast(), lo[r]);
                    _mm256_storeu_si256(acc[r].as_mut_ptr().add(8).cast(), hi[r]);
                }
            }
        }
    }
}
