//! CPU kernels for the ops the models are built from.
//!
//! Candle's own CPU convolution runs grouped convolutions one group at a time and its backward
//! always computes weight gradients through a direct-loop transposed convolution (SPEC §7). We never
//! need weight gradients, and EfficientNet-Lite is mostly depthwise, so these kernels provide:
//! a gemm-based convolution (im2col, 1×1 convolutions skip it), a direct depthwise convolution, the
//! input-gradient of both, and a padded max-pool with PyTorch's tie-breaking.
//!
//! Everything here works on plain contiguous NCHW `f32` slices so it can be tested without Candle.

use rayon::prelude::*;

/// Shape of one 2-D convolution. Padding may be asymmetric (TensorFlow "SAME").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub groups: usize,
}

impl ConvGeometry {
    fn group_in(&self) -> usize {
        self.in_channels / self.groups
    }
    fn group_out(&self) -> usize {
        self.out_channels / self.groups
    }
    /// Rows of the im2col matrix of one group: one per (input channel, ky, kx).
    fn col_rows(&self) -> usize {
        self.group_in() * self.kernel_h * self.kernel_w
    }
    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }
    fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.in_channels && self.out_channels == self.in_channels && self.groups > 1
    }
    /// A 1×1, stride-1, unpadded convolution is a plain matrix product on the input itself.
    fn is_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.stride == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && self.out_h == self.in_h
            && self.out_w == self.in_w
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_plane()
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_plane()
    }
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.col_rows()
    }
}

/// `dst (m×n) [+]= a (m×k) · b (k×n)`, with `a` and `b` given by row/column strides so that
/// transposed operands need no copy.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    threads: usize,
) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every index the strides can reach inside the slices, and
    // `dst` does not alias `a` or `b` (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Planes per rayon task, so that a task does at least ~16k elements of work: small planes (7×7
/// at the end of a network) are otherwise dominated by scheduling.
pub(crate) fn planes_per_task(plane: usize) -> usize {
    (16_384 / plane.max(1)).max(1)
}

fn gemm_threads(work: usize) -> usize {
    // Spawning rayon tasks for tiny products costs more than it saves.
    if work < 1 << 18 {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Input coordinate of output position `o` and kernel tap `k`, if it falls inside the image.
#[inline]
fn source_index(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let i = (o * stride + k).checked_sub(pad)?;
    (i < size).then_some(i)
}

/// Unfolds the input channels of one group of one image into a (col_rows × out_plane) matrix.
fn im2col(g: &ConvGeometry, x_group: &[f32], col: &mut [f32]) {
    let (kh, kw, plane) = (g.kernel_h, g.kernel_w, g.out_plane());
    col.par_chunks_mut(plane).with_min_len(planes_per_task(plane)).enumerate().for_each(|(row, out)| {
        let ci = row / (kh * kw);
        let ky = (row / kw) % kh;
        let kx = row % kw;
        let src = &x_group[ci * g.in_plane()..(ci + 1) * g.in_plane()];
        for oy in 0..g.out_h {
            let dst = &mut out[oy * g.out_w..(oy + 1) * g.out_w];
            match source_index(oy, ky, g.stride, g.pad_top, g.in_h) {
                None => dst.fill(0.0),
                Some(iy) => {
                    let line = &src[iy * g.in_w..(iy + 1) * g.in_w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        *d = match source_index(ox, kx, g.stride, g.pad_left, g.in_w) {
                            Some(ix) => line[ix],
                            None => 0.0,
                        };
                    }
                }
            }
        }
    });
}

/// Adds a (col_rows × out_plane) matrix back onto the input channels it was unfolded from.
fn col2im(g: &ConvGeometry, col: &[f32], dx_group: &mut [f32]) {
    let (kh, kw, plane) = (g.kernel_h, g.kernel_w, g.out_plane());
    dx_group.par_chunks_mut(g.in_plane()).with_min_len(planes_per_task(g.in_plane())).enumerate().for_each(
        |(ci, dst)| {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = (ci * kh + ky) * kw + kx;
                    let src = &col[row * plane..(row + 1) * plane];
                    for oy in 0..g.out_h {
                        let Some(iy) = source_index(oy, ky, g.stride, g.pad_top, g.in_h) else {
                            continue;
                        };
                        for ox in 0..g.out_w {
                            if let Some(ix) = source_index(ox, kx, g.stride, g.pad_left, g.in_w) {
                                dst[iy * g.in_w + ix] += src[oy * g.out_w + ox];
                            }
                        }
                    }
                }
            }
        },
    );
}

