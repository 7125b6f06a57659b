//! The operations models are built from, as thin layers over Candle.
//!
//! Models call only these functions, so faster kernels can replace what is underneath without
//! touching a model file. On the CPU, convolution and max-pooling run our own kernels
//! (`kernels.rs`) as Candle custom ops whose backward computes only the input gradient. On other
//! devices they fall back to Candle's own ops with the same semantics.
//!
//! Gradient conventions follow PyTorch, since the reference maps come from it: ReLU passes no
//! gradient at exactly 0, ReLU6 none at 0 or 6, max-pool routes to the first maximum of a window.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use super::contract::{self, Backward, Mode, Taps};
pub use super::kernels::Activation;
use super::kernels::{self, ConvGeometry, PoolGeometry};
use super::portable;
use crate::cam::Chw;

/// Padding of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// The same number of zeros on every side (PyTorch).
    Symmetric(usize),
    /// TensorFlow "SAME": out = ceil(n / stride), the odd pixel of padding goes after.
    TfSame,
}

impl Padding {
    /// (before, after, output size) along one axis.
    fn resolve(self, size: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
        match self {
            Padding::Symmetric(p) => (p, p, (size + 2 * p).saturating_sub(kernel) / stride + 1),
            Padding::TfSame => {
                let out = size.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(size);
                (total / 2, total - total / 2, out)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct ConvParams {
    /// Shared, so that the variants of one convolution (with and without its activation) cost
    /// no copy.
    weight: Arc<Vec<f32>>,
    bias: Option<Arc<Vec<f32>>>,
    out_channels: usize,
    group_in: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: usize,
    padding: Padding,
    groups: usize,
    activation: Activation,
}

impl ConvParams {
    fn geometry(&self, input: &Shape) -> Result<ConvGeometry> {
        let (batch, in_channels, in_h, in_w) = input.dims4()?;
        if in_channels != self.group_in * self.groups {
            candle_core::bail!(
                "convolution expects {} input channels, got {in_channels}",
                self.group_in * self.groups
            )
        }
        let (pad_top, _, out_h) = self.padding.resolve(in_h, self.kernel_h, self.stride);
        let (pad_left, _, out_w) = self.padding.resolve(in_w, self.kernel_w, self.stride);
        if in_h + 2 * pad_top + 1 < self.kernel_h || in_w + 2 * pad_left + 1 < self.kernel_w {
            candle_core::bail!(
                "input {in_h}×{in_w} is smaller than the {}×{} kernel",
                self.kernel_h,
                self.kernel_w
            )
        }
        let g = ConvGeometry {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels: self.out_channels,
            kernel_h: self.kernel_h,
            kernel_w: self.kernel_w,
            stride: self.stride,
            pad_top,
            pad_left,
            out_h,
            out_w,
            groups: self.groups,
        };
        g.validate().map_err(candle_core::Error::wrap)?;
        Ok(g)
    }
}

pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("camscope kernels need contiguous tensors"),
    }
}

/// A gradient op's two operands, the gradient `dy` and the value it is carried through (an
/// input or an output of the op), as contiguous f32 slices of one length.
pub(crate) fn gradient_operands<'a>(
    op: &str,
    dy: &'a CpuStorage,
    dy_layout: &Layout,
    value: &'a CpuStorage,
    value_layout: &Layout,
) -> Result<(&'a [f32], &'a [f32])> {
    let (dy, value) = (contiguous_f32(dy, dy_layout)?, contiguous_f32(value, value_layout)?);
    if dy.len() != value.len() {
        candle_core::bail!("{op}: a gradient of {} values for {} values", dy.len(), value.len())
    }
    Ok((dy, value))
}

/// Forward of a convolution with bias and activation fused.
struct ConvOp(Arc<ConvParams>);

impl CustomOp1 for ConvOp {
    fn name(&self) -> &'static str {
        "camscope-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let g = p.geometry(layout.shape())?;
        let x = contiguous_f32(storage, layout)?;
        let out =
            kernels::conv2d_forward(&g, x, &p.weight, p.bias.as_deref().map(Vec::as_slice), p.activation);
        Ok((CpuStorage::F32(out), Shape::from((g.batch, g.out_channels, g.out_h, g.out_w))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = ConvInputGradOp { params: self.0.clone(), input: arg.shape().clone() };
        Ok(Some(grad_res.contiguous()?.apply_op2_no_bwd(&res.contiguous()?, &op)?))
    }
}

/// Input gradient of [`ConvOp`]: masks the incoming gradient by the activation's derivative
/// (read from the forward output), then convolves back. Never computes weight gradients.
struct ConvInputGradOp {
    params: Arc<ConvParams>,
    input: Shape,
}

impl CustomOp2 for ConvInputGradOp {
    fn name(&self) -> &'static str {
        "camscope-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        gl: &Layout,
        out: &CpuStorage,
        ol: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = &self.params;
        let g = p.geometry(&self.input)?;
        let grad = contiguous_f32(grad, gl)?;
        let y = contiguous_f32(out, ol)?;
        let dx = kernels::conv2d_backward_input(&g, grad, Some((y, p.activation)), &p.weight);
        Ok((CpuStorage::F32(dx), self.input.clone()))
    }
}

/// A 2-D convolution with optional bias and a fused activation. BatchNorm is folded into it at
/// load time (see [`Conv2d::folded`]), which keeps every stage boundary where it was.
#[derive(Debug, Clone)]
pub struct Conv2d {
    params: Arc<ConvParams>,
    /// The same convolution with the activation left out (weights shared, not copied).
    linear_params: Arc<ConvParams>,
    weight: Tensor,
    bias: Option<Tensor>,
    on_device: DeviceCopies,
}

/// Copies of a layer's constant tensors on the non-CPU device it runs on, made on first use:
/// Candle's fallback ops would otherwise upload every weight on every call.
#[derive(Debug, Clone, Default)]
struct DeviceCopies(std::sync::OnceLock<Vec<Tensor>>);

impl DeviceCopies {
    /// `tensors` on `device`: themselves on the CPU, else the cached copies (or fresh ones for a
    /// second device, which the command line never asks for).
    fn get(&self, tensors: &[&Tensor], device: &candle_core::Device) -> Result<Vec<Tensor>> {
        if device.is_cpu() {
            return Ok(tensors.iter().map(|&t| t.clone()).collect());
        }
        let on = |c: &Vec<Tensor>| c.first().is_none_or(|t| t.device().same_device(device));
        if let Some(cached) = self.0.get().filter(|c| on(c)) {
            return Ok(cached.clone());
        }
        let fresh = tensors.iter().map(|t| t.to_device(device)).collect::<Result<Vec<_>>>()?;
        let cached = self.0.get_or_init(|| fresh.clone());
        Ok(if on(cached) { cached.clone() } else { fresh })
    }
}

/// Eval-mode BatchNorm2d parameters.
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
}

