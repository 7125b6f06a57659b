//! Two models are compared class by class, so their outputs must mean the same classes.

use crate::contract::Model;
use crate::error::{Error, Result};

/// Whether a label is a placeholder (`class N`, what a model without names gets): it says nothing
/// about which class the output is, so it matches any name.
fn is_placeholder(label: &str, index: usize) -> bool {
    label == format!("class {index}")
}

/// The models must have as many classes, and the same name for each class where both have names
/// (in any case): a model trained on another label order would otherwise compare a tabby with a
/// tench. One error says how they differ.
pub fn check_labels(a: &Model, b: &Model) -> Result<()> {
    a.require_classifier("--vs")?;
    b.require_classifier("--vs")?;
    check_label_lists((&a.name, &a.labels), (&b.name, &b.labels))
}

fn check_label_lists(a: (&str, &[String]), b: (&str, &[String])) -> Result<()> {
    let ((a_name, a), (b_name, b)) = (a, b);
    if a.len() != b.len() {
        return Err(Error::Usage(format!(
            "the models' classes differ: {} has {} classes, {} has {}; --vs compares models of the same classes",
            a_name,
            a.len(),
            b_name,
            b.len()
        )));
    }
    let differ: Vec<(usize, &str, &str)> = a
        .iter()
        .zip(b)
        .enumerate()
        .filter(|(i, (x, y))| !is_placeholder(x, *i) && !is_placeholder(y, *i) && !x.eq_ignore_ascii_case(y))
        .map(|(i, (x, y))| (i, x.as_str(), y.as_str()))
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = differ
        .iter()
        .take(3)
        .map(|(i, x, y)| format!("class {i} is {x:?} in one, {y:?} in the other"))
        .collect();
    let more = if differ.len() > 3 { format!(" (and {} more)", differ.len() - 3) } else { String::new() };
    Err(Error::Usage(format!(
        "the models name their classes differently: {}{more}; --vs compares models of the same classes (give both the same labels file in their cards)",
        shown.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(a: &[&str], b: &[&str]) -> Result<()> {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_label_lists(("a", &owned(a)), ("b", &owned(b)))
    }

    #[test]
    fn same_names_in_any_case_and_placeholders_agree() {
        check(&["cat", "dog", "class 2"], &["Cat", "class 1", "bird"]).unwrap();
    }

    #[test]
    fn a_different_count_or_name_is_one_clear_error() {
        let e = check(&["cat", "dog"], &["cat", "dog", "bird"]).unwrap_err().to_string();
        assert!(e.contains("a has 2 classes") && e.contains("b has 3"), "{e}");
        let e = check(&["cat", "dog"], &["dog", "cat"]).unwrap_err().to_string();
        assert!(e.contains(r#"class 0 is "cat" in one, "dog" in the other"#), "{e}");
    }
}
