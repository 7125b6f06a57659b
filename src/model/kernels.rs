//! CPU kernels for the ops the models are built from.
//!
//! Candle's own CPU convolution runs grouped convolutions one group at a time and its backward
//! always computes weight gradients through a direct-loop transposed convolution (SPEC §7). We never
//! need weight gradients, and EfficientNet-Lite is mostly depthwise, so these kernels provide:
//! a gemm-based convolution (im2col, 1×1 convolutions skip it), a direct depthwise convolution, the
//! input-gradient of both, and a padded max-pool with PyTorch's tie-breaking.
//!
//! Everything here works on plain contiguous NCHW `f32` slices so it can be tested without Candle.

use super::parallel;

/// Non-linearity fused into a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
}

impl Activation {
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// Whether the gradient passes, judged from the activation's *output* (which is all the
    /// backward pass keeps): for ReLU y > 0 ⇔ x > 0, for ReLU6 0 < y < 6 ⇔ 0 < x < 6.
    /// PyTorch's convention: no gradient at the boundaries.
    #[inline]
    pub fn passes(self, y: f32) -> bool {
        match self {
            Activation::Identity => true,
            Activation::Relu => y > 0.0,
            Activation::Relu6 => y > 0.0 && y < 6.0,
        }
    }
}

/// A convolution or pooling shape the kernels cannot run: the fields do not describe one
/// consistent operation (see [`ConvGeometry::validate`], [`PoolGeometry::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeometryError(String);

impl std::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GeometryError {}

/// Returns a [`GeometryError`] with a formatted message when `cond` holds.
macro_rules! reject_if {
    ($cond:expr, $($msg:tt)+) => {
        if $cond {
            return Err(GeometryError(format!($($msg)+)));
        }
    };
}

/// The largest number of `f32` values one buffer may hold (`Vec` allocations stop at
/// `isize::MAX` bytes). Every length a geometry implies is checked against it, so that no size
/// computation in the kernels can overflow and wrap around to a small, wrong length.
const MAX_VALUES: usize = isize::MAX as usize / std::mem::size_of::<f32>();

/// The product of `factors` if it fits in [`MAX_VALUES`].
fn checked_len(what: &str, factors: &[usize]) -> Result<usize, GeometryError> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .filter(|&n| n <= MAX_VALUES)
        .ok_or_else(|| GeometryError(format!("{what} of {factors:?} values is too large")))
}