impl BatchNorm {
    /// (scale, shift) per channel such that bn(x) = scale·x + shift, in plain arithmetic (f64):
    /// a handful of Candle ops per layer cost more than the values they compute.
    fn scale_shift(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let values = |t: &Tensor| -> Result<Vec<f32>> { t.to_dtype(DType::F32)?.to_vec1() };
        let (gamma, beta) = (values(&self.weight)?, values(&self.bias)?);
        let (mean, var) = (values(&self.running_mean)?, values(&self.running_var)?);
        let scale: Vec<f64> =
            gamma.iter().zip(&var).map(|(&g, &v)| g as f64 / (v as f64 + self.eps).sqrt()).collect();
        let shift = beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((&b, &m), &s)| (b as f64 - m as f64 * s) as f32)
            .collect();
        Ok((scale.into_iter().map(|s| s as f32).collect(), shift))
    }
}

impl Conv2d {
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: Padding,
        groups: usize,
        activation: Activation,
    ) -> Result<Self> {
        let (out_channels, group_in, kernel_h, kernel_w) = weight.dims4()?;
        // Our kernels index with these numbers: refuse any that do not describe a convolution.
        if groups == 0 || stride == 0 || group_in == 0 || kernel_h == 0 || kernel_w == 0 {
            candle_core::bail!(
                "convolution with a zero size: weight {:?}, stride {stride}, {groups} groups",
                weight.dims()
            )
        }
        if !out_channels.is_multiple_of(groups) {
            candle_core::bail!(
                "convolution: {out_channels} output channels are not divisible by {groups} groups"
            )
        }
        if let Some(b) = &bias {
            if b.dims() != [out_channels] {
                candle_core::bail!(
                    "convolution bias of shape {:?} for {out_channels} output channels",
                    b.dims()
                )
            }
        }
        let weight = weight.to_dtype(DType::F32)?.contiguous()?;
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        let params = ConvParams {
            weight: Arc::new(weight.flatten_all()?.to_vec1()?),
            bias: bias.as_ref().map(|b| b.to_vec1().map(Arc::new)).transpose()?,
            out_channels,
            group_in,
            kernel_h,
            kernel_w,
            stride,
            padding,
            groups,
            activation,
        };
        let linear_params = Arc::new(ConvParams { activation: Activation::Identity, ..params.clone() });
        Ok(Self { params: Arc::new(params), linear_params, weight, bias, on_device: DeviceCopies::default() })
    }

    /// conv followed by BatchNorm, as one convolution: w' = w·γ/σ, b' = β − μγ/σ (+ conv bias·γ/σ).
    pub fn folded(
        weight: Tensor,
        conv_bias: Option<Tensor>,
        bn: &BatchNorm,
        stride: usize,
        padding: Padding,
        groups: usize,
        activation: Activation,
    ) -> Result<Self> {
        let (scale, shift) = bn.scale_shift()?;
        let shape = weight.shape().clone();
        let mut w: Vec<f32> = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let per_output = w.len() / scale.len().max(1);
        w.chunks_mut(per_output).zip(&scale).for_each(|(filter, &s)| filter.iter_mut().for_each(|v| *v *= s));
        let bias: Vec<f32> = match conv_bias {
            Some(b) => {
                let b: Vec<f32> = b.to_dtype(DType::F32)?.to_vec1()?;
                b.iter().zip(&scale).zip(&shift).map(|((b, s), t)| b * s + t).collect()
            }
            None => shift,
        };
        let bias = Tensor::from_vec(bias, scale.len(), weight.device())?;
        Self::new(
            Tensor::from_vec(w, shape, weight.device())?,
            Some(bias),
            stride,
            padding,
            groups,
            activation,
        )
    }

    /// The layer on Candle tensors. On the fast engine on the CPU our kernels run as Candle
    /// custom ops (bias and activation fused, backward computing only the input gradient);
    /// otherwise Candle's own ops. FullGrad and guided modes keep the bias and the activation
    /// apart, so that the taps can see the one and replace the other.
    pub fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        if taps.mode() == Mode::Plain {
            return if taps.fast_kernels(x) {
                x.contiguous()?.apply_op1(ConvOp(self.params.clone()))
            } else {
                contract::activate(&self.linear_candle(x)?, self.params.activation)
            };
        }
        let linear = if taps.fast_kernels(x) {
            x.contiguous()?.apply_op1(ConvOp(self.linear_params.clone()))?
        } else {
            self.linear_candle(x)?
        };
        let linear = match &self.params.bias {
            Some(bias) => taps.bias_values(linear, bias.clone())?,
            None => linear,
        };
        taps.activation(&linear, self.params.activation)
    }

    /// The gradient at the input (of shape `input`, NCHW) given the gradient `dy` at the
    /// convolution's output before its activation: our kernel, no weight gradient. CPU only.
    pub fn input_gradient(&self, dy: &Tensor, input: &Shape) -> Result<Tensor> {
        let g = self.params.geometry(input)?;
        if dy.dims() != [g.batch, g.out_channels, g.out_h, g.out_w] {
            candle_core::bail!("a gradient of shape {:?} for a convolution of input {input:?}", dy.dims())
        }
        let op = ConvInputGradOp { params: self.linear_params.clone(), input: input.clone() };
        // Without an activation the output is never read: `dy` stands in for it.
        let dy = dy.to_dtype(DType::F32)?.contiguous()?;
        dy.apply_op2_no_bwd(&dy, &op)
    }

    /// Batch-1 forward with our kernels and no autograd graph: what the CPU trace runs.
    pub fn forward_cpu(&self, x: &Chw) -> Result<Chw> {
        let p = &self.params;
        let g = p.geometry(&Shape::from((1, x.channels, x.height, x.width)))?;
        let out = kernels::conv2d_forward(
            &g,
            &x.data,
            &p.weight,
            p.bias.as_deref().map(Vec::as_slice),
            p.activation,
        );
        Ok(Chw::new(g.out_channels, g.out_h, g.out_w, out))
    }

    /// Gradient at the input of [`Conv2d::forward_cpu`] (shape `input`), given its output `y`
    /// (whose activation mask the gradient passes through) and the gradient `dy` there. A gemm
    /// convolution masks an owned `dy` in place rather than in a copy.
    pub fn backward_cpu(
        &self,
        input: [usize; 3],
        y: &Chw,
        mut dy: Cow<'_, Chw>,
        ctx: &mut Backward,
    ) -> Result<Chw> {
        let p = &self.params;
        let g = p.geometry(&Shape::from((1, input[0], input[1], input[2])))?;
        let mut mask = Some((y.data.as_slice(), p.activation));
        // The depthwise kernel fuses the plain mask into its own layout; gemm needs it applied
        // first, and so does every kernel for the guided mask.
        if p.activation != Activation::Identity && (ctx.is_guided() || !g.is_depthwise()) {
            mask_activation_gradient(&mut dy.to_mut().data, &y.data, p.activation, ctx);
            mask = None;
        }
        if let Some(bias) = &p.bias {
            ctx.record_bias(bias, || {
                let mut z = dy.as_ref().clone();
                if let Some((y, act)) = mask {
                    kernels::mask_in_place(&mut z.data, y, act);
                }
                z
            });
        }
        let dx = kernels::conv2d_backward_input(&g, &dy.data, mask, &p.weight);
        Ok(Chw::new(input[0], input[1], input[2], dx))
    }

    /// Convolution and bias with Candle's own ops only (`portable.rs`): what runs on the portable
    /// engine and on every device our kernels do not cover.
    fn linear_candle(&self, x: &Tensor) -> Result<Tensor> {
        let p = &self.params;
        let (_, _, h, w) = x.dims4()?;
        let (top, bottom, _) = p.padding.resolve(h, p.kernel_h, p.stride);
        let (left, right, _) = p.padding.resolve(w, p.kernel_w, p.stride);
        let constants: Vec<&Tensor> = std::iter::once(&self.weight).chain(&self.bias).collect();
        let on_device = self.on_device.get(&constants, x.device())?;
        portable::conv2d(x, &on_device[0], on_device.get(1), p.stride, (top, bottom, left, right), p.groups)
    }
}

