//! The CPU compute of the fast engine, and its portable twins. Convolutions (gemm, depthwise),
//! max-pools, matrix products, activations and the fused transformer ops run on plain `f32`
//! slices, or as Candle custom ops whose backward computes only the input gradient; [`portable`]
//! builds the same operations from Candle's own tensor ops, for the portable engine and every
//! device but the CPU. All of it shares one pool of threads ([`parallel`]).
//!
//! May use: `candle_core` and std only — nothing else of camscope, so that the contract, the
//! layers and both model sources (built-in families, ONNX graphs) build on it. A new kernel goes
//! here, with its portable twin where Candle's own op is wrong or slow.

pub mod activation;
pub mod conv;
mod depthwise;
pub mod fused;
mod gemm;
pub mod geometry;
pub mod matmul;
pub(crate) mod parallel;
pub mod pool;
pub mod portable;
mod simd;
pub(crate) mod storage;
#[cfg(test)]
mod test_support;

pub use activation::Activation;
pub use conv::{conv2d_backward_input, conv2d_forward};
pub(crate) use gemm::matvec;
pub use geometry::{ConvGeometry, GeometryError, PoolGeometry};
