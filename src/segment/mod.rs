//! Segmentation models through the classifier contract. A network whose output is a score map
//! (N, C, H, W) instead of logits (N, C) is explained for a *region target*, as pytorch-grad-cam's
//! `SemanticSegmentationTarget(c, mask)` does: the score of class `c` is `Σ out[c] · mask_c` over
//! the output's pixels. [`RegionScores`] wraps the network so that it returns those sums as its
//! "logits": every method camscope has (the gradient ones, EigenCAM, Score-CAM, Ablation-CAM)
//! then explains a region exactly as it explains a class, with no method knowing about regions.
//!
//! The masks are fixed per image, before the methods run, by the engine's first forward pass
//! ([`ImageMasks`]): by default the pixels
//! the model labels `c` in its own prediction on the unchanged image (the tutorial's choice —
//! Score-CAM's and Ablation-CAM's perturbed passes keep that mask, they do not recompute it), or
//! one region for every class: the whole image, or a box / mask the user gives in the original
//! image's pixels, carried onto the input frame by the steps the image takes.

mod prediction;
mod region;
mod scores;

pub use crate::contract::VOC_CLASSES;
pub use prediction::{palette_colour, SegmentPrediction};
pub use region::{RegionTarget, TargetMasks, TargetRule};
pub use scores::{FixedMasks, ImageMasks, RegionScores};

use std::sync::Arc;

use crate::contract::{EngineKind, ImageClassifier, Model, Task};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::preprocess::ModelInput;

/// What a segmentation model's engine knows of its image besides the maps: the prediction, and
/// the masks each class's score sums over.
pub struct Prepared {
    pub prediction: SegmentPrediction,
    pub masks: TargetMasks,
}

/// The engine of `network` (`model`'s, maybe retapped) on `input`; for a segmentation model,
/// the engine of its region scores for `target`, with its prediction. What every front end
/// opens an image with.
///
/// The target is checked before the network runs; its masks are fixed by the trace's forward
/// pass ([`ImageMasks`]), so a segmentation image costs no more passes than a classifier's.
pub fn engine_for(
    model: &Model,
    network: Arc<dyn ImageClassifier>,
    input: &ModelInput,
    device: &candle_core::Device,
    kind: EngineKind,
    target: &RegionTarget,
) -> Result<(Engine, Option<Prepared>)> {
    let x = input.tensor.to_device(device)?;
    match model.task {
        Task::Classification if *target != RegionTarget::Predicted => Err(Error::Usage(format!(
            "--region applies to segmentation models; {} is a classifier",
            model.name
        ))),
        Task::Classification => Ok((Engine::new(network, x, kind)?, None)),
        Task::Segmentation => {
            let rule = TargetRule::new(target, input).map_err(Error::Usage)?;
            let masks = Arc::new(ImageMasks::new(rule));
            let name = network.name();
            let engine = Engine::new(Arc::new(RegionScores::new(network, masks.clone())), x, kind);
            let unfit = |problem: &str| Error::Model(format!("model {name}: {problem}"));
            match (masks.fixed(), engine) {
                (Some(Err(problem)), _) => Err(unfit(problem)),
                (_, Err(e)) => Err(e),
                (Some(Ok(fixed)), Ok(engine)) => {
                    let prepared =
                        Prepared { prediction: fixed.prediction.clone(), masks: fixed.masks.clone() };
                    Ok((engine, Some(prepared)))
                }
                (None, Ok(_)) => Err(unfit("the engine's trace never ran the network")),
            }
        }
    }
}

/// One class of the prediction, for reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PresentClass {
    pub index: usize,
    pub label: String,
    /// Its pixels over the output's pixels.
    pub share: f32,
    pub pixels: usize,
}

/// What an explanation of a segmentation model adds: the prediction and the region explained.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub classes_present: Vec<PresentClass>,
    /// The target region, in words.
    pub region: String,
    /// Pixels of the output the target class's score is summed over.
    pub target_pixels: usize,
    /// The score map's height and width.
    pub output_size: [usize; 2],
    /// The prediction, a colour per class.
    #[serde(skip)]
    pub picture: image::RgbImage,
}

impl Prepared {
    /// Checks that `class`'s region has pixels: an empty region's score is 0 whatever the image,
    /// so every map of it would be blank.
    pub fn check_target(&self, class: usize, labels: &[String]) -> Result<()> {
        if self.masks.pixels(class) > 0 {
            return Ok(());
        }
        let label = labels.get(class).map_or("?", String::as_str);
        let present: Vec<String> = self
            .prediction
            .present
            .iter()
            .take(8)
            .map(|c| format!("{} {:.0}%", labels.get(c.index).map_or("?", String::as_str), 100.0 * c.share))
            .collect();
        Err(Error::Usage(match self.masks.target {
            RegionTarget::Predicted => format!(
                "class {class} ({label}) covers no pixel of the model's prediction, so there is no region to explain (present: {}); explain it over the whole image with --region whole, or give a box",
                present.join(", ")
            ),
            _ => format!("the region {} holds no pixel of the output", self.masks.target.describe()),
        }))
    }

    /// The classes of the prediction, most pixels first, with their labels: what every front end
    /// lists.
    pub fn present_classes(&self, labels: &[String]) -> Vec<PresentClass> {
        self.prediction
            .present
            .iter()
            .map(|c| PresentClass {
                index: c.index,
                label: labels.get(c.index).cloned().unwrap_or_else(|| format!("class {}", c.index)),
                share: c.share,
                pixels: c.pixels,
            })
            .collect()
    }

    pub fn summary(&self, class: usize, labels: &[String]) -> Summary {
        let p = &self.prediction;
        Summary {
            classes_present: self.present_classes(labels),
            region: self.masks.target.describe(),
            target_pixels: self.masks.pixels(class),
            output_size: [p.height, p.width],
            picture: p.picture(),
        }
    }
}
