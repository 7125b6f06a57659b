//! Class activation map methods. A method is a small pure function of a stage's activations `A`
//! and the target score's gradient `G` (both C×H×W) returning a map at stage resolution; the
//! post-processing every method shares (SPEC §2) lives here once, as in pytorch-grad-cam's
//! `BaseCAM`.
//!
//! May use: `contract`, `trace`, `kernels` (activation masks). A new method is one file here and
//! one line in [`Method`]'s table.

mod ablationcam;
mod eigen;
mod fullgrad;
mod gradcam;
mod gradcam_elementwise;
mod gradcam_plus_plus;
mod guided;
mod hirescam;
mod layercam;
mod scorecam;
mod xgradcam;

use std::fmt;

pub use ablationcam::Ablation;
pub use eigen::{projection as eigen_projection, smoothed as eigen_smoothed};
pub use fullgrad::map as fullgrad_map;
pub use guided::map as guided_backprop_map;
pub use scorecam::weights as scorecam_weights;

pub use crate::contract::Chw;
use crate::contract::{check_all_stages_tapped, EngineKind, ImageClassifier, Mode, Taps};
use crate::error::{Error, Result};
use crate::preprocess::InputSize;
use candle_core::backprop::GradStore;
use candle_core::{IndexOp, Tensor, Var};

/// Σ_k w_k A_k: the map of every channel-weighting method.
pub fn weighted_sum(a: &Chw, weights: &[f32]) -> Vec<f32> {
    let mut map = vec![0f32; a.plane()];
    for (channel, &w) in a.channels_iter().zip(weights) {
        if w != 0.0 {
            map.iter_mut().zip(channel).for_each(|(m, v)| *m += w * v);
        }
    }
    map
}

/// w_k A_k for every channel: the terms a channel-weighting method sums.
pub fn scale_channels(a: &Chw, weights: &[f32]) -> Chw {
    let data = a.channels_iter().zip(weights).flat_map(|(c, &w)| c.iter().map(move |v| v * w)).collect();
    Chw::new(a.channels, a.height, a.width, data)
}

/// f(G_k, A_k) for every channel and position: the terms an element-wise method sums.
pub fn elementwise_terms(a: &Chw, g: &Chw, f: impl Fn(f32, f32) -> f32) -> Chw {
    let data = g.data.iter().zip(&a.data).map(|(&g, &a)| f(g, a)).collect();
    Chw::new(a.channels, a.height, a.width, data)
}

/// Options of the reference that trade time for smoother maps (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Smoothing {
    /// Mean over 6 augmentations: horizontal flip × input multiplied by 0.9 / 1.0 / 1.1.
    pub aug: bool,
    /// The first principal component of the per-channel terms instead of their sum.
    pub eigen: bool,
}

/// Σ_k f(G_k, A_k) per position: the map of every element-wise method.
pub fn elementwise_sum(a: &Chw, g: &Chw, f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    let mut map = vec![0f32; a.plane()];
    for (ac, gc) in a.channels_iter().zip(g.channels_iter()) {
        for ((m, &av), &gv) in map.iter_mut().zip(ac).zip(gc) {
            *m += f(gv, av);
        }
    }
    map
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    GradCam,
    HiResCam,
    GradCamElementwise,
    GradCamPlusPlus,
    XGradCam,
    LayerCam,
    EigenCam,
    EigenGradCam,
    ScoreCam,
    AblationCam,
    FullGrad,
    GuidedBackprop,
    GuidedGradCam,
}

/// What a method needs from the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Activations only.
    Activation,
    /// Activations and the backward pass.
    Gradient,
    /// Extra forward passes through (part of) the network: slow, with progress and cancel.
    Perturbation,
    /// Its own forward and backward pass over the whole network, to the input (Guided Grad-CAM
    /// also reads Grad-CAM at the stage).
    WholeNetwork,
}

impl Method {
    pub const ALL: [Method; 13] = [
        Method::GradCam,
        Method::HiResCam,
        Method::GradCamElementwise,
        Method::GradCamPlusPlus,
        Method::XGradCam,
        Method::LayerCam,
        Method::EigenCam,
        Method::EigenGradCam,
        Method::ScoreCam,
        Method::AblationCam,
        Method::FullGrad,
        Method::GuidedBackprop,
        Method::GuidedGradCam,
    ];

