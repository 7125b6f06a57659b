//! The engine's record of one image through one network: every stage's activation from a single
//! forward pass, and per target class every stage's gradient from a single backward pass.
//!
//! On the CPU the trace runs the layers' own forward and backward (`Layer::forward_cpu` /
//! `backward_cpu`): no autograd graph, and the gradient at each stage is simply what the backward
//! pass hands from one stage to the one before. Elsewhere it uses Candle's autograd: Candle keeps
//! gradients only for `Var` leaves, so a zero `Var` is added to each stage's output (a "tap") and
//! the gradient with respect to the tap is the gradient at that stage (SPEC §7). Weights are
//! plain tensors either way, so no weight gradient is ever computed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, IndexOp, Tensor, Var};

use crate::cam::Chw;
use crate::error::{Error, Result};
use crate::model::ops::{guided_backward, record_bias_gradients, BiasGradient};
use crate::model::Network;

/// What the backward pass of a trace runs on.
enum Tape {
    /// Our layers' own backward; per stage, the intermediates its forward saved.
    Cpu { network: Arc<Network>, input_shape: [usize; 3], saved: Vec<Vec<Chw>> },
    /// Candle's autograd through the zero `Var` taps; `logits` is the graph's root.
    Autograd { taps: Vec<Var>, logits: Tensor },
}

pub struct Trace {
    activations: Vec<Arc<Chw>>,
    tape: Tape,
    logit_values: Vec<f32>,
    gradients: Mutex<HashMap<usize, Arc<Vec<Arc<Chw>>>>>,
}

/// One row of the top-k list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub logit: f32,
    pub prob: f32,
}

impl Trace {
    /// Runs the forward pass of `input` (1×3×H×W), keeping every stage's activation: natively
    /// on the CPU, through Candle's autograd elsewhere.
    pub fn new(network: &Arc<Network>, input: &Tensor) -> Result<Self> {
        if input.device().is_cpu() {
            Self::on_cpu(network, input)
        } else {
            Self::with_autograd(network, input)
        }
    }

    fn on_cpu(network: &Arc<Network>, input: &Tensor) -> Result<Self> {
        let x = Chw::from_tensor(input)?;
        let input_shape = x.shape();
        let mut activations: Vec<Arc<Chw>> = Vec::with_capacity(network.num_stages());
        let mut saved = Vec::with_capacity(network.num_stages());
        for i in 0..network.num_stages() {
            let mut kept = Vec::new();
            let a = network.stage_forward_cpu(i, activations.last().map_or(&x, |a| a), &mut kept)?;
            activations.push(Arc::new(a));
            saved.push(kept);
        }
        let last = activations.last().expect("a network has stages");
        let logit_values = network.classifier().logits_cpu(last)?;
        let tape = Tape::Cpu { network: network.clone(), input_shape, saved };
        Self::finish(activations, tape, logit_values)
    }

    /// The trace through Candle's autograd, which works on every device.
    pub fn with_autograd(network: &Network, input: &Tensor) -> Result<Self> {
        let mut x = input.clone();
        let mut activations = Vec::with_capacity(network.num_stages());
        let mut taps = Vec::with_capacity(network.num_stages());
        for i in 0..network.num_stages() {
            let a = network.run_stage(i, &x)?;
            activations.push(Arc::new(Chw::from_tensor(&a)?));
            let tap = Var::zeros(a.shape(), DType::F32, a.device())?;
            x = a.add(tap.as_tensor())?;
            taps.push(tap);
        }
        let logits = network.classify(&x)?;
        let logit_values: Vec<f32> = logits.i(0)?.to_vec1()?;
        Self::finish(activations, Tape::Autograd { taps, logits }, logit_values)
    }

    fn finish(activations: Vec<Arc<Chw>>, tape: Tape, logit_values: Vec<f32>) -> Result<Self> {
        if let Some(bad) = logit_values.iter().find(|v| !v.is_finite()) {
            return Err(Error::Model(format!("the network produced a non-finite logit ({bad})")));
        }
        Ok(Self { activations, tape, logit_values, gradients: Mutex::default() })
    }

    pub fn logits(&self) -> &[f32] {
        &self.logit_values
    }

    pub fn num_classes(&self) -> usize {
        self.logit_values.len()
    }

    /// Softmax of the logits.
    pub fn probabilities(&self) -> Vec<f32> {
        let max = self.logit_values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f64> = self.logit_values.iter().map(|&l| ((l - max) as f64).exp()).collect();
        let total: f64 = exp.iter().sum();
        exp.iter().map(|e| (e / total) as f32).collect()
    }

