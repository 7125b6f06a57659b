//! Max-pool with -∞ padding (PyTorch `MaxPool2d(kernel, stride, padding)`).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use crate::contract::{Chw, Taps};
use crate::kernels::pool::{max_pool2d_backward, max_pool2d_forward};
use crate::kernels::storage::contiguous_f32;
use crate::kernels::{portable, PoolGeometry};

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
        max_pool2d_forward(&g, &x.data, &mut out);
        Ok(Chw::new(x.channels, g.out_h, g.out_w, out))
    }

    /// Gradient at the pool's input `x` given the gradient `dy` at its output.
    pub fn backward_cpu(&self, x: &Chw, dy: &Chw) -> Result<Chw> {
        let g = self.geometry(&Shape::from((1, x.channels, x.height, x.width)))?;
        let mut dx = vec![0.0f32; x.data.len()];
        max_pool2d_backward(&g, &x.data, &dy.data, &mut dx);
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
        max_pool2d_forward(&g, x, &mut out);
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
        max_pool2d_backward(&g, contiguous_f32(x, xl)?, contiguous_f32(dy, dyl)?, &mut dx);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}
