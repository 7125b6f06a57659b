//! One-pass CPU kernels for what a transformer runs on every token: LayerNorm, Softmax over the
//! last axis, erf and GELU, forward and backward.
//!
//! Candle composes each from 4–10 tensor ops, a pass over the data and an allocation apiece,
//! and evaluates erf with scalar libm: on ViT-Tiny these took a third of the fast engine's
//! time. Each kernel here is a Candle custom op whose gradient is its closed form, so Candle's
//! autograd through it equals autograd through the composed ops (tests hold them equal); the
//! reverse pass calls the same gradient kernels directly. Every function returns `None` where
//! its kernel does not apply (off the CPU, not f32, an operand autograd tracks), and the caller
//! then composes the op from Candle ops as before.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::parallel;
use super::simd::with_best_simd;
use super::storage::{contiguous_f32, gradient_operands};

/// Rows are split between threads above this many values.
const PARALLEL_MIN: usize = 1 << 15;

fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// A new output of `len` values, row by row: `f(row index, output row)`, in parallel when it is
/// large (four tasks per thread, so that one slow thread is covered by the others).
fn map_rows(len: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; len];
    let rows = len.div_ceil(width.max(1));
    let per_task = if len >= PARALLEL_MIN { rows.div_ceil(4 * parallel::threads()) } else { rows };
    parallel::for_each_chunk(&mut out, width, per_task, f);
    out
}

/// A constant operand (scale, bias) as values, if autograd does not track it and it has
/// `len` values.
fn constant(t: Option<&Tensor>, len: usize) -> Result<Option<Option<Arc<Vec<f32>>>>> {
    match t {
        None => Ok(Some(None)),
        Some(t) if !t.track_op() && t.elem_count() == len => {
            Ok(Some(Some(Arc::new(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))))
        }
        Some(_) => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

#[derive(Clone)]
struct LayerNormOp {
    width: usize,
    epsilon: f32,
    scale: Option<Arc<Vec<f32>>>,
    bias: Option<Arc<Vec<f32>>>,
}

/// Mean and 1/√(var + ε) of one row, accumulated in f64 like the composed op (with random
/// weights a row's mean can dwarf its spread).
/// A row's mean as an f32 pair (high part and remainder) and 1/√(var + ε), accumulated in
/// f64 like the composed op: with random weights a row's mean can dwarf its spread, and
/// `(v − high) − low` then keeps the digits an f32 mean would lose (v − high is exact there).
#[inline(always)]
fn row_stats(x: &[f32], epsilon: f32) -> (f32, f32, f32) {
    let n = x.len() as f64;
    let mean = sum_f64(x) / n;
    let high = mean as f32;
    let low = (mean - high as f64) as f32;
    let mut lanes = [0f64; 4];
    let chunks = x.chunks_exact(4);
    let mut var: f64 = chunks.remainder().iter().map(|&v| ((v - high) - low) as f64).map(|d| d * d).sum();
    for c in chunks {
        for i in 0..4 {
            let d = ((c[i] - high) - low) as f64;
            lanes[i] += d * d;
        }
    }
    var = (var + lanes.iter().sum::<f64>()) / n;
    (high, low, (1.0 / (var + epsilon as f64).sqrt()) as f32)
}

with_best_simd!(layer_norm_row, fn(x: &[f32], epsilon: f32, scale: Option<&[f32]>, bias: Option<&[f32]>, out: &mut [f32]) {
    let (high, low, rstd) = row_stats(x, epsilon);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v - high) - low) * rstd;
    }
    if let Some(s) = scale {
        out.iter_mut().zip(s).for_each(|(o, s)| *o *= s);
    }
    if let Some(b) = bias {
        out.iter_mut().zip(b).for_each(|(o, b)| *o += b);
    }
});

