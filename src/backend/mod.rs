//! The training backend interface: build a model from an expanded graph, take a training
//! step, predict, and save/load the full state as named tensors.
//!
//! Stages and the engine use only this module's types. Two implementations sit behind
//! it: `native` (our own kernels, the default) and `dfdx_backend` (dfdx 0.13 through its
//! public API, CPU or CUDA). Both build from the same parameter layout (`params`), so the
//! same seed gives the same weights and a state moves between them; the tests check each
//! against the other.

pub mod dfdx_backend;
pub mod native;
pub mod params;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::nn::graph::Graph;

/// Optimizer settings (Keras semantics for SGD and Adam; PyTorch's for AdamW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    /// SGD with optional (Nesterov) momentum: v = m*v - lr*g; w += v.
    Sgd {
        /// Momentum.
        momentum: f64,
        /// Nesterov update.
        nesterov: bool,
        /// Decoupled weight decay (SGDW): `w -= lr * weight_decay * w` before the step.
        #[serde(default, skip_serializing_if = "is_zero")]
        weight_decay: f64,
    },
    /// Adam: bias-corrected moments, eps added to sqrt(v).
    Adam {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Added to sqrt(v).
        epsilon: f64,
    },
    /// AdamW (`torch.optim.AdamW`): `w -= lr * weight_decay * w`, then Adam with eps added
    /// to the bias-corrected sqrt(v).
    Adamw {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Added to sqrt(v / (1 - beta2^t)).
        epsilon: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Optimizer {
    /// The same optimizer with its momentum (SGD) or beta1 (Adam, AdamW) set to `m`: what
    /// a one-cycle schedule changes at each step.
    pub fn with_momentum(&self, m: f64) -> Optimizer {
        let mut o = self.clone();
        match &mut o {
            Optimizer::Sgd { momentum, .. } => *momentum = m,
            Optimizer::Adam { beta1, .. } | Optimizer::Adamw { beta1, .. } => *beta1 = m,
        }
        o
    }

    /// Its momentum (SGD) or beta1 (Adam, AdamW).
    pub fn momentum(&self) -> f64 {
        match *self {
            Optimizer::Sgd { momentum, .. } => momentum,
            Optimizer::Adam { beta1, .. } | Optimizer::Adamw { beta1, .. } => beta1,
        }
    }

    /// Its decoupled weight decay (0 when none).
    pub fn weight_decay(&self) -> f64 {
        match *self {
            Optimizer::Sgd { weight_decay, .. } | Optimizer::Adamw { weight_decay, .. } => {
                weight_decay
            }
            Optimizer::Adam { .. } => 0.0,
        }
    }

    /// Update one parameter tensor `p` from its gradient `g` and its moments `m`, `v`
    /// (SGD: `m` is the velocity), at learning rate `lr` on step `t` (from 1). Both
    /// backends call this, so their updates are the same arithmetic.
    pub fn update(&self, lr: f64, t: f64, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let decay = self.weight_decay();
        if decay != 0.0 {
            let keep = (1.0 - lr * decay) as f32;
            p.iter_mut().for_each(|w| *w *= keep);
        }
        match *self {
            Optimizer::Sgd {
                momentum, nesterov, ..
            } => {
                let (mo, lr) = (momentum as f32, lr as f32);
                for i in 0..p.len() {
                    let vel = mo * m[i] - lr * g[i];
                    m[i] = vel;
                    if nesterov {
                        p[i] += mo * vel - lr * g[i];
                    } else {
                        p[i] += vel;
                    }
                }
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let lr_t = (lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t))) as f32;
                let (b1, b2, eps) = (beta1 as f32, beta2 as f32, epsilon as f32);
                for i in 0..p.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] -= lr_t * m[i] / (v[i].sqrt() + eps);
                }
            }
            Optimizer::Adamw {
                beta1,
                beta2,
                epsilon,
                ..
            } => {
                // As torch.optim.AdamW's single-tensor step does it, in f32.
                let step = (lr / (1.0 - beta1.powf(t))) as f32;
                let bc2_sqrt = ((1.0 - beta2.powf(t)).sqrt()) as f32;
                let (b2, eps) = (beta2 as f32, epsilon as f32);
                let (w1, w2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
                for i in 0..p.len() {
                    m[i] += w1 * (g[i] - m[i]);
                    v[i] = v[i] * b2 + g[i] * g[i] * w2;
                    p[i] -= step * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
                }
            }
        }
    }
}

/// What a training step's loss compares the predictions with: each example's label,
/// optionally a second label mixed in (mixup, CutMix) and label smoothing. The target
/// distribution of example `i` over `k` classes is
/// `(1 - smoothing) * (lambda * onehot(labels[i]) + (1 - lambda) * onehot(other[i])) +
/// smoothing / k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets<'a> {
    /// The labels.
    pub labels: &'a [i64],
    /// The mixed-in labels and the weight `lambda` of `labels`.
    pub mix: Option<(&'a [i64], f64)>,
    /// Label smoothing ε.
    pub smoothing: f64,
}

