//! `train`, `lr-drop` and `resume`: train a network on HDF5 data, epoch by epoch.
//!
//! Every random draw of epoch `e` (shuffle, augmentation, dropout) is seeded from
//! (seed, e), and checkpoints hold the full state (weights, batch-norm statistics,
//! optimizer moments and step, history), so training resumed from a checkpoint ends with
//! the same weights as training that was never interrupted. While a stage runs, its
//! checkpoints and monitor (`history.json`, `history.png`) live in the engine's scratch
//! folder for its key; a killed run picks up from the last checkpoint there.
//!
//! - this file: the three kinds' entry points, the learning-rate schedule, what a
//!   continuation may change;
//! - `segment`: the epoch loop;
//! - `files`: checkpoints and the artifact (see there for its files).

pub mod files;
mod segment;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::model::{device_kind, ModelArtifact, Recipe, TrainingPlan};
use super::StageCtx;
use crate::backend::{Optimizer, State};
use crate::data::checkpoint;
use crate::manifest::{ContinueConfig, OptimizerKind, SchedKeys, ScheduleKind, TrainConfig};
use crate::outcome::history::EpochRecord;
use segment::Segment;

pub use files::{interrupted_at, last_epoch, CLASSES, RECORDS, TIMINGS};

/// The learning rate (and, for one-cycle, the momentum) of each step of a segment.
/// `constant`, `poly` and `step` change per epoch; `cosine` and `onecycle` per step, as
/// `torch.optim.lr_scheduler` steps them when called after every batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The same lr throughout.
    Constant(f64),
    /// `lr * (1 - epoch / total) ^ power`.
    Poly {
        /// The first epoch's lr.
        lr: f64,
        /// The exponent.
        power: f64,
        /// Epochs of the segment.
        total: usize,
    },
    /// `lr` until the first entry's epoch, then each entry's lr from its epoch on.
    Step {
        /// The lr before the first entry.
        lr: f64,
        /// `(epoch, lr)` entries.
        steps: Vec<(usize, f64)>,
    },
    /// Linear warmup over `warmup` steps from `lr * start_factor`, then cosine annealing
    /// from `lr` towards `min_lr` over the remaining `total - warmup` steps.
    Cosine {
        /// The peak lr.
        lr: f64,
        /// The floor the cosine decays to (reached one step after the last).
        min_lr: f64,
        /// Warmup steps.
        warmup: usize,
        /// The first warmup step's lr as a fraction of `lr`.
        start_factor: f64,
        /// Steps of the segment.
        total: usize,
    },
    /// `torch.optim.lr_scheduler.OneCycleLR` with cosine annealing, two phases.
    OneCycle {
        /// The peak lr.
        max_lr: f64,
        /// The first lr (`max_lr / div_factor`).
        initial: f64,
        /// The last lr (`initial / final_div_factor`).
        min_lr: f64,
        /// Fraction of the steps spent rising.
        pct_start: f64,
        /// Steps of the segment.
        total: usize,
        /// `(base_momentum, max_momentum)` when the momentum cycles.
        momentum: Option<(f64, f64)>,
    },
}

/// `end + (start - end) / 2 * (cos(pi * pct) + 1)`, as `OneCycleLR._anneal_func` computes it.
fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

impl Schedule {
    /// The schedule `keys` describe over a segment of `epochs` epochs of `steps_per_epoch`
    /// steps (`steps`: the `step` schedule's entries).
    pub fn from_keys(
        k: &SchedKeys,
        steps: &[(usize, f64)],
        epochs: usize,
        steps_per_epoch: usize,
    ) -> Result<Schedule> {
        let total = epochs * steps_per_epoch;
        Ok(match k.kind {
            ScheduleKind::Constant => Schedule::Constant(k.lr),
            ScheduleKind::Poly => Schedule::Poly {
                lr: k.lr,
                power: k.power,
                total: epochs,
            },
            ScheduleKind::Step => Schedule::Step {
                lr: k.lr,
                steps: steps.to_vec(),
            },
            ScheduleKind::Cosine => {
                let warmup = (k.warmup_epochs * steps_per_epoch as f64).round() as usize;
                if warmup >= total {
                    bail!(
                        "`warmup_epochs` = {} is {warmup} steps, but the segment has only {total} ({epochs} epochs of {steps_per_epoch}): nothing is left to decay over",
                        k.warmup_epochs
                    );
                }
                Schedule::Cosine {
                    lr: k.lr,
                    min_lr: k.min_lr,
                    warmup,
                    start_factor: k.warmup_start_factor,
                    total,
                }
            }
            ScheduleKind::Onecycle => {
                let up = k.pct_start * total as f64 - 1.0;
                if up <= 0.0 || up >= total as f64 - 1.0 {
                    bail!(
                        "`pct_start` = {} of {total} steps ({epochs} epochs of {steps_per_epoch}) leaves a phase with no steps: raise the epochs or move pct_start towards 0.5",
                        k.pct_start
                    );
                }
                let initial = k.max_lr / k.div_factor;
                Schedule::OneCycle {
                    max_lr: k.max_lr,
                    initial,
                    min_lr: initial / k.final_div_factor,
                    pct_start: k.pct_start,
                    total,
                    momentum: k
                        .cycle_momentum
                        .then_some((k.base_momentum, k.max_momentum)),
                }
            }
        })
    }

