//! The memory plan: where every activation and gradient of a graph lives, for batches of up
//! to `cap` images. Planned once; a step then allocates nothing.
//!
//! - A node read only by a `concat` is written straight into its channel range of the
//!   concat's output (same rows, the concat's row stride), so a concat costs no copy.
//! - A `relu` or `dropout` that is the only reader of a node whose backward does not need
//!   its own output runs in place.
//! - Gradients mirror that aliasing. Activations all live for the whole step (backward
//!   reads them); gradients live only from their first writer to their node's backward,
//!   so their buffers are shared by first fit over those intervals.

use crate::nn::graph::{Graph, NodeInfo, Op, Shape};

/// A matrix view into an arena: `hw * n` rows of `c` values, row `r` at `off + r * ld`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Offset of row 0, channel 0.
    pub off: usize,
    /// Row stride.
    pub ld: usize,
    /// Values per row.
    pub c: usize,
    /// Rows per image (H*W, or 1 for flat vectors).
    pub hw: usize,
}

impl View {
    /// Rows for a batch of `n`.
    pub fn rows(&self, n: usize) -> usize {
        n * self.hw
    }
}

/// How a node's storage relates to another node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alias {
    /// Its own buffer.
    Own,
    /// Channels `[offset, offset + c)` of this concat node's output.
    Concat(usize, usize),
    /// The same buffer as this node, which runs in place over it.
    InPlace(usize),
}

/// Where everything lives.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// Largest batch the arenas hold.
    pub cap: usize,
    /// Storage relation of each node.
    pub alias: Vec<Alias>,
    /// Activation of each node.
    pub act: Vec<View>,
    /// Gradient of each node (`None` for the input).
    pub grad: Vec<Option<View>>,
    /// Offset of each dropout node's mask in the activation arena.
    pub mask: Vec<Option<usize>>,
    /// Values in the activation arena.
    pub act_len: usize,
    /// Values in the gradient arena.
    pub grad_len: usize,
    /// Readers of each node, with multiplicity.
    pub consumers: Vec<Vec<usize>>,
}

impl MemoryPlan {
    /// The relu that runs fused into batch-norm node `i` (its only reader, in place).
    pub fn fused_relu(&self, graph: &Graph, i: usize) -> Option<usize> {
        match (self.alias[i], &graph.nodes[i].op) {
            (Alias::InPlace(j), Op::BatchNorm { .. }) if matches!(graph.nodes[j].op, Op::Relu) => {
                Some(j)
            }
            _ => None,
        }
    }

    /// Whether relu node `j` was fused into the batch norm before it.
    pub fn relu_is_fused(&self, graph: &Graph, j: usize) -> bool {
        let i = graph.nodes[j].inputs[0];
        matches!(graph.nodes[j].op, Op::Relu) && self.fused_relu(graph, i) == Some(j)
    }
}

fn dims(s: Shape) -> (usize, usize) {
    match s {
        Shape::Image(h, w, c) => (h * w, c),
        Shape::Flat(n) => (1, n),
    }
}

/// Whether a node's backward reads its own output (so nothing may overwrite it).
fn backward_reads_output(op: &Op) -> bool {
    !matches!(
        op,
        Op::Conv2d { .. }
            | Op::BatchNorm { .. }
            | Op::Dense { .. }
            | Op::Add
            | Op::AvgPool { .. }
            | Op::GlobalAvgPool
            | Op::Elu { .. }
    )
}

