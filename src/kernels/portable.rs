//! Convolution and max-pooling built only from Candle's own tensor ops, for the portable engine.
//!
//! Everything here is the code that would run on CUDA or Metal: views (`narrow`, `reshape`,
//! `squeeze`), padding by concatenation, element-wise arithmetic and Candle's dense `conv2d`,
//! all of which have autograd on every device. No custom op, no copy to the host. Comparisons
//! appear only to build masks, which are detached constants, so that the gradient is exactly
//! PyTorch's:
//!
//! - Candle's `max_pool2d` has no padding and a wrong or missing backward when kernel ≠ stride
//!   (SPEC §7), and its maximum-based ops split the gradient between ties. [`max_pool2d`] routes
//!   each window's gradient whole to its first maximum in row-major order, as PyTorch does.
//! - Candle runs a grouped convolution one group at a time, which is very slow for depthwise
//!   convolutions with ~1000 groups. [`depthwise_conv2d`] is a sum of kh·kw shifted views of the
//!   input, each scaled by one weight per channel.
//! - Candle's conv backward returns a wrongly sized input gradient when the stride does not
//!   divide (padded size − kernel) (its transposed convolution takes the height's output padding
//!   for both axes, so a 33×32 input with a 7×7/2 kernel and padding 3 fails). [`conv2d`] pads
//!   explicitly and crops the rows and columns no window reads.
//!
//! All functions take NCHW `f32` tensors, any batch.

use candle_core::{bail, DType, Result, Tensor};

/// Value of max-pool padding: PyTorch pads with -∞, but a mask multiplied by -∞ gives NaN
/// (0·-∞) where this module multiplies by a zero mask. The most negative finite `f32` is never
/// larger than an input, and 0·`f32::MIN` is -0.
const POOL_FILL: f32 = f32::MIN;

/// Output size of a sliding window: floor((size + before + after − kernel) / stride) + 1.
fn output_size(size: usize, before: usize, after: usize, kernel: usize, stride: usize) -> Result<usize> {
    if kernel == 0 || stride == 0 {
        bail!("kernel {kernel} and stride {stride} must be at least 1")
    }
    let padded = size + before + after;
    if padded < kernel {
        bail!("a {kernel}-wide window does not fit {size} padded by {before} and {after}")
    }
    Ok((padded - kernel) / stride + 1)
}

/// `x` along `dim`, `before` values of `fill` in front, then cropped or filled at the end to
/// `total` values. Cropping drops only values that no window reads (the caller asks for the
/// extent its windows reach).
fn fit(x: &Tensor, dim: usize, before: usize, total: usize, fill: f32) -> Result<Tensor> {
    let size = x.dim(dim)?;
    if before >= total {
        bail!("padding {before} alone covers every window ({total} values read)")
    }
    let keep = (total - before).min(size);
    let x = if keep < size { x.narrow(dim, 0, keep)? } else { x.clone() };
    let after = total - before - keep;
    if fill == 0.0 {
        return x.pad_with_zeros(dim, before, after);
    }
    let block = |len: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = len;
        Tensor::full(fill, dims, x.device())?.to_dtype(x.dtype())
    };
    let parts = match (before, after) {
        (0, 0) => return Ok(x.clone()),
        (0, a) => vec![x.clone(), block(a)?],
        (b, 0) => vec![block(b)?, x.clone()],
        (b, a) => vec![block(b)?, x.clone(), block(a)?],
    };
    Tensor::cat(&parts, dim)
}

