//! Candle's CPU storage as the contiguous `f32` slices the kernels take, and slice arithmetic
//! shared by the CPU tapes.

use candle_core::{CpuStorage, Layout, Result};

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

/// `dst += src`, element by element: residual connections and their gradients.
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}
