//! A stage a person steps to, and how its output lays out channels and positions.

use std::fmt;

use candle_core::{Result as CResult, Tensor};

/// How a stage's output lays out channels and positions (SPEC §9). The engine lays every output
/// on a C×H×W grid the way pytorch-grad-cam's documented `reshape_transform`s do, and sends the
/// gradient through the same reshape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layout {
    /// (N, C, H, W): a convolutional feature map.
    Nchw,
    /// (N, H, W, C): channels last (Swin).
    Nhwc,
    /// (N, prefix + h·w, C): a transformer's tokens; the first `prefix` (class, distillation,
    /// register tokens) are dropped and the rest laid row-major on the h×w patch grid.
    Tokens {
        #[serde(rename = "prefix_tokens")]
        prefix: usize,
        grid: [usize; 2],
    },
}

impl Layout {
    /// The stage output as (N, C, H, W).
    pub fn to_nchw(self, t: &Tensor) -> CResult<Tensor> {
        match self {
            Layout::Nchw => Ok(t.clone()),
            Layout::Nhwc => t.permute((0, 3, 1, 2)),
            Layout::Tokens { prefix, grid: [h, w] } => {
                let (n, tokens, c) = t.dims3()?;
                if tokens != prefix + h * w {
                    candle_core::bail!(
                        "a tokens stage with {prefix} prefix tokens on a {h}×{w} grid has {} tokens, got {tokens}",
                        prefix + h * w
                    )
                }
                t.narrow(1, prefix, h * w)?.reshape((n, h, w, c))?.permute((0, 3, 1, 2))
            }
        }
    }

    /// The dimension of the raw output that holds the channels.
    pub fn channel_dim(self) -> usize {
        match self {
            Layout::Nchw => 1,
            Layout::Nhwc => 3,
            Layout::Tokens { .. } => 2,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Nchw => write!(f, "nchw"),
            Layout::Nhwc => write!(f, "nhwc"),
            Layout::Tokens { prefix, grid: [h, w] } => write!(f, "tokens(+{prefix}, {h}×{w})"),
        }
    }
}

/// A stage a person can step to: its name (a module path, e.g. `layer3.1`) and its output layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    pub name: String,
    pub layout: Layout,
}

impl StageSpec {
    pub fn new(name: impl Into<String>, layout: Layout) -> Self {
        Self { name: name.into(), layout }
    }

    pub fn nchw(name: impl Into<String>) -> Self {
        Self::new(name, Layout::Nchw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layouts_lay_tokens_and_channels_last_on_the_grid() {
        let dev = &Device::Cpu;
        // 1 class token + a 2×3 grid of 4 channels; token t, channel c holds 10·t + c.
        let data: Vec<f32> = (0..7).flat_map(|t| (0..4).map(move |c| (10 * t + c) as f32)).collect();
        let tokens = Tensor::from_vec(data, (1, 7, 4), dev).unwrap();
        let grid = Layout::Tokens { prefix: 1, grid: [2, 3] }.to_nchw(&tokens).unwrap();
        assert_eq!(grid.dims(), [1, 4, 2, 3]);
        let v: Vec<f32> = grid.flatten_all().unwrap().to_vec1().unwrap();
        // Channel 2, row 1, column 0 is patch 3, i.e. token 4.
        assert_eq!(v[2 * 6 + 3], 42.0);

        let nhwc = Tensor::arange(0f32, 24.0, dev).unwrap().reshape((1, 2, 3, 4)).unwrap();
        let nchw = Layout::Nhwc.to_nchw(&nhwc).unwrap();
        assert_eq!(nchw.dims(), [1, 4, 2, 3]);
        assert_eq!(nchw.contiguous().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[1], 4.0);

        let wrong = Layout::Tokens { prefix: 2, grid: [2, 3] }.to_nchw(&tokens);
        assert!(wrong.unwrap_err().to_string().contains("has 8 tokens, got 7"));
    }
}
