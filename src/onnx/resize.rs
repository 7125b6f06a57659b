//! ONNX `Resize` (opsets 10–19) and the older `Upsample` (7, 9): what segmentation networks use to
//! bring their score maps back to the image's size (`F.interpolate`, bilinear with
//! `align_corners` false or true, or nearest).
//!
//! Every mode is separable: along each resized axis, output `o` is a fixed weighted sum of a few
//! input values (one for nearest, two for linear, four for cubic), the ONNX reference's weights
//! with its edge clamping. So the whole op is linear in its input, `Y = R_h · X · R_wᵀ` for
//! per-axis interpolation matrices `R`, and its gradient is `R_hᵀ · dY · R_w`: Candle's autograd
//! differentiates it exactly (a product with a constant, or a gather), and the fast engine's
//! reverse pass applies the transposed matrices directly. A matrix costs `input` multiply-adds
//! per output value, through gemm; along a long input axis a gather of the few taps is cheaper
//! (see [`DENSE_MAX_INPUT`]). The plans are built once per shape and kept.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{Device, Result, Tensor};

use super::ops::{self, Attrs};
use super::proto::NodeProto;

/// How an output position's value is read off its source coordinate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Nearest(Nearest),
    Linear,
    /// Keys' cubic with coefficient `a` (ONNX `cubic_coeff_a`); `exclude_outside` drops the taps
    /// outside the input and renormalises the rest.
    Cubic {
        a: f64,
        exclude_outside: bool,
    },
}

/// ONNX `nearest_mode`: how a fractional source coordinate rounds to an input index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// ONNX `coordinate_transformation_mode`: the source coordinate of output position `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordinates {
    /// (x + ½)/scale − ½: PyTorch's `align_corners=False` (the TorchScript exporter writes it so
    /// from opset 11 on).
    HalfPixel,
    /// As `HalfPixel`, but 0 where the output has one element.
    PytorchHalfPixel,
    /// x·(in − 1)/(out − 1): PyTorch's `align_corners=True`.
    AlignCorners,
    /// x/scale: PyTorch's `nearest`, and every `Upsample`.
    Asymmetric,
    /// (x + ½)/scale.
    TfHalfPixelForNn,
    /// `HalfPixel` centred when the output size is not exactly scale · input (opset 19).
    HalfPixelSymmetric,
}

/// ONNX `keep_aspect_ratio_policy` (opset 18), for sizes given as a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aspect {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Where a node's scales and sizes come from: `Upsample`-7's attribute, input 1 (`Upsample`-9,
/// `Resize`-10), or inputs 2 and 3 (`Resize`-11 on, with the `roi` at 1).
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Attribute(Vec<f32>),
    ScalesAt1,
    ScalesSizes,
}

/// A `Resize` or `Upsample` node.
#[derive(Debug, Clone)]
pub struct Resize {
    pub mode: Mode,
    pub coordinates: Coordinates,
    aspect: Aspect,
    axes: Option<Vec<i64>>,
    antialias: bool,
    source: Source,
    plans: PlanCache,
}