/// Zeroes the gradient `dy` at an activation with output `y` where no gradient passes: where
/// the activation is flat (PyTorch's convention at the boundaries) and, in a guided backward
/// pass, also where the gradient itself is negative.
pub fn mask_activation_gradient(dy: &mut [f32], y: &[f32], act: Activation, ctx: &Backward) {
    if ctx.is_guided() && act != Activation::Identity {
        dy.iter_mut().zip(y).for_each(|(d, &y)| {
            if !(*d > 0.0 && act.passes(y)) {
                *d = 0.0;
            }
        });
    } else {
        kernels::mask_in_place(dy, y, act);
    }
}

/// Max-pool with -∞ padding (PyTorch `MaxPool2d(kernel, stride, padding)`).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPool2d {
    fn geometry(&self, shape: &Shape) -> Result<PoolGeometry> {
        let (n, c, in_h, in_w) = shape.dims4()?;
        let out = |size: usize| (size + 2 * self.pad).saturating_sub(self.kernel) / self.stride + 1;
        if self.kernel == 0 || self.stride == 0 {
            candle_core::bail!("max-pool with kernel {} and stride {}", self.kernel, self.stride)
        }
        if self.pad >= self.kernel || in_h + 2 * self.pad < self.kernel || in_w + 2 * self.pad < self.kernel {
            candle_core::bail!(
                "max-pool {}×{} does not fit an input of {in_h}×{in_w}",
                self.kernel,
                self.kernel
            )
        }
        Ok(PoolGeometry {
            planes: n * c,
            in_h,
            in_w,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
            out_h: out(in_h),
            out_w: out(in_w),
        })
    }

    /// Our kernel as a custom op on the fast engine on the CPU; Candle's own ops otherwise.
    pub fn forward(&self, x: &Tensor, taps: &Taps) -> Result<Tensor> {
        if taps.fast_kernels(x) {
            x.contiguous()?.apply_op1(*self)
        } else {
            portable::max_pool2d(x, self.kernel, self.stride, self.pad)
        }
    }
}

