//! The CAM picture inside the frame (ratatui-image: kitty, sixel, iTerm2 or half-blocks) with its
//! colour scale. Encoding a picture for the terminal is the costly part of a redraw, so encoded
//! pictures are cached by everything that changes them.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, Sender};

use image::{DynamicImage, RgbImage};
use ratatui::layout::{Constraint, Layout, Rect, Size};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;
use ratatui_image::picker::{Picker, ProtocolType};
use ratatui_image::protocol::halfblocks::Halfblocks;
use ratatui_image::protocol::Protocol;
use ratatui_image::{FilterType, Image, Resize};

use super::super::app::{App, Compare, ViewMode};
use super::super::theme::Theme;
use super::super::worker::MapKey;
use super::{fit, title};

/// Everything that changes a picture on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PictureKey {
    shown: Shown,
    theme: usize,
    size: (u16, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Shown {
    Map {
        map: MapKey,
        view: ViewMode,
        opacity: u32,
    },
    /// Two models (`--vs`): A | B | B − A, or B − A alone.
    Comparison {
        map: MapKey,
        compare: Compare,
        view: ViewMode,
        opacity: u32,
    },
    /// A segmentation model's predicted segmentation (one per image).
    Segmentation,
    /// A data set row's preview, by an id of the row and whether its map is in it yet.
    Preview {
        row: u64,
        with_map: bool,
    },
}

pub struct ImageCache {
    picker: Picker,
    encoded: HashMap<PictureKey, Protocol>,
    /// Half-block stand-ins, shown while `encoder` makes the terminal's own picture.
    previews: HashMap<PictureKey, Protocol>,
    /// `None` with half-blocks, which encode in milliseconds.
    encoder: Option<Encoder>,
}

/// Enough for a full grid at two sizes; beyond it the cache starts over.
const CACHE_LIMIT: usize = 96;

/// A thread that encodes pictures for kitty / sixel / iTerm2. A sixel picture of a full-size map
/// takes 0.2–0.3 s to encode (kitty and iTerm2 ~60 ms, half-blocks ~15 ms): done on the UI
/// thread, it held up the first map and every key press that needed a new picture.
struct Encoder {
    jobs: Sender<(PictureKey, DynamicImage)>,
    done: Receiver<(PictureKey, Result<Protocol, String>)>,
    pending: HashSet<PictureKey>,
}

impl Encoder {
    fn spawn(picker: Picker) -> Self {
        let (jobs, their_jobs) = mpsc::channel::<(PictureKey, DynamicImage)>();
        let (their_done, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("camscope-pictures".into())
            .spawn(move || {
                for (key, picture) in their_jobs {
                    let size = Size::new(key.size.0, key.size.1);
                    let encoded = picker
                        .new_protocol(picture, size, Resize::Scale(Some(FilterType::Triangle)))
                        .map_err(|e| e.to_string());
                    if their_done.send((key, encoded)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the picture encoder");
        Self { jobs, done, pending: HashSet::new() }
    }
}

impl ImageCache {
    pub fn new(picker: Picker) -> Self {
        let encoder =
            (picker.protocol_type() != ProtocolType::Halfblocks).then(|| Encoder::spawn(picker.clone()));
        Self { picker, encoded: HashMap::new(), previews: HashMap::new(), encoder }
    }

    pub fn protocol_name(&self) -> String {
        format!("{:?}", self.picker.protocol_type()).to_lowercase()
    }

    /// Whether pictures are being encoded: the runtime then redraws soon to show them.
    pub fn is_encoding(&self) -> bool {
        self.encoder.as_ref().is_some_and(|e| !e.pending.is_empty())
    }

    /// The largest cell rectangle inside `area` that shows a picture of `aspect` (width,
    /// height) undistorted, centred.
    fn fit(&self, area: Rect, (aw, ah): (u32, u32)) -> Rect {
        let font = self.picker.font_size();
        let (fw, fh) = (font.width.max(1) as u32, font.height.max(1) as u32);
        let (aw, ah) = (aw.max(1), ah.max(1));
        // The picture's height in pixels: what the width allows, or the height, whichever is less.
        let px_h = (area.width as u32 * fw * ah / aw).min(area.height as u32 * fh);
        let (w, h) = ((px_h * aw / ah / fw) as u16, (px_h / fh) as u16);
        Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
    }

    /// Takes the pictures the encoder has finished.
    fn collect(&mut self) {
        let Some(encoder) = &mut self.encoder else { return };
        while let Ok((key, encoded)) = encoder.done.try_recv() {
            encoder.pending.remove(&key);
            self.previews.remove(&key);
            // A failed encoding keeps its half-block preview: a picture, if a coarser one.
            if let Ok(p) = encoded {
                self.encoded.insert(key, p);
            }
        }
    }

    /// Draws the picture of `map` into `area`, or says it is being computed. With kitty, sixel or
    /// iTerm2 a half-block picture stands in until the encoder has the terminal's own.
    pub fn draw(&mut self, frame: &mut Frame, app: &App, map: MapKey, area: Rect) {
        let shown = Shown::Map { map, view: app.view, opacity: (app.opacity * 100.0).round() as u32 };
        let waiting = if app.is_computing() { "computing…" } else { "waiting…" };
        let aspect = app.info.view.dimensions();
        self.draw_keyed(frame, shown, app.theme, app.theme(), area, waiting, aspect, || app.picture(&map));
    }

    /// Draws the comparison of the current map with the second model's (`--vs`).
    pub fn draw_comparison(&mut self, frame: &mut Frame, app: &App, area: Rect) {
        let shown = Shown::Comparison {
            map: app.key(),
            compare: app.compare,
            view: app.view,
            opacity: (app.opacity * 100.0).round() as u32,
        };
        let waiting = if app.is_computing() { "computing both models…" } else { "waiting…" };
        let (w, h) = app.info.view.dimensions();
        let aspect = match app.compare {
            Compare::SideBySide => (3 * w + 2 * (w / 32).max(1), h),
            _ => (w, h),
        };
        self.draw_keyed(frame, shown, app.theme, app.theme(), area, waiting, aspect, || {
            app.comparison_picture()
        });
    }

    /// Draws a segmentation model's predicted segmentation, a colour per class.
    pub fn draw_segmentation(&mut self, frame: &mut Frame, app: &App, area: Rect) {
        let Some(picture) = &app.info.segmentation else { return };
        let aspect = picture.dimensions();
        self.draw_keyed(frame, Shown::Segmentation, app.theme, app.theme(), area, "", aspect, || {
            Some((**picture).clone())
        });
    }

    /// Draws a data set row's preview (`row`: an id of the row) of `aspect` (width, height),
    /// made by `picture` only when it is not cached.
    pub fn draw_preview(
        &mut self,
        frame: &mut Frame,
        (row, with_map): (u64, bool),
        (theme_index, theme): (usize, &Theme),
        (area, aspect): (Rect, (u32, u32)),
        picture: impl FnOnce() -> Option<RgbImage>,
    ) {
        self.draw_keyed(
            frame,
            Shown::Preview { row, with_map },
            theme_index,
            theme,
            area,
            "loading…",
            aspect,
            picture,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn draw_keyed(
        &mut self,
        frame: &mut Frame,
        shown: Shown,
        theme_index: usize,
        theme: &Theme,
        area: Rect,
        waiting: &str,
        aspect: (u32, u32),
        picture: impl FnOnce() -> Option<RgbImage>,
    ) {
        if area.width == 0 || area.height == 0 {
            return;
        }
        let text_area = area;
        let area = self.fit(area, aspect);
        if area.width == 0 || area.height == 0 {
            return;
        }
        let key = PictureKey { shown, theme: theme_index, size: (area.width, area.height) };
        self.collect();
        if let Some(p) = self.encoded.get(&key).or_else(|| self.previews.get(&key)) {
            frame.render_widget(Image::new(p), area);
            return;
        }
        let Some(picture) = picture() else {
            let p = Paragraph::new(waiting).style(Style::default().fg(theme.dim)).centered();
            frame.render_widget(p, center_line(text_area));
            return;
        };
        if self.encoded.len() + self.previews.len() >= CACHE_LIMIT {
            self.encoded.clear();
            self.previews.clear();
        }
        let picture = DynamicImage::ImageRgb8(picture);
        if let Some(encoder) = &mut self.encoder {
            if encoder.pending.insert(key) && encoder.jobs.send((key, picture.clone())).is_err() {
                encoder.pending.remove(&key);
            }
        }
        // Straight to half-block resolution (one pixel per half cell). Through `new_protocol`
        // the picture is first scaled to the area at an assumed 10×20 pixel font (~1000²
        // pixels) and then down again: 50–90 ms for the first frame.
        match Halfblocks::new(picture, Size::new(area.width, area.height)) {
            Ok(p) => {
                let cache = if self.encoder.is_some() { &mut self.previews } else { &mut self.encoded };
                frame.render_widget(Image::new(cache.entry(key).or_insert(Protocol::Halfblocks(p))), area);
            }
            Err(e) => {
                let p = Paragraph::new(format!("cannot draw: {e}")).style(Style::default().fg(theme.error));
                frame.render_widget(p, area);
            }
        }
    }
}

fn center_line(area: Rect) -> Rect {
    Rect { y: area.y + area.height / 2, height: 1, ..area }
}

pub fn main_picture(frame: &mut Frame, app: &App, images: &mut ImageCache, area: Rect) {
    let view = match app.view {
        ViewMode::Overlay => format!("overlay {:.0}%", app.opacity * 100.0),
        ViewMode::Heatmap => "heat map".into(),
        ViewMode::Input => "input".into(),
    };
    let stage = match (&app.vs, app.comparing()) {
        (Some(vs), true) if vs.stages[vs.stage_of[app.stage]] != app.info.stages[app.stage] => {
            format!("{} ~ {}", app.info.stages[app.stage], vs.stages[vs.stage_of[app.stage]])
        }
        _ => app.info.stages[app.stage].clone(),
    };
    let name = format!(" {} · {stage} · {} · {view} ", app.method, app.label(app.class));
    let block =
        Block::bordered().border_style(Style::default().fg(app.theme().border)).title(title(app, name));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if app.comparing() && app.view != ViewMode::Input {
        return comparison(frame, app, images, inner);
    }
    let inner = match app.info.segmentation.is_some() {
        true => beside_segmentation(frame, app, images, inner),
        false => inner,
    };
    let [picture, scale] = Layout::horizontal([Constraint::Min(0), Constraint::Length(7)]).areas(inner);
    images.draw(frame, app, app.key(), picture);
    if app.view != ViewMode::Input {
        colour_scale(frame, app, scale);
    }
}

/// A segmentation model's prediction in the right half of `area`, with a legend of its largest
/// classes under it; the left half is returned for the map.
fn beside_segmentation(frame: &mut Frame, app: &App, images: &mut ImageCache, area: Rect) -> Rect {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let [picture, legend] = Layout::vertical([Constraint::Min(0), Constraint::Length(2)]).areas(right);
    images.draw_segmentation(frame, app, picture);
    let t = app.theme();
    let mut spans = Vec::new();
    for p in &app.predictions {
        let [r, g, b] = crate::segment::palette_colour(p.index);
        let style = match p.index == app.class {
            true => Style::default().fg(t.accent),
            false => Style::default().fg(t.text),
        };
        spans.push(Span::styled("■ ", Style::default().fg(Color::Rgb(r, g, b))));
        spans.push(Span::styled(format!("{} {:.0}%  ", p.label, 100.0 * p.prob), style));
    }
    let legend_text = Paragraph::new(Line::from(spans)).wrap(ratatui::widgets::Wrap { trim: true });
    frame.render_widget(legend_text, legend);
    left
}

/// `--vs`: the pictures of both models and their difference, with a line naming each and the
/// difference's scale and the maps' correlation.
fn comparison(frame: &mut Frame, app: &App, images: &mut ImageCache, area: Rect) {
    let [picture, legend] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(area);
    images.draw_comparison(frame, app, picture);
    let Some(vs) = &app.vs else { return };
    let t = app.theme();
    let about = match app.pair_maps() {
        Some(pair) => {
            let r =
                crate::compare::stats::pearson(&pair.a, &pair.b).map_or("—".into(), |r| format!("{r:.3}"));
            let scale = crate::compare::stats::max_abs(&pair.difference);
            format!("B − A ±{scale:.2} · r {r} · red: B more")
        }
        None => "B − A when both maps are in".into(),
    };
    let names = match app.compare {
        Compare::SideBySide => format!("A {} | B {} | ", fit(&app.info.model, 16), fit(&vs.model, 16)),
        _ => format!("A {}, B {}: ", fit(&app.info.model, 16), fit(&vs.model, 16)),
    };
    let line = Line::from(vec![
        Span::styled(names, Style::default().fg(t.text)),
        Span::styled(about, Style::default().fg(t.dim)),
    ]);
    frame.render_widget(Paragraph::new(line).centered(), legend);
}

/// A vertical bar of the colormap from 1.0 (top) to 0.0 (bottom).
fn colour_scale(frame: &mut Frame, app: &App, area: Rect) {
    let h = area.height.saturating_sub(2).max(1);
    let colormap = app.colormap();
    let rgb = |v: f32| {
        let c = colormap.rgb((v.clamp(0.0, 1.0) * 255.0) as u8);
        Color::Rgb((c[0] * 255.0) as u8, (c[1] * 255.0) as u8, (c[2] * 255.0) as u8)
    };
    let mut lines = Vec::with_capacity(area.height as usize);
    for row in 0..h {
        // Two values per cell with the upper half block: top half fg, bottom half bg.
        let top = 1.0 - (2 * row) as f32 / (2 * h - 1) as f32;
        let bottom = 1.0 - (2 * row + 1) as f32 / (2 * h - 1) as f32;
        let label = match row {
            0 => "1.0".to_string(),
            r if r == h / 2 => "0.5".to_string(),
            r if r == h - 1 => "0.0".to_string(),
            _ => String::new(),
        };
        lines.push(Line::from(vec![
            Span::styled("▀▀", Style::default().fg(rgb(top)).bg(rgb(bottom))),
            Span::styled(format!(" {label}"), Style::default().fg(app.theme().dim)),
        ]));
    }
    frame.render_widget(
        Paragraph::new(lines),
        Rect { x: area.x + 1, width: area.width.saturating_sub(1), ..area },
    );
}
