//! The interactive debugger: `camscope [IMAGE]`. Everything that can fail (model, image, themes,
//! keys) is loaded before the screen is taken over, so errors print like `explain`'s. The terminal
//! is restored on quit, on error and on panic (ratatui's hook).
//!
//! May use: `engine`, `cam`, `render`, `load`, `contract`. A new pane is a draw function in
//! `ui/`, a new key a row in `keymap.rs`, a new action a case in `app.rs`.

mod action;
mod app;
mod config_file;
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
use ratatui_image::picker::cap_parser::QueryStdioOptions;
use ratatui_image::picker::{Picker, ProtocolType};

use crate::cam::{Method, Smoothing};
use crate::contract::Model;
use crate::contract::{with_stage, EngineKind};
use crate::engine::Engine;
use crate::explain::StageChoice;
use crate::preprocess;
use crate::render::Colormap;
use crate::{Error, Result};

use app::{App, Command, ModelInfo, Screen};
use keymap::Keymap;
use ui::ImageCache;
use worker::Worker;

/// How many predictions the list shows (and 1–9 can pick from).
const TOP_K: usize = 10;

/// How the debugger starts. The model is not among them: [`run`] takes a loader, [`run_model`] a
/// model.
pub struct TuiOptions {
    pub image: Option<PathBuf>,
    pub device: candle_core::Device,
    pub engine: EngineKind,
    /// Where the debugger starts (the keys change them): method, stage (`All`: the stage grid),
    /// class (index or label), smoothing.
    pub method: Method,
    pub stages: StageChoice,
    pub class: Option<String>,
    pub smoothing: Smoothing,
    /// `None`: the theme's.
    pub colormap: Option<Colormap>,
    /// Forward passes per batch of the perturbation methods.
    pub batch_size: usize,
    /// `None`: ask the terminal.
    pub protocol: Option<ProtocolType>,
    pub theme: Option<String>,
    pub keys: Option<PathBuf>,
}

impl Default for TuiOptions {
    fn default() -> Self {
        Self {
            image: None,
            device: candle_core::Device::Cpu,
            engine: EngineKind::Fast,
            method: Method::GradCam,
            stages: StageChoice::Default,
            class: None,
            smoothing: Smoothing::default(),
            colormap: None,
            batch_size: crate::cam::Control::DEFAULT_BATCH,
            protocol: None,
            theme: None,
            keys: None,
        }
    }
}

pub fn parse_protocol(s: &str) -> Result<Option<ProtocolType>> {
    Ok(match s {
        "auto" => None,
        "halfblocks" => Some(ProtocolType::Halfblocks),
        "sixel" => Some(ProtocolType::Sixel),
        "kitty" => Some(ProtocolType::Kitty),
        "iterm2" => Some(ProtocolType::Iterm2),
        other => return Err(Error::UnknownProtocol(other.into())),
    })
}

/// Everything the app needs, loaded and checked; the forward pass done.
fn prepare(opts: &TuiOptions, load: impl FnOnce() -> Result<Model>) -> Result<(App, Engine, Keymap)> {
    let keymap = Keymap::load(opts.keys.as_deref())?;
    let themes = theme::load_all()?;
    let theme = theme::find(&themes, opts.theme.as_deref().unwrap_or("dark"))?;
    let model = load()?;
    // The stage and class the user asked for, checked before the (slower) forward pass; a module
    // of an imported graph outside its default stages joins them.
    let (net, stage) = match &opts.stages {
        StageChoice::Named(name) => {
            let (net, stage) = with_stage(&model.network, name)?;
            (net, Some(stage))
        }
        StageChoice::Default | StageChoice::All => (model.network.clone(), None),
    };
    let class = opts.class.as_deref().map(|c| model.parse_class(c)).transpose()?;
    let input = preprocess::load_input(opts.image.as_deref(), &model.preprocess)?;
    let engine = Engine::new(net.clone(), input.tensor.to_device(&opts.device)?, opts.engine)?;
    let trace = engine.trace();
    let info = ModelInfo {
        model: model.name.clone(),
        arch: net.name(),
        source: input.source.clone(),
        stages: net.stages().iter().map(|s| s.name.clone()).collect(),
        shapes: trace.shapes(),
        labels: Arc::new(model.labels.clone()),
        view: Arc::new(input.view.clone()),
    };
    let stage = stage.unwrap_or_else(|| engine.default_stage());
    let mut app = App::new(info, trace.top_k(TOP_K, &model.labels), stage, themes, theme);
    if let Some(class) = class {
        app.set_class(class);
    }
    app.method = opts.method;
    app.smoothing = opts.smoothing;
    app.colormap = opts.colormap;
    if opts.stages == StageChoice::All {
        app.screen = Screen::StageGrid;
    }
    app.keys_help = keymap.help();
    Ok((app, engine, keymap))
}

