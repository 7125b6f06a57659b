//! `camscope bench`: per model, the time it took to load, then medians of forward, backward to
//! every stage, every stage's map, the whole all-stage trace, and `explain --layer all`, on
//! `--device`. With `--load-only`, the median time to load each model and the process's peak
//! resident memory. Set RAYON_NUM_THREADS to pin the thread count. Off the CPU every timed step
//! ends with its results on the host (the trace and the gradients are copied there), so no time
//! hides in the device's queue; the untimed first run pays for copying the weights to the device
//! and loading its kernels.

use std::time::Instant;

use candle_core::Device;

use crate::cam::{Control, Method, Smoothing};
use crate::contract::EngineKind;
use crate::contract::{Model, Task};
use crate::engine::Engine;
use crate::explain::{self, ExplainOptions, StageChoice, Timings};
use crate::families::Arch;
use crate::load;
use crate::preprocess;
use crate::segment::{self, RegionTarget};
use crate::Result;

use super::args::BenchArgs;
use super::Source;

#[derive(serde::Serialize)]
struct Row {
    model: String,
    engine: EngineKind,
    /// `cpu`, `cuda:0`, …
    device: String,
    threads: usize,
    /// Loading the model once (file to a ready model), before the other timings.
    load_ms: f64,
    forward_ms: f64,
    backward_ms: f64,
    maps_ms: f64,
    /// Forward + backward + every stage's map: what issue 5 compares with one reference call.
    all_stages_ms: f64,
    /// `explain --layer all` in-process on the built-in sample: decoding and preprocessing the
    /// image, the trace, every map, top-k (the model is loaded once, outside the timing).
    explain_all_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let out = f()?;
    Ok((t.elapsed().as_secs_f64() * 1e3, out))
}

/// A card or weights file; an architecture name without a card gets synthetic weights.
fn load(name: &str) -> Result<Model> {
    match load::load(name, None) {
        Ok(model) => Ok(model),
        Err(e) => match Arch::parse(name) {
            Ok(arch) => load::synthetic(arch, 0),
            Err(_) => Err(e),
        },
    }
}

fn bench_model(model: &Model, load_ms: f64, engine: EngineKind, device: &Device, runs: usize) -> Result<Row> {
    let image = preprocess::load_input(None, &model.preprocess)?;
    let input = image.tensor.to_device(device)?;
    let net = &model.network;
    let stages: Vec<usize> = (0..net.stages().len()).collect();
    let ctl = Control::default();
    let (mut fwd, mut bwd, mut maps, mut all, mut explain_all) = (vec![], vec![], vec![], vec![], vec![]);
    let opts = ExplainOptions {
        stages: StageChoice::All,
        engine,
        device: device.clone(),
        ..ExplainOptions::default()
    };
    // The first run warms caches and the allocator; it is not counted.
    for run in 0..=runs {
        let (t_all, (t_f, t_b, t_m)) = time(|| {
            // A segmentation model's forward includes the pass that fixes its target regions.
            let (t_f, (engine, segmentation)) = time(|| match model.task {
                Task::Classification => Ok((Engine::new(net.clone(), input.clone(), engine)?, None)),
                Task::Segmentation => {
                    segment::engine_for(model, net.clone(), &image, device, engine, &RegionTarget::Predicted)
                }
            })?;
            let class = match &segmentation {
                Some(s) => s.prediction.default_class(&model.labels),
                None => engine.trace().top_class(),
            };
            let (t_b, _) = time(|| engine.trace().gradients(class))?;
            let (t_m, _) = time(|| engine.cams(Method::GradCam, &stages, class, Smoothing::default(), &ctl))?;
            Ok((t_f, t_b, t_m))
        })?;
        let (t_explain, _) = time(|| {
            let image = preprocess::load_input(None, &model.preprocess)?;
            explain::explain_input(model, &image, &opts, Timings::default())
        })?;
        if run > 0 {
            fwd.push(t_f);
            bwd.push(t_b);
            maps.push(t_m);
            all.push(t_all);
            explain_all.push(t_explain);
        }
    }
    Ok(Row {
        model: model.name.clone(),
        engine,
        device: crate::device::name(device),
        threads: crate::kernels::parallel::threads(),
        load_ms,
        forward_ms: median(fwd),
        backward_ms: median(bwd),
        maps_ms: median(maps),
        all_stages_ms: median(all),
        explain_all_ms: median(explain_all),
    })
}

