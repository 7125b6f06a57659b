//! Two models side by side (`--vs`): a model against itself, against the same weights with one
//! block perturbed, against another architecture, and two exports of one network.

mod common;

use std::collections::HashMap;
use std::path::Path;

use camscope::cam::Method;
use camscope::compare::{explain_pair, Comparison};
use camscope::explain::{ExplainOptions, StageChoice};
use camscope::families::Arch;
use camscope::load;
use candle_core::Tensor;

fn compare(a: &camscope::contract::Model, b: &camscope::contract::Model, opts: ExplainOptions) -> Comparison {
    let image = Some(common::image("chelsea.png"));
    explain_pair(a, b, &ExplainOptions { image, ..opts }).unwrap()
}

#[test]
fn a_model_against_itself_agrees_at_every_stage() {
    let lite = load::load(load::DEFAULT_MODEL, None).unwrap();
    let cmp = compare(&lite, &lite, ExplainOptions { stages: StageChoice::All, ..ExplainOptions::default() });
    assert_eq!(cmp.stages.len(), lite.network.stages().len());
    for s in &cmp.stages {
        assert_eq!(s.pair.a, s.pair.b);
        assert!(s.pearson.is_none_or(|r| r > 0.999_999), "{}: {:?}", s.pair.a, s.pearson);
        assert_eq!(s.mean_abs_difference, 0.0, "{}", s.pair.a);
    }
    assert!(cmp.top1_agrees());
    assert!(cmp.changes().iter().all(|(_, _, a, b)| a == b));
}

/// ResNet-18 with seeded weights, then the same checkpoint with `layer3`'s convolutions changed.
fn resnet_and_perturbed(dir: &Path) -> (camscope::contract::Model, camscope::contract::Model) {
    let base = dir.join("base.safetensors");
    common::write_random_resnet18(&base, 7);
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&base, &candle_core::Device::Cpu).unwrap();
    let mut rng = common::Rng::new(99);
    for (name, t) in tensors.iter_mut() {
        if name.starts_with("layer3.") && name.ends_with("conv1.weight") {
            let noise = rng.tensor(t.dims(), 0.0, 2.0);
            *t = (&*t * noise).unwrap();
        }
    }
    let perturbed = dir.join("perturbed.safetensors");
    candle_core::safetensors::save(&tensors, &perturbed).unwrap();
    let open = |p: &Path| load::load(p.to_str().unwrap(), Some(Arch::parse("resnet18").unwrap())).unwrap();
    (open(&base), open(&perturbed))
}

#[test]
fn a_perturbed_block_changes_the_maps_from_that_block_on_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let (base, perturbed) = resnet_and_perturbed(dir.path());
    // EigenCAM reads activations only: a stage before the perturbed block sees the same numbers.
    let opts =
        ExplainOptions { stages: StageChoice::All, method: Method::EigenCam, ..ExplainOptions::default() };
    let cmp = compare(&base, &perturbed, opts);
    let names: Vec<&str> = cmp.stages.iter().map(|s| s.pair.a.as_str()).collect();
    let first_changed = names.iter().position(|n| n.starts_with("layer3")).expect("a layer3 stage");
    for s in &cmp.stages[..first_changed] {
        assert_eq!(s.mean_abs_difference, 0.0, "{} is before the perturbation", s.pair.a);
    }
    for s in &cmp.stages[first_changed..] {
        assert!(s.mean_abs_difference > 1e-3, "{} is after it: {}", s.pair.a, s.mean_abs_difference);
    }
    // Grad-CAM's gradients flow back through the block, so earlier maps may change too, but the
    // comparison still reports every stage and a prediction that moved.
    let cmp =
        compare(&base, &perturbed, ExplainOptions { stages: StageChoice::All, ..ExplainOptions::default() });
    assert_eq!(cmp.stages.len(), base.network.stages().len());
    assert!(cmp.changes().iter().any(|(_, _, a, b)| (a - b).abs() > 1e-4));
}

#[test]
fn two_architectures_on_the_same_labels_compare_their_own_stages() {
    let lite = load::load(load::DEFAULT_MODEL, None).unwrap();
    let resnet = load::synthetic(Arch::parse("resnet18").unwrap(), 3).unwrap();
    let cmp = compare(&lite, &resnet, ExplainOptions::default());
    assert_eq!(cmp.stages.len(), 1);
    assert_eq!((cmp.stages[0].pair.a.as_str(), cmp.stages[0].pair.b.as_str()), ("_conv_head", "layer4.1"));
    assert_eq!(cmp.stages[0].difference.len(), 224 * 224);
    // B is asked about A's class.
    assert_eq!(cmp.b.class, cmp.a.class);
    let json: serde_json::Value = serde_json::from_str(&cmp.json()).unwrap();
    assert_eq!(json["stages"][0]["b"], "layer4.1");
    assert_eq!(json["a"]["model"], "efficientnet-lite0");
}

#[test]
fn models_of_other_classes_are_refused() {
    let lite = load::load(load::DEFAULT_MODEL, None).unwrap();
    let mut other = load::load(load::DEFAULT_MODEL, None).unwrap();
    other.labels.swap(0, 1);
    let err = explain_pair(&lite, &other, &ExplainOptions::default()).err().unwrap().to_string();
    assert!(err.contains("class 0 is \"tench\" in one, \"goldfish\" in the other"), "{err}");
}

