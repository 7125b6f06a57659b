//! The interactive debugger: `camscope [IMAGE]`. Everything that can fail (model, image, themes,
//! keys) is loaded before the screen is taken over, so errors print like `explain`'s. The terminal
//! is restored on quit, on error and on panic (ratatui's hook).
//!
//! May use: `engine`, `cam`, `render`, `load`, `contract`. A new pane is a draw function in
//! `ui/`, a new key a row in `keymap.rs`, a new action a case in `app.rs`.

mod action;
mod app;
mod browser;
mod config_file;
mod data_set;
mod feeds;
mod keymap;
mod table;
mod theme;
mod ui;
mod worker;

pub use data_set::{run_data_set, DataSetOptions};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use ratatui::backend::Backend;
use ratatui::Terminal;
use ratatui_image::picker::cap_parser::QueryStdioOptions;
use ratatui_image::picker::{Picker, ProtocolType};

use crate::cam::{Method, Smoothing};
use crate::contract::Model;
use crate::contract::{with_stage, EngineKind, ImageClassifier};
use crate::engine::Engine;
use crate::explain::StageChoice;
use crate::preprocess;
use crate::render::Colormap;
use crate::segment;
use crate::trace::Prediction;
use crate::{Error, Result};
use action::Context;

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
    /// A second model (`--vs`): its maps beside the first's and their difference.
    pub vs: Option<String>,
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
            vs: None,
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

/// One image made ready for the image view: decoded, its forward pass done.
struct OpenedImage {
    info: ModelInfo,
    predictions: Vec<Prediction>,
    engine: Engine,
    /// A segmentation's class explained first: the largest, passing over the background.
    default_class: Option<usize>,
}

impl OpenedImage {
    /// `network`: the model's, with the chosen stage among its stages. A segmentation model's
    /// classes are explained over the pixels it labels with them.
    fn open(
        model: &Model,
        network: Arc<dyn ImageClassifier>,
        image: Option<&Path>,
        device: &candle_core::Device,
        kind: EngineKind,
    ) -> Result<Self> {
        let input = preprocess::load_input(image, &model.preprocess)?;
        let target = segment::RegionTarget::Predicted;
        let (engine, segmentation) = segment::engine_for(model, network, &input, device, kind, &target)?;
        let network = engine.network();
        let trace = engine.trace();
        let (w, h) = input.view.dimensions();
        let info = ModelInfo {
            model: model.name.clone(),
            arch: network.name(),
            source: input.source.clone(),
            stages: network.stages().iter().map(|s| s.name.clone()).collect(),
            shapes: trace.shapes(),
            labels: Arc::new(model.labels.clone()),
            view: Arc::new(input.view.clone()),
            segmentation: segmentation.as_ref().map(|s| {
                let picture = s.prediction.picture();
                Arc::new(image::imageops::resize(&picture, w, h, image::imageops::FilterType::Nearest))
            }),
        };
        let predictions = match &segmentation {
            // The list's "probability" is the class's share of the pixels.
            Some(s) => s
                .present_classes(&model.labels)
                .into_iter()
                .map(|c| Prediction { index: c.index, label: c.label, logit: c.pixels as f32, prob: c.share })
                .collect(),
            None => trace.top_k(TOP_K, &model.labels),
        };
        let default_class = segmentation.as_ref().map(|s| s.prediction.default_class(&model.labels));
        Ok(Self { info, predictions, engine, default_class })
    }

    fn into_app(self, stage: Option<usize>, themes: Vec<theme::Theme>, theme: usize) -> (App, Engine) {
        let stage = stage.unwrap_or_else(|| self.engine.default_stage());
        let mut app = App::new(self.info, self.predictions, stage, themes, theme);
        if let Some(class) = self.default_class {
            app.set_class(class);
        }
        (app, self.engine)
    }
}

/// What the app shows of the second model of `--vs` (opened on the same image through its own
/// preprocessing), and its engine for the worker. Each of A's stages is shown beside B's stage of
/// the same name, else beside `fallback` (B's swept stage in a data set), else B's default stage
/// (another architecture).
fn second_side(b: &Model, opened: OpenedImage, app: &App, fallback: Option<usize>) -> (app::VsInfo, Engine) {
    let default = fallback.unwrap_or_else(|| opened.engine.default_stage());
    let names = opened.info.stages;
    let stage_of =
        app.info.stages.iter().map(|a| names.iter().position(|n| n == a).unwrap_or(default)).collect();
    let (w, h) = app.info.view.dimensions();
    let size = opened.engine.size();
    let view = match opened.info.view.dimensions() == (w, h) {
        true => opened.info.view.clone(),
        false => Arc::new(crate::compare::stats::view_on_frame(&opened.info.view, w, h)),
    };
    let info = app::VsInfo {
        model: b.name.clone(),
        stages: names,
        stage_of,
        probabilities: opened.engine.trace().probabilities(),
        view,
        size,
    };
    (info, opened.engine)
}

