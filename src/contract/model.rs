//! A model ready to run: a classifier with its preprocessing and labels, checked once when it is
//! made. Every model source produces one; the engine and the front ends read it.

use std::sync::Arc;

use super::classifier::{check_all_stages_tapped, ImageClassifier};
use super::labels::{class_named, default_labels, imagenet_labels, labels_matching};
use super::taps::{EngineKind, Mode, Taps};
use crate::error::{Error, Result};
use crate::preprocess::Preprocess;

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
        let mut taps = Taps::new(stages, EngineKind::Portable, Mode::Plain);
        let logits = network
            .forward(&x, &mut taps)
            .map_err(|e| Error::Model(format!("model {name} failed on a {size}×{size} input: {e}")))?;
        check_all_stages_tapped(network.as_ref(), taps.stages_seen())?;
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

    /// A model whose class count is already known (a built-in family reads it off its head), so
    /// that no check pass is needed.
    pub(crate) fn checked(
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
        imagenet_labels()
    }

    pub fn label(&self, class: usize) -> &str {
        &self.labels[class]
    }

    /// A class from an index (`243`) or a whole label (`bull mastiff`, any case). An unknown
    /// label's error lists the labels that contain it, as the debugger's class search finds them.
    pub fn parse_class(&self, s: &str) -> Result<usize> {
        let n = self.labels.len();
        if let Some(class) = class_named(&self.labels, s) {
            return Ok(class);
        }
        if s.trim().parse::<usize>().is_ok() {
            return Err(Error::UnknownClass(s.into(), n - 1));
        }
        let wanted = s.trim();
        Err(Error::UnknownLabel {
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
