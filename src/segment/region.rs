//! The target region of a segmentation explanation, per class: the user's choice, and the masks
//! it makes on the model's output frame.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::prediction::SegmentPrediction;
use crate::dataset::region::{PixelBox, Region};
use crate::preprocess::{InputSize, ModelInput};

/// Which pixels a class's score is summed over.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RegionTarget {
    /// The pixels the model labels with the class (pytorch-grad-cam's tutorial).
    #[default]
    Predicted,
    /// Every pixel.
    Whole,
    /// A box in the original image's pixels, `[x0, x1) × [y0, y1)`.
    Box(PixelBox),
    /// A mask image of the original image's size: a pixel > 0 is inside.
    Mask(PathBuf),
}

impl RegionTarget {
    /// `predicted`, `whole`, `x0,y0,x1,y1` (original image pixels) or a mask image's path.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "predicted" | "" => return Ok(RegionTarget::Predicted),
            "whole" | "image" => return Ok(RegionTarget::Whole),
            _ => {}
        }
        let numbers: Vec<&str> = s.split(',').map(str::trim).collect();
        if numbers.len() == 4 && numbers.iter().all(|n| n.parse::<f64>().is_ok()) {
            let v: Vec<f64> = numbers.iter().map(|n| n.parse().expect("checked")).collect();
            return Ok(RegionTarget::Box(PixelBox { x0: v[0], y0: v[1], x1: v[2], y1: v[3] }));
        }
        let path = PathBuf::from(s);
        if path.is_file() {
            return Ok(RegionTarget::Mask(path));
        }
        Err(format!(
            "--region {s}: give predicted, whole, a box x0,y0,x1,y1 in the image's pixels, or a mask image (no such file)"
        ))
    }

    pub fn describe(&self) -> String {
        match self {
            RegionTarget::Predicted => "the pixels predicted as the class".into(),
            RegionTarget::Whole => "the whole image".into(),
            RegionTarget::Box(b) => format!("the box {b}"),
            RegionTarget::Mask(p) => format!("the mask {}", p.display()),
        }
    }
}

/// Per class, the 0/1 mask its score is summed over, on the output's H×W frame.
#[derive(Debug, Clone)]
pub struct TargetMasks {
    height: usize,
    width: usize,
    masks: Masks,
    /// What they were made of, for reports.
    pub target: RegionTarget,
}

#[derive(Debug, Clone)]
enum Masks {
    /// Class c's mask: the pixels labelled c.
    PerClass { labels: Vec<u32>, classes: usize },
    /// One mask for every class.
    Shared(Vec<bool>),
}

/// A target checked against the image before the network runs (a box inside the image, a mask
/// that reads, a region the crop keeps); the masks themselves wait for the prediction
/// ([`TargetRule::masks`]), which the engine's first forward pass gives.
#[derive(Debug, Clone)]
pub struct TargetRule {
    target: RegionTarget,
    /// The user's region on the input frame; `None` for the prediction's own regions and the
    /// whole image.
    region: Option<Region>,
}

impl TargetRule {
    pub fn new(target: &RegionTarget, input: &ModelInput) -> Result<Self, String> {
        let g = &input.geometry;
        let region = match target {
            RegionTarget::Predicted | RegionTarget::Whole => None,
            RegionTarget::Box(b) => {
                if let Some(problem) = b.problem(g.original.0, g.original.1) {
                    return Err(format!("--region: {problem}"));
                }
                Some(Region::from_boxes(&[*b], g))
            }
            RegionTarget::Mask(path) => {
                let mask =
                    image::open(path).map_err(|e| format!("--region {}: {e}", path.display()))?.to_luma8();
                Some(Region::from_mask(&mask, g).map_err(|e| format!("--region {}: {e}", path.display()))?)
            }
        };
        if region.as_ref().is_some_and(Region::is_empty) {
            return Err(format!(
                "--region {}: no pixel of it is in the part of the image the model sees (after resize and crop)",
                target.describe()
            ));
        }
        Ok(TargetRule { target: target.clone(), region })
    }

