//! ONNX operators as Candle tensor ops, so that they run on every device and Candle's autograd
//! differentiates them. Gradients follow PyTorch where Candle's own op would not (SPEC §7): ReLU
//! and clipping pass no gradient at their boundaries, softmax is written out (Candle's
//! `softmax_last_dim` drops the gradient), convolution crops its padded input so that Candle's
//! backward returns the right size, max-pooling takes strided views (Candle's pool has no
//! padding and a wrong backward when kernel ≠ stride). Every convolution and max-pool goes
//! through [`conv2d`] and [`max_pool2d`]: the one place to swap kernels.

use candle_core::{DType, Device, Result, Tensor, D};

use super::proto::{AttributeProto, NodeProto};
use super::resize::Resize;
use crate::contract::Taps;
use crate::kernels::{fused, portable, Activation};
use crate::layers::{Conv2d, MaxPool2d, Padding};

/// A node's attributes by name.
pub struct Attrs<'a>(pub &'a [AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|a| a.floats.clone())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// How a convolution or pool pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// The window of a convolution or pool over H and W.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub kernel: Option<[usize; 2]>,
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
    pub auto_pad: AutoPad,
    pub ceil_mode: bool,
}

fn pair(v: Option<Vec<i64>>, default: usize, what: &str) -> std::result::Result<[usize; 2], String> {
    match v {
        None => Ok([default, default]),
        Some(v) if v.len() == 2 && v.iter().all(|&x| (1..=1 << 16).contains(&x)) => {
            Ok([v[0] as usize, v[1] as usize])
        }
        Some(v) => Err(format!("{what} {v:?} (only 2-D windows with positive sizes are supported)")),
    }
}