    /// The name on the command line and in file names (pytorch-grad-cam's spelling).
    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::HiResCam => "hirescam",
            Method::GradCamElementwise => "gradcam-elementwise",
            Method::GradCamPlusPlus => "gradcam++",
            Method::XGradCam => "xgradcam",
            Method::LayerCam => "layercam",
            Method::EigenCam => "eigencam",
            Method::EigenGradCam => "eigengradcam",
            Method::ScoreCam => "scorecam",
            Method::AblationCam => "ablationcam",
            Method::FullGrad => "fullgrad",
            Method::GuidedBackprop => "guided-backprop",
            Method::GuidedGradCam => "guided-gradcam",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        let wanted = match wanted.as_str() {
            "gradcampp" | "gradcam-plus-plus" | "gradcam-plusplus" | "gradcamplusplus" => "gradcam++",
            "grad-cam" => "gradcam",
            other => other,
        };
        Method::ALL.into_iter().find(|m| m.name() == wanted).ok_or_else(|| Error::UnknownMethod {
            name: s.into(),
            available: Method::ALL.map(Method::name).join(", "),
        })
    }

    pub fn kind(self) -> Kind {
        match self {
            Method::EigenCam => Kind::Activation,
            Method::ScoreCam | Method::AblationCam => Kind::Perturbation,
            Method::FullGrad | Method::GuidedBackprop | Method::GuidedGradCam => Kind::WholeNetwork,
            _ => Kind::Gradient,
        }
    }

    pub fn needs_gradient(self) -> bool {
        self.kind() == Kind::Gradient
    }

    /// As [`Method::stage_map`] with eigen-smoothing: the projection of the per-channel terms on
    /// their first principal component. Methods without channel terms are unchanged.
    pub fn eigen_smoothed_map(self, a: &Chw, g: &Chw) -> Option<Vec<f32>> {
        let terms = match self {
            Method::GradCam => scale_channels(a, &gradcam::weights(g)),
            Method::GradCamPlusPlus => scale_channels(a, &gradcam_plus_plus::weights(a, g)),
            Method::XGradCam => scale_channels(a, &xgradcam::weights(a, g)),
            Method::HiResCam => hirescam::terms(a, g),
            Method::GradCamElementwise => gradcam_elementwise::terms(a, g),
            Method::LayerCam => layercam::terms(a, g),
            _ => return self.stage_map(a, g),
        };
        Some(eigen::smoothed(&terms))
    }

    /// The map at stage resolution, before ReLU and normalisation, of a method that is a pure
    /// function of activations and gradients; `None` for perturbation methods, which need the
    /// network (see the engine).
    pub fn stage_map(self, a: &Chw, g: &Chw) -> Option<Vec<f32>> {
        Some(match self {
            Method::GradCam => gradcam::map(a, g),
            Method::HiResCam => hirescam::map(a, g),
            Method::GradCamElementwise => gradcam_elementwise::map(a, g),
            Method::GradCamPlusPlus => gradcam_plus_plus::map(a, g),
            Method::XGradCam => xgradcam::map(a, g),
            Method::LayerCam => layercam::map(a, g),
            Method::EigenCam => eigen::eigencam(a),
            Method::EigenGradCam => eigen::eigengradcam(a, g),
            Method::ScoreCam
            | Method::AblationCam
            | Method::FullGrad
            | Method::GuidedBackprop
            | Method::GuidedGradCam => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a long computation reports progress and learns that it should stop.
pub struct Control<'a> {
    /// Channels (forward passes) per batch for perturbation methods.
    pub batch_size: usize,
    pub progress: &'a (dyn Fn(usize, usize) + Sync),
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
}

impl Control<'_> {
    pub const DEFAULT_BATCH: usize = 32;

    /// Reports `done` of `total` and fails with [`Error::Cancelled`] if asked to stop.
    pub fn check(&self, done: usize, total: usize) -> Result<()> {
        (self.progress)(done, total);
        if (self.cancelled)() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}

/// A batched computation's error, saying what to do where the device ran out of memory. A batch
/// is as large as `--batch-size` ([`Control::batch_size`]) says, not sized from the memory that
/// is free, so on a GPU a large model or input fails with CUDA's bare `CUDA_ERROR_OUT_OF_MEMORY`
/// (cuBLAS: `CUBLAS_STATUS_ALLOC_FAILED`); this names the batch and the flag that shrinks it.
/// Every other error passes unchanged.
pub(crate) fn batch_error(e: impl Into<Error>, batch: usize) -> Error {
    let e = e.into();
    let text = e.to_string();
    let out_of_memory = ["OUT_OF_MEMORY", "out of memory", "ALLOC_FAILED"].iter().any(|s| text.contains(s));
    if out_of_memory {
        Error::Device(format!(
            "out of device memory running {batch} forward passes at once; lower --batch-size ({text})"
        ))
    } else {
        e
    }
}

impl Default for Control<'static> {
    fn default() -> Self {
        Control { batch_size: Self::DEFAULT_BATCH, progress: &|_, _| {}, cancelled: &|| false }
    }
}

/// ReLU, then `(M − min) / (1e-7 + max(M − min))`, in place.
pub fn relu_min_max(map: &mut [f32]) {
    map.iter_mut().for_each(|v| *v = if v.is_nan() { 0.0 } else { v.max(0.0) });
    min_max(map);
}

/// `(M − min) / (1e-7 + max(M − min))` in place, pytorch-grad-cam's `scale_cam_image`.
pub fn min_max(map: &mut [f32]) {
    let lo = map.iter().copied().fold(f32::INFINITY, f32::min);
    if !lo.is_finite() {
        return;
    }
    map.iter_mut().for_each(|v| *v -= lo);
    let hi = map.iter().copied().fold(0f32, f32::max);
    map.iter_mut().for_each(|v| *v /= 1e-7 + hi);
}

/// Bilinear resize with half-pixel centres and clamped borders, no antialiasing: OpenCV's
/// `INTER_LINEAR` on float images, which the reference uses to bring maps to the input size.
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w);
    let taps = |out: usize, size: usize| -> Vec<(usize, usize, f32)> {
        let scale = size as f64 / out as f64;
        (0..out)
            .map(|d| {
                let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
                let mut s = f.floor() as isize;
                let mut t = f - s as f32;
                if s < 0 {
                    s = 0;
                    t = 0.0;
                }
                if s as usize >= size - 1 {
                    s = size as isize - 1;
                    t = 0.0;
                }
                let s = s as usize;
                (s, (s + 1).min(size - 1), t)
            })
            .collect()
    };
    let (ys, xs) = (taps(out_h, h), taps(out_w, w));
    // Separable: every source row interpolated across once, then output rows blended from two
    // of those (the same arithmetic as the 2-D formula, in an order that vectorises).
    let across: Vec<f32> = src
        .chunks_exact(w)
        .flat_map(|row| xs.iter().map(move |&(x0, x1, tx)| row[x0] * (1.0 - tx) + row[x1] * tx))
        .collect();
    let mut out = vec![0.0; out_h * out_w];
    for (dst, &(y0, y1, ty)) in out.chunks_exact_mut(out_w).zip(&ys) {
        let (top, bottom) = (&across[y0 * out_w..(y0 + 1) * out_w], &across[y1 * out_w..(y1 + 1) * out_w]);
        for ((d, &t), &b) in dst.iter_mut().zip(top).zip(bottom) {
            *d = t * (1.0 - ty) + b * ty;
        }
    }
    out
}

