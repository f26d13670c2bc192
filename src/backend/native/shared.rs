//! What the CPU and GPU paths share before any kernel runs: the network with its shapes,
//! parameter layout and each node's parameters ([`Network`]), the window geometry of
//! conv and pool nodes ([`ConvGeom`], [`PoolGeom`]), and the dropout masks
//! ([`fill_dropout_masks`], which the dfdx backend uses too).

use std::ops::AddAssign;

use anyhow::{bail, Result};
use num_traits::{Float, FromPrimitive};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::params::{self, Layout, Role};
use crate::nn::graph::{pad_before, Graph, NodeInfo, Op, Shape};

/// Which parameters (indices into the layout) and batch-norm statistics a node owns.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeParams {
    /// The conv or dense kernel.
    pub kernel: Option<usize>,
    /// The conv or dense bias.
    pub bias: Option<usize>,
    /// The batch norm's scale.
    pub gamma: Option<usize>,
    /// The batch norm's shift.
    pub beta: Option<usize>,
    /// The batch norm's statistics (an index into [`Layout::bns`]).
    pub bn: Option<usize>,
}

impl NodeParams {
    /// The kernel of a conv or dense node.
    pub fn kernel(&self) -> usize {
        self.kernel.expect("conv and dense nodes have a kernel")
    }

    /// (gamma, beta, statistics) of a batch-norm node.
    pub fn batchnorm(&self) -> (usize, usize, usize) {
        (
            self.gamma.expect("batch norms have gamma"),
            self.beta.expect("batch norms have beta"),
            self.bn.expect("batch norms have statistics"),
        )
    }
}

/// (height, width, channels) of a shape; a flat vector is 1 x 1 x features.
pub fn dims(s: Shape) -> (usize, usize, usize) {
    match s {
        Shape::Image(h, w, c) => (h, w, c),
        Shape::Flat(n) => (1, 1, n),
    }
}

/// A graph with what both devices derive from it.
#[derive(Debug, Clone)]
pub struct Network {
    /// The graph.
    pub graph: Graph,
    /// Each node's output shape.
    pub infos: Vec<NodeInfo>,
    /// The parameters and batch-norm statistics, in state order.
    pub layout: Layout,
    /// Each node's parameters.
    pub params: Vec<NodeParams>,
    /// Classes the network outputs.
    pub classes: usize,
    /// For a `conv2d` node, the batch norm that alone reads it (and reads nothing else):
    /// inference folds the two into one op.
    pub bn_after: Vec<Option<usize>>,
}

impl Network {
    /// Infer the shapes and lay out the parameters; the network must end in a flat
    /// (classes) output.
    pub fn new(graph: &Graph) -> Result<Self> {
        let infos = graph.infer()?;
        let classes = match infos.last().map(|i| i.shape) {
            Some(Shape::Flat(k)) => k,
            other => bail!("the network must end in a flat (classes) output, got {other:?}"),
        };
        let layout = params::layout(graph, &infos);
        let mut np = vec![NodeParams::default(); graph.nodes.len()];
        for (k, spec) in layout.params.iter().enumerate() {
            let p = &mut np[spec.node];
            match spec.role {
                Role::Kernel => p.kernel = Some(k),
                Role::Bias => p.bias = Some(k),
                Role::Gamma => p.gamma = Some(k),
                Role::Beta => p.beta = Some(k),
            }
        }
        for (k, bn) in layout.bns.iter().enumerate() {
            np[bn.node].bn = Some(k);
        }
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); graph.nodes.len()];
        for (j, nd) in graph.nodes.iter().enumerate() {
            for &m in &nd.inputs {
                readers[m].push(j);
            }
        }
        let bn_after = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, nd)| match (&nd.op, readers[i].as_slice()) {
                (Op::Conv2d { .. }, &[j])
                    if matches!(graph.nodes[j].op, Op::BatchNorm { .. })
                        && graph.nodes[j].inputs == [i] =>
                {
                    Some(j)
                }
                _ => None,
            })
            .collect();
        Ok(Network {
            graph: graph.clone(),
            infos,
            layout,
            params: np,
            classes,
            bn_after,
        })
    }

    /// Index of the last node (the logits).
    pub fn last(&self) -> usize {
        self.graph.nodes.len() - 1
    }

    /// The window geometry of conv or pool node `i`.
    pub fn conv_geom(&self, i: usize) -> ConvGeom {
        conv_geom(&self.graph, &self.infos, i)
    }

    /// Whether the last node is a softmax: training leaves it to the loss (the logits pass
    /// through), so inference applies it to the outputs ([`softmax_rows`]).
    pub fn ends_in_softmax(&self) -> bool {
        matches!(self.graph.nodes.last().map(|n| &n.op), Some(Op::Softmax))
    }
}

