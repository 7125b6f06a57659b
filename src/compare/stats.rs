//! What two maps of one image say about each other. Maps are in [0, 1] (SPEC §2), on the same
//! frame; a model whose input is another size has its map resampled onto the other's first.

use crate::preprocess::InputSize;

/// Pearson's r of two maps, `None` where either is constant (an all-zero map after the ReLU is a
/// legitimate map, and its correlation with anything is undefined, not 0 or 1).
pub fn pearson(a: &[f32], b: &[f32]) -> Option<f32> {
    assert_eq!(a.len(), b.len(), "maps of different sizes");
    let n = a.len() as f64;
    let mean = |m: &[f32]| m.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut cov, mut va, mut vb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        cov += dx * dy;
        va += dx * dx;
        vb += dy * dy;
    }
    // Relative to the maps' own scale, so that rounding noise on a flat map is not a correlation.
    let tiny = 1e-12 * n;
    (va > tiny && vb > tiny).then(|| (cov / (va.sqrt() * vb.sqrt())) as f32)
}

/// B − A, pixel by pixel: positive where B looks more than A.
pub fn difference(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "maps of different sizes");
    a.iter().zip(b).map(|(x, y)| y - x).collect()
}

/// Mean |B − A|: 0 for equal maps, 1 at most (maps are in [0, 1]).
pub fn mean_abs_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "maps of different sizes");
    let sum: f64 = a.iter().zip(b).map(|(x, y)| (y - x).abs() as f64).sum();
    (sum / a.len().max(1) as f64) as f32
}

/// The largest |B − A|: the scale a diverging colormap of the difference is drawn to.
pub fn max_abs(d: &[f32]) -> f32 {
    d.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// `map` (on frame `from`) on frame `to`. Both models' frames are centre crops of the same
/// image scaled alike when their cards keep the same aspect ratio and resize / size (ImageNet's
/// 0.875), so resampling aligns them; otherwise the frames cover different parts of the image.
pub fn on_frame(map: &[f32], from: InputSize, to: InputSize) -> Vec<f32> {
    if from == to {
        return map.to_vec();
    }
    crate::cam::resize_bilinear(map, from.height, from.width, to.height, to.width)
}

/// A picture on a `width`×`height` frame, the way [`on_frame`] puts a map there: what B's view
/// is shown at beside A's.
pub fn view_on_frame(view: &image::RgbImage, width: u32, height: u32) -> image::RgbImage {
    if view.dimensions() == (width, height) {
        return view.clone();
    }
    image::imageops::resize(view, width, height, image::imageops::FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_hand_made_maps() {
        let a = [0.0, 0.5, 1.0, 0.5];
        assert!((pearson(&a, &a).unwrap() - 1.0).abs() < 1e-6);
        let inverted: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
        assert!((pearson(&a, &inverted).unwrap() + 1.0).abs() < 1e-6);
        // Scaled and shifted: the same picture.
        let scaled: Vec<f32> = a.iter().map(|v| 0.2 + 0.5 * v).collect();
        assert!((pearson(&a, &scaled).unwrap() - 1.0).abs() < 1e-6);
        // x = (0, 1, 0, 1), y = (0, 0, 1, 1): uncorrelated.
        assert!(pearson(&[0.0, 1.0, 0.0, 1.0], &[0.0, 0.0, 1.0, 1.0]).unwrap().abs() < 1e-6);
        assert_eq!(pearson(&a, &[0.0; 4]), None);
    }

    #[test]
    fn difference_is_b_minus_a_and_its_scales() {
        let (a, b) = ([0.0, 1.0, 0.5], [0.5, 0.0, 0.5]);
        assert_eq!(difference(&a, &b), vec![0.5, -1.0, 0.0]);
        assert!((mean_abs_difference(&a, &b) - 0.5).abs() < 1e-6);
        assert_eq!(max_abs(&difference(&a, &b)), 1.0);
        assert_eq!(mean_abs_difference(&a, &a), 0.0);
    }

    #[test]
    fn a_map_of_another_size_is_resampled_onto_the_frame() {
        let flat = vec![0.25; 4];
        assert_eq!(on_frame(&flat, 2.into(), 2.into()), flat);
        let up = on_frame(&flat, 2.into(), InputSize::new(3, 4));
        assert_eq!(up.len(), 12);
        assert!(up.iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
}
