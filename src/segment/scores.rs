//! A segmentation network seen as a classifier of regions: its "logits" are, per class, the
//! class's scores summed over that class's mask.

use std::sync::Arc;

use candle_core::{Result as CResult, Tensor};

use crate::contract::{Capabilities, ImageClassifier, Recording, ReversePass, StageSpec, Taps};

/// `score[n, c] = Σ_{h,w} out[n, c, h, w] · mask[c, h, w]` of the wrapped network's output `out`
/// (pytorch-grad-cam's `SemanticSegmentationTarget`). The masks are constants, so a gradient
/// of score `c` is the gradient of that one region sum, and a perturbed forward pass (Score-CAM,
/// Ablation-CAM) is scored over the unchanged image's regions.
pub struct RegionScores {
    inner: Arc<dyn ImageClassifier>,
    /// (1, C, H, W), or (1, 1, H, W) when every class shares one region.
    masks: Tensor,
}

impl RegionScores {
    pub fn new(inner: Arc<dyn ImageClassifier>, masks: Tensor) -> Self {
        Self { inner, masks }
    }

    fn reduce(&self, out: &Tensor) -> CResult<Tensor> {
        let (_, c, h, w) = out.dims4()?;
        let (_, mc, mh, mw) = self.masks.dims4()?;
        if (mh, mw) != (h, w) || (mc != c && mc != 1) {
            candle_core::bail!(
                "the score map is {c}×{h}×{w}, the target masks {mc}×{mh}×{mw}: the model's output changed shape"
            )
        }
        let masks = self.masks.to_dtype(out.dtype())?;
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
        let logits = self.reduce(&inner.logits())?;
        Ok(Box::new(RegionRecording { inner, masks: self.masks.clone(), logits }))
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
