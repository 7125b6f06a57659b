//! Ablation-CAM (Desai & Ramaswamy, 2020): a channel's weight is the relative drop of the class
//! score when that channel is removed. The reference re-runs the whole network per channel; only
//! the stages after the ablated one depend on it, so where the model can resume from a stage we
//! run just those, from the cached activation, many channels per batch.

use candle_core::{DType, Tensor};

use super::{batch_error, Control};
use crate::contract::{EngineKind, ImageClassifier, Mode, Taps};
use crate::error::Result;

/// pytorch-grad-cam's ablation batch: the value of a removed channel depends on its place in it.
const REFERENCE_BATCH: usize = 32;

/// The value channel `k` takes when removed: 0 where the stage's minimum is 0 (the paper), else
/// far below anything the stage produces — as the reference computes it: its ablation layer
/// re-reads the batch's minimum after writing each copy, so the copy at place i of its batch of
/// 32 gets `min − 1e7·(i + 1)` (subtracted i + 1 times, to round in f32 as it does).
fn ablation_value(min: f32, k: usize) -> f32 {
    if min == 0.0 {
        return 0.0;
    }
    let mut v = min;
    for _ in 0..=k % REFERENCE_BATCH {
        v -= 1e7;
    }
    v
}

/// One Ablation-CAM computation: a stage's output and the score it led to.
pub struct Ablation<'a> {
    pub model: &'a dyn ImageClassifier,
    pub engine: EngineKind,
    /// The normalised input (1×3×S×S): the whole network reruns from it where the model cannot
    /// resume from a stage.
    pub input: &'a Tensor,
    pub stage: usize,
    /// The stage's output in the model's own layout (batch 1).
    pub activation: &'a Tensor,
    /// The class score of the unablated network.
    pub score: f32,
}

impl Ablation<'_> {
    /// The channel weights: the relative drop of the class score when each channel is removed.
    pub fn weights(&self, class: usize, ctl: &Control) -> Result<Vec<f32>> {
        let layout = self.model.stages()[self.stage].layout;
        let channel_dim = layout.channel_dim();
        let channels = self.activation.dim(channel_dim)?;
        let min = self.activation.flatten_all()?.min(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let batch = ctl.batch_size.max(1);
        let mut weights = Vec::with_capacity(channels);
        for first in (0..channels).step_by(batch) {
            ctl.check(first, channels)?;
            let ks: Vec<usize> = (first..(first + batch).min(channels)).collect();
            let ablated =
                self.ablated(&ks, channels, channel_dim, min).map_err(|e| batch_error(e, ks.len()))?;
            let logits = self.logits_from_stage(&ablated).map_err(|e| batch_error(e, ks.len()))?;
            let scores: Vec<f32> =
                logits.narrow(1, class, 1)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            weights.extend(scores.iter().map(|y| (self.score - y) / self.score));
        }
        ctl.check(channels, channels)?;
        Ok(weights)
    }

    /// The activation repeated once per channel in `ks`, copy i with channel ks[i] set to its
    /// ablation value everywhere (prefix tokens included, as the reference's ViT ablation layer
    /// does); `min` is the stage's minimum.
    fn ablated(&self, ks: &[usize], channels: usize, channel_dim: usize, min: f32) -> Result<Tensor> {
        let a = self.activation;
        let mut one_hot = vec![0f32; ks.len() * channels];
        let mut values = vec![0f32; ks.len() * channels];
        for (i, &k) in ks.iter().enumerate() {
            one_hot[i * channels + k] = 1.0;
            values[i * channels + k] = ablation_value(min, k);
        }
        // (B, 1, …, C at the channel dim, …, 1), to broadcast over the activation's other dims.
        let mut mask_shape = vec![1; a.rank()];
        mask_shape[0] = ks.len();
        mask_shape[channel_dim] = channels;
        let mask = Tensor::from_vec(one_hot, mask_shape.clone(), a.device())?.to_dtype(a.dtype())?;
        let fill = Tensor::from_vec(values, mask_shape, a.device())?.to_dtype(a.dtype())?;
        let mut batch_shape = a.dims().to_vec();
        batch_shape[0] = ks.len();
        let repeated = a.broadcast_as(batch_shape)?;
        let kept = repeated.broadcast_mul(&mask.affine(-1.0, 1.0)?)?;
        Ok(kept.broadcast_add(&fill)?)
    }

    /// Logits with the stage's output replaced by `ablated`: only the rest of the network where
    /// the model can resume, else the whole network from the input, the stage replaced through
    /// the taps.
    fn logits_from_stage(&self, ablated: &Tensor) -> Result<Tensor> {
        let stages = self.model.stages();
        let mut taps = Taps::new(stages, self.engine, Mode::Plain);
        if let Some(logits) = self.model.forward_from(self.stage, ablated, &mut taps) {
            return Ok(logits?);
        }
        let n = ablated.dim(0)?;
        let input = self.input.repeat((n, 1, 1, 1))?;
        let stage = self.stage;
        let mut replace = |i: usize, a: Tensor| if i == stage { Ok(ablated.clone()) } else { Ok(a) };
        let mut taps = Taps::with_hook(stages, self.engine, Mode::Plain, &mut replace);
        Ok(self.model.forward(&input, &mut taps)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ablation_value_depends_on_the_sign_of_activations_and_the_place_in_the_batch() {
        assert_eq!(ablation_value(0.0, 5), 0.0);
        assert_eq!(ablation_value(-2.0, 0), -2.0 - 1e7);
        assert_eq!(ablation_value(-2.0, 1), -2.0 - 1e7 - 1e7);
        // Places repeat every 32 channels; f32 rounding as repeated subtraction gives it.
        assert_eq!(ablation_value(-0.375, 33), ablation_value(-0.375, 1));
        assert_eq!(ablation_value(-0.375, 31), (0..32).fold(-0.375f32, |v, _| v - 1e7));
    }
}
