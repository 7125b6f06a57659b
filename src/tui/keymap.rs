//! The one key table. Defaults below; `~/.config/camscope/keys.toml` (or `--keys FILE`) can
//! rebind any action: `next_stage = ["]", "l", "right"]`.

use std::collections::HashMap;
use std::path::Path;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::action::Action;
use toml::Spanned;

use super::config_file;
use crate::{Error, Result};

/// (action, config name, default keys, help text) — the help popup is generated from this.
pub const BINDINGS: &[(Action, &str, &[&str], &str)] = &[
    (Action::Quit, "quit", &["q", "ctrl-c"], "quit"),
    (Action::Cancel, "cancel", &["esc"], "cancel computation / close popup or grid"),
    (Action::Help, "help", &["?"], "this help"),
    (Action::PrevStage, "prev_stage", &["[", "h", "left"], "previous stage (toward the input)"),
    (Action::NextStage, "next_stage", &["]", "l", "right"], "next stage"),
    (Action::Down, "down", &["j", "down"], "move down in the focused list / scroll grid"),
    (Action::Up, "up", &["k", "up"], "move up in the focused list / scroll grid"),
    (Action::ToggleFocus, "toggle_focus", &["tab"], "switch focus: predictions / stages"),
    (Action::Select, "select", &["enter"], "make the highlighted prediction the target"),
    (Action::Search, "search", &["/"], "search all class names"),
    (Action::NextMethod, "next_method", &["m"], "next method"),
    (Action::PrevMethod, "prev_method", &["M"], "previous method"),
    (Action::StageGrid, "stage_grid", &["g"], "grid: every stage, current class and method"),
    (Action::MethodGrid, "method_grid", &["c"], "grid: every method at the current stage"),
    (Action::CycleView, "cycle_view", &["o"], "view: overlay / heat map / input"),
    (Action::OpacityUp, "opacity_up", &["+", "="], "more heat map opacity"),
    (Action::OpacityDown, "opacity_down", &["-"], "less heat map opacity"),
    (Action::NextTheme, "next_theme", &["t"], "next theme"),
    (Action::ToggleAugSmooth, "aug_smooth", &["a"], "toggle augmentation smoothing (6× the time)"),
    (Action::ToggleEigenSmooth, "eigen_smooth", &["e"], "toggle eigen-smoothing"),
    (Action::Save, "save", &["s"], "save the current view as PNG"),
];

/// Digits 1–9 pick the n-th prediction; they are not rebindable.
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
        "space" => KeyCode::Char(' '),
        s if s.chars().count() == 1 => KeyCode::Char(s.chars().next()?),
        _ => return None,
    };
    Some(Key { code, ctrl })
}

pub struct Keymap {
    map: HashMap<Key, Action>,
    /// Action → its keys as written, for the help popup.
    pub labels: Vec<(Action, String, &'static str)>,
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
            if !BINDINGS.iter().any(|b| b.1 == name.get_ref()) {
                let names: Vec<&str> = BINDINGS.iter().map(|b| b.1).collect();
                let message = format!("unknown action '{}'; actions: {}", name.get_ref(), names.join(", "));
                return Err(err(name, message));
            }
        }
        let mut map = HashMap::new();
        let mut labels = Vec::new();
        for &(action, name, defaults, help) in BINDINGS {
            let keys: Vec<String> = match overrides.get(name) {
                Some(keys) => {
                    for k in keys {
                        let key = parse_key(k.get_ref())
                            .ok_or_else(|| err(k, format!("cannot read key '{}'", k.get_ref())))?;
                        map.insert(key, action);
                    }
                    keys.iter().map(|k| k.get_ref().clone()).collect()
                }
                None => {
                    for k in defaults {
                        map.insert(parse_key(k).expect("default keys are valid"), action);
                    }
                    defaults.iter().map(|s| s.to_string()).collect()
                }
            };
            labels.push((action, keys.join(" "), help));
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

    /// (keys, what they do) for every action, the digits included, in table order.
    pub fn help(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> =
            self.labels.iter().map(|(_, k, h)| (k.clone(), h.to_string())).collect();
        let after_select = BINDINGS.iter().position(|b| b.0 == Action::Select).map_or(rows.len(), |i| i + 1);
        rows.insert(after_select, (PICK_HELP.0.into(), PICK_HELP.1.into()));
        rows
    }

    pub fn action(&self, event: &KeyEvent) -> Option<Action> {
        let ctrl = event.modifiers.contains(KeyModifiers::CONTROL);
        if let KeyCode::Char(c @ '1'..='9') = event.code {
            if !ctrl {
                return Some(Action::Pick(c as usize - '1' as usize));
            }
        }
        self.map.get(&Key { code: event.code, ctrl }).copied()
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
        assert_eq!(km.action(&press(KeyCode::Char('['))), Some(Action::PrevStage));
        assert_eq!(km.action(&press(KeyCode::Left)), Some(Action::PrevStage));
        assert_eq!(km.action(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Action::Quit));
        assert_eq!(km.action(&press(KeyCode::Char('3'))), Some(Action::Pick(2)));
        let km = Keymap::parse("next_stage = [\"n\"]", "k.toml").unwrap();
        assert_eq!(km.action(&press(KeyCode::Char('n'))), Some(Action::NextStage));
        assert_eq!(km.action(&press(KeyCode::Char(']'))), None);
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
