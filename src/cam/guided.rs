//! Guided backpropagation (Springenberg et al., 2015) and Guided Grad-CAM (Selvaraju et al.): the
//! input gradient with every ReLU passing only positive gradient where its input was positive;
//! Guided Grad-CAM multiplies it, pixel by pixel, with the Grad-CAM map. Both are shown as maps of
//! the gradient's magnitude (its L2 norm over colour channels).

use candle_core::{Tensor, Var};

use super::Chw;
use crate::error::Result;
use crate::model::ops::guided;
use crate::model::Network;
use crate::trace::Trace;

/// The guided gradient of the class logit with respect to the input, (1, 3, S, S).
pub fn gradient(network: &Network, input: &Tensor, class: usize) -> Result<Tensor> {
    let x = Var::from_tensor(input)?;
    let grads = guided(|| -> Result<_> {
        let logits = network.forward(x.as_tensor())?;
        Ok(logits.get(0)?.get(class)?.backward()?)
    })?;
    Ok(match grads.get(x.as_tensor()) {
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

/// The guided-backprop map at the input's resolution, before normalisation: on the CPU from one
/// more backward pass over `trace`, elsewhere through a guided forward and Candle's autograd.
pub fn map(network: &Network, input: &Tensor, trace: &Trace, class: usize) -> Result<Vec<f32>> {
    let g = match trace.guided_input_gradient(class)? {
        Some(g) => g,
        None => Chw::from_tensor(&gradient(network, input, class)?)?,
    };
    Ok(magnitude(&g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::{Activation, Classifier, Conv2d, Linear, Padding};
    use crate::model::{Arch, Layer, Stage};
    use candle_core::Device;

    struct ConvRelu(Conv2d);
    impl Layer for ConvRelu {
        fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            self.0.forward(x)
        }
        fn forward_cpu(&self, x: &Chw, _: &mut Vec<Chw>) -> candle_core::Result<Chw> {
            self.0.forward_cpu(x)
        }
        fn backward_cpu(&self, i: [usize; 3], _: &[Chw], y: &Chw, dy: &Chw) -> candle_core::Result<Chw> {
            self.0.backward_cpu(i, y, std::borrow::Cow::Borrowed(dy))
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
        Network::new(Arch::ResNet(18), vec![Stage::new("conv", ConvRelu(conv))], Classifier(fc))
    }

    fn finite_difference(net: &Network, x: &[f32], shape: (usize, usize, usize, usize)) -> Vec<f32> {
        let score = |v: &[f32]| -> f64 {
            let t = Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap();
            net.forward(&t).unwrap().get(0).unwrap().get(0).unwrap().to_scalar::<f32>().unwrap() as f64
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
        let head = [1.0, -2.0, 0.5, -0.25];
        let ours: Vec<f32> =
            gradient(&network(head), &input, 0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let expected = finite_difference(&network(head.map(|w| w.max(0.0))), &x, shape);
        let plain = finite_difference(&network(head), &x, shape);
        for i in 0..x.len() {
            assert!((ours[i] - expected[i]).abs() < 1e-3, "{i}: {} vs {}", ours[i], expected[i]);
        }
        assert!(
            ours.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-2),
            "guided equals the plain gradient"
        );
    }

    /// The CPU path (guided masks in our backward) against the guided forward through Candle's
    /// autograd, for both families (ReLU6 in convolutions, ResNet's ReLU after the residual add).
    #[test]
    fn cpu_guided_gradient_equals_autograd() {
        use crate::cam::test_support::worst_and_scale;
        use crate::model::card;
        for arch in [Arch::EfficientNetLite(0), Arch::ResNet(18)] {
            let model = card::synthetic(arch, 9).unwrap();
            let input = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
            let trace = Trace::new(&model.network, &input).unwrap();
            let class = trace.top_class();
            let cpu = trace.guided_input_gradient(class).unwrap().unwrap();
            let reference = Chw::from_tensor(&gradient(&model.network, &input, class).unwrap()).unwrap();
            let (worst, scale) = worst_and_scale(&cpu.data, &reference.data);
            assert!(scale > 0.0 && worst <= 1e-4 * scale, "{arch}: differs by {worst} (scale {scale})");
        }
    }

    #[test]
    fn magnitude_is_the_norm_over_channels() {
        let g = Chw::new(2, 1, 2, vec![3.0, 0.0, 4.0, -1.0]);
        assert_eq!(magnitude(&g), [5.0, 1.0]);
    }
}
