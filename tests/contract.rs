//! The model contract from the outside, as a Rust user meets it: small hand-written models of
//! each layout, the errors a model that breaks the contract gets, and the example program. The
//! toy models and their inputs live on `CAMSCOPE_TEST_DEVICE` (default: the CPU).

mod common;

use std::sync::Arc;

use camscope::cam::{Control, Method};
use camscope::contract::Model;
use camscope::contract::{Capabilities, EngineKind, ImageClassifier, Layout, StageSpec, Taps};
use camscope::engine::Engine;
use camscope::preprocess::Preprocess;
use candle_core::{Device, Module, Result, Tensor, D};

/// A deterministic input: values in [-1, 1) from a fixed seed.
fn input(size: usize, seed: u64) -> Tensor {
    let mut state = seed | 1;
    let data: Vec<f32> = (0..3 * size * size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(data, (1, 3, size, size), &common::test_device()).unwrap()
}

fn weights(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_vec(data, (rows, cols), &common::test_device()).unwrap()
}

/// A toy vision transformer: 4×4 patches embedded linearly into 8 channels, a class token in
/// front (or `prefix` tokens), one token-mixing layer, the classifier on the class token and the
/// mean of the patch tokens. Its one stage outputs tokens (1, prefix + h·w, 8).
struct ToyVit {
    embed: candle_nn::Linear,
    head: candle_nn::Linear,
    prefix: usize,
    stages: Vec<StageSpec>,
}

impl ToyVit {
    fn new(prefix: usize, size: usize) -> Self {
        let grid = size / 4;
        Self {
            embed: candle_nn::Linear::new(weights(8, 48, 1), None),
            head: candle_nn::Linear::new(weights(5, 8, 2), None),
            prefix,
            stages: vec![StageSpec::new("blocks.0", Layout::Tokens { prefix, grid: [grid, grid] })],
        }
    }
}

impl ImageClassifier for ToyVit {
    fn name(&self) -> String {
        "toy-vit".into()
    }
    fn stages(&self) -> &[StageSpec] {
        &self.stages
    }
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (gh, gw) = (h / 4, w / 4);
        // (n, c, gh, 4, gw, 4) → (n, gh, gw, c·4·4): one row per patch, row-major over the grid.
        let patches =
            x.reshape((n, c, gh, 4, gw, 4))?.permute((0, 2, 4, 1, 3, 5))?.reshape((n, gh * gw, c * 16))?;
        let tokens = self.embed.forward(&patches)?;
        let prefix = Tensor::ones((n, self.prefix, 8), x.dtype(), x.device())?;
        let tokens = Tensor::cat(&[prefix, tokens], 1)?;
        // Mix: every token gets the mean of all tokens added, then a GELU.
        let mixed = tokens.broadcast_add(&tokens.mean_keepdim(1)?)?.gelu()?;
        let mixed = taps.stage("blocks.0", mixed)?;
        let summary =
            (mixed.narrow(1, 0, 1)?.squeeze(1)? + mixed.narrow(1, self.prefix, gh * gw)?.mean(1)?)?;
        self.head.forward(&summary)
    }
}

/// A channels-last model: a 1×1 "convolution" as a linear layer on (n, h, w, c).
struct ToySwin {
    proj: candle_nn::Linear,
    head: candle_nn::Linear,
    stages: Vec<StageSpec>,
}

impl ImageClassifier for ToySwin {
    fn name(&self) -> String {
        "toy-swin".into()
    }
    fn stages(&self) -> &[StageSpec] {
        &self.stages
    }
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let y = self.proj.forward(&x.permute((0, 2, 3, 1))?.contiguous()?)?.tanh()?;
        let y = taps.stage("layers.0", y)?;
        self.head.forward(&y.mean(1)?.mean(1)?)
    }
}

fn model(network: impl ImageClassifier + 'static, size: usize) -> Model {
    Model::new("toy", Arc::new(network), Preprocess::imagenet(size), None).unwrap()
}

