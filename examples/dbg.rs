use camscope::model::card;
use camscope::trace::Trace;
use candle_core::{Tensor, Device, Var, DType};
use std::time::Instant;
fn main() {
    let model = card::load("efficientnet-lite0", None).unwrap();
    let net = &model.network;
    let x0 = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &Device::Cpu).unwrap();
    for _ in 0..3 { let _ = net.forward(&x0).unwrap(); }
    let mut times = vec![0.0; net.num_stages()];
    let n = 20;
    for _ in 0..n {
        let mut x = x0.clone();
        for i in 0..net.num_stages() { let t = Instant::now(); x = net.run_stage(i, &x).unwrap(); times[i] += t.elapsed().as_secs_f64()*1e3 / n as f64; }
    }
    for (i, t) in times.iter().enumerate() { print!("{}:{:.2} ", net.stage_name(i), t); }
    println!("\nsum fwd {:.2}", times.iter().sum::<f64>());
    // plain forward w/o taps, then backward timing from an input Var only
    let mut tf = vec![]; let mut tb = vec![]; let mut tt = vec![];
    for _ in 0..n {
        let t = Instant::now();
        let xv = Var::from_tensor(&x0).unwrap();
        let logits = net.forward(xv.as_tensor()).unwrap();
        tf.push(t.elapsed().as_secs_f64()*1e3);
        let t = Instant::now();
        let s = logits.get(0).unwrap().get(243).unwrap();
        let _g = s.backward().unwrap();
        tb.push(t.elapsed().as_secs_f64()*1e3);
        let t = Instant::now();
        let tr = Trace::new(net, &x0).unwrap();
        tt.push(t.elapsed().as_secs_f64()*1e3);
        let _ = DType::F32;
        drop(tr);
    }
    let med = |mut v: Vec<f64>| { v.sort_by(f64::total_cmp); v[v.len()/2] };
    println!("fwd(var input) {:.2} bwd-to-input {:.2} Trace::new {:.2}", med(tf), med(tb), med(tt));
}
