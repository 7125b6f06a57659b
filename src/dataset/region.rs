//! Where the object is: boxes and masks carried from the original image's pixels onto the
//! frame the maps live on, by the very steps the image takes (resize, centre crop; SPEC §10).

use image::GrayImage;

use crate::preprocess::{CropGeometry, InputSize};

/// A box in the original image's pixels: x right, y down, covering `[x0, x1) × [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelBox {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl PixelBox {
    /// Pascal VOC's 1-based inclusive corners, `xmin..=xmax`, as `[xmin − 1, xmax)`.
    pub fn from_voc(xmin: f64, ymin: f64, xmax: f64, ymax: f64) -> Self {
        PixelBox { x0: xmin - 1.0, y0: ymin - 1.0, x1: xmax, y1: ymax }
    }

    /// Why this box cannot be an object of a `width`×`height` image, if it cannot: inverted or
    /// empty, or reaching outside the image (an annotation of another image, or of the image
    /// before a resize).
    pub fn problem(&self, width: usize, height: usize) -> Option<String> {
        let (w, h) = (width as f64, height as f64);
        let finite = [self.x0, self.y0, self.x1, self.y1].iter().all(|v| v.is_finite());
        if !finite {
            Some(format!("box {self} has a coordinate that is not a number"))
        } else if self.x1 <= self.x0 || self.y1 <= self.y0 {
            Some(format!("box {self} is inverted or empty (needs x0 < x1 and y0 < y1)"))
        } else if self.x0 < 0.0 || self.y0 < 0.0 || self.x1 > w || self.y1 > h {
            Some(format!("box {self} reaches outside the {width}×{height} image"))
        } else {
            None
        }
    }
}

impl std::fmt::Display for PixelBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})–({}, {})", self.x0, self.y0, self.x1, self.y1)
    }
}

/// The pixels of the frame that lie inside the object, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub frame: InputSize,
    pub inside: Vec<bool>,
}

impl Region {
    /// The union of `boxes` on the frame: a pixel is inside when its centre lies in a mapped box
    /// (`x′ = x·W′/w − left`, `y′ = y·H′/h − top`).
    pub fn from_boxes(boxes: &[PixelBox], g: &CropGeometry) -> Self {
        let InputSize { height: fh, width: fw } = g.frame;
        let (w, h) = (g.original.0 as f64, g.original.1 as f64);
        let (sx, sy) = (g.resized.0 as f64 / w, g.resized.1 as f64 / h);
        let mut inside = vec![false; fh * fw];
        for b in boxes {
            let (x0, x1) = (b.x0 * sx - g.left as f64, b.x1 * sx - g.left as f64);
            let (y0, y1) = (b.y0 * sy - g.top as f64, b.y1 * sy - g.top as f64);
            // Centres j + 0.5 in [x0, x1): j from ceil(x0 − 0.5) to ceil(x1 − 0.5) − 1.
            let span = |lo: f64, hi: f64, n: usize| {
                let first = (lo - 0.5).ceil().clamp(0.0, n as f64) as usize;
                let end = (hi - 0.5).ceil().clamp(0.0, n as f64) as usize;
                first..end.max(first)
            };
            let columns = span(x0, x1, fw);
            for i in span(y0, y1, fh) {
                inside[i * fw + columns.start..i * fw + columns.end].fill(true);
            }
        }
        Region { frame: g.frame, inside }
    }

    /// A mask of the original image's size (a pixel > 0 is inside), resized with nearest
    /// neighbour to the resized size and cropped as the image is.
    pub fn from_mask(mask: &GrayImage, g: &CropGeometry) -> Result<Self, String> {
        let (w, h) = (mask.width() as usize, mask.height() as usize);
        if (w, h) != g.original {
            return Err(format!(
                "the mask is {w}×{h} pixels, the image {}×{}: a mask must have the image's size",
                g.original.0, g.original.1
            ));
        }
        let InputSize { height: fh, width: fw } = g.frame;
        let (nw, nh) = g.resized;
        // PIL's NEAREST: output pixel o samples input floor((o + 0.5) · in / out).
        let source = |o: usize, out: usize, input: usize| {
            (((o as f64 + 0.5) * input as f64 / out as f64) as usize).min(input - 1)
        };
        let columns: Vec<usize> = (0..fw).map(|j| source(j + g.left, nw, w)).collect();
        let mut inside = vec![false; fh * fw];
        for i in 0..fh {
            let y = source(i + g.top, nh, h);
            for (j, &x) in columns.iter().enumerate() {
                inside[i * fw + j] = mask.get_pixel(x as u32, y as u32).0[0] > 0;
            }
        }
        Ok(Region { frame: g.frame, inside })
    }

    /// No pixel of the frame is inside: the object was cropped away.
    pub fn is_empty(&self) -> bool {
        !self.inside.contains(&true)
    }