impl<'a> Targets<'a> {
    /// Integer labels alone (plain cross-entropy).
    pub fn plain(labels: &'a [i64]) -> Self {
        Targets {
            labels,
            mix: None,
            smoothing: 0.0,
        }
    }

    /// Whether they are plain labels.
    pub fn is_plain(&self) -> bool {
        self.mix.is_none() && self.smoothing == 0.0
    }

    /// Every label (both sets) is in `0..k`: else the first that is not.
    pub fn check(&self, k: usize) -> Result<()> {
        let other = self.mix.map(|(o, _)| o).unwrap_or(&[]);
        if let Some(&l) = self
            .labels
            .iter()
            .chain(other)
            .find(|&&l| l < 0 || l as usize >= k)
        {
            anyhow::bail!("label {l} out of range for a network with {k} classes");
        }
        if let Some((o, _)) = self.mix {
            if o.len() != self.labels.len() {
                anyhow::bail!(
                    "{} mixed-in labels for {} examples",
                    o.len(),
                    self.labels.len()
                );
            }
        }
        Ok(())
    }

    /// The label with the larger weight in row `r` (its own unless mixed below half):
    /// what a prediction counts as correct against.
    pub fn dominant(&self, r: usize) -> i64 {
        match self.mix {
            Some((o, lambda)) if lambda < 0.5 => o[r],
            _ => self.labels[r],
        }
    }

    /// The target weights of row `r`: (class, weight) pairs over the one-hot part, and
    /// the weight every class gets from smoothing.
    pub fn row(&self, r: usize, k: usize) -> ([(usize, f64); 2], f64) {
        let keep = 1.0 - self.smoothing;
        let base = self.smoothing / k as f64;
        let a = self.labels[r] as usize;
        match self.mix {
            Some((o, lambda)) => (
                [(a, keep * lambda), (o[r] as usize, keep * (1.0 - lambda))],
                base,
            ),
            None => ([(a, keep), (a, 0.0)], base),
        }
    }
}

/// What one training step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch (without the L2 term), against the step's
    /// targets.
    pub loss: f64,
    /// Examples whose arg-max prediction equals the label (a mixed example's: the one
    /// with the larger weight).
    pub correct: usize,
}

/// A tensor of the state: shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Shape (Keras layout: conv kernels are (kh, kw, cin, cout)).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// The full state of a model: weights, batch-norm running statistics, optimizer moments
/// and step count. Names: `<node>/kernel`, `<node>/bias`, `<node>/gamma`, `<node>/beta`,
/// `<node>/moving_mean`, `<node>/moving_variance`; optimizer `opt/<param>/m`, `opt/<param>/v`;
/// the weights' moving average (`ema`), `ema/<name>` for each weight and statistic.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Every tensor by name.
    pub tensors: BTreeMap<String, NamedTensor>,
    /// Optimizer steps taken.
    pub step: u64,
}

impl State {
    /// Prefix of the moving average's tensors.
    pub const EMA: &'static str = "ema/";

    /// The weight or statistic that tensor `name` averages, when it is part of the moving
    /// average: `ema/<node>/<what>`. A node may itself be named `ema` (its tensors are
    /// `ema/<what>`, with no second `/`), so the rest must hold a `/` too.
    pub fn ema_of(name: &str) -> Option<&str> {
        name.strip_prefix(Self::EMA)
            .filter(|rest| rest.contains('/'))
    }

    /// Whether it holds a moving average of the weights.
    pub fn has_ema(&self) -> bool {
        self.tensors.keys().any(|k| Self::ema_of(k).is_some())
    }

    /// The state a model is evaluated, exported and served with: the moving average of
    /// the weights in their place when there is one (without its `ema/` copies).
    pub fn for_inference(mut self) -> State {
        let ema: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| Self::ema_of(k).is_some())
            .cloned()
            .collect();
        for k in ema {
            let t = self.tensors.remove(&k).expect("listed");
            let of = Self::ema_of(&k).expect("filtered").to_string();
            self.tensors.insert(of, t);
        }
        self
    }
}

/// A model being trained or evaluated.
pub trait Model {
    /// One optimizer step on a batch of `n` images (NHWC, already normalised) with integer
    /// labels. `dropout_seed` makes the dropout masks reproducible.
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[i64],
        opt: &Optimizer,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<StepStats>;

