//! The built-in families — EfficientNet-Lite0–4 and torchvision ResNet-18–152 — built from a
//! checkpoint's tensors. Each family file (a struct per block, `new` + `forward`, the
//! checkpoint's names verbatim) declares its own [`Family`]: how to recognise its checkpoints,
//! build them, preprocess for them. [`registry`] collects them. A built-in network is a
//! [`Network`], an ordered list of [`Layer`]s and a classifier head, which also offers a
//! hand-written CPU tape and can resume from any stage.
//!
//! May use: `layers`, `kernels`, `contract`, `preprocess`. A new family is one file here and one
//! line in [`registry`].

pub mod efficientnet_lite;
mod family;
mod network;
pub mod registry;
pub mod resnet;
pub mod weights;

pub use family::Family;
pub use network::{Layer, Network, Stage};
pub use registry::{Arch, FAMILIES};
pub use weights::WeightStore;
