//! Multinomial logistic regression with L2 on frozen features, trained to convergence with
//! L-BFGS; the regularisation strength optionally chosen by stratified k-fold cross-validation.
//!
//! The objective has scikit-learn's optimum (`C · Σ wᵢ·CE(xᵢ, yᵢ) + ½‖W‖²`, intercept not
//! penalised), divided by `C` and by the total sample weight: its gradient is the mean
//! cross-entropy's plus the regulariser's, so the gradient tolerance means the same at every `C`
//! and data size. It is
//! evaluated with candle's matrix products, so token-level problems with hundreds of thousands
//! of rows train in seconds.

use candle_core::{D, Device, Tensor};
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;

use crate::lbfgs;

/// Row-major feature rows.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// `rows × cols` values.
    pub data: Vec<f32>,
    /// Width of a row.
    pub cols: usize,
}

impl Features {
    /// An empty set of rows of width `cols`.
    pub fn new(cols: usize) -> Self {
        Self {
            data: Vec::new(),
            cols,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.cols).unwrap_or(0)
    }

    /// Appends a row (must be `cols` wide).
    pub fn push(&mut self, row: &[f32]) {
        debug_assert_eq!(row.len(), self.cols);
        self.data.extend_from_slice(row);
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    #[cfg(test)]
    fn subset(&self, rows: &[usize]) -> Self {
        let mut out = Self::new(self.cols);
        out.data.reserve(rows.len() * self.cols);
        for &i in rows {
            out.push(self.row(i));
        }
        out
    }
}

/// How examples are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassWeight {
    /// Every example counts once.
    #[default]
    Uniform,
    /// Each class counts as much in total (`n / (classes · n_class)` per example).
    Balanced,
}

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    /// Inverse L2 strength (scikit-learn's `C`).
    pub c: f64,
    /// Example weighting.
    pub class_weight: ClassWeight,
    /// Optimiser limits.
    pub lbfgs: lbfgs::Options,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            c: 1.0,
            class_weight: ClassWeight::Uniform,
            lbfgs: lbfgs::Options::default(),
        }
    }
}

/// A trained linear layer: `classes × dim` weights and `classes` biases.
#[derive(Debug, Clone)]
pub struct LinearModel {
    /// Row-major `[classes, dim]`.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
    /// Number of classes.
    pub classes: usize,
    /// Feature width.
    pub dim: usize,
    /// L-BFGS iterations used.
    pub iterations: usize,
    /// Whether the gradient tolerance was reached.
    pub converged: bool,
    /// A ReLU hidden layer before the output layer (a small MLP head); `weight` then maps the
    /// hidden units, not the input.
    pub hidden: Option<Hidden>,
}

/// A hidden layer: `units × input` weights and `units` biases, ReLU.
#[derive(Debug, Clone)]
pub struct Hidden {
    /// Row-major `[units, input]`.
    pub weight: Vec<f32>,
    /// `[units]`.
    pub bias: Vec<f32>,
    /// Number of units.
    pub units: usize,
}

impl LinearModel {
    /// The linear model at an L-BFGS outcome over `classes × dim` weights then `classes` biases.
    fn from_outcome(out: lbfgs::Outcome, classes: usize, dim: usize) -> Self {
        let params: Vec<f32> = out.x.iter().map(|&v| v as f32).collect();
        Self {
            weight: params[..classes * dim].to_vec(),
            bias: params[classes * dim..].to_vec(),
            classes,
            dim,
            iterations: out.iterations,
            converged: out.converged,
            hidden: None,
        }
    }

    /// The weights, row-major, then the biases: the optimiser's parameter vector.
    fn parameters(&self) -> Vec<f64> {
        self.weight
            .iter()
            .chain(&self.bias)
            .map(|&v| f64::from(v))
            .collect()
    }

    /// Each class's score (logit) for `x`, as [`LinearModel::predict`] compares them (a linear
    /// model; an MLP's hidden layer is applied first).
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let hidden_out: Vec<f32>;
        let (x, width) = match &self.hidden {
            Some(h) => {
                hidden_out = (0..h.units)
                    .map(|u| {
                        let w = &h.weight[u * self.dim..(u + 1) * self.dim];
                        (h.bias[u] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>()).max(0.0)
                    })
                    .collect();
                (&hidden_out[..], h.units)
            }
            None => (x, self.dim),
        };
        (0..self.classes)
            .map(|c| {
                let w = &self.weight[c * width..(c + 1) * width];
                self.bias[c] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>()
            })
            .collect()
    }

    /// The class with the highest score for `x` (the first on a tie).
    pub fn predict(&self, x: &[f32]) -> usize {
        let mut best = (0, f32::NEG_INFINITY);
        for (c, score) in self.logits(x).into_iter().enumerate() {
            if score > best.1 {
                best = (c, score);
            }
        }
        best.0
    }

    /// Folds a standardisation of the inputs (`(x - mean) / scale`, per column) into the first
    /// layer, so the model applies to raw inputs exactly as it did to standardised ones.
    pub fn fold_standardisation(&mut self, mean: &[f32], scale: &[f32]) {
        let dim = self.dim;
        let (weight, bias, rows) = match &mut self.hidden {
            Some(h) => (&mut h.weight, &mut h.bias, h.units),
            None => (&mut self.weight, &mut self.bias, self.classes),
        };
        for r in 0..rows {
            let w = &mut weight[r * dim..(r + 1) * dim];
            let mut shift = 0.0f64;
            for ((w, &m), &s) in w.iter_mut().zip(mean).zip(scale) {
                *w /= s;
                shift += f64::from(*w) * f64::from(m);
            }
            bias[r] -= shift as f32;
        }
    }

    /// The weights as safetensors (`weight` `[classes, dim]`, `bias` `[classes]`, f32), the
    /// layout the linear and token classifier plugins read.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, safetensors::SafeTensorError> {
        self.to_safetensors_reading(&[])
    }

    /// [`LinearModel::to_safetensors`] for a model over the concatenated mean-pooled states of
    /// `pooled_layers` (recorded in the metadata, which the linear-classifier plugin reads);
    /// empty: over the sentence embedding.
    pub fn to_safetensors_reading(
        &self,
        pooled_layers: &[u32],
    ) -> Result<Vec<u8>, safetensors::SafeTensorError> {
        use safetensors::tensor::{Dtype, TensorView};
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (w, b) = (bytes(&self.weight), bytes(&self.bias));
        let width = self.hidden.as_ref().map_or(self.dim, |h| h.units);
        let hidden = self
            .hidden
            .as_ref()
            .map(|h| (bytes(&h.weight), bytes(&h.bias), h.units));
        let mut tensors = vec![
            (
                "weight",
                TensorView::new(Dtype::F32, vec![self.classes, width], &w)?,
            ),
            ("bias", TensorView::new(Dtype::F32, vec![self.classes], &b)?),
        ];
        if let Some((hw, hb, units)) = &hidden {
            tensors.push((
                "hidden.weight",
                TensorView::new(Dtype::F32, vec![*units, self.dim], hw)?,
            ));
            tensors.push((
                "hidden.bias",
                TensorView::new(Dtype::F32, vec![*units], hb)?,
            ));
        }
        let metadata = (!pooled_layers.is_empty()).then(|| {
            let list: Vec<String> = pooled_layers.iter().map(u32::to_string).collect();
            std::collections::HashMap::from([("pooled_layers".to_owned(), list.join(","))])
        });
        safetensors::serialize(tensors, metadata)
    }
}

