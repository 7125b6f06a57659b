//! Matrix products on the CPU for the fast engine, split between threads by blocks of rows.
//!
//! Why not Candle's matmul: it hands each product to gemm with gemm's own rayon parallelism,
//! which on the products of a small transformer ran no faster on two threads than on one
//! (197×192 by 192×576: 0.41 ms on two, 0.38 ms on one; PyTorch: 0.19 ms and 0.34 ms). Here
//! each thread of the shared pool (`kernels::parallel`) runs single-threaded gemm on its own rows:
//! 0.21 ms on two. A Candle custom op whose backward is two more such products, so autograd
//! through it equals autograd through Candle's matmul; a Linear layer's bias is added as the
//! products are written.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

use super::gemm;

/// `a · b` for `a` (…, m, k) and `b` (k, n) or (…, k, n) with the same leading dimensions, on
/// the CPU in f32; `None` where this kernel does not apply (the caller then uses Candle's).
/// Operands may be strided views (a transpose needs no copy).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    matmul_bias(a, b, None)
}

/// [`matmul`] plus `bias`, one value per output column, added as the products are written (a
/// Linear layer in one pass over its output). The bias is a constant: autograd gives no
/// gradient for it.
pub fn matmul_bias(a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    let applies = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() >= 2;
    if !applies(a) || !applies(b) || b.rank() > a.rank() {
        return Ok(None);
    }
    let (ra, rb) = (a.rank(), b.rank());
    let same_batch = rb == 2 || a.dims()[..ra - 2] == b.dims()[..rb - 2];
    if !same_batch || a.dims()[ra - 1] != b.dims()[rb - 2] {
        return Ok(None);
    }
    if batch_skip(a.layout()).is_none() || batch_skip(b.layout()).is_none() {
        return Ok(None);
    }
    let bias = match bias {
        None => None,
        Some(t) if t.device().is_cpu() && t.dims().iter().rev().skip(1).all(|&d| d == 1) => {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if values.len() != b.dims()[rb - 1] {
                return Ok(None);
            }
            Some(values)
        }
        Some(_) => return Ok(None),
    };
    Ok(Some(a.apply_op2(b, MatMulOp { bias })?))
}

/// The distance between consecutive matrices of a batched operand, if its leading dimensions
/// step evenly (0 for a single matrix).
fn batch_skip(layout: &Layout) -> Option<usize> {
    let (dims, stride) = (layout.dims(), layout.stride());
    let mut skip = None;
    let mut expected = 0;
    for i in (0..dims.len().saturating_sub(2)).rev() {
        if dims[i] == 1 {
            continue;
        }
        match skip {
            None => {
                skip = Some(stride[i]);
                expected = stride[i] * dims[i];
            }
            Some(_) if stride[i] == expected => expected *= dims[i],
            Some(_) => return None,
        }
    }
    Some(skip.unwrap_or(0))
}

struct MatMulOp {
    /// Added to every row of the product.
    bias: Option<Vec<f32>>,
}

/// A block of the output: (matrix, first row, its rows of the output).
type Block<'a> = (usize, usize, &'a mut [f32]);

