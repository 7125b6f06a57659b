//! What a model is to camscope. Every model meets one contract ([`ImageClassifier`]: named
//! stages with their layouts, a forward pass that hands each stage output to the engine's taps).
//! The built-in families are [`Network`]s, an ordered list of [`Layer`]s and a classifier head,
//! which also offer a hand-written CPU tape and can resume from any stage; the [`registry`]
//! knows how to build them from a checkpoint.

pub mod card;
pub mod contract;
pub mod efficientnet_lite;
pub mod kernels;
pub mod matmul;
pub mod ops;
pub(crate) mod parallel;
pub mod portable;
pub mod registry;
pub mod resnet;
pub mod weights;

use std::sync::Arc;

use candle_core::Tensor;

use crate::cam::Chw;
use crate::error::{Error, Result};
pub use contract::{
    Backward, BiasGradient, Capabilities, CpuTape, EngineKind, ImageClassifier, Layout, Mode, Recording,
    ReversePass, StageHook, StageSpec, Taps,
};
use ops::Classifier;
pub use registry::{Arch, Family};

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

/// The index of stage `name` of `model`.
pub fn stage_index(model: &dyn ImageClassifier, name: &str) -> Result<usize> {
    let stages = model.stages();
    stages.iter().position(|s| s.name == name).ok_or_else(|| Error::UnknownStage {
        name: name.into(),
        available: stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// `model` with stage `name` among its stages, and that stage's index: the model itself where
/// `name` is one of its stages, else — for a model that can be tapped anywhere, such as an imported
/// graph — the same model tapped at its stages and that module.
pub fn with_stage(model: &Arc<dyn ImageClassifier>, name: &str) -> Result<(Arc<dyn ImageClassifier>, usize)> {
    let unknown = match stage_index(model.as_ref(), name) {
        Ok(i) => return Ok((model.clone(), i)),
        Err(e) => e,
    };
    let mut names: Vec<&str> = model.stages().iter().map(|s| s.name.as_str()).collect();
    names.push(name);
    match model.with_stages(&names) {
        Some(retapped) => {
            let retapped = retapped?;
            let index = stage_index(retapped.as_ref(), name)?;
            Ok((retapped, index))
        }
        None => Err(unknown),
    }
}

/// Logits of a batch through the model's plain forward pass.
pub fn logits(model: &dyn ImageClassifier, x: &Tensor, engine: EngineKind) -> Result<Tensor> {
    Ok(model.forward(x, &mut Taps::new(model.stages(), engine, Mode::Plain))?)
}

/// What one forward pass shows of a stage: its raw output shape and its C×H×W grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageShape {
    pub raw: Vec<usize>,
    pub grid: [usize; 3],
}

/// Every stage's output shape for a `height`×`width` input, from one forward pass on zeros.
pub fn stage_shapes(
    model: &dyn ImageClassifier,
    height: usize,
    width: usize,
    engine: EngineKind,
) -> Result<Vec<StageShape>> {
    let x = Tensor::zeros((1, 3, height, width), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let specs = model.stages();
    let mut shapes = Vec::with_capacity(specs.len());
    let mut hook = |i: usize, t: Tensor| -> candle_core::Result<Tensor> {
        let grid = specs[i].layout.to_nchw(&t)?;
        let (_, c, h, w) = grid.dims4()?;
        shapes.push(StageShape { raw: t.dims().to_vec(), grid: [c, h, w] });
        Ok(t)
    };
    let mut taps = Taps::with_hook(specs, engine, Mode::Plain, &mut hook);
    model.forward(&x, &mut taps)?;
    check_all_stages_tapped(model, taps.stages_seen())?;
    Ok(shapes)
}

/// A forward pass that skipped the taps of some stages leaves the engine without their maps.
pub(crate) fn check_all_stages_tapped(model: &dyn ImageClassifier, seen: usize) -> Result<()> {
    let n = model.stages().len();
    if n == 0 {
        return Err(Error::Model(format!("model {} has no stages to explain", model.name())));
    }
    if seen != n {
        return Err(Error::Model(format!(
            "model {}'s forward pass handed {seen} of its {n} stages to the taps (it must call \
             taps.stage for every stage, in order)",
            model.name()
        )));
    }
    Ok(())
}

/// The default stage to explain: the last one whose grid is still spatial (H·W > 1).
pub fn default_stage(grids: &[[usize; 3]]) -> usize {
    grids.iter().rposition(|s| s[1] * s[2] > 1).unwrap_or(grids.len().saturating_sub(1))
}
