//! The dfdx backend (dfdx 0.13, public API only), on the CPU or, built with the `cuda`
//! feature, on an NVIDIA GPU through dfdx's CUDA device. The code is the same for both:
//! it is generic over dfdx's `Device`.
//!
//! dfdx's own conv/pool ops need its `nightly` feature, so this module builds every layer
//! from public tensor ops on run-time shapes. Activations are matrices: an image batch
//! (N, H, W, C) is (N*H*W, C), a flat batch (N, F) is itself.
//! - conv: im2col by `gather` of rows (out-of-range taps read an extra zero row appended
//!   by `concat_along`), then `matmul` with the (kh*kw*cin, cout) kernel. A 1x1/stride-1
//!   conv is a plain `matmul`. (`gather`'s backward accumulates; `slice`'s would not.)
//! - max/avg pool: the same gathered windows, then `max`/`sum` over the window axis.
//! - batch norm, dropout, dense, concat, add: ops; dropout masks come from our own RNG.
//! - a tensor read by several layers is handed out as `retaped()` copies to all but the
//!   last reader, so its history stays on exactly one path to the loss.
//!
//! Parameters, running statistics and optimizer moments are plain vectors owned here, so
//! the full state can be saved and restored exactly.

use std::collections::HashMap;

use anyhow::{bail, Result};
use dfdx::prelude::*;

use super::native::shared::fill_dropout_masks;
use super::params::Role;
use super::{State, StepStats};
use crate::nn::graph::{pad_before, Graph, NodeInfo, Op, Padding, Shape as GShape};

type Tp<E, D> = OwnedTape<E, D>;
type M<E, D> = Tensor<(usize, usize), E, D, Tp<E, D>>;
type Leaves<E, D> = Vec<Tensor<(usize, usize), E, D>>;
/// Per batch-norm layer: the batch mean and (biased) variance.
type BatchStats<E> = Vec<(Vec<E>, Vec<E>)>;

struct Slot {
    name: String,
    /// (rows, cols) as used in the matrix formulation.
    mat: (usize, usize),
    l2: f64,
}

#[derive(Default, Clone, Copy)]
struct DfdxParams {
    kernel: Option<usize>,
    bias: Option<usize>,
    gamma: Option<usize>,
    beta: Option<usize>,
    stats: Option<usize>,
}

/// The generic core: a graph with its parameters in element type `E` (f32 to train, f64
/// for gradient checks).
pub struct Net<E: Dtype, D: Device<E>> {
    graph: Graph,
    infos: Vec<NodeInfo>,
    /// Trainable parameters.
    pub params: Vec<Vec<E>>,
    slots: Vec<Slot>,
    node_params: Vec<DfdxParams>,
    bn_mean: Vec<Vec<E>>,
    bn_var: Vec<Vec<E>>,
    bn_names: Vec<String>,
    windows: HashMap<(usize, usize), Window<E, D>>,
    layout: super::params::Layout,
    dev: D,
    classes: usize,
    /// With `PIPE_PROFILE=1`: seconds per phase and per op kind (the device is
    /// synchronised after each, so this slows training down).
    profile: Option<std::collections::BTreeMap<String, f64>>,
}

/// Gather indices and average-pool weights of one window op for one batch size, kept on
/// the device: rebuilding and uploading them every step dominated GPU step time.
struct Window<E: Dtype, D: Device<E>> {
    idx: Tensor<(usize,), usize, D>,
    inv_count: Tensor<(usize,), E, D>,
}

fn e<E: Dtype>(x: f64) -> E {
    E::from_f64(x).expect("f64 converts to the element type")
}

/// Row indices of every window tap, `pad` for taps outside the input; and 1/(valid taps)
/// per output position.
fn window_rows(
    n: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    padding: Padding,
) -> (Vec<usize>, Vec<f64>) {
    let pad_row = n * h * w;
    let pt = pad_before(h, kh, sh, padding) as isize;
    let pl = pad_before(w, kw, sw, padding) as isize;
    let mut idx = Vec::with_capacity(n * oh * ow * kh * kw);
    let mut inv = Vec::with_capacity(n * oh * ow);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut valid = 0;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * sh + ky) as isize - pt;
                        let ix = (ox * sw + kx) as isize - pl;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            idx.push((b * h + iy as usize) * w + ix as usize);
                            valid += 1;
                        } else {
                            idx.push(pad_row);
                        }
                    }
                }
                inv.push(1.0 / valid.max(1) as f64);
            }
        }
    }
    (idx, inv)
}