impl Resize {
    /// The op of a `Resize` or `Upsample` node; an error names the attribute it cannot take.
    pub fn parse(node: &NodeProto) -> std::result::Result<Resize, String> {
        let a = Attrs(&node.attribute);
        let upsample = node.op_type == "Upsample";
        // Opset 10's Resize has inputs (X, scales) and Upsample's semantics; from opset 11 on
        // there are always at least (X, roi, scales), the omitted ones named "".
        let legacy = upsample || node.input.len() <= 2;
        let source = match (upsample, node.input.len()) {
            (true, 1) => Source::Attribute(a.floats("scales").ok_or("Upsample without scales")?),
            (_, 2) => Source::ScalesAt1,
            (false, n) if n >= 3 => Source::ScalesSizes,
            (_, n) => return Err(format!("{n} inputs")),
        };
        let nearest = match a.string("nearest_mode").as_deref() {
            _ if legacy => Nearest::Floor,
            None | Some("round_prefer_floor") => Nearest::RoundPreferFloor,
            Some("round_prefer_ceil") => Nearest::RoundPreferCeil,
            Some("floor") => Nearest::Floor,
            Some("ceil") => Nearest::Ceil,
            Some(other) => return Err(format!("nearest_mode '{other}'")),
        };
        let mode = match a.string("mode").as_deref() {
            None | Some("nearest") => Mode::Nearest(nearest),
            Some("linear" | "bilinear") => Mode::Linear,
            Some("cubic") if !upsample => Mode::Cubic {
                a: a.float("cubic_coeff_a", -0.75) as f64,
                exclude_outside: a.int("exclude_outside", 0) != 0,
            },
            Some(other) => return Err(format!("mode '{other}'")),
        };
        let coordinates = match a.string("coordinate_transformation_mode").as_deref() {
            _ if legacy => Coordinates::Asymmetric,
            None | Some("half_pixel") => Coordinates::HalfPixel,
            Some("pytorch_half_pixel") => Coordinates::PytorchHalfPixel,
            Some("align_corners") => Coordinates::AlignCorners,
            Some("asymmetric") => Coordinates::Asymmetric,
            Some("tf_half_pixel_for_nn") => Coordinates::TfHalfPixelForNn,
            Some("half_pixel_symmetric") => Coordinates::HalfPixelSymmetric,
            Some(other) => return Err(format!("coordinate_transformation_mode '{other}'")),
        };
        let aspect = match a.string("keep_aspect_ratio_policy").as_deref() {
            None | Some("stretch") => Aspect::Stretch,
            Some("not_larger") => Aspect::NotLarger,
            Some("not_smaller") => Aspect::NotSmaller,
            Some(other) => return Err(format!("keep_aspect_ratio_policy '{other}'")),
        };
        Ok(Resize {
            mode,
            coordinates,
            aspect,
            axes: a.ints("axes"),
            antialias: a.int("antialias", 0) != 0,
            source,
            plans: PlanCache::default(),
        })
    }

    /// The node's output for `inputs` (X, then its scales and sizes, constants of the graph).
    pub fn forward(&self, inputs: &[Option<Tensor>], fast: bool) -> Result<Tensor> {
        let x = ops::input(inputs, 0)?;
        let mut y = x.clone();
        for (axis, plan) in self.axis_plans(x.dims(), inputs)? {
            y = plan.forward(&y, axis, fast)?;
        }
        Ok(y)
    }

    /// The gradient at input X given the gradient `dy` at the output: the transposed
    /// interpolation, axis by axis in reverse order.
    pub fn backward(&self, inputs: &[Option<Tensor>], dy: &Tensor, fast: bool) -> Result<Tensor> {
        let x = ops::input(inputs, 0)?;
        let mut g = dy.clone();
        for (axis, plan) in self.axis_plans(x.dims(), inputs)?.into_iter().rev() {
            g = plan.backward(&g, axis, fast)?;
        }
        Ok(g)
    }

    /// The axes this node changes, with their interpolation plans, in order.
    fn axis_plans(&self, dims: &[usize], inputs: &[Option<Tensor>]) -> Result<Vec<(usize, Arc<AxisPlan>)>> {
        let mut plans = Vec::new();
        for (axis, (output, scale)) in self.targets(dims, inputs)?.into_iter().enumerate() {
            let input = dims[axis];
            // A size of 1 for the batch is the batch the graph was folded for (the tracer's
            // `Shape(x)[0:2]`, read at load on one image): a batch of N keeps its N.
            if (output == input && scale == 1.0) || (axis == 0 && output == 1) {
                continue;
            }
            if axis == 0 {
                candle_core::bail!("Resize of the batch axis ({input} → {output}) is not supported")
            }
            if self.antialias && scale < 1.0 && !matches!(self.mode, Mode::Nearest(_)) {
                candle_core::bail!("Resize with antialias=1 that shrinks an axis is not supported")
            }
            plans.push((axis, self.plans.get(self.mode, self.coordinates, input, output, scale)));
        }
        Ok(plans)
    }

