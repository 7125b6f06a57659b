//! The camscope command line as a library: the `camscope` binary is [`main`], and a Rust program
//! that builds its own model gets the very same commands — the debugger, `explain`, `layers`,
//! `evaluate`, `bench` — on that model with [`main_with_model`] (or, for a model that can live on
//! a GPU, [`main_with_model_on_device`]).
//!
//! May use: everything below it (`load`, `engine`, `explain`, `metrics`, `render`, `tui`). A new
//! subcommand is a variant in `args.rs` and its function here.

pub mod args;
mod bench;
mod sweep;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::Device;
use clap::Parser;

use crate::cam::Method;
use crate::contract::EngineKind;
use crate::contract::Model;
use crate::explain::{self, ExplainOptions, StageChoice};
use crate::families::Arch;
use crate::load;
use crate::render::Colormap;
use crate::tui;
use crate::{Error, Result};
use args::{Cli, Command, ExplainArgs, MapArgs, ModelArgs};

/// Where the commands get their model.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// `-m` / `--arch` (the built-in default without them).
    Flags,
    /// A model the program built itself.
    Own(OwnModel<'a>),
}

/// How a program builds its own model.
#[derive(Clone, Copy)]
enum OwnModel<'a> {
    /// On the device `--device` names ([`main_with_model_on_device`]).
    OnDevice(&'a (dyn Fn(&Device) -> Result<Model> + Sync)),
    /// On the CPU ([`main_with_model`]).
    OnCpu(&'a (dyn Fn() -> Result<Model> + Sync)),
}

impl Source<'_> {
    fn load(self, args: &ModelArgs) -> Result<Model> {
        match self {
            // Built-in and ONNX models keep their weights on the CPU and copy them to the
            // input's device when that is another.
            Source::Flags => load::load(args.model_spec(), parse_arch(args)?),
            Source::Own(own) => {
                if args.model.is_some() || args.arch.is_some() {
                    return Err(Error::Usage(
                        "this program explains its own model: -m/--model and --arch do not apply".into(),
                    ));
                }
                own.build(&crate::device::parse(&args.device)?)
            }
        }
    }
}

impl OwnModel<'_> {
    /// The program's model, for inputs on `device`.
    fn build(self, device: &Device) -> Result<Model> {
        match self {
            OwnModel::OnDevice(build) => build(device),
            OwnModel::OnCpu(build) if device.is_cpu() => build(),
            // A Candle model's layers need their weights on the input's device: refuse plainly
            // instead of failing inside its first layer with a device mismatch.
            OwnModel::OnCpu(_) => Err(Error::Device(
                "this program builds its model on the CPU (camscope::cli::main_with_model), so \
                 --device does not apply; a model built with camscope::cli::main_with_model_on_device \
                 runs on a GPU"
                    .into(),
            )),
        }
    }
}

/// The `camscope` binary: parses the command line, runs the command, prints an error on one line.
pub fn main() -> ExitCode {
    run(Cli::parse(), Source::Flags)
}

/// The camscope command line on a model your program builds (any
/// [`ImageClassifier`](crate::contract::ImageClassifier) wrapped with [`Model::new`]): with no
/// subcommand the debugger, else `explain`, `layers`, `evaluate` or `bench`, exactly as the
/// `camscope` binary runs them with `-m`. `build` runs once, when a command needs the model.
///
/// `build` makes its tensors on the CPU; `--device cuda` is refused. A model that can live on
/// any device takes [`main_with_model_on_device`] instead.
pub fn main_with_model(build: impl Fn() -> Result<Model> + Sync) -> ExitCode {
    run(Cli::parse(), Source::Own(OwnModel::OnCpu(&build)))
}

/// [`main_with_model`] for a model built on the device `--device` names (the CPU by default):
/// `build` gets that device and makes the model's weights there. It is the very `Device` the
/// commands move the input to (camscope opens each CUDA device once per process).
pub fn main_with_model_on_device(build: impl Fn(&Device) -> Result<Model> + Sync) -> ExitCode {
    run(Cli::parse(), Source::Own(OwnModel::OnDevice(&build)))
}