impl Window {
    fn parse(a: &Attrs) -> std::result::Result<Self, String> {
        let auto_pad = match a.string("auto_pad").as_deref() {
            None | Some("NOTSET") | Some("") => AutoPad::NotSet,
            Some("SAME_UPPER") => AutoPad::SameUpper,
            Some("SAME_LOWER") => AutoPad::SameLower,
            Some("VALID") => AutoPad::Valid,
            Some(other) => return Err(format!("auto_pad '{other}'")),
        };
        let pads = match a.ints("pads") {
            None => [0; 4],
            Some(p) if p.len() == 4 && p.iter().all(|&x| (0..=1 << 16).contains(&x)) => {
                [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
            }
            Some(p) => return Err(format!("pads {p:?} (only 2-D, non-negative)")),
        };
        Ok(Window {
            kernel: a.ints("kernel_shape").map(|k| pair(Some(k), 1, "kernel_shape")).transpose()?,
            strides: pair(a.ints("strides"), 1, "strides")?,
            dilations: pair(a.ints("dilations"), 1, "dilations")?,
            pads,
            auto_pad,
            ceil_mode: a.int("ceil_mode", 0) != 0,
        })
    }

    /// (pads top/left/bottom/right, output h, w) for an input of `size` and a `kernel`.
    pub fn resolve(&self, size: [usize; 2], kernel: [usize; 2]) -> Result<([usize; 4], [usize; 2])> {
        let mut pads = self.pads;
        let mut out = [0; 2];
        for d in 0..2 {
            let (n, s, k) = (size[d], self.strides[d], (kernel[d] - 1) * self.dilations[d] + 1);
            match self.auto_pad {
                AutoPad::Valid => {
                    pads[d] = 0;
                    pads[d + 2] = 0;
                }
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let o = n.div_ceil(s);
                    let total = ((o - 1) * s + k).saturating_sub(n);
                    let small = total / 2;
                    let (before, after) = if self.auto_pad == AutoPad::SameUpper {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    pads[d] = before;
                    pads[d + 2] = after;
                }
                AutoPad::NotSet => {}
            }
            let padded = n + pads[d] + pads[d + 2];
            if padded < k {
                candle_core::bail!(
                    "a {}×{} window does not fit a {}×{} input",
                    kernel[0],
                    kernel[1],
                    size[0],
                    size[1]
                )
            }
            out[d] = if self.ceil_mode {
                let o = (padded - k).div_ceil(s) + 1;
                // The last window must start inside the input or its left padding.
                if (o - 1) * s >= n + pads[d] {
                    o - 1
                } else {
                    o
                }
            } else {
                (padded - k) / s + 1
            };
        }
        Ok((pads, out))
    }
}

/// A convolution: its window and group count; the weights come in as inputs. `fast` is our CPU
/// kernel for the same convolution (padding resolved for the graph's fixed input), set at load
/// where weights are constants and the geometry is one it covers.
#[derive(Debug, Clone)]
pub struct Conv {
    pub window: Window,
    pub groups: usize,
    pub fast: Option<(Conv2d, [usize; 4])>,
}

#[derive(Debug, Clone)]
pub enum Op {
    Conv(Box<Conv>),
    Gemm { alpha: f32, beta: f32, trans_a: bool, trans_b: bool },
    MatMul,
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Mod { fmod: bool },
    Min,
    Max,
    Unary(Unary),
    Gelu { tanh: bool },
    Relu,
    LeakyRelu(f32),
    Clip { min: Option<f32>, max: Option<f32> },
    HardSigmoid { alpha: f32, beta: f32 },
    HardSwish,
    Softmax { axis: i64, log: bool },
    LayerNorm { axis: i64, epsilon: f32 },
    BatchNorm { epsilon: f32 },
    GlobalAveragePool,
    GlobalMaxPool,
    AveragePool { window: Window, count_include_pad: bool },
    MaxPool(Window),
    Reduce { kind: Reduce, axes: Option<Vec<i64>>, keepdims: bool, noop_with_empty_axes: bool },
    Concat { axis: i64 },
    Split { axis: i64, split: Option<Vec<i64>>, outputs: usize },
    Slice { attrs: Option<[Vec<i64>; 3]> },
    Flatten { axis: i64 },
    Reshape { allowzero: bool },
    Transpose { perm: Option<Vec<i64>> },
    Squeeze { axes: Option<Vec<i64>> },
    Unsqueeze { axes: Option<Vec<i64>> },
    Gather { axis: i64 },
    Expand,
    Where,
    Compare(Compare),
    Not,
    Cast { to: DType },
    Pad { mode: PadMode, pads: Option<Vec<i64>>, value: f32 },
    Identity,
    ConstantOfShape(Tensor),
    Shape { start: i64, end: Option<i64> },
    Size,
    Range,
    Tile,
    Resize(Box<Resize>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Sqrt,
    Erf,
    Exp,
    Log,
    Neg,
    Abs,
    Reciprocal,
    Tanh,
    Sigmoid,
    Floor,
    Ceil,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Mean,
    Sum,
    Max,
    Min,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Equal,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

/// Why a node cannot be built: an unsupported op, or one with attributes we do not handle.
pub enum ParseError {
    Unsupported,
    Invalid(String),
}

impl Op {
    /// The op of `node`. `Constant` nodes are not ops here: the graph turns them into values.
    pub fn parse(node: &NodeProto) -> std::result::Result<Op, ParseError> {
        use ParseError::Invalid;
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(ParseError::Unsupported);
        }
        let a = Attrs(&node.attribute);
        let opt_ints = |name: &str| a.ints(name);
        let unary = |u| Ok(Op::Unary(u));
        match node.op_type.as_str() {
            "Conv" => {
                let window = Window::parse(&a).map_err(Invalid)?;
                let groups = a.int("group", 1);
                if !(1..=1 << 20).contains(&groups) {
                    return Err(Invalid(format!("group {groups}")));
                }
                Ok(Op::Conv(Box::new(Conv { window, groups: groups as usize, fast: None })))
            }
            "Gemm" => Ok(Op::Gemm {
                alpha: a.float("alpha", 1.0),
                beta: a.float("beta", 1.0),
                trans_a: a.int("transA", 0) != 0,
                trans_b: a.int("transB", 0) != 0,
            }),
            "MatMul" => Ok(Op::MatMul),
            "Add" | "Sum" if node.input.len() <= 2 => Ok(Op::Add),
            "Sub" => Ok(Op::Sub),
            "Mul" => Ok(Op::Mul),
            "Div" => Ok(Op::Div),
            "Pow" => Ok(Op::Pow),
            "Mod" => Ok(Op::Mod { fmod: a.int("fmod", 0) != 0 }),
            "Min" if node.input.len() == 2 => Ok(Op::Min),
            "Max" if node.input.len() == 2 => Ok(Op::Max),
            "Sqrt" => unary(Unary::Sqrt),
            "Erf" => unary(Unary::Erf),
            "Exp" => unary(Unary::Exp),
            "Log" => unary(Unary::Log),
            "Neg" => unary(Unary::Neg),
            "Abs" => unary(Unary::Abs),
            "Reciprocal" => unary(Unary::Reciprocal),
            "Tanh" => unary(Unary::Tanh),
            "Sigmoid" => unary(Unary::Sigmoid),
            "Floor" => unary(Unary::Floor),
            "Ceil" => unary(Unary::Ceil),
            "Gelu" => match a.string("approximate").as_deref() {
                None | Some("none") => Ok(Op::Gelu { tanh: false }),
                Some("tanh") => Ok(Op::Gelu { tanh: true }),
                Some(other) => Err(Invalid(format!("approximate '{other}'"))),
            },
            "Relu" => Ok(Op::Relu),
            "LeakyRelu" => Ok(Op::LeakyRelu(a.float("alpha", 0.01))),
            "Clip" => Ok(Op::Clip {
                min: a.has("min").then(|| a.float("min", f32::MIN)),
                max: a.has("max").then(|| a.float("max", f32::MAX)),
            }),
            "HardSigmoid" => Ok(Op::HardSigmoid { alpha: a.float("alpha", 0.2), beta: a.float("beta", 0.5) }),
            "HardSwish" => Ok(Op::HardSwish),
            "Softmax" | "LogSoftmax" => {
                Ok(Op::Softmax { axis: a.int("axis", -1), log: node.op_type == "LogSoftmax" })
            }
            "LayerNormalization" => {
                Ok(Op::LayerNorm { axis: a.int("axis", -1), epsilon: a.float("epsilon", 1e-5) })
            }
            "BatchNormalization" => {
                if a.int("training_mode", 0) != 0 {
                    return Err(Invalid("training_mode 1".into()));
                }
                Ok(Op::BatchNorm { epsilon: a.float("epsilon", 1e-5) })
            }
            "GlobalAveragePool" => Ok(Op::GlobalAveragePool),
            "GlobalMaxPool" => Ok(Op::GlobalMaxPool),
            "AveragePool" => Ok(Op::AveragePool {
                window: Window::parse(&a).map_err(Invalid)?,
                count_include_pad: a.int("count_include_pad", 0) != 0,
            }),
            "MaxPool" => {
                if node.output.len() > 1 && !node.output[1].is_empty() {
                    return Err(Invalid("MaxPool with an Indices output".into()));
                }
                Ok(Op::MaxPool(Window::parse(&a).map_err(Invalid)?))
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => Ok(Op::Reduce {
                kind: match node.op_type.as_str() {
                    "ReduceMean" => Reduce::Mean,
                    "ReduceSum" => Reduce::Sum,
                    "ReduceMax" => Reduce::Max,
                    _ => Reduce::Min,
                },
                axes: opt_ints("axes"),
                keepdims: a.int("keepdims", 1) != 0,
                noop_with_empty_axes: a.int("noop_with_empty_axes", 0) != 0,
            }),
            "Concat" => Ok(Op::Concat { axis: a.int("axis", 0) }),
            "Split" => {
                Ok(Op::Split { axis: a.int("axis", 0), split: opt_ints("split"), outputs: node.output.len() })
            }
            "Slice" => Ok(Op::Slice {
                attrs: match (opt_ints("starts"), opt_ints("ends")) {
                    (Some(s), Some(e)) => {
                        let axes = opt_ints("axes").unwrap_or_else(|| (0..s.len() as i64).collect());
                        Some([s, e, axes])
                    }
                    _ => None,
                },
            }),
            "Flatten" => Ok(Op::Flatten { axis: a.int("axis", 1) }),
            "Reshape" => Ok(Op::Reshape { allowzero: a.int("allowzero", 0) != 0 }),
            "Transpose" => Ok(Op::Transpose { perm: opt_ints("perm") }),
            "Squeeze" => Ok(Op::Squeeze { axes: opt_ints("axes") }),
            "Unsqueeze" => Ok(Op::Unsqueeze { axes: opt_ints("axes") }),
            "Gather" => Ok(Op::Gather { axis: a.int("axis", 0) }),
            "Expand" => Ok(Op::Expand),
            "Where" => Ok(Op::Where),
            "Equal" => Ok(Op::Compare(Compare::Equal)),
            "Less" => Ok(Op::Compare(Compare::Less)),
            "Greater" => Ok(Op::Compare(Compare::Greater)),
            "LessOrEqual" => Ok(Op::Compare(Compare::LessOrEqual)),
            "GreaterOrEqual" => Ok(Op::Compare(Compare::GreaterOrEqual)),
            "Not" => Ok(Op::Not),
            "Cast" => {
                let to = a.int("to", 0) as i32;
                match super::tensor::compute_dtype(to) {
                    Some(to) => Ok(Op::Cast { to }),
                    None => Err(Invalid(format!("Cast to {}", super::proto::data_type::name(to)))),
                }
            }
            "Pad" => Ok(Op::Pad {
                mode: match a.string("mode").as_deref() {
                    None | Some("constant") => PadMode::Constant,
                    Some("reflect") => PadMode::Reflect,
                    Some("edge") => PadMode::Edge,
                    Some(other) => return Err(Invalid(format!("mode '{other}'"))),
                },
                pads: opt_ints("pads"),
                value: a.float("value", 0.0),
            }),
            "Identity" | "Dropout" => Ok(Op::Identity),
            "ConstantOfShape" => {
                let value = match a.get("value").and_then(|v| v.t.as_ref()) {
                    Some(t) => {
                        super::tensor::to_tensor(t, std::path::Path::new("."), &mut Default::default())
                            .map_err(Invalid)?
                    }
                    None => Tensor::zeros(1, DType::F32, &Device::Cpu).map_err(|e| Invalid(e.to_string()))?,
                };
                if value.elem_count() != 1 {
                    return Err(Invalid("ConstantOfShape value with several elements".into()));
                }
                Ok(Op::ConstantOfShape(value.flatten_all().map_err(|e| Invalid(e.to_string()))?))
            }
            "Shape" => Ok(Op::Shape { start: a.int("start", 0), end: a.has("end").then(|| a.int("end", 0)) }),
            "Size" => Ok(Op::Size),
            "Range" => Ok(Op::Range),
            "Tile" => Ok(Op::Tile),
            "Resize" | "Upsample" => Ok(Op::Resize(Box::new(Resize::parse(node).map_err(Invalid)?))),
            _ => Err(ParseError::Unsupported),
        }
    }

    /// Whether this op's output depends on its input's values (not just its shape).
    pub fn reads_shape_only(&self) -> bool {
        matches!(self, Op::Shape { .. } | Op::Size)
    }
}

/// Refuses shapes too large to allocate (a corrupt size in a graph must not exhaust memory).
pub(crate) fn check_size(shape: &[usize]) -> Result<()> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match n {
        Some(n) if n <= 1 << 28 => Ok(()),
        _ => candle_core::bail!("a tensor of shape {shape:?} is too large"),
    }
}

/// Integer values of a (small, constant) tensor.
pub fn ints(t: &Tensor) -> Result<Vec<i64>> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::I64)?.flatten_all()?.to_vec1()
}

