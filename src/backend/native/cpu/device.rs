//! The CPU's [`Kernels`]: each op of the walk on this module's kernels, over two arenas in
//! host memory ([`Buffers`]), with the parameters of a [`super::super::NativeNet`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Instant;

use super::{
    conv, dense, elementwise as ew, loss, norm, pool, reduce_parts, Out, Ptr, Real, Workspaces,
};
use crate::backend::native::plan::View;
use crate::backend::native::shared::{ConvGeom, PoolGeom};
use crate::backend::native::walk::{Arena, Dst, Kernels, ParamNode, Pass};
use crate::nn::graph::Graph;

/// A network's arenas, batch-norm statistics of the last batch and scratch buffers, sized
/// by the plan and reused from step to step.
#[derive(Debug, Default)]
pub struct Buffers<T> {
    /// The activation arena (and dropout masks).
    pub act: Vec<T>,
    /// The gradient arena.
    pub grad: Vec<T>,
    /// Per-part weight and bias gradients of a conv (see [`conv::conv2d_backward`]).
    pub partials: Vec<T>,
    /// Batch norms' per-block partial sums.
    pub bn_scratch: Vec<f64>,
    /// Batch norms' per-channel sums.
    pub bn_sums: Vec<[f64; 2]>,
    /// Batch-norm backward's per-channel coefficients (3 per channel).
    pub bn_coef: Vec<T>,
    /// Each batch norm's mean over the last training batch.
    pub batch_mean: Vec<Vec<T>>,
    /// Each batch norm's (biased) variance over the last training batch.
    pub batch_var: Vec<Vec<T>>,
    /// Each batch norm's 1/sqrt(var + eps) of its last forward.
    pub inv_std: Vec<Vec<T>>,
    /// Scratch lent to parallel tasks.
    pub ws: Workspaces<T>,
    /// With `PIPE_PROFILE`: seconds per phase and per op.
    pub profile: Option<BTreeMap<String, f64>>,
}

impl<T: Real> Buffers<T> {
    /// Add the time since `t` to `what`'s total, when profiling.
    pub fn tick(&mut self, what: &str, t: Instant) {
        if let Some(p) = self.profile.as_mut() {
            *p.entry(what.to_string()).or_default() += t.elapsed().as_secs_f64();
        }
    }
}

/// The CPU device for one pass: a network's parameters and buffers, borrowed.
pub struct Cpu<'a, T: Real> {
    /// The graph (op names, for the profile).
    pub graph: &'a Graph,
    /// Trainable parameters, in layout order.
    pub params: &'a [Vec<T>],
    /// Their gradients.
    pub grads: &'a mut [Vec<T>],
    /// Running (mean, variance) of each batch norm.
    pub running: (&'a [Vec<T>], &'a [Vec<T>]),
    /// Arenas and scratch.
    pub buf: &'a mut Buffers<T>,
    /// When set: each node's input gradient, copied right after its backward (tests).
    pub snapshots: Option<&'a mut Vec<(usize, Vec<T>)>>,
    /// When the current node started.
    pub t0: Instant,
    /// The batch's targets (a training pass).
    pub targets: crate::backend::Targets<'a>,
    /// What the loss found: (cross-entropy, correct predictions).
    pub loss: (T, usize),
    /// The loss with every parameter's L2 penalty added, in parameter order.
    pub total: T,
}

impl<T: Real> Cpu<'_, T> {
    fn a(&mut self) -> Ptr<T> {
        Ptr(self.buf.act.as_mut_ptr())
    }

    fn g(&mut self) -> Ptr<T> {
        Ptr(self.buf.grad.as_mut_ptr())
    }

    /// A gradient destination in the gradient arena.
    fn dst(&mut self, d: Dst) -> Out<T> {
        Out {
            ptr: self.g(),
            dst: d,
        }
    }
}

