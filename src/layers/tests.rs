//! Our layers against Candle's reference ops: forward values and input gradients.

use super::{BatchNorm, Conv2d, MaxPool2d, Padding};
use crate::contract::{Backward, Chw, EngineKind, Mode, Taps};
use crate::kernels::activation::{activate, activation, activation_gradient};
use crate::kernels::Activation;
use candle_core::{Device, Tensor, Var};
use std::borrow::Cow;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_add(0x9E3779B97F4A7C15);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 20000) as f32 / 10000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Plain taps of a model with no stages: what a lone layer runs with.
fn taps(engine: EngineKind) -> Taps<'static> {
    Taps::new(&[], engine, Mode::Plain)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// Our fused op against Candle's reference conv (explicit padding, bias, activation), forward
/// and input gradient, on odd sizes, strides, groups and asymmetric padding.
#[test]
fn conv_op_matches_candle_forward_and_backward() {
    let cases = [
        // (cin, h, w, cout, k, stride, groups, padding, activation)
        (3, 17, 13, 8, 3, 2, 1, Padding::TfSame, Activation::Relu6),
        (8, 9, 11, 8, 5, 2, 8, Padding::TfSame, Activation::Relu6),
        (6, 7, 7, 6, 3, 1, 6, Padding::Symmetric(1), Activation::Identity),
        (4, 10, 6, 12, 1, 1, 1, Padding::Symmetric(0), Activation::Relu),
        (4, 9, 9, 6, 3, 2, 2, Padding::Symmetric(1), Activation::Relu),
        (3, 15, 15, 5, 7, 2, 1, Padding::Symmetric(3), Activation::Identity),
    ];
    for (i, &(cin, h, w, cout, k, stride, groups, padding, act)) in cases.iter().enumerate() {
        check_against_candle(i as u64, [cin, h, w, cout, k, stride, 1, groups], padding, act);
    }
    // Dilated as segmentation networks use them: stride 1, padding = dilation (ResNet's layer4
    // at 2 and 4, an ASPP rate wider than the plane, MobileNetV3's depthwise at 2).
    let dilated =
        [(8, 13, 13, 6, 2, 1, 2), (6, 9, 9, 4, 4, 1, 4), (4, 7, 7, 4, 12, 1, 12), (6, 11, 9, 6, 2, 6, 2)];
    for (i, &(cin, h, w, cout, d, groups, pad)) in dilated.iter().enumerate() {
        let dims = [cin, h, w, cout, 3, 1, d, groups];
        check_against_candle(50 + i as u64, dims, Padding::Symmetric(pad), Activation::Relu);
    }
}

/// Random shapes, odd sizes, strides 1–3, dilations 1–3, both paddings, every activation,
/// dense, grouped and depthwise: our op (batched, through Candle's autograd) and our batch-1
/// CPU path, forward and input gradient, against Candle's own convolution.
#[test]
fn conv_matches_candle_on_random_shapes() {
    let mut next = crate::test_support::random_below(0x9E3779B97F4A7C15u64);
    for case in 0..80 {
        let k = 1 + next(6);
        let dilation = if next(4) == 0 { 2 + next(2) } else { 1 };
        let extent = (k - 1) * dilation + 1;
        let (h, w) = (extent + next(12), extent + next(12));
        let (cin, cout, groups) = match next(3) {
            0 => {
                let c = 1 + next(8);
                (c, c, c)
            }
            1 => (4, 2 + 2 * next(3), 2),
            _ => (1 + next(5), 1 + next(6), 1),
        };
        let padding = if next(2) == 0 { Padding::TfSame } else { Padding::Symmetric(next(k)) };
        let act = [Activation::Identity, Activation::Relu, Activation::Relu6][next(3)];
        let stride = 1 + next(3);
        check_against_candle(100 + case, [cin, h, w, cout, k, stride, dilation, groups], padding, act);
    }
}