/// Shape of one 2-D convolution. Padding may be asymmetric (TensorFlow "SAME").
///
/// The fields are public so that a geometry is easy to read and to write down, but the kernels
/// never trust them: every entry point runs [`ConvGeometry::validate`] before touching memory,
/// because the gemm path writes its output into uninitialised storage block by block, and a
/// geometry whose blocks do not tile the output (say, output channels not divisible by the
/// groups) would otherwise hand back uninitialised memory. [`ConvGeometry::new`] builds a valid
/// one from the padding on all four sides.
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
    /// The geometry of a convolution of an NCHW `input` by a (out_channels, in_channels/groups,
    /// kernel\[0\], kernel\[1\]) weight, with `pads` = (top, bottom, left, right) zeros and
    /// PyTorch's output size floor((n + before + after − k) / stride) + 1.
    pub fn new(
        input: [usize; 4],
        out_channels: usize,
        kernel: [usize; 2],
        stride: usize,
        pads: [usize; 4],
        groups: usize,
    ) -> Result<Self, GeometryError> {
        let [batch, in_channels, in_h, in_w] = input;
        let [kernel_h, kernel_w] = kernel;
        let [pad_top, pad_bottom, pad_left, pad_right] = pads;
        reject_if!(stride == 0, "convolution stride must be at least 1");
        let out = |size: usize, before: usize, after: usize, k: usize| -> Result<usize, GeometryError> {
            let padded = size
                .checked_add(before)
                .and_then(|n| n.checked_add(after))
                .ok_or_else(|| GeometryError("convolution padding overflows".into()))?;
            reject_if!(
                k == 0 || padded < k,
                "a {k}-wide kernel does not fit an input of {size} padded by {before} and {after}"
            );
            Ok((padded - k) / stride + 1)
        };
        let g = ConvGeometry {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            pad_top,
            pad_left,
            out_h: out(in_h, pad_top, pad_bottom, kernel_h)?,
            out_w: out(in_w, pad_left, pad_right, kernel_w)?,
            groups,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks that the fields describe one convolution the kernels can run without reading or
    /// writing out of bounds: positive kernel, stride, groups and sizes; channels divisible by
    /// the groups (else the (image, group) blocks do not tile the output, and part of it would
    /// be left uninitialised); an output size that some bottom/right padding ≥ 0 gives
    /// (in + pad_before < out·stride + kernel: no input row is a whole stride or more past the
    /// last window); and no buffer length that overflows.
    pub fn validate(&self) -> Result<(), GeometryError> {
        let g = self;
        reject_if!(
            g.kernel_h == 0 || g.kernel_w == 0 || g.stride == 0 || g.groups == 0,
            "kernel {}×{}, stride {} and groups {} must all be at least 1",
            g.kernel_h,
            g.kernel_w,
            g.stride,
            g.groups
        );
        reject_if!(
            g.in_channels == 0 || g.out_channels == 0,
            "a convolution needs channels ({} in, {} out)",
            g.in_channels,
            g.out_channels
        );
        reject_if!(
            !g.in_channels.is_multiple_of(g.groups) || !g.out_channels.is_multiple_of(g.groups),
            "{} input and {} output channels are not both divisible by {} groups",
            g.in_channels,
            g.out_channels,
            g.groups
        );
        reject_if!(
            g.in_h == 0 || g.in_w == 0 || g.out_h == 0 || g.out_w == 0,
            "empty plane: input {}×{}, output {}×{}",
            g.in_h,
            g.in_w,
            g.out_h,
            g.out_w
        );
        checked_len("the input", &[g.batch, g.in_channels, g.in_h, g.in_w])?;
        checked_len("the output", &[g.batch, g.out_channels, g.out_h, g.out_w])?;
        checked_len("the weight", &[g.out_channels, g.in_channels / g.groups, g.kernel_h, g.kernel_w])?;
        checked_len(
            "the unfolded input",
            &[g.in_channels / g.groups, g.kernel_h, g.kernel_w, g.out_h, g.out_w],
        )?;
        // Past the last window by two strides: bounds every extent the kernels derive from the
        // geometry (the depthwise phases round each side up by at most one stride and one row).
        let reach = |out: usize, k: usize, pad: usize, size: usize| {
            checked_len("the padded extent", &[out, g.stride])?
                .checked_add(k)
                .and_then(|n| n.checked_add(2 * g.stride))
                .filter(|&n| n <= MAX_VALUES && pad <= MAX_VALUES && size <= MAX_VALUES)
                .ok_or_else(|| GeometryError("the padded extent is too large".into()))
        };
        let reach_h = reach(g.out_h, g.kernel_h, g.pad_top, g.in_h)?;
        let reach_w = reach(g.out_w, g.kernel_w, g.pad_left, g.in_w)?;
        // The depthwise buffers: stride² phases of at most (reach_h/s)·(reach_w/s) values, each
        // rounded up to a whole register block (64 values), plus one wide output.
        checked_len("the depthwise phases", &[reach_h, reach_w, 128])?;
        // Every term is at most MAX_VALUES (an eighth of usize::MAX) here: the sums cannot wrap.
        reject_if!(
            g.in_h + g.pad_top >= g.out_h * g.stride + g.kernel_h
                || g.in_w + g.pad_left >= g.out_w * g.stride + g.kernel_w,
            "output {}×{} is too small for input {}×{} with kernel {}×{}, stride {}, padding {}/{}",
            g.out_h,
            g.out_w,
            g.in_h,
            g.in_w,
            g.kernel_h,
            g.kernel_w,
            g.stride,
            g.pad_top,
            g.pad_left
        );
        Ok(())
    }

    /// Panics, before any kernel touches memory, unless the geometry is valid.
    fn assert_valid(&self) {
        if let Err(e) = self.validate() {
            panic!("invalid convolution geometry: {e}");
        }
    }

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
pub(crate) fn matmul(
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
    assert!(m.checked_mul(n).is_some_and(|len| len <= dst.len()), "matmul: `dst` too short");
    // SAFETY: `dst` is an initialised slice of at least m·n values.
    unsafe { matmul_raw(m, n, k, dst.as_mut_ptr(), accumulate, a, a_rs, a_cs, b, b_rs, b_cs, threads) }
}

/// [`matmul`] into raw memory, so that a fresh output needs no zeroing first (for outputs that a
/// product overwrites completely, zero-filling was ~5% of a trace).
///
/// # Safety
/// `dst` must be valid for writes of m·n values, and, if `accumulate`, initialised. Without
/// `accumulate` the values are only written (gemm never reads the destination then).
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: the caller guarantees m·n writable values.
            unsafe { std::ptr::write_bytes(dst, 0, m * n) };
        }
        return;
    }
    // Checked: a wrapped-around product would let the asserts pass with indices out of bounds.
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows - 1).checked_mul(rs).zip((cols - 1).checked_mul(cs)).and_then(|(r, c)| r.checked_add(c))
    };
    assert!(last(m, a_rs, k, a_cs).is_some_and(|i| i < a.len()), "matmul: `a` too short");
    assert!(last(k, b_rs, n, b_cs).is_some_and(|i| i < b.len()), "matmul: `b` too short");
    // One block of rows or of columns (whichever the product has more of) per thread, each a
    // single-threaded gemm on the shared pool (see `parallel`): gemm's own rayon split competes
    // with Candle's spinning workers for the cores.
    let by_rows = m >= n;
    let blocks = threads.min(if by_rows { m } else { n }).max(1);
    let span = if by_rows { m } else { n }.div_ceil(blocks);
    let dst_addr = dst as usize;
    let block = |i: usize| {
        let start = i * span;
        let len = span.min(if by_rows { m } else { n }.saturating_sub(start));
        if len == 0 {
            return;
        }
        let (rows, cols) = if by_rows { (len, n) } else { (m, len) };
        let (a_off, b_off, d_off) =
            if by_rows { (start * a_rs, 0, start * n) } else { (0, start * b_cs, start) };
        // SAFETY: the asserts above keep every index the strides can reach inside `a` and `b`;
        // the caller guarantees `dst`, which does not alias them (they are shared borrows), and
        // the blocks write disjoint rows or columns of it.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                k,
                (dst_addr as *mut f32).add(d_off),
                1,
                n as isize,
                accumulate,
                a.as_ptr().add(a_off),
                a_cs as isize,
                a_rs as isize,
                b.as_ptr().add(b_off),
                b_cs as isize,
                b_rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    if blocks == 1 {
        block(0);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(blocks, |range| range.for_each(block));
    }
}

