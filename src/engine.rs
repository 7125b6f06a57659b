//! The engine: one image through one network, and any map of it on demand. Gradient methods read
//! the trace (one forward, one backward per class, cached); perturbation methods run extra forward
//! passes through the network, reporting progress and honouring cancellation.

use std::sync::Arc;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::cam::{self, Chw, Control, Kind, Method, Smoothing};
use crate::contract::{self, EngineKind, ImageClassifier};
use crate::error::{Error, Result};
use crate::preprocess::InputSize;
use crate::trace::Trace;

pub struct Engine {
    model: Arc<dyn ImageClassifier>,
    kind: EngineKind,
    input: Tensor,
    trace: Trace,
}

impl Engine {
    /// Runs the forward pass of `input` (1×3×H×W) on `kind` of engine.
    pub fn new(model: Arc<dyn ImageClassifier>, input: Tensor, kind: EngineKind) -> Result<Self> {
        let trace = Trace::new(&model, &input, kind)?;
        Ok(Self { model, kind, input, trace })
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The stage to explain when none is named: the last one whose output is still spatial.
    pub fn default_stage(&self) -> usize {
        contract::default_stage_of(self.model.as_ref(), &self.trace.shapes())
    }

    /// The normalised input tensor (1×3×H×W).
    pub fn input(&self) -> &Tensor {
        &self.input
    }

    pub fn model(&self) -> &dyn ImageClassifier {
        self.model.as_ref()
    }

    /// The network the engine runs (a segmentation model's region scores, where it is one).
    pub fn network(&self) -> Arc<dyn ImageClassifier> {
        self.model.clone()
    }

    /// Whether `method` can run on this engine's model at all (see [`check_supported`]).
    pub fn check_supported(&self, method: Method) -> Result<()> {
        check_supported(self.model.as_ref(), method)
    }

    /// The input's height and width, which is the frame of every finished map.
    pub fn size(&self) -> InputSize {
        match self.input.dims() {
            [.., h, w] => InputSize::new(*h, *w),
            _ => InputSize::square(0),
        }
    }

    /// The map of `method` at `stage` for `class` at stage resolution (whole-network methods: the
    /// input's), before post-processing. `eigen` projects the per-channel terms instead of
    /// summing them.
    pub fn stage_map(
        &self,
        method: Method,
        stage: usize,
        class: usize,
        eigen: bool,
        ctl: &Control,
    ) -> Result<Vec<f32>> {
        self.check_supported(method)?;
        let a = self.trace.activation(stage);
        let pure = |g: &Chw| {
            let map = if eigen { method.eigen_smoothed_map(a, g) } else { method.stage_map(a, g) };
            Ok(map.expect("gradient and activation methods are pure"))
        };
        let weighted = |weights: Vec<f32>| {
            if eigen {
                cam::eigen_smoothed(&cam::scale_channels(a, &weights))
            } else {
                cam::weighted_sum(a, &weights)
            }
        };
        match method.kind() {
            Kind::Gradient => pure(&self.trace.gradients(class)?[stage]),
            Kind::Activation => pure(&Chw::new(a.channels, a.height, a.width, vec![0.0; a.data.len()])),
            Kind::WholeNetwork => match method {
                Method::FullGrad => {
                    cam::fullgrad_map(self.model(), self.kind, &self.input, &self.trace, class)
                }
                Method::GuidedBackprop => {
                    cam::guided_backprop_map(self.model(), self.kind, &self.input, &self.trace, class)
                }
                _ => {
                    let smoothing = Smoothing { aug: false, eigen };
                    let gradcam = self.cam_smoothed(Method::GradCam, stage, class, smoothing, ctl)?;
                    let guided =
                        cam::guided_backprop_map(self.model(), self.kind, &self.input, &self.trace, class)?;
                    Ok(gradcam.iter().zip(&guided).map(|(a, b)| a * b).collect())
                }
            },
            Kind::Perturbation => Ok(weighted(match method {
                Method::ScoreCam => {
                    cam::scorecam_weights(self.model(), self.kind, &self.input, a, class, ctl)?
                }
                _ => {
                    let ablation = cam::Ablation {
                        model: self.model(),
                        engine: self.kind,
                        input: &self.input,
                        stage,
                        activation: &self.trace.raw_activation(stage, self.input.device())?,
                        score: self.trace.logits()[class],
                    };
                    ablation.weights(class, ctl)?
                }
            })),
        }
    }

    /// The finished map (SPEC §2): on the input's frame, row-major, in [0, 1].
    pub fn cam(&self, method: Method, stage: usize, class: usize, ctl: &Control) -> Result<Vec<f32>> {
        self.cam_smoothed(method, stage, class, Smoothing::default(), ctl)
    }

    /// The finished maps of several stages. Maps read from the trace are independent and cheap,
    /// so they are computed in parallel; methods that run the network (perturbation, smoothing,
    /// whole-network) parallelise inside and go one stage at a time, in order, for their progress.
    pub fn cams(
        &self,
        method: Method,
        stages: &[usize],
        class: usize,
        smoothing: Smoothing,
        ctl: &Control,
    ) -> Result<Vec<Vec<f32>>> {
        let from_trace = matches!(method.kind(), Kind::Gradient | Kind::Activation) && !smoothing.aug;
        if from_trace {
            if method.needs_gradient() {
                // One backward pass, before the parallel maps all ask for it.
                self.trace.gradients(class)?;
            }
            stages.par_iter().map(|&s| self.cam_smoothed(method, s, class, smoothing, ctl)).collect()
        } else {
            stages.iter().map(|&s| self.cam_smoothed(method, s, class, smoothing, ctl)).collect()
        }
    }

    /// The finished map with the reference's smoothing options.
    pub fn cam_smoothed(
        &self,
        method: Method,
        stage: usize,
        class: usize,
        smoothing: Smoothing,
        ctl: &Control,
    ) -> Result<Vec<f32>> {
        if smoothing.aug {
            return self.augmentation_smoothed(method, stage, class, smoothing.eigen, ctl);
        }
        let mut map = self.stage_map(method, stage, class, smoothing.eigen, ctl)?;
        if method.kind() == Kind::WholeNetwork {
            cam::relu_min_max(&mut map);
            return Ok(map);
        }
        let a = self.trace.activation(stage);
        Ok(cam::finish(&map, a.height, a.width, self.size()))
    }

    /// Mean of the finished maps of 6 augmented inputs (horizontal flip × 0.9 / 1.0 / 1.1 times
    /// the normalised input), each flipped back: pytorch-grad-cam's `aug_smooth`.
    fn augmentation_smoothed(
        &self,
        method: Method,
        stage: usize,
        class: usize,
        eigen: bool,
        ctl: &Control,
    ) -> Result<Vec<f32>> {
        let frame = self.size();
        let width = frame.width;
        let mut sum = vec![0f32; frame.area()];
        let smoothing = Smoothing { aug: false, eigen };
        for flip in [false, true] {
            for factor in [0.9, 1.0, 1.1] {
                let mut x = self.input.affine(factor, 0.0)?;
                if flip {
                    x = x.flip(&[3])?;
                }
                let engine = Engine::new(self.model.clone(), x, self.kind)?;
                let map = engine.cam_smoothed(method, stage, class, smoothing, ctl)?;
                for (i, v) in map.iter().enumerate() {
                    let (y, col) = (i / width, i % width);
                    let target = if flip { y * width + (width - 1 - col) } else { i };
                    sum[target] += v / 6.0;
                }
            }
        }
        Ok(sum)
    }
}

/// Whether `method` can run on `model` at all: a method that needs what the model does not
/// offer is refused before any work, naming both. Needs no image, so a sweep asks it once.
pub fn check_supported(model: &dyn ImageClassifier, method: Method) -> Result<()> {
    let offers = model.capabilities();
    let missing = match method {
        Method::FullGrad if !offers.bias_gradients => Some("its biases (FullGrad sums their gradients)"),
        Method::GuidedBackprop | Method::GuidedGradCam if !offers.guided_relu => {
            Some("its ReLUs (guided backprop changes their gradient)")
        }
        _ => None,
    };
    match missing {
        Some(what) => {
            Err(Error::Unsupported { method: method.name().into(), model: model.name(), what: what.into() })
        }
        None => Ok(()),
    }
}
