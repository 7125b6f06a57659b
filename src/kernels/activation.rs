//! ReLU and ReLU6 with PyTorch's gradient convention (no gradient at the boundaries): the slice
//! kernels the convolutions fuse, the one-pass Candle ops a graph's separate activation nodes
//! run on the fast engine, and their portable twins in Candle's own ops.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Result as CResult, Shape, Tensor,
};

use super::parallel;
use super::simd::with_best_simd;
use super::storage::{contiguous_f32, gradient_operands};

/// Non-linearity fused into a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
}

impl Activation {
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// Whether the gradient passes, judged from the activation's *output* (which is all the
    /// backward pass keeps): for ReLU y > 0 ⇔ x > 0, for ReLU6 0 < y < 6 ⇔ 0 < x < 6.
    /// PyTorch's convention: no gradient at the boundaries.
    #[inline]
    pub fn passes(self, y: f32) -> bool {
        match self {
            Activation::Identity => true,
            Activation::Relu => y > 0.0,
            Activation::Relu6 => y > 0.0 && y < 6.0,
        }
    }
}

/// Elements per rayon task for element-wise passes.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

// The activation is matched once, outside each loop, so that every loop body is a branch-free
// select the compiler vectorises (a match per element kept them scalar: 15% of a trace).
with_best_simd!(pub(super) mask_chunk_in_place, fn(dy: &mut [f32], y: &[f32], act: Activation) {
    let it = dy.iter_mut().zip(y);
    match act {
        Activation::Identity => {}
        Activation::Relu => it.for_each(|(d, &y)| *d = if y > 0.0 { *d } else { 0.0 }),
        Activation::Relu6 => it.for_each(|(d, &y)| *d = if y > 0.0 && y < 6.0 { *d } else { 0.0 }),
    }
});

/// Zeroes the gradient `dy` where the activation whose output is `y` passes none.
pub(crate) fn mask_in_place(dy: &mut [f32], y: &[f32], act: Activation) {
    assert_eq!(dy.len(), y.len());
    parallel::for_each_chunk(dy, ELEMENTWISE_CHUNK, 1, |i, dy| {
        mask_chunk_in_place(dy, &y[i * ELEMENTWISE_CHUNK..][..dy.len()], act)
    });
}

with_best_simd!(pub(super) bias_activation, fn(values: &mut [f32], bias: f32, act: Activation) {
    match act {
        Activation::Identity => values.iter_mut().for_each(|v| *v += bias),
        Activation::Relu => values.iter_mut().for_each(|v| *v = (*v + bias).max(0.0)),
        Activation::Relu6 => values.iter_mut().for_each(|v| *v = (*v + bias).clamp(0.0, 6.0)),
    }
});
/// ReLU or ReLU6 in one pass over the data, with PyTorch's gradient (none at the boundaries).
/// The same function as [`activate`]'s eight Candle ops (compare, convert, multiply,
/// add, each a pass of its own): what a graph whose activations are separate nodes runs on the
/// fast engine on the CPU.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::Identity {
        return Ok(x.clone());
    }
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return activate(x, act);
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
        return dy.mul(&activation_mask(y, act)?);
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
        mask_in_place(&mut dx, y, self.0);
        Ok((CpuStorage::F32(dx), dyl.shape().clone()))
    }
}
/// An activation as Candle ops with PyTorch's gradient: the pass-through masks are constants, so
/// autograd multiplies by exactly 0 or 1 (Candle's own ReLU passes gradient at 0).
pub(crate) fn activate(x: &Tensor, activation: Activation) -> CResult<Tensor> {
    match activation {
        Activation::Identity => Ok(x.clone()),
        Activation::Relu => x.mul(&x.gt(0.0)?.to_dtype(x.dtype())?.detach()),
        Activation::Relu6 => {
            let pass = x.gt(0.0)?.mul(&x.lt(6.0)?)?.to_dtype(x.dtype())?.detach();
            let top = x.ge(6.0)?.to_dtype(x.dtype())?.detach().affine(6.0, 0.0)?;
            x.mul(&pass)?.add(&top)
        }
    }
}

/// Where the gradient of an activation passes, judged from its input (for the guided walk).
pub(crate) fn activation_mask(x: &Tensor, activation: Activation) -> CResult<Tensor> {
    match activation {
        Activation::Identity => x.ones_like(),
        Activation::Relu => x.gt(0.0)?.to_dtype(x.dtype()),
        Activation::Relu6 => x.gt(0.0)?.mul(&x.lt(6.0)?)?.to_dtype(x.dtype()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn activations_pass_no_gradient_at_their_boundaries() {
        let x = Var::new(&[-1f32, 0.0, 3.0, 6.0, 7.0], &Device::Cpu).unwrap();
        for (act, want) in
            [(Activation::Relu, [0f32, 0., 1., 1., 1.]), (Activation::Relu6, [0., 0., 1., 0., 0.])]
        {
            let grads = activate(x.as_tensor(), act).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<f32> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
            assert_eq!(g, want, "{act:?}");
        }
    }
}
