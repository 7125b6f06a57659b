//! EigenCAM (Muhammad & Yeasin, 2020) and its gradient-weighted variant: the projection of the
//! (position × channel) matrix onto its first principal component. No class information enters
//! EigenCAM; EigenGradCAM weights activations by gradients first.
//!
//! The first right singular vector v₁ of X (HW × C) is found by power iteration on the smaller of
//! the two Gram matrices, in f64, from a fixed start: deterministic, and for the sizes at hand
//! (≤ 512 on the short side) a few milliseconds.

use super::Chw;

pub fn eigencam(a: &Chw) -> Vec<f32> {
    projection(a)
}

pub fn eigengradcam(a: &Chw, g: &Chw) -> Vec<f32> {
    projection(&g.mul(a))
}

/// X·v₁ with X the channel-centred (HW × C) matrix. An SVD leaves the sign of v₁ free (the
/// reference's LAPACK call picks one by the accident of its arithmetic); we orient the map so
/// that the position the component separates most strongly — the largest |X·v₁| — is positive,
/// i.e. shown hot. On the reference fixtures this agrees with LAPACK's choice 6 times in 7.
pub fn projection(x: &Chw) -> Vec<f32> {
    let (c, n) = (x.channels, x.plane());
    if c == 0 || n == 0 {
        return vec![0.0; n];
    }
    // Centred, as f64, stored channel-major: col[k][i].
    let cols: Vec<Vec<f64>> = x
        .channels_iter()
        .map(|ch| {
            let mean = ch.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            ch.iter().map(|&v| v as f64 - mean).collect()
        })
        .collect();
    let mut map: Vec<f64> = if c <= n {
        // v₁ = top eigenvector of XᵀX (C×C); map = X v₁.
        let gram = symmetric(c, |p, q| dot(&cols[p], &cols[q]));
        let v = top_eigenvector(&gram, c);
        (0..n).map(|i| (0..c).map(|k| cols[k][i] * v[k]).sum()).collect()
    } else {
        // X v₁ = σ₁ u₁ with u₁ the top eigenvector of XXᵀ (HW×HW) and σ₁² its eigenvalue.
        let gram = symmetric(n, |i, j| cols.iter().map(|col| col[i] * col[j]).sum());
        let u = top_eigenvector(&gram, n);
        let ku = mat_vec(&gram, &u, n);
        let sigma = dot(&u, &ku).max(0.0).sqrt();
        u.iter().map(|v| v * sigma).collect()
    };
    let extreme = map.iter().copied().fold(0f64, |e, v| if v.abs() > e.abs() { v } else { e });
    if extreme < 0.0 {
        map.iter_mut().for_each(|v| *v = -*v);
    }
    map.into_iter().map(|v| if v.is_finite() { v as f32 } else { 0.0 }).collect()
}

/// The projection of per-channel terms, oriented to agree with their plain sum Σ_k X_k: eigen-
/// smoothing is a denoised version of the unsmoothed map and must not invert it.
pub fn smoothed(terms: &Chw) -> Vec<f32> {
    let mut map = projection(terms);
    let mut sum = vec![0f64; terms.plane()];
    for channel in terms.channels_iter() {
        sum.iter_mut().zip(channel).for_each(|(s, v)| *s += *v as f64);
    }
    let n = sum.len().max(1) as f64;
    let (ms, mm) = (sum.iter().sum::<f64>() / n, map.iter().map(|&v| v as f64).sum::<f64>() / n);
    let agreement: f64 = sum.iter().zip(&map).map(|(s, m)| (s - ms) * (*m as f64 - mm)).sum();
    if agreement < 0.0 {
        map.iter_mut().for_each(|v| *v = -*v);
    }
    map
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn symmetric(n: usize, entry: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for p in 0..n {
        for q in p..n {
            let v = entry(p, q);
            m[p * n + q] = v;
            m[q * n + p] = v;
        }
    }
    m
}

fn mat_vec(m: &[f64], v: &[f64], n: usize) -> Vec<f64> {
    (0..n).map(|r| dot(&m[r * n..(r + 1) * n], v)).collect()
}

/// Power iteration on a symmetric positive semi-definite matrix.
fn top_eigenvector(m: &[f64], n: usize) -> Vec<f64> {
    // A start vector with a component along every direction that is not contrived to vanish.
    let mut v: Vec<f64> = (0..n).map(|i| 1.0 + 0.01 * ((i * 7919) % 101) as f64).collect();
    normalise(&mut v);
    for _ in 0..5000 {
        let mut next = mat_vec(m, &v, n);
        if normalise(&mut next) == 0.0 {
            return v;
        }
        let change: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        v = next;
        if change < 1e-12 {
            break;
        }
    }
    v
}

fn normalise(v: &mut [f64]) -> f64 {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rank-one matrix: every channel is a multiple of one spatial pattern, so the projection is
    /// that pattern (centred) up to scale, whichever Gram matrix is used.
    fn rank_one(channels: usize, pattern: &[f32]) -> Chw {
        let data = (0..channels).flat_map(|k| pattern.iter().map(move |p| p * (k as f32 + 1.0))).collect();
        Chw::new(channels, 1, pattern.len(), data)
    }

    fn correlation(a: &[f32], b: &[f32]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f32>() as f64 / n, b.iter().sum::<f32>() as f64 / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - ma) * (*y as f64 - mb)).sum();
        let va: f64 = a.iter().map(|x| (*x as f64 - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (*y as f64 - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    #[test]
    fn recovers_a_rank_one_pattern_with_positive_orientation() {
        // Centred, the largest deviation is the 5 (+2.8), so the pattern keeps its sign.
        let pattern = [0.0, 1.0, 5.0, 2.0, 3.0];
        for channels in [2, 9] {
            let m = projection(&rank_one(channels, &pattern));
            assert!(correlation(&m, &pattern) > 0.999_999, "{channels} channels: {m:?}");
        }
    }

    #[test]
    fn both_gram_paths_agree() {
        // 3 channels × 4 positions (C < HW) and its transpose-like twin 4 channels × 3 positions
        // exercise the two branches; each must match an explicit SVD-free check: X v ∝ top
        // eigenvector of XXᵀ.
        let x = Chw::new(3, 1, 4, vec![1.0, 0.0, 2.0, 5.0, 0.5, 1.0, 0.0, 2.0, 3.0, 1.0, 1.0, 0.0]);
        let wide =
            Chw::new(12, 1, 4, x.data.iter().chain(&x.data).chain(&x.data).chain(&x.data).copied().collect());
        let (a, b) = (projection(&x), projection(&wide));
        assert!(correlation(&a, &b) > 0.999_999, "{a:?} vs {b:?}");
        let mut y = x.data.clone();
        y.truncate(12);
        let narrow = Chw::new(4, 1, 3, y);
        let m = projection(&narrow);
        assert_eq!(m.len(), 3);
        assert!(m.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn eigengradcam_projects_the_product() {
        let a = Chw::new(2, 1, 3, vec![1.0, 2.0, 4.0, 1.0, 1.0, 1.0]);
        let g = Chw::new(2, 1, 3, vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        let m = eigengradcam(&a, &g);
        assert!(correlation(&m, &[1.0, 2.0, 4.0]) > 0.999_999, "{m:?}");
    }
}