pub(crate) fn floats(t: &Tensor) -> Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// A possibly negative axis of a rank-`rank` tensor.
pub fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if a < -r || a >= r.max(1) {
        candle_core::bail!("axis {a} out of range for rank {rank}")
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

pub(crate) fn input(inputs: &[Option<Tensor>], i: usize) -> Result<&Tensor> {
    match inputs.get(i) {
        Some(Some(t)) => Ok(t),
        _ => candle_core::bail!("missing input {i}"),
    }
}

pub(crate) fn optional(inputs: &[Option<Tensor>], i: usize) -> Option<&Tensor> {
    inputs.get(i).and_then(|t| t.as_ref())
}

/// Two operands in one dtype (floats win), broadcast to one shape.
fn unify(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let (a, b) = match (a.dtype(), b.dtype()) {
        (x, y) if x == y => (a.clone(), b.clone()),
        (DType::F32, _) => (a.clone(), b.to_dtype(DType::F32)?),
        (_, DType::F32) => (a.to_dtype(DType::F32)?, b.clone()),
        _ => (a.to_dtype(DType::I64)?, b.to_dtype(DType::I64)?),
    };
    let shape = a.shape().broadcast_shape_binary_op(b.shape(), "onnx")?;
    Ok((a.broadcast_as(&shape)?, b.broadcast_as(&shape)?))
}

/// A mask (0/1 in `x`'s dtype) treated as a constant by autograd.
fn mask(cond: Tensor, like: &Tensor) -> Result<Tensor> {
    Ok(cond.to_dtype(like.dtype())?.detach())
}

/// A Clip node's bounds: its optional inputs 1 and 2, else its attributes.
pub(crate) fn clip_bounds(
    inputs: &[Option<Tensor>],
    min: Option<f32>,
    max: Option<f32>,
) -> Result<(Option<f32>, Option<f32>)> {
    let bound = |i: usize, attr: Option<f32>| -> Result<Option<f32>> {
        match optional(inputs, i) {
            Some(t) => Ok(Some(floats(t)?.first().copied().unwrap_or(f32::NAN))),
            None => Ok(attr),
        }
    };
    Ok((bound(1, min)?, bound(2, max)?))
}

/// The ReLU a clip to these bounds is (to [0, 6]: ReLU6; to [0, ∞): ReLU), if it is one.
pub(crate) fn clip_activation(lo: Option<f32>, hi: Option<f32>) -> Option<Activation> {
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo == 0.0 && hi == 6.0 => Some(Activation::Relu6),
        (Some(0.0), None) => Some(Activation::Relu),
        (Some(lo), Some(hi)) if lo == 0.0 && hi == f32::INFINITY => Some(Activation::Relu),
        _ => None,
    }
}

/// clamp(x, lo, hi) whose gradient is 1 strictly inside (lo, hi) and 0 outside (PyTorch's
/// hardtanh; torch.clamp differs only where x equals a bound exactly).
fn clip(x: &Tensor, lo: Option<f32>, hi: Option<f32>) -> Result<Tensor> {
    let mut pass = x.ones_like()?;
    let mut fixed = x.zeros_like()?;
    if let Some(lo) = lo {
        pass = pass.mul(&x.gt(lo as f64)?.to_dtype(x.dtype())?)?;
        fixed = fixed.add(&x.le(lo as f64)?.to_dtype(x.dtype())?.affine(lo as f64, 0.0)?)?;
    }
    if let Some(hi) = hi {
        pass = pass.mul(&x.lt(hi as f64)?.to_dtype(x.dtype())?)?;
        fixed = fixed.add(&x.ge(hi as f64)?.to_dtype(x.dtype())?.affine(hi as f64, 0.0)?)?;
    }
    x.mul(&mask(pass, x)?)?.add(&fixed.detach())
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    x.neg()?.exp()?.affine(1.0, 1.0)?.recip()
}

pub(crate) fn contiguous(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// NumPy matmul (ranks ≥ 1, batch dimensions broadcast), plus `bias` where a Linear layer's bias
/// Add was merged into the product at load (see `rewrite`); with our threaded CPU kernel, which
/// adds the bias as it writes, where `fast` and it applies.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, fast: bool) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let a2 = if ra == 1 { a.unsqueeze(0)? } else { a.clone() };
    let b2 = if rb == 1 { b.unsqueeze(1)? } else { b.clone() };
    let (a2, b2) = if a2.dtype() != b2.dtype() { unify_dtype(&a2, &b2)? } else { (a2, b2) };
    let ours = if fast { crate::kernels::matmul::matmul_bias(&a2, &b2, bias)? } else { None };
    // The bias still to add: none where our kernel took it.
    let (mut y, bias) = match ours {
        Some(y) => (y, None),
        None => {
            let (a2, b2) = (gemm_operand(&a2)?, gemm_operand(&b2)?);
            let y =
                if a2.rank() == 2 && b2.rank() == 2 { a2.matmul(&b2)? } else { a2.broadcast_matmul(&b2)? };
            (y, bias)
        }
    };
    if rb == 1 {
        y = y.squeeze(D::Minus1)?;
    }
    if ra == 1 {
        y = y.squeeze(y.rank().saturating_sub(if rb == 1 { 1 } else { 2 }))?;
    }
    match bias {
        Some(bias) => {
            let (y, bias) = unify(&y, bias)?;
            y.add(&bias)
        }
        None => Ok(y),
    }
}

/// A matmul operand as Candle's CPU matmul takes it without a copy: any strides within each
/// matrix (gemm reads a transposed view as it is), batches laid out as Candle's batch stepping
/// expects. Anything else, and every operand off the CPU, is made contiguous.
fn gemm_operand(t: &Tensor) -> Result<Tensor> {
    let (dims, stride) = (t.dims(), t.stride());
    let batches_ok = match (dims.len(), stride) {
        (2 | 3, _) => true,
        (4, [s0, s1, _, _]) => *s0 == s1 * dims[1] || dims[0] == 1 || dims[1] == 1,
        _ => false,
    };
    if t.device().is_cpu() && batches_ok {
        Ok(t.clone())
    } else {
        contiguous(t)
    }
}

fn unify_dtype(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?))
}

/// Checks that `weight` and `bias` fit `x`; the padding of each side and the output's shape.
fn conv_geometry(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    conv: &Conv,
) -> Result<([usize; 4], [usize; 4])> {
    let (n, c, h, w) = x.dims4()?;
    let (o, cg, kh, kw) = weight.dims4()?;
    let groups = conv.groups;
    if cg * groups != c || o % groups != 0 {
        candle_core::bail!("weight {:?} with {groups} groups does not fit {c} input channels", weight.dims())
    }
    if let Some(k) = conv.window.kernel {
        if k != [kh, kw] {
            candle_core::bail!("kernel_shape {k:?} differs from the weight's {kh}×{kw}")
        }
    }
    if let Some(b) = bias {
        if b.dims() != [o] {
            candle_core::bail!("bias of shape {:?} for {o} output channels", b.dims())
        }
    }
    // Our kernel needs them equal too (see `fast_conv`), so every convolution needs it.
    let ([sh, sw], [dh, dw]) = (conv.window.strides, conv.window.dilations);
    if sh != sw || dh != dw {
        candle_core::bail!("strides {:?} / dilations {:?} differ between H and W", [sh, sw], [dh, dw])
    }
    let (pads, [oh, ow]) = conv.window.resolve([h, w], [kh, kw])?;
    check_size(&[n, c.max(o), h + pads[0] + pads[2], w + pads[1] + pads[3]])?;
    Ok((pads, [n, o, oh, ow]))
}

