//! `camscope bench`: medians of forward, backward to every stage, every stage's map, and a whole
//! all-stage trace, per model. Set RAYON_NUM_THREADS to pin the thread count.

use std::time::Instant;

use camscope::cam::{self, Method};
use camscope::model::card::{self, Model};
use camscope::model::Arch;
use camscope::trace::Trace;
use camscope::Result;

use crate::cli::BenchArgs;

#[derive(serde::Serialize)]
struct Row {
    model: String,
    threads: usize,
    forward_ms: f64,
    backward_ms: f64,
    maps_ms: f64,
    all_stages_ms: f64,
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

fn load(name: &str) -> Result<Model> {
    match Arch::parse(name) {
        Ok(arch @ Arch::ResNet(_)) => card::synthetic(arch, 0),
        _ => card::load(name, None),
    }
}

fn bench_model(model: &Model, runs: usize) -> Result<Row> {
    let s = model.preprocess.input_size;
    let input = candle_core::Tensor::randn(0f32, 1.0, (1, 3, s, s), &candle_core::Device::Cpu)?;
    let net = &model.network;
    let (mut fwd, mut bwd, mut maps, mut all) = (vec![], vec![], vec![], vec![]);
    for run in 0..=runs {
        let (t_all, ()) = time(|| {
            let (t_f, trace) = time(|| Trace::new(net, &input))?;
            let class = trace.top_class();
            let (t_b, grads) = time(|| trace.gradients(class))?;
            let (t_m, _) = time(|| {
                Ok((0..net.num_stages())
                    .map(|i| {
                        let a = trace.activation(i);
                        let raw = Method::GradCam.stage_map(a, &grads[i]).expect("gradcam is pure");
                        cam::finish(&raw, a.height, a.width, s)
                    })
                    .collect::<Vec<_>>())
            })?;
            if run > 0 {
                fwd.push(t_f);
                bwd.push(t_b);
                maps.push(t_m);
            }
            Ok(())
        })?;
        // The first run warms caches and the allocator; it is not counted.
        if run > 0 {
            all.push(t_all);
        }
    }
    Ok(Row {
        model: model.name.clone(),
        threads: rayon::current_num_threads(),
        forward_ms: median(fwd),
        backward_ms: median(bwd),
        maps_ms: median(maps),
        all_stages_ms: median(all),
    })
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let runs = args.runs.max(1);
    let mut rows = Vec::new();
    for name in &args.models {
        let model = load(name)?;
        rows.push(bench_model(&model, runs)?);
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows).expect("rows serialise"));
        return Ok(());
    }
    println!("median of {runs} runs, batch 1, gradcam at every stage");
    println!(
        "{:<34} {:>7} {:>10} {:>12} {:>9} {:>14}",
        "model", "threads", "forward", "backward", "maps", "all stages"
    );
    for r in rows {
        println!(
            "{:<34} {:>7} {:>8.1}ms {:>10.1}ms {:>7.1}ms {:>12.1}ms",
            r.model, r.threads, r.forward_ms, r.backward_ms, r.maps_ms, r.all_stages_ms
        );
    }
    Ok(())
}
