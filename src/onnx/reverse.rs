//! The fast engine's backward pass through an ONNX graph: the gradient of one logit (or of
//! Σ output · seed, for a score map) at every stage's output, walking the recorded forward pass
//! in reverse with a vector–Jacobian product per node.
//!
//! Why not Candle's autograd: it also computes the gradient of every weight (half the work of
//! each Conv, MatMul and Gemm), differentiates LayerNorm, Softmax, GELU and HardSwish through
//! their many composed ops, and cannot use our CPU convolution kernels. Here those ops (and
//! Resize) have hand-written rules; any other op is differentiated by Candle's autograd on that
//! one node, so every graph that runs forward also runs backward. Tests hold the result equal
//! to Candle's autograd through the whole graph.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, Var};

use super::graph::Graph;
use super::ops::{self, Op, Reduce, Unary};
use crate::contract::{EngineKind, Mode, Recording, Taps};
use crate::kernels::activation::{activation_gradient, Activation};
use crate::kernels::fused;

/// What the reverse pass touches for one list of stages, found once from the graph.
#[derive(Default)]
pub(crate) struct Plan {
    /// Per value: whether a gradient flows through it (downstream of a stage and upstream of
    /// the output, not a constant).
    needs: Vec<bool>,
    /// The nodes that carry a gradient from an output to an input, in graph order.
    nodes: Vec<usize>,
    /// Per value: whether the recorded forward pass keeps it for the reverse pass.
    pub(crate) keep: Vec<bool>,
}

impl Plan {
    pub(crate) fn new(g: &Graph, stage_values: &[usize]) -> Plan {
        let count = g.values.len();
        let carried = |node: &super::graph::Node, flags: &[bool]| {
            node.inputs.iter().enumerate().any(|(k, v)| v.is_some_and(|v| flags[v]) && carries(&node.op, k))
        };
        let mut down = vec![false; count];
        for &v in stage_values {
            down[v] = true;
        }
        for node in &g.nodes {
            if carried(node, &down) {
                node.outputs.iter().for_each(|&o| down[o] = true);
            }
        }
        let mut up = vec![false; count];
        up[g.output] = true;
        for node in g.nodes.iter().rev() {
            if node.outputs.iter().any(|&o| up[o]) {
                for (k, v) in node.inputs.iter().enumerate() {
                    if let (Some(v), true) = (v, carries(&node.op, k)) {
                        up[*v] = true;
                    }
                }
            }
        }
        let needs: Vec<bool> = (0..count).map(|v| down[v] && up[v] && g.consts[v].is_none()).collect();
        let nodes: Vec<usize> = (0..g.nodes.len())
            .filter(|&i| {
                let node = &g.nodes[i];
                node.outputs.iter().any(|&o| needs[o]) && carried(node, &needs)
            })
            .collect();
        let mut keep = vec![false; count];
        for &v in stage_values {
            keep[v] = true;
        }
        for &i in &nodes {
            let node = &g.nodes[i];
            node.inputs.iter().flatten().chain(&node.outputs).for_each(|&v| keep[v] = true);
        }
        keep[g.output] = true;
        Plan { needs, nodes, keep }
    }
}

/// Whether input `k` of `op` can carry a gradient (shapes, indices, conditions and bounds
/// cannot).
fn carries(op: &Op, k: usize) -> bool {
    match op {
        Op::Compare(_) | Op::Not | Op::Shape { .. } | Op::Size | Op::Range | Op::ConstantOfShape(_) => false,
        Op::Where => k == 1 || k == 2,
        Op::Concat { .. } => true,
        Op::Conv(_) | Op::Gemm { .. } | Op::LayerNorm { .. } => k <= 2,
        Op::BatchNorm { .. } => k <= 4,
        Op::MatMul | Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow | Op::Min | Op::Max | Op::Mod { .. } => {
            k <= 1
        }
        _ => k == 0,
    }
}

/// One image's forward pass through the graph, kept for the reverse passes.
pub(crate) struct OnnxRecording {
    pub(crate) graph: Arc<Graph>,
    pub(crate) plan: Arc<Plan>,
    pub(crate) stage_values: Vec<usize>,
    /// The kept values of the pass (None where not kept, and for constants).
    pub(crate) values: Vec<Option<Tensor>>,
    pub(crate) consts: Arc<Vec<Option<Tensor>>>,
    pub(crate) logits: Tensor,
}