    /// The masks on the prediction's output frame.
    pub fn masks(&self, prediction: &SegmentPrediction) -> TargetMasks {
        let (height, width) = (prediction.height, prediction.width);
        let masks = match (&self.target, &self.region) {
            (_, Some(region)) => Masks::Shared(on_output(region, height, width)),
            (RegionTarget::Predicted, None) => {
                Masks::PerClass { labels: prediction.labels.clone(), classes: prediction.classes }
            }
            (_, None) => Masks::Shared(vec![true; height * width]),
        };
        TargetMasks { height, width, masks, target: self.target.clone() }
    }
}

impl TargetMasks {
    /// The pixels class `class`'s score is summed over.
    pub fn pixels(&self, class: usize) -> usize {
        match &self.masks {
            Masks::PerClass { labels, .. } => labels.iter().filter(|&&l| l as usize == class).count(),
            Masks::Shared(inside) => inside.iter().filter(|&&b| b).count(),
        }
    }

    /// (1, C, H, W) for per-class masks, (1, 1, H, W) for a shared one (it broadcasts).
    pub fn tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        let (h, w) = (self.height, self.width);
        match &self.masks {
            Masks::PerClass { labels, classes } => {
                let mut v = vec![0f32; classes * h * w];
                for (p, &l) in labels.iter().enumerate() {
                    v[l as usize * h * w + p] = 1.0;
                }
                Tensor::from_vec(v, (1, *classes, h, w), device)
            }
            Masks::Shared(inside) => {
                let v: Vec<f32> = inside.iter().map(|&b| f32::from(u8::from(b))).collect();
                Tensor::from_vec(v, (1, 1, h, w), device)
            }
        }
    }
}

/// A region of the input frame on the output's H×W frame (nearest neighbour; the same frame
/// where the model's output has its input's size, as torchvision's models do).
fn on_output(region: &Region, height: usize, width: usize) -> Vec<bool> {
    let InputSize { height: fh, width: fw } = region.frame;
    if (height, width) == (fh, fw) {
        return region.inside.clone();
    }
    let source =
        |o: usize, out: usize, n: usize| (((o as f64 + 0.5) * n as f64 / out as f64) as usize).min(n - 1);
    let mut inside = vec![false; height * width];
    for i in 0..height {
        let y = source(i, height, fh);
        for j in 0..width {
            inside[i * width + j] = region.inside[y * fw + source(j, width, fw)];
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(RegionTarget::parse("predicted").unwrap(), RegionTarget::Predicted);
        assert_eq!(RegionTarget::parse("whole").unwrap(), RegionTarget::Whole);
        assert_eq!(
            RegionTarget::parse("1, 2,30,40.5").unwrap(),
            RegionTarget::Box(PixelBox { x0: 1.0, y0: 2.0, x1: 30.0, y1: 40.5 })
        );
        let e = RegionTarget::parse("1,2,3").unwrap_err();
        assert!(e.contains("x0,y0,x1,y1"), "{e}");
        assert!(RegionTarget::parse("/no/such/mask.png").is_err());
    }

    #[test]
    fn a_region_is_carried_onto_a_smaller_output() {
        let region = Region {
            frame: InputSize::square(4),
            inside: [[0, 0, 1, 1], [0, 0, 1, 1], [0; 4], [0; 4]].concat().iter().map(|&b| b == 1).collect(),
        };
        assert_eq!(on_output(&region, 2, 2), [false, true, false, false]);
        assert_eq!(on_output(&region, 4, 4), region.inside);
    }

    #[test]
    fn a_wide_region_keeps_its_rows_and_columns_apart() {
        // 2 high × 4 wide, the right half of the bottom row. A 1×2 output samples (nearest,
        // centres) row 1 and columns 1 and 3: only its second pixel is in.
        let region = Region {
            frame: InputSize::new(2, 4),
            inside: [0, 0, 0, 0, 0, 0, 1, 1].iter().map(|&b| b == 1).collect(),
        };
        assert_eq!(on_output(&region, 1, 2), [false, true]);
        assert_eq!(on_output(&region, 2, 4), region.inside);
    }
}
