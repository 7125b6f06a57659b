//! The data set's screen: the table of rows (only the visible ones are built, so thousands stay
//! instant), the selected row's preview beside it, the summary and status lines, and the
//! confusions popup.

use std::hash::{Hash, Hasher};

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, List, ListItem, ListState, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use super::super::browser::{Browser, BrowserPopup};
use super::super::table::{Column, Entry};
use super::panels::message_or_hint;
use super::popups::{centered, keys};
use super::{clear_with, fit, title_with, too_small, ImageCache};
use crate::dataset::Change;
use crate::render;

/// Below this width the preview leaves the table the whole screen.
const PREVIEW_MIN_WIDTH: u16 = 100;

pub fn draw_browser(frame: &mut Frame, b: &Browser, images: &mut ImageCache) {
    let area = frame.area();
    let t = b.theme();
    clear_with(frame, t, area);
    if too_small(frame, t, area) {
        return;
    }
    let [body, status] = Layout::vertical([Constraint::Min(0), Constraint::Length(2)]).areas(area);
    let (table_area, preview_area) = if body.width >= PREVIEW_MIN_WIDTH {
        let [a, p] =
            Layout::horizontal([Constraint::Min(0), Constraint::Length(body.width * 2 / 5)]).areas(body);
        (a, Some(p))
    } else {
        (body, None)
    };
    table(frame, b, table_area);
    if let Some(area) = preview_area {
        preview(frame, b, images, area);
    }
    status_lines(frame, b, status);
    match &b.popup {
        Some(BrowserPopup::Help) => keys(frame, t, &b.keys_help, area),
        Some(BrowserPopup::Confusions { cursor }) => confusions(frame, b, *cursor, area),
        None => {}
    }
}

/// The name column as wide as the longest name on screen (up to half the table); the class
/// columns share the rest.
fn widths(name: u16, columns: &[Column]) -> Vec<Constraint> {
    columns
        .iter()
        .map(|c| match c {
            Column::Name => Constraint::Length(name),
            Column::True | Column::Predicted => Constraint::Fill(1),
            Column::Confidence => Constraint::Length(5),
            Column::Loss => Constraint::Length(6),
            Column::Energy => Constraint::Length(9),
            Column::Change => Constraint::Length(10),
            Column::MapR => Constraint::Length(6),
        })
        .collect()
}

fn table(frame: &mut Frame, b: &Browser, area: Rect) {
    let t = b.theme();
    let tb = &b.table;
    let block = Block::bordered()
        .border_style(Style::default().fg(t.accent))
        .title(title_with(t, format!(" {} ", fit(&b.title, area.width.saturating_sub(4) as usize))));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let page = inner.height.saturating_sub(1) as usize;
    b.page.set(page);
    // Keep the cursor inside the page without moving the page more than needed.
    let cursor = tb.cursor();
    let mut offset = tb.offset.get().min(tb.shown().saturating_sub(page.max(1)));
    if cursor < offset {
        offset = cursor;
    } else if page > 0 && cursor >= offset + page {
        offset = cursor + 1 - page;
    }
    tb.offset.set(offset);

    let columns = tb.columns();
    let header = TableRow::new(columns.iter().map(|&c| {
        let arrow = match tb.sort {
            Some((s, reversed)) if s == c => {
                if reversed {
                    " ▲"
                } else {
                    " ▼"
                }
            }
            _ => "",
        };
        Cell::from(format!("{}{arrow}", c.title()))
    }))
    .style(Style::default().fg(t.title).add_modifier(Modifier::BOLD));
    let rows: Vec<TableRow> = tb
        .window(offset, page)
        .enumerate()
        .map(|(i, e)| {
            let row = table_row(b, e, columns);
            if offset + i == cursor {
                row.style(Style::default().bg(t.selected_bg).fg(t.selected_fg))
            } else {
                row
            }
        })
        .collect();
    let empty = tb.shown() == 0;
    let longest = tb.window(offset, page).map(|e| e.row.path.chars().count()).max().unwrap_or(4);
    let name_width = (longest.max(4) as u16).min(inner.width / 2);
    frame
        .render_widget(Table::new(rows, widths(name_width, columns)).header(header).column_spacing(1), inner);
    if empty {
        let msg = if tb.is_empty() {
            "waiting for the first image…"
        } else {
            "no row matches the filters (Esc clears them)"
        };
        let y = inner.y + inner.height / 2;
        frame.render_widget(
            Paragraph::new(msg).style(Style::default().fg(t.dim)).centered(),
            Rect { y, height: 1, ..inner },
        );
    }
}

