//! Shared helpers of the integration tests: the reference fixtures of pytorch-grad-cam in
//! `../shared/fixtures` and comparisons with the tolerances of SPEC §6.

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;

pub fn shared() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        dir.join("fixtures/manifest.json").is_file(),
        "the reference fixtures are expected in {} (the shared/ folder next to the repository)",
        dir.display()
    );
    dir
}

pub fn fixtures() -> PathBuf {
    shared().join("fixtures")
}

pub fn read_npy(path: &std::path::Path) -> Tensor {
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn npy_vec(path: &std::path::Path) -> Vec<f32> {
    read_npy(path).flatten_all().unwrap().to_vec1().unwrap()
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
}

#[derive(serde::Deserialize)]
pub struct CamEntry {
    pub file: String,
    pub method: String,
    pub layer: String,
    pub class_index: usize,
}

pub fn manifest() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn case(name: &str) -> Case {
    manifest().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no fixture case {name}"))
}