impl CustomOp2 for MatMulOp {
    fn name(&self) -> &'static str {
        "camscope-matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (a, b) else {
            candle_core::bail!("camscope-matmul takes f32 operands")
        };
        let (a, b) = (&a[al.start_offset()..], &b[bl.start_offset()..]);
        let (ad, bd, asd, bsd) = (al.dims(), bl.dims(), al.stride(), bl.stride());
        let (ra, rb) = (ad.len(), bd.len());
        let (m, k, n) = (ad[ra - 2], ad[ra - 1], bd[rb - 1]);
        let batch: usize = ad[..ra - 2].iter().product();
        let (Some(a_skip), Some(b_skip)) = (batch_skip(al), batch_skip(bl)) else {
            candle_core::bail!("camscope-matmul: operands whose batches do not step evenly")
        };
        let b_skip = if rb == 2 { 0 } else { b_skip };
        let (a_rs, a_cs, b_rs, b_cs) = (asd[ra - 2], asd[ra - 1], bsd[rb - 2], bsd[rb - 1]);
        let mut out_dims = ad[..ra - 2].to_vec();
        out_dims.extend([m, n]);
        let mut out = vec![0f32; batch * m * n];
        if let Some(bias) = &self.bias {
            out.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(bias));
        }
        if !out.is_empty() {
            // About one block per thread (each gemm call packs `b` again, so no finer), whole
            // matrices when the batch has enough of them.
            let pool = candle_core::utils::barrier_pool();
            let threads = pool.n_workers() + 1;
            let rows = m.div_ceil(threads.div_ceil(batch.max(1))).max(1);
            let blocks: Vec<Mutex<Option<Block>>> = out
                .chunks_mut(m * n)
                .enumerate()
                .flat_map(|(i, o)| o.chunks_mut(rows * n).enumerate().map(move |(j, c)| (i, j * rows, c)))
                .map(|block| Mutex::new(Some(block)))
                .collect();
            pool.execute_chunked(blocks.len(), |claimed| {
                for slot in &blocks[claimed] {
                    let Some((i, row, dst)) = slot.lock().expect("a block is claimed once").take() else {
                        continue;
                    };
                    let a = &a[i * a_skip + row * a_rs..];
                    let b = &b[i * b_skip..];
                    gemm::matmul(
                        dst.len() / n,
                        n,
                        k,
                        dst,
                        self.bias.is_some(),
                        a,
                        a_rs,
                        a_cs,
                        b,
                        b_rs,
                        b_cs,
                        1,
                    );
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let product = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
            match matmul(x, y)? {
                Some(t) => Ok(t),
                None => x.contiguous()?.broadcast_matmul(&y.contiguous()?),
            }
        };
        let da = product(dy, &b.t()?)?;
        let db = if b.rank() == 2 && a.rank() > 2 {
            // One (k, n) matrix for the whole batch: the batch's rows stacked.
            let (k, n) = (a.dim(a.rank() - 1)?, dy.dim(dy.rank() - 1)?);
            let a2 = a.contiguous()?.reshape(((), k))?;
            let dy2 = dy.contiguous()?.reshape(((), n))?;
            product(&a2.t()?, &dy2)?
        } else {
            product(&a.t()?, dy)?
        };
        Ok((Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Equal to Candle's matmul, forward and both gradients, on plain, transposed, batched,
    /// permuted and weight-shared operands, with more threads than rows.
    #[test]
    fn matches_candle_matmul_and_its_gradients() {
        let d = Device::Cpu;
        let cases: Vec<(Tensor, Tensor)> = vec![
            (Tensor::randn(0f32, 1., (7, 5), &d).unwrap(), Tensor::randn(0f32, 1., (5, 9), &d).unwrap()),
            (Tensor::randn(0f32, 1., (1, 13, 6), &d).unwrap(), Tensor::randn(0f32, 1., (6, 4), &d).unwrap()),
            (
                Tensor::randn(0f32, 1., (2, 13, 6), &d).unwrap(),
                Tensor::randn(0f32, 1., (4, 6), &d).unwrap().t().unwrap(),
            ),
            (
                Tensor::randn(0f32, 1., (1, 5, 3, 4), &d).unwrap().permute((0, 2, 1, 3)).unwrap(),
                Tensor::randn(0f32, 1., (1, 3, 5, 4), &d).unwrap().transpose(2, 3).unwrap(),
            ),
            (Tensor::randn(0f32, 1., (1, 1, 6), &d).unwrap(), Tensor::randn(0f32, 1., (6, 3), &d).unwrap()),
        ];
        for (i, (a, b)) in cases.into_iter().enumerate() {
            let (y1, y2) = (matmul(&a, &b).unwrap().expect("applies"), a.broadcast_matmul(&b).unwrap());
            assert!(max_diff(&y1, &y2) < 1e-5, "case {i}: forward");
            // The gradients of Σ y·w for one fixed w.
            let w = Tensor::randn(0f32, 1., y1.shape(), &Device::Cpu).unwrap();
            let grads = |ours: bool| {
                let (va, vb) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
                let (ta, tb) = (va.as_tensor(), vb.as_tensor());
                let y =
                    if ours { matmul(ta, tb).unwrap().unwrap() } else { ta.broadcast_matmul(tb).unwrap() };
                let g = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                (g.get(ta).unwrap().clone(), g.get(tb).unwrap().clone())
            };
            let ((da1, db1), (da2, db2)) = (grads(true), grads(false));
            assert!(max_diff(&da1, &da2) < 1e-4 && max_diff(&db1, &db2) < 1e-4, "case {i}: gradients");
        }
        let f64s = Tensor::zeros((2, 2), DType::F64, &d).unwrap();
        assert!(matmul(&f64s, &f64s).unwrap().is_none());
    }
}