/// Depthwise convolution works on one zero-padded copy of each input plane, split into `stride`
/// column phases (phase p holds padded columns p, p+s, p+2s, …). Every kernel tap then reads a
/// contiguous run of one phase row, so the inner loops are plain slice multiply-adds that the
/// compiler vectorises, with no bounds logic per element.
struct DepthwisePlan {
    /// Padded rows and columns actually read: (out − 1)·stride + kernel.
    rows: usize,
    cols: usize,
    /// Columns of one phase.
    phase_cols: usize,
}

impl DepthwisePlan {
    fn new(g: &ConvGeometry) -> Self {
        let rows = (g.out_h - 1) * g.stride + g.kernel_h;
        let cols = (g.out_w - 1) * g.stride + g.kernel_w;
        Self { rows, cols, phase_cols: cols.div_ceil(g.stride) }
    }

    fn phase_len(&self) -> usize {
        self.rows * self.phase_cols
    }

    /// Zero-pads `src` (in_h × in_w) and splits it into phases (stride × rows × phase_cols).
    fn load(&self, g: &ConvGeometry, src: &[f32], phases: &mut [f32]) {
        phases.fill(0.0);
        let s = g.stride;
        for iy in 0..g.in_h {
            let py = iy + g.pad_top;
            if py >= self.rows {
                break;
            }
            let line = &src[iy * g.in_w..(iy + 1) * g.in_w];
            for (ix, &v) in line.iter().enumerate() {
                let px = ix + g.pad_left;
                if px >= self.cols {
                    break;
                }
                phases[(px % s) * self.phase_len() + py * self.phase_cols + px / s] = v;
            }
        }
    }

    /// The inverse of `load` for gradients: gathers the phases back into an unpadded plane.
    fn store(&self, g: &ConvGeometry, phases: &[f32], dst: &mut [f32]) {
        let s = g.stride;
        for iy in 0..g.in_h {
            let py = iy + g.pad_top;
            let line = &mut dst[iy * g.in_w..(iy + 1) * g.in_w];
            if py >= self.rows {
                line.fill(0.0);
                continue;
            }
            for (ix, d) in line.iter_mut().enumerate() {
                let px = ix + g.pad_left;
                *d = if px < self.cols {
                    phases[(px % s) * self.phase_len() + py * self.phase_cols + px / s]
                } else {
                    0.0
                };
            }
        }
    }
}

fn depthwise_forward(g: &ConvGeometry, x: &[f32], w: &[f32], out: &mut [f32]) {
    let (kh, kw, s) = (g.kernel_h, g.kernel_w, g.stride);
    let plan = DepthwisePlan::new(g);
    out.par_chunks_mut(g.out_plane()).with_min_len(planes_per_task(g.out_plane())).enumerate().for_each_init(
        || vec![0f32; s * plan.phase_len()],
        |phases, (nc, dst)| {
            let c = nc % g.out_channels;
            plan.load(g, &x[nc * g.in_plane()..(nc + 1) * g.in_plane()], phases);
            let taps = &w[c * kh * kw..(c + 1) * kh * kw];
            dst.fill(0.0);
            for (oy, row) in dst.chunks_exact_mut(g.out_w).enumerate() {
                for ky in 0..kh {
                    let py = oy * s + ky;
                    for kx in 0..kw {
                        let wt = taps[ky * kw + kx];
                        let start = (kx % s) * plan.phase_len() + py * plan.phase_cols + kx / s;
                        let src = &phases[start..start + g.out_w];
                        for (d, v) in row.iter_mut().zip(src) {
                            *d += wt * v;
                        }
                    }
                }
            }
        },
    );
}

