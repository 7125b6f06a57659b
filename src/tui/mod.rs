//! The interactive debugger: `camscope [IMAGE]`. Everything that can fail (model, image, themes,
//! keys) is loaded before the screen is taken over, so errors print like `explain`'s. The terminal
//! is restored on quit, on error and on panic (ratatui's hook).

mod app;
mod keymap;
mod theme;
mod ui;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use ratatui::backend::Backend;
use ratatui::Terminal;
use ratatui_image::picker::{Picker, ProtocolType};

use camscope::engine::Engine;
use camscope::model::{card, Arch, EngineKind};
use camscope::preprocess;
use camscope::{Error, Result};

use app::{App, Command, ModelInfo};
use keymap::Keymap;
use ui::ImageCache;
use worker::Worker;

/// How many predictions the list shows (and 1–9 can pick from).
const TOP_K: usize = 10;

pub struct TuiOptions {
    pub image: Option<PathBuf>,
    pub model: String,
    pub arch: Option<Arch>,
    pub device: candle_core::Device,
    pub engine: EngineKind,
    /// `None`: ask the terminal.
    pub protocol: Option<ProtocolType>,
    pub theme: Option<String>,
    pub keys: Option<PathBuf>,
}

pub fn parse_protocol(s: &str) -> Result<Option<ProtocolType>> {
    Ok(match s {
        "auto" => None,
        "halfblocks" => Some(ProtocolType::Halfblocks),
        "sixel" => Some(ProtocolType::Sixel),
        "kitty" => Some(ProtocolType::Kitty),
        "iterm2" => Some(ProtocolType::Iterm2),
        other => {
            return Err(Error::Model(format!(
                "unknown protocol '{other}'; protocols are: auto, halfblocks, sixel, kitty, iterm2"
            )))
        }
    })
}

/// Everything the app needs, loaded and checked; the forward pass done.
fn prepare(opts: &TuiOptions) -> Result<(App, Engine, Keymap)> {
    let keymap = Keymap::load(opts.keys.as_deref())?;
    let themes = theme::load_all()?;
    let theme = theme::find(&themes, opts.theme.as_deref().unwrap_or("dark"))?;
    let model = card::load(&opts.model, opts.arch.clone())?;
    let input = preprocess::load_input(opts.image.as_deref(), &model.preprocess)?;
    let engine = Engine::new(model.network.clone(), input.tensor.to_device(&opts.device)?, opts.engine)?;
    let trace = engine.trace();
    let shapes = trace.shapes();
    let default_stage = engine.default_stage();
    let info = ModelInfo {
        model: model.name.clone(),
        arch: model.network.name(),
        source: input.source.clone(),
        stages: model.network.stages().iter().map(|s| s.name.clone()).collect(),
        shapes,
        labels: Arc::new(model.labels.clone()),
        view: Arc::new(input.view.clone()),
    };
    let mut app = App::new(info, trace.top_k(TOP_K, &model.labels), default_stage, themes, theme);
    app.keys_help = keymap.help();
    Ok((app, engine, keymap))
}

pub fn run(opts: &TuiOptions) -> Result<()> {
    let start = Instant::now();
    let (app, engine, keymap) = prepare(opts)?;
    let worker = Worker::spawn(engine);
    let mut terminal = ratatui::init();
    let picker = match opts.protocol {
        Some(ProtocolType::Halfblocks) => Picker::halfblocks(),
        Some(p) => {
            let mut picker = Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks());
            picker.set_protocol_type(p);
            picker
        }
        None => Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks()),
    };
    let result = event_loop(&mut terminal, app, &worker, &keymap, ImageCache::new(picker), start);
    ratatui::restore();
    result
}

fn save(app: &mut App) {
    let Some(picture) = app.picture(&app.key()) else {
        app.status = Some(("nothing to save yet: the map is still being computed".into(), true));
        return;
    };
    let path = app.save_name();
    app.status = Some(match picture.save_with_format(&path, image::ImageFormat::Png) {
        Ok(()) => (format!("saved {path}"), false),
        Err(e) => (format!("cannot save {path}: {e}"), true),
    });
}

fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    mut app: App,
    worker: &Worker,
    keymap: &Keymap,
    mut images: ImageCache,
    start: Instant,
) -> Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let io = |e: std::io::Error| Error::io("terminal", e);
    let draw_err = |e: B::Error| Error::Model(format!("drawing failed: {e}"));
    let mut last_request = Vec::new();
    let mut first_map_shown = false;
    let mut key_pressed: Option<Instant> = None;
    loop {
        // Ask again only when something new is wanted (or wanted first): maps arriving shrink
        // the missing list, and that must not restart a long computation in progress.
        let missing = app.missing();
        let current = worker::Job::Map(app.key());
        let reprioritised = missing.first() == Some(&current) && last_request.first() != Some(&current);
        let asks_more = reprioritised || missing.iter().any(|k| !last_request.contains(k));
        if !missing.is_empty() && asks_more {
            worker.request(missing.clone());
            app.progress.get_or_insert((0, missing.len()));
            last_request = missing;
        }

        terminal.draw(|f| ui::draw(f, &app, &mut images)).map_err(draw_err)?;
        if let Some(t) = key_pressed.take() {
            app.status.get_or_insert((
                format!("redrawn {:.1} ms after the key", t.elapsed().as_secs_f64() * 1e3),
                false,
            ));
        }
        if !first_map_shown && app.maps.contains_key(&app.key()) {
            first_map_shown = true;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            app.status = Some((
                format!(
                    "first map on screen {} after start · {} images",
                    ui::duration(ms),
                    images.protocol_name()
                ),
                false,
            ));
            continue;
        }

        let timeout = if app.is_computing() { Duration::from_millis(15) } else { Duration::from_millis(250) };
        if event::poll(timeout).map_err(io)? {
            match event::read().map_err(io)? {
                TermEvent::Key(key) if key.kind == KeyEventKind::Press => {
                    key_pressed = Some(Instant::now());
                    app.status = None;
                    if !app.search_key(&key) {
                        if let Some(action) = keymap.action(&key) {
                            match app.update(action) {
                                Some(Command::CancelWork) => {
                                    worker.cancel();
                                    last_request.clear();
                                }
                                Some(Command::Save) => save(&mut app),
                                None => {}
                            }
                        }
                    }
                }
                TermEvent::Resize(..) => terminal.autoresize().map_err(draw_err)?,
                _ => {}
            }
        }
        while let Ok(ev) = worker.events.try_recv() {
            app.on_event(ev);
        }
        if app.quit {
            return Ok(());
        }
    }
}
#[cfg(test)]
mod snapshot_tests;
