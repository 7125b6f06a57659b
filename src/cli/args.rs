//! Command-line definitions. The flags of `explain` and `layers` are a contract other tools and
//! tests rely on.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// With no subcommand, opens the interactive debugger on IMAGE.
#[derive(Debug, Parser)]
#[command(
    name = "camscope",
    version,
    about = "Class activation maps of every stage of a CNN, in the terminal",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub tui: TuiArgs,
}

#[derive(Debug, Args)]
pub struct TuiArgs {
    /// Image (PNG, JPEG, WebP, BMP, GIF) or .npy tensor; the built-in sample if omitted. A
    /// folder, a CSV list (path,label) or a results file of `camscope sweep` opens the data
    /// set's table
    pub image: Option<PathBuf>,
    /// A data set: also write its rows to this results file (.csv, .jsonl); rows already in it
    /// are shown, not computed again
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// A results file: the folder its image paths are relative to (default: the file's folder)
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// A data set: folder of Pascal VOC XML box files named like the images
    #[arg(long, value_name = "DIR")]
    pub boxes: Option<PathBuf>,
    /// A data set: folder of object masks, PNGs named like the images
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// A data set: read a folder of folders as plain images, not as classes
    #[arg(long)]
    pub unlabelled: bool,
    /// Compare with a second model of the same classes (a card, weights file or .onnx): `v`
    /// shows A only / A | B | B − A / B − A
    #[arg(long, value_name = "MODEL")]
    pub vs: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub map: MapArgs,
    /// Terminal graphics: auto, halfblocks, sixel, kitty, iterm2
    #[arg(long, default_value = "auto")]
    pub protocol: String,
    /// UI theme: dark, light, high-contrast, or one from themes/
    #[arg(long)]
    pub theme: Option<String>,
    /// Key bindings file (default: ~/.config/camscope/keys.toml if it exists)
    #[arg(long)]
    pub keys: Option<PathBuf>,
}

/// Which map, and how it is computed and coloured: shared by `explain` and the debugger (where
/// they are the starting point that keys then change).
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Method: gradcam, hirescam, gradcam-elementwise, gradcam++, xgradcam, layercam, eigencam,
    /// eigengradcam, scorecam, ablationcam, fullgrad, guided-backprop, guided-gradcam. EigenCAM's
    /// sign is free (a principal component's is): camscope shows the position it separates most
    /// strongly hot; pytorch-grad-cam keeps whatever LAPACK returns, so its map can be the inverse
    #[arg(short = 'M', long, default_value = "gradcam")]
    pub method: String,
    /// Stage name, or `all` (the debugger: start on the grid of every stage); default: the last
    /// stage with spatial size > 1
    #[arg(short = 'l', long)]
    pub layer: Option<String>,
    /// Target class: an index, or a whole class label in any case (`tabby`, `Tiger Cat`); default:
    /// the top prediction
    #[arg(short = 'c', long)]
    pub class: Option<String>,
    /// Colormap: jet, viridis, inferno, turbo; default: jet (the debugger: the theme's)
    #[arg(long)]
    pub colormap: Option<String>,
    /// Forward passes per batch for scorecam and ablationcam
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Average the map over 6 augmentations (flip × 0.9/1.0/1.1 intensity): 6× the time
    #[arg(long)]
    pub aug_smooth: bool,
    /// Project the per-channel terms on their first principal component instead of summing them
    #[arg(long)]
    pub eigen_smooth: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Model card name (models/NAME.toml), card file, or weights file (.safetensors, .pth);
    /// default: the built-in efficientnet-lite0
    #[arg(short = 'm', long)]
    pub model: Option<String>,
    /// Force the architecture instead of detecting it from the weights (e.g. resnet50)
    #[arg(long)]
    pub arch: Option<String>,
    /// Where to run the network: cpu, cuda or cuda:N (CUDA needs a build with --features cuda)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// fast: the model's own CPU kernels where it has them; portable: only Candle's tensor ops
    /// and autograd, the code that runs on CUDA
    #[arg(long, default_value = "fast")]
    pub engine: String,
}

