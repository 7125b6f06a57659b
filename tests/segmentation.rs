//! Segmentation models through the contract, as a Rust user's own Candle model meets them: a
//! network whose output is a score map is explained for a region target, `Σ out[c] · mask_c`
//! (pytorch-grad-cam's `SemanticSegmentationTarget`), and the maps equal what that target's
//! gradients give by hand. The frame is wide (10 × 6), so rows and columns cannot be confused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use camscope::cam::Method;
use camscope::contract::{EngineKind, ImageClassifier, Layout, Model, StageSpec, Taps, Task};
use camscope::explain::{explain_input, ExplainOptions, StageChoice, Timings};
use camscope::preprocess::{load_input, InputSize, ModelInput, Preprocess};
use camscope::segment::RegionTarget;
use candle_core::{Device, Tensor};

/// The input frame: height and width.
const H: usize = 6;
const W: usize = 10;
const CHANNELS: usize = 4;
const CLASSES: usize = 3;

/// Two 1×1 convolutions: `body` = relu(W1 · x) (4 channels), `head` = W2 · body (3 classes),
/// at the input's resolution. The gradient of `Σ out[c]·mask` at `body` is `W2[c, k] · mask`.
struct ToySegmenter {
    w1: Tensor,
    w2: Tensor,
    stages: Vec<StageSpec>,
    /// Forward passes run, for the test that a region target costs none of its own.
    forwards: AtomicUsize,
}

impl ToySegmenter {
    fn new() -> Self {
        let w1: Vec<f32> = (0..CHANNELS * 3).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        // Class 2 wins where the image is bright, 0 where dark, 1 nowhere (its weights are
        // small): so class 1 is absent from the prediction.
        let w2: Vec<f32> = vec![-1.0, -0.5, 0.2, -0.8, 0.01, 0.02, -0.01, 0.01, 1.0, 0.6, -0.3, 0.9];
        Self {
            w1: Tensor::from_vec(w1, (CHANNELS, 3), &Device::Cpu).unwrap(),
            w2: Tensor::from_vec(w2, (CLASSES, CHANNELS), &Device::Cpu).unwrap(),
            stages: vec![StageSpec::new("body", Layout::Nchw), StageSpec::new("head", Layout::Nchw)],
            forwards: AtomicUsize::new(0),
        }
    }

    fn body(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        self.w1.broadcast_matmul(&x.reshape((n, c, h * w))?)?.relu()?.reshape((n, CHANNELS, h, w))
    }

    fn head(&self, body: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = body.dims4()?;
        self.w2.broadcast_matmul(&body.reshape((n, c, h * w))?)?.reshape((n, CLASSES, h, w))
    }
}

impl ImageClassifier for ToySegmenter {
    fn name(&self) -> String {
        "toy-segmenter".into()
    }
    fn stages(&self) -> &[StageSpec] {
        &self.stages
    }
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor> {
        self.forwards.fetch_add(1, Ordering::Relaxed);
        let body = taps.stage("body", self.body(x)?)?;
        taps.stage("head", self.head(&body)?)
    }
}

fn preprocess() -> Preprocess {
    Preprocess { input_size: InputSize::new(H, W), resize: H, mean: [0.5; 3], std: [0.25; 3] }
}

fn model() -> Model {
    Model::new("toy-segmenter", Arc::new(ToySegmenter::new()), preprocess(), None).unwrap()
}

/// A 10×6 image, bright on the right half and dark on the left, with a gradient down.
fn input(dir: &std::path::Path) -> ModelInput {
    let img = image::RgbImage::from_fn(W as u32, H as u32, |x, y| {
        let v = if x >= 5 { 200 + 5 * y as u8 } else { 20 + 3 * y as u8 };
        image::Rgb([v, v / 2 + 40, 255 - v])
    });
    let path = dir.join("half.png");
    img.save(&path).unwrap();
    load_input(Some(&path), &preprocess()).unwrap()
}