/// What the load-time probe takes for a convolution: zeros of its output's shape, after the same
/// checks as [`conv2d`]. The probe needs only the shapes of the values computed from the input
/// (their contents never reach a folded constant), and convolutions are most of a CNN's time.
pub fn conv2d_shape_only(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, conv: &Conv) -> Result<Tensor> {
    let (_, shape) = conv_geometry(x, weight, bias, conv)?;
    Tensor::zeros(&shape, x.dtype(), x.device())
}

/// Convolution of NCHW `x` with `weight` (O, C/groups, kh, kw) and an optional bias, reported to
/// the taps (FullGrad). Our CPU kernel on the fast engine where it covers the geometry; Candle's
/// `conv2d` on an explicitly padded input otherwise, cropped to what the output reads (Candle's
/// backward returns a wrongly sized gradient when the stride does not divide padded − kernel).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    conv: &Conv,
    taps: &mut Taps,
) -> Result<Tensor> {
    let (pads, [_, o, oh, ow]) = conv_geometry(x, weight, bias, conv)?;
    let (kh, kw) = (weight.dim(2)?, weight.dim(3)?);
    let groups = conv.groups;
    if let Some((fast, baked)) = &conv.fast {
        if taps.fast_kernels(x) && *baked == pads {
            return fast.forward(x, taps);
        }
    }
    let (sh, dh) = (conv.window.strides[0], conv.window.dilations[0]);
    let y = if dh == 1 {
        // Depthwise convolutions as tap sums rather than one convolution per channel.
        portable::conv2d(x, &contiguous(weight)?, None, sh, (pads[0], pads[2], pads[1], pads[3]), groups)?
    } else {
        let x = x
            .pad_with_zeros(2, pads[0], pads[2])?
            .pad_with_zeros(3, pads[1], pads[3])?
            .narrow(2, 0, (oh - 1) * sh + (kh - 1) * dh + 1)?
            .narrow(3, 0, (ow - 1) * sh + (kw - 1) * dh + 1)?;
        contiguous(&x)?.conv2d(&contiguous(weight)?, 0, sh, dh, groups)?
    };
    match bias {
        Some(b) => {
            let y = y.broadcast_add(&b.reshape((1, o, 1, 1))?)?;
            taps.bias(y, b)
        }
        None => Ok(y),
    }
}

/// Our CPU convolution kernel for a convolution with constant weights, where it covers the
/// geometry (the same stride, dilation and padding along both axes and on every side), given
/// the padding the graph's fixed input resolves to. Dilated convolutions (segmentation
/// backbones: ResNet's dilated layer3/layer4, ASPP at rates 12–36, MobileNetV3's last stage)
/// need it most: without it their backward is Candle's, a direct-loop transposed convolution
/// plus a weight gradient nobody reads.
pub fn fast_conv(weight: &Tensor, bias: Option<&Tensor>, conv: &Conv, pads: [usize; 4]) -> Option<Conv2d> {
    let w = &conv.window;
    let symmetric = pads.iter().all(|&p| p == pads[0]);
    if !symmetric || w.strides[0] != w.strides[1] || w.dilations[0] != w.dilations[1] {
        return None;
    }
    Conv2d::dilated(
        weight.clone(),
        bias.cloned(),
        w.strides[0],
        w.dilations[0],
        Padding::Symmetric(pads[0]),
        conv.groups,
        Activation::Identity,
    )
    .ok()
}

/// Max-pool of NCHW `x` with -∞ padding; the gradient goes to the maximum of each window.
pub fn max_pool2d(x: &Tensor, window: &Window, taps: &mut Taps) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let Some([kh, kw]) = window.kernel else { candle_core::bail!("MaxPool without kernel_shape") };
    let (pads, [oh, ow]) = window.resolve([h, w], [kh, kw])?;
    check_size(&[
        n,
        c,
        h + pads[0] + pads[2] + kh * window.dilations[0],
        w + pads[1] + pads[3] + kw * window.dilations[1],
    ])?;
    check_size(&[n * c * oh * ow, kh * kw])?;
    let [sh, sw] = window.strides;
    let [dh, dw] = window.dilations;
    let plain = kh == kw && sh == sw && window.dilations == [1, 1] && pads.iter().all(|&p| p == pads[0]);
    if plain && pads[0] < kh {
        // Ours on the fast engine, else Candle ops with PyTorch's first-maximum gradient.
        let pool = MaxPool2d { kernel: kh, stride: sh, pad: pads[0] };
        let y = pool.forward(x, taps)?;
        if y.dims() == [n, c, oh, ow] {
            return Ok(y);
        }
    }
    // Pad with a very negative value so that every window position is a strided view.
    let need_h = ((kh - 1) * dh + oh * sh).max(h + pads[0] + pads[2]);
    let need_w = ((kw - 1) * dw + ow * sw).max(w + pads[1] + pads[3]);
    let low = f32::MIN as f64;
    let pad_dim = |t: &Tensor, dim: usize, before: usize, after: usize| -> Result<Tensor> {
        let mut parts = Vec::new();
        let mut shape = t.dims().to_vec();
        if before > 0 {
            shape[dim] = before;
            parts.push(Tensor::full(low as f32, shape.clone(), t.device())?.to_dtype(t.dtype())?);
        }
        parts.push(t.clone());
        if after > 0 {
            shape[dim] = after;
            parts.push(Tensor::full(low as f32, shape, t.device())?.to_dtype(t.dtype())?);
        }
        Tensor::cat(&parts, dim)
    };
    let xp = pad_dim(x, 2, pads[0], need_h - h - pads[0])?;
    let xp = pad_dim(&xp, 3, pads[1], need_w - w - pads[1])?;
    let mut taps_of_window = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let v = xp
                .narrow(2, i * dh, oh * sh)?
                .narrow(3, j * dw, ow * sw)?
                .reshape((n, c, oh, sh, ow, sw))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((n, c, oh, ow))?;
            taps_of_window.push(v);
        }
    }
    Tensor::stack(&taps_of_window, 4)?.max(4)
}

fn avg_pool2d(x: &Tensor, window: &Window, count_include_pad: bool, taps: &mut Taps) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let Some([kh, kw]) = window.kernel else { candle_core::bail!("AveragePool without kernel_shape") };
    let weight = Tensor::full(1f32 / (kh * kw) as f32, (c, 1, kh, kw), x.device())?.to_dtype(x.dtype())?;
    let conv = Conv { window: window.clone(), groups: c, fast: None };
    let (pads, _) = window.resolve([h, w], [kh, kw])?;
    if window.ceil_mode {
        candle_core::bail!("AveragePool with ceil_mode")
    }
    let y = conv2d(x, &weight, None, &conv, taps)?;
    if count_include_pad || pads.iter().all(|&p| p == 0) {
        return Ok(y);
    }
    // Divide by the number of real (not padding) pixels under each window.
    let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?;
    let unit = Tensor::full(1f32, (1, 1, kh, kw), x.device())?.to_dtype(x.dtype())?;
    let counts = conv2d(&ones, &unit, None, &Conv { groups: 1, ..conv }, taps)?;
    y.broadcast_mul(&counts.affine(1.0 / (kh * kw) as f64, 0.0)?.recip()?.detach())
}

