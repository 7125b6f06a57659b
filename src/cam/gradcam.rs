//! Grad-CAM (Selvaraju et al., 2017): each channel weighted by its mean gradient.

use super::{weighted_sum, Chw};

pub fn weights(g: &Chw) -> Vec<f32> {
    let n = g.plane() as f32;
    g.channel_sums().iter().map(|s| s / n).collect()
}

pub fn map(a: &Chw, g: &Chw) -> Vec<f32> {
    weighted_sum(a, &weights(g))
}

#[cfg(test)]
mod tests {
    use crate::cam::test_support::{a, assert_close, g};

    #[test]
    fn weights_are_mean_gradients() {
        // w = [mean(1,-1,2,2), mean(-1,-1,-1,-1)] = [1, -1]
        assert_close(&super::map(&a(), &g()), &[1.0, 1.0, 3.0, 3.0]);
    }
}
