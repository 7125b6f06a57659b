use camscope::model::card;
use candle_core::Tensor;
fn main() {
    let model = card::load("efficientnet-lite0", None).unwrap();
    let inp = camscope::preprocess::load_input(
        Some(std::path::Path::new("../shared/images/both.png")),
        &model.preprocess,
    )
    .unwrap();
    let r = Tensor::read_npy("../shared/fixtures/lite0-both/input.npy").unwrap();
    let d = inp.tensor.sub(&r).unwrap().abs().unwrap().flatten_all().unwrap();
    let v: Vec<f32> = d.to_vec1().unwrap();
    let max = v.iter().copied().fold(0f32, f32::max);
    let n = v.iter().filter(|x| **x > 1e-6).count();
    println!("max diff {max} ({} px steps), {n} of {} differ", max * 128.0, v.len());
}
