//! Helpers for unit tests anywhere in the crate: seeded inputs and relative comparisons.

/// A xorshift generator of integers below `n`, for tests that draw random shapes (fixed
/// seeds: the same shapes every run).
pub fn random_below(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    }
}

/// A tensor of `shape` with values uniform in [-1, 1) from a fixed seed: the same inputs
/// every run.
pub fn seeded_tensor(shape: &[usize], seed: u64) -> candle_core::Tensor {
    let mut next = random_below(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| next(1 << 24) as f32 / (1 << 23) as f32 - 1.0).collect();
    candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu).expect("shape matches data")
}

/// (largest |got − want|, largest |want|): the two numbers a check relative to the size of
/// the reference compares.
pub fn worst_and_scale(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    (worst, want.iter().fold(0f32, |m, v| m.max(v.abs())))
}
