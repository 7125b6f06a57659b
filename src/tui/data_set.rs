//! The debugger on a data set: `camscope DIR` (the sweep runs on its own thread and fills the
//! table as it goes) or `camscope results.csv` (the rows of an earlier `camscope sweep`). Enter
//! opens a row in the image view; n / p step through the table's order there; Esc comes back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use image::RgbImage;
use ratatui::backend::Backend;
use ratatui::Terminal;

use super::action::Context;
use super::app::{Command, Screen};
use super::browser::{Browser, BrowserCommand, Preview, SweepState};
use super::feeds::{FeedEvent, PreviewLoader, PreviewRequest, SweepFeed};
use super::keymap::Keymap;
use super::ui::{self, ImageCache};
use super::{graphics, second_side, theme, ImageSession, OpenedImage, TuiOptions};
use crate::contract::{ImageClassifier, Model};
use crate::dataset::results::{self, Writer};
use crate::dataset::{Annotations, Columns, DataSet, Item, Row, SweepOptions, Sweeper};
use crate::explain::StageChoice;
use crate::{Error, Result};

/// What a data set adds to [`TuiOptions`]: where its rows come from and go.
#[derive(Debug, Clone, Default)]
pub struct DataSetOptions {
    /// A folder, a CSV list, or a results file of `camscope sweep` (.csv with its columns,
    /// .jsonl).
    pub input: PathBuf,
    pub annotations: Annotations,
    /// Also write the rows here (and take the rows already in it instead of computing them).
    pub out: Option<PathBuf>,
    /// Where a results file's images are (default: the results file's folder).
    pub images: Option<PathBuf>,
    pub top_k: usize,
    pub tolerance: f64,
}

/// Whether `path` is a results file of `camscope sweep` rather than a data set to sweep.
pub fn is_results_file(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("jsonl" | "ndjson") => true,
        // A CSV list of a data set starts `path,label`; a results file `path,true_index,…`.
        Some("csv") => std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.starts_with("path,true_index")))
            .unwrap_or(false),
        _ => false,
    }
}

/// Model B of `--vs`: its network with the compared stage among its stages, and that stage.
struct SecondModel {
    model: Arc<Model>,
    network: Arc<dyn ImageClassifier>,
    stage: usize,
}

/// Everything checked and loaded before the terminal is taken over.
struct Prepared {
    model: Arc<Model>,
    second: Option<SecondModel>,
    /// The model's network with the swept stage among its stages, and that stage.
    network: Arc<dyn ImageClassifier>,
    stage: usize,
    sweep: SweepOptions,
    browser: Browser,
    keymap: Keymap,
    /// What is left to sweep, and where its rows go.
    items: Vec<Item>,
    writer: Option<Writer>,
    /// Where rows' relative paths lead.
    root: PathBuf,
    /// Boxes, masks and labels of the listed images, for opening and previews.
    listed: HashMap<String, Item>,
}