/// The debugger on your own model (an [`ImageClassifier`](crate::contract::ImageClassifier) wrapped
/// with [`Model::new`]).
pub fn run_model(model: Model, opts: &TuiOptions) -> Result<()> {
    run(opts, || Ok(model))
}

/// The debugger on the model `load` returns; it runs while the terminal is asked about graphics.
/// The terminal is restored however the debugger ends, a panic included.
pub fn run(opts: &TuiOptions, load: impl FnOnce() -> Result<Model> + Send) -> Result<()> {
    let start = Instant::now();
    // Asking the terminal about graphics takes a round trip (up to QUERY_TIMEOUT where nothing
    // answers); loading the model and the forward pass take about as long. Do both at once. The
    // query leaves the terminal as it found it, so a loading error still prints on a clean line.
    let (prepared, picker) = std::thread::scope(|s| {
        let loading = s.spawn(|| prepare(opts, load));
        let picker = graphics(opts.protocol);
        (loading.join(), picker)
    });
    let (app, engine, keymap) = prepared.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    let worker = Worker::spawn(engine, opts.batch_size);
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, app, &worker, &keymap, ImageCache::new(picker), start);
    ratatui::restore();
    result
}

/// How long to wait for the terminal's answer about graphics. Terminals answer in a round trip
/// (milliseconds locally, the ping time over SSH); the library's 2 s is only ever spent in full
/// where nothing answers, and that wait delays the first map.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);

/// The picture protocol: `--protocol`, else what the terminal says it supports (kitty, sixel,
/// iTerm2 with its cell size), else half-blocks. The query is skipped where no answer can come.
fn graphics(protocol: Option<ProtocolType>) -> Picker {
    if protocol == Some(ProtocolType::Halfblocks) || !terminal_can_answer() {
        return Picker::halfblocks();
    }
    let options = QueryStdioOptions { timeout_ms: QUERY_TIMEOUT.as_millis() as i32, ..Default::default() };
    let mut picker = Picker::from_query_stdio_with_options(options).unwrap_or_else(|_| Picker::halfblocks());
    if let Some(p) = protocol {
        picker.set_protocol_type(p);
    }
    picker
}

/// False where a graphics query is known to go unanswered: no terminal on stdin/stdout, a
/// terminal type without graphics, or a tmux session with no client attached (tmux passes the
/// query through to the client's terminal, and a detached session has none).
fn terminal_can_answer() -> bool {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return false;
    }
    let term = std::env::var("TERM").unwrap_or_default();
    if term.is_empty() || term == "dumb" || term == "linux" {
        return false;
    }
    !tmux_session_detached()
}

fn tmux_session_detached() -> bool {
    let (Some(_), Some(pane)) = (std::env::var_os("TMUX"), std::env::var_os("TMUX_PANE")) else {
        return false;
    };
    let mut cmd = std::process::Command::new("tmux");
    cmd.arg("display-message").arg("-p").arg("-t").arg(pane).arg("#{session_attached}");
    cmd.stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    cmd.output().is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
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
    let draw_err = |e: B::Error| Error::Terminal(format!("drawing failed: {e}"));
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

        // Soon while maps are computed or pictures encoded, to show them as they come.
        let busy = app.is_computing() || images.is_encoding();
        let timeout = if busy { Duration::from_millis(15) } else { Duration::from_millis(250) };
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