fn check_against_candle(seed: u64, dims: [usize; 8], padding: Padding, act: Activation) {
    let [cin, h, w, cout, k, stride, dilation, groups] = dims;
    let what = format!("seed {seed}: {dims:?} {padding:?} {act:?}");
    let x = rand(&[2, cin, h, w], seed).affine(4.0, 0.0).unwrap();
    let weight = rand(&[cout, cin / groups, k, k], seed + 1).affine(2.0, 0.0).unwrap();
    let bias = rand(&[cout], seed + 2);
    let conv = Conv2d::dilated(weight, Some(bias), stride, dilation, padding, groups, act).unwrap();

    let xv = Var::from_tensor(&x).unwrap();
    let ours = conv.forward(xv.as_tensor(), &mut taps(EngineKind::Fast)).unwrap();
    let reference = conv.forward(xv.as_tensor(), &mut taps(EngineKind::Portable)).unwrap();
    assert_eq!(ours.dims(), reference.dims(), "{what}");
    assert!(max_diff(&ours, &reference) < 1e-4, "{what}: forward");

    let dy = rand(ours.dims(), seed + 3);
    let g_ours = ours.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
    let a = g_ours.get(&xv).unwrap();
    // The portable path crops its input to what the output reads, so Candle's backward has
    // the right size even where the stride does not divide (padded size − kernel).
    let g_ref = reference.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
    let b = g_ref.get(&xv).unwrap().clone();
    assert_eq!(a.dims(), b.dims(), "{what}: gradient shape");
    assert!(max_diff(a, &b) < 1e-4, "{what}: backward {}", max_diff(a, &b));

    // The batch-1 CPU path on the first image.
    let x0 = Chw::from_tensor(&x.get(0).unwrap()).unwrap();
    let y0 = conv.forward_cpu(&x0).unwrap();
    let reference0 = reference.get(0).unwrap();
    assert!(max_diff(&chw_tensor(&y0), &reference0) < 1e-4, "{what}: forward_cpu");
    let dy0 = Chw::from_tensor(&dy.get(0).unwrap()).unwrap();
    let dx0 = conv.backward_cpu(x0.shape(), &y0, Cow::Borrowed(&dy0), &mut Backward::plain()).unwrap();
    assert!(max_diff(&chw_tensor(&dx0), &b.get(0).unwrap()) < 1e-4, "{what}: backward_cpu");
}

fn chw_tensor(c: &Chw) -> Tensor {
    Tensor::from_vec(c.data.clone(), c.shape().to_vec(), &Device::Cpu).unwrap()
}

#[test]
fn tf_same_padding_is_asymmetric_on_stride_two() {
    assert_eq!(Padding::TfSame.resolve(224, 3, 2), (0, 1, 112));
    assert_eq!(Padding::TfSame.resolve(56, 5, 2), (1, 2, 28));
    assert_eq!(Padding::TfSame.resolve(14, 5, 1), (2, 2, 14));
}

#[test]
fn folded_batch_norm_equals_conv_then_norm() {
    let x = rand(&[1, 3, 6, 6], 1);
    let w = rand(&[4, 3, 3, 3], 2);
    let bn = BatchNorm {
        weight: rand(&[4], 3),
        bias: rand(&[4], 4),
        running_mean: rand(&[4], 5),
        running_var: rand(&[4], 6).abs().unwrap().affine(1.0, 0.5).unwrap(),
        eps: 1e-3,
    };
    let folded =
        Conv2d::folded(w.clone(), None, &bn, 1, Padding::Symmetric(1), 1, Activation::Identity).unwrap();
    let plain = Conv2d::new(w, None, 1, Padding::Symmetric(1), 1, Activation::Identity).unwrap();
    let y = plain.forward(&x, &mut taps(EngineKind::Fast)).unwrap();
    let r = |t: &Tensor| t.reshape((1, 4, 1, 1)).unwrap();
    let normed = y
        .broadcast_sub(&r(&bn.running_mean))
        .unwrap()
        .broadcast_div(&r(&bn.running_var.affine(1.0, 1e-3).unwrap().sqrt().unwrap()))
        .unwrap()
        .broadcast_mul(&r(&bn.weight))
        .unwrap()
        .broadcast_add(&r(&bn.bias))
        .unwrap();
    assert!(max_diff(&folded.forward(&x, &mut taps(EngineKind::Fast)).unwrap(), &normed) < 1e-5);
}

