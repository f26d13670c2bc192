//! The native backend: our own forward and backward kernels for exactly the ops of
//! [`Op`], on the CPU (the `gemm` crate for products, rayon across image parts) and, with
//! the `cuda` feature, on an NVIDIA GPU (cuDNN, cuBLAS and our NVRTC kernels).
//!
//! - [`shared`]: the network, its geometry and the dropout masks, for both devices.
//! - [`plan`]: where every activation and gradient lives (two arenas, sized once).
//! - [`walk`]: the forward and backward passes over the plan, written once, calling a
//!   device's [`walk::Kernels`]: the CPU's ([`cpu::device`]) or the GPU's (`gpu::device`).
//!
//! [`NativeNet`] is the generic CPU core (f32 to train, f64 for gradient checks): the
//! graph, its parameters and the arenas. [`NativeModel`] adds the optimizer and implements
//! [`super::Model`]. Semantics follow the dfdx backend exactly (same parameter layout and
//! initial values, Keras batch norm, the same dropout masks for the same seed), so each
//! is the other's reference in the tests.

pub mod cpu;
pub mod gpu;
pub mod plan;
pub mod shared;
pub mod walk;

use std::convert::Infallible;
use std::time::Instant;

use anyhow::{bail, Result};

use self::cpu::device::{Buffers, Cpu};
use self::cpu::{norm, r, Real};
use self::plan::MemoryPlan;
use self::shared::{dims, fill_dropout_masks, softmax_rows, Network};
use super::params;
use super::{State, StepStats, Targets};
use crate::nn::graph::{Graph, Op};

/// A graph with its parameters and arenas, in element type `T`.
pub struct NativeNet<T: Real> {
    net: Network,
    /// Trainable parameters, in layout order.
    pub params: Vec<Vec<T>>,
    /// Their gradients after [`NativeNet::loss_and_grads`].
    pub grads: Vec<Vec<T>>,
    /// Running mean of each batch-norm node.
    pub bn_mean: Vec<Vec<T>>,
    /// Running variance of each batch-norm node.
    pub bn_var: Vec<Vec<T>>,
    plan: Option<MemoryPlan>,
    buf: Buffers<T>,
    written: Vec<bool>,
    /// When set: each node's input gradient, copied right after its backward (tests).
    pub snapshots: Option<Vec<(usize, Vec<T>)>>,
}

/// A result that cannot be an error (the CPU's kernels do not fail).
fn ok<R>(r: Result<R, Infallible>) -> R {
    match r {
        Ok(v) => v,
        Err(e) => match e {},
    }
}

impl<T: Real> NativeNet<T> {
    /// Build with the shared initial values ([`params::init_values`]).
    pub fn new(graph: &Graph, seed: u64) -> Result<Self> {
        let net = Network::new(graph)?;
        let layout = &net.layout;
        let values = params::init_values(layout, seed);
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
                    Some(layout.params[net.params[i].kernel?].len() + filters)
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let max_channels = layout.bns.iter().map(|b| b.channels).max().unwrap_or(0);
        let buf = Buffers {
            partials: vec![T::zero(); cpu::PARTS * max_partial],
            bn_sums: vec![[0.0; 2]; max_channels],
            bn_coef: vec![T::zero(); 3 * max_channels],
            batch_mean: per_bn(0.0),
            batch_var: per_bn(0.0),
            inv_std: per_bn(0.0),
            profile: std::env::var("PIPE_PROFILE")
                .ok()
                .map(|_| Default::default()),
            ..Buffers::default()
        };
        Ok(NativeNet {
            params,
            grads,
            bn_mean: per_bn(0.0),
            bn_var: per_bn(1.0),
            plan: None,
            buf,
            written: vec![false; graph.nodes.len()],
            snapshots: None,
            net,
        })
    }

    /// Classes the network outputs.
    pub fn classes(&self) -> usize {
        self.net.classes
    }

