//! FullGrad (Srinivas & Fleuret, 2019): the gradient with respect to every bias in the network
//! plus the input-gradient, each made into a saliency map and summed. It ignores the stage.
//!
//! Each layer's term is Σ_c norm(|b_c · G_c|) with norm = per-channel min-max at the layer's
//! resolution, then bilinear resize to the input. Resizing is linear, so the channel sum is taken
//! before the one resize per layer instead of after one resize per channel (same result, C times
//! less work).

use std::sync::Arc;

use candle_core::Tensor;

use super::{backward_in_mode, min_max, resize_bilinear, Chw};
use crate::contract::{EngineKind, ImageClassifier, Mode};
use crate::error::Result;
use crate::trace::Trace;

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

/// Input ⊙ input-gradient, and every biased layer's gradient with its bias.
type Gradients = (Chw, Vec<(Chw, Arc<Vec<f32>>)>);

/// The map before the final ReLU and min-max, at the input's size. With a CPU trace the
/// gradients come from one more backward pass over it; otherwise from Candle's autograd through
/// a new forward pass with every bias tapped.
pub fn map(
    model: &dyn ImageClassifier,
    engine: EngineKind,
    input: &Tensor,
    trace: &Trace,
    class: usize,
) -> Result<Vec<f32>> {
    let gradients = match trace.input_gradient_with_biases(class)? {
        Some((dx, biases)) => {
            (dx.mul(&Chw::from_tensor(input)?), biases.into_iter().map(|b| (b.gradient, b.bias)).collect())
        }
        None => autograd_gradients(model, engine, input, class)?,
    };
    Ok(combine(&gradients))
}

/// Σ over the input term and every layer of its summed saliency, resized to the input's frame.
fn combine((input_term, layers): &Gradients) -> Vec<f32> {
    let (height, width) = (input_term.height, input_term.width);
    let mut total = summed_saliency(input_term);
    for (g, bias) in layers {
        let scaled = Chw::new(
            g.channels,
            g.height,
            g.width,
            g.channels_iter().zip(bias.iter()).flat_map(|(gc, b)| gc.iter().map(move |v| v * b)).collect(),
        );
        let term = resize_bilinear(&summed_saliency(&scaled), g.height, g.width, height, width);
        total.iter_mut().zip(&term).for_each(|(a, b)| *a += b);
    }
    total
}

fn autograd_gradients(
    model: &dyn ImageClassifier,
    engine: EngineKind,
    input: &Tensor,
    class: usize,
) -> Result<Gradients> {
    let (x, mut taps, grads) = backward_in_mode(model, engine, input, class, Mode::RecordBiases)?;
    let input_term = match grads.get(x.as_tensor()) {
        Some(g) => g.mul(input)?,
        None => input.zeros_like()?,
    };
    let layers = taps
        .take_bias_taps()
        .into_iter()
        .filter_map(|t| grads.get(t.tap.as_tensor()).map(|g| Ok((Chw::from_tensor(g)?, t.bias))))
        .collect::<Result<_>>()?;
    Ok((Chw::from_tensor(&input_term)?, layers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::Arch;
    use crate::load;
    use crate::test_support::{seeded_tensor, worst_and_scale};

    /// The CPU path (one more backward over the trace, bias gradients recorded) against Candle's
    /// autograd with every bias tapped, on both engines, for both families.
    #[test]
    fn cpu_fullgrad_equals_autograd_fullgrad() {
        for (seed, arch) in ["efficientnet-lite0", "resnet18"].into_iter().enumerate() {
            let model = load::synthetic(Arch::parse(arch).unwrap(), 5).unwrap();
            let input = seeded_tensor(&[1, 3, 64, 64], seed as u64);
            let trace = Trace::new(&model.network, &input, EngineKind::Fast).unwrap();
            let class = trace.top_class();
            let cpu = map(model.network.as_ref(), EngineKind::Fast, &input, &trace, class).unwrap();
            for engine in [EngineKind::Fast, EngineKind::Portable] {
                let gradients = autograd_gradients(model.network.as_ref(), engine, &input, class).unwrap();
                let reference = combine(&gradients);
                let (worst, scale) = worst_and_scale(&cpu, &reference);
                assert!(worst <= 1e-3 * scale, "{arch} ({engine}): differs by {worst} (scale {scale})");
            }
        }
    }

    #[test]
    fn each_channel_is_normalised_before_summing() {
        // Channel 0 spans 0..10, channel 1 spans 0..1: both count equally after normalisation.
        let v = Chw::new(2, 1, 2, vec![0.0, -10.0, 1.0, 0.0]);
        let s = summed_saliency(&v);
        let d = 1.0 + 1e-7;
        assert!((s[0] - 1.0 / d).abs() < 1e-6 && (s[1] - 1.0 / d).abs() < 1e-6, "{s:?}");
    }
}
