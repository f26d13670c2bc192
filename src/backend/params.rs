//! The parameters a graph has, their names, shapes and initial values: one layout that
//! every backend builds from, so the same seed gives the same weights on each of them and
//! a state saved by one loads into another.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use anyhow::{bail, Result};

use super::{NamedTensor, State};
use crate::nn::graph::{Graph, NodeInfo, Op, Shape};

/// What a parameter is to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Conv kernel (kh, kw, cin, cout) or dense weights (in, out).
    Kernel,
    /// Bias of a conv or dense layer.
    Bias,
    /// Batch-norm scale.
    Gamma,
    /// Batch-norm shift.
    Beta,
}

/// One trainable tensor.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// `<node>/kernel`, `<node>/bias`, `<node>/gamma` or `<node>/beta`.
    pub name: String,
    /// Keras shape.
    pub shape: Vec<usize>,
    /// The node it belongs to.
    pub node: usize,
    /// Its role there.
    pub role: Role,
    /// L2 penalty (kernels only).
    pub l2: f64,
    /// Glorot limit for kernels, `None` for constants.
    glorot: Option<f64>,
    /// Initial value of a constant.
    constant: f64,
}

impl ParamSpec {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Running statistics of one batch-norm node.
#[derive(Debug, Clone)]
pub struct BnSpec {
    /// The node's name (`<name>/moving_mean`, `<name>/moving_variance`).
    pub name: String,
    /// The node.
    pub node: usize,
    /// Channels.
    pub channels: usize,
}

/// Every parameter and batch-norm statistic of a graph, in node order.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Trainable tensors.
    pub params: Vec<ParamSpec>,
    /// Batch-norm running statistics.
    pub bns: Vec<BnSpec>,
}

fn channels(s: Shape) -> usize {
    match s {
        Shape::Image(_, _, c) => c,
        Shape::Flat(n) => n,
    }
}

/// The layout of a graph whose shapes were inferred.
pub fn layout(graph: &Graph, infos: &[NodeInfo]) -> Layout {
    let mut out = Layout::default();
    for (i, node) in graph.nodes.iter().enumerate() {
        let cin = node.inputs.first().map(|&j| channels(infos[j].shape));
        let cin = cin.unwrap_or(0);
        let mut push = |suffix: &str, shape: Vec<usize>, role, l2, glorot, constant| {
            out.params.push(ParamSpec {
                name: format!("{}/{suffix}", node.name),
                shape,
                node: i,
                role,
                l2,
                glorot,
                constant,
            })
        };
        match &node.op {
            Op::Conv2d {
                filters,
                kernel: (kh, kw),
                bias,
                l2,
                ..
            } => {
                let (fan_in, fan_out) = (kh * kw * cin, kh * kw * filters);
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
                push(
                    "kernel",
                    vec![*kh, *kw, cin, *filters],
                    Role::Kernel,
                    *l2,
                    Some(limit),
                    0.0,
                );
                if *bias {
                    push("bias", vec![*filters], Role::Bias, 0.0, None, 0.0);
                }
            }
            Op::Dense { units, bias, l2 } => {
                let limit = (6.0 / (cin + units) as f64).sqrt();
                push(
                    "kernel",
                    vec![cin, *units],
                    Role::Kernel,
                    *l2,
                    Some(limit),
                    0.0,
                );
                if *bias {
                    push("bias", vec![*units], Role::Bias, 0.0, None, 0.0);
                }
            }
            Op::BatchNorm { .. } => {
                push("gamma", vec![cin], Role::Gamma, 0.0, None, 1.0);
                push("beta", vec![cin], Role::Beta, 0.0, None, 0.0);
                out.bns.push(BnSpec {
                    name: node.name.clone(),
                    node: i,
                    channels: cin,
                });
            }
            _ => {}
        }
    }
    out
}

/// Initial values: Glorot-uniform kernels (Keras' default), zero biases and betas, unit
/// gammas; the draws come from one ChaCha8 stream seeded with `seed`, in layout order.
pub fn init_values(layout: &Layout, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    layout
        .params
        .iter()
        .map(|p| match p.glorot {
            Some(limit) => (0..p.len())
                .map(|_| rng.random_range(-limit..limit))
                .collect(),
            None => vec![p.constant; p.len()],
        })
        .collect()
}

/// Everything a model's state holds, in layout order: the values every backend keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateParts {
    /// Trainable tensors.
    pub params: Vec<Vec<f32>>,
    /// Optimizer first moments (SGD: the velocity).
    pub m: Vec<Vec<f32>>,
    /// Optimizer second moments.
    pub v: Vec<Vec<f32>>,
    /// Batch-norm running means.
    pub bn_mean: Vec<Vec<f32>>,
    /// Batch-norm running variances.
    pub bn_var: Vec<Vec<f32>>,
    /// Optimizer steps taken.
    pub step: u64,
    /// The moving average of the weights and statistics, when one is kept.
    pub ema: Option<Ema>,
}

