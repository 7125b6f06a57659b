//! The engine's record of one image through one network: every stage's activation from a single
//! forward pass, and per target class every stage's gradient from a single backward pass.
//!
//! The contract's way (any model, any device, the portable engine) is Candle's autograd: Candle
//! keeps gradients only for `Var` leaves, so a zero `Var` is added to each stage's output through
//! the taps, and the gradient with respect to it is the gradient at that stage (SPEC §7). On the
//! fast engine, on the CPU, a model that offers a CPU tape runs its own forward and backward
//! instead: no autograd graph, and the gradient at each stage is simply what the backward pass
//! hands from one stage to the one before. Weights are plain tensors either way, so no weight
//! gradient is ever computed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{IndexOp, Result as CResult, Tensor, Var};

use crate::contract::Chw;
use crate::contract::{
    check_all_stages_tapped, Backward, BiasGradient, EngineKind, ImageClassifier, Mode, Recording, Taps,
};
use crate::error::{Error, Result};

/// What the backward pass of a trace runs on.
enum Tape {
    /// The model's own CPU backward; per stage, the intermediates its forward saved.
    Cpu { input_shape: [usize; 3], saved: Vec<Vec<Chw>> },
    /// Candle's autograd through the zero `Var` taps; `logits` is the graph's root. `raw` holds
    /// every stage's output in the model's own layout, on its device (what Ablation-CAM edits).
    Autograd { taps: Vec<Var>, logits: Tensor, raw: Vec<Tensor> },
    /// The model's own reverse pass over the forward pass it recorded.
    Reverse { recording: Box<dyn Recording>, raw: Vec<Tensor> },
}

pub struct Trace {
    model: Arc<dyn ImageClassifier>,
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
    /// Runs the forward pass of `input` (1×3×H×W), keeping every stage's activation. On the
    /// fast engine: the model's CPU tape on the CPU where it has one, else its own reverse pass
    /// where it has one; Candle's autograd otherwise.
    pub fn new(model: &Arc<dyn ImageClassifier>, input: &Tensor, engine: EngineKind) -> Result<Self> {
        let fast = engine == EngineKind::Fast;
        if fast && input.device().is_cpu() && model.cpu_tape().is_some() {
            Self::on_cpu(model, input)
        } else if fast && model.reverse_pass().is_some() {
            Self::with_reverse_pass(model, input)
        } else {
            Self::with_autograd(model, input, engine)
        }
    }

    fn with_reverse_pass(model: &Arc<dyn ImageClassifier>, input: &Tensor) -> Result<Self> {
        let pass = model.reverse_pass().expect("checked by the caller");
        let recording = pass.record(input)?;
        let raw = recording.stage_outputs();
        let specs = model.stages();
        if raw.len() != specs.len() {
            return Err(Error::Model(format!(
                "model {} recorded {} stage outputs for {} stages",
                model.name(),
                raw.len(),
                specs.len()
            )));
        }
        let nchw =
            raw.iter().zip(specs).map(|(a, spec)| spec.layout.to_nchw(a)).collect::<CResult<Vec<_>>>()?;
        let activations = to_host(&nchw)?.into_iter().map(Arc::new).collect();
        let logit_values: Vec<f32> = recording.logits().i(0)?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        Self::finish(model.clone(), activations, Tape::Reverse { recording, raw }, logit_values)
    }

    fn on_cpu(model: &Arc<dyn ImageClassifier>, input: &Tensor) -> Result<Self> {
        let tape = model.cpu_tape().expect("checked by the caller");
        let x = Chw::from_tensor(input)?;
        let input_shape = x.shape();
        let n = model.stages().len();
        let mut activations: Vec<Arc<Chw>> = Vec::with_capacity(n);
        let mut saved = Vec::with_capacity(n);
        for i in 0..n {
            let mut kept = Vec::new();
            let a = tape.forward_stage(i, activations.last().map_or(&x, |a| a), &mut kept)?;
            activations.push(Arc::new(a));
            saved.push(kept);
        }
        let last = activations
            .last()
            .ok_or_else(|| Error::Model(format!("model {} has no stages", model.name())))?;
        let logit_values = tape.logits(last)?;
        Self::finish(model.clone(), activations, Tape::Cpu { input_shape, saved }, logit_values)
    }

