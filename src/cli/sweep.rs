//! `camscope sweep` and `camscope merge`: a data set headless, with a progress bar on a terminal
//! and a plain line every few seconds in a log (Slurm, nohup), and Ctrl-C that keeps every
//! finished row.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::args::{MergeArgs, SweepArgs};
use super::{smoothing, Source};
use crate::cam::Method;
use crate::contract::EngineKind;
use crate::dataset::{
    results, sweep, Annotations, Change, Columns, DataSet, Progress, Row, Shard, SweepOptions, Sweeper,
};
use crate::render::Colormap;
use crate::{Error, Result};

/// Set by Ctrl-C: the sweep stops after the image it is on. A second Ctrl-C exits at once.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn on_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

pub fn run(args: &SweepArgs, source: Source) -> Result<()> {
    let map = &args.map;
    let method = Method::parse(&map.method)?;
    if map.layer.as_deref() == Some("all") {
        return Err(Error::Usage(
            "sweep explains one stage per image: name it with -l, or leave -l out".into(),
        ));
    }
    results::Format::of(&args.out)?;
    let shard = args.shard.as_deref().map(Shard::parse).transpose()?;
    if args.out.exists() && !args.resume && !args.overwrite {
        return Err(Error::Results {
            path: args.out.clone(),
            message: "exists: --resume continues it, --overwrite replaces it".into(),
        });
    }
    let opts = SweepOptions {
        device: crate::device::parse(&args.model.device)?,
        engine: EngineKind::parse(&args.model.engine)?,
        method,
        stage: map.layer.clone(),
        class: map.class.clone(),
        top_k: args.top_k.max(1),
        tolerance: args.tolerance,
        metric_steps: args.metrics.then_some(args.metric_steps),
        save_maps: args.save_maps.clone(),
        colormap: map.colormap.as_deref().map_or(Ok(Colormap::Jet), Colormap::parse)?,
        batch_size: map.batch_size.max(1),
        smoothing: smoothing(map),
    };
    let model = source.load(&args.model)?;
    model.require_classifier("sweep")?;
    let annotations =
        Annotations { boxes: args.boxes.clone(), masks: args.masks.clone(), unlabelled: args.unlabelled };
    let set = DataSet::open(&args.input, &model.labels, &annotations)?;
    let second = args.vs.as_deref().map(|vs| crate::load::load(vs, None)).transpose()?;
    let sweeper = Sweeper::new(&model, opts)?;
    let sweeper = match &second {
        Some(b) => sweeper.versus(b)?,
        None => sweeper,
    };

    let done: HashSet<String> = if args.resume && args.out.exists() {
        let rows = results::read(&args.out)?;
        results::check_same_run(&args.out, &rows, &sweeper)?;
        rows.into_iter().map(|r| r.path).collect()
    } else {
        HashSet::new()
    };
    let taken: Vec<_> = set.items.iter().filter(|it| shard.is_none_or(|s| s.takes(&it.name))).collect();
    let mine: Vec<_> = taken.iter().filter(|it| !done.contains(&it.name)).map(|&it| it.clone()).collect();
    let already = taken.len() - mine.len();
    eprintln!(
        "camscope: {} images in {} ({}){}{}",
        set.items.len(),
        args.input.display(),
        set.layout.describe(),
        shard.map_or(String::new(), |s| format!("; shard {}/{} takes {}", s.index, s.count, taken.len())),
        if already == 0 { String::new() } else { format!("; {already} already in {}", args.out.display()) },
    );
    if let Some(skipped) = set.skipped_summary() {
        eprintln!("camscope: {skipped}");
    }
    eprintln!(
        "camscope: {} at {} of {}, target: {}",
        method,
        sweeper.stage_name(),
        model.name,
        if args.map.class.is_some() {
            "the class given"
        } else {
            "the true class where known, else the top prediction"
        }
    );
    if let Some((b, stage)) = sweeper.vs_model_and_stage() {
        eprintln!("camscope: against {b} at {stage}, for the same target");
    }

    let columns = Columns { k: args.top_k.max(1), metrics: args.metrics, vs: args.vs.is_some() };
    let mut writer = results::Writer::open(&args.out, columns, args.resume)?;
    on_ctrl_c();
    let mut display = ProgressDisplay::new(mine.len());
    let mut summary = Summary::default();
    let progress =
        sweep::run(&sweeper, &mine, &INTERRUPTED, &mut |row: Row, _map: Option<&[f32]>, p: &Progress| {
            writer.write(&row)?;
            summary.add(&row);
            display.update(p, &row);
            Ok(())
        });
    display.finish();
    let progress = progress?;
    let interrupted = INTERRUPTED.load(Ordering::SeqCst) && progress.done < progress.total;
    eprintln!("camscope: {}", summary.line(&progress));
    if interrupted {
        eprintln!(
            "camscope: interrupted after {} of {} images; every finished row is in {} — add --resume to go on",
            progress.done,
            progress.total,
            args.out.display()
        );
        return Err(Error::Cancelled);
    }
    eprintln!("camscope: wrote {}", args.out.display());
    Ok(())
}

