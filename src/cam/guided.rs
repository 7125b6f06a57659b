//! Guided backpropagation (Springenberg et al., 2015) and Guided Grad-CAM (Selvaraju et al.): the
//! input gradient with every ReLU passing only positive gradient where its input was positive;
//! Guided Grad-CAM multiplies it, pixel by pixel, with the Grad-CAM map. Both are shown as maps of
//! the gradient's magnitude (its L2 norm over colour channels).

use candle_core::Tensor;

use super::{backward_in_mode, Chw};
use crate::contract::{EngineKind, ImageClassifier, Mode};
use crate::error::Result;
use crate::kernels::activation::activation_mask;
use crate::trace::Trace;

/// The guided gradient of the class logit with respect to the input, (1, 3, S, S), through
/// Candle's autograd. Guided backprop's rule (pass only positive gradient) is not the gradient of
/// any forward pass, so in guided mode the taps cut the graph at every ReLU; the walk below goes
/// through the cuts last to first, applying the rule at each and backpropagating only the
/// segment of graph between one cut and the ones before it.
pub fn gradient(
    model: &dyn ImageClassifier,
    engine: EngineKind,
    input: &Tensor,
    class: usize,
) -> Result<Tensor> {
    // Gradients at the leaves (every cut's output and the input), summed over all their uses.
    let (x, mut taps, mut leaves) = backward_in_mode(model, engine, input, class, Mode::GuidedRelu)?;
    let cuts = taps.take_guided_cuts();
    for cut in cuts.iter().rev() {
        let Some(g) = leaves.remove(cut.output.as_tensor()) else { continue };
        let guided = g.relu()?.mul(&activation_mask(&cut.input, cut.activation)?)?.detach();
        let segment = cut.input.mul(&guided)?.sum_all()?.backward()?;
        leaves.extend(segment)?;
    }
    Ok(match leaves.get(x.as_tensor()) {
        Some(g) => g.clone(),
        None => input.zeros_like()?,
    })
}

/// Per-pixel L2 norm over channels.
pub fn magnitude(g: &Chw) -> Vec<f32> {
    let mut m = vec![0f32; g.plane()];
    for channel in g.channels_iter() {
        m.iter_mut().zip(channel).for_each(|(m, v)| *m += v * v);
    }
    m.iter_mut().for_each(|v| *v = v.sqrt());
    m
}

