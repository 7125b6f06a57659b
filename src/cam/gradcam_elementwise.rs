//! Grad-CAM element-wise: like HiResCAM but each channel's product is clipped at 0 before summing,
//! so negative evidence in one channel cannot cancel positive evidence in another.

use super::{elementwise_sum, elementwise_terms, Chw};

pub fn map(a: &Chw, g: &Chw) -> Vec<f32> {
    elementwise_sum(a, g, |g, a| (g * a).max(0.0))
}

/// The per-channel terms the map sums (what eigen-smoothing projects instead).
pub fn terms(a: &Chw, g: &Chw) -> Chw {
    elementwise_terms(a, g, |g, a| (g * a).max(0.0))
}

#[cfg(test)]
mod tests {
    use crate::cam::test_support::{a, assert_close, g};

    #[test]
    fn clips_each_product() {
        assert_close(&super::map(&a(), &g()), &[1.0, 0.0, 6.0, 8.0]);
    }
}
