//! The engine's hook inside a model's forward pass, and the two explicit arguments every pass
//! carries: its [`Mode`] and its [`EngineKind`].

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Result as CResult, Tensor, Var};

use super::stage::StageSpec;
use crate::kernels::activation::{self, activate, Activation};

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
            activation::activation(x, activation)?
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn taps_reject_unknown_and_out_of_order_stages() {
        let stages = [StageSpec::nchw("a"), StageSpec::nchw("b")];
        let x = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let mut taps = Taps::new(&stages, EngineKind::Portable, Mode::Plain);
        assert!(taps.stage("nope", x.clone()).unwrap_err().to_string().contains("'nope'"));
        taps.stage("b", x.clone()).unwrap();
        assert!(taps.stage("a", x).unwrap_err().to_string().contains("out of order"));
    }
}
