//! The trait every model implements, and what the engine reads off any model through it (stage
//! lookup, shapes, logits, the default stage).

use std::sync::Arc;

use candle_core::{Result as CResult, Tensor};

use super::stage::StageSpec;
use super::tape::{CpuTape, ReversePass};
use super::taps::{EngineKind, Mode, Taps};
use crate::error::{Error, Result};

/// What a model offers beyond its forward pass. A method that needs what is missing fails with
/// an error naming method and model, never with a silently wrong map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Every ReLU of the model goes through [`Taps::relu`] (guided backprop).
    pub guided_relu: bool,
    /// Every bias of a convolution or BatchNorm goes through [`Taps::bias`] (FullGrad).
    pub bias_gradients: bool,
}

/// An image classifier camscope can explain.
///
/// ```ignore
/// impl ImageClassifier for MyNet {
///     fn name(&self) -> String { "my-net".into() }
///     fn stages(&self) -> &[StageSpec] { &self.stages }
///     fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor> {
///         let x = taps.stage("block1", self.block1.forward(x)?)?;
///         let x = taps.stage("block2", self.block2.forward(&x)?)?;
///         self.head.forward(&x.mean((2, 3))?)
///     }
/// }
/// ```
pub trait ImageClassifier: Send + Sync {
    /// A short name for messages ("resnet50", "my-net").
    fn name(&self) -> String;

    /// The stages, in the order the forward pass reaches them.
    fn stages(&self) -> &[StageSpec];

    /// Logits (N, classes) of a batch of normalised images (N, 3, H, W). Every stage output must
    /// pass through [`Taps::stage`], in order, and the forward must continue with what it returns.
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> CResult<Tensor>;

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Logits from the output of stage `stage` (a batch in that stage's layout), running only the
    /// rest of the network: what makes Ablation-CAM cheap. `None`: the model cannot resume, and
    /// the engine runs the whole network, replacing the stage output through the taps instead.
    fn forward_from(&self, _stage: usize, _activation: &Tensor, _taps: &mut Taps) -> Option<CResult<Tensor>> {
        None
    }

    /// The same model tapped at `names` (its stages and other module paths it knows, in any
    /// order): what lets `--layer` reach any module of an imported graph. `None`: the stage list
    /// is fixed.
    fn with_stages(&self, _names: &[&str]) -> Option<crate::Result<Arc<dyn ImageClassifier>>> {
        None
    }

    /// The stage explained when none is named, where the model knows better than the default
    /// (the last stage whose output is still spatial).
    fn preferred_stage(&self) -> Option<usize> {
        None
    }

    /// A hand-written CPU forward/backward for one image, if the model has one.
    fn cpu_tape(&self) -> Option<&dyn CpuTape> {
        None
    }

    /// The model's own reverse pass over Candle tensors, if it has one: what the fast engine
    /// runs instead of Candle's autograd (which also computes every weight's gradient).
    fn reverse_pass(&self) -> Option<&dyn ReversePass> {
        None
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
pub fn check_all_stages_tapped(model: &dyn ImageClassifier, seen: usize) -> Result<()> {
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

/// The stage `model` is explained at when none is named: its own preference, else the last one
/// whose grid is still spatial.
pub fn default_stage_of(model: &dyn ImageClassifier, grids: &[[usize; 3]]) -> usize {
    model.preferred_stage().filter(|&s| s < grids.len()).unwrap_or_else(|| default_stage(grids))
}

/// A segmentation model's default stage: the last stage of its backbone, where it has one named
/// so (torchvision's models; the tutorial explains `backbone.layer4`) — past it, the head's
/// stages sit at the score map itself.
pub fn backbone_stage(stages: &[StageSpec]) -> Option<usize> {
    stages.iter().rposition(|s| s.name == "backbone" || s.name.starts_with("backbone."))
}

/// The default stage to explain: the last one whose grid is still spatial (H·W > 1).
pub fn default_stage(grids: &[[usize; 3]]) -> usize {
    grids.iter().rposition(|s| s[1] * s[2] > 1).unwrap_or(grids.len().saturating_sub(1))
}
