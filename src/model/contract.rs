//! The one contract every model meets: a built-in family, a Rust user's own Candle model, an
//! imported graph. A model names its stages, says how each stage's output is laid out, and runs a
//! forward pass in which it hands every stage output to the engine's [`Taps`]. Everything camscope
//! computes — activations, gradients at every stage through Candle autograd, perturbation runs,
//! FullGrad's bias gradients, guided backprop — is built on that one hook, so it works on every
//! device Candle runs on. A model may also offer a hand-written CPU tape ([`CpuTape`]) as a fast
//! path; the engine uses it where the user asked for the fast engine, and tests hold it equal to
//! the autograd path.

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Result as CResult, Tensor, Var};

use super::kernels::Activation;
use crate::cam::Chw;

/// How a stage's output lays out channels and positions (SPEC §9). The engine lays every output
/// on a C×H×W grid the way pytorch-grad-cam's documented `reshape_transform`s do, and sends the
/// gradient through the same reshape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layout {
    /// (N, C, H, W): a convolutional feature map.
    Nchw,
    /// (N, H, W, C): channels last (Swin).
    Nhwc,
    /// (N, prefix + h·w, C): a transformer's tokens; the first `prefix` (class, distillation,
    /// register tokens) are dropped and the rest laid row-major on the h×w patch grid.
    Tokens {
        #[serde(rename = "prefix_tokens")]
        prefix: usize,
        grid: [usize; 2],
    },
}

impl Layout {
    /// The stage output as (N, C, H, W).
    pub fn to_nchw(self, t: &Tensor) -> CResult<Tensor> {
        match self {
            Layout::Nchw => Ok(t.clone()),
            Layout::Nhwc => t.permute((0, 3, 1, 2)),
            Layout::Tokens { prefix, grid: [h, w] } => {
                let (n, tokens, c) = t.dims3()?;
                if tokens != prefix + h * w {
                    candle_core::bail!(
                        "a tokens stage with {prefix} prefix tokens on a {h}×{w} grid has {} tokens, got {tokens}",
                        prefix + h * w
                    )
                }
                t.narrow(1, prefix, h * w)?.reshape((n, h, w, c))?.permute((0, 3, 1, 2))
            }
        }
    }

    /// The dimension of the raw output that holds the channels.
    pub fn channel_dim(self) -> usize {
        match self {
            Layout::Nchw => 1,
            Layout::Nhwc => 3,
            Layout::Tokens { .. } => 2,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Nchw => write!(f, "nchw"),
            Layout::Nhwc => write!(f, "nhwc"),
            Layout::Tokens { prefix, grid: [h, w] } => write!(f, "tokens(+{prefix}, {h}×{w})"),
        }
    }
}

/// A stage a person can step to: its name (a module path, e.g. `layer3.1`) and its output layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    pub name: String,
    pub layout: Layout,
}

impl StageSpec {
    pub fn new(name: impl Into<String>, layout: Layout) -> Self {
        Self { name: name.into(), layout }
    }

    pub fn nchw(name: impl Into<String>) -> Self {
        Self::new(name, Layout::Nchw)
    }
}

/// What a forward pass is for. An explicit argument rather than hidden state, so that two passes
/// in different modes can run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Logits (and, through the taps, activations and stage gradients).
    #[default]
    Plain,
    /// Guided backpropagation: every ReLU the model routes through [`Taps::relu`] passes only
    /// positive gradient where its input was positive.
    GuidedRelu,
    /// FullGrad: every bias the model reports through [`Taps::bias`] gets its output gradient.
    RecordBiases,
}

/// Which code computes: the model's fast path where it offers one, or only Candle's own tensor
/// ops and autograd — exactly the code that runs on CUDA or Metal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    #[default]
    Fast,
    Portable,
}

impl EngineKind {
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fast" => Ok(EngineKind::Fast),
            "portable" => Ok(EngineKind::Portable),
            _ => Err(crate::Error::Usage(format!("unknown engine '{s}'; engines are: fast, portable"))),
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Fast => "fast",
            EngineKind::Portable => "portable",
        })
    }
}

/// What a model offers beyond its forward pass. A method that needs what is missing fails with
/// an error naming method and model, never with a silently wrong map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Every ReLU of the model goes through [`Taps::relu`] (guided backprop).
    pub guided_relu: bool,
    /// Every bias of a convolution or BatchNorm goes through [`Taps::bias`] (FullGrad).
    pub bias_gradients: bool,
}