/// A vector of `len` values that `write` fills completely, given its uninitialised storage.
///
/// # Safety
/// `write` must write every one of the `len` values.
unsafe fn written_by(len: usize, write: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    write(out.spare_capacity_mut().as_mut_ptr().cast());
    // SAFETY: the caller guarantees `write` initialised all `len` values.
    unsafe { out.set_len(len) };
    out
}

/// `W · x` for a row-major (rows × x.len()) matrix: the classifier of the CPU trace (a
/// 1000×1280 product is ~1 ms as a scalar loop, a tenth of that through gemm).
pub(crate) fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    let k = x.len();
    assert!(k > 0 && w.len().is_multiple_of(k));
    let rows = w.len() / k;
    let mut out = vec![0.0; rows];
    matmul(rows, 1, k, &mut out, false, w, k, 1, x, 1, 1, gemm_threads(rows * k));
    out
}

/// Planes per rayon task, so that a task does at least ~16k elements of work: small planes (7×7
/// at the end of a network) are otherwise dominated by scheduling.
pub(crate) fn planes_per_task(plane: usize) -> usize {
    (16_384 / plane.max(1)).max(1)
}

fn gemm_threads(work: usize) -> usize {
    // Handing tiny products to other threads costs more than it saves.
    if work < 1 << 18 {
        1
    } else {
        parallel::threads()
    }
}

