//! Debugging your own Candle model with camscope.
//!
//! A small residual CNN written with candle-nn, as you would write any Candle model, made
//! explainable by implementing one trait (`ImageClassifier`): name the stages, and hand each
//! stage's output to the taps in `forward`. Routing ReLUs and biases through the taps is optional
//! and unlocks guided backprop and FullGrad.
//!
//! ```text
//! cargo run --release --example own_model                                # the debugger
//! cargo run --release --example own_model -- explain --layer all --json  # the JSON of `camscope explain`
//! cargo run --release --example own_model -- layers
//! cargo run --release --features cuda --example own_model -- explain --device cuda --json
//! ```
//!
//! The weights come from a seeded generator, so the predictions mean nothing; the maps are still
//! exactly what each method computes for this network.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use camscope::contract::Model;
use camscope::contract::{Capabilities, ImageClassifier, StageSpec, Taps};
use camscope::preprocess::Preprocess;
use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder};

/// conv → BatchNorm, with the BatchNorm's effective bias kept for FullGrad.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    /// β − μγ/√(σ² + ε): what FullGrad multiplies the gradient by.
    bias: Tensor,
}

impl ConvBn {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        let config = Conv2dConfig { padding: 1, stride, ..Default::default() };
        let conv = candle_nn::conv2d_no_bias(c_in, c_out, 3, config, vb.pp("conv"))?;
        let bn_vb = vb.pp("bn");
        let bn = candle_nn::batch_norm(c_out, 1e-5, bn_vb.clone())?;
        let (gamma, beta) = (bn_vb.get(c_out, "weight")?, bn_vb.get(c_out, "bias")?);
        let (mean, var) = (bn_vb.get(c_out, "running_mean")?, bn_vb.get(c_out, "running_var")?);
        let bias = beta.sub(&mean.mul(&gamma)?.div(&(var + 1e-5)?.sqrt()?)?)?;
        Ok(Self { conv, bn, bias })
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let y = self.bn.forward_t(&self.conv.forward(x)?, false)?;
        taps.bias(y, &self.bias)
    }
}

/// Two 3×3 convolutions and a skip connection, ReLU after the sum.
struct ResidualBlock {
    a: ConvBn,
    b: ConvBn,
}

impl ResidualBlock {
    fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            a: ConvBn::new(vb.pp("a"), channels, channels, 1)?,
            b: ConvBn::new(vb.pp("b"), channels, channels, 1)?,
        })
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let h = self.a.forward(x, taps)?;
        let h = taps.relu(&h)?;
        let h = self.b.forward(&h, taps)?;
        taps.relu(&(h + x)?)
    }
}

struct TinyResNet {
    stem: ConvBn,
    block1: ResidualBlock,
    down: ConvBn,
    block2: ResidualBlock,
    head: Linear,
    stages: Vec<StageSpec>,
}

impl TinyResNet {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            stem: ConvBn::new(vb.pp("stem"), 3, 16, 2)?,
            block1: ResidualBlock::new(vb.pp("block1"), 16)?,
            down: ConvBn::new(vb.pp("down"), 16, 32, 2)?,
            block2: ResidualBlock::new(vb.pp("block2"), 32)?,
            head: candle_nn::linear(32, CLASSES.len(), vb.pp("head"))?,
            stages: ["stem", "block1", "down", "block2"].map(StageSpec::nchw).to_vec(),
        })
    }
}

/// The whole integration: stage names, and the stage outputs handed to the taps.
impl ImageClassifier for TinyResNet {
    fn name(&self) -> String {
        "tiny-resnet".into()
    }

    fn stages(&self) -> &[StageSpec] {
        &self.stages
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let x = self.stem.forward(x, taps)?;
        let x = taps.relu(&x)?;
        let x = taps.stage("stem", x)?;
        let x = self.block1.forward(&x, taps)?;
        let x = taps.stage("block1", x)?;
        let x = self.down.forward(&x, taps)?;
        let x = taps.relu(&x)?;
        let x = taps.stage("down", x)?;
        let x = self.block2.forward(&x, taps)?;
        let x = taps.stage("block2", x)?;
        self.head.forward(&x.mean((2, 3))?)
    }

    /// Every ReLU goes through `taps.relu` and every BatchNorm bias through `taps.bias`.
    fn capabilities(&self) -> Capabilities {
        Capabilities { guided_relu: true, bias_gradients: true }
    }
}

const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Every tensor the model asks for, from a seeded generator: convolutions and the linear layer
/// scaled for unit variance, BatchNorm statistics away from the identity.
fn seeded_weights(device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut tensor = |shape: &[usize], lo: f32, hi: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * uniform()).collect();
        Tensor::from_vec(values, shape, device)
    };
    let mut weights = HashMap::new();
    let mut conv_bn = |prefix: &str, c_in: usize, c_out: usize| -> Result<()> {
        let bound = (3.0 / (9 * c_in) as f32).sqrt();
        weights.insert(format!("{prefix}.conv.weight"), tensor(&[c_out, c_in, 3, 3], -bound, bound)?);
        weights.insert(format!("{prefix}.bn.weight"), tensor(&[c_out], 0.5, 1.5)?);
        weights.insert(format!("{prefix}.bn.bias"), tensor(&[c_out], -0.2, 0.2)?);
        weights.insert(format!("{prefix}.bn.running_mean"), tensor(&[c_out], -0.1, 0.1)?);
        weights.insert(format!("{prefix}.bn.running_var"), tensor(&[c_out], 0.5, 1.5)?);
        Ok(())
    };
    conv_bn("stem", 3, 16)?;
    conv_bn("block1.a", 16, 16)?;
    conv_bn("block1.b", 16, 16)?;
    conv_bn("down", 16, 32)?;
    conv_bn("block2.a", 32, 32)?;
    conv_bn("block2.b", 32, 32)?;
    let bound = (3.0f32 / 32.0).sqrt();
    weights.insert("head.weight".into(), tensor(&[CLASSES.len(), 32], -bound, bound)?);
    weights.insert("head.bias".into(), tensor(&[CLASSES.len()], -0.1, 0.1)?);
    Ok(weights)
}

/// The model with its weights on `device`, the one `--device` names: a Candle layer wants its
/// weights where its input is.
fn tiny_model(device: &Device) -> camscope::Result<Model> {
    let vb = VarBuilder::from_tensors(seeded_weights(device)?, DType::F32, device);
    let network = TinyResNet::new(vb)?;
    // What the network expects: 96×96 inputs normalised with ImageNet's mean and std.
    let preprocess = Preprocess::imagenet(96);
    let labels = CLASSES.iter().map(|s| s.to_string()).collect();
    Model::new("tiny-resnet (seeded weights)", Arc::new(network), preprocess, Some(labels))
}

fn main() -> ExitCode {
    camscope::cli::main_with_model_on_device(tiny_model)
}