    /// Per axis of an input of shape `dims`: the output size and the scale the coordinates use.
    fn targets(&self, dims: &[usize], inputs: &[Option<Tensor>]) -> Result<Vec<(usize, f64)>> {
        let rank = dims.len();
        let given = |i: usize| ops::optional(inputs, i).filter(|t| t.elem_count() > 0);
        let (scales, sizes) = match &self.source {
            Source::Attribute(s) => (Some(s.clone()), None),
            Source::ScalesAt1 => (given(1).map(ops::floats).transpose()?, None),
            Source::ScalesSizes => {
                (given(2).map(ops::floats).transpose()?, given(3).map(ops::ints).transpose()?)
            }
        };
        let axes: Vec<usize> = match &self.axes {
            Some(a) => a.iter().map(|&a| ops::axis(a, rank)).collect::<Result<_>>()?,
            None => (0..rank).collect(),
        };
        let mut out: Vec<(usize, f64)> = dims.iter().map(|&d| (d, 1.0)).collect();
        match (scales, sizes) {
            (_, Some(sizes)) => {
                if sizes.len() != axes.len() {
                    candle_core::bail!("Resize with {} sizes for {} axes", sizes.len(), axes.len())
                }
                if sizes.iter().any(|&s| s <= 0) {
                    candle_core::bail!("Resize to sizes {sizes:?}")
                }
                let ratio = |i: usize| sizes[i] as f64 / dims[axes[i]] as f64;
                let common = match self.aspect {
                    Aspect::Stretch => None,
                    Aspect::NotLarger => (0..axes.len()).map(ratio).reduce(f64::min),
                    Aspect::NotSmaller => (0..axes.len()).map(ratio).reduce(f64::max),
                };
                for (i, &a) in axes.iter().enumerate() {
                    out[a] = match common {
                        None => (sizes[i] as usize, ratio(i)),
                        Some(s) => (((dims[a] as f64 * s).round() as usize).max(1), s),
                    };
                }
            }
            (Some(scales), None) => {
                if scales.len() != axes.len() {
                    candle_core::bail!("Resize with {} scales for {} axes", scales.len(), axes.len())
                }
                for (&a, &s) in axes.iter().zip(&scales) {
                    let size = (dims[a] as f64 * s as f64).floor();
                    if !(s > 0.0 && size >= 1.0 && size <= (1u64 << 28) as f64) {
                        candle_core::bail!("Resize of a dimension of {} by a scale of {s}", dims[a])
                    }
                    out[a] = (size as usize, s as f64);
                }
            }
            (None, None) => candle_core::bail!("Resize without scales or sizes"),
        }
        ops::check_size(&out.iter().map(|o| o.0).collect::<Vec<_>>())?;
        Ok(out)
    }
}

/// Input lengths up to which an axis is resized by a product with its dense interpolation matrix
/// rather than by gathering its taps: the product costs `input` multiply-adds per output value
/// at gemm speed, the gather a few passes over the output in Candle's element-wise loops
/// (an index-select, a multiply and an add per tap). FCN's 65 → 520 upsampling takes the
/// product; a U-Net's 256 → 512 the gather.
const DENSE_MAX_INPUT: usize = 128;

/// One axis' interpolation: output `o` is Σ_t weight[o·taps + t] · input[index[o·taps + t]].
#[derive(Debug)]
pub struct AxisPlan {
    input: usize,
    output: usize,
    taps: usize,
    index: Vec<u32>,
    weight: Vec<f32>,
    /// Nearest: every weight is 1, and the op a plain gather.
    gather_only: bool,
    /// The (output × input) matrix, built at its first use.
    matrix: OnceLock<Tensor>,
}