/// A Slice node's starts, ends, axes and steps, from its attributes (opset < 10) or inputs.
pub fn slice_params(attrs: Option<&[Vec<i64>; 3]>, inputs: &[Option<Tensor>]) -> Result<[Vec<i64>; 4]> {
    let (starts, ends, axes, steps) = match attrs {
        Some([s, e, a]) => (s.clone(), e.clone(), a.clone(), vec![1; s.len()]),
        None => {
            let starts = ints(input(inputs, 1)?)?;
            let ends = ints(input(inputs, 2)?)?;
            let axes = match optional(inputs, 3) {
                Some(t) => ints(t)?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match optional(inputs, 4) {
                Some(t) => ints(t)?,
                None => vec![1; starts.len()],
            };
            (starts, ends, axes, steps)
        }
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        candle_core::bail!("Slice with starts, ends, axes and steps of different lengths")
    }
    Ok([starts, ends, axes, steps])
}

/// The first index and the length that a slice with step 1 takes of an axis of `dim` values
/// (ONNX's rules: negative bounds count from the end, bounds are clamped); None for other steps.
pub fn unit_slice(dim: usize, start: i64, end: i64, step: i64) -> Option<(usize, usize)> {
    if step != 1 {
        return None;
    }
    let dim = dim as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(dim) } else { v }.clamp(0, dim);
    let (s, e) = (norm(start), norm(end));
    Some((s as usize, (e - s).max(0) as usize))
}

/// Slice of `x` along `axis` from `start` to `end` by `step` (ONNX clamping rules).
pub fn slice_axis(x: &Tensor, axis: usize, start: i64, end: i64, step: i64) -> Result<Tensor> {
    if step == 0 {
        candle_core::bail!("Slice with step 0")
    }
    if let Some((first, len)) = unit_slice(x.dim(axis)?, start, end, step) {
        return x.narrow(axis, first, len);
    }
    let dim = x.dim(axis)? as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
    let (start, end) = (norm(start), norm(end));
    if step > 0 {
        let s = start.clamp(0, dim);
        let e = end.clamp(0, dim);
        if e <= s {
            return x.narrow(axis, 0, 0);
        }
        let idx: Vec<i64> = (s..e).step_by(step as usize).collect();
        let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), x.device())?;
        x.index_select(&ids, axis)
    } else {
        let s = start.clamp(-1, dim - 1);
        let e = end.clamp(-1, dim - 1);
        let mut idx = Vec::new();
        let mut i = s;
        while i > e {
            idx.push(i as u32);
            i += step;
        }
        if idx.is_empty() {
            return x.narrow(axis, 0, 0);
        }
        let ids = Tensor::from_vec(idx.clone(), idx.len(), x.device())?;
        x.index_select(&ids, axis)
    }
}

/// Output shape of Reshape: 0 copies the input's dimension (unless `allowzero`), -1 is inferred.
pub fn reshape_target(input: &[usize], shape: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => match input.get(i) {
                Some(&d) => out.push(d),
                None => candle_core::bail!("Reshape copies dimension {i} of a rank-{} input", input.len()),
            },
            s if s >= 0 => out.push(s as usize),
            s => candle_core::bail!("Reshape to {shape:?}: bad dimension {s}"),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            candle_core::bail!("Reshape of {input:?} to {shape:?}: cannot infer the -1")
        }
        out[i] = total / known;
    } else if known != total {
        candle_core::bail!("Reshape of {input:?} ({total} values) to {shape:?}")
    }
    Ok(out)
}

/// NumPy broadcast of two shapes.
fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            match (x, y) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => candle_core::bail!("shapes {a:?} and {b:?} do not broadcast"),
            }
        })
        .collect()
}

