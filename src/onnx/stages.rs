//! Stages from the graph: every PyTorch module path the exporter recorded, the value that is its
//! output (its last tensor used outside it), and how that output is laid out — found from the
//! graph, never asked of the user.

use std::collections::HashMap;

use super::graph::Graph;
use super::ops::Op;
use crate::contract::Layout;

/// A module of the graph whose output camscope can lay on a grid.
#[derive(Debug, Clone)]
pub struct Module {
    pub path: String,
    pub value: usize,
    pub layout: Layout,
}

fn within(path: &str, module: &str) -> bool {
    path == module
        || (path.len() > module.len() && path.starts_with(module) && path.as_bytes()[module.len()] == b'.')
}

/// Every module path and its ancestors (`a.b.c` → `a`, `a.b`, `a.b.c`), the top level excluded.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('.').map(|(i, _)| &path[..i]).chain((!path.is_empty()).then_some(path))
}

/// For every module, the value that is its output: of the values its nodes compute, the last
/// one (in graph order) that a node outside the module reads, or that is the graph's output.
pub fn module_outputs(g: &Graph) -> Vec<(String, usize)> {
    let consumers = g.consumers();
    let mut out: HashMap<&str, (usize, usize)> = HashMap::new(); // module → (node index, value)
    for (i, node) in g.nodes.iter().enumerate() {
        for &v in &node.outputs {
            for m in ancestors(&node.module) {
                let outside = v == g.output || consumers[v].iter().any(|&c| !within(&g.nodes[c].module, m));
                if outside {
                    let e = out.entry(m).or_insert((i, v));
                    if i >= e.0 {
                        *e = (i, v);
                    }
                }
            }
        }
    }
    let mut list: Vec<(usize, String, usize)> =
        out.into_iter().map(|(m, (i, v))| (i, m.to_string(), v)).collect();
    list.sort();
    list.into_iter().map(|(_, m, v)| (m, v)).collect()
}

/// Channels-first or channels-last, for 4-D values whose layout follows from the graph: an
/// image, a convolution or pool's output, a transpose between the two, and what elementwise
/// ops make of them.
fn channel_tags(g: &Graph) -> Vec<Option<Layout>> {
    let mut tags = vec![None; g.values.len()];
    tags[g.input] = Some(Layout::Nchw);
    for node in &g.nodes {
        let first = node.inputs.iter().flatten().find(|&&v| !g.is_const(v) && g.values[v].shape.len() == 4);
        let inherited = first.and_then(|&v| tags[v]);
        let tag = match &node.op {
            Op::Conv(_)
            | Op::MaxPool(_)
            | Op::AveragePool { .. }
            | Op::GlobalAveragePool
            | Op::GlobalMaxPool
            | Op::BatchNorm { .. } => Some(Layout::Nchw),
            Op::Transpose { perm: Some(p) } => match (inherited, p.as_slice()) {
                (Some(Layout::Nchw), [0, 2, 3, 1]) => Some(Layout::Nhwc),
                (Some(Layout::Nhwc), [0, 3, 1, 2]) => Some(Layout::Nchw),
                _ => None,
            },
            Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Pow
            | Op::Min
            | Op::Max
            | Op::Unary(_)
            | Op::Gelu { .. }
            | Op::Relu
            | Op::LeakyRelu(_)
            | Op::Clip { .. }
            | Op::HardSigmoid { .. }
            | Op::HardSwish
            | Op::Identity
            | Op::LayerNorm { .. }
            | Op::Softmax { .. }
            | Op::Resize(_)
            | Op::Where => inherited,
            _ => None,
        };
        for &v in &node.outputs {
            if g.values[v].shape.len() == 4 {
                tags[v] = tag;
            }
        }
    }
    tags
}

/// The layout of value `v`, or None where it cannot be laid on a spatial grid.
fn layout_of(g: &Graph, tags: &[Option<Layout>], v: usize) -> Option<Layout> {
    let shape = &g.values[v].shape;
    match shape.len() {
        4 => Some(tags[v].unwrap_or(
            // Untraceable: a square spatial grid tells the channels apart.
            if shape[1] == shape[2] && shape[3] != shape[1] { Layout::Nhwc } else { Layout::Nchw },
        )),
        3 => {
            // Tokens: the patch grid is the last 4-D feature map before them whose positions,
            // plus a few prefix tokens (class, distillation, registers), make the token count.
            let tokens = shape[1];
            let before = g.values[v].producer?;
            g.nodes[..before].iter().rev().flat_map(|n| n.outputs.iter()).find_map(|&u| {
                let s = &g.values[u].shape;
                if s.len() != 4 {
                    return None;
                }
                // Only feature maps whose channels the graph shows (a convolution's output,
                // say), not 4-D intermediates such as attention heads.
                let [h, w] = match tags[u]? {
                    Layout::Nhwc => [s[1], s[2]],
                    _ => [s[2], s[3]],
                };
                let prefix = tokens.checked_sub(h * w)?;
                (h * w > 1 && prefix <= 16).then_some(Layout::Tokens { prefix, grid: [h, w] })
            })
        }
        _ => None,
    }
}

