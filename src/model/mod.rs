//! What a network is to camscope: an ordered list of named stages, each a function from the
//! previous stage's output to its own, followed by a classifier head. Any stage range can be run,
//! which is what lets perturbation methods re-run only the part of the network after a stage.

pub mod card;
pub mod efficientnet_lite;
pub mod kernels;
pub mod ops;
pub mod portable;
pub mod resnet;
pub mod weights;

use std::fmt;

use candle_core::{Device, Tensor};

use crate::cam::Chw;
use crate::error::{Error, Result};
use ops::Classifier;
use weights::WeightStore;

/// A piece of network with a single input and output, runnable two ways.
pub trait Layer: Send + Sync {
    /// Candle tensors on any device, batched, with Candle's autograd available: what
    /// perturbation methods, FullGrad and guided backprop run.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// One image on the CPU with no autograd graph: what the trace runs, several times faster
    /// (no graph bookkeeping, no zero-filled gradient buffers, masks and adds fused). Pushes
    /// onto `saved` the intermediates that [`Layer::backward_cpu`] needs.
    fn forward_cpu(&self, x: &Chw, saved: &mut Vec<Chw>) -> candle_core::Result<Chw>;

    /// Gradient at the layer's input (of shape `input`), given what its forward saved, its
    /// output and the gradient there.
    fn backward_cpu(
        &self,
        input: [usize; 3],
        saved: &[Chw],
        output: &Chw,
        dy: &Chw,
    ) -> candle_core::Result<Chw>;
}

/// The architectures camscope can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// EfficientNet-Lite0 … Lite4.
    EfficientNetLite(u8),
    /// torchvision ResNet-18/34/50/101/152.
    ResNet(u16),
}

impl Arch {
    pub const ALL: [Arch; 10] = [
        Arch::EfficientNetLite(0),
        Arch::EfficientNetLite(1),
        Arch::EfficientNetLite(2),
        Arch::EfficientNetLite(3),
        Arch::EfficientNetLite(4),
        Arch::ResNet(18),
        Arch::ResNet(34),
        Arch::ResNet(50),
        Arch::ResNet(101),
        Arch::ResNet(152),
    ];

    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase().replace('_', "-");
        Arch::ALL.into_iter().find(|a| a.to_string() == lower).ok_or_else(|| {
            let names: Vec<String> = Arch::ALL.iter().map(Arch::to_string).collect();
            Error::Model(format!("unknown architecture '{s}'; known: {}", names.join(", ")))
        })
    }

    /// Guesses the architecture from tensor names and shapes.
    pub fn detect(weights: &WeightStore) -> Result<Self> {
        if weights.contains("_conv_stem.weight") {
            efficientnet_lite::detect(weights)
        } else if weights.contains("conv1.weight") && weights.contains("layer1.0.conv1.weight") {
            resnet::detect(weights)
        } else {
            let mut names = weights.names();
            names.sort_unstable();
            let sample: Vec<&str> = names.into_iter().take(4).collect();
            Err(Error::Weights {
                source_name: weights.source_name().into(),
                message: format!(
                    "cannot tell the architecture from its tensor names (first: {}); pass --arch",
                    sample.join(", ")
                ),
            })
        }
    }

    /// Input side the architecture was trained at.
    pub fn default_input_size(self) -> usize {
        match self {
            Arch::EfficientNetLite(v) => efficientnet_lite::Variant::get(v).input_size,
            Arch::ResNet(_) => 224,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::EfficientNetLite(v) => write!(f, "efficientnet-lite{v}"),
            Arch::ResNet(d) => write!(f, "resnet{d}"),
        }
    }
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

pub struct Network {
    pub arch: Arch,
    stages: Vec<Stage>,
    classifier: Classifier,
}

impl Network {
    pub fn new(arch: Arch, stages: Vec<Stage>, classifier: Classifier) -> Self {
        Self { arch, stages, classifier }
    }

    pub fn num_classes(&self) -> usize {
        self.classifier.num_classes()
    }

    /// Builds `arch` from `weights`, checking every tensor.
    pub fn load(arch: Arch, weights: &WeightStore) -> Result<Self> {
        let net = match arch {
            Arch::EfficientNetLite(v) => {
                efficientnet_lite::build(efficientnet_lite::Variant::get(v), weights)?
            }
            Arch::ResNet(depth) => resnet::build(depth, weights)?,
        };
        weights.finish()?;
        Ok(net)
    }

    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name.as_str())
    }

    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    pub fn stage_name(&self, index: usize) -> &str {
        &self.stages[index].name
    }

    pub fn stage_index(&self, name: &str) -> Result<usize> {
        self.stages.iter().position(|s| s.name == name).ok_or_else(|| Error::UnknownStage {
            name: name.into(),
            available: self.stage_names().collect::<Vec<_>>().join(", "),
        })
    }

    /// Runs stages `from..=to`; `x` is the output of stage `from - 1` (the input image for 0).
    pub fn run_stages(&self, from: usize, to: usize, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for stage in &self.stages[from..=to] {
            x = stage.layer.forward(&x)?;
        }
        Ok(x)
    }

    /// Runs one stage.
    pub fn run_stage(&self, index: usize, x: &Tensor) -> Result<Tensor> {
        Ok(self.stages[index].layer.forward(x)?)
    }

    /// Logits from the last stage's output.
    pub fn classify(&self, last: &Tensor) -> Result<Tensor> {
        Ok(self.classifier.forward(last)?)
    }

    /// [`Layer::forward_cpu`] of stage `index`.
    pub fn stage_forward_cpu(&self, index: usize, x: &Chw, saved: &mut Vec<Chw>) -> Result<Chw> {
        Ok(self.stages[index].layer.forward_cpu(x, saved)?)
    }

    /// [`Layer::backward_cpu`] of stage `index`.
    pub fn stage_backward_cpu(
        &self,
        index: usize,
        input: [usize; 3],
        saved: &[Chw],
        output: &Chw,
        dy: &Chw,
    ) -> Result<Chw> {
        Ok(self.stages[index].layer.backward_cpu(input, saved, output, dy)?)
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.classify(&self.run_stages(0, self.stages.len() - 1, x)?)
    }

    /// Output shape (C, H, W) of every stage for a `size`×`size` input.
    pub fn stage_shapes(&self, size: usize) -> Result<Vec<[usize; 3]>> {
        let mut x = Tensor::zeros((1, 3, size, size), candle_core::DType::F32, &Device::Cpu)?;
        let mut shapes = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            x = stage.layer.forward(&x)?;
            let (_, c, h, w) = x.dims4()?;
            shapes.push([c, h, w]);
        }
        Ok(shapes)
    }

    /// The default stage to explain: the last one whose output is still spatial (H·W > 1).
    pub fn default_stage(&self, shapes: &[[usize; 3]]) -> usize {
        shapes.iter().rposition(|s| s[1] * s[2] > 1).unwrap_or(self.stages.len() - 1)
    }
}
