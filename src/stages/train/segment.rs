//! The segment loop: train epochs `start+1..=end` of one training stage, validating after
//! each, writing the monitor (`history.json`, `history.png`) and a checkpoint every
//! `checkpoint_every` epochs into the stage's scratch folder, then publishing the
//! artifact. A killed run of the same key resumes from its last checkpoint there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::files;
use super::Schedule;
use crate::backend::{self, Model, NamedTensor, State, Targets};
use crate::data::checkpoint;
use crate::manifest::SchedKeys;
use crate::outcome::history::EpochRecord;
use crate::outcome::Event;
use crate::stages::batches::{
    compute_mean, derive_seed, load_split, make_batch, mix_batch, prefetched, Split,
};
use crate::stages::model::{check_classes, check_input, loss_and_acc, predict_split, TrainingPlan};
use crate::stages::StageCtx;

/// One segment of training: where it starts and ends, what it starts from.
pub(super) struct Segment<'a> {
    /// Network, optimizer and data settings.
    pub plan: TrainingPlan,
    /// The schedule's keys (and `step`'s entries), laid over this segment's steps.
    pub schedule: (SchedKeys, Vec<(usize, f64)>),
    /// The epoch it starts after (0 for a `train`).
    pub start: usize,
    /// Its last epoch.
    pub end: usize,
    /// The history so far (continued segments).
    pub history: Vec<EpochRecord>,
    /// The state it continues from (continued segments).
    pub state: Option<State>,
    /// The input mean it continues with (continued segments).
    pub mean: Option<NamedTensor>,
    /// The stage's name, for messages.
    pub stage: &'a str,
}