/// Grad-CAM by hand on the C×H×W grid (SPEC §3), before post-processing.
fn gradcam_by_hand(a: &Tensor, g: &Tensor) -> Vec<f32> {
    let weights = g.mean_keepdim(D::Minus1).unwrap().mean_keepdim(D::Minus2).unwrap();
    a.broadcast_mul(&weights).unwrap().sum(1).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn tokens_are_laid_on_the_patch_grid_without_their_prefix() {
    for prefix in [1, 2, 5] {
        let toy = ToyVit::new(prefix, 16);
        let m = model(ToyVit::new(prefix, 16), 16);
        let x = input(16, prefix as u64);
        for kind in [EngineKind::Fast, EngineKind::Portable] {
            let engine = Engine::new(m.network.clone(), x.clone(), kind).unwrap();
            let trace = engine.trace();
            let a = trace.activation(0);
            assert_eq!(a.shape(), [8, 4, 4], "prefix {prefix}");
            // The activation is the stage output with the prefix dropped, patch p at (p / 4, p % 4).
            let mut raw = None;
            let mut grab = |_: usize, t: Tensor| {
                raw = Some(t.clone());
                Ok(t)
            };
            let mut taps = Taps::with_hook(toy.stages(), kind, camscope::contract::Mode::Plain, &mut grab);
            toy.forward(&x, &mut taps).unwrap();
            drop(taps);
            let raw: Vec<Vec<Vec<f32>>> = raw.unwrap().to_vec3().unwrap();
            for (p, token) in raw[0][prefix..].iter().enumerate() {
                for (c, &value) in token.iter().enumerate() {
                    assert_eq!(a.data[c * 16 + p], value, "prefix {prefix}, patch {p}, channel {c}");
                }
            }
            // And Grad-CAM on that grid equals the hand computation on the reshaped gradient.
            let class = trace.top_class();
            let g = &trace.gradients(class).unwrap()[0];
            let to_tensor = |v: &camscope::cam::Chw| {
                Tensor::from_vec(v.data.clone(), (1, 8, 4, 4), &Device::Cpu).unwrap()
            };
            let by_hand = gradcam_by_hand(&to_tensor(a), &to_tensor(g));
            let ours = Method::GradCam.stage_map(a, g).unwrap();
            for (o, h) in ours.iter().zip(&by_hand) {
                assert!((o - h).abs() < 1e-5, "prefix {prefix}: {o} vs {h}");
            }
            assert!(g.data.iter().any(|v| *v != 0.0), "the patch tokens reach the head");
        }
    }
}

#[test]
fn channels_last_outputs_are_permuted_and_every_method_runs() {
    let swin = ToySwin {
        proj: candle_nn::Linear::new(weights(6, 3, 3), None),
        head: candle_nn::Linear::new(weights(4, 6, 4), None),
        stages: vec![StageSpec::new("layers.0", Layout::Nhwc)],
    };
    let m = model(swin, 12);
    let engine = Engine::new(m.network.clone(), input(12, 9), EngineKind::Portable).unwrap();
    assert_eq!(engine.trace().shapes(), [[6, 12, 12]]);
    let ctl = Control::default();
    for method in Method::ALL {
        let result = engine.cam(method, 0, 1, &ctl);
        match method {
            // ToySwin routes no ReLU and no bias through the taps, and says so.
            Method::FullGrad | Method::GuidedBackprop | Method::GuidedGradCam => {
                let e = result.unwrap_err().to_string();
                assert!(e.contains(method.name()) && e.contains("toy-swin"), "{e}");
            }
            _ => {
                let map = result.unwrap_or_else(|e| panic!("{}: {e}", method.name()));
                assert_eq!(map.len(), 144, "{}", method.name());
                assert!(map.iter().all(|v| (0.0..=1.0).contains(v)), "{}", method.name());
            }
        }
    }
}

/// Ablation-CAM reruns the network after the stage; a model that cannot resume gets the whole
/// network rerun with the stage replaced. Both must give the same weights.
#[test]
fn ablation_without_resuming_equals_ablation_with_it() {
    struct NoResume(Arc<dyn ImageClassifier>);
    impl ImageClassifier for NoResume {
        fn name(&self) -> String {
            "no-resume".into()
        }
        fn stages(&self) -> &[StageSpec] {
            self.0.stages()
        }
        fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
            self.0.forward(x, taps)
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
    }
    let arch = camscope::families::Arch::parse("resnet18").unwrap();
    let resnet = camscope::load::synthetic(arch, 4).unwrap();
    let wrapped: Arc<dyn ImageClassifier> = Arc::new(NoResume(resnet.network.clone()));
    let x = input(64, 5);
    let ctl = Control { batch_size: 64, ..Control::default() };
    let stage = camscope::contract::stage_index(resnet.network.as_ref(), "layer3.1").unwrap();
    let a = Engine::new(resnet.network.clone(), x.clone(), EngineKind::Portable).unwrap();
    let b = Engine::new(wrapped, x, EngineKind::Portable).unwrap();
    let class = a.trace().top_class();
    let ma = a.cam(Method::AblationCam, stage, class, &ctl).unwrap();
    let mb = b.cam(Method::AblationCam, stage, class, &ctl).unwrap();
    let worst = ma.iter().zip(&mb).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "maps differ by {worst}");
}

