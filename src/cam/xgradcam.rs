//! XGrad-CAM (Fu et al., 2020): gradients weighted by normalised activations, which makes the map
//! satisfy the sensitivity and conservation axioms.

use super::{weighted_sum, Chw};

pub fn weights(a: &Chw, g: &Chw) -> Vec<f32> {
    let sums = a.channel_sums();
    a.channels_iter()
        .zip(g.channels_iter())
        .zip(&sums)
        .map(|((ac, gc), &s)| ac.iter().zip(gc).map(|(a, g)| g * a / (s + 1e-7)).sum())
        .collect()
}

pub fn map(a: &Chw, g: &Chw) -> Vec<f32> {
    weighted_sum(a, &weights(a, g))
}

#[cfg(test)]
mod tests {
    use crate::cam::test_support::{a, assert_close, g};

    #[test]
    fn weights_by_hand() {
        // w0 = (1 - 2 + 6 + 8) / 10 = 1.3, w1 = (0 - 1 + 0 - 1) / 2 = -1
        assert_close(&super::map(&a(), &g()), &[1.3, 2.6 - 1.0, 3.9, 5.2 - 1.0]);
    }
}