    /// Parameter names, in layout order.
    pub fn param_names(&self) -> Vec<String> {
        self.net
            .layout
            .params
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// Bytes held by the arenas and scratch buffers.
    pub fn footprint(&self) -> usize {
        let b = &self.buf;
        (b.act.capacity() + b.grad.capacity() + b.partials.capacity()) * std::mem::size_of::<T>()
            + b.bn_scratch.capacity() * 8
            + b.ws.bytes()
    }

    /// Plan for batches of `n` or fewer (replanned only when `n` exceeds the capacity).
    fn ensure_plan(&mut self, n: usize, train: bool) {
        if self.plan.as_ref().is_none_or(|p| p.cap < n) {
            let p = plan::plan(&self.net.graph, &self.net.infos, n, true);
            self.buf.act = vec![T::zero(); p.act_len];
            self.buf.grad = Vec::new();
            let scratch = self
                .net
                .graph
                .nodes
                .iter()
                .zip(&self.net.infos)
                .filter(|(nd, _)| matches!(nd.op, Op::BatchNorm { .. }))
                .map(|(_, info)| {
                    let (h, w, c) = dims(info.shape);
                    norm::blocks(n * h * w) * c * 2
                })
                .max()
                .unwrap_or(0);
            self.buf.bn_scratch = vec![0.0; scratch];
            self.plan = Some(p);
        }
        let need = self.plan.as_ref().map_or(0, |p| p.grad_len);
        if train && self.buf.grad.len() < need {
            self.buf.grad = vec![T::zero(); need];
        }
    }

    /// The walk's view of this network (graph, plan, written flags) and the CPU device
    /// over its parameters and buffers (and a training batch's labels).
    fn split<'a>(
        &'a mut self,
        targets: Targets<'a>,
    ) -> (&'a Network, &'a MemoryPlan, &'a mut [bool], Cpu<'a, T>) {
        let cpu = Cpu {
            graph: &self.net.graph,
            params: &self.params,
            grads: &mut self.grads,
            running: (&self.bn_mean, &self.bn_var),
            buf: &mut self.buf,
            snapshots: self.snapshots.as_mut(),
            t0: Instant::now(),
            targets,
            loss: (T::zero(), 0),
            total: T::zero(),
        };
        let plan = self.plan.as_ref().expect("planned");
        (&self.net, plan, &mut self.written, cpu)
    }

    /// Forward pass over `n` images already in the input view (dropout masks in place
    /// when training).
    fn forward(&mut self, n: usize, train: bool) {
        let (net, plan, _, mut cpu) = self.split(Targets::plain(&[]));
        ok(walk::forward(net, plan, &mut cpu, n, train));
    }

    /// This batch's dropout masks, into their places in the activation arena.
    fn fill_masks(&mut self, n: usize, seed: u64) {
        let plan = self.plan.as_ref().expect("planned");
        let (graph, infos) = (&self.net.graph, &self.net.infos);
        fill_dropout_masks(graph, infos, n, seed, &mut self.buf.act, |i, _| {
            plan.mask[i].expect("dropout has a mask")
        });
    }

    fn load_input(&mut self, x: &[T], n: usize) -> Result<()> {
        let (h, w, c) = dims(self.net.infos[0].shape);
        if x.len() != n * h * w * c {
            bail!(
                "the batch holds {} values, the network's input needs {n} x {h}x{w}x{c} = {}",
                x.len(),
                n * h * w * c
            );
        }
        let v = self.plan.as_ref().expect("planned").act[0];
        self.buf.act[v.off..v.off + x.len()].copy_from_slice(x);
        Ok(())
    }

    fn logits(&self, n: usize) -> Vec<T> {
        let plan = self.plan.as_ref().expect("planned");
        cpu::packed_rows(&self.buf.act, plan.act[self.net.last()], n)
    }

    /// Training-mode forward and backward on a batch: (cross-entropy, cross-entropy + L2,
    /// correct predictions); gradients land in [`NativeNet::grads`].
    pub fn train_pass(
        &mut self,
        x: &[T],
        labels: &[i64],
        dropout_seed: u64,
    ) -> Result<(T, T, usize)> {
        self.train_pass_targets(x, &Targets::plain(labels), dropout_seed)
    }

    /// [`NativeNet::train_pass`] against soft targets (label smoothing, mixup, CutMix).
    pub fn train_pass_targets(
        &mut self,
        x: &[T],
        targets: &Targets<'_>,
        dropout_seed: u64,
    ) -> Result<(T, T, usize)> {
        let n = targets.labels.len();
        targets.check(self.net.classes)?;
        self.ensure_plan(n, true);
        self.load_input(x, n)?;
        let t0 = Instant::now();
        self.fill_masks(n, dropout_seed);
        self.buf.tick("dropout masks", t0);
        let (net, plan, written, mut cpu) = self.split(*targets);
        ok(walk::train_pass(net, plan, &mut cpu, n, written));
        let ((ce, correct), total) = (cpu.loss, cpu.total);
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
        self.loss_targets(x, &Targets::plain(labels), dropout_seed)
    }

    /// Loss against soft targets (cross-entropy + L2), for finite differences.
    pub fn loss_targets(
        &mut self,
        x: &[T],
        targets: &Targets<'_>,
        dropout_seed: u64,
    ) -> Result<f64> {
        Ok(self
            .train_pass_targets(x, targets, dropout_seed)?
            .1
            .to_f64()
            .unwrap_or(f64::NAN))
    }