/// Weighted one-hot targets: row `i` holds its weight (class weight × row weight) at its class.
#[derive(Debug)]
struct Targets {
    /// `[n, k]`.
    target: Tensor,
    /// Row weights, `[n, 1]`.
    weights: Tensor,
    /// Sum of the row weights: the objective is scaled by it.
    total: f64,
}

impl Targets {
    fn new(
        y: &[usize],
        row_weights: Option<&[f32]>,
        classes: usize,
        class_weight: ClassWeight,
        dev: &Device,
    ) -> candle_core::Result<Self> {
        // Rows weighted zero (a fold's held-out rows) are not there: they count in no class.
        let k = classes;
        let present = |i: usize| row_weights.is_none_or(|w| w.get(i).is_none_or(|&w| w != 0.0));
        let mut counts = vec![0usize; k];
        let mut n = 0;
        for (i, &c) in y.iter().enumerate() {
            if present(i) {
                counts[c] += 1;
                n += 1;
            }
        }
        let weights: Vec<f32> = y
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let class = match class_weight {
                    ClassWeight::Uniform => 1.0,
                    ClassWeight::Balanced => n as f32 / (k as f32 * counts[c].max(1) as f32),
                };
                class * row_weights.and_then(|w| w.get(i)).copied().unwrap_or(1.0)
            })
            .collect();
        let total = weights.iter().map(|&w| f64::from(w)).sum();
        let mut target = vec![0f32; y.len() * k];
        for (i, (&c, &w)) in y.iter().zip(&weights).enumerate() {
            target[i * k + c] = w;
        }
        Ok(Self {
            target: Tensor::from_vec(target, (y.len(), k), dev)?,
            weights: Tensor::from_vec(weights, (y.len(), 1), dev)?,
            total,
        })
    }

    /// The weighted cross-entropy `Σᵢ wᵢ·CE` of `logits` and its gradient with respect to
    /// them. Per-row sums in f32, the total in f64: keeps the objective precise enough for the
    /// line search near the optimum.
    fn cross_entropy(&self, logits: &Tensor) -> candle_core::Result<(f64, Tensor)> {
        let log_probs = log_softmax(logits)?;
        // -Σ target ⊙ log p (target rows hold wᵢ at the true class).
        let per_row: Vec<f32> = (&self.target * &log_probs)?.sum(1)?.to_vec1()?;
        let ce = -per_row.iter().map(|&v| f64::from(v)).sum::<f64>();
        let grad = (log_probs.exp()?.broadcast_mul(&self.weights)? - &self.target)?;
        Ok((ce, grad))
    }
}

/// Log-probabilities over the last dimension of `logits`, computed stably (max subtracted).
fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Trains on `x` with labels `y` (each `< classes`).
pub fn fit(
    x: &Features,
    y: &[usize],
    classes: usize,
    options: &FitOptions,
) -> candle_core::Result<LinearModel> {
    fit_from(x, y, None, classes, options, None)
}

/// Trains like [`fit`], with each row's loss also multiplied by `weights[i]`.
pub fn fit_weighted(
    x: &Features,
    y: &[usize],
    weights: &[f32],
    classes: usize,
    options: &FitOptions,
) -> candle_core::Result<LinearModel> {
    fit_from(x, y, Some(weights), classes, options, None)
}

/// Trains like [`fit`], starting from `start` (a model of the same shape, e.g. the optimum
/// at a neighbouring `C`) instead of zero. It stops at once if the start already meets the
/// tolerance; [`fit_weighted_warm`] does not.
pub fn fit_warm(
    x: &Features,
    y: &[usize],
    classes: usize,
    options: &FitOptions,
    start: Option<&LinearModel>,
) -> candle_core::Result<LinearModel> {
    fit_from(x, y, None, classes, options, start)
}

/// [`fit_weighted`] from `start` (e.g. the folds' mean model at the same `C`), which it must
/// leave: it also shrinks the starting gradient by [`WARM_GRAD_REDUCTION`], as a warm-started
/// cross-validation fit does. Without a start it is [`fit_weighted`].
pub fn fit_weighted_warm(
    x: &Features,
    y: &[usize],
    weights: &[f32],
    classes: usize,
    options: &FitOptions,
    start: Option<&LinearModel>,
) -> candle_core::Result<LinearModel> {
    let options = FitOptions {
        lbfgs: leaving_the_start(options.lbfgs, start.is_some()),
        ..*options
    };
    fit_from(x, y, Some(weights), classes, &options, start)
}

/// `options`, requiring [`WARM_GRAD_REDUCTION`] when the fit starts from a given model.
fn leaving_the_start(options: lbfgs::Options, warm: bool) -> lbfgs::Options {
    lbfgs::Options {
        grad_reduction: if warm { WARM_GRAD_REDUCTION } else { 0.0 },
        ..options
    }
}

