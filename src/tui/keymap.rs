//! The one key table. Defaults below; `~/.config/camscope/keys.toml` (or `--keys FILE`) can
//! rebind any action: `next_stage = ["]", "l", "right"]`.

use std::collections::HashMap;
use std::path::Path;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::action::Action;
use toml::Spanned;

use super::config_file;
use crate::{Error, Result};

use super::action::Context::{self, Everywhere, Image, Table};
use super::table::Column;

/// (where, action, config name, default keys, help text) — the help popup is generated from this.
pub const BINDINGS: &[(Context, Action, &str, &[&str], &str)] = &[
    (Everywhere, Action::Quit, "quit", &["q", "ctrl-c"], "quit"),
    (Everywhere, Action::Cancel, "cancel", &["esc"], "cancel / close popup or grid / back to the table"),
    (Everywhere, Action::Help, "help", &["?"], "this help"),
    (Everywhere, Action::Down, "down", &["j", "down"], "move down in the focused list / scroll grid"),
    (Everywhere, Action::Up, "up", &["k", "up"], "move up in the focused list / scroll grid"),
    (Image, Action::PrevStage, "prev_stage", &["[", "h", "left"], "previous stage (toward the input)"),
    (Image, Action::NextStage, "next_stage", &["]", "l", "right"], "next stage"),
    (Image, Action::ToggleFocus, "toggle_focus", &["tab"], "switch focus: predictions / stages"),
    (Image, Action::Select, "select", &["enter"], "make the highlighted prediction the target"),
    (Image, Action::Search, "search", &["/"], "search all class names"),
    (Image, Action::NextMethod, "next_method", &["m"], "next method"),
    (Image, Action::PrevMethod, "prev_method", &["M"], "previous method"),
    (Image, Action::StageGrid, "stage_grid", &["g"], "grid: every stage, current class and method"),
    (Image, Action::MethodGrid, "method_grid", &["c"], "grid: every method at the current stage"),
    (Image, Action::CycleView, "cycle_view", &["o"], "view: overlay / heat map / input"),
    (Image, Action::CycleCompare, "cycle_compare", &["v"], "with --vs: A only / A | B | B − A / B − A"),
    (Image, Action::OpacityUp, "opacity_up", &["+", "="], "more heat map opacity"),
    (Image, Action::OpacityDown, "opacity_down", &["-"], "less heat map opacity"),
    (Image, Action::NextTheme, "next_theme", &["t"], "next theme"),
    (Image, Action::ToggleAugSmooth, "aug_smooth", &["a"], "toggle augmentation smoothing (6× the time)"),
    (Image, Action::ToggleEigenSmooth, "eigen_smooth", &["e"], "toggle eigen-smoothing"),
    (Image, Action::Save, "save", &["s"], "save the current view as PNG"),
    (Image, Action::NextImage, "next_image", &["n"], "next image of the data set (table order)"),
    (Image, Action::PrevImage, "prev_image", &["p"], "previous image of the data set"),
    (Table, Action::Open, "open", &["enter"], "open the image: every stage, method and class"),
    (Table, Action::Top, "top", &["g", "home"], "first row"),
    (Table, Action::Bottom, "bottom", &["G", "end"], "last row"),
    (Table, Action::PageUp, "page_up", &["pageup", "ctrl-u"], "a page up"),
    (Table, Action::PageDown, "page_down", &["pagedown", "ctrl-d"], "a page down"),
    (Table, Action::Search, "search_names", &["/"], "search the names (fuzzy); Enter keeps, Esc clears"),
    (Table, Action::SortBy(Column::Name), "sort_name", &["N"], "sort by name (again: reverse)"),
    (Table, Action::SortBy(Column::True), "sort_true", &["T"], "sort by true class"),
    (Table, Action::SortBy(Column::Predicted), "sort_predicted", &["P"], "sort by predicted class"),
    (Table, Action::SortBy(Column::Confidence), "sort_p", &["C"], "sort by p, least sure first"),
    (Table, Action::SortBy(Column::Loss), "sort_loss", &["L"], "sort by loss, worst first"),
    (
        Table,
        Action::SortBy(Column::Energy),
        "sort_energy",
        &["E"],
        "sort by map energy in the object, least first",
    ),
    (Table, Action::SortBy(Column::Change), "sort_change", &["A"], "--vs: sort by A → B, broken first"),
    (
        Table,
        Action::SortBy(Column::MapR),
        "sort_map_r",
        &["R"],
        "--vs: sort by the maps' r, least alike first",
    ),
    (Table, Action::WrongOnly, "wrong_only", &["w"], "only the misclassified (again: all)"),
    (Table, Action::CycleChange, "cycle_change", &["x"], "--vs: only broken / only fixed / all"),
    (Table, Action::SameTrue, "same_true", &["t"], "only this row's true class (again: all)"),
    (Table, Action::SamePredicted, "same_predicted", &["p"], "only this row's predicted class (again: all)"),
    (Table, Action::Confusions, "confusions", &["c"], "the most confused pairs; Enter filters to one"),
];

