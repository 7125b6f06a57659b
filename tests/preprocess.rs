//! Preprocessing reproduces the reference input tensor bit for bit, and the model's predictions on
//! the test photos are those of SPEC / `tests/fixtures/images/SOURCES.md`.

mod common;

use camscope::load;
use camscope::preprocess::load_input;
use camscope::trace::Trace;
use common::*;

/// The input tensor the reference computed from both.png (`lite0-both/input.npy`).
fn reference_input() -> Vec<f32> {
    npy_vec(&repo_case("lite0-both").dir.join("input.npy"))
}

fn assert_is_the_reference(ours: &camscope::preprocess::ModelInput) {
    let ours: Vec<f32> = ours.tensor.flatten_all().unwrap().to_vec1().unwrap();
    let reference = reference_input();
    assert_eq!(ours.len(), reference.len());
    assert_eq!(max_abs_diff(&ours, &reference), 0.0);
}

#[test]
fn both_png_preprocesses_to_the_reference_tensor_exactly() {
    let model = load::load("efficientnet-lite0", None).unwrap();
    assert_is_the_reference(&load_input(Some(&image("both.png")), &model.preprocess).unwrap());
}

/// The sample shown when no image is given is the reference's both.png: same tensor, same picture.
#[test]
fn builtin_sample_is_both_png() {
    let model = load::load("efficientnet-lite0", None).unwrap();
    let sample = load_input(None, &model.preprocess).unwrap();
    assert_is_the_reference(&sample);
    let file = load_input(Some(&image("both.png")), &model.preprocess).unwrap();
    assert_eq!(sample.view, file.view);
}

fn top5(name: &str) -> Vec<usize> {
    let model = load::load("efficientnet-lite0", None).unwrap();
    let input = load_input(Some(&image(name)), &model.preprocess).unwrap();
    let trace = Trace::new(&model.network, &input.tensor, camscope::contract::EngineKind::Fast).unwrap();
    trace.ranking().into_iter().take(5).collect()
}

#[test]
fn top5_of_both_png_is_the_documented_one() {
    // bull mastiff, boxer, American Staffordshire terrier, bloodhound, tiger cat
    assert_eq!(top5("both.png"), [243, 242, 180, 163, 282]);
}

#[test]
fn top1_of_the_other_photos_names_their_content() {
    let cats = [281, 282, 283, 284, 285];
    assert!(cats.contains(&top5("chelsea.png")[0]), "chelsea.png is a tabby cat");
    assert_eq!(top5("coffee.png")[0], 967, "coffee.png is an espresso");
    // A portrait in uniform: the uniform is among the top predictions.
    assert!(top5("grace_hopper.jpg").contains(&652), "military uniform");
    // Six dogs: a dog breed (ImageNet classes 151-268) on top.
    assert!((151..=268).contains(&top5("dogs.png")[0]));
}
