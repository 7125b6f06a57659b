//! Segmentation models against pytorch-grad-cam 1.5.7's `SemanticSegmentationTarget`: torchvision
//! FCN and LR-ASPP exported with both exporters (`scripts/make_seg_fixtures.py`), their output
//! and every reference map (the arg-max region of two classes, a box, the whole image) on both
//! engines. The small cases live in `tests/fixtures/seg`; the full-size FCN-ResNet50 and
//! LR-ASPP-MobileNetV3-Large in `$CAMSCOPE_SEG_FIXTURES` (default `../shared/fixtures/seg`), and
//! their test prints one `skipped:` line where they are absent.

mod common;

use std::path::{Path, PathBuf};

use camscope::cam::Method;
use camscope::contract::{with_stage, EngineKind, Mode, Model, Taps, Task};
use camscope::dataset::region::PixelBox;
use camscope::explain::{explain_input, ExplainOptions, StageChoice, Timings};
use camscope::preprocess::ModelInput;
use camscope::segment::{self, RegionTarget};
use common::{max_abs_diff, npy_vec, pearson, skip};

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    exports: Vec<Export>,
    cams: Vec<Cam>,
    classes_present: Vec<(usize, f64)>,
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
    region: serde_json::Value,
    /// pytorch-grad-cam's own map rerun in float64 against this float32 one (gradient methods;
    /// `make_seg_fixtures.py` records it).
    #[serde(default)]
    reference_f64_r: Option<f64>,
}

/// A reference map that pytorch-grad-cam does not reproduce in float64 to this correlation is
/// float32 rounding as much as signal, so no port can be held to it: Grad-CAM++ on full-size
/// DeepLabV3-MobileNetV3, whose α = 1 / (2 + ΣA·g) nearly divides by zero where a channel's ΣA
/// is negative (tests/fixtures/seg/README.md). Such maps are computed and reported, not judged.
const REPRODUCIBLE_R: f64 = 0.999;

