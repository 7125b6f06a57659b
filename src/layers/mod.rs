//! The layers both model sources are built from: convolution (BatchNorm folded in at load),
//! max-pool, linear, the global-pool classifier head. Each runs our kernels on the fast engine on
//! the CPU and the portable Candle ops elsewhere, chosen through the taps, and offers a batch-1
//! CPU forward and backward for the families' tapes. Gradient conventions follow PyTorch, since the
//! reference maps come from it: ReLU passes no gradient at exactly 0, ReLU6 none at 0 or 6,
//! max-pool routes to the first maximum of a window.
//!
//! May use: `kernels`, `contract`. A new layer goes here when more than one source needs it.

mod conv;
mod device_copies;
mod linear;
mod pool;
#[cfg(test)]
mod tests;

pub use conv::{mask_activation_gradient, BatchNorm, Conv2d, Padding};
pub use linear::{global_avg_pool, Classifier, Linear};
pub use pool::MaxPool2d;