/// Train a segment and publish its artifact into `ctx.out`; returns the summary line.
pub(super) fn run(ctx: &StageCtx<'_>, data: &Path, seg: Segment<'_>) -> Result<String> {
    let Segment {
        mut plan,
        schedule,
        start,
        end,
        mut history,
        state,
        mean,
        stage,
    } = seg;
    let train = load_split(data, &plan.train_split)?;
    let val = load_split(data, &plan.val_split)?;
    for (split, s) in [(&plan.train_split, &train), (&plan.val_split, &val)] {
        if s.n == 0 {
            bail!("split `{split}` holds no images: nothing to train or validate on (were they all skipped as undecodable?)");
        }
    }
    let mean = match mean {
        Some(m) => m,
        None => compute_mean(plan.mean, data, &train)?,
    };
    check_input(&plan.graph, &train, &plan.network)?;
    let steps_per_epoch = train.n.div_ceil(plan.batch_size.max(1));
    let schedule = Schedule::from_keys(&schedule.0, &schedule.1, end - start, steps_per_epoch)
        .with_context(|| format!("stage `{stage}`"))?;
    refuse_on_dfdx(&plan, stage)?;
    let mut model = backend::build_with(&plan.graph, plan.seed, plan.device, plan.backend)?;
    let device = crate::stages::model::describe_device(plan.device);
    check_classes(model.as_ref(), data, &plan.network)?;
    if let Some(st) = &state {
        model.load_state(st)?;
    }
    let ckpt_dir = files::checkpoint_dir(ctx.scratch);
    std::fs::create_dir_all(&ckpt_dir)?;
    let first = resume_in_scratch(
        ctx,
        model.as_mut(),
        &plan.graph,
        &ckpt_dir,
        (start, end),
        &mut history,
    )?;
    ctx.note(format!(
        "{stage}: epochs {}..{end} on {} images ({}x{}), {} backend on the {:?}, validating on {} (monitor: {})",
        first + 1,
        train.n,
        train.h,
        train.w,
        plan.backend,
        plan.device,
        val.n,
        ctx.scratch.join("history.png").display()
    ));
    // One bar for the whole stage: images/s and the ETA cover every remaining epoch.
    let pb = ctx.watcher.bar(
        (train.n * (end - first)) as u64,
        stage,
        &format!("epoch {}/{end}", first + 1),
    );
    for e in first..end {
        let at = Position {
            schedule: &schedule,
            epoch: e,
            end,
            in_segment: e - start,
            steps_per_epoch,
        };
        let lr = schedule.lr(e - start, (e - start) * steps_per_epoch);
        let t0 = Instant::now();
        let (loss_sum, correct, seen) = train_epoch(model.as_mut(), &plan, &train, &mean, at, &pb)?;
        let secs = t0.elapsed().as_secs_f64();
        let probs = predict_split(model.as_mut(), &plan.graph, &val, &mean, 128)?;
        let (val_loss, val_acc) = loss_and_acc(&probs, &val.labels, model.classes());
        // The moving average is validated too: swapped in, and back.
        let ema = match plan.recipe.ema {
            Some(_) => {
                model.swap_ema()?;
                let probs = predict_split(model.as_mut(), &plan.graph, &val, &mean, 128);
                model.swap_ema()?;
                let (l, a) = loss_and_acc(&probs?, &val.labels, model.classes());
                Some((l, a))
            }
            None => None,
        };
        let rec = EpochRecord {
            epoch: e + 1,
            stage: stage.to_string(),
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_acc,
            ema_val_loss: ema.map(|(l, _)| l),
            ema_val_acc: ema.map(|(_, a)| a),
            images_per_sec: seen as f64 / secs.max(1e-9),
            seconds: t0.elapsed().as_secs_f64(),
        };
        for n in model.take_notes() {
            ctx.note(n);
        }
        ctx.watcher.event(Event::Epoch { record: &rec, end });
        history.push(rec);
        files::write_history(ctx.scratch, &history, &device)?;
        if (e + 1) % plan.checkpoint_every == 0 || e + 1 == end {
            files::save_checkpoint(
                &ckpt_dir,
                e + 1,
                model.state(),
                &mean,
                &history,
                &plan,
                ctx.key,
            )?;
        }
        ctx.fault_point(&format!("{stage}:epoch{}", e + 1));
    }
    pb.finish_and_clear();
    files::publish(
        ctx.out,
        model.state(),
        &mean,
        &history,
        &mut plan,
        &ckpt_dir,
        start,
        end,
    )?;
    // The class names with the model: `pipe predict` needs nothing else (a laptop that
    // pulled only the model from a remote cache).
    crate::data::copy_file(&data.join(files::CLASSES), &ctx.out.join(files::CLASSES))?;
    let last = history
        .last()
        .ok_or_else(|| anyhow::anyhow!("no epoch was trained"))?;
    let ema = match (last.ema_val_loss, last.ema_val_acc) {
        (Some(l), Some(a)) => format!(", EMA val_loss {l:.4} val_acc {:.2}%", 100.0 * a),
        _ => String::new(),
    };
    Ok(format!(
        "epochs {}-{end}: loss {:.4} acc {:.2}%, val_loss {:.4} val_acc {:.2}%{ema} ({:.0} img/s, {} on the {:?})",
        start + 1,
        last.train_loss,
        100.0 * last.train_acc,
        last.val_loss,
        100.0 * last.val_acc,
        last.images_per_sec,
        plan.backend,
        plan.device
    ))
}

