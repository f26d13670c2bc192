//! The forward and backward passes over a [`MemoryPlan`], written once for every device.
//!
//! The walk makes every decision about the graph: which relu runs fused into the batch
//! norm before it, which concat inputs were written in place (and the copies for the rest),
//! an `add` of more than two inputs, the last node's softmax as a copy (the loss does
//! softmax and cross-entropy together), which gradients overwrite and which accumulate
//! (`written`), which nodes have no path to the loss, which input has no gradient. A device
//! ([`Kernels`]: the CPU in `cpu/device.rs`, the GPU in `gpu/device.rs`) only runs one op
//! in one direction at a time, on the views the walk hands it.
//!
//! Views are matrices in the device's two arenas (see [`View`]): activations (`x`, `y`,
//! dropout masks) in the activation arena, gradients (`dy`, `dx`) in the gradient arena.
//! Shapes in the docs below are (rows, channels) with `rows = n * h * w` for images.

use super::plan::{Alias, MemoryPlan, View};
use super::shared::{ConvGeom, Network, NodeParams, PoolGeom};
use crate::nn::graph::Op;

/// Which of a device's two arenas a view is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arena {
    /// Activations (and dropout masks).
    Act,
    /// Gradients of activations.
    Grad,
}

/// A destination view and whether to add into it (`acc`) or overwrite it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dst {
    /// Where the values go.
    pub v: View,
    /// Add into the destination instead of overwriting it.
    pub acc: bool,
}

/// The direction of a pass, for the per-node hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The forward pass.
    Forward,
    /// The backward pass.
    Backward,
}

impl Pass {
    /// "forward" or "backward".
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
        }
    }
}

/// The node an op with parameters runs for: its index and its parameters.
#[derive(Debug, Clone, Copy)]
pub struct ParamNode {
    /// Index in the graph.
    pub i: usize,
    /// Its parameters and statistics.
    pub params: NodeParams,
}

/// One device's kernels: one method per op and direction, each on views of the device's
/// arenas for a batch of `n` images. Methods with a `dx: Option<Dst>` are told `None` when
/// the op's input (the network's input) has no gradient; they still compute their
/// parameters' gradients. Parameter gradients are overwritten, never accumulated (a node
/// runs once per pass).
#[allow(clippy::too_many_arguments)]
pub trait Kernels {
    /// What a kernel can fail with (`Infallible` on the CPU).
    type Error;

    /// Before node `i` runs in `pass` (profiling).
    fn begin_node(&mut self, _pass: Pass, _i: usize) {}