/// An image classifier camscope can explain.
///
/// ```ignore
/// impl ImageClassifier for MyNet {
///     fn name(&self) -> String { "my-net".into() }
///     fn stages(&self) -> &[StageSpec] { &self.stages }
///     fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor> {
///         let x = taps.stage("block1", self.block1.forward(x)?)?;
///         let x = taps.stage("block2", self.block2.forward(&x)?)?;
///         self.head.forward(&x.mean((2, 3))?)
///     }
/// }
/// ```
pub trait ImageClassifier: Send + Sync {
    /// A short name for messages ("resnet50", "my-net").
    fn name(&self) -> String;

    /// The stages, in the order the forward pass reaches them.
    fn stages(&self) -> &[StageSpec];

    /// Logits (N, classes) of a batch of normalised images (N, 3, H, W). Every stage output must
    /// pass through [`Taps::stage`], in order, and the forward must continue with what it returns.
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> CResult<Tensor>;

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Logits from the output of stage `stage` (a batch in that stage's layout), running only the
    /// rest of the network: what makes Ablation-CAM cheap. `None`: the model cannot resume, and
    /// the engine runs the whole network, replacing the stage output through the taps instead.
    fn forward_from(&self, _stage: usize, _activation: &Tensor, _taps: &mut Taps) -> Option<CResult<Tensor>> {
        None
    }

    /// The same model tapped at `names` (its stages and other module paths it knows, in any
    /// order): what lets `--layer` reach any module of an imported graph. `None`: the stage list
    /// is fixed.
    fn with_stages(&self, _names: &[&str]) -> Option<crate::Result<Arc<dyn ImageClassifier>>> {
        None
    }

    /// A hand-written CPU forward/backward for one image, if the model has one.
    fn cpu_tape(&self) -> Option<&dyn CpuTape> {
        None
    }

    /// The model's own reverse pass over Candle tensors, if it has one: what the fast engine
    /// runs instead of Candle's autograd (which also computes every weight's gradient).
    fn reverse_pass(&self) -> Option<&dyn ReversePass> {
        None
    }
}

/// A model's own backward pass over Candle tensors, on any device: gradients at the stages
/// only, never at the weights, with hand-written rules where Candle's composed ones are slow.
/// Tests hold it equal to Candle's autograd through the same forward pass.
pub trait ReversePass: Send + Sync {
    /// The forward pass of one image (1, 3, H, W), keeping what the reverse passes need.
    fn record(&self, x: &Tensor) -> CResult<Box<dyn Recording>>;
}

/// One image's forward pass, kept for its reverse passes (one per target class).
pub trait Recording: Send + Sync {
    /// Every stage's output (batch 1, the stage's own layout), in stage order.
    fn stage_outputs(&self) -> Vec<Tensor>;

    /// The logits, (1, classes).
    fn logits(&self) -> Tensor;

    /// The gradient of logit `class` at every stage's output, in the stage's layout; `None`
    /// where the score does not depend on the stage.
    fn stage_gradients(&self, class: usize) -> CResult<Vec<Option<Tensor>>>;
}

/// The engine's hook inside a model's forward pass.
pub struct Taps<'a> {
    stages: &'a [StageSpec],
    engine: EngineKind,
    mode: Mode,
    hook: Option<&'a mut StageHook<'a>>,
    /// One past the last stage tapped (stages come in order), and how many were.
    next: usize,
    tapped: usize,
    guided_cuts: Vec<GuidedCut>,
    bias_taps: Vec<BiasTap>,
}

/// Sees every stage output (by index) and returns what the forward pass continues with.
pub type StageHook<'a> = dyn FnMut(usize, Tensor) -> CResult<Tensor> + 'a;

/// A ReLU in guided mode: its input (with the graph behind it) and the leaf its output became.
pub(crate) struct GuidedCut {
    pub input: Tensor,
    pub output: Var,
    pub activation: Activation,
}

/// A biased layer in FullGrad mode: the zero `Var` at its pre-activation output, and its bias.
pub(crate) struct BiasTap {
    pub tap: Var,
    pub bias: Arc<Vec<f32>>,
}

impl<'a> Taps<'a> {
    pub fn new(stages: &'a [StageSpec], engine: EngineKind, mode: Mode) -> Self {
        Self {
            stages,
            engine,
            mode,
            hook: None,
            next: 0,
            tapped: 0,
            guided_cuts: Vec::new(),
            bias_taps: Vec::new(),
        }
    }