impl AxisPlan {
    /// The taps of every output position of an axis of `input` values resized to `output`.
    pub fn new(mode: Mode, coordinates: Coordinates, input: usize, output: usize, scale: f64) -> AxisPlan {
        let taps = match mode {
            Mode::Nearest(_) => 1,
            Mode::Linear => 2,
            Mode::Cubic { .. } => 4,
        };
        let mut index = Vec::with_capacity(output * taps);
        let mut weight = Vec::with_capacity(output * taps);
        let last = input as i64 - 1;
        let clamp = |i: i64| i.clamp(0, last) as u32;
        for o in 0..output {
            let x = source(coordinates, o, input, output, scale);
            let (f, r) = (x.floor(), x - x.floor());
            let f = f as i64;
            match mode {
                Mode::Nearest(n) => {
                    let i = match n {
                        Nearest::Floor => f,
                        Nearest::Ceil => x.ceil() as i64,
                        Nearest::RoundPreferFloor => f + i64::from(r > 0.5),
                        Nearest::RoundPreferCeil => f + i64::from(r >= 0.5),
                    };
                    index.push(clamp(i));
                    weight.push(1.0);
                }
                Mode::Linear => {
                    index.extend([clamp(f), clamp(f + 1)]);
                    weight.extend([(1.0 - r) as f32, r as f32]);
                }
                Mode::Cubic { a, exclude_outside } => {
                    let mut w = cubic_weights(r, a);
                    let first = f - 1;
                    if exclude_outside {
                        let inside = |t: usize| (0..=last).contains(&(first + t as i64));
                        let kept: f64 = (0..4).filter(|&t| inside(t)).map(|t| w[t]).sum();
                        if kept != 0.0 {
                            (0..4).for_each(|t| w[t] = if inside(t) { w[t] / kept } else { 0.0 });
                        }
                    }
                    index.extend((0..4).map(|t| clamp(first + t)));
                    weight.extend(w.iter().map(|&v| v as f32));
                }
            }
        }
        let gather_only = matches!(mode, Mode::Nearest(_));
        AxisPlan { input, output, taps, index, weight, gather_only, matrix: OnceLock::new() }
    }

    /// The dense (output × input) interpolation matrix, on the CPU in f32.
    pub fn matrix(&self) -> &Tensor {
        self.matrix.get_or_init(|| {
            let mut m = vec![0f32; self.output * self.input];
            for o in 0..self.output {
                for t in 0..self.taps {
                    let k = o * self.taps + t;
                    m[o * self.input + self.index[k] as usize] += self.weight[k];
                }
            }
            Tensor::from_vec(m, (self.output, self.input), &Device::Cpu).expect("sizes match")
        })
    }

    fn dense(&self, axis: usize, x: &Tensor) -> bool {
        !self.gather_only && self.input <= DENSE_MAX_INPUT && axis + 2 >= x.rank() && x.dtype().is_float()
    }

    fn matrix_like(&self, x: &Tensor) -> Result<Tensor> {
        self.matrix().to_device(x.device())?.to_dtype(x.dtype())
    }

    /// The axis resized: `x · Rᵀ` along the last axis, `R · x` along the one before (R broadcast
    /// over the leading dimensions, no copy), else the taps gathered.
    fn forward(&self, x: &Tensor, axis: usize, fast: bool) -> Result<Tensor> {
        if !self.dense(axis, x) {
            return self.gather(x, axis);
        }
        let m = self.matrix_like(x)?;
        if axis + 1 == x.rank() {
            return ops::matmul(x, &m.t()?, None, fast);
        }
        let mut dims = x.dims()[..axis].to_vec();
        dims.extend([self.output, self.input]);
        ops::matmul(&m.broadcast_as(dims)?, x, None, fast)
    }

    /// The transpose of [`Self::forward`]: `dy · R` along the last axis, `Rᵀ · dy` along the
    /// one before, else each tap's share added back where it was read.
    fn backward(&self, dy: &Tensor, axis: usize, fast: bool) -> Result<Tensor> {
        if !self.dense(axis, dy) {
            return self.scatter(dy, axis);
        }
        let m = self.matrix_like(dy)?;
        if axis + 1 == dy.rank() {
            return ops::matmul(dy, &m, None, fast);
        }
        let mut dims = dy.dims()[..axis].to_vec();
        dims.extend([self.input, self.output]);
        ops::matmul(&m.t()?.broadcast_as(dims)?, dy, None, fast)
    }

