//! Dense and grouped convolution as gemm (im2col; a 1×1 convolution is a plain product) and its
//! input gradient, with bias and activation fused. Depthwise convolutions go to
//! [`super::depthwise`].
//!
//! Candle's own CPU convolution runs grouped convolutions one group at a time and its backward
//! always computes weight gradients through a direct-loop transposed convolution (SPEC §7). We
//! never need weight gradients, so the input gradient is all that is computed here.

use super::activation::{bias_activation, mask_in_place, Activation};
use super::depthwise::{depthwise_backward_input, depthwise_forward};
use super::gemm::{gemm_threads, matmul_raw, written_by};
use super::geometry::{source_index, ConvGeometry};
use super::parallel::{self, planes_per_task};

/// The output columns `ox` whose input column `ox·stride + k − pad` falls inside `0..size`, as a
/// range, with the input column of its first element.
#[inline]
fn valid_columns(
    k: usize,
    stride: usize,
    pad: usize,
    size: usize,
    out: usize,
) -> (std::ops::Range<usize>, usize) {
    // ox·s + k ≥ pad  and  ox·s + k < size + pad
    let lo = pad.saturating_sub(k).div_ceil(stride);
    let hi = if size + pad > k { (size + pad - k).div_ceil(stride).min(out) } else { 0 };
    if lo >= hi {
        // No output column reads the input (a kernel column that only ever sees padding).
        return (hi..hi, 0);
    }
    (lo..hi, lo * stride + k - pad)
}

/// Unfolds the input channels of one group of one image into a (col_rows × out_plane) matrix.
/// A dilated kernel's tap k reads the input k·dilation past the window's start: the taps'
/// offsets are all the unfolding needs to know of the dilation.
fn im2col(g: &ConvGeometry, x_group: &[f32], col: &mut [f32]) {
    let (kh, kw, plane, s, d) = (g.kernel_h, g.kernel_w, g.out_plane(), g.stride, g.dilation);
    parallel::for_each_chunk(col, plane, planes_per_task(plane), |row, out| {
        let ci = row / (kh * kw);
        let ky = ((row / kw) % kh) * d;
        let kx = (row % kw) * d;
        let src = &x_group[ci * g.in_plane()..(ci + 1) * g.in_plane()];
        let (columns, ix0) = valid_columns(kx, s, g.pad_left, g.in_w, g.out_w);
        for (oy, dst) in out.chunks_exact_mut(g.out_w).enumerate() {
            let Some(iy) = source_index(oy, ky, s, g.pad_top, g.in_h) else {
                dst.fill(0.0);
                continue;
            };
            let line = &src[iy * g.in_w + ix0..(iy + 1) * g.in_w];
            dst[..columns.start].fill(0.0);
            dst[columns.end..].fill(0.0);
            let dst = &mut dst[columns.clone()];
            if s == 1 {
                dst.copy_from_slice(&line[..dst.len()]);
            } else {
                dst.iter_mut().zip(line.iter().step_by(s)).for_each(|(d, &v)| *d = v);
            }
        }
    });
}

/// Adds a (col_rows × out_plane) matrix back onto the input channels it was unfolded from.
fn col2im(g: &ConvGeometry, col: &[f32], dx_group: &mut [f32]) {
    let (kh, kw, plane, s, d) = (g.kernel_h, g.kernel_w, g.out_plane(), g.stride, g.dilation);
    parallel::for_each_chunk(dx_group, g.in_plane(), planes_per_task(g.in_plane()), |ci, dst| {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let src = &col[row * plane..(row + 1) * plane];
                let (columns, ix0) = valid_columns(kx * d, s, g.pad_left, g.in_w, g.out_w);
                for (oy, grad) in src.chunks_exact(g.out_w).enumerate() {
                    let Some(iy) = source_index(oy, ky * d, s, g.pad_top, g.in_h) else { continue };
                    let line = &mut dst[iy * g.in_w + ix0..(iy + 1) * g.in_w];
                    let grad = &grad[columns.clone()];
                    if s == 1 {
                        line.iter_mut().zip(grad).for_each(|(d, &v)| *d += v);
                    } else {
                        line.iter_mut().step_by(s).zip(grad).for_each(|(d, &v)| *d += v);
                    }
                }
            }
        }
    });
}

