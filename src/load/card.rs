//! Model cards (`models/NAME.toml`): which architecture, which weights, how to preprocess, which
//! labels; and where cards are looked for.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::families::Arch;
use crate::preprocess::Preprocess;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Card {
    pub name: String,
    pub arch: Option<String>,
    /// Relative to the card's folder.
    pub weights: PathBuf,
    pub labels: Option<PathBuf>,
    pub preprocess: Option<Preprocess>,
}

impl Card {
    pub fn parse(text: &str, origin: &str) -> Result<Card> {
        toml::from_str(text).map_err(|e| Error::Model(format!("model card {origin}: {}", e.message())))
    }

    pub fn read(path: &Path) -> Result<Card> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Card::parse(&text, &path.display().to_string())
    }

    pub fn arch(&self) -> Result<Option<Arch>> {
        self.arch.as_deref().map(Arch::parse).transpose()
    }
}

/// Folders searched for `NAME.toml`: ./models, then the models/ this binary was built from.
fn card_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("models"), Path::new(env!("CARGO_MANIFEST_DIR")).join("models")]
}

/// The card file for `-m NAME`, if one of the card folders has it.
pub(super) fn find(name: &str) -> Option<PathBuf> {
    card_dirs().into_iter().map(|d| d.join(format!("{name}.toml"))).find(|p| p.is_file())
}

/// The names of the cards on disk, sorted.
pub(super) fn on_disk() -> Vec<String> {
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
        .collect();
    names.sort();
    names.dedup();
    names
}