    /// Tap `t`'s input indices and its weights shaped to broadcast along `axis` of `like`.
    fn tap(&self, t: usize, axis: usize, like: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let pick = |v: &[u32]| (0..self.output).map(|o| v[o * self.taps + t]).collect::<Vec<_>>();
        let index = Tensor::from_vec(pick(&self.index), self.output, like.device())?;
        if self.gather_only {
            return Ok((index, None));
        }
        let weights: Vec<f32> = (0..self.output).map(|o| self.weight[o * self.taps + t]).collect();
        let mut shape = vec![1; like.rank()];
        shape[axis] = self.output;
        let w = Tensor::from_vec(weights, shape, like.device())?.to_dtype(like.dtype())?;
        Ok((index, Some(w)))
    }

    fn gather(&self, x: &Tensor, axis: usize) -> Result<Tensor> {
        let mut y: Option<Tensor> = None;
        for t in 0..self.taps {
            let (index, w) = self.tap(t, axis, x)?;
            let part = x.index_select(&index, axis)?;
            let part = match w {
                Some(w) => part.broadcast_mul(&w)?,
                None => part,
            };
            y = Some(match y {
                Some(y) => y.add(&part)?,
                None => part,
            });
        }
        y.ok_or_else(|| candle_core::Error::Msg("an interpolation without taps".into()))
    }

    fn scatter(&self, dy: &Tensor, axis: usize) -> Result<Tensor> {
        let mut shape = dy.dims().to_vec();
        shape[axis] = self.input;
        let mut dx = Tensor::zeros(shape, dy.dtype(), dy.device())?;
        for t in 0..self.taps {
            let (index, w) = self.tap(t, axis, dy)?;
            let share = match w {
                Some(w) => dy.broadcast_mul(&w)?,
                None => dy.clone(),
            };
            dx = dx.index_add(&index, &share.contiguous()?, axis)?;
        }
        Ok(dx)
    }
}

/// The source coordinate of output position `o` (ONNX's formulas; `scale` = output/input unless
/// the node gave its own).
pub fn source(coordinates: Coordinates, o: usize, input: usize, output: usize, scale: f64) -> f64 {
    let x = o as f64;
    match coordinates {
        Coordinates::HalfPixel => (x + 0.5) / scale - 0.5,
        Coordinates::PytorchHalfPixel if output > 1 => (x + 0.5) / scale - 0.5,
        Coordinates::PytorchHalfPixel => 0.0,
        Coordinates::AlignCorners if output > 1 => x * (input - 1) as f64 / (output - 1) as f64,
        Coordinates::AlignCorners => 0.0,
        Coordinates::Asymmetric => x / scale,
        Coordinates::TfHalfPixelForNn => (x + 0.5) / scale,
        Coordinates::HalfPixelSymmetric => {
            let adjustment = output as f64 / (scale * input as f64);
            let offset = input as f64 / 2.0 * (1.0 - adjustment);
            offset + (x + 0.5) / scale - 0.5
        }
    }
}

/// Keys' cubic weights of the four inputs around a coordinate `r` past the one at its floor
/// (at floor − 1, floor, floor + 1, floor + 2); at r = 0 they are (0, 1, 0, 0).
fn cubic_weights(r: f64, a: f64) -> [f64; 4] {
    let far = |t: f64| ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a; // 1 ≤ |t| ≤ 2
    let near = |t: f64| ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0; // |t| ≤ 1
    [far(r + 1.0), near(r), near(1.0 - r), far(2.0 - r)]
}

/// The plans of one node (whose mode and coordinates are fixed), per (input, output, scale): a
/// graph runs at one fixed size, so each is built once.
#[derive(Debug, Clone, Default)]
struct PlanCache(Arc<Mutex<Vec<CachedPlan>>>);

/// (input, output, the scale's bits) and its plan.
type CachedPlan = ((usize, usize, u64), Arc<AxisPlan>);