    /// Whether the lr changes every step (else every epoch).
    pub fn per_step(&self) -> bool {
        matches!(self, Schedule::Cosine { .. } | Schedule::OneCycle { .. })
    }

    /// The lr of step `step` of the segment (from 0), in its epoch `e` (from 0, counted
    /// from the segment's start).
    pub fn lr(&self, e: usize, step: usize) -> f64 {
        match self {
            Schedule::Constant(lr) => *lr,
            Schedule::Poly { lr, power, total } => {
                lr * (1.0 - e as f64 / *total as f64).max(0.0).powf(*power)
            }
            Schedule::Step { lr, steps } => steps
                .iter()
                .filter(|(at, _)| *at <= e)
                .max_by_key(|(at, _)| *at)
                .map(|(_, l)| *l)
                .unwrap_or(*lr),
            Schedule::Cosine {
                lr,
                min_lr,
                warmup,
                start_factor,
                total,
            } => {
                if step < *warmup {
                    lr * (start_factor + (1.0 - start_factor) * step as f64 / *warmup as f64)
                } else {
                    let t = (step - warmup) as f64;
                    let t_max = (total - warmup) as f64;
                    min_lr + (lr - min_lr) * (1.0 + (std::f64::consts::PI * t / t_max).cos()) / 2.0
                }
            }
            Schedule::OneCycle {
                max_lr,
                initial,
                min_lr,
                ..
            } => {
                let (phase, pct) = self.one_cycle_phase(step);
                if phase == 0 {
                    cos_anneal(*initial, *max_lr, pct)
                } else {
                    cos_anneal(*max_lr, *min_lr, pct)
                }
            }
        }
    }

    /// The momentum (SGD) or beta1 (Adam) of step `step`, where the schedule sets it.
    pub fn momentum(&self, step: usize) -> Option<f64> {
        let Schedule::OneCycle {
            momentum: Some((base, max)),
            ..
        } = self
        else {
            return None;
        };
        let (phase, pct) = self.one_cycle_phase(step);
        Some(if phase == 0 {
            cos_anneal(*max, *base, pct)
        } else {
            cos_anneal(*base, *max, pct)
        })
    }

    /// One-cycle: the phase of `step` (0 rising, 1 falling) and how far into it.
    fn one_cycle_phase(&self, step: usize) -> (usize, f64) {
        let Schedule::OneCycle {
            pct_start, total, ..
        } = self
        else {
            return (0, 0.0);
        };
        let up_end = pct_start * *total as f64 - 1.0;
        let down_end = *total as f64 - 1.0;
        let t = step as f64;
        if t <= up_end {
            (0, t / up_end)
        } else {
            (1, (t - up_end) / (down_end - up_end))
        }
    }
}

/// `train`.
pub fn run_train(ctx: &StageCtx<'_>, c: &TrainConfig) -> Result<String> {
    let graph = ctx
        .network
        .context("a train stage is given its expanded network")?;
    let optimizer = match c.optimizer {
        OptimizerKind::Sgd => Optimizer::Sgd {
            momentum: c.momentum,
            nesterov: c.nesterov,
            weight_decay: 0.0,
        },
        OptimizerKind::Adam => Optimizer::Adam {
            beta1: c.beta1,
            beta2: c.beta2,
            epsilon: c.epsilon,
        },
        OptimizerKind::Adamw => Optimizer::Adamw {
            beta1: c.beta1,
            beta2: c.beta2,
            epsilon: c.epsilon,
            weight_decay: c.weight_decay.unwrap_or(0.01),
        },
    };
    let optimizer = match optimizer {
        Optimizer::Sgd {
            momentum, nesterov, ..
        } if c.decoupled_weight_decay => Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay: c.weight_decay.unwrap_or(0.0),
        },
        o => o,
    };
    let data = ctx.input_dir();
    let val_split = match &c.val_split {
        Some(v) => v.clone(),
        None if data.join("val.h5").is_file() => "val".into(),
        None => "test".into(),
    };
    segment::run(
        ctx,
        data,
        Segment {
            plan: TrainingPlan {
                graph: graph.clone(),
                network: c.network.clone(),
                batch_size: c.batch_size,
                optimizer,
                mean: c.mean,
                augment: c.augment,
                recipe: Recipe {
                    label_smoothing: c.label_smoothing,
                    mixup: c.mixup,
                    cutmix: c.cutmix,
                    ema: c.ema,
                },
                seed: c.seed.unwrap_or(42),
                train_split: c.train_split.clone(),
                val_split,
                checkpoint_every: c.checkpoint_every,
                epochs_done: 0,
                device: device_kind(c.device),
                backend: c.backend.unwrap_or_default(),
                device_info: String::new(),
            },
            schedule: (c.sched_keys(), c.steps.clone()),
            start: 0,
            end: c.epochs,
            history: Vec::new(),
            state: None,
            mean: None,
            stage: &ctx.stage.name,
        },
    )
}

