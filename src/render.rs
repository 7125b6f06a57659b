//! Turning a map in [0, 1] into pixels: colormaps and the overlay of pytorch-grad-cam's
//! `show_cam_on_image` (SPEC §4).

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Colormap {
    /// OpenCV/matplotlib JET, the reference's choice.
    #[default]
    Jet,
    Viridis,
    Inferno,
    Turbo,
}

impl Colormap {
    pub const ALL: [Colormap; 4] = [Colormap::Jet, Colormap::Viridis, Colormap::Inferno, Colormap::Turbo];

    pub fn name(self) -> &'static str {
        match self {
            Colormap::Jet => "jet",
            Colormap::Viridis => "viridis",
            Colormap::Inferno => "inferno",
            Colormap::Turbo => "turbo",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Colormap::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            let names: Vec<&str> = Colormap::ALL.iter().map(|c| c.name()).collect();
            Error::UnknownColormap(s.into(), names.join(", "))
        })
    }

    /// Colour of LUT entry `i` (0..=255) as RGB in [0, 1].
    #[allow(clippy::excessive_precision)]
    pub fn rgb(self, i: u8) -> [f32; 3] {
        let x = i as f32 / 255.0;
        let poly = |c: &[[f32; 3]; 7]| -> [f32; 3] {
            let mut out = [0.0; 3];
            for (ch, o) in out.iter_mut().enumerate() {
                *o = c.iter().rev().fold(0.0, |acc, k| acc * x + k[ch]).clamp(0.0, 1.0);
            }
            out
        };
        match self {
            Colormap::Jet => {
                let f = |o: f32| (1.5 - (4.0 * x - o).abs()).clamp(0.0, 1.0);
                [f(3.0), f(2.0), f(1.0)]
            }
            // Degree-6 least-squares fits of matplotlib's maps (public-domain fits by Matt Zucker).
            Colormap::Viridis => poly(&[
                [0.277_727_3, 0.005_407_344, 0.334_099_8],
                [0.105_093_04, 1.404_613_5, 1.384_590_2],
                [-0.330_861_84, 0.214_847_56, 0.095_095_16],
                [-4.634_230_5, -5.799_101, -19.332_441],
                [6.228_27, 14.179_934, 56.690_55],
                [4.776_385, -13.745_146, -65.353_03],
                [-5.435_456, 4.645_852_6, 26.312_435],
            ]),
            Colormap::Inferno => poly(&[
                [0.000_218_940_4, 0.001_651_004_6, -0.019_480_899],
                [0.106_513_42, 0.563_956_4, 3.932_712_4],
                [11.602_493, -3.972_853_7, -15.942_394],
                [-41.703_996, 17.436_399, 44.354_145],
                [77.162_935, -33.402_36, -81.807_3],
                [-71.319_43, 32.626_064, 73.209_52],
                [25.131_126, -12.242_669, -23.070_326],
            ]),
            Colormap::Turbo => poly(&[
                [0.135_721_38, 0.091_402_61, 0.106_673_3],
                [4.615_392_6, 2.194_188_4, 12.641_946],
                [-42.660_324, 4.842_966_6, -60.582_05],
                [132.131_08, -14.185_033, 110.362_77],
                [-152.942_4, 4.277_298_6, -89.903_11],
                [59.286_38, 2.829_566, 27.348_25],
                [0.0, 0.0, 0.0],
            ]),
        }
    }
}

/// LUT index of a map value, the reference's `np.uint8(255 * mask)` (truncation).
fn lut_index(v: f32) -> u8 {
    (255.0 * v.clamp(0.0, 1.0)) as u8
}

/// The heat map alone, `size`×`size`.
pub fn heatmap(map: &[f32], width: u32, height: u32, colormap: Colormap) -> RgbImage {
    assert_eq!(map.len(), (width * height) as usize);
    RgbImage::from_fn(width, height, |x, y| {
        let c = colormap.rgb(lut_index(map[(y * width + x) as usize]));
        Rgb(c.map(|v| (v * 255.0) as u8))
    })
}

