//! The predictions list, the stage list and the status line.

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, LineGauge, List, ListItem, ListState, Paragraph};
use ratatui::Frame;

use super::super::app::{App, Focus};
use super::super::theme::Theme;
use super::{clear, duration, fit, title};

fn block(app: &App, name: &str, focused: bool) -> Block<'static> {
    let border = if focused { app.theme().accent } else { app.theme().border };
    Block::bordered().border_style(Style::default().fg(border)).title(title(app, format!(" {name} ")))
}

pub fn predictions(frame: &mut Frame, app: &App, area: Rect) {
    if app.vs.is_some() {
        return predictions_of_both(frame, app, area);
    }
    let t = app.theme();
    let bar_width = 10usize;
    // Inside the borders: "▶ 1 " label " " bar " 33.7%".
    let label_width = (area.width as usize).saturating_sub(2 + 4 + 1 + bar_width + 7);
    let items: Vec<ListItem> = app
        .predictions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let filled = ((p.prob * bar_width as f32).round() as usize).min(bar_width);
            let bar = format!("{}{}", "█".repeat(filled), "·".repeat(bar_width - filled));
            let target = p.index == app.class;
            let style = if target {
                Style::default().fg(t.accent).add_modifier(Modifier::BOLD)
            } else {
                Style::default().fg(t.text)
            };
            // A segmentation's classes carry their colour in the segmentation picture.
            let (swatch, label_width) = match app.info.segmentation {
                Some(_) => {
                    let [r, g, b] = crate::segment::palette_colour(p.index);
                    (
                        Span::styled("■ ", Style::default().fg(ratatui::style::Color::Rgb(r, g, b))),
                        label_width.saturating_sub(2),
                    )
                }
                None => (Span::raw(""), label_width),
            };
            let label = fit(&p.label, label_width);
            ListItem::new(Line::from(vec![
                Span::styled(format!("{}{:>2} ", if target { '▶' } else { ' ' }, i + 1), style),
                swatch,
                Span::styled(format!("{label:<label_width$} "), style),
                Span::styled(bar, Style::default().fg(t.bar)),
                Span::styled(format!(" {:>5.1}%", 100.0 * p.prob), Style::default().fg(t.dim)),
            ]))
        })
        .collect();
    let focused = app.focus == Focus::Predictions;
    let name = if app.info.segmentation.is_some() { "Classes · share of pixels" } else { "Predictions" };
    let list = List::new(items).block(block(app, name, focused)).highlight_style(
        Style::default().bg(if focused { t.selected_bg } else { t.border }).fg(t.selected_fg),
    );
    let mut state = ListState::default().with_selected(Some(app.prediction_cursor));
    frame.render_stateful_widget(list, area, &mut state);
}

pub fn stages(frame: &mut Frame, app: &App, area: Rect) {
    let t = app.theme();
    let items: Vec<ListItem> = app
        .info
        .stages
        .iter()
        .zip(&app.info.shapes)
        .enumerate()
        .map(|(i, (name, s))| {
            let cached = app.maps.contains_key(&super::super::worker::MapKey { stage: i, ..app.key() });
            let mark = if cached { "●" } else { " " };
            ListItem::new(Line::from(vec![
                Span::styled(format!("{mark} {name:<13}"), Style::default().fg(t.text)),
                Span::styled(format!("{}×{}×{}", s[0], s[1], s[2]), Style::default().fg(t.dim)),
            ]))
        })
        .collect();
    let focused = app.focus == Focus::Stages;
    let list = List::new(items)
        .block(block(app, "Stages", focused))
        .highlight_style(Style::default().bg(t.selected_bg).fg(t.selected_fg).add_modifier(Modifier::BOLD));
    let mut state = ListState::default().with_selected(Some(app.stage));
    frame.render_stateful_widget(list, area, &mut state);
}

/// The status line's second row: the last message (red if it is an error), else the key hints.
pub fn message_or_hint(t: &Theme, status: &Option<(String, bool)>, hint: &str) -> Line<'static> {
    match status {
        Some((msg, error)) => {
            Line::styled(format!(" {msg}"), Style::default().fg(if *error { t.error } else { t.accent }))
        }
        None => Line::styled(hint.to_string(), Style::default().fg(t.dim)),
    }
}

