//! What a built-in family declares about itself: which architectures it builds, how it
//! recognises a checkpoint from its tensor names, how to build it, how its checkpoints were
//! preprocessed. A family file fills one in; the registry collects them.

use super::network::Network;
use super::weights::WeightStore;
use crate::error::Result;
use crate::preprocess::Preprocess;

/// A family of architectures built from a checkpoint's tensors.
pub struct Family {
    /// The architectures it builds, as `--arch` spells them (`resnet50`).
    pub archs: fn() -> Vec<String>,
    /// The architecture of a checkpoint whose tensor names are this family's; `None` when they
    /// are not (an error when they are, but fit none of its architectures).
    pub detect: fn(&WeightStore) -> Option<Result<String>>,
    /// Builds architecture `arch` (one of `archs`), checking every tensor it reads.
    pub build: fn(&str, &WeightStore) -> Result<Network>,
    /// What the family's checkpoints were trained with, for weights that come without a card.
    pub preprocess: fn(&str) -> Preprocess,
}