// g = dy·scale; dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), the means in f64.
with_best_simd!(layer_norm_gradient_row, fn(x: &[f32], dy: &[f32], epsilon: f32, scale: Option<&[f32]>, out: &mut [f32]) {
    let (high, low, rstd) = row_stats(x, epsilon);
    let mut g = dy.to_vec();
    if let Some(s) = scale {
        g.iter_mut().zip(s).for_each(|(g, s)| *g *= s);
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v - high) - low) * rstd;
    }
    let n = x.len() as f64;
    let (sum_g, sum_gx) = (sum_f64(&g), dot_f64(&g, out));
    let (mean_g, mean_gx) = ((sum_g / n) as f32, (sum_gx / n) as f32);
    for (o, &g) in out.iter_mut().zip(&g) {
        *o = rstd * (g - mean_g - *o * mean_gx);
    }
});

impl CustomOp1 for LayerNormOp {
    fn name(&self) -> &'static str {
        "camscope-layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let (scale, bias) =
            (self.scale.as_deref().map(Vec::as_slice), self.bias.as_deref().map(Vec::as_slice));
        let y = map_rows(x.len(), self.width, |r, out| {
            layer_norm_row(&x[r * self.width..(r + 1) * self.width], self.epsilon, scale, bias, out)
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = LayerNormGradOp(self.clone());
        Ok(Some(grad_res.contiguous()?.apply_op2_no_bwd(&arg.contiguous()?, &op)?))
    }
}

struct LayerNormGradOp(LayerNormOp);

impl CustomOp2 for LayerNormGradOp {
    fn name(&self) -> &'static str {
        "camscope-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        dy: &CpuStorage,
        dyl: &Layout,
        x: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, x) = gradient_operands(self.name(), dy, dyl, x, xl)?;
        let op = &self.0;
        let w = op.width;
        let scale = op.scale.as_deref().map(Vec::as_slice);
        let dx = map_rows(x.len(), w, |r, out| {
            let rows = r * w..(r + 1) * w;
            layer_norm_gradient_row(&x[rows.clone()], &dy[rows], op.epsilon, scale, out)
        });
        Ok((CpuStorage::F32(dx), dyl.shape().clone()))
    }
}

fn layer_norm_op(
    x: &Tensor,
    axis: usize,
    epsilon: f32,
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Option<LayerNormOp>> {
    if !applies(x) || axis >= x.rank() {
        return Ok(None);
    }
    let width: usize = x.dims()[axis..].iter().product();
    if width == 0 {
        return Ok(None);
    }
    let (Some(scale), Some(bias)) = (constant(scale, width)?, constant(bias, width)?) else {
        return Ok(None);
    };
    Ok(Some(LayerNormOp { width, epsilon, scale, bias }))
}

/// LayerNormalization over the dimensions from `axis` on.
pub fn layer_norm(
    x: &Tensor,
    axis: usize,
    epsilon: f32,
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    match layer_norm_op(x, axis, epsilon, scale, bias)? {
        Some(op) => Ok(Some(x.contiguous()?.apply_op1(op)?)),
        None => Ok(None),
    }
}

/// The gradient at LayerNorm's input `x` given `dy` at its output.
pub fn layer_norm_gradient(
    dy: &Tensor,
    x: &Tensor,
    axis: usize,
    epsilon: f32,
    scale: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if !applies(dy) || dy.dims() != x.dims() {
        return Ok(None);
    }
    match layer_norm_op(x, axis, epsilon, scale, None)? {
        Some(op) => Ok(Some(dy.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &LayerNormGradOp(op))?)),
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last axis

struct SoftmaxOp {
    width: usize,
}

with_best_simd!(softmax_row, fn(x: &[f32], out: &mut [f32]) {
    let max = max(x);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_f32(v - max);
    }
    let inv = 1.0 / sum(out);
    out.iter_mut().for_each(|o| *o *= inv);
});

// dx = y·(dy − Σ dy·y)
with_best_simd!(softmax_gradient_row, fn(y: &[f32], dy: &[f32], out: &mut [f32]) {
    let dot = dot(y, dy);
    for ((o, &a), &b) in out.iter_mut().zip(y).zip(dy) {
        *o = a * (b - dot);
    }
});

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "camscope-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let w = self.width;
        let y = map_rows(x.len(), w, |r, out| softmax_row(&x[r * w..(r + 1) * w], out));
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_res
                .contiguous()?
                .apply_op2_no_bwd(&res.contiguous()?, &SoftmaxGradOp { width: self.width })?,
        ))
    }
}