    /// Classes by decreasing logit (ties: lower index first).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.logit_values.len()).collect();
        order.sort_by(|&a, &b| self.logit_values[b].total_cmp(&self.logit_values[a]).then(a.cmp(&b)));
        order
    }

    pub fn top_class(&self) -> usize {
        self.ranking()[0]
    }

    pub fn top_k(&self, k: usize, labels: &[String]) -> Vec<Prediction> {
        let probs = self.probabilities();
        self.ranking()
            .into_iter()
            .take(k)
            .map(|i| Prediction {
                index: i,
                label: labels[i].clone(),
                logit: self.logit_values[i],
                prob: probs[i],
            })
            .collect()
    }

    /// (C, H, W) of every stage's output, in stage order.
    pub fn shapes(&self) -> Vec<[usize; 3]> {
        self.activations.iter().map(|a| [a.channels, a.height, a.width]).collect()
    }

    pub fn activation(&self, stage: usize) -> &Arc<Chw> {
        &self.activations[stage]
    }

    /// The target score's gradient at every stage, from one backward pass per class (cached).
    pub fn gradients(&self, class: usize) -> Result<Arc<Vec<Arc<Chw>>>> {
        if class >= self.num_classes() {
            return Err(Error::UnknownClass(class.to_string(), self.num_classes() - 1));
        }
        if let Some(g) = self.gradients.lock().expect("gradient cache poisoned").get(&class) {
            return Ok(g.clone());
        }
        let grads = match &self.tape {
            Tape::Cpu { network, input_shape, saved } => {
                self.backward_cpu(network, *input_shape, saved, class, false)?.0
            }
            Tape::Autograd { taps, logits } => self.backward_autograd(taps, logits, class)?,
        };
        let grads = Arc::new(grads);
        self.gradients.lock().expect("gradient cache poisoned").insert(class, grads.clone());
        Ok(grads)
    }

    /// Hands the gradient from each stage's output to its input, last stage first.
    /// The gradient at every stage's output, and with `to_input` at the network's input too
    /// (only FullGrad and guided backprop want that last step).
    fn backward_cpu(
        &self,
        network: &Network,
        input_shape: [usize; 3],
        saved: &[Vec<Chw>],
        class: usize,
        to_input: bool,
    ) -> Result<(Vec<Arc<Chw>>, Option<Chw>)> {
        let n = self.activations.len();
        let mut grads =
            vec![Arc::new(network.classifier().logit_gradient_cpu(self.activations[n - 1].shape(), class))];
        for i in (1..n).rev() {
            let input = self.activations[i - 1].shape();
            let dy = grads.last().expect("seeded above");
            let dx = network.stage_backward_cpu(i, input, &saved[i], &self.activations[i], dy)?;
            grads.push(Arc::new(dx));
        }
        let dx = to_input
            .then(|| {
                network.stage_backward_cpu(0, input_shape, &saved[0], &self.activations[0], &grads[n - 1])
            })
            .transpose()?;
        grads.reverse();
        Ok((grads, dx))
    }

    /// The gradient of logit `class` at the network's input, with every biased convolution's
    /// gradient recorded on the way (what FullGrad needs), from one more CPU backward pass. `None`
    /// when the trace runs through Candle's autograd (not on the CPU).
    pub fn input_gradient_with_biases(&self, class: usize) -> Result<Option<(Chw, Vec<BiasGradient>)>> {
        let (dx, biases) = record_bias_gradients(|| self.input_gradient(class))?;
        Ok(dx.map(|dx| (dx, biases)))
    }

    /// The guided-backprop gradient of logit `class` at the network's input, from one more CPU
    /// backward pass with guided activation gradients. `None` off the CPU.
    pub fn guided_input_gradient(&self, class: usize) -> Result<Option<Chw>> {
        guided_backward(|| self.input_gradient(class))
    }

    /// The whole CPU backward pass, down to the input; `None` off the CPU.
    fn input_gradient(&self, class: usize) -> Result<Option<Chw>> {
        let Tape::Cpu { network, input_shape, saved } = &self.tape else { return Ok(None) };
        Ok(self.backward_cpu(network, *input_shape, saved, class, true)?.1)
    }

    fn backward_autograd(&self, taps: &[Var], logits: &Tensor, class: usize) -> Result<Vec<Arc<Chw>>> {
        let store = logits.i((0, class))?.backward()?;
        taps.iter()
            .zip(&self.activations)
            .map(|(tap, a)| match store.get(tap.as_tensor()) {
                Some(g) => Ok(Arc::new(Chw::from_tensor(g)?)),
                // A stage the score does not depend on has zero gradient.
                None => Ok(Arc::new(Chw::new(a.channels, a.height, a.width, vec![0.0; a.data.len()]))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cam::test_support::worst_and_scale;
    use crate::model::{card, Arch};
    use candle_core::Device;

    fn assert_same(a: &Chw, b: &Chw, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let (worst, scale) = worst_and_scale(&a.data, &b.data);
        let scale = scale.max(1e-6);
        assert!(worst <= 1e-4 * scale, "{what}: differs by {worst} (scale {scale})");
    }

    /// The CPU trace (our layers' own backward) against Candle's autograd through the same
    /// layers: every activation, the logits and every stage's gradient, for both families
    /// (residual blocks with and without downsampling, the padded max-pool, depthwise stride 2).
    #[test]
    fn cpu_trace_equals_autograd_trace() {
        // 32×32 ends at 1×1 planes, where kernel taps only ever see padding.
        let cases = [Arch::EfficientNetLite(0), Arch::ResNet(18)]
            .into_iter()
            .flat_map(|a| [(a, 96, 80), (a, 32, 32)]);
        for (arch, h, w) in cases {
            let model = card::synthetic(arch, 3).unwrap();
            let input = Tensor::randn(0f32, 1.0, (1, 3, h, w), &Device::Cpu).unwrap();
            let cpu = Trace::new(&model.network, &input).unwrap();
            let reference = Trace::with_autograd(&model.network, &input).unwrap();
            assert!(matches!(cpu.tape, Tape::Cpu { .. }));
            for (i, (a, b)) in cpu.activations.iter().zip(&reference.activations).enumerate() {
                assert_same(a, b, &format!("{arch} activation {i}"));
            }
            let (l, r) = (cpu.logits(), reference.logits());
            let (worst, scale) = worst_and_scale(l, r);
            assert!(worst <= 1e-4 * scale, "{arch} logits");
            for class in [cpu.top_class(), 7] {
                let (g, h) = (cpu.gradients(class).unwrap(), reference.gradients(class).unwrap());
                for (i, (a, b)) in g.iter().zip(h.iter()).enumerate() {
                    assert_same(a, b, &format!("{arch} class {class} gradient {i}"));
                }
            }
        }
    }
}