    /// After node `i` ran in `pass`. `dx` is the gradient of its first input after a
    /// backward node (what the test snapshots read), `None` otherwise.
    fn end_node(
        &mut self,
        _pass: Pass,
        _i: usize,
        _dx: Option<View>,
        _n: usize,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Zero every parameter gradient (nodes with no path to the loss keep zeros).
    fn zero_param_grads(&mut self) -> Result<(), Self::Error>;

    /// The loss: softmax cross-entropy of the logits `x (n, classes)` against the batch's
    /// labels (which the device holds), its gradient written into `dx (n, classes)`. The
    /// device keeps the loss and the count of correct predictions.
    fn softmax_cross_entropy(&mut self, x: View, dx: View, n: usize) -> Result<(), Self::Error>;

    /// Parameter `param`'s L2 term (Keras's `l2 * sum(w^2)`): `grad += 2 * l2 * w`. The
    /// device keeps the penalty if it reports one.
    fn l2_backward(&mut self, param: usize, l2: f64) -> Result<(), Self::Error>;

    /// `y (n*oh*ow, cout) = conv(x (n*h*w, cin), kernel (kh, kw, cin, cout)) [+ bias (cout)]`.
    fn conv2d_forward(
        &mut self,
        node: ParamNode,
        g: &ConvGeom,
        x: View,
        y: View,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// Inference only: `conv2d` node `conv` and the batch norm `bn` that alone reads it
    /// (`Network::bn_after`), as one op: `y (n*oh*ow, cout) = relu?(bn(conv(x)))` with the
    /// running statistics, into the batch norm's output view `y` (`yc`: the conv's own).
    /// By default the two kernels, one after the other; the CPU folds the batch norm into
    /// the kernel and bias.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_bn_forward_infer(
        &mut self,
        conv: ParamNode,
        bn: ParamNode,
        g: &ConvGeom,
        x: View,
        (yc, y): (View, View),
        n: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<(), Self::Error> {
        self.conv2d_forward(conv, g, x, yc, n)?;
        self.batchnorm_forward_infer(bn, yc, y, y.rows(n), epsilon, relu)
    }

    /// `dkernel`, `dbias` (overwritten) and `dx (n*h*w, cin) [+]= conv^T(dy (n*oh*ow, cout))`.
    fn conv2d_backward(
        &mut self,
        node: ParamNode,
        g: &ConvGeom,
        x: View,
        dy: View,
        dx: Option<Dst>,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// Training batch norm over `rows` rows of `x (rows, c)` into `y (rows, c)`, with the
    /// batch's statistics (kept for the backward and the running statistics); with `relu`,
    /// `y = max(y, 0)` too (the relu after it, fused: `y` is also the relu's output).
    fn batchnorm_forward_train(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        rows: usize,
        epsilon: f64,
        momentum: f64,
        relu: bool,
    ) -> Result<(), Self::Error>;

    /// Inference batch norm with the running statistics (and `relu` as in training).
    fn batchnorm_forward_infer(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        rows: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<(), Self::Error>;

    /// Backward of the training batch norm: `dgamma`, `dbeta` (overwritten) and
    /// `dx (rows, c) [+]=` from `dy (rows, c)`; with `relu`, `dy` is first masked by
    /// `y > 0` (`y` the fused relu's output, `dy` its gradient).
    fn batchnorm_backward(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        dy: View,
        dx: Option<Dst>,
        rows: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<(), Self::Error>;

    /// `y (rows, c) = max(x, 0)`.
    fn relu_forward(&mut self, x: View, y: View, rows: usize) -> Result<(), Self::Error>;

    /// `dx (rows, c) [+]= dy * (y > 0)`.
    fn relu_backward(&mut self, y: View, dy: View, dx: Dst, rows: usize)
        -> Result<(), Self::Error>;

    /// `y (rows, c) = x > 0 ? x : alpha * (exp(x) - 1)`.
    fn elu_forward(&mut self, x: View, y: View, rows: usize, alpha: f64)
        -> Result<(), Self::Error>;

    /// `dx (rows, c) [+]= x > 0 ? dy : dy * alpha * exp(x)`.
    fn elu_backward(
        &mut self,
        x: View,
        dy: View,
        dx: Dst,
        rows: usize,
        alpha: f64,
    ) -> Result<(), Self::Error>;

    /// `y (n*oh*ow, c) = max of each window's valid taps of x (n*h*w, c)`.
    fn maxpool_forward(
        &mut self,
        x: View,
        y: View,
        g: &PoolGeom,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// `dx (n*h*w, c) [+]=` each window's `dy (n*oh*ow, c)`, shared among the taps equal
    /// to its max.
    fn maxpool_backward(
        &mut self,
        x: View,
        y: View,
        dy: View,
        dx: Dst,
        g: &PoolGeom,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// `y (n*oh*ow, c) = mean of each window's valid taps of x (n*h*w, c)`.
    fn avgpool_forward(
        &mut self,
        x: View,
        y: View,
        g: &PoolGeom,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// `dx (n*h*w, c) [+]= sum over covering windows of dy (n*oh*ow, c) / valid taps`.
    fn avgpool_backward(
        &mut self,
        dy: View,
        dx: Dst,
        g: &PoolGeom,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// `y (n, c) = mean over each image's h*w rows of x (n*h*w, c)`.
    fn global_avgpool_forward(&mut self, x: View, y: View, n: usize) -> Result<(), Self::Error>;

    /// `dx (n*h*w, c) [+]= dy (n, c) / (h*w)`.
    fn global_avgpool_backward(&mut self, dy: View, dx: Dst, n: usize) -> Result<(), Self::Error>;

    /// `y (rows, c) = x * mask`, the mask (rows, c) packed at offset `mask` of the
    /// activation arena (0 or 1/keep, filled by [`super::shared::fill_dropout_masks`]).
    fn dropout_forward(
        &mut self,
        x: View,
        mask: usize,
        y: View,
        rows: usize,
    ) -> Result<(), Self::Error>;

    /// `dx (rows, c) [+]= dy * mask`.
    fn dropout_backward(
        &mut self,
        mask: usize,
        dy: View,
        dx: Dst,
        rows: usize,
    ) -> Result<(), Self::Error>;

    /// `y (n, h*w*c) = x (n*h*w, c)`, image by image.
    fn flatten_forward(&mut self, x: View, y: View, n: usize) -> Result<(), Self::Error>;

    /// `dx (n*h*w, c) [+]= dy (n, h*w*c)`, image by image.
    fn flatten_backward(&mut self, dy: View, dx: Dst, n: usize) -> Result<(), Self::Error>;

    /// `y (n, out) = x (n, in) . kernel (in, out) [+ bias (out)]`.
    fn dense_forward(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// `dkernel = x^T dy`, `dbias = column sums of dy (n, out)` (overwritten) and
    /// `dx (n, in) [+]= dy . kernel^T`.
    fn dense_backward(
        &mut self,
        node: ParamNode,
        x: View,
        dy: View,
        dx: Option<Dst>,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// `y (rows, c) = a + b`.
    fn add_forward(&mut self, a: View, b: View, y: View, rows: usize) -> Result<(), Self::Error>;

    /// `dst (rows, c) [+]= src (rows, c)`, both in `arena`: a concat input not written in
    /// place, an add's third and later inputs, the last node's softmax, and the gradients
    /// that fan out from them.
    fn copy_rows(
        &mut self,
        arena: Arena,
        src: View,
        dst: Dst,
        rows: usize,
    ) -> Result<(), Self::Error>;

    /// Mid-network `y (rows, c) = exp(x - max) / sum` per row.
    fn softmax_forward(&mut self, x: View, y: View, rows: usize) -> Result<(), Self::Error>;

    /// Mid-network `dx (rows, c) [+]= y * (dy - sum(dy * y))` per row.
    fn softmax_backward(
        &mut self,
        y: View,
        dy: View,
        dx: Dst,
        rows: usize,
    ) -> Result<(), Self::Error>;
}

/// Overwrite `dst` with `src`.
fn set(v: View) -> Dst {
    Dst { v, acc: false }
}

/// Forward pass over `n` images already in the input view (node 0's activation). When
/// training, the dropout masks are already in the activation arena
/// ([`super::shared::fill_dropout_masks`]) and batch norms use (and keep) the batch's
/// statistics; in inference dropout is the identity and batch norms use the running ones.
pub fn forward<K: Kernels>(
    net: &Network,
    plan: &MemoryPlan,
    k: &mut K,
    n: usize,
    train: bool,
) -> Result<(), K::Error> {
    let last = net.last();
    for i in 1..net.graph.nodes.len() {
        let nd = &net.graph.nodes[i];
        // In inference a batch norm that alone reads a conv runs with it, as one op.
        if !train && net.bn_after[nd.inputs[0]] == Some(i) {
            continue; // done with the conv before it
        }
        k.begin_node(Pass::Forward, i);
        if let (false, Some(j)) = (train, net.bn_after[i]) {
            let Op::BatchNorm { epsilon, .. } = net.graph.nodes[j].op else {
                unreachable!("bn_after names batch norms")
            };
            let relu = plan.fused_relu(&net.graph, j).is_some();
            let (conv, bn) = (
                ParamNode {
                    i,
                    params: net.params[i],
                },
                ParamNode {
                    i: j,
                    params: net.params[j],
                },
            );
            let views = (plan.act[i], plan.act[j]);
            let (g, x) = (net.conv_geom(i), plan.act[nd.inputs[0]]);
            k.conv2d_bn_forward_infer(conv, bn, &g, x, views, n, epsilon, relu)?;
            k.end_node(Pass::Forward, i, None, n)?;
            continue;
        }
        let node = ParamNode {
            i,
            params: net.params[i],
        };
        let y = plan.act[i];
        let x = plan.act[nd.inputs[0]];
        let rows = y.rows(n);
        match &nd.op {
            Op::Input { .. } => unreachable!("only node 0 is the input"),
            Op::Conv2d { .. } => k.conv2d_forward(node, &net.conv_geom(i), x, y, n)?,
            Op::BatchNorm {
                epsilon, momentum, ..
            } => {
                let relu = plan.fused_relu(&net.graph, i).is_some();
                if train {
                    k.batchnorm_forward_train(node, x, y, rows, *epsilon, *momentum, relu)?;
                } else {
                    k.batchnorm_forward_infer(node, x, y, rows, *epsilon, relu)?;
                }
            }
            Op::Relu if plan.relu_is_fused(&net.graph, i) => {} // done by the batch norm
            Op::Relu => k.relu_forward(x, y, rows)?,
            Op::Elu { alpha } => k.elu_forward(x, y, rows, *alpha)?,
            Op::MaxPool { .. } => {
                k.maxpool_forward(x, y, &PoolGeom::from(&net.conv_geom(i)), n)?;
            }
            Op::AvgPool { .. } => {
                k.avgpool_forward(x, y, &PoolGeom::from(&net.conv_geom(i)), n)?;
            }
            Op::GlobalAvgPool => k.global_avgpool_forward(x, y, n)?,
            Op::Dropout { .. } => {
                if train {
                    let mask = plan.mask[i].expect("dropout has a mask");
                    k.dropout_forward(x, mask, y, rows)?;
                } else if x.off != y.off {
                    k.copy_rows(Arena::Act, x, set(y), rows)?;
                }
            }
            Op::Flatten => k.flatten_forward(x, y, n)?,
            Op::Dense { .. } => k.dense_forward(node, x, y, n)?,
            Op::Concat => {
                // Inputs read only by this concat already wrote their channel slice.
                let mut off = 0;
                for &m in &nd.inputs {
                    let v = plan.act[m];
                    if plan.alias[m] != Alias::Concat(i, off) {
                        let dst = View {
                            off: y.off + off,
                            c: v.c,
                            ..y
                        };
                        k.copy_rows(Arena::Act, v, set(dst), rows)?;
                    }
                    off += v.c;
                }
            }
            Op::Add => {
                k.add_forward(x, plan.act[nd.inputs[1]], y, rows)?;
                for &m in &nd.inputs[2..] {
                    k.copy_rows(Arena::Act, plan.act[m], Dst { v: y, acc: true }, rows)?;
                }
            }
            // The last softmax is the loss's: the logits pass through.
            Op::Softmax if i == last => k.copy_rows(Arena::Act, x, set(y), rows)?,
            Op::Softmax => k.softmax_forward(x, y, rows)?,
        }
        k.end_node(Pass::Forward, i, None, n)?;
    }
    Ok(())
}

/// A training pass, written once for every device: the forward pass, the loss and its
/// gradient at the output, the backward pass, and each parameter's L2 gradient. The
/// optimizer's update follows on the device that owns the moments.
pub fn train_pass<K: Kernels>(
    net: &Network,
    plan: &MemoryPlan,
    k: &mut K,
    n: usize,
    written: &mut [bool],
) -> Result<(), K::Error> {
    forward(net, plan, k, n, true)?;
    let last = net.last();
    k.softmax_cross_entropy(plan.act[last], plan.grad[last].expect("output gradient"), n)?;
    backward(net, plan, k, n, written)?;
    for (p, spec) in net.layout.params.iter().enumerate() {
        if spec.l2 > 0.0 {
            k.l2_backward(p, spec.l2)?;
        }
    }
    Ok(())
}

/// Backward pass from the loss gradient already in the last node's gradient view, after a
/// training [`forward`]. Parameter gradients are zeroed first. `written[k]` says whether
/// node k's gradient holds a value yet (so the next writer accumulates into it); a node
/// none of whose readers was reached has no path to the loss and is skipped.
pub fn backward<K: Kernels>(
    net: &Network,
    plan: &MemoryPlan,
    k: &mut K,
    n: usize,
    written: &mut [bool],
) -> Result<(), K::Error> {
    let last = net.last();
    k.zero_param_grads()?;
    written.fill(false);
    written[last] = true;
    for i in (1..net.graph.nodes.len()).rev() {
        if !written[i] {
            continue; // no path to the loss: a zero gradient
        }
        k.begin_node(Pass::Backward, i);
        let nd = &net.graph.nodes[i];
        let node = ParamNode {
            i,
            params: net.params[i],
        };
        let y = plan.act[i];
        let dy = plan.grad[i].expect("non-input nodes have gradients");
        let j = nd.inputs[0];
        let x = plan.act[j];
        let dx = plan.grad[j].map(|v| Dst { v, acc: written[j] });
        let rows = y.rows(n);
        match (&nd.op, dx) {
            (Op::Input { .. }, _) => unreachable!("only node 0 is the input"),
            (Op::Conv2d { .. }, dx) => k.conv2d_backward(node, &net.conv_geom(i), x, dy, dx, n)?,
            (Op::BatchNorm { epsilon, .. }, dx) => {
                let relu = plan.fused_relu(&net.graph, i).is_some();
                k.batchnorm_backward(node, x, y, dy, dx, rows, *epsilon, relu)?;
            }
            // Fused: the batch norm before it masks the gradient itself.
            (Op::Relu, _) if plan.relu_is_fused(&net.graph, i) => {}
            (Op::Dense { .. }, dx) => k.dense_backward(node, x, dy, dx, n)?,
            (Op::Concat, _) => {
                // Inputs written in place into their channel slice read it from there.
                let mut off = 0;
                for &m in &nd.inputs {
                    let c = plan.act[m].c;
                    if plan.alias[m] != Alias::Concat(i, off) {
                        if let Some(v) = plan.grad[m] {
                            let src = View {
                                off: dy.off + off,
                                c,
                                ..dy
                            };
                            let dst = Dst { v, acc: written[m] };
                            k.copy_rows(Arena::Grad, src, dst, rows)?;
                        }
                    }
                    written[m] = true;
                    off += c;
                }
            }
            (Op::Add, _) => {
                for &m in &nd.inputs {
                    if let Some(v) = plan.grad[m] {
                        let dst = Dst { v, acc: written[m] };
                        k.copy_rows(Arena::Grad, dy, dst, rows)?;
                    }
                    written[m] = true;
                }
            }
            // The ops below have no parameters: nothing to do without an input gradient.
            (_, None) => {}
            (Op::Relu, Some(dx)) => k.relu_backward(y, dy, dx, rows)?,
            (Op::Elu { alpha }, Some(dx)) => k.elu_backward(x, dy, dx, rows, *alpha)?,
            (Op::MaxPool { .. }, Some(dx)) => {
                k.maxpool_backward(x, y, dy, dx, &PoolGeom::from(&net.conv_geom(i)), n)?;
            }
            (Op::AvgPool { .. }, Some(dx)) => {
                k.avgpool_backward(dy, dx, &PoolGeom::from(&net.conv_geom(i)), n)?;
            }
            (Op::GlobalAvgPool, Some(dx)) => k.global_avgpool_backward(dy, dx, n)?,
            (Op::Dropout { .. }, Some(dx)) => {
                let mask = plan.mask[i].expect("dropout has a mask");
                k.dropout_backward(mask, dy, dx, rows)?;
            }
            (Op::Flatten, Some(dx)) => k.flatten_backward(dy, dx, n)?,
            (Op::Softmax, Some(dx)) if i == last => k.copy_rows(Arena::Grad, dy, dx, rows)?,
            (Op::Softmax, Some(dx)) => k.softmax_backward(y, dy, dx, rows)?,
        }
        for &m in &nd.inputs {
            written[m] = true;
        }
        k.end_node(Pass::Backward, i, plan.grad[j], n)?;
    }
    Ok(())
}
