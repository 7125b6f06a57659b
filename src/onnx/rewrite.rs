//! Load-time rewrites of a graph into fewer, larger ops, with the same values at every module
//! output (so stages, taps and maps do not change).
//!
//! The TorchScript exporter writes GELU as five element-wise nodes, `Mul(Mul(x, Add(Erf(Div(x,
//! √2)), 1)), 0.5)`. Each is a pass over the MLP's widest tensor forward and more backward; as
//! one `Gelu` node it is one pass each way, through the fused kernel (ViT-Tiny: 60 of its ~400
//! nodes). A Linear layer arrives as MatMul and an Add of its bias; as one MatMul with a bias
//! input, the fast engine adds the bias as the product is written (48 passes fewer per forward
//! pass of ViT-Tiny).
//!
//! The one import circle of this room: the passes edit a [`Graph`], and loading a graph runs them
//! as its last step (after folding and pruning), so each needs the other.

use super::graph::Graph;
use super::ops::{Op, Unary};

/// Rewrites every GELU chain of `g` into one `Gelu` node. The nodes the chain no longer needs
/// are left for the caller's pruning.
pub fn fuse_gelu(g: &mut Graph) -> usize {
    let consumers = g.consumers();
    let mut fused = 0;
    for erf in 0..g.nodes.len() {
        if let Some((x, last)) = gelu_chain(g, &consumers, erf) {
            let node = &mut g.nodes[last];
            node.op = Op::Gelu { tanh: false };
            node.op_type = "Gelu".into();
            node.inputs = vec![Some(x)];
            fused += 1;
        }
    }
    fused
}

/// Merges each `Add(MatMul(x, W), bias)` with constant `W` and a constant bias of one value per
/// output column into the MatMul (a third input). The Add nodes are left for the caller's
/// pruning.
pub fn fuse_linear_bias(g: &mut Graph) -> usize {
    let consumers = g.consumers();
    let mut fused = 0;
    for mm in 0..g.nodes.len() {
        let node = &g.nodes[mm];
        let (Op::MatMul, [Some(_), Some(w)], [out]) = (&node.op, &node.inputs[..], &node.outputs[..]) else {
            continue;
        };
        let columns = g.values[*out].shape.last().copied();
        if g.consts[*w].as_ref().is_none_or(|w| w.rank() != 2) || *out == g.output {
            continue;
        }
        let [add] = consumers[*out][..] else { continue };
        let add_node = &g.nodes[add];
        if !matches!(add_node.op, Op::Add) || add_node.module != node.module {
            continue;
        }
        let bias = match add_node.inputs[..] {
            [Some(a), Some(b)] if a == *out => b,
            [Some(a), Some(b)] if b == *out => a,
            _ => continue,
        };
        let Some(shape) = g.consts[bias].as_ref().map(|t| t.dims()) else { continue };
        let per_column = shape.last().copied() == columns
            && shape.iter().rev().skip(1).all(|&d| d == 1)
            && shape.len() <= g.values[*out].shape.len();
        if !per_column {
            continue;
        }
        let (product, sum) = (*out, add_node.outputs.clone());
        let node = &mut g.nodes[mm];
        node.inputs.push(Some(bias));
        node.outputs = sum.clone();
        g.values[product].producer = None;
        sum.iter().for_each(|&v| g.values[v].producer = Some(mm));
        fused += 1;
    }
    fused
}