fn prepare(
    opts: &TuiOptions,
    set: &DataSetOptions,
    load: impl FnOnce() -> Result<Model>,
) -> Result<Prepared> {
    let keymap = Keymap::load(opts.keys.as_deref())?;
    let themes = theme::load_all()?;
    let theme = theme::find(&themes, opts.theme.as_deref().unwrap_or("dark"))?;
    let model = Arc::new(load()?);
    let b = opts.vs.as_deref().map(|vs| crate::load::load(vs, None)).transpose()?.map(Arc::new);
    let mut sweep = SweepOptions {
        device: opts.device.clone(),
        engine: opts.engine,
        method: opts.method,
        stage: match &opts.stages {
            StageChoice::Named(name) => Some(name.clone()),
            StageChoice::Default | StageChoice::All => None,
        },
        class: opts.class.clone(),
        top_k: set.top_k.max(1),
        tolerance: set.tolerance,
        batch_size: opts.batch_size,
        smoothing: opts.smoothing,
        ..SweepOptions::default()
    };
    // Resolved once: the feed and preview threads get the stage by name, the image view the
    // network that has it.
    let mut sweeper = Sweeper::new(&model, sweep.clone())?;
    if let Some(b) = &b {
        sweeper = sweeper.versus(b)?;
    }
    sweep.stage = Some(sweeper.stage_name().to_string());
    let (network, stage) = sweeper.network_and_stage();
    let second = b.as_ref().zip(sweeper.vs_network_and_stage()).map(|(b, (network, stage))| SecondModel {
        model: b.clone(),
        network,
        stage,
    });
    let versus = sweeper.vs_model_and_stage().map_or(String::new(), |(b, at)| format!(" vs {b} at {at}"));
    let run = format!("{} at {} · {}{versus}", sweeper.method_name(), sweeper.stage_name(), model.name);
    let labels = Arc::new(model.labels.clone());
    let check_rows = |path: &Path, rows: &[Row]| results::check_same_run(path, rows, &sweeper);

    if is_results_file(&set.input) {
        let rows = results::read(&set.input)?;
        if rows.is_empty() {
            return Err(Error::Results { path: set.input.clone(), message: "holds no rows".into() });
        }
        // Shown, not added to: a sweep of two models shows its comparison columns, and with
        // `--vs` (the same model B) opens both.
        match second {
            Some(_) => check_rows(&set.input, &rows)?,
            None => results::check_same_model(&set.input, &rows, &sweeper)?,
        }
        let root = set.images.clone().unwrap_or_else(|| {
            set.input.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
        });
        let title = format!("{} · {} rows of camscope sweep", set.input.display(), rows.len());
        let mut browser = Browser::new(title, run, labels, themes, theme);
        for row in rows {
            browser.table.push(row, None);
        }
        browser.table.refresh();
        return Ok(Prepared {
            model,
            second,
            network,
            stage,
            sweep,
            browser,
            keymap,
            items: vec![],
            writer: None,
            root,
            listed: HashMap::new(),
        });
    }

    let data = DataSet::open(&set.input, &model.labels, &set.annotations)?;
    let earlier = match &set.out {
        Some(out) if out.exists() => {
            let rows = results::read(out)?;
            check_rows(out, &rows)?;
            rows
        }
        _ => vec![],
    };
    let writer = set
        .out
        .as_deref()
        .map(|out| {
            Writer::open(out, Columns { k: set.top_k.max(1), metrics: false, vs: second.is_some() }, true)
        })
        .transpose()?;
    let done: std::collections::HashSet<&str> = earlier.iter().map(|r| r.path.as_str()).collect();
    let items: Vec<Item> = data.items.iter().filter(|it| !done.contains(it.name.as_str())).cloned().collect();
    let skipped = data.skipped_summary().map_or(String::new(), |s| format!(" · {s}"));
    let title = format!(
        "{} · {} · {} images{skipped}",
        set.input.display(),
        data.layout.describe(),
        data.items.len()
    );
    let mut browser = Browser::new(title, run, labels, themes, theme);
    for row in earlier {
        browser.table.push(row, None);
    }
    browser.table.refresh();
    browser.sweep =
        SweepState::Running(crate::dataset::Progress { total: items.len(), ..Default::default() });
    let listed = data.items.iter().map(|it| (it.name.clone(), it.clone())).collect();
    let root = if set.input.is_dir() {
        set.input.clone()
    } else {
        set.input.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    Ok(Prepared { model, second, network, stage, sweep, browser, keymap, items, writer, root, listed })
}

/// Opens the debugger on a data set; the terminal is restored however it ends.
pub fn run_data_set(
    opts: &TuiOptions,
    set: &DataSetOptions,
    load: impl FnOnce() -> Result<Model>,
) -> Result<()> {
    let prepared = prepare(opts, set, load)?;
    let picker = graphics(opts.protocol);
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, prepared, opts, ImageCache::new(picker));
    ratatui::restore();
    result
}

/// An image being opened off the UI thread: by model A, and by B with `--vs`.
struct Opening {
    name: String,
    done: Receiver<Result<(OpenedImage, Option<OpenedImage>)>>,
}

struct Runtime<'a> {
    p: Prepared,
    opts: &'a TuiOptions,
    feed: Option<SweepFeed>,
    previews: PreviewLoader,
    /// Decoded views of rows seen lately, so going back and forth is instant.
    views: HashMap<String, Arc<RgbImage>>,
    requested_preview: Option<String>,
    image: Option<(String, ImageSession)>,
    /// A newer opening replaces an older one (its result is dropped with its channel).
    opening: Option<Opening>,
}

/// Previews kept before the cache starts over.
const VIEW_CACHE: usize = 64;