/// Everything the app needs, loaded and checked; the forward pass done.
#[allow(clippy::type_complexity)]
fn prepare(
    opts: &TuiOptions,
    load: impl FnOnce() -> Result<Model>,
) -> Result<(App, Engine, Option<Engine>, Keymap)> {
    let keymap = Keymap::load(opts.keys.as_deref())?;
    let themes = theme::load_all()?;
    let theme = theme::find(&themes, opts.theme.as_deref().unwrap_or("dark"))?;
    let model = load()?;
    let second = opts.vs.as_deref().map(|vs| crate::load::load(vs, None)).transpose()?;
    if let Some(b) = &second {
        crate::compare::check_labels(&model, b)?;
    }
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
    let opened = OpenedImage::open(&model, net, opts.image.as_deref(), &opts.device, opts.engine)?;
    let (mut app, engine) = opened.into_app(stage, themes, theme);
    let b_engine = match &second {
        Some(b) => {
            let opened =
                OpenedImage::open(b, b.network.clone(), opts.image.as_deref(), &opts.device, opts.engine)?;
            let (info, engine) = second_side(b, opened, &app, None);
            app.vs = Some(info);
            app.compare = app::Compare::SideBySide;
            Some(engine)
        }
        None => None,
    };
    if let Some(class) = class {
        app.set_class(class);
    }
    app.method = opts.method;
    app.smoothing = opts.smoothing;
    app.colormap = opts.colormap;
    if opts.stages == StageChoice::All {
        app.screen = Screen::StageGrid;
    }
    app.keys_help = keymap.help(Context::Image, false);
    Ok((app, engine, b_engine, keymap))
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
    let (app, engine, second, keymap) = prepared.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    let session = ImageSession::new(app, engine, second, opts.batch_size);
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, session, &keymap, ImageCache::new(picker), start);
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

/// One image in the debugger: its state and the engine thread computing its maps.
struct ImageSession {
    app: App,
    worker: Worker,
    /// What the worker was last asked for.
    last_request: Vec<worker::Job>,
}

impl ImageSession {
    fn new(app: App, engine: Engine, second: Option<Engine>, batch_size: usize) -> Self {
        Self { app, worker: Worker::spawn(engine, second, batch_size), last_request: Vec::new() }
    }

    /// Asks the worker again only when something new is wanted (or wanted first): maps
    /// arriving shrink the missing list, and that must not restart a long computation.
    fn ask(&mut self) {
        let missing = self.app.missing();
        let current = worker::Job::Map(self.app.key());
        let reprioritised = missing.first() == Some(&current) && self.last_request.first() != Some(&current);
        let asks_more = reprioritised || missing.iter().any(|k| !self.last_request.contains(k));
        if !missing.is_empty() && asks_more {
            self.worker.request(missing.clone());
            self.app.progress.get_or_insert((0, missing.len()));
            self.last_request = missing;
        }
    }

    /// Takes the maps the worker has finished.
    fn collect(&mut self) {
        while let Ok(ev) = self.worker.events.try_recv() {
            self.app.on_event(ev);
        }
    }

    /// A key over the image; what is left for the runtime (back to the table, another image)
    /// is returned.
    fn on_key(&mut self, key: &crossterm::event::KeyEvent, keymap: &Keymap) -> Option<Command> {
        self.app.status = None;
        if self.app.search_key(key) {
            return None;
        }
        match self.app.update(keymap.action(key, Context::Image)?)? {
            Command::CancelWork => {
                self.worker.cancel();
                self.last_request.clear();
                None
            }
            Command::Save => {
                save(&mut self.app);
                None
            }
            other => Some(other),
        }
    }
}

fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    mut session: ImageSession,
    keymap: &Keymap,
    mut images: ImageCache,
    start: Instant,
) -> Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let io = |e: std::io::Error| Error::io("terminal", e);
    let draw_err = |e: B::Error| Error::Terminal(format!("drawing failed: {e}"));
    let mut first_map_shown = false;
    let mut key_pressed: Option<Instant> = None;
    loop {
        session.ask();
        let app = &mut session.app;
        terminal.draw(|f| ui::draw(f, app, &mut images)).map_err(draw_err)?;
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
                    session.on_key(&key, keymap);
                }
                TermEvent::Resize(..) => terminal.autoresize().map_err(draw_err)?,
                _ => {}
            }
        }
        session.collect();
        if session.app.quit {
            return Ok(());
        }
    }
}
#[cfg(test)]
mod snapshot_tests;
