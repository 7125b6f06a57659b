//! Matrix products on slices through the `gemm` crate, split between the shared pool's threads
//! by blocks of rows or columns (each block a single-threaded gemm: gemm's own rayon split
//! competes with Candle's spinning workers for the cores).

use super::parallel;

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
pub(super) unsafe fn matmul_raw(
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
pub(super) unsafe fn written_by(len: usize, write: impl FnOnce(*mut f32)) -> Vec<f32> {
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

pub(super) fn gemm_threads(work: usize) -> usize {
    // Handing tiny products to other threads costs more than it saves.
    if work < 1 << 18 {
        1
    } else {
        parallel::threads()
    }
}