/// Accuracy, errors and localisation of the rows of this run.
#[derive(Default)]
struct Summary {
    localised: usize,
    hits: usize,
    energy: f64,
    /// `--vs`: how many rows of each change, in `Change::ALL` order.
    changes: [usize; 6],
}

impl Summary {
    fn add(&mut self, row: &Row) {
        if let Some(change) = row.vs.as_ref().and_then(|v| v.change) {
            self.changes[Change::ALL.iter().position(|&c| c == change).expect("a known change")] += 1;
        }
        if let (Some(e), Some(h)) = (row.energy_in_object, row.pointing_hit) {
            self.localised += 1;
            self.hits += h as usize;
            self.energy += e as f64;
        }
    }

    fn line(&self, p: &Progress) -> String {
        let mut parts =
            vec![format!("swept {} images in {:.1} s ({:.1} images/s)", p.done, p.elapsed_s, p.rate())];
        if let Some(acc) = p.accuracy() {
            parts.push(format!("accuracy {:.1}% ({}/{} labelled)", 100.0 * acc, p.correct, p.labelled));
        }
        if self.localised > 0 {
            parts.push(format!(
                "pointing game {:.1}% hits, mean energy in object {:.3} ({} with boxes or masks)",
                100.0 * self.hits as f64 / self.localised as f64,
                self.energy / self.localised as f64,
                self.localised
            ));
        }
        if self.changes.iter().any(|&n| n > 0) {
            let counts: Vec<String> = Change::ALL
                .iter()
                .zip(self.changes)
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| format!("{n} {}", c.name().replace('_', " ")))
                .collect();
            parts.push(format!("against the second model: {}", counts.join(", ")));
        }
        parts.push(match p.errors {
            0 => "no errors".into(),
            1 => "1 error row".into(),
            n => format!("{n} error rows"),
        });
        parts.join("; ")
    }
}

/// A bar on a terminal; on anything else (a Slurm log, nohup) a plain line every few seconds.
enum ProgressDisplay {
    Bar(indicatif::ProgressBar),
    Lines { last: Instant, total: usize },
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl ProgressDisplay {
    fn new(total: usize) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} images  {per_sec:.0}  ETA {eta}  {msg}",
                )
                .expect("a valid template"),
            );
            Self::Bar(bar)
        } else {
            Self::Lines { last: Instant::now(), total }
        }
    }

    fn update(&mut self, p: &Progress, row: &Row) {
        match self {
            Self::Bar(bar) => {
                bar.set_position(p.done as u64);
                let mut msg = p.accuracy().map_or(String::new(), |a| format!("accuracy {:.1}%", 100.0 * a));
                if p.errors > 0 {
                    msg.push_str(&format!("  {} errors", p.errors));
                }
                bar.set_message(msg);
                if let Some(e) = &row.error {
                    bar.println(format!("camscope: {}: {e}", row.path));
                }
            }
            Self::Lines { last, total } => {
                if let Some(e) = &row.error {
                    eprintln!("camscope: {}: {e}", row.path);
                }
                if last.elapsed() >= LOG_EVERY || p.done == *total {
                    *last = Instant::now();
                    eprintln!(
                        "camscope: {}/{} images ({:.1}%), {:.1} images/s, ETA {}{}",
                        p.done,
                        total,
                        100.0 * p.done as f64 / (*total).max(1) as f64,
                        p.rate(),
                        p.remaining_s().map_or("?".into(), sweep::clock),
                        p.accuracy().map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a))
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

pub fn merge(args: &MergeArgs) -> Result<()> {
    results::Format::of(&args.out)?;
    if args.out.exists() && !args.overwrite {
        return Err(Error::Results {
            path: args.out.clone(),
            message: "exists: --overwrite replaces it".into(),
        });
    }
    let parts = args.parts.iter().map(|p| Ok((p.clone(), results::read(p)?))).collect::<Result<Vec<_>>>()?;
    let read: usize = parts.iter().map(|(_, r)| r.len()).sum();
    let rows = results::merge(parts)?;
    let k = rows.iter().map(|r| r.top_k.len()).max().unwrap_or(1).max(1);
    let columns = Columns {
        k,
        metrics: rows.iter().any(|r| r.metrics.is_some()),
        vs: rows.iter().any(|r| r.vs.is_some()),
    };
    let mut writer = results::Writer::open(&args.out, columns, false)?;
    for row in &rows {
        writer.write(row)?;
    }
    eprintln!(
        "camscope: merged {} files ({read} rows) into {} rows in {}",
        args.parts.len(),
        rows.len(),
        args.out.display()
    );
    Ok(())
}