fn depthwise_backward_input(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (kh, kw, s) = (g.kernel_h, g.kernel_w, g.stride);
    let plan = DepthwisePlan::new(g);
    dx.par_chunks_mut(g.in_plane()).with_min_len(planes_per_task(g.in_plane())).enumerate().for_each_init(
        || vec![0f32; s * plan.phase_len()],
        |phases, (nc, dst)| {
            let c = nc % g.in_channels;
            let grad = &dy[nc * g.out_plane()..(nc + 1) * g.out_plane()];
            let taps = &w[c * kh * kw..(c + 1) * kh * kw];
            phases.fill(0.0);
            for (oy, row) in grad.chunks_exact(g.out_w).enumerate() {
                for ky in 0..kh {
                    let py = oy * s + ky;
                    for kx in 0..kw {
                        let wt = taps[ky * kw + kx];
                        let start = (kx % s) * plan.phase_len() + py * plan.phase_cols + kx / s;
                        for (d, v) in phases[start..start + g.out_w].iter_mut().zip(row) {
                            *d += wt * v;
                        }
                    }
                }
            }
            plan.store(g, phases, dst);
        },
    );
}

/// `out = conv(x, w) + bias`. `w` is (out_channels, in_channels/groups, kh, kw).
pub fn conv2d_forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    assert_eq!(x.len(), g.input_len());
    assert_eq!(w.len(), g.weight_len());
    assert_eq!(out.len(), g.output_len());
    if g.is_depthwise() {
        depthwise_forward(g, x, w, out);
    } else {
        let (gi, go, rows, plane) = (g.group_in(), g.group_out(), g.col_rows(), g.out_plane());
        let mut col = if g.is_pointwise() { Vec::new() } else { vec![0.0; rows * plane] };
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
                let dst = &mut out[(n * g.out_channels + grp * go) * plane..][..go * plane];
                matmul(
                    go,
                    plane,
                    rows,
                    dst,
                    false,
                    ws,
                    rows,
                    1,
                    b,
                    plane,
                    1,
                    gemm_threads(go * plane * rows),
                );
            }
        }
    }
    if let Some(bias) = bias {
        out.par_chunks_mut(g.out_plane()).with_min_len(planes_per_task(g.out_plane())).enumerate().for_each(
            |(nc, plane)| {
                let b = bias[nc % g.out_channels];
                plane.iter_mut().for_each(|v| *v += b);
            },
        );
    }
}

/// Gradient of the convolution with respect to its input only (weights are constants here).
pub fn conv2d_backward_input(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert_eq!(dy.len(), g.output_len());
    assert_eq!(w.len(), g.weight_len());
    assert_eq!(dx.len(), g.input_len());
    if g.is_depthwise() {
        depthwise_backward_input(g, dy, w, dx);
        return;
    }
    // col2im accumulates.
    dx.fill(0.0);
    let (gi, go, rows, plane) = (g.group_in(), g.group_out(), g.col_rows(), g.out_plane());
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![0.0; rows * plane] };
    for n in 0..g.batch {
        for grp in 0..g.groups {
            let dys = &dy[(n * g.out_channels + grp * go) * plane..][..go * plane];
            let ws = &w[grp * go * rows..(grp + 1) * go * rows];
            let dxs = &mut dx[(n * g.in_channels + grp * gi) * g.in_plane()..][..gi * g.in_plane()];
            let threads = gemm_threads(go * plane * rows);
            // W_gᵀ (rows × go) · dy_g (go × plane)
            if g.is_pointwise() {
                matmul(rows, plane, go, dxs, false, ws, 1, rows, dys, plane, 1, threads);
            } else {
                matmul(rows, plane, go, &mut col, false, ws, 1, rows, dys, plane, 1, threads);
                col2im(g, &col, dxs);
            }
        }
    }
}