fn reduce_axes(x: &Tensor, axes: &[i64]) -> Result<Vec<usize>> {
    let mut v: Vec<usize> = axes.iter().map(|&a| axis(a, x.rank())).collect::<Result<_>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// The dimensions of `x` a Reduce node reduces (its `axes` attribute, else its second input;
/// none given: all), or None where it reduces nothing (no axes and `noop_with_empty_axes`).
pub(crate) fn reduced_dims(
    x: &Tensor,
    axes: &Option<Vec<i64>>,
    inputs: &[Option<Tensor>],
    noop_with_empty_axes: bool,
) -> Result<Option<Vec<usize>>> {
    let axes = match (axes, optional(inputs, 1)) {
        (Some(a), _) => a.clone(),
        (None, Some(t)) => ints(t)?,
        (None, None) => Vec::new(),
    };
    if axes.is_empty() {
        return Ok((!noop_with_empty_axes).then(|| (0..x.rank()).collect()));
    }
    Ok(Some(reduce_axes(x, &axes)?))
}

/// A Transpose node's permutation of a rank-`rank` tensor (none given: reversed), checked.
pub(crate) fn transpose_perm(perm: Option<&[i64]>, rank: usize) -> Result<Vec<usize>> {
    let perm: Vec<usize> = match perm {
        Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<Result<_>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = perm.clone();
    seen.sort_unstable();
    if seen != (0..rank).collect::<Vec<_>>() {
        candle_core::bail!("Transpose with perm {perm:?} of a rank-{rank} tensor")
    }
    Ok(perm)
}

/// Evaluates `op` on `inputs` (None: an omitted optional input).
pub fn eval(op: &Op, inputs: &[Option<Tensor>], taps: &mut Taps) -> Result<Vec<Tensor>> {
    let x = || input(inputs, 0);
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Op::Conv(conv) => one(conv2d(x()?, input(inputs, 1)?, optional(inputs, 2), conv, taps)?),
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let mut a = x()?.clone();
            let mut b = input(inputs, 1)?.clone();
            if *trans_a {
                a = a.t()?;
            }
            if *trans_b {
                b = b.t()?;
            }
            let mut y = matmul(&a, &b, None, taps.fast_kernels(&a))?;
            if *alpha != 1.0 {
                y = y.affine(*alpha as f64, 0.0)?;
            }
            if let Some(c) = optional(inputs, 2) {
                let c = if *beta != 1.0 { c.affine(*beta as f64, 0.0)? } else { c.clone() };
                y = y.broadcast_add(&c)?;
            }
            one(y)
        }
        Op::MatMul => one(matmul(x()?, input(inputs, 1)?, optional(inputs, 2), taps.fast_kernels(x()?))?),
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Min | Op::Max => {
            let (a, b) = unify(x()?, input(inputs, 1)?)?;
            one(match op {
                Op::Add => a.add(&b)?,
                Op::Sub => a.sub(&b)?,
                Op::Mul => a.mul(&b)?,
                Op::Div => a.div(&b)?,
                Op::Min => a.minimum(&b)?,
                _ => a.maximum(&b)?,
            })
        }
        Op::Pow => {
            let (a, e) = (x()?, input(inputs, 1)?);
            if e.elem_count() == 1 {
                let e = floats(e)?[0] as f64;
                return one(if e == 1.0 {
                    a.clone()
                } else if e == 2.0 {
                    a.sqr()?
                } else if e == 0.5 {
                    a.sqrt()?
                } else {
                    a.powf(e)?
                });
            }
            let (a, e) = unify(a, e)?;
            one(a.to_dtype(DType::F32)?.pow(&e.to_dtype(DType::F32)?)?)
        }
        Op::Mod { fmod } => {
            let (a, b) = unify(x()?, input(inputs, 1)?)?;
            let dtype = a.dtype();
            let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
            let q = a.div(&b)?;
            let q = if *fmod {
                // trunc(q) = sign(q)·floor(|q|)
                let sign = q.ge(0.0)?.to_dtype(DType::F64)?.affine(2.0, -1.0)?;
                q.abs()?.floor()?.mul(&sign)?
            } else {
                q.floor()?
            };
            one(a.sub(&q.mul(&b)?)?.to_dtype(dtype)?)
        }
        Op::Unary(u) => {
            let x = x()?;
            let x = if x.dtype() == DType::F32 || matches!(u, Unary::Neg | Unary::Abs) {
                x.clone()
            } else {
                x.to_dtype(DType::F32)?
            };
            if *u == Unary::Erf && taps.fast_kernels(&x) {
                if let Some(y) = fused::erf(&x)? {
                    return one(y);
                }
            }
            one(match u {
                Unary::Sqrt => x.sqrt()?,
                Unary::Erf => x.erf()?,
                Unary::Exp => x.exp()?,
                Unary::Log => x.log()?,
                Unary::Neg => x.neg()?,
                Unary::Abs => x.abs()?,
                Unary::Reciprocal => x.recip()?,
                Unary::Tanh => x.tanh()?,
                Unary::Sigmoid => sigmoid(&x)?,
                Unary::Floor => x.floor()?,
                Unary::Ceil => x.ceil()?,
            })
        }
        Op::Gelu { tanh } => {
            let x = x()?;
            if !tanh && taps.fast_kernels(x) {
                if let Some(y) = fused::gelu(x)? {
                    return one(y);
                }
            }
            one(if *tanh { x.gelu()? } else { x.gelu_erf()? })
        }
        Op::Relu => one(taps.relu(x()?)?),
        Op::LeakyRelu(alpha) => {
            let x = x()?;
            let pos = mask(x.gt(0.0)?, x)?;
            one(x.mul(&pos.affine(1.0 - *alpha as f64, *alpha as f64)?)?)
        }
        Op::Clip { min, max } => {
            let x = x()?;
            let (lo, hi) = clip_bounds(inputs, *min, *max)?;
            one(match clip_activation(lo, hi) {
                Some(Activation::Relu6) => taps.relu6(x)?,
                Some(Activation::Relu) => taps.relu(x)?,
                _ => clip(x, lo, hi)?,
            })
        }
        Op::HardSigmoid { alpha, beta } => {
            one(clip(&x()?.affine(*alpha as f64, *beta as f64)?, Some(0.0), Some(1.0))?)
        }
        Op::HardSwish => {
            let x = x()?;
            if taps.fast_kernels(x) {
                if let Some(y) = fused::hard_swish(x)? {
                    return one(y);
                }
            }
            one(x.mul(&clip(&x.affine(1.0 / 6.0, 0.5)?, Some(0.0), Some(1.0))?)?)
        }
        Op::Softmax { axis: a, log } => {
            let x = x()?;
            let a = axis(*a, x.rank())?;
            if !log && a + 1 == x.rank() && taps.fast_kernels(x) {
                if let Some(y) = fused::softmax_last(x)? {
                    return one(y);
                }
            }
            let shifted = x.broadcast_sub(&x.max_keepdim(a)?.detach())?;
            let e = shifted.exp()?;
            let sum = e.sum_keepdim(a)?;
            one(if *log { shifted.broadcast_sub(&sum.log()?)? } else { e.broadcast_div(&sum)? })
        }
        Op::LayerNorm { axis: a, epsilon } => {
            // Statistics in f64: with random weights a channel's mean can dwarf its spread, and
            // f32 sums then lose the digits the gradient needs.
            let x = x()?;
            let first = axis(*a, x.rank())?;
            if taps.fast_kernels(x) {
                if let Some(y) =
                    fused::layer_norm(x, first, *epsilon, optional(inputs, 1), optional(inputs, 2))?
                {
                    return one(y);
                }
            }
            let dtype = x.dtype();
            let x = x.to_dtype(DType::F64)?;
            let dims: Vec<usize> = (first..x.rank()).collect();
            let mean = x.mean_keepdim(dims.as_slice())?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(dims.as_slice())?;
            let mut y = centred.broadcast_div(&var.affine(1.0, *epsilon as f64)?.sqrt()?)?.to_dtype(dtype)?;
            if let Some(scale) = optional(inputs, 1) {
                y = y.broadcast_mul(scale)?;
            }
            if let Some(bias) = optional(inputs, 2) {
                y = y.broadcast_add(bias)?;
            }
            one(y)
        }
        Op::BatchNorm { epsilon } => {
            let x = x()?;
            let [scale, b, mean, var] = [1, 2, 3, 4].map(|i| input(inputs, i));
            let c = x.dim(1)?;
            let mut shape = vec![1; x.rank()];
            shape[1] = c;
            let k = scale?.div(&var?.affine(1.0, *epsilon as f64)?.sqrt()?)?;
            let shift = b?.sub(&mean?.mul(&k)?)?;
            let y = x.broadcast_mul(&k.reshape(shape.as_slice())?)?;
            let y = y.broadcast_add(&shift.reshape(shape.as_slice())?)?;
            one(if x.rank() == 4 { taps.bias(y, &shift)? } else { y })
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            let x = x()?;
            let dims: Vec<usize> = (2..x.rank()).collect();
            one(if matches!(op, Op::GlobalAveragePool) {
                x.mean_keepdim(dims.as_slice())?
            } else {
                let flat = x.flatten_from(2)?.max_keepdim(2)?;
                let mut shape = x.dims().to_vec();
                shape[2..].iter_mut().for_each(|d| *d = 1);
                flat.reshape(shape)?
            })
        }
        Op::AveragePool { window, count_include_pad } => {
            one(avg_pool2d(x()?, window, *count_include_pad, taps)?)
        }
        Op::MaxPool(window) => one(max_pool2d(x()?, window, taps)?),
        Op::Reduce { kind, axes, keepdims, noop_with_empty_axes } => {
            let x = x()?;
            let Some(dims) = reduced_dims(x, axes, inputs, *noop_with_empty_axes)? else {
                return one(x.clone());
            };
            let mut y = x.clone();
            for &d in dims.iter().rev() {
                y = match kind {
                    Reduce::Mean => y.mean_keepdim(d)?,
                    Reduce::Sum => y.sum_keepdim(d)?,
                    Reduce::Max => y.max_keepdim(d)?,
                    Reduce::Min => y.min_keepdim(d)?,
                };
            }
            if !keepdims {
                for &d in dims.iter().rev() {
                    y = y.squeeze(d)?;
                }
            }
            one(y)
        }
        Op::Concat { axis: a } => {
            let parts: Vec<&Tensor> = inputs.iter().flatten().collect();
            let Some(first) = parts.first() else { candle_core::bail!("Concat of nothing") };
            let a = axis(*a, first.rank())?;
            let float = parts.iter().any(|t| t.dtype() == DType::F32);
            let parts: Vec<Tensor> = parts
                .iter()
                .filter(|t| t.dim(a).is_ok_and(|d| d > 0) || t.elem_count() > 0)
                .map(|t| if float { t.to_dtype(DType::F32) } else { Ok((*t).clone()) })
                .collect::<Result<_>>()?;
            one(Tensor::cat(&parts, a)?)
        }
        Op::Split { axis: a, split, outputs } => {
            let x = x()?;
            let a = axis(*a, x.rank())?;
            let dim = x.dim(a)?;
            let sizes: Vec<usize> = match (split, optional(inputs, 1)) {
                (Some(s), _) => s.iter().map(|&v| v.max(0) as usize).collect(),
                (None, Some(t)) => ints(t)?.iter().map(|&v| v.max(0) as usize).collect(),
                (None, None) => {
                    let n = (*outputs).max(1);
                    let each = dim.div_ceil(n);
                    (0..n).map(|i| each.min(dim.saturating_sub(i * each))).collect()
                }
            };
            if sizes.iter().sum::<usize>() != dim || sizes.len() != *outputs {
                candle_core::bail!("Split of {dim} into {sizes:?} ({outputs} outputs)")
            }
            let mut start = 0;
            sizes
                .iter()
                .map(|&s| {
                    let part = x.narrow(a, start, s);
                    start += s;
                    part
                })
                .collect()
        }
        Op::Slice { attrs } => {
            let x = x()?;
            let [starts, ends, axes, steps] = slice_params(attrs.as_ref(), inputs)?;
            let mut y = x.clone();
            for i in 0..starts.len() {
                let a = axis(axes[i], x.rank())?;
                y = slice_axis(&y, a, starts[i], ends[i], steps[i])?;
            }
            one(y)
        }
        Op::Flatten { axis: a } => {
            let x = x()?;
            let r = x.rank() as i64;
            let a = if *a < 0 { a + r } else { *a };
            if !(0..=r).contains(&a) {
                candle_core::bail!("Flatten axis {a} for rank {r}")
            }
            let outer: usize = x.dims()[..a as usize].iter().product();
            let inner: usize = x.dims()[a as usize..].iter().product();
            one(x.reshape((outer, inner))?)
        }
        Op::Reshape { allowzero } => {
            let x = x()?;
            let target = reshape_target(x.dims(), &ints(input(inputs, 1)?)?, *allowzero)?;
            one(x.reshape(target)?)
        }
        Op::Transpose { perm } => {
            let x = x()?;
            one(x.permute(transpose_perm(perm.as_deref(), x.rank())?)?)
        }
        Op::Squeeze { axes } => {
            let x = x()?;
            let axes = match (axes, optional(inputs, 1)) {
                (Some(a), _) => reduce_axes(x, a)?,
                (None, Some(t)) => reduce_axes(x, &ints(t)?)?,
                (None, None) => (0..x.rank()).filter(|&d| x.dims()[d] == 1).collect(),
            };
            let mut y = x.clone();
            for &a in axes.iter().rev() {
                if y.dim(a)? != 1 {
                    candle_core::bail!("Squeeze of axis {a} of size {}", y.dim(a)?)
                }
                y = y.squeeze(a)?;
            }
            one(y)
        }
        Op::Unsqueeze { axes } => {
            let x = x()?;
            let axes = match (axes, optional(inputs, 1)) {
                (Some(a), _) => a.clone(),
                (None, Some(t)) => ints(t)?,
                (None, None) => candle_core::bail!("Unsqueeze without axes"),
            };
            let rank = x.rank() + axes.len();
            let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Result<_>>()?;
            axes.sort_unstable();
            let mut y = x.clone();
            for a in axes {
                y = y.unsqueeze(a)?;
            }
            one(y)
        }
        Op::Gather { axis: a } => {
            let x = x()?;
            let a = axis(*a, x.rank())?;
            let idx = input(inputs, 1)?;
            let dim = x.dim(a)? as i64;
            let raw = ints(idx)?;
            let mut flat = Vec::with_capacity(raw.len());
            for i in raw {
                let j = if i < 0 { i + dim } else { i };
                if !(0..dim).contains(&j) {
                    candle_core::bail!("Gather index {i} out of range for a dimension of {dim}")
                }
                flat.push(j as u32);
            }
            let n = flat.len();
            let ids = Tensor::from_vec(flat, n, x.device())?;
            let y = x.index_select(&ids, a)?;
            let mut shape = x.dims()[..a].to_vec();
            shape.extend(idx.dims());
            shape.extend(&x.dims()[a + 1..]);
            one(y.reshape(shape)?)
        }
        Op::Expand => {
            let x = x()?;
            let shape: Vec<usize> = ints(input(inputs, 1)?)?.iter().map(|&v| v.max(0) as usize).collect();
            let target = broadcast_shapes(x.dims(), &shape)?;
            check_size(&target)?;
            one(x.broadcast_as(target)?)
        }
        Op::Where => {
            let (c, a, b) = (x()?, input(inputs, 1)?, input(inputs, 2)?);
            let (a, b) = unify(a, b)?;
            let shape = broadcast_shapes(c.dims(), a.dims())?;
            let c = c.to_dtype(DType::U8)?.broadcast_as(shape.as_slice())?;
            let (a, b) = (a.broadcast_as(shape.as_slice())?, b.broadcast_as(shape.as_slice())?);
            one(contiguous(&c)?.where_cond(&contiguous(&a)?, &contiguous(&b)?)?)
        }
        Op::Compare(cmp) => {
            let (a, b) = unify(x()?, input(inputs, 1)?)?;
            one(match cmp {
                Compare::Equal => a.eq(&b)?,
                Compare::Less => a.lt(&b)?,
                Compare::Greater => a.gt(&b)?,
                Compare::LessOrEqual => a.le(&b)?,
                Compare::GreaterOrEqual => a.ge(&b)?,
            })
        }
        Op::Not => one(x()?.to_dtype(DType::U8)?.eq(0u8 as f64)?),
        Op::Cast { to } => {
            let x = x()?;
            one(if *to == DType::U8 && x.dtype() != DType::U8 { x.ne(0.0)? } else { x.to_dtype(*to)? })
        }
        Op::Pad { mode, pads, value } => {
            let x = x()?;
            let pads = match (pads, optional(inputs, 1)) {
                (Some(p), _) => p.clone(),
                (None, Some(t)) => ints(t)?,
                (None, None) => candle_core::bail!("Pad without pads"),
            };
            let value = match optional(inputs, 2) {
                Some(t) if t.elem_count() > 0 => floats(t)?[0],
                _ => *value,
            };
            let axes: Vec<usize> = match optional(inputs, 3) {
                Some(t) => ints(t)?.iter().map(|&a| axis(a, x.rank())).collect::<Result<_>>()?,
                None => (0..x.rank()).collect(),
            };
            if pads.len() != 2 * axes.len() {
                candle_core::bail!("Pad with {} pads for {} axes", pads.len(), axes.len())
            }
            let mut y = x.clone();
            for (i, &a) in axes.iter().enumerate() {
                y = pad_axis(&y, a, pads[i], pads[i + axes.len()], *mode, value)?;
            }
            one(y)
        }
        Op::Identity => one(x()?.clone()),
        Op::ConstantOfShape(value) => {
            let shape: Vec<usize> = ints(x()?)?.iter().map(|&v| v.max(0) as usize).collect();
            check_size(&shape)?;
            one(value.to_device(x()?.device())?.reshape(())?.broadcast_as(shape)?.contiguous()?)
        }
        // Shape, Size and Range make their tensors on the graph's device like every other op, so
        // that Concat, Add or Where can mix them with the (device-resident) constants. Any op
        // that reads them as numbers copies them back (`ints`): a few bytes.
        Op::Shape { start, end } => {
            let dims = x()?.dims();
            let r = dims.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (clampi(*start), clampi(end.unwrap_or(r)));
            let v: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
            let n = v.len();
            one(Tensor::from_vec(v, n, x()?.device())?)
        }
        Op::Size => one(Tensor::new(x()?.elem_count() as i64, x()?.device())?),
        Op::Range => {
            let (s, l, d) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
            let device = s.device();
            if s.dtype() == DType::F32 {
                let (s, l, d) = (floats(s)?[0], floats(l)?[0], floats(d)?[0]);
                let n = ((l - s) / d).ceil().max(0.0) as usize;
                check_size(&[n])?;
                one(Tensor::from_vec((0..n).map(|i| s + i as f32 * d).collect::<Vec<_>>(), n, device)?)
            } else {
                let (s, l, d) = (ints(s)?[0], ints(l)?[0], ints(d)?[0]);
                if d == 0 {
                    candle_core::bail!("Range with delta 0")
                }
                let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
                check_size(&[n])?;
                one(Tensor::from_vec((0..n as i64).map(|i| s + i * d).collect::<Vec<_>>(), n, device)?)
            }
        }
        Op::Tile => {
            let x = x()?;
            let reps: Vec<usize> = ints(input(inputs, 1)?)?.iter().map(|&v| v.max(0) as usize).collect();
            let out: Vec<usize> =
                x.dims().iter().zip(reps.iter().chain(std::iter::repeat(&1))).map(|(d, r)| d * r).collect();
            check_size(&out)?;
            one(x.repeat(reps)?)
        }
        Op::Resize(resize) => one(resize.forward(inputs, taps.fast_kernels(x()?))?),
    }
}