    /// Taps that call `hook` with every stage output.
    pub fn with_hook(
        stages: &'a [StageSpec],
        engine: EngineKind,
        mode: Mode,
        hook: &'a mut StageHook<'a>,
    ) -> Self {
        Self { hook: Some(hook), ..Self::new(stages, engine, mode) }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn engine(&self) -> EngineKind {
        self.engine
    }

    /// Whether a built-in layer may run its own CPU kernels (Candle custom ops) on `x`: only
    /// on the fast engine, on the CPU.
    pub fn fast_kernels(&self, x: &Tensor) -> bool {
        self.engine == EngineKind::Fast && x.device().is_cpu()
    }

    /// Hands stage `name`'s output to the engine; continue with what it returns.
    pub fn stage(&mut self, name: &str, output: Tensor) -> CResult<Tensor> {
        let Some(index) = self.stages.iter().position(|s| s.name == name) else {
            candle_core::bail!("the model tapped stage '{name}', which is not in its stage list")
        };
        if index < self.next {
            candle_core::bail!("the model tapped stage '{name}' out of order (or twice)")
        }
        self.next = index + 1;
        self.tapped += 1;
        match self.hook.as_mut() {
            Some(hook) => hook(index, output),
            None => Ok(output),
        }
    }

    /// How many stages the forward pass has handed over.
    pub fn stages_seen(&self) -> usize {
        self.tapped
    }

    /// ReLU with PyTorch's gradient (none at exactly 0); in guided mode, guided.
    pub fn relu(&mut self, x: &Tensor) -> CResult<Tensor> {
        self.activation(x, Activation::Relu)
    }

    /// ReLU6 with PyTorch's gradient (none at 0 or 6); in guided mode, guided like a ReLU.
    pub fn relu6(&mut self, x: &Tensor) -> CResult<Tensor> {
        self.activation(x, Activation::Relu6)
    }

    pub(crate) fn activation(&mut self, x: &Tensor, activation: Activation) -> CResult<Tensor> {
        if activation == Activation::Identity {
            return Ok(x.clone());
        }
        let y = if self.fast_kernels(x) {
            super::ops::activation(x, activation)?
        } else {
            activate(x, activation)?
        };
        if self.mode != Mode::GuidedRelu {
            return Ok(y);
        }
        // Guided backprop's rule is not a function of the forward pass, so no single graph has
        // it as its gradient: cut the graph here and let the engine walk the cuts backwards.
        let output = Var::from_tensor(&y.detach())?;
        let out = output.as_tensor().clone();
        self.guided_cuts.push(GuidedCut { input: x.clone(), output, activation });
        Ok(out)
    }

    /// Reports a layer's output (bias included, before its activation) and its bias (C,): in
    /// FullGrad mode the engine reads the gradient there.
    pub fn bias(&mut self, output: Tensor, bias: &Tensor) -> CResult<Tensor> {
        if self.mode != Mode::RecordBiases {
            return Ok(output);
        }
        let values: Vec<f32> = bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        self.bias_values(output, Arc::new(values))
    }

    /// [`Taps::bias`] for a bias already held on the CPU.
    pub(crate) fn bias_values(&mut self, output: Tensor, bias: Arc<Vec<f32>>) -> CResult<Tensor> {
        if self.mode != Mode::RecordBiases {
            return Ok(output);
        }
        let tap = Var::zeros(output.shape(), output.dtype(), output.device())?;
        let y = output.add(tap.as_tensor())?;
        self.bias_taps.push(BiasTap { tap, bias });
        Ok(y)
    }

    pub(crate) fn take_guided_cuts(&mut self) -> Vec<GuidedCut> {
        std::mem::take(&mut self.guided_cuts)
    }

    pub(crate) fn take_bias_taps(&mut self) -> Vec<BiasTap> {
        std::mem::take(&mut self.bias_taps)
    }
}

/// An activation as Candle ops with PyTorch's gradient: the pass-through masks are constants, so
/// autograd multiplies by exactly 0 or 1 (Candle's own ReLU passes gradient at 0).
pub(crate) fn activate(x: &Tensor, activation: Activation) -> CResult<Tensor> {
    match activation {
        Activation::Identity => Ok(x.clone()),
        Activation::Relu => x.mul(&x.gt(0.0)?.to_dtype(x.dtype())?.detach()),
        Activation::Relu6 => {
            let pass = x.gt(0.0)?.mul(&x.lt(6.0)?)?.to_dtype(x.dtype())?.detach();
            let top = x.ge(6.0)?.to_dtype(x.dtype())?.detach().affine(6.0, 0.0)?;
            x.mul(&pass)?.add(&top)
        }
    }
}

/// Where the gradient of an activation passes, judged from its input (for the guided walk).
pub(crate) fn activation_mask(x: &Tensor, activation: Activation) -> CResult<Tensor> {
    match activation {
        Activation::Identity => x.ones_like(),
        Activation::Relu => x.gt(0.0)?.to_dtype(x.dtype()),
        Activation::Relu6 => x.gt(0.0)?.mul(&x.lt(6.0)?)?.to_dtype(x.dtype()),
    }
}

/// A model's own batch-1 CPU forward and backward, stage by stage: the fast path of the trace.
/// Stage `i`'s forward takes stage `i − 1`'s output (the image for 0) and may keep intermediates
/// in `saved` for its backward.
pub trait CpuTape: Send + Sync {
    fn forward_stage(&self, stage: usize, x: &Chw, saved: &mut Vec<Chw>) -> CResult<Chw>;