/// Digits 1–9 pick the n-th prediction over an image; they are not rebindable.
pub const PICK_HELP: (&str, &str) = ("1-9", "target = the n-th prediction");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    code: KeyCode,
    ctrl: bool,
}

fn parse_key(s: &str) -> Option<Key> {
    let (ctrl, rest) = match s.strip_prefix("ctrl-") {
        Some(r) => (true, r),
        None => (false, s),
    };
    let code = match rest {
        "esc" => KeyCode::Esc,
        "enter" => KeyCode::Enter,
        "tab" => KeyCode::Tab,
        "backtab" => KeyCode::BackTab,
        "left" => KeyCode::Left,
        "right" => KeyCode::Right,
        "up" => KeyCode::Up,
        "down" => KeyCode::Down,
        "pageup" => KeyCode::PageUp,
        "pagedown" => KeyCode::PageDown,
        "home" => KeyCode::Home,
        "end" => KeyCode::End,
        "space" => KeyCode::Char(' '),
        s if s.chars().count() == 1 => KeyCode::Char(s.chars().next()?),
        _ => return None,
    };
    Some(Key { code, ctrl })
}

pub struct Keymap {
    map: HashMap<(Context, Key), Action>,
    /// Action → its keys as written, for the help popup.
    pub labels: Vec<(Context, Action, String, &'static str)>,
}

/// `action = ["key", …]` as read from a file, with positions for error messages.
type Overrides = HashMap<Spanned<String>, Vec<Spanned<String>>>;

impl Keymap {
    /// The default bindings.
    pub fn defaults() -> Self {
        Self::build(&Overrides::new(), "", "").expect("the default key table is valid")
    }

    /// Defaults, overridden by the TOML `text` (`action = ["key", …]`) of the file `origin`.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let err = |message: String| Error::Keys { origin: origin.into(), message };
        let overrides: Overrides =
            toml::from_str(text).map_err(|e| err(config_file::toml_error(text, &e)))?;
        Self::build(&overrides, text, origin)
    }

    fn build(overrides: &Overrides, text: &str, origin: &str) -> Result<Self> {
        let err = |at: &Spanned<String>, message: String| Error::Keys {
            origin: origin.into(),
            message: config_file::at(text, at.span().start, &message),
        };
        for name in overrides.keys() {
            if !BINDINGS.iter().any(|b| b.2 == name.get_ref()) {
                let names: Vec<&str> = BINDINGS.iter().map(|b| b.2).collect();
                let message = format!("unknown action '{}'; actions: {}", name.get_ref(), names.join(", "));
                return Err(err(name, message));
            }
        }
        // Defaults first, then the file's keys over them: a key the file gives one action
        // leaves whichever action had it by default.
        let mut map = HashMap::new();
        for &(context, action, name, defaults, _) in BINDINGS {
            if !overrides.contains_key(name) {
                for k in defaults {
                    map.insert((context, parse_key(k).expect("default keys are valid")), action);
                }
            }
        }
        let mut labels = Vec::new();
        for &(context, action, name, defaults, help) in BINDINGS {
            let keys: Vec<String> = match overrides.get(name) {
                Some(keys) => {
                    for k in keys {
                        let key = parse_key(k.get_ref())
                            .ok_or_else(|| err(k, format!("cannot read key '{}'", k.get_ref())))?;
                        map.insert((context, key), action);
                    }
                    keys.iter().map(|k| k.get_ref().clone()).collect()
                }
                None => defaults.iter().map(|s| s.to_string()).collect(),
            };
            labels.push((context, action, keys.join(" "), help));
        }
        Ok(Self { map, labels })
    }