fn fit_from(
    x: &Features,
    y: &[usize],
    row_weights: Option<&[f32]>,
    classes: usize,
    options: &FitOptions,
    start: Option<&LinearModel>,
) -> candle_core::Result<LinearModel> {
    let (n, d, k) = (x.rows(), x.cols, classes);
    let dev = Device::Cpu;
    let xt = Tensor::from_slice(&x.data, (n, d), &dev)?;
    let targets = Targets::new(y, row_weights, k, options.class_weight, &dev)?;
    let total = targets.total;
    let c = options.c;

    let objective = |p: &[f64]| -> candle_core::Result<(f64, Vec<f64>)> {
        let pf: Vec<f32> = p.iter().map(|&v| v as f32).collect();
        let w = Tensor::from_slice(&pf[..k * d], (k, d), &dev)?;
        let b = Tensor::from_slice(&pf[k * d..], k, &dev)?;
        let logits = xt.matmul(&w.t()?)?.broadcast_add(&b)?;
        let (ce, grad_logits) = targets.cross_entropy(&logits)?;
        let grad_w = grad_logits.t()?.contiguous()?.matmul(&xt)?;
        let grad_b = grad_logits.sum(0)?;
        let grad_w: Vec<f32> = grad_w.flatten_all()?.to_vec1()?;
        let grad_b: Vec<f32> = grad_b.to_vec1()?;
        Ok(regularised(ce, &grad_w, &grad_b, p, c, total))
    };
    let x0 = match start {
        Some(m) => m.parameters(),
        None => vec![0.0; k * d + k],
    };
    Ok(LinearModel::from_outcome(
        lbfgs::minimize(objective, x0, options.lbfgs)?,
        k,
        d,
    ))
}

/// `(C·ΣCE + ½‖W‖²) / total` and its gradient, from the cross-entropy `ce` and its gradients
/// `grad_w`, `grad_b` at parameters `p` (`W` row-major, then the biases): the objective of every
/// linear fit, alone or in lockstep.
fn regularised(
    ce: f64,
    grad_w: &[f32],
    grad_b: &[f32],
    p: &[f64],
    c: f64,
    total: f64,
) -> (f64, Vec<f64>) {
    let kd = grad_w.len();
    let norm: f64 = p[..kd].iter().map(|v| v * v).sum();
    let mut grad = Vec::with_capacity(p.len());
    grad.extend(
        grad_w
            .iter()
            .zip(&p[..kd])
            .map(|(&g, &wv)| (f64::from(g) + wv / c) / total),
    );
    grad.extend(grad_b.iter().map(|&g| f64::from(g) / total));
    ((ce + 0.5 * norm / c) / total, grad)
}

/// Trains a small MLP head: one ReLU layer of `units` before the softmax, L2 on both weight
/// matrices, L-BFGS from a seeded uniform initialisation (the objective is not convex, so the
/// seed matters). Rows are weighted like [`fit_weighted`], class weights included.
pub fn fit_mlp(
    x: &Features,
    y: &[usize],
    weights: &[f32],
    classes: usize,
    units: usize,
    seed: u64,
    options: &FitOptions,
) -> candle_core::Result<LinearModel> {
    use candle_core::DType;
    let (n, d, k, h) = (x.rows(), x.cols, classes, units);
    let dev = Device::Cpu;
    let xt = Tensor::from_slice(&x.data, (n, d), &dev)?;
    let targets = Targets::new(y, Some(weights), k, options.class_weight, &dev)?;
    let total = targets.total;
    let c = options.c;
    let (o_w1, o_b1, o_w2) = (h * d, h * d + h, h * d + h + k * h);
    let objective = |p: &[f64]| -> candle_core::Result<(f64, Vec<f64>)> {
        let pf: Vec<f32> = p.iter().map(|&v| v as f32).collect();
        let w1 = Tensor::from_slice(&pf[..o_w1], (h, d), &dev)?;
        let b1 = Tensor::from_slice(&pf[o_w1..o_b1], h, &dev)?;
        let w2 = Tensor::from_slice(&pf[o_b1..o_w2], (k, h), &dev)?;
        let b2 = Tensor::from_slice(&pf[o_w2..], k, &dev)?;
        let z1 = xt.matmul(&w1.t()?)?.broadcast_add(&b1)?;
        let a = z1.relu()?;
        let logits = a.matmul(&w2.t()?)?.broadcast_add(&b2)?;
        let (ce, g2) = targets.cross_entropy(&logits)?;
        let dw2 = g2.t()?.contiguous()?.matmul(&a)?;
        let db2 = g2.sum(0)?;
        let da = g2.matmul(&w2)?;
        let mask = z1.gt(&z1.zeros_like()?)?.to_dtype(DType::F32)?;
        let dz1 = (da * mask)?;
        let dw1 = dz1.t()?.contiguous()?.matmul(&xt)?;
        let db1 = dz1.sum(0)?;
        let mut grad = Vec::with_capacity(p.len());
        let norm: f64 = p[..o_w1].iter().chain(&p[o_b1..o_w2]).map(|v| v * v).sum();
        let value = (ce + 0.5 * norm / c) / total;
        let push = |grad: &mut Vec<f64>, g: Vec<f32>, params: &[f64], penalised: bool| {
            grad.extend(
                g.iter()
                    .zip(params)
                    .map(|(&g, &w)| (f64::from(g) + if penalised { w / c } else { 0.0 }) / total),
            );
        };
        push(&mut grad, dw1.flatten_all()?.to_vec1()?, &p[..o_w1], true);
        push(&mut grad, db1.to_vec1()?, &p[o_w1..o_b1], false);
        push(
            &mut grad,
            dw2.flatten_all()?.to_vec1()?,
            &p[o_b1..o_w2],
            true,
        );
        push(&mut grad, db2.to_vec1()?, &p[o_w2..], false);
        Ok((value, grad))
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut uniform = |fan_in: usize, count: usize| -> Vec<f64> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        (0..count)
            .map(|_| rand::Rng::random_range(&mut rng, -bound..bound))
            .collect()
    };
    let mut x0 = uniform(d, h * d);
    x0.extend(std::iter::repeat_n(0.0, h));
    x0.extend(uniform(h, k * h));
    x0.extend(std::iter::repeat_n(0.0, k));
    let out = lbfgs::minimize(objective, x0, options.lbfgs)?;
    let p: Vec<f32> = out.x.iter().map(|&v| v as f32).collect();
    Ok(LinearModel {
        weight: p[o_b1..o_w2].to_vec(),
        bias: p[o_w2..].to_vec(),
        classes: k,
        dim: d,
        iterations: out.iterations,
        converged: out.converged,
        hidden: Some(Hidden {
            weight: p[..o_w1].to_vec(),
            bias: p[o_w1..o_b1].to_vec(),
            units: h,
        }),
    })
}

/// One candidate's cross-validated score.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CvScore {
    /// The `C` tried.
    pub c: f64,
    /// Mean held-out accuracy over the folds.
    pub accuracy: f64,
}

