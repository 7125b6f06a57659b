//! Grad-CAM++ (Chattopadhyay et al., 2018): positive gradients weighted by α, a closed-form
//! second-order term, so several instances of a class all show up.

use super::{weighted_sum, Chw};

pub fn map(a: &Chw, g: &Chw) -> Vec<f32> {
    weighted_sum(a, &weights(a, g))
}

pub fn weights(a: &Chw, g: &Chw) -> Vec<f32> {
    let sums = a.channel_sums();
    g.channels_iter()
        .zip(&sums)
        .map(|(gc, &sum_a)| {
            gc.iter()
                .map(|&gv| {
                    if gv == 0.0 {
                        return 0.0;
                    }
                    let g2 = gv * gv;
                    let alpha = g2 / (2.0 * g2 + sum_a * g2 * gv + 1e-6);
                    gv.max(0.0) * alpha
                })
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::cam::test_support::{a, assert_close, g};

    #[test]
    fn alpha_weighting_by_hand() {
        // Channel 0: Σa = 10; g = 1 → α = 1/(2+10+1e-6); g = 2 → α = 4/(8+80+1e-6); g = -1 → 0 (ReLU).
        let w0 = 1.0 / (12.0 + 1e-6) + 2.0 * (2.0 * 4.0 / (88.0 + 1e-6));
        // Channel 1: all gradients negative → weight 0.
        let want: Vec<f32> = [1.0, 2.0, 3.0, 4.0].iter().map(|v| v * w0).collect();
        assert_close(&super::map(&a(), &g()), &want);
    }
}