impl<E: Dtype, D: Device<E> + Synchronize> Net<E, D> {
    /// Build with Glorot-uniform kernels (Keras' default), zero biases, unit gammas, on `dev`.
    pub fn new(graph: &Graph, seed: u64, dev: D) -> Result<Self> {
        let infos = graph.infer()?;
        let classes = match infos.last().map(|i| i.shape) {
            Some(GShape::Flat(k)) => k,
            other => bail!("the network must end in a flat (classes) output, got {other:?}"),
        };
        let mut net = Net {
            graph: graph.clone(),
            infos: infos.clone(),
            params: Vec::new(),
            slots: Vec::new(),
            node_params: vec![DfdxParams::default(); graph.nodes.len()],
            bn_mean: Vec::new(),
            bn_var: Vec::new(),
            bn_names: Vec::new(),
            windows: HashMap::new(),
            layout: super::params::Layout::default(),
            dev,
            classes,
            profile: std::env::var("PIPE_PROFILE")
                .ok()
                .map(|_| Default::default()),
        };
        let layout = super::params::layout(graph, &infos);
        let values = super::params::init_values(&layout, seed);
        for (spec, v) in layout.params.iter().zip(values) {
            let cols = *spec.shape.last().expect("parameters have a shape");
            let mat = match spec.role {
                Role::Kernel => (spec.len() / cols, cols),
                _ => (1, cols),
            };
            net.params.push(v.into_iter().map(e::<E>).collect());
            net.slots.push(Slot {
                name: spec.name.clone(),
                mat,
                l2: spec.l2,
            });
            let k = net.params.len() - 1;
            let np = &mut net.node_params[spec.node];
            match spec.role {
                Role::Kernel => np.kernel = Some(k),
                Role::Bias => np.bias = Some(k),
                Role::Gamma => np.gamma = Some(k),
                Role::Beta => np.beta = Some(k),
            }
        }
        for bn in &layout.bns {
            net.bn_mean.push(vec![e(0.0); bn.channels]);
            net.bn_var.push(vec![e(1.0); bn.channels]);
            net.bn_names.push(bn.name.clone());
            net.node_params[bn.node].stats = Some(net.bn_mean.len() - 1);
        }
        net.layout = layout;
        Ok(net)
    }

    /// Class count.
    pub fn classes(&self) -> usize {
        self.classes
    }

    fn window(&mut self, node: usize, n: usize) -> &Window<E, D> {
        let (graph, infos, dev) = (&self.graph, &self.infos, &self.dev);
        self.windows.entry((node, n)).or_insert_with(|| {
            let nd = &graph.nodes[node];
            let GShape::Image(h, w, _) = infos[nd.inputs[0]].shape else {
                unreachable!("shape inference checked window ops")
            };
            let GShape::Image(oh, ow, _) = infos[node].shape else {
                unreachable!("shape inference checked window ops")
            };
            let (k, s, p) = nd.op.window().expect("only window ops have windows");
            let (idx, inv) = window_rows(n, (h, w), (oh, ow), k, s, p);
            let (len, rows) = (idx.len(), inv.len());
            Window {
                idx: dev.tensor_from_vec(idx, (len,)),
                inv_count: dev.tensor_from_vec(inv.into_iter().map(e).collect(), (rows,)),
            }
        })
    }

