//! Score-CAM (Wang et al., 2020): no gradients. Each channel, upsampled and normalised, masks the
//! input; the class score of each masked input, through a softmax, weights the channel.

use candle_core::{Device, Tensor};

use super::{batch_error, Chw, Control};
use crate::contract::{logits, EngineKind, ImageClassifier};
use crate::error::Result;

/// Bilinear upsampling with `align_corners = true` (PyTorch `UpsamplingBilinear2d`), which the
/// reference uses here, unlike the half-pixel resize of the final maps.
pub fn upsample_align_corners(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let coord = |d: usize, n: usize, out: usize| -> (usize, usize, f32) {
        if n == 1 || out == 1 {
            return (0, 0, 0.0);
        }
        let f = d as f32 * (n - 1) as f32 / (out - 1) as f32;
        let i = (f.floor() as usize).min(n - 1);
        (i, (i + 1).min(n - 1), f - i as f32)
    };
    let xs: Vec<_> = (0..out_w).map(|d| coord(d, w, out_w)).collect();
    let mut out = Vec::with_capacity(out_h * out_w);
    for y in 0..out_h {
        let (y0, y1, ty) = coord(y, h, out_h);
        for &(x0, x1, tx) in &xs {
            let top = src[y0 * w + x0] * (1.0 - tx) + src[y0 * w + x1] * tx;
            let bottom = src[y1 * w + x0] * (1.0 - tx) + src[y1 * w + x1] * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

/// The mask of one channel: upsampled to the input, min-max normalised (eps 1e-8).
fn mask(channel: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let mut m = upsample_align_corners(channel, h, w, out_h, out_w);
    let lo = m.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo + 1e-8));
    m
}

/// The channel weights: softmax over channels of the masked inputs' class scores.
pub fn weights(
    model: &dyn ImageClassifier,
    engine: EngineKind,
    input: &Tensor,
    a: &Chw,
    class: usize,
    ctl: &Control,
) -> Result<Vec<f32>> {
    let (_, channels, height, width) = input.dims4()?;
    let x: Vec<f32> = input.flatten_all()?.to_vec1()?;
    let plane = height * width;
    let mut scores = Vec::with_capacity(a.channels);
    let batch = ctl.batch_size.max(1);
    for first in (0..a.channels).step_by(batch) {
        ctl.check(first, a.channels)?;
        let ks: Vec<usize> = (first..(first + batch).min(a.channels)).collect();
        let mut data = Vec::with_capacity(ks.len() * channels * plane);
        for &k in &ks {
            let m = mask(a.channel(k), a.height, a.width, height, width);
            for c in 0..channels {
                data.extend(x[c * plane..(c + 1) * plane].iter().zip(&m).map(|(v, m)| v * m));
            }
        }
        let batch_input = Tensor::from_vec(data, (ks.len(), channels, height, width), &Device::Cpu)?;
        let on_device = batch_input.to_device(input.device()).map_err(|e| batch_error(e, ks.len()))?;
        let logits = logits(model, &on_device, engine).map_err(|e| batch_error(e, ks.len()))?;
        let column: Vec<f32> =
            logits.narrow(1, class, 1)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        scores.extend(column);
    }
    ctl.check(a.channels, a.channels)?;
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = scores.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let total: f64 = exp.iter().sum();
    Ok(exp.iter().map(|e| (e / total) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_corners_keeps_the_corners() {
        let up = upsample_align_corners(&[0.0, 1.0, 2.0, 3.0], 2, 2, 3, 3);
        assert_eq!(up, [0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
    }

    #[test]
    fn masks_span_zero_to_one() {
        let m = mask(&[2.0, 4.0, 6.0, 8.0], 2, 2, 4, 4);
        assert!(m[0].abs() < 1e-6 && (m[15] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_wide_frame_upsamples_each_axis_on_its_own() {
        // 1×2 → 2×3: rows repeat (one source row), columns interpolate with the corners kept.
        let up = upsample_align_corners(&[0.0, 2.0], 1, 2, 2, 3);
        assert_eq!(up, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    }
}