fn table_row<'a>(b: &'a Browser, e: &'a Entry, columns: &[Column]) -> TableRow<'a> {
    let t = b.theme();
    let r = &e.row;
    let num = |v: Option<f32>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
    if let Some(error) = &r.error {
        return TableRow::new(vec![
            Cell::from(r.path.as_str()),
            Cell::from(r.true_label.clone().unwrap_or_default()),
            Cell::from(Span::styled(format!("error: {error}"), Style::default().fg(t.error))),
        ]);
    }
    let predicted = r.predicted();
    let wrong = r.correct == Some(false);
    let predicted_style = if wrong { Style::default().fg(t.error) } else { Style::default() };
    let vs = r.vs.as_ref();
    TableRow::new(
        columns
            .iter()
            .map(|c| match c {
                Column::Name => Cell::from(r.path.as_str()),
                Column::True => Cell::from(r.true_label.clone().unwrap_or_else(|| "–".into())),
                Column::Predicted => Cell::from(Span::styled(
                    predicted.map_or(String::new(), |p| p.label.clone()),
                    predicted_style,
                )),
                Column::Confidence => Cell::from(num(predicted.map(|p| p.prob), 2)),
                Column::Loss => Cell::from(num(r.loss, 2)),
                Column::Energy => {
                    Cell::from(r.energy_in_object.map_or(String::new(), |e| format!("{:>3.0}%", 100.0 * e)))
                }
                Column::Change => {
                    let change = vs.and_then(|v| v.change);
                    let style = match change {
                        Some(Change::Broken) => Style::default().fg(t.error),
                        Some(Change::Fixed) => Style::default().fg(t.accent),
                        _ => Style::default(),
                    };
                    Cell::from(Span::styled(
                        change.map_or(String::new(), |c| c.name().replace('_', " ")),
                        style,
                    ))
                }
                Column::MapR => Cell::from(num(vs.and_then(|v| v.map_r), 2)),
            })
            .collect::<Vec<_>>(),
    )
}

fn preview(frame: &mut Frame, b: &Browser, images: &mut ImageCache, area: Rect) {
    let t = b.theme();
    let Some(entry) = b.table.selected() else {
        frame.render_widget(Block::bordered().border_style(Style::default().fg(t.border)), area);
        return;
    };
    let r = &entry.row;
    let block = Block::bordered()
        .border_style(Style::default().fg(t.border))
        .title(title_with(t, format!(" {} ", fit(&r.path, area.width.saturating_sub(4) as usize))));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [picture, info] = Layout::vertical([Constraint::Min(0), Constraint::Length(5)]).areas(inner);

    let mut lines = vec![];
    for (i, p) in r.top_k.iter().take(3).enumerate() {
        let mark = if Some(p.index) == r.true_index { "✓" } else { " " };
        lines.push(Line::from(vec![
            Span::styled(format!("{} {mark} ", i + 1), Style::default().fg(t.dim)),
            Span::styled(format!("{:>5.1}% ", 100.0 * p.prob), Style::default().fg(t.accent)),
            Span::styled(p.label.clone(), Style::default().fg(t.text)),
        ]));
    }
    let target = r.target_label.as_ref().map_or(String::new(), |l| format!("map of {l}"));
    let energy = match (r.energy_in_object, r.pointing_hit) {
        (Some(e), Some(h)) => {
            format!(" · {:.0}% in the object · {}", 100.0 * e, if h { "hit" } else { "miss" })
        }
        _ => String::new(),
    };
    lines.push(Line::styled(format!("{target}{energy}"), Style::default().fg(t.dim)));
    if let Some(note) = r.note.as_ref().or(r.error.as_ref()) {
        lines.push(Line::styled(note.clone(), Style::default().fg(t.error)));
    }
    frame.render_widget(Paragraph::new(lines), info);

    let preview = b.preview.as_ref().filter(|p| p.path == r.path);
    if let Some(error) = preview.and_then(|p| p.error.as_ref()) {
        frame.render_widget(
            Paragraph::new(error.as_str())
                .style(Style::default().fg(t.error))
                .wrap(ratatui::widgets::Wrap { trim: true }),
            picture,
        );
        return;
    }
    let view = preview.and_then(|p| p.view.clone());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    r.path.hash(&mut hasher);
    let id = (hasher.finish(), entry.thumb.is_some());
    let colormap = t.colormap;
    let aspect = view.as_ref().map_or((1, 1), |v| v.dimensions());
    images.draw_preview(frame, id, (b.theme, t), (picture, aspect), || {
        let view = view?;
        Some(match &entry.thumb {
            Some(thumb) => {
                let frame = crate::preprocess::InputSize::of_image(&view);
                render::overlay(&view, &thumb.upsample(frame), colormap, 0.5)
            }
            None => (*view).clone(),
        })
    });
}