    /// Forward pass. Returns the logits (or, when the graph's last op is not softmax, its
    /// output), the parameter leaves, and each batch-norm layer's batch mean and variance.
    fn forward(
        &mut self,
        x: Vec<E>,
        n: usize,
        train: bool,
        dropout_seed: u64,
    ) -> (M<E, D>, Leaves<E, D>, BatchStats<E>) {
        let dev = self.dev.clone();
        let t_up = std::time::Instant::now();
        let leaves: Leaves<E, D> = self
            .params
            .iter()
            .zip(&self.slots)
            .map(|(p, s)| dev.tensor_from_vec(p.clone(), s.mat))
            .collect();
        if let Some(p) = self.profile.as_mut() {
            dev.synchronize();
            *p.entry("parameters to device".into()).or_default() += t_up.elapsed().as_secs_f64();
        }
        let mut uses = vec![0usize; self.graph.nodes.len()];
        for nd in &self.graph.nodes {
            for &i in &nd.inputs {
                uses[i] += 1;
            }
        }
        let last = self.graph.nodes.len() - 1;
        let mut acts: Vec<Option<M<E, D>>> = (0..self.graph.nodes.len()).map(|_| None).collect();
        let mut stats = Vec::new();
        // This batch's dropout masks (the native backend's, value for value): node i's
        // at masks[mask_at[i]..] (the length of its output).
        let mut mask_at = vec![0; self.graph.nodes.len()];
        let mut masks: Vec<E> = Vec::new();
        if train {
            let total = (self.graph.nodes.iter().zip(&self.infos))
                .filter(|(nd, _)| matches!(nd.op, Op::Dropout { .. }))
                .map(|(_, info)| n * info.shape.numel())
                .sum();
            masks = vec![e::<E>(0.0); total];
            let mut next = 0;
            let (graph, infos) = (&self.graph, &self.infos);
            fill_dropout_masks(graph, infos, n, dropout_seed, &mut masks, |i, len| {
                mask_at[i] = next;
                next += len;
                mask_at[i]
            });
        }
        for i in 0..self.graph.nodes.len() {
            let node = self.graph.nodes[i].clone();
            let mut take = |j: usize, acts: &mut Vec<Option<M<E, D>>>| -> M<E, D> {
                uses[j] -= 1;
                if uses[j] == 0 {
                    acts[j].take().expect("activation consumed once")
                } else {
                    acts[j]
                        .as_ref()
                        .expect("activation present")
                        .retaped::<Tp<E, D>>()
                }
            };
            let rows = |s: GShape| match s {
                GShape::Image(h, w, _) => n * h * w,
                GShape::Flat(_) => n,
            };
            let cols = |s: GShape| match s {
                GShape::Image(_, _, c) => c,
                GShape::Flat(f) => f,
            };
            let out_shape = self.infos[i].shape;
            let (r_out, c_out) = (rows(out_shape), cols(out_shape));
            let np = self.node_params[i];
            let leaf = |k: usize| leaves[k].retaped::<Tp<E, D>>();
            let bias_add = |y: M<E, D>, b: Option<usize>| -> M<E, D> {
                match b {
                    Some(b) => {
                        let bv = leaf(b).reshape_like(&(c_out,));
                        y + bv.broadcast_like::<(usize, usize), Axis<0>>(&(r_out, c_out))
                    }
                    None => y,
                }
            };
            let t_node = std::time::Instant::now();
            let out: M<E, D> = match &node.op {
                Op::Input { h, w, c } => dev
                    .tensor_from_vec(x.clone(), (n * h * w, *c))
                    .retaped::<Tp<E, D>>(),
                Op::Conv2d { kernel, stride, .. } => {
                    let xin = take(node.inputs[0], &mut acts);
                    let in_shape = self.infos[node.inputs[0]].shape;
                    let cin = cols(in_shape);
                    let cols_m = if *kernel == (1, 1) && *stride == (1, 1) {
                        xin
                    } else {
                        let idx = self.window(i, n).idx.clone();
                        let pad = dev.zeros_like(&(1usize, cin)).retaped::<Tp<E, D>>();
                        let padded = (xin, pad).concat_along(Axis::<0>);
                        let g: M<E, D> = padded.gather(idx);
                        g.reshape_like(&(r_out, kernel.0 * kernel.1 * cin))
                    };
                    if let Some(p) = self.profile.as_mut() {
                        dev.synchronize();
                        *p.entry("forward: conv2d im2col (concat + gather)".into())
                            .or_default() += t_node.elapsed().as_secs_f64();
                        *p.entry("forward: conv2d".into()).or_default() -=
                            t_node.elapsed().as_secs_f64();
                    }
                    let y = cols_m.matmul(leaf(np.kernel.expect("conv has a kernel")));
                    bias_add(y, np.bias)
                }
                Op::Dense { .. } => {
                    let xin = take(node.inputs[0], &mut acts);
                    let y = xin.matmul(leaf(np.kernel.expect("dense has a kernel")));
                    bias_add(y, np.bias)
                }
                Op::BatchNorm { epsilon, .. } => {
                    let xin = take(node.inputs[0], &mut acts);
                    let (r, c) = (r_out, c_out);
                    let s = np.stats.expect("bn has statistics");
                    let gamma = leaf(np.gamma.expect("bn gamma")).reshape_like(&(c,));
                    let beta = leaf(np.beta.expect("bn beta")).reshape_like(&(c,));
                    if train {
                        let mean = xin.retaped::<Tp<E, D>>().sum::<(usize,), Axis<0>>()
                            * e::<E>(1.0 / r as f64);
                        let mean_v = mean.as_vec();
                        let centered =
                            xin - mean.broadcast_like::<(usize, usize), Axis<0>>(&(r, c));
                        let var = centered
                            .retaped::<Tp<E, D>>()
                            .square()
                            .sum::<(usize,), Axis<0>>()
                            * e::<E>(1.0 / r as f64);
                        stats.push((mean_v, var.as_vec()));
                        let inv_std = (var + e::<E>(*epsilon)).sqrt().recip();
                        let xhat =
                            centered * inv_std.broadcast_like::<(usize, usize), Axis<0>>(&(r, c));
                        xhat * gamma.broadcast_like::<(usize, usize), Axis<0>>(&(r, c))
                            + beta.broadcast_like::<(usize, usize), Axis<0>>(&(r, c))
                    } else {
                        let rm: Vec<E> = self.bn_mean[s].clone();
                        let rv: Vec<E> = self.bn_var[s].clone();
                        let rm = dev.tensor_from_vec(rm, (c,));
                        let inv = dev.tensor_from_vec(rv, (c,)).retaped::<Tp<E, D>>();
                        let inv_std = (inv + e::<E>(*epsilon)).sqrt().recip();
                        let centered = xin - rm.broadcast_like::<(usize, usize), Axis<0>>(&(r, c));
                        let xhat =
                            centered * inv_std.broadcast_like::<(usize, usize), Axis<0>>(&(r, c));
                        xhat * gamma.broadcast_like::<(usize, usize), Axis<0>>(&(r, c))
                            + beta.broadcast_like::<(usize, usize), Axis<0>>(&(r, c))
                    }
                }
                Op::Relu => take(node.inputs[0], &mut acts).relu(),
                Op::Elu { alpha } => {
                    let xin = take(node.inputs[0], &mut acts);
                    let neg = xin.retaped::<Tp<E, D>>().negate().relu().negate();
                    let pos = xin.relu();
                    pos + (neg.exp() - e::<E>(1.0)) * e::<E>(*alpha)
                }
                Op::MaxPool { size, .. } | Op::AvgPool { size, .. } => {
                    let is_max = matches!(node.op, Op::MaxPool { .. });
                    let xin = take(node.inputs[0], &mut acts);
                    let c = c_out;
                    let k = size.0 * size.1;
                    let win = self.window(i, n);
                    let (idx, inv) = (win.idx.clone(), win.inv_count.clone());
                    let fill = if is_max { -1e30 } else { 0.0 };
                    let pad = dev
                        .tensor_from_vec(vec![e::<E>(fill); c], (1usize, c))
                        .retaped::<Tp<E, D>>();
                    let padded = (xin, pad).concat_along(Axis::<0>);
                    let g: M<E, D> = padded.gather(idx);
                    let g3 = g.reshape_like(&(r_out, k, c));
                    if is_max {
                        // dfdx's `max` sends the gradient to every tap equal to the
                        // maximum; windows that overlap (a 3x3/1 pool over a 3x3/2 pool's
                        // output) tie on the same source value and would count it twice.
                        // Weight the tied taps by 1/ties instead: the same value, and the
                        // gradient a single max would give.
                        let plain = g3.retaped::<NoneTape>();
                        let shape3 = (r_out, k, c);
                        let m = plain.clone().max::<(usize, usize), Axis<1>>();
                        let tied =
                            plain.eq(&m.broadcast_like::<(usize, usize, usize), Axis<1>>(&shape3));
                        let mask = tied.choose(dev.ones_like(&shape3), dev.zeros_like(&shape3));
                        let count = mask.clone().sum::<(usize, usize), Axis<1>>();
                        let weight =
                            mask / count.broadcast_like::<(usize, usize, usize), Axis<1>>(&shape3);
                        (g3 * weight).sum::<(usize, usize), Axis<1>>()
                    } else {
                        g3.sum::<(usize, usize), Axis<1>>()
                            * inv.broadcast_like::<(usize, usize), Axis<1>>(&(r_out, c))
                    }
                }
                Op::GlobalAvgPool => {
                    let xin = take(node.inputs[0], &mut acts);
                    let GShape::Image(h, w, c) = self.infos[node.inputs[0]].shape else {
                        unreachable!("checked by shape inference")
                    };
                    xin.reshape_like(&(n, h * w, c))
                        .mean::<(usize, usize), Axis<1>>()
                }
                Op::Dropout { rate } => {
                    let xin = take(node.inputs[0], &mut acts);
                    if train && *rate > 0.0 {
                        let mask = masks[mask_at[i]..mask_at[i] + r_out * c_out].to_vec();
                        xin * dev.tensor_from_vec(mask, (r_out, c_out))
                    } else {
                        xin
                    }
                }
                Op::Flatten => {
                    let xin = take(node.inputs[0], &mut acts);
                    xin.reshape_like(&(n, c_out))
                }
                Op::Concat => {
                    let mut it = node.inputs.clone().into_iter();
                    let first = it.next().expect("concat has inputs");
                    let mut acc = take(first, &mut acts);
                    for j in it {
                        let nxt = take(j, &mut acts);
                        acc = (acc, nxt).concat_along(Axis::<1>);
                    }
                    acc
                }
                Op::Add => {
                    let mut it = node.inputs.clone().into_iter();
                    let first = it.next().expect("add has inputs");
                    let mut acc = take(first, &mut acts);
                    for j in it {
                        let nxt = take(j, &mut acts);
                        acc = acc + nxt;
                    }
                    acc
                }
                Op::Softmax => {
                    let xin = take(node.inputs[0], &mut acts);
                    if i == last {
                        // The loss applies log-softmax to the logits; predict applies softmax.
                        xin
                    } else {
                        xin.softmax::<Axis<1>>()
                    }
                }
            };
            if let Some(p) = self.profile.as_mut() {
                self.dev.synchronize();
                *p.entry(format!("forward: {}", node.op.name())).or_default() +=
                    t_node.elapsed().as_secs_f64();
            }
            acts[i] = Some(out);
        }
        let out = acts[last].take().expect("the output was computed");
        (out, leaves, stats)
    }

