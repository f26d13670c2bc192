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

/// Optimizer settings (Keras semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    /// SGD with optional (Nesterov) momentum: v = m*v - lr*g; w += v.
    Sgd {
        /// Momentum.
        momentum: f64,
        /// Nesterov update.
        nesterov: bool,
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
}

impl Optimizer {
    /// Update one parameter tensor `p` from its gradient `g` and its moments `m`, `v`
    /// (SGD: `m` is the velocity), at learning rate `lr` on step `t` (from 1). Both
    /// backends call this, so their updates are the same arithmetic.
    pub fn update(&self, lr: f64, t: f64, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        match *self {
            Optimizer::Sgd { momentum, nesterov } => {
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
        }
    }
}

/// What one training step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch (without the L2 term).
    pub loss: f64,
    /// Examples whose arg-max prediction equals the label.
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
/// `<node>/moving_mean`, `<node>/moving_variance`; optimizer `opt/<param>/m`, `opt/<param>/v`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Every tensor by name.
    pub tensors: BTreeMap<String, NamedTensor>,
    /// Optimizer steps taken.
    pub step: u64,
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
