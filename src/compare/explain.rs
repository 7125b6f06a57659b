//! `explain --vs`: one image through two models, the same class and method, their maps at the
//! paired stages and what differs.

use std::path::Path;
use std::sync::Arc;

use image::RgbImage;
use serde::Serialize;

use super::labels::check_labels;
use super::stages::{pair_stages, StagePair};
use super::stats;
use crate::contract::{stage_index, with_stage, ImageClassifier, Model};
use crate::error::{Error, Result};
use crate::explain::{self, explain_at, ExplainOptions, Explanation, Timings};
use crate::preprocess;
use crate::render::{self, Colormap};

/// What two models make of one image.
pub struct Comparison {
    pub a: Explanation,
    pub b: Explanation,
    /// One per compared stage, in `a.stages` order.
    pub stages: Vec<StageComparison>,
}

/// The maps of one stage pair, B's on A's frame.
pub struct StageComparison {
    pub pair: StagePair,
    pub b_on_a: Vec<f32>,
    /// B − A.
    pub difference: Vec<f32>,
    pub pearson: Option<f32>,
    pub mean_abs_difference: f32,
    /// max |B − A|: the difference is drawn to ± this.
    pub scale: f32,
}

/// Runs both models on `opts.image`, each through its own preprocessing, for one class: `-c`, else
/// A's top prediction (so B is asked about the class A chose, and a flip shows as B's lower p).
pub fn explain_pair(a: &Model, b: &Model, opts: &ExplainOptions) -> Result<Comparison> {
    check_labels(a, b)?;
    let input_a = preprocess::load_input(opts.image.as_deref(), &a.preprocess)?;
    let input_b = preprocess::load_input(opts.image.as_deref(), &b.preprocess)?;
    let pairs = pair_stages(
        &stage_names(a),
        &stage_names(b),
        a.default_stage(opts.engine)?,
        b.default_stage(opts.engine)?,
        &opts.stages,
    )?;
    let (net_a, at_a) = resolve(a, pairs.iter().map(|p| p.a.as_str()))?;
    let (net_b, at_b) = resolve(b, pairs.iter().map(|p| p.b.as_str()))?;
    let a_result = explain_at(a, &input_a, opts, net_a, at_a, Timings::default())?;
    let b_opts = ExplainOptions { class: Some(a_result.class.to_string()), ..opts.clone() };
    let b_result = explain_at(b, &input_b, &b_opts, net_b, at_b, Timings::default())?;
    let stages = pairs
        .into_iter()
        .zip(a_result.maps.iter().zip(&b_result.maps))
        .map(|(pair, (map_a, map_b))| {
            let b_on_a = stats::on_frame(map_b, b_result.size, a_result.size);
            let difference = stats::difference(map_a, &b_on_a);
            StageComparison {
                pair,
                pearson: stats::pearson(map_a, &b_on_a),
                mean_abs_difference: stats::mean_abs_difference(map_a, &b_on_a),
                scale: stats::max_abs(&difference),
                b_on_a,
                difference,
            }
        })
        .collect();
    Ok(Comparison { a: a_result, b: b_result, stages })
}

fn stage_names(model: &Model) -> Vec<String> {
    model.network.stages().iter().map(|s| s.name.clone()).collect()
}

/// The network tapped at `names` and their indices. One name may be any module of an imported
/// graph; several are stages the network lists.
fn resolve<'n>(
    model: &Model,
    names: impl Iterator<Item = &'n str>,
) -> Result<(Arc<dyn ImageClassifier>, Vec<usize>)> {
    let names: Vec<&str> = names.collect();
    if let [name] = names[..] {
        let (network, stage) = with_stage(&model.network, name)?;
        return Ok((network, vec![stage]));
    }
    let at = names.iter().map(|n| stage_index(model.network.as_ref(), n)).collect::<Result<_>>()?;
    Ok((model.network.clone(), at))
}

#[derive(Serialize)]
struct Change<'a> {
    index: usize,
    label: &'a str,
    p_a: f32,
    p_b: f32,
    delta: f32,
}

#[derive(Serialize)]
struct StageReport<'a> {
    a: &'a str,
    b: &'a str,
    /// `null` where a map is constant.
    pearson_r: Option<f32>,
    mean_abs_difference: f32,
    max_abs_difference: f32,
}

