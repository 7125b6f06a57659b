//! Comparison grids: every stage (`g`) or every method (`c`), scrollable by rows of tiles.

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

use super::super::app::{App, Screen, METHODS};
use super::super::worker::MapKey;
use super::{duration, title, ImageCache};

/// Tile size in cells (title row included): about a square picture with half-block cells.
const TILE_WIDTH: u16 = 26;
const TILE_HEIGHT: u16 = 13;
/// ROAD on one line, deletion and insertion on the next: all three at 3 significant figures fit
/// the narrowest tile (25 cells), where one line of them did not.
const SCORE_ROWS: u16 = 2;

pub fn draw(frame: &mut Frame, app: &App, images: &mut ImageCache, area: Rect) {
    let (heading, tiles): (String, Vec<(String, MapKey)>) = match app.screen {
        Screen::MethodGrid => (
            format!(" every method at {} · {} ", app.info.stages[app.stage], app.label(app.class)),
            METHODS.iter().map(|&m| (m.name().to_string(), MapKey { method: m, ..app.key() })).collect(),
        ),
        _ => (
            format!(" every stage · {} · {} ", app.method, app.label(app.class)),
            app.info
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), MapKey { stage: i, ..app.key() }))
                .collect(),
        ),
    };
    let block =
        Block::bordered().border_style(Style::default().fg(app.theme().border)).title(title(app, heading));
    let inner = block.inner(area);
    frame.render_widget(block, area);

    let cols = (inner.width / TILE_WIDTH).max(1);
    let tile_w = inner.width / cols;
    let visible_rows = (inner.height / TILE_HEIGHT).max(1);
    // Stretch the rows to use the whole height.
    let tile_h = (inner.height / visible_rows).max(1);
    let rows = (tiles.len() as u16).div_ceil(cols);
    let first_row = (app.grid_scroll as u16).min(rows.saturating_sub(visible_rows));
    let t = app.theme();
    let scored = app.screen == Screen::MethodGrid;
    let best = if scored { app.most_faithful() } else { None };
    for (i, (name, key)) in tiles.iter().enumerate() {
        let (row, col) = (i as u16 / cols, i as u16 % cols);
        if row < first_row || row >= first_row + visible_rows {
            continue;
        }
        let x = inner.x + col * tile_w;
        let y = inner.y + (row - first_row) * tile_h;
        let height = tile_h.min(inner.y + inner.height - y);
        let current = *key == app.key();
        let style = if current {
            Style::default().fg(t.accent).add_modifier(Modifier::BOLD)
        } else {
            Style::default().fg(t.text)
        };
        let time = app.map_ms.get(key).map(|ms| format!(" {}", duration(*ms))).unwrap_or_default();
        let star = if best == Some(key.method) { "★ " } else { "" };
        let label = Line::from(vec![
            ratatui::text::Span::styled(star, Style::default().fg(t.accent)),
            ratatui::text::Span::styled(name.clone(), style),
            ratatui::text::Span::styled(time, Style::default().fg(t.dim)),
        ]);
        let width = tile_w.saturating_sub(1);
        frame.render_widget(Paragraph::new(label), Rect { x, y, width, height: 1 });
        // The method grid keeps its last rows for the scores of each map.
        let score_rows = if scored { SCORE_ROWS } else { 0 };
        let picture = Rect { x, y: y + 1, width, height: height.saturating_sub(1 + score_rows) };
        images.draw(frame, app, *key, picture);
        if scored && height > 1 + SCORE_ROWS {
            let lines = match app.scores.get(key) {
                Some(s) => vec![
                    Line::from(format!("ROAD {}", signed(s.road_combined))),
                    Line::from(format!("del {} ins {}", sig3(s.deletion_auc), sig3(s.insertion_auc))),
                ],
                None => vec![Line::from("scoring…")],
            };
            let area = Rect { x, y: y + height - SCORE_ROWS, width, height: SCORE_ROWS };
            frame.render_widget(Paragraph::new(lines).style(Style::default().fg(t.dim)), area);
        }
    }
    if rows > visible_rows {
        let more = format!(
            " rows {}-{} of {rows} · j/k scroll ",
            first_row + 1,
            (first_row + visible_rows).min(rows)
        );
        let y = area.y + area.height - 1;
        frame.render_widget(
            Paragraph::new(more).style(Style::default().fg(t.dim)).right_aligned(),
            Rect { y, height: 1, ..area },
        );
    }
}

/// `v` to 3 significant figures in at most 7 characters: 0.456, 0.0712, 0.00123 (to 0.001), then
/// 1.23e-4. Faithfulness scores are mostly below 1 and deletion AUCs often below 0.01, which a
/// fixed two decimals showed as 0.00.
fn sig3(v: f32) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    // The exponent after rounding to 3 figures (0.09996 is 1.00e-1, shown 0.100).
    let sci = format!("{v:.2e}");
    let exponent: i32 = sci.rsplit('e').next().and_then(|e| e.parse().ok()).unwrap_or(0);
    if (-3..3).contains(&exponent) {
        let decimals = (2 - exponent) as usize;
        format!("{v:.decimals$}")
    } else {
        sci
    }
}

/// [`sig3`] with an explicit sign: ROAD is positive when the map is faithful.
fn signed(v: f32) -> String {
    if v.is_sign_negative() && v != 0.0 {
        sig3(v)
    } else {
        format!("+{}", sig3(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_significant_figures_in_seven_characters() {
        let cases = [
            (0.456, "0.456"),
            (0.0712, "0.0712"),
            (0.001234, "0.00123"),
            (0.0001234, "1.23e-4"),
            (0.09996, "0.100"),
            (1.0, "1.00"),
            (-0.0712, "-0.0712"),
            (0.0, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(sig3(v), want, "{v}");
        }
        assert_eq!(signed(0.0712), "+0.0712");
        assert_eq!(signed(-0.0712), "-0.0712");
    }
}