    fn ends_in_softmax(&self) -> bool {
        matches!(self.graph.nodes.last().map(|n| &n.op), Some(Op::Softmax))
    }

    /// Loss (cross-entropy + L2) and the gradient of every parameter, in training mode.
    /// Also returns the logits and the batch-norm batch statistics.
    #[allow(clippy::type_complexity)]
    pub fn loss_and_grads(
        &mut self,
        x: Vec<E>,
        labels: &[i64],
        dropout_seed: u64,
    ) -> Result<(f64, f64, Vec<E>, Vec<Vec<E>>, Vec<(Vec<E>, Vec<E>)>)> {
        let n = labels.len();
        let k = self.classes;
        let mut onehot = vec![e::<E>(0.0); n * k];
        for (i, &l) in labels.iter().enumerate() {
            if l < 0 || l as usize >= k {
                bail!("label {l} out of range for a network with {k} classes");
            }
            onehot[i * k + l as usize] = e(1.0);
        }
        let (logits, leaves, stats) = self.forward(x, n, true, dropout_seed);
        let logits_v = logits.as_vec();
        let t_loss = std::time::Instant::now();
        let target = self.dev.tensor_from_vec(onehot, (n, k));
        let ce = cross_entropy_with_logits_loss(logits, target);
        let ce_v = ce.as_vec()[0].to_f64().unwrap_or(f64::NAN);
        let mut loss = ce;
        for (p, s) in self.slots.iter().enumerate() {
            if s.l2 > 0.0 {
                let len = s.mat.0 * s.mat.1;
                let reg = leaves[p]
                    .retaped::<Tp<E, D>>()
                    .reshape_like(&(len,))
                    .square()
                    .sum::<(), Axis<0>>();
                loss = loss + reg * e::<E>(s.l2);
            }
        }
        let total = loss.as_vec()[0].to_f64().unwrap_or(f64::NAN);
        let t_back = std::time::Instant::now();
        let grads = loss.backward();
        if self.profile.is_some() {
            self.dev.synchronize();
        }
        let t_down = std::time::Instant::now();
        let g = leaves.iter().map(|l| grads.get(l).as_vec()).collect();
        if let Some(p) = self.profile.as_mut() {
            *p.entry("loss (+ L2)".into()).or_default() += (t_back - t_loss).as_secs_f64();
            *p.entry("backward (all ops)".into()).or_default() += (t_down - t_back).as_secs_f64();
            *p.entry("gradients to host".into()).or_default() += t_down.elapsed().as_secs_f64();
        }
        Ok((ce_v, total, logits_v, g, stats))
    }

