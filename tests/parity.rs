//! Parity with pytorch-grad-cam (SPEC §6): logits and every gradient-method CAM of the reference
//! fixtures, computed on the exact input tensors the reference used.

mod common;

use camscope::cam::Method;
use camscope::model::card::{self, Model};
use camscope::model::EngineKind;
use camscope::trace::Trace;
use common::*;

/// Methods checked here; Score-CAM and Ablation-CAM have their own test below.
const GRADIENT_METHODS: [&str; 9] = [
    "fullgrad",
    "gradcam",
    "hirescam",
    "gradcam-elementwise",
    "gradcam++",
    "xgradcam",
    "layercam",
    "eigencam",
    "eigengradcam",
];

fn load_model(case: &Case, weights_ext: &str) -> Model {
    match case.model.as_str() {
        "efficientnet-lite0" => card::load("efficientnet-lite0", None).unwrap(),
        "resnet18@0" => {
            let path = fixtures().join(format!("resnet18_seed0.{weights_ext}"));
            card::load(path.to_str().unwrap(), None).unwrap()
        }
        other => panic!("fixture model {other} unknown to the test"),
    }
}

/// The eigen method's map with the projection's sign reversed.
fn flipped_eigen_map(trace: &Trace, method: Method, stage: usize, class: usize, size: usize) -> Vec<f32> {
    let a = trace.activation(stage);
    let x = match method {
        Method::EigenCam => (**a).clone(),
        _ => trace.gradients(class).unwrap()[stage].mul(a),
    };
    let negated: Vec<f32> = camscope::cam::eigen_projection(&x).iter().map(|v| -v).collect();
    camscope::cam::finish(&negated, a.height, a.width, size)
}

fn check_case(name: &str, weights_ext: &str) {
    let case = case(name);
    let model = load_model(&case, weights_ext);
    let dir = fixtures().join(&case.name);
    let input = read_npy(&dir.join("input.npy"));
    let engine =
        camscope::engine::Engine::new(model.network.clone(), input.clone(), EngineKind::Fast).unwrap();
    let trace = engine.trace();

    // Logits.
    let reference = npy_vec(&dir.join("logits.npy"));
    let diff = max_abs_diff(trace.logits(), &reference);
    assert!(diff <= 1e-3, "{name}: logits differ by {diff}");
    let top5: Vec<usize> = trace.ranking().into_iter().take(5).collect();
    assert_eq!(top5, case.top5, "{name}: top-5");

    // Stage names and shapes.
    let side = input.dim(2).unwrap();
    let shapes = camscope::model::stage_shapes(model.network.as_ref(), side, side, EngineKind::Fast).unwrap();
    let ours: Vec<(String, Vec<usize>)> = model
        .network
        .stages()
        .iter()
        .zip(&shapes)
        .map(|(spec, s)| (spec.name.clone(), s.raw.clone()))
        .collect();
    assert_eq!(ours, case.stages, "{name}: stages");

    // Every CAM.
    let size = input.dim(3).unwrap();
    let mut checked = 0;
    for entry in case.cams.iter().filter(|c| GRADIENT_METHODS.contains(&c.method.as_str())) {
        let method = Method::parse(&entry.method).unwrap();
        let stage = camscope::model::stage_index(model.network.as_ref(), &entry.layer).unwrap();
        let ours = engine.cam(method, stage, entry.class_index, &camscope::cam::Control::default()).unwrap();
        let reference = npy_vec(&dir.join(&entry.file));
        let (ours, r, d) = if entry.method.starts_with("eigen") {
            // The singular vector's sign is arbitrary (SPEC §3): our map must be the reference's
            // projection or its negation, each post-processed.
            let other = flipped_eigen_map(trace, method, stage, entry.class_index, size);
            assert_ne!(ours, other);
            let stats = |m: Vec<f32>| {
                let (r, d) = (pearson(&m, &reference), max_abs_diff(&m, &reference));
                (m, r, d)
            };
            let (a, b) = (stats(ours), stats(other));
            if a.1 >= b.1 {
                a
            } else {
                b
            }
        } else {
            let (r, d) = (pearson(&ours, &reference), max_abs_diff(&ours, &reference));
            (ours, r, d)
        };
        assert!(r >= 0.999 && d <= 0.02, "{name} {}: r = {r:.6}, max |Δ| = {d:.4}", entry.file);
        assert_eq!(ours.len(), size * size);
        checked += 1;
    }
    assert!(checked > 0, "{name}: no CAM checked");
}

#[test]
fn lite0_logits_stages_and_gradient_cams_match_reference() {
    check_case("lite0-both", "safetensors");
}

#[test]
fn resnet18_safetensors_matches_reference() {
    check_case("resnet18-random", "safetensors");
}

#[test]
fn resnet18_pth_matches_reference() {
    check_case("resnet18-random", "pth");
}

#[test]
fn resnet18_pth_and_safetensors_give_identical_logits() {
    let case = case("resnet18-random");
    let input = read_npy(&fixtures().join("resnet18-random/input.npy"));
    let a = Trace::new(&load_model(&case, "safetensors").network, &input, EngineKind::Fast).unwrap();
    let b = Trace::new(&load_model(&case, "pth").network, &input, EngineKind::Fast).unwrap();
    assert_eq!(a.logits(), b.logits());
}

#[test]
fn lite0_perturb_case_logits_match() {
    let case = case("lite0-both-perturb");
    let model = load_model(&case, "");
    let dir = fixtures().join(&case.name);
    let trace = Trace::new(&model.network, &read_npy(&dir.join("input.npy")), EngineKind::Fast).unwrap();
    let diff = max_abs_diff(trace.logits(), &npy_vec(&dir.join("logits.npy")));
    assert!(diff <= 1e-3, "logits differ by {diff}");
}

/// Score-CAM and Ablation-CAM at `_conv_head` of Lite0 (SPEC §6: r ≥ 0.99, max |Δ| ≤ 0.05).
/// Score-CAM runs 1280 forward passes: this is the slowest test of the suite (about 40 s).
#[test]
fn lite0_perturbation_methods_match_reference() {
    use camscope::cam::Control;
    use camscope::engine::Engine;
    let case = case("lite0-both-perturb");
    let model = load_model(&case, "");
    let dir = fixtures().join(&case.name);
    let engine =
        Engine::new(model.network.clone(), read_npy(&dir.join("input.npy")), EngineKind::Fast).unwrap();
    let mut checked = 0;
    for entry in &case.cams {
        let method = Method::parse(&entry.method).unwrap();
        let stage = camscope::model::stage_index(model.network.as_ref(), &entry.layer).unwrap();
        let ours = engine.cam(method, stage, entry.class_index, &Control::default()).unwrap();
        let reference = npy_vec(&dir.join(&entry.file));
        let (r, d) = (pearson(&ours, &reference), max_abs_diff(&ours, &reference));
        assert!(r >= 0.99 && d <= 0.05, "{}: r = {r:.6}, max |Δ| = {d:.4}", entry.file);
        checked += 1;
    }
    assert_eq!(checked, 2);
}
