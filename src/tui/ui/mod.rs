//! Drawing: a pure function of the app state (plus a cache of encoded images). One function per
//! pane; `draw` lays them out.

mod grid;
mod image_pane;
mod panels;
mod popups;
mod table;

pub use image_pane::ImageCache;
pub use table::draw_browser;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use super::app::{App, Popup, Screen};
use super::theme::Theme;

/// Below this the layout cannot show a map and its lists; a short message is drawn instead.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 16;

/// The sidebar (predictions, stages) takes 2/5 of a wide terminal, for whole class labels (the
/// longest ImageNet label, 30 characters, from 160 columns); the picture, square, rarely needs
/// more than the rest.
const SIDEBAR_MIN: u16 = 40;
const SIDEBAR_MAX: u16 = 56;

pub fn draw(frame: &mut Frame, app: &App, images: &mut ImageCache) {
    let area = frame.area();
    clear(frame, app, area);
    if too_small(frame, app.theme(), area) {
        return;
    }
    let [body, status] = Layout::vertical([Constraint::Min(0), Constraint::Length(2)]).areas(area);
    match app.screen {
        Screen::Main => draw_main(frame, app, images, body),
        Screen::StageGrid | Screen::MethodGrid => grid::draw(frame, app, images, body),
    }
    panels::status(frame, app, status);
    match &app.popup {
        Some(Popup::Help) => popups::help(frame, app, area),
        Some(Popup::Search(s)) => popups::search(frame, app, s, area),
        None => {}
    }
}

fn draw_main(frame: &mut Frame, app: &App, images: &mut ImageCache, area: Rect) {
    let [side, picture] = Layout::horizontal([
        Constraint::Length((area.width * 2 / 5).clamp(SIDEBAR_MIN, SIDEBAR_MAX)),
        Constraint::Min(0),
    ])
    .areas(area);
    let predictions_height = (app.predictions.len() as u16 + 2).min(side.height / 2);
    let [predictions, stages] =
        Layout::vertical([Constraint::Length(predictions_height), Constraint::Min(0)]).areas(side);
    panels::predictions(frame, app, predictions);
    panels::stages(frame, app, stages);
    image_pane::main_picture(frame, app, images, picture);
}

/// "12.3 ms" or "1.2 s".
pub fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// Blanks `area` to the theme's background (the terminal's own where the theme has none), under
/// popups and before each frame.
fn clear(frame: &mut Frame, app: &App, area: Rect) {
    clear_with(frame, app.theme(), area);
}

fn clear_with(frame: &mut Frame, theme: &Theme, area: Rect) {
    frame.render_widget(Clear, area);
    if let Some(bg) = theme.background {
        frame.render_widget(Block::new().style(Style::new().bg(bg)), area);
    }
}

/// Whether the frame is too small for any layout; then it says so, in words.
fn too_small(frame: &mut Frame, theme: &Theme, area: Rect) -> bool {
    if area.width >= MIN_WIDTH && area.height >= MIN_HEIGHT {
        return false;
    }
    let msg = format!(
        "terminal too small ({}×{}); camscope needs {MIN_WIDTH}×{MIN_HEIGHT}",
        area.width, area.height
    );
    let p = Paragraph::new(msg)
        .style(Style::default().fg(theme.text))
        .wrap(ratatui::widgets::Wrap { trim: true });
    frame.render_widget(p, area);
    true
}

/// `text` in at most `width` characters, the last one an ellipsis if it had to be cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    if width == 0 {
        kept
    } else {
        kept + "…"
    }
}

fn title(app: &App, text: String) -> Line<'static> {
    title_with(app.theme(), text)
}

fn title_with(theme: &Theme, text: String) -> Line<'static> {
    Line::styled(text, Style::default().fg(theme.title))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fit_cuts_with_an_ellipsis() {
        assert_eq!(super::fit("tabby", 5), "tabby");
        assert_eq!(super::fit("American Staffordshire terrier", 16), "American Staffo…");
        assert_eq!(super::fit("boxer", 0), "");
    }
}
