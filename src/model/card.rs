//! Model cards (`models/*.toml`): which architecture, which weights, how to preprocess, which
//! labels. `--model` takes a card name, a card file or a bare weights file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::weights::WeightStore;
use super::{Arch, EngineKind, ImageClassifier};
use crate::error::{Error, Result};

/// Built into the binary so that it works from any directory with nothing else installed.
const BUILTIN_CARD: &str = include_str!("../../models/efficientnet-lite0.toml");
const BUILTIN_WEIGHTS: &[u8] = include_bytes!("../../models/efficientnet_lite0.safetensors");
const IMAGENET_LABELS: &str = include_str!("../../models/imagenet_classes.txt");
pub const DEFAULT_MODEL: &str = "efficientnet-lite0";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Side of the square the network sees.
    pub input_size: usize,
    /// The shorter image side is resized to this before the centre crop.
    pub resize: usize,
    /// Per-channel mean and std, in pixel units (0..255).
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// ImageNet's mean and std at `size` (resize to size/0.875, centre crop): what torchvision
    /// and timm classifiers expect unless told otherwise.
    pub fn imagenet(size: usize) -> Self {
        Preprocess {
            input_size: size,
            resize: (size as f64 / 0.875).round() as usize,
            mean: [123.675, 116.28, 103.53],
            std: [58.395, 57.12, 57.375],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Card {
    name: String,
    arch: Option<String>,
    weights: PathBuf,
    labels: Option<PathBuf>,
    preprocess: Option<Preprocess>,
}

/// A network ready to run, with what it takes to feed it and read its output.
pub struct Model {
    pub name: String,
    pub network: Arc<dyn ImageClassifier>,
    pub preprocess: Preprocess,
    pub labels: Vec<String>,
}

impl Model {
    /// Wraps any [`ImageClassifier`]: one forward pass on a blank input of the preprocessing's
    /// size checks that the model runs and taps every stage, and counts its classes. Without
    /// `labels`, 1000 classes get the ImageNet names and other counts "class N". The check runs
    /// on the CPU: a model whose weights live on another device fails it.
    pub fn new(
        name: impl Into<String>,
        network: Arc<dyn ImageClassifier>,
        preprocess: Preprocess,
        labels: Option<Vec<String>>,
    ) -> Result<Self> {
        let name = name.into();
        let size = preprocess.input_size;
        let x = candle_core::Tensor::zeros(
            (1, 3, size, size),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        let stages = network.stages();
        let mut taps = super::Taps::new(stages, EngineKind::Portable, super::Mode::Plain);
        let logits = network
            .forward(&x, &mut taps)
            .map_err(|e| Error::Model(format!("model {name} failed on a {size}×{size} input: {e}")))?;
        super::check_all_stages_tapped(network.as_ref(), taps.stages_seen())?;
        let classes = match logits.dims() {
            [1, n] => *n,
            d => {
                return Err(Error::Model(format!(
                    "model {name} returned logits of shape {d:?}, not (1, classes)"
                )))
            }
        };
        let labels = match labels {
            Some(l) => l,
            None => default_labels(classes),
        };
        Self::checked(name, network, preprocess, labels, classes)
    }

    fn checked(
        name: String,
        network: Arc<dyn ImageClassifier>,
        preprocess: Preprocess,
        labels: Vec<String>,
        classes: usize,
    ) -> Result<Self> {
        if labels.len() != classes {
            return Err(Error::Model(format!(
                "{} labels for a network with {classes} classes",
                labels.len()
            )));
        }
        Ok(Model { name, network, preprocess, labels })
    }

    /// The ImageNet class names: the labels of any 1000-class model without its own.
    pub fn imagenet_labels() -> Vec<String> {
        parse_labels(IMAGENET_LABELS)
    }

    pub fn label(&self, class: usize) -> &str {
        &self.labels[class]
    }

    /// A class from an index (`243`) or a whole label (`bull mastiff`, any case). An unknown
    /// label's error lists the labels that contain it, as the debugger's class search finds them.
    pub fn parse_class(&self, s: &str) -> Result<usize> {
        let n = self.labels.len();
        if let Ok(i) = s.trim().parse::<usize>() {
            return if i < n { Ok(i) } else { Err(Error::UnknownClass(s.into(), n - 1)) };
        }
        let wanted = s.trim().to_lowercase();
        self.labels.iter().position(|l| l.to_lowercase() == wanted).ok_or_else(|| Error::UnknownLabel {
            name: s.into(),
            max: n - 1,
            similar: if wanted.is_empty() {
                vec![]
            } else {
                labels_matching(&self.labels, s).into_iter().map(|i| self.labels[i].clone()).collect()
            },
        })
    }
}

/// The classes whose label contains `query` (case-insensitive, trimmed), best first: the whole
/// label, then whole words (`cat` in `tiger cat`), then the start of a word, then anywhere; in
/// class order within each. The one label matcher: `--class` suggestions and the debugger's `/`.
pub fn labels_matching(labels: &[String], query: &str) -> Vec<usize> {
    let q = query.trim().to_lowercase();
    let word_edge = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    let rank = |label: &str| -> Option<u8> {
        let l = label.to_lowercase();
        if l == q {
            return Some(0);
        }
        l.match_indices(&q)
            .map(|(at, _)| {
                let starts = word_edge(l[..at].chars().next_back());
                let ends = word_edge(l[at + q.len()..].chars().next());
                match (starts, ends) {
                    (true, true) => 1,
                    (true, false) => 2,
                    _ => 3,
                }
            })
            .min()
    };
    let mut found: Vec<(u8, usize)> =
        labels.iter().enumerate().filter_map(|(i, l)| rank(l).map(|r| (r, i))).collect();
    found.sort();
    found.into_iter().map(|(_, i)| i).collect()
}

/// Folders searched for `NAME.toml`: ./models, then the models/ this binary was built from.
fn card_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("models"), Path::new(env!("CARGO_MANIFEST_DIR")).join("models")]
}

/// Resolves `--model` (a card name, a `.toml` card, or a weights file) and `--arch`.
pub fn load(spec: &str, arch: Option<Arch>) -> Result<Model> {
    let path = Path::new(spec);
    if path.is_file() && crate::onnx::is_onnx(path) {
        return crate::onnx::load_model(path, None, None, None);
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
    if let Some(card) = card_dirs().into_iter().map(|d| d.join(format!("{spec}.toml"))).find(|p| p.is_file())
    {
        return load_card(&card, arch);
    }
    if spec == DEFAULT_MODEL {
        return load_builtin(arch);
    }
    let looks_like_path = spec.contains(['/', '\\']) || spec.contains('.');
    Err(Error::Model(if looks_like_path {
        format!("no such file: {spec}")
    } else {
        format!("unknown model '{spec}'; known: {}", known_cards().join(", "))
    }))
}

fn known_cards() -> Vec<String> {
    let mut names: Vec<String> = card_dirs()
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            if p.extension()? != "toml" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .chain([DEFAULT_MODEL.to_string()])
        .collect();
    names.sort();
    names.dedup();
    names
}

fn parse_card(text: &str, origin: &str) -> Result<Card> {
    toml::from_str(text).map_err(|e| Error::Model(format!("model card {origin}: {}", e.message())))
}

fn load_builtin(arch: Option<Arch>) -> Result<Model> {
    let card = parse_card(BUILTIN_CARD, "(built-in)")?;
    let weights =
        WeightStore::from_safetensors_bytes("(built-in efficientnet_lite0.safetensors)", BUILTIN_WEIGHTS)?;
    let arch = arch.or(card_arch(&card)?);
    assemble(card.name, weights, arch, card.preprocess, None)
}

fn card_arch(card: &Card) -> Result<Option<Arch>> {
    card.arch.as_deref().map(Arch::parse).transpose()
}

fn load_card(path: &Path, arch: Option<Arch>) -> Result<Model> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let card = parse_card(&text, &path.display().to_string())?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let labels = card.labels.as_ref().map(|l| dir.join(l));
    if crate::onnx::is_onnx(&card.weights) {
        let labels = match &labels {
            Some(l) => Some(parse_labels(&std::fs::read_to_string(l).map_err(|e| Error::io(l, e))?)),
            None => None,
        };
        return crate::onnx::load_model(&dir.join(&card.weights), Some(card.name), card.preprocess, labels);
    }
    let weights = WeightStore::from_file(&dir.join(&card.weights))?;
    let arch = arch.or(card_arch(&card)?);
    assemble(card.name, weights, arch, card.preprocess, labels.as_deref())
}

fn load_weights_file(path: &Path, arch: Option<Arch>) -> Result<Model> {
    let weights = WeightStore::from_file(path)?;
    let name = path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    assemble(name, weights, arch, None, None)
}

fn assemble(
    name: String,
    weights: WeightStore,
    arch: Option<Arch>,
    preprocess: Option<Preprocess>,
    labels: Option<&Path>,
) -> Result<Model> {
    let arch = match arch {
        Some(a) => a,
        None => Arch::detect(&weights)?,
    };
    let network = arch.build(&weights)?;
    let classes = network.num_classes();
    let labels = match labels {
        Some(path) => parse_labels(&std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?),
        None => default_labels(classes),
    };
    let preprocess = preprocess.unwrap_or_else(|| arch.preprocess());
    Model::checked(name, Arc::new(network), preprocess, labels, classes)
}

fn parse_labels(text: &str) -> Vec<String> {
    text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

fn default_labels(classes: usize) -> Vec<String> {
    if classes == 1000 {
        Model::imagenet_labels()
    } else {
        (0..classes).map(|i| format!("class {i}")).collect()
    }
}

/// A model with made-up weights: benchmarks and tests of architectures with no shipped weights.
pub fn synthetic(arch: Arch, seed: u64) -> Result<Model> {
    let weights = WeightStore::synthetic(seed);
    let name = format!("{arch} (synthetic weights)");
    assemble(name, weights, Some(arch), None, None)
}
