//! Ablation-CAM (Desai & Ramaswamy, 2020): a channel's weight is the relative drop of the class
//! score when that channel is removed. The reference re-runs the whole network per channel; only
//! the stages after the ablated one depend on it, so we run just those, from the cached
//! activation, many channels per batch.

use candle_core::{Device, Tensor};

use super::{Chw, Control};
use crate::error::Result;
use crate::model::Network;

/// The value a removed channel takes: 0 for non-negative activations (the paper), otherwise far
/// below anything the stage produces (the reference's choice for signed activations).
fn ablation_value(a: &Chw) -> f32 {
    let min = a.data.iter().copied().fold(f32::INFINITY, f32::min);
    if min == 0.0 {
        0.0
    } else {
        min - 1e7
    }
}

/// The channel weights: the relative drop of the class score when each channel is removed.
pub fn weights(
    network: &Network,
    device: &Device,
    stage: usize,
    a: &Chw,
    score: f32,
    class: usize,
    ctl: &Control,
) -> Result<Vec<f32>> {
    let value = ablation_value(a);
    let last = network.num_stages() - 1;
    let batch = ctl.batch_size.max(1);
    let mut weights = Vec::with_capacity(a.channels);
    for first in (0..a.channels).step_by(batch) {
        ctl.check(first, a.channels)?;
        let ks: Vec<usize> = (first..(first + batch).min(a.channels)).collect();
        let mut data = Vec::with_capacity(ks.len() * a.data.len());
        for &k in &ks {
            let start = data.len();
            data.extend_from_slice(&a.data);
            data[start + k * a.plane()..start + (k + 1) * a.plane()].fill(value);
        }
        let x = Tensor::from_vec(data, (ks.len(), a.channels, a.height, a.width), device)?;
        let out = network.run_stages(stage + 1, last, &x)?;
        let logits = network.classify(&out)?;
        let ablated: Vec<f32> = logits.narrow(1, class, 1)?.flatten_all()?.to_vec1()?;
        weights.extend(ablated.iter().map(|y| (score - y) / score));
    }
    ctl.check(a.channels, a.channels)?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ablation_value_depends_on_the_sign_of_activations() {
        assert_eq!(ablation_value(&Chw::new(1, 1, 2, vec![0.0, 3.0])), 0.0);
        assert_eq!(ablation_value(&Chw::new(1, 1, 2, vec![-2.0, 3.0])), -2.0 - 1e7);
    }
}
