//! An ONNX graph as an [`ImageClassifier`]: the forward pass interprets the graph with Candle
//! tensor ops (so it runs on every device, on both engines, and Candle's autograd differentiates
//! it), handing every stage's output to the taps.
//!
//! A graph that computes a batch of N images as N independent ones (checked when the first
//! batch of more than one image comes, not at load) runs a batch as one. Graphs exported at
//! batch 1 that bake that batch into their reshapes (most transformers) run the N images in
//! lockstep instead, node by node; at a stage the N outputs are joined into one (N, …) tensor
//! for the taps and split again after.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Device, Result as CResult, Tensor};

use super::graph::Graph;
use super::ops::{self, Op};
use super::reverse::{OnnxRecording, Plan};
use super::stages::{self, Module};
use crate::contract::{
    Capabilities, EngineKind, ImageClassifier, Mode, Recording, ReversePass, StageSpec, Taps,
};
use crate::error::{Error, Result};
use crate::preprocess::InputSize;

/// The graph's constants (None for the values computed at each pass), on one device.
type Constants = Arc<Vec<Option<Tensor>>>;

pub struct OnnxModel {
    name: String,
    graph: Arc<Graph>,
    /// Every module whose output lies on a grid (what `--layer` may name).
    modules: Arc<Vec<Module>>,
    specs: Vec<StageSpec>,
    /// Per stage, the value that is its output.
    stage_values: Vec<usize>,
    /// value → the stages (indices) it is the output of, in order.
    taps_at: HashMap<usize, Vec<usize>>,
    /// Per value, the last node that reads it (dropped after).
    last_use: Arc<Vec<usize>>,
    /// Per stage, the nodes that compute the logits from that stage's output alone, if they do.
    resume: Vec<Option<Vec<usize>>>,
    /// What the reverse pass from the logits to the stages touches.
    plan: Arc<Plan>,
    capabilities: Capabilities,
    /// Whether the graph computes a batch of N images as N independent images: then a batch
    /// runs as one; otherwise the images run in lockstep. Checked at the first batch of more
    /// than one image (four images' forward passes that a model used one image at a time never
    /// needs), once for every stage choice of the graph.
    batched: Arc<OnceLock<bool>>,
    on_device: Mutex<Vec<(Device, Constants)>>,
}

fn model_error(path: &Path, message: String) -> Error {
    Error::Model(format!("{}: {message}", path.display()))
}

impl OnnxModel {
    /// Loads `path`; `size` fixes a dynamic input height/width (from a model card).
    pub fn load(path: &Path, size: Option<InputSize>) -> Result<Self> {
        let graph = Graph::load(path, size).map_err(|m| model_error(path, m))?;
        let name = path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Self::new(name, graph).map_err(|e| match e {
            Error::Model(m) => model_error(path, m),
            other => other,
        })
    }

    /// A model of an ONNX file's bytes (external data, if any, beside `dir`).
    pub fn from_bytes(name: &str, bytes: &[u8], dir: &Path, size: Option<InputSize>) -> Result<Self> {
        let graph = Graph::from_bytes(bytes, dir, size).map_err(Error::Model)?;
        Self::new(name.to_string(), graph)
    }

    fn new(name: String, graph: Graph) -> Result<Self> {
        let output = &graph.values[graph.output];
        super::graph::check_output_shape(&output.name, &output.shape).map_err(Error::Model)?;
        let modules = stages::modules(&graph);
        let defaults = stages::default_stages(&modules);
        if defaults.is_empty() {
            return Err(Error::Model(
                "no module of the graph has a spatial output (node names and metadata carry no PyTorch \
                 module paths?)"
                    .into(),
            ));
        }
        let mut last_use = vec![0usize; graph.values.len()];
        for (i, n) in graph.nodes.iter().enumerate() {
            for &v in n.inputs.iter().flatten() {
                last_use[v] = i;
            }
        }
        last_use[graph.output] = usize::MAX;
        let capabilities = capabilities(&graph);
        let graph = Arc::new(graph);
        let mut model = OnnxModel {
            name,
            graph,
            modules: Arc::new(modules),
            specs: Vec::new(),
            stage_values: Vec::new(),
            taps_at: HashMap::new(),
            last_use: Arc::new(last_use),
            resume: Vec::new(),
            // Found for the stages by set_stages below.
            plan: Arc::default(),
            capabilities,
            batched: Arc::default(),
            on_device: Mutex::new(Vec::new()),
        };
        model.set_stages(defaults);
        Ok(model)
    }