    /// The user's file if there is one (`--keys`, else `$XDG_CONFIG_HOME` or `~/.config`).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let path = path.map(Path::to_path_buf).or_else(|| {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
            Some(base.join("camscope/keys.toml")).filter(|p| p.is_file())
        });
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
                Self::parse(&text, &p.display().to_string())
            }
            None => Ok(Self::defaults()),
        }
    }

    /// (keys, what they do) for every action that applies in `context`, the digits included,
    /// in table order; `data_set`: whether the image came from a data set (else stepping
    /// through images is left out).
    pub fn help(&self, context: Context, data_set: bool) -> Vec<(String, String)> {
        let stepping = [Action::NextImage, Action::PrevImage];
        let mut rows: Vec<(String, String)> = self
            .labels
            .iter()
            .filter(|(c, a, ..)| (*c == Everywhere || *c == context) && (data_set || !stepping.contains(a)))
            .map(|(_, _, k, h)| (k.clone(), h.to_string()))
            .collect();
        if context == Image {
            let after = rows
                .iter()
                .position(|r| r.1.starts_with("make the highlighted"))
                .map_or(rows.len(), |i| i + 1);
            rows.insert(after, (PICK_HELP.0.into(), PICK_HELP.1.into()));
        }
        rows
    }

    /// What `event` asks for in `context` (a binding of the context first, then one everywhere).
    pub fn action(&self, event: &KeyEvent, context: Context) -> Option<Action> {
        let ctrl = event.modifiers.contains(KeyModifiers::CONTROL);
        if let (KeyCode::Char(c @ '1'..='9'), Image, false) = (event.code, context, ctrl) {
            return Some(Action::Pick(c as usize - '1' as usize));
        }
        let key = Key { code: event.code, ctrl };
        self.map.get(&(context, key)).or_else(|| self.map.get(&(Everywhere, key))).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn defaults_and_overrides() {
        let km = Keymap::defaults();
        let over_image = |km: &Keymap, code| km.action(&press(code), Image);
        assert_eq!(over_image(&km, KeyCode::Char('[')), Some(Action::PrevStage));
        assert_eq!(over_image(&km, KeyCode::Left), Some(Action::PrevStage));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(km.action(&ctrl_c, Image), Some(Action::Quit));
        assert_eq!(km.action(&ctrl_c, Table), Some(Action::Quit));
        assert_eq!(over_image(&km, KeyCode::Char('3')), Some(Action::Pick(2)));
        let km = Keymap::parse("next_stage = [\"n\"]", "k.toml").unwrap();
        assert_eq!(over_image(&km, KeyCode::Char('n')), Some(Action::NextStage));
        assert_eq!(over_image(&km, KeyCode::Char(']')), None);
    }

    #[test]
    fn the_same_key_means_what_its_context_says() {
        let km = Keymap::defaults();
        assert_eq!(km.action(&press(KeyCode::Char('g')), Image), Some(Action::StageGrid));
        assert_eq!(km.action(&press(KeyCode::Char('g')), Table), Some(Action::Top));
        assert_eq!(km.action(&press(KeyCode::Char('L')), Table), Some(Action::SortBy(Column::Loss)));
        assert_eq!(km.action(&press(KeyCode::Char('3')), Table), None);
        assert_eq!(km.action(&press(KeyCode::Char('j')), Table), Some(Action::Down));
        let table = km.help(Table, true);
        assert!(table.iter().any(|(k, _)| k == "L"));
        assert!(!table.iter().any(|(k, _)| k == "1-9"));
        assert!(!km.help(Image, false).iter().any(|(k, _)| k == "n"));
        assert!(km.help(Image, true).iter().any(|(k, _)| k == "n"));
    }

    #[test]
    fn every_key_of_a_context_means_one_action() {
        let mut seen = std::collections::HashMap::new();
        for &(context, action, _, keys, _) in BINDINGS {
            for key in keys {
                let contexts = match context {
                    Everywhere => vec![Image, Table],
                    c => vec![c],
                };
                for c in contexts {
                    let other = seen.insert((c, *key), action);
                    assert!(other.is_none(), "{key} in {c:?}: {other:?} and {action:?}");
                }
            }
        }
    }

    #[test]
    fn mistakes_name_the_file_line_and_column() {
        let error = |text: &str| Keymap::parse(text, "my/keys.toml").err().expect("an error").to_string();
        let e = error("quit = [\"q\"]\nfly = [\"f\"]\n");
        assert!(e.starts_with("keys my/keys.toml: line 2, column 1: unknown action 'fly'"), "{e}");
        let e = error("quit = [\"q\"]\nsave = [\"s\", \"ctrl-nope\"]\n");
        assert!(e.starts_with("keys my/keys.toml: line 2, column 14: cannot read key 'ctrl-nope'"), "{e}");
        let e = error("quit = [\"q]\n");
        assert!(e.starts_with("keys my/keys.toml: line 1, column "), "{e}");
        assert!(e.contains("string") && !e.contains('\n'), "{e}");
    }
}
