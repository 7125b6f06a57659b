//! The sweep: every image of a data set through the model, one [`Row`] each. Decoding and
//! preprocessing run on their own thread, ahead of the network, so the network never waits for
//! a JPEG; rows stream out as they are finished and nothing but the current image's maps is
//! held, so memory stays flat however many images there are.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::localisation::{energy_inside, pointing_hit};
use super::region::Region;
use super::row::{Change, Ranked, Row, Versus};
use super::source::Item;
use crate::cam::{Control, Method, Smoothing};
use crate::compare;
use crate::contract::{with_stage, EngineKind, ImageClassifier, Model};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::metrics;
use crate::preprocess::{self, ModelInput};
use crate::render::{self, Colormap};

/// What each image is explained with: `explain`'s options, one stage, one target per image.
#[derive(Clone)]
pub struct SweepOptions {
    pub device: candle_core::Device,
    pub engine: EngineKind,
    pub method: Method,
    /// A stage name; `None`: the last stage whose output is still spatial.
    pub stage: Option<String>,
    /// One class explained in every image; `None`: each image's true class where it has one,
    /// else its top prediction.
    pub class: Option<String>,
    pub top_k: usize,
    /// Pointing game: a hit within this many pixels of the S×S frame counts.
    pub tolerance: f64,
    /// `--metrics`: faithfulness scores with this many deletion/insertion steps.
    pub metric_steps: Option<usize>,
    /// `--save-maps`: each image's map as `.npy` and its overlay as `.png`, mirroring the paths.
    pub save_maps: Option<PathBuf>,
    pub colormap: Colormap,
    pub batch_size: usize,
    pub smoothing: Smoothing,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            device: candle_core::Device::Cpu,
            engine: EngineKind::Fast,
            method: Method::GradCam,
            stage: None,
            class: None,
            top_k: 5,
            tolerance: 0.0,
            metric_steps: None,
            save_maps: None,
            colormap: Colormap::Jet,
            batch_size: Control::DEFAULT_BATCH,
            smoothing: Smoothing::default(),
        }
    }
}

/// A model made ready to sweep: the stage resolved, the target rule fixed.
pub struct Sweeper<'m> {
    model: &'m Model,
    network: Arc<dyn ImageClassifier>,
    stage: usize,
    class: Option<usize>,
    opts: SweepOptions,
    vs: Option<Second<'m>>,
}

/// Model B of `--vs`, tapped at the stage compared with A's.
struct Second<'m> {
    model: &'m Model,
    network: Arc<dyn ImageClassifier>,
    stage: usize,
}

impl<'m> Sweeper<'m> {
    /// Checks the options against the model before any image is read.
    pub fn new(model: &'m Model, opts: SweepOptions) -> Result<Self> {
        model.require_classifier("a sweep over a data set")?;
        let (network, stage) = match &opts.stage {
            Some(name) => with_stage(&model.network, name)?,
            None => (model.network.clone(), model.default_stage(opts.engine)?),
        };
        crate::engine::check_supported(network.as_ref(), opts.method)?;
        let class = opts.class.as_deref().map(|c| model.parse_class(c)).transpose()?;
        if let Some(dir) = &opts.save_maps {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(Sweeper { model, network, stage, class, opts, vs: None })
    }

    /// Also runs `b` on every image (`--vs`), for the same target as A, at A's stage where B has
    /// a stage of that name, else at B's own default stage. Their classes must agree.
    pub fn versus(mut self, b: &'m Model) -> Result<Self> {
        compare::check_labels(self.model, b)?;
        let names = |n: &dyn ImageClassifier| n.stages().iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let b_default = b.default_stage(self.opts.engine)?;
        let pair = compare::pair_stages(
            &names(self.network.as_ref()),
            &names(b.network.as_ref()),
            self.stage,
            b_default,
            &crate::explain::StageChoice::Default,
        )?
        .remove(0);
        let (network, stage) = with_stage(&b.network, &pair.b)?;
        crate::engine::check_supported(network.as_ref(), self.opts.method)?;
        self.vs = Some(Second { model: b, network, stage });
        Ok(self)
    }

    /// Model B's name and stage, with `--vs`.
    pub fn vs_model_and_stage(&self) -> Option<(&str, &str)> {
        self.vs.as_ref().map(|b| (b.model.name.as_str(), b.network.stages()[b.stage].name.as_str()))
    }

    /// Model B's network with its compared stage among its stages, and that stage's index, with
    /// `--vs`: what the debugger opens B with beside A.
    pub fn vs_network_and_stage(&self) -> Option<(Arc<dyn ImageClassifier>, usize)> {
        self.vs.as_ref().map(|b| (b.network.clone(), b.stage))
    }

    /// The stage every map is taken at.
    pub fn stage_name(&self) -> &str {
        &self.network.stages()[self.stage].name
    }

    /// The model's network with the swept stage among its stages, and that stage's index: what
    /// the debugger opens an image of the data set with.
    pub fn network_and_stage(&self) -> (Arc<dyn ImageClassifier>, usize) {
        (self.network.clone(), self.stage)
    }

    pub fn model(&self) -> &Model {
        self.model
    }

    pub fn method_name(&self) -> &'static str {
        self.opts.method.name()
    }