    /// Loss only (cross-entropy + L2), training mode, for finite differences.
    pub fn loss(&mut self, x: Vec<E>, labels: &[i64], dropout_seed: u64) -> Result<f64> {
        Ok(self.loss_and_grads(x, labels, dropout_seed)?.1)
    }

    /// Outputs in inference mode: probabilities if the graph ends in softmax.
    pub fn infer(&mut self, x: Vec<E>, n: usize) -> Vec<E> {
        let (out, _, _) = self.forward(x, n, false, 0);
        if self.ends_in_softmax() {
            out.softmax::<Axis<1>>().as_vec()
        } else {
            out.as_vec()
        }
    }

    /// Fold a training batch's statistics into the running ones (Keras: m*old + (1-m)*new;
    /// the variance is the unbiased batch variance).
    pub fn update_running_stats(&mut self, stats: &[(Vec<E>, Vec<E>)], rows: &[usize]) {
        let mut k = 0;
        for node in &self.graph.nodes {
            if let Op::BatchNorm { momentum, .. } = node.op {
                let (mean, var) = &stats[k];
                let r = rows[k] as f64;
                let unbias = if r > 1.0 { r / (r - 1.0) } else { 1.0 };
                for c in 0..mean.len() {
                    let m = self.bn_mean[k][c].to_f64().unwrap_or(0.0);
                    let v = self.bn_var[k][c].to_f64().unwrap_or(1.0);
                    let bm = mean[c].to_f64().unwrap_or(0.0);
                    let bv = var[c].to_f64().unwrap_or(0.0) * unbias;
                    self.bn_mean[k][c] = e(momentum * m + (1.0 - momentum) * bm);
                    self.bn_var[k][c] = e(momentum * v + (1.0 - momentum) * bv);
                }
                k += 1;
            }
        }
    }