/// Shape of a max-pool whose padding counts as -∞ (PyTorch `MaxPool2d(padding=p)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub planes: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl PoolGeometry {
    /// Flat index inside one input plane of the first maximum of the window at (oy, ox), the
    /// element PyTorch routes the gradient to. NaN wins, as in PyTorch.
    #[inline]
    fn argmax(&self, plane: &[f32], oy: usize, ox: usize) -> usize {
        let mut best = usize::MAX;
        let mut best_v = f32::NEG_INFINITY;
        for ky in 0..self.kernel {
            let Some(iy) = source_index(oy, ky, self.stride, self.pad, self.in_h) else { continue };
            for kx in 0..self.kernel {
                let Some(ix) = source_index(ox, kx, self.stride, self.pad, self.in_w) else { continue };
                let i = iy * self.in_w + ix;
                let v = plane[i];
                if best == usize::MAX || v > best_v || v.is_nan() {
                    best = i;
                    best_v = v;
                    if v.is_nan() {
                        return best;
                    }
                }
            }
        }
        best
    }
}

pub fn max_pool2d_forward(g: &PoolGeometry, x: &[f32], out: &mut [f32]) {
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    out.par_chunks_mut(op).with_min_len(planes_per_task(op)).enumerate().for_each(|(p, dst)| {
        let plane = &x[p * ip..(p + 1) * ip];
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                dst[oy * g.out_w + ox] = plane[g.argmax(plane, oy, ox)];
            }
        }
    });
}

pub fn max_pool2d_backward(g: &PoolGeometry, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    dx.par_chunks_mut(ip).with_min_len(planes_per_task(ip)).enumerate().for_each(|(p, dst)| {
        dst.fill(0.0);
        let plane = &x[p * ip..(p + 1) * ip];
        let grad = &dy[p * op..(p + 1) * op];
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                dst[g.argmax(plane, oy, ox)] += grad[oy * g.out_w + ox];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
                                        source_index(oy, ky, g.stride, g.pad_top, g.in_h),
                                        source_index(ox, kx, g.stride, g.pad_left, g.in_w),
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

    fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
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
            let mut out = vec![0.0; g.output_len()];
            conv2d_forward(g, &x, &w, None, &mut out);
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
            let mut dx = vec![0.0; g.input_len()];
            conv2d_backward_input(g, &dy, &w, &mut dx);
            for j in 0..g.input_len() {
                let mut e = vec![0.0; g.input_len()];
                e[j] = 1.0;
                let y = conv_naive(g, &e, &w);
                let expected: f32 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
                assert!((dx[j] - expected).abs() < 1e-4, "geometry {i}, input {j}: {} vs {expected}", dx[j]);
            }
        }
    }

    #[test]
    fn bias_is_added_per_channel() {
        let g = geometries()[3];
        let x = pseudo_random(g.input_len(), 1);
        let w = pseudo_random(g.weight_len(), 2);
        let bias: Vec<f32> = (0..g.out_channels).map(|c| c as f32).collect();
        let mut out = vec![0.0; g.output_len()];
        conv2d_forward(&g, &x, &w, Some(&bias), &mut out);
        let plain = conv_naive(&g, &x, &w);
        for (i, (a, b)) in out.iter().zip(&plain).enumerate() {
            let c = (i / (g.out_h * g.out_w)) % g.out_channels;
            assert!((a - b - c as f32).abs() < 1e-4);
        }
    }

    #[test]
    fn max_pool_padded_forward_and_backward() {
        // 1 plane 4×4, kernel 3, stride 2, pad 1 (ResNet's stem pool) -> 2×2.
        let g =
            PoolGeometry { planes: 1, in_h: 4, in_w: 4, kernel: 3, stride: 2, pad: 1, out_h: 2, out_w: 2 };
        #[rustfmt::skip]
        let x = [
             9.0, -2.0, -3.0, -4.0,
            -5.0, -6.0, -7.0, -8.0,
            -9.0, -1.0,  5.0,  5.0,
             0.0, -3.0,  5.0, -1.0,
        ];
        let mut out = [0.0; 4];
        max_pool2d_forward(&g, &x, &mut out);
        // The top-right window is all negative: the -∞ padding never wins.
        assert_eq!(out, [9.0, -2.0, 0.0, 5.0]);
        let mut dx = [0.0; 16];
        max_pool2d_backward(&g, &x, &[1.0, 2.0, 3.0, 4.0], &mut dx);
        let mut expected = [0.0; 16];
        expected[0] = 1.0;
        expected[1] = 2.0;
        expected[12] = 3.0;
        expected[10] = 4.0; // the first of three tied 5s in row-major order
        assert_eq!(dx, expected);
    }
}
