//! The fast paths a model may offer besides its forward pass: a hand-written CPU tape (the
//! built-in families) or its own reverse pass over Candle tensors (ONNX graphs). Tests hold each
//! equal to Candle's autograd through the same forward.

use std::sync::Arc;

use candle_core::{Result as CResult, Tensor};

use super::chw::Chw;

/// A model's own backward pass over Candle tensors, on any device: gradients at the stages
/// only, never at the weights, with hand-written rules where Candle's composed ones are slow.
/// Tests hold it equal to Candle's autograd through the same forward pass.
pub trait ReversePass: Send + Sync {
    /// The forward pass of one image (1, 3, H, W), keeping what the reverse passes need.
    fn record(&self, x: &Tensor) -> CResult<Box<dyn Recording>>;
}

/// One image's forward pass, kept for its reverse passes (one per target class).
pub trait Recording: Send + Sync {
    /// Every stage's output (batch 1, the stage's own layout), in stage order.
    fn stage_outputs(&self) -> Vec<Tensor>;

    /// The output: logits (1, classes), or a segmentation model's score map (1, classes, H, W).
    fn logits(&self) -> Tensor;

    /// The gradient of logit `class` at every stage's output, in the stage's layout; `None`
    /// where the score does not depend on the stage.
    fn stage_gradients(&self, class: usize) -> CResult<Vec<Option<Tensor>>>;

    /// The gradient of Σ output · `seed` (a tensor of the output's shape) at every stage's
    /// output, as [`Self::stage_gradients`] gives it. A score that is not one logit needs it:
    /// a segmentation target, Σ over a region of one class's scores, is the seed that holds the
    /// region's mask in that class's channel and zeros elsewhere. A model whose reverse pass
    /// only knows single logits says so.
    fn output_gradients(&self, seed: &Tensor) -> CResult<Vec<Option<Tensor>>> {
        candle_core::bail!(
            "this model's reverse pass takes one class at a time, not a seed of shape {:?} over its output",
            seed.dims()
        )
    }
}

/// A model's own batch-1 CPU forward and backward, stage by stage: the fast path of the trace.
/// Stage `i`'s forward takes stage `i − 1`'s output (the image for 0) and may keep intermediates
/// in `saved` for its backward.
pub trait CpuTape: Send + Sync {
    fn forward_stage(&self, stage: usize, x: &Chw, saved: &mut Vec<Chw>) -> CResult<Chw>;

    /// The gradient at stage `stage`'s input (of shape `input`), given what its forward saved,
    /// its output and the gradient there.
    fn backward_stage(
        &self,
        stage: usize,
        input: [usize; 3],
        saved: &[Chw],
        output: &Chw,
        dy: &Chw,
        ctx: &mut Backward,
    ) -> CResult<Chw>;

    /// Logits from the last stage's output.
    fn logits(&self, last: &Chw) -> CResult<Vec<f32>>;

    /// The gradient of logit `class` at the last stage's output.
    fn logit_gradient(&self, last: [usize; 3], class: usize) -> Chw;
}

/// What a CPU backward pass does besides handing gradients back: guided activation masks, and
/// recording each biased layer's gradient (FullGrad).
#[derive(Default)]
pub struct Backward {
    guided: bool,
    biases: Option<Vec<BiasGradient>>,
}

/// One biased layer's gradient at its (pre-activation) output, with its bias.
pub struct BiasGradient {
    pub gradient: Chw,
    pub bias: Arc<Vec<f32>>,
}

impl Backward {
    pub fn plain() -> Self {
        Self::default()
    }

    pub fn guided() -> Self {
        Self { guided: true, biases: None }
    }

    pub fn recording_biases() -> Self {
        Self { guided: false, biases: Some(Vec::new()) }
    }

    pub fn is_guided(&self) -> bool {
        self.guided
    }

    pub fn records_biases(&self) -> bool {
        self.biases.is_some()
    }

    /// Records `gradient()` for `bias` when recording (computing it only then).
    pub fn record_bias(&mut self, bias: &Arc<Vec<f32>>, gradient: impl FnOnce() -> Chw) {
        if let Some(recorded) = self.biases.as_mut() {
            recorded.push(BiasGradient { gradient: gradient(), bias: bias.clone() });
        }
    }

    pub fn into_bias_gradients(self) -> Vec<BiasGradient> {
        self.biases.unwrap_or_default()
    }
}
