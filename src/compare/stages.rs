//! Which stage of model B a stage of model A is compared with. A fine-tune of the same
//! architecture has the same stage names, and every name is compared with itself; two different
//! architectures share none, and each model's own chosen stage stands for it.

use crate::error::Result;
use crate::explain::StageChoice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePair {
    pub a: String,
    pub b: String,
}

impl StagePair {
    fn same(name: &str) -> Self {
        StagePair { a: name.into(), b: name.into() }
    }

    /// The name both share, or "A ~ B".
    pub fn label(&self) -> String {
        if self.a == self.b {
            self.a.clone()
        } else {
            format!("{} ~ {}", self.a, self.b)
        }
    }
}

/// The stages to compare, from each model's stage names and default stage (the last spatial one).
/// - default: A's default stage where B has it, else both defaults;
/// - `all`: every stage of A that B has too (in A's order), else both defaults;
/// - a name: that stage of both where the models share stage names (B must then have it: an
///   imported graph can be tapped at any module path), else that stage of A and B's default.
pub fn pair_stages(
    a: &[String],
    b: &[String],
    a_default: usize,
    b_default: usize,
    choice: &StageChoice,
) -> Result<Vec<StagePair>> {
    let shared: Vec<&String> = a.iter().filter(|n| b.contains(n)).collect();
    let defaults = || StagePair { a: a[a_default].clone(), b: b[b_default].clone() };
    Ok(match choice {
        StageChoice::Default if b.contains(&a[a_default]) => vec![StagePair::same(&a[a_default])],
        StageChoice::Default => vec![defaults()],
        StageChoice::All if shared.is_empty() => vec![defaults()],
        StageChoice::All => shared.iter().map(|n| StagePair::same(n)).collect(),
        StageChoice::Named(name) if shared.is_empty() => {
            vec![StagePair { a: name.clone(), b: b[b_default].clone() }]
        }
        StageChoice::Named(name) => vec![StagePair::same(name)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_architecture_compares_name_with_name() {
        let a = names(&["stem", "block1", "head"]);
        let all = pair_stages(&a, &a, 2, 2, &StageChoice::All).unwrap();
        assert_eq!(all.iter().map(|p| p.label()).collect::<Vec<_>>(), ["stem", "block1", "head"]);
        assert_eq!(pair_stages(&a, &a, 2, 2, &StageChoice::Default).unwrap(), [StagePair::same("head")]);
        let named = pair_stages(&a, &a, 2, 2, &StageChoice::Named("block1".into())).unwrap();
        assert_eq!(named, [StagePair::same("block1")]);
    }

    #[test]
    fn different_architectures_compare_their_own_stages() {
        let (a, b) = (names(&["stem", "head"]), names(&["layer1", "layer4", "fc"]));
        let pair = StagePair { a: "head".into(), b: "layer4".into() };
        assert_eq!(pair_stages(&a, &b, 1, 1, &StageChoice::Default).unwrap(), vec![pair.clone()]);
        assert_eq!(pair_stages(&a, &b, 1, 1, &StageChoice::All).unwrap(), vec![pair.clone()]);
        assert_eq!(pair.label(), "head ~ layer4");
        let named = pair_stages(&a, &b, 1, 1, &StageChoice::Named("stem".into())).unwrap();
        assert_eq!(named, [StagePair { a: "stem".into(), b: "layer4".into() }]);
    }

    #[test]
    fn a_default_stage_that_b_lacks_falls_back_to_b_default() {
        let (a, b) = (names(&["stem", "x", "head"]), names(&["stem", "y"]));
        let pairs = pair_stages(&a, &b, 2, 1, &StageChoice::Default).unwrap();
        assert_eq!(pairs, [StagePair { a: "head".into(), b: "y".into() }]);
        assert_eq!(pair_stages(&a, &b, 2, 1, &StageChoice::All).unwrap(), [StagePair::same("stem")]);
    }
}