/// `act(conv(x, w) + bias)`. `w` is (out_channels, in_channels/groups, kh, kw).
///
/// # Panics
/// If `g` is not valid ([`ConvGeometry::validate`]) or a slice's length is not the one `g`
/// implies; both are checked before anything is computed.
pub fn conv2d_forward(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
) -> Vec<f32> {
    g.assert_valid();
    assert_eq!(x.len(), g.input_len(), "input length does not match the geometry");
    assert_eq!(w.len(), g.weight_len(), "weight length does not match the geometry");
    if let Some(b) = bias {
        assert_eq!(b.len(), g.out_channels, "one bias per output channel");
    }
    if g.is_depthwise() {
        let mut out = vec![0.0; g.output_len()];
        depthwise_forward(g, x, w, bias, act, &mut out);
        return out;
    }
    let (gi, go, rows, plane) = (g.group_in(), g.group_out(), g.col_rows(), g.out_plane());
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![0.0; rows * plane] };
    let write = |out: *mut f32| {
        for n in 0..g.batch {
            for grp in 0..g.groups {
                let xs = &x[(n * g.in_channels + grp * gi) * g.in_plane()..][..gi * g.in_plane()];
                let b = if g.is_pointwise() {
                    xs
                } else {
                    im2col(g, xs, &mut col);
                    &col
                };
                let ws = &w[grp * go * rows..(grp + 1) * go * rows];
                let threads = gemm_threads(go * plane * rows);
                // SAFETY: the (image, group) blocks of go·plane values tile the output exactly:
                // out_channels = groups·go, which `assert_valid` checked on entry.
                unsafe {
                    let dst = out.add((n * g.out_channels + grp * go) * plane);
                    matmul_raw(go, plane, rows, dst, false, ws, rows, 1, b, plane, 1, threads);
                }
            }
        }
    };
    // SAFETY: `write` writes every block of the output (see above).
    let mut out = unsafe { written_by(g.output_len(), write) };
    if bias.is_some() || act != Activation::Identity {
        parallel::for_each_chunk(&mut out, plane, planes_per_task(plane), |nc, plane| {
            bias_activation(plane, bias.map_or(0.0, |b| b[nc % g.out_channels]), act)
        });
    }
    out
}