impl Runtime<'_> {
    fn item(&self, row: &Row) -> Item {
        self.p.listed.get(&row.path).cloned().unwrap_or_else(|| Item {
            path: self.p.root.join(&row.path),
            name: row.path.clone(),
            label: row.true_index,
            boxes: vec![],
            mask: None,
            problem: None,
        })
    }

    /// Takes the sweep's new rows, and applies them and any new sort or filter to the table
    /// (a results file has no sweep, but its filters change too).
    fn take_feed(&mut self) {
        let browser = &mut self.p.browser;
        let Some(feed) = &self.feed else {
            browser.table.refresh();
            return;
        };
        // At most a frame's worth, so a burst of rows never holds a key press up.
        for _ in 0..256 {
            match feed.events.try_recv() {
                Ok(FeedEvent::Row { row, thumb }) => browser.table.push(*row, thumb),
                Ok(FeedEvent::Progress(p)) => browser.sweep = SweepState::Running(p),
                Ok(FeedEvent::Finished(p)) => browser.sweep = SweepState::Finished(p),
                Ok(FeedEvent::Failed(e)) => browser.sweep = SweepState::Failed(e),
                Err(_) => break,
            }
        }
        browser.table.refresh();
    }

    /// The selected row's preview: cached, else asked of the preview thread.
    fn update_preview(&mut self) {
        while let Ok(ready) = self.previews.ready.try_recv() {
            if let Some(thumb) = ready.thumb {
                self.p.browser.table.set_thumb(&ready.name, thumb);
            }
            if let Ok(view) = &ready.view {
                if self.views.len() >= VIEW_CACHE {
                    self.views.clear();
                }
                self.views.insert(ready.name.clone(), view.clone());
            }
            if self.p.browser.preview.as_ref().is_some_and(|p| p.path == ready.name) {
                self.p.browser.preview = Some(Preview {
                    path: ready.name,
                    view: ready.view.as_ref().ok().cloned(),
                    error: ready.view.err(),
                });
            }
        }
        let Some(entry) = self.p.browser.table.selected() else {
            self.p.browser.preview = None;
            return;
        };
        let name = entry.row.path.clone();
        let wants_map = entry.thumb.is_none() && entry.row.error.is_none();
        if self.requested_preview.as_deref() == Some(&name) {
            return;
        }
        let cached = self.views.get(&name).cloned();
        let keep_error =
            self.p.browser.preview.as_ref().filter(|p| p.path == name).and_then(|p| p.error.clone());
        self.p.browser.preview =
            Some(Preview { path: name.clone(), view: cached.clone(), error: keep_error });
        if cached.is_none() || wants_map {
            let item = self.item(&entry.row);
            self.previews.request(PreviewRequest { name: name.clone(), item, with_map: wants_map });
        }
        self.requested_preview = Some(name);
    }

    fn open_selected(&mut self) {
        let Some(entry) = self.p.browser.table.selected() else { return };
        let row = entry.row.clone();
        if let Some(error) = &row.error {
            self.p.browser.status = Some((format!("{}: {error}", row.path), true));
            if let Some((_, s)) = &mut self.image {
                s.app.status = Some((format!("{}: {error}", row.path), true));
            }
            return;
        }
        let item = self.item(&row);
        let (model, network, device, kind) =
            (self.p.model.clone(), self.p.network.clone(), self.opts.device.clone(), self.opts.engine);
        let second = self.p.second.as_ref().map(|b| (b.model.clone(), b.network.clone()));
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let image = Some(item.path.as_path());
            let opened = OpenedImage::open(&model, network, image, &device, kind).and_then(|a| {
                let b = second.map(|(b, network)| OpenedImage::open(&b, network, image, &device, kind));
                Ok((a, b.transpose()?))
            });
            let _ = tx.send(opened);
        });
        self.opening = Some(Opening { name: row.path.clone(), done });
        self.p.browser.status = Some((format!("opening {}…", row.path), false));
    }

    fn take_opened(&mut self) {
        let Some(opening) = &self.opening else { return };
        let Ok(outcome) = opening.done.try_recv() else { return };
        let name = opening.name.clone();
        self.opening = None;
        match outcome {
            Ok((opened, opened_b)) => {
                let b = &self.p.browser;
                let (mut app, engine) = opened.into_app(Some(self.p.stage), b.themes.clone(), b.theme);
                let b_engine = match (&self.p.second, opened_b) {
                    (Some(second), Some(opened_b)) => {
                        let (info, engine) = second_side(&second.model, opened_b, &app, Some(second.stage));
                        app.vs = Some(info);
                        app.compare = super::app::Compare::SideBySide;
                        Some(engine)
                    }
                    _ => None,
                };
                app.in_data_set = true;
                app.keys_help = self.p.keymap.help(Context::Image, true);
                app.method = self.opts.method;
                app.smoothing = self.opts.smoothing;
                app.colormap = self.opts.colormap;
                match &self.image {
                    Some((_, before)) => app.carry_over(&before.app),
                    None if self.opts.stages == StageChoice::All => app.screen = Screen::StageGrid,
                    None => {}
                }
                let row = self.p.browser.table.selected().map(|e| e.row.clone());
                if let Some(target) = row.as_ref().and_then(|r| r.target_index) {
                    app.set_class(target);
                }
                // A results file of `sweep --vs` opened without --vs: only A can be shown.
                let hint = match (&row, &self.p.second) {
                    (Some(r), None) if r.vs.is_some() => " · model A only: add --vs MODEL to see B beside it",
                    _ => "",
                };
                let position = format!(
                    "{} · {}/{} in the table{hint}",
                    name,
                    self.p.browser.table.cursor() + 1,
                    self.p.browser.table.shown()
                );
                app.status = Some((position, false));
                self.image = Some((name, ImageSession::new(app, engine, b_engine, self.opts.batch_size)));
            }
            Err(e) => {
                let message = format!("cannot open {name}: {e}");
                match &mut self.image {
                    Some((_, s)) => s.app.status = Some((message, true)),
                    None => self.p.browser.status = Some((message, true)),
                }
            }
        }
    }

    fn on_key(&mut self, key: &crossterm::event::KeyEvent) {
        if let Some((_, session)) = &mut self.image {
            match session.on_key(key, &self.p.keymap) {
                Some(Command::Back) => {
                    if let Some((_, s)) = self.image.take() {
                        self.p.browser.theme = s.app.theme;
                    }
                    self.requested_preview = None;
                }
                Some(Command::Step(delta)) => {
                    if self.p.browser.table.step(delta).is_some() {
                        self.open_selected();
                    } else {
                        let end = if delta > 0 { "the last" } else { "the first" };
                        session.app.status = Some((format!("this is {end} image of the table"), false));
                    }
                }
                _ => {}
            }
            return;
        }
        let browser = &mut self.p.browser;
        browser.status = None;
        if browser.search_key(key) {
            return;
        }
        if let Some(action) = self.p.keymap.action(key, Context::Table) {
            if browser.update(action) == Some(BrowserCommand::Open) {
                self.open_selected();
            }
        }
    }

    fn busy(&self, images: &ImageCache) -> bool {
        matches!(self.p.browser.sweep, SweepState::Running(_))
            || self.opening.is_some()
            || self.image.as_ref().is_some_and(|(_, s)| s.app.is_computing())
            || images.is_encoding()
            || self.p.browser.preview.as_ref().is_some_and(|p| p.view.is_none() && p.error.is_none())
    }
}

