//! One error type for the library. Every message names the thing that is wrong (file, tensor,
//! stage, class) so the binary can print it on one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("input {path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("weights {source_name}: {message}")]
    Weights { source_name: String, message: String },
    #[error("model: {0}")]
    Model(String),
    #[error("unknown stage '{name}'; stages are: {available}")]
    UnknownStage { name: String, available: String },
    #[error("unknown method '{name}'; methods are: {available}")]
    UnknownMethod { name: String, available: String },
    #[error("unknown class '{0}': give an index 0-{1} or an exact class label")]
    UnknownClass(String, usize),
    #[error("output {path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("device: {0}")]
    Device(String),
    #[error("{method} needs {what}, which model {model} does not report to camscope's taps")]
    Unsupported { method: String, model: String, what: String },
    #[error("{0}")]
    Usage(String),
    #[error("computation cancelled")]
    Cancelled,
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
