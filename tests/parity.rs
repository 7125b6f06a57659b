//! Parity with pytorch-grad-cam (SPEC §6): logits, top-5, stage shapes and every CAM of every
//! reference case, computed on the exact input tensors the reference used.
//!
//! The default model's cases ship in `tests/fixtures/` and always run. The big set's other cases
//! (ResNet-18, ...) run when it is present (`$CAMSCOPE_FIXTURES` or `../shared/fixtures`), and each
//! test that needs it prints one `skipped:` line when it is not. Nothing is left out in between:
//! every map a manifest lists is compared with its method's tolerance, and a case whose model this
//! file cannot load, or a method camscope does not know, fails.
//!
//! The network runs on `CAMSCOPE_TEST_DEVICE` (default: the CPU; `cuda` with `--features cuda`).

mod common;

use std::path::Path;

use camscope::cam::{Control, Kind, Method};
use camscope::contract::Model;
use camscope::contract::{stage_index, stage_shapes, EngineKind};
use camscope::engine::Engine;
use camscope::load;
use camscope::trace::Trace;
use common::*;

/// `efficientnet-lite0` is the built-in model; `resnetN@S` is torchvision's ResNet-N with the seeded
/// random weights `resnetN_seedS.{safetensors,pth}` of the big set.
fn load_model(case: &Case, weights_ext: &str) -> Model {
    if case.model == "efficientnet-lite0" {
        return load::load("efficientnet-lite0", None).unwrap();
    }
    let Some((arch, seed)) = case.model.split_once('@').filter(|(a, _)| a.starts_with("resnet")) else {
        panic!("{}: fixture model {} unknown to tests/parity.rs", case.name, case.model)
    };
    let path = case.dir.parent().unwrap().join(format!("{arch}_seed{seed}.{weights_ext}"));
    load::load(path.to_str().unwrap(), None).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// SPEC §6: r ≥ 0.999 and max |Δ| ≤ 0.02; the perturbation methods (thousands of forward passes
/// through a softmax or a ratio) r ≥ 0.99, max |Δ| ≤ 0.05.
fn tolerance(method: Method) -> (f64, f32) {
    if method.kind() == Kind::Perturbation {
        (0.99, 0.05)
    } else {
        (0.999, 0.02)
    }
}

/// Logits, top-5 and stage shapes of `case`, then every map for which `wanted` holds, on `kind` of
/// engine; returns how many maps were compared.
fn check_case(case: &Case, weights_ext: &str, kind: EngineKind, wanted: impl Fn(Method) -> bool) -> usize {
    let name = &format!("{} ({kind} engine)", case.name);
    let model = load_model(case, weights_ext);
    let input = on_test_device(&read_npy(&case.dir.join("input.npy")));
    let engine = Engine::new(model.network.clone(), input.clone(), kind).unwrap();
    let trace = engine.trace();

    let reference = npy_vec(&case.dir.join("logits.npy"));
    let diff = max_abs_diff(trace.logits(), &reference);
    assert!(diff <= 1e-3, "{name}: logits differ by {diff}");
    let top5: Vec<usize> = trace.ranking().into_iter().take(5).collect();
    assert_eq!(top5, case.top5, "{name}: top-5");

    let side = input.dim(2).unwrap();
    let shapes = stage_shapes(model.network.as_ref(), side, side, kind).unwrap();
    let ours: Vec<(String, Vec<usize>)> = model
        .network
        .stages()
        .iter()
        .zip(&shapes)
        .map(|(spec, s)| (spec.name.clone(), s.raw.clone()))
        .collect();
    assert_eq!(ours, case.stages, "{name}: stages");

    let size = input.dim(3).unwrap();
    let mut checked = 0;
    for entry in &case.cams {
        let method = Method::parse(&entry.method)
            .unwrap_or_else(|e| panic!("{name} {}: method unknown to camscope: {e}", entry.file));
        if !wanted(method) {
            continue;
        }
        let stage = stage_index(model.network.as_ref(), &entry.layer)
            .unwrap_or_else(|e| panic!("{name} {}: stage unknown to camscope: {e}", entry.file));
        let ours = engine.cam(method, stage, entry.class_index, &Control::default()).unwrap();
        assert_eq!(ours.len(), size * size, "{name} {}", entry.file);
        let reference = read_map(&case.dir.join(&entry.file));
        let stats = |m: &[f32]| (pearson(m, &reference), max_abs_diff(m, &reference));
        let (r, d) = if entry.method.starts_with("eigen") {
            // The singular vector's sign is arbitrary (SPEC §3): our map must be the reference's
            // projection or its negation, each post-processed.
            let other = flipped_eigen_map(trace, method, stage, entry.class_index, engine.size());
            assert_ne!(ours, other);
            let (a, b) = (stats(&ours), stats(&other));
            if a.0 >= b.0 {
                a
            } else {
                b
            }
        } else {
            stats(&ours)
        };
        let (r_min, d_max) = tolerance(method);
        assert!(r >= r_min && d <= d_max, "{name} {}: r = {r:.6}, max |Δ| = {d:.4}", entry.file);
        checked += 1;
    }
    checked
}

/// Every map of a case, on `kind` of engine.
fn check_all(case: &Case, kind: EngineKind) {
    let checked = check_case(case, "safetensors", kind, |_| true);
    assert_eq!(checked, case.cams.len(), "{}", case.name);
    assert!(checked > 0, "{}: no map in the manifest", case.name);
}

/// Gradient, activation and whole-network methods of Lite0 on both.png: 36 maps, with the CPU tape.
#[test]
fn lite0_both_matches_reference() {
    check_all(&repo_case("lite0-both"), EngineKind::Fast);
}

/// The same 36 maps through Candle's own ops and autograd only: the code that runs on CUDA.
#[test]
fn lite0_both_matches_reference_on_the_portable_engine() {
    check_all(&repo_case("lite0-both"), EngineKind::Portable);
}

fn lite0_perturb_case() -> Case {
    let case = repo_case("lite0-both-perturb");
    let methods: Vec<&str> = case.cams.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(methods, ["scorecam", "ablationcam"]);
    case
}

/// Score-CAM and Ablation-CAM at `_conv_head` of Lite0. Score-CAM runs 1280 forward passes: one of
/// the slowest tests of the suite.
#[test]
fn lite0_both_perturb_matches_reference() {
    check_all(&lite0_perturb_case(), EngineKind::Fast);
}

/// Score-CAM (1280 batched forward passes) and Ablation-CAM through Candle's own ops only.
#[test]
fn lite0_both_perturb_matches_reference_on_the_portable_engine() {
    check_all(&lite0_perturb_case(), EngineKind::Portable);
}

/// The big set's cases that are not in the repository (ResNet-18 with random weights: gradient
/// methods and Score-CAM at two stages), every map of each.
#[test]
fn big_set_cases_match_reference() {
    let Some(dir) = big_fixtures_or_skip("the big reference set (ResNet-18 weights and maps)") else {
        return;
    };
    let in_repo: Vec<String> = repo_cases().into_iter().map(|c| c.name).collect();
    let cases: Vec<Case> = read_manifest(&dir).into_iter().filter(|c| !in_repo.contains(&c.name)).collect();
    assert!(!cases.is_empty(), "{}: no case beyond the repository's", dir.display());
    for case in &cases {
        for kind in [EngineKind::Fast, EngineKind::Portable] {
            check_all(case, kind);
        }
    }
}

fn resnet18_case(dir: &Path) -> Case {
    read_manifest(dir)
        .into_iter()
        .find(|c| c.model == "resnet18@0")
        .unwrap_or_else(|| panic!("{}: no resnet18@0 case", dir.display()))
}

/// The `.pth` checkpoint on the reference: logits, stages and the gradient maps. Its perturbation
/// maps are those of the `.safetensors` file (checked above), as the next test shows the two files
/// load the same network.
#[test]
fn resnet18_pth_matches_reference() {
    let Some(dir) = big_fixtures_or_skip("the ResNet-18 fixtures") else {
        return;
    };
    let case = resnet18_case(&dir);
    let checked = check_case(&case, "pth", EngineKind::Fast, |m| m.kind() != Kind::Perturbation);
    assert!(checked > 0);
}

#[test]
fn resnet18_pth_and_safetensors_give_identical_logits() {
    let Some(dir) = big_fixtures_or_skip("the ResNet-18 fixtures") else {
        return;
    };
    let case = resnet18_case(&dir);
    let input = on_test_device(&read_npy(&case.dir.join("input.npy")));
    let a = Trace::new(&load_model(&case, "safetensors").network, &input, EngineKind::Fast).unwrap();
    let b = Trace::new(&load_model(&case, "pth").network, &input, EngineKind::Fast).unwrap();
    assert_eq!(a.logits(), b.logits());
}

/// The repository's cases are the big set's, in compact form: same manifest entries, the same
/// input tensors and logits bit for bit, every map within the 16-bit quantisation (≤ 0.5/65535).
#[test]
fn repository_fixtures_are_the_big_sets_own() {
    let Some(dir) = big_fixtures_or_skip("the big reference set to compare the repository's copy with")
    else {
        return;
    };
    let big = read_manifest(&dir);
    for ours in repo_cases() {
        let theirs = big.iter().find(|c| c.name == ours.name);
        let theirs = theirs.unwrap_or_else(|| panic!("{}: not in {}", ours.name, dir.display()));
        assert_eq!((&ours.model, &ours.stages, &ours.top5), (&theirs.model, &theirs.stages, &theirs.top5));
        assert_eq!(ours.cams.len(), theirs.cams.len(), "{}", ours.name);
        for file in ["input.npy", "logits.npy"] {
            let (a, b) =
                (std::fs::read(ours.dir.join(file)).unwrap(), std::fs::read(theirs.dir.join(file)).unwrap());
            assert!(a == b, "{}/{file} differs from the big set's", ours.name);
        }
        for (a, b) in ours.cams.iter().zip(&theirs.cams) {
            assert_eq!((&a.method, &a.layer, a.class_index), (&b.method, &b.layer, b.class_index));
            let (qa, fb) = (read_map(&ours.dir.join(&a.file)), read_map(&theirs.dir.join(&b.file)));
            let d = max_abs_diff(&qa, &fb);
            assert!(
                qa.len() == fb.len() && d <= 0.5 / 65535.0 + 1e-7,
                "{}/{}: off by {d}",
                ours.name,
                a.file
            );
        }
    }
}

/// The repository's manifest lists what the tests above take from it, and its maps are the
/// compact form, all present.
#[test]
fn repository_manifest_is_complete() {
    let cases = repo_cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["lite0-both", "lite0-both-perturb"]);
    for case in &cases {
        assert_eq!(case.model, "efficientnet-lite0");
        for file in ["input.npy", "logits.npy"] {
            assert!(case.dir.join(file).is_file(), "{}/{file}", case.name);
        }
        for entry in &case.cams {
            assert!(entry.file.ends_with(".png"), "{}/{}", case.name, entry.file);
            let map = read_map(&case.dir.join(&entry.file));
            assert_eq!(map.len(), 224 * 224, "{}/{}", case.name, entry.file);
        }
    }
}
