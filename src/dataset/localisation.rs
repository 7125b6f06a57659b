//! Is the map on the object? The energy-based pointing game (Score-CAM, Wang et al. 2020) and
//! the pointing game (Zhang et al., TorchRay's tolerance), on a post-processed map M ≥ 0 of the
//! frame and the object's [`Region`] there (SPEC §10).

use super::region::Region;

/// `Σ_B M / Σ M`: the share of the map's energy inside the object; 0 for an all-zero map.
pub fn energy_inside(map: &[f32], region: &Region) -> f32 {
    debug_assert_eq!(map.len(), region.inside.len());
    let (mut inside, mut total) = (0f64, 0f64);
    for (&m, &b) in map.iter().zip(&region.inside) {
        total += m as f64;
        if b {
            inside += m as f64;
        }
    }
    if total > 0.0 {
        (inside / total) as f32
    } else {
        0.0
    }
}

/// Whether the map's maximum (the first in row-major order) lies within `tolerance` pixels of
/// the object: with 0, strictly inside; TorchRay's pointing game uses 15.
pub fn pointing_hit(map: &[f32], region: &Region, tolerance: f64) -> bool {
    let (h, w) = (region.frame.height, region.frame.width);
    let Some(peak) = map.iter().enumerate().fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
        Some((_, b)) if b >= v => best,
        _ => Some((i, v)),
    }) else {
        return false;
    };
    let (pi, pj) = (peak.0 / w, peak.0 % w);
    if region.inside[peak.0] {
        return true;
    }
    let reach = tolerance.max(0.0);
    let r = reach.floor() as usize;
    let rows = pi.saturating_sub(r)..(pi + r + 1).min(h);
    rows.flat_map(|i| (pj.saturating_sub(r)..(pj + r + 1).min(w)).map(move |j| (i, j))).any(|(i, j)| {
        let (di, dj) = (i as f64 - pi as f64, j as f64 - pj as f64);
        region.inside[i * w + j] && (di * di + dj * dj).sqrt() <= reach
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(s: usize, cells: &[(usize, usize)]) -> Region {
        let mut inside = vec![false; s * s];
        for &(i, j) in cells {
            inside[i * s + j] = true;
        }
        Region { frame: crate::preprocess::InputSize::square(s), inside }
    }

    #[test]
    fn energy_is_the_share_of_the_sum_inside() {
        let map = [1.0, 1.0, 2.0, 0.0];
        assert_eq!(energy_inside(&map, &region(2, &[(0, 0), (1, 0)])), 0.75);
        assert_eq!(energy_inside(&map, &region(2, &[])), 0.0);
        assert_eq!(energy_inside(&[0.0; 4], &region(2, &[(0, 0)])), 0.0);
    }

    #[test]
    fn the_peak_must_be_inside_unless_a_tolerance_is_given() {
        // 5×5, peak at (2, 2); the object is the single pixel (2, 4), 2 px away.
        let mut map = [0.0f32; 25];
        map[12] = 1.0;
        let object = region(5, &[(2, 4)]);
        assert!(!pointing_hit(&map, &object, 0.0));
        assert!(!pointing_hit(&map, &object, 1.9));
        assert!(pointing_hit(&map, &object, 2.0));
        assert!(pointing_hit(&map, &region(5, &[(2, 2)]), 0.0));
        // Diagonal distance √2 ≈ 1.41.
        assert!(pointing_hit(&map, &region(5, &[(3, 3)]), 1.5));
        assert!(!pointing_hit(&map, &region(5, &[(3, 3)]), 1.4));
    }

    /// Ties: the first maximum in row-major order is the peak.
    #[test]
    fn the_first_maximum_is_the_peak() {
        let map = [1.0, 0.0, 0.0, 1.0];
        assert!(pointing_hit(&map, &region(2, &[(0, 0)]), 0.0));
        assert!(!pointing_hit(&map, &region(2, &[(1, 1)]), 0.0));
    }

    /// On a frame 4 wide and 2 high, index 5 is row 1, column 1.
    #[test]
    fn a_wide_frame_reads_rows_of_its_width() {
        let mut map = [0.0f32; 8];
        map[5] = 1.0;
        let at = |i: usize, j: usize| {
            let mut inside = vec![false; 8];
            inside[i * 4 + j] = true;
            Region { frame: crate::preprocess::InputSize::new(2, 4), inside }
        };
        assert!(pointing_hit(&map, &at(1, 1), 0.0));
        assert!(pointing_hit(&map, &at(0, 1), 1.0));
        assert!(!pointing_hit(&map, &at(1, 3), 1.0));
    }
}