#[derive(Serialize)]
struct Report<'a> {
    a: explain::Report<'a>,
    b: explain::Report<'a>,
    class: usize,
    class_label: &'a str,
    /// The classes of either top-k, A's order first: p in each model and B − A.
    changes: Vec<Change<'a>>,
    top1_agrees: bool,
    stages: Vec<StageReport<'a>>,
}

impl Comparison {
    /// The classes in either model's top-k (A's first, then B's new ones) with both probabilities.
    pub fn changes(&self) -> Vec<(usize, &str, f32, f32)> {
        let mut seen = Vec::new();
        for p in self.a.top_k.iter().chain(&self.b.top_k) {
            if !seen.contains(&p.index) {
                seen.push(p.index);
            }
        }
        seen.into_iter()
            .map(|i| {
                let label =
                    self.a.top_k.iter().chain(&self.b.top_k).find(|p| p.index == i).map_or("", |p| &p.label);
                (i, label, self.a.probabilities[i], self.b.probabilities[i])
            })
            .collect()
    }

    pub fn top1_agrees(&self) -> bool {
        self.a.top_k.first().map(|p| p.index) == self.b.top_k.first().map(|p| p.index)
    }

    pub fn json(&self) -> String {
        let report = Report {
            a: self.a.report(),
            b: self.b.report(),
            class: self.a.class,
            class_label: &self.a.class_label,
            changes: self
                .changes()
                .into_iter()
                .map(|(index, label, p_a, p_b)| Change { index, label, p_a, p_b, delta: p_b - p_a })
                .collect(),
            top1_agrees: self.top1_agrees(),
            stages: self
                .stages
                .iter()
                .map(|s| StageReport {
                    a: &s.pair.a,
                    b: &s.pair.b,
                    pearson_r: s.pearson,
                    mean_abs_difference: s.mean_abs_difference,
                    max_abs_difference: s.scale,
                })
                .collect(),
        };
        serde_json::to_string(&report).expect("report serialises")
    }

    /// One row per stage: A's overlay | B's overlay | B − A (diverging, to that row's max |Δ|),
    /// all on A's frame.
    pub fn picture(&self, colormap: Colormap) -> RgbImage {
        let (w, h) = (self.a.size.width as u32, self.a.size.height as u32);
        let view_b = stats::view_on_frame(&self.b.view, w, h);
        let mut sheet = RgbImage::new(3 * w, h * self.stages.len() as u32);
        for (row, (stage, map_a)) in self.stages.iter().zip(&self.a.maps).enumerate() {
            let tiles = [
                render::overlay(&self.a.view, map_a, colormap, 0.5),
                render::overlay(&view_b, &stage.b_on_a, colormap, 0.5),
                render::diverging_overlay(&self.a.view, &stage.difference, stage.scale),
            ];
            for (col, tile) in tiles.iter().enumerate() {
                image::imageops::replace(&mut sheet, tile, (col as u32 * w) as i64, (row as u32 * h) as i64);
            }
        }
        sheet
    }

    pub fn write_image(&self, path: &Path, colormap: Colormap) -> Result<()> {
        explain::check_output_path(path)?;
        let format = explain::image_format(path)?;
        self.picture(colormap)
            .save_with_format(path, format)
            .map_err(|e| Error::Output { path: path.into(), message: e.to_string() })
    }

    /// Both maps as f32 `.npy` on A's frame: 2×H×W for one stage, 2×L×H×W for several (index 0
    /// is A).
    pub fn write_npy(&self, path: &Path) -> Result<()> {
        explain::check_output_path(path)?;
        let (h, w) = (self.a.size.height, self.a.size.width);
        let l = self.stages.len();
        let data: Vec<f32> = self
            .a
            .maps
            .iter()
            .flatten()
            .chain(self.stages.iter().flat_map(|st| &st.b_on_a))
            .copied()
            .collect();
        let cpu = &candle_core::Device::Cpu;
        let t = if l == 1 {
            candle_core::Tensor::from_vec(data, (2, h, w), cpu)?
        } else {
            candle_core::Tensor::from_vec(data, (2, l, h, w), cpu)?
        };
        t.write_npy(path).map_err(|e| Error::Output { path: path.into(), message: e.to_string() })
    }
}
