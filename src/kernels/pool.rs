//! Max-pool with -∞ padding and PyTorch's tie-breaking (the gradient goes to the first maximum
//! of a window in row-major order).

use super::geometry::PoolGeometry;
use super::parallel::{self, planes_per_task};

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
    use crate::kernels::test_support::panic_message;

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