/// The kh·kw views ("taps") of a sliding window over `x` padded by `pads` = (top, bottom, left,
/// right) values of `fill`, row-major: tap (ky, kx) is the (N, C, out_h, out_w) tensor whose
/// element (oy, ox) is padded element (oy·stride + ky, ox·stride + kx).
///
/// A strided slice is a view once the padded input is split into its stride² phases: with
/// height and width multiples of the stride, (N, C, H, W) reshapes for free into
/// (N, C, H/s, s, W/s, s), and phase (a, b) — rows a, a+s, …, columns b, b+s, … — is
/// `narrow(3, a, 1)`, `narrow(5, b, 1)`. Tap (ky, kx) is then phase (ky mod s, kx mod s) from row
/// ky/s and column kx/s on. Every tap is a view of one padded copy of the input, and its
/// gradient flows back through `narrow` and `reshape` only: overlapping windows add up there.
fn window_taps(
    x: &Tensor,
    kernel: (usize, usize),
    stride: usize,
    pads: (usize, usize, usize, usize),
    fill: f32,
) -> Result<Vec<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    let ((kh, kw), s, (top, bottom, left, right)) = (kernel, stride, pads);
    let out_h = output_size(h, top, bottom, kh, s)?;
    let out_w = output_size(w, left, right, kw, s)?;
    // Rows the phases need: tap row ky/s + out_h for the last ky, times the stride. This is at
    // least the last row a window reads, (kh − 1) + (out_h − 1)·s, plus one.
    let (rows, cols) = (s * ((kh - 1) / s + out_h), s * ((kw - 1) / s + out_w));
    let x = fit(&fit(x, 2, top, rows, fill)?, 3, left, cols, fill)?;
    let phases: Vec<Vec<Option<Tensor>>> = if s == 1 {
        vec![vec![Some(x)]]
    } else {
        let x6 = x.reshape((n, c, rows / s, s, cols / s, s))?;
        // Only the phases some tap uses (a 1×1 kernel with stride 2 uses one of four).
        (0..s)
            .map(|a| {
                (0..s)
                    .map(|b| {
                        if a >= kh || b >= kw {
                            return Ok(None);
                        }
                        let phase = x6.narrow(3, a, 1)?.narrow(5, b, 1)?;
                        Ok(Some(phase.squeeze(5)?.squeeze(3)?))
                    })
                    .collect::<Result<_>>()
            })
            .collect::<Result<_>>()?
    };
    let mut taps = Vec::with_capacity(kh * kw);
    for ky in 0..kh {
        for kx in 0..kw {
            let phase = phases[ky % s][kx % s].as_ref().expect("every tap's phase is built");
            taps.push(phase.narrow(2, ky / s, out_h)?.narrow(3, kx / s, out_w)?);
        }
    }
    Ok(taps)
}

/// PyTorch `MaxPool2d(kernel, stride, padding=pad)` (no dilation, no `ceil_mode`): padding
/// counts as -∞, output size floor((n + 2·pad − kernel) / stride) + 1, and the gradient of each
/// window goes whole to its first maximum in row-major window order — never split between ties,
/// which are common after a ReLU. Where windows overlap (kernel > stride) their gradients add up.
///
/// Built as y = Σ_k mask_k ⊙ tap_k over the window taps, where the masks are one-hot "first
/// maximum" indicators computed from the detached input: the forward value is the maximum and
/// the gradient is exactly the routing above. Requires pad < kernel, which puts at least one
/// input element in every window (PyTorch requires pad ≤ kernel/2). NaN inputs are not
/// supported: PyTorch propagates them, here the result depends on the device's `maximum`.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    if !matches!(x.dtype(), DType::F32 | DType::F64) {
        // f32::MIN would round to -∞ in a half-precision type, and 0·-∞ is NaN.
        bail!("max_pool2d takes f32 or f64 tensors, got {:?}", x.dtype())
    }
    if kernel == 0 || stride == 0 || pad >= kernel {
        bail!("max-pool kernel {kernel}, stride {stride}, padding {pad}: need 1 ≤ kernel, 1 ≤ stride, pad < kernel")
    }
    let taps = window_taps(x, (kernel, kernel), stride, (pad, pad, pad, pad), POOL_FILL)?;
    let values: Vec<Tensor> = taps.iter().map(Tensor::detach).collect();
    let mut max = values[0].clone();
    for v in &values[1..] {
        max = max.maximum(v)?;
    }
    let dtype = x.dtype();
    // Where an earlier tap already held the maximum (1) or not (0).
    let mut taken: Option<Tensor> = None;
    let mut y: Option<Tensor> = None;
    for (i, (tap, value)) in taps.iter().zip(&values).enumerate() {
        let is_max = value.eq(&max)?.to_dtype(dtype)?;
        let first = match &taken {
            None => is_max.clone(),
            Some(taken) => is_max.gt(taken)?.to_dtype(dtype)?,
        };
        if i + 1 < taps.len() {
            taken = Some(match taken {
                None => is_max,
                Some(taken) => taken.maximum(&is_max)?,
            });
        }
        let term = tap.mul(&first.detach())?;
        y = Some(match y {
            None => term,
            Some(y) => y.add(&term)?,
        });
    }
    Ok(y.expect("a kernel has at least one tap"))
}