    /// The trace through Candle's autograd, which works on every device: a zero `Var` is added
    /// to every stage output, and the gradient with respect to it is the stage's gradient.
    pub fn with_autograd(
        model: &Arc<dyn ImageClassifier>,
        input: &Tensor,
        engine: EngineKind,
    ) -> Result<Self> {
        let specs = model.stages();
        let mut taps = Vec::with_capacity(specs.len());
        let mut raw = Vec::with_capacity(specs.len());
        // The host copies wait for the forward pass: taken inside the hook, each would stall
        // the device at its stage.
        let mut nchw = Vec::with_capacity(specs.len());
        let mut hook = |i: usize, a: Tensor| -> candle_core::Result<Tensor> {
            nchw.push(specs[i].layout.to_nchw(&a)?.detach());
            raw.push(a.detach());
            let tap = Var::zeros(a.shape(), a.dtype(), a.device())?;
            let tapped = a.add(tap.as_tensor())?;
            taps.push(tap);
            Ok(tapped)
        };
        let mut hooks = Taps::with_hook(specs, engine, Mode::Plain, &mut hook);
        let logits = model.forward(input, &mut hooks)?;
        let seen = hooks.stages_seen();
        drop(hooks);
        check_all_stages_tapped(model.as_ref(), seen)?;
        let activations = to_host(&nchw)?.into_iter().map(Arc::new).collect();
        let logit_values: Vec<f32> = logits.i(0)?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        Self::finish(model.clone(), activations, Tape::Autograd { taps, logits, raw }, logit_values)
    }

