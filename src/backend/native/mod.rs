//! The native backend: our own forward and backward kernels for exactly the ops of
//! [`Op`], on the CPU (the `gemm` crate for products, rayon across image parts).
//!
//! [`NativeNet`] is the generic core (f32 to train, f64 for gradient checks): the graph,
//! its parameters, and a [`plan::Plan`] that places every activation and gradient in two
//! arenas sized once per batch capacity. [`NativeModel`] adds the optimizer and implements
//! [`super::Model`]. Semantics follow the dfdx backend exactly (same parameter layout and
//! initial values, Keras batch norm, the same dropout masks for the same seed), so each
//! is the other's reference in the tests.

pub mod cpu;
pub mod gpu;
pub mod plan;
pub mod shared;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};

use self::cpu::{conv, dense, elementwise as ew, loss, norm, pool, r, Ptr, Real, Workspaces};
use self::plan::{Alias, Plan, View};
use self::shared::{conv_geom, dims, fill_dropout_masks, ConvGeom, Network, NodeParams, PoolGeom};
use super::params::{self, Layout};
use super::{State, StepStats};
use crate::nn::graph::{Graph, NodeInfo, Op};

/// A graph with its parameters and arenas, in element type `T`.
pub struct NativeNet<T: Real> {
    graph: Graph,
    infos: Vec<NodeInfo>,
    layout: Layout,
    /// Trainable parameters, in layout order.
    pub params: Vec<Vec<T>>,
    /// Their gradients after [`NativeNet::loss_and_grads`].
    pub grads: Vec<Vec<T>>,
    node_params: Vec<NodeParams>,
    /// Running mean of each batch-norm node.
    pub bn_mean: Vec<Vec<T>>,
    /// Running variance of each batch-norm node.
    pub bn_var: Vec<Vec<T>>,
    batch_mean: Vec<Vec<T>>,
    batch_var: Vec<Vec<T>>,
    inv_std: Vec<Vec<T>>,
    plan: Option<Plan>,
    act: Vec<T>,
    grad: Vec<T>,
    partials: Vec<T>,
    bn_scratch: Vec<f64>,
    bn_sums: Vec<[f64; 2]>,
    ws: Workspaces<T>,
    written: Vec<bool>,
    classes: usize,
    profile: Option<BTreeMap<String, f64>>,
    /// When set: each node's input gradient, copied right after its backward (tests).
    pub snapshots: Option<Vec<(usize, Vec<T>)>>,
}