/// Gradient of `act(conv(x, w) + bias)` with respect to `x` only (weights are constants here).
/// `mask` is the forward output and its activation: the gradient passes where the activation's
/// derivative is 1, judged from the output (see [`Activation::passes`]).
///
/// # Panics
/// As [`conv2d_forward`], checked before anything is computed.
pub fn conv2d_backward_input(
    g: &ConvGeometry,
    dy: &[f32],
    mask: Option<(&[f32], Activation)>,
    w: &[f32],
) -> Vec<f32> {
    g.assert_valid();
    assert_eq!(dy.len(), g.output_len(), "output gradient length does not match the geometry");
    assert_eq!(w.len(), g.weight_len(), "weight length does not match the geometry");
    let mask = mask.filter(|(y, act)| {
        assert_eq!(y.len(), g.output_len(), "output length does not match the geometry");
        *act != Activation::Identity
    });
    if g.is_depthwise() {
        let mut dx = vec![0.0; g.input_len()];
        depthwise_backward_input(g, dy, mask, w, &mut dx);
        return dx;
    }
    let mut masked: Vec<f32>;
    let dy = match mask {
        Some((y, act)) => {
            masked = dy.to_vec();
            mask_in_place(&mut masked, y, act);
            &masked
        }
        None => dy,
    };
    let (gi, go, rows, plane) = (g.group_in(), g.group_out(), g.col_rows(), g.out_plane());
    // W_gᵀ (rows × go) · dy_g (go × plane) for each image and group.
    let product = |n: usize, grp: usize, dst: *mut f32| {
        let dys = &dy[(n * g.out_channels + grp * go) * plane..][..go * plane];
        let ws = &w[grp * go * rows..(grp + 1) * go * rows];
        // SAFETY: the callers below hand a destination of rows·plane writable values.
        unsafe {
            matmul_raw(
                rows,
                plane,
                go,
                dst,
                false,
                ws,
                1,
                rows,
                dys,
                plane,
                1,
                gemm_threads(go * plane * rows),
            )
        }
    };
    if g.is_pointwise() {
        // The product is the input gradient itself, block by block.
        let write = |dx: *mut f32| {
            for n in 0..g.batch {
                for grp in 0..g.groups {
                    // SAFETY: the (image, group) blocks of gi·in_plane = rows·plane values tile dx
                    // (in_channels = groups·gi, checked on entry; in_plane = plane, pointwise).
                    product(n, grp, unsafe { dx.add((n * g.in_channels + grp * gi) * g.in_plane()) });
                }
            }
        };
        // SAFETY: `write` writes every block (see above).
        return unsafe { written_by(g.input_len(), write) };
    }
    // col2im accumulates.
    let mut dx = vec![0.0; g.input_len()];
    let mut col = vec![0.0; rows * plane];
    for n in 0..g.batch {
        for grp in 0..g.groups {
            product(n, grp, col.as_mut_ptr());
            let dxs = &mut dx[(n * g.in_channels + grp * gi) * g.in_plane()..][..gi * g.in_plane()];
            col2im(g, &col, dxs);
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::activation::Activation;
    use crate::kernels::geometry::source_index;
    use crate::kernels::test_support::{panic_message, pseudo_random, valid_geometry};

    /// The definition, one multiply-add at a time.
    fn conv_naive(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; g.output_len()];
        let (gi, go) = (g.group_in(), g.group_out());
        for n in 0..g.batch {
            for co in 0..g.out_channels {
                let grp = co / go;
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let mut s = 0.0;
                        for ci in 0..gi {
                            for ky in 0..g.kernel_h {
                                for kx in 0..g.kernel_w {
                                    let (Some(iy), Some(ix)) = (
                                        source_index(oy, ky * g.dilation, g.stride, g.pad_top, g.in_h),
                                        source_index(ox, kx * g.dilation, g.stride, g.pad_left, g.in_w),
                                    ) else {
                                        continue;
                                    };
                                    let xv =
                                        x[((n * g.in_channels + grp * gi + ci) * g.in_h + iy) * g.in_w + ix];
                                    let wv = w[((co * gi + ci) * g.kernel_h + ky) * g.kernel_w + kx];
                                    s += xv * wv;
                                }
                            }
                        }
                        out[((n * g.out_channels + co) * g.out_h + oy) * g.out_w + ox] = s;
                    }
                }
            }
        }
        out
    }

    fn geometries() -> Vec<ConvGeometry> {
        let mut v = Vec::new();
        // (batch, cin, h, w, cout, k, stride, pad_top, pad_left, groups)
        let cases = [
            (1, 3, 9, 7, 4, 3, 2, 0, 1, 1),
            (2, 6, 8, 8, 6, 5, 2, 1, 2, 6),
            (1, 5, 7, 6, 5, 3, 1, 1, 1, 5),
            (1, 8, 5, 5, 12, 1, 1, 0, 0, 1),
            (2, 4, 6, 5, 6, 3, 1, 1, 1, 2),
            (1, 4, 11, 13, 8, 7, 2, 3, 3, 1),
            (1, 16, 4, 4, 16, 3, 2, 0, 1, 16),
        ];
        for (batch, cin, h, w, cout, k, s, pt, pl, groups) in cases {
            // Bottom/right padding follows from the output size we pick.
            let out_h = (h + pt + 1 - k) / s + 1;
            let out_w = (w + pl + 1 - k) / s + 1;
            v.push(ConvGeometry {
                batch,
                in_channels: cin,
                in_h: h,
                in_w: w,
                out_channels: cout,
                kernel_h: k,
                kernel_w: k,
                stride: s,
                dilation: 1,
                pad_top: pt,
                pad_left: pl,
                out_h,
                out_w,
                groups,
            });
        }
        v
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "index {i}: {x} vs {y}");
        }
    }

    #[test]
    fn conv_forward_matches_definition() {
        for (i, g) in geometries().iter().enumerate() {
            let x = pseudo_random(g.input_len(), i as u64);
            let w = pseudo_random(g.weight_len(), 100 + i as u64);
            let out = conv2d_forward(g, &x, &w, None, Activation::Identity);
            assert_close(&out, &conv_naive(g, &x, &w));
        }
    }

    /// The input gradient must be the adjoint of the forward map: <conv(x), dy> == <x, convᵀ(dy)>
    /// for all x, dy. Checking it on random vectors checks every element of the Jacobian.
    #[test]
    fn conv_backward_is_adjoint_of_forward() {
        for (i, g) in geometries().iter().enumerate() {
            let w = pseudo_random(g.weight_len(), 200 + i as u64);
            let dy = pseudo_random(g.output_len(), 300 + i as u64);
            let dx = conv2d_backward_input(g, &dy, None, &w);
            for j in 0..g.input_len() {
                let mut e = vec![0.0; g.input_len()];
                e[j] = 1.0;
                let y = conv_naive(g, &e, &w);
                let expected: f32 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
                assert!((dx[j] - expected).abs() < 1e-4, "geometry {i}, input {j}: {} vs {expected}", dx[j]);
            }
        }
    }

    /// Many random geometries (sizes 1–17, kernels 1–7, strides 1–3, dilations 1–4, any padding
    /// up to the kernel's extent, depthwise or grouped or dense), forward against the definition and backward by
    /// the adjoint identity <conv(x), dy> = <x, convᵀ(dy)> on random x and dy. The depthwise
    /// kernel's phase and block bookkeeping has many edge cases (planes smaller than the kernel,
    /// padding on one side only, runs ending mid-block); this is where they would show.
    #[test]
    fn random_geometries_forward_and_adjoint() {
        let mut next = crate::test_support::random_below(0x2545F4914F6CDD1Du64);
        for case in 0..400 {
            let k = 1 + next(7);
            let stride = 1 + next(3);
            // Dilated in a third of the cases (segmentation backbones, ASPP).
            let dilation = if next(3) == 0 { 2 + next(3) } else { 1 };
            let extent = (k - 1) * dilation + 1;
            let (h, w) = (1 + next(17), 1 + next(17));
            let (pad_top, pad_left) = (next(extent), next(extent));
            let (pad_bottom, pad_right) = (next(extent), next(extent));
            if h + pad_top + pad_bottom < extent || w + pad_left + pad_right < extent {
                continue;
            }
            let out_h = (h + pad_top + pad_bottom - extent) / stride + 1;
            let out_w = (w + pad_left + pad_right - extent) / stride + 1;
            let (cin, cout, groups) = match next(3) {
                0 => {
                    let c = 1 + next(5);
                    (c, c, c)
                }
                1 => (2 + 2 * next(2), 4, 2),
                _ => (1 + next(4), 1 + next(4), 1),
            };
            let g = ConvGeometry {
                batch: 1 + next(2),
                in_channels: cin,
                in_h: h,
                in_w: w,
                out_channels: cout,
                kernel_h: k,
                kernel_w: k,
                stride,
                dilation,
                pad_top,
                pad_left,
                out_h,
                out_w,
                groups,
            };
            let x = pseudo_random(g.input_len(), 1000 + case);
            let wt = pseudo_random(g.weight_len(), 2000 + case);
            let dy = pseudo_random(g.output_len(), 3000 + case);
            let y = conv2d_forward(&g, &x, &wt, None, Activation::Identity);
            assert_close(&y, &conv_naive(&g, &x, &wt));
            let dx = conv2d_backward_input(&g, &dy, None, &wt);
            let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!((lhs - rhs).abs() < 1e-3 * (1.0 + lhs.abs()), "case {case} {g:?}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn bias_is_added_per_channel() {
        let g = geometries()[3];
        let x = pseudo_random(g.input_len(), 1);
        let w = pseudo_random(g.weight_len(), 2);
        let bias: Vec<f32> = (0..g.out_channels).map(|c| c as f32).collect();
        let out = conv2d_forward(&g, &x, &w, Some(&bias), Activation::Identity);
        let plain = conv_naive(&g, &x, &w);
        for (i, (a, b)) in out.iter().zip(&plain).enumerate() {
            let c = (i / (g.out_h * g.out_w)) % g.out_channels;
            assert!((a - b - c as f32).abs() < 1e-4);
        }
    }

    /// The entry points stop on a bad geometry before any kernel runs: a panic with the
    /// validation's message, never uninitialised memory or an out-of-bounds access.
    #[test]
    fn kernels_refuse_invalid_geometry_before_computing() {
        // Output channels not divisible by the groups (gemm path), with slices of exactly the
        // lengths the broken geometry implies, so that only the validation can catch it.
        let mut g = valid_geometry();
        g.out_channels = 7;
        let (x, w) = (vec![0.5; g.input_len()], vec![0.5; g.weight_len()]);
        let msg = panic_message(|| drop(conv2d_forward(&g, &x, &w, None, Activation::Identity)));
        assert!(msg.contains("invalid convolution geometry"), "{msg}");
        let dy = vec![0.5; g.output_len()];
        let msg = panic_message(|| drop(conv2d_backward_input(&g, &dy, None, &w)));
        assert!(msg.contains("invalid convolution geometry"), "{msg}");

        // Input channels not divisible (the pointwise input-gradient path).
        let mut g = ConvGeometry::new([1, 4, 5, 5], 4, [1, 1], 1, [0; 4], 2).unwrap();
        g.in_channels = 5;
        let (dy, w) = (vec![0.5; g.output_len()], vec![0.5; g.weight_len()]);
        let msg = panic_message(|| drop(conv2d_backward_input(&g, &dy, None, &w)));
        assert!(msg.contains("invalid convolution geometry"), "{msg}");

        // A valid geometry with a slice of the wrong length.
        let g = valid_geometry();
        let (x, w) = (vec![0.5; g.input_len() - 1], vec![0.5; g.weight_len()]);
        let msg = panic_message(|| drop(conv2d_forward(&g, &x, &w, None, Activation::Identity)));
        assert!(msg.contains("input length"), "{msg}");
        let x = vec![0.5; g.input_len()];
        let msg = panic_message(|| drop(conv2d_forward(&g, &x, &w, Some(&[1.0; 5]), Activation::Relu)));
        assert!(msg.contains("bias"), "{msg}");
    }
}