fn cases(dir: &Path) -> Vec<Case> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn region(v: &serde_json::Value) -> RegionTarget {
    match v["kind"].as_str().unwrap() {
        "argmax" => RegionTarget::Predicted,
        "whole" => RegionTarget::Whole,
        "box" => {
            let b: Vec<f64> = v["box"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            RegionTarget::Box(PixelBox { x0: b[0], y0: b[1], x1: b[2], y1: b[3] })
        }
        other => panic!("unknown region kind {other}"),
    }
}

/// Every export of every case in `dir`: the output within 1e-3 of the reference's scale, the
/// classes present as PyTorch's arg-max finds them, every map r ≥ 0.999 and max |Δ| ≤ 0.02.
fn check_all(dir: &Path, engines: &[EngineKind], full_size: bool) {
    let mut failures = Vec::new();
    let mut excused = Vec::new();
    let mut compared = 0;
    for case in cases(dir) {
        let folder = dir.join(&case.name);
        let input_path = folder.join("input.npy");
        let want_out = npy_vec(&folder.join("output.npy"));
        for export in &case.exports {
            let model = camscope::load::load(folder.join(&export.file).to_str().unwrap(), None)
                .unwrap_or_else(|e| panic!("{}/{}: {e}", case.name, export.file));
            assert_eq!(model.task, Task::Segmentation, "{}/{}", case.name, export.file);
            let input = camscope::preprocess::load_input(Some(&input_path), &model.preprocess).unwrap();
            for &engine in engines {
                let what = format!("{}/{} on the {engine:?} engine", case.name, export.file);
                let mut taps = Taps::new(model.network.stages(), engine, Mode::Plain);
                let out = model.network.forward(&input.tensor, &mut taps).unwrap();
                let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
                let scale = want_out.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = max_abs_diff(&out, &want_out);
                assert!(worst <= 1e-3 * scale, "{what}: output max |Δ| {worst} (scale {scale})");
                for cam in &case.cams {
                    let Some(method) = Method::parse(&cam.method).ok() else {
                        panic!("unknown method {}", cam.method)
                    };
                    let opts = ExplainOptions {
                        method,
                        engine,
                        stages: StageChoice::Named(cam.layer.clone()),
                        class: Some(cam.class_index.to_string()),
                        region: region(&cam.region),
                        ..ExplainOptions::default()
                    };
                    let e = explain_input(&model, &input, &opts, Timings::default())
                        .unwrap_or_else(|e| panic!("{what} {}: {e}", cam.file));
                    if cam.region["kind"] == "argmax" {
                        let s = e.segmentation.as_ref().unwrap();
                        let present: Vec<usize> = s.classes_present.iter().map(|c| c.index).collect();
                        let want: Vec<usize> = case.classes_present.iter().map(|c| c.0).collect();
                        assert_eq!(present, want, "{what}: classes present");
                    }
                    let want = npy_vec(&folder.join(&cam.file));
                    compared += 1;
                    let stats = |m: &[f32]| (pearson(m, &want), max_abs_diff(m, &want));
                    let (mut r, mut d) = stats(&e.maps[0]);
                    if cam.method.starts_with("eigen") {
                        // The singular vector's sign is arbitrary (SPEC §3): our map must be the
                        // reference's projection or its negation, each post-processed.
                        let other = flipped_eigen_map_at(&model, &input, &opts, &cam.layer);
                        let (r2, d2) = stats(&other);
                        if r2 > r {
                            (r, d) = (r2, d2);
                        }
                    }
                    // Two constant maps (an all-zero reference is legitimate: the ReLU of a map ≤ 0)
                    // have no correlation; they agree when they are equal.
                    let r = if r.is_nan() && d <= 1e-6 { 1.0 } else { r };
                    let (min_r, max_d) = bounds(&cam.method, full_size);
                    let line = format!("{what} {}: r {r:.5}, max |Δ| {d:.4}", cam.file);
                    match cam.reference_f64_r {
                        Some(r64) if r64 < REPRODUCIBLE_R => {
                            assert!(e.maps[0].iter().all(|v| v.is_finite()), "{line}: not finite");
                            excused.push(format!(
                                "{line} (the reference against itself in float64: r {r64:.5})"
                            ));
                        }
                        _ if !(r >= min_r && d <= max_d) => failures.push(line),
                        _ => {}
                    }
                }
            }
        }
    }
    for line in &excused {
        println!("not judged, the reference is not reproducible: {line}");
    }
    assert!(
        excused.len() * 10 <= compared,
        "{} of {compared} maps excused: the fixtures are suspect",
        excused.len()
    );
    assert!(failures.is_empty(), "{} of {compared} maps differ:\n{}", failures.len(), failures.join("\n"));
}

/// SPEC §6's bounds; on the full-size models the element-wise products of gradient and
/// activation (HiResCAM, EigenGradCAM) at FCN-ResNet50's `backbone.layer3` carry the float32
/// noise of a gradient through 30 ReLUs (pre-activations within rounding of 0 go either way: our
/// two engines' gradients there differ by ~2% in L2): r stays ≥ 0.9995, max |Δ| reaches 0.033.
fn bounds(method: &str, full_size: bool) -> (f64, f32) {
    match (method, full_size) {
        ("hirescam" | "eigengradcam", true) => (0.999, 0.04),
        _ => (0.999, 0.02),
    }
}

/// The eigen method's map of `opts` at `layer` with the projection's sign reversed.
fn flipped_eigen_map_at(model: &Model, input: &ModelInput, opts: &ExplainOptions, layer: &str) -> Vec<f32> {
    let (network, stage) = with_stage(&model.network, layer).unwrap();
    let (engine, _) =
        segment::engine_for(model, network, input, &opts.device, opts.engine, &opts.region).unwrap();
    let class: usize = opts.class.as_deref().unwrap().parse().unwrap();
    common::flipped_eigen_map(engine.trace(), opts.method, stage, class, engine.size())
}

#[test]
fn small_torchvision_segmenters_match_pytorch_grad_cam() {
    let dir = common::repo_root().join("tests/fixtures/seg");
    check_all(&dir, &[EngineKind::Fast, EngineKind::Portable], false);
}

#[test]
fn full_size_fcn_resnet50_and_lraspp_match_pytorch_grad_cam() {
    let dir = std::env::var_os("CAMSCOPE_SEG_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join("../shared/fixtures/seg"));
    if !dir.join("manifest.json").is_file() {
        skip("needs the full-size segmentation fixtures: scripts/make_seg_fixtures.py DIR --big, then CAMSCOPE_SEG_FIXTURES=DIR");
        return;
    }
    check_all(&dir, &[EngineKind::Fast], true);
}