impl OnnxRecording {
    fn value(&self, v: usize) -> Result<Tensor> {
        match (&self.consts[v], &self.values[v]) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(t)) => Ok(t.clone()),
            (None, None) => {
                candle_core::bail!("value '{}' was not kept for the reverse pass", self.graph.values[v].name)
            }
        }
    }
}

impl Recording for OnnxRecording {
    fn stage_outputs(&self) -> Vec<Tensor> {
        self.stage_values.iter().filter_map(|&v| self.values[v].clone()).collect()
    }

    fn logits(&self) -> Tensor {
        self.logits.clone()
    }

    /// The one-hot seed: logit `class`, or for a score map (1, classes, H, W) the sum of class
    /// `class`'s scores over the whole image.
    fn stage_gradients(&self, class: usize) -> Result<Vec<Option<Tensor>>> {
        let classes = self.logits.dim(1)?;
        if class >= classes {
            candle_core::bail!("class {class} is out of range for {classes} classes")
        }
        let mut shape = vec![1; self.logits.rank()];
        shape[1] = classes;
        let mut one_hot = vec![0f32; classes];
        one_hot[class] = 1.0;
        let seed =
            Tensor::from_vec(one_hot, shape, self.logits.device())?.broadcast_as(self.logits.shape())?;
        self.output_gradients(&seed.contiguous()?)
    }

    fn output_gradients(&self, seed: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let g = &self.graph;
        if seed.dims() != self.logits.dims() {
            candle_core::bail!(
                "a seed of shape {:?} for an output of shape {:?}",
                seed.dims(),
                self.logits.dims()
            )
        }
        let seed = seed.to_device(self.logits.device())?.to_dtype(self.logits.dtype())?;
        let mut grads: Vec<Option<Tensor>> = vec![None; g.values.len()];
        grads[g.output] = Some(seed);
        let mut is_stage = vec![false; g.values.len()];
        self.stage_values.iter().for_each(|&v| is_stage[v] = true);
        for &ni in self.plan.nodes.iter().rev() {
            let node = &g.nodes[ni];
            let dys: Vec<Option<Tensor>> = node
                .outputs
                .iter()
                .map(|&o| if is_stage[o] { grads[o].clone() } else { grads[o].take() })
                .collect();
            if dys.iter().all(Option::is_none) {
                continue;
            }
            let inputs = node
                .inputs
                .iter()
                .map(|v| v.map(|v| self.value(v)).transpose())
                .collect::<Result<Vec<_>>>()?;
            let outputs = node.outputs.iter().map(|&o| self.value(o)).collect::<Result<Vec<_>>>()?;
            let wanted: Vec<bool> = node
                .inputs
                .iter()
                .zip(&inputs)
                .enumerate()
                .map(|(k, (v, t))| {
                    v.is_some_and(|v| self.plan.needs[v])
                        && carries(&node.op, k)
                        && t.as_ref().is_some_and(|t| t.dtype().is_float())
                })
                .collect();
            let context = |e: candle_core::Error| {
                candle_core::Error::Msg(format!("gradient of {} at node '{}': {e}", node.op_type, node.name))
            };
            let dxs = vjp(&node.op, &inputs, &outputs, &dys, &wanted).map_err(context)?;
            for (k, dx) in dxs.into_iter().enumerate() {
                let (Some(dx), Some(v), true) = (dx, node.inputs[k], wanted[k]) else { continue };
                let value = inputs[k].as_ref().expect("a wanted input is present");
                if dx.dims() != value.dims() {
                    return Err(context(candle_core::Error::Msg(format!(
                        "a gradient of shape {:?} for input {k} of shape {:?}",
                        dx.dims(),
                        value.dims()
                    ))));
                }
                grads[v] = Some(match grads[v].take() {
                    Some(sum) => sum.add(&dx)?,
                    None => dx,
                });
            }
        }
        Ok(self.stage_values.iter().map(|&v| grads[v].clone()).collect())
    }
}

