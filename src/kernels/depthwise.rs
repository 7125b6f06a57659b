//! Depthwise convolution (EfficientNet-Lite is mostly depthwise) on stride-phase-split planes,
//! computed in register blocks, and its input gradient.

use super::activation::{bias_activation, mask_chunk_in_place, Activation};
use super::geometry::ConvGeometry;
use super::parallel::{self, planes_per_task};
use super::simd::with_best_simd;

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
    /// A dilated kernel changes only where each tap sits in the padded plane, (ky, kx)·dilation,
    /// and how far the windows reach.
    fn new(g: &ConvGeometry) -> Self {
        let (s, d) = (g.stride, g.dilation);
        let rows = (g.out_h - 1) * s + g.extent_h();
        let cols = (g.out_w - 1) * s + g.extent_w();
        // One spare row: the wide run of the last output row reads past its phase row's end.
        let (phase_rows, phase_cols) = (rows.div_ceil(s) + 1, cols.div_ceil(s));
        let phase_stride = (phase_rows * phase_cols).next_multiple_of(BLOCK);
        let taps: Vec<(usize, usize)> = (0..g.kernel_h)
            .flat_map(|ky| (0..g.kernel_w).map(move |kx| (ky * d, kx * d)))
            .map(|(py, px)| ((py % s) * s + px % s, (py / s) * phase_cols + px / s))
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

pub(super) fn depthwise_forward(
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

pub(super) fn depthwise_backward_input(
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