/// Plan a graph for batches of up to `cap`. With `bn_grad_in_place`, a node read only by
/// a batch norm keeps its gradient where that batch norm's output gradient is: the batch
/// norm's backward reads its output gradient (twice) before it writes its input gradient
/// over it, and nothing reads it after, so the input gradient needs no buffer of its own
/// (nor the write-allocate reads of a fresh one). The CPU backward does that; cuDNN's
/// batch-norm backward is not documented to run in place, so the GPU plans without it.
pub fn plan(graph: &Graph, infos: &[NodeInfo], cap: usize, bn_grad_in_place: bool) -> MemoryPlan {
    let nn = graph.nodes.len();
    let last = nn - 1;
    let mut consumers = vec![Vec::new(); nn];
    for (j, node) in graph.nodes.iter().enumerate() {
        for &i in &node.inputs {
            consumers[i].push(j);
        }
    }
    let mut alias = vec![Alias::Own; nn];
    for i in 1..nn {
        let [j] = consumers[i][..] else { continue };
        match &graph.nodes[j].op {
            Op::Concat => {
                let pos = graph.nodes[j]
                    .inputs
                    .iter()
                    .position(|&x| x == i)
                    .expect("consumer reads the node");
                let off: usize = graph.nodes[j].inputs[..pos]
                    .iter()
                    .map(|&x| dims(infos[x].shape).1)
                    .sum();
                alias[i] = Alias::Concat(j, off);
            }
            Op::Relu | Op::Dropout { .. }
                if j != last && !backward_reads_output(&graph.nodes[i].op) =>
            {
                alias[i] = Alias::InPlace(j);
            }
            _ => {}
        }
    }
    // Roots get buffers; aliased nodes take views of their root, resolved back to front.
    let mut act = vec![
        View {
            off: 0,
            ld: 0,
            c: 0,
            hw: 0
        };
        nn
    ];
    let mut act_len = 0;
    for i in (0..nn).rev() {
        let (hw, c) = dims(infos[i].shape);
        act[i] = match alias[i] {
            Alias::Own => {
                let v = View {
                    off: act_len,
                    ld: c,
                    c,
                    hw,
                };
                act_len += cap * hw * c;
                v
            }
            Alias::Concat(j, off) => View {
                off: act[j].off + off,
                ld: act[j].ld,
                c,
                hw,
            },
            Alias::InPlace(j) => act[j],
        };
    }
    let mut mask = vec![None; nn];
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Op::Dropout { .. } = node.op {
            mask[i] = Some(act_len);
            act_len += cap * infos[i].shape.numel();
        }
    }
    // Gradients mirror the activations' aliasing, plus (with `bn_grad_in_place`) a batch
    // norm's sole input in place over its output.
    let mut grad_alias = alias.clone();
    if bn_grad_in_place {
        for i in 1..nn {
            if let ([j], Alias::Own) = (&consumers[i][..], alias[i]) {
                if *j != last && matches!(graph.nodes[*j].op, Op::BatchNorm { .. }) {
                    grad_alias[i] = Alias::InPlace(*j);
                }
            }
        }
    }
    // Gradient buffers: one per root, live over [lowest member, highest writer].
    let root = |mut i: usize| loop {
        match grad_alias[i] {
            Alias::Own => return i,
            Alias::Concat(j, _) | Alias::InPlace(j) => i = j,
        }
    };
    let mut interval: Vec<Option<(usize, usize)>> = vec![None; nn];
    for (i, readers) in consumers.iter().enumerate().skip(1) {
        let r = root(i);
        let hi = readers.iter().copied().max().unwrap_or(nn).max(i);
        let e = interval[r].get_or_insert((i, hi));
        e.0 = e.0.min(i);
        e.1 = e.1.max(hi);
    }
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (off, len, lo, hi)
    let mut roots: Vec<usize> = (1..nn).filter(|&i| grad_alias[i] == Alias::Own).collect();
    roots.sort_by_key(|&i| std::cmp::Reverse(cap * infos[i].shape.numel()));
    let mut grad_root_off = vec![0usize; nn];
    let mut grad_len = 0;
    for r in roots {
        let len = cap * infos[r].shape.numel();
        let (lo, hi) = interval[r].expect("every root has an interval");
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.2 <= hi && lo <= p.3)
            .map(|p| (p.0, p.0 + p.1))
            .collect();
        busy.sort();
        let mut off = 0;
        for (s, e) in busy {
            if off + len <= s {
                break;
            }
            off = off.max(e);
        }
        placed.push((off, len, lo, hi));
        grad_root_off[r] = off;
        grad_len = grad_len.max(off + len);
    }
    let mut grad = vec![None; nn];
    for i in (1..nn).rev() {
        let (hw, c) = dims(infos[i].shape);
        grad[i] = Some(match grad_alias[i] {
            Alias::Own => View {
                off: grad_root_off[i],
                ld: c,
                c,
                hw,
            },
            Alias::Concat(j, off) => {
                let g: View = grad[j].expect("a later node has a gradient");
                View {
                    off: g.off + off,
                    ld: g.ld,
                    c,
                    hw,
                }
            }
            Alias::InPlace(j) => grad[j].expect("a later node has a gradient"),
        });
    }
    MemoryPlan {
        cap,
        alias,
        act,
        grad,
        mask,
        act_len,
        grad_len,
        consumers,
    }
}