/// Every module whose output lies on a spatial grid, in graph order.
pub fn modules(g: &Graph) -> Vec<Module> {
    let tags = channel_tags(g);
    // Stages after spatial pooling are not offered: a 1×1 output behind a global pool.
    let first_pool = g
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::GlobalAveragePool | Op::GlobalMaxPool | Op::Reduce { .. }))
        .unwrap_or(usize::MAX);
    module_outputs(g)
        .into_iter()
        .filter_map(|(path, value)| {
            let layout = layout_of(g, &tags, value)?;
            let shape = &g.values[value].shape;
            let cells = match layout {
                Layout::Nchw => shape[2] * shape[3],
                Layout::Nhwc => shape[1] * shape[2],
                Layout::Tokens { grid, .. } => grid[0] * grid[1],
            };
            let pooled = cells <= 1 && g.values[value].producer.is_some_and(|p| p >= first_pool);
            (!pooled && shape[0] == 1).then_some(Module { path, value, layout })
        })
        .collect()
}

/// The level a person steps through: the repeated blocks (`features.N`, `layerN.M`,
/// `blocks.N`, `stages.N`) — modules named by a number, outside any other such module, in a
/// family of at least three (containers whose names differ only by digits, like ResNet's
/// `layer1`…`layer4`, form one family; a two-part `stem.0`, `stem.1` is no family). Without any,
/// every outermost numbered module; without those, the top-level modules.
pub fn default_stages(modules: &[Module]) -> Vec<Module> {
    let numbered = |p: &str| {
        p.contains('.')
            && p.rsplit('.').next().is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    };
    let is_block = |p: &str| numbered(p) && !ancestors(p).any(|a| a != p && numbered(a));
    let family = |p: &str| {
        let container = &p[..p.rfind('.').expect("numbered paths have a dot")];
        container.trim_end_matches(|c: char| c.is_ascii_digit()).to_string()
    };
    let blocks: Vec<&Module> = modules.iter().filter(|m| is_block(&m.path)).collect();
    let mut sizes: HashMap<String, usize> = HashMap::new();
    for m in &blocks {
        *sizes.entry(family(&m.path)).or_default() += 1;
    }
    let repeated: Vec<Module> =
        blocks.iter().filter(|m| sizes[&family(&m.path)] >= 3).map(|m| (*m).clone()).collect();
    if !repeated.is_empty() {
        return repeated;
    }
    if !blocks.is_empty() {
        return blocks.into_iter().cloned().collect();
    }
    modules.iter().filter(|m| !m.path.contains('.')).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_contain_their_descendants_only() {
        assert!(within("features.1.conv", "features.1"));
        assert!(!within("features.10", "features.1"));
        assert!(within("features.1", "features.1"));
        assert_eq!(ancestors("a.b.c").collect::<Vec<_>>(), ["a", "a.b", "a.b.c"]);
        assert_eq!(ancestors("").count(), 0);
    }

    #[test]
    fn blocks_are_the_outermost_numbered_modules() {
        let m = |p: &str| Module { path: p.into(), value: 0, layout: Layout::Nchw };
        let list = [
            m("stem.0"),
            m("stem.1"),
            m("features"),
            m("features.0"),
            m("features.1"),
            m("features.1.conv.0"),
        ];
        let names: Vec<String> = default_stages(&list).into_iter().map(|m| m.path).collect();
        assert_eq!(names, ["stem.0", "stem.1", "features.0", "features.1"]);
        let list =
            [m("stem.0"), m("stem.1"), m("stages.0"), m("stages.1"), m("stages.2"), m("stages.2.blocks.1")];
        let names: Vec<String> = default_stages(&list).into_iter().map(|m| m.path).collect();
        assert_eq!(names, ["stages.0", "stages.1", "stages.2"]);
        let resnet = [m("maxpool"), m("layer1.0"), m("layer1.1"), m("layer2.0"), m("layer2.0.downsample.0")];
        let names: Vec<String> = default_stages(&resnet).into_iter().map(|m| m.path).collect();
        assert_eq!(names, ["layer1.0", "layer1.1", "layer2.0"]);
        let flat = [m("conv1"), m("conv1.bn"), m("head")];
        let names: Vec<String> = default_stages(&flat).into_iter().map(|m| m.path).collect();
        assert_eq!(names, ["conv1", "head"]);
    }
}
