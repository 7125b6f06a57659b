//! The real binary: the CLI contract of `explain` and `layers`, and bad input that must end in a
//! one-line error and a non-zero exit, never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// Fails with one line on stderr that mentions every `needle`.
fn assert_clean_failure(args: &[&str], needles: &[&str]) {
    let o = camscope(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
    for n in needles {
        assert!(err.to_lowercase().contains(&n.to_lowercase()), "{args:?}: '{n}' not in: {err}");
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `bench --load-only`: one row per model with its median load time and, on Linux, the
/// process's peak resident memory.
#[test]
fn bench_load_only_reports_load_time_and_peak_memory() {
    let v =
        json(&camscope(&["bench", "--load-only", "--models", "efficientnet-lite0", "--runs", "2", "--json"]));
    let rows = v.as_array().expect("a list of rows");
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["model"], "efficientnet-lite0");
    assert_eq!(rows[0]["runs"], 2);
    assert!(rows[0]["load_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{v}");
    if cfg!(target_os = "linux") {
        assert!(rows[0]["peak_rss_mb"].as_f64().is_some_and(|mb| mb > 1.0), "{v}");
    }
}

#[test]
fn explain_json_has_the_contract_keys() {
    let v = json(&camscope(&["explain", "--json"]));
    for key in ["model", "arch", "input", "top_k", "class", "method", "layers", "timings_ms"] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    for key in ["load", "preprocess", "forward", "backward", "maps"] {
        assert!(v["timings_ms"][key].is_number(), "timings_ms.{key}");
    }
    assert_eq!(v["arch"], "efficientnet-lite0");
    assert_eq!(v["input"], serde_json::json!([1, 3, 224, 224]));
    assert_eq!(v["class"], 243);
    assert_eq!(v["method"], "gradcam");
    assert_eq!(v["layers"], serde_json::json!(["_conv_head"]));
    let top = v["top_k"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    assert_eq!(top[0]["label"], "bull mastiff");
    assert!(top[0]["prob"].as_f64().unwrap() > top[1]["prob"].as_f64().unwrap());
}

#[test]
fn class_by_label_method_and_layer_are_honoured() {
    let v = json(&camscope(&[
        "explain",
        "-c",
        "TABBY",
        "-M",
        "layercam",
        "-l",
        "_blocks.10",
        "-k",
        "3",
        "--json",
    ]));
    assert_eq!(v["class"], 281);
    assert_eq!(v["method"], "layercam");
    assert_eq!(v["layers"], serde_json::json!(["_blocks.10"]));
    assert_eq!(v["top_k"].as_array().unwrap().len(), 3);
}

#[test]
fn npy_and_png_outputs() {
    let dir = tmp();
    let npy = dir.path().join("cat.npy");
    let png = dir.path().join("cat.png");
    let o = camscope(&["explain", "--class", "281", "--npy", p(&npy), "-o", p(&png)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let map = read_npy(&npy);
    assert_eq!(map.dims(), [224, 224]);
    let values: Vec<f32> = map.flatten_all().unwrap().to_vec1().unwrap();
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (224, 224));

    // The cat is in the lower half of the sample, the dog in the upper half.
    let half = values.len() / 2;
    let (top, bottom): (f32, f32) = (values[..half].iter().sum(), values[half..].iter().sum());
    assert!(bottom > top, "cat map should be heavier at the bottom");
    let o = camscope(&["explain", "--class", "243", "--npy", p(&npy)]);
    assert!(o.status.success());
    let dog: Vec<f32> = read_npy(&npy).flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        dog[..half].iter().sum::<f32>() > dog[half..].iter().sum::<f32>(),
        "dog map should be heavier at the top"
    );
}

#[test]
fn layer_all_writes_every_stage_in_order() {
    let dir = tmp();
    let npy = dir.path().join("all.npy");
    let o = camscope(&["explain", "-l", "all", "--npy", p(&npy), "--json"]);
    let v = json(&o);
    assert_eq!(v["layers"].as_array().unwrap().len(), 18);
    assert_eq!(v["layers"][0], "_conv_stem");
    assert_eq!(read_npy(&npy).dims(), [18, 224, 224]);
}

#[test]
fn layers_lists_stages_with_shapes() {
    let v = json(&camscope(&["layers", "--json"]));
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 18);
    assert_eq!(stages[17]["name"], "_conv_head");
    assert_eq!(stages[17]["shape"], serde_json::json!([1280, 7, 7]));
    assert_eq!(v["default"], "_conv_head");
    let text = String::from_utf8(camscope(&["layers"]).stdout).unwrap();
    assert!(text.contains("_blocks.15") && text.contains("320×7×7"));
}

/// A ResNet-18 checkpoint with seeded random weights, in `dir`.
fn random_resnet18(dir: &Path) -> PathBuf {
    let path = dir.join("resnet18.safetensors");
    write_random_resnet18(&path, 7);
    path
}

fn assert_loads_as_resnet18(weights: &Path) {
    let v = json(&camscope(&["explain", "-m", p(weights), "--json"]));
    assert_eq!(v["arch"], "resnet18");
    assert_eq!(v["layers"], serde_json::json!(["layer4.1"]));
    let l = json(&camscope(&["layers", "-m", p(weights), "--json"]));
    assert_eq!(l["stages"][0]["name"], "maxpool");
    assert_eq!(l["stages"][0]["shape"], serde_json::json!([64, 56, 56]));
}

#[test]
fn resnet_weights_from_safetensors() {
    let dir = tmp();
    assert_loads_as_resnet18(&random_resnet18(dir.path()));
}

#[test]
fn resnet_weights_from_pth_and_safetensors() {
    let Some(big) = big_fixtures_or_skip("the ResNet-18 .pth/.safetensors checkpoints of the big set") else {
        return;
    };
    for ext in ["pth", "safetensors"] {
        assert_loads_as_resnet18(&big.join(format!("resnet18_seed0.{ext}")));
    }
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose header claims `w`×`h` (with a valid CRC) and whose data is a 1×1 image.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    // Signature (8) + length (4), then "IHDR" and 13 bytes of data, then the CRC.
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn bad_images_fail_with_a_clear_message() {
    let dir = tmp();
    let d = dir.path();
    let sample = std::fs::read(image("both.png")).unwrap();
    let empty = write_bytes(d, "empty.png", b"");
    let truncated = write_bytes(d, "truncated.png", &sample[..sample.len() / 2]);
    let huge = write_bytes(d, "huge.png", &png_claiming(20000, 20000));
    let text = write_bytes(d, "notes.png", b"this is not an image at all");
    assert_clean_failure(&["explain", p(&empty)], &["empty.png", "empty"]);
    assert_clean_failure(&["explain", p(&truncated)], &["truncated.png", "decode"]);
    assert_clean_failure(&["explain", p(&huge)], &["huge.png", "20000×20000"]);
    assert_clean_failure(&["explain", p(&text)], &["notes.png", "format"]);
    assert_clean_failure(&["explain", "/no/such/image.png"], &["/no/such/image.png"]);
}

fn write_npy(dir: &Path, name: &str, t: candle_core::Tensor) -> PathBuf {
    let path = dir.join(name);
    t.write_npy(&path).unwrap();
    path
}

#[test]
fn npy_inputs_are_checked() {
    let dir = tmp();
    let d = dir.path();
    let cpu = &candle_core::Device::Cpu;
    let wrong = write_npy(
        d,
        "wrong.npy",
        candle_core::Tensor::zeros((2, 224, 224), candle_core::DType::F32, cpu).unwrap(),
    );
    let mut values = vec![0f32; 3 * 224 * 224];
    values[1000] = f32::NAN;
    let nan = write_npy(d, "nan.npy", candle_core::Tensor::from_vec(values, (1, 3, 224, 224), cpu).unwrap());
    assert_clean_failure(&["explain", p(&wrong)], &["wrong.npy", "shape"]);
    assert_clean_failure(&["explain", p(&nan)], &["nan.npy", "NaN"]);
    // The reference input itself is used as-is.
    let input = repo_case("lite0-both").dir.join("input.npy");
    let v = json(&camscope(&["explain", p(&input), "--json"]));
    assert_eq!(v["class"], 243);
}

#[test]
fn bad_weights_fail_with_a_clear_message() {
    let dir = tmp();
    let d = dir.path();
    let resnet = random_resnet18(d);
    let bytes = std::fs::read(&resnet).unwrap();
    let truncated = write_bytes(d, "cut.safetensors", &bytes[..bytes.len() / 3]);
    let empty = write_bytes(d, "empty.safetensors", b"");
    let junk = write_bytes(d, "junk.pth", b"PK\x03\x04 not really a zip");
    assert_clean_failure(&["explain", "-m", p(&truncated)], &["cut.safetensors"]);
    assert_clean_failure(&["explain", "-m", p(&empty)], &["empty.safetensors", "empty"]);
    assert_clean_failure(&["explain", "-m", p(&junk)], &["junk.pth", "PyTorch"]);
    // Weights of one architecture forced into another: names the missing tensor.
    assert_clean_failure(
        &["explain", "-m", p(&resnet), "--arch", "efficientnet-lite0"],
        &["_conv_stem.weight"],
    );
    assert_clean_failure(&["explain", "-m", p(&resnet), "--arch", "resnet34"], &["layer1.2", "missing"]);
    assert_clean_failure(&["explain", "-m", p(&resnet), "--arch", "resnet50"], &["shape"]);
    assert_clean_failure(&["explain", "-m", p(&resnet), "--arch", "vgg16"], &["architecture", "resnet50"]);
    assert_clean_failure(&["explain", "-m", "no-such-model"], &["unknown model", "efficientnet-lite0"]);
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let dir = tmp();
    let resnet = random_resnet18(dir.path());
    let mut tensors = candle_core::safetensors::load(&resnet, &candle_core::Device::Cpu).unwrap();
    tensors.insert(
        "fc.bias".into(),
        candle_core::Tensor::zeros(999, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let path = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    assert_clean_failure(&["explain", "-m", p(&path)], &["fc.bias", "[999]", "[1000]"]);
    tensors.remove("fc.bias");
    tensors.insert(
        "extra.weight".into(),
        candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    tensors.insert(
        "fc.bias".into(),
        candle_core::Tensor::zeros(1000, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    assert_clean_failure(&["explain", "-m", p(&path)], &["unexpected tensor", "extra.weight"]);
}

#[test]
fn unknown_stage_method_class_and_bad_outputs() {
    let dir = tmp();
    assert_clean_failure(&["explain", "-l", "_blocks.99"], &["_blocks.99", "_conv_head"]);
    assert_clean_failure(&["explain", "-M", "magiccam"], &["magiccam", "gradcam++"]);
    assert_clean_failure(&["explain", "-c", "1000"], &["1000", "0-999"]);
    assert_clean_failure(&["explain", "-c", "unicorn"], &["unicorn"]);
    let missing = dir.path().join("no/such/folder/out.png");
    assert_clean_failure(&["explain", "-o", p(&missing)], &["out.png", "does not exist"]);
    assert_clean_failure(&["explain", "-o", p(dir.path())], &["directory"]);
    assert_clean_failure(&["explain", "--npy", p(dir.path())], &["directory"]);
    assert_clean_failure(&["explain", "--colormap", "plaid"], &["plaid"]);
    assert_clean_failure(&["explain", "--device", "tpu"], &["tpu", "cpu, cuda, cuda:N"]);
    if !cfg!(feature = "cuda") {
        assert_clean_failure(&["explain", "--device", "cuda:0"], &["cuda:0", "--features cuda"]);
    }
    assert_clean_failure(&["bench", "--device", "tpu"], &["tpu", "cpu, cuda, cuda:N"]);
}

/// `bench --json` rows say where they ran (`bench --device cuda` is what scripts/gpu_check.sh
/// times on a GPU).
#[test]
fn bench_rows_name_their_device() {
    let out =
        camscope(&["bench", "--models", "efficientnet-lite0", "--engine", "fast", "--runs", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["device"], "cpu", "{rows}");
    assert_eq!(rows[0]["engine"], "fast", "{rows}");
    assert!(rows[0]["forward_ms"].as_f64().unwrap() > 0.0, "{rows}");
}

#[test]
fn odd_but_valid_images_work() {
    let dir = tmp();
    let d = dir.path();
    let gradient = |w: u32, h: u32| {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]))
    };
    let one = d.join("one.png");
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 100, 50])).save(&one).unwrap();
    let wide = d.join("wide.jpg");
    image::DynamicImage::ImageRgb8(gradient(3000, 40)).save(&wide).unwrap();
    let gray = d.join("gray.png");
    image::DynamicImage::ImageRgb8(gradient(64, 48)).to_luma8().save(&gray).unwrap();
    let deep = d.join("deep.png");
    image::DynamicImage::ImageRgb8(gradient(50, 70)).to_rgb16().save(&deep).unwrap();
    let alpha = d.join("alpha.png");
    image::DynamicImage::ImageRgb8(gradient(33, 33)).to_rgba8().save(&alpha).unwrap();
    let webp = d.join("pic.webp");
    image::DynamicImage::ImageRgb8(gradient(40, 40)).save(&webp).unwrap();
    let bmp = d.join("pic.bmp");
    image::DynamicImage::ImageRgb8(gradient(40, 40)).save(&bmp).unwrap();
    let gif = d.join("pic.gif");
    image::DynamicImage::ImageRgb8(gradient(40, 40)).to_rgba8().save(&gif).unwrap();
    for path in [&one, &wide, &gray, &deep, &alpha, &webp, &bmp, &gif] {
        let v = json(&camscope(&["explain", p(path), "--json"]));
        assert_eq!(v["input"], serde_json::json!([1, 3, 224, 224]), "{}", path.display());
    }
}

#[test]
fn metrics_in_json_and_the_evaluate_table() {
    let v = json(&camscope(&["explain", "--metrics", "--metric-steps", "8", "--json"]));
    for key in ["confidence_change", "road_combined", "deletion_auc", "insertion_auc"] {
        let x = v["metrics"][key].as_f64().unwrap_or_else(|| panic!("metrics.{key} in {v}"));
        assert!((-1.0..=1.0).contains(&x), "{key} = {x}");
    }
    let v = json(&camscope(&["evaluate", "--methods", "gradcam,eigencam", "--metric-steps", "8", "--json"]));
    let methods = v["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    assert_eq!(methods[1]["method"], "eigencam");
    let text =
        String::from_utf8(camscope(&["evaluate", "--methods", "layercam", "--metric-steps", "4"]).stdout)
            .unwrap();
    assert!(text.contains("layercam") && text.contains("insertion"), "{text}");
    assert_clean_failure(&["evaluate", "--methods", "gradcam,nope"], &["nope"]);
}

#[test]
fn smoothing_options_change_the_map() {
    let dir = tmp();
    let (plain, aug, eigen) = (dir.path().join("p.npy"), dir.path().join("a.npy"), dir.path().join("e.npy"));
    for (path, flag) in [(&plain, None), (&aug, Some("--aug-smooth")), (&eigen, Some("--eigen-smooth"))] {
        let mut args = vec!["explain", "-c", "281", "--npy", p(path)];
        args.extend(flag);
        let o = camscope(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (p0, p1, p2) = (npy_vec(&plain), npy_vec(&aug), npy_vec(&eigen));
    for m in [&p1, &p2] {
        assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(max_abs_diff(m, &p0) > 0.01, "smoothing changed nothing");
        // Still the cat: smoothing must not move the map somewhere else.
        assert!(pearson(m, &p0) > 0.5, "r = {}", pearson(m, &p0));
    }
}

/// `explain` on a segmentation graph: the classes present in the JSON, the segmentation picture,
/// a box region; and the errors of regions a model cannot take.
#[test]
fn explain_a_segmentation_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::repo_root().join("tests/fixtures/seg/lraspp_tiny/model.onnx");
    let (model, image) = (model.to_str().unwrap(), common::image("dogs.png"));
    let image = image.to_str().unwrap();
    let seg = dir.path().join("seg.png");
    let v = json(&common::camscope(&[
        "explain",
        image,
        "-m",
        model,
        "--json",
        "--segmentation",
        seg.to_str().unwrap(),
    ]));
    let present = v["segmentation"]["classes_present"].as_array().unwrap();
    assert!(present.len() >= 3);
    assert_eq!(v["class"], present[0]["index"], "the largest class (no background among them)");
    assert_eq!(v["layers"][0], "backbone.16", "the backbone's last stage");
    assert_eq!(image::open(&seg).unwrap().width(), 128);
    let v = json(&common::camscope(&[
        "explain",
        image,
        "-m",
        model,
        "--json",
        "-c",
        "dog",
        "--region",
        "10,10,200,200",
    ]));
    assert!(v["segmentation"]["region"].as_str().unwrap().starts_with("the box"));
    // Errors: a box outside the image, a class with no predicted pixel, a region for a classifier.
    let o = common::camscope(&["explain", image, "-m", model, "--region", "0,0,5000,20"]);
    assert!(!o.status.success() && common::stderr(&o).contains("outside"), "{}", common::stderr(&o));
    let absent = (0..21).find(|c| !present.iter().any(|p| p["index"] == *c)).unwrap().to_string();
    let o = common::camscope(&["explain", image, "-m", model, "-c", &absent]);
    assert!(common::stderr(&o).contains("--region whole"), "{}", common::stderr(&o));
    let o = common::camscope(&["explain", image, "--region", "whole"]);
    assert!(common::stderr(&o).contains("segmentation models"), "{}", common::stderr(&o));
    let o = common::camscope(&[
        "sweep",
        "tests/fixtures/dataset/folder",
        "-m",
        model,
        "-o",
        dir.path().join("r.csv").to_str().unwrap(),
    ]);
    assert!(common::stderr(&o).contains("takes classifiers"), "{}", common::stderr(&o));
}

/// A graph exported at a non-square size (96 high × 160 wide) runs on a photo of another
/// aspect ratio: the maps, the overlay and the segmentation are 160×96, a box lands through the
/// scale-and-crop, and `layers` states the input.
#[test]
fn explain_a_wide_segmentation_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::repo_root().join("tests/fixtures/seg/lraspp_wide/model.onnx");
    let (model, image) = (model.to_str().unwrap(), common::image("dogs.png"));
    let image = image.to_str().unwrap();
    let (npy, png, seg) = (dir.path().join("m.npy"), dir.path().join("o.png"), dir.path().join("s.png"));
    let v = json(&common::camscope(&[
        "explain",
        image,
        "-m",
        model,
        "--json",
        "--npy",
        npy.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--segmentation",
        seg.to_str().unwrap(),
    ]));
    assert_eq!(v["input"], serde_json::json!([1, 3, 96, 160]));
    let map = candle_core::Tensor::read_npy(&npy).unwrap();
    assert_eq!(map.dims(), [96, 160]);
    assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), (160, 96));
    assert_eq!(image::open(&seg).unwrap().to_rgb8().dimensions(), (160, 96));
    let v = json(&common::camscope(&[
        "explain",
        image,
        "-m",
        model,
        "--json",
        "--region",
        "whole",
        "-l",
        "backbone.12",
    ]));
    assert_eq!(v["segmentation"]["target_pixels"], 96 * 160);
    // dogs.png is 347×342: its width binds (160 / 347 < 96 / 342), so it is scaled to 160×158
    // and cropped at top 31. Rows 100..200 of the photo are y′ ∈ [100·158/342 − 31, 200·158/342
    // − 31) = [15.2, 61.4) on the frame: rows 15..=60, all 160 columns.
    let v = json(&common::camscope(&["explain", image, "-m", model, "--json", "--region", "0,100,347,200"]));
    assert_eq!(v["segmentation"]["target_pixels"], 46 * 160);
    let o = common::camscope(&["layers", "-m", model]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("input 3×96×160"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
