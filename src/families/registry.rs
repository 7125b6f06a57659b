//! The list of built-in families, the only place that names them all, and [`Arch`], one
//! architecture of one of them. Each family file declares its own [`Family`]; this list collects
//! them, and no family imports it back. Adding a family is one new file and one line here.

use std::fmt;

use super::family::Family;
use super::network::Network;
use super::weights::WeightStore;
use super::{efficientnet_lite, resnet};
use crate::error::{Error, Result};
use crate::preprocess::Preprocess;

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