    pub fn union(mut self, other: &Region) -> Region {
        self.inside.iter_mut().zip(&other.inside).for_each(|(a, b)| *a |= b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::Preprocess;

    fn geometry(w: usize, h: usize, resize: usize, size: impl Into<InputSize>) -> CropGeometry {
        CropGeometry::new(
            w,
            h,
            &Preprocess { input_size: size.into(), resize, mean: [0.0; 3], std: [1.0; 3] },
        )
    }

    fn rows(r: &Region) -> Vec<String> {
        r.inside
            .chunks(r.frame.width)
            .map(|row| row.iter().map(|&b| if b { '#' } else { '.' }).collect())
            .collect()
    }

    /// No resize, no crop: a box covers exactly the pixels whose centres it contains.
    #[test]
    fn a_box_on_an_unchanged_frame_covers_its_pixels() {
        let g = geometry(4, 4, 4, 4);
        let r = Region::from_boxes(&[PixelBox { x0: 1.0, y0: 0.0, x1: 3.0, y1: 2.0 }], &g);
        assert_eq!(rows(&r), [".##.", ".##.", "....", "...."]);
        // A box edge through a pixel's centre: the centre at 2.5 is in [2.5, 4), not in [0, 2.5).
        let r = Region::from_boxes(&[PixelBox { x0: 0.0, y0: 0.0, x1: 2.5, y1: 1.0 }], &g);
        assert_eq!(rows(&r)[0], "##..");
    }

    /// 8×4 resized to 4×2 (shorter side 2), crop 2×2 at left 1: the box [4, 8) × [0, 4) of the
    /// original is x′ ∈ [2 − 1, 4 − 1) = [1, 3), so only the crop's right column.
    #[test]
    fn boxes_follow_the_resize_and_the_centre_crop() {
        let g = geometry(8, 4, 2, 2);
        assert_eq!((g.resized, g.left, g.top, g.frame), ((4, 2), 1, 0, InputSize::square(2)));
        let r = Region::from_boxes(&[PixelBox { x0: 4.0, y0: 0.0, x1: 8.0, y1: 4.0 }], &g);
        assert_eq!(rows(&r), [".#", ".#"]);
        // The left quarter of the original is cropped away entirely.
        let gone = Region::from_boxes(&[PixelBox { x0: 0.0, y0: 0.0, x1: 2.0, y1: 4.0 }], &g);
        assert!(gone.is_empty());
    }

    /// A 500×375 image at the ImageNet preprocessing (resize 256, crop 224): scale 256/375, the
    /// resized width round(500·256/375) = 341, left = round((341 − 224)/2) = 58 (ties to even).
    #[test]
    fn imagenet_geometry_maps_a_box_by_hand() {
        let g = geometry(500, 375, 256, 224);
        assert_eq!((g.resized, g.left, g.top), ((341, 256), 58, 16));
        let b = PixelBox { x0: 100.0, y0: 50.0, x1: 300.0, y1: 200.0 };
        let r = Region::from_boxes(&[b], &g);
        // x′ ∈ [100·341/500 − 58, 300·341/500 − 58) = [10.2, 146.6): columns 10..=146.
        // y′ ∈ [50·256/375 − 16, 200·256/375 − 16) = [18.13, 120.53): rows 18..=120.
        let count = r.inside.iter().filter(|&&b| b).count();
        assert_eq!(count, (146 - 10 + 1) * (120 - 18 + 1));
        assert!(r.inside[18 * 224 + 10] && !r.inside[17 * 224 + 10] && !r.inside[18 * 224 + 9]);
        assert!(r.inside[120 * 224 + 146] && !r.inside[121 * 224 + 146] && !r.inside[120 * 224 + 147]);
    }

    #[test]
    fn voc_corners_are_one_based_and_inclusive() {
        assert_eq!(PixelBox::from_voc(1.0, 1.0, 10.0, 5.0), PixelBox { x0: 0.0, y0: 0.0, x1: 10.0, y1: 5.0 });
    }

    #[test]
    fn bad_boxes_say_what_is_wrong() {
        let inverted = PixelBox { x0: 5.0, y0: 0.0, x1: 2.0, y1: 3.0 };
        assert!(inverted.problem(10, 10).unwrap().contains("inverted"));
        let outside = PixelBox { x0: 0.0, y0: 0.0, x1: 11.0, y1: 3.0 };
        assert!(outside.problem(10, 10).unwrap().contains("outside the 10×10 image"));
        assert_eq!(PixelBox { x0: 0.0, y0: 0.0, x1: 10.0, y1: 10.0 }.problem(10, 10), None);
    }

    /// A mask goes through the same resize (nearest) and crop as the image.
    #[test]
    fn a_mask_is_resized_and_cropped_like_the_image() {
        // 8×4, right half set; resized to 4×2, crop at left 1 of width 2: columns 1, 2 of the
        // resized mask sample original columns 3 and 5.
        let mask = GrayImage::from_fn(8, 4, |x, _| image::Luma([if x >= 4 { 255 } else { 0 }]));
        let g = geometry(8, 4, 2, 2);
        let r = Region::from_mask(&mask, &g).unwrap();
        assert_eq!(rows(&r), [".#", ".#"]);
        let wrong = GrayImage::new(4, 4);
        assert!(Region::from_mask(&wrong, &g).unwrap_err().contains("the image's size"));
    }

    /// A frame 3 wide and 2 high over an 8×4 image: the height binds (resized 4×2), the crop
    /// starts at left round(0.5) = 0, so the original's right half is the frame's last column.
    #[test]
    fn boxes_and_masks_land_on_a_wide_frame() {
        let g = geometry(8, 4, 2, InputSize::new(2, 3));
        assert_eq!((g.resized, g.left, g.top), ((4, 2), 0, 0));
        let r = Region::from_boxes(&[PixelBox { x0: 4.0, y0: 0.0, x1: 8.0, y1: 4.0 }], &g);
        assert_eq!(rows(&r), ["..#", "..#"]);
        let mask = GrayImage::from_fn(8, 4, |x, _| image::Luma([if x >= 4 { 255 } else { 0 }]));
        assert_eq!(Region::from_mask(&mask, &g).unwrap(), r);
    }
}