fn run(cli: Cli, source: Source) -> ExitCode {
    let outcome = match cli.command {
        None => run_tui(cli.tui, source),
        Some(Command::Explain(args)) => run_explain(args, source),
        Some(Command::Layers { model, json }) => run_layers(&model, json, source),
        Some(Command::Bench(args)) => bench::run(&args, source),
        Some(Command::Evaluate(args)) => run_evaluate(&args, source),
        Some(Command::Sweep(args)) => sweep::run(&args, source),
        Some(Command::Merge(args)) => sweep::merge(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camscope: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_tui(args: args::TuiArgs, source: Source) -> Result<()> {
    // The same checks as `explain`, before the terminal is taken over; the stage and the class
    // need the model and are checked when it is loaded, still before.
    let map = &args.map;
    let opts = tui::TuiOptions {
        image: args.image.clone(),
        device: crate::device::parse(&args.model.device)?,
        engine: EngineKind::parse(&args.model.engine)?,
        method: Method::parse(&map.method)?,
        stages: stage_choice(map),
        class: map.class.clone(),
        colormap: map.colormap.as_deref().map(Colormap::parse).transpose()?,
        smoothing: smoothing(map),
        batch_size: map.batch_size.max(1),
        protocol: tui::parse_protocol(&args.protocol)?,
        theme: args.theme.clone(),
        keys: args.keys.clone(),
        vs: args.vs.clone(),
    };
    if let Some(input) = args.image.as_ref().filter(|p| is_data_set(p)) {
        let set = tui::DataSetOptions {
            input: input.clone(),
            annotations: crate::dataset::Annotations {
                boxes: args.boxes.clone(),
                masks: args.masks.clone(),
                unlabelled: args.unlabelled,
            },
            out: args.results.clone(),
            images: args.images.clone(),
            top_k: 5,
            tolerance: 0.0,
        };
        if let Some(out) = &set.out {
            crate::dataset::results::Format::of(out)?;
        }
        return tui::run_data_set(&opts, &set, || source.load(&args.model));
    }
    if args.results.is_some() || args.images.is_some() || args.boxes.is_some() || args.masks.is_some() {
        return Err(Error::Usage(
            "--results, --images, --boxes and --masks apply to a data set: give a folder, a CSV list or a results file".into(),
        ));
    }
    tui::run(&opts, || source.load(&args.model))
}

/// A folder, a CSV list or a results file: the debugger opens the data set's table.
fn is_data_set(path: &std::path::Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    path.is_dir() || matches!(ext.as_deref(), Some("csv" | "jsonl" | "ndjson"))
}

fn stage_choice(map: &MapArgs) -> StageChoice {
    map.layer.as_deref().map_or(StageChoice::Default, StageChoice::parse)
}

fn smoothing(map: &MapArgs) -> crate::cam::Smoothing {
    crate::cam::Smoothing { aug: map.aug_smooth, eigen: map.eigen_smooth }
}

fn parse_arch(model: &ModelArgs) -> Result<Option<Arch>> {
    model.arch.as_deref().map(Arch::parse).transpose()
}

fn run_explain(args: ExplainArgs, source: Source) -> Result<()> {
    // Validate everything that needs no computation first, so mistakes fail in milliseconds.
    let map = &args.map;
    let method = Method::parse(&map.method)?;
    let colormap = map.colormap.as_deref().map_or(Ok(Colormap::Jet), Colormap::parse)?;
    for path in args.npy.iter().chain(&args.out).chain(&args.segmentation) {
        explain::check_output_path(path)?;
    }
    for path in args.out.iter().chain(&args.segmentation) {
        explain::image_format(path)?;
    }
    let region = crate::segment::RegionTarget::parse(&args.region).map_err(Error::Usage)?;
    let opts = ExplainOptions {
        image: args.image.clone(),
        device: crate::device::parse(&args.model.device)?,
        engine: EngineKind::parse(&args.model.engine)?,
        method,
        stages: stage_choice(map),
        class: map.class.clone(),
        top_k: args.top_k,
        colormap,
        batch_size: map.batch_size.max(1),
        metric_steps: args.metrics.then_some(args.metric_steps),
        smoothing: smoothing(map),
        progress: if std::io::stderr().is_terminal() { &show_progress } else { &|_, _| {} },
        cancelled: &|| false,
        region,
        ..ExplainOptions::default()
    };
    let t = Instant::now();
    let model = source.load(&args.model)?;
    let load = t.elapsed().as_secs_f64() * 1e3;
    if let Some(vs) = &args.vs {
        return explain_vs(&args, &model, &load::load(vs, None)?, &opts);
    }
    let mut result = explain::explain_model(&model, &opts)?;
    result.timings_ms.load = load;

    // Said on stderr, so that a script piping stdout (or reading --json) still learns it.
    let what = |stages: &str| {
        format!("{} of class {} ({}) at {stages}", result.method, result.class, result.class_label)
    };
    let written = what(&match &result.stages[..] {
        [first, .., last] if result.stages.len() > 3 => {
            format!("{} stages, {first} … {last}", result.stages.len())
        }
        stages => stages.join(", "),
    });
    if let Some(path) = &args.npy {
        result.write_npy(path)?;
        let shape = if result.maps.len() == 1 { String::new() } else { format!("{}×", result.maps.len()) };
        let (h, w) = (result.size.height, result.size.width);
        eprintln!("camscope: wrote {} ({shape}{h}×{w} f32: {written})", path.display());
    }
    if let Some(path) = &args.out {
        result.write_image(path, colormap)?;
        eprintln!("camscope: wrote {} (overlay: {written})", path.display());
    }
    if let Some(path) = &args.segmentation {
        result.write_segmentation(path)?;
        eprintln!("camscope: wrote {} (the predicted segmentation, a colour per class)", path.display());
    }
    if args.json {
        println!("{}", result.json());
        return Ok(());
    }
    let quiet = args.npy.is_some() || args.out.is_some() || args.segmentation.is_some();
    if !quiet || std::io::stdout().is_terminal() {
        print_predictions(&result);
        println!("{}", what(&result.stages.join(", ")));
    }
    if !quiet && std::io::stdout().is_terminal() {
        let image = image::DynamicImage::ImageRgb8(result.overlay(colormap));
        let config = viuer::Config { absolute_offset: false, width: Some(48), ..Default::default() };
        if let Err(e) = viuer::print(&image, &config) {
            eprintln!("camscope: cannot show the image in this terminal ({e}); use --out FILE.png");
        }
    } else if !quiet {
        eprintln!("camscope: stdout is not a terminal; use --out, --npy or --json to keep the map");
    }
    Ok(())
}

/// The top-k of a classifier, or the classes a segmentation model found with their shares of
/// the pixels; `>` marks the class explained.
fn print_predictions(result: &explain::Explanation) {
    let mark = |index: usize| if index == result.class { '>' } else { ' ' };
    match &result.segmentation {
        Some(s) => {
            for c in &s.classes_present {
                println!("{} {:>5.1}%  {:<4} {}", mark(c.index), 100.0 * c.share, c.index, c.label);
            }
            println!(
                "region: {} ({} pixels of {}×{})",
                s.region, s.target_pixels, s.output_size[0], s.output_size[1]
            );
        }
        None => {
            for p in &result.top_k {
                println!("{} {:>5.1}%  {:<4} {}", mark(p.index), 100.0 * p.prob, p.index, p.label);
            }
        }
    }
}

/// `explain --vs`: the same outputs for two models, and on the terminal both top-k and how alike
/// their maps are.
fn explain_vs(args: &ExplainArgs, a: &Model, b: &Model, opts: &ExplainOptions) -> Result<()> {
    let cmp = crate::compare::explain_pair(a, b, opts)?;
    let what = format!("{} of class {} ({})", cmp.a.method, cmp.a.class, cmp.a.class_label);
    if let Some(path) = &args.npy {
        cmp.write_npy(path)?;
        eprintln!("camscope: wrote {} (A then B, {what})", path.display());
    }
    if let Some(path) = &args.out {
        cmp.write_image(path, opts.colormap)?;
        eprintln!("camscope: wrote {} (A | B | B − A per stage, {what})", path.display());
    }
    if args.json {
        println!("{}", cmp.json());
        return Ok(());
    }
    println!("       A {:<24}  B {:<24}", truncate(&cmp.a.model, 24), truncate(&cmp.b.model, 24));
    for (index, label, p_a, p_b) in cmp.changes() {
        let mark = if index == cmp.a.class { '>' } else { ' ' };
        let delta = 100.0 * (p_b - p_a);
        println!("{mark} {:>5.1}%  {:>5.1}%  {delta:>+6.1}  {index:<4} {label}", 100.0 * p_a, 100.0 * p_b);
    }
    println!("{what}; top-1 {}", if cmp.top1_agrees() { "agrees" } else { "differs" });
    for s in &cmp.stages {
        let r = s.pearson.map_or("—".to_string(), |r| format!("{r:.4}"));
        println!(
            "  {:<28} r {r:>7}  mean |B − A| {:.4}  max {:.3}",
            s.pair.label(),
            s.mean_abs_difference,
            s.scale
        );
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

fn run_evaluate(args: &args::EvaluateArgs, source: Source) -> Result<()> {
    use crate::cam::Control;
    use crate::engine::Engine;
    let methods: Vec<Method> = if args.methods.is_empty() {
        Method::ALL.to_vec()
    } else {
        args.methods.iter().map(|m| Method::parse(m)).collect::<Result<_>>()?
    };
    let model = source.load(&args.model)?;
    model.require_classifier("evaluate")?;
    let input = crate::preprocess::load_input(args.image.as_deref(), &model.preprocess)?;
    let device = crate::device::parse(&args.model.device)?;
    let kind = EngineKind::parse(&args.model.engine)?;
    let (network, stage) = match &args.layer {
        Some(name) => {
            let (network, stage) = crate::contract::with_stage(&model.network, name)?;
            (network, Some(stage))
        }
        None => (model.network.clone(), None),
    };
    let engine = Engine::new(network.clone(), input.tensor.to_device(&device)?, kind)?;
    let net = network.as_ref();
    let stage_name = |i: usize| net.stages()[i].name.as_str();
    let stage = stage.unwrap_or_else(|| engine.default_stage());
    let class = match &args.class {
        Some(c) => model.parse_class(c)?,
        None => engine.trace().top_class(),
    };
    let on_terminal = std::io::stderr().is_terminal();
    let mut rows = Vec::new();
    for (i, &method) in methods.iter().enumerate() {
        // Progress names the method and the step: some take minutes (Score-CAM at a wide stage).
        let step = |what: &str| format!("[{}/{}] {}: {what}", i + 1, methods.len(), method.name());
        let (map_step, scores_step) = (step("map"), step("scores"));
        let map_progress = |done, total| show_step_progress(&map_step, done, total);
        let scores_progress = |done, total| show_step_progress(&scores_step, done, total);
        let quiet = |_, _| {};
        let t = std::time::Instant::now();
        let map_ctl = Control {
            batch_size: args.batch_size.max(1),
            progress: if on_terminal { &map_progress } else { &quiet },
            cancelled: &|| false,
        };
        if on_terminal {
            show_step_progress(&map_step, 0, 1);
        }
        let map = engine.cam(method, stage, class, &map_ctl)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let scores_ctl = Control { progress: if on_terminal { &scores_progress } else { &quiet }, ..map_ctl };
        let scores = crate::metrics::evaluate(
            (net, kind),
            engine.input(),
            &map,
            class,
            args.metric_steps,
            &scores_ctl,
        )?;
        rows.push((method, ms, scores));
    }
    if on_terminal {
        show_step_progress("", 1, 1);
    }
    if args.json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, ms, s)| serde_json::json!({ "method": m.name(), "map_ms": ms, "scores": s }))
            .collect();
        let report = serde_json::json!({
            "model": model.name, "class": class, "class_label": model.label(class),
            "layer": stage_name(stage), "methods": rows,
        });
        println!("{report}");
        return Ok(());
    }
    println!(
        "class {class} ({}) at {}; * marks the best of each column",
        model.label(class),
        stage_name(stage)
    );
    println!(
        "{:<20} {:>10} {:>11} {:>9} {:>9} {:>9}",
        "method", "map", "confidence", "ROAD", "deletion", "insertion"
    );
    let best = |f: &dyn Fn(&crate::metrics::Scores) -> f32, higher: bool| {
        rows.iter().map(|r| f(&r.2)).fold(if higher { f32::MIN } else { f32::MAX }, |a, b| {
            if higher {
                a.max(b)
            } else {
                a.min(b)
            }
        })
    };
    let (bc, br, bd, bi) = (
        best(&|s| s.confidence_change, true),
        best(&|s| s.road_combined, true),
        best(&|s| s.deletion_auc, false),
        best(&|s| s.insertion_auc, true),
    );
    let mark = |v: f32, b: f32| if v == b { '*' } else { ' ' };
    for (m, ms, s) in &rows {
        println!(
            "{:<20} {:>8.0}ms {:>10.4}{} {:>8.4}{} {:>8.4}{} {:>8.4}{}",
            m.name(),
            ms,
            s.confidence_change,
            mark(s.confidence_change, bc),
            s.road_combined,
            mark(s.road_combined, br),
            s.deletion_auc,
            mark(s.deletion_auc, bd),
            s.insertion_auc,
            mark(s.insertion_auc, bi)
        );
    }
    Ok(())
}

/// A one-line progress counter for long methods, rewritten in place on stderr.
fn show_progress(done: usize, total: usize) {
    show_step_progress("", done, total);
}

/// "`step`: done/total forward passes" rewritten in place on stderr; cleared when done = total.
fn show_step_progress(step: &str, done: usize, total: usize) {
    use std::io::Write;
    let mut err = std::io::stderr();
    // \r and "erase to the end of the line": the line is rewritten, never scrolled.
    let _ = match (done < total, step.is_empty()) {
        (false, _) => write!(err, "\r\x1b[K"),
        (true, true) => write!(err, "\r\x1b[K{done}/{total} forward passes"),
        (true, false) if done == 0 => write!(err, "\r\x1b[K{step}…"),
        (true, false) => write!(err, "\r\x1b[K{step} {done}/{total} forward passes"),
    };
    let _ = err.flush();
}

fn run_layers(args: &ModelArgs, json: bool, source: Source) -> Result<()> {
    let model = source.load(args)?;
    let engine = EngineKind::parse(&args.engine)?;
    let net = model.network.as_ref();
    let size = model.preprocess.input_size;
    let shapes = crate::contract::stage_shapes(net, size.height, size.width, engine)?;
    let default = model.default_stage(engine)?;
    let specs = net.stages();
    let task = match model.task {
        crate::contract::Task::Classification => format!("classifier of {} classes", model.labels.len()),
        crate::contract::Task::Segmentation => format!(
            "segmentation model of {} classes (score maps; explained for a region, see --region)",
            model.labels.len()
        ),
    };
    if json {
        let stages: Vec<serde_json::Value> = specs
            .iter()
            .zip(&shapes)
            .map(|(spec, s)| {
                serde_json::json!({ "name": spec.name, "shape": s.grid, "output": s.raw, "layout": spec.layout })
            })
            .collect();
        let report = serde_json::json!({
            "model": model.name,
            "arch": net.name(),
            "input": [1, 3, size.height, size.width],
            "default": specs[default].name,
            "task": match model.task {
                crate::contract::Task::Classification => "classification",
                crate::contract::Task::Segmentation => "segmentation",
            },
            "classes": model.labels.len(),
            "note": model.note,
            "stages": stages,
        });
        println!("{report}");
    } else {
        println!("{} ({}), input 3×{}×{}, {task}", model.name, net.name(), size.height, size.width);
        if let Some(note) = &model.note {
            println!("note: {note}");
        }
        for (i, (spec, s)) in specs.iter().zip(&shapes).enumerate() {
            let mark = if i == default { "  (default)" } else { "" };
            let [c, h, w] = s.grid;
            let layout = match spec.layout {
                crate::contract::Layout::Nchw => String::new(),
                other => format!("  {other}"),
            };
            println!("{i:>3}  {:<14} {c}×{h}×{w}{layout}{mark}", spec.name);
        }
    }
    Ok(())
}
