//! The help popup (generated from the key table) and the class search popup.

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph};
use ratatui::Frame;

use super::super::app::{App, Search};
use super::super::theme::Theme;
use super::{clear, clear_with, title, title_with};

pub(super) fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [v] = Layout::vertical([Constraint::Length(height.min(area.height))]).flex(Flex::Center).areas(area);
    let [h] = Layout::horizontal([Constraint::Length(width.min(area.width))]).flex(Flex::Center).areas(v);
    h
}

pub fn help(frame: &mut Frame, app: &App, area: Rect) {
    keys(frame, app.theme(), &app.keys_help, area);
}

/// The keys of the key table in force, with what they do.
pub fn keys(frame: &mut Frame, t: &Theme, keys_help: &[(String, String)], area: Rect) {
    let lines: Vec<Line> = keys_help
        .iter()
        .map(|(keys, help)| {
            Line::from(vec![
                Span::styled(
                    format!(" {keys:<16}"),
                    Style::default().fg(t.accent).add_modifier(Modifier::BOLD),
                ),
                Span::styled(help.clone(), Style::default().fg(t.text)),
            ])
        })
        .collect();
    let popup = centered(area, 66, lines.len() as u16 + 2);
    clear_with(frame, t, popup);
    let block = Block::bordered()
        .border_style(Style::default().fg(t.accent))
        .title(title_with(t, " Keys (Esc closes) ".into()));
    frame.render_widget(Paragraph::new(lines).block(block), popup);
}

pub fn search(frame: &mut Frame, app: &App, s: &Search, area: Rect) {
    let t = app.theme();
    let results = app.search_results();
    let popup = centered(area, 56, 16);
    clear(frame, app, popup);
    let block = Block::bordered()
        .border_style(Style::default().fg(t.accent))
        .title(title(app, format!(" Class: {}▏ ({} found, Enter picks) ", s.query, results.len())));
    let items: Vec<ListItem> = results
        .iter()
        .map(|&c| {
            ListItem::new(Line::from(vec![
                Span::styled(format!("{c:>4} "), Style::default().fg(t.dim)),
                Span::styled(app.label(c).to_string(), Style::default().fg(t.text)),
            ]))
        })
        .collect();
    let list =
        List::new(items).block(block).highlight_style(Style::default().bg(t.selected_bg).fg(t.selected_fg));
    let mut state = ListState::default().with_selected((!results.is_empty()).then_some(s.selected));
    frame.render_stateful_widget(list, popup, &mut state);
}
