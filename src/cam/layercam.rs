//! LayerCAM (Jiang et al., 2021): activations weighted position by position by the positive part
//! of the gradient, which keeps fine detail at shallow stages.

use super::{elementwise_sum, elementwise_terms, Chw};

pub fn map(a: &Chw, g: &Chw) -> Vec<f32> {
    elementwise_sum(a, g, |g, a| g.max(0.0) * a)
}

/// The per-channel terms the map sums (what eigen-smoothing projects instead).
pub fn terms(a: &Chw, g: &Chw) -> Chw {
    elementwise_terms(a, g, |g, a| g.max(0.0) * a)
}

#[cfg(test)]
mod tests {
    use crate::cam::test_support::{a, assert_close, g};

    #[test]
    fn positive_gradients_only() {
        assert_close(&super::map(&a(), &g()), &[1.0, 0.0, 6.0, 8.0]);
    }
}
