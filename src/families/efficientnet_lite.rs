//! EfficientNet-Lite0…4 with the original checkpoint's tensor names (`_blocks.N._depthwise_conv`).
//!
//! Lite differs from EfficientNet-B: no squeeze-excitation, ReLU6, and stem/head widths fixed (not
//! scaled). Convolutions use TensorFlow "SAME" padding; BatchNorm eps is 1e-3 and is folded into
//! each convolution at load time.

use std::borrow::Cow;

use candle_core::{Result as CResult, Tensor};

use super::family::Family;
use super::network::{Layer, Network, Stage};
use super::weights::WeightStore;
use crate::contract::{Backward, Chw, Taps};
use crate::error::{Error, Result};
use crate::kernels::storage::add_assign;
use crate::kernels::Activation;
use crate::layers::{Classifier, Conv2d, Linear, Padding};
use crate::preprocess::Preprocess;

const BN_EPS: f64 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// (repeats, kernel, stride, expand ratio, in, out) of the seven stages of EfficientNet-B0/Lite0.
const BASE_STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub index: u8,
    pub width: f64,
    pub depth: f64,
    pub input_size: usize,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant { index: 0, width: 1.0, depth: 1.0, input_size: 224 },
        Variant { index: 1, width: 1.0, depth: 1.1, input_size: 240 },
        Variant { index: 2, width: 1.1, depth: 1.2, input_size: 260 },
        Variant { index: 3, width: 1.2, depth: 1.4, input_size: 280 },
        Variant { index: 4, width: 1.4, depth: 1.8, input_size: 300 },
    ];

    pub fn get(index: u8) -> Variant {
        Self::ALL[index as usize]
    }

    fn name(&self) -> String {
        format!("efficientnet-lite{}", self.index)
    }

    fn named(arch: &str) -> Result<Variant> {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == arch)
            .ok_or_else(|| Error::Model(format!("no EfficientNet-Lite variant '{arch}'")))
    }

    /// TF `round_filters` with divisor 8.
    fn filters(&self, f: usize) -> usize {
        let f = f as f64 * self.width;
        let mut new = 8.max(((f + 4.0) as usize) / 8 * 8);
        if (new as f64) < 0.9 * f {
            new += 8;
        }
        new
    }

    /// Per-block arguments, with the first and last stages' repeats left unscaled (Lite).
    pub fn blocks(&self) -> Vec<BlockArgs> {
        let mut blocks = Vec::new();
        for (i, &(repeats, kernel, stride, expand, cin, cout)) in BASE_STAGES.iter().enumerate() {
            let repeats = if i == 0 || i == BASE_STAGES.len() - 1 {
                repeats
            } else {
                (self.depth * repeats as f64).ceil() as usize
            };
            let (cin, cout) = (self.filters(cin), self.filters(cout));
            for r in 0..repeats {
                blocks.push(BlockArgs {
                    kernel,
                    stride: if r == 0 { stride } else { 1 },
                    expand,
                    in_channels: if r == 0 { cin } else { cout },
                    out_channels: cout,
                });
            }
        }
        blocks
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BlockArgs {
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub in_channels: usize,
    pub out_channels: usize,
}

pub static FAMILY: Family = Family {
    archs: || Variant::ALL.iter().map(Variant::name).collect(),
    detect: |w| w.contains("_conv_stem.weight").then(|| detect(w)),
    build: |arch, w| build(Variant::named(arch)?, w),
    preprocess: |arch| {
        let size = Variant::named(arch).map_or(224, |v| v.input_size);
        Preprocess { mean: [127.0; 3], std: [128.0; 3], ..Preprocess::imagenet(size) }
    },
};

/// Picks the variant whose block count and channel widths match the checkpoint.
fn detect(w: &WeightStore) -> Result<String> {
    let count = (0..).take_while(|i| w.contains(&format!("_blocks.{i}._project_conv.weight"))).count();
    let widths: Vec<Option<usize>> =
        (0..count).map(|i| w.shape_of(&format!("_blocks.{i}._project_conv.weight")).map(|s| s[0])).collect();
    Variant::ALL
        .iter()
        .find(|v| {
            let blocks = v.blocks();
            blocks.len() == count && blocks.iter().zip(&widths).all(|(b, w)| Some(b.out_channels) == *w)
        })
        .map(Variant::name)
        .ok_or_else(|| Error::Weights {
            source_name: w.source_name().into(),
            message: format!(
                "EfficientNet-style tensors with {count} blocks match no EfficientNet-Lite0-4 layout"
            ),
        })
}

/// `{conv}.weight` followed by the BatchNorm `{bn}.*`, folded.
fn conv_bn(
    w: &WeightStore,
    conv: &str,
    bn: &str,
    shape: [usize; 4],
    stride: usize,
    groups: usize,
    act: Activation,
) -> Result<Conv2d> {
    let weight = w.get(&format!("{conv}.weight"), &shape)?;
    let norm = w.batch_norm(bn, shape[0], BN_EPS)?;
    Ok(Conv2d::folded(weight, None, &norm, stride, Padding::TfSame, groups, act)?)
}

struct ConvStage(Conv2d);

impl Layer for ConvStage {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> CResult<Tensor> {
        self.0.forward(x, taps)
    }

    fn forward_cpu(&self, x: &Chw, _saved: &mut Vec<Chw>) -> CResult<Chw> {
        self.0.forward_cpu(x)
    }

    fn backward_cpu(
        &self,
        input: [usize; 3],
        _saved: &[Chw],
        output: &Chw,
        dy: &Chw,
        ctx: &mut Backward,
    ) -> CResult<Chw> {
        self.0.backward_cpu(input, output, Cow::Borrowed(dy), ctx)
    }
}

/// Mobile inverted bottleneck: [expand 1×1] → depthwise k×k → project 1×1 (+ residual).
struct MbConv {
    expand: Option<Conv2d>,
    depthwise: Conv2d,
    project: Conv2d,
    residual: bool,
}

impl MbConv {
    fn new(w: &WeightStore, prefix: &str, a: &BlockArgs) -> Result<Self> {
        let hidden = a.in_channels * a.expand;
        let expand = (a.expand != 1)
            .then(|| {
                let shape = [hidden, a.in_channels, 1, 1];
                conv_bn(
                    w,
                    &format!("{prefix}._expand_conv"),
                    &format!("{prefix}._bn0"),
                    shape,
                    1,
                    1,
                    Activation::Relu6,
                )
            })
            .transpose()?;
        let depthwise = conv_bn(
            w,
            &format!("{prefix}._depthwise_conv"),
            &format!("{prefix}._bn1"),
            [hidden, 1, a.kernel, a.kernel],
            a.stride,
            hidden,
            Activation::Relu6,
        )?;
        let project = conv_bn(
            w,
            &format!("{prefix}._project_conv"),
            &format!("{prefix}._bn2"),
            [a.out_channels, hidden, 1, 1],
            1,
            1,
            Activation::Identity,
        )?;
        Ok(Self { expand, depthwise, project, residual: a.stride == 1 && a.in_channels == a.out_channels })
    }
}

impl Layer for MbConv {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> CResult<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x, taps)?,
            None => x.clone(),
        };
        let d = self.depthwise.forward(&h, taps)?;
        let y = self.project.forward(&d, taps)?;
        if self.residual {
            y.add(x)
        } else {
            Ok(y)
        }
    }

    /// Saves the expanded activation (if any) and the depthwise output: the masks of their ReLU6.
    fn forward_cpu(&self, x: &Chw, saved: &mut Vec<Chw>) -> CResult<Chw> {
        if let Some(e) = &self.expand {
            saved.push(e.forward_cpu(x)?);
        }
        let hidden = saved.last().unwrap_or(x);
        let depthwise = self.depthwise.forward_cpu(hidden)?;
        let mut y = self.project.forward_cpu(&depthwise)?;
        saved.push(depthwise);
        if self.residual {
            add_assign(&mut y.data, &x.data);
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
        let depthwise = saved.last().expect("MbConv saves its depthwise output");
        // The expansion is 1×1 with stride 1: the hidden map has the input's size.
        let hidden_shape = [depthwise.channels, input[1], input[2]];
        let d_depthwise = self.project.backward_cpu(depthwise.shape(), output, Cow::Borrowed(dy), ctx)?;
        let d_hidden = self.depthwise.backward_cpu(hidden_shape, depthwise, Cow::Owned(d_depthwise), ctx)?;
        let mut dx = match &self.expand {
            Some(e) => e.backward_cpu(input, &saved[0], Cow::Owned(d_hidden), ctx)?,
            None => d_hidden,
        };
        if self.residual {
            add_assign(&mut dx.data, &dy.data);
        }
        Ok(dx)
    }
}

