//! The paths of camscope 0.1, before the model code was split into rooms (`contract`,
//! `families`, `layers`, `kernels`, `load`). Kept so that code written against them still
//! builds; new code should use the rooms themselves. Nothing lives here.

pub use crate::contract::*;
pub use crate::families::{
    efficientnet_lite, registry, resnet, weights, Arch, Family, Layer, Network, Stage,
};
pub use crate::kernels::{matmul, portable};

/// `camscope::model::card`: a ready model and loading (now [`crate::contract::Model`],
/// [`crate::preprocess::Preprocess`] and [`crate::load`]).
pub mod card {
    pub use crate::contract::{labels_matching, Model};
    pub use crate::load::{load, synthetic, DEFAULT_MODEL};
    pub use crate::preprocess::Preprocess;
}

/// `camscope::model::kernels`: now [`crate::kernels`].
pub mod kernels {
    pub use crate::kernels::*;
}

/// `camscope::model::contract`: now [`crate::contract`].
pub mod contract {
    pub use crate::contract::*;
}

/// `camscope::model::ops`: the layers, now [`crate::layers`], and the activation ops, now in
/// [`crate::kernels::activation`].
pub mod ops {
    pub use crate::kernels::activation::{activation, activation_gradient, Activation};
    pub use crate::layers::*;
}