/// `show_cam_on_image`: out = α·heat + (1−α)·img, then divided by its maximum. α = 0.5 in the
/// reference.
pub fn overlay(view: &RgbImage, map: &[f32], colormap: Colormap, alpha: f32) -> RgbImage {
    let (w, h) = view.dimensions();
    assert_eq!(map.len(), (w * h) as usize, "map and image sizes differ");
    let blended: Vec<[f32; 3]> = view
        .pixels()
        .zip(map)
        .map(|(p, &m)| {
            let heat = colormap.rgb(lut_index(m));
            std::array::from_fn(|c| alpha * heat[c] + (1.0 - alpha) * p.0[c] as f32 / 255.0)
        })
        .collect();
    let max = blended.iter().flatten().copied().fold(0f32, f32::max).max(f32::MIN_POSITIVE);
    RgbImage::from_fn(w, h, |x, y| {
        let px = blended[(y * w + x) as usize];
        Rgb(px.map(|v| (255.0 * v / max) as u8))
    })
}

/// A signed map (a difference of two maps) on a diverging scale over the image in grey: blue
/// where it is negative, red where positive, white-washed towards 0, full colour at ±`scale`.
/// The image shows through faintly so that the difference keeps its place in the picture.
pub fn diverging_overlay(view: &RgbImage, d: &[f32], scale: f32) -> RgbImage {
    let (w, h) = view.dimensions();
    assert_eq!(d.len(), (w * h) as usize, "difference and image sizes differ");
    let scale = scale.max(f32::MIN_POSITIVE);
    RgbImage::from_fn(w, h, |x, y| {
        let i = (y * w + x) as usize;
        let t = (d[i] / scale).clamp(-1.0, 1.0);
        let hue = if t >= 0.0 { [0.84, 0.15, 0.16] } else { [0.13, 0.4, 0.67] };
        let p = view.get_pixel(x, y).0;
        let grey = (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32) / 255.0;
        let base = 0.75 + 0.25 * grey;
        Rgb(std::array::from_fn(|c| (255.0 * (t.abs() * hue[c] + (1.0 - t.abs()) * base)) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverging_is_red_above_blue_below_and_pale_at_zero() {
        let view = RgbImage::from_pixel(3, 1, Rgb([0, 0, 0]));
        let out = diverging_overlay(&view, &[0.5, 0.0, -0.5], 0.5);
        let [r, g, b] = out.get_pixel(0, 0).0;
        assert!(r > 200 && g < 50 && b < 50, "{r} {g} {b}");
        let [r, g, b] = out.get_pixel(2, 0).0;
        assert!(b > 150 && r < 50, "{r} {g} {b}");
        let [r, g, b] = out.get_pixel(1, 0).0;
        assert!(r == g && g == b && r > 180, "{r} {g} {b}");
    }

    #[test]
    fn jet_runs_blue_to_red() {
        assert_eq!(Colormap::Jet.rgb(0), [0.0, 0.0, 0.5]);
        assert_eq!(Colormap::Jet.rgb(255), [0.5, 0.0, 0.0]);
        let mid = Colormap::Jet.rgb(128);
        assert!(mid[1] > 0.99);
    }

    #[test]
    fn every_colormap_is_in_range_and_varies() {
        for cm in Colormap::ALL {
            let (lo, hi) = (cm.rgb(0), cm.rgb(255));
            assert_ne!(lo, hi, "{}", cm.name());
            for i in 0..=255 {
                assert!(cm.rgb(i).iter().all(|v| (0.0..=1.0).contains(v)));
            }
            assert_eq!(Colormap::parse(cm.name()).unwrap(), cm);
        }
    }

    #[test]
    fn overlay_matches_the_reference_formula() {
        let view = RgbImage::from_pixel(2, 1, Rgb([255, 0, 0]));
        let out = overlay(&view, &[0.0, 1.0], Colormap::Jet, 0.5);
        // Pixel 0: 0.5·(0,0,0.5) + 0.5·(1,0,0) = (0.5, 0, 0.25); pixel 1: (0.75, 0, 0). Max 0.75.
        assert_eq!(out.get_pixel(0, 0).0, [170, 0, 85]);
        assert_eq!(out.get_pixel(1, 0).0, [255, 0, 0]);
    }
}
