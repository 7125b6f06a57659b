//! `nn.Linear`, and the classifier head every built-in family ends with.

use candle_core::{DType, Result, Tensor, D};

use super::device_copies::DeviceCopies;
use crate::contract::Chw;
use crate::kernels::matvec;

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
        let mut logits = matvec(&self.0.weight_rows, &pooled);
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