    /// The gradient at stage `stage`'s input (of shape `input`), given what its forward saved,
    /// its output and the gradient there.
    fn backward_stage(
        &self,
        stage: usize,
        input: [usize; 3],
        saved: &[Chw],
        output: &Chw,
        dy: &Chw,
        ctx: &mut Backward,
    ) -> CResult<Chw>;

    /// Logits from the last stage's output.
    fn logits(&self, last: &Chw) -> CResult<Vec<f32>>;

    /// The gradient of logit `class` at the last stage's output.
    fn logit_gradient(&self, last: [usize; 3], class: usize) -> Chw;
}

/// What a CPU backward pass does besides handing gradients back: guided activation masks, and
/// recording each biased layer's gradient (FullGrad).
#[derive(Default)]
pub struct Backward {
    guided: bool,
    biases: Option<Vec<BiasGradient>>,
}

/// One biased layer's gradient at its (pre-activation) output, with its bias.
pub struct BiasGradient {
    pub gradient: Chw,
    pub bias: Arc<Vec<f32>>,
}

impl Backward {
    pub fn plain() -> Self {
        Self::default()
    }

    pub fn guided() -> Self {
        Self { guided: true, biases: None }
    }

    pub fn recording_biases() -> Self {
        Self { guided: false, biases: Some(Vec::new()) }
    }

    pub fn is_guided(&self) -> bool {
        self.guided
    }

    pub fn records_biases(&self) -> bool {
        self.biases.is_some()
    }

    /// Records `gradient()` for `bias` when recording (computing it only then).
    pub fn record_bias(&mut self, bias: &Arc<Vec<f32>>, gradient: impl FnOnce() -> Chw) {
        if let Some(recorded) = self.biases.as_mut() {
            recorded.push(BiasGradient { gradient: gradient(), bias: bias.clone() });
        }
    }

    pub fn into_bias_gradients(self) -> Vec<BiasGradient> {
        self.biases.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layouts_lay_tokens_and_channels_last_on_the_grid() {
        let dev = &Device::Cpu;
        // 1 class token + a 2×3 grid of 4 channels; token t, channel c holds 10·t + c.
        let data: Vec<f32> = (0..7).flat_map(|t| (0..4).map(move |c| (10 * t + c) as f32)).collect();
        let tokens = Tensor::from_vec(data, (1, 7, 4), dev).unwrap();
        let grid = Layout::Tokens { prefix: 1, grid: [2, 3] }.to_nchw(&tokens).unwrap();
        assert_eq!(grid.dims(), [1, 4, 2, 3]);
        let v: Vec<f32> = grid.flatten_all().unwrap().to_vec1().unwrap();
        // Channel 2, row 1, column 0 is patch 3, i.e. token 4.
        assert_eq!(v[2 * 6 + 3], 42.0);

        let nhwc = Tensor::arange(0f32, 24.0, dev).unwrap().reshape((1, 2, 3, 4)).unwrap();
        let nchw = Layout::Nhwc.to_nchw(&nhwc).unwrap();
        assert_eq!(nchw.dims(), [1, 4, 2, 3]);
        assert_eq!(nchw.contiguous().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[1], 4.0);

        let wrong = Layout::Tokens { prefix: 2, grid: [2, 3] }.to_nchw(&tokens);
        assert!(wrong.unwrap_err().to_string().contains("has 8 tokens, got 7"));
    }

    #[test]
    fn taps_reject_unknown_and_out_of_order_stages() {
        let stages = [StageSpec::nchw("a"), StageSpec::nchw("b")];
        let x = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let mut taps = Taps::new(&stages, EngineKind::Portable, Mode::Plain);
        assert!(taps.stage("nope", x.clone()).unwrap_err().to_string().contains("'nope'"));
        taps.stage("b", x.clone()).unwrap();
        assert!(taps.stage("a", x).unwrap_err().to_string().contains("out of order"));
    }

    #[test]
    fn activations_pass_no_gradient_at_their_boundaries() {
        let x = Var::new(&[-1f32, 0.0, 3.0, 6.0, 7.0], &Device::Cpu).unwrap();
        for (act, want) in
            [(Activation::Relu, [0f32, 0., 1., 1., 1.]), (Activation::Relu6, [0., 0., 1., 0., 0.])]
        {
            let grads = activate(x.as_tensor(), act).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<f32> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
            assert_eq!(g, want, "{act:?}");
        }
    }
}