/// Assigns each example to one of `folds` folds, stratified by class, seeded.
pub fn stratified_folds(y: &[usize], classes: usize, folds: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut fold = vec![0; y.len()];
    let mut next = 0;
    for class in 0..classes {
        let mut members: Vec<usize> = (0..y.len()).filter(|&i| y[i] == class).collect();
        members.shuffle(&mut rng);
        for i in members {
            fold[i] = next % folds;
            next += 1;
        }
    }
    fold
}

/// Stratified k-fold cross-validation of one feature matrix, scoring one `C` at a time.
///
/// The folds' fits run in lockstep: every L-BFGS step of every fold is evaluated in one pass
/// over the whole matrix (each fold's held-out rows weigh zero in its objective), so the matrix
/// is read once per step instead of once per fold. Each fold's objective, and so its optimum,
/// is the one it would have alone.
///
/// A fold's fit at `C` starts from its optimum at the largest smaller `C` already scored (a
/// stronger regularisation's optimum lies on the way; from a weaker one's, measured, it takes
/// longer than from zero), and must then shrink its gradient tenfold as well as meet the
/// tolerance: otherwise the neighbour's optimum, which may already meet it, would be scored
/// again as this `C`'s.
#[derive(Debug)]
pub struct CrossValidation<'a> {
    x: &'a Features,
    y: &'a [usize],
    classes: usize,
    options: FitOptions,
    /// The whole matrix, `[n, d]`.
    xt: Tensor,
    /// Per fold: its weighted targets over every row (zero on its held-out rows).
    targets: Vec<Targets>,
    /// Per fold: its held-out rows.
    held: Vec<Vec<usize>>,
    /// Every `C` scored, with its folds' models.
    fitted: Vec<(f64, Vec<LinearModel>)>,
}

/// How far a warm-started fit must shrink its starting gradient
/// ([`lbfgs::Options::grad_reduction`]).
pub const WARM_GRAD_REDUCTION: f64 = 0.1;

/// One fold's request for its objective at `params`, answered on `reply`.
struct Evaluation {
    fold: usize,
    params: Vec<f64>,
    reply: std::sync::mpsc::Sender<candle_core::Result<(f64, Vec<f64>)>>,
}

enum Request {
    Evaluate(Evaluation),
    /// A fold's fit ended (sent on drop: also when it fails).
    Done,
}

/// Tells the evaluator a fold is done when its thread ends, however it ends.
struct DoneOnDrop(std::sync::mpsc::Sender<Request>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Request::Done);
    }
}

impl<'a> CrossValidation<'a> {
    /// Splits `x`/`y` into `folds` stratified folds (seeded); rows with a `weights` entry are
    /// weighted in training folds.
    pub fn new(
        x: &'a Features,
        y: &'a [usize],
        weights: Option<&[f32]>,
        classes: usize,
        folds: usize,
        seed: u64,
        options: &FitOptions,
    ) -> candle_core::Result<Self> {
        let assignment = stratified_folds(y, classes, folds, seed);
        let dev = Device::Cpu;
        let held = (0..folds)
            .map(|fold| (0..y.len()).filter(|&i| assignment[i] == fold).collect())
            .collect();
        let targets = (0..folds)
            .map(|fold| {
                let row_weights: Vec<f32> = (0..y.len())
                    .map(|i| {
                        if assignment[i] == fold {
                            0.0
                        } else {
                            weights.and_then(|w| w.get(i)).copied().unwrap_or(1.0)
                        }
                    })
                    .collect();
                Targets::new(y, Some(&row_weights), classes, options.class_weight, &dev)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            x,
            y,
            classes,
            options: *options,
            xt: Tensor::from_slice(&x.data, (x.rows(), x.cols), &dev)?,
            targets,
            held,
            fitted: Vec::new(),
        })
    }

