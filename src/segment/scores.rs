//! A segmentation network seen as a classifier of regions: its "logits" are, per class, the
//! class's scores summed over that class's mask.

use std::sync::{Arc, OnceLock};

use candle_core::{Result as CResult, Tensor};

use super::prediction::SegmentPrediction;
use super::region::{TargetMasks, TargetRule};
use crate::contract::{Capabilities, ImageClassifier, Recording, ReversePass, StageSpec, Taps};

/// One image's target masks, fixed by the first score map its network returns: the prediction
/// on the unchanged image, which the engine's trace computes as its first forward pass anyway,
/// so the default (predicted) regions cost no pass of their own. Score-CAM's and Ablation-CAM's
/// perturbed passes come later and keep these masks.
pub struct ImageMasks {
    rule: TargetRule,
    fixed: OnceLock<Result<FixedMasks, String>>,
}

/// What the first score map fixed.
pub struct FixedMasks {
    pub prediction: SegmentPrediction,
    pub masks: TargetMasks,
    /// (1, C, H, W), or (1, 1, H, W) when every class shares one region, on the output's device.
    tensor: Tensor,
}

impl ImageMasks {
    pub fn new(rule: TargetRule) -> Self {
        Self { rule, fixed: OnceLock::new() }
    }

    /// The masks, once a forward pass fixed them (or the reason it could not).
    pub fn fixed(&self) -> Option<&Result<FixedMasks, String>> {
        self.fixed.get()
    }

    fn fix(&self, out: &Tensor) -> CResult<&Tensor> {
        let fixed = self.fixed.get_or_init(|| {
            let prediction = SegmentPrediction::of(&out.detach())?;
            let masks = self.rule.masks(&prediction);
            let tensor = masks.tensor(out.device()).map_err(|e| e.to_string())?;
            Ok(FixedMasks { prediction, masks, tensor })
        });
        match fixed {
            Ok(f) => Ok(&f.tensor),
            Err(problem) => Err(candle_core::Error::Msg(problem.clone())),
        }
    }
}

/// `score[n, c] = Σ_{h,w} out[n, c, h, w] · mask[c, h, w]` of the wrapped network's output `out`
/// (pytorch-grad-cam's `SemanticSegmentationTarget`). The masks are constants, so a gradient
/// of score `c` is the gradient of that one region sum, and a perturbed forward pass (Score-CAM,
/// Ablation-CAM) is scored over the unchanged image's regions.
pub struct RegionScores {
    inner: Arc<dyn ImageClassifier>,
    masks: Arc<ImageMasks>,
}

impl RegionScores {
    /// `inner`'s region scores for one image; its first forward pass must be that image's (the
    /// engine's trace is).
    pub fn new(inner: Arc<dyn ImageClassifier>, masks: Arc<ImageMasks>) -> Self {
        Self { inner, masks }
    }

    fn reduce(&self, out: &Tensor) -> CResult<Tensor> {
        let masks = self.masks.fix(out)?;
        let (_, c, h, w) = out.dims4()?;
        let (_, mc, mh, mw) = masks.dims4()?;
        if (mh, mw) != (h, w) || (mc != c && mc != 1) {
            candle_core::bail!(
                "the score map is {c}×{h}×{w}, the target masks {mc}×{mh}×{mw}: the model's output changed shape"
            )
        }
        let masks = masks.to_dtype(out.dtype())?;
        out.broadcast_mul(&masks)?.sum((2, 3))
    }
}

impl ImageClassifier for RegionScores {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn stages(&self) -> &[StageSpec] {
        self.inner.stages()
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> CResult<Tensor> {
        let out = self.inner.forward(x, taps)?;
        self.reduce(&out)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    /// The last stage of the backbone, where the model names one ([`crate::contract::backbone_stage`]).
    fn preferred_stage(&self) -> Option<usize> {
        self.inner.preferred_stage().or_else(|| crate::contract::backbone_stage(self.inner.stages()))
    }

    fn forward_from(&self, stage: usize, activation: &Tensor, taps: &mut Taps) -> Option<CResult<Tensor>> {
        let out = self.inner.forward_from(stage, activation, taps)?;
        Some(out.and_then(|o| self.reduce(&o)))
    }

    fn reverse_pass(&self) -> Option<&dyn ReversePass> {
        self.inner.reverse_pass().map(|_| self as &dyn ReversePass)
    }

    fn with_stages(&self, names: &[&str]) -> Option<crate::Result<Arc<dyn ImageClassifier>>> {
        let inner = self.inner.with_stages(names)?;
        Some(
            inner.map(|inner| {
                Arc::new(RegionScores::new(inner, self.masks.clone())) as Arc<dyn ImageClassifier>
            }),
        )
    }
}

/// The fast engine's way: the wrapped network's own reverse pass, seeded with class `c`'s mask
/// in channel `c` of its score map (the gradient of that one region sum).
impl ReversePass for RegionScores {
    fn record(&self, x: &Tensor) -> CResult<Box<dyn Recording>> {
        let Some(pass) = self.inner.reverse_pass() else {
            candle_core::bail!("{} has no reverse pass of its own", self.inner.name())
        };
        let inner = pass.record(x)?;
        let out = inner.logits();
        let logits = self.reduce(&out)?;
        let masks = self.masks.fix(&out)?.clone();
        Ok(Box::new(RegionRecording { inner, masks, logits }))
    }
}

struct RegionRecording {
    inner: Box<dyn Recording>,
    masks: Tensor,
    /// The region sums, (1, classes).
    logits: Tensor,
}

impl Recording for RegionRecording {
    fn stage_outputs(&self) -> Vec<Tensor> {
        self.inner.stage_outputs()
    }

    fn logits(&self) -> Tensor {
        self.logits.clone()
    }

    fn stage_gradients(&self, class: usize) -> CResult<Vec<Option<Tensor>>> {
        let out = self.inner.logits();
        let (_, classes, _, _) = out.dims4()?;
        if class >= classes {
            candle_core::bail!("class {class} is out of range for {classes} score maps")
        }
        let mask = match self.masks.dim(1)? {
            1 => self.masks.clone(),
            _ => self.masks.narrow(1, class, 1)?,
        };
        let mut one_hot = vec![0f32; classes];
        one_hot[class] = 1.0;
        let channel = Tensor::from_vec(one_hot, (1, classes, 1, 1), out.device())?;
        let seed = channel.broadcast_mul(&mask.to_device(out.device())?)?.to_dtype(out.dtype())?;
        self.inner.output_gradients(&seed.contiguous()?)
    }
}