impl MaxPool2d {
    /// Batch-1 forward without autograd (the CPU trace).
    pub fn forward_cpu(&self, x: &Chw) -> Result<Chw> {
        let g = self.geometry(&Shape::from((1, x.channels, x.height, x.width)))?;
        let mut out = vec![0.0f32; g.planes * g.out_h * g.out_w];
        kernels::max_pool2d_forward(&g, &x.data, &mut out);
        Ok(Chw::new(x.channels, g.out_h, g.out_w, out))
    }

    /// Gradient at the pool's input `x` given the gradient `dy` at its output.
    pub fn backward_cpu(&self, x: &Chw, dy: &Chw) -> Result<Chw> {
        let g = self.geometry(&Shape::from((1, x.channels, x.height, x.width)))?;
        let mut dx = vec![0.0f32; x.data.len()];
        kernels::max_pool2d_backward(&g, &x.data, &dy.data, &mut dx);
        Ok(Chw::new(x.channels, x.height, x.width, dx))
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "camscope-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(layout.shape())?;
        let x = contiguous_f32(storage, layout)?;
        let mut out = vec![0.0f32; g.planes * g.out_h * g.out_w];
        kernels::max_pool2d_forward(&g, x, &mut out);
        let (n, c, _, _) = layout.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((n, c, g.out_h, g.out_w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPoolGradOp(*self))?))
    }
}

