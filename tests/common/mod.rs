//! Shared helpers of the integration tests: where the reference fixtures of pytorch-grad-cam live,
//! how to read them, and comparisons with the tolerances of SPEC §6.
//!
//! Two sets of fixtures (README, "Tests"):
//! - **in the repository**, `tests/fixtures/`: the default model's cases (`lite0-both`,
//!   `lite0-both-perturb`: exact input tensors and logits, maps as 16-bit PNG) and the test photos.
//!   Always there: a clone alone passes its own tests.
//! - **the big set**: `manifest.json` with every case (ResNet-18 with its weights, ...), in
//!   `$CAMSCOPE_FIXTURES`, else `../shared/fixtures`. A test that needs it prints one `skipped:` line
//!   and returns when it is absent.
//!
//! Both are written by `scripts/make_fixtures.py`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// Where the parity tests run the network: `CAMSCOPE_TEST_DEVICE` unset or `cpu` is the CPU,
/// `cuda` (or `cuda:N`) a CUDA device, which needs the tests built with `--features cuda`
/// (`scripts/gpu_check.sh` runs them so). Parsed as `--device` is, so a CUDA device is the one
/// `Device` of the process that every test's tensors share.
pub fn test_device() -> Device {
    let spec = std::env::var("CAMSCOPE_TEST_DEVICE").unwrap_or_default();
    let spec = if spec.trim().is_empty() { "cpu" } else { spec.as_str() };
    camscope::device::parse(spec).unwrap_or_else(|e| panic!("CAMSCOPE_TEST_DEVICE={spec}: {e}"))
}

/// `t` on [`test_device`] (the same tensor on the CPU).
pub fn on_test_device(t: &Tensor) -> Tensor {
    t.to_device(&test_device()).unwrap()
}

/// How to get the big set, for skip lines and failures.
pub const HOW_TO_GET: &str =
    "set CAMSCOPE_FIXTURES or place them at ../shared/fixtures; see scripts/make_fixtures.py";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixtures that ship with the repository.
pub fn repo_fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// A test photo (`../shared/images/SOURCES.md`, copied to `tests/fixtures/images/SOURCES.md`).
/// `both.png` is the sample built into the binary, `assets/both.png`.
pub fn image(name: &str) -> PathBuf {
    if name == "both.png" {
        repo_root().join("assets/both.png")
    } else {
        repo_fixtures().join("images").join(name)
    }
}

/// The big set's folder if it is there: `$CAMSCOPE_FIXTURES`, else `../shared/fixtures`. A
/// `CAMSCOPE_FIXTURES` without a manifest is a mistake worth a failure, not a skip.
pub fn big_fixtures() -> Option<PathBuf> {
    match std::env::var_os("CAMSCOPE_FIXTURES").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("manifest.json").is_file(),
                "CAMSCOPE_FIXTURES={} holds no manifest.json (scripts/make_fixtures.py writes one)",
                dir.display()
            );
            Some(dir)
        }
        None => {
            let dir = repo_root().join("../shared/fixtures");
            dir.join("manifest.json").is_file().then_some(dir)
        }
    }
}

/// The big set, or `None` after one line saying that `what` was skipped and how to get it.
pub fn big_fixtures_or_skip(what: &str) -> Option<PathBuf> {
    let dir = big_fixtures();
    if dir.is_none() {
        skip(&format!("needs {what} ({HOW_TO_GET})"));
    }
    dir
}

/// One visible line. The test harness captures `print!`/`eprint!` and shows them only for failing
/// tests; a skip has to be seen in a passing run, so this writes to the process's stderr.
pub fn skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("a test");
    let _ = writeln!(std::io::stderr().lock(), "{test}: skipped: {reason}");
}

pub fn read_npy(path: &Path) -> Tensor {
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn npy_vec(path: &Path) -> Vec<f32> {
    read_npy(path).flatten_all().unwrap().to_vec1().unwrap()
}

/// A reference map (S×S in [0, 1]): `.npy` (f32, the big set) or a 16-bit grey `.png` holding
/// round(65535·v) (the repository's compact copy; quantisation error ≤ 7.7e-6).
pub fn read_map(path: &Path) -> Vec<f32> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => npy_vec(path),
        Some("png") => {
            let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let image::DynamicImage::ImageLuma16(grey) = img else {
                panic!("{}: a reference map must be a 16-bit grey PNG, not {:?}", path.display(), img.color())
            };
            grey.into_raw().into_iter().map(|q| q as f32 / 65535.0).collect()
        }
        _ => panic!("{}: reference maps are .npy or .png", path.display()),
    }
}

pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        cov += dx * dy;
        va += dx * dx;
        vb += dy * dy;
    }
    cov / (va * vb).sqrt()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[derive(serde::Deserialize)]
pub struct Case {
    pub name: String,
    pub model: String,
    pub stages: Vec<(String, Vec<usize>)>,
    pub top5: Vec<usize>,
    pub cams: Vec<CamEntry>,
    /// The case's folder (`input.npy`, `logits.npy`, the maps).
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(serde::Deserialize, Clone, Debug, PartialEq)]
pub struct CamEntry {
    pub file: String,
    pub method: String,
    pub layer: String,
    pub class_index: usize,
}

/// The cases of `dir/manifest.json`, each knowing its folder.
pub fn read_manifest(dir: &Path) -> Vec<Case> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cases: Vec<Case> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for case in &mut cases {
        case.dir = dir.join(&case.name);
    }
    cases
}

pub fn repo_cases() -> Vec<Case> {
    read_manifest(&repo_fixtures())
}

/// A case of the repository's fixtures.
pub fn repo_case(name: &str) -> Case {
    repo_cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no fixture case {name}"))
}

/// The splitmix64 generator: seeded random numbers for tests, with no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| self.uniform(lo, hi)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }
}

/// A torchvision ResNet-18 checkpoint (the state-dict names and shapes) with seeded random weights
/// at torchvision's initial scales and non-trivial BatchNorm statistics, as safetensors. Loading and
/// weight-error tests need a second architecture; the real ResNet-18 fixtures are in the big set.
pub fn write_random_resnet18(path: &Path, seed: u64) {
    fn conv(tensors: &mut HashMap<String, Tensor>, rng: &mut Rng, name: &str, shape: [usize; 4]) {
        // Kaiming (fan-out) scale, as a uniform distribution.
        let bound = (6.0 / (shape[0] * shape[2] * shape[3]) as f32).sqrt();
        tensors.insert(format!("{name}.weight"), rng.tensor(&shape, -bound, bound));
    }
    fn bn(tensors: &mut HashMap<String, Tensor>, rng: &mut Rng, name: &str, c: usize) {
        tensors.insert(format!("{name}.weight"), rng.tensor(&[c], 0.75, 1.25));
        tensors.insert(format!("{name}.bias"), rng.tensor(&[c], -0.2, 0.2));
        tensors.insert(format!("{name}.running_mean"), rng.tensor(&[c], -0.2, 0.2));
        tensors.insert(format!("{name}.running_var"), rng.tensor(&[c], 0.75, 1.25));
    }
    let mut rng = Rng::new(seed);
    let mut tensors = HashMap::new();
    conv(&mut tensors, &mut rng, "conv1", [64, 3, 7, 7]);
    bn(&mut tensors, &mut rng, "bn1", 64);
    for (layer, cin, cout) in [(1, 64, 64), (2, 64, 128), (3, 128, 256), (4, 256, 512)] {
        for block in 0..2 {
            let p = format!("layer{layer}.{block}");
            let input = if block == 0 { cin } else { cout };
            conv(&mut tensors, &mut rng, &format!("{p}.conv1"), [cout, input, 3, 3]);
            bn(&mut tensors, &mut rng, &format!("{p}.bn1"), cout);
            conv(&mut tensors, &mut rng, &format!("{p}.conv2"), [cout, cout, 3, 3]);
            bn(&mut tensors, &mut rng, &format!("{p}.bn2"), cout);
            if block == 0 && layer > 1 {
                conv(&mut tensors, &mut rng, &format!("{p}.downsample.0"), [cout, cin, 1, 1]);
                bn(&mut tensors, &mut rng, &format!("{p}.downsample.1"), cout);
            }
        }
    }
    let bound = 1.0 / (512f32).sqrt();
    tensors.insert("fc.weight".into(), rng.tensor(&[1000, 512], -bound, bound));
    tensors.insert("fc.bias".into(), rng.tensor(&[1000], -bound, bound));
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// Runs the camscope binary from the repository's root.
pub fn camscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_camscope"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The eigen method's map with the projection's sign reversed.
pub fn flipped_eigen_map(
    trace: &camscope::trace::Trace,
    method: camscope::cam::Method,
    stage: usize,
    class: usize,
    size: camscope::preprocess::InputSize,
) -> Vec<f32> {
    let a = trace.activation(stage);
    let x = match method {
        camscope::cam::Method::EigenCam => (**a).clone(),
        _ => trace.gradients(class).unwrap()[stage].mul(a),
    };
    let negated: Vec<f32> = camscope::cam::eigen_projection(&x).iter().map(|v| -v).collect();
    camscope::cam::finish(&negated, a.height, a.width, size)
}