fn status_lines(frame: &mut Frame, b: &Browser, area: Rect) {
    let t = b.theme();
    let tally = b.tally();
    let accuracy = tally.accuracy().map_or("no labels".into(), |a| {
        format!("accuracy {:.1}% ({}/{})", 100.0 * a, tally.correct, tally.labelled)
    });
    let errors = if tally.errors > 0 { format!(" · {} errors", tally.errors) } else { String::new() };
    let f = &b.table.filter;
    let mut filters = vec![];
    if let Some(change) = f.change {
        filters.push(change.name().replace('_', " "));
    }
    if f.wrong_only {
        filters.push("wrong".to_string());
    }
    if let Some(c) = f.true_class {
        filters.push(format!("true {}", b.label(c)));
    }
    if let Some(c) = f.predicted {
        filters.push(format!("predicted {}", b.label(c)));
    }
    if !f.query.is_empty() {
        filters.push(format!("/{}", f.query));
    }
    let shown = if filters.is_empty() {
        format!("{} rows", b.table.len())
    } else {
        format!("{} of {} rows ({})", b.table.shown(), b.table.len(), filters.join(", "))
    };
    let first = Line::from(vec![
        Span::styled(format!(" {} ", b.run), Style::default().fg(t.selected_fg).bg(t.selected_bg)),
        Span::styled(format!(" {accuracy}{errors} · {shown} · "), Style::default().fg(t.text)),
        Span::styled(b.sweep_line(), Style::default().fg(t.accent)),
    ]);
    let second = if b.searching {
        Line::styled(format!(" /{}▏ (Enter keeps, Esc clears)", f.query), Style::default().fg(t.accent))
    } else {
        message_or_hint(
            t,
            &b.status,
            " q quit  ? help  Enter open  N T P C L E sort  w wrong  t/p same class  c confusions  / search",
        )
    };
    frame.render_widget(Paragraph::new(vec![first, second]), area);
}

fn confusions(frame: &mut Frame, b: &Browser, cursor: usize, area: Rect) {
    let t = b.theme();
    let pairs = b.table.confusions();
    let popup = centered(area, 64, (pairs.len() as u16 + 2).clamp(3, 20));
    clear_with(frame, t, popup);
    let items: Vec<ListItem> = pairs
        .iter()
        .map(|&((truth, predicted), n)| {
            ListItem::new(Line::from(vec![
                Span::styled(format!("{n:>5}  "), Style::default().fg(t.accent)),
                Span::styled(b.label(truth).to_string(), Style::default().fg(t.text)),
                Span::styled(" → ", Style::default().fg(t.dim)),
                Span::styled(b.label(predicted).to_string(), Style::default().fg(t.error)),
            ]))
        })
        .collect();
    let block = Block::bordered()
        .border_style(Style::default().fg(t.accent))
        .title(title_with(t, " Most confused: true → predicted (Enter filters) ".into()));
    let list =
        List::new(items).block(block).highlight_style(Style::default().bg(t.selected_bg).fg(t.selected_fg));
    let mut state = ListState::default().with_selected(Some(cursor));
    frame.render_stateful_widget(list, popup, &mut state);
}
