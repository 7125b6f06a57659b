//! The ops segmentation networks bring (Resize / Upsample in every mode torch exports, dilated
//! and dilated depthwise convolutions, a dict output), against torch: the tiny modules of
//! `tests/fixtures/onnx_ops` (written by `scripts/make_onnx_op_fixtures.py`, both exporters).
//! Forward on both engines, and the gradient of Σ out · seed at the stage `body` by the fast
//! engine's reverse pass (`Recording::output_gradients`) and by Candle's autograd through the
//! portable engine, all within 1e-4 of torch relative to the largest value. Also: full-size
//! segmentation exports, when `$CAMSCOPE_SEG_FIXTURES` (default `../shared/fixtures/seg`) holds
//! them, and the load errors of outputs and Resize attributes camscope does not take.

mod common;

use std::path::{Path, PathBuf};

use camscope::contract::{EngineKind, ImageClassifier, Mode, Taps};
use camscope::onnx::proto::ModelProto;
use camscope::onnx::OnnxModel;
use candle_core::{Tensor, Var};
use common::{max_abs_diff, read_npy, repo_fixtures, skip};
use prost::Message;

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    stage: String,
    exports: Vec<String>,
    output: Vec<usize>,
    outputs: Vec<String>,
}

fn fixtures() -> PathBuf {
    repo_fixtures().join("onnx_ops")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("tests/fixtures/onnx_ops");
    serde_json::from_str(&text).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a − b| relative to the largest |b| (1 if all are zero).
fn relative(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (values(a), values(b));
    let largest = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    max_abs_diff(&a, &b) / if largest > 0.0 { largest } else { 1.0 }
}

/// The output on `engine`, and the gradient of Σ out · seed at every stage by Candle's autograd
/// through that forward pass (a zero `Var` added at each stage, SPEC §7).
fn autograd(model: &OnnxModel, x: &Tensor, seed: &Tensor, engine: EngineKind) -> (Tensor, Vec<Tensor>) {
    let mut zeros: Vec<Var> = Vec::new();
    let mut add_zero = |_: usize, a: Tensor| {
        let z = Var::zeros(a.shape(), a.dtype(), a.device())?;
        let out = a.add(z.as_tensor())?;
        zeros.push(z);
        Ok(out)
    };
    let mut taps = Taps::with_hook(model.stages(), engine, Mode::Plain, &mut add_zero);
    let out = model.forward(x, &mut taps).unwrap();
    drop(taps);
    let grads = out.mul(seed).unwrap().sum_all().unwrap().backward().unwrap();
    let stage_grads = zeros.iter().map(|z| grads.get(z.as_tensor()).unwrap().clone()).collect();
    (out.detach(), stage_grads)
}

/// Every case and export: the output and the stage's gradient as torch computed them, on both
/// engines, within `1e-4` relative.
#[test]
fn ops_match_torch_on_both_engines() {
    let mut checked = 0;
    for case in cases() {
        let dir = fixtures().join(&case.name);
        let x = read_npy(&dir.join("input.npy"));
        let (want_out, seed, want_grad) = (
            read_npy(&dir.join("output.npy")),
            read_npy(&dir.join("seed.npy")),
            read_npy(&dir.join("grad_body.npy")),
        );
        for export in &case.exports {
            let label = format!("{}/{export}", case.name);
            let full = OnnxModel::load(&dir.join(export), None).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(full.output_shape(), case.output.as_slice(), "{label}");
            let model = full.with_stages(&[case.stage.as_str()]).unwrap();
            let pass = camscope::contract::ImageClassifier::reverse_pass(&model).unwrap();
            let recording = pass.record(&x).unwrap();
            let d = relative(&recording.logits(), &want_out);
            assert!(d <= 1e-4, "{label}: fast output differs by {d:.2e}");
            let grad = recording.output_gradients(&seed).unwrap().remove(0).expect("a gradient at the stage");
            let d = relative(&grad, &want_grad);
            assert!(d <= 1e-4, "{label}: fast reverse pass differs from torch by {d:.2e}");
            let mut worst = d;
            for engine in [EngineKind::Fast, EngineKind::Portable] {
                let (out, grads) = autograd(&model, &x, &seed, engine);
                let d = relative(&out, &want_out);
                assert!(d <= 1e-4, "{label} {engine}: output differs by {d:.2e}");
                let d = relative(&grads[0], &want_grad);
                assert!(d <= 1e-4, "{label} {engine}: autograd differs from torch by {d:.2e}");
                worst = worst.max(d);
            }
            println!("{label}: output {:?}, worst gradient difference {worst:.2e}", want_out.dims());
            checked += 1;
        }
    }
    assert!(checked >= 18, "only {checked} exports checked");
}

/// `stage_gradients(c)` is `output_gradients` of the one-hot seed: for a score map, class c's
/// scores summed over the whole image.
#[test]
fn one_class_is_the_one_hot_seed() {
    let dir = fixtures().join("bilinear_to_image");
    let model = OnnxModel::load(&dir.join("model.onnx"), None).unwrap().with_stages(&["body"]).unwrap();
    let x = read_npy(&dir.join("input.npy"));
    let recording = camscope::contract::ImageClassifier::reverse_pass(&model).unwrap().record(&x).unwrap();
    let (c, h, w) = (3, 16, 16);
    let mut seed = vec![0f32; c * h * w];
    seed[h * w..2 * h * w].iter_mut().for_each(|v| *v = 1.0);
    let seed = Tensor::from_vec(seed, (1, c, h, w), &candle_core::Device::Cpu).unwrap();
    let by_seed = recording.output_gradients(&seed).unwrap().remove(0).unwrap();
    let by_class = recording.stage_gradients(1).unwrap().remove(0).unwrap();
    assert!(relative(&by_class, &by_seed) < 1e-6);
    assert!(recording.stage_gradients(3).is_err());
    let wrong = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let e = recording.output_gradients(&wrong).unwrap_err().to_string();
    assert!(e.contains("[1, 3, 8, 8]") && e.contains("[1, 3, 16, 16]"), "{e}");
}

/// A graph with outputs `aux`, `out` explains `out` and says so; the other output is not computed.
#[test]
fn several_outputs_take_the_one_named_out() {
    let case = cases().into_iter().find(|c| c.name == "two_outputs").unwrap();
    assert_eq!(case.outputs, ["aux", "out"]);
    for export in &case.exports {
        let model = OnnxModel::load(&fixtures().join(&case.name).join(export), None).unwrap();
        assert_eq!(model.output_note(), Some("graph has outputs aux, out: using out"), "{export}");
    }
    let single = OnnxModel::load(&fixtures().join("dilated/model.onnx"), None).unwrap();
    assert_eq!(single.output_note(), None);
}

/// A batch of images runs as one (the graph computes them independently) with dilated and
/// depthwise-dilated convolutions and Resize, and equals the images one by one.
#[test]
fn batches_equal_single_images() {
    for name in ["dilated", "bilinear_corners_scale", "nearest_odd_size"] {
        let dir = fixtures().join(name);
        let model = OnnxModel::load(&dir.join("model.onnx"), None).unwrap();
        // The sizes the tracer read off the input's shape, (1, C, H, W), do not bind the batch.
        assert!(model.runs_batches_as_one(), "{name}");
        let x = read_npy(&dir.join("input.npy"));
        let x2 = Tensor::cat(&[&x, &x.affine(-0.5, 0.25).unwrap()], 0).unwrap();
        for engine in [EngineKind::Fast, EngineKind::Portable] {
            let run = |x: &Tensor| {
                let mut taps = Taps::new(model.stages(), engine, Mode::Plain);
                model.forward(x, &mut taps).unwrap()
            };
            let batch = run(&x2);
            for i in 0..2 {
                let one = run(&x2.narrow(0, i, 1).unwrap());
                assert!(relative(&batch.narrow(0, i, 1).unwrap(), &one) < 1e-5, "{name} {engine} image {i}");
            }
        }
    }
}

fn load_proto(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn load_error(m: &ModelProto) -> String {
    match OnnxModel::from_bytes("bad", &m.encode_to_vec(), Path::new("."), None) {
        Ok(_) => panic!("the graph loaded"),
        Err(e) => e.to_string(),
    }
}

/// Outputs that are neither (1, C) nor (1, C, H, W), and Resize attributes camscope does not
/// take, fail at load with the node and the attribute named.
#[test]
fn bad_outputs_and_resize_attributes_are_clear_errors() {
    use camscope::onnx::proto::{AttributeProto, NodeProto, TensorProto, ValueInfoProto};
    let base = load_proto(&fixtures().join("bilinear_to_image/model.onnx"));

    // The score map reshaped to (1, 3, 256): a 3-D output.
    let mut m = base.clone();
    let g = m.graph.as_mut().unwrap();
    let out = g.output[0].name.clone();
    g.initializer.push(TensorProto {
        name: "shape3".into(),
        dims: vec![3],
        data_type: 7,
        int64_data: vec![1, 3, 256],
        ..Default::default()
    });
    g.node.push(NodeProto {
        op_type: "Reshape".into(),
        name: "/Reshape".into(),
        input: vec![out, "shape3".into()],
        output: vec!["tokens".into()],
        ..Default::default()
    });
    g.output = vec![ValueInfoProto { name: "tokens".into(), ..Default::default() }];
    let e = load_error(&m);
    assert!(e.contains("'tokens'") && e.contains("[1, 3, 256]") && e.contains("(1, classes)"), "{e}");

    // Resize modes and coordinate transformations it does not know.
    for (attr, value) in [
        ("mode", "area"),
        ("coordinate_transformation_mode", "tf_crop_and_resize"),
        ("nearest_mode", "stochastic"),
        ("keep_aspect_ratio_policy", "squash"),
    ] {
        let mut m = base.clone();
        let g = m.graph.as_mut().unwrap();
        let resize = g.node.iter_mut().find(|n| n.op_type == "Resize").unwrap();
        resize.attribute.retain(|a| a.name != attr);
        resize.attribute.push(AttributeProto {
            name: attr.into(),
            r#type: 3,
            s: value.as_bytes().to_vec(),
            ..Default::default()
        });
        let e = load_error(&m);
        assert!(e.contains("Resize at node") && e.contains(&format!("{attr} '{value}'")), "{attr}: {e}");
    }

    // Antialiased shrinking: named at load, where the probe runs the node.
    let mut m = load_proto(&fixtures().join("bilinear_scale/model.onnx"));
    let g = m.graph.as_mut().unwrap();
    let scales = g.node.iter().find(|n| n.op_type == "Resize").unwrap().input[2].clone();
    let constant = g.node.iter_mut().find(|n| n.output[0] == scales).unwrap();
    let t = constant.attribute[0].t.as_mut().unwrap();
    t.raw_data = [1f32, 1., 0.5, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into();
    let resize = g.node.iter_mut().find(|n| n.op_type == "Resize").unwrap();
    resize.attribute.push(AttributeProto { name: "antialias".into(), r#type: 2, i: 1, ..Default::default() });
    let e = load_error(&m);
    assert!(e.contains("antialias=1 that shrinks"), "{e}");
}

/// Full-size torchvision segmentation exports (FCN-ResNet50, LR-ASPP-MobileNetV3, …) from
/// `$CAMSCOPE_SEG_FIXTURES` (default `../shared/fixtures/seg`): every `.onnx` file there with an
/// `input.npy` and `output.npy` beside it loads, its output on the fast engine is within 1e-3 of
/// torch's relative to the largest score, it runs batches as one, and its seeded reverse pass
/// holds (see [`check_reverse_pass`]). FCN-ResNet50 at 224² takes ~15 s per export on 2 cores.
#[test]
fn full_size_segmentation_exports_match_their_outputs() {
    let dir = match std::env::var_os("CAMSCOPE_SEG_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => common::repo_root().join("../shared/fixtures/seg"),
    };
    if !dir.is_dir() {
        skip(&format!("needs full-size segmentation exports in {} ($CAMSCOPE_SEG_FIXTURES)", dir.display()));
        return;
    }
    let mut files: Vec<PathBuf> =
        walk(&dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    files.sort();
    let mut checked = 0;
    for path in files {
        let folder = path.parent().unwrap();
        let (input, output) = (folder.join("input.npy"), folder.join("output.npy"));
        if !input.is_file() || !output.is_file() {
            println!("{}: no input.npy/output.npy beside it, not checked", path.display());
            continue;
        }
        let started = std::time::Instant::now();
        let model = OnnxModel::load(&path, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let x = read_npy(&input);
        let mut taps = Taps::new(model.stages(), EngineKind::Fast, Mode::Plain);
        let out = model.forward(&x, &mut taps).unwrap();
        let d = relative(&out, &read_npy(&output));
        println!(
            "{}: output {:?}, {} stages, max relative difference {d:.2e} ({:.1} s)",
            path.display(),
            out.dims(),
            model.stages().len(),
            started.elapsed().as_secs_f64()
        );
        assert!(d <= 1e-3, "{}: the output differs from torch's by {d:.2e}", path.display());
        // Score-CAM and Ablation-CAM run batches: they must not fall back to one image at a time.
        assert!(model.runs_batches_as_one(), "{}: batches run image by image", path.display());
        check_reverse_pass(&model, &x, &out, &read_npy(&output), &path.display().to_string());
        checked += 1;
    }
    if checked == 0 {
        skip(&format!("no .onnx with input.npy and output.npy under {}", dir.display()));
    }
}

/// The seeded reverse pass of a full-size graph at its default stages, for the region of its
/// most frequent class: equal (1e-4 of each stage's largest gradient) to Candle's autograd
/// through the same fast forward pass, which holds every rule of `reverse` to real graphs
/// (ASPP's pooled branch resized from 1×1, its Concat, dilated and depthwise convolutions,
/// gates). Against the portable engine the comparison is looser: its forward pass rounds
/// differently (Candle's convolution against ours, both within 1e-4 of torch), and a ReLU whose
/// input lies within that rounding of 0 passes the gradient on one engine and not on the other
/// (9 of FCN-ResNet50's 401k classifier.0 values at 224²), which spreads through every earlier
/// stage: the engines agree to ~2% in L2 there, and the portable output must match torch's.
fn check_reverse_pass(model: &OnnxModel, x: &Tensor, out: &Tensor, torch_out: &Tensor, label: &str) {
    let started = std::time::Instant::now();
    let seed = region_seed(out);
    let recording = camscope::contract::ImageClassifier::reverse_pass(model).unwrap().record(x).unwrap();
    let ours = recording.output_gradients(&seed).unwrap();
    let (_, fast) = autograd(model, x, &seed, EngineKind::Fast);
    let (portable_out, portable) = autograd(model, x, &seed, EngineKind::Portable);
    let d = relative(&portable_out, torch_out);
    assert!(d <= 1e-3, "{label}: the portable engine's output differs from torch's by {d:.2e}");
    let (mut worst, mut worst_l2) = (0f32, 0f32);
    for (((g, f), p), spec) in ours.iter().zip(&fast).zip(&portable).zip(model.stages()) {
        let g = g.as_ref().unwrap_or_else(|| panic!("{label}: no gradient at {}", spec.name));
        let d = relative(g, f);
        assert!(d <= 1e-4, "{label}: the reverse pass at {} differs from autograd by {d:.2e}", spec.name);
        let l2 = relative_l2(g, p);
        assert!(l2 <= 0.05, "{label}: at {} the engines' gradients differ by {l2:.2e} in L2", spec.name);
        (worst, worst_l2) = (worst.max(d), worst_l2.max(l2));
    }
    println!(
        "  seeded reverse pass: against autograd {worst:.2e}, against the portable engine {worst_l2:.2e} in L2; \
         portable output {d:.2e} from torch ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

/// ‖a − b‖ / ‖b‖.
fn relative_l2(a: &Tensor, b: &Tensor) -> f32 {
    let norm =
        |t: &Tensor| -> f32 { t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar().unwrap() };
    norm(&a.sub(b).unwrap()) / norm(b).max(f32::MIN_POSITIVE)
}

/// The seed of a segmentation target: the pixels whose arg-max class is the most frequent one,
/// in that class's channel (pytorch-grad-cam's `SemanticSegmentationTarget` as its tutorial
/// uses it).
fn region_seed(out: &Tensor) -> Tensor {
    let classes = out.dim(1).unwrap();
    let winner = out.argmax_keepdim(1).unwrap();
    let share = |c: usize| -> f32 {
        let mask = winner.eq(c as u32).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        mask.sum_all().unwrap().to_scalar().unwrap()
    };
    let top = (0..classes).map(|c| (share(c), c)).max_by(|a, b| a.0.total_cmp(&b.0)).unwrap().1;
    let mask = winner.eq(top as u32).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    let one_hot: Vec<f32> = (0..classes).map(|c| f32::from(c == top)).collect();
    let channel = Tensor::from_vec(one_hot, (1, classes, 1, 1), out.device()).unwrap();
    mask.broadcast_mul(&channel).unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Timing of what the debugger does per image on a segmentation graph at its default stages:
/// the recorded forward pass and one seeded reverse pass (seed: the pixels whose arg-max class
/// is the most frequent one, in that class's channel), on the fast engine, median of 3. Run by
/// hand: `CAMSCOPE_SEG_BENCH=fcn_resnet50.onnx RAYON_NUM_THREADS=2 cargo test --release --test
/// onnx_ops -- --ignored --nocapture seeded_reverse_pass_timing`.
#[test]
#[ignore]
fn seeded_reverse_pass_timing() {
    let Some(path) = std::env::var_os("CAMSCOPE_SEG_BENCH") else {
        skip("set CAMSCOPE_SEG_BENCH to a segmentation .onnx file");
        return;
    };
    let started = std::time::Instant::now();
    let model = OnnxModel::load(Path::new(&path), None).unwrap();
    let load_s = started.elapsed().as_secs_f64();
    let [h, w] = model.input_size();
    let x = Tensor::randn(0f32, 1., (1, 3, h, w), &candle_core::Device::Cpu).unwrap();
    let pass = camscope::contract::ImageClassifier::reverse_pass(&model).unwrap();
    let (mut forward, mut reverse) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let recording = pass.record(&x).unwrap();
        forward.push(t.elapsed().as_secs_f64());
        let seed = region_seed(&recording.logits());
        let t = std::time::Instant::now();
        let grads = recording.output_gradients(&seed).unwrap();
        reverse.push(t.elapsed().as_secs_f64());
        assert!(grads.iter().all(Option::is_some));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{}: load {load_s:.2} s, {} stages, {} nodes; forward (recorded) {:.3} s, seeded reverse pass {:.3} s \
         (medians of 3; forward {forward:?}, reverse {reverse:?})",
        Path::new(&path).display(),
        model.stages().len(),
        model.node_count(),
        median(&mut forward.clone()),
        median(&mut reverse.clone()),
    );
}
