//! Faithfulness of a map for its class, measured on the model itself (SPEC §5): does the model
//! still see the class when only the highlighted pixels remain, or when they are removed?
//!
//! Every score here is the softmax probability of the class (pytorch-grad-cam's metrics are used
//! with `ClassifierOutputSoftmaxTarget`), so differences lie in [-1, 1].

use candle_core::Tensor;
use serde::Serialize;

use crate::cam::{batch_error, Control};
use crate::contract::{logits, EngineKind, ImageClassifier};
use crate::error::{Error, Result};
use crate::preprocess::InputSize;

/// ROAD's percentiles of removed pixels.
pub const ROAD_PERCENTILES: [f32; 4] = [20.0, 40.0, 60.0, 80.0];
/// Standard deviation of the noise the ROAD imputer adds (in the normalised input's units).
const ROAD_NOISE: f32 = 0.01;

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Scores {
    /// p(class | x ⊙ M) − p(class | x): higher means the map keeps what the model needs.
    pub confidence_change: f32,
    /// (LeRF − MoRF) / 2 averaged over 20/40/60/80 % removed: higher is better.
    pub road_combined: f32,
    /// Area under p(class) as the most relevant pixels are deleted first: lower is better.
    pub deletion_auc: f32,
    /// Area under p(class) as the most relevant pixels are inserted into a blurred image: higher
    /// is better.
    pub insertion_auc: f32,
}

/// p(class) of every image in `images` (each shaped and placed like `input`), `ctl.batch_size`
/// at a time.
fn probabilities(
    (model, engine): (&dyn ImageClassifier, EngineKind),
    input: &Tensor,
    images: &[Vec<f32>],
    class: usize,
    ctl: &Control,
    done: &mut usize,
    total: usize,
) -> Result<Vec<f32>> {
    let (_, c, h, w) = input.dims4()?;
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(ctl.batch_size.max(1)) {
        ctl.check(*done, total)?;
        let data: Vec<f32> = chunk.iter().flatten().copied().collect();
        let n = chunk.len();
        let x = Tensor::from_vec(data, (n, c, h, w), input.device()).map_err(|e| batch_error(e, n))?;
        let logits: Vec<Vec<f32>> = logits(model, &x, engine)
            .map_err(|e| batch_error(e, n))?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()?;
        for row in logits {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total_exp: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
            out.push((((row[class] - max) as f64).exp() / total_exp) as f32);
        }
        *done += chunk.len();
    }
    Ok(out)
}

/// Pixel indices by decreasing map value (ties: lower index first), the order of relevance.
fn relevance_order(map: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| map[b].total_cmp(&map[a]).then(a.cmp(&b)));
    order
}

/// Trapezoid area under a curve sampled at equal steps over [0, 1].
fn auc(curve: &[f32]) -> f32 {
    if curve.len() < 2 {
        return curve.first().copied().unwrap_or(0.0);
    }
    let inner: f32 = curve.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum();
    inner / (curve.len() - 1) as f32
}

/// Separable Gaussian blur of each channel plane, clamped at the borders (the insertion
/// baseline of RISE: kernel 11, σ = 5).
pub fn gaussian_blur(x: &[f32], channels: usize, frame: InputSize) -> Vec<f32> {
    let InputSize { height: h, width: w } = frame;
    const RADIUS: isize = 5;
    const SIGMA: f32 = 5.0;
    let k: Vec<f32> = (-RADIUS..=RADIUS).map(|i| (-(i * i) as f32 / (2.0 * SIGMA * SIGMA)).exp()).collect();
    let norm: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / norm).collect();
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    let mut out = vec![0f32; x.len()];
    let mut tmp = vec![0f32; h * w];
    for c in 0..channels {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for y in 0..h {
            for xx in 0..w {
                tmp[y * w + xx] = k
                    .iter()
                    .enumerate()
                    .map(|(t, kt)| kt * plane[y * w + clamp(xx as isize + t as isize - RADIUS, w)])
                    .sum();
            }
        }
        for y in 0..h {
            for xx in 0..w {
                out[c * h * w + y * w + xx] = k
                    .iter()
                    .enumerate()
                    .map(|(t, kt)| kt * tmp[clamp(y as isize + t as isize - RADIUS, h) * w + xx])
                    .sum();
            }
        }
    }
    out
}