struct MaxPoolGradOp(MaxPool2d);

impl CustomOp2 for MaxPoolGradOp {
    fn name(&self) -> &'static str {
        "camscope-max-pool2d-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        dy: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0.geometry(xl.shape())?;
        let mut dx = vec![0.0f32; xl.shape().elem_count()];
        kernels::max_pool2d_backward(&g, contiguous_f32(x, xl)?, contiguous_f32(dy, dyl)?, &mut dx);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// ReLU or ReLU6 in one pass over the data, with PyTorch's gradient (none at the boundaries).
/// The same function as [`contract::activate`]'s eight Candle ops (compare, convert, multiply,
/// add, each a pass of its own): what a graph whose activations are separate nodes runs on the
/// fast engine on the CPU.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::Identity {
        return Ok(x.clone());
    }
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return contract::activate(x, act);
    }
    x.contiguous()?.apply_op1(ActivationOp(act))
}

struct ActivationOp(Activation);

impl CustomOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        "camscope-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let y: Vec<f32> = x.iter().map(|&v| self.0.apply(v)).collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(activation_gradient(grad_res, res, self.0)?))
    }
}

/// The gradient `dy` at an activation's output `y` carried to its input: zero where the
/// activation is flat (judged from the output, [`Activation::passes`]).
pub fn activation_gradient(dy: &Tensor, y: &Tensor, act: Activation) -> Result<Tensor> {
    if dy.dtype() != DType::F32 || !dy.device().is_cpu() {
        return dy.mul(&contract::activation_mask(y, act)?);
    }
    dy.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &ActivationGradOp(act))
}

struct ActivationGradOp(Activation);

impl CustomOp2 for ActivationGradOp {
    fn name(&self) -> &'static str {
        "camscope-activation-grad"
    }

    fn cpu_fwd(
        &self,
        dy: &CpuStorage,
        dyl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, y) = gradient_operands(self.name(), dy, dyl, y, yl)?;
        let mut dx = dy.to_vec();
        kernels::mask_in_place(&mut dx, y, self.0);
        Ok((CpuStorage::F32(dx), dyl.shape().clone()))
    }
}

/// `dst += src`, element by element: residual connections and their gradients.
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// (N, C, H, W) → (N, C): mean over positions.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(D::Minus1)
}

/// y = x·Wᵀ + b, PyTorch `nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
    /// (out, in) row-major, for the CPU trace.
    weight_rows: Vec<f32>,
    bias_values: Option<Vec<f32>>,
    on_device: DeviceCopies,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = weight.to_dtype(DType::F32)?;
        let weight_rows = weight.flatten_all()?.to_vec1()?;
        let weight_t = weight.t()?.contiguous()?;
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        let bias_values = bias.as_ref().map(Tensor::to_vec1).transpose()?;
        Ok(Self { weight_t, bias, weight_rows, bias_values, on_device: DeviceCopies::default() })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let constants: Vec<&Tensor> = std::iter::once(&self.weight_t).chain(&self.bias).collect();
        let on_device = self.on_device.get(&constants, x.device())?;
        let y = x.matmul(&on_device[0])?;
        match on_device.get(1) {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn in_features(&self) -> usize {
        self.weight_t.dims()[0]
    }

    fn row(&self, class: usize) -> &[f32] {
        let n = self.in_features();
        &self.weight_rows[class * n..(class + 1) * n]
    }
}

/// Global average pool followed by a linear layer: the head of every supported network (dropout
/// is the identity at inference).
#[derive(Debug, Clone)]
pub struct Classifier(pub Linear);

