//! camscope: class activation maps of every stage of an image classifier, computed with Candle.
//!
//! The rooms, from the bottom up; each uses only those below it:
//!
//! | room | job |
//! |---|---|
//! | [`kernels`] | CPU compute (convolutions, pools, matrix products, fused ops, the thread pool) and its portable Candle twins |
//! | [`contract`] | what a model is: [`contract::ImageClassifier`], stages and layouts, the taps, a ready [`contract::Model`] |
//! | [`layers`] | the layers both model sources build with (convolution, pool, linear, head) |
//! | [`families`], [`onnx`] | the model sources: built-in families from checkpoints, imported ONNX graphs (a Rust user's own model is any `ImageClassifier`) |
//! | [`load`] | `--model` → a [`contract::Model`]: cards, weights files, ONNX files; the one place that knows every source |
//! | [`trace`], [`cam`], [`engine`], [`metrics`] | activations and gradients, the methods, maps on demand, faithfulness scores |
//! | [`render`] | colormaps and overlays |
//! | [`dataset`] | a whole data set: folders, ImageFolder trees, CSVs, boxes and masks; the sweep, its rows and results files |
//! | [`explain`] | the headless pipeline of one image |
//! | [`compare`] | two models on the same image (`--vs`): stage pairs, both maps, their difference and correlation |
//! | [`cli`], [`tui`] | the front ends: the command line and the debugger |
//!
//! [`preprocess`], [`device`] and [`error`] sit at the bottom beside the kernels. Every front end
//! is a library module, so a Rust program can run any of them on its own model.

pub mod cam;
pub mod cli;
pub mod compare;
pub mod contract;
pub mod dataset;
pub mod device;
pub mod engine;
pub mod error;
pub mod explain;
pub mod families;
pub mod kernels;
pub mod layers;
pub mod load;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod preprocess;
pub mod render;
pub mod segment;
#[cfg(test)]
pub(crate) mod test_support;
pub mod trace;
pub mod tui;

pub use error::{Error, Result};