    /// [`Model::train_step`] against soft targets (label smoothing, mixup, CutMix). By
    /// default only plain labels: a backend that has no soft-target loss says so.
    fn train_step_targets(
        &mut self,
        images: &[f32],
        targets: &Targets<'_>,
        opt: &Optimizer,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<StepStats> {
        if !targets.is_plain() {
            anyhow::bail!(
                "the {} backend has no soft-target loss (label_smoothing, mixup, cutmix): train with backend = \"native\"",
                self.name()
            );
        }
        self.train_step(images, targets.labels, opt, lr, dropout_seed)
    }

    /// Fold the weights and batch-norm statistics into their exponential moving average
    /// (`ema = decay * ema + (1 - decay) * current`; the first call copies them, as
    /// `torch.optim.swa_utils.AveragedModel` does). The average is part of the state
    /// (`ema/<name>`).
    fn ema_update(&mut self, decay: f64) -> Result<()> {
        let _ = decay;
        anyhow::bail!(
            "the {} backend keeps no moving average of the weights (ema): train with backend = \"native\"",
            self.name()
        )
    }

    /// Exchange the weights and statistics with their moving average (a second call
    /// swaps them back); an error when there is none yet.
    fn swap_ema(&mut self) -> Result<()> {
        anyhow::bail!(
            "the {} backend keeps no moving average of the weights",
            self.name()
        )
    }

    /// The backend's name, for messages.
    fn name(&self) -> &'static str;

    /// Class probabilities (N x classes) in inference mode (running statistics, no dropout).
    fn predict(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>>;

    /// The full state.
    fn state(&self) -> State;

    /// Restore a full state saved by [`Model::state`] (from this backend or another).
    fn load_state(&mut self, state: &State) -> Result<()>;

    /// Number of classes the model outputs.
    fn classes(&self) -> usize;

    /// Loss and accuracy kept on the device: `(summed cross-entropy, correct)` over the
    /// steps since the last call, after which they restart from zero. `None` for backends
    /// whose [`Model::train_step`] returns them per step (then its `StepStats` hold them;
    /// otherwise its `loss` is NaN). Reading waits for the device, so callers read once
    /// per progress tick, not per step. Errors when the loss has diverged.
    fn take_stats(&mut self) -> Result<Option<(f64, usize)>> {
        Ok(None)
    }

    /// What the model has to say since it was last asked (a CUDA graph that could not be
    /// captured, say): lines for whoever watches the run. A model prints nothing itself.
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// Bytes of device memory the model holds (GPU models only).
    fn device_bytes(&self) -> Option<usize> {
        None
    }

    /// Seconds spent per phase and op kind, when profiling (`PIPE_PROFILE=1`).
    fn profile(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
}

pub use crate::manifest::{BackendKind, DeviceKind};

/// What training a network needs in memory, estimated from its graph before anything is
/// allocated (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights, their gradients and the optimizer's two moments (4 floats a parameter).
    pub parameters: u64,
    /// The planned activation and gradient arenas at the batch size (the native plan;
    /// dfdx's tape keeps about twice that).
    pub activations: u64,
}

impl MemoryEstimate {
    /// Everything.
    pub fn total(&self) -> u64 {
        self.parameters.saturating_add(self.activations)
    }
}

/// Estimate what training `graph` at batch `batch` with `backend` needs; `None` when it is
/// too large even to count (more than 2^64 bytes).
pub fn training_memory(
    graph: &Graph,
    batch: usize,
    backend: BackendKind,
) -> Option<MemoryEstimate> {
    let infos = graph.infer().ok()?;
    let t = crate::nn::graph::totals(&infos);
    let parameters = (t.trainable as u64)
        .checked_add(t.non_trainable as u64)?
        .checked_mul(16)?;
    // Every node's values at the batch size, twice (activation and gradient): an upper
    // bound that must count before the planner, which shares buffers, is asked.
    let bound = infos.iter().try_fold(0u64, |acc, i| {
        (i.shape.numel() as u64)
            .checked_mul(batch as u64)?
            .checked_mul(8)?
            .checked_add(acc)
    })?;
    usize::try_from(bound).ok()?;
    let plan = native::plan::plan(graph, &infos, batch.max(1), true);
    let arenas = (plan.act_len as u64 + plan.grad_len as u64) * 4;
    let activations = match backend {
        BackendKind::Native => arenas,
        BackendKind::Dfdx => arenas.saturating_mul(2),
    };
    Some(MemoryEstimate {
        parameters,
        activations,
    })
}

/// Memory this process may still allocate: the machine's available memory
/// (`MemAvailable`), or less where an address-space limit (`ulimit -v`) leaves less.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str, text: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    let mut avail = kib("MemAvailable:", &meminfo)?;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which lives on this stack frame.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0;
    if ok && lim.rlim_cur != libc::RLIM_INFINITY {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let used = kib("VmSize:", &status).unwrap_or(0);
        avail = avail.min(lim.rlim_cur.saturating_sub(used));
    }
    Some(avail)
}

/// Build a model with freshly initialised weights (Glorot-uniform kernels, zero biases)
/// on the CPU with the default backend.
pub fn build(graph: &Graph, seed: u64) -> Result<Box<dyn Model>> {
    build_with(graph, seed, DeviceKind::Cpu, BackendKind::default())
}

/// Build a model with a backend on a device.
pub fn build_with(
    graph: &Graph,
    seed: u64,
    device: DeviceKind,
    backend: BackendKind,
) -> Result<Box<dyn Model>> {
    match (backend, device) {
        (BackendKind::Native, DeviceKind::Cpu) => {
            native::cpu::check_env().map_err(|e| anyhow::anyhow!(e))?;
            Ok(Box::new(native::NativeModel::new(graph, seed)?))
        }
        #[cfg(feature = "cuda")]
        (BackendKind::Native, DeviceKind::Cuda) => {
            Ok(Box::new(native::gpu::device::CudaModel::new(graph, seed)?))
        }
        #[cfg(not(feature = "cuda"))]
        (BackendKind::Native, DeviceKind::Cuda) => anyhow::bail!(
            "this pipe was built without CUDA: rebuild with `cargo build --release --features cuda` for device = \"cuda\""
        ),
        (BackendKind::Dfdx, _) => dfdx_backend::build_model(graph, seed, device),
    }
}

/// Whether a CUDA GPU is usable by this build.
pub fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        native::gpu::device::available()
    }
    #[cfg(not(feature = "cuda"))]
    {
        dfdx_backend::cuda_available()
    }
}