    /// Outputs in inference mode (probabilities if the graph ends in softmax), in batches
    /// of the current capacity.
    pub fn infer(&mut self, x: &[T], n: usize) -> Result<Vec<T>> {
        let px = self.net.infos[0].shape.numel();
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
        let softmax = self.net.ends_in_softmax();
        let mut out = Vec::with_capacity(n * self.net.classes);
        let mut b0 = 0;
        while b0 < n {
            let b1 = (b0 + cap).min(n);
            self.load_input(&x[b0 * px..b1 * px], b1 - b0)?;
            self.forward(b1 - b0, false);
            let mut o = self.logits(b1 - b0);
            if softmax {
                softmax_rows(&mut o, self.net.classes);
            }
            out.extend(o);
            b0 = b1;
        }
        Ok(out)
    }

    /// Fold the last training batch's statistics into the running ones (Keras:
    /// `m * old + (1 - m) * batch`, with the unbiased batch variance).
    pub fn update_running_stats(&mut self, n: usize) {
        for (k, bn) in self.net.layout.bns.iter().enumerate() {
            let Op::BatchNorm { momentum, .. } = self.net.graph.nodes[bn.node].op else {
                continue;
            };
            let (h, w, _) = dims(self.net.infos[bn.node].shape);
            let rows = (n * h * w) as f64;
            let unbias = if rows > 1.0 { rows / (rows - 1.0) } else { 1.0 };
            for c in 0..bn.channels {
                let m = self.bn_mean[k][c].to_f64().unwrap_or(0.0);
                let v = self.bn_var[k][c].to_f64().unwrap_or(1.0);
                let bm = self.buf.batch_mean[k][c].to_f64().unwrap_or(0.0);
                let bv = self.buf.batch_var[k][c].to_f64().unwrap_or(0.0) * unbias;
                self.bn_mean[k][c] = r(momentum * m + (1.0 - momentum) * bm);
                self.bn_var[k][c] = r(momentum * v + (1.0 - momentum) * bv);
            }
        }
    }
}

/// The f32 model behind [`super::Model`]: a [`NativeNet`], its optimizer moments and the
/// weights' moving average when one is kept.
pub struct NativeModel {
    net: NativeNet<f32>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    step: u64,
    ema: Option<params::Ema>,
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
            ema: None,
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
        self.train_step_targets(images, &Targets::plain(labels), opt, lr, dropout_seed)
    }

    fn train_step_targets(
        &mut self,
        images: &[f32],
        targets: &Targets<'_>,
        opt: &super::Optimizer,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<StepStats> {
        let n = targets.labels.len();
        // On a pool thread, the kernels' parallel loops push work onto its own deque
        // instead of injecting a job (and allocating) per loop from outside the pool.
        let (ce, _, correct) =
            rayon::scope(|_| self.net.train_pass_targets(images, targets, dropout_seed))?;
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
        net.buf.tick("optimizer + BN statistics", t0);
        Ok(StepStats {
            loss: ce as f64,
            correct,
        })
    }

    fn ema_update(&mut self, decay: f64) -> Result<()> {
        let t0 = Instant::now();
        let net = &self.net;
        match &mut self.ema {
            None => {
                self.ema = Some(params::Ema {
                    params: net.params.clone(),
                    bn_mean: net.bn_mean.clone(),
                    bn_var: net.bn_var.clone(),
                })
            }
            Some(e) => e.update(decay, &net.params, &net.bn_mean, &net.bn_var),
        }
        self.net.buf.tick("moving average of the weights", t0);
        Ok(())
    }

    fn swap_ema(&mut self) -> Result<()> {
        let Some(e) = self.ema.as_mut() else {
            bail!("no moving average of the weights has been taken yet");
        };
        std::mem::swap(&mut e.params, &mut self.net.params);
        std::mem::swap(&mut e.bn_mean, &mut self.net.bn_mean);
        std::mem::swap(&mut e.bn_var, &mut self.net.bn_var);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "native"
    }

    fn predict(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        rayon::scope(|_| self.net.infer(images, n))
    }

    fn state(&self) -> State {
        self.net.net.layout.to_state(&params::StateParts {
            params: self.net.params.clone(),
            m: self.m.clone(),
            v: self.v.clone(),
            bn_mean: self.net.bn_mean.clone(),
            bn_var: self.net.bn_var.clone(),
            step: self.step,
            ema: self.ema.clone(),
        })
    }

    fn load_state(&mut self, st: &State) -> Result<()> {
        let parts = self.net.net.layout.from_state(st)?;
        self.net.params = parts.params;
        self.m = parts.m;
        self.v = parts.v;
        self.net.bn_mean = parts.bn_mean;
        self.net.bn_var = parts.bn_var;
        self.step = parts.step;
        self.ema = parts.ema;
        Ok(())
    }

    fn classes(&self) -> usize {
        self.net.classes()
    }

    fn profile(&self) -> Vec<(String, f64)> {
        self.net
            .buf
            .profile
            .as_ref()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}