impl Classifier {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(&global_avg_pool(x)?)
    }

    pub fn num_classes(&self) -> usize {
        self.0.weight_t.dims()[1]
    }

    /// Logits of one (C, H, W) feature map, on the CPU.
    pub fn logits_cpu(&self, x: &Chw) -> Result<Vec<f32>> {
        if x.channels != self.0.in_features() {
            candle_core::bail!("the classifier expects {} channels, got {}", self.0.in_features(), x.channels)
        }
        let pooled: Vec<f32> = x.channels_iter().map(|c| c.iter().sum::<f32>() / c.len() as f32).collect();
        let mut logits = kernels::matvec(&self.0.weight_rows, &pooled);
        if let Some(bias) = &self.0.bias_values {
            logits.iter_mut().zip(bias).for_each(|(l, b)| *l += b);
        }
        Ok(logits)
    }

    /// Gradient of logit `class` with respect to the feature map: W[class, c] / (H·W) everywhere
    /// in channel c.
    pub fn logit_gradient_cpu(&self, shape: [usize; 3], class: usize) -> Chw {
        let [c, h, w] = shape;
        let data =
            self.0.row(class).iter().flat_map(|&v| std::iter::repeat_n(v / (h * w) as f32, h * w)).collect();
        Chw::new(c, h, w, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EngineKind;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_add(0x9E3779B97F4A7C15);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 20000) as f32 / 10000.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Plain taps of a model with no stages: what a lone layer runs with.
    fn taps(engine: EngineKind) -> Taps<'static> {
        Taps::new(&[], engine, Mode::Plain)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Our fused op against Candle's reference conv (explicit padding, bias, activation), forward
    /// and input gradient, on odd sizes, strides, groups and asymmetric padding.
    #[test]
    fn conv_op_matches_candle_forward_and_backward() {
        let cases = [
            // (cin, h, w, cout, k, stride, groups, padding, activation)
            (3, 17, 13, 8, 3, 2, 1, Padding::TfSame, Activation::Relu6),
            (8, 9, 11, 8, 5, 2, 8, Padding::TfSame, Activation::Relu6),
            (6, 7, 7, 6, 3, 1, 6, Padding::Symmetric(1), Activation::Identity),
            (4, 10, 6, 12, 1, 1, 1, Padding::Symmetric(0), Activation::Relu),
            (4, 9, 9, 6, 3, 2, 2, Padding::Symmetric(1), Activation::Relu),
            (3, 15, 15, 5, 7, 2, 1, Padding::Symmetric(3), Activation::Identity),
        ];
        for (i, &(cin, h, w, cout, k, stride, groups, padding, act)) in cases.iter().enumerate() {
            check_against_candle(i as u64, [cin, h, w, cout, k, stride, groups], padding, act);
        }
    }

    /// Random shapes, odd sizes, strides 1–3, both paddings, every activation, dense, grouped and
    /// depthwise: our op (batched, through Candle's autograd) and our batch-1 CPU path, forward
    /// and input gradient, against Candle's own convolution.
    #[test]
    fn conv_matches_candle_on_random_shapes() {
        let mut next = crate::cam::test_support::random_below(0x9E3779B97F4A7C15u64);
        for case in 0..60 {
            let k = 1 + next(6);
            let (h, w) = (k + next(12), k + next(12));
            let (cin, cout, groups) = match next(3) {
                0 => {
                    let c = 1 + next(8);
                    (c, c, c)
                }
                1 => (4, 2 + 2 * next(3), 2),
                _ => (1 + next(5), 1 + next(6), 1),
            };
            let padding = if next(2) == 0 { Padding::TfSame } else { Padding::Symmetric(next(k)) };
            let act = [Activation::Identity, Activation::Relu, Activation::Relu6][next(3)];
            check_against_candle(100 + case, [cin, h, w, cout, k, 1 + next(3), groups], padding, act);
        }
    }

    fn check_against_candle(seed: u64, dims: [usize; 7], padding: Padding, act: Activation) {
        let [cin, h, w, cout, k, stride, groups] = dims;
        let what = format!("seed {seed}: {dims:?} {padding:?} {act:?}");
        let x = rand(&[2, cin, h, w], seed).affine(4.0, 0.0).unwrap();
        let weight = rand(&[cout, cin / groups, k, k], seed + 1).affine(2.0, 0.0).unwrap();
        let bias = rand(&[cout], seed + 2);
        let conv = Conv2d::new(weight, Some(bias), stride, padding, groups, act).unwrap();

        let xv = Var::from_tensor(&x).unwrap();
        let ours = conv.forward(xv.as_tensor(), &mut taps(EngineKind::Fast)).unwrap();
        let reference = conv.forward(xv.as_tensor(), &mut taps(EngineKind::Portable)).unwrap();
        assert_eq!(ours.dims(), reference.dims(), "{what}");
        assert!(max_diff(&ours, &reference) < 1e-4, "{what}: forward");

        let dy = rand(ours.dims(), seed + 3);
        let g_ours = ours.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
        let a = g_ours.get(&xv).unwrap();
        // The portable path crops its input to what the output reads, so Candle's backward has
        // the right size even where the stride does not divide (padded size − kernel).
        let g_ref = reference.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
        let b = g_ref.get(&xv).unwrap().clone();
        assert_eq!(a.dims(), b.dims(), "{what}: gradient shape");
        assert!(max_diff(a, &b) < 1e-4, "{what}: backward {}", max_diff(a, &b));

        // The batch-1 CPU path on the first image.
        let x0 = Chw::from_tensor(&x.get(0).unwrap()).unwrap();
        let y0 = conv.forward_cpu(&x0).unwrap();
        let reference0 = reference.get(0).unwrap();
        assert!(max_diff(&chw_tensor(&y0), &reference0) < 1e-4, "{what}: forward_cpu");
        let dy0 = Chw::from_tensor(&dy.get(0).unwrap()).unwrap();
        let dx0 = conv.backward_cpu(x0.shape(), &y0, Cow::Borrowed(&dy0), &mut Backward::plain()).unwrap();
        assert!(max_diff(&chw_tensor(&dx0), &b.get(0).unwrap()) < 1e-4, "{what}: backward_cpu");
    }

    fn chw_tensor(c: &Chw) -> Tensor {
        Tensor::from_vec(c.data.clone(), c.shape().to_vec(), &Device::Cpu).unwrap()
    }

    #[test]
    fn tf_same_padding_is_asymmetric_on_stride_two() {
        assert_eq!(Padding::TfSame.resolve(224, 3, 2), (0, 1, 112));
        assert_eq!(Padding::TfSame.resolve(56, 5, 2), (1, 2, 28));
        assert_eq!(Padding::TfSame.resolve(14, 5, 1), (2, 2, 14));
    }

    #[test]
    fn folded_batch_norm_equals_conv_then_norm() {
        let x = rand(&[1, 3, 6, 6], 1);
        let w = rand(&[4, 3, 3, 3], 2);
        let bn = BatchNorm {
            weight: rand(&[4], 3),
            bias: rand(&[4], 4),
            running_mean: rand(&[4], 5),
            running_var: rand(&[4], 6).abs().unwrap().affine(1.0, 0.5).unwrap(),
            eps: 1e-3,
        };
        let folded =
            Conv2d::folded(w.clone(), None, &bn, 1, Padding::Symmetric(1), 1, Activation::Identity).unwrap();
        let plain = Conv2d::new(w, None, 1, Padding::Symmetric(1), 1, Activation::Identity).unwrap();
        let y = plain.forward(&x, &mut taps(EngineKind::Fast)).unwrap();
        let r = |t: &Tensor| t.reshape((1, 4, 1, 1)).unwrap();
        let normed = y
            .broadcast_sub(&r(&bn.running_mean))
            .unwrap()
            .broadcast_div(&r(&bn.running_var.affine(1.0, 1e-3).unwrap().sqrt().unwrap()))
            .unwrap()
            .broadcast_mul(&r(&bn.weight))
            .unwrap()
            .broadcast_add(&r(&bn.bias))
            .unwrap();
        assert!(max_diff(&folded.forward(&x, &mut taps(EngineKind::Fast)).unwrap(), &normed) < 1e-5);
    }

    /// ResNet's stem pool (3×3, stride 2, padding 1) on a hand-made input full of ties, through
    /// Candle's autograd and through the batch-1 CPU path: each window's gradient must land whole
    /// on its first maximum in row-major order (PyTorch's rule), never split between ties and
    /// never on the padding; overlapping windows add up at a shared maximum.
    #[test]
    fn max_pool_gradient_goes_to_first_maximum() {
        #[rustfmt::skip]
        let x = [
            0.0, 0.0, 3.0, 3.0, 0.0,
            0.0, 0.0, 3.0, 0.0, 0.0,
            2.0, 2.0, 0.0, 0.0, 1.0,
            2.0, 0.0, 0.0, 1.0, 1.0,
            0.0, 0.0, 0.0, 1.0, 1.0,
        ];
        // Windows (rows × columns of the input they cover) and their first maximum:
        //   (0,0): rows 0–1, cols 0–1, all 0           → (0,0)
        //   (0,1): rows 0–1, cols 1–3, 3s at (0,2) (0,3) (1,2) → (0,2)
        //   (0,2): rows 0–1, cols 3–4, 3 at (0,3)      → (0,3)
        //   (1,0): rows 1–3, cols 0–1, 2s at (2,0) (2,1) (3,0) → (2,0)
        //   (1,1): rows 1–3, cols 1–3, 3 at (1,2)      → (1,2)
        //   (1,2): rows 1–3, cols 3–4, 1s at (2,4) (3,3) (3,4) → (2,4)
        //   (2,0): rows 3–4, cols 0–1, 2 at (3,0)      → (3,0)  (shared with window (1,0)'s 2s)
        //   (2,1): rows 3–4, cols 1–3, 1s at (3,3) (4,3) → (3,3)
        //   (2,2): rows 3–4, cols 3–4, all 1           → (3,3)  (adds to window (2,1)'s)
        let dy = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        let mut expected = [0.0f32; 25];
        for (window, at) in [(0, (0, 0)), (1, (0, 2)), (2, (0, 3)), (3, (2, 0)), (4, (1, 2))]
            .into_iter()
            .chain([(5, (2, 4)), (6, (3, 0)), (7, (3, 3)), (8, (3, 3))])
        {
            expected[at.0 * 5 + at.1] += dy[window];
        }
        let pool = MaxPool2d { kernel: 3, stride: 2, pad: 1 };

        let xv =
            Var::from_tensor(&Tensor::from_vec(x.to_vec(), (1, 1, 5, 5), &Device::Cpu).unwrap()).unwrap();
        let y = pool.forward(xv.as_tensor(), &taps(EngineKind::Fast)).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0.0, 3.0, 3.0, 2.0, 3.0, 1.0, 2.0, 1.0, 1.0]
        );
        let dyt = Tensor::from_vec(dy.to_vec(), (1, 1, 3, 3), &Device::Cpu).unwrap();
        let grads = y.mul(&dyt).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(&xv).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, expected, "autograd");

        let x = Chw::new(1, 5, 5, x.to_vec());
        let dx = pool.backward_cpu(&x, &Chw::new(1, 3, 3, dy.to_vec())).unwrap();
        assert_eq!(dx.data, expected, "CPU trace");
    }

    /// Channels not divisible by the groups are an error on every path (they used to reach the
    /// gemm kernel, which then returned the last output channels uninitialised).
    #[test]
    fn conv_with_channels_not_divisible_by_groups_is_an_error() {
        // 5 output channels in 2 groups of 2 input channels each: refused when built, so no
        // kernel ever sees it (the kernels validate their geometry too, tested in kernels.rs).
        let conv = Conv2d::new(rand(&[5, 2, 3, 3], 1), None, 1, Padding::Symmetric(1), 2, Activation::Relu);
        let e = conv.unwrap_err().to_string();
        assert!(e.contains("divisible"), "{e}");
    }

    /// The one-pass activation equals Candle's composed one, forward and backward, with
    /// PyTorch's gradient at the boundaries (none at exactly 0 or 6); its gradient op alone
    /// gives the same; the input gradient of a convolution equals autograd's.
    #[test]
    fn activation_op_and_conv_input_gradient_match_autograd() {
        let x = Tensor::new(&[-1.0f32, 0.0, 0.5, 3.0, 6.0, 7.0], &Device::Cpu).unwrap();
        let dy = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &Device::Cpu).unwrap();
        for (act, expected) in [
            (Activation::Relu, [0.0f32, 0.0, 3.0, 4.0, 5.0, 6.0]),
            (Activation::Relu6, [0.0, 0.0, 3.0, 4.0, 0.0, 0.0]),
        ] {
            let var = Var::from_tensor(&x).unwrap();
            let y = activation(var.as_tensor(), act).unwrap();
            let reference = contract::activate(&x, act).unwrap();
            assert_eq!(max_diff(&y, &reference), 0.0, "{act:?}");
            let grads = y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
            let dx: Vec<f32> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
            assert_eq!(dx, expected, "{act:?} through autograd");
            let direct: Vec<f32> = activation_gradient(&dy, &y, act).unwrap().to_vec1().unwrap();
            assert_eq!(direct, expected, "{act:?} alone");
        }

        let conv =
            Conv2d::new(rand(&[6, 2, 3, 3], 2), None, 2, Padding::Symmetric(1), 2, Activation::Identity)
                .unwrap();
        let x = rand(&[1, 4, 9, 7], 3);
        let var = Var::from_tensor(&x).unwrap();
        // Candle's convolution and its autograd: an independent reference.
        let y = conv.forward(var.as_tensor(), &mut taps(EngineKind::Portable)).unwrap();
        let dy = rand(y.dims(), 4);
        let expected = y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
        let expected = expected.get(var.as_tensor()).unwrap();
        let ours = conv.input_gradient(&dy, x.shape()).unwrap();
        assert!(max_diff(&ours, expected) < 1e-5);
        assert!(conv.input_gradient(&dy.narrow(3, 0, 2).unwrap(), x.shape()).is_err());
    }
}