    /// The mean held-out accuracy of `c`.
    pub fn score(&mut self, c: f64) -> candle_core::Result<f64> {
        let started = std::time::Instant::now();
        let start = self
            .fitted
            .iter()
            .filter(|(scored, _)| *scored < c)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, models)| models.as_slice());
        let models = self.fit_folds(c, start)?;
        let (mut iterations, mut correct) = (0, 0);
        for (held, model) in self.held.iter().zip(&models) {
            correct += held
                .iter()
                .filter(|&&i| model.predict(self.x.row(i)) == self.y[i])
                .count();
            iterations += model.iterations;
        }
        let accuracy = correct as f64 / self.y.len().max(1) as f64;
        tracing::debug!(
            c,
            accuracy,
            iterations,
            seconds = started.elapsed().as_secs_f64(),
            "cross-validated C"
        );
        self.fitted.push((c, models));
        Ok(accuracy)
    }

    /// Where a search for `C` starts by default: the power of ten nearest to `1 / E‖x‖²`. The
    /// regulariser's pull against the data's scales with the rows' squared norm, so the best `C`
    /// of unit-norm sentence embeddings (0.3–10 on SST-2, AG News, TREC) and of 1,536
    /// standardised columns (3e-4–0.03) sit around the same `C·E‖x‖²`: starting there spares the
    /// walk its costliest fits, the weakly regularised ones.
    pub fn natural_c(&self) -> f64 {
        let rows = self.x.rows().max(1) as f64;
        let mean_sq = self
            .x
            .data
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            / rows;
        if mean_sq > 0.0 && mean_sq.is_finite() {
            10f64.powf((1.0 / mean_sq).log10().round())
        } else {
            1.0
        }
    }

    /// The mean of the folds' models at a scored `C`: a start for the fit on every row.
    pub fn mean_model(&self, c: f64) -> Option<LinearModel> {
        let (_, models) = self.fitted.iter().find(|(scored, _)| *scored == c)?;
        let mut mean = models.first()?.clone();
        let share = 1.0 / models.len() as f32;
        for (i, w) in mean.weight.iter_mut().enumerate() {
            *w = models.iter().map(|m| m.weight[i]).sum::<f32>() * share;
        }
        for (i, b) in mean.bias.iter_mut().enumerate() {
            *b = models.iter().map(|m| m.bias[i]).sum::<f32>() * share;
        }
        Some(mean)
    }

    /// Fits every fold at `c`, from `start` (a model per fold) or zero: one L-BFGS per fold,
    /// each on its own thread, whose objective asks this thread; a step is evaluated when every
    /// fold still running has asked.
    fn fit_folds(
        &self,
        c: f64,
        start: Option<&[LinearModel]>,
    ) -> candle_core::Result<Vec<LinearModel>> {
        use std::sync::mpsc;
        let (d, k) = (self.x.cols, self.classes);
        let lost = || candle_core::Error::Msg("cross-validation: the evaluator stopped".into());
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::scope(|scope| {
            let fits: Vec<_> = (0..self.targets.len())
                .map(|fold| {
                    let done = DoneOnDrop(tx.clone());
                    let from = start.and_then(|models| models.get(fold));
                    let options = leaving_the_start(self.options.lbfgs, from.is_some());
                    let x0 = from.map_or_else(|| vec![0.0; k * d + k], LinearModel::parameters);
                    scope.spawn(move || {
                        let (reply, answers) = mpsc::channel();
                        let objective = |p: &[f64]| {
                            let ask = Request::Evaluate(Evaluation {
                                fold,
                                params: p.to_vec(),
                                reply: reply.clone(),
                            });
                            done.0.send(ask).map_err(|_| lost())?;
                            answers.recv().map_err(|_| lost())?
                        };
                        lbfgs::minimize(objective, x0, options)
                    })
                })
                .collect();
            drop(tx);
            let (mut running, mut asked) = (fits.len(), Vec::new());
            while running > 0 {
                match rx.recv() {
                    Ok(Request::Evaluate(e)) => asked.push(e),
                    Ok(Request::Done) => running -= 1,
                    Err(_) => break,
                }
                if !asked.is_empty() && asked.len() == running {
                    let batch = std::mem::take(&mut asked);
                    match self.evaluate(&batch, c) {
                        Ok(answers) => {
                            for (e, answer) in batch.into_iter().zip(answers) {
                                let _ = e.reply.send(Ok(answer));
                            }
                        }
                        Err(error) => {
                            let said = error.to_string();
                            for e in batch {
                                let _ = e.reply.send(Err(candle_core::Error::Msg(said.clone())));
                            }
                        }
                    }
                }
            }
            fits.into_iter()
                .map(|fit| {
                    let out = fit.join().map_err(|_| {
                        candle_core::Error::Msg("cross-validation: a fold's fit panicked".into())
                    })??;
                    Ok(LinearModel::from_outcome(out, k, d))
                })
                .collect()
        })
    }

    /// Every asked fold's objective (`fit_from`'s) and gradient at its parameters, from one
    /// pair of products over the whole matrix.
    fn evaluate(&self, batch: &[Evaluation], c: f64) -> candle_core::Result<Vec<(f64, Vec<f64>)>> {
        let (n, d, k, m) = (self.x.rows(), self.x.cols, self.classes, batch.len());
        let dev = Device::Cpu;
        let mut w = Vec::with_capacity(m * k * d);
        let mut b = Vec::with_capacity(m * k);
        for e in batch {
            w.extend(e.params[..k * d].iter().map(|&v| v as f32));
            b.extend(e.params[k * d..].iter().map(|&v| v as f32));
        }
        let w = Tensor::from_vec(w, (m * k, d), &dev)?;
        let b = Tensor::from_vec(b, m * k, &dev)?;
        let logits = self
            .xt
            .matmul(&w.t()?)?
            .broadcast_add(&b)?
            .reshape((n, m, k))?;
        let target = Tensor::stack(
            &batch
                .iter()
                .map(|e| &self.targets[e.fold].target)
                .collect::<Vec<_>>(),
            1,
        )?;
        let weights = Tensor::stack(
            &batch
                .iter()
                .map(|e| &self.targets[e.fold].weights)
                .collect::<Vec<_>>(),
            1,
        )?;
        let log_probs = log_softmax(&logits)?;
        // Per row and fold in f32, each fold's total in f64, as `Targets::cross_entropy`.
        let per_row: Vec<f32> = (&target * &log_probs)?
            .sum(D::Minus1)?
            .flatten_all()?
            .to_vec1()?;
        let grad = (log_probs.exp()?.broadcast_mul(&weights)? - &target)?.reshape((n, m * k))?;
        let grad_w: Vec<f32> = grad
            .t()?
            .contiguous()?
            .matmul(&self.xt)?
            .flatten_all()?
            .to_vec1()?;
        let grad_b: Vec<f32> = grad.sum(0)?.to_vec1()?;
        Ok(batch
            .iter()
            .enumerate()
            .map(|(j, e)| {
                let ce = -per_row
                    .iter()
                    .skip(j)
                    .step_by(m)
                    .map(|&v| f64::from(v))
                    .sum::<f64>();
                regularised(
                    ce,
                    &grad_w[j * k * d..(j + 1) * k * d],
                    &grad_b[j * k..(j + 1) * k],
                    &e.params,
                    c,
                    self.targets[e.fold].total,
                )
            })
            .collect())
    }
}

/// Scores every `C` in `grid` by stratified `folds`-fold cross-validation and returns the
/// scores in grid order.
#[allow(clippy::too_many_arguments)]
pub fn cross_validate(
    x: &Features,
    y: &[usize],
    weights: Option<&[f32]>,
    classes: usize,
    grid: &[f64],
    folds: usize,
    seed: u64,
    options: &FitOptions,
) -> candle_core::Result<Vec<CvScore>> {
    let mut cv = CrossValidation::new(x, y, weights, classes, folds, seed, options)?;
    grid.iter()
        .map(|&c| {
            Ok(CvScore {
                c,
                accuracy: cv.score(c)?,
            })
        })
        .collect()
}

/// Where [`search_c`] looks.
#[derive(Debug, Clone, Copy)]
pub struct CSearch {
    /// The first `C` scored; `None`: for [`search_c`], the power of ten nearest to where `C`
    /// times the mean squared norm of a row is 1 ([`CrossValidation::natural_c`]), and 1 for
    /// [`walk_c`].
    pub start: Option<f64>,
    /// Smallest and largest `C` it may reach.
    pub bounds: (f64, f64),
    /// Factor between neighbouring `C`s of the coarse walk (then refined by its square root).
    pub step: f64,
    /// Worse neighbours in a row that end the walk in one direction.
    pub patience: usize,
    /// Refine only when the coarse walk's best reaches this score: below it, another
    /// candidate (a feature source scored before) already wins by more than refining gains.
    pub refine_above: Option<f64>,
}

impl Default for CSearch {
    fn default() -> Self {
        Self {
            start: None,
            bounds: (1e-6, 1e3),
            step: 10.0,
            patience: 1,
            refine_above: None,
        }
    }
}