/// Whether class `label` is the prediction of `row` on its own: its value above every
/// other class's. A tie with another class, or a NaN in the row, is not a correct
/// prediction (as `evaluate`'s rank-1 counts it); training accuracy, validation accuracy
/// and the confusion matrix's diagonal all use this rule.
pub fn predicts<T: PartialOrd + Copy>(row: &[T], label: usize) -> bool {
    let p = row[label];
    row.iter().enumerate().all(|(j, &v)| j == label || v < p)
}

/// The predicted class of `row` whose true class is `label`: the arg-max, except that a
/// tie of the label with another class goes to that other class (no credit for ties, as
/// [`predicts`]).
pub fn predicted_class(row: &[f32], label: usize) -> usize {
    if predicts(row, label) {
        return label;
    }
    let p = row[label];
    let best = argmax(row);
    if best != label {
        return best;
    }
    (0..row.len())
        .find(|&j| j != label && row[j] >= p)
        .unwrap_or(best)
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> NamedTensor {
        NamedTensor {
            shape: vec![1],
            data: vec![1.0],
        }
    }

    #[test]
    fn a_tie_with_the_label_is_not_a_correct_prediction() {
        assert!(predicts(&[0.1f32, 0.7, 0.2], 1));
        assert!(!predicts(&[0.1f32, 0.7, 0.2], 0));
        // Tied with another class, whichever comes first.
        assert!(!predicts(&[0.5f32, 0.5, 0.0], 0));
        assert!(!predicts(&[0.5f32, 0.5, 0.0], 1));
        assert!(!predicts(&[0.0f32; 4], 2));
        // A NaN anywhere in the row.
        assert!(!predicts(&[f32::NAN, 0.9, 0.1], 1));
        assert!(!predicts(&[0.1, f32::NAN, 0.1], 1));
        // The confusion matrix's column: a tie goes to the other class.
        assert_eq!(predicted_class(&[0.5, 0.5, 0.0], 0), 1);
        assert_eq!(predicted_class(&[0.5, 0.5, 0.0], 1), 0);
        assert_eq!(predicted_class(&[0.2, 0.4, 0.4], 2), 1);
        assert_eq!(predicted_class(&[0.2, 0.4, 0.4], 0), 1);
        assert_eq!(predicted_class(&[0.1, 0.7, 0.2], 1), 1);
        assert_eq!(predicted_class(&[0.25; 4], 3), 0);
    }

    #[test]
    fn a_node_named_ema_is_not_a_moving_average() {
        let mut st = State::default();
        st.tensors.insert("ema/kernel".into(), t());
        st.tensors.insert("ema/moving_mean".into(), t());
        assert!(!st.has_ema());
        assert_eq!(st.clone().for_inference(), st);
        // Its average is `ema/ema/kernel`, which does stand in for it.
        let avg = NamedTensor {
            shape: vec![1],
            data: vec![2.0],
        };
        st.tensors.insert("ema/ema/kernel".into(), avg.clone());
        assert!(st.has_ema());
        let inf = st.for_inference();
        assert_eq!(inf.tensors["ema/kernel"], avg);
        assert!(!inf.tensors.contains_key("ema/ema/kernel"));
        assert_eq!(State::ema_of("ema/c1/kernel"), Some("c1/kernel"));
        assert_eq!(State::ema_of("ema/kernel"), None);
    }
}
