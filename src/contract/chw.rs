//! One image's activations or gradients at one stage on the CPU: what CPU tapes pass between
//! stages and what every CAM method computes on.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// One image's activations (or gradients) at one stage: C planes of H×W, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Chw {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Chw {
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), channels * height * width, "Chw data does not match its shape");
        Self { channels, height, width, data }
    }

    /// From a (1, C, H, W) tensor, in Candle's error type (for use inside a model's taps).
    pub fn from_nchw(t: &Tensor) -> candle_core::Result<Self> {
        let t = t.to_dtype(candle_core::DType::F32)?;
        let (_, c, h, w) = t.dims4()?;
        if t.dim(0)? != 1 {
            candle_core::bail!("expected one image's activation, got shape {:?}", t.dims())
        }
        Ok(Self::new(c, h, w, t.flatten_all()?.to_vec1()?))
    }

    /// From a (1, C, H, W) or (C, H, W) tensor.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let t = t.to_dtype(candle_core::DType::F32)?;
        let (c, h, w) = match t.dims() {
            [1, c, h, w] | [c, h, w] => (*c, *h, *w),
            d => return Err(Error::Model(format!("expected a C×H×W activation, got shape {d:?}"))),
        };
        Ok(Self::new(c, h, w, t.flatten_all()?.to_vec1()?))
    }

    /// (C, H, W).
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    pub fn channel(&self, k: usize) -> &[f32] {
        &self.data[k * self.plane()..(k + 1) * self.plane()]
    }

    pub fn channels_iter(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.plane().max(1))
    }

    /// Σ_ij of every channel.
    pub fn channel_sums(&self) -> Vec<f32> {
        self.channels_iter().map(|c| c.iter().sum()).collect()
    }

    /// Element-wise product with another tensor of the same shape.
    pub fn mul(&self, other: &Chw) -> Chw {
        assert_eq!(self.data.len(), other.data.len());
        let data = self.data.iter().zip(&other.data).map(|(a, b)| a * b).collect();
        Chw::new(self.channels, self.height, self.width, data)
    }
}