/// The outcome of [`search_c`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct CChoice {
    /// The chosen `C`.
    pub c: f64,
    /// Its cross-validated accuracy.
    pub accuracy: f64,
    /// Every `C` scored, ascending.
    pub scores: Vec<CvScore>,
    /// Whether the choice lies at a bound of the search (a better `C` may lie past it).
    pub at_bound: bool,
}

/// Chooses `C` by cross-validation without a fixed grid ([`walk_c`] over [`CrossValidation::score`]).
pub fn search_c(cv: &mut CrossValidation<'_>, search: CSearch) -> candle_core::Result<CChoice> {
    let start = search.start.unwrap_or_else(|| cv.natural_c());
    walk_c(
        CSearch {
            start: Some(start),
            ..search
        },
        |c| cv.score(c),
    )
}

/// Chooses the `C` whose `score` (higher is better: cross-validated accuracy, entity F1 on a dev
/// split) is best: a walk by factors of `step` from `start`, upwards, then downwards unless the
/// climb rose above the start, each direction until `patience` worse scores in a row (an equal
/// one does not count) or a bound, then (unless the best is under `refine_above`) the point at
/// the square root of `step` towards the best's better neighbour, where the peak of a smooth
/// curve through the three lies (both sides when they tie or one is past a bound). The best is
/// therefore never at the edge of what was scored unless it is at a bound. Ties go to the
/// smaller `C`. `score` is called at most once per `C`.
pub fn walk_c<E>(
    search: CSearch,
    mut score: impl FnMut(f64) -> Result<f64, E>,
) -> Result<CChoice, E> {
    let (low, high) = search.bounds;
    let mut scores: Vec<CvScore> = Vec::new();
    let mut scored = |scores: &mut Vec<CvScore>, c: f64| -> Result<f64, E> {
        if let Some(s) = scores.iter().find(|s| s.c == c) {
            return Ok(s.accuracy);
        }
        let accuracy = score(c)?;
        scores.push(CvScore { c, accuracy });
        Ok(accuracy)
    };
    let start = search.start.unwrap_or(1.0);
    let mut best = (start, scored(&mut scores, start)?);
    for up in [true, false] {
        // A climb that rose past the start leaves it a worse neighbour below the best: walking
        // down from it could only find a second peak, so it is not walked.
        if !up && best.0 > start {
            break;
        }
        let mut c = start;
        let mut worse = 0;
        while worse < search.patience {
            c = if up { c * search.step } else { c / search.step };
            if c > high * 1.0001 || c < low / 1.0001 {
                break;
            }
            let accuracy = scored(&mut scores, c)?;
            if accuracy < best.1 {
                worse += 1;
            } else {
                // A plateau (equal scores) goes on: it may rise past the next step.
                worse = 0;
                if accuracy > best.1 || c < best.0 {
                    best = (c, accuracy);
                }
            }
        }
    }
    let centre = best.0;
    let neighbour = |c: f64| {
        scores
            .iter()
            .find(|s| (s.c / c - 1.0).abs() < 1e-9)
            .map(|s| s.accuracy)
    };
    let (below, above) = (
        neighbour(centre / search.step),
        neighbour(centre * search.step),
    );
    let half = search.step.sqrt();
    let sides: &[f64] = match (below, above) {
        _ if search.refine_above.is_some_and(|floor| best.1 < floor) => &[],
        (Some(b), Some(a)) if b > a => &[half.recip()],
        (Some(b), Some(a)) if a > b => &[half],
        _ => &[half.recip(), half],
    };
    for &factor in sides {
        let c = centre * factor;
        if c >= low / 1.0001 && c <= high * 1.0001 {
            let accuracy = scored(&mut scores, c)?;
            if accuracy > best.1 || (accuracy == best.1 && c < best.0) {
                best = (c, accuracy);
            }
        }
    }
    scores.sort_by(|a, b| a.c.total_cmp(&b.c));
    let at_bound = scores
        .first()
        .is_some_and(|s| s.c == best.0 && best.0 <= low * 1.0001)
        || scores
            .last()
            .is_some_and(|s| s.c == best.0 && best.0 >= high / 1.0001);
    Ok(CChoice {
        c: best.0,
        accuracy: best.1,
        scores,
        at_bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_standardisation_scores_raw_inputs_as_the_model_scored_standardised_ones() {
        let model = LinearModel {
            weight: vec![1.0, -2.0, 0.5, 3.0, 0.0, -1.0],
            bias: vec![0.1, -0.2],
            classes: 2,
            dim: 3,
            iterations: 0,
            converged: true,
            hidden: None,
        };
        let (mean, scale) = ([0.5f32, -1.0, 2.0], [2.0f32, 0.5, 4.0]);
        let mut folded = model.clone();
        folded.fold_standardisation(&mean, &scale);
        let score = |m: &LinearModel, x: &[f32], c: usize| {
            m.bias[c]
                + m.weight[c * 3..(c + 1) * 3]
                    .iter()
                    .zip(x)
                    .map(|(w, v)| w * v)
                    .sum::<f32>()
        };
        for raw in [[1.0f32, 2.0, 3.0], [-4.0, 0.0, 9.5]] {
            let standardised: Vec<f32> = raw
                .iter()
                .zip(mean.iter().zip(&scale))
                .map(|(v, (m, s))| (v - m) / s)
                .collect();
            for c in 0..2 {
                let (a, b) = (score(&model, &standardised, c), score(&folded, &raw, c));
                assert!((a - b).abs() < 1e-5, "class {c}: {a} vs {b}");
            }
        }
    }

    /// Three balanced blobs in 4-D, deterministic.
    fn blobs(n: usize) -> (Features, Vec<usize>) {
        blobs_with(n, |i| i % 3)
    }

    /// Blobs with class `class_of(i)` for row `i`.
    fn blobs_with(n: usize, class_of: impl Fn(usize) -> usize) -> (Features, Vec<usize>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut x = Features::new(4);
        let mut y = Vec::new();
        for i in 0..n {
            let class = class_of(i);
            let row: Vec<f32> = (0..4)
                .map(|j| {
                    let centre = if j == class { 2.0 } else { 0.0 };
                    centre + rand::Rng::random_range(&mut rng, -1.0f32..1.0)
                })
                .collect();
            x.push(&row);
            y.push(class);
        }
        (x, y)
    }

    #[test]
    fn separable_blobs_are_learned_and_converge() -> candle_core::Result<()> {
        let (x, y) = blobs(300);
        let model = fit(&x, &y, 3, &FitOptions::default())?;
        assert!(model.converged, "{} iterations", model.iterations);
        let correct = (0..300)
            .filter(|&i| model.predict(x.row(i)) == y[i])
            .count();
        assert!(correct >= 285, "{correct}/300");
        Ok(())
    }

    #[test]
    fn the_optimum_has_zero_gradient_like_sklearn() -> candle_core::Result<()> {
        // At the optimum of C·ΣCE + ½‖W‖², W/C = -Σ (p - y) xᵀ: check the stationarity condition
        // directly for the first weight, independent of our own objective code.
        let (x, y) = blobs(90);
        let c = 0.5;
        let model = fit(
            &x,
            &y,
            3,
            &FitOptions {
                c,
                ..FitOptions::default()
            },
        )?;
        for class in 0..3 {
            let mut grad = 0.0f64;
            let mut grad_b = 0.0f64;
            for (i, &label) in y.iter().enumerate() {
                let logits: Vec<f64> = (0..3)
                    .map(|k| {
                        f64::from(model.bias[k])
                            + (0..4)
                                .map(|j| {
                                    f64::from(model.weight[k * 4 + j]) * f64::from(x.row(i)[j])
                                })
                                .sum::<f64>()
                    })
                    .collect();
                let z: f64 = logits.iter().map(|l| l.exp()).sum();
                let p = logits[class].exp() / z - f64::from(u8::from(label == class));
                grad += p * f64::from(x.row(i)[0]);
                grad_b += p;
            }
            let stationarity = grad + f64::from(model.weight[class * 4]) / c;
            assert!(stationarity.abs() < 1e-2, "class {class}: {stationarity}");
            assert!(grad_b.abs() < 1e-2, "class {class} bias: {grad_b}");
        }
        Ok(())
    }

    #[test]
    fn cross_validation_prefers_fitting_over_heavy_regularisation() -> candle_core::Result<()> {
        // Imbalanced (60/30/10%): under heavy regularisation the intercept wins and every row
        // gets the majority class.
        let (x, y) = blobs_with(150, |i| match i % 10 {
            0..6 => 0,
            6..9 => 1,
            _ => 2,
        });
        let scores = cross_validate(&x, &y, None, 3, &[1e-4, 1.0], 5, 0, &FitOptions::default())?;
        assert!(scores[0].accuracy < 0.7, "{scores:?}");
        assert!(scores[1].accuracy > 0.9, "{scores:?}");
        let folds = stratified_folds(&y, 3, 5, 0);
        for f in 0..5 {
            let per_class: Vec<usize> = (0..3)
                .map(|c| (0..150).filter(|&i| folds[i] == f && y[i] == c).count())
                .collect();
            assert_eq!(per_class, [18, 9, 3], "fold {f}");
        }
        Ok(())
    }

    #[test]
    fn folds_fitted_in_lockstep_reach_the_optimum_each_would_alone() -> candle_core::Result<()> {
        // Imbalanced and weighted (balanced classes, one row counting triple): each fold's
        // objective in the shared pass must be exactly its own rows' one.
        let (x, y) = blobs_with(150, |i| match i % 10 {
            0..6 => 0,
            6..9 => 1,
            _ => 2,
        });
        let mut weights = vec![1.0f32; 150];
        weights[7] = 3.0;
        let options = FitOptions {
            c: 0.3,
            class_weight: ClassWeight::Balanced,
            ..FitOptions::default()
        };
        let cv = CrossValidation::new(&x, &y, Some(&weights), 3, 5, 0, &options)?;
        let together = cv.fit_folds(options.c, None)?;
        let folds = stratified_folds(&y, 3, 5, 0);
        for (f, model) in together.iter().enumerate() {
            let train: Vec<usize> = (0..150).filter(|&i| folds[i] != f).collect();
            let rows_y: Vec<usize> = train.iter().map(|&i| y[i]).collect();
            let rows_w: Vec<f32> = train.iter().map(|&i| weights[i]).collect();
            let alone = fit_weighted(&x.subset(&train), &rows_y, &rows_w, 3, &options)?;
            assert!(model.converged && alone.converged, "fold {f}");
            for (a, b) in model
                .weight
                .iter()
                .chain(&model.bias)
                .zip(alone.weight.iter().chain(&alone.bias))
            {
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                    "fold {f}: {a} vs {b}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn folds_warm_started_from_a_smaller_c_reach_their_own_optimum() -> candle_core::Result<()> {
        // Scoring C = 0.03 then C = 0.3: the second fits start from the first's optima, and must
        // end where cold fits at 0.3 end, not stay near 0.03's.
        let (x, y) = blobs(150);
        let options = FitOptions::default();
        let mut warm = CrossValidation::new(&x, &y, None, 3, 5, 0, &options)?;
        warm.score(0.03)?;
        warm.score(0.3)?;
        let cold = CrossValidation::new(&x, &y, None, 3, 5, 0, &options)?;
        let cold = cold.fit_folds(0.3, None)?;
        let (_, warmed) = &warm.fitted[1];
        let (_, first) = &warm.fitted[0];
        for ((w, c), f) in warmed.iter().zip(&cold).zip(first) {
            assert!(
                w.converged && w.iterations > 0,
                "{} iterations",
                w.iterations
            );
            let gap = |a: &LinearModel, b: &LinearModel| {
                a.weight
                    .iter()
                    .zip(&b.weight)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0f32, f32::max)
            };
            assert!(
                gap(w, c) < 0.05 * gap(f, c),
                "{} vs {}",
                gap(w, c),
                gap(f, c)
            );
        }
        let mean = warm.mean_model(0.3);
        assert!(mean.is_some_and(|m| m.weight.len() == 12 && m.bias.len() == 3));
        assert!(warm.mean_model(0.5).is_none());
        Ok(())
    }

    #[test]
    fn the_natural_start_makes_c_times_the_mean_squared_norm_near_one() -> candle_core::Result<()> {
        let y = vec![0, 1, 0, 1];
        let options = FitOptions::default();
        for (width, value, want) in [(384, (1.0f32 / 384.0).sqrt(), 1.0), (1536, 1.0, 1e-3)] {
            let x = Features {
                data: vec![value; 4 * width],
                cols: width,
            };
            let cv = CrossValidation::new(&x, &y, None, 2, 2, 0, &options)?;
            let c = cv.natural_c();
            assert!((c / want - 1.0).abs() < 1e-9, "{width} columns: {c}");
        }
        Ok(())
    }

    #[test]
    fn a_walk_that_climbs_above_its_start_does_not_walk_down() {
        // A single peak at 1. Returns the chosen C and every C scored, in order.
        let walk_from = |start: f64| {
            let mut asked = Vec::new();
            let choice = walk_c(
                CSearch {
                    start: Some(start),
                    ..CSearch::default()
                },
                |c| -> Result<f64, ()> {
                    asked.push(c);
                    Ok(-(c.log10()).abs())
                },
            );
            (choice.map(|ch| ch.c), asked)
        };
        // From 0.01 the climb passes the peak; below 0.01 nothing is scored.
        let (chosen, asked) = walk_from(0.01);
        assert!(chosen.is_ok_and(|c| (c - 1.0).abs() < 1e-9), "{asked:?}");
        assert!(asked.iter().all(|&c| c >= 0.01 * 0.999), "{asked:?}");
        // The best's neighbours at √10 are scored on both sides.
        for neighbour in [10f64.sqrt().recip(), 10f64.sqrt()] {
            assert!(
                asked.iter().any(|&c| (c - neighbour).abs() < 1e-9),
                "{neighbour}: {asked:?}"
            );
        }
        // From above the peak, it walks down.
        let (chosen, asked) = walk_from(100.0);
        assert!(chosen.is_ok_and(|c| (c - 1.0).abs() < 1e-9), "{asked:?}");
    }

    #[test]
    fn the_refinement_goes_towards_the_better_neighbour_and_only_for_a_contender() {
        // A single peak at 2: of the coarse best's neighbours, 10 scores better than 0.1.
        let peak = |c: f64| -> Result<f64, ()> { Ok(-(c.log10() - 2f64.log10()).abs()) };
        let mut asked = Vec::new();
        let choice = walk_c(CSearch::default(), |c| {
            asked.push(c);
            peak(c)
        });
        let root = 10f64.sqrt();
        assert!(
            choice.is_ok_and(|ch| (ch.c - root).abs() < 1e-9),
            "{asked:?}"
        );
        assert!(
            !asked.iter().any(|&c| (c - root.recip()).abs() < 1e-9),
            "{asked:?}"
        );
        // A best under `refine_above` (another source wins) is not refined.
        let mut asked = Vec::new();
        let choice = walk_c(
            CSearch {
                refine_above: Some(0.5),
                ..CSearch::default()
            },
            |c| {
                asked.push(c);
                peak(c)
            },
        );
        assert!(
            choice.is_ok_and(|ch| (ch.c - 1.0).abs() < 1e-9),
            "{asked:?}"
        );
        assert_eq!(asked.len(), 3, "only the coarse walk: {asked:?}");
    }

    #[test]
    fn the_c_search_walks_until_the_best_is_inside_what_it_scored() -> candle_core::Result<()> {
        let (x, y) = blobs_with(150, |i| match i % 10 {
            0..6 => 0,
            6..9 => 1,
            _ => 2,
        });
        // Starting deep in the over-regularised region, the walk climbs to where the fit is good.
        let search = CSearch {
            start: Some(1e-5),
            ..CSearch::default()
        };
        let mut cv = CrossValidation::new(&x, &y, None, 3, 5, 0, &FitOptions::default())?;
        let choice = search_c(&mut cv, search)?;
        assert!(choice.accuracy > 0.9, "{choice:?}");
        assert!(!choice.at_bound, "{choice:?}");
        assert!(choice.scores.iter().any(|s| s.c < choice.c), "{choice:?}");
        assert!(choice.scores.iter().any(|s| s.c > choice.c), "{choice:?}");
        assert!(choice.scores.windows(2).all(|w| w[0].c < w[1].c));
        // Bounded at the start: the choice says it lies at a bound.
        let bounded = CSearch {
            start: Some(1e-5),
            bounds: (1e-6, 1e-5),
            ..CSearch::default()
        };
        let mut cv = CrossValidation::new(&x, &y, None, 3, 5, 0, &FitOptions::default())?;
        let choice = search_c(&mut cv, bounded)?;
        assert!(choice.at_bound, "{choice:?}");
        Ok(())
    }

    #[test]
    fn balanced_targets_weigh_every_class_equally() -> candle_core::Result<()> {
        // 3 rows of class 0, 1 of class 1, the last row also weighted 2 by the caller.
        let t = Targets::new(
            &[0, 0, 0, 1],
            Some(&[1.0, 1.0, 1.0, 2.0]),
            2,
            ClassWeight::Balanced,
            &Device::Cpu,
        )?;
        let w: Vec<f32> = t.weights.flatten_all()?.to_vec1()?;
        assert_eq!(w, [4.0 / 6.0, 4.0 / 6.0, 4.0 / 6.0, 2.0 * 4.0 / 2.0]);
        assert!((t.total - 6.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn an_mlp_learns_what_a_linear_head_cannot() -> candle_core::Result<()> {
        // XOR of two signs: not linearly separable.
        let mut x = Features::new(2);
        let mut y = Vec::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let a: f32 = rand::Rng::random_range(&mut rng, -1.0..1.0);
            let b: f32 = rand::Rng::random_range(&mut rng, -1.0..1.0);
            x.push(&[a, b]);
            y.push(usize::from((a > 0.0) != (b > 0.0)));
        }
        let accuracy = |m: &LinearModel| {
            (0..200).filter(|&i| m.predict(x.row(i)) == y[i]).count() as f64 / 200.0
        };
        let options = FitOptions {
            c: 100.0,
            ..FitOptions::default()
        };
        let linear = fit(&x, &y, 2, &options)?;
        let mlp = fit_mlp(&x, &y, &[1.0; 200], 2, 16, 0, &options)?;
        assert!(accuracy(&linear) < 0.7, "linear {}", accuracy(&linear));
        assert!(accuracy(&mlp) > 0.9, "mlp {}", accuracy(&mlp));
        Ok(())
    }

    #[test]
    fn weights_serialise_in_the_plugin_layout() -> Result<(), Box<dyn std::error::Error>> {
        let model = LinearModel {
            weight: vec![1.0, 2.0, 3.0, 4.0],
            bias: vec![0.5, -0.5],
            classes: 2,
            dim: 2,
            iterations: 0,
            converged: true,
            hidden: None,
        };
        let bytes = model.to_safetensors()?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        assert_eq!(st.tensor("weight")?.shape(), &[2, 2]);
        assert_eq!(
            st.tensor("bias")?.data(),
            &[0.5f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat()[..]
        );
        Ok(())
    }
}
