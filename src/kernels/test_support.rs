//! Helpers for the kernels' unit tests.

use super::geometry::ConvGeometry;

/// `len` values in [-1, 1) from a fixed seed (an LCG): the same inputs every run.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A geometry that passes validation, to break one field at a time.
pub fn valid_geometry() -> ConvGeometry {
    ConvGeometry::new([2, 4, 9, 8], 6, [3, 3], 2, [1, 1, 0, 1], 2).unwrap()
}

/// The message of the panic `f` raises (and that it raises one).
pub fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("expected a panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap()
}