struct SoftmaxGradOp {
    width: usize,
}

impl CustomOp2 for SoftmaxGradOp {
    fn name(&self) -> &'static str {
        "camscope-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        dy: &CpuStorage,
        dyl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, y) = gradient_operands(self.name(), dy, dyl, y, yl)?;
        let w = self.width;
        let dx = map_rows(y.len(), w, |r, out| {
            softmax_gradient_row(&y[r * w..(r + 1) * w], &dy[r * w..(r + 1) * w], out)
        });
        Ok((CpuStorage::F32(dx), dyl.shape().clone()))
    }
}

/// Softmax over the last axis.
pub fn softmax_last(x: &Tensor) -> Result<Option<Tensor>> {
    if !applies(x) || x.rank() == 0 || x.elem_count() == 0 {
        return Ok(None);
    }
    let width = x.dim(x.rank() - 1)?;
    Ok(Some(x.contiguous()?.apply_op1(SoftmaxOp { width })?))
}

/// The gradient at a last-axis Softmax's input given `dy` at its output `y`.
pub fn softmax_last_gradient(dy: &Tensor, y: &Tensor) -> Result<Option<Tensor>> {
    if !applies(dy) || !applies(y) || dy.dims() != y.dims() || y.rank() == 0 || y.elem_count() == 0 {
        return Ok(None);
    }
    let width = y.dim(y.rank() - 1)?;
    Ok(Some(dy.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &SoftmaxGradOp { width })?))
}

// ---------------------------------------------------------------------------------------------
// erf and GELU

/// erf in single precision: a rational approximation on [−4, 4] (erf is ±1 in f32 beyond),
/// within 5e-7 of the exact value (7 ulp next to ±1), that the compiler vectorises (libm's erff
/// does not).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -1.609_603_3e-2,
        -2.954_6e-3,
        -7.349_906_3e-4,
        -5.692_506_4e-5,
        -2.101_024e-6,
        2.770_681_4e-8,
        -2.726_142_3e-10,
    ];
    const BETA: [f32; 5] = [-1.426_473_9e-2, -7.373_329e-3, -1.682_827e-3, -2.133_740_6e-4, -1.456_607_2e-5];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ALPHA[6];
    for &a in ALPHA[..6].iter().rev() {
        p = p * x2 + a;
    }
    let mut q = BETA[4];
    for &b in BETA[..4].iter().rev() {
        q = q * x2 + b;
    }
    x * p / q
}

/// e^x in single precision within 2 ulp (Cephes' expf: x = n·ln 2 + r, a degree-6 polynomial
/// for e^r, 2^n from the exponent bits), in plain arithmetic the compiler vectorises; libm's
/// expf is a call per value. Clamped to the normal range: e^x for x < −87.3 is 2^−126 instead
/// of a denormal or 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // n as an integer: the low bits of `shifted` (no float-to-int conversion, which would not
    // vectorise).
    let k = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(k.wrapping_add(127) << 23)
}