impl<T: Real> Kernels for Cpu<'_, T> {
    type Error = Infallible;

    fn softmax_cross_entropy(&mut self, x: View, dx: View, n: usize) -> Result<(), Infallible> {
        debug_assert_eq!(n, self.targets.labels.len());
        let t0 = Instant::now();
        let (a, g) = (self.a(), self.g());
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        self.loss = unsafe { loss::softmax_cross_entropy(a, x, &self.targets, (g, dx)) };
        self.total = self.loss.0;
        self.buf.tick("loss", t0);
        Ok(())
    }

    fn l2_backward(&mut self, param: usize, l2: f64) -> Result<(), Infallible> {
        let t0 = Instant::now();
        self.total += loss::l2_penalty(&self.params[param], l2, &mut self.grads[param]);
        self.buf.tick("L2", t0);
        Ok(())
    }

    fn begin_node(&mut self, _pass: Pass, _i: usize) {
        self.t0 = Instant::now();
    }

    fn end_node(
        &mut self,
        pass: Pass,
        i: usize,
        dx: Option<View>,
        n: usize,
    ) -> Result<(), Infallible> {
        if let (Pass::Backward, Some(v), Some(snaps)) = (pass, dx, self.snapshots.as_deref_mut()) {
            snaps.push((i, super::packed_rows(&self.buf.grad, v, v.rows(n))));
        }
        if self.buf.profile.is_some() {
            let node = &self.graph.nodes[i];
            // `PIPE_PROFILE=nodes`: node by node, not op kind by op kind.
            let what = if std::env::var("PIPE_PROFILE").as_deref() == Ok("nodes") {
                format!("{}: {} {}", pass.name(), node.op.name(), node.name)
            } else {
                format!("{}: {}", pass.name(), node.op.name())
            };
            self.buf.tick(&what, self.t0);
        }
        Ok(())
    }

    fn zero_param_grads(&mut self) -> Result<(), Infallible> {
        for g in self.grads.iter_mut() {
            g.fill(T::zero());
        }
        Ok(())
    }

    fn conv2d_forward(
        &mut self,
        node: ParamNode,
        g: &ConvGeom,
        x: View,
        y: View,
        n: usize,
    ) -> Result<(), Infallible> {
        let a = self.a();
        let w = &self.params[node.params.kernel()];
        let bias = node.params.bias.map(|b| self.params[b].as_slice());
        let epi = super::Epilogue { bias, relu: false };
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { conv::conv2d_forward(a, x, w, epi, a, y, g, n, &self.buf.ws) };
        Ok(())
    }

    fn conv2d_bn_forward_infer(
        &mut self,
        conv: ParamNode,
        bn: ParamNode,
        g: &ConvGeom,
        x: View,
        (_, y): (View, View),
        n: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<(), Infallible> {
        // With s = gamma / sqrt(var + eps): bn(conv(x; w) + b) = conv(x; w * s) + (b - mean) * s + beta.
        let a = self.a();
        let w = &self.params[conv.params.kernel()];
        let (gamma, beta, k) = bn.params.batchnorm();
        let (gamma, beta) = (&self.params[gamma], &self.params[beta]);
        let (mean, var) = (&self.running.0[k], &self.running.1[k]);
        let s: Vec<T> = gamma
            .iter()
            .zip(var)
            .map(|(g, v)| *g / (*v + super::r(epsilon)).sqrt())
            .collect();
        let folded: Vec<T> = w
            .chunks_exact(g.cout)
            .flat_map(|row| row.iter().zip(&s).map(|(w, s)| *w * *s))
            .collect();
        let bias: Vec<T> = (0..g.cout)
            .map(|c| {
                let b = conv.params.bias.map_or(T::zero(), |b| self.params[b][c]);
                (b - mean[c]) * s[c] + beta[c]
            })
            .collect();
        let epi = super::Epilogue {
            bias: Some(&bias),
            relu,
        };
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { conv::conv2d_forward(a, x, &folded, epi, a, y, g, n, &self.buf.ws) };
        Ok(())
    }

    fn conv2d_backward(
        &mut self,
        node: ParamNode,
        g: &ConvGeom,
        x: View,
        dy: View,
        dx: Option<Dst>,
        n: usize,
    ) -> Result<(), Infallible> {
        let (a, gp) = (self.a(), self.g());
        let kp = node.params.kernel();
        let dx = dx.map(|d| self.dst(d));
        let buf = &mut *self.buf;
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe {
            conv::conv2d_backward(
                a,
                x,
                &self.params[kp],
                gp,
                dy,
                dx,
                g,
                n,
                &mut buf.partials,
                &buf.ws,
            )
        };
        // One weight and bias gradient per image part, summed in part order.
        let (plen, parts) = (g.k() * g.cout + g.cout, super::parts(n));
        reduce_parts(&buf.partials, plen, 0, parts, &mut self.grads[kp]);
        if let Some(b) = node.params.bias {
            let off = g.k() * g.cout;
            reduce_parts(&buf.partials, plen, off, parts, &mut self.grads[b]);
        }
        Ok(())
    }

    fn batchnorm_forward_train(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        rows: usize,
        epsilon: f64,
        _momentum: f64,
        relu: bool,
    ) -> Result<(), Infallible> {
        let a = self.a();
        let (gamma, beta, k) = node.params.batchnorm();
        let buf = &mut *self.buf;
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe {
            norm::batchnorm_forward_train(
                a,
                x,
                a,
                y,
                rows,
                &self.params[gamma],
                &self.params[beta],
                epsilon,
                &mut buf.batch_mean[k],
                &mut buf.batch_var[k],
                &mut buf.inv_std[k],
                &mut buf.bn_scratch,
                &mut buf.bn_sums,
                relu,
            )
        };
        Ok(())
    }

    fn batchnorm_forward_infer(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        rows: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<(), Infallible> {
        let a = self.a();
        let (gamma, beta, k) = node.params.batchnorm();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe {
            norm::batchnorm_forward_infer(
                a,
                x,
                a,
                y,
                rows,
                &self.params[gamma],
                &self.params[beta],
                epsilon,
                &self.running.0[k],
                &self.running.1[k],
                &mut self.buf.inv_std[k],
                relu,
            )
        };
        Ok(())
    }

    fn batchnorm_backward(
        &mut self,
        node: ParamNode,
        x: View,
        _y: View,
        dy: View,
        dx: Option<Dst>,
        rows: usize,
        _epsilon: f64,
        relu: bool,
    ) -> Result<(), Infallible> {
        let (a, gp) = (self.a(), self.g());
        let dx = dx.map(|d| self.dst(d));
        let (gi, bi, k) = node.params.batchnorm();
        let (mut dgamma, mut dbeta) = (
            std::mem::take(&mut self.grads[gi]),
            std::mem::take(&mut self.grads[bi]),
        );
        let buf = &mut *self.buf;
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe {
            norm::batchnorm_backward(
                a,
                x,
                gp,
                dy,
                dx,
                rows,
                &self.params[gi],
                &buf.batch_mean[k],
                &buf.inv_std[k],
                &mut dgamma,
                &mut dbeta,
                &mut buf.bn_scratch,
                &mut buf.bn_sums,
                &mut buf.bn_coef,
                relu.then_some(&self.params[bi][..]),
            )
        };
        self.grads[gi] = dgamma;
        self.grads[bi] = dbeta;
        Ok(())
    }

    fn relu_forward(&mut self, x: View, y: View, rows: usize) -> Result<(), Infallible> {
        let a = self.a();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::relu_forward(a, x, a, y, rows) };
        Ok(())
    }

    fn relu_backward(&mut self, y: View, dy: View, dx: Dst, rows: usize) -> Result<(), Infallible> {
        let (a, gp, dx) = (self.a(), self.g(), self.dst(dx));
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::relu_backward(a, y, gp, dy, dx, rows) };
        Ok(())
    }

    fn elu_forward(&mut self, x: View, y: View, rows: usize, alpha: f64) -> Result<(), Infallible> {
        let a = self.a();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::elu_forward(a, x, a, y, rows, alpha) };
        Ok(())
    }

    fn elu_backward(
        &mut self,
        x: View,
        dy: View,
        dx: Dst,
        rows: usize,
        alpha: f64,
    ) -> Result<(), Infallible> {
        let (a, gp, dx) = (self.a(), self.g(), self.dst(dx));
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::elu_backward(a, x, gp, dy, dx, rows, alpha) };
        Ok(())
    }

    fn maxpool_forward(
        &mut self,
        x: View,
        y: View,
        g: &PoolGeom,
        n: usize,
    ) -> Result<(), Infallible> {
        let a = self.a();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { pool::maxpool_forward(a, x, a, y, g, n) };
        Ok(())
    }

    fn maxpool_backward(
        &mut self,
        x: View,
        y: View,
        dy: View,
        dx: Dst,
        g: &PoolGeom,
        n: usize,
    ) -> Result<(), Infallible> {
        let (a, gp, dx) = (self.a(), self.g(), self.dst(dx));
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { pool::maxpool_backward(a, x, a, y, gp, dy, dx, g, n, &self.buf.ws) };
        Ok(())
    }

    fn avgpool_forward(
        &mut self,
        x: View,
        y: View,
        g: &PoolGeom,
        n: usize,
    ) -> Result<(), Infallible> {
        let a = self.a();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { pool::avgpool_forward(a, x, a, y, g, n) };
        Ok(())
    }

    fn avgpool_backward(
        &mut self,
        dy: View,
        dx: Dst,
        g: &PoolGeom,
        n: usize,
    ) -> Result<(), Infallible> {
        let (gp, dx) = (self.g(), self.dst(dx));
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { pool::avgpool_backward(gp, dy, dx, g, n) };
        Ok(())
    }

    fn global_avgpool_forward(&mut self, x: View, y: View, n: usize) -> Result<(), Infallible> {
        let a = self.a();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { pool::global_avgpool_forward(a, x, a, y, n) };
        Ok(())
    }

    fn global_avgpool_backward(&mut self, dy: View, dx: Dst, n: usize) -> Result<(), Infallible> {
        let (gp, dx) = (self.g(), self.dst(dx));
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { pool::global_avgpool_backward(gp, dy, dx, n) };
        Ok(())
    }

    fn dropout_forward(
        &mut self,
        x: View,
        mask: usize,
        y: View,
        rows: usize,
    ) -> Result<(), Infallible> {
        let a = self.a();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::dropout_forward(a, x, Ptr(a.0.wrapping_add(mask)), a, y, rows) };
        Ok(())
    }

    fn dropout_backward(
        &mut self,
        mask: usize,
        dy: View,
        dx: Dst,
        rows: usize,
    ) -> Result<(), Infallible> {
        let (a, gp, dx) = (self.a(), self.g(), self.dst(dx));
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::dropout_backward(Ptr(a.0.wrapping_add(mask)), gp, dy, dx, rows) };
        Ok(())
    }

    fn flatten_forward(&mut self, x: View, y: View, n: usize) -> Result<(), Infallible> {
        let a = self.a();
        let y = Out {
            ptr: a,
            dst: Dst { v: y, acc: false },
        };
        // SAFETY: flatten's output is its own buffer (flatten never aliases).
        unsafe { ew::reshape_rows(a, x, y, n) };
        Ok(())
    }

    fn flatten_backward(&mut self, dy: View, dx: Dst, n: usize) -> Result<(), Infallible> {
        let (gp, dx) = (self.g(), self.dst(dx));
        // SAFETY: flatten's gradient and its input's are distinct buffers.
        unsafe { ew::reshape_rows(gp, dy, dx, n) };
        Ok(())
    }

    fn dense_forward(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        n: usize,
    ) -> Result<(), Infallible> {
        let a = self.a();
        let w = &self.params[node.params.kernel()];
        let b = node.params.bias.map(|b| self.params[b].as_slice());
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { dense::dense_forward(a, x, w, b, a, y, n) };
        Ok(())
    }

    fn dense_backward(
        &mut self,
        node: ParamNode,
        x: View,
        dy: View,
        dx: Option<Dst>,
        n: usize,
    ) -> Result<(), Infallible> {
        let (a, gp) = (self.a(), self.g());
        let dx = dx.map(|d| self.dst(d));
        let kp = node.params.kernel();
        let mut dw = std::mem::take(&mut self.grads[kp]);
        let mut db = node.params.bias.map(|b| std::mem::take(&mut self.grads[b]));
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe {
            dense::dense_backward(
                a,
                x,
                &self.params[kp],
                gp,
                dy,
                dx,
                n,
                &mut dw,
                db.as_deref_mut(),
            )
        };
        self.grads[kp] = dw;
        if let (Some(b), Some(db)) = (node.params.bias, db) {
            self.grads[b] = db;
        }
        Ok(())
    }

    fn add_forward(&mut self, a: View, b: View, y: View, rows: usize) -> Result<(), Infallible> {
        let p = self.a();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::add_forward((p, a), (p, b), (p, y), rows) };
        Ok(())
    }

    fn copy_rows(
        &mut self,
        arena: Arena,
        src: View,
        dst: Dst,
        rows: usize,
    ) -> Result<(), Infallible> {
        let p = match arena {
            Arena::Act => self.a(),
            Arena::Grad => self.g(),
        };
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::copy_rows(p, src, Out { ptr: p, dst }, rows) };
        Ok(())
    }

    fn softmax_forward(&mut self, x: View, y: View, rows: usize) -> Result<(), Infallible> {
        let a = self.a();
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::softmax_forward(a, x, a, y, rows) };
        Ok(())
    }

    fn softmax_backward(
        &mut self,
        y: View,
        dy: View,
        dx: Dst,
        rows: usize,
    ) -> Result<(), Infallible> {
        let (a, gp, dx) = (self.a(), self.g(), self.dst(dx));
        // SAFETY: the walk hands views of this network's planned arenas, sized for the
        // batch; no other borrow of the arenas is alive while the kernel runs.
        unsafe { ew::softmax_backward(a, y, gp, dy, dx, rows) };
        Ok(())
    }
}