/// The gradients at `op`'s wanted inputs, given the gradients `dys` at its outputs (None: the
/// score does not depend on that output).
fn vjp(
    op: &Op,
    inputs: &[Option<Tensor>],
    outputs: &[Tensor],
    dys: &[Option<Tensor>],
    wanted: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    let only = |allowed: &[usize]| wanted.iter().enumerate().all(|(k, &w)| !w || allowed.contains(&k));
    if outputs.len() != 1 {
        return match op {
            Op::Split { axis, .. } if only(&[0]) => split_vjp(*axis, outputs, dys, inputs.len()),
            _ => autograd_vjp(op, inputs, dys, wanted),
        };
    }
    let Some(dy) = dys[0].as_ref() else { return Ok(vec![None; inputs.len()]) };
    let y = &outputs[0];
    let x = || ops::input(inputs, 0);
    let mut dx: Vec<Option<Tensor>> = vec![None; inputs.len()];
    let first = |t: Tensor| -> Result<Vec<Option<Tensor>>> {
        let mut dx = vec![None; inputs.len()];
        dx[0] = Some(t);
        Ok(dx)
    };
    match op {
        Op::Conv(conv) if only(&[0]) => {
            let x = x()?;
            if let (Some((fast, baked)), true) = (&conv.fast, x.device().is_cpu() && x.dtype() == DType::F32)
            {
                let (_, _, h, w) = x.dims4()?;
                let (_, _, kh, kw) = ops::input(inputs, 1)?.dims4()?;
                if conv.window.resolve([h, w], [kh, kw])?.0 == *baked {
                    return first(fast.input_gradient(dy, x.shape())?);
                }
            }
            autograd_vjp(op, inputs, dys, wanted)
        }
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let (a, b) = (x()?, ops::input(inputs, 1)?);
            let scale = |t: Tensor, s: f32| if s == 1.0 { Ok(t) } else { t.affine(s as f64, 0.0) };
            if wanted[0] {
                // y = α·A'·B' + β·C with A' = Aᵀ if trans_a, B' likewise.
                let b_t = if *trans_b { b.clone() } else { b.t()? };
                let da = ops::matmul(dy, &b_t, None, true)?;
                let da = if *trans_a { ops::contiguous(&da.t()?)? } else { da };
                dx[0] = Some(scale(da, *alpha)?);
            }
            if wanted[1] {
                let a_t = if *trans_a { a.clone() } else { a.t()? };
                let db = ops::matmul(&a_t, dy, None, true)?;
                let db = if *trans_b { ops::contiguous(&db.t()?)? } else { db };
                dx[1] = Some(scale(db, *alpha)?);
            }
            if wanted.get(2).copied().unwrap_or(false) {
                let c = ops::input(inputs, 2)?;
                dx[2] = Some(scale(reduce_to(dy, c.dims())?, *beta)?);
            }
            Ok(dx)
        }
        Op::MatMul if x()?.rank() >= 2 && ops::input(inputs, 1)?.rank() >= 2 => {
            let (a, b) = (x()?, ops::input(inputs, 1)?);
            if wanted[0] {
                dx[0] = Some(reduce_to(&ops::matmul(dy, &b.t()?, None, true)?, a.dims())?);
            }
            if wanted[1] {
                dx[1] = Some(reduce_to(&ops::matmul(&a.t()?, dy, None, true)?, b.dims())?);
            }
            Ok(dx)
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            let (a, b) = (float(x()?)?, float(ops::input(inputs, 1)?)?);
            if wanted[0] {
                let da = match op {
                    Op::Mul => dy.broadcast_mul(&b)?,
                    Op::Div => dy.broadcast_div(&b)?,
                    _ => dy.clone(),
                };
                dx[0] = Some(reduce_to(&da, a.dims())?);
            }
            if wanted[1] {
                let db = match op {
                    Op::Add => dy.clone(),
                    Op::Sub => dy.neg()?,
                    Op::Mul => dy.broadcast_mul(&a)?,
                    // d(a/b)/db = −a/b² = −y/b
                    _ => dy.mul(y)?.broadcast_div(&b)?.neg()?,
                };
                dx[1] = Some(reduce_to(&db, b.dims())?);
            }
            Ok(dx)
        }
        Op::Unary(u) if only(&[0]) => {
            let x = float(x()?)?;
            if *u == Unary::Erf {
                if let Some(dx) = fused::erf_gradient(dy, &x)? {
                    return first(dx);
                }
            }
            first(match u {
                Unary::Sqrt => dy.div(&y.affine(2.0, 0.0)?)?,
                // d erf(x)/dx = 2/√π · e^(−x²)
                Unary::Erf => {
                    dy.mul(&x.sqr()?.neg()?.exp()?.affine(std::f64::consts::FRAC_2_SQRT_PI, 0.0)?)?
                }
                Unary::Exp => dy.mul(y)?,
                Unary::Log => dy.div(&x)?,
                Unary::Neg => dy.neg()?,
                Unary::Reciprocal => dy.mul(&y.sqr()?)?.neg()?,
                Unary::Tanh => dy.mul(&y.sqr()?.affine(-1.0, 1.0)?)?,
                Unary::Sigmoid => dy.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)?,
                Unary::Floor | Unary::Ceil => return Ok(dx),
                Unary::Abs => return autograd_vjp(op, inputs, dys, wanted),
            })
        }
        Op::Gelu { tanh: false } if only(&[0]) => {
            // d/dx x·Φ(x) = Φ(x) + x·φ(x)
            let x = float(x()?)?;
            if let Some(dx) = fused::gelu_gradient(dy, &x)? {
                return first(dx);
            }
            let cdf = x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()?.affine(0.5, 0.5)?;
            let pdf = x
                .sqr()?
                .affine(-0.5, 0.0)?
                .exp()?
                .affine(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2, 0.0)?;
            first(dy.mul(&cdf.add(&x.mul(&pdf)?)?)?)
        }
        Op::HardSwish if only(&[0]) => match fused::hard_swish_gradient(dy, x()?)? {
            Some(dx) => first(dx),
            None => autograd_vjp(op, inputs, dys, wanted),
        },
        Op::Relu if only(&[0]) => first(activation_gradient(dy, y, Activation::Relu)?),
        Op::Clip { min, max } if only(&[0]) => {
            let (lo, hi) = ops::clip_bounds(inputs, *min, *max)?;
            match ops::clip_activation(lo, hi) {
                Some(act) => first(activation_gradient(dy, y, act)?),
                None => autograd_vjp(op, inputs, dys, wanted),
            }
        }
        Op::Softmax { axis, log } if only(&[0]) => {
            let a = ops::axis(*axis, y.rank())?;
            if !log && a + 1 == y.rank() {
                if let Some(dx) = fused::softmax_last_gradient(dy, y)? {
                    return first(dx);
                }
            }
            first(if *log {
                dy.sub(&y.exp()?.broadcast_mul(&dy.sum_keepdim(a)?)?)?
            } else {
                y.mul(&dy.broadcast_sub(&dy.mul(y)?.sum_keepdim(a)?)?)?
            })
        }
        Op::LayerNorm { axis, epsilon } if only(&[0]) => {
            // Statistics in f64, as in the forward pass.
            let x = x()?;
            let first_axis = ops::axis(*axis, x.rank())?;
            if let Some(dx) =
                fused::layer_norm_gradient(dy, x, first_axis, *epsilon, ops::optional(inputs, 1))?
            {
                return first(dx);
            }
            let dims: Vec<usize> = (first_axis..x.rank()).collect();
            let x64 = x.to_dtype(DType::F64)?;
            let centred = x64.broadcast_sub(&x64.mean_keepdim(dims.as_slice())?)?;
            let var = centred.sqr()?.mean_keepdim(dims.as_slice())?;
            let rstd = var.affine(1.0, *epsilon as f64)?.sqrt()?.recip()?;
            let normalised = centred.broadcast_mul(&rstd)?;
            let g = match ops::optional(inputs, 1) {
                Some(scale) => dy.broadcast_mul(scale)?,
                None => dy.clone(),
            }
            .to_dtype(DType::F64)?;
            let mean_g = g.mean_keepdim(dims.as_slice())?;
            let mean_gx = g.mul(&normalised)?.mean_keepdim(dims.as_slice())?;
            let d =
                g.broadcast_sub(&mean_g)?.sub(&normalised.broadcast_mul(&mean_gx)?)?.broadcast_mul(&rstd)?;
            first(d.to_dtype(x.dtype())?)
        }
        Op::BatchNorm { epsilon } if only(&[0]) => {
            let x = x()?;
            let (scale, var) = (ops::input(inputs, 1)?, ops::input(inputs, 4)?);
            let k = scale.div(&var.affine(1.0, *epsilon as f64)?.sqrt()?)?;
            let mut shape = vec![1; x.rank()];
            shape[1] = x.dim(1)?;
            first(dy.broadcast_mul(&k.reshape(shape)?)?)
        }
        Op::GlobalAveragePool if only(&[0]) => {
            let x = x()?;
            let cells: usize = x.dims()[2..].iter().product();
            first(dy.broadcast_as(x.shape())?.affine(1.0 / cells.max(1) as f64, 0.0)?)
        }
        Op::Reduce { kind: kind @ (Reduce::Mean | Reduce::Sum), axes, keepdims, noop_with_empty_axes }
            if only(&[0]) =>
        {
            let x = x()?;
            let Some(dims) = ops::reduced_dims(x, axes, inputs, *noop_with_empty_axes)? else {
                return first(dy.clone());
            };
            let mut g = dy.clone();
            if !keepdims {
                for &d in &dims {
                    g = g.unsqueeze(d)?;
                }
            }
            let g = g.broadcast_as(x.shape())?;
            let cells: usize = dims.iter().map(|&d| x.dims()[d]).product();
            first(if *kind == Reduce::Mean { g.affine(1.0 / cells.max(1) as f64, 0.0)? } else { g })
        }
        Op::Slice { attrs } if only(&[0]) => {
            // The gradient in the sliced window, zeros around it: undone axis by axis, last
            // first. Steps other than 1 take autograd.
            let x = x()?;
            let [starts, ends, axes, steps] = ops::slice_params(attrs.as_ref(), inputs)?;
            let mut dims = x.dims().to_vec();
            let mut windows = Vec::with_capacity(starts.len());
            for i in 0..starts.len() {
                let a = ops::axis(axes[i], x.rank())?;
                let Some((first, len)) = ops::unit_slice(dims[a], starts[i], ends[i], steps[i]) else {
                    return autograd_vjp(op, inputs, dys, wanted);
                };
                windows.push((a, first, dims[a] - first - len));
                dims[a] = len;
            }
            let mut dx = dy.clone();
            for &(a, before, after) in windows.iter().rev() {
                dx = dx.pad_with_zeros(a, before, after)?;
            }
            first(dx)
        }
        Op::Concat { axis } => {
            let a = ops::axis(*axis, y.rank())?;
            let mut start = 0;
            for (k, t) in inputs.iter().enumerate() {
                let Some(t) = t else { continue };
                let n = if t.rank() == y.rank() { t.dim(a)? } else { 0 };
                if wanted[k] && n > 0 {
                    dx[k] = Some(dy.narrow(a, start, n)?);
                }
                start += n;
            }
            Ok(dx)
        }
        Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Identity
            if only(&[0]) =>
        {
            first(dy.reshape(x()?.shape())?)
        }
        Op::Transpose { perm } if only(&[0]) => {
            let rank = x()?.rank();
            let perm = ops::transpose_perm(perm.as_deref(), rank)?;
            let mut inverse = vec![0; rank];
            perm.iter().enumerate().for_each(|(i, &p)| inverse[p] = i);
            first(dy.permute(inverse)?)
        }
        Op::Expand if only(&[0]) => first(reduce_to(dy, x()?.dims())?),
        // Linear in X: the transposed interpolation matrices.
        Op::Resize(resize) if only(&[0]) => {
            let fast = x()?.device().is_cpu() && dy.dtype() == DType::F32;
            first(resize.backward(inputs, dy, fast)?)
        }
        Op::Cast { .. } if only(&[0]) => first(dy.to_dtype(x()?.dtype())?),
        _ => autograd_vjp(op, inputs, dys, wanted),
    }
}

