//! Times every convolution of EfficientNet-Lite0 (224²) forward and backward in isolation, to see
//! which kernels a trace spends its time in. `ONLY=channels,size,kernel,stride` repeats one
//! depthwise layer 2000 times instead (for `perf record`).
//!
//!     RAYON_NUM_THREADS=1 cargo run --release --example kernel_profile
use camscope::families::efficientnet_lite::Variant;
use camscope::kernels::{conv2d_backward_input, conv2d_forward, Activation, ConvGeometry};
use std::time::Instant;

fn geom(cin: usize, h: usize, cout: usize, k: usize, s: usize, groups: usize) -> ConvGeometry {
    let out = h.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(h);
    ConvGeometry {
        batch: 1,
        in_channels: cin,
        in_h: h,
        in_w: h,
        out_channels: cout,
        kernel_h: k,
        kernel_w: k,
        stride: s,
        dilation: 1,
        pad_top: total / 2,
        pad_left: total / 2,
        out_h: out,
        out_w: out,
        groups,
    }
}

fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Ok(spec) = std::env::var("ONLY") {
        // ONLY=cin,h,k,s : one depthwise layer, many times (for perf).
        let v: Vec<usize> = spec.split(',').map(|x| x.parse().unwrap()).collect();
        let g = geom(v[0], v[1], v[0], v[2], v[3], v[0]);
        let x = vec![0.5f32; g.input_len()];
        let w = vec![0.01f32; g.weight_len()];
        let t = Instant::now();
        for _ in 0..2000 {
            std::hint::black_box(conv2d_forward(&g, &x, &w, None, Activation::Relu6));
        }
        println!("{:.1} us per call", t.elapsed().as_secs_f64() * 1e6 / 2000.0);
        return;
    }
    // The model's own block list, so this follows the architecture code.
    let blocks = Variant::get(0).blocks();
    let mut layers = vec![("stem", geom(3, 224, 32, 3, 2, 1))];
    let mut h = 112;
    for b in &blocks {
        let hid = b.in_channels * b.expand;
        if b.expand != 1 {
            layers.push(("expand", geom(b.in_channels, h, hid, 1, 1, 1)));
        }
        layers.push(("dw", geom(hid, h, hid, b.kernel, b.stride, hid)));
        h = h.div_ceil(b.stride);
        layers.push(("project", geom(hid, h, b.out_channels, 1, 1, 1)));
    }
    let last = blocks.last().map_or(32, |b| b.out_channels);
    layers.push(("head", geom(last, h, 1280, 1, 1, 1)));
    let (mut tf, mut tb) = (0.0, 0.0);
    let mut by_kind = std::collections::BTreeMap::<&str, (f64, f64, f64)>::new();
    for (name, g) in &layers {
        let x = vec![0.5f32; g.input_len()];
        let w = vec![0.01f32; g.weight_len()];
        let dy = vec![0.1f32; g.output_len()];
        let (mut f, mut b) = (vec![], vec![]);
        for _ in 0..30 {
            let t = Instant::now();
            let out = conv2d_forward(g, &x, &w, None, Activation::Relu6);
            f.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(conv2d_backward_input(g, &dy, Some((&out, Activation::Relu6)), &w));
            b.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (f, b) = (med(f), med(b));
        let flops = 2.0 * g.output_len() as f64 * g.weight_len() as f64 / g.out_channels as f64;
        println!("{name:8} {:4}->{:4} {:3}x{:3} k{} s{}  fwd {f:6.3} ms ({:5.1} GF/s)  bwd {b:6.3} ms ({:5.1} GF/s)",
            g.in_channels, g.out_channels, g.out_h, g.out_w, g.kernel_h, g.stride, flops / f / 1e6, flops / b / 1e6);
        tf += f;
        tb += b;
        let e = by_kind.entry(name).or_default();
        e.0 += f;
        e.1 += b;
        e.2 += flops;
    }
    for (k, (f, b, fl)) in by_kind {
        println!("{k:8} fwd {f:6.2} ms bwd {b:6.2} ms  {:.0} MFLOP", fl / 1e6);
    }
    println!("total fwd {tf:.2} ms  bwd {tb:.2} ms");
}
