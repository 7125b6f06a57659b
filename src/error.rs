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
    #[error("unknown class '{0}': give an index 0-{1} or a whole class label (any case)")]
    UnknownClass(String, usize),
    /// A class given by a label that is none of the model's; `similar` are labels containing it.
    #[error(
        "unknown class '{name}': give an index 0-{max} or a whole class label (any case){}",
        did_you_mean(similar)
    )]
    UnknownLabel { name: String, max: usize, similar: Vec<String> },
    #[error("unknown colormap '{0}'; colormaps are: {1}")]
    UnknownColormap(String, String),
    #[error("unknown protocol '{0}'; protocols are: auto, halfblocks, sixel, kitty, iterm2")]
    UnknownProtocol(String),
    #[error("unknown theme '{name}'; themes are: {available}")]
    UnknownTheme { name: String, available: String },
    /// A theme file (or a built-in theme) that cannot be used; `origin` names it.
    #[error("theme {origin}: {message}")]
    Theme { origin: String, message: String },
    /// A key bindings file that cannot be used; `origin` names it, the message says where.
    #[error("keys {origin}: {message}")]
    Keys { origin: String, message: String },
    #[error("terminal: {0}")]
    Terminal(String),
    /// A data set (folder, CSV, annotations) that cannot be swept as given.
    #[error("data set {path}: {message}")]
    DataSet { path: PathBuf, message: String },
    /// A results file of `sweep` that cannot be read, resumed or merged.
    #[error("results {path}: {message}")]
    Results { path: PathBuf, message: String },
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

/// "; did you mean: a, b, c?" for up to five labels, or nothing.
fn did_you_mean(similar: &[String]) -> String {
    const SHOWN: usize = 5;
    match similar.len() {
        0 => String::new(),
        n if n <= SHOWN => format!("; did you mean: {}?", similar.join(", ")),
        n => format!("; did you mean: {}, … ({} more)?", similar[..SHOWN].join(", "), n - SHOWN),
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