/// The guided-backprop map at the input's resolution, before normalisation: with a CPU trace
/// from one more backward pass over it, otherwise through a guided forward and Candle's autograd.
pub fn map(
    model: &dyn ImageClassifier,
    engine: EngineKind,
    input: &Tensor,
    trace: &Trace,
    class: usize,
) -> Result<Vec<f32>> {
    let g = match trace.guided_input_gradient(class)? {
        Some(g) => g,
        None => Chw::from_tensor(&gradient(model, engine, input, class)?)?,
    };
    Ok(magnitude(&g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Backward, Taps};
    use crate::families::{Layer, Network, Stage};
    use crate::kernels::Activation;
    use crate::layers::{Classifier, Conv2d, Linear, Padding};
    use candle_core::Device;

    struct ConvRelu(Conv2d);
    impl Layer for ConvRelu {
        fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor> {
            self.0.forward(x, taps)
        }
        fn forward_cpu(&self, x: &Chw, _: &mut Vec<Chw>) -> candle_core::Result<Chw> {
            self.0.forward_cpu(x)
        }
        fn backward_cpu(
            &self,
            i: [usize; 3],
            _: &[Chw],
            y: &Chw,
            dy: &Chw,
            ctx: &mut Backward,
        ) -> candle_core::Result<Chw> {
            self.0.backward_cpu(i, y, std::borrow::Cow::Borrowed(dy), ctx)
        }
    }

    fn values(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * (((i as u32 * 2654435761u32) ^ seed) % 1000) as f32 / 1000.0)
            .collect()
    }

    /// conv 3→4 (positive weights and bias, ReLU) → mean → linear 4→1 with `head` weights.
    fn network(head: [f32; 4]) -> Network {
        let dev = &Device::Cpu;
        let w = Tensor::from_vec(values(4 * 3 * 9, 7, 0.1, 1.0), (4, 3, 3, 3), dev).unwrap();
        let b = Tensor::from_vec(vec![0.5f32; 4], 4, dev).unwrap();
        let conv = Conv2d::new(w, Some(b), 1, Padding::Symmetric(1), 1, Activation::Relu).unwrap();
        let fc = Linear::new(Tensor::from_vec(head.to_vec(), (1, 4), dev).unwrap(), None).unwrap();
        Network::new("conv-relu", vec![Stage::new("conv", ConvRelu(conv))], Classifier(fc))
    }

    fn finite_difference(net: &Network, x: &[f32], shape: (usize, usize, usize, usize)) -> Vec<f32> {
        let score = |v: &[f32]| -> f64 {
            let t = Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap();
            let logits = crate::contract::logits(net, &t, EngineKind::Portable).unwrap();
            logits.get(0).unwrap().get(0).unwrap().to_scalar::<f32>().unwrap() as f64
        };
        let h = 1e-2;
        (0..x.len())
            .map(|i| {
                let (mut up, mut down) = (x.to_vec(), x.to_vec());
                up[i] += h;
                down[i] -= h;
                ((score(&up) - score(&down)) / (2.0 * h as f64)) as f32
            })
            .collect()
    }

    #[test]
    fn guided_backprop_blocks_exactly_the_negative_paths() {
        // Positive input, weights and bias: every ReLU is open, so the only gradients guided
        // backprop blocks are the negative ones flowing back from the head. Blocking them is the
        // same as zeroing the negative head weights, whose plain gradient finite differences give.
        let shape = (1, 3, 5, 6);
        let x = values(3 * 5 * 6, 3, 0.1, 1.0);
        let input = Tensor::from_vec(x.clone(), shape, &Device::Cpu).unwrap();
        let head: [f32; 4] = [1.0, -2.0, 0.5, -0.25];
        let expected = finite_difference(&network(head.map(|w| w.max(0.0))), &x, shape);
        let plain = finite_difference(&network(head), &x, shape);
        for engine in [EngineKind::Fast, EngineKind::Portable] {
            let ours: Vec<f32> = gradient(&network(head), engine, &input, 0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for i in 0..x.len() {
                assert!((ours[i] - expected[i]).abs() < 1e-3, "{engine} {i}: {} vs {}", ours[i], expected[i]);
            }
            assert!(
                ours.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-2),
                "{engine}: guided equals the plain gradient"
            );
        }
    }

    /// The CPU path (guided masks in our backward) against the guided walk through Candle's
    /// autograd on both engines, for both families (ReLU6 in convolutions, ResNet's ReLU after
    /// the residual add).
    #[test]
    fn cpu_guided_gradient_equals_autograd() {
        use crate::families::Arch;
        use crate::load;
        use crate::test_support::{seeded_tensor, worst_and_scale};
        for (seed, arch) in ["efficientnet-lite0", "resnet18"].into_iter().enumerate() {
            let model = load::synthetic(Arch::parse(arch).unwrap(), 9).unwrap();
            let input = seeded_tensor(&[1, 3, 64, 64], 10 + seed as u64);
            let trace = Trace::new(&model.network, &input, EngineKind::Fast).unwrap();
            let class = trace.top_class();
            let cpu = trace.guided_input_gradient(class).unwrap().unwrap();
            for engine in [EngineKind::Fast, EngineKind::Portable] {
                let g = gradient(model.network.as_ref(), engine, &input, class).unwrap();
                let reference = Chw::from_tensor(&g).unwrap();
                let (worst, scale) = worst_and_scale(&cpu.data, &reference.data);
                assert!(
                    scale > 0.0 && worst <= 1e-4 * scale,
                    "{arch} ({engine}): differs by {worst} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn magnitude_is_the_norm_over_channels() {
        let g = Chw::new(2, 1, 2, vec![3.0, 0.0, 4.0, -1.0]);
        assert_eq!(magnitude(&g), [5.0, 1.0]);
    }
}