/// ResNet's stem pool (3×3, stride 2, padding 1) on a hand-made input full of ties, through
/// Candle's autograd and through the batch-1 CPU path: each window's gradient must land whole
/// on its first maximum in row-major order (PyTorch's rule), never split between ties and
/// never on the padding; overlapping windows add up at a shared maximum.
#[test]
fn max_pool_gradient_goes_to_first_maximum() {
    #[rustfmt::skip]
    let x = [
        0.0, 0.0, 3.0, 3.0, 0.0,
        0.0, 0.0, 3.0, 0.0, 0.0,
        2.0, 2.0, 0.0, 0.0, 1.0,
        2.0, 0.0, 0.0, 1.0, 1.0,
        0.0, 0.0, 0.0, 1.0, 1.0,
    ];
    // Windows (rows × columns of the input they cover) and their first maximum:
    //   (0,0): rows 0–1, cols 0–1, all 0           → (0,0)
    //   (0,1): rows 0–1, cols 1–3, 3s at (0,2) (0,3) (1,2) → (0,2)
    //   (0,2): rows 0–1, cols 3–4, 3 at (0,3)      → (0,3)
    //   (1,0): rows 1–3, cols 0–1, 2s at (2,0) (2,1) (3,0) → (2,0)
    //   (1,1): rows 1–3, cols 1–3, 3 at (1,2)      → (1,2)
    //   (1,2): rows 1–3, cols 3–4, 1s at (2,4) (3,3) (3,4) → (2,4)
    //   (2,0): rows 3–4, cols 0–1, 2 at (3,0)      → (3,0)  (shared with window (1,0)'s 2s)
    //   (2,1): rows 3–4, cols 1–3, 1s at (3,3) (4,3) → (3,3)
    //   (2,2): rows 3–4, cols 3–4, all 1           → (3,3)  (adds to window (2,1)'s)
    let dy = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
    let mut expected = [0.0f32; 25];
    for (window, at) in [(0, (0, 0)), (1, (0, 2)), (2, (0, 3)), (3, (2, 0)), (4, (1, 2))].into_iter().chain([
        (5, (2, 4)),
        (6, (3, 0)),
        (7, (3, 3)),
        (8, (3, 3)),
    ]) {
        expected[at.0 * 5 + at.1] += dy[window];
    }
    let pool = MaxPool2d { kernel: 3, stride: 2, pad: 1 };

    let xv = Var::from_tensor(&Tensor::from_vec(x.to_vec(), (1, 1, 5, 5), &Device::Cpu).unwrap()).unwrap();
    let y = pool.forward(xv.as_tensor(), &taps(EngineKind::Fast)).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [0.0, 3.0, 3.0, 2.0, 3.0, 1.0, 2.0, 1.0, 1.0]
    );
    let dyt = Tensor::from_vec(dy.to_vec(), (1, 1, 3, 3), &Device::Cpu).unwrap();
    let grads = y.mul(&dyt).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(&xv).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(dx, expected, "autograd");

    let x = Chw::new(1, 5, 5, x.to_vec());
    let dx = pool.backward_cpu(&x, &Chw::new(1, 3, 3, dy.to_vec())).unwrap();
    assert_eq!(dx.data, expected, "CPU trace");
}

/// Channels not divisible by the groups are an error on every path (they used to reach the
/// gemm kernel, which then returned the last output channels uninitialised).
#[test]
fn conv_with_channels_not_divisible_by_groups_is_an_error() {
    // 5 output channels in 2 groups of 2 input channels each: refused when built, so no
    // kernel ever sees it (the kernels validate their geometry too, tested in `crate::kernels`).
    let conv = Conv2d::new(rand(&[5, 2, 3, 3], 1), None, 1, Padding::Symmetric(1), 2, Activation::Relu);
    let e = conv.unwrap_err().to_string();
    assert!(e.contains("divisible"), "{e}");
}

/// The one-pass activation equals Candle's composed one, forward and backward, with
/// PyTorch's gradient at the boundaries (none at exactly 0 or 6); its gradient op alone
/// gives the same; the input gradient of a convolution equals autograd's.
#[test]
fn activation_op_and_conv_input_gradient_match_autograd() {
    let x = Tensor::new(&[-1.0f32, 0.0, 0.5, 3.0, 6.0, 7.0], &Device::Cpu).unwrap();
    let dy = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &Device::Cpu).unwrap();
    for (act, expected) in [
        (Activation::Relu, [0.0f32, 0.0, 3.0, 4.0, 5.0, 6.0]),
        (Activation::Relu6, [0.0, 0.0, 3.0, 4.0, 0.0, 0.0]),
    ] {
        let var = Var::from_tensor(&x).unwrap();
        let y = activation(var.as_tensor(), act).unwrap();
        let reference = activate(&x, act).unwrap();
        assert_eq!(max_diff(&y, &reference), 0.0, "{act:?}");
        let grads = y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
        let dx: Vec<f32> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(dx, expected, "{act:?} through autograd");
        let direct: Vec<f32> = activation_gradient(&dy, &y, act).unwrap().to_vec1().unwrap();
        assert_eq!(direct, expected, "{act:?} alone");
    }

    let conv =
        Conv2d::new(rand(&[6, 2, 3, 3], 2), None, 2, Padding::Symmetric(1), 2, Activation::Identity).unwrap();
    let x = rand(&[1, 4, 9, 7], 3);
    let var = Var::from_tensor(&x).unwrap();
    // Candle's convolution and its autograd: an independent reference.
    let y = conv.forward(var.as_tensor(), &mut taps(EngineKind::Portable)).unwrap();
    let dy = rand(y.dims(), 4);
    let expected = y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
    let expected = expected.get(var.as_tensor()).unwrap();
    let ours = conv.input_gradient(&dy, x.shape()).unwrap();
    assert!(max_diff(&ours, expected) < 1e-5);
    assert!(conv.input_gradient(&dy.narrow(3, 0, 2).unwrap(), x.shape()).is_err());
}