/// A segment on dfdx of a plan with what only the native backend trains (a `lr-drop` or
/// `resume` to dfdx of such a model; a `train` is refused by its manifest): an error
/// before any data is read.
fn refuse_on_dfdx(plan: &TrainingPlan, stage: &str) -> Result<()> {
    if plan.backend != backend::BackendKind::Dfdx {
        return Ok(());
    }
    let r = &plan.recipe;
    let used: Vec<&str> = [
        ("label_smoothing", r.label_smoothing != 0.0),
        ("mixup", r.mixup.is_some()),
        ("cutmix", r.cutmix.is_some()),
        ("ema", r.ema.is_some()),
        (
            "optimizer = \"adamw\"",
            matches!(plan.optimizer, backend::Optimizer::Adamw { .. }),
        ),
        ("weight_decay", plan.optimizer.weight_decay() != 0.0),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| k)
    .collect();
    if !used.is_empty() {
        bail!(
            "stage `{stage}` continues a model trained with {} on the dfdx backend, which does not have {}: set backend = \"native\" for it",
            used.join(", "),
            if used.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

/// A killed run of this very stage key left checkpoints in its scratch folder: load the
/// newest one inside this segment (epochs `(start, end]`) and return the epoch to
/// continue after, else `start`. A checkpoint that does not load (truncated, garbage), or
/// that another key wrote (copied in, or a scratch folder two stores share), or that names
/// no key (written before checkpoints did), or whose bytes are not the ones written, or
/// that does not fit this network, is never resumed from: it is moved aside into
/// `refused/` with a warning naming it, and the next older one is tried. Nor is one with
/// such a checkpoint below it in the segment: those are published with the model, so the
/// run goes back below the broken one and writes it again.
fn resume_in_scratch(
    ctx: &StageCtx<'_>,
    model: &mut dyn Model,
    graph: &crate::nn::graph::Graph,
    ckpt_dir: &Path,
    (start, end): (usize, usize),
    history: &mut Vec<EpochRecord>,
) -> Result<usize> {
    let stage = &ctx.stage.name;
    // Moved aside (never published, never tried again), not deleted.
    let refuse = |path: &Path, why: String| -> Result<()> {
        let to = files::refuse(path)?;
        ctx.warn(format!(
            "{stage}: not resuming from {}: {why}; moved to {}",
            path.display(),
            to.display()
        ));
        Ok(())
    };
    // Every checkpoint is checked whole, not only the one resumed from: those below it are
    // published with the model (a later `from = "stage@N"` starts from them), so the run
    // resumes only from one with every checkpoint of its segment below it sound.
    let mut usable: Vec<(usize, PathBuf)> = Vec::new();
    let mut broken = false;
    for (e, path) in files::checkpoints_in(ckpt_dir) {
        let in_segment = e > start && e <= end;
        match files::belongs_to(&path, ctx.key).and_then(|()| files::as_written(&path, true)) {
            Ok(()) if in_segment && !broken => usable.push((e, path)),
            Ok(()) => {}
            Err(why) => {
                broken |= in_segment;
                refuse(&path, why)?;
            }
        }
    }
    // Newest first: the first that loads into this network.
    for (e, path) in usable.into_iter().rev() {
        let loaded = checkpoint::load(&path)
            .map_err(|err| format!("it does not load: {err:#}"))
            .and_then(|(st, meta)| {
                files::same_layer_names(&meta, graph)?;
                let history: Vec<EpochRecord> =
                    serde_json::from_str(meta.get("history").map_or("[]", |s| s.as_str()))
                        .map_err(|e| format!("its training history does not parse: {e}"))?;
                // Before anything of the model changes, a state that does not fit it
                // (tensors missing or of other shapes) is an error.
                model
                    .load_state(&st)
                    .map_err(|err| format!("it does not fit this network: {err:#}"))?;
                Ok(history)
            });
        match loaded {
            Ok(mut hist) => {
                restore_timings(ctx.scratch, &mut hist);
                *history = hist;
                ctx.note(format!(
                    "{stage}: resuming from its checkpoint at epoch {e} (an earlier run was interrupted)"
                ));
                return Ok(e);
            }
            Err(why) => refuse(&path, why)?,
        }
    }
    Ok(start)
}

/// Put back into `history` (read from a checkpoint, which keeps no timings: they are not
/// content) the timings the interrupted run recorded for its epochs in `scratch`'s
/// `timings.json`, so the published record still holds every epoch's.
fn restore_timings(scratch: &Path, history: &mut [EpochRecord]) {
    let Ok(bytes) = std::fs::read(scratch.join(files::TIMINGS)) else {
        return;
    };
    let Ok(timings) = serde_json::from_slice::<Vec<crate::outcome::history::EpochTiming>>(&bytes)
    else {
        return;
    };
    for r in history.iter_mut() {
        if let Some(t) = timings
            .iter()
            .find(|t| t.epoch == r.epoch && t.stage == r.stage)
        {
            r.images_per_sec = t.images_per_sec;
            r.seconds = t.seconds;
        }
    }
}

/// Where an epoch sits in its segment: what its steps' learning rates are.
#[derive(Clone, Copy)]
struct Position<'a> {
    schedule: &'a Schedule,
    /// The epoch (from 0, counted over the whole training).
    epoch: usize,
    /// The segment's last epoch.
    end: usize,
    /// The epoch counted from the segment's start.
    in_segment: usize,
    steps_per_epoch: usize,
}

/// One epoch over the shuffled training split: (summed loss, correct, images seen).
fn train_epoch(
    model: &mut dyn Model,
    plan: &TrainingPlan,
    train: &Split,
    mean: &NamedTensor,
    at: Position<'_>,
    pb: &indicatif::ProgressBar,
) -> Result<(f64, usize, usize)> {
    let (e, end) = (at.epoch, at.end);
    let mut order: Vec<usize> = (0..train.n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
        plan.seed, "shuffle", e as u64, 0,
    )));
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
    // Backends that keep loss and accuracy on the device are read at most 4 times a
    // second (`read` examples so far), not once per step.
    let (mut read, mut last_read) = (0usize, Instant::now());
    let batches: Vec<&[usize]> = order.chunks(plan.batch_size).collect();
    let augment = (&plan.augment, plan.seed, e as u64);
    let recipe = plan.recipe;
    prefetched(
        batches.len(),
        |b| {
            let (mut x, y) = make_batch(train, batches[b], mean, Some(augment));
            let mix = mix_batch(
                &mut x,
                &y,
                (train.h, train.w),
                recipe.mixup,
                recipe.cutmix,
                plan.seed,
                e as u64,
                b as u64,
            );
            (x, y, mix)
        },
        |b, (x, y, mix)| {
            let dseed = derive_seed(plan.seed, "dropout", e as u64, b as u64);
            let step = at.in_segment * at.steps_per_epoch + b;
            let lr = at.schedule.lr(at.in_segment, step);
            let cycled;
            let opt = match at.schedule.momentum(step) {
                Some(m) => {
                    cycled = plan.optimizer.with_momentum(m);
                    &cycled
                }
                None => &plan.optimizer,
            };
            let targets = Targets {
                labels: &y,
                mix: mix.as_ref().map(|(o, l)| (o.as_slice(), *l)),
                smoothing: recipe.label_smoothing,
            };
            let s = model.train_step_targets(&x, &targets, opt, lr, dseed)?;
            if let Some(ema) = recipe.ema {
                model.ema_update(ema.decay)?;
            }
            seen += y.len();
            pb.inc(y.len() as u64);
            if s.loss.is_nan() {
                if last_read.elapsed().as_secs_f64() < 0.25 {
                    return Ok(());
                }
                if let Some((l, c)) = model.take_stats()? {
                    loss_sum += l;
                    correct += c;
                    read = seen;
                    last_read = Instant::now();
                }
            } else {
                loss_sum += s.loss * y.len() as f64;
                correct += s.correct;
                read = seen;
            }
            pb.set_message(format!(
                "epoch {}/{end} loss {:.3} acc {:.1}%",
                e + 1,
                loss_sum / read.max(1) as f64,
                100.0 * correct as f64 / read.max(1) as f64
            ));
            Ok(())
        },
    )?;
    if read < seen {
        if let Some((l, c)) = model.take_stats()? {
            loss_sum += l;
            correct += c;
        }
    }
    Ok((loss_sum, correct, seen))
}