/// Depthwise convolution: `weight` is (C, 1, kh, kw) for a C-channel input, `bias` (C), zero
/// padding (top, bottom, left, right), any stride; output size as PyTorch's with that padding.
///
/// Computed as Σ over the kh·kw taps of (strided view of the padded input) ⊙ (that tap's weight
/// per channel): kh·kw element-wise multiply-adds on the device, instead of Candle's grouped
/// convolution, which runs one convolution per channel.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad_top: usize,
    pad_bottom: usize,
    pad_left: usize,
    pad_right: usize,
) -> Result<Tensor> {
    let (channels, per_group, kh, kw) = weight.dims4()?;
    let c = x.dim(1)?;
    if channels != c || per_group != 1 {
        bail!("a depthwise weight for {c} channels is ({c}, 1, kh, kw), got {:?}", weight.dims())
    }
    let taps = window_taps(x, (kh, kw), stride, (pad_top, pad_bottom, pad_left, pad_right), 0.0)?;
    // (kh·kw, C): row k holds tap k's weight for every channel, a contiguous slice.
    let per_tap = weight.reshape((c, kh * kw))?.t()?.contiguous()?;
    let mut y: Option<Tensor> = None;
    for (k, tap) in taps.iter().enumerate() {
        let term = tap.broadcast_mul(&per_tap.narrow(0, k, 1)?.reshape((1, c, 1, 1))?)?;
        y = Some(match y {
            None => term,
            Some(y) => y.add(&term)?,
        });
    }
    let y = y.expect("a kernel has at least one tap");
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, c, 1, 1))?),
        None => Ok(y),
    }
}

