use camscope::cam::{self, Method, Chw};
use camscope::model::card;
use camscope::trace::Trace;
use candle_core::Tensor;
fn pearson(a:&[f32],b:&[f32])->f64{let n=a.len() as f64;let ma=a.iter().map(|&v|v as f64).sum::<f64>()/n;let mb=b.iter().map(|&v|v as f64).sum::<f64>()/n;let(mut c,mut va,mut vb)=(0.0,0.0,0.0);for(&x,&y)in a.iter().zip(b){let(dx,dy)=(x as f64-ma,y as f64-mb);c+=dx*dy;va+=dx*dx;vb+=dy*dy;}c/(va*vb).sqrt()}
fn main() {
    let dir = "../shared/fixtures/lite0-both";
    let model = card::load("efficientnet-lite0", None).unwrap();
    let input = Tensor::read_npy(format!("{dir}/input.npy")).unwrap();
    let trace = Trace::new(&model.network, &input).unwrap();
    for (m, layer, class) in [("eigencam","_blocks.10",243),("eigencam","_blocks.10",281),("eigencam","_conv_head",243),("eigengradcam","_blocks.10",243),("eigengradcam","_blocks.10",281),("eigengradcam","_conv_head",243),("eigengradcam","_conv_head",281)] {
        let st = model.network.stage_index(layer).unwrap();
        let a = trace.activation(st);
        let g = trace.gradients(class).unwrap();
        let x: Chw = if m == "eigencam" { (**a).clone() } else { g[st].mul(a) };
        let raw = Method::EigenCam.stage_map(&x, &x);
        let neg: Vec<f32> = raw.iter().map(|v| -v).collect();
        let pos_map = cam::finish(&raw, a.height, a.width, 224);
        let neg_map = cam::finish(&neg, a.height, a.width, 224);
        let r: Vec<f32> = Tensor::read_npy(format!("{dir}/cam__{m}__{layer}__{class}.npy")).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let sum: f32 = raw.iter().sum();
        let maxabs = raw.iter().copied().fold(0f32, |a, b| if b.abs() > a.abs() { b } else { a });
        let npos = raw.iter().filter(|v| **v > 0.0).count();
        println!("{m} {layer} {class}: r(ours)={:.4} r(flip)={:.4}  sum={sum:.3} maxabs={maxabs:.3} npos={npos}/{} ", pearson(&pos_map,&r), pearson(&neg_map,&r), raw.len());
    }
}