fn session_quit(image: &Option<(String, ImageSession)>) -> bool {
    image.as_ref().is_some_and(|(_, s)| s.app.quit)
}

fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    p: Prepared,
    opts: &TuiOptions,
    mut images: ImageCache,
) -> Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let io = |e: std::io::Error| Error::io("terminal", e);
    let draw_err = |e: B::Error| Error::Terminal(format!("drawing failed: {e}"));
    let previews = PreviewLoader::spawn(p.model.clone(), p.sweep.clone());
    let mut p = p;
    let feed = (!p.items.is_empty()).then(|| {
        let versus = p.second.as_ref().map(|b| b.model.clone());
        SweepFeed::spawn(
            p.model.clone(),
            versus,
            p.sweep.clone(),
            std::mem::take(&mut p.items),
            p.writer.take(),
        )
    });
    if feed.is_none() && matches!(p.browser.sweep, SweepState::Running(_)) {
        p.browser.sweep = SweepState::Finished(crate::dataset::Progress::default());
    }
    let mut rt = Runtime {
        p,
        opts,
        feed,
        previews,
        views: HashMap::new(),
        requested_preview: None,
        image: None,
        opening: None,
    };
    let mut key_pressed: Option<Instant> = None;
    loop {
        rt.take_feed();
        rt.take_opened();
        if let Some((_, session)) = &mut rt.image {
            session.ask();
        } else {
            rt.update_preview();
        }
        if let Some(feed) = &rt.feed {
            let interactive =
                rt.opening.is_some() || rt.image.as_ref().is_some_and(|(_, s)| s.app.is_computing());
            feed.hold.store(interactive, Ordering::Relaxed);
        }
        match &rt.image {
            Some((_, session)) => terminal.draw(|f| ui::draw(f, &session.app, &mut images)),
            None => terminal.draw(|f| ui::draw_browser(f, &rt.p.browser, &mut images)),
        }
        .map_err(draw_err)?;
        if let Some(t) = key_pressed.take() {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if rt.image.is_none() && rt.p.browser.status.is_none() {
                rt.p.browser.status = Some((format!("redrawn {ms:.1} ms after the key"), false));
            }
        }
        let timeout = if rt.busy(&images) { Duration::from_millis(30) } else { Duration::from_millis(250) };
        if event::poll(timeout).map_err(io)? {
            match event::read().map_err(io)? {
                TermEvent::Key(key) if key.kind == KeyEventKind::Press => {
                    key_pressed = Some(Instant::now());
                    rt.on_key(&key);
                }
                TermEvent::Resize(..) => terminal.autoresize().map_err(draw_err)?,
                _ => {}
            }
        }
        if let Some((_, session)) = &mut rt.image {
            session.collect();
        }
        if rt.p.browser.quit || session_quit(&rt.image) {
            return Ok(());
        }
    }
}