#[test]
fn a_model_that_breaks_the_contract_is_refused_when_loaded() {
    struct Skips(Vec<StageSpec>);
    impl ImageClassifier for Skips {
        fn name(&self) -> String {
            "skips".into()
        }
        fn stages(&self) -> &[StageSpec] {
            &self.0
        }
        fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
            let y = taps.stage("a", x.clone())?;
            // "b" is never tapped.
            y.flatten_from(1)?.narrow(1, 0, 3)
        }
    }
    let stages = vec![StageSpec::nchw("a"), StageSpec::nchw("b")];
    let e = Model::new("skips", Arc::new(Skips(stages)), Preprocess::imagenet(8), None).err().unwrap();
    assert!(e.to_string().contains("handed 1 of its 2 stages"), "{e}");

    let stages = vec![StageSpec::nchw("a")];
    let wrong_labels = Some(vec!["only one".to_string()]);
    let e =
        Model::new("skips", Arc::new(Skips(stages)), Preprocess::imagenet(8), wrong_labels).err().unwrap();
    assert!(e.to_string().contains("1 labels for a network with 3 classes"), "{e}");
}

/// The example a Candle user copies: its `explain --json` is the same contract as camscope's.
#[test]
fn own_model_example_prints_the_explain_json_contract() {
    // Integration tests run from target/<profile>/deps; cargo builds examples beside it.
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().unwrap().parent().unwrap().join("examples").join("own_model");
    if !example.exists() {
        eprintln!("skipped: {} is not built (cargo test builds examples)", example.display());
        return;
    }
    // On CAMSCOPE_TEST_DEVICE: the example builds its weights on the device --device names.
    let device = camscope::device::name(&common::test_device());
    let out = std::process::Command::new(&example)
        .args(["explain", "--layer", "all", "--json", "--device", &device])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["arch"], "tiny-resnet");
    assert_eq!(json["layers"], serde_json::json!(["stem", "block1", "down", "block2"]));
    assert_eq!(json["input"], serde_json::json!([1, 3, 96, 96]));
    for key in ["top_k", "class", "class_label", "method", "timings_ms"] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    for method in ["fullgrad", "guided-backprop", "ablationcam"] {
        let out = std::process::Command::new(&example)
            .args(["explain", "-M", method, "--engine", "portable", "--json", "--device", &device])
            .output()
            .unwrap();
        assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The paths of camscope 0.1 (`camscope::model::…`) still name the same items after the move
/// into rooms, so a Candle user's code written against them keeps building.
#[test]
fn old_model_paths_still_resolve() {
    use camscope::model::card::{Model as OldModel, Preprocess as OldPreprocess};
    use camscope::model::{ImageClassifier as OldClassifier, StageSpec as OldStageSpec};
    fn same<T>(_: Option<T>, _: Option<T>) {}
    same::<OldModel>(None, None::<camscope::contract::Model>);
    same::<OldPreprocess>(None, None::<camscope::preprocess::Preprocess>);
    same::<OldStageSpec>(None, None::<camscope::contract::StageSpec>);
    fn takes_new(_: &dyn camscope::contract::ImageClassifier) {}
    fn takes_old(m: &dyn OldClassifier) {
        takes_new(m)
    }
    let _ = takes_old;
    let arch = camscope::model::Arch::parse("resnet18").unwrap();
    assert_eq!(arch, camscope::families::Arch::parse("resnet18").unwrap());
}