fn float(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        Ok(t.clone())
    } else {
        t.to_dtype(DType::F32)
    }
}

/// A broadcast operand's gradient: `g` summed over the dimensions the operand was broadcast
/// along.
fn reduce_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.dims() == shape {
        return Ok(g.clone());
    }
    let mut g = g.clone();
    while g.rank() > shape.len() {
        g = g.sum(0)?;
    }
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 && g.dim(d)? != 1 {
            g = g.sum_keepdim(d)?;
        }
    }
    if g.dims() != shape {
        candle_core::bail!("a gradient of shape {:?} does not reduce to {shape:?}", g.dims())
    }
    Ok(g)
}

/// Split's gradient: its outputs' gradients joined again (zeros where the score does not
/// depend on a part).
fn split_vjp(
    axis: i64,
    outputs: &[Tensor],
    dys: &[Option<Tensor>],
    inputs: usize,
) -> Result<Vec<Option<Tensor>>> {
    let Some(first) = outputs.first() else { return Ok(vec![None; inputs]) };
    let a = ops::axis(axis, first.rank())?;
    let parts = outputs
        .iter()
        .zip(dys)
        .filter(|(o, _)| o.elem_count() > 0)
        .map(|(o, dy)| match dy {
            Some(dy) => Ok(dy.clone()),
            None => o.zeros_like(),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut dx = vec![None; inputs];
    dx[0] = Some(Tensor::cat(&parts, a)?);
    Ok(dx)
}

/// Any op's gradient by Candle's autograd through that one node: what ops without a rule of
/// their own take.
fn autograd_vjp(
    op: &Op,
    inputs: &[Option<Tensor>],
    dys: &[Option<Tensor>],
    wanted: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    let mut vars = Vec::new();
    let args = inputs
        .iter()
        .enumerate()
        .map(|(k, t)| match t {
            Some(t) if wanted[k] => {
                let var = Var::from_tensor(&t.detach())?;
                let tensor = var.as_tensor().clone();
                vars.push((k, var));
                Ok(Some(tensor))
            }
            other => Ok(other.as_ref().map(Tensor::detach)),
        })
        .collect::<Result<Vec<_>>>()?;
    let no_stages = [];
    let mut taps = Taps::new(&no_stages, EngineKind::Fast, Mode::Plain);
    let outputs = ops::eval(op, &args, &mut taps)?;
    let mut score: Option<Tensor> = None;
    for (o, dy) in outputs.iter().zip(dys) {
        if let Some(dy) = dy {
            let term = o.to_dtype(dy.dtype())?.mul(&dy.detach())?.sum_all()?;
            score = Some(match score {
                Some(s) => s.add(&term)?,
                None => term,
            });
        }
    }
    let mut dx = vec![None; inputs.len()];
    let Some(score) = score else { return Ok(dx) };
    let store = score.backward()?;
    for (k, var) in vars {
        dx[k] = store.get(var.as_tensor()).cloned();
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{EngineKind, Mode, Taps};
    use candle_core::Device;

    fn ints(v: &[i64]) -> Option<Tensor> {
        Some(Tensor::new(v, &Device::Cpu).unwrap())
    }

    /// The Slice rule equals autograd through the slice: negative and clamped bounds, several
    /// axes, an empty window, and steps other than 1 (which take autograd themselves).
    #[test]
    fn slice_gradient_matches_autograd() {
        let x = Tensor::randn(0f32, 1., (2, 5, 7), &Device::Cpu).unwrap();
        let cases: Vec<[&[i64]; 4]> = vec![
            [&[1], &[4], &[1], &[1]],
            [&[-3], &[i64::MAX], &[-1], &[1]],
            [&[0, 2], &[1, -1], &[0, 2], &[1, 1]],
            [&[3], &[3], &[1], &[1]],
            [&[0], &[7], &[2], &[2]],
        ];
        for (i, [starts, ends, axes, steps]) in cases.into_iter().enumerate() {
            let op = Op::Slice { attrs: None };
            let inputs = vec![Some(x.clone()), ints(starts), ints(ends), ints(axes), ints(steps)];
            let mut taps = Taps::new(&[], EngineKind::Fast, Mode::Plain);
            let y = ops::eval(&op, &inputs, &mut taps).unwrap().remove(0);
            let dy = Tensor::randn(0f32, 1., y.shape(), &Device::Cpu).unwrap();
            let wanted = [true, false, false, false, false];
            let ours = vjp(&op, &inputs, &[y], &[Some(dy.clone())], &wanted).unwrap().remove(0).unwrap();
            let reference = autograd_vjp(&op, &inputs, &[Some(dy)], &wanted).unwrap().remove(0).unwrap();
            let d: f32 = ours
                .sub(&reference)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d == 0.0, "case {i}: differs by {d}");
        }
    }
}