/// An exponential moving average of a model's weights and batch-norm statistics, in the
/// layout's order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ema {
    /// Trainable tensors.
    pub params: Vec<Vec<f32>>,
    /// Batch-norm running means.
    pub bn_mean: Vec<Vec<f32>>,
    /// Batch-norm running variances.
    pub bn_var: Vec<Vec<f32>>,
}

impl Ema {
    /// `ema = decay * ema + (1 - decay) * current` for every value, in f32 as
    /// `torch.optim.swa_utils.get_ema_multi_avg_fn` does it (`lerp` towards the current
    /// value by `1 - decay`).
    pub fn update(
        &mut self,
        decay: f64,
        params: &[Vec<f32>],
        bn_mean: &[Vec<f32>],
        bn_var: &[Vec<f32>],
    ) {
        use rayon::prelude::*;
        let w = (1.0 - decay) as f32;
        let pairs: Vec<(&mut Vec<f32>, &Vec<f32>)> = self
            .params
            .iter_mut()
            .zip(params)
            .chain(self.bn_mean.iter_mut().zip(bn_mean))
            .chain(self.bn_var.iter_mut().zip(bn_var))
            .collect();
        // Element-wise, so the same values on any number of threads.
        pairs.into_par_iter().for_each(|(e, p)| {
            e.par_chunks_mut(1 << 14)
                .zip(p.par_chunks(1 << 14))
                .for_each(|(ec, pc)| {
                    for (a, b) in ec.iter_mut().zip(pc) {
                        *a += w * (*b - *a);
                    }
                })
        });
    }
}

impl Layout {
    /// The named tensors of a state (the checkpoint format every backend shares):
    /// `<param>`, `opt/<param>/m`, `opt/<param>/v`, `<bn>/moving_mean`,
    /// `<bn>/moving_variance`.
    pub fn to_state(&self, parts: &StateParts) -> State {
        let mut st = State {
            step: parts.step,
            ..Default::default()
        };
        let t = |shape: &[usize], data: &Vec<f32>| NamedTensor {
            shape: shape.to_vec(),
            data: data.clone(),
        };
        for (k, spec) in self.params.iter().enumerate() {
            st.tensors
                .insert(spec.name.clone(), t(&spec.shape, &parts.params[k]));
            st.tensors
                .insert(format!("opt/{}/m", spec.name), t(&spec.shape, &parts.m[k]));
            st.tensors
                .insert(format!("opt/{}/v", spec.name), t(&spec.shape, &parts.v[k]));
        }
        for (k, bn) in self.bns.iter().enumerate() {
            st.tensors.insert(
                format!("{}/moving_mean", bn.name),
                t(&[bn.channels], &parts.bn_mean[k]),
            );
            st.tensors.insert(
                format!("{}/moving_variance", bn.name),
                t(&[bn.channels], &parts.bn_var[k]),
            );
        }
        if let Some(e) = &parts.ema {
            let ema = State::EMA;
            for (k, spec) in self.params.iter().enumerate() {
                st.tensors
                    .insert(format!("{ema}{}", spec.name), t(&spec.shape, &e.params[k]));
            }
            for (k, bn) in self.bns.iter().enumerate() {
                st.tensors.insert(
                    format!("{ema}{}/moving_mean", bn.name),
                    t(&[bn.channels], &e.bn_mean[k]),
                );
                st.tensors.insert(
                    format!("{ema}{}/moving_variance", bn.name),
                    t(&[bn.channels], &e.bn_var[k]),
                );
            }
        }
        st
    }

    /// Read a state back (from any backend); a missing tensor or a wrong size is an error
    /// naming it.
    pub fn from_state(&self, st: &State) -> Result<StateParts> {
        let get = |name: &str, len: usize| -> Result<Vec<f32>> {
            let t = st
                .tensors
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("checkpoint has no tensor `{name}`"))?;
            if t.data.len() != len {
                bail!(
                    "checkpoint tensor `{name}` has {} values, the network needs {len}",
                    t.data.len()
                );
            }
            Ok(t.data.clone())
        };
        let mut parts = StateParts {
            step: st.step,
            ..Default::default()
        };
        for spec in &self.params {
            let len = spec.len();
            parts.params.push(get(&spec.name, len)?);
            parts.m.push(get(&format!("opt/{}/m", spec.name), len)?);
            parts.v.push(get(&format!("opt/{}/v", spec.name), len)?);
        }
        for bn in &self.bns {
            parts
                .bn_mean
                .push(get(&format!("{}/moving_mean", bn.name), bn.channels)?);
            parts
                .bn_var
                .push(get(&format!("{}/moving_variance", bn.name), bn.channels)?);
        }
        if st.has_ema() {
            let ema = State::EMA;
            let mut e = Ema::default();
            for spec in &self.params {
                e.params
                    .push(get(&format!("{ema}{}", spec.name), spec.len())?);
            }
            for bn in &self.bns {
                e.bn_mean
                    .push(get(&format!("{ema}{}/moving_mean", bn.name), bn.channels)?);
                e.bn_var.push(get(
                    &format!("{ema}{}/moving_variance", bn.name),
                    bn.channels,
                )?);
            }
            parts.ema = Some(e);
        }
        Ok(parts)
    }
}