    fn set_stages(&mut self, mut chosen: Vec<Module>) {
        let order = |m: &Module| (self.graph.values[m.value].producer, m.value);
        chosen.sort_by_key(|m| order(m));
        chosen.dedup_by(|a, b| a.path == b.path);
        self.specs = chosen.iter().map(|m| StageSpec::new(&m.path, m.layout)).collect();
        self.stage_values = chosen.iter().map(|m| m.value).collect();
        self.taps_at.clear();
        for (i, m) in chosen.iter().enumerate() {
            self.taps_at.entry(m.value).or_default().push(i);
        }
        self.resume = self.stage_values.iter().map(|&v| resume_nodes(&self.graph, v)).collect();
        self.plan = Arc::new(Plan::new(&self.graph, &self.stage_values));
    }

    /// The same model with these stages (any module paths of the graph, e.g. `blocks.11.norm1`),
    /// in graph order.
    pub fn with_stages(&self, names: &[&str]) -> Result<Self> {
        let mut chosen = Vec::new();
        for name in names {
            match self.modules.iter().find(|m| m.path == *name) {
                Some(m) => chosen.push(m.clone()),
                None => {
                    let known: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
                    return Err(Error::UnknownStage {
                        name: name.to_string(),
                        available: format!(
                            "{} (or any module path of the graph with a spatial output, e.g. {})",
                            known.join(", "),
                            self.modules
                                .iter()
                                .rev()
                                .take(3)
                                .map(|m| m.path.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
        }
        let mut model = OnnxModel {
            name: self.name.clone(),
            graph: self.graph.clone(),
            modules: self.modules.clone(),
            specs: Vec::new(),
            stage_values: Vec::new(),
            taps_at: HashMap::new(),
            last_use: self.last_use.clone(),
            resume: Vec::new(),
            plan: self.plan.clone(),
            capabilities: self.capabilities,
            batched: self.batched.clone(),
            on_device: Mutex::new(Vec::new()),
        };
        model.set_stages(chosen);
        Ok(model)
    }

    /// Every module path `--layer` may name, in graph order.
    pub fn module_paths(&self) -> Vec<String> {
        self.modules.iter().map(|m| m.path.clone()).collect()
    }

    /// Height and width of the graph's input.
    pub fn input_size(&self) -> [usize; 2] {
        self.graph.input_size
    }

    /// The shape of the graph's output for one image (known from the probe at load): (1,
    /// classes) for a classifier, (1, classes, height, width) for a segmentation model's score
    /// map (nothing else loads).
    pub fn output_shape(&self) -> &[usize] {
        &self.graph.values[self.graph.output].shape
    }

    /// Where the graph has several outputs, which one camscope explains ("graph has outputs
    /// out, aux: using out"): for `camscope layers` to print.
    pub fn output_note(&self) -> Option<&str> {
        self.graph.output_note.as_deref()
    }

    /// Whether a batch of images runs as one batch rather than image by image in lockstep (the
    /// check of [`batch_safe`], run here if no batch has run yet): what batched methods'
    /// speed depends on, for tests and benchmarks to see.
    pub fn runs_batches_as_one(&self) -> bool {
        *self.batched.get_or_init(|| batch_safe(&self.graph, &self.last_use))
    }

    /// How many nodes run at each forward pass (after folding).
    pub fn node_count(&self) -> usize {
        self.graph.nodes.len()
    }

    /// The graph's constants on `device` (copied once per device).
    fn consts_on(&self, device: &Device) -> CResult<Constants> {
        let mut cache = self.on_device.lock().expect("constant cache poisoned");
        if let Some((_, c)) = cache.iter().find(|(d, _)| d.same_device(device)) {
            return Ok(c.clone());
        }
        let copies: Vec<Option<Tensor>> = self
            .graph
            .consts
            .iter()
            .map(|c| c.as_ref().map(|t| t.to_device(device)).transpose())
            .collect::<CResult<_>>()?;
        let copies = Arc::new(copies);
        cache.push((device.clone(), copies.clone()));
        Ok(copies)
    }

    /// Runs the graph: from the input image, or from stage `from`'s output (only the nodes of
    /// `resume[from]`), tapping the stages it reaches.
    fn run(&self, x: &Tensor, taps: &mut Taps, from: Option<usize>) -> CResult<Tensor> {
        Ok(self.run_keeping(x, taps, from, None)?.0)
    }

    /// [`Self::run`], also returning the values `keep` marks (for a batch of one image).
    fn run_keeping(
        &self,
        x: &Tensor,
        taps: &mut Taps,
        from: Option<usize>,
        keep: Option<&[bool]>,
    ) -> CResult<(Tensor, Vec<Option<Tensor>>)> {
        let g = &self.graph;
        let consts = self.consts_on(x.device())?;
        let x = if x.dtype() == DType::F32 { x.clone() } else { x.to_dtype(DType::F32)? };
        // Lockstep entries: the images one by one, or the whole batch as one.
        let items = match x.dim(0)? {
            n if n > 1 && !self.runs_batches_as_one() => n,
            _ => 1,
        };
        let mut vals: Vec<Option<Vec<Tensor>>> = vec![None; g.values.len()];
        let split = |t: &Tensor| -> CResult<Vec<Tensor>> {
            if items == 1 {
                return Ok(vec![t.clone()]);
            }
            (0..t.dim(0)?).map(|i| t.narrow(0, i, 1)).collect()
        };
        let all: Vec<usize>;
        let (nodes, first_stage): (&[usize], usize) = match from {
            None => {
                let [h, w] = g.input_size;
                match x.dims() {
                    [_, 3, xh, xw] if *xh == h && *xw == w => {}
                    d => candle_core::bail!("this ONNX graph takes (N, 3, {h}, {w}) images, got {d:?}"),
                }
                vals[g.input] = Some(split(&x)?);
                all = (0..g.nodes.len()).collect();
                (&all, 0)
            }
            Some(stage) => {
                let Some(Some(nodes)) = self.resume.get(stage) else {
                    candle_core::bail!("the graph cannot resume from stage {stage}")
                };
                vals[self.stage_values[stage]] = Some(split(&x)?);
                (nodes.as_slice(), stage + 1)
            }
        };
        for &ni in nodes {
            let node = &g.nodes[ni];
            let mut per_image: Vec<Vec<Tensor>> = Vec::with_capacity(items);
            for i in 0..items {
                let args = node
                    .inputs
                    .iter()
                    .map(|v| {
                        v.map(|v| match (&consts[v], &vals[v]) {
                            (Some(c), _) => Ok(c.clone()),
                            (None, Some(b)) => Ok(b[i.min(b.len() - 1)].clone()),
                            (None, None) => Err(candle_core::Error::Msg(format!(
                                "value '{}' is not available here",
                                g.values[v].name
                            ))),
                        })
                        .transpose()
                    })
                    .collect::<CResult<Vec<_>>>()?;
                let outs = ops::eval(&node.op, &args, taps).map_err(|e| {
                    let module = if node.module.is_empty() {
                        "top level".to_string()
                    } else {
                        format!("module {}", node.module)
                    };
                    candle_core::Error::Msg(format!(
                        "{} at node '{}' ({module}): {e}",
                        node.op_type, node.name
                    ))
                })?;
                per_image.push(outs);
            }
            for (k, &v) in node.outputs.iter().enumerate() {
                let mut values: Vec<Tensor> = per_image.iter().map(|o| o[k].clone()).collect();
                if let Some(stages) = self.taps_at.get(&v) {
                    let mut joined =
                        if values.len() == 1 { values[0].clone() } else { Tensor::cat(&values, 0)? };
                    let mut tapped = false;
                    for &s in stages.iter().filter(|&&s| s >= first_stage) {
                        joined = taps.stage(&self.specs[s].name, joined)?;
                        tapped = true;
                    }
                    if tapped {
                        if items > 1 && joined.dim(0)? != items {
                            candle_core::bail!(
                                "stage {} came back with a batch of {}, not {items}",
                                self.specs[stages[0]].name,
                                joined.dim(0)?
                            )
                        }
                        values = split(&joined)?;
                    }
                }
                vals[v] = Some(values);
            }
            for &v in node.inputs.iter().flatten() {
                if self.last_use[v] == ni && !keep.is_some_and(|k| k[v]) {
                    vals[v] = None;
                }
            }
        }
        let Some(out) = vals[g.output].clone() else {
            candle_core::bail!("the graph's output was not computed")
        };
        let out = if out.len() == 1 { out[0].clone() } else { Tensor::cat(&out, 0)? };
        let kept = match keep {
            Some(keep) => vals
                .into_iter()
                .zip(keep)
                .map(|(v, &k)| if k && items == 1 { v.and_then(|v| v.into_iter().next()) } else { None })
                .collect(),
            None => Vec::new(),
        };
        Ok((out, kept))
    }
}

/// Whether the graph, folded for one image, computes two images as two independent ones: every
/// value of a batch of two image-like inputs has the batch first and equals, image by image, the
/// values of each image alone. Graphs exported at batch 1 that reshape with a baked-in batch
/// (most transformers) fail this and run image by image instead. The three runs go node by node
/// together, each value compared when computed and dropped after its last use (`last_use`).
fn batch_safe(g: &Graph, last_use: &[usize]) -> bool {
    let [h, w] = g.input_size;
    let check = || -> CResult<bool> {
        // Deterministic, image-like inputs.
        let ramp = Tensor::arange(0f32, (3 * h * w) as f32, &Device::Cpu)?.reshape((1, 3, h, w))?;
        let a = ramp.affine(0.37, 0.0)?.sin()?;
        let b = ramp.affine(0.11, 1.0)?.cos()?;
        let no_stages = [];
        let mut taps = Taps::new(&no_stages, EngineKind::Fast, Mode::Plain);
        // Per value: [the batch of both, the first alone, the second alone].
        let mut vals: Vec<Option<[Tensor; 3]>> = vec![None; g.values.len()];
        vals[g.input] = Some([Tensor::cat(&[&a, &b], 0)?, a, b]);
        for (ni, node) in g.nodes.iter().enumerate() {
            let mut outs: Vec<Vec<Tensor>> = Vec::with_capacity(3);
            for k in 0..3 {
                let args: Vec<Option<Tensor>> = node
                    .inputs
                    .iter()
                    .map(|v| {
                        v.and_then(|v| g.consts[v].clone().or_else(|| Some(vals[v].as_ref()?[k].clone())))
                    })
                    .collect();
                outs.push(ops::eval(&node.op, &args, &mut taps)?);
            }
            for (j, &v) in node.outputs.iter().enumerate() {
                let [Some(t), Some(p), Some(q)] = [0, 1, 2].map(|k| outs[k].get(j).cloned()) else {
                    candle_core::bail!("node '{}' gave too few outputs", node.name)
                };
                let (d1, dt) = (p.dims(), t.dims());
                if d1.first() != Some(&1)
                    || dt.first() != Some(&2)
                    || d1[1..] != dt[1..]
                    || t.dtype() != DType::F32
                {
                    return Ok(false);
                }
                for (i, single) in [&p, &q].into_iter().enumerate() {
                    let diff =
                        (t.narrow(0, i, 1)? - single)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                    let scale = single.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
                    if diff.is_nan() || diff > 1e-4 * scale {
                        return Ok(false);
                    }
                }
                vals[v] = Some([t, p, q]);
            }
            for &v in node.inputs.iter().flatten() {
                if last_use[v] == ni {
                    vals[v] = None;
                }
            }
        }
        Ok(true)
    };
    check().unwrap_or(false)
}

/// What the model offers: guided backprop where the graph has ReLUs (Relu, or Clip to [0, 6] or
/// [0, ∞)), FullGrad where convolution or BatchNorm biases are reachable.
fn capabilities(g: &Graph) -> Capabilities {
    let konst = |v: Option<&Option<usize>>| -> Option<f32> {
        let v = (*v?)?;
        g.consts[v]
            .as_ref()?
            .to_dtype(DType::F32)
            .ok()?
            .flatten_all()
            .ok()?
            .to_vec1::<f32>()
            .ok()?
            .first()
            .copied()
    };
    let relu = g.nodes.iter().any(|n| match &n.op {
        Op::Relu => true,
        Op::Clip { min, max } => {
            let lo = konst(n.inputs.get(1)).or(*min);
            let hi = konst(n.inputs.get(2)).or(*max);
            lo == Some(0.0) && matches!(hi, None | Some(6.0))
        }
        _ => false,
    });
    let biases = g.nodes.iter().any(|n| match &n.op {
        Op::Conv(_) => n.inputs.get(2).is_some_and(|b| b.is_some()),
        Op::BatchNorm { .. } => true,
        _ => false,
    });
    Capabilities { guided_relu: relu, bias_gradients: biases }
}

/// The nodes that compute the output from value `start` alone (and constants): every node the
/// output needs that `start` does not. None when one of them reads a value computed before
/// `start` (a skip connection around it), or the input.
fn resume_nodes(g: &Graph, start: usize) -> Option<Vec<usize>> {
    let n = g.nodes.len();
    // The nodes `start` depends on.
    let mut before = vec![false; n];
    let mut stack: Vec<usize> = g.values[start].producer.into_iter().collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut before[i], true) {
            continue;
        }
        stack.extend(g.nodes[i].inputs.iter().flatten().filter_map(|&v| g.values[v].producer));
    }
    let mut run = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if before[i] {
            continue;
        }
        for &v in node.inputs.iter().flatten() {
            let ok = v == start || g.is_const(v) || g.values[v].producer.is_some_and(|p| !before[p]);
            if !ok {
                return None;
            }
        }
        run.push(i);
    }
    Some(run)
}

impl ReversePass for OnnxModel {
    fn record(&self, x: &Tensor) -> CResult<Box<dyn Recording>> {
        if x.dim(0)? != 1 {
            candle_core::bail!("the reverse pass records one image at a time, not {}", x.dim(0)?)
        }
        let mut taps = Taps::new(&self.specs, EngineKind::Fast, Mode::Plain);
        let (logits, values) = self.run_keeping(x, &mut taps, None, Some(&self.plan.keep))?;
        Ok(Box::new(OnnxRecording {
            graph: self.graph.clone(),
            plan: self.plan.clone(),
            stage_values: self.stage_values.clone(),
            values,
            consts: self.consts_on(x.device())?,
            logits,
        }))
    }
}

impl ImageClassifier for OnnxModel {
    fn reverse_pass(&self) -> Option<&dyn ReversePass> {
        Some(self)
    }

    fn name(&self) -> String {
        format!("{}.onnx", self.name)
    }

    fn with_stages(&self, names: &[&str]) -> Option<Result<Arc<dyn ImageClassifier>>> {
        Some(OnnxModel::with_stages(self, names).map(|m| Arc::new(m) as Arc<dyn ImageClassifier>))
    }

    fn stages(&self) -> &[StageSpec] {
        &self.specs
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> CResult<Tensor> {
        self.run(x, taps, None)
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn forward_from(&self, stage: usize, activation: &Tensor, taps: &mut Taps) -> Option<CResult<Tensor>> {
        self.resume.get(stage)?.as_ref()?;
        Some(self.run(activation, taps, Some(stage)))
    }
}