/// Grad-CAM at `body` by hand: α_k = W2[c, k] · (Σ mask) / (H·W); relu(Σ α_k A_k), min–max.
fn grad_cam_by_hand(net: &ToySegmenter, x: &Tensor, class: usize, mask: &[f32]) -> Vec<f32> {
    let a: Vec<f32> = net.body(x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let w2: Vec<f32> = net.w2.flatten_all().unwrap().to_vec1().unwrap();
    let plane = H * W;
    let inside: f32 = mask.iter().sum();
    let mut cam = vec![0f32; plane];
    for k in 0..CHANNELS {
        let alpha = w2[class * CHANNELS + k] * inside / plane as f32;
        for p in 0..plane {
            cam[p] += alpha * a[k * plane + p];
        }
    }
    camscope::cam::finish(&cam, H, W, InputSize::new(H, W))
}

fn explain(
    model: &Model,
    input: &ModelInput,
    class: Option<&str>,
    region: RegionTarget,
    engine: EngineKind,
) -> camscope::Result<camscope::explain::Explanation> {
    let opts = ExplainOptions {
        method: Method::GradCam,
        stages: StageChoice::Named("body".into()),
        class: class.map(str::to_string),
        region,
        engine,
        ..ExplainOptions::default()
    };
    explain_input(model, input, &opts, Timings::default())
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-4, "pixel {i}: {g} vs {w}");
    }
}

#[test]
fn a_score_map_output_makes_a_segmentation_model() {
    let m = model();
    assert_eq!(m.task, Task::Segmentation);
    assert_eq!(m.labels.len(), CLASSES);
}

#[test]
fn grad_cam_of_the_predicted_region_equals_the_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (m, x) = (model(), input(dir.path()));
    let net = ToySegmenter::new();
    for engine in [EngineKind::Fast, EngineKind::Portable] {
        let e = explain(&m, &x, None, RegionTarget::Predicted, engine).unwrap();
        let s = e.segmentation.as_ref().expect("a segmentation summary");
        let present: Vec<usize> = s.classes_present.iter().map(|c| c.index).collect();
        assert!(!present.contains(&1), "class 1 should be absent: {present:?}");
        assert!(e.top_k.is_empty(), "region scores are no distribution");
        // The default class: the one with the most pixels.
        assert_eq!(e.class, s.classes_present[0].index);
        let out: Vec<f32> =
            net.head(&net.body(&x.tensor).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let plane = H * W;
        let mask: Vec<f32> = (0..plane)
            .map(|p| {
                // The first of equal scores, as torch.argmax (the dark half is all zeros).
                let best =
                    (1..CLASSES)
                        .fold(0, |best, c| if out[c * plane + p] > out[best * plane + p] { c } else { best });
                f32::from(u8::from(best == e.class))
            })
            .collect();
        assert_eq!(s.target_pixels, mask.iter().sum::<f32>() as usize);
        assert_close(&e.maps[0], &grad_cam_by_hand(&net, &x.tensor, e.class, &mask));
    }
}

#[test]
fn a_box_and_the_whole_image_are_regions_of_every_class() {
    let dir = tempfile::tempdir().unwrap();
    let (m, x) = (model(), input(dir.path()));
    let net = ToySegmenter::new();
    // A box of the original image's pixels: columns 2..6, rows 0..4 (no resize, no crop here).
    let boxed = RegionTarget::parse("2,0,6,4").unwrap();
    let mut mask = vec![0f32; H * W];
    for i in 0..4 {
        for j in 2..6 {
            mask[i * W + j] = 1.0;
        }
    }
    // Class 1 is absent from the prediction, yet a box makes it a region.
    let e = explain(&m, &x, Some("1"), boxed, EngineKind::Fast).unwrap();
    assert_eq!(e.segmentation.as_ref().unwrap().target_pixels, 16);
    assert_close(&e.maps[0], &grad_cam_by_hand(&net, &x.tensor, 1, &mask));
    let whole = explain(&m, &x, Some("0"), RegionTarget::Whole, EngineKind::Portable).unwrap();
    assert_close(&whole.maps[0], &grad_cam_by_hand(&net, &x.tensor, 0, &vec![1.0; H * W]));
}

#[test]
fn an_absent_class_or_a_region_outside_the_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (m, x) = (model(), input(dir.path()));
    let e = explain(&m, &x, Some("1"), RegionTarget::Predicted, EngineKind::Fast).err().unwrap().to_string();
    assert!(e.contains("covers no pixel") && e.contains("--region whole"), "{e}");
    let e = explain(&m, &x, Some("0"), RegionTarget::parse("4,4,20,6").unwrap(), EngineKind::Fast)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("outside"), "{e}");
    let e = explain(&m, &x, Some("0"), RegionTarget::parse("5,5,5,7").unwrap(), EngineKind::Fast)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("empty"), "{e}");
}

