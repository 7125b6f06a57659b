//! The debugger's state and how actions change it. No drawing, no I/O, no computation: the
//! runtime feeds actions and worker events in, asks which maps are missing, and draws.

use std::collections::HashMap;
use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};
use image::RgbImage;

use crate::cam::{Method, Smoothing};
use crate::render::{self, Colormap};
use crate::trace::Prediction;

pub use super::action::Action;
use super::theme::Theme;
use super::worker::{Event, Job, MapKey, Side};
use crate::metrics::Scores;
use crate::preprocess::InputSize;

/// What the runtime must do after an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    CancelWork,
    Save,
    /// Back to the data set's table (Esc with nothing left to close).
    Back,
    /// The image `delta` rows away in the table's order.
    Step(isize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Predictions,
    Stages,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Main,
    /// Every stage for the current class and method.
    StageGrid,
    /// Every method at the current stage.
    MethodGrid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewMode {
    Overlay,
    Heatmap,
    Input,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    pub query: String,
    pub selected: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popup {
    Help,
    Search(Search),
}

/// What does not change while the app runs.
pub struct ModelInfo {
    pub model: String,
    pub arch: String,
    pub source: String,
    pub stages: Vec<String>,
    pub shapes: Vec<[usize; 3]>,
    pub labels: Arc<Vec<String>>,
    pub view: Arc<RgbImage>,
    /// A segmentation model's prediction on the view's frame, a colour per class; its
    /// predictions list holds the classes present, by their share of the pixels.
    pub segmentation: Option<Arc<RgbImage>>,
}

impl ModelInfo {
    /// The frame the maps live on: the view's.
    pub fn frame(&self) -> InputSize {
        InputSize::of_image(&self.view)
    }
}

/// The second model of `--vs`, as the image view needs it.
pub struct VsInfo {
    pub model: String,
    pub stages: Vec<String>,
    /// B's stage shown beside each of A's: the same name, else B's own default stage.
    pub stage_of: Vec<usize>,
    /// B's softmax over every class, to show beside A's predictions.
    pub probabilities: Vec<f32>,
    /// B's input crop on A's frame, under B's overlay.
    pub view: Arc<RgbImage>,
    /// The frame of B's maps (its input size).
    pub size: InputSize,
}

/// The current map of both models on A's frame.
pub struct PairMaps {
    pub a: Arc<Vec<f32>>,
    pub b: Vec<f32>,
    /// B − A.
    pub difference: Vec<f32>,
}

/// How the image view shows two models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compare {
    /// A's map only.
    #[default]
    Single,
    /// A | B | B − A.
    SideBySide,
    /// B − A alone, large.
    Difference,
}

pub struct App {
    pub info: ModelInfo,
    /// `--vs`: the second model, and how the two are shown.
    pub vs: Option<VsInfo>,
    pub compare: Compare,
    pub predictions: Vec<Prediction>,
    pub class: usize,
    pub method: Method,
    pub stage: usize,
    pub smoothing: Smoothing,
    pub focus: Focus,
    pub prediction_cursor: usize,
    pub screen: Screen,
    pub popup: Option<Popup>,
    pub view: ViewMode,
    /// Weight of the heat map in the overlay (the reference uses 0.5).
    pub opacity: f32,
    pub themes: Vec<Theme>,
    pub theme: usize,
    /// `--colormap`; `None`: the theme's.
    pub colormap: Option<Colormap>,
    /// First visible row of tiles in a grid.
    pub grid_scroll: usize,
    pub maps: HashMap<MapKey, Arc<Vec<f32>>>,
    pub scores: HashMap<MapKey, Scores>,
    pub map_ms: HashMap<MapKey, f64>,
    /// (done, total) of the work in flight.
    pub progress: Option<(usize, usize)>,
    /// (forward passes done, total) inside the map being computed, for long methods.
    pub partial: Option<(usize, usize)>,
    /// Set by Esc during work: nothing is requested again until the user asks for something.
    pub paused: bool,
    pub status: Option<(String, bool)>,
    /// (keys, what they do) for the help popup, from the key table in force.
    pub keys_help: Vec<(String, String)>,
    /// Opened from a data set's table: Esc goes back to it, n / p step through its rows.
    pub in_data_set: bool,
    pub quit: bool,
}

pub const METHODS: [Method; 13] = Method::ALL;
const OPACITY_STEP: f32 = 0.1;

impl App {
    pub fn new(
        info: ModelInfo,
        predictions: Vec<Prediction>,
        stage: usize,
        themes: Vec<Theme>,
        theme: usize,
    ) -> Self {
        let class = predictions.first().map_or(0, |p| p.index);
        Self {
            info,
            vs: None,
            compare: Compare::Single,
            predictions,
            class,
            method: Method::GradCam,
            stage,
            smoothing: Smoothing::default(),
            focus: Focus::Predictions,
            prediction_cursor: 0,
            screen: Screen::Main,
            popup: None,
            view: ViewMode::Overlay,
            opacity: 0.5,
            themes,
            theme,
            colormap: None,
            grid_scroll: 0,
            maps: HashMap::new(),
            scores: HashMap::new(),
            map_ms: HashMap::new(),
            progress: None,
            partial: None,
            paused: false,
            status: None,
            keys_help: super::keymap::Keymap::defaults().help(super::action::Context::Image, false),
            in_data_set: false,
            quit: false,
        }
    }

    pub fn theme(&self) -> &Theme {
        &self.themes[self.theme]
    }

    /// The colormap of the maps: `--colormap` if given, else the theme's.
    pub fn colormap(&self) -> Colormap {
        self.colormap.unwrap_or(self.theme().colormap)
    }

    pub fn key(&self) -> MapKey {
        MapKey {
            class: self.class,
            method: self.method,
            stage: self.stage,
            smoothing: self.smoothing,
            side: Side::A,
        }
    }

    /// The second model's map beside the current one (its stage moves with A's), with `--vs`.
    pub fn b_key(&self) -> Option<MapKey> {
        let vs = self.vs.as_ref()?;
        Some(MapKey { stage: vs.stage_of[self.stage], side: Side::B, ..self.key() })
    }

    /// Whether the main view shows both models now.
    pub fn comparing(&self) -> bool {
        self.vs.is_some() && self.compare != Compare::Single
    }

    /// The maps the current screen shows.
    pub fn wanted(&self) -> Vec<MapKey> {
        let current = self.key();
        match self.screen {
            Screen::Main if self.view == ViewMode::Input => vec![],
            Screen::Main if self.comparing() => [Some(current), self.b_key()].into_iter().flatten().collect(),
            Screen::Main => vec![current],
            Screen::StageGrid => {
                (0..self.info.stages.len()).map(|stage| MapKey { stage, ..current }).collect()
            }
            Screen::MethodGrid => METHODS.iter().map(|&method| MapKey { method, ..current }).collect(),
        }
    }

    /// Wanted maps not yet computed, the current one first.
    /// Work the current screen needs: missing maps (the current one first), then, in the method
    /// grid, the faithfulness scores of every method.
    pub fn missing(&self) -> Vec<Job> {
        if self.paused {
            return vec![];
        }
        let current = self.key();
        let wanted = self.wanted();
        let mut maps: Vec<MapKey> = wanted.iter().copied().filter(|k| !self.maps.contains_key(k)).collect();
        maps.sort_by_key(|k| *k != current);
        let mut jobs: Vec<Job> = maps.into_iter().map(Job::Map).collect();
        if self.screen == Screen::MethodGrid {
            jobs.extend(wanted.into_iter().filter(|k| !self.scores.contains_key(k)).map(Job::Scores));
            // Everything quick first: the perturbation methods take tens of seconds a map.
            let slow = |job: &Job| {
                let (Job::Map(k) | Job::Scores(k)) = job;
                *k != current && k.method.kind() == crate::cam::Kind::Perturbation
            };
            jobs.sort_by_key(slow);
        }
        jobs
    }

    /// The method with the best ROAD score among those scored at the current stage and class.
    pub fn most_faithful(&self) -> Option<Method> {
        let current = self.key();
        METHODS
            .iter()
            .filter_map(|&method| {
                self.scores.get(&MapKey { method, ..current }).map(|s| (method, s.road_combined))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(m, _)| m)
    }

    pub fn is_computing(&self) -> bool {
        self.progress.is_some()
    }

    pub fn label(&self, class: usize) -> &str {
        &self.info.labels[class]
    }

    /// Classes whose label contains the query, best matches first (the same matcher as the
    /// suggestions of `--class`).
    pub fn search_results(&self) -> Vec<usize> {
        let Some(Popup::Search(s)) = &self.popup else { return vec![] };
        crate::contract::labels_matching(&self.info.labels, &s.query)
    }

    /// Makes `class` the target, with the cursor on it if it is among the predictions.
    pub fn set_class(&mut self, class: usize) {
        self.class = class;
        if let Some(i) = self.predictions.iter().position(|p| p.index == class) {
            self.prediction_cursor = i;
        }
    }

    fn step_stage(&mut self, delta: isize) {
        let n = self.info.stages.len() as isize;
        self.stage = (self.stage as isize + delta).clamp(0, n - 1) as usize;
    }

    fn step_method(&mut self, delta: isize) {
        let n = METHODS.len() as isize;
        let i = METHODS.iter().position(|&m| m == self.method).unwrap_or(0) as isize;
        self.method = METHODS[((i + delta).rem_euclid(n)) as usize];
    }

    fn toggle_screen(&mut self, screen: Screen) {
        self.screen = if self.screen == screen { Screen::Main } else { screen };
        self.grid_scroll = 0;
    }

    pub fn update(&mut self, action: Action) -> Option<Command> {
        // Anything but Esc is the user asking for something: resume requesting maps.
        if action != Action::Cancel {
            self.paused = false;
        }
        if let Some(Popup::Help) = self.popup {
            if matches!(action, Action::Cancel | Action::Help | Action::Quit) {
                self.popup = None;
                if action == Action::Quit {
                    self.quit = true;
                }
            }
            return None;
        }
        match action {
            Action::Quit => self.quit = true,
            Action::Cancel => {
                if self.is_computing() {
                    self.paused = true;
                    self.progress = None;
                    self.partial = None;
                    self.status = Some(("computation cancelled".into(), false));
                    return Some(Command::CancelWork);
                }
                if self.screen != Screen::Main {
                    self.screen = Screen::Main;
                } else if self.in_data_set {
                    return Some(Command::Back);
                }
            }
            Action::Help => self.popup = Some(Popup::Help),
            Action::PrevStage => self.step_stage(-1),
            Action::NextStage => self.step_stage(1),
            Action::Down | Action::Up => {
                let delta = if action == Action::Down { 1 } else { -1 };
                match (self.screen, self.focus) {
                    (Screen::Main, Focus::Predictions) => {
                        let n = self.predictions.len() as isize;
                        self.prediction_cursor =
                            (self.prediction_cursor as isize + delta).clamp(0, n - 1) as usize;
                    }
                    (Screen::Main, Focus::Stages) => self.step_stage(delta),
                    _ => self.grid_scroll = (self.grid_scroll as isize + delta).max(0) as usize,
                }
            }
            Action::ToggleFocus => {
                self.focus = match self.focus {
                    Focus::Predictions => Focus::Stages,
                    Focus::Stages => Focus::Predictions,
                }
            }
            Action::Select => {
                if self.focus == Focus::Predictions {
                    if let Some(p) = self.predictions.get(self.prediction_cursor) {
                        self.class = p.index;
                    }
                }
            }
            Action::Pick(n) => {
                if let Some(p) = self.predictions.get(n) {
                    self.class = p.index;
                    self.prediction_cursor = n;
                }
            }
            Action::Search => self.popup = Some(Popup::Search(Search { query: String::new(), selected: 0 })),
            Action::NextMethod => self.step_method(1),
            Action::PrevMethod => self.step_method(-1),
            Action::StageGrid => self.toggle_screen(Screen::StageGrid),
            Action::MethodGrid => self.toggle_screen(Screen::MethodGrid),
            Action::CycleView => {
                self.view = match self.view {
                    ViewMode::Overlay => ViewMode::Heatmap,
                    ViewMode::Heatmap => ViewMode::Input,
                    ViewMode::Input => ViewMode::Overlay,
                }
            }
            Action::CycleCompare => match self.vs {
                Some(_) => {
                    self.compare = match self.compare {
                        Compare::Single => Compare::SideBySide,
                        Compare::SideBySide => Compare::Difference,
                        Compare::Difference => Compare::Single,
                    }
                }
                None => {
                    self.status =
                        Some(("v compares two models: open a second one with --vs MODEL".into(), false));
                }
            },
            Action::OpacityUp => self.opacity = (self.opacity + OPACITY_STEP).min(1.0),
            Action::OpacityDown => self.opacity = (self.opacity - OPACITY_STEP).max(0.0),
            Action::NextTheme => {
                self.theme = (self.theme + 1) % self.themes.len();
                let t = self.theme();
                let about =
                    if t.description.is_empty() { String::new() } else { format!(": {}", t.description) };
                self.status = Some((format!("theme {}{about}", t.name), false));
            }
            Action::ToggleAugSmooth => self.smoothing.aug = !self.smoothing.aug,
            Action::ToggleEigenSmooth => self.smoothing.eigen = !self.smoothing.eigen,
            Action::Save => return Some(Command::Save),
            Action::NextImage | Action::PrevImage if self.in_data_set => {
                return Some(Command::Step(if action == Action::NextImage { 1 } else { -1 }));
            }
            Action::NextImage | Action::PrevImage => {
                self.status =
                    Some(("n / p step through a data set: open a folder (camscope DIR)".into(), false));
            }
            // The table's own actions: the keymap never sends them over an image.
            Action::Top
            | Action::Bottom
            | Action::PageUp
            | Action::PageDown
            | Action::Open
            | Action::SortBy(_)
            | Action::WrongOnly
            | Action::CycleChange
            | Action::SameTrue
            | Action::SamePredicted
            | Action::Confusions => {}
        }
        None
    }

    /// What the person had chosen in the image before this one: the next image opens in the
    /// same method, stage, view and screen (its own target class).
    pub fn carry_over(&mut self, before: &App) {
        self.method = before.method;
        if before.stage < self.info.stages.len() {
            self.stage = before.stage;
        }
        self.smoothing = before.smoothing;
        self.focus = before.focus;
        self.screen = before.screen;
        self.view = before.view;
        self.compare = before.compare;
        self.opacity = before.opacity;
        self.theme = before.theme;
        self.colormap = before.colormap;
    }

    /// Typing while the search popup is open. Returns false if the popup is not open.
    pub fn search_key(&mut self, key: &KeyEvent) -> bool {
        let results = self.search_results();
        let Some(Popup::Search(s)) = &mut self.popup else { return false };
        match key.code {
            KeyCode::Esc => self.popup = None,
            KeyCode::Enter => {
                if let Some(&class) = results.get(s.selected) {
                    self.popup = None;
                    self.paused = false;
                    self.set_class(class);
                }
            }
            KeyCode::Down => s.selected = (s.selected + 1).min(results.len().saturating_sub(1)),
            KeyCode::Up => s.selected = s.selected.saturating_sub(1),
            KeyCode::Backspace => {
                s.query.pop();
                s.selected = 0;
            }
            KeyCode::Char(c) => {
                s.query.push(c);
                s.selected = 0;
            }
            _ => {}
        }
        true
    }

    pub fn on_event(&mut self, event: Event) {
        match event {
            Event::Scores { key, scores } => {
                self.scores.insert(key, scores);
            }
            Event::Map { key, map, ms } => {
                self.maps.insert(key, map);
                self.map_ms.insert(key, ms);
            }
            Event::Progress { done, total } => {
                self.progress = (done < total && !self.paused).then_some((done, total));
                self.partial = None;
            }
            Event::Partial { done, total } => {
                self.partial = (done < total && !self.paused).then_some((done, total));
            }
            Event::Failed { key, message } => {
                let stage = match (key.side, &self.vs) {
                    (Side::B, Some(vs)) => format!("{} of {}", vs.stages[key.stage], vs.model),
                    _ => self.info.stages[key.stage].clone(),
                };
                self.status = Some((format!("{} at {stage}: {message}", key.method), true));
                self.progress = None;
                self.paused = true;
            }
        }
    }

    /// The picture of `key` in the current view mode, if its map is ready.
    pub fn picture(&self, key: &MapKey) -> Option<RgbImage> {
        let view = &self.info.view;
        if self.view == ViewMode::Input {
            return Some((**view).clone());
        }
        let map = self.maps.get(key)?;
        let colormap = self.colormap();
        Some(match self.view {
            ViewMode::Overlay => render::overlay(view, map, colormap, self.opacity),
            _ => render::heatmap(map, view.width(), view.height(), colormap),
        })
    }

    /// A file name for `s` that says what the picture is.
    /// Both models' maps of the current key on A's frame, and B − A, once both are computed.
    pub fn pair_maps(&self) -> Option<PairMaps> {
        let vs = self.vs.as_ref()?;
        let a = self.maps.get(&self.key())?.clone();
        let b = self.maps.get(&self.b_key()?)?;
        let b = crate::compare::stats::on_frame(b, vs.size, self.info.frame());
        let difference = crate::compare::stats::difference(&a, &b);
        Some(PairMaps { a, b, difference })
    }

    /// The picture of the comparison view: A | B | B − A side by side, or B − A alone.
    pub fn comparison_picture(&self) -> Option<RgbImage> {
        let vs = self.vs.as_ref()?;
        let PairMaps { a, b, difference } = self.pair_maps()?;
        let scale = crate::compare::stats::max_abs(&difference);
        let diff = render::diverging_overlay(&self.info.view, &difference, scale);
        if self.compare == Compare::Difference {
            return Some(diff);
        }
        let paint = |view: &RgbImage, map: &[f32]| match self.view {
            ViewMode::Overlay => render::overlay(view, map, self.colormap(), self.opacity),
            _ => render::heatmap(map, view.width(), view.height(), self.colormap()),
        };
        let tiles = [paint(&self.info.view, &a), paint(&vs.view, &b), diff];
        let (w, h) = self.info.view.dimensions();
        let gap = (w / 32).max(1);
        let bg = match self.theme().background {
            Some(ratatui::style::Color::Rgb(r, g, b)) => [r, g, b],
            _ => [0, 0, 0],
        };
        let mut sheet = RgbImage::from_pixel(3 * w + 2 * gap, h, image::Rgb(bg));
        for (i, tile) in tiles.iter().enumerate() {
            image::imageops::replace(&mut sheet, tile, (i as u32 * (w + gap)) as i64, 0);
        }
        Some(sheet)
    }

    pub fn save_name(&self) -> String {
        let stem = std::path::Path::new(&self.info.source)
            .file_stem()
            .map_or("sample".into(), |s| s.to_string_lossy().replace(|c: char| !c.is_alphanumeric(), ""));
        let stem = if stem.is_empty() { "sample".to_string() } else { stem };
        let view = match self.view {
            ViewMode::Overlay => "overlay",
            ViewMode::Heatmap => "heatmap",
            ViewMode::Input => "input",
        };
        format!(
            "camscope-{stem}-{}-{}-{}-{view}.png",
            self.method.name().replace('+', "p"),
            self.info.stages[self.stage],
            self.class
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trace::Prediction;

    pub fn app() -> App {
        let labels: Vec<String> = (0..20).map(|i| format!("label {i}")).collect();
        let info = ModelInfo {
            model: "test".into(),
            arch: "test-arch".into(),
            source: "x.png".into(),
            stages: vec!["a".into(), "b".into(), "c".into()],
            shapes: vec![[4, 8, 8], [8, 4, 4], [8, 2, 2]],
            labels: Arc::new(labels),
            view: Arc::new(RgbImage::new(8, 8)),
            segmentation: None,
        };
        let predictions = (0..5)
            .map(|i| Prediction {
                index: 10 + i,
                label: format!("label {}", 10 + i),
                logit: 5.0 - i as f32,
                prob: 0.1,
            })
            .collect();
        App::new(info, predictions, 2, super::super::theme::load_all().unwrap(), 0)
    }

    #[test]
    fn stage_keys_move_and_clamp() {
        let mut a = app();
        a.update(Action::NextStage);
        assert_eq!(a.stage, 2);
        a.update(Action::PrevStage);
        a.update(Action::PrevStage);
        a.update(Action::PrevStage);
        assert_eq!(a.stage, 0);
    }

    #[test]
    fn picking_predictions_and_methods() {
        let mut a = app();
        a.update(Action::Pick(2));
        assert_eq!(a.class, 12);
        a.update(Action::Down);
        a.update(Action::Select);
        assert_eq!(a.class, 13);
        a.update(Action::PrevMethod);
        assert_eq!(a.method, *METHODS.last().unwrap());
        a.update(Action::NextMethod);
        a.update(Action::NextMethod);
        assert_eq!(a.method, Method::HiResCam);
    }

    #[test]
    fn grids_want_every_stage_or_method_current_first() {
        let mut a = app();
        a.update(Action::StageGrid);
        let m = a.missing();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], Job::Map(a.key()));
        a.update(Action::MethodGrid);
        let jobs = a.missing();
        assert_eq!(jobs.iter().filter(|j| matches!(j, Job::Map(_))).count(), METHODS.len());
        assert_eq!(jobs.iter().filter(|j| matches!(j, Job::Scores(_))).count(), METHODS.len());
        a.update(Action::MethodGrid);
        assert_eq!(a.screen, Screen::Main);
    }

    #[test]
    fn esc_cancels_work_then_pauses_requests() {
        let mut a = app();
        a.on_event(Event::Progress { done: 0, total: 1 });
        assert_eq!(a.update(Action::Cancel), Some(Command::CancelWork));
        assert!(a.missing().is_empty());
        a.update(Action::NextMethod);
        assert!(!a.missing().is_empty());
    }

    #[test]
    fn the_theme_key_says_which_theme_is_on() {
        let mut a = app();
        a.update(Action::NextTheme);
        let (message, _) = a.status.clone().expect("a message");
        assert!(message.starts_with(&format!("theme {}: ", a.theme().name)), "{message}");
    }

    #[test]
    fn search_picks_a_class_by_name() {
        let mut a = app();
        a.update(Action::Search);
        for c in "bel 7".chars() {
            a.search_key(&KeyEvent::from(KeyCode::Char(c)));
        }
        assert_eq!(a.search_results(), vec![7]);
        a.search_key(&KeyEvent::from(KeyCode::Enter));
        assert_eq!(a.class, 7);
        assert!(a.popup.is_none());
    }
}