fn pad_axis(x: &Tensor, a: usize, before: i64, after: i64, mode: PadMode, value: f32) -> Result<Tensor> {
    let mut y = x.clone();
    // Negative pads crop.
    if before < 0 {
        let n = y.dim(a)?;
        let cut = (-before) as usize;
        y = y.narrow(a, cut.min(n), n.saturating_sub(cut))?;
    }
    if after < 0 {
        let n = y.dim(a)?;
        y = y.narrow(a, 0, n.saturating_sub((-after) as usize))?;
    }
    let (b, e) = (before.max(0) as usize, after.max(0) as usize);
    let mut padded = y.dims().to_vec();
    padded[a] = padded[a].saturating_add(b).saturating_add(e);
    check_size(&padded)?;
    if b == 0 && e == 0 {
        return Ok(y);
    }
    match mode {
        PadMode::Constant if value == 0.0 => y.pad_with_zeros(a, b, e),
        PadMode::Constant => {
            let mut parts = Vec::new();
            let mut shape = y.dims().to_vec();
            if b > 0 {
                shape[a] = b;
                parts.push(Tensor::full(value, shape.clone(), y.device())?.to_dtype(y.dtype())?);
            }
            parts.push(y.clone());
            if e > 0 {
                shape[a] = e;
                parts.push(Tensor::full(value, shape, y.device())?.to_dtype(y.dtype())?);
            }
            Tensor::cat(&parts, a)
        }
        PadMode::Edge => y.pad_with_same(a, b, e),
        PadMode::Reflect => {
            let n = y.dim(a)?;
            if n < 2 || b >= n || e >= n {
                candle_core::bail!("reflect padding of {b}/{e} on a dimension of {n}")
            }
            let idx: Vec<u32> = (1..=b)
                .rev()
                .map(|i| i as u32)
                .chain(0..n as u32)
                .chain((0..e).map(|i| (n - 2 - i) as u32))
                .collect();
            let len = idx.len();
            y.index_select(&Tensor::from_vec(idx, len, y.device())?, a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{EngineKind, Mode};

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn slice_clamps_and_counts_from_the_end() {
        let x = t(&[0., 1., 2., 3., 4., 5.], &[6]);
        let s = |a, b, c| vals(&slice_axis(&x, 0, a, b, c).unwrap());
        assert_eq!(s(1, 4, 1), [1., 2., 3.]);
        assert_eq!(s(-2, i64::MAX, 1), [4., 5.]);
        assert_eq!(s(-100, 2, 1), [0., 1.]);
        assert_eq!(s(0, 6, 2), [0., 2., 4.]);
        assert_eq!(s(-1, i64::MIN, -1), [5., 4., 3., 2., 1., 0.]);
        assert_eq!(s(4, 1, -2), [4., 2.]);
        assert!(s(3, 1, 1).is_empty());
        assert!(slice_axis(&x, 0, 0, 1, 0).is_err());
    }

    #[test]
    fn gather_on_shapes_keeps_scalar_and_vector_indices_apart() {
        let stages: [crate::contract::StageSpec; 0] = [];
        let mut taps = Taps::new(&stages, EngineKind::Portable, Mode::Plain);
        let shape = Tensor::new(&[1i64, 197, 192], &Device::Cpu).unwrap();
        let scalar = Tensor::new(-1i64, &Device::Cpu).unwrap();
        let y = eval(&Op::Gather { axis: 0 }, &[Some(shape.clone()), Some(scalar)], &mut taps).unwrap();
        assert_eq!(y[0].dims(), [] as [usize; 0]);
        assert_eq!(ints(&y[0]).unwrap(), [192]);
        let vector = Tensor::new(&[0i64, 2], &Device::Cpu).unwrap();
        let y = eval(&Op::Gather { axis: 0 }, &[Some(shape), Some(vector)], &mut taps).unwrap();
        assert_eq!(ints(&y[0]).unwrap(), [1, 192]);
    }

    #[test]
    fn auto_pad_same_puts_the_odd_pixel_where_asked() {
        let mut w = Window {
            kernel: Some([3, 3]),
            strides: [2, 2],
            dilations: [1, 1],
            pads: [0; 4],
            auto_pad: AutoPad::SameUpper,
            ceil_mode: false,
        };
        // 224 / 2 = 112 outputs need (112 − 1)·2 + 3 − 224 = 1 pixel of padding.
        assert_eq!(w.resolve([224, 224], [3, 3]).unwrap(), ([0, 0, 1, 1], [112, 112]));
        w.auto_pad = AutoPad::SameLower;
        assert_eq!(w.resolve([224, 224], [3, 3]).unwrap(), ([1, 1, 0, 0], [112, 112]));
        w.auto_pad = AutoPad::Valid;
        assert_eq!(w.resolve([7, 7], [3, 3]).unwrap(), ([0; 4], [3, 3]));
    }

    #[test]
    fn split_divides_by_sizes_or_evenly() {
        let stages: [crate::contract::StageSpec; 0] = [];
        let mut taps = Taps::new(&stages, EngineKind::Portable, Mode::Plain);
        let x = t(&[0., 1., 2., 3., 4.], &[5]);
        let sizes = Tensor::new(&[2i64, 3], &Device::Cpu).unwrap();
        let y =
            eval(&Op::Split { axis: 0, split: None, outputs: 2 }, &[Some(x.clone()), Some(sizes)], &mut taps)
                .unwrap();
        assert_eq!((vals(&y[0]), vals(&y[1])), (vec![0., 1.], vec![2., 3., 4.]));
        let y =
            eval(&Op::Split { axis: -1, split: None, outputs: 3 }, &[Some(x.clone())], &mut taps).unwrap();
        assert_eq!(y.iter().map(|p| p.dim(0).unwrap()).collect::<Vec<_>>(), [2, 2, 1]);
        let bad = eval(&Op::Split { axis: 0, split: Some(vec![1, 1]), outputs: 2 }, &[Some(x)], &mut taps);
        assert!(bad.is_err());
    }

    #[test]
    fn reshape_copies_zeros_and_infers_one_dimension() {
        assert_eq!(reshape_target(&[1, 192, 14, 14], &[1, 192, -1], false).unwrap(), [1, 192, 196]);
        assert_eq!(reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(), [2, 12]);
        assert!(reshape_target(&[2, 3, 4], &[0, -1], true).is_err());
        assert!(reshape_target(&[2, 3], &[4, 2], false).is_err());
    }

    /// Max-pool with kernel ≠ stride and padding: values and the gradient (to each window's
    /// maximum, counted once per window that picks it).
    #[test]
    fn max_pool_with_padding_has_the_right_gradient() {
        let stages: [crate::contract::StageSpec; 0] = [];
        let mut taps = Taps::new(&stages, EngineKind::Portable, Mode::Plain);
        let data: Vec<f32> = (0..16).map(|i| ((i * 7) % 16) as f32).collect();
        let x = candle_core::Var::from_tensor(&t(&data, &[1, 1, 4, 4])).unwrap();
        let w = Window {
            kernel: Some([3, 3]),
            strides: [2, 2],
            dilations: [1, 1],
            pads: [1; 4],
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
        };
        let y = max_pool2d(x.as_tensor(), &w, &mut taps).unwrap();
        assert_eq!(y.dims(), [1, 1, 2, 2]);
        let mut want = vec![0f32; 4];
        let mut grad = vec![0f32; 16];
        for (o, (oy, ox)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
            let mut best = (f32::MIN, 0);
            for dy in 0..3 {
                for dx in 0..3 {
                    let (r, c) = (2 * oy + dy, 2 * ox + dx);
                    if (1..=4).contains(&r) && (1..=4).contains(&c) {
                        let i = (r - 1) * 4 + (c - 1);
                        if data[i] > best.0 {
                            best = (data[i], i);
                        }
                    }
                }
            }
            want[o] = best.0;
            grad[best.1] += 1.0;
        }
        assert_eq!(vals(&y), want);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(vals(g.get(x.as_tensor()).unwrap()), grad);
    }
}