fn build(v: Variant, w: &WeightStore) -> Result<Network> {
    let mut stages = Vec::new();
    let stem = conv_bn(w, "_conv_stem", "_bn0", [STEM_CHANNELS, 3, 3, 3], 2, 1, Activation::Relu6)?;
    stages.push(Stage::new("_conv_stem", ConvStage(stem)));
    let blocks = v.blocks();
    for (i, args) in blocks.iter().enumerate() {
        let name = format!("_blocks.{i}");
        stages.push(Stage::new(name.clone(), MbConv::new(w, &name, args)?));
    }
    let last = blocks.last().map_or(STEM_CHANNELS, |b| b.out_channels);
    let head = conv_bn(w, "_conv_head", "_bn1", [HEAD_CHANNELS, last, 1, 1], 1, 1, Activation::Relu6)?;
    stages.push(Stage::new("_conv_head", ConvStage(head)));

    let num_classes = w.shape_of("_fc.weight").map_or(1000, |s| s[0]);
    let fc = Linear::new(
        w.get("_fc.weight", &[num_classes, HEAD_CHANNELS])?,
        Some(w.get("_fc.bias", &[num_classes])?),
    )?;
    Ok(Network::new(v.name(), stages, Classifier(fc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite_variants_have_the_published_block_counts() {
        let counts: Vec<usize> = Variant::ALL.iter().map(|v| v.blocks().len()).collect();
        assert_eq!(counts, [16, 21, 21, 24, 30]);
        let lite0: Vec<usize> = Variant::get(0).blocks().iter().map(|b| b.out_channels).collect();
        assert_eq!(lite0[..3], [16, 24, 24]);
        assert_eq!(Variant::get(2).filters(40), 48);
        assert_eq!(Variant::get(4).filters(320), 448);
    }
}
