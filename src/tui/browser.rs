//! The data set's screen as state: the table, the sweep's progress, the popups over it, and the
//! preview of the selected row. Like [`App`](super::app::App) it only changes state; the runtime
//! ([`super::data_set`]) feeds it rows and keys and carries out the commands it returns.

use std::cell::Cell;
use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};
use image::RgbImage;

use super::action::Action;
use super::table::{Filter, Table};
use super::theme::Theme;
use crate::dataset::sweep::clock;
use crate::dataset::Progress;

/// What the runtime must do after an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserCommand {
    /// Open the selected row's image in the debugger's image view.
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserPopup {
    Help,
    /// The most confused pairs, with the highlighted one.
    Confusions {
        cursor: usize,
    },
}

/// Where the sweep behind the table is.
#[derive(Debug, Clone, PartialEq)]
pub enum SweepState {
    /// Rows read from a results file; nothing computed.
    FromFile,
    Running(Progress),
    /// Every image done (the last progress).
    Finished(Progress),
    Failed(String),
}

/// The selected row's picture: the model's view of the image, and whether the map is on it.
pub struct Preview {
    pub path: String,
    pub view: Option<Arc<RgbImage>>,
    pub error: Option<String>,
}

pub struct Browser {
    pub table: Table,
    /// What is open: "val/ · class folders · 1000 images".
    pub title: String,
    /// How every row was made: "Grad-CAM at _conv_head · efficientnet-lite0".
    pub run: String,
    pub labels: Arc<Vec<String>>,
    pub sweep: SweepState,
    pub popup: Option<BrowserPopup>,
    /// Typing a search: keys go to the query.
    pub searching: bool,
    pub preview: Option<Preview>,
    pub status: Option<(String, bool)>,
    pub themes: Vec<Theme>,
    pub theme: usize,
    pub keys_help: Vec<(String, String)>,
    /// Rows a page holds, as last drawn.
    pub page: Cell<usize>,
    pub quit: bool,
}

impl Browser {
    pub fn new(
        title: String,
        run: String,
        labels: Arc<Vec<String>>,
        themes: Vec<Theme>,
        theme: usize,
    ) -> Self {
        Self {
            table: Table::default(),
            title,
            run,
            labels,
            sweep: SweepState::FromFile,
            popup: None,
            searching: false,
            preview: None,
            status: None,
            themes,
            theme,
            keys_help: super::keymap::Keymap::defaults().help(super::action::Context::Table, true),
            page: Cell::new(10),
            quit: false,
        }
    }

    pub fn theme(&self) -> &Theme {
        &self.themes[self.theme]
    }

    /// Rows, errors and accuracy over every row, not only those shown.
    pub fn tally(&self) -> Progress {
        self.table.tally()
    }

    pub fn label(&self, class: usize) -> &str {
        self.labels.get(class).map_or("?", String::as_str)
    }

    fn toggle_filter(&mut self, change: impl FnOnce(&mut Filter)) {
        let mut filter = self.table.filter.clone();
        change(&mut filter);
        self.table.set_filter(filter);
    }

    pub fn update(&mut self, action: Action) -> Option<BrowserCommand> {
        match &mut self.popup {
            Some(BrowserPopup::Help) => {
                match action {
                    Action::Cancel | Action::Help => self.popup = None,
                    Action::Quit => self.quit = true,
                    _ => {}
                }
                return None;
            }
            Some(BrowserPopup::Confusions { cursor }) => {
                let pairs = self.table.confusions();
                match action {
                    Action::Cancel | Action::Confusions => self.popup = None,
                    Action::Quit => self.quit = true,
                    Action::Down => *cursor = (*cursor + 1).min(pairs.len().saturating_sub(1)),
                    Action::Up => *cursor = cursor.saturating_sub(1),
                    Action::Open => {
                        if let Some(&((t, p), _)) = pairs.get(*cursor) {
                            self.popup = None;
                            self.toggle_filter(|f| {
                                *f = Filter { true_class: Some(t), predicted: Some(p), ..Filter::default() }
                            });
                            self.table.go_top();
                        }
                    }
                    _ => {}
                }
                return None;
            }
            None => {}
        }
        let page = self.page.get().max(1) as isize;
        match action {
            Action::Quit => self.quit = true,
            Action::Cancel if !self.table.filter.is_empty() => {
                self.table.set_filter(Filter::default());
                self.status = Some(("filters cleared: every row".into(), false));
            }
            Action::Help => self.popup = Some(BrowserPopup::Help),
            Action::Down => self.table.move_cursor(1),
            Action::Up => self.table.move_cursor(-1),
            Action::PageDown => self.table.move_cursor(page),
            Action::PageUp => self.table.move_cursor(-page),
            Action::Top => self.table.go_top(),
            Action::Bottom => self.table.go_bottom(),
            Action::SortBy(column) => self.table.sort_by(column),
            Action::Search => self.searching = true,
            Action::WrongOnly => self.toggle_filter(|f| f.wrong_only = !f.wrong_only),
            Action::CycleChange => {
                use crate::dataset::Change;
                self.toggle_filter(|f| {
                    f.change = match f.change {
                        None => Some(Change::Broken),
                        Some(Change::Broken) => Some(Change::Fixed),
                        Some(_) => None,
                    }
                });
            }
            Action::SameTrue => {
                let truth = self.table.selected().and_then(|e| e.row.true_index);
                self.toggle_filter(|f| f.true_class = if f.true_class.is_some() { None } else { truth });
            }
            Action::SamePredicted => {
                let predicted = self.table.selected().and_then(|e| e.row.predicted().map(|p| p.index));
                self.toggle_filter(|f| f.predicted = if f.predicted.is_some() { None } else { predicted });
            }
            Action::Confusions => {
                if self.table.confusions().is_empty() {
                    self.status = Some(("no confusions: no labelled row is misclassified yet".into(), false));
                } else {
                    self.popup = Some(BrowserPopup::Confusions { cursor: 0 });
                }
            }
            Action::Open | Action::Select if self.table.selected().is_some() => {
                return Some(BrowserCommand::Open);
            }
            _ => {}
        }
        None
    }