/// What an `lr-drop` or `resume` stage may change in the plan it continues.
fn apply_overrides(plan: &mut TrainingPlan, c: &ContinueConfig) {
    if let Optimizer::Sgd {
        momentum, nesterov, ..
    } = &mut plan.optimizer
    {
        if let Some(m) = c.momentum {
            *momentum = m;
        }
        if let Some(n) = c.nesterov {
            *nesterov = n;
        }
    }
    if let Some(k) = c.checkpoint_every {
        plan.checkpoint_every = k;
    }
    plan.device = device_kind(c.device);
    // Where the parent trained, as plans written before it moved to the timings record
    // say: not this segment's content.
    plan.device_info.clear();
    if let Some(b) = c.backend {
        plan.backend = b;
    }
}

/// `lr-drop` (`at = None`: the final state) and `resume` (`at = Some(epoch)`).
pub fn run_continue(ctx: &StageCtx<'_>, c: &ContinueConfig, at: Option<usize>) -> Result<String> {
    let model_dir = &ctx.inputs[0].1;
    let from = &ctx.inputs[0].0;
    let data = &ctx.inputs[1].1;
    let artifact = ModelArtifact::open(model_dir)?;
    let (state, meta) = match at {
        None => artifact.state()?,
        Some(e) => {
            let p = files::checkpoint_dir(model_dir).join(format!("epoch_{e}.safetensors"));
            if !p.is_file() {
                let have: Vec<usize> = files::checkpoints_in(&files::checkpoint_dir(model_dir))
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                bail!(
                    "stage `{from}` has no checkpoint at epoch {e} (it has: {})",
                    have.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            checkpoint::load(&p)?
        }
    };
    let source = match at {
        None => format!("the model of stage `{from}`"),
        Some(e) => format!("the checkpoint of stage `{from}` at epoch {e}"),
    };
    continue_from(ctx, data, artifact.plan, c, state, &meta, &source)
}

/// Continue training from a loaded checkpoint: epoch, history (trimmed to that epoch, as
/// the chapter's monitor does on restart) and input mean come from the checkpoint itself.
fn continue_from(
    ctx: &StageCtx<'_>,
    data: &Path,
    mut plan: TrainingPlan,
    c: &ContinueConfig,
    state: State,
    meta: &HashMap<String, String>,
    source: &str,
) -> Result<String> {
    let epoch: usize = meta
        .get("epoch")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{source} names no epoch in its metadata (`epoch`)"))?;
    let mut hist: Vec<EpochRecord> =
        serde_json::from_str(meta.get("history").map(|s| s.as_str()).unwrap_or("[]"))
            .with_context(|| {
                format!("{source}: its training history (metadata `history`) does not parse")
            })?;
    hist.retain(|r| r.epoch <= epoch);
    let mean = state
        .tensors
        .get("input/mean")
        .cloned()
        .with_context(|| format!("{source} holds no `input/mean` tensor"))?;
    apply_overrides(&mut plan, c);
    segment::run(
        ctx,
        data,
        Segment {
            plan,
            schedule: (c.sched_keys(), Vec::new()),
            start: epoch,
            end: epoch + c.epochs,
            history: hist,
            state: Some(state),
            mean: Some(mean),
            stage: &ctx.stage.name,
        },
    )
}

/// `resume` from a checkpoint file written by pipe (any stage, any pipeline): the plan,
/// input mean, history and epoch come from the file; the data from the stage's input.
/// `hash`: the BLAKE3 of the file when the manifest was loaded, which the stage's key
/// holds: the bytes trained from must be those.
pub fn run_resume_file(
    ctx: &StageCtx<'_>,
    c: &ContinueConfig,
    file: &Path,
    hash: &str,
) -> Result<String> {
    let bytes = crate::data::read_regular(file)
        .with_context(|| format!("cannot read checkpoint {}", file.display()))?;
    if blake3::hash(&bytes).to_hex().as_str() != hash {
        bail!(
            "{} changed after the manifest was read (its key holds the checkpoint's hash from then); run again to resume from it as it is now",
            file.display()
        );
    }
    let (state, meta) = checkpoint::load_bytes(&bytes, file)?;
    let plan: TrainingPlan = serde_json::from_str(meta.get("plan").with_context(|| {
        format!(
            "{} has no training plan in its metadata: it was not written by pipe's training stages",
            file.display()
        )
    })?)
    .with_context(|| {
        format!(
            "{}: its training plan (metadata `plan`) does not parse: it was not written by this pipe's training stages",
            file.display()
        )
    })?;
    let source = file.display().to_string();
    continue_from(ctx, &ctx.inputs[0].1, plan, c, state, &meta, &source)
}