/// Ablation-CAM scores its perturbed passes over the unchanged image's region: with the linear
/// head, zeroing channel k takes `W2[c, k] · Σ_mask A_k` off the score `y_c`, so the map is
/// relu(Σ_k (W2[c, k] · Σ_mask A_k / y_c) · A_k).
#[test]
fn ablation_cam_of_a_region_equals_the_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (m, x) = (model(), input(dir.path()));
    let net = ToySegmenter::new();
    let boxed = RegionTarget::parse("3,1,8,5").unwrap();
    let opts = ExplainOptions {
        method: Method::AblationCam,
        stages: StageChoice::Named("body".into()),
        class: Some("0".into()),
        region: boxed,
        ..ExplainOptions::default()
    };
    let e = explain_input(&m, &x, &opts, Timings::default()).unwrap();
    let a: Vec<f32> = net.body(&x.tensor).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let w2: Vec<f32> = net.w2.flatten_all().unwrap().to_vec1().unwrap();
    let plane = H * W;
    let inside = |p: usize| (1..5).contains(&(p / W)) && (3..8).contains(&(p % W));
    let summed: Vec<f32> =
        (0..CHANNELS).map(|k| (0..plane).filter(|&p| inside(p)).map(|p| a[k * plane + p]).sum()).collect();
    let score: f32 = (0..CHANNELS).map(|k| w2[k] * summed[k]).sum();
    let mut cam = vec![0f32; plane];
    for k in 0..CHANNELS {
        let weight = w2[k] * summed[k] / score;
        for p in 0..plane {
            cam[p] += weight * a[k * plane + p];
        }
    }
    assert_close(&e.maps[0], &camscope::cam::finish(&cam, H, W, InputSize::new(H, W)));
}

/// The other methods run on a segmentation model like on any other.
#[test]
fn every_kind_of_method_takes_the_region_target() {
    let dir = tempfile::tempdir().unwrap();
    let (m, x) = (model(), input(dir.path()));
    for method in [Method::ScoreCam, Method::EigenCam, Method::LayerCam, Method::GradCamPlusPlus] {
        let opts = ExplainOptions {
            method,
            stages: StageChoice::Named("body".into()),
            // The bright half, where the body's activations live.
            class: Some("2".into()),
            ..ExplainOptions::default()
        };
        let e = explain_input(&m, &x, &opts, Timings::default()).unwrap();
        assert!(e.maps[0].iter().all(|v| v.is_finite()), "{method:?}");
        assert!(e.maps[0].iter().any(|&v| v > 0.0), "{method:?}: an all-zero map");
    }
}

#[test]
fn json_reports_the_classes_present() {
    let dir = tempfile::tempdir().unwrap();
    let (m, x) = (model(), input(dir.path()));
    let e = explain(&m, &x, None, RegionTarget::Predicted, EngineKind::Fast).unwrap();
    let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
    let present = v["segmentation"]["classes_present"].as_array().unwrap();
    assert!(!present.is_empty());
    let shares: f64 = present.iter().map(|c| c["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-5);
    assert_eq!(v["segmentation"]["region"], "the pixels predicted as the class");
}

/// The predicted regions come from the trace's own forward pass: a Grad-CAM of a segmentation
/// model runs the network once, as a classifier's does (it ran twice when the prediction had a
/// pass of its own: at 520×520 that pass was half of LR-ASPP's all-stage time).
#[test]
fn a_region_target_costs_no_forward_pass_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(ToySegmenter::new());
    let model = Model::new("toy-segmenter", net.clone(), preprocess(), None).unwrap();
    let input = input(dir.path());
    for engine in [EngineKind::Fast, EngineKind::Portable] {
        for region in [RegionTarget::Predicted, RegionTarget::Whole] {
            let before = net.forwards.load(Ordering::Relaxed);
            let e = explain(&model, &input, Some("2"), region.clone(), engine).unwrap();
            assert!(e.segmentation.is_some());
            assert_eq!(net.forwards.load(Ordering::Relaxed) - before, 1, "{engine:?} {region:?}");
        }
    }
}