/// Σ x over eight lanes (a sequential sum waits on each add; these vectorise).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Σ a·b over eight lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// max x over eight lanes (NaN-blind, as the composed op's max is for softmax purposes).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// Σ x and Σ a·b in f64 over four lanes.
#[inline(always)]
fn sum_f64(x: &[f32]) -> f64 {
    let mut lanes = [0f64; 4];
    let chunks = x.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    for c in chunks {
        for i in 0..4 {
            lanes[i] += c[i] as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[inline(always)]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x as f64 * y as f64).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            lanes[i] += x[i] as f64 * y[i] as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

const FRAC_2_SQRT_PI: f32 = std::f32::consts::FRAC_2_SQRT_PI;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Values per task of the element-wise kernels (a GELU of ViT-Tiny's MLP: 151k values).
const POINTWISE_CHUNK: usize = 1 << 14;

#[derive(Clone, Copy)]
enum Pointwise {
    Erf,
    /// x·Φ(x), Φ the normal CDF (GELU without the tanh approximation).
    Gelu,
    /// x·clamp(x/6 + ½, 0, 1) (MobileNetV3's activation). Composed of Candle ops it is a dozen
    /// passes forward and more under autograd: 1.3 of LR-ASPP's 1.7 s reverse pass at 520².
    HardSwish,
}

impl Pointwise {
    #[inline(always)]
    fn value(self, x: f32) -> f32 {
        match self {
            Pointwise::Erf => erf_f32(x),
            Pointwise::Gelu => 0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2)),
            Pointwise::HardSwish => x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
        }
    }

    #[inline(always)]
    fn derivative(self, x: f32) -> f32 {
        match self {
            Pointwise::Erf => FRAC_2_SQRT_PI * exp_f32(-x * x),
            // Φ(x) + x·φ(x)
            Pointwise::Gelu => {
                0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2))
                    + x * (0.5 * FRAC_2_SQRT_PI * FRAC_1_SQRT_2) * exp_f32(-0.5 * x * x)
            }
            // 0 below −3, 1 from 3 on, x/3 + ½ between (the clamp passes no gradient at its
            // bounds, as PyTorch's hardtanh).
            Pointwise::HardSwish => {
                let u = x * (1.0 / 6.0) + 0.5;
                if u <= 0.0 {
                    0.0
                } else if u >= 1.0 {
                    1.0
                } else {
                    u + x * (1.0 / 6.0)
                }
            }
        }
    }
}

// One loop per function, each compiled for the best SIMD the CPU has.
with_best_simd!(erf_slice, fn(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = Pointwise::Erf.value(v));
});

with_best_simd!(gelu_slice, fn(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = Pointwise::Gelu.value(v));
});

with_best_simd!(hard_swish_slice, fn(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = Pointwise::HardSwish.value(v));
});

with_best_simd!(hard_swish_gradient_slice, fn(x: &[f32], dy: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).zip(dy).for_each(|((o, &v), &d)| *o = d * Pointwise::HardSwish.derivative(v));
});

with_best_simd!(erf_gradient_slice, fn(x: &[f32], dy: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).zip(dy).for_each(|((o, &v), &d)| *o = d * Pointwise::Erf.derivative(v));
});

with_best_simd!(gelu_gradient_slice, fn(x: &[f32], dy: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).zip(dy).for_each(|((o, &v), &d)| *o = d * Pointwise::Gelu.derivative(v));
});

impl CustomOp1 for Pointwise {
    fn name(&self) -> &'static str {
        match self {
            Pointwise::Erf => "camscope-erf",
            Pointwise::Gelu => "camscope-gelu",
            Pointwise::HardSwish => "camscope-hard-swish",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let mut y = vec![0f32; x.len()];
        parallel::for_each_chunk(&mut y, POINTWISE_CHUNK, 1, |i, y| {
            let x = &x[i * POINTWISE_CHUNK..][..y.len()];
            match self {
                Pointwise::Erf => erf_slice(x, y),
                Pointwise::Gelu => gelu_slice(x, y),
                Pointwise::HardSwish => hard_swish_slice(x, y),
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op2_no_bwd(&arg.contiguous()?, &PointwiseGrad(*self))?))
    }
}

struct PointwiseGrad(Pointwise);

impl CustomOp2 for PointwiseGrad {
    fn name(&self) -> &'static str {
        "camscope-pointwise-grad"
    }

    fn cpu_fwd(
        &self,
        dy: &CpuStorage,
        dyl: &Layout,
        x: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, x) = gradient_operands(self.name(), dy, dyl, x, xl)?;
        let mut dx = vec![0f32; x.len()];
        parallel::for_each_chunk(&mut dx, POINTWISE_CHUNK, 1, |i, dx| {
            let (x, dy) = (&x[i * POINTWISE_CHUNK..][..dx.len()], &dy[i * POINTWISE_CHUNK..][..dx.len()]);
            match self.0 {
                Pointwise::Erf => erf_gradient_slice(x, dy, dx),
                Pointwise::Gelu => gelu_gradient_slice(x, dy, dx),
                Pointwise::HardSwish => hard_swish_gradient_slice(x, dy, dx),
            }
        });
        Ok((CpuStorage::F32(dx), dyl.shape().clone()))
    }
}