    /// Rows each batch-norm layer normalises over, for a batch of `n`.
    pub fn bn_rows(&self, n: usize) -> Vec<usize> {
        self.graph
            .nodes
            .iter()
            .zip(&self.infos)
            .filter(|(nd, _)| matches!(nd.op, Op::BatchNorm { .. }))
            .map(|(_, i)| match i.shape {
                GShape::Image(h, w, _) => n * h * w,
                GShape::Flat(_) => n,
            })
            .collect()
    }

    /// Parameter names in slot order.
    pub fn param_names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }
}

/// Optimizer moments of one parameter.
#[derive(Clone, Default)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The f32 model behind [`super::Model`].
pub struct DfdxModel<D: Device<f32> + Synchronize> {
    net: Net<f32, D>,
    moments: Vec<Moments>,
    step: u64,
}

impl<D: Device<f32> + Synchronize> DfdxModel<D> {
    /// Build with fresh weights on `dev`.
    pub fn new(graph: &Graph, seed: u64, dev: D) -> Result<Self> {
        let net = Net::<f32, D>::new(graph, seed, dev)?;
        let moments = net
            .params
            .iter()
            .map(|p| Moments {
                m: vec![0.0; p.len()],
                v: vec![0.0; p.len()],
            })
            .collect();
        Ok(DfdxModel {
            net,
            moments,
            step: 0,
        })
    }
}

