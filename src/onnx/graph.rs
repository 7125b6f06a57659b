//! An ONNX graph made ready to run: initializers and `Constant`s loaded, nodes in topological
//! order, and everything that depends only on constants and on shapes — the tracer's shape
//! arithmetic (Shape → Gather → Unsqueeze → Concat → Reshape, ConstantOfShape/Equal/Where/
//! Expand) — folded to constants for the graph's fixed input size. Folding needs every
//! tensor's shape, so the graph is run once at load on a blank input (the probe): it also checks
//! that every op works, and gives each value its shape. Only shapes matter there, so the probe
//! checks convolutions and takes their output shapes without computing them. Last, `rewrite`
//! merges the exporters' op chains (GELU, Linear bias) into single ops.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use candle_core::{DType, Device, Tensor};

use super::mapped::MappedFile;
use super::ops::{self, Op, ParseError};
use super::proto::{self, ModelProto, NodeProto};
use super::rewrite;
use super::tensor::{self, ExternalData};
use crate::contract::{EngineKind, Mode, Taps};
use crate::preprocess::InputSize;

/// A node that runs at every forward pass (its output depends on the input image).
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    /// The PyTorch module path it belongs to ("" for the top level).
    pub module: String,
    pub op: Op,
    /// Value ids; None for an omitted optional input.
    pub inputs: Vec<Option<usize>>,
    pub outputs: Vec<usize>,
}

/// A value of the graph.
#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    /// Its shape for a batch of one at the graph's fixed size (from the probe).
    pub shape: Vec<usize>,
    /// The dynamic node that computes it (None: the input, or a constant).
    pub producer: Option<usize>,
}

pub struct Graph {
    pub values: Vec<Value>,
    /// Per value, the constant it holds (CPU), if it is one.
    pub consts: Vec<Option<Tensor>>,
    pub nodes: Vec<Node>,
    pub input: usize,
    pub output: usize,
    /// Which output was chosen, where the graph has several (see [`chosen_output`]).
    pub output_note: Option<String>,
    /// Height and width of the graph's input.
    pub input_size: [usize; 2],
    pub input_name: String,
}

/// A load error: always a message naming what is wrong.
pub type LoadResult<T> = std::result::Result<T, String>;

/// The module path of a node: from the dynamo exporter's metadata (`pkg.torch.onnx.name_scopes`,
/// a Python list of the enclosing module paths ending with the op's own name), else from the
/// TorchScript exporter's node name (`/stages/stages.2/blocks/blocks.1/Add` → `stages.2.blocks.1`:
/// a name part is its own scope segment, a numeric part joins the segment before it).
pub fn module_path(node: &NodeProto) -> String {
    if let Some(scopes) = node.metadata_props.iter().find(|p| p.key == "pkg.torch.onnx.name_scopes") {
        let items = python_strings(&scopes.value);
        if items.len() >= 2 {
            return items[items.len() - 2].clone();
        }
        return String::new();
    }
    scope_path(&node.name)
}

/// The module path of a TorchScript-exported node name.
pub fn scope_path(name: &str) -> String {
    let mut segments: Vec<&str> = name.split('/').filter(|s| !s.is_empty()).collect();
    if !name.starts_with('/') || segments.len() < 2 {
        return String::new();
    }
    segments.pop();
    let mut path = String::new();
    let mut previous = "";
    for seg in segments {
        match seg.strip_prefix(previous).and_then(|rest| rest.strip_prefix('.')) {
            Some(rest) if !previous.is_empty() => {
                path.push('.');
                path.push_str(rest);
            }
            _ => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(seg);
            }
        }
        previous = seg;
    }
    path
}

/// The quoted strings of a Python list literal (`['', 'features', 'features.0']`).
fn python_strings(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\'' || c == '"' {
            let mut item = String::new();
            let mut escaped = false;
            for d in chars.by_ref() {
                if escaped {
                    item.push(d);
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                } else {
                    item.push(d);
                }
            }
            out.push(item);
        }
    }
    out
}

