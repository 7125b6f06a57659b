//! Preprocessing reproduces the reference input tensor bit for bit, and the model's predictions on
//! the test photos are those of SPEC / `../shared/images/SOURCES.md`.

mod common;

use camscope::model::card;
use camscope::preprocess::load_input;
use camscope::trace::Trace;
use common::*;

#[test]
fn both_png_preprocesses_to_the_reference_tensor_exactly() {
    let model = card::load("efficientnet-lite0", None).unwrap();
    let ours = load_input(Some(&shared().join("images/both.png")), &model.preprocess).unwrap();
    let reference = npy_vec(&fixtures().join("lite0-both/input.npy"));
    let ours: Vec<f32> = ours.tensor.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ours.len(), reference.len());
    assert_eq!(max_abs_diff(&ours, &reference), 0.0);
}

#[test]
fn builtin_sample_is_both_png() {
    let model = card::load("efficientnet-lite0", None).unwrap();
    let sample = load_input(None, &model.preprocess).unwrap();
    let file = load_input(Some(&shared().join("images/both.png")), &model.preprocess).unwrap();
    assert_eq!(sample.view, file.view);
}

fn top5(image: &str) -> Vec<usize> {
    let model = card::load("efficientnet-lite0", None).unwrap();
    let input = load_input(Some(&shared().join("images").join(image)), &model.preprocess).unwrap();
    let trace = Trace::new(&model.network, &input.tensor, camscope::model::EngineKind::Fast).unwrap();
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