/// A stage map brought to the input: ReLU, min-max at stage resolution, resize to the input's
/// frame, then min-max once more. The last step is the reference's layer aggregation, which runs even
/// for a single stage: it lifts a peak that falls between stage pixels back to exactly 1.
pub fn finish(stage_map: &[f32], h: usize, w: usize, frame: InputSize) -> Vec<f32> {
    let mut m = stage_map.to_vec();
    relu_min_max(&mut m);
    let mut out = resize_bilinear(&m, h, w, frame.height, frame.width);
    min_max(&mut out);
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Chw;

    /// 2 channels × 2×2, values chosen so every method's arithmetic can be done by hand.
    pub fn a() -> Chw {
        Chw::new(2, 2, 2, vec![1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 0.0, 1.0])
    }
    pub fn g() -> Chw {
        Chw::new(2, 2, 2, vec![1.0, -1.0, 2.0, 2.0, -1.0, -1.0, -1.0, -1.0])
    }
    pub fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (x, y)) in got.iter().zip(want).enumerate() {
            assert!((x - y).abs() < 1e-5, "position {i}: got {x}, want {y} (all: {got:?})");
        }
    }
}

/// One autograd pass from the input to `class`'s logit with the taps in `mode`: what FullGrad
/// (bias taps) and guided backprop (ReLU cuts) build on. Returns the input's `Var`, the taps
/// holding what the mode set aside, and the gradients of every leaf.
fn backward_in_mode<'a>(
    model: &'a dyn ImageClassifier,
    engine: EngineKind,
    input: &Tensor,
    class: usize,
    mode: Mode,
) -> Result<(Var, Taps<'a>, GradStore)> {
    let x = Var::from_tensor(input)?;
    let mut taps = Taps::new(model.stages(), engine, mode);
    let logits = model.forward(x.as_tensor(), &mut taps)?;
    check_all_stages_tapped(model, taps.stages_seen())?;
    let grads = logits.i((0, class))?.backward()?;
    Ok((x, taps, grads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_names_the_batch_size() {
        let oom = candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
        let e = batch_error(oom, 32).to_string();
        assert!(
            e.contains("--batch-size") && e.contains("32 forward passes") && e.contains("OUT_OF_MEMORY"),
            "{e}"
        );
        let other = batch_error(candle_core::Error::Msg("shape mismatch".into()), 32).to_string();
        assert!(!other.contains("--batch-size"), "{other}");
    }

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()).unwrap(), m);
        }
        assert_eq!(Method::parse("GradCAM_PlusPlus").unwrap(), Method::GradCamPlusPlus);
        assert!(Method::parse("scorecamm").unwrap_err().to_string().contains("gradcam++"));
    }

    #[test]
    fn min_max_follows_the_reference_epsilon() {
        let mut m = vec![-2.0, 0.0, 1.0, 3.0];
        relu_min_max(&mut m);
        let d = 1e-7 + 3.0;
        test_support::assert_close(&m, &[0.0, 0.0, 1.0 / d, 3.0 / d]);
        let mut flat = vec![5.0; 4];
        min_max(&mut flat);
        assert_eq!(flat, [0.0; 4]);
    }

    #[test]
    fn bilinear_resize_uses_half_pixel_centres() {
        // 1×2 → 1×4: centres at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        let out = resize_bilinear(&[0.0, 1.0], 1, 2, 1, 4);
        test_support::assert_close(&out, &[0.0, 0.25, 0.75, 1.0]);
        // Same size is the identity.
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&src, 3, 4, 3, 4), src);
    }

    #[test]
    fn eigen_smoothing_one_channel_is_the_plain_map() {
        // With a single channel the principal component is that channel: the eigen-smoothed map
        // is the plain one, centred, and identical once normalised.
        let a = Chw::new(1, 2, 3, vec![0.0, 1.0, 5.0, 2.0, 3.0, 1.0]);
        let g = Chw::new(1, 2, 3, vec![0.5; 6]);
        for m in [Method::GradCam, Method::HiResCam, Method::LayerCam, Method::XGradCam] {
            let mut plain = m.stage_map(&a, &g).unwrap();
            let mut smooth = m.eigen_smoothed_map(&a, &g).unwrap();
            let mean = plain.iter().sum::<f32>() / 6.0;
            plain.iter_mut().for_each(|v| *v -= mean);
            min_max(&mut plain);
            min_max(&mut smooth);
            test_support::assert_close(&smooth, &plain);
        }
    }
}
