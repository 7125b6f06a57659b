//! UI colours and the default colormap, from `themes/*.toml`. The three shipped themes are built
//! in; files in ./themes (or the themes/ this binary was built from) add to or replace them.

use std::path::{Path, PathBuf};

use ratatui::style::Color;
use serde::Deserialize;

use toml::Spanned;

use super::config_file;
use crate::render::Colormap;
use crate::{Error, Result};

const BUILTIN: [&str; 3] = [
    include_str!("../../themes/dark.toml"),
    include_str!("../../themes/light.toml"),
    include_str!("../../themes/high-contrast.toml"),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    /// What it is for, shown when `t` picks it.
    pub description: String,
    pub colormap: Colormap,
    /// Painted under everything; `None` keeps the terminal's own. A theme with dark text must
    /// bring its light background, or it is unreadable on the (usual) dark terminal.
    pub background: Option<Color>,
    pub text: Color,
    pub dim: Color,
    pub border: Color,
    pub title: Color,
    pub accent: Color,
    pub selected_fg: Color,
    pub selected_bg: Color,
    pub bar: Color,
    pub error: Color,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    #[serde(default)]
    description: String,
    colormap: Spanned<String>,
    colors: Colors,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Colors {
    background: Option<Spanned<String>>,
    text: Spanned<String>,
    dim: Spanned<String>,
    border: Spanned<String>,
    title: Spanned<String>,
    accent: Spanned<String>,
    selected_fg: Spanned<String>,
    selected_bg: Spanned<String>,
    bar: Spanned<String>,
    error: Spanned<String>,
}

impl Theme {
    /// A theme from the TOML `text` of `origin` (a file, or "(built-in)").
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let err = |message: String| Error::Theme { origin: origin.into(), message };
        let f: ThemeFile = toml::from_str(text).map_err(|e| err(config_file::toml_error(text, &e)))?;
        let c = &f.colors;
        let col = |s: &Spanned<String>| {
            s.get_ref().parse::<Color>().map_err(|_| {
                err(config_file::at(text, s.span().start, &format!("'{}' is not a colour", s.get_ref())))
            })
        };
        let colormap = Colormap::parse(f.colormap.get_ref())
            .map_err(|e| err(config_file::at(text, f.colormap.span().start, &e.to_string())))?;
        Ok(Theme {
            name: f.name,
            description: f.description,
            colormap,
            background: c.background.as_ref().map(col).transpose()?,
            text: col(&c.text)?,
            dim: col(&c.dim)?,
            border: col(&c.border)?,
            title: col(&c.title)?,
            accent: col(&c.accent)?,
            selected_fg: col(&c.selected_fg)?,
            selected_bg: col(&c.selected_bg)?,
            bar: col(&c.bar)?,
            error: col(&c.error)?,
        })
    }
}

fn theme_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("themes"), Path::new(env!("CARGO_MANIFEST_DIR")).join("themes")]
}

/// Built-in themes, then those found on disk (a file with a built-in's name replaces it).
pub fn load_all() -> Result<Vec<Theme>> {
    let mut themes: Vec<Theme> =
        BUILTIN.iter().map(|t| Theme::parse(t, "(built-in)")).collect::<Result<_>>()?;
    for dir in theme_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let theme = Theme::parse(&text, &path.display().to_string())?;
            match themes.iter_mut().find(|t| t.name == theme.name) {
                Some(existing) => *existing = theme,
                None => themes.push(theme),
            }
        }
    }
    Ok(themes)
}

/// Index of the theme called `name`, or an error listing the known ones.
pub fn find(themes: &[Theme], name: &str) -> Result<usize> {
    themes.iter().position(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = themes.iter().map(|t| t.name.as_str()).collect();
        Error::UnknownTheme { name: name.into(), available: names.join(", ") }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_themes_parse() {
        let themes = load_all().unwrap();
        for name in ["dark", "light", "high-contrast"] {
            assert!(find(&themes, name).is_ok(), "{name}");
        }
        assert!(find(&themes, "neon").unwrap_err().to_string().contains("high-contrast"));
        // Dark text needs its own light background: the terminal's is usually dark.
        let light = &themes[find(&themes, "light").unwrap()];
        assert!(light.background.is_some() && !light.description.is_empty());
    }

    #[test]
    fn mistakes_name_the_theme_line_and_column() {
        let good = include_str!("../../themes/dark.toml");
        let error = |text: &str| Theme::parse(text, "themes/x.toml").unwrap_err().to_string();
        let e = error(&good.replace("\"#ffaf00\"", "\"#ffaf0g\""));
        assert!(
            e.starts_with("theme themes/x.toml: line ") && e.contains("'#ffaf0g' is not a colour"),
            "{e}"
        );
        let e = error(&good.replace("\"jet\"", "\"plaid\""));
        assert!(e.starts_with("theme themes/x.toml: line 4, column 12: unknown colormap 'plaid'"), "{e}");
        let e = error(&good.replace("name = ", "nom = "));
        assert!(e.starts_with("theme themes/x.toml: line 2, column 1: "), "{e}");
    }
}
