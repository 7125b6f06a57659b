//! Classifiers exported at a non-square input (H 96 × W 128) against pytorch-grad-cam:
//! `tests/fixtures/nonsquare` (made by `scripts/make_nonsquare_fixtures.py`, in the repository, so
//! these always run). A MobileNetV3-Small checks the convolutional path at 3×4 and 6×8 grids; a
//! two-block timm ViT checks that tokens are laid on a 6-row × 8-column patch grid the way
//! pytorch-grad-cam's `vit_reshape_transform(height=6, width=8)` lays them: a transposed grid
//! still gives a 96×128 map, but not the reference's.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use camscope::cam::{Control, Method};
use camscope::contract::{EngineKind, ImageClassifier, Layout};
use camscope::engine::Engine;
use camscope::onnx::OnnxModel;
use camscope::preprocess::InputSize;
use common::{max_abs_diff, npy_vec, on_test_device, pearson, read_npy};

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    input_size: [usize; 2],
    layers: Vec<String>,
    layer_shapes: std::collections::HashMap<String, Vec<usize>>,
    top1: usize,
    exports: Vec<Export>,
    cams: Vec<Cam>,
}

#[derive(serde::Deserialize)]
struct Export {
    file: String,
}

#[derive(serde::Deserialize)]
struct Cam {
    file: String,
    method: String,
    layer: String,
    class_index: usize,
    layout: LayoutRef,
}

/// The manifest's layout of a layer: `{"kind": "nchw"}`, or tokens with their prefix and grid.
#[derive(serde::Deserialize)]
struct LayoutRef {
    kind: String,
    #[serde(default)]
    prefix: usize,
    #[serde(default)]
    grid: Option<[usize; 2]>,
}

impl LayoutRef {
    fn expected(&self) -> Layout {
        match (self.kind.as_str(), self.grid) {
            ("nchw", None) => Layout::Nchw,
            ("tokens", Some(grid)) => Layout::Tokens { prefix: self.prefix, grid },
            other => panic!("the manifest names a layout this test does not know: {other:?}"),
        }
    }
}

fn folder() -> PathBuf {
    common::repo_fixtures().join("nonsquare")
}

fn case(name: &str) -> Case {
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(folder().join("manifest.json")).unwrap()).unwrap();
    cases.into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no non-square case {name}"))
}

/// SPEC §6's bounds: r ≥ 0.999 and max |Δ| ≤ 0.02 for every map but Score-CAM's, whose softmax of
/// a thousand-odd masked passes gets r ≥ 0.99 and 0.05.
fn bounds(method: &str) -> (f64, f32) {
    if method == "scorecam" {
        (0.99, 0.05)
    } else {
        (0.999, 0.02)
    }
}

/// Every export of a case on both engines: the input size read from the graph, the logits, the
/// stages' shapes and layouts, and every reference map (Score-CAM's included: these models are
/// small enough).
fn check(name: &str) {
    let case = case(name);
    let dir = folder().join(name);
    let frame = InputSize::new(case.input_size[0], case.input_size[1]);
    let input = on_test_device(&read_npy(&dir.join("input.npy")));
    let reference_logits = npy_vec(&dir.join("logits.npy"));
    let layers: Vec<&str> = case.layers.iter().map(String::as_str).collect();
    assert!(!case.exports.is_empty());
    for export in &case.exports {
        let full = OnnxModel::load(&dir.join(&export.file), None).unwrap();
        assert_eq!(full.input_size(), case.input_size, "{name}/{}: the graph's input size", export.file);
        let model: Arc<dyn ImageClassifier> = Arc::new(full.with_stages(&layers).unwrap());
        let shapes =
            camscope::contract::stage_shapes(model.as_ref(), frame.height, frame.width, EngineKind::Fast)
                .unwrap();
        for (spec, shape) in model.stages().iter().zip(&shapes) {
            assert_eq!(
                shape.raw, case.layer_shapes[&spec.name],
                "{name}/{}: shape of {}",
                export.file, spec.name
            );
        }
        for engine in [EngineKind::Fast, EngineKind::Portable] {
            let what = format!("{name}/{} {engine}", export.file);
            let cams = Engine::new(model.clone(), input.clone(), engine).unwrap();
            assert_eq!(cams.size(), frame, "{what}: the engine's frame");
            let trace = cams.trace();
            let scale = reference_logits.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(trace.logits(), &reference_logits);
            assert!(diff <= 1e-3 * scale, "{what}: logits differ by {diff} (scale {scale})");
            assert_eq!(trace.ranking()[0], case.top1, "{what}: top-1");

            let (mut worst_r, mut worst_d) = (f64::INFINITY, 0f32);
            let mut failures = Vec::new();
            for cam in &case.cams {
                let stage = camscope::contract::stage_index(model.as_ref(), &cam.layer).unwrap();
                assert_eq!(
                    model.stages()[stage].layout,
                    cam.layout.expected(),
                    "{what}: layout of {}",
                    cam.layer
                );
                let method = Method::parse(&cam.method).unwrap();
                let ours = cams.cam(method, stage, cam.class_index, &Control::default()).unwrap();
                let reference = npy_vec(&dir.join(&cam.file));
                assert_eq!(ours.len(), frame.area(), "{what} {}: map size", cam.file);
                let (r, d) = (pearson(&ours, &reference), max_abs_diff(&ours, &reference));
                let (min_r, max_d) = bounds(&cam.method);
                if !(r >= min_r && d <= max_d) {
                    failures.push(format!("{what} {}: r = {r:.6}, max |Δ| = {d:.4}", cam.file));
                }
                worst_r = worst_r.min(r);
                worst_d = worst_d.max(d);
            }
            assert!(failures.is_empty(), "maps off the reference:\n{}", failures.join("\n"));
            println!(
                "{what}: {} maps, worst r = {worst_r:.6}, max |Δ| = {worst_d:.5}, logits max |Δ| = {diff:.2e}",
                case.cams.len()
            );
        }
    }
}

#[test]
fn mobilenet_v3_small_at_96_by_128_matches_reference() {
    check("mnv3_small");
}

#[test]
fn vit_on_a_6_by_8_patch_grid_matches_reference() {
    check("vit_tiny");
}

/// Without `with_stages`, the ViT's default stages are its blocks, laid on the 6×8 grid found
/// from the graph (rows from the height, columns from the width).
#[test]
fn vit_default_stages_find_the_non_square_grid() {
    let model = OnnxModel::load(&folder().join("vit_tiny/model.onnx"), None).unwrap();
    let names: Vec<&str> = model.stages().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["blocks.0", "blocks.1"]);
    for stage in model.stages() {
        assert_eq!(stage.layout, Layout::Tokens { prefix: 1, grid: [6, 8] }, "{}", stage.name);
    }
}
