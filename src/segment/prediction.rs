//! What a segmentation model predicts for one image: the arg-max class of every output pixel,
//! and the classes present with the share of pixels each takes.

use candle_core::{DType, Tensor};
use serde::Serialize;

#[cfg(test)]
use crate::contract::VOC_CLASSES;

/// One class the prediction labels some pixels with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassShare {
    pub index: usize,
    /// Its pixels over all the output's pixels.
    pub share: f32,
    pub pixels: usize,
}

#[derive(Debug, Clone)]
pub struct SegmentPrediction {
    pub classes: usize,
    pub height: usize,
    pub width: usize,
    /// Row-major arg-max class per output pixel (the first of equal scores, as `torch.argmax`).
    pub labels: Vec<u32>,
    /// The classes present, most pixels first (ties: lower index first).
    pub present: Vec<ClassShare>,
}

impl SegmentPrediction {
    /// The prediction of a (1, C, H, W) score map.
    pub fn of(out: &Tensor) -> Result<Self, String> {
        let (classes, height, width) = match out.dims() {
            [1, c, h, w] => (*c, *h, *w),
            d => return Err(format!("returned a score map of shape {d:?}, not (1, classes, H, W)")),
        };
        let scores: Vec<f32> = out
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(|e| e.to_string())?;
        let plane = height * width;
        let mut labels = vec![0u32; plane];
        let mut best = scores[..plane].to_vec();
        for c in 1..classes {
            for (p, &s) in scores[c * plane..(c + 1) * plane].iter().enumerate() {
                if s > best[p] {
                    best[p] = s;
                    labels[p] = c as u32;
                }
            }
        }
        let mut counts = vec![0usize; classes];
        labels.iter().for_each(|&l| counts[l as usize] += 1);
        let mut present: Vec<ClassShare> = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(index, &pixels)| ClassShare { index, share: pixels as f32 / plane as f32, pixels })
            .collect();
        present.sort_by(|a, b| b.pixels.cmp(&a.pixels).then(a.index.cmp(&b.index)));
        Ok(SegmentPrediction { classes, height, width, labels, present })
    }

    pub fn pixels_of(&self, class: usize) -> usize {
        self.present.iter().find(|c| c.index == class).map_or(0, |c| c.pixels)
    }

    /// The class a segmentation is explained for when none is named: the one with the most
    /// pixels, passing over a background class (named "background" in any case, with or
    /// without underscores) while any other class is present — "why is this a cat", not "why
    /// is the rest background".
    pub fn default_class(&self, labels: &[String]) -> usize {
        let is_background =
            |c: usize| labels.get(c).is_some_and(|l| l.trim_matches('_').eq_ignore_ascii_case("background"));
        self.present.iter().find(|c| !is_background(c.index)).or(self.present.first()).map_or(0, |c| c.index)
    }

    /// The prediction as a picture: a colour per class (Pascal VOC's palette).
    pub fn picture(&self) -> image::RgbImage {
        image::RgbImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            image::Rgb(palette_colour(self.labels[y as usize * self.width + x as usize] as usize))
        })
    }
}

/// Pascal VOC's colour of class `c` (the bits of `c` spread over the three channels, high bits
/// first): background black, aeroplane dark red, … — the colours people know from its masks.
pub fn palette_colour(c: usize) -> [u8; 3] {
    let mut rgb = [0u8; 3];
    let mut c = c;
    for shift in (0..8).rev() {
        for (k, channel) in rgb.iter_mut().enumerate() {
            *channel |= (((c >> k) & 1) as u8) << shift;
        }
        c >>= 3;
        if c == 0 {
            break;
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(classes: usize, h: usize, w: usize, winners: &[u32]) -> Tensor {
        let mut v = vec![0f32; classes * h * w];
        for (p, &c) in winners.iter().enumerate() {
            v[c as usize * h * w + p] = 1.0;
        }
        Tensor::from_vec(v, (1, classes, h, w), &candle_core::Device::Cpu).unwrap()
    }

    #[test]
    fn arg_max_and_shares_of_a_hand_made_map() {
        let p = SegmentPrediction::of(&map(3, 2, 3, &[2, 2, 0, 2, 1, 1])).unwrap();
        assert_eq!(p.labels, [2, 2, 0, 2, 1, 1]);
        let order: Vec<(usize, usize)> = p.present.iter().map(|c| (c.index, c.pixels)).collect();
        assert_eq!(order, [(2, 3), (1, 2), (0, 1)]);
        assert!((p.present[0].share - 0.5).abs() < 1e-6);
        assert_eq!(p.pixels_of(1), 2);
        assert_eq!(p.pixels_of(5), 0);
    }

    #[test]
    fn ties_go_to_the_first_class_as_torch_argmax() {
        let t = Tensor::zeros((1, 3, 1, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert_eq!(SegmentPrediction::of(&t).unwrap().labels, [0, 0]);
    }

    #[test]
    fn background_is_passed_over_while_something_else_is_present() {
        let labels: Vec<String> = VOC_CLASSES.iter().map(|s| s.to_string()).collect();
        let p = SegmentPrediction::of(&map(21, 1, 4, &[0, 0, 0, 8])).unwrap();
        assert_eq!(p.default_class(&labels), 8);
        let only_background = SegmentPrediction::of(&map(21, 1, 2, &[0, 0])).unwrap();
        assert_eq!(only_background.default_class(&labels), 0);
    }

    #[test]
    fn voc_palette() {
        assert_eq!(palette_colour(0), [0, 0, 0]);
        assert_eq!(palette_colour(1), [128, 0, 0]);
        assert_eq!(palette_colour(2), [0, 128, 0]);
        assert_eq!(palette_colour(8), [64, 0, 0]);
        assert_eq!(palette_colour(15), [192, 128, 128]);
    }

    #[test]
    fn a_map_of_another_rank_is_refused() {
        let t = Tensor::zeros((1, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(SegmentPrediction::of(&t).unwrap_err().contains("(1, classes, H, W)"));
    }
}
