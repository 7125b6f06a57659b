//! Loading: from what a person passes to `--model` (a card name, a `.toml` card, a weights file,
//! an `.onnx` graph) to a ready [`Model`]. The only room that knows every model source, and picks
//! one; the sources know nothing of it.
//!
//! May use: `families`, `onnx`, `contract`, `preprocess`. A new model source gets its line in
//! [`load`] here (and its card field, if it has one).

mod card;

use std::path::Path;
use std::sync::Arc;

use card::Card;

use crate::contract::{default_labels, default_labels_for, parse_labels, Model, Task};
use crate::error::{Error, Result};
use crate::families::{Arch, WeightStore};
use crate::onnx::{self, OnnxModel};
use crate::preprocess::{InputSize, Preprocess};

/// Built into the binary so that it works from any directory with nothing else installed.
const BUILTIN_CARD: &str = include_str!("../../models/efficientnet-lite0.toml");
const BUILTIN_WEIGHTS: &[u8] = include_bytes!("../../models/efficientnet_lite0.safetensors");

/// The model `--model` names by default, built into the binary.
pub const DEFAULT_MODEL: &str = "efficientnet-lite0";

/// Resolves `--model` (a card name, a `.toml` card, or a weights file) and `--arch`.
pub fn load(spec: &str, arch: Option<Arch>) -> Result<Model> {
    let path = Path::new(spec);
    if path.is_file() && onnx::is_onnx(path) {
        return onnx_model(path, None, None, None);
    }
    if path.is_file() {
        return if path.extension().is_some_and(|e| e == "toml") {
            load_card(path, arch)
        } else {
            load_weights_file(path, arch)
        };
    }
    if path.is_dir() {
        return Err(Error::Model(format!("{spec} is a directory, not a model card or weights file")));
    }
    if let Some(card) = card::find(spec) {
        return load_card(&card, arch);
    }
    if spec == DEFAULT_MODEL {
        return load_builtin(arch);
    }
    let looks_like_path = spec.contains(['/', '\\']) || spec.contains('.');
    Err(Error::Model(if looks_like_path {
        format!("no such file: {spec}")
    } else {
        format!("unknown model '{spec}'; known: {}", known_models().join(", "))
    }))
}

/// Every name `-m` takes: the cards on disk and the built-in model.
fn known_models() -> Vec<String> {
    let mut names = card::on_disk();
    names.push(DEFAULT_MODEL.to_string());
    names.sort();
    names.dedup();
    names
}

fn load_builtin(arch: Option<Arch>) -> Result<Model> {
    let card = Card::parse(BUILTIN_CARD, "(built-in)")?;
    let weights =
        WeightStore::from_safetensors_bytes("(built-in efficientnet_lite0.safetensors)", BUILTIN_WEIGHTS)?;
    let arch = arch.or(card.arch()?);
    assemble(card.name, weights, arch, card.preprocess, None)
}

fn load_card(path: &Path, arch: Option<Arch>) -> Result<Model> {
    let card = Card::read(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let labels = card.labels.as_ref().map(|l| read_labels(&dir.join(l))).transpose()?;
    if onnx::is_onnx(&card.weights) {
        return onnx_model(&dir.join(&card.weights), Some(card.name), card.preprocess, labels);
    }
    let weights = WeightStore::from_file(&dir.join(&card.weights))?;
    let arch = arch.or(card.arch()?);
    assemble(card.name, weights, arch, card.preprocess, labels)
}

fn load_weights_file(path: &Path, arch: Option<Arch>) -> Result<Model> {
    let weights = WeightStore::from_file(path)?;
    let name = path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    assemble(name, weights, arch, None, None)
}

fn read_labels(path: &Path) -> Result<Vec<String>> {
    Ok(parse_labels(&std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?))
}

/// A built-in family's network from a checkpoint, with the family's preprocessing unless a card
/// gives its own.
fn assemble(
    name: String,
    weights: WeightStore,
    arch: Option<Arch>,
    preprocess: Option<Preprocess>,
    labels: Option<Vec<String>>,
) -> Result<Model> {
    let arch = match arch {
        Some(a) => a,
        None => Arch::detect(&weights)?,
    };
    let network = arch.build(&weights)?;
    let classes = network.num_classes();
    let labels = labels.unwrap_or_else(|| default_labels(classes));
    let preprocess = preprocess.unwrap_or_else(|| arch.preprocess());
    Model::checked(name, Arc::new(network), preprocess, labels, classes, Task::Classification)
}

/// A model from an ONNX file: the graph's input size (any height and width) with ImageNet mean
/// and std unless `preprocess` says otherwise; `labels` (else ImageNet names for 1000 classes, else numbers).
/// The class count comes from the graph (its shapes are known from the load's probe), so no
/// check pass runs: every op has run in the probe, and the stages are tapped by construction.
pub fn onnx_model(
    path: &Path,
    name: Option<String>,
    preprocess: Option<Preprocess>,
    labels: Option<Vec<String>>,
) -> Result<Model> {
    let network = OnnxModel::load(path, preprocess.as_ref().map(|p| p.input_size))?;
    let [h, w] = network.input_size();
    let Some((task, classes)) = Task::of_output(network.output_shape()) else {
        return Err(Error::Model(format!(
            "{}: the graph returns an output of shape {:?}: neither logits (1, classes) nor a segmentation score map (1, classes, H, W)",
            path.display(),
            network.output_shape()
        )));
    };
    let graph_size = InputSize::new(h, w);
    let preprocess = match preprocess {
        Some(p) if p.input_size != graph_size => {
            return Err(Error::Model(format!(
                "{}: the model card says input_size {}, the graph takes {graph_size} images",
                path.display(),
                p.input_size
            )))
        }
        Some(p) => p,
        // A classifier's crop keeps torchvision's margin; a segmentation model labels the
        // whole picture, so the image just covers its input.
        None if task == Task::Segmentation => Preprocess::whole(graph_size),
        None => Preprocess::imagenet(graph_size),
    };
    let name =
        name.unwrap_or_else(|| path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()));
    let labels = labels.unwrap_or_else(|| default_labels_for(task, classes));
    let note = network.output_note().map(str::to_string);
    let mut model = Model::checked(name, Arc::new(network), preprocess, labels, classes, task)?;
    model.note = note;
    Ok(model)
}

/// A model with made-up weights: benchmarks and tests of architectures with no shipped weights.
pub fn synthetic(arch: Arch, seed: u64) -> Result<Model> {
    let weights = WeightStore::synthetic(seed);
    let name = format!("{arch} (synthetic weights)");
    assemble(name, weights, Some(arch), None, None)
}