/// Softmax over each row of `classes` values of inference outputs, on the host:
/// `exp(x - max) / sum`.
pub fn softmax_rows<T: Float + AddAssign>(out: &mut [T], classes: usize) {
    for row in out.chunks_exact_mut(classes) {
        let m = row.iter().copied().fold(T::neg_infinity(), T::max);
        let mut z = T::zero();
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            z += *v;
        }
        row.iter_mut().for_each(|v| *v = *v / z);
    }
}

/// Geometry of one convolution (or of a pooling window, with `cin == cout`).
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub cin: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Padding above.
    pub pt: usize,
    /// Padding left.
    pub pl: usize,
}

impl ConvGeom {
    /// Length of one im2col row: kh*kw*cin.
    #[inline]
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.cin
    }

    /// A 1x1, stride-1, unpadded convolution: the input rows are the im2col rows.
    #[inline]
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.pt == 0 && self.pl == 0
    }
}

/// Geometry of a pooling window.
#[derive(Debug, Clone, Copy)]
pub struct PoolGeom {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Window height.
    pub kh: usize,
    /// Window width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Padding above.
    pub pt: usize,
    /// Padding left.
    pub pl: usize,
}

impl From<&ConvGeom> for PoolGeom {
    fn from(g: &ConvGeom) -> PoolGeom {
        PoolGeom {
            h: g.h,
            w: g.w,
            oh: g.oh,
            ow: g.ow,
            kh: g.kh,
            kw: g.kw,
            sh: g.sh,
            sw: g.sw,
            pt: g.pt,
            pl: g.pl,
        }
    }
}

/// The window geometry of conv or pool node `i`.
pub fn conv_geom(graph: &Graph, infos: &[NodeInfo], i: usize) -> ConvGeom {
    let nd = &graph.nodes[i];
    let (h, w, cin) = dims(infos[nd.inputs[0]].shape);
    let (oh, ow, cout) = dims(infos[i].shape);
    let ((kh, kw), (sh, sw), p) = nd.op.window().expect("a window op");
    ConvGeom {
        h,
        w,
        cin,
        oh,
        ow,
        cout,
        kh,
        kw,
        sh,
        sw,
        pt: pad_before(h, kh, sh, p),
        pl: pad_before(w, kw, sw, p),
    }
}

/// The dropout masks of one training batch of `n` images, the same for every backend and
/// device: one ChaCha8 stream seeded with `seed`, drawn over the dropout nodes in graph
/// order, value by value (image-major, then pixel, then channel): `1/keep` where
/// `rng.random::<f64>() < keep`, else 0. A node of rate 0 gets all ones and draws nothing.
/// Each value is computed in f64 and converted to `T` (so f32 and f64 masks agree).
///
/// Node `i`'s `len = n * numel` values go to `buf[at(i, len)..][..len]`. Inference
/// needs no masks (dropout is the identity there).
pub fn fill_dropout_masks<T: Copy + FromPrimitive>(
    graph: &Graph,
    infos: &[NodeInfo],
    n: usize,
    seed: u64,
    buf: &mut [T],
    mut at: impl FnMut(usize, usize) -> usize,
) {
    let t = |x: f64| T::from_f64(x).expect("f64 converts to the element type");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (i, nd) in graph.nodes.iter().enumerate() {
        let Op::Dropout { rate } = nd.op else {
            continue;
        };
        let len = n * infos[i].shape.numel();
        let off = at(i, len);
        let mask = &mut buf[off..off + len];
        if rate > 0.0 {
            let keep = 1.0 - rate;
            let (on, off) = (t(1.0 / keep), t(0.0));
            for m in mask.iter_mut() {
                *m = if rng.random::<f64>() < keep { on } else { off };
            }
        } else {
            mask.fill(t(1.0));
        }
    }
}