pub fn status(frame: &mut Frame, app: &App, area: Rect) {
    let t = app.theme();
    let key = app.key();
    let timing = match (app.progress, app.map_ms.get(&key)) {
        (Some((done, total)), _) => format!("computing {}/{total}…", done + 1),
        (None, Some(ms)) => format!("map {}", duration(*ms)),
        (None, None) => String::new(),
    };
    let first = Line::from(vec![
        Span::styled(
            if app.info.model == app.info.arch {
                format!(" {} ", app.info.model)
            } else {
                format!(" {} ({}) ", app.info.model, app.info.arch)
            },
            Style::default().fg(t.selected_fg).bg(t.selected_bg),
        ),
        Span::styled(format!(" {} ", app.method), Style::default().fg(t.accent).add_modifier(Modifier::BOLD)),
        Span::styled(format!("@ {} ", app.info.stages[app.stage]), Style::default().fg(t.text)),
        Span::styled(
            match (app.smoothing.aug, app.smoothing.eigen) {
                (false, false) => String::new(),
                (true, false) => "[aug-smooth] ".into(),
                (false, true) => "[eigen-smooth] ".into(),
                (true, true) => "[aug+eigen-smooth] ".into(),
            },
            Style::default().fg(t.accent),
        ),
        Span::styled(format!("class {} {} ", app.class, app.label(app.class)), Style::default().fg(t.text)),
        Span::styled(format!(" {timing}"), Style::default().fg(t.dim)),
    ]);
    let second = message_or_hint(
        t,
        &app.status,
        " q quit  ? help  [ ] stage  m method  1-9 class  / search  g stages  c methods  o view  s save",
    );
    frame.render_widget(Paragraph::new(vec![first, second]), area);
    // A long map (Score-CAM, Ablation-CAM, metrics) shows a gauge of its forward passes instead of
    // the hints.
    if let (Some((done, total)), true) = (app.partial, area.height > 1) {
        let gauge = LineGauge::default()
            .ratio((done as f64 / total.max(1) as f64).clamp(0.0, 1.0))
            .label(format!(" {done}/{total} forward passes · Esc cancels "))
            .filled_style(Style::default().fg(t.accent))
            .unfilled_style(Style::default().fg(t.border));
        clear(frame, app, Rect { y: area.y + 1, height: 1, ..area });
        frame.render_widget(
            gauge,
            Rect { x: area.x + 1, y: area.y + 1, width: area.width.saturating_sub(2), height: 1 },
        );
    }
}

/// `--vs`: A's predictions with A's p, B's p and the change, so a flip shows where it happens.
fn predictions_of_both(frame: &mut Frame, app: &App, area: Rect) {
    let Some(vs) = &app.vs else { return };
    let t = app.theme();
    // Inside the borders: "▶ 1 " label "  33.7%  28.1%  −5.6".
    let label_width = (area.width as usize).saturating_sub(2 + 4 + 1 + 7 + 7 + 7);
    let items: Vec<ListItem> = app
        .predictions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let target = p.index == app.class;
            let style = if target {
                Style::default().fg(t.accent).add_modifier(Modifier::BOLD)
            } else {
                Style::default().fg(t.text)
            };
            let p_b = vs.probabilities.get(p.index).copied().unwrap_or(f32::NAN);
            let delta = 100.0 * (p_b - p.prob);
            let moved = if delta.abs() < 0.05 {
                t.dim
            } else if delta > 0.0 {
                t.accent
            } else {
                t.error
            };
            ListItem::new(Line::from(vec![
                Span::styled(format!("{}{:>2} ", if target { '▶' } else { ' ' }, i + 1), style),
                Span::styled(format!("{:<label_width$} ", fit(&p.label, label_width)), style),
                Span::styled(format!("{:>6.1}%", 100.0 * p.prob), Style::default().fg(t.text)),
                Span::styled(format!("{:>6.1}%", 100.0 * p_b), Style::default().fg(t.text)),
                Span::styled(format!("{delta:>+7.1}"), Style::default().fg(moved)),
            ]))
        })
        .collect();
    let focused = app.focus == Focus::Predictions;
    let name = format!("Predictions · A {} · B {}", fit(&app.info.model, 12), fit(&vs.model, 12));
    let list = List::new(items).block(block(app, &name, focused)).highlight_style(
        Style::default().bg(if focused { t.selected_bg } else { t.border }).fg(t.selected_fg),
    );
    let mut state = ListState::default().with_selected(Some(app.prediction_cursor));
    frame.render_stateful_widget(list, area, &mut state);
}
