//! Where in a configuration file (`keys.toml`, a theme) a mistake is: "line L, column C: …", so
//! that a one-line error leads straight to it.

/// `message` prefixed with the line and column of byte `offset` of `text`.
pub fn at(text: &str, offset: usize, message: &str) -> String {
    let Some(before) = text.get(..offset) else { return message.to_string() };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

/// A TOML syntax or type error as one line with its position.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => at(text, span.start, message),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let text = "a = 1\nbé = \"x\n";
        assert_eq!(at(text, 0, "m"), "line 1, column 1: m");
        assert_eq!(at(text, 6 + "bé = ".len(), "m"), "line 2, column 6: m");
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        let line = toml_error(text, &e);
        assert!(line.starts_with("line 2, column "), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}