    fn finish(
        model: Arc<dyn ImageClassifier>,
        activations: Vec<Arc<Chw>>,
        tape: Tape,
        logit_values: Vec<f32>,
    ) -> Result<Self> {
        if let Some(bad) = logit_values.iter().find(|v| !v.is_finite()) {
            return Err(Error::Model(format!("the network produced a non-finite logit ({bad})")));
        }
        Ok(Self { model, activations, tape, logit_values, gradients: Mutex::default() })
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

    /// Stage `stage`'s output as the model produced it (its own layout, batch 1), on the
    /// input's device.
    pub fn raw_activation(&self, stage: usize, device: &candle_core::Device) -> Result<Tensor> {
        match &self.tape {
            Tape::Autograd { raw, .. } | Tape::Reverse { raw, .. } => Ok(raw[stage].clone()),
            // A CPU tape's stages are C×H×W.
            Tape::Cpu { .. } => {
                let a = &self.activations[stage];
                Ok(Tensor::from_slice(&a.data, (1, a.channels, a.height, a.width), device)?)
            }
        }
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
            Tape::Cpu { input_shape, saved } => {
                self.backward_cpu(*input_shape, saved, class, &mut Backward::plain(), false)?.0
            }
            Tape::Autograd { taps, logits, .. } => self.backward_autograd(taps, logits, class)?,
            Tape::Reverse { recording, .. } => {
                let grads = recording.stage_gradients(class)?;
                self.stage_gradients(grads.iter().map(Option::as_ref))?
            }
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
        input_shape: [usize; 3],
        saved: &[Vec<Chw>],
        class: usize,
        ctx: &mut Backward,
        to_input: bool,
    ) -> Result<(Vec<Arc<Chw>>, Option<Chw>)> {
        let tape = self.model.cpu_tape().expect("a CPU trace's model has a CPU tape");
        let n = self.activations.len();
        let mut grads = vec![Arc::new(tape.logit_gradient(self.activations[n - 1].shape(), class))];
        for i in (1..n).rev() {
            let input = self.activations[i - 1].shape();
            let dy = grads.last().expect("seeded above");
            let dx = tape.backward_stage(i, input, &saved[i], &self.activations[i], dy, ctx)?;
            grads.push(Arc::new(dx));
        }
        let dx = to_input
            .then(|| tape.backward_stage(0, input_shape, &saved[0], &self.activations[0], &grads[n - 1], ctx))
            .transpose()?;
        grads.reverse();
        Ok((grads, dx))
    }

    /// The gradient of logit `class` at the network's input, with every biased layer's gradient
    /// recorded on the way (what FullGrad needs), from one more CPU backward pass. `None` when
    /// the trace runs through Candle's autograd.
    pub fn input_gradient_with_biases(&self, class: usize) -> Result<Option<(Chw, Vec<BiasGradient>)>> {
        let mut ctx = Backward::recording_biases();
        let dx = self.input_gradient(class, &mut ctx)?;
        Ok(dx.map(|dx| (dx, ctx.into_bias_gradients())))
    }

    /// The guided-backprop gradient of logit `class` at the network's input, from one more CPU
    /// backward pass with guided activation gradients. `None` for an autograd trace.
    pub fn guided_input_gradient(&self, class: usize) -> Result<Option<Chw>> {
        self.input_gradient(class, &mut Backward::guided())
    }

    /// The whole CPU backward pass, down to the input; `None` for an autograd trace.
    fn input_gradient(&self, class: usize, ctx: &mut Backward) -> Result<Option<Chw>> {
        let Tape::Cpu { input_shape, saved } = &self.tape else { return Ok(None) };
        Ok(self.backward_cpu(*input_shape, saved, class, ctx, true)?.1)
    }

    fn backward_autograd(&self, taps: &[Var], logits: &Tensor, class: usize) -> Result<Vec<Arc<Chw>>> {
        let store = logits.i((0, class))?.backward()?;
        self.stage_gradients(taps.iter().map(|tap| store.get(tap.as_tensor())))
    }

    /// Every stage's gradient (in the stage's layout) laid on its C×H×W grid, all of them
    /// brought to the host in one copy.
    fn stage_gradients<'t>(&self, grads: impl Iterator<Item = Option<&'t Tensor>>) -> Result<Vec<Arc<Chw>>> {
        let nchw = grads
            .zip(self.model.stages())
            .map(|(g, spec)| g.map(|g| spec.layout.to_nchw(g)).transpose())
            .collect::<CResult<Vec<_>>>()?;
        let present: Vec<Tensor> = nchw.iter().flatten().cloned().collect();
        let mut host = to_host(&present)?.into_iter();
        Ok(nchw
            .iter()
            .zip(&self.activations)
            .map(|(g, a)| match g {
                Some(_) => Arc::new(host.next().expect("one host grid per gradient")),
                // A stage the score does not depend on has zero gradient.
                None => Arc::new(Chw::new(a.channels, a.height, a.width, vec![0.0; a.data.len()])),
            })
            .collect())
    }
}

/// Stage tensors, each (1, C, H, W), as C×H×W grids on the host. Off the CPU they come over in
/// one copy (one wait for the device) rather than one per stage.
fn to_host(tensors: &[Tensor]) -> Result<Vec<Chw>> {
    if tensors.first().is_none_or(|t| t.device().is_cpu()) {
        return tensors.iter().map(|t| Ok(Chw::from_nchw(t)?)).collect();
    }
    in_one_copy(tensors)
}