    fn row_frame(&self, item: &Item) -> Row {
        Row {
            path: item.name.clone(),
            true_index: item.label,
            true_label: item.label.map(|l| self.model.label(l).to_string()),
            model: self.model.name.clone(),
            method: self.opts.method.name().to_string(),
            stage: self.stage_name().to_string(),
            ..Row::default()
        }
    }

    /// The row of one image; whatever fails is the row's error, never the sweep's.
    pub fn row(&self, item: &Item, input: Result<ModelInput>, ctl: &Control) -> Result<Row> {
        self.row_and_map(item, input, ctl).map(|(row, _)| row)
    }

    /// The row and, where the image had one, its map (S×S, the input's frame): the debugger shows
    /// it beside the table; `sweep` only writes it with `--save-maps`.
    pub fn row_and_map(
        &self,
        item: &Item,
        input: Result<ModelInput>,
        ctl: &Control,
    ) -> Result<(Row, Option<Vec<f32>>)> {
        let outcome = input.and_then(|input| self.explain(item, &input, ctl));
        match outcome {
            Ok((row, map)) => Ok((row, Some(map))),
            Err(Error::Cancelled) => Err(Error::Cancelled),
            Err(e) => {
                Ok((Row { error: Some(e.to_string().trim().to_string()), ..self.row_frame(item) }, None))
            }
        }
    }

