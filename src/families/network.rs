//! A built-in network: named NCHW stages, each one [`Layer`], then the classifier head.

use candle_core::Tensor;

use crate::contract::{Backward, Capabilities, Chw, CpuTape, ImageClassifier, StageSpec, Taps};
use crate::layers::Classifier;

/// A piece of a built-in network with a single input and output, runnable two ways.
pub trait Layer: Send + Sync {
    /// Candle tensors on any device, batched, through the taps (which pick the kernels and see
    /// biases and activations in FullGrad and guided modes).
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor>;

    /// One image on the CPU with no autograd graph: what the fast trace runs, several times
    /// faster (no graph bookkeeping, no zero-filled gradient buffers, masks and adds fused).
    /// Pushes onto `saved` the intermediates that [`Layer::backward_cpu`] needs.
    fn forward_cpu(&self, x: &Chw, saved: &mut Vec<Chw>) -> candle_core::Result<Chw>;

    /// Gradient at the layer's input (of shape `input`), given what its forward saved, its
    /// output and the gradient there.
    fn backward_cpu(
        &self,
        input: [usize; 3],
        saved: &[Chw],
        output: &Chw,
        dy: &Chw,
        ctx: &mut Backward,
    ) -> candle_core::Result<Chw>;
}

pub struct Stage {
    pub name: String,
    layer: Box<dyn Layer>,
}

impl Stage {
    pub fn new(name: impl Into<String>, layer: impl Layer + 'static) -> Self {
        Self { name: name.into(), layer: Box::new(layer) }
    }
}

/// A built-in network: named NCHW stages, each one [`Layer`], then global average pooling and a
/// linear classifier. It offers everything the contract asks for, the CPU tape included.
pub struct Network {
    name: String,
    stages: Vec<Stage>,
    specs: Vec<StageSpec>,
    classifier: Classifier,
}

impl Network {
    pub fn new(name: impl Into<String>, stages: Vec<Stage>, classifier: Classifier) -> Self {
        let specs = stages.iter().map(|s| StageSpec::nchw(&s.name)).collect();
        Self { name: name.into(), stages, specs, classifier }
    }

    pub fn num_classes(&self) -> usize {
        self.classifier.num_classes()
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Logits from stage `stage`'s output, running only the stages after it.
    fn run_after(&self, stage: usize, activation: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor> {
        let mut x = activation.clone();
        for s in &self.stages[stage + 1..] {
            x = s.layer.forward(&x, taps)?;
        }
        self.classifier.forward(&x)
    }
}

impl ImageClassifier for Network {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn stages(&self) -> &[StageSpec] {
        &self.specs
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for stage in &self.stages {
            x = stage.layer.forward(&x, taps)?;
            x = taps.stage(&stage.name, x)?;
        }
        self.classifier.forward(&x)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { guided_relu: true, bias_gradients: true }
    }

    fn forward_from(
        &self,
        stage: usize,
        activation: &Tensor,
        taps: &mut Taps,
    ) -> Option<candle_core::Result<Tensor>> {
        Some(self.run_after(stage, activation, taps))
    }

    fn cpu_tape(&self) -> Option<&dyn CpuTape> {
        Some(self)
    }
}

impl CpuTape for Network {
    fn forward_stage(&self, stage: usize, x: &Chw, saved: &mut Vec<Chw>) -> candle_core::Result<Chw> {
        self.stages[stage].layer.forward_cpu(x, saved)
    }

    fn backward_stage(
        &self,
        stage: usize,
        input: [usize; 3],
        saved: &[Chw],
        output: &Chw,
        dy: &Chw,
        ctx: &mut Backward,
    ) -> candle_core::Result<Chw> {
        self.stages[stage].layer.backward_cpu(input, saved, output, dy, ctx)
    }

    fn logits(&self, last: &Chw) -> candle_core::Result<Vec<f32>> {
        self.classifier.logits_cpu(last)
    }

    fn logit_gradient(&self, last: [usize; 3], class: usize) -> Chw {
        self.classifier.logit_gradient_cpu(last, class)
    }
}
