//! FullGrad (Srinivas & Fleuret, 2019): the gradient with respect to every bias in the network
//! plus the input-gradient, each made into a saliency map and summed. It ignores the stage.
//!
//! Each layer's term is Σ_c norm(|b_c · G_c|) with norm = per-channel min-max at the layer's
//! resolution, then bilinear resize to the input. Resizing is linear, so the channel sum is taken
//! before the one resize per layer instead of after one resize per channel (same result, C times
//! less work).

use candle_core::{Tensor, Var};

use super::{min_max, resize_bilinear, Chw};
use crate::error::Result;
use crate::model::ops::record_bias_taps;
use crate::model::Network;

/// Σ_c min-max(|v_c|) at the tensor's own resolution.
fn summed_saliency(v: &Chw) -> Vec<f32> {
    let mut sum = vec![0f32; v.plane()];
    for channel in v.channels_iter() {
        let mut c: Vec<f32> = channel.iter().map(|x| x.abs()).collect();
        min_max(&mut c);
        sum.iter_mut().zip(&c).for_each(|(s, v)| *s += v);
    }
    sum
}

/// The map before the final ReLU and min-max, at the input's size.
pub fn map(network: &Network, input: &Tensor, class: usize) -> Result<Vec<f32>> {
    let x = Var::from_tensor(input)?;
    let (logits, taps) = record_bias_taps(|| network.forward(x.as_tensor()))?;
    let grads = logits.get(0)?.get(class)?.backward()?;
    let (_, _, s, _) = input.dims4()?;

    let input_grad = match grads.get(x.as_tensor()) {
        Some(g) => g.mul(input)?,
        None => input.zeros_like()?,
    };
    let mut total = summed_saliency(&Chw::from_tensor(&input_grad)?);
    for t in &taps {
        let Some(g) = grads.get(t.tap.as_tensor()) else { continue };
        let g = Chw::from_tensor(g)?;
        let scaled = Chw::new(
            g.channels,
            g.height,
            g.width,
            g.channels_iter().zip(&t.bias).flat_map(|(gc, b)| gc.iter().map(move |v| v * b)).collect(),
        );
        let term = resize_bilinear(&summed_saliency(&scaled), g.height, g.width, s, s);
        total.iter_mut().zip(&term).for_each(|(a, b)| *a += b);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_is_normalised_before_summing() {
        // Channel 0 spans 0..10, channel 1 spans 0..1: both count equally after normalisation.
        let v = Chw::new(2, 1, 2, vec![0.0, -10.0, 1.0, 0.0]);
        let s = summed_saliency(&v);
        let d = 1.0 + 1e-7;
        assert!((s[0] - 1.0 / d).abs() < 1e-6 && (s[1] - 1.0 / d).abs() < 1e-6, "{s:?}");
    }
}