impl ModelArgs {
    /// What `-m` names, the built-in model without it.
    pub fn model_spec(&self) -> &str {
        self.model.as_deref().unwrap_or(crate::load::DEFAULT_MODEL)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute a class activation map and write it as PNG / .npy / JSON, or show it
    Explain(ExplainArgs),
    /// List the model's stages with their output shapes
    Layers {
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Time forward, backward to every stage and the maps (medians)
    Bench(BenchArgs),
    /// Score every method's map for faithfulness to the model and time it
    Evaluate(EvaluateArgs),
    /// Run the model over a data set (a folder, class folders, or a CSV) and write one row per
    /// image: predictions, loss, and whether the map is on the object
    Sweep(SweepArgs),
    /// Combine the results files of a sharded sweep into one (one row per image)
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// A folder of images (its first-level folders are the true classes when it holds only
    /// folders, as torchvision's ImageFolder), or a CSV with columns path,label[,x0,y0,x1,y1]
    pub input: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub map: MapArgs,
    /// Results file: .csv, or .jsonl for JSON lines; rows are flushed one by one
    #[arg(short = 'o', long)]
    pub out: PathBuf,
    /// How many predictions each row holds
    #[arg(short = 'k', long, default_value_t = 5)]
    pub top_k: usize,
    /// Folder of Pascal VOC XML box files named like the images (default: an XML next to each
    /// image)
    #[arg(long, value_name = "DIR")]
    pub boxes: Option<PathBuf>,
    /// Folder of object masks, PNGs named like the images (a pixel > 0 is the object)
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Pointing game: count a hit when the map's maximum is within PX pixels of the object
    /// (TorchRay uses 15)
    #[arg(long, value_name = "PX", default_value_t = 0.0)]
    pub tolerance: f64,
    /// Read a folder of folders as plain images, not as classes
    #[arg(long)]
    pub unlabelled: bool,
    /// Add the faithfulness scores of `evaluate` to every row (many forward passes per image)
    #[arg(long)]
    pub metrics: bool,
    /// Also run a second model of the same classes on every image: its prediction, whether it
    /// fixed or broke the first's, and how its map correlates
    #[arg(long, value_name = "MODEL")]
    pub vs: Option<String>,
    /// Deletion/insertion steps of --metrics
    #[arg(long, default_value_t = 56)]
    pub metric_steps: usize,
    /// Write every image's map (.npy) and overlay (.png) here, mirroring the image paths
    #[arg(long, value_name = "DIR")]
    pub save_maps: Option<PathBuf>,
    /// Continue the results file: images already in it are skipped
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace the results file if it exists
    #[arg(long)]
    pub overwrite: bool,
    /// Take shard K of N (1-based) by a stable hash of each image's path, or `slurm` for the
    /// array job's task; combine the parts with `camscope merge`
    #[arg(long, value_name = "K/N|slurm")]
    pub shard: Option<String>,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Results files of one sweep's shards (CSV or JSON lines, mixed as you like)
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// The combined file: .csv or .jsonl
    #[arg(short = 'o', long)]
    pub out: PathBuf,
    /// Replace OUT if it exists
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Image (PNG, JPEG, WebP, BMP, GIF) or .npy tensor; the built-in sample if omitted
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub map: MapArgs,
    /// How many predictions to report
    #[arg(short = 'k', long, default_value_t = 5)]
    pub top_k: usize,
    /// Compare with a second model of the same classes (a card, weights file or .onnx): both
    /// maps and their difference at the stages they share, else at each one's own stage
    #[arg(long, value_name = "MODEL")]
    pub vs: Option<String>,
    /// Write the map(s) as f32 .npy (S×S, or L×S×S with --layer all; with --vs 2×S×S or 2×L×S×S)
    #[arg(long)]
    pub npy: Option<PathBuf>,
    /// Write the overlay as an image; the extension names the format (png, jpg, webp, bmp, …)
    #[arg(short = 'o', long)]
    pub out: Option<PathBuf>,
    /// Segmentation models: the region whose class score is explained — `predicted` (the pixels
    /// the model labels with the class), `whole`, a box `x0,y0,x1,y1` in the image's pixels, or
    /// a mask image of the image's size (a pixel > 0 is inside)
    #[arg(long, value_name = "REGION", default_value = "predicted")]
    pub region: String,
    /// Segmentation models: write the predicted segmentation (a colour per class) as an image
    #[arg(long, value_name = "FILE")]
    pub segmentation: Option<PathBuf>,
    /// Print a JSON report on stdout
    #[arg(long)]
    pub json: bool,
    /// Add faithfulness scores (confidence change, ROAD, deletion/insertion AUC) to the JSON
    #[arg(long)]
    pub metrics: bool,
    /// Deletion/insertion steps (RISE uses the input side, 224; fewer is faster)
    #[arg(long, default_value_t = 56)]
    pub metric_steps: usize,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Image or .npy tensor; the built-in sample if omitted
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Methods to compare (comma-separated); default: all
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Stage; default: the last stage with spatial size > 1
    #[arg(short = 'l', long)]
    pub layer: Option<String>,
    /// Target class: an index, or a whole class label in any case; default: the top prediction
    #[arg(short = 'c', long)]
    pub class: Option<String>,
    /// Deletion/insertion steps (RISE uses the input side, 224; fewer is faster)
    #[arg(long, default_value_t = 56)]
    pub metric_steps: usize,
    /// Forward passes per batch: scorecam's and ablationcam's maps, and every method's scores
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Models to time: a card name or weights file, or `resnet18`/`resnet50`/… for synthetic weights
    #[arg(long, value_delimiter = ',', default_value = "efficientnet-lite0,resnet18,resnet50")]
    pub models: Vec<String>,
    /// Timed repetitions per measurement (the median is reported)
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Time only this engine (fast or portable); default: both
    #[arg(long)]
    pub engine: Option<String>,
    /// Where to run the network: cpu, cuda or cuda:N (CUDA needs a build with --features cuda)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Time only loading each model (--runs times, the median) and report the process's peak
    /// resident memory after it; one model per process gives that model's own peak
    #[arg(long)]
    pub load_only: bool,
}