impl PlanCache {
    fn get(
        &self,
        mode: Mode,
        coordinates: Coordinates,
        input: usize,
        output: usize,
        scale: f64,
    ) -> Arc<AxisPlan> {
        let key = (input, output, scale.to_bits());
        let mut plans = self.0.lock().expect("resize plan cache poisoned");
        if let Some((_, plan)) = plans.iter().find(|(k, _)| *k == key) {
            return plan.clone();
        }
        let plan = Arc::new(AxisPlan::new(mode, coordinates, input, output, scale));
        plans.push((key, plan.clone()));
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(mode: Mode, coordinates: Coordinates, input: usize, output: usize) -> Vec<Vec<f32>> {
        let p = AxisPlan::new(mode, coordinates, input, output, output as f64 / input as f64);
        p.matrix().to_vec2().unwrap()
    }

    fn assert_rows(got: &[Vec<f32>], want: &[&[f32]]) {
        assert_eq!(got.len(), want.len());
        for (o, (g, w)) in got.iter().zip(want).enumerate() {
            for (a, b) in g.iter().zip(w.iter()) {
                assert!((a - b).abs() < 1e-6, "row {o}: {g:?}, expected {w:?}");
            }
        }
    }

    /// 2 → 4 with half-pixel centres (PyTorch's align_corners=False): source coordinates −¼, ¼,
    /// ¾, 1¼, the outer ones clamped to the edge.
    #[test]
    fn bilinear_half_pixel_matrix() {
        let m = plan(Mode::Linear, Coordinates::HalfPixel, 2, 4);
        assert_rows(&m, &[&[1.0, 0.0], &[0.75, 0.25], &[0.25, 0.75], &[0.0, 1.0]]);
    }

    /// 3 → 5 with corners aligned: sources 0, ½, 1, 1½, 2.
    #[test]
    fn bilinear_align_corners_matrix() {
        let m = plan(Mode::Linear, Coordinates::AlignCorners, 3, 5);
        let want: [&[f32]; 5] =
            [&[1., 0., 0.], &[0.5, 0.5, 0.], &[0., 1., 0.], &[0., 0.5, 0.5], &[0., 0., 1.]];
        assert_rows(&m, &want);
        // One output: the first input.
        assert_rows(&plan(Mode::Linear, Coordinates::AlignCorners, 3, 1), &[&[1., 0., 0.]]);
    }

    /// Nearest 2 → 5 as PyTorch's `nearest` (asymmetric, floor): sources 0, 0.4, 0.8, 1.2, 1.6.
    /// Round-prefer-floor takes 0.5 down, round-prefer-ceil up.
    #[test]
    fn nearest_modes() {
        let floor = plan(Mode::Nearest(Nearest::Floor), Coordinates::Asymmetric, 2, 5);
        assert_rows(&floor, &[&[1., 0.], &[1., 0.], &[1., 0.], &[0., 1.], &[0., 1.]]);
        let round = plan(Mode::Nearest(Nearest::RoundPreferFloor), Coordinates::Asymmetric, 2, 5);
        assert_rows(&round, &[&[1., 0.], &[1., 0.], &[0., 1.], &[0., 1.], &[0., 1.]]);
        // 2 → 4 asymmetric: sources 0, ½, 1, 1½ — the halves decide.
        let down = plan(Mode::Nearest(Nearest::RoundPreferFloor), Coordinates::Asymmetric, 2, 4);
        assert_rows(&down, &[&[1., 0.], &[1., 0.], &[0., 1.], &[0., 1.]]);
        let up = plan(Mode::Nearest(Nearest::RoundPreferCeil), Coordinates::Asymmetric, 3, 6);
        let want: [&[f32]; 6] =
            [&[1., 0., 0.], &[0., 1., 0.], &[0., 1., 0.], &[0., 0., 1.], &[0., 0., 1.], &[0., 0., 1.]];
        assert_rows(&up, &want);
        let ceil = plan(Mode::Nearest(Nearest::Ceil), Coordinates::Asymmetric, 2, 4);
        assert_rows(&ceil, &[&[1., 0.], &[0., 1.], &[0., 1.], &[0., 1.]]);
    }

    /// Cubic weights sum to one for any a, interpolate at integer coordinates, and with Keys'
    /// a = −½ reproduce a linear ramp.
    #[test]
    fn cubic_weights_interpolate() {
        for r in [0.0, 0.1, 0.5, 0.9] {
            let w = cubic_weights(r, -0.75);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{r}: {w:?}");
            let w = cubic_weights(r, -0.5);
            let at = w.iter().enumerate().map(|(t, &w)| w * (t as f64 - 1.0)).sum::<f64>();
            assert!((at - r).abs() < 1e-12, "{r}: a ramp goes to {at}");
        }
        assert_eq!(cubic_weights(0.0, -0.5), [0.0, 1.0, 0.0, 0.0]);
        let m = plan(Mode::Cubic { a: -0.75, exclude_outside: true }, Coordinates::HalfPixel, 4, 8);
        for row in &m {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
        }
    }

    /// Sizes read off one image's shape at load, (1, C, H', W'), resize a batch of two as two
    /// single images: the batch keeps its size.
    #[test]
    fn a_folded_batch_of_one_keeps_the_batch() {
        use crate::onnx::proto::{AttributeProto, NodeProto};
        let node = NodeProto {
            op_type: "Resize".into(),
            input: vec!["x".into(), String::new(), String::new(), "sizes".into()],
            attribute: vec![AttributeProto {
                name: "mode".into(),
                s: b"linear".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let resize = Resize::parse(&node).unwrap();
        let d = &Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 4, 5), d).unwrap();
        let sizes = Some(Tensor::new(&[1i64, 3, 7, 9], d).unwrap());
        let run = |x: Tensor| resize.forward(&[Some(x), None, None, sizes.clone()], true).unwrap();
        let both = run(x.clone());
        assert_eq!(both.dims(), [2, 3, 7, 9]);
        for i in 0..2 {
            let one = run(x.narrow(0, i, 1).unwrap());
            let d: f32 = both
                .narrow(0, i, 1)
                .unwrap()
                .sub(&one)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-6, "image {i}: {d}");
        }
        let channels = Some(Tensor::new(&[1i64, 4, 7, 9], d).unwrap());
        assert!(resize.forward(&[Some(x), None, None, channels], true).is_ok(), "other axes may resize");
    }

    /// On a hand-made 2×3 image: Y = R_h · X · R_wᵀ, the same by the dense product and by the
    /// gather, and the backward pass is the transpose (⟨R x, g⟩ = ⟨x, Rᵀ g⟩) both ways.
    #[test]
    fn separable_forward_and_transpose() {
        let d = &Device::Cpu;
        let x = Tensor::new(&[[[[1f32, 2., 4.], [8., 16., 32.]]]], d).unwrap();
        let rh = AxisPlan::new(Mode::Linear, Coordinates::HalfPixel, 2, 4, 2.0);
        let rw = AxisPlan::new(Mode::Linear, Coordinates::AlignCorners, 3, 5, 5.0 / 3.0);
        let by_matrices = rh
            .matrix()
            .broadcast_as((1, 1, 4, 2))
            .unwrap()
            .matmul(&x)
            .unwrap()
            .matmul(&rw.matrix().t().unwrap().broadcast_as((1, 1, 3, 5)).unwrap())
            .unwrap();
        let dense = rw.forward(&rh.forward(&x, 2, false).unwrap(), 3, true).unwrap();
        let gathered = rw.gather(&rh.gather(&x, 2).unwrap(), 3).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
        };
        assert!(diff(&by_matrices, &dense) < 1e-6 && diff(&by_matrices, &gathered) < 1e-6);
        // Row 1 of the output is ¾ of input row 0 and ¼ of row 1; column 1 is halfway between
        // input columns 0 and 1.
        let y: Vec<Vec<f32>> = dense.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        assert!((y[1][1] - (0.75 * 1.5 + 0.25 * 12.0)).abs() < 1e-6, "{y:?}");
        let g = Tensor::randn(0f32, 1., (1, 1, 4, 5), d).unwrap();
        let dot =
            |a: &Tensor, b: &Tensor| -> f32 { a.mul(b).unwrap().sum_all().unwrap().to_scalar().unwrap() };
        for dense_path in [true, false] {
            let back = if dense_path {
                rh.backward(&rw.backward(&g, 3, true).unwrap(), 2, false).unwrap()
            } else {
                rh.scatter(&rw.scatter(&g, 3).unwrap(), 2).unwrap()
            };
            assert_eq!(back.dims(), x.dims());
            assert!((dot(&dense, &g) - dot(&x, &back)).abs() < 1e-4, "dense {dense_path}");
        }
    }
}