fn describe(node: &NodeProto) -> String {
    let module = module_path(node);
    let name = if node.name.is_empty() { "(unnamed)" } else { node.name.as_str() };
    if module.is_empty() {
        format!("node '{name}' (top level)")
    } else {
        format!("node '{name}' (module {module})")
    }
}

/// Reads `Constant`'s value attribute.
fn constant_value(node: &NodeProto, dir: &Path, external: &mut ExternalData) -> LoadResult<Tensor> {
    let attr = node.attribute.first().ok_or_else(|| format!("Constant {} has no value", describe(node)))?;
    let dev = &Device::Cpu;
    let err = |e: candle_core::Error| format!("Constant {}: {e}", describe(node));
    match attr.name.as_str() {
        "value" => {
            let t =
                attr.t.as_ref().ok_or_else(|| format!("Constant {} has an empty value", describe(node)))?;
            tensor::to_tensor(t, dir, external)
        }
        "value_float" => Tensor::new(attr.f, dev).map_err(err),
        "value_floats" => Tensor::new(attr.floats.as_slice(), dev).map_err(err),
        "value_int" => Tensor::new(attr.i, dev).map_err(err),
        "value_ints" => Tensor::new(attr.ints.as_slice(), dev).map_err(err),
        other => Err(format!("Constant {} with a '{other}' value is not supported", describe(node))),
    }
}

/// Nodes in an order where every input is computed before it is used.
fn topological(nodes: &[NodeProto], known: &HashMap<&str, ()>) -> LoadResult<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o.as_str(), i).is_some() || known.contains_key(o.as_str()) {
                return Err(format!("value '{o}' is defined twice (again by {})", describe(n)));
            }
        }
    }
    let mut order = Vec::with_capacity(nodes.len());
    let mut state = vec![0u8; nodes.len()]; // 0 new, 1 on the stack, 2 done
    for root in 0..nodes.len() {
        if state[root] != 0 {
            continue;
        }
        // Iterative depth-first search: (node, next input to look at).
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (n, ref mut next)) = stack.last_mut() {
            let inputs = &nodes[n].input;
            if *next < inputs.len() {
                let name = inputs[*next].as_str();
                *next += 1;
                if name.is_empty() || known.contains_key(name) {
                    continue;
                }
                match producer.get(name) {
                    None => {
                        return Err(format!("{} reads '{name}', which nothing defines", describe(&nodes[n])))
                    }
                    Some(&p) if state[p] == 1 => {
                        return Err(format!("the graph has a cycle through '{name}'"))
                    }
                    Some(&p) if state[p] == 0 => {
                        state[p] = 1;
                        stack.push((p, 0));
                    }
                    _ => {}
                }
            } else {
                state[n] = 2;
                order.push(n);
                stack.pop();
            }
        }
    }
    Ok(order)
}

