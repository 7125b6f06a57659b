//! A layer's constants on the device it runs on.

use candle_core::{Result, Tensor};

/// Copies of a layer's constant tensors on the non-CPU device it runs on, made on first use:
/// Candle's fallback ops would otherwise upload every weight on every call.
#[derive(Debug, Clone, Default)]
pub(super) struct DeviceCopies(std::sync::OnceLock<Vec<Tensor>>);

impl DeviceCopies {
    /// `tensors` on `device`: themselves on the CPU, else the cached copies (or fresh ones for a
    /// second device, which the command line never asks for).
    pub(super) fn get(&self, tensors: &[&Tensor], device: &candle_core::Device) -> Result<Vec<Tensor>> {
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
