//! The headless pipeline behind `camscope explain`: load, preprocess, trace, map, and write what
//! was asked for (PNG overlay, `.npy` maps, JSON report).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::{ImageFormat, RgbImage};
use serde::Serialize;

use crate::cam::Method;
use crate::cam::{Control, Smoothing};
use crate::contract::Model;
use crate::contract::{with_stage, EngineKind, ImageClassifier};
use crate::error::{Error, Result};
use crate::families::Arch;
use crate::load;
use crate::metrics::{self, Scores};
use crate::preprocess::{self, InputSize, ModelInput};
use crate::render::{self, Colormap};
use crate::segment::{self, RegionTarget};
use crate::trace::Prediction;

/// Which stages to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageChoice {
    /// The last stage whose output is still spatial.
    Default,
    All,
    Named(String),
}

impl StageChoice {
    pub fn parse(s: &str) -> Self {
        match s {
            "all" => StageChoice::All,
            name => StageChoice::Named(name.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct ExplainOptions {
    pub image: Option<PathBuf>,
    pub model: String,
    pub arch: Option<Arch>,
    pub device: candle_core::Device,
    /// The fast path where the model offers one, or Candle's own ops only.
    pub engine: EngineKind,
    pub method: Method,
    pub stages: StageChoice,
    pub class: Option<String>,
    pub top_k: usize,
    pub colormap: Colormap,
    /// Forward passes per batch of the perturbation methods.
    pub batch_size: usize,
    pub smoothing: Smoothing,
    /// Faithfulness scores of the (first) map, with this many deletion/insertion steps.
    pub metric_steps: Option<usize>,
    /// Called with (done, total) during long methods.
    pub progress: &'static (dyn Fn(usize, usize) + Sync),
    /// Polled during long methods; true stops them with `Error::Cancelled`.
    pub cancelled: &'static (dyn Fn() -> bool + Sync),
    /// A segmentation model's target region (classifiers take none).
    pub region: RegionTarget,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        Self {
            image: None,
            model: load::DEFAULT_MODEL.into(),
            arch: None,
            device: candle_core::Device::Cpu,
            engine: EngineKind::Fast,
            method: Method::GradCam,
            stages: StageChoice::Default,
            class: None,
            top_k: 5,
            colormap: Colormap::Jet,
            batch_size: Control::DEFAULT_BATCH,
            metric_steps: None,
            smoothing: Smoothing::default(),
            progress: &|_, _| {},
            cancelled: &|| false,
            region: RegionTarget::Predicted,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub load: f64,
    pub preprocess: f64,
    pub forward: f64,
    pub backward: f64,
    pub maps: f64,
}

/// Everything `explain` computed.
pub struct Explanation {
    pub model: String,
    /// The model's own name for its architecture.
    pub arch: String,
    pub input_shape: Vec<usize>,
    pub source: String,
    pub top_k: Vec<Prediction>,
    /// Softmax of the logits, every class: what a comparison reads the other model's top-k in.
    pub probabilities: Vec<f32>,
    pub class: usize,
    pub class_label: String,
    pub method: Method,
    pub stages: Vec<String>,
    /// One map in [0, 1] per stage, in stage order, on the input's frame (row-major).
    pub maps: Vec<Vec<f32>>,
    /// The frame the maps live on: the input's height and width.
    pub size: InputSize,
    pub view: RgbImage,
    pub timings_ms: Timings,
    pub metrics: Option<Scores>,
    /// A segmentation model's prediction and the region explained.
    pub segmentation: Option<segment::Summary>,
}

#[derive(Serialize)]
pub(crate) struct Report<'a> {
    model: &'a str,
    arch: String,
    image: &'a str,
    input: &'a [usize],
    top_k: &'a [Prediction],
    class: usize,
    class_label: &'a str,
    method: &'static str,
    layers: &'a [String],
    timings_ms: &'a Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<&'a Scores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segmentation: Option<&'a segment::Summary>,
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Runs the whole pipeline.
pub fn explain(opts: &ExplainOptions) -> Result<Explanation> {
    let t = Instant::now();
    let model = load::load(&opts.model, opts.arch.clone())?;
    let load = ms(t);
    let mut explanation = explain_model(&model, opts)?;
    explanation.timings_ms.load = load;
    Ok(explanation)
}

/// The pipeline on a model already loaded — a built-in one, or your own
/// [`ImageClassifier`](crate::contract::ImageClassifier) wrapped with [`Model::new`]. `opts.model`
/// and `opts.arch` are not used.
pub fn explain_model(model: &Model, opts: &ExplainOptions) -> Result<Explanation> {
    let t = Instant::now();
    let input = preprocess::load_input(opts.image.as_deref(), &model.preprocess)?;
    let preprocess = ms(t);
    explain_input(model, &input, opts, Timings { preprocess, ..Timings::default() })
}

/// The part after loading, for callers that keep a model and an input around.
pub fn explain_input(
    model: &Model,
    input: &ModelInput,
    opts: &ExplainOptions,
    timings: Timings,
) -> Result<Explanation> {
    let (network, stages): (Arc<dyn ImageClassifier>, Vec<usize>) = match &opts.stages {
        StageChoice::Named(name) => {
            let (network, stage) = with_stage(&model.network, name)?;
            (network, vec![stage])
        }
        StageChoice::All => (model.network.clone(), (0..model.network.stages().len()).collect()),
        StageChoice::Default => (model.network.clone(), vec![]),
    };
    explain_at(model, input, opts, network, stages, timings)
}

/// `network` (the model's, maybe retapped) at the stages of these indices, its default stage if
/// none.
pub(crate) fn explain_at(
    model: &Model,
    input: &ModelInput,
    opts: &ExplainOptions,
    network: Arc<dyn ImageClassifier>,
    stages: Vec<usize>,
    mut timings: Timings,
) -> Result<Explanation> {
    let class_arg = opts.class.as_deref().map(|c| model.parse_class(c)).transpose()?;

    let t = Instant::now();
    let (engine, segmentation) =
        segment::engine_for(model, network, input, &opts.device, opts.engine, &opts.region)?;
    let network = engine.network();
    engine.check_supported(opts.method)?;
    let trace = engine.trace();
    timings.forward = ms(t);
    let stages = if stages.is_empty() { vec![engine.default_stage()] } else { stages };
    let class = class_arg.unwrap_or_else(|| match &segmentation {
        Some(s) => s.prediction.default_class(&model.labels),
        None => trace.top_class(),
    });
    if let Some(s) = &segmentation {
        s.check_target(class, &model.labels)?;
    }

    let t = Instant::now();
    // Backward once here so its time is reported on its own; the maps below read the cache.
    if opts.method.needs_gradient() {
        trace.gradients(class)?;
    }
    timings.backward = ms(t);

    let size = input.frame();
    let t = Instant::now();
    let ctl = Control { batch_size: opts.batch_size, progress: opts.progress, cancelled: opts.cancelled };
    let maps = engine.cams(opts.method, &stages, class, opts.smoothing, &ctl)?;
    timings.maps = ms(t);
    let metrics = match opts.metric_steps {
        Some(steps) => Some(metrics::evaluate(
            (network.as_ref(), opts.engine),
            engine.input(),
            &maps[0],
            class,
            steps,
            &ctl,
        )?),
        None => None,
    };

    Ok(Explanation {
        model: model.name.clone(),
        arch: network.name(),
        input_shape: input.tensor.dims().to_vec(),
        source: input.source.clone(),
        // A segmentation's region scores are no distribution: its classes present say instead.
        top_k: match segmentation {
            Some(_) => vec![],
            None => trace.top_k(opts.top_k, &model.labels),
        },
        probabilities: trace.probabilities(),
        class,
        class_label: model.label(class).to_string(),
        method: opts.method,
        stages: stages.iter().map(|&s| network.stages()[s].name.clone()).collect(),
        maps,
        size,
        view: input.view.clone(),
        timings_ms: timings,
        metrics,
        segmentation: segmentation.map(|s| s.summary(class, &model.labels)),
    })
}

impl Explanation {
    pub fn json(&self) -> String {
        serde_json::to_string(&self.report()).expect("report serialises")
    }

    /// What the JSON report holds; a comparison nests two of them.
    pub(crate) fn report(&self) -> Report<'_> {
        Report {
            model: &self.model,
            arch: self.arch.clone(),
            image: &self.source,
            input: &self.input_shape,
            top_k: &self.top_k,
            class: self.class,
            class_label: &self.class_label,
            method: self.method.name(),
            layers: &self.stages,
            timings_ms: &self.timings_ms,
            metrics: self.metrics.as_ref(),
            segmentation: self.segmentation.as_ref(),
        }
    }

    /// The overlay of one stage, or for several stages a contact sheet of all of them.
    pub fn overlay(&self, colormap: Colormap) -> RgbImage {
        let tiles: Vec<RgbImage> =
            self.maps.iter().map(|m| render::overlay(&self.view, m, colormap, 0.5)).collect();
        if tiles.len() == 1 {
            return tiles.into_iter().next().expect("one tile");
        }
        let cols = (tiles.len() as f64).sqrt().ceil() as u32;
        let rows = (tiles.len() as u32).div_ceil(cols);
        let (w, h) = (self.size.width as u32, self.size.height as u32);
        let mut sheet = RgbImage::new(cols * w, rows * h);
        for (i, tile) in tiles.iter().enumerate() {
            let (c, r) = (i as u32 % cols, i as u32 / cols);
            image::imageops::replace(&mut sheet, tile, (c * w) as i64, (r * h) as i64);
        }
        sheet
    }

    /// The maps as f32 `.npy`: H×W for one stage, L×H×W for several.
    pub fn write_npy(&self, path: &Path) -> Result<()> {
        check_output_path(path)?;
        let InputSize { height: h, width: w } = self.size;
        let data: Vec<f32> = self.maps.iter().flatten().copied().collect();
        let t = if self.maps.len() == 1 {
            candle_core::Tensor::from_vec(data, (h, w), &candle_core::Device::Cpu)?
        } else {
            candle_core::Tensor::from_vec(data, (self.maps.len(), h, w), &candle_core::Device::Cpu)?
        };
        t.write_npy(path).map_err(|e| Error::Output { path: path.into(), message: e.to_string() })
    }

    /// A segmentation model's prediction as a picture (a colour per class) in the format
    /// `path`'s extension names.
    pub fn write_segmentation(&self, path: &Path) -> Result<()> {
        let Some(s) = &self.segmentation else {
            return Err(Error::Usage(format!(
                "{} is a classifier: it has no segmentation to write",
                self.model
            )));
        };
        check_output_path(path)?;
        let format = image_format(path)?;
        s.picture
            .save_with_format(path, format)
            .map_err(|e| Error::Output { path: path.into(), message: e.to_string() })
    }

    /// The overlay in the format `path`'s extension names (see [`image_format`]).
    pub fn write_image(&self, path: &Path, colormap: Colormap) -> Result<()> {
        check_output_path(path)?;
        let format = image_format(path)?;
        self.overlay(colormap)
            .save_with_format(path, format)
            .map_err(|e| Error::Output { path: path.into(), message: e.to_string() })
    }
}

/// The image format of `-o`, from the file's extension: any format this build of the `image`
/// crate encodes 8-bit RGB in (PNG, JPEG, WebP, BMP, TIFF, …). Checked before any work, so a
/// typo in the extension costs nothing and never writes bytes of another format.
pub fn image_format(path: &Path) -> Result<ImageFormat> {
    match ImageFormat::from_path(path) {
        Ok(format) if encodes_rgb8(format) => Ok(format),
        _ => {
            let ext = path.extension().map_or("(none)".into(), |e| format!(".{}", e.to_string_lossy()));
            let known: Vec<&str> = ImageFormat::all()
                .filter(|&f| encodes_rgb8(f))
                .flat_map(|f| f.extensions_str().iter().copied())
                .collect();
            Err(Error::Output {
                path: path.into(),
                message: format!(
                    "cannot write an image with the extension {ext}; use one of: {}",
                    known.join(", ")
                ),
            })
        }
    }
}

/// Whether `format` can hold our pictures: tried on one pixel, since some encoders this build
/// has (OpenEXR, Radiance HDR, farbfeld) take only other pixel types.
fn encodes_rgb8(format: ImageFormat) -> bool {
    format.writing_enabled()
        && RgbImage::new(1, 1).write_to(&mut std::io::Cursor::new(Vec::new()), format).is_ok()
}

/// An output path must not be a directory and its folder must exist; checked before any work.
pub fn check_output_path(path: &Path) -> Result<()> {
    let err = |message: &str| Error::Output { path: path.into(), message: message.into() };
    if path.as_os_str().is_empty() {
        return Err(err("empty path"));
    }
    if path.is_dir() {
        return Err(err("is a directory; give a file name"));
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => {
            Err(err("the folder it should go in does not exist"))
        }
        _ => Ok(()),
    }
}
