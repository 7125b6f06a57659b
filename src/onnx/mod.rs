//! ONNX import: a model exported from PyTorch with `torch.onnx.export` (TorchScript or dynamo
//! exporter) becomes an [`ImageClassifier`](crate::model::ImageClassifier) whose stages are the
//! PyTorch modules recorded in the graph, and every camscope method works on it.
//!
//! One job per file: [`proto`] decodes the protobuf (prost messages, no `protoc`), [`tensor`]
//! reads initializers (inline or external), [`graph`] orders, folds and probes the graph,
//! [`ops`] maps each operator to Candle, [`stages`] finds modules, their outputs and layouts,
//! [`rewrite`] merges exported op chains into single ops, [`model`] is the classifier, and
//! [`reverse`] its backward pass on the fast engine.

mod fused;
pub mod graph;
pub mod model;
pub mod ops;
pub mod proto;
mod reverse;
mod rewrite;
pub mod stages;
pub mod tensor;

use std::path::Path;
use std::sync::Arc;

pub use model::OnnxModel;

use crate::error::{Error, Result};
use crate::model::card::{Model, Preprocess};

/// Whether `path` names an ONNX file.
pub fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// A ready [`Model`] from an ONNX file: the graph's input size with ImageNet mean and std unless
/// `preprocess` says otherwise; `labels` (else ImageNet names for 1000 classes, else numbers).
pub fn load_model(
    path: &Path,
    name: Option<String>,
    preprocess: Option<Preprocess>,
    labels: Option<Vec<String>>,
) -> Result<Model> {
    let network = OnnxModel::load(path, preprocess.as_ref().map(|p| p.input_size))?;
    let [h, w] = network.input_size();
    if h != w {
        return Err(Error::Model(format!(
            "{}: the graph takes {h}×{w} images; camscope feeds square ones",
            path.display()
        )));
    }
    let preprocess = match preprocess {
        Some(p) if p.input_size != h => {
            return Err(Error::Model(format!(
                "{}: the model card says input_size {}, the graph takes {h}×{w}",
                path.display(),
                p.input_size
            )))
        }
        Some(p) => p,
        None => Preprocess::imagenet(h),
    };
    let name =
        name.unwrap_or_else(|| path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()));
    Model::new(name, Arc::new(network), preprocess, labels)
}