/// A 2-D convolution (PyTorch `Conv2d`, no dilation) with zero padding `pads` = (top, bottom,
/// left, right), which may be asymmetric (TensorFlow "SAME"). `weight` is (C_out, C_in/groups,
/// kh, kw), `bias` (C_out).
///
/// Depthwise convolutions (groups = C_in = C_out > 1) go to [`depthwise_conv2d`]; others to
/// Candle's `conv2d` on an explicitly padded input, cropped to the extent the windows read,
/// (out − 1)·stride + kernel, so that (padded size − kernel) is a multiple of the stride and
/// Candle's backward returns an input gradient of the input's size.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pads: (usize, usize, usize, usize),
    groups: usize,
) -> Result<Tensor> {
    let (c_out, per_group, kh, kw) = weight.dims4()?;
    let (_, c_in, h, w) = x.dims4()?;
    let (top, bottom, left, right) = pads;
    if groups == 0 || c_in != per_group * groups || !c_out.is_multiple_of(groups) {
        bail!("a {:?} weight in {groups} groups does not fit {c_in} input channels", weight.dims())
    }
    if groups > 1 && groups == c_in && c_out == c_in {
        return depthwise_conv2d(x, weight, bias, stride, top, bottom, left, right);
    }
    let out_h = output_size(h, top, bottom, kh, stride)?;
    let out_w = output_size(w, left, right, kw, stride)?;
    let rows = (out_h - 1) * stride + kh;
    let cols = (out_w - 1) * stride + kw;
    let x = fit(&fit(x, 2, top, rows, 0.0)?, 3, left, cols, 0.0)?;
    let y = x.conv2d(weight, 0, stride, 1, groups)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, c_out, 1, 1))?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pool::{max_pool2d_backward, max_pool2d_forward};
    use crate::kernels::{conv2d_backward_input, conv2d_forward, Activation, ConvGeometry, PoolGeometry};
    use candle_core::{Device, Var};

    /// xorshift64*: seeded, so every run draws the same shapes and values.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// Uniform in [-1, 1).
        fn values(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect()
        }
    }

    fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Largest difference at most 1e-4 of the reference's largest magnitude.
    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let (worst, scale) = crate::test_support::worst_and_scale(got, want);
        assert!(worst <= 1e-4 * scale.max(1e-3), "{what}: off by {worst} (scale {scale})");
    }

    /// `pads` for TensorFlow "SAME" on one axis: out = ceil(n / s), the odd pixel after.
    fn tf_same(n: usize, k: usize, s: usize) -> (usize, usize) {
        let total = ((n.div_ceil(s) - 1) * s + k).saturating_sub(n);
        (total / 2, total - total / 2)
    }

    /// The portable convolution (through [`conv2d`], or [`depthwise_conv2d`] directly) against
    /// the CPU kernels, forward and input gradient through Candle's autograd with a random
    /// upstream gradient.
    fn check_conv(
        seed: u64,
        input: [usize; 4],
        out_channels: usize,
        kernel: [usize; 2],
        stride: usize,
        pads: [usize; 4],
        groups: usize,
    ) {
        let what = format!("seed {seed}: input {input:?}, {out_channels} out, kernel {kernel:?}, stride {stride}, pads {pads:?}, groups {groups}");
        let g = ConvGeometry::new(input, out_channels, kernel, stride, pads, groups).unwrap();
        let mut rng = Rng::new(seed);
        let (x, w, b, r) = (
            rng.values(g.input_len()),
            rng.values(g.weight_len()),
            rng.values(out_channels),
            rng.values(g.output_len()),
        );
        let wt = tensor(&w, &[out_channels, input[1] / groups, kernel[0], kernel[1]]);
        let bt = tensor(&b, &[out_channels]);
        let xv = Var::from_tensor(&tensor(&x, &input)).unwrap();
        let [top, bottom, left, right] = pads;
        let y = conv2d(xv.as_tensor(), &wt, Some(&bt), stride, (top, bottom, left, right), groups).unwrap();
        assert_eq!(y.dims(), [input[0], out_channels, g.out_h, g.out_w], "{what}");
        assert_close(&values(&y), &conv2d_forward(&g, &x, &w, Some(&b), Activation::Identity), &what);
        if g.is_depthwise() {
            let direct =
                depthwise_conv2d(xv.as_tensor(), &wt, Some(&bt), stride, top, bottom, left, right).unwrap();
            assert_eq!(values(&direct), values(&y), "{what}: depthwise_conv2d directly");
        }
        let grads = y.mul(&tensor(&r, y.dims())).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(&xv).unwrap();
        assert_eq!(dx.dims(), input, "{what}: gradient shape");
        assert_close(&values(dx), &conv2d_backward_input(&g, &r, None, &w), &format!("{what}: gradient"));
    }

    /// The convolutions of ResNet and EfficientNet-Lite, including the geometries where Candle's
    /// own backward goes wrong: stride 2 with (padded size − kernel) odd, asymmetric padding.
    #[test]
    fn conv2d_matches_cpu_kernels_on_network_geometries() {
        // ResNet stem 7×7/2 pad 3 on odd, even and mixed sizes (38 − 7 = 31 is odd).
        check_conv(1, [2, 3, 33, 33], 8, [7, 7], 2, [3; 4], 1);
        check_conv(2, [1, 3, 32, 32], 8, [7, 7], 2, [3; 4], 1);
        check_conv(3, [1, 3, 33, 32], 4, [7, 7], 2, [3; 4], 1);
        // 3×3/2 pad 1 on 56 and 55; the 1×1/2 downsample; a plain 3×3/1.
        check_conv(4, [2, 8, 56, 56], 8, [3, 3], 2, [1; 4], 1);
        check_conv(5, [1, 8, 55, 55], 16, [3, 3], 2, [1; 4], 1);
        check_conv(6, [2, 8, 15, 14], 16, [1, 1], 2, [0; 4], 1);
        check_conv(7, [1, 8, 14, 14], 8, [3, 3], 1, [1; 4], 1);
        // TF "SAME": the odd pixel of padding after (224 → 112 with 3×3/2 pads 0 and 1).
        for (seed, n, k, s) in [(8, 32, 3, 2), (9, 33, 3, 2), (10, 28, 5, 2), (11, 14, 5, 1), (12, 224, 3, 2)]
        {
            let (before, after) = tf_same(n, k, s);
            let channels = if n > 100 { (3, 4) } else { (6, 8) };
            check_conv(seed, [1, channels.0, n, n], channels.1, [k, k], s, [before, after, before, after], 1);
        }
        // Grouped but not depthwise; a non-square kernel.
        check_conv(13, [2, 4, 9, 9], 6, [3, 3], 1, [1; 4], 2);
        check_conv(14, [1, 3, 10, 9], 5, [3, 1], 2, [1, 0, 0, 0], 1);
    }

    /// EfficientNet-Lite's depthwise convolutions: kernels 3 and 5, strides 1 and 2, TF-SAME and
    /// symmetric padding, batch 2, odd and even sizes.
    #[test]
    fn depthwise_matches_cpu_kernels() {
        let mut seed = 100;
        for k in [3, 5] {
            for s in [1, 2] {
                for n in [14, 15] {
                    let (before, after) = tf_same(n, k, s);
                    check_conv(seed, [2, 6, n, n], 6, [k, k], s, [before, after, before, after], 6);
                    check_conv(seed + 1, [1, 5, n, n + 3], 5, [k, k], s, [k / 2; 4], 5);
                    seed += 2;
                }
            }
        }
        // Lite0's largest depthwise plane, 32 channels at 112², cut down to 8 channels.
        check_conv(seed, [1, 8, 112, 112], 8, [3, 3], 1, [1; 4], 8);
    }

    /// Random geometries: sizes 1–17, kernels 1–7 (some not square), strides 1–3, any padding
    /// below the kernel on each side independently, dense, grouped and depthwise.
    #[test]
    fn random_geometries_match_cpu_kernels() {
        let mut rng = Rng::new(0x5EED);
        let mut checked = 0;
        while checked < 60 {
            let kh = 1 + rng.below(7);
            let kw = if rng.below(3) == 0 { 1 + rng.below(7) } else { kh };
            let stride = 1 + rng.below(3);
            let (h, w) = (1 + rng.below(17), 1 + rng.below(17));
            let pads = [rng.below(kh), rng.below(kh), rng.below(kw), rng.below(kw)];
            if h + pads[0] + pads[1] < kh || w + pads[2] + pads[3] < kw {
                continue;
            }
            let (cin, cout, groups) = match rng.below(3) {
                0 => {
                    let c = 2 + rng.below(5);
                    (c, c, c)
                }
                1 => (4, 2 + 2 * rng.below(3), 2),
                _ => (1 + rng.below(4), 1 + rng.below(4), 1),
            };
            check_conv(1000 + checked, [1 + rng.below(2), cin, h, w], cout, [kh, kw], stride, pads, groups);
            checked += 1;
        }
    }

    /// The portable pool against the CPU kernel: the same maxima, and the gradient at exactly
    /// the same input positions (the upstream gradient is positive, so no position can receive a
    /// zero sum by cancellation) with the same values.
    fn check_pool(
        what: &str,
        x: &[f32],
        shape: [usize; 4],
        kernel: usize,
        stride: usize,
        pad: usize,
        seed: u64,
    ) {
        let [n, c, h, w] = shape;
        let what = format!("{what}: {shape:?} kernel {kernel} stride {stride} pad {pad}");
        let g = PoolGeometry::new(n * c, (h, w), kernel, stride, pad).unwrap();
        let xv = Var::from_tensor(&tensor(x, &shape)).unwrap();
        let y = max_pool2d(xv.as_tensor(), kernel, stride, pad).unwrap();
        assert_eq!(y.dims(), [n, c, g.out_h, g.out_w], "{what}");
        let mut want = vec![0.0; n * c * g.out_h * g.out_w];
        max_pool2d_forward(&g, x, &mut want);
        assert_eq!(values(&y), want, "{what}: forward");

        let dy: Vec<f32> = Rng::new(seed).values(want.len()).iter().map(|v| 1.0 + 0.5 * v).collect();
        let grads = y.mul(&tensor(&dy, y.dims())).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = values(grads.get(&xv).unwrap());
        let mut want_dx = vec![0.0; x.len()];
        max_pool2d_backward(&g, x, &dy, &mut want_dx);
        let receivers = |d: &[f32]| d.iter().map(|&v| v != 0.0).collect::<Vec<_>>();
        assert_eq!(receivers(&dx), receivers(&want_dx), "{what}: where the gradient goes");
        assert_close(&dx, &want_dx, &format!("{what}: gradient"));
    }

    /// Max-pool geometries (ResNet's 3×3/2 pad 1 stem pool on 56 and 55, overlapping and
    /// non-overlapping windows) on data with no ties, with many (ReLU'd, integer-valued) and with
    /// nothing but ties (all zeros).
    #[test]
    fn max_pool_matches_cpu_kernels_with_ties() {
        let geometries = [
            ([2, 3, 56, 56], 3, 2, 1),
            ([1, 3, 55, 55], 3, 2, 1),
            ([2, 2, 56, 55], 3, 2, 1),
            ([1, 2, 9, 8], 2, 2, 0),
            ([2, 2, 7, 7], 3, 1, 1),
            ([1, 2, 11, 13], 5, 3, 2),
            ([1, 1, 4, 4], 4, 1, 3),
        ];
        for (i, (shape, kernel, stride, pad)) in geometries.into_iter().enumerate() {
            let len = shape.iter().product();
            let seed = 10 * i as u64;
            let random = Rng::new(seed).values(len);
            let relu: Vec<f32> = random.iter().map(|v| v.max(0.0)).collect();
            let integers: Vec<f32> =
                Rng::new(seed + 1).values(len).iter().map(|v| (1.5 * (v + 1.0)).floor()).collect();
            assert!(relu.iter().filter(|&&v| v == 0.0).count() > len / 3, "ReLU'd data has ties");
            for (kind, x) in
                [("random", random), ("relu", relu), ("integers", integers), ("zeros", vec![0.0; len])]
            {
                check_pool(kind, &x, shape, kernel, stride, pad, seed + 2);
            }
        }
    }

    /// Hand-made, independent of the CPU kernels: where each window's gradient lands.
    #[test]
    fn max_pool_gradient_goes_whole_to_the_first_maximum() {
        let pool = |x: &[f32], dy: &[f32]| -> (Vec<f32>, Vec<f32>) {
            let xv = Var::from_tensor(&tensor(x, &[1, 1, 5, 5])).unwrap();
            let y = max_pool2d(xv.as_tensor(), 3, 2, 1).unwrap();
            let grads = y.mul(&tensor(dy, &[1, 1, 3, 3])).unwrap().sum_all().unwrap().backward().unwrap();
            (values(&y), values(grads.get(&xv).unwrap()))
        };
        let dy = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        let expect = |landing: [(usize, usize); 9]| {
            let mut dx = [0.0f32; 25];
            landing.iter().zip(dy).for_each(|(&(r, c), g)| dx[r * 5 + c] += g);
            dx.to_vec()
        };
        // All zeros: every window's first element that is not padding. Window rows start at
        // 2·oy − 1 (0 for the first window), so rows 0, 1, 3 and likewise columns.
        let (y, dx) = pool(&[0.0; 25], &dy);
        assert_eq!(y, [0.0; 9]);
        let corners = [0, 1, 3];
        let landing: Vec<(usize, usize)> =
            corners.iter().flat_map(|&r| corners.iter().map(move |&c| (r, c))).collect();
        assert_eq!(dx, expect(landing.try_into().unwrap()), "all zeros");

        #[rustfmt::skip]
        let x = [
            0.0, 0.0, 3.0, 3.0, 0.0,
            0.0, 0.0, 3.0, 0.0, 0.0,
            2.0, 2.0, 0.0, 0.0, 1.0,
            2.0, 0.0, 0.0, 1.0, 1.0,
            0.0, 0.0, 0.0, 1.0, 1.0,
        ];
        let (y, dx) = pool(&x, &dy);
        assert_eq!(y, [0.0, 3.0, 3.0, 2.0, 3.0, 1.0, 2.0, 1.0, 1.0]);
        // Window (1, 0) has three 2s and takes (2, 0); window (2, 0) shares (3, 0) with it but
        // only as its own first maximum; windows (2, 1) and (2, 2) both land on (3, 3).
        let landing = [(0, 0), (0, 2), (0, 3), (2, 0), (1, 2), (2, 4), (3, 0), (3, 3), (3, 3)];
        assert_eq!(dx, expect(landing), "ties");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let x = tensor(&[0.0; 2 * 5 * 5], &[1, 2, 5, 5]);
        assert!(max_pool2d(&x, 3, 2, 3).is_err(), "padding as large as the kernel");
        assert!(max_pool2d(&x, 3, 0, 1).is_err(), "stride 0");
        assert!(max_pool2d(&x, 8, 1, 1).is_err(), "kernel larger than the padded input");
        let w = tensor(&[0.0; 2 * 9], &[2, 1, 3, 3]);
        assert!(conv2d(&x, &w, None, 1, (1, 1, 1, 1), 1).is_err(), "2 input channels, weight for 1");
        assert!(conv2d(&x, &w, None, 1, (1, 1, 1, 1), 3).is_err(), "groups do not divide the channels");
        assert!(conv2d(&x, &w, None, 0, (1, 1, 1, 1), 2).is_err(), "stride 0");
        let w3 = tensor(&[0.0; 3 * 9], &[3, 1, 3, 3]);
        assert!(depthwise_conv2d(&x, &w3, None, 1, 1, 1, 1, 1).is_err(), "3 depthwise filters, 2 channels");
        assert!(conv2d(&x, &w, None, 1, (1, 1, 1, 1), 2).is_ok());
        let half = x.to_dtype(DType::F16).unwrap();
        assert!(max_pool2d(&half, 3, 2, 1).is_err(), "half precision would pad with -∞");
    }

    /// Median seconds of `runs` calls of `a` and of `b`, after one warm-up call of each,
    /// interleaved so that a change in the machine's load affects both alike.
    fn median_seconds(runs: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
        a();
        b();
        let time = |f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        let (mut ta, mut tb): (Vec<f64>, Vec<f64>) = (0..runs).map(|_| (time(&mut a), time(&mut b))).unzip();
        ta.sort_by(f64::total_cmp);
        tb.sort_by(f64::total_cmp);
        (ta[runs / 2], tb[runs / 2])
    }

    /// What the portable engine costs on the CPU against the kernels of the fast engine, for
    /// forward + input gradient of single layers (batch 1). Checks the two agree, then prints.
    ///
    ///     RAYON_NUM_THREADS=2 cargo test --release --lib portable::tests::timing -- --ignored --nocapture
    #[test]
    #[ignore = "timing, run by hand"]
    fn timing_portable_against_cpu_kernels() {
        let convs = [
            ("ResNet-18 layer1 conv 64→64 3×3/1 @56²", [1, 64, 56, 56], 64, 3, 1, [1; 4], 1),
            ("ResNet-18 stem conv 3→64 7×7/2 @224²", [1, 3, 224, 224], 64, 7, 2, [3; 4], 1),
            ("Lite0 depthwise 32 ch 3×3/1 @112²", [1, 32, 112, 112], 32, 3, 1, [1; 4], 32),
            ("Lite0 depthwise 144 ch 5×5/2 @56²", [1, 144, 56, 56], 144, 5, 2, [1, 2, 1, 2], 144),
            ("Lite0 depthwise 672 ch 5×5/1 @14²", [1, 672, 14, 14], 672, 5, 1, [2; 4], 672),
        ];
        for (name, input, cout, k, s, pads, groups) in convs {
            let g = ConvGeometry::new(input, cout, [k, k], s, pads, groups).unwrap();
            let mut rng = Rng::new(7);
            let (x, w, r) =
                (rng.values(g.input_len()), rng.values(g.weight_len()), rng.values(g.output_len()));
            let (xt, wt) = (tensor(&x, &input), tensor(&w, &[cout, input[1] / groups, k, k]));
            let rt = tensor(&r, &[1, cout, g.out_h, g.out_w]);
            let [top, bottom, left, right] = pads;
            let (mut portable_dx, mut kernel_dx) = (Vec::new(), Vec::new());
            let (portable, kernels) = median_seconds(
                7,
                || {
                    let xv = Var::from_tensor(&xt).unwrap();
                    let y = conv2d(xv.as_tensor(), &wt, None, s, (top, bottom, left, right), groups).unwrap();
                    let grads = y.mul(&rt).unwrap().sum_all().unwrap().backward().unwrap();
                    portable_dx = values(grads.get(&xv).unwrap());
                },
                || {
                    std::hint::black_box(conv2d_forward(&g, &x, &w, None, Activation::Identity));
                    kernel_dx = conv2d_backward_input(&g, &r, None, &w);
                },
            );
            assert_close(&portable_dx, &kernel_dx, name);
            println!("{name}: portable {:.1} ms, CPU kernels {:.1} ms", portable * 1e3, kernels * 1e3);
        }
        let (shape, len) = ([1, 64, 112, 112], 64 * 112 * 112);
        let x: Vec<f32> = Rng::new(8).values(len).iter().map(|v| v.max(0.0)).collect();
        let g = PoolGeometry::new(64, (112, 112), 3, 2, 1).unwrap();
        let dy = Rng::new(9).values(64 * 56 * 56);
        let (xt, dyt) = (tensor(&x, &shape), tensor(&dy, &[1, 64, 56, 56]));
        let (mut portable_dx, mut kernel_dx) = (Vec::new(), vec![0.0; len]);
        let (portable, kernels) = median_seconds(
            7,
            || {
                let xv = Var::from_tensor(&xt).unwrap();
                let y = max_pool2d(xv.as_tensor(), 3, 2, 1).unwrap();
                let grads = y.mul(&dyt).unwrap().sum_all().unwrap().backward().unwrap();
                portable_dx = values(grads.get(&xv).unwrap());
            },
            || {
                let mut y = vec![0.0; dy.len()];
                max_pool2d_forward(&g, &x, &mut y);
                max_pool2d_backward(&g, &x, &dy, &mut kernel_dx);
            },
        );
        assert_close(&portable_dx, &kernel_dx, "max-pool");
        println!("ResNet stem max-pool 64 ch 3×3/2 pad 1 @112² (ReLU'd input): portable {:.1} ms, CPU kernels {:.1} ms", portable * 1e3, kernels * 1e3);
    }
}