    fn explain(&self, item: &Item, input: &ModelInput, ctl: &Control) -> Result<(Row, Vec<f32>)> {
        if let Some(problem) = &item.problem {
            return Err(Error::Input { path: item.path.clone(), message: problem.clone() });
        }
        let (w, h) = input.geometry.original;
        if let Some(problem) = item.boxes.iter().find_map(|b| b.problem(w, h)) {
            return Err(Error::Input { path: item.path.clone(), message: problem });
        }
        let engine =
            Engine::new(self.network.clone(), input.tensor.to_device(&self.opts.device)?, self.opts.engine)?;
        let stage = self.stage;
        let trace = engine.trace();
        let probs = trace.probabilities();
        let top_k: Vec<Ranked> = trace
            .top_k(self.opts.top_k, &self.model.labels)
            .into_iter()
            .map(|p| Ranked { index: p.index, label: p.label, prob: p.prob })
            .collect();
        let top = trace.top_class();
        let target = self.class.or(item.label).unwrap_or(top);
        let map = engine.cams(self.opts.method, &[stage], target, self.opts.smoothing, ctl)?.remove(0);

        let mut note = None;
        let region = self.region(item, input, &mut note)?;
        let (energy, hit) = match &region {
            Some(r) => (Some(energy_inside(&map, r)), Some(pointing_hit(&map, r, self.opts.tolerance))),
            None => (None, None),
        };
        let metrics = match self.opts.metric_steps {
            Some(steps) => Some(metrics::evaluate(
                (self.network.as_ref(), self.opts.engine),
                engine.input(),
                &map,
                target,
                steps,
                ctl,
            )?),
            None => None,
        };
        if let Some(dir) = &self.opts.save_maps {
            save_maps(dir, &item.name, &map, input, self.opts.colormap)?;
        }
        let truth = item.label;
        let vs = match &self.vs {
            Some(b) => {
                let a = Side { map: &map, correct: truth.map(|t| t == top), top, energy };
                Some(self.versus_row(b, item, input, target, region.as_ref(), a, ctl)?)
            }
            None => None,
        };
        let row = Row {
            top_k,
            p_true: truth.map(|t| probs[t]),
            loss: truth.map(|t| cross_entropy(trace.logits(), t)),
            correct: truth.map(|t| t == top),
            target_index: Some(target),
            target_label: Some(self.model.label(target).to_string()),
            energy_in_object: energy,
            pointing_hit: hit,
            metrics,
            vs,
            note,
            ..self.row_frame(item)
        };
        Ok((row, map))
    }

    /// Model B on the image, through its own preprocessing, for A's target; its map on A's frame.
    #[allow(clippy::too_many_arguments)]
    fn versus_row(
        &self,
        b: &Second,
        item: &Item,
        input: &ModelInput,
        target: usize,
        region: Option<&Region>,
        a: Side,
        ctl: &Control,
    ) -> Result<Versus> {
        let own;
        let input_b = if b.model.preprocess == self.model.preprocess {
            input
        } else {
            own = preprocess::load_input(Some(&item.path), &b.model.preprocess)?;
            &own
        };
        let engine =
            Engine::new(b.network.clone(), input_b.tensor.to_device(&self.opts.device)?, self.opts.engine)?;
        let trace = engine.trace();
        let probs = trace.probabilities();
        let top = trace.top_class();
        let map = engine.cams(self.opts.method, &[b.stage], target, self.opts.smoothing, ctl)?.remove(0);
        let map = compare::stats::on_frame(&map, input_b.frame(), input.frame());
        let truth = item.label;
        let correct = truth.map(|t| t == top);
        let energy = region.map(|r| energy_inside(&map, r));
        Ok(Versus {
            model: b.model.name.clone(),
            stage: b.network.stages()[b.stage].name.clone(),
            predicted: Some(Ranked { index: top, label: b.model.label(top).to_string(), prob: probs[top] }),
            p_true: truth.map(|t| probs[t]),
            loss: truth.map(|t| cross_entropy(trace.logits(), t)),
            correct,
            change: Some(Change::of(a.correct, correct, a.top == top)),
            map_r: compare::stats::pearson(a.map, &map),
            energy_change: energy.zip(a.energy).map(|(b, a)| b - a),
        })
    }

    /// The object on the S×S frame: the union of the boxes and the mask, if there are any.
    fn region(&self, item: &Item, input: &ModelInput, note: &mut Option<String>) -> Result<Option<Region>> {
        let g = &input.geometry;
        let boxes = (!item.boxes.is_empty()).then(|| Region::from_boxes(&item.boxes, g));
        let mask = match &item.mask {
            Some(path) => {
                let mask = preprocess::decode_image(path)?.to_luma8();
                let r = Region::from_mask(&mask, g)
                    .map_err(|message| Error::Input { path: path.clone(), message })?;
                Some(r)
            }
            None => None,
        };
        let region = match (boxes, mask) {
            (Some(b), Some(m)) => Some(b.union(&m)),
            (b, m) => b.or(m),
        };
        if region.as_ref().is_some_and(Region::is_empty) {
            *note = Some("the object lies outside the centre crop: energy 0, no hit".into());
        }
        Ok(region)
    }
}

