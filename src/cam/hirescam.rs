//! HiResCAM (Draelos & Carin, 2020): the gradient multiplies activations element-wise, so the map
//! provably reflects the locations the score depends on.

use super::{elementwise_sum, elementwise_terms, Chw};

pub fn map(a: &Chw, g: &Chw) -> Vec<f32> {
    elementwise_sum(a, g, |g, a| g * a)
}

/// The per-channel terms the map sums (what eigen-smoothing projects instead).
pub fn terms(a: &Chw, g: &Chw) -> Chw {
    elementwise_terms(a, g, |g, a| g * a)
}

#[cfg(test)]
mod tests {
    use crate::cam::test_support::{a, assert_close, g};

    #[test]
    fn sums_products_over_channels() {
        assert_close(&super::map(&a(), &g()), &[1.0, -3.0, 6.0, 7.0]);
    }
}
