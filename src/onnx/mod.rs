//! ONNX import: a model exported from PyTorch with `torch.onnx.export` (TorchScript or dynamo
//! exporter) becomes an [`ImageClassifier`](crate::contract::ImageClassifier) whose stages are the
//! PyTorch modules recorded in the graph, and every camscope method works on it.
//!
//! One job per file: [`mapped`] memory-maps the model and external data files, [`proto`] decodes
//! the protobuf (prost messages, no `protoc`; tensor bytes stay slices of the map), [`tensor`]
//! reads initializers (inline or external), [`graph`] orders, folds and probes the graph,
//! [`ops`] maps each operator to Candle ([`resize`] the interpolations), [`stages`] finds modules, their outputs and layouts,
//! [`rewrite`] merges exported op chains into single ops, [`model`] is the classifier, and
//! [`reverse`] its backward pass on the fast engine.
//!
//! May use: `layers`, `kernels` (the fused transformer ops among them), `contract`. Turning a
//! file into a ready `Model` (preprocessing, labels, cards) is `load`'s job.

pub mod graph;
mod mapped;
pub mod model;
pub mod ops;
pub mod proto;
pub mod resize;
mod reverse;
mod rewrite;
pub mod stages;
pub mod tensor;

use std::path::Path;

pub use model::OnnxModel;

/// Whether `path` names an ONNX file.
pub fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}