/// For an `Erf` node that is the heart of an exported GELU: the GELU's input and the node that
/// computes its output. Every intermediate value must be read only by the next node of the
/// chain, and all nodes must belong to one module, so that no intermediate is a module output.
fn gelu_chain(g: &Graph, consumers: &[Vec<usize>], erf: usize) -> Option<(usize, usize)> {
    let node = &g.nodes[erf];
    if !matches!(node.op, Op::Unary(Unary::Erf)) {
        return None;
    }
    let module = &node.module;
    // The single node that reads the single output of node `n`, in the same module.
    let next = |n: usize| -> Option<usize> {
        let [out] = g.nodes[n].outputs[..] else { return None };
        let [c] = consumers[out][..] else { return None };
        (out != g.output && &g.nodes[c].module == module).then_some(c)
    };
    // The other input of binary node `n` when one of its inputs is `v`.
    let other = |n: usize, v: usize| -> Option<usize> {
        match g.nodes[n].inputs[..] {
            [Some(a), Some(b)] if a == v => Some(b),
            [Some(a), Some(b)] if b == v => Some(a),
            _ => None,
        }
    };
    let is = |v: usize, value: f64| scalar(g, v).is_some_and(|c| (c - value).abs() <= 1e-6 * value.abs());

    // Div(x, √2) or Mul(x, 1/√2).
    let scaled = node.inputs.first().copied().flatten()?;
    let scale = g.values[scaled].producer?;
    let [Some(x), Some(c)] = g.nodes[scale].inputs[..] else { return None };
    let scale_ok = match g.nodes[scale].op {
        Op::Div => is(c, std::f64::consts::SQRT_2),
        Op::Mul => is(c, std::f64::consts::FRAC_1_SQRT_2),
        _ => false,
    };
    if !scale_ok || g.is_const(x) || &g.nodes[scale].module != module || next(scale)? != erf {
        return None;
    }
    // Add(erf, 1).
    let plus = next(erf)?;
    let erf_out = g.nodes[erf].outputs[0];
    if !matches!(g.nodes[plus].op, Op::Add) || !is(other(plus, erf_out)?, 1.0) {
        return None;
    }
    // Mul(x, ·) and Mul(·, 0.5), in either order.
    let first = next(plus)?;
    let second = next(first)?;
    let (plus_out, first_out) = (g.nodes[plus].outputs[0], g.nodes[first].outputs[0]);
    let ok = matches!(g.nodes[first].op, Op::Mul)
        && matches!(g.nodes[second].op, Op::Mul)
        && other(first, plus_out)? == x
        && is(other(second, first_out)?, 0.5);
    ok.then_some((x, second))
}

/// The value of constant `v` if it holds one number.
fn scalar(g: &Graph, v: usize) -> Option<f64> {
    let t = g.consts[v].as_ref()?;
    if t.elem_count() != 1 {
        return None;
    }
    t.to_dtype(candle_core::DType::F64).ok()?.flatten_all().ok()?.to_vec1::<f64>().ok()?.first().copied()
}

#[cfg(test)]
mod tests {
    use super::super::proto::*;
    use super::*;

    fn f32s(name: &str, dims: &[i64]) -> TensorProto {
        let n: i64 = dims.iter().product();
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: data_type::FLOAT,
            raw_data: (0..n).flat_map(|i| (i as f32 * 0.1 - 0.3).to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    fn io(name: &str, dims: &[i64]) -> ValueInfoProto {
        let dim = dims.iter().map(|&d| Dimension { dim_value: Some(d), dim_param: None }).collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type: data_type::FLOAT,
                    shape: Some(TensorShapeProto { dim }),
                }),
            }),
        }
    }

    /// input (1, 3, 2, 2) → Flatten → `/fc/MatMul` with (12, 5) → `{add_name}` with a bias of
    /// shape `bias` → output; the Graph as loaded, with its node types.
    fn linear(bias: &[i64], add_name: &str) -> (Graph, Vec<String>) {
        let node = |op: &str, name: &str, i: &[&str], o: &str| NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: i.iter().map(|s| s.to_string()).collect(),
            output: vec![o.into()],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: 9,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 20 }],
            graph: Some(GraphProto {
                node: vec![
                    node("Flatten", "/Flatten", &["input"], "flat"),
                    node("MatMul", "/fc/MatMul", &["flat", "w"], "product"),
                    node("Add", add_name, &["bias", "product"], "logits"),
                ],
                name: "linear".into(),
                initializer: vec![f32s("w", &[12, 5]), f32s("bias", bias)],
                input: vec![io("input", &[1, 3, 2, 2])],
                output: vec![io("logits", &[1, 5])],
            }),
            ..Default::default()
        };
        use prost::Message;
        let g = Graph::from_bytes(&model.encode_to_vec(), std::path::Path::new("."), None).unwrap();
        let ops = g.nodes.iter().map(|n| format!("{}/{}", n.op_type, n.inputs.len())).collect();
        (g, ops)
    }

    /// A bias of one value per column, in the MatMul's module, is merged into the MatMul
    /// (which then produces the graph's output); a bias of another shape or an Add of another
    /// module is not.
    #[test]
    fn linear_bias_is_merged_into_its_product() {
        let (g, ops) = linear(&[5], "/fc/Add");
        assert_eq!(ops, ["Flatten/1", "MatMul/3"]);
        assert_eq!(g.values[g.output].producer, Some(1));
        let (_, ops) = linear(&[1, 5], "/fc/Add");
        assert_eq!(ops, ["Flatten/1", "MatMul/3"]);
        let (_, ops) = linear(&[2, 1, 5], "/fc/Add");
        assert_eq!(ops, ["Flatten/1", "MatMul/2", "Add/2"], "a bias that adds a dimension");
        let (_, ops) = linear(&[5], "/other/Add");
        assert_eq!(ops, ["Flatten/1", "MatMul/2", "Add/2"], "an Add of another module");
    }
}
