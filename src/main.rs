//! The `camscope` binary: parse the command line, dispatch, print errors on one line.

mod bench;
mod cli;
mod tui;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use camscope::cam::Method;
use camscope::explain::{self, ExplainOptions, StageChoice};
use camscope::model::{card, Arch};
use camscope::render::Colormap;
use camscope::Result;
use cli::{Cli, Command, ExplainArgs, ModelArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        None => run_tui(cli.tui),
        Some(Command::Explain(args)) => run_explain(args),
        Some(Command::Layers { model, json }) => run_layers(&model, json),
        Some(Command::Bench(args)) => bench::run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camscope: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_tui(args: cli::TuiArgs) -> Result<()> {
    let opts = tui::TuiOptions {
        image: args.image.clone(),
        model: args.model.model.clone(),
        arch: parse_arch(&args.model)?,
        protocol: tui::parse_protocol(&args.protocol)?,
        theme: args.theme.clone(),
        keys: args.keys.clone(),
    };
    tui::run(&opts)
}

fn parse_arch(model: &ModelArgs) -> Result<Option<Arch>> {
    model.arch.as_deref().map(Arch::parse).transpose()
}

fn run_explain(args: ExplainArgs) -> Result<()> {
    // Validate everything that needs no computation first, so mistakes fail in milliseconds.
    let method = Method::parse(&args.method)?;
    let colormap = Colormap::parse(&args.colormap)?;
    for path in args.npy.iter().chain(&args.out) {
        explain::check_output_path(path)?;
    }
    let opts = ExplainOptions {
        image: args.image.clone(),
        model: args.model.model.clone(),
        arch: parse_arch(&args.model)?,
        method,
        stages: args.layer.as_deref().map_or(StageChoice::Default, StageChoice::parse),
        class: args.class.clone(),
        top_k: args.top_k,
        colormap,
        batch_size: args.batch_size.max(1),
        progress: if std::io::stderr().is_terminal() { &show_progress } else { &|_, _| {} },
        cancelled: &|| false,
    };
    let result = explain::explain(&opts)?;

    if let Some(path) = &args.npy {
        result.write_npy(path)?;
    }
    if let Some(path) = &args.out {
        result.write_png(path, colormap)?;
    }
    if args.json {
        println!("{}", result.json());
        return Ok(());
    }
    let quiet = args.npy.is_some() || args.out.is_some();
    if !quiet || std::io::stdout().is_terminal() {
        for p in &result.top_k {
            let mark = if p.index == result.class { '>' } else { ' ' };
            println!("{mark} {:>5.1}%  {:<4} {}", 100.0 * p.prob, p.index, p.label);
        }
        println!(
            "{} of class {} ({}) at {}",
            result.method,
            result.class,
            result.class_label,
            result.stages.join(", ")
        );
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

/// A one-line progress counter for long methods, rewritten in place on stderr.
fn show_progress(done: usize, total: usize) {
    use std::io::Write;
    let mut err = std::io::stderr();
    if done < total {
        let _ = write!(err, "\r{done}/{total} forward passes");
    } else {
        let _ = write!(err, "\r{:30}\r", "");
    }
    let _ = err.flush();
}

fn run_layers(args: &ModelArgs, json: bool) -> Result<()> {
    let model = card::load(&args.model, parse_arch(args)?)?;
    let net = &model.network;
    let size = model.preprocess.input_size;
    let shapes = net.stage_shapes(size)?;
    let default = net.default_stage(&shapes);
    if json {
        let stages: Vec<serde_json::Value> = net
            .stage_names()
            .zip(&shapes)
            .map(|(name, s)| serde_json::json!({ "name": name, "shape": s }))
            .collect();
        let report = serde_json::json!({
            "model": model.name,
            "arch": net.arch.to_string(),
            "input": [1, 3, size, size],
            "default": net.stage_name(default),
            "stages": stages,
        });
        println!("{report}");
    } else {
        println!("{} ({}), input 3×{size}×{size}", model.name, net.arch);
        for (i, (name, s)) in net.stage_names().zip(&shapes).enumerate() {
            let mark = if i == default { "  (default)" } else { "" };
            println!("{i:>3}  {name:<14} {}×{}×{}{mark}", s[0], s[1], s[2]);
        }
    }
    Ok(())
}