/// [`to_host`] through one concatenation on the tensors' device and one copy of it.
fn in_one_copy(tensors: &[Tensor]) -> Result<Vec<Chw>> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let mut grids = Vec::with_capacity(tensors.len());
    let mut flat = Vec::with_capacity(tensors.len());
    for t in tensors {
        let (n, c, h, w) = t.dims4()?;
        if n != 1 {
            let message = format!("expected one image's activation, got shape {:?}", t.dims());
            return Err(candle_core::Error::Msg(message).into());
        }
        grids.push((c, h, w));
        flat.push(t.to_dtype(candle_core::DType::F32)?.flatten_all()?);
    }
    let values: Vec<f32> = Tensor::cat(&flat, 0)?.to_vec1()?;
    let mut rest = values.as_slice();
    Ok(grids
        .into_iter()
        .map(|(c, h, w)| {
            let (grid, tail) = rest.split_at(c * h * w);
            rest = tail;
            Chw::new(c, h, w, grid.to_vec())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::Arch;
    use crate::load;
    use crate::test_support::{seeded_tensor, worst_and_scale};

    fn assert_same(a: &Chw, b: &Chw, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let (worst, scale) = worst_and_scale(&a.data, &b.data);
        let scale = scale.max(1e-6);
        assert!(worst <= 1e-4 * scale, "{what}: differs by {worst} (scale {scale})");
    }

    /// The CPU tape (our layers' own backward) against Candle's autograd through the same
    /// layers, on both engines (our custom ops; Candle's own ops only): every activation, the
    /// logits and every stage's gradient, for both families (residual blocks with and without
    /// downsampling, the padded max-pool, depthwise stride 2), on seeded random inputs.
    #[test]
    fn cpu_trace_equals_autograd_trace() {
        // 32×32 ends at 1×1 planes, where kernel taps only ever see padding.
        let cases = ["efficientnet-lite0", "resnet18"].into_iter().flat_map(|a| [(a, 96, 80), (a, 32, 32)]);
        for (seed, (arch, h, w)) in cases.enumerate() {
            let model = load::synthetic(Arch::parse(arch).unwrap(), 3).unwrap();
            let input = seeded_tensor(&[1, 3, h, w], seed as u64);
            let cpu = Trace::new(&model.network, &input, EngineKind::Fast).unwrap();
            assert!(matches!(cpu.tape, Tape::Cpu { .. }));
            for engine in [EngineKind::Fast, EngineKind::Portable] {
                let reference = Trace::with_autograd(&model.network, &input, engine).unwrap();
                let what = format!("{arch} {h}×{w} against {engine} autograd");
                for (i, (a, b)) in cpu.activations.iter().zip(&reference.activations).enumerate() {
                    assert_same(a, b, &format!("{what}: activation {i}"));
                }
                let (worst, scale) = worst_and_scale(cpu.logits(), reference.logits());
                assert!(worst <= 1e-4 * scale, "{what}: logits");
                for class in [cpu.top_class(), 7] {
                    let (g, h) = (cpu.gradients(class).unwrap(), reference.gradients(class).unwrap());
                    for (i, (a, b)) in g.iter().zip(h.iter()).enumerate() {
                        assert_same(a, b, &format!("{what}: class {class} gradient {i}"));
                    }
                }
            }
        }
    }

    /// The one-copy transfer (what runs off the CPU) gives every stage's grid as the per-stage
    /// copy does, strided and channels-last inputs included, and refuses a batch.
    #[test]
    fn one_copy_equals_one_copy_per_stage() {
        let a = seeded_tensor(&[1, 4, 3, 5], 1);
        let b = seeded_tensor(&[1, 5, 2, 6], 2).permute((0, 1, 3, 2)).unwrap();
        let c = seeded_tensor(&[1, 1, 1, 1], 3);
        let tensors = [a, b, c];
        let ours = in_one_copy(&tensors).unwrap();
        assert_eq!(ours.len(), 3);
        for (t, grid) in tensors.iter().zip(&ours) {
            assert_eq!(grid, &Chw::from_nchw(t).unwrap());
        }
        assert!(in_one_copy(&[]).unwrap().is_empty());
        let e = in_one_copy(&[seeded_tensor(&[2, 1, 2, 2], 4)]).unwrap_err().to_string();
        assert!(e.contains("one image"), "{e}");
    }

    /// The portable engine never takes the CPU tape, even on the CPU.
    #[test]
    fn portable_engine_runs_through_autograd() {
        let model = load::synthetic(Arch::parse("resnet18").unwrap(), 1).unwrap();
        let trace =
            Trace::new(&model.network, &seeded_tensor(&[1, 3, 32, 32], 1), EngineKind::Portable).unwrap();
        assert!(matches!(trace.tape, Tape::Autograd { .. }));
    }
}