impl<D: Device<f32> + Synchronize> super::Model for DfdxModel<D> {
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[i64],
        opt: &super::Optimizer,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<StepStats> {
        if let super::Optimizer::Adamw { .. } = opt {
            bail!("the dfdx backend has no AdamW: train with backend = \"native\"");
        }
        if opt.weight_decay() != 0.0 {
            bail!(
                "the dfdx backend has no decoupled weight decay: train with backend = \"native\""
            );
        }
        let n = labels.len();
        let (ce, _, logits, grads, stats) =
            self.net
                .loss_and_grads(images.to_vec(), labels, dropout_seed)?;
        if !ce.is_finite() {
            bail!("the loss is {ce} (diverged); lower the learning rate");
        }
        let t_opt = std::time::Instant::now();
        let rows = self.net.bn_rows(n);
        self.net.update_running_stats(&stats, &rows);
        self.step += 1;
        let t = self.step as f64;
        for ((p, g), mo) in self
            .net
            .params
            .iter_mut()
            .zip(&grads)
            .zip(&mut self.moments)
        {
            opt.update(lr, t, p, g, &mut mo.m, &mut mo.v);
        }
        if let Some(p) = self.net.profile.as_mut() {
            *p.entry("optimizer + BN statistics (host)".into())
                .or_default() += t_opt.elapsed().as_secs_f64();
        }
        let k = self.net.classes();
        let correct = (0..n)
            .filter(|&i| super::predicts(&logits[i * k..(i + 1) * k], labels[i] as usize))
            .count();
        Ok(StepStats { loss: ce, correct })
    }

    fn predict(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.net.infer(images.to_vec(), n))
    }

    fn state(&self) -> State {
        self.net.layout.to_state(&super::params::StateParts {
            params: self.net.params.clone(),
            m: self.moments.iter().map(|mo| mo.m.clone()).collect(),
            v: self.moments.iter().map(|mo| mo.v.clone()).collect(),
            bn_mean: self.net.bn_mean.clone(),
            bn_var: self.net.bn_var.clone(),
            step: self.step,
            ema: None,
        })
    }

    fn load_state(&mut self, st: &State) -> Result<()> {
        let parts = self.net.layout.from_state(st)?;
        self.net.params = parts.params;
        self.moments = parts
            .m
            .into_iter()
            .zip(parts.v)
            .map(|(m, v)| Moments { m, v })
            .collect();
        self.net.bn_mean = parts.bn_mean;
        self.net.bn_var = parts.bn_var;
        self.step = parts.step;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "dfdx"
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

/// A network on the CPU (for gradient checks in f64).
pub type CpuNet<E> = Net<E, Cpu>;

/// A CPU network with fresh weights.
pub fn cpu_net<E: Dtype>(graph: &Graph, seed: u64) -> Result<CpuNet<E>>
where
    Cpu: Device<E>,
{
    Net::new(graph, seed, Cpu::seed_from_u64(seed))
}

/// Build an f32 model on the requested device.
pub fn build_model(
    graph: &Graph,
    seed: u64,
    device: super::DeviceKind,
) -> Result<Box<dyn super::Model>> {
    match device {
        super::DeviceKind::Cpu => Ok(Box::new(DfdxModel::new(
            graph,
            seed,
            Cpu::seed_from_u64(seed),
        )?)),
        #[cfg(feature = "dfdx-cuda")]
        super::DeviceKind::Cuda => {
            let dev = Cuda::try_seed_from_u64(seed)
                .map_err(|e| anyhow::anyhow!("cannot open the CUDA device: {e:?}"))?;
            Ok(Box::new(DfdxModel::new(graph, seed, dev)?))
        }
        #[cfg(not(feature = "dfdx-cuda"))]
        super::DeviceKind::Cuda => {
            bail!("backend = \"dfdx\" on device = \"cuda\" needs a pipe built with dfdx's CUDA device (`--features dfdx-cuda`, see scripts/build-cuda); backend = \"native\" needs only `--features cuda`")
        }
    }
}

/// Whether a CUDA device can be opened (always false without the `cuda` feature).
pub fn cuda_available() -> bool {
    #[cfg(feature = "dfdx-cuda")]
    {
        Cuda::try_seed_from_u64(0).is_ok()
    }
    #[cfg(not(feature = "dfdx-cuda"))]
    {
        false
    }
}