/// The graph's single image input: its name and (height, width), with a dynamic batch fixed to
/// one and dynamic height/width to `size` if given.
fn image_input(
    model: &ModelProto,
    initializers: &HashMap<&str, ()>,
    size: Option<InputSize>,
) -> LoadResult<(String, [usize; 2])> {
    let graph = model.graph.as_ref().expect("checked by the caller");
    let inputs: Vec<_> = graph.input.iter().filter(|i| !initializers.contains_key(i.name.as_str())).collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        [] => return Err("the graph has no input".into()),
        many => {
            return Err(format!(
                "the graph has {} inputs ({}); camscope explains image classifiers with one image input",
                many.len(),
                many.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }
    };
    let tensor_type = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
    let Some(tt) = tensor_type else {
        return Err(format!("input '{}' is not a tensor", input.name));
    };
    if !matches!(
        tt.elem_type,
        proto::data_type::FLOAT
            | proto::data_type::FLOAT16
            | proto::data_type::DOUBLE
            | proto::data_type::BFLOAT16
    ) {
        return Err(format!(
            "input '{}' holds {}, not an image of floats",
            input.name,
            proto::data_type::name(tt.elem_type)
        ));
    }
    let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    if dims.len() != 4 {
        return Err(format!(
            "input '{}' has rank {}; an image input is (batch, 3, height, width)",
            input.name,
            dims.len()
        ));
    }
    let fixed = |i: usize| dims[i].dim_value.filter(|&v| v > 0).map(|v| v as usize);
    if let Some(c) = fixed(1) {
        if c != 3 {
            return Err(format!("input '{}' has {c} channels; camscope feeds RGB images (3)", input.name));
        }
    }
    if let Some(n) = fixed(0) {
        if n != 1 {
            return Err(format!(
                "input '{}' has a fixed batch of {n}; camscope needs batch 1 (or a dynamic batch)",
                input.name
            ));
        }
    }
    let side = |i: usize, what: &str| -> LoadResult<usize> {
        let given = size.map(|s| if i == 2 { s.height } else { s.width });
        match (fixed(i), given) {
            (Some(v), _) if v <= 4096 => Ok(v),
            (Some(v), _) => Err(format!("input '{}' has an unusable {what} of {v}", input.name)),
            (None, Some(s)) => Ok(s),
            (None, None) => Err(format!(
                "input '{}' has a dynamic {what} ('{}'); camscope needs a fixed input size (export with a \
                 fixed size, or give input_size in a model card)",
                input.name,
                dims[i].dim_param.clone().unwrap_or_default()
            )),
        }
    };
    Ok((input.name.clone(), [side(2, "height")?, side(3, "width")?]))
}

/// The output camscope explains, of the graph's outputs (named `names`): the one named `out` if
/// there is one — torchvision's segmentation models return `{"out": …, "aux": …}`, and an
/// export that keeps the dict's keys as names keeps `out` — else the first. With several, a
/// note saying which (what `camscope layers` prints); the others are never computed.
pub fn chosen_output(names: &[&str]) -> (usize, Option<String>) {
    let chosen = names.iter().position(|&n| n == "out").unwrap_or(0);
    let note =
        (names.len() > 1).then(|| format!("graph has outputs {}: using {}", names.join(", "), names[chosen]));
    (chosen, note)
}

/// Refuses outputs camscope cannot explain: it takes a classifier's logits (1, classes) or a
/// segmentation model's score map (1, classes, height, width). (A [`Graph`] itself loads any
/// output; the model built on it checks.)
pub fn check_output_shape(name: &str, shape: &[usize]) -> LoadResult<()> {
    match shape {
        [1, c] | [1, c, _, _] if *c > 0 => Ok(()),
        _ => Err(format!(
            "the graph's output '{name}' has shape {shape:?}; camscope explains logits (1, classes) or a \
             segmentation score map (1, classes, height, width)"
        )),
    }
}

impl Graph {
    /// Decodes, loads and folds the graph of the model file at `path`; `size` fixes a dynamic
    /// input height/width. The file is memory-mapped: initializers are converted from the mapped
    /// pages, and those pages leave resident memory once every initializer is a tensor.
    pub fn load(path: &Path, size: Option<InputSize>) -> LoadResult<Graph> {
        let file = MappedFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::decode(file.bytes(), Some(&file), dir, size)
    }

    /// [`Self::load`] of a file's bytes (copied once).
    pub fn from_bytes(bytes: &[u8], dir: &Path, size: Option<InputSize>) -> LoadResult<Graph> {
        Self::decode(Bytes::copy_from_slice(bytes), None, dir, size)
    }

    /// `bytes` is `file`'s whole content when there is a file.
    fn decode(
        bytes: Bytes,
        file: Option<&MappedFile>,
        dir: &Path,
        size: Option<InputSize>,
    ) -> LoadResult<Graph> {
        let model = proto::decode_model(bytes).map_err(|e| format!("not a readable ONNX model ({e})"))?;
        let Some(graph) = model.graph.as_ref() else {
            return Err("not an ONNX model: no graph (a truncated or foreign file?)".into());
        };
        if graph.node.is_empty() || graph.output.is_empty() {
            return Err("not an ONNX model: the graph has no nodes or no output".into());
        }
        if let Some(op) = model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx") {
            if op.version > 23 {
                return Err(format!("opset {} is newer than camscope knows (≤ 23)", op.version));
            }
        }

        let mut external = ExternalData::default();
        let init_names: HashMap<&str, ()> = graph.initializer.iter().map(|t| (t.name.as_str(), ())).collect();
        let (input_name, input_size) = image_input(&model, &init_names, size)?;

        let mut values: Vec<Value> = Vec::new();
        let mut consts: Vec<Option<Tensor>> = Vec::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        fn add(
            ids: &mut HashMap<String, usize>,
            name: &str,
            values: &mut Vec<Value>,
            consts: &mut Vec<Option<Tensor>>,
            c: Option<Tensor>,
        ) -> usize {
            values.push(Value { name: name.to_string(), shape: Vec::new(), producer: None });
            consts.push(c);
            ids.insert(name.to_string(), values.len() - 1);
            values.len() - 1
        }
        for t in &graph.initializer {
            let tensor = tensor::to_tensor(t, dir, &mut external).map_err(|e| format!("initializer: {e}"))?;
            add(&mut ids, &t.name, &mut values, &mut consts, Some(tensor));
        }
        // Every initializer is a tensor now: their mapped bytes need not stay resident.
        file.iter().for_each(|f| f.release());
        external.release();
        let input = add(&mut ids, &input_name, &mut values, &mut consts, None);
        values[input].shape = vec![1, 3, input_size[0], input_size[1]];

        let mut known = init_names.clone();
        known.insert(input_name.as_str(), ());
        let order = topological(&graph.node, &known)?;

        // The probe: every dynamic value's tensor for a blank image.
        let mut probe: Vec<Option<Tensor>> = vec![None; values.len()];
        let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu);
        probe[input] = Some(zeros(&values[input].shape).map_err(|e| e.to_string())?);
        let no_stages = [];
        let mut taps = Taps::new(&no_stages, EngineKind::Fast, Mode::Plain);
        let mut nodes: Vec<Node> = Vec::new();
        let mut probe_done: Vec<usize> = Vec::new();

        // How many nodes still read each value: the probe's tensors are dropped after their last use.
        let mut reads: HashMap<&str, usize> = HashMap::new();
        for n in &graph.node {
            for name in n.input.iter().filter(|s| !s.is_empty()) {
                *reads.entry(name.as_str()).or_default() += 1;
            }
        }
        for &i in &order {
            let n = &graph.node[i];
            for name in n.input.iter().filter(|s| !s.is_empty()) {
                let left = reads.get_mut(name.as_str()).expect("counted above");
                *left -= 1;
                if *left == 0 && name != &input_name {
                    if let Some(&v) = ids.get(name.as_str()) {
                        probe_done.push(v);
                    }
                }
            }
            if n.op_type == "Constant" && (n.domain.is_empty() || n.domain == "ai.onnx") {
                let t = constant_value(n, dir, &mut external)?;
                for o in n.output.iter().take(1) {
                    let id = add(&mut ids, o, &mut values, &mut consts, Some(t.clone()));
                    probe.push(None);
                    values[id].shape = t.dims().to_vec();
                }
                continue;
            }
            let mut op = match Op::parse(n) {
                Ok(op) => op,
                Err(ParseError::Unsupported) => {
                    let domain = if n.domain.is_empty() { String::new() } else { format!("{}.", n.domain) };
                    return Err(format!("unsupported ONNX op {domain}{} at {}", n.op_type, describe(n)));
                }
                Err(ParseError::Invalid(why)) => {
                    return Err(format!("{} at {}: {why} is not supported", n.op_type, describe(n)))
                }
            };
            let inputs: Vec<Option<usize>> = n
                .input
                .iter()
                .map(|name| if name.is_empty() { None } else { ids.get(name.as_str()).copied() })
                .collect();
            let all_const = inputs.iter().flatten().all(|&v| consts[v].is_some());
            let shape_only = op.reads_shape_only();
            let args: Vec<Option<Tensor>> = inputs
                .iter()
                .map(|v| v.and_then(|v| consts[v].clone().or_else(|| probe[v].clone())))
                .collect();
            if let Op::Conv(conv) = &mut op {
                // Our CPU kernel, for a convolution with constant weights (and bias).
                let konst = |k: usize| inputs.get(k).copied().flatten().map(|v| consts[v].clone());
                let bias = match konst(2) {
                    None => Some(None),
                    Some(Some(b)) => Some(Some(b)),
                    Some(None) => None,
                };
                if let (Some(Some(w)), Some(Some(x)), Some(bias)) = (konst(1), args.first(), bias) {
                    if let (Ok((_, _, h, wd)), Ok((_, _, kh, kw))) = (x.dims4(), w.dims4()) {
                        if let Ok((pads, _)) = conv.window.resolve([h, wd], [kh, kw]) {
                            conv.fast = ops::fast_conv(&w, bias.as_ref(), conv, pads).map(|f| (f, pads));
                        }
                    }
                }
            }
            let outputs = match &op {
                // The probe needs only the shapes of values computed from the input (Shape and
                // Size read no more of them, so their contents never reach a folded constant):
                // a convolution of one is checked and its output's shape taken, not computed.
                Op::Conv(conv) if !all_const => match args.as_slice() {
                    [Some(x), Some(w), rest @ ..] if x.dtype() == DType::F32 && w.dtype() == DType::F32 => {
                        let bias = rest.first().and_then(Option::as_ref);
                        ops::conv2d_shape_only(x, w, bias, conv).map(|y| vec![y])
                    }
                    _ => ops::eval(&op, &args, &mut taps),
                },
                _ => ops::eval(&op, &args, &mut taps),
            }
            .map_err(|e| {
                format!(
                    "{} at {} failed on the graph's {}×{} input: {e}",
                    n.op_type,
                    describe(n),
                    input_size[0],
                    input_size[1]
                )
            })?;
            if outputs.len() < n.output.iter().filter(|o| !o.is_empty()).count() {
                return Err(format!("{} at {} gave {} outputs", n.op_type, describe(n), outputs.len()));
            }
            if all_const || shape_only {
                for (name, t) in n.output.iter().zip(outputs) {
                    if name.is_empty() {
                        continue;
                    }
                    let id = add(&mut ids, name, &mut values, &mut consts, Some(t.clone()));
                    probe.push(None);
                    values[id].shape = t.dims().to_vec();
                }
                continue;
            }
            let index = nodes.len();
            let mut out_ids = Vec::new();
            for (name, t) in n.output.iter().zip(outputs) {
                if name.is_empty() {
                    continue;
                }
                let id = add(&mut ids, name, &mut values, &mut consts, None);
                probe.push(Some(t.clone()));
                values[id].shape = t.dims().to_vec();
                values[id].producer = Some(index);
                out_ids.push(id);
            }
            for v in probe_done.drain(..) {
                probe[v] = None;
            }
            nodes.push(Node {
                name: n.name.clone(),
                op_type: n.op_type.clone(),
                module: module_path(n),
                op,
                inputs,
                outputs: out_ids,
            });
        }
        let names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let (chosen, output_note) = chosen_output(&names);
        let output_name = names[chosen];
        let output = *ids
            .get(output_name)
            .ok_or_else(|| format!("the graph's output '{output_name}' is never computed"))?;
        if consts[output].is_some() {
            return Err("the graph's output does not depend on its input".into());
        }
        let mut g = Graph { values, consts, nodes, input, output, output_note, input_size, input_name };
        g.prune();
        if rewrite::fuse_gelu(&mut g) + rewrite::fuse_linear_bias(&mut g) > 0 {
            g.prune();
        }
        Ok(g)
    }

    /// Drops the nodes the output does not need.
    fn prune(&mut self) {
        let mut needed = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = self.values[self.output].producer.into_iter().collect();
        while let Some(n) = stack.pop() {
            if needed[n] {
                continue;
            }
            needed[n] = true;
            for v in self.nodes[n].inputs.iter().flatten() {
                if let Some(p) = self.values[*v].producer {
                    stack.push(p);
                }
            }
        }
        if needed.iter().all(|&k| k) {
            return;
        }
        let mut remap = vec![None; self.nodes.len()];
        let nodes = std::mem::take(&mut self.nodes);
        for (i, node) in nodes.into_iter().enumerate() {
            if needed[i] {
                remap[i] = Some(self.nodes.len());
                self.nodes.push(node);
            }
        }
        for v in &mut self.values {
            v.producer = v.producer.and_then(|p| remap[p]);
        }
    }

    /// Whether value `v` is a constant.
    pub fn is_const(&self, v: usize) -> bool {
        self.consts[v].is_some()
    }

    /// For every value, the nodes that read it.
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut c = vec![Vec::new(); self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in n.inputs.iter().flatten() {
                if !c[v].contains(&i) {
                    c[v].push(i);
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchscript_names_give_module_paths() {
        assert_eq!(scope_path("/features/features.18/features.18.2/Clip"), "features.18.2");
        assert_eq!(scope_path("/stages/stages.2/blocks/blocks.1/Add"), "stages.2.blocks.1");
        assert_eq!(scope_path("/blocks/blocks.11/norm1/LayerNormalization"), "blocks.11.norm1");
        assert_eq!(scope_path("/features/norm5/Relu"), "features.norm5");
        assert_eq!(scope_path("/GlobalAveragePool"), "");
        assert_eq!(scope_path("Identity_12"), "");
        assert_eq!(scope_path("/layer1/layer1.0/conv1/Conv"), "layer1.0.conv1");
    }

    #[test]
    fn the_output_named_out_wins_else_the_first() {
        assert_eq!(chosen_output(&["logits"]), (0, None));
        let (i, note) = chosen_output(&["aux", "out"]);
        assert_eq!((i, note.as_deref()), (1, Some("graph has outputs aux, out: using out")));
        let (i, note) = chosen_output(&["519", "520"]);
        assert_eq!((i, note.as_deref()), (0, Some("graph has outputs 519, 520: using 519")));
    }

    #[test]
    fn outputs_are_logits_or_score_maps() {
        assert!(check_output_shape("y", &[1, 1000]).is_ok());
        assert!(check_output_shape("y", &[1, 21, 520, 520]).is_ok());
        for bad in [&[1, 197, 192][..], &[1000], &[2, 10], &[1, 0], &[1, 3, 4, 5, 6]] {
            let e = check_output_shape("y", bad).unwrap_err();
            assert!(e.contains("'y'") && e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn dynamo_scopes_give_module_paths() {
        let node = NodeProto {
            name: "node_Conv_810".into(),
            metadata_props: vec![proto::StringStringEntryProto {
                key: "pkg.torch.onnx.name_scopes".into(),
                value: "['', 'features', 'features.0', 'features.0.2', 'hardtanh']".into(),
            }],
            ..Default::default()
        };
        assert_eq!(module_path(&node), "features.0.2");
        assert_eq!(python_strings(r#"['', "it's", 'a\'b']"#), ["", "it's", "a'b"]);
    }
}
