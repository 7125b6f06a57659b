//! torchvision ResNet-18/34/50/101/152 (v1.5: the stride sits on the 3×3 convolution), with the
//! state-dict names of `torchvision.models.resnetNN`. Stages are `maxpool` (the stem, ending with
//! its 3×3/2 max-pool) and every residual block `layerL.i`.

use std::borrow::Cow;

use candle_core::{Result as CResult, Tensor};

use super::family::Family;
use super::network::{Layer, Network, Stage};
use super::weights::WeightStore;
use crate::contract::{Backward, Chw, Taps};
use crate::error::{Error, Result};
use crate::kernels::storage::add_assign;
use crate::kernels::Activation;
use crate::layers::{mask_activation_gradient, Classifier, Conv2d, Linear, MaxPool2d, Padding};
use crate::preprocess::Preprocess;

const BN_EPS: f64 = 1e-5;
const WIDTHS: [usize; 4] = [64, 128, 256, 512];

/// (depth, bottleneck, blocks per layer)
const LAYOUTS: [(u16, bool, [usize; 4]); 5] = [
    (18, false, [2, 2, 2, 2]),
    (34, false, [3, 4, 6, 3]),
    (50, true, [3, 4, 6, 3]),
    (101, true, [3, 4, 23, 3]),
    (152, true, [3, 8, 36, 3]),
];

fn layout(depth: u16) -> Result<(bool, [usize; 4])> {
    LAYOUTS
        .iter()
        .find(|l| l.0 == depth)
        .map(|l| (l.1, l.2))
        .ok_or_else(|| Error::Model(format!("no ResNet-{depth} layout")))
}

pub static FAMILY: Family = Family {
    archs: || LAYOUTS.iter().map(|l| format!("resnet{}", l.0)).collect(),
    detect: |w| (w.contains("conv1.weight") && w.contains("layer1.0.conv1.weight")).then(|| detect(w)),
    build: |arch, w| build(depth(arch)?, w),
    preprocess: |_| Preprocess::imagenet(224),
};

fn depth(arch: &str) -> Result<u16> {
    arch.strip_prefix("resnet")
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| Error::Model(format!("'{arch}' is not a ResNet")))
}

fn detect(w: &WeightStore) -> Result<String> {
    let bottleneck = w.contains("layer1.0.conv3.weight");
    let counts: Vec<usize> = (1..=4)
        .map(|l| (0..).take_while(|i| w.contains(&format!("layer{l}.{i}.conv1.weight"))).count())
        .collect();
    LAYOUTS
        .iter()
        .find(|l| l.1 == bottleneck && l.2[..] == counts[..])
        .map(|l| format!("resnet{}", l.0))
        .ok_or_else(|| Error::Weights {
            source_name: w.source_name().into(),
            message: format!(
                "ResNet-style tensors with {} blocks {counts:?} match no torchvision ResNet",
                if bottleneck { "bottleneck" } else { "basic" }
            ),
        })
}

fn conv_bn(
    w: &WeightStore,
    conv: &str,
    bn: &str,
    shape: [usize; 4],
    stride: usize,
    pad: usize,
    act: Activation,
) -> Result<Conv2d> {
    let weight = w.get(&format!("{conv}.weight"), &shape)?;
    let norm = w.batch_norm(bn, shape[0], BN_EPS)?;
    Ok(Conv2d::folded(weight, None, &norm, stride, Padding::Symmetric(pad), 1, act)?)
}

/// conv1 7×7/2 + bn1 + ReLU + max-pool 3×3/2.
struct Stem {
    conv: Conv2d,
    pool: MaxPool2d,
}

impl Layer for Stem {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> CResult<Tensor> {
        let conv = self.conv.forward(x, taps)?;
        self.pool.forward(&conv, taps)
    }

    /// Saves the convolution's output: the pool's input and the ReLU's mask.
    fn forward_cpu(&self, x: &Chw, saved: &mut Vec<Chw>) -> CResult<Chw> {
        let conv = self.conv.forward_cpu(x)?;
        let y = self.pool.forward_cpu(&conv)?;
        saved.push(conv);
        Ok(y)
    }

    fn backward_cpu(
        &self,
        input: [usize; 3],
        saved: &[Chw],
        _output: &Chw,
        dy: &Chw,
        ctx: &mut Backward,
    ) -> CResult<Chw> {
        let conv = &saved[0];
        self.conv.backward_cpu(input, conv, Cow::Owned(self.pool.backward_cpu(conv, dy)?), ctx)
    }
}

/// BasicBlock (two 3×3) or Bottleneck (1×1, 3×3, 1×1 ×4); ReLU after the residual add.
struct Block {
    convs: Vec<Conv2d>,
    downsample: Option<Conv2d>,
}