/// Input coordinate of output position `o` and kernel tap `k`, if it falls inside the image.
#[inline]
fn source_index(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let i = (o * stride + k).checked_sub(pad)?;
    (i < size).then_some(i)
}

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
fn im2col(g: &ConvGeometry, x_group: &[f32], col: &mut [f32]) {
    let (kh, kw, plane, s) = (g.kernel_h, g.kernel_w, g.out_plane(), g.stride);
    parallel::for_each_chunk(col, plane, planes_per_task(plane), |row, out| {
        let ci = row / (kh * kw);
        let ky = (row / kw) % kh;
        let kx = row % kw;
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
    let (kh, kw, plane, s) = (g.kernel_h, g.kernel_w, g.out_plane(), g.stride);
    parallel::for_each_chunk(dx_group, g.in_plane(), planes_per_task(g.in_plane()), |ci, dst| {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let src = &col[row * plane..(row + 1) * plane];
                let (columns, ix0) = valid_columns(kx, s, g.pad_left, g.in_w, g.out_w);
                for (oy, grad) in src.chunks_exact(g.out_w).enumerate() {
                    let Some(iy) = source_index(oy, ky, s, g.pad_top, g.in_h) else { continue };
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

/// Depthwise convolution works on one zero-padded copy of each input plane, split into stride²
/// phases (phase (a, b) holds padded rows a, a+s, … and columns b, b+s, …). Output row `oy`, tap
/// (ky, kx) then reads phase (ky mod s, kx mod s) at row oy + ky/s, column kx/s onwards, and — the
/// point of the layout — consecutive output rows are consecutive phase rows. Computing the output
/// "wide", with the phase's row pitch (a few columns too many per row, thrown away at the end),
/// turns every tap into a multiply-add over one contiguous run. The runs are then cut into blocks
/// of [`BLOCK`] values that stay in registers while every tap is added in: one load per
/// multiply-add. The plain per-row version ran at 1–3 GFLOP/s on 7×7 and 14×14 planes.
///
/// The backward pass is the same structure transposed, written as a gather: each input-gradient
/// phase is a correlation of the (wide, zero-extended) output gradient with that phase's taps.
struct DepthwisePlan {
    stride: usize,
    /// Rows and columns of one phase (the column count is the wide row pitch).
    phase_rows: usize,
    phase_cols: usize,
    /// Distance between phases in the buffer: a whole number of blocks.
    phase_stride: usize,
    /// Per tap, (ky, kx) row-major: its phase and its offset inside the phase.
    taps: Vec<(usize, usize)>,
    /// Per tap, where its run starts in the phase buffer.
    tap_offsets: Vec<usize>,
    /// Wide output length, a whole number of blocks.
    wide_len: usize,
    /// Largest in-phase tap offset: the zeros in front of the extended gradient.
    margin: usize,
    /// See [`DepthwisePlan::input_runs`].
    input_runs: Vec<(usize, usize, usize)>,
    /// Output columns: the part of each wide row that is kept.
    out_w: usize,
}

/// Per-task buffers of the depthwise kernels, reused from plane to plane.
struct DepthwiseScratch {
    phases: Vec<f32>,
    /// The wide output (forward) or the extended output gradient (backward).
    wide: Vec<f32>,
}

/// Values of one register block: eight AVX vectors, with room left for the broadcast weight.
const BLOCK: usize = 64;

impl DepthwisePlan {
    fn new(g: &ConvGeometry) -> Self {
        let s = g.stride;
        let rows = (g.out_h - 1) * s + g.kernel_h;
        let cols = (g.out_w - 1) * s + g.kernel_w;
        // One spare row: the wide run of the last output row reads past its phase row's end.
        let (phase_rows, phase_cols) = (rows.div_ceil(s) + 1, cols.div_ceil(s));
        let phase_stride = (phase_rows * phase_cols).next_multiple_of(BLOCK);
        let taps: Vec<(usize, usize)> = (0..g.kernel_h)
            .flat_map(|ky| (0..g.kernel_w).map(move |kx| (ky, kx)))
            .map(|(ky, kx)| ((ky % s) * s + kx % s, (ky / s) * phase_cols + kx / s))
            .collect();
        let tap_offsets = taps.iter().map(|&(phase, offset)| phase * phase_stride + offset).collect();
        let margin = taps.iter().map(|t| t.1).max().unwrap_or(0);
        let wide_len = (g.out_h * phase_cols).next_multiple_of(BLOCK);
        let mut plan = Self {
            stride: s,
            phase_rows,
            phase_cols,
            phase_stride,
            taps,
            tap_offsets,
            wide_len,
            margin,
            input_runs: Vec::new(),
            out_w: g.out_w,
        };
        plan.input_runs = plan.input_runs(g);
        plan
    }

    /// The phase buffer, with room for the last tap's whole wide run.
    fn phases_len(&self) -> usize {
        let last_run = self.tap_offsets.iter().max().unwrap_or(&0) + self.wide_len;
        (self.stride * self.stride * self.phase_stride).max(last_run)
    }

    /// Buffers for the forward pass.
    fn forward_scratch(&self) -> DepthwiseScratch {
        DepthwiseScratch { phases: vec![0.0; self.phases_len()], wide: vec![0.0; self.wide_len] }
    }

    /// Buffers for the backward pass: the output gradient laid out wide, behind `margin` zeros
    /// and with zeros up to a whole phase.
    fn backward_scratch(&self) -> DepthwiseScratch {
        let extended = (self.margin + self.phase_stride).max(self.margin + self.wide_len);
        DepthwiseScratch { phases: vec![0.0; self.phases_len()], wide: vec![0.0; extended] }
    }

    /// For every input row inside the padded window and every phase column b: the input
    /// columns that land in that phase (ix0, ix0 + s, …) as (input offset, phase buffer
    /// offset, count). Computed once per layer: the divisions it takes cost more than the
    /// multiply-adds on 7×7 planes when done per plane.
    fn input_runs(&self, g: &ConvGeometry) -> Vec<(usize, usize, usize)> {
        let s = self.stride;
        let mut runs = Vec::new();
        for iy in 0..g.in_h {
            let py = iy + g.pad_top;
            if py / s >= self.phase_rows {
                break;
            }
            let row_base = (py % s) * s * self.phase_stride + (py / s) * self.phase_cols;
            for b in 0..s {
                // First input column whose padded column is ≡ b (mod s).
                let ix0 = (b + s - g.pad_left % s) % s;
                let column0 = (ix0 + g.pad_left) / s;
                let count =
                    g.in_w.saturating_sub(ix0).div_ceil(s).min(self.phase_cols.saturating_sub(column0));
                if count > 0 {
                    runs.push((iy * g.in_w + ix0, row_base + b * self.phase_stride + column0, count));
                }
            }
        }
        runs
    }

    /// Zero-pads one input plane into its phases.
    #[inline(always)]
    fn load(&self, x: &[f32], phases: &mut [f32]) {
        phases.fill(0.0);
        let s = self.stride;
        for &(src, dst, count) in &self.input_runs {
            let dst = &mut phases[dst..dst + count];
            if s == 1 {
                dst.copy_from_slice(&x[src..src + count]);
            } else {
                dst.iter_mut().zip(x[src..].iter().step_by(s)).for_each(|(d, &v)| *d = v);
            }
        }
    }

    /// The adjoint of `load`: gathers the phases back into an unpadded plane.
    #[inline(always)]
    fn store(&self, phases: &[f32], dx: &mut [f32]) {
        dx.fill(0.0);
        let s = self.stride;
        for &(dst, src, count) in &self.input_runs {
            let src = &phases[src..src + count];
            if s == 1 {
                dx[dst..dst + count].copy_from_slice(src);
            } else {
                dx[dst..].iter_mut().step_by(s).zip(src).for_each(|(d, &v)| *d = v);
            }
        }
    }
}

/// `acc[i] += w · src[i]` over one register block.
#[inline(always)]
fn block_axpy(acc: &mut [f32; BLOCK], src: &[f32], w: f32) {
    let src: &[f32; BLOCK] = src[..BLOCK].try_into().expect("a whole block");
    for i in 0..BLOCK {
        acc[i] += w * src[i];
    }
}

/// Runs the body compiled for AVX2 + FMA when the CPU has them (runtime check, cached by std),
/// else for the baseline target: the default x86-64 target has only SSE2, half the vector width.
macro_rules! with_best_simd {
    ($name:ident, fn($($arg:ident: $ty:ty),*) $body:block) => {
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use with_best_simd;

/// Elements per rayon task for element-wise passes.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

// The activation is matched once, outside each loop, so that every loop body is a branch-free
// select the compiler vectorises (a match per element kept them scalar: 15% of a trace).
with_best_simd!(mask_chunk_in_place, fn(dy: &mut [f32], y: &[f32], act: Activation) {
    let it = dy.iter_mut().zip(y);
    match act {
        Activation::Identity => {}
        Activation::Relu => it.for_each(|(d, &y)| *d = if y > 0.0 { *d } else { 0.0 }),
        Activation::Relu6 => it.for_each(|(d, &y)| *d = if y > 0.0 && y < 6.0 { *d } else { 0.0 }),
    }
});

/// Zeroes the gradient `dy` where the activation whose output is `y` passes none.
pub(crate) fn mask_in_place(dy: &mut [f32], y: &[f32], act: Activation) {
    assert_eq!(dy.len(), y.len());
    parallel::for_each_chunk(dy, ELEMENTWISE_CHUNK, 1, |i, dy| {
        mask_chunk_in_place(dy, &y[i * ELEMENTWISE_CHUNK..][..dy.len()], act)
    });
}

with_best_simd!(bias_activation, fn(values: &mut [f32], bias: f32, act: Activation) {
    match act {
        Activation::Identity => values.iter_mut().for_each(|v| *v += bias),
        Activation::Relu => values.iter_mut().for_each(|v| *v = (*v + bias).max(0.0)),
        Activation::Relu6 => values.iter_mut().for_each(|v| *v = (*v + bias).clamp(0.0, 6.0)),
    }
});

with_best_simd!(depthwise_plane_forward, fn(
    plan: &DepthwisePlan,
    x: &[f32],
    taps: &[f32],
    bias: f32,
    act: Activation,
    scratch: &mut DepthwiseScratch,
    out: &mut [f32]
) {
    let DepthwiseScratch { phases, wide } = scratch;
    plan.load(x, phases);
    for (start, block) in (0..).step_by(BLOCK).zip(wide.chunks_exact_mut(BLOCK)) {
        let mut acc = [bias; BLOCK];
        for (&w, &offset) in taps.iter().zip(&plan.tap_offsets) {
            block_axpy(&mut acc, &phases[offset + start..], w);
        }
        block.copy_from_slice(&acc);
    }
    for (row, wide_row) in out.chunks_exact_mut(plan.out_w).zip(wide.chunks_exact(plan.phase_cols)) {
        row.copy_from_slice(&wide_row[..plan.out_w]);
    }
    bias_activation(out, 0.0, act);
});

with_best_simd!(depthwise_plane_backward, fn(
    plan: &DepthwisePlan,
    dy: &[f32],
    mask: Option<(&[f32], Activation)>,
    taps: &[f32],
    scratch: &mut DepthwiseScratch,
    dx: &mut [f32]
) {
    let DepthwiseScratch { phases, wide: extended } = scratch;
    // The gradient laid out wide behind `margin` zeros, zero in the spare columns and after the
    // last row, so that reads outside the output add nothing.
    extended.fill(0.0);
    let out_w = plan.out_w;
    for (oy, grad) in dy.chunks_exact(out_w).enumerate() {
        let dst = &mut extended[plan.margin + oy * plan.phase_cols..][..out_w];
        match mask {
            Some((y, act)) => {
                dst.copy_from_slice(grad);
                mask_chunk_in_place(dst, &y[oy * out_w..(oy + 1) * out_w], act);
            }
            None => dst.copy_from_slice(grad),
        }
    }
    // Phase q at position r gathers w_t · gradient[r − offset_t] over the taps t of phase q.
    for (q, phase) in phases.chunks_exact_mut(plan.phase_stride).take(plan.stride * plan.stride).enumerate() {
        for (start, block) in (0..).step_by(BLOCK).zip(phase.chunks_exact_mut(BLOCK)) {
            let mut acc = [0.0; BLOCK];
            for (&w, &(tap_phase, offset)) in taps.iter().zip(&plan.taps) {
                if tap_phase == q {
                    block_axpy(&mut acc, &extended[plan.margin + start - offset..], w);
                }
            }
            block.copy_from_slice(&acc);
        }
    }
    plan.store(phases, dx);
});

fn depthwise_forward(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) {
    let plan = DepthwisePlan::new(g);
    let taps_len = g.kernel_h * g.kernel_w;
    parallel::for_each_chunk_with(
        out,
        g.out_plane(),
        planes_per_task(g.out_plane()),
        || plan.forward_scratch(),
        |scratch, nc, dst| {
            let c = nc % g.out_channels;
            let x = &x[nc * g.in_plane()..(nc + 1) * g.in_plane()];
            let b = bias.map_or(0.0, |b| b[c]);
            let taps = &w[c * taps_len..(c + 1) * taps_len];
            depthwise_plane_forward(&plan, x, taps, b, act, scratch, dst);
        },
    );
}

fn depthwise_backward_input(
    g: &ConvGeometry,
    dy: &[f32],
    mask: Option<(&[f32], Activation)>,
    w: &[f32],
    dx: &mut [f32],
) {
    let plan = DepthwisePlan::new(g);
    let taps_len = g.kernel_h * g.kernel_w;
    let op = g.out_plane();
    parallel::for_each_chunk_with(
        dx,
        g.in_plane(),
        planes_per_task(g.in_plane()),
        || plan.backward_scratch(),
        |scratch, nc, dst| {
            let c = nc % g.in_channels;
            let grad = &dy[nc * op..(nc + 1) * op];
            let mask = mask.map(|(y, act)| (&y[nc * op..(nc + 1) * op], act));
            let taps = &w[c * taps_len..(c + 1) * taps_len];
            depthwise_plane_backward(&plan, grad, mask, taps, scratch, dst);
        },
    );
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
    /// The geometry of a max-pool over `planes` planes of `in_h`×`in_w`, with PyTorch's output
    /// size floor((n + 2·pad − kernel) / stride) + 1 (no `ceil_mode`).
    pub fn new(
        planes: usize,
        in_hw: (usize, usize),
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self, GeometryError> {
        let (in_h, in_w) = in_hw;
        reject_if!(
            kernel == 0 || stride == 0,
            "max-pool kernel {kernel} and stride {stride} must be at least 1"
        );
        let out = |size: usize| {
            size.checked_add(2 * pad.min(MAX_VALUES))
                .filter(|&padded| padded >= kernel)
                .map(|padded| (padded - kernel) / stride + 1)
                .ok_or_else(|| {
                    GeometryError(format!("max-pool {kernel}×{kernel} does not fit {in_h}×{in_w}"))
                })
        };
        let g =
            PoolGeometry { planes, in_h, in_w, kernel, stride, pad, out_h: out(in_h)?, out_w: out(in_w)? };
        g.validate()?;
        Ok(g)
    }

    /// Checks that the fields describe one max-pool: kernel and stride at least 1, padding
    /// smaller than the kernel and output sizes exactly PyTorch's. Together these put at least
    /// one input element in every window (the first starts at −pad > −kernel, the last at
    /// most at n − 1 since pad ≤ kernel − 1), so every window has a maximum to route its gradient
    /// to, and no length below overflows.
    pub fn validate(&self) -> Result<(), GeometryError> {
        let g = self;
        reject_if!(
            g.kernel == 0 || g.stride == 0,
            "max-pool kernel {} and stride {} must be at least 1",
            g.kernel,
            g.stride
        );
        reject_if!(
            g.pad >= g.kernel,
            "max-pool padding {} must be smaller than the kernel {}",
            g.pad,
            g.kernel
        );
        reject_if!(g.in_h == 0 || g.in_w == 0, "empty max-pool input {}×{}", g.in_h, g.in_w);
        checked_len("the max-pool input", &[g.planes, g.in_h, g.in_w])?;
        checked_len("the max-pool output", &[g.planes, g.out_h, g.out_w])?;
        let expected = |size: usize| {
            g.pad
                .checked_mul(2)
                .and_then(|pads| size.checked_add(pads))
                .filter(|&padded| padded >= g.kernel)
                .map(|padded| (padded - g.kernel) / g.stride + 1)
        };
        reject_if!(
            expected(g.in_h) != Some(g.out_h) || expected(g.in_w) != Some(g.out_w),
            "max-pool output {}×{} is not the one of input {}×{}, kernel {}, stride {}, padding {}",
            g.out_h,
            g.out_w,
            g.in_h,
            g.in_w,
            g.kernel,
            g.stride,
            g.pad
        );
        Ok(())
    }

    /// Panics unless the geometry is valid and the slices have the lengths it implies.
    fn assert_valid(&self, input_len: usize, output_len: usize) {
        if let Err(e) = self.validate() {
            panic!("invalid max-pool geometry: {e}");
        }
        assert_eq!(input_len, self.planes * self.in_h * self.in_w, "max-pool input length");
        assert_eq!(output_len, self.planes * self.out_h * self.out_w, "max-pool output length");
    }

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

/// Max-pool forward with PyTorch's semantics (-∞ padding).
///
/// # Panics
/// If `g` is not valid ([`PoolGeometry::validate`]) or a slice does not have the length it
/// implies.
pub(crate) fn max_pool2d_forward(g: &PoolGeometry, x: &[f32], out: &mut [f32]) {
    g.assert_valid(x.len(), out.len());
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    parallel::for_each_chunk(out, op, planes_per_task(op), |p, dst| {
        let plane = &x[p * ip..(p + 1) * ip];
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                dst[oy * g.out_w + ox] = plane[g.argmax(plane, oy, ox)];
            }
        }
    });
}

/// Gradient of [`max_pool2d_forward`] at its input `x`: each window's gradient goes whole to
/// its first maximum in row-major order (PyTorch's rule), and adds up where windows overlap.
///
/// # Panics
/// As [`max_pool2d_forward`].
pub(crate) fn max_pool2d_backward(g: &PoolGeometry, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    g.assert_valid(x.len(), dy.len());
    assert_eq!(dx.len(), x.len(), "max-pool input gradient length");
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    parallel::for_each_chunk(dx, ip, planes_per_task(ip), |p, dst| {
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

    /// Many random geometries (sizes 1–17, kernels 1–7, strides 1–3, any padding up to the
    /// kernel, depthwise or grouped or dense), forward against the definition and backward by
    /// the adjoint identity <conv(x), dy> = <x, convᵀ(dy)> on random x and dy. The depthwise
    /// kernel's phase and block bookkeeping has many edge cases (planes smaller than the kernel,
    /// padding on one side only, runs ending mid-block); this is where they would show.
    #[test]
    fn random_geometries_forward_and_adjoint() {
        let mut next = crate::cam::test_support::random_below(0x2545F4914F6CDD1Du64);
        for case in 0..300 {
            let k = 1 + next(7);
            let stride = 1 + next(3);
            let (h, w) = (1 + next(17), 1 + next(17));
            let (pad_top, pad_left) = (next(k), next(k));
            let (pad_bottom, pad_right) = (next(k), next(k));
            if h + pad_top + pad_bottom < k || w + pad_left + pad_right < k {
                continue;
            }
            let out_h = (h + pad_top + pad_bottom - k) / stride + 1;
            let out_w = (w + pad_left + pad_right - k) / stride + 1;
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

    /// A geometry that passes validation, to break one field at a time.
    fn valid_geometry() -> ConvGeometry {
        ConvGeometry::new([2, 4, 9, 8], 6, [3, 3], 2, [1, 1, 0, 1], 2).unwrap()
    }

    /// The message of the panic `f` raises (and that it raises one).
    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).expect_err("expected a panic");
        err.downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap()
    }

    #[test]
    fn new_computes_pytorch_output_sizes_and_validates() {
        let g = valid_geometry();
        // (9 + 2 − 3) / 2 + 1 = 5 and (8 + 1 − 3) / 2 + 1 = 4.
        assert_eq!((g.out_h, g.out_w, g.pad_top, g.pad_left), (5, 4, 1, 0));
        // ResNet's stem on an odd and an even input; TF-SAME on an even one.
        assert_eq!(ConvGeometry::new([1, 3, 225, 224], 64, [7, 7], 2, [3, 3, 3, 3], 1).unwrap().out_h, 113);
        assert_eq!(ConvGeometry::new([1, 3, 225, 224], 64, [7, 7], 2, [3, 3, 3, 3], 1).unwrap().out_w, 112);
        assert_eq!(ConvGeometry::new([1, 3, 224, 224], 32, [3, 3], 2, [0, 1, 0, 1], 1).unwrap().out_h, 112);
        let bad = [
            ([1, 5, 8, 8], 4, [3, 3], 1, [1, 1, 1, 1], 2, "divisible"),
            ([1, 4, 8, 8], 5, [3, 3], 1, [1, 1, 1, 1], 2, "divisible"),
            ([1, 4, 8, 8], 4, [3, 3], 0, [1, 1, 1, 1], 1, "stride"),
            ([1, 4, 8, 8], 4, [0, 3], 1, [1, 1, 1, 1], 1, "kernel"),
            ([1, 4, 8, 8], 4, [3, 3], 1, [1, 1, 1, 1], 0, "groups"),
            ([1, 4, 2, 8], 4, [5, 3], 1, [1, 1, 1, 1], 1, "does not fit"),
            ([1, 0, 8, 8], 4, [3, 3], 1, [1, 1, 1, 1], 1, "channels"),
            ([1, 4, 8, 0], 4, [1, 1], 1, [1, 1, 1, 1], 1, "empty"),
            ([1, 4, 8, usize::MAX - 1], 4, [3, 3], 1, [1, 1, 1, 1], 1, "overflows"),
            ([1 << 40, 1 << 20, 8, 8], 4, [3, 3], 1, [1, 1, 1, 1], 1, "too large"),
        ];
        for (input, cout, kernel, stride, pads, groups, why) in bad {
            let e = ConvGeometry::new(input, cout, kernel, stride, pads, groups).unwrap_err();
            assert!(
                e.to_string().contains(why),
                "{input:?} {cout} {kernel:?} {stride} {pads:?} {groups}: {e}"
            );
        }
    }

    /// Geometries written field by field are checked too: every way the fields can disagree
    /// with each other is an error, not a kernel reading or writing out of bounds.
    #[test]
    fn validate_rejects_inconsistent_fields() {
        assert_eq!(valid_geometry().validate(), Ok(()));
        type Breakage = (fn(&mut ConvGeometry), &'static str);
        let broken: [Breakage; 9] = [
            // The case that used to return uninitialised output channels from the gemm path.
            (|g| g.out_channels = 7, "divisible"),
            // And the one that did so for input-gradient channels of a 1×1 convolution.
            (|g| g.in_channels = 5, "divisible"),
            (|g| g.groups = 0, "groups"),
            (|g| g.out_h = 0, "empty"),
            // An output that stops a whole stride or more before the input ends.
            (|g| g.out_h = 3, "too small"),
            (|g| g.out_w = 2, "too small"),
            (|g| g.stride = 0, "stride"),
            (|g| g.in_w = usize::MAX / 2, "too large"),
            (|g| g.out_w = usize::MAX / 3, "too large"),
        ];
        for (i, (breaks, why)) in broken.iter().enumerate() {
            let mut g = valid_geometry();
            breaks(&mut g);
            let e = g.validate().unwrap_err();
            assert!(e.to_string().contains(why), "case {i}: {e}");
        }
        // More output than the input needs is fine: it is padding at the bottom/right.
        let mut g = valid_geometry();
        g.out_h += 3;
        assert_eq!(g.validate(), Ok(()));
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

    #[test]
    fn pool_geometry_is_checked() {
        let g = PoolGeometry::new(3, (56, 55), 3, 2, 1).unwrap();
        assert_eq!((g.out_h, g.out_w), (28, 28));
        assert!(PoolGeometry::new(1, (8, 8), 3, 2, 3).unwrap_err().to_string().contains("smaller than"));
        assert!(PoolGeometry::new(1, (8, 8), 3, 0, 1).unwrap_err().to_string().contains("stride"));
        assert!(PoolGeometry::new(1, (1, 8), 4, 1, 1).unwrap_err().to_string().contains("does not fit"));
        // A window lying wholly in the padding would have no element to route its gradient to.
        let mut bad = g;
        bad.out_h += 1;
        assert!(bad.validate().unwrap_err().to_string().contains("not the one"));
        let x = vec![0.0; 3 * 56 * 55];
        let mut out = vec![0.0; 3 * 29 * 28];
        let msg = panic_message(move || max_pool2d_forward(&bad, &x, &mut out));
        assert!(msg.contains("invalid max-pool geometry"), "{msg}");
        let x = vec![0.0; 3 * 56 * 55];
        let (dy, mut dx) = (vec![0.0; 3 * 28 * 28], vec![0.0; 3 * 56 * 55 - 1]);
        let msg = panic_message(move || max_pool2d_backward(&g, &x, &dy, &mut dx));
        assert!(msg.contains("input gradient length"), "{msg}");
    }
}
