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
    pub task: Task,
    /// What the loader chose for the user that `layers` should say (e.g. which of a graph's
    /// outputs it reads).
    pub note: Option<String>,
}

/// What a network's output is, read off its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Logits (N, classes).
    Classification,
    /// A score map (N, classes, H, W), explained for a region of it (`crate::segment`).
    Segmentation,
}

impl Task {
    /// The task and class count of an output of these dimensions (batch 1), if it is either.
    pub fn of_output(dims: &[usize]) -> Option<(Task, usize)> {
        match dims {
            [1, n] => Some((Task::Classification, *n)),
            [1, c, h, w] if *h > 0 && *w > 0 => Some((Task::Segmentation, *c)),
            _ => None,
        }
    }
}

/// A model's labels when it brings none: for 21 score maps Pascal VOC's classes (torchvision's
/// segmentation models), else what [`default_labels`] gives.
pub fn default_labels_for(task: Task, classes: usize) -> Vec<String> {
    match (task, classes) {
        (Task::Segmentation, 21) => super::labels::VOC_CLASSES.iter().map(|s| s.to_string()).collect(),
        _ => default_labels(classes),
    }
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
        if let Some(problem) = preprocess.problem() {
            return Err(Error::Model(format!("model {name}: {problem}")));
        }
        let size = preprocess.input_size;
        let x = candle_core::Tensor::zeros(
            (1, 3, size.height, size.width),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        let stages = network.stages();
        let mut taps = Taps::new(stages, EngineKind::Portable, Mode::Plain);
        let logits = network
            .forward(&x, &mut taps)
            .map_err(|e| Error::Model(format!("model {name} failed on a {size} input: {e}")))?;
        check_all_stages_tapped(network.as_ref(), taps.stages_seen())?;
        let Some((task, classes)) = Task::of_output(logits.dims()) else {
            return Err(Error::Model(format!(
                "model {name} returned an output of shape {:?}: neither logits (1, classes) nor a segmentation score map (1, classes, H, W)",
                logits.dims()
            )));
        };
        let labels = match labels {
            Some(l) => l,
            None => default_labels_for(task, classes),
        };
        Self::checked(name, network, preprocess, labels, classes, task)
    }

    /// A model whose class count is already known (a built-in family reads it off its head), so
    /// that no check pass is needed.
    pub(crate) fn checked(
        name: String,
        network: Arc<dyn ImageClassifier>,
        preprocess: Preprocess,
        labels: Vec<String>,
        classes: usize,
        task: Task,
    ) -> Result<Self> {
        if let Some(problem) = preprocess.problem() {
            return Err(Error::Model(format!("model {name}: {problem}")));
        }
        if labels.len() != classes {
            return Err(Error::Model(format!(
                "{} labels for a network with {classes} classes",
                labels.len()
            )));
        }
        Ok(Model { name, network, preprocess, labels, task, note: None })
    }

    /// The ImageNet class names: the labels of any 1000-class model without its own.
    /// The stage explained when none is named: the last one whose grid is still spatial, found
    /// by one forward pass of a blank input of the model's size (no image needed, so a sweep or
    /// a comparison can resolve it before reading any).
    pub fn default_stage(&self, engine: EngineKind) -> Result<usize> {
        let s = self.preprocess.input_size;
        let shapes = super::classifier::stage_shapes(self.network.as_ref(), s.height, s.width, engine)?;
        let grids: Vec<[usize; 3]> = shapes.iter().map(|g| g.grid).collect();
        let backbone = match self.task {
            Task::Segmentation => super::classifier::backbone_stage(self.network.stages()),
            Task::Classification => None,
        };
        Ok(backbone.unwrap_or_else(|| super::classifier::default_stage_of(self.network.as_ref(), &grids)))
    }

    /// Fails with a clear error for a segmentation model where only classifiers go (`what`:
    /// the command or mode, for the message).
    pub fn require_classifier(&self, what: &str) -> Result<()> {
        match self.task {
            Task::Classification => Ok(()),
            Task::Segmentation => Err(Error::Usage(format!(
                "{} is a segmentation model (its output is a score map): {what} takes classifiers; explain it with `camscope explain` or the debugger on one image",
                self.name
            ))),
        }
    }

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