impl Block {
    fn new(
        w: &WeightStore,
        p: &str,
        bottleneck: bool,
        cin: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let cout = if bottleneck { width * 4 } else { width };
        // convN + bnN, the checkpoint's names for the N-th convolution of the block.
        let nth = |n: usize, shape: [usize; 4], stride: usize, pad: usize, act: Activation| {
            conv_bn(w, &format!("{p}.conv{n}"), &format!("{p}.bn{n}"), shape, stride, pad, act)
        };
        let convs = if bottleneck {
            vec![
                nth(1, [width, cin, 1, 1], 1, 0, Activation::Relu)?,
                nth(2, [width, width, 3, 3], stride, 1, Activation::Relu)?,
                nth(3, [cout, width, 1, 1], 1, 0, Activation::Identity)?,
            ]
        } else {
            vec![
                nth(1, [width, cin, 3, 3], stride, 1, Activation::Relu)?,
                nth(2, [width, width, 3, 3], 1, 1, Activation::Identity)?,
            ]
        };
        let downsample = (stride != 1 || cin != cout)
            .then(|| {
                let shape = [cout, cin, 1, 1];
                conv_bn(
                    w,
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    shape,
                    stride,
                    0,
                    Activation::Identity,
                )
            })
            .transpose()?;
        Ok(Self { convs, downsample })
    }
}

impl Layer for Block {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> CResult<Tensor> {
        let mut y = x.clone();
        for conv in &self.convs {
            y = conv.forward(&y, taps)?;
        }
        let identity = match &self.downsample {
            Some(d) => d.forward(x, taps)?,
            None => x.clone(),
        };
        taps.relu(&y.add(&identity)?)
    }

    /// Saves every convolution's output (their masks, and the next one's input shape).
    fn forward_cpu(&self, x: &Chw, saved: &mut Vec<Chw>) -> CResult<Chw> {
        for conv in &self.convs {
            let y = conv.forward_cpu(saved.last().unwrap_or(x))?;
            saved.push(y);
        }
        let mut y = saved.last().expect("a block has convolutions").clone();
        match &self.downsample {
            Some(d) => add_relu(&mut y.data, &d.forward_cpu(x)?.data),
            None => add_relu(&mut y.data, &x.data),
        }
        Ok(y)
    }

    fn backward_cpu(
        &self,
        input: [usize; 3],
        saved: &[Chw],
        output: &Chw,
        dy: &Chw,
        ctx: &mut Backward,
    ) -> CResult<Chw> {
        // Through the final ReLU (no gradient where the output is 0, as in PyTorch).
        let mut d_sum = dy.clone();
        mask_activation_gradient(&mut d_sum.data, &output.data, Activation::Relu, ctx);
        let mut grad = d_sum.clone();
        for (i, conv) in self.convs.iter().enumerate().rev() {
            let conv_input = if i == 0 { input } else { saved[i - 1].shape() };
            grad = conv.backward_cpu(conv_input, &saved[i], Cow::Owned(grad), ctx)?;
        }
        match &self.downsample {
            Some(d) => {
                let identity = d.backward_cpu(input, output, Cow::Owned(d_sum), ctx)?;
                add_assign(&mut grad.data, &identity.data);
            }
            None => add_assign(&mut grad.data, &d_sum.data),
        }
        Ok(grad)
    }
}

/// `y = relu(y + identity)`, in place.
fn add_relu(y: &mut [f32], identity: &[f32]) {
    y.iter_mut().zip(identity).for_each(|(y, i)| *y = (*y + i).max(0.0));
}

fn build(depth: u16, w: &WeightStore) -> Result<Network> {
    let (bottleneck, counts) = layout(depth)?;
    let stem = Stem {
        conv: conv_bn(w, "conv1", "bn1", [64, 3, 7, 7], 2, 3, Activation::Relu)?,
        pool: MaxPool2d { kernel: 3, stride: 2, pad: 1 },
    };
    let mut stages = vec![Stage::new("maxpool", stem)];
    let mut cin = 64;
    for (l, (&width, &count)) in WIDTHS.iter().zip(&counts).enumerate() {
        for i in 0..count {
            let stride = if l > 0 && i == 0 { 2 } else { 1 };
            let name = format!("layer{}.{i}", l + 1);
            let block = Block::new(w, &name, bottleneck, cin, width, stride)?;
            cin = if bottleneck { width * 4 } else { width };
            stages.push(Stage::new(name, block));
        }
    }
    let num_classes = w.shape_of("fc.weight").map_or(1000, |s| s[0]);
    let fc = Linear::new(w.get("fc.weight", &[num_classes, cin])?, Some(w.get("fc.bias", &[num_classes])?))?;
    Ok(Network::new(format!("resnet{depth}"), stages, Classifier(fc)))
}
