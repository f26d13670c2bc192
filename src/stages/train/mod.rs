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

use super::model::{device_kind, ModelArtifact, TrainingPlan};
use super::StageCtx;
use crate::backend::{Optimizer, State};
use crate::data::checkpoint;
use crate::manifest::{ContinueConfig, OptimizerKind, ScheduleKind, TrainConfig};
use crate::outcome::history::EpochRecord;
use segment::Segment;

pub use files::{interrupted_at, last_epoch, CLASSES, RECORDS, TIMINGS};

/// Learning rate of 0-based epoch `e`.
#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    Constant(f64),
    Poly { lr: f64, power: f64, total: usize },
    Step { lr: f64, steps: Vec<(usize, f64)> },
}

impl Schedule {
    pub(crate) fn lr(&self, e: usize) -> f64 {
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
        },
        OptimizerKind::Adam => Optimizer::Adam {
            beta1: c.beta1,
            beta2: c.beta2,
            epsilon: c.epsilon,
        },
    };
    let data = ctx.input_dir();
    let val_split = match &c.val_split {
        Some(v) => v.clone(),
        None if data.join("val.h5").is_file() => "val".into(),
        None => "test".into(),
    };
    let schedule = match c.schedule {
        ScheduleKind::Constant => Schedule::Constant(c.lr),
        ScheduleKind::Poly => Schedule::Poly {
            lr: c.lr,
            power: c.power,
            total: c.epochs,
        },
        ScheduleKind::Step => Schedule::Step {
            lr: c.lr,
            steps: c.steps.clone(),
        },
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
                seed: c.seed.unwrap_or(42),
                train_split: c.train_split.clone(),
                val_split,
                checkpoint_every: c.checkpoint_every,
                epochs_done: 0,
                device: device_kind(c.device),
                backend: c.backend.unwrap_or_default(),
                device_info: String::new(),
            },
            schedule,
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
    if let Optimizer::Sgd { momentum, nesterov } = &mut plan.optimizer {
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
    continue_from(ctx, data, artifact.plan, c, state, &meta)
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
) -> Result<String> {
    let epoch: usize = meta
        .get("epoch")
        .and_then(|s| s.parse().ok())
        .context("checkpoint has no epoch")?;
    let mut hist: Vec<EpochRecord> =
        serde_json::from_str(meta.get("history").map(|s| s.as_str()).unwrap_or("[]"))?;
    hist.retain(|r| r.epoch <= epoch);
    let mean = state
        .tensors
        .get("input/mean")
        .cloned()
        .context("checkpoint has no `input/mean`")?;
    apply_overrides(&mut plan, c);
    segment::run(
        ctx,
        data,
        Segment {
            plan,
            schedule: Schedule::Constant(c.lr),
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
pub fn run_resume_file(ctx: &StageCtx<'_>, c: &ContinueConfig, file: &Path) -> Result<String> {
    let (state, meta) = checkpoint::load(file)?;
    let plan: TrainingPlan = serde_json::from_str(meta.get("plan").with_context(|| {
        format!(
            "{} has no training plan in its metadata: it was not written by pipe's training stages",
            file.display()
        )
    })?)?;
    continue_from(ctx, &ctx.inputs[0].1, plan, c, state, &meta)
}
