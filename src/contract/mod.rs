//! The one contract every model meets: a built-in family, a Rust user's own Candle model, an
//! imported graph. A model names its stages, says how each stage's output is laid out, and runs a
//! forward pass in which it hands every stage output to the engine's [`Taps`]. Everything camscope
//! computes — activations, gradients at every stage through Candle autograd, perturbation runs,
//! FullGrad's bias gradients, guided backprop — is built on that one hook, so it works on every
//! device Candle runs on. A model may also offer a hand-written CPU tape ([`CpuTape`]) as a fast
//! path; the engine uses it where the user asked for the fast engine, and tests hold it equal to
//! the autograd path.
//!
//! Besides the trait ([`ImageClassifier`]) this room holds what every model source produces and
//! every consumer reads: stage specs and layouts, the taps, the optional fast paths, the CPU
//! feature map ([`Chw`]), and a [`Model`] — a classifier with its preprocessing and labels.
//! May use: `kernels` (the taps run the fast activation), `preprocess` (a model's input spec),
//! `error`. Everything above — sources, loading, engine, front ends — uses it; it uses none of them.

mod chw;
mod classifier;
mod labels;
mod model;
mod stage;
mod tape;
mod taps;

pub use chw::Chw;
pub use classifier::{
    backbone_stage, check_all_stages_tapped, default_stage, default_stage_of, logits, stage_index,
    stage_shapes, with_stage, Capabilities, ImageClassifier, StageShape,
};
pub use labels::{class_named, default_labels, imagenet_labels, labels_matching, parse_labels, VOC_CLASSES};
pub use model::{default_labels_for, Model, Task};
pub use stage::{Layout, StageSpec};
pub use tape::{Backward, BiasGradient, CpuTape, Recording, ReversePass};
pub use taps::{EngineKind, Mode, StageHook, Taps};