impl<T: Real> NativeNet<T> {
    /// Build with the shared initial values ([`params::init_values`]).
    pub fn new(graph: &Graph, seed: u64) -> Result<Self> {
        let Network {
            infos,
            layout,
            params: node_params,
            classes,
            ..
        } = Network::new(graph)?;
        let values = params::init_values(&layout, seed);
        let params: Vec<Vec<T>> = values
            .into_iter()
            .map(|v| v.into_iter().map(r::<T>).collect())
            .collect();
        let grads = params.iter().map(|p| vec![T::zero(); p.len()]).collect();
        let per_bn = |v: f64| -> Vec<Vec<T>> {
            layout
                .bns
                .iter()
                .map(|b| vec![r::<T>(v); b.channels])
                .collect()
        };
        let max_partial = graph
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, nd)| match nd.op {
                Op::Conv2d { filters, .. } => {
                    Some(layout.params[node_params[i].kernel?].len() + filters)
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let max_channels = layout.bns.iter().map(|b| b.channels).max().unwrap_or(0);
        Ok(NativeNet {
            graph: graph.clone(),
            infos,
            params,
            grads,
            node_params,
            bn_mean: per_bn(0.0),
            bn_var: per_bn(1.0),
            batch_mean: per_bn(0.0),
            batch_var: per_bn(0.0),
            inv_std: per_bn(0.0),
            layout,
            plan: None,
            act: Vec::new(),
            grad: Vec::new(),
            partials: vec![T::zero(); cpu::PARTS * max_partial],
            bn_scratch: Vec::new(),
            bn_sums: vec![[0.0; 2]; max_channels],
            ws: Workspaces::default(),
            written: vec![false; graph.nodes.len()],
            classes,
            profile: std::env::var("PIPE_PROFILE")
                .ok()
                .map(|_| Default::default()),
            snapshots: None,
        })
    }

    /// Classes the network outputs.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Parameter names, in layout order.
    pub fn param_names(&self) -> Vec<String> {
        self.layout.params.iter().map(|p| p.name.clone()).collect()
    }

    /// Bytes held by the arenas and scratch buffers.
    pub fn footprint(&self) -> usize {
        (self.act.capacity() + self.grad.capacity() + self.partials.capacity())
            * std::mem::size_of::<T>()
            + self.bn_scratch.capacity() * 8
            + self.ws.bytes()
    }

    /// Plan for batches of `n` or fewer (replanned only when `n` exceeds the capacity).
    fn ensure_plan(&mut self, n: usize, train: bool) {
        if self.plan.as_ref().is_none_or(|p| p.cap < n) {
            let p = plan::plan(&self.graph, &self.infos, n);
            self.act = vec![T::zero(); p.act_len];
            self.grad = Vec::new();
            let scratch = self
                .graph
                .nodes
                .iter()
                .zip(&self.infos)
                .filter(|(nd, _)| matches!(nd.op, Op::BatchNorm { .. }))
                .map(|(_, info)| {
                    let (h, w, c) = dims(info.shape);
                    norm::blocks(n * h * w) * c * 2
                })
                .max()
                .unwrap_or(0);
            self.bn_scratch = vec![0.0; scratch];
            self.plan = Some(p);
        }
        let need = self.plan.as_ref().map_or(0, |p| p.grad_len);
        if train && self.grad.len() < need {
            self.grad = vec![T::zero(); need];
        }
    }

    fn conv_geom(&self, i: usize) -> ConvGeom {
        conv_geom(&self.graph, &self.infos, i)
    }

    fn pool_geom(&self, i: usize) -> PoolGeom {
        PoolGeom::from(&self.conv_geom(i))
    }

    fn tick(&mut self, what: &str, t: Instant) {
        if let Some(p) = self.profile.as_mut() {
            *p.entry(what.to_string()).or_default() += t.elapsed().as_secs_f64();
        }
    }

    /// [`NativeNet::tick`] for one node's op (the name is built only when profiling).
    fn tick_op(&mut self, direction: &str, op: &'static str, t: Instant) {
        if self.profile.is_some() {
            self.tick(&format!("{direction}: {op}"), t);
        }
    }

    fn fused_relu(&self, plan: &Plan, i: usize) -> Option<usize> {
        plan.fused_relu(&self.graph, i)
    }

    fn relu_is_fused(&self, plan: &Plan, j: usize) -> bool {
        plan.relu_is_fused(&self.graph, j)
    }

    /// Forward pass over `n` images already in the input view.
    fn forward(&mut self, n: usize, train: bool) {
        let plan = self.plan.take().expect("planned");
        let a = Ptr(self.act.as_mut_ptr());
        let last = self.graph.nodes.len() - 1;
        for i in 1..self.graph.nodes.len() {
            let t0 = Instant::now();
            let nd = &self.graph.nodes[i];
            let yv = plan.act[i];
            let j = nd.inputs[0];
            let xv = plan.act[j];
            let rows = yv.rows(n);
            let np = self.node_params[i];
            match &nd.op {
                Op::Input { .. } => unreachable!("only node 0 is the input"),
                Op::Conv2d { .. } => {
                    let g = self.conv_geom(i);
                    let w = &self.params[np.kernel.expect("conv kernel")];
                    let b = np.bias.map(|b| self.params[b].as_slice());
                    conv::conv2d_forward(a, xv, w, b, a, yv, &g, n, &self.ws);
                }
                Op::BatchNorm { epsilon, .. } => {
                    let relu = self.fused_relu(&plan, i).is_some();
                    let k = np.bn.expect("bn statistics");
                    let gamma = &self.params[np.gamma.expect("bn gamma")];
                    let beta = &self.params[np.beta.expect("bn beta")];
                    if train {
                        norm::batchnorm_forward_train(
                            a,
                            xv,
                            a,
                            yv,
                            rows,
                            gamma,
                            beta,
                            *epsilon,
                            &mut self.batch_mean[k],
                            &mut self.batch_var[k],
                            &mut self.inv_std[k],
                            &mut self.bn_scratch,
                            &mut self.bn_sums,
                            relu,
                        );
                    } else {
                        norm::batchnorm_forward_infer(
                            a,
                            xv,
                            a,
                            yv,
                            rows,
                            gamma,
                            beta,
                            *epsilon,
                            &self.bn_mean[k],
                            &self.bn_var[k],
                            &mut self.inv_std[k],
                            relu,
                        );
                    }
                }
                Op::Relu if self.relu_is_fused(&plan, i) => {} // done by the batch norm
                Op::Relu => ew::relu_forward(a, xv, a, yv, rows),
                Op::Elu { alpha } => ew::elu_forward(a, xv, a, yv, rows, *alpha),
                Op::MaxPool { .. } => pool::maxpool_forward(a, xv, a, yv, &self.pool_geom(i), n),
                Op::AvgPool { .. } => pool::avgpool_forward(a, xv, a, yv, &self.pool_geom(i), n),
                Op::GlobalAvgPool => pool::global_avgpool_forward(a, xv, a, yv, n),
                Op::Dropout { .. } => {
                    // Training: this batch's mask is in place (`fill_masks`).
                    let off = plan.mask[i].expect("dropout has a mask");
                    if !train {
                        self.act[off..off + rows * yv.c].fill(T::one());
                    }
                    let mp = Ptr(a.0.wrapping_add(off));
                    ew::dropout_forward(a, xv, mp, a, yv, rows);
                }
                Op::Flatten => {
                    // SAFETY: flatten's output is its own buffer (flatten never aliases).
                    unsafe { ew::reshape_rows(a, xv, (a, yv, false), n) }
                }
                Op::Dense { .. } => {
                    let w = &self.params[np.kernel.expect("dense kernel")];
                    let b = np.bias.map(|b| self.params[b].as_slice());
                    dense::dense_forward(a, xv, w, b, a, yv, n);
                }
                Op::Concat => {
                    let mut off = 0;
                    for &k in &nd.inputs {
                        let kv = plan.act[k];
                        if plan.alias[k] != Alias::Concat(i, off) {
                            let dst = View {
                                off: yv.off + off,
                                c: kv.c,
                                ..yv
                            };
                            ew::copy_rows(a, kv, (a, dst, false), rows);
                        }
                        off += kv.c;
                    }
                }
                Op::Add => {
                    let v1 = plan.act[nd.inputs[1]];
                    ew::add_forward((a, xv), (a, v1), (a, yv), rows);
                    for &k in &nd.inputs[2..] {
                        ew::copy_rows(a, plan.act[k], (a, yv, true), rows);
                    }
                }
                Op::Softmax => {
                    if i == last {
                        ew::copy_rows(a, xv, (a, yv, false), rows);
                    } else {
                        ew::softmax_forward(a, xv, a, yv, rows);
                    }
                }
            }
            let op = nd.op.name();
            self.tick_op("forward", op, t0);
        }
        self.plan = Some(plan);
    }

    /// Backward pass from the gradient of the output (already in its gradient view).
    fn backward(&mut self, n: usize) {
        let plan = self.plan.take().expect("planned");
        let a = Ptr(self.act.as_mut_ptr());
        let gp = Ptr(self.grad.as_mut_ptr());
        let last = self.graph.nodes.len() - 1;
        for g in &mut self.grads {
            g.fill(T::zero());
        }
        for i in (1..self.graph.nodes.len()).rev() {
            if !self.written[i] {
                continue; // no path to the loss: a zero gradient
            }
            let t0 = Instant::now();
            let nd = &self.graph.nodes[i];
            let yv = plan.act[i];
            let dyv = plan.grad[i].expect("non-input nodes have gradients");
            let j = nd.inputs[0];
            let xv = plan.act[j];
            let dx = plan.grad[j].map(|v| (gp, v, self.written[j]));
            let rows = yv.rows(n);
            let np = self.node_params[i];
            match &nd.op {
                Op::Input { .. } => unreachable!("only node 0 is the input"),
                Op::Conv2d { .. } => {
                    let g = self.conv_geom(i);
                    let kp = np.kernel.expect("conv kernel");
                    let plen = g.k() * g.cout + g.cout;
                    conv::conv2d_backward(
                        a,
                        xv,
                        &self.params[kp],
                        gp,
                        dyv,
                        dx,
                        &g,
                        n,
                        &mut self.partials,
                        &self.ws,
                    );
                    let parts = cpu::parts(n);
                    cpu::reduce_parts(&self.partials, plen, 0, parts, &mut self.grads[kp]);
                    if let Some(b) = np.bias {
                        let off = g.k() * g.cout;
                        cpu::reduce_parts(&self.partials, plen, off, parts, &mut self.grads[b]);
                    }
                }
                Op::BatchNorm { .. } => {
                    let relu_out = self.fused_relu(&plan, i).map(|j| (a, plan.act[j]));
                    let k = np.bn.expect("bn statistics");
                    let (gi, bi) = (np.gamma.expect("gamma"), np.beta.expect("beta"));
                    let (mut dgamma, mut dbeta) = (
                        std::mem::take(&mut self.grads[gi]),
                        std::mem::take(&mut self.grads[bi]),
                    );
                    norm::batchnorm_backward(
                        a,
                        xv,
                        gp,
                        dyv,
                        dx,
                        rows,
                        &self.params[gi],
                        &self.batch_mean[k],
                        &self.inv_std[k],
                        &mut dgamma,
                        &mut dbeta,
                        &mut self.bn_scratch,
                        &mut self.bn_sums,
                        relu_out,
                    );
                    self.grads[gi] = dgamma;
                    self.grads[bi] = dbeta;
                }
                // Fused: the batch norm before it masks the gradient itself.
                Op::Relu if self.relu_is_fused(&plan, i) => {}
                Op::Relu => {
                    if let Some(dx) = dx {
                        ew::relu_backward(a, yv, gp, dyv, dx, rows);
                    }
                }
                Op::Elu { alpha } => {
                    if let Some(dx) = dx {
                        ew::elu_backward(a, xv, gp, dyv, dx, rows, *alpha);
                    }
                }
                Op::MaxPool { .. } => {
                    if let Some(dx) = dx {
                        let g = self.pool_geom(i);
                        pool::maxpool_backward(a, xv, a, yv, gp, dyv, dx, &g, n, &self.ws);
                    }
                }
                Op::AvgPool { .. } => {
                    if let Some(dx) = dx {
                        pool::avgpool_backward(gp, dyv, dx, &self.pool_geom(i), n);
                    }
                }
                Op::GlobalAvgPool => {
                    if let Some(dx) = dx {
                        pool::global_avgpool_backward(gp, dyv, dx, n);
                    }
                }
                Op::Dropout { .. } => {
                    if let Some(dx) = dx {
                        let mp = Ptr(a.0.wrapping_add(plan.mask[i].expect("dropout mask")));
                        ew::dropout_backward(mp, gp, dyv, dx, rows);
                    }
                }
                Op::Flatten => {
                    if let Some(dx) = dx {
                        // SAFETY: flatten's gradient and its input's are distinct buffers.
                        unsafe { ew::reshape_rows(gp, dyv, dx, n) };
                    }
                }
                Op::Dense { .. } => {
                    let kp = np.kernel.expect("dense kernel");
                    let mut dw = std::mem::take(&mut self.grads[kp]);
                    let mut db = np.bias.map(|b| std::mem::take(&mut self.grads[b]));
                    dense::dense_backward(
                        a,
                        xv,
                        &self.params[kp],
                        gp,
                        dyv,
                        dx,
                        n,
                        &mut dw,
                        db.as_deref_mut(),
                    );
                    self.grads[kp] = dw;
                    if let (Some(b), Some(db)) = (np.bias, db) {
                        self.grads[b] = db;
                    }
                }
                Op::Concat => {
                    let mut off = 0;
                    for &k in &nd.inputs {
                        let c = plan.act[k].c;
                        if plan.alias[k] != Alias::Concat(i, off) {
                            if let Some(kv) = plan.grad[k] {
                                let src = View {
                                    off: dyv.off + off,
                                    c,
                                    ..dyv
                                };
                                ew::copy_rows(gp, src, (gp, kv, self.written[k]), rows);
                            }
                        }
                        self.written[k] = true;
                        off += c;
                    }
                }
                Op::Add => {
                    for &k in &nd.inputs {
                        if let Some(kv) = plan.grad[k] {
                            ew::copy_rows(gp, dyv, (gp, kv, self.written[k]), rows);
                        }
                        self.written[k] = true;
                    }
                }
                Op::Softmax => {
                    if let Some(dx) = dx {
                        if i == last {
                            ew::copy_rows(gp, dyv, dx, rows);
                        } else {
                            ew::softmax_backward(a, yv, gp, dyv, dx, rows);
                        }
                    }
                }
            }
            for &k in &nd.inputs {
                self.written[k] = true;
            }
            if let (Some(snaps), Some(v)) = (self.snapshots.as_mut(), plan.grad[j]) {
                let vals = (0..v.rows(n))
                    .flat_map(|r| {
                        self.grad[v.off + r * v.ld..v.off + r * v.ld + v.c]
                            .iter()
                            .copied()
                    })
                    .collect();
                snaps.push((i, vals));
            }
            let op = nd.op.name();
            self.tick_op("backward", op, t0);
        }
        self.plan = Some(plan);
    }

    /// This batch's dropout masks, into their places in the activation arena.
    fn fill_masks(&mut self, n: usize, seed: u64) {
        let plan = self.plan.as_ref().expect("planned");
        let (graph, infos) = (&self.graph, &self.infos);
        fill_dropout_masks(graph, infos, n, seed, &mut self.act, |i, _| {
            plan.mask[i].expect("dropout has a mask")
        });
    }

    fn load_input(&mut self, x: &[T], n: usize) -> Result<()> {
        let (h, w, c) = dims(self.infos[0].shape);
        if x.len() != n * h * w * c {
            bail!(
                "the batch holds {} values, the network's input needs {n} x {h}x{w}x{c} = {}",
                x.len(),
                n * h * w * c
            );
        }
        let v = self.plan.as_ref().expect("planned").act[0];
        self.act[v.off..v.off + x.len()].copy_from_slice(x);
        Ok(())
    }

    fn logits(&self, n: usize) -> Vec<T> {
        let plan = self.plan.as_ref().expect("planned");
        let v = plan.act[self.graph.nodes.len() - 1];
        (0..n)
            .flat_map(|r| {
                self.act[v.off + r * v.ld..v.off + r * v.ld + v.c]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// The gradient of node `i`'s output after the last training pass (n rows), and its
    /// activation: for tests that look inside the network.
    pub fn node_values(&self, i: usize, n: usize) -> (Vec<T>, Vec<T>) {
        let plan = self.plan.as_ref().expect("planned");
        let rows = |buf: &[T], v: View| -> Vec<T> {
            (0..v.rows(n))
                .flat_map(|r| {
                    buf[v.off + r * v.ld..v.off + r * v.ld + v.c]
                        .iter()
                        .copied()
                })
                .collect()
        };
        let g = plan.grad[i]
            .map(|v| rows(&self.grad, v))
            .unwrap_or_default();
        (rows(&self.act, plan.act[i]), g)
    }

    /// Training-mode forward and backward on a batch: (cross-entropy, cross-entropy + L2,
    /// correct predictions); gradients land in [`NativeNet::grads`].
    pub fn train_pass(
        &mut self,
        x: &[T],
        labels: &[i64],
        dropout_seed: u64,
    ) -> Result<(T, T, usize)> {
        let n = labels.len();
        let k = self.classes;
        if let Some(&l) = labels.iter().find(|&&l| l < 0 || l as usize >= k) {
            bail!("label {l} out of range for a network with {k} classes");
        }
        self.ensure_plan(n, true);
        self.load_input(x, n)?;
        self.fill_masks(n, dropout_seed);
        self.forward(n, true);
        let t0 = Instant::now();
        let plan = self.plan.as_ref().expect("planned");
        let last = self.graph.nodes.len() - 1;
        let (lv, dlv) = (plan.act[last], plan.grad[last].expect("output gradient"));
        let (ce, correct) = loss::softmax_cross_entropy(
            Ptr(self.act.as_mut_ptr()),
            lv,
            labels,
            (Ptr(self.grad.as_mut_ptr()), dlv),
        );
        self.written.fill(false);
        self.written[last] = true;
        self.tick("loss", t0);
        self.backward(n);
        let t0 = Instant::now();
        let mut total = ce;
        for (p, spec) in self.layout.params.iter().enumerate() {
            if spec.l2 > 0.0 {
                total += loss::l2_penalty(&self.params[p], spec.l2, &mut self.grads[p]);
            }
        }
        self.tick("L2", t0);
        Ok((ce, total, correct))
    }

    /// (cross-entropy, cross-entropy + L2, logits, gradients) of a batch in training mode.
    #[allow(clippy::type_complexity)]
    pub fn loss_and_grads(
        &mut self,
        x: &[T],
        labels: &[i64],
        dropout_seed: u64,
    ) -> Result<(f64, f64, Vec<T>, Vec<Vec<T>>)> {
        let (ce, total, _) = self.train_pass(x, labels, dropout_seed)?;
        let logits = self.logits(labels.len());
        Ok((
            ce.to_f64().unwrap_or(f64::NAN),
            total.to_f64().unwrap_or(f64::NAN),
            logits,
            self.grads.clone(),
        ))
    }

    /// Loss (cross-entropy + L2) in training mode, for finite differences.
    pub fn loss(&mut self, x: &[T], labels: &[i64], dropout_seed: u64) -> Result<f64> {
        Ok(self
            .train_pass(x, labels, dropout_seed)?
            .1
            .to_f64()
            .unwrap_or(f64::NAN))
    }

    /// Outputs in inference mode (probabilities if the graph ends in softmax), in batches
    /// of the current capacity.
    pub fn infer(&mut self, x: &[T], n: usize) -> Result<Vec<T>> {
        let px = self.infos[0].shape.numel();
        if x.len() != n * px {
            bail!(
                "the batch holds {} values, {n} images need {}",
                x.len(),
                n * px
            );
        }
        let cap = self.plan.as_ref().map_or(n.min(128), |p| p.cap).max(1);
        self.ensure_plan(cap.min(n.max(1)), false);
        let cap = self.plan.as_ref().expect("planned").cap;
        let softmax = matches!(self.graph.nodes.last().map(|n| &n.op), Some(Op::Softmax));
        let mut out = Vec::with_capacity(n * self.classes);
        let mut b0 = 0;
        while b0 < n {
            let b1 = (b0 + cap).min(n);
            self.load_input(&x[b0 * px..b1 * px], b1 - b0)?;
            self.forward(b1 - b0, false);
            let mut o = self.logits(b1 - b0);
            if softmax {
                for row in o.chunks_exact_mut(self.classes) {
                    let m = row.iter().copied().fold(T::neg_infinity(), T::max);
                    let mut z = T::zero();
                    for v in row.iter_mut() {
                        *v = (*v - m).exp();
                        z += *v;
                    }
                    row.iter_mut().for_each(|v| *v = *v / z);
                }
            }
            out.extend(o);
            b0 = b1;
        }
        Ok(out)
    }

    /// Fold the last training batch's statistics into the running ones (Keras:
    /// `m * old + (1 - m) * batch`, with the unbiased batch variance).
    pub fn update_running_stats(&mut self, n: usize) {
        for (k, bn) in self.layout.bns.iter().enumerate() {
            let Op::BatchNorm { momentum, .. } = self.graph.nodes[bn.node].op else {
                continue;
            };
            let (h, w, _) = dims(self.infos[bn.node].shape);
            let rows = (n * h * w) as f64;
            let unbias = if rows > 1.0 { rows / (rows - 1.0) } else { 1.0 };
            for c in 0..bn.channels {
                let m = self.bn_mean[k][c].to_f64().unwrap_or(0.0);
                let v = self.bn_var[k][c].to_f64().unwrap_or(1.0);
                let bm = self.batch_mean[k][c].to_f64().unwrap_or(0.0);
                let bv = self.batch_var[k][c].to_f64().unwrap_or(0.0) * unbias;
                self.bn_mean[k][c] = r(momentum * m + (1.0 - momentum) * bm);
                self.bn_var[k][c] = r(momentum * v + (1.0 - momentum) * bv);
            }
        }
    }
}

/// The f32 model behind [`super::Model`]: a [`NativeNet`] and its optimizer moments.
pub struct NativeModel {
    net: NativeNet<f32>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    step: u64,
}

impl NativeModel {
    /// Build with fresh weights.
    pub fn new(graph: &Graph, seed: u64) -> Result<Self> {
        let net = NativeNet::<f32>::new(graph, seed)?;
        let zeros = || net.params.iter().map(|p| vec![0.0; p.len()]).collect();
        Ok(NativeModel {
            m: zeros(),
            v: zeros(),
            net,
            step: 0,
        })
    }

    /// Bytes of the arenas and scratch buffers (printed by `pipe bench`).
    pub fn footprint(&self) -> usize {
        self.net.footprint()
    }
}

impl super::Model for NativeModel {
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[i64],
        opt: &super::Optimizer,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<StepStats> {
        let n = labels.len();
        // On a pool thread, the kernels' parallel loops push work onto its own deque
        // instead of injecting a job (and allocating) per loop from outside the pool.
        let (ce, _, correct) = rayon::scope(|_| self.net.train_pass(images, labels, dropout_seed))?;
        if !ce.is_finite() {
            bail!("the loss is {ce} (diverged); lower the learning rate");
        }
        let t0 = Instant::now();
        self.net.update_running_stats(n);
        self.step += 1;
        let t = self.step as f64;
        let net = &mut self.net;
        for (((p, g), m), v) in net
            .params
            .iter_mut()
            .zip(&net.grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            opt.update(lr, t, p, g, m, v);
        }
        net.tick("optimizer + BN statistics", t0);
        Ok(StepStats {
            loss: ce as f64,
            correct,
        })
    }

    fn predict(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        rayon::scope(|_| self.net.infer(images, n))
    }

    fn state(&self) -> State {
        self.net.layout.to_state(&params::StateParts {
            params: self.net.params.clone(),
            m: self.m.clone(),
            v: self.v.clone(),
            bn_mean: self.net.bn_mean.clone(),
            bn_var: self.net.bn_var.clone(),
            step: self.step,
        })
    }

    fn load_state(&mut self, st: &State) -> Result<()> {
        let parts = self.net.layout.from_state(st)?;
        self.net.params = parts.params;
        self.m = parts.m;
        self.v = parts.v;
        self.net.bn_mean = parts.bn_mean;
        self.net.bn_var = parts.bn_var;
        self.step = parts.step;
        Ok(())
    }

    fn classes(&self) -> usize {
        self.net.classes()
    }

    fn profile(&self) -> Vec<(String, f64)> {
        self.net
            .profile
            .as_ref()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}
