//! camscope: class activation maps of every stage of a convolutional classifier, computed with
//! Candle. The library is the engine; the binary adds the command line (and the terminal UI).

pub mod cam;
pub mod device;
pub mod engine;
pub mod error;
pub mod explain;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod preprocess;
pub mod render;
pub mod trace;

pub use error::{Error, Result};
