//! camscope: class activation maps of every stage of an image classifier, computed with Candle.
//! The engine (`model`, `trace`, `engine`, `cam`), the headless pipeline (`explain`), the terminal
//! debugger (`tui`) and the command line (`cli`) are all library modules, so a Rust program can
//! run any of them on its own model (see `model::ImageClassifier`).

pub mod cam;
pub mod cli;
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
pub mod tui;

pub use error::{Error, Result};