/// `--load-only`: one model's load time and the peak memory so far.
#[derive(serde::Serialize)]
struct LoadRow {
    model: String,
    threads: usize,
    runs: usize,
    /// Median of `runs` loads, each dropped before the next.
    load_ms: f64,
    /// The process's peak resident set (Linux `VmHWM`) after this model's loads: the peak of
    /// every model loaded before it too, so run one model per process to compare models.
    peak_rss_mb: Option<f64>,
}

/// The process's peak resident set so far in MiB, where the OS tells it (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

fn run_load_only(args: &BenchArgs, source: Source, runs: usize) -> Result<()> {
    let mut rows = Vec::new();
    let names: Vec<String> = match source {
        Source::Flags => args.models.clone(),
        Source::Own(_) => vec!["(this program's model)".into()],
    };
    let device = crate::device::parse(&args.device)?;
    for name in &names {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (ms, model) = time(|| match source {
                Source::Flags => load(name),
                Source::Own(own) => own.build(&device),
            })?;
            drop(model);
            times.push(ms);
        }
        rows.push(LoadRow {
            model: name.clone(),
            threads: crate::kernels::parallel::threads(),
            runs,
            load_ms: median(times),
            peak_rss_mb: peak_rss_mb(),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows).expect("rows serialise"));
        return Ok(());
    }
    println!("median of {runs} loads; peak memory of the process so far");
    println!("{:<40} {:>7} {:>10} {:>10}", "model", "threads", "load", "peak RSS");
    for r in &rows {
        let rss = r.peak_rss_mb.map_or_else(|| "?".into(), |m| format!("{m:.0} MiB"));
        println!("{:<40} {:>7} {:>8.1}ms {:>10}", r.model, r.threads, r.load_ms, rss);
    }
    Ok(())
}

pub(super) fn run(args: &BenchArgs, source: Source) -> Result<()> {
    let runs = args.runs.max(1);
    if args.load_only {
        return run_load_only(args, source, runs);
    }
    let mut rows = Vec::new();
    let engines = match &args.engine {
        Some(e) => vec![EngineKind::parse(e)?],
        None => vec![EngineKind::Fast, EngineKind::Portable],
    };
    let device = crate::device::parse(&args.device)?;
    let models: Vec<(f64, Model)> = match source {
        Source::Flags => args.models.iter().map(|name| time(|| load(name))).collect::<Result<_>>()?,
        // A program's own model is the one to time.
        Source::Own(own) => vec![time(|| own.build(&device))?],
    };
    for (load_ms, model) in &models {
        for &engine in &engines {
            rows.push(bench_model(model, *load_ms, engine, &device, runs)?);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows).expect("rows serialise"));
        return Ok(());
    }
    println!("median of {runs} runs, batch 1, gradcam at every stage");
    println!(
        "{:<30} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>8} {:>11} {:>15}",
        "model",
        "engine",
        "device",
        "threads",
        "load",
        "forward",
        "backward",
        "maps",
        "all stages",
        "explain -l all"
    );
    for r in &rows {
        println!(
            "{:<30} {:>8} {:>7} {:>7} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>6.1}ms {:>9.1}ms {:>13.1}ms",
            r.model,
            r.engine.to_string(),
            r.device,
            r.threads,
            r.load_ms,
            r.forward_ms,
            r.backward_ms,
            r.maps_ms,
            r.all_stages_ms,
            r.explain_all_ms
        );
    }
    // The cost of portability, per model: portable / fast, all stages.
    for pair in rows.chunks(2).filter(|p| p.len() == 2 && p[0].engine != p[1].engine) {
        println!("{}: portable/fast {:.2}×", pair[0].model, pair[1].all_stages_ms / pair[0].all_stages_ms);
    }
    Ok(())
}