/// What model A made of an image, for B's side of the row.
struct Side<'a> {
    map: &'a [f32],
    correct: Option<bool>,
    top: usize,
    energy: Option<f32>,
}

/// `−ln softmax(logits)_t`, in f64 so that a confident right answer's tiny loss is not rounded
/// to 0.
pub fn cross_entropy(logits: &[f32], t: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (max + sum.ln() - logits[t] as f64) as f32
}

fn save_maps(dir: &Path, name: &str, map: &[f32], input: &ModelInput, colormap: Colormap) -> Result<()> {
    let base = dir.join(name);
    if let Some(parent) = base.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let frame = input.frame();
    let npy = base.with_extension("npy");
    candle_core::Tensor::from_slice(map, (frame.height, frame.width), &candle_core::Device::Cpu)?
        .write_npy(&npy)
        .map_err(|e| Error::Output { path: npy.clone(), message: e.to_string() })?;
    let png = base.with_extension("png");
    render::overlay(&input.view, map, colormap, 0.5)
        .save(&png)
        .map_err(|e| Error::Output { path: png.clone(), message: e.to_string() })
}

/// How far a sweep has come.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub errors: usize,
    /// Among rows with a true label.
    pub labelled: usize,
    pub correct: usize,
    pub elapsed_s: f64,
}

impl Progress {
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.done as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }

    /// Seconds left at the rate so far; `None` before there is a rate.
    pub fn remaining_s(&self) -> Option<f64> {
        let rate = self.rate();
        (rate > 0.0).then(|| self.total.saturating_sub(self.done) as f64 / rate)
    }

    pub fn count(&mut self, row: &Row) {
        self.done += 1;
        self.errors += row.error.is_some() as usize;
        if let Some(c) = row.correct {
            self.labelled += 1;
            self.correct += c as usize;
        }
    }
}

/// Takes each finished row, its map (where it has one) and the progress after it.
pub type RowSink<'a> = dyn FnMut(Row, Option<&[f32]>, &Progress) -> Result<()> + 'a;

/// "42 s", "3 m 05 s", "1 h 02 m": the ETA and elapsed time of progress lines.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} m {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} m", s / 3600, s % 3600 / 60),
    }
}

/// Images decoded ahead of the network.
const PREFETCH: usize = 8;

/// Runs `items` through the model, handing each row (with its map, where it has one) to `sink`
/// in order, with the progress after it. Stops between images when `cancelled` is set (every finished row has been handed on) and
/// returns the progress so far; a sink's error (a full disk) stops it too.
pub fn run(
    sweeper: &Sweeper,
    items: &[Item],
    cancelled: &AtomicBool,
    sink: &mut RowSink,
) -> Result<Progress> {
    let start = Instant::now();
    let mut progress = Progress { total: items.len(), ..Progress::default() };
    let pp = sweeper.model.preprocess.clone();
    let is_cancelled = || cancelled.load(Ordering::Relaxed);
    let ctl = Control { batch_size: sweeper.opts.batch_size, progress: &|_, _| {}, cancelled: &is_cancelled };
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Result<ModelInput>>(PREFETCH);
        scope.spawn(move || {
            for item in items {
                if cancelled.load(Ordering::Relaxed)
                    || tx.send(preprocess::load_input(Some(&item.path), &pp)).is_err()
                {
                    break;
                }
            }
        });
        for item in items {
            if is_cancelled() {
                break;
            }
            let Ok(input) = rx.recv() else { break };
            let (row, map) = match sweeper.row_and_map(item, input, &ctl) {
                Ok(explained) => explained,
                Err(Error::Cancelled) => break,
                Err(e) => return Err(e),
            };
            progress.count(&row);
            progress.elapsed_s = start.elapsed().as_secs_f64();
            sink(row, map.as_deref(), &progress)?;
        }
        Ok(progress)
    })
}
