//! The built-in families, as plug-ins: each file declares one [`Family`] (which architectures it
//! builds, how it recognises a checkpoint from its tensor names, how to build it, how its
//! checkpoints were preprocessed), and this list is the only place that names them all. Adding a
//! family is one new file and one line here.

use std::fmt;

use super::card::Preprocess;
use super::weights::WeightStore;
use super::{efficientnet_lite, resnet, Network};
use crate::error::{Error, Result};

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

/// Every built-in family.
pub const FAMILIES: [&Family; 2] = [&efficientnet_lite::FAMILY, &resnet::FAMILY];

/// One architecture of one family.
#[derive(Clone)]
pub struct Arch {
    family: &'static Family,
    name: String,
}

impl Arch {
    /// Every architecture camscope builds.
    pub fn all() -> Vec<Arch> {
        FAMILIES.iter().flat_map(|f| (f.archs)().into_iter().map(|name| Arch { family: f, name })).collect()
    }

    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase().replace('_', "-");
        let all = Arch::all();
        all.iter().find(|a| a.name == lower).cloned().ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
            Error::Model(format!("unknown architecture '{s}'; known: {}", names.join(", ")))
        })
    }

    /// Guesses the architecture from tensor names and shapes.
    pub fn detect(weights: &WeightStore) -> Result<Self> {
        for family in FAMILIES {
            if let Some(found) = (family.detect)(weights) {
                return Ok(Arch { family, name: found? });
            }
        }
        let mut names = weights.names();
        names.sort_unstable();
        let sample: Vec<&str> = names.into_iter().take(4).collect();
        Err(Error::Weights {
            source_name: weights.source_name().into(),
            message: format!(
                "cannot tell the architecture from its tensor names (first: {}); pass --arch",
                sample.join(", ")
            ),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Builds the network from `weights`, checking that every tensor was used.
    pub fn build(&self, weights: &WeightStore) -> Result<Network> {
        let network = (self.family.build)(&self.name, weights)?;
        weights.finish()?;
        Ok(network)
    }

    pub fn preprocess(&self) -> Preprocess {
        (self.family.preprocess)(&self.name)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Arch({})", self.name)
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_parses_back_to_itself() {
        let all = Arch::all();
        assert!(all.len() >= 10);
        for arch in all {
            assert_eq!(Arch::parse(&arch.to_string().to_uppercase()).unwrap(), arch);
        }
        assert!(Arch::parse("vgg16").unwrap_err().to_string().contains("known: efficientnet-lite0"));
    }
}