/// ROAD's noisy linear imputer: every removed pixel becomes the weighted mean of its neighbours
/// (edge neighbours 1/6, diagonal ones 1/12), all removed pixels solved jointly as one sparse
/// symmetric system per channel (conjugate gradients), plus N(0, noise²).
pub fn impute(
    x: &[f32],
    channels: usize,
    frame: InputSize,
    removed: &[bool],
    noise: f32,
    seed: u64,
) -> Vec<f32> {
    let InputSize { height: h, width: w } = frame;
    const NEIGHBOURS: [(isize, isize, f32); 8] = [
        (-1, 0, 1.0 / 6.0),
        (1, 0, 1.0 / 6.0),
        (0, -1, 1.0 / 6.0),
        (0, 1, 1.0 / 6.0),
        (-1, -1, 1.0 / 12.0),
        (-1, 1, 1.0 / 12.0),
        (1, -1, 1.0 / 12.0),
        (1, 1, 1.0 / 12.0),
    ];
    let unknown: Vec<usize> = (0..h * w).filter(|&i| removed[i]).collect();
    let mut slot = vec![usize::MAX; h * w];
    for (k, &i) in unknown.iter().enumerate() {
        slot[i] = k;
    }
    // Row k of A: diagonal = Σ w over in-bounds neighbours; −w for each removed neighbour.
    let rows: Vec<ImputeRow> = unknown
        .iter()
        .map(|&i| {
            let (y, xx) = ((i / w) as isize, (i % w) as isize);
            let mut diag = 0.0;
            let (mut coupled, mut known) = (Vec::new(), Vec::new());
            for (dy, dx, weight) in NEIGHBOURS {
                let (ny, nx) = (y + dy, xx + dx);
                if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                diag += weight;
                if removed[j] {
                    coupled.push((slot[j], weight));
                } else {
                    known.push((j, weight));
                }
            }
            ImputeRow { diag, coupled, known }
        })
        .collect();
    let apply = |v: &[f64]| -> Vec<f64> {
        rows.iter()
            .enumerate()
            .map(|(k, row)| {
                row.diag as f64 * v[k] - row.coupled.iter().map(|&(j, w)| w as f64 * v[j]).sum::<f64>()
            })
            .collect()
    };
    let mut out = x.to_vec();
    let mut rng = seed.wrapping_mul(6364136223846793005) | 1;
    let mut gauss = move || {
        // Box-Muller on a xorshift stream: deterministic for a given seed.
        let mut uniform = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (u, v) = (uniform(), uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    };
    for c in 0..channels {
        let plane = &x[c * h * w..(c + 1) * h * w];
        let b: Vec<f64> =
            rows.iter().map(|row| row.known.iter().map(|&(j, kw)| (kw * plane[j]) as f64).sum()).collect();
        let solution = conjugate_gradient(&apply, &b);
        for (k, &i) in unknown.iter().enumerate() {
            out[c * h * w + i] = solution[k] as f32 + noise * gauss();
        }
    }
    out
}

/// One removed pixel's equation: diag·x − Σ w·x(removed neighbours) = Σ w·x(known neighbours).
struct ImputeRow {
    diag: f32,
    coupled: Vec<(usize, f32)>,
    known: Vec<(usize, f32)>,
}

fn conjugate_gradient(apply: &dyn Fn(&[f64]) -> Vec<f64>, b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut x = vec![0.0; n];
    let mut r = b.to_vec();
    let mut p = r.clone();
    let mut rr: f64 = r.iter().map(|v| v * v).sum();
    let tolerance = 1e-12 * b.iter().map(|v| v * v).sum::<f64>().max(1e-30);
    for _ in 0..(4 * n).max(100) {
        if rr <= tolerance {
            break;
        }
        let ap = apply(&p);
        let pap: f64 = p.iter().zip(&ap).map(|(a, b)| a * b).sum();
        if pap <= 0.0 {
            break;
        }
        let alpha = rr / pap;
        x.iter_mut().zip(&p).for_each(|(x, p)| *x += alpha * p);
        r.iter_mut().zip(&ap).for_each(|(r, ap)| *r -= alpha * ap);
        let next: f64 = r.iter().map(|v| v * v).sum();
        let beta = next / rr;
        rr = next;
        p.iter_mut().zip(&r).for_each(|(p, r)| *p = r + beta * *p);
    }
    x
}

/// All four scores of `map` (H×W in [0, 1]) for `class`, on `input` (1×3×H×W, normalised).
/// `steps` is the number of deletion / insertion steps (RISE uses the side: one row of pixels a
/// step).
pub fn evaluate(
    model: (&dyn ImageClassifier, EngineKind),
    input: &Tensor,
    map: &[f32],
    class: usize,
    steps: usize,
    ctl: &Control,
) -> Result<Scores> {
    let (_, c, h, w) = input.dims4()?;
    if map.len() != h * w {
        return Err(Error::Model(format!(
            "metrics need a map on the input's frame, got input {:?} and a map of {} values",
            input.dims(),
            map.len()
        )));
    }
    let x: Vec<f32> = input.flatten_all()?.to_vec1()?;
    let frame = InputSize::new(h, w);
    let plane = frame.area();
    let order = relevance_order(map);
    let steps = steps.clamp(1, plane);
    let mut images: Vec<Vec<f32>> = Vec::new();

    // 0: the original; 1: x ⊙ M.
    images.push(x.clone());
    images.push(x.iter().enumerate().map(|(i, v)| v * map[i % plane]).collect());

    // ROAD: MoRF and LeRF at every percentile.
    for (p, &percent) in ROAD_PERCENTILES.iter().enumerate() {
        let count = ((percent / 100.0) * plane as f32).round() as usize;
        for (most_first, seed) in [(true, 2 * p as u64), (false, 2 * p as u64 + 1)] {
            let mut removed = vec![false; plane];
            let chosen: Box<dyn Iterator<Item = &usize>> = if most_first {
                Box::new(order.iter().take(count))
            } else {
                Box::new(order.iter().rev().take(count))
            };
            chosen.for_each(|&i| removed[i] = true);
            images.push(impute(&x, c, frame, &removed, ROAD_NOISE, seed));
        }
    }

    // Deletion from x to all-zero and insertion from the blurred x to x, most relevant first.
    let blurred = gaussian_blur(&x, c, frame);
    let (mut deleted, mut inserted) = (x.clone(), blurred.clone());
    let per_step = plane.div_ceil(steps);
    let curve_start = images.len();
    for step in 0..=steps {
        if step > 0 {
            for &i in order.iter().skip((step - 1) * per_step).take(per_step) {
                for ch in 0..c {
                    deleted[ch * plane + i] = 0.0;
                    inserted[ch * plane + i] = x[ch * plane + i];
                }
            }
        }
        images.push(deleted.clone());
        images.push(inserted.clone());
    }

    let mut done = 0;
    let probs = probabilities(model, input, &images, class, ctl, &mut done, images.len())?;
    ctl.check(images.len(), images.len())?;
    let road: f32 =
        (0..ROAD_PERCENTILES.len()).map(|p| (probs[3 + 2 * p] - probs[2 + 2 * p]) / 2.0).sum::<f32>()
            / ROAD_PERCENTILES.len() as f32;
    let curves = &probs[curve_start..];
    let deletion: Vec<f32> = curves.iter().step_by(2).copied().collect();
    let insertion: Vec<f32> = curves.iter().skip(1).step_by(2).copied().collect();
    Ok(Scores {
        confidence_change: probs[1] - probs[0],
        road_combined: road,
        deletion_auc: auc(&deletion),
        insertion_auc: auc(&insertion),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{StageSpec, Taps};
    use candle_core::Device;

    #[test]
    fn imputer_reproduces_a_linear_image_exactly() {
        // A wide frame, so that rows and columns cannot be confused.
        let (h, w) = (10, 13);
        let x: Vec<f32> = (0..h * w).map(|i| 0.3 * (i / w) as f32 - 0.2 * (i % w) as f32 + 1.0).collect();
        // Remove a blob and a scatter of interior pixels; the border stays known.
        let removed: Vec<bool> = (0..h * w)
            .map(|i| {
                let (y, xx) = (i / w, i % w);
                y > 0 && xx > 0 && y < h - 1 && xx < w - 1 && ((3..8).contains(&y) || (y * 7 + xx) % 3 == 0)
            })
            .collect();
        let mut scrambled = x.clone();
        for (i, r) in removed.iter().enumerate() {
            if *r {
                scrambled[i] = 100.0;
            }
        }
        let out = impute(&scrambled, 1, InputSize::new(h, w), &removed, 0.0, 0);
        for (a, b) in out.iter().zip(&x) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn auc_of_a_constant_curve_is_the_constant() {
        assert!((auc(&[0.5; 7]) - 0.5).abs() < 1e-6);
        assert!((auc(&[1.0, 0.0]) - 0.5).abs() < 1e-6);
    }

    /// Logit 0 is 4 × the mean of the left half of channel 0, logit 1 is 0: the "object" of
    /// class 0 is the left half of the image. A whole model in a few lines of the contract.
    struct LeftHalf(Vec<StageSpec>);
    impl ImageClassifier for LeftHalf {
        fn name(&self) -> String {
            "left-half".into()
        }
        fn stages(&self) -> &[StageSpec] {
            &self.0
        }
        fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor> {
            let w = x.dim(3)?;
            let left = x.narrow(1, 0, 1)?.narrow(3, 0, w / 2)?.pad_with_zeros(3, 0, w - w / 2)?;
            let left = taps.stage("left", left)?;
            let mean = left.flatten_from(1)?.mean_keepdim(1)?;
            Tensor::cat(&[mean.affine(8.0, 0.0)?, mean.zeros_like()?], 1)
        }
    }

    #[test]
    fn a_map_of_the_object_beats_its_inverse() {
        let (h, w) = (12, 16);
        let network = LeftHalf(vec![StageSpec::nchw("left")]);
        let model = (&network as &dyn ImageClassifier, EngineKind::Portable);
        // The object (left half) is bright, the background dark.
        let pixels: Vec<f32> = (0..3 * h * w).map(|i| if i % w < w / 2 { 1.0 } else { 0.0 }).collect();
        let input = Tensor::from_vec(pixels, (1, 3, h, w), &Device::Cpu).unwrap();
        let object: Vec<f32> =
            (0..h * w).map(|i| if i % w < w / 2 { 1.0 - 0.01 * (i / w) as f32 } else { 0.0 }).collect();
        let inverse: Vec<f32> = object.iter().map(|v| 1.0 - v).collect();
        let ctl = Control::default();
        let good = evaluate(model, &input, &object, 0, h, &ctl).unwrap();
        let bad = evaluate(model, &input, &inverse, 0, h, &ctl).unwrap();
        assert!(good.deletion_auc < bad.deletion_auc, "{good:?} vs {bad:?}");
        assert!(good.insertion_auc > bad.insertion_auc, "{good:?} vs {bad:?}");
        assert!(good.confidence_change > bad.confidence_change, "{good:?} vs {bad:?}");
        assert!(good.road_combined > bad.road_combined, "{good:?} vs {bad:?}");
    }
}