fn pointwise(x: &Tensor, f: Pointwise) -> Result<Option<Tensor>> {
    if !applies(x) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(f)?))
}

fn pointwise_gradient(dy: &Tensor, x: &Tensor, f: Pointwise) -> Result<Option<Tensor>> {
    if !applies(dy) || !applies(x) || dy.dims() != x.dims() {
        return Ok(None);
    }
    Ok(Some(dy.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &PointwiseGrad(f))?))
}

pub fn erf(x: &Tensor) -> Result<Option<Tensor>> {
    pointwise(x, Pointwise::Erf)
}

pub fn erf_gradient(dy: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    pointwise_gradient(dy, x, Pointwise::Erf)
}

pub fn gelu(x: &Tensor) -> Result<Option<Tensor>> {
    pointwise(x, Pointwise::Gelu)
}

pub fn gelu_gradient(dy: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    pointwise_gradient(dy, x, Pointwise::Gelu)
}

pub fn hard_swish(x: &Tensor) -> Result<Option<Tensor>> {
    pointwise(x, Pointwise::HardSwish)
}

pub fn hard_swish_gradient(dy: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    pointwise_gradient(dy, x, Pointwise::HardSwish)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Tensor {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s % 20001) as f32 / 10000.0 - 1.0) * scale + offset
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Forward and autograd gradient of `fused` and of `composed` on `x` with upstream `dy`.
    fn compare(
        x: &Tensor,
        dy: &Tensor,
        fused: impl Fn(&Tensor) -> Tensor,
        composed: impl Fn(&Tensor) -> Tensor,
    ) -> (f32, f32) {
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            let var = Var::from_tensor(x).unwrap();
            let y = f(var.as_tensor());
            let grads = y.mul(dy).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(var.as_tensor()).unwrap().clone())
        };
        let ((y1, g1), (y2, g2)) = (run(&fused), run(&composed));
        (max_diff(&y1, &y2), max_diff(&g1, &g2))
    }

    #[test]
    fn erf_is_within_5e7_of_exact() {
        // Candle's f64 erf as the exact value.
        let xs: Vec<f64> = (-60_000..=60_000).map(|i| i as f64 / 10_000.0).collect();
        let exact: Vec<f64> =
            Tensor::new(xs.as_slice(), &Device::Cpu).unwrap().erf().unwrap().to_vec1().unwrap();
        for (&x, &e) in xs.iter().zip(&exact) {
            assert!((erf_f32(x as f32) as f64 - e).abs() < 5e-7, "erf({x})");
        }
        assert!((erf_f32(30.0) - 1.0).abs() < 5e-7 && (erf_f32(-30.0) + 1.0).abs() < 5e-7);
        assert!(erf_f32(f32::INFINITY) > 0.999 && erf_f32(f32::NEG_INFINITY) < -0.999);
        assert_eq!(erf_f32(0.0), 0.0);
    }

    #[test]
    fn exp_is_within_2_ulp() {
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let exact = (x as f64).exp();
            let relative = ((exp_f32(x) as f64 - exact) / exact).abs();
            assert!(relative < 2.5e-7, "exp({x}): {} vs {exact}", exp_f32(x));
        }
        assert!(exp_f32(-1000.0) <= 1.3e-38 && exp_f32(f32::NEG_INFINITY) <= 1.3e-38);
    }

    #[test]
    fn fused_ops_equal_candle_composed_ops_and_their_gradients() {
        let x = rand(&[2, 5, 37], 1, 3.0, 0.5);
        let dy = rand(&[2, 5, 37], 2, 1.0, 0.0);
        let (dv, dg) = compare(&x, &dy, |x| erf(x).unwrap().unwrap(), |x| x.erf().unwrap());
        assert!(dv < 5e-7 && dg < 1e-6, "erf: {dv} {dg}");
        let (dv, dg) = compare(&x, &dy, |x| gelu(x).unwrap().unwrap(), |x| x.gelu_erf().unwrap());
        assert!(dv < 1e-6 && dg < 1e-6, "gelu: {dv} {dg}");
        // Hard-swish as `ops` composes it: the clamp's masks constant, no gradient at its bounds.
        let wide = rand(&[2, 5, 37], 11, 5.0, 0.0);
        let composed_hard_swish = |x: &Tensor| {
            let u = x.affine(1.0 / 6.0, 0.5).unwrap();
            let pass = u.gt(0.0).unwrap().mul(&u.lt(1.0).unwrap()).unwrap().to_dtype(DType::F32).unwrap();
            let top = u.ge(1.0).unwrap().to_dtype(DType::F32).unwrap();
            x.mul(&u.mul(&pass.detach()).unwrap().add(&top.detach()).unwrap()).unwrap()
        };
        let (dv, dg) = compare(&wide, &dy, |x| hard_swish(x).unwrap().unwrap(), composed_hard_swish);
        assert!(dv < 1e-6 && dg < 1e-6, "hard-swish: {dv} {dg}");
        let (dv, dg) = compare(
            &x,
            &dy,
            |x| softmax_last(x).unwrap().unwrap(),
            |x| {
                let e = x.broadcast_sub(&x.max_keepdim(2).unwrap().detach()).unwrap().exp().unwrap();
                e.broadcast_div(&e.sum_keepdim(2).unwrap()).unwrap()
            },
        );
        assert!(dv < 1e-6 && dg < 1e-6, "softmax: {dv} {dg}");

        // LayerNorm over the last two axes, with a large mean against a small spread.
        let x = rand(&[3, 4, 6], 3, 0.01, 40.0);
        let dy = rand(&[3, 4, 6], 4, 1.0, 0.0);
        let (scale, bias) = (rand(&[4, 6], 5, 0.3, 1.0), rand(&[4, 6], 6, 0.1, 0.0));
        let composed = |x: &Tensor| {
            let x64 = x.to_dtype(DType::F64).unwrap();
            let centred = x64.broadcast_sub(&x64.mean_keepdim(&[1usize, 2][..]).unwrap()).unwrap();
            let var = centred.sqr().unwrap().mean_keepdim(&[1usize, 2][..]).unwrap();
            let y = centred.broadcast_div(&var.affine(1.0, 1e-5).unwrap().sqrt().unwrap()).unwrap();
            y.to_dtype(DType::F32).unwrap().broadcast_mul(&scale).unwrap().broadcast_add(&bias).unwrap()
        };
        let (dv, dg) = compare(
            &x,
            &dy,
            |x| layer_norm(x, 1, 1e-5, Some(&scale), Some(&bias)).unwrap().unwrap(),
            composed,
        );
        assert!(dv < 1e-5 && dg < 1e-3, "layer norm: {dv} {dg}");
        let direct = layer_norm_gradient(&dy, &x, 1, 1e-5, Some(&scale)).unwrap().unwrap();
        let var = Var::from_tensor(&x).unwrap();
        let expected = composed(var.as_tensor()).mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(&direct, expected.get(var.as_tensor()).unwrap()) < 1e-3);
    }

    #[test]
    fn fused_ops_step_aside_where_they_do_not_apply() {
        let x = rand(&[2, 3], 7, 1.0, 0.0).to_dtype(DType::F64).unwrap();
        assert!(erf(&x).unwrap().is_none() && softmax_last(&x).unwrap().is_none());
        let x = rand(&[2, 3], 7, 1.0, 0.0);
        let tracked = Var::from_tensor(&rand(&[3], 8, 1.0, 0.0)).unwrap();
        assert!(layer_norm(&x, 1, 1e-5, Some(tracked.as_tensor()), None).unwrap().is_none());
        assert!(layer_norm(&x, 1, 1e-5, Some(&rand(&[2], 9, 1.0, 0.0)), None).unwrap().is_none());
    }
}
