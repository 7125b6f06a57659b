//! A 2-D convolution with optional bias and a fused activation, BatchNorm folded in.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::device_copies::DeviceCopies;
use crate::contract::{Backward, Chw, Mode, Taps};
use crate::kernels::activation::{activate, mask_in_place, Activation};
use crate::kernels::storage::contiguous_f32;
use crate::kernels::{self, portable, ConvGeometry};

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
    pub(super) fn resolve(self, size: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
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
    /// Distance between kernel taps (1: plain).
    dilation: usize,
    padding: Padding,
    groups: usize,
    activation: Activation,
}

impl ConvParams {
    /// The input rows and columns one window spans.
    fn extent(&self) -> (usize, usize) {
        ((self.kernel_h - 1) * self.dilation + 1, (self.kernel_w - 1) * self.dilation + 1)
    }

    fn geometry(&self, input: &Shape) -> Result<ConvGeometry> {
        let (batch, in_channels, in_h, in_w) = input.dims4()?;
        if in_channels != self.group_in * self.groups {
            candle_core::bail!(
                "convolution expects {} input channels, got {in_channels}",
                self.group_in * self.groups
            )
        }
        let (extent_h, extent_w) = self.extent();
        let (pad_top, _, out_h) = self.padding.resolve(in_h, extent_h, self.stride);
        let (pad_left, _, out_w) = self.padding.resolve(in_w, extent_w, self.stride);
        if in_h + 2 * pad_top + 1 < extent_h || in_w + 2 * pad_left + 1 < extent_w {
            candle_core::bail!(
                "input {in_h}×{in_w} is smaller than the {}×{} kernel (dilation {})",
                self.kernel_h,
                self.kernel_w,
                self.dilation
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
            dilation: self.dilation,
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
        Self::dilated(weight, bias, stride, 1, padding, groups, activation)
    }

    /// [`Conv2d::new`] with the kernel's taps `dilation` apart (PyTorch's `dilation`): the
    /// segmentation backbones' and ASPP heads' convolutions.
    pub fn dilated(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        dilation: usize,
        padding: Padding,
        groups: usize,
        activation: Activation,
    ) -> Result<Self> {
        let (out_channels, group_in, kernel_h, kernel_w) = weight.dims4()?;
        // Our kernels index with these numbers: refuse any that do not describe a convolution.
        if groups == 0 || stride == 0 || dilation == 0 || group_in == 0 || kernel_h == 0 || kernel_w == 0 {
            candle_core::bail!(
                "convolution with a zero size: weight {:?}, stride {stride}, dilation {dilation}, {groups} \
                 groups",
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
            dilation,
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
                activate(&self.linear_candle(x)?, self.params.activation)
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
                    mask_in_place(&mut z.data, y, act);
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
        let (extent_h, extent_w) = p.extent();
        let (top, bottom, out_h) = p.padding.resolve(h, extent_h, p.stride);
        let (left, right, out_w) = p.padding.resolve(w, extent_w, p.stride);
        let constants: Vec<&Tensor> = std::iter::once(&self.weight).chain(&self.bias).collect();
        let on_device = self.on_device.get(&constants, x.device())?;
        let (weight, bias) = (&on_device[0], on_device.get(1));
        if p.dilation == 1 {
            return portable::conv2d(x, weight, bias, p.stride, (top, bottom, left, right), p.groups);
        }
        // Dilated: Candle's convolution on the padded input, cut to what the windows read (its
        // backward needs (padded − extent) to be a multiple of the stride).
        let x = x
            .pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?
            .narrow(2, 0, (out_h - 1) * p.stride + extent_h)?
            .narrow(3, 0, (out_w - 1) * p.stride + extent_w)?
            .contiguous()?;
        let y = x.conv2d(weight, 0, p.stride, p.dilation, p.groups)?;
        match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, p.out_channels, 1, 1))?),
            None => Ok(y),
        }
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
        mask_in_place(dy, y, act);
    }
}