    /// Typing into the search line. Returns false when no search is being typed.
    pub fn search_key(&mut self, key: &KeyEvent) -> bool {
        if !self.searching {
            return false;
        }
        let mut query = self.table.filter.query.clone();
        match key.code {
            KeyCode::Enter => self.searching = false,
            KeyCode::Esc => {
                self.searching = false;
                query.clear();
            }
            KeyCode::Backspace => {
                query.pop();
            }
            KeyCode::Char(c) => query.push(c),
            KeyCode::Down => self.table.move_cursor(1),
            KeyCode::Up => self.table.move_cursor(-1),
            _ => {}
        }
        self.toggle_filter(|f| f.query = query);
        true
    }

    /// "images/s and ETA" of the sweep in flight.
    pub fn sweep_line(&self) -> String {
        match &self.sweep {
            SweepState::FromFile => "from a results file".into(),
            SweepState::Running(p) => {
                let eta = p.remaining_s().map_or(String::new(), |s| format!(" · ETA {}", clock(s)));
                format!("sweeping {}/{} · {:.1} images/s{eta}", p.done, p.total, p.rate())
            }
            SweepState::Finished(p) if p.total == 0 => "every image was already in the results file".into(),
            SweepState::Finished(p) => {
                format!("swept {} images in {} ({:.1}/s)", p.done, clock(p.elapsed_s), p.rate())
            }
            SweepState::Failed(e) => format!("sweep stopped: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::tests::row;
    use super::super::table::Column;
    use super::*;

    pub fn browser() -> Browser {
        let labels = Arc::new((0..3).map(|i| format!("class {i}")).collect());
        let mut b =
            Browser::new("set".into(), "run".into(), labels, super::super::theme::load_all().unwrap(), 0);
        b.table.push(row("a/1.jpg", 0, 0, 0.9, 0.1, Some(0.8)), None);
        b.table.push(row("a/2.jpg", 0, 1, 0.6, 2.0, Some(0.2)), None);
        b.table.push(row("b/3.jpg", 1, 1, 0.5, 0.7, None), None);
        b.table.push(row("b/4.jpg", 1, 0, 0.7, 1.5, Some(0.5)), None);
        b.table.push(row("b/5.jpg", 1, 0, 0.7, 1.2, Some(0.5)), None);
        b.table.refresh();
        b
    }

    fn shown(b: &mut Browser) -> Vec<String> {
        b.table.refresh();
        b.table.window(0, 100).map(|e| e.row.path.clone()).collect()
    }

    #[test]
    fn filter_keys_toggle_and_esc_clears() {
        let mut b = browser();
        b.update(Action::WrongOnly);
        assert_eq!(shown(&mut b), ["a/2.jpg", "b/4.jpg", "b/5.jpg"]);
        b.update(Action::Down);
        b.update(Action::SameTrue);
        assert_eq!(shown(&mut b), ["b/4.jpg", "b/5.jpg"]);
        b.update(Action::SameTrue);
        b.update(Action::WrongOnly);
        assert_eq!(shown(&mut b).len(), 5);
        b.update(Action::SamePredicted);
        b.update(Action::Cancel);
        assert_eq!(shown(&mut b).len(), 5);
    }

    #[test]
    fn enter_on_a_confused_pair_filters_to_it() {
        let mut b = browser();
        b.update(Action::Confusions);
        assert_eq!(b.popup, Some(BrowserPopup::Confusions { cursor: 0 }));
        assert_eq!(b.update(Action::Open), None);
        assert!(b.popup.is_none());
        assert_eq!(shown(&mut b), ["b/4.jpg", "b/5.jpg"]);
        assert_eq!(b.update(Action::Open), Some(BrowserCommand::Open));
    }

    #[test]
    fn searching_narrows_as_one_types() {
        let mut b = browser();
        b.update(Action::SortBy(Column::Loss));
        b.update(Action::Search);
        for c in "b/".chars() {
            assert!(b.search_key(&KeyEvent::from(KeyCode::Char(c))));
        }
        assert_eq!(shown(&mut b), ["b/4.jpg", "b/5.jpg", "b/3.jpg"]);
        b.search_key(&KeyEvent::from(KeyCode::Enter));
        assert!(!b.searching && !b.search_key(&KeyEvent::from(KeyCode::Char('x'))));
        b.update(Action::Search);
        b.search_key(&KeyEvent::from(KeyCode::Esc));
        assert_eq!(shown(&mut b).len(), 5);
    }

    #[test]
    fn the_sweep_line_says_rate_and_eta() {
        let mut b = browser();
        b.sweep =
            SweepState::Running(Progress { done: 10, total: 130, elapsed_s: 5.0, ..Progress::default() });
        assert_eq!(b.sweep_line(), "sweeping 10/130 · 2.0 images/s · ETA 1 m 00 s");
        assert_eq!(clock(7300.0), "2 h 01 m");
    }
}