#[test]
fn explain_vs_writes_both_maps_the_picture_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("maps.npy");
    let png = dir.path().join("cmp.png");
    let (npy_s, png_s) = (npy.to_str().unwrap(), png.to_str().unwrap());
    let o = common::camscope(&[
        "explain",
        "tests/fixtures/images/chelsea.png",
        "--vs",
        "efficientnet-lite0",
        "-l",
        "_blocks.10",
        "--npy",
        npy_s,
        "-o",
        png_s,
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["stages"][0]["a"], "_blocks.10");
    assert_eq!(json["top1_agrees"], true);
    assert_eq!(common::read_npy(&npy).dims(), [2, 224, 224]);
    assert_eq!(image::image_dimensions(&png).unwrap(), (3 * 224, 224));

    let o = common::camscope(&["explain", "--vs", "no-such-model"]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("no-such-model"), "{}", common::stderr(&o));
}

/// The same MobileNetV2 through both of PyTorch's ONNX exporters: one network, two graphs.
#[test]
fn two_exports_of_one_network_agree() {
    let Some(root) = common::big_fixtures_or_skip("two ONNX exports of MobileNetV2") else { return };
    let dir = root.join("onnx/mobilenet_v2");
    let open = |f: &str| load::load(dir.join(f).to_str().unwrap(), None).unwrap();
    let (script, dynamo) = (open("model.onnx"), open("model_dynamo.onnx"));
    let opts = ExplainOptions { stages: StageChoice::All, ..ExplainOptions::default() };
    let cmp = compare(&script, &dynamo, opts);
    assert!(cmp.stages.len() > 10, "{} shared stages", cmp.stages.len());
    assert!(cmp.top1_agrees());
    for s in &cmp.stages {
        assert_eq!(s.pair.a, s.pair.b);
        assert!(s.pearson.is_none_or(|r| r >= 0.999), "{}: r {:?}", s.pair.a, s.pearson);
    }
    for (_, label, a, b) in cmp.changes() {
        assert!((a - b).abs() < 1e-4, "{label}: {a} vs {b}");
    }
}

/// `sweep --vs` is two single sweeps side by side: A's columns are A's sweep, B's are B's (for
/// the same target), and the map correlation is that of the two sweeps' saved maps.
#[test]
fn sweep_vs_rows_equal_two_single_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let b_model = dir.path().join("r18.safetensors");
    common::write_random_resnet18(&b_model, 5);
    let folder = "tests/fixtures/dataset/folder";
    let run = |args: &[&str]| {
        let o = common::camscope(args);
        assert!(o.status.success(), "{}", common::stderr(&o));
        common::stderr(&o)
    };
    run(&["sweep", folder, "-o", &p("a.csv"), "--save-maps", &p("maps_a")]);
    run(&["sweep", folder, "-m", &p("r18.safetensors"), "-o", &p("b.csv"), "--save-maps", &p("maps_b")]);
    let log = run(&["sweep", folder, "--vs", &p("r18.safetensors"), "-o", &p("vs.csv")]);
    assert!(log.contains("against the second model:"), "{log}");
    let read = |n: &str| camscope::dataset::results::read(Path::new(&p(n))).unwrap();
    let (a, b, vs) = (read("a.csv"), read("b.csv"), read("vs.csv"));
    assert_eq!(vs.len(), a.len());
    let (mut compared, mut correlated) = (0, 0);
    for ((va, a), b) in vs.iter().zip(&a).zip(&b) {
        assert_eq!(camscope::dataset::Row { vs: None, ..va.clone() }, *a);
        if a.error.is_some() || a.true_index.is_none() {
            continue;
        }
        let v = va.vs.as_ref().expect("B's side");
        assert_eq!(v.predicted.as_ref(), b.top_k.first());
        assert_eq!((v.p_true, v.loss, v.correct), (b.p_true, b.loss, b.correct));
        let want = match (a.correct.unwrap(), b.correct.unwrap()) {
            (false, true) => "fixed",
            (true, false) => "broken",
            (true, true) => "both_right",
            (false, false) => "both_wrong",
        };
        assert_eq!(v.change.unwrap().name(), want);
        let map = |d: &str| common::npy_vec(&dir.path().join(d).join(&a.path).with_extension("npy"));
        let (ma, mb) = (map("maps_a"), map("maps_b"));
        match v.map_r {
            Some(r) => assert!((r as f64 - common::pearson(&ma, &mb)).abs() < 1e-4, "{}: {r}", a.path),
            None => {
                let constant = |m: &[f32]| m.iter().all(|&x| x == m[0]);
                assert!(constant(&ma) || constant(&mb), "{}: no r for two varying maps", a.path);
            }
        }
        correlated += v.map_r.is_some() as usize;
        if let (Some(ea), Some(eb)) = (a.energy_in_object, b.energy_in_object) {
            assert!((v.energy_change.unwrap() - (eb - ea)).abs() < 1e-5);
        }
        compared += 1;
    }
    assert_eq!(compared, 4);
    assert!(correlated > 0, "no row had two varying maps to correlate");
}
