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

/// A segmentation model small enough to reason about: `body` = relu(W1 · x) over 4 channels,
/// `head` = W2 · body, 3 score maps at the input's resolution ("background", "cat", "dog"). On
/// a photo, dark pixels go to one class and bright ones to another.
pub fn toy_segmenter(size: impl Into<crate::preprocess::InputSize>) -> crate::contract::Model {
    use candle_core::{Device, Tensor};

    use crate::contract::{ImageClassifier, Layout, StageSpec, Taps};

    struct Toy {
        w1: Tensor,
        w2: Tensor,
        stages: Vec<StageSpec>,
    }
    impl ImageClassifier for Toy {
        fn name(&self) -> String {
            "toy-segmenter".into()
        }
        fn stages(&self) -> &[StageSpec] {
            &self.stages
        }
        fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor> {
            let (n, c, h, w) = x.dims4()?;
            let body = self.w1.broadcast_matmul(&x.reshape((n, c, h * w))?)?.relu()?;
            let body = taps.stage("body", body.reshape((n, 4, h, w))?)?;
            let out = self.w2.broadcast_matmul(&body.reshape((n, 4, h * w))?)?.reshape((n, 3, h, w))?;
            taps.stage("head", out)
        }
    }
    let w1: Vec<f32> = vec![1.0, 0.5, 0.2, -1.0, -0.6, -0.1, 0.3, -0.8, 0.9, -0.2, 0.1, -0.3];
    let w2: Vec<f32> = vec![0.2, 0.2, 0.2, 0.2, 1.0, -0.5, 0.3, -0.2, -0.4, 1.0, -0.2, 0.6];
    let toy = Toy {
        w1: Tensor::from_vec(w1, (4, 3), &Device::Cpu).expect("4×3"),
        w2: Tensor::from_vec(w2, (3, 4), &Device::Cpu).expect("3×4"),
        stages: vec![StageSpec::new("body", Layout::Nchw), StageSpec::new("head", Layout::Nchw)],
    };
    let labels = ["background", "cat", "dog"].map(String::from).to_vec();
    let preprocess = crate::preprocess::Preprocess::imagenet(size);
    crate::contract::Model::new("toy-segmenter", std::sync::Arc::new(toy), preprocess, Some(labels))
        .expect("the toy segmenter runs")
}
