//! `train`, `lr-drop` and `resume`: train a network on HDF5 data, epoch by epoch.
//!
//! Every random draw of epoch `e` (shuffle, augmentation, dropout) is seeded from
//! (seed, e), and checkpoints hold the full state (weights, batch-norm statistics,
//! optimizer moments and step, history), so training resumed from a checkpoint ends with
//! the same weights as training that was never interrupted. While a stage runs, its
//! checkpoints and monitor (`history.json`, `history.png`) live in the engine's scratch
//! folder for its key; a killed run picks up from the last checkpoint there.
//!
//! Artifact: `model.safetensors` (weights + batch-norm statistics), `state.safetensors`
//! (full state), `checkpoints/epoch_N.safetensors`, `history.json`, `history.png`,
//! `mean.safetensors` (what is subtracted from inputs; every checkpoint also carries it
//! as `input/mean`) and `plan.json` (what a later
//! `lr-drop`, `resume` or `evaluate` needs: the network and data settings).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::StageCtx;
use crate::backend::{self, BackendKind, DeviceKind, Model, NamedTensor, Optimizer, State};
use crate::data::{augment, checkpoint, h5};
use crate::manifest::{
    AugmentConfig, ContinueConfig, DeviceSetting, MeanKind, OptimizerKind, ScheduleKind, TrainStage,
};
use crate::nn::graph::{Graph, Op};
use crate::report::history::{self, EpochRecord};
use crate::report::progress;

/// Everything needed to continue or evaluate a trained model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The expanded network.
    pub graph: Graph,
    /// Network name (informative).
    pub network: String,
    /// Batch size.
    pub batch_size: usize,
    /// Optimizer and its settings.
    pub optimizer: Optimizer,
    /// Mean subtraction.
    pub mean: MeanKind,
    /// Augmentation.
    pub augment: AugmentConfig,
    /// Seed of every random draw.
    pub seed: u64,
    /// Split trained on.
    pub train_split: String,
    /// Split validated on.
    pub val_split: String,
    /// Checkpoint interval.
    pub checkpoint_every: usize,
    /// Epochs completed when this artifact was written.
    pub epochs_done: usize,
    /// The device the last segment trained on.
    #[serde(default)]
    pub device: DeviceKind,
    /// The backend the last segment trained with (plans written before backends existed
    /// were dfdx's).
    #[serde(default = "dfdx_backend")]
    pub backend: BackendKind,
    /// What that device was (GPU name, driver, the CUDA version the binary was built
    /// with): recorded, not part of the key.
    #[serde(default)]
    pub device_info: String,
}

fn dfdx_backend() -> BackendKind {
    BackendKind::Dfdx
}

/// A description of the device for the artifact's metadata.
fn describe_device(d: DeviceKind) -> String {
    match d {
        DeviceKind::Cpu => format!(
            "cpu ({} threads, {})",
            rayon::current_num_threads(),
            std::env::consts::ARCH
        ),
        DeviceKind::Cuda => {
            let smi = std::process::Command::new("nvidia-smi")
                .args([
                    "--query-gpu=name,driver_version,compute_cap",
                    "--format=csv,noheader",
                ])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_else(|| "unknown GPU".into());
            format!(
                "cuda ({smi}; built with CUDA {})",
                option_env!("PIPE_CUDA_VERSION").unwrap_or("unknown")
            )
        }
    }
}

/// The backend device for a resolved device setting.
pub fn device_kind(d: Option<DeviceSetting>) -> DeviceKind {
    match d {
        Some(DeviceSetting::Cuda) => DeviceKind::Cuda,
        _ => DeviceKind::Cpu,
    }
}

/// Learning rate of 0-based epoch `e`.
#[derive(Debug, Clone)]
enum Schedule {
    Constant(f64),
    Poly { lr: f64, power: f64, total: usize },
    Step { lr: f64, steps: Vec<(usize, f64)> },
}

impl Schedule {
    fn lr(&self, e: usize) -> f64 {
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

fn derive_seed(seed: u64, what: &str, a: u64, b: u64) -> u64 {
    let h = blake3::hash(
        &[
            seed.to_le_bytes().as_slice(),
            what.as_bytes(),
            &a.to_le_bytes(),
            &b.to_le_bytes(),
        ]
        .concat(),
    );
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A split held in memory.
pub(crate) struct Split {
    pub(crate) n: usize,
    h: usize,
    w: usize,
    images: Vec<u8>,
    pub(crate) labels: Vec<i64>,
}

pub(crate) fn load_split(data: &Path, split: &str) -> Result<Split> {
    let path = data.join(format!("{split}.h5"));
    if !path.is_file() {
        let have: Vec<String> = std::fs::read_dir(data)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".h5")
                    .map(|s| s.to_string())
            })
            .collect();
        bail!(
            "the data has no split `{split}` (it has: {})",
            have.join(", ")
        );
    }
    let d = h5::read_split(&path)?;
    Ok(Split {
        n: d.shape[0],
        h: d.shape[1],
        w: d.shape[2],
        images: d.images,
        labels: d.labels,
    })
}

/// What is subtracted from every input pixel: (H, W, 3) for `pixel`, (3) for `rgb`.
fn compute_mean(kind: MeanKind, data: &Path, train: &Split) -> Result<NamedTensor> {
    Ok(match kind {
        MeanKind::None => NamedTensor {
            shape: vec![3],
            data: vec![0.0; 3],
        },
        MeanKind::Rgb => {
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(data.join("means.json")).context("the data has no means.json")?,
            )?;
            let ch = |k: &str| m[k].as_f64().map(|v| v as f32).context("bad means.json");
            NamedTensor {
                shape: vec![3],
                data: vec![ch("R")?, ch("G")?, ch("B")?],
            }
        }
        MeanKind::Pixel => {
            let px = train.h * train.w * 3;
            let mut sum = vec![0f64; px];
            for img in train.images.chunks_exact(px) {
                for (s, &v) in sum.iter_mut().zip(img) {
                    *s += v as f64;
                }
            }
            NamedTensor {
                shape: vec![train.h, train.w, 3],
                data: sum
                    .iter()
                    .map(|s| (s / train.n.max(1) as f64) as f32)
                    .collect(),
            }
        }
    })
}

/// Turn images `idx` of a split into a normalised f32 batch (augmented when `aug` is set).
fn make_batch(
    s: &Split,
    idx: &[usize],
    mean: &NamedTensor,
    aug: Option<(&AugmentConfig, u64, u64)>,
) -> (Vec<f32>, Vec<i64>) {
    let px = s.h * s.w * 3;
    let mut out = vec![0f32; idx.len() * px];
    out.par_chunks_mut(px)
        .zip(idx.par_iter().enumerate())
        .for_each(|(dst, (k, &i))| {
            let src = &s.images[i * px..(i + 1) * px];
            match aug {
                Some((a, seed, epoch)) if !augment::is_identity(a) => {
                    let mut rng =
                        ChaCha8Rng::seed_from_u64(derive_seed(seed, "augment", epoch, i as u64));
                    augment::augment(src, s.h, s.w, a, &mut rng, dst);
                }
                _ => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v as f32),
            }
            let _ = k;
            if mean.data.len() == 3 {
                for p in dst.chunks_exact_mut(3) {
                    for (v, m) in p.iter_mut().zip(&mean.data) {
                        *v -= m;
                    }
                }
            } else {
                for (d, m) in dst.iter_mut().zip(&mean.data) {
                    *d -= m;
                }
            }
        });
    (out, idx.iter().map(|&i| s.labels[i]).collect())
}

/// Run `consume(i, make(i))` for `i` in `0..jobs`, with `make` running one or two jobs
/// ahead on a worker thread: batches are gathered, augmented and normalised while the
/// model works on the previous one.
fn prefetched<T: Send>(
    jobs: usize,
    make: impl Fn(usize) -> T + Sync,
    mut consume: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let make = &make;
        scope.spawn(move || {
            for i in 0..jobs {
                if tx.send(make(i)).is_err() {
                    break; // the consumer stopped (an error): stop too
                }
            }
        });
        for i in 0..jobs {
            let item = rx.recv().context("the batch worker stopped")?;
            consume(i, item)?;
        }
        Ok(())
    })
}

/// Class probabilities for a whole split, in batches.
pub(crate) fn predict_split(
    model: &mut dyn Model,
    graph: &Graph,
    s: &Split,
    mean: &NamedTensor,
    batch: usize,
) -> Result<Vec<f32>> {
    let k = model.classes();
    let ends_in_softmax = matches!(graph.nodes.last().map(|n| &n.op), Some(Op::Softmax));
    let mut probs = Vec::with_capacity(s.n * k);
    let all: Vec<usize> = (0..s.n).collect();
    let chunks: Vec<&[usize]> = all.chunks(batch.max(1)).collect();
    prefetched(
        chunks.len(),
        |c| make_batch(s, chunks[c], mean, None),
        |c, (x, _)| {
            let mut out = model.predict(&x, chunks[c].len())?;
            if !ends_in_softmax {
                for row in out.chunks_exact_mut(k) {
                    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let z: f32 = row.iter().map(|v| (v - m).exp()).sum();
                    row.iter_mut().for_each(|v| *v = (*v - m).exp() / z);
                }
            }
            probs.extend(out);
            Ok(())
        },
    )?;
    Ok(probs)
}

fn loss_and_acc(probs: &[f32], labels: &[i64], k: usize) -> (f64, f64) {
    let n = labels.len().max(1);
    let mut loss = 0.0;
    let mut correct = 0;
    for (i, &l) in labels.iter().enumerate() {
        let row = &probs[i * k..(i + 1) * k];
        loss -= (row[l as usize].max(1e-12) as f64).ln();
        if backend::argmax(row) == l as usize {
            correct += 1;
        }
    }
    (loss / n as f64, correct as f64 / n as f64)
}

/// The network's input must be the data's image shape (RGB).
fn check_input(graph: &Graph, data: &Split, network: &str) -> Result<()> {
    if let Some(Op::Input { h, w, c }) = graph.nodes.first().map(|n| &n.op) {
        if (*h, *w, *c) != (data.h, data.w, 3) {
            bail!(
                "network `{network}` takes {h}x{w}x{c} images (`networks.{network}.input`), but the data holds {}x{}x3 RGB images; set `input = [{}, {}, 3]` or resize in the hdf5 stage (`size = [{}, {}]`, width first)",
                data.h,
                data.w,
                data.h,
                data.w,
                w,
                h
            );
        }
    }
    Ok(())
}

fn check_classes(model: &dyn Model, data: &Path, network: &str) -> Result<()> {
    let classes = crate::data::index::read_classes(&data.join("classes.csv"))?;
    if classes.len() != model.classes() {
        bail!(
            "network `{network}` outputs {} classes but the data has {}; set `classes = {}` in [networks.{network}]",
            model.classes(),
            classes.len(),
            classes.len()
        );
    }
    Ok(())
}

fn checkpoint_meta(
    epoch: usize,
    hist: &[EpochRecord],
    plan: &Plan,
) -> Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    // A checkpoint is self-contained: with the plan (network, optimizer, data settings) a
    // `resume` stage can start from the file alone.
    let mut p = plan.clone();
    p.epochs_done = epoch;
    m.insert("plan".into(), serde_json::to_string(&p)?);
    m.insert("epoch".into(), epoch.to_string());
    m.insert("history".into(), serde_json::to_string(hist)?);
    m.insert("format".into(), "pipe-checkpoint-v1".into());
    Ok(m)
}

/// The checkpoints `epoch_N.safetensors` in a folder, by epoch.
fn checkpoints_in(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: usize = name
                .strip_prefix("epoch_")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The latest complete checkpoint in a folder: (epoch, path).
fn latest_checkpoint(dir: &Path) -> Option<(usize, PathBuf)> {
    checkpoints_in(dir).pop()
}

struct Segment<'a> {
    plan: Plan,
    schedule: Schedule,
    start: usize,
    end: usize,
    history: Vec<EpochRecord>,
    state: Option<State>,
    mean: Option<NamedTensor>,
    stage: &'a str,
}

/// `train`.
pub fn run_train(ctx: &StageCtx<'_>, t: &TrainStage) -> Result<String> {
    let c = &t.config;
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
    run_segment(
        ctx,
        data,
        Segment {
            plan: Plan {
                graph: t.graph.clone(),
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
fn apply_overrides(plan: &mut Plan, c: &ContinueConfig) {
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
    if let Some(b) = c.backend {
        plan.backend = b;
    }
}

/// `lr-drop` (`at = None`: the final state) and `resume` (`at = Some(epoch)`).
pub fn run_continue(ctx: &StageCtx<'_>, c: &ContinueConfig, at: Option<usize>) -> Result<String> {
    let model_dir = &ctx.inputs[0].1;
    let from = &ctx.inputs[0].0;
    let data = &ctx.inputs[1].1;
    let plan: Plan = serde_json::from_slice(
        &std::fs::read(model_dir.join("plan.json"))
            .context("the model artifact has no plan.json")?,
    )?;
    let (state, meta) = match at {
        None => checkpoint::load(&model_dir.join("state.safetensors"))?,
        Some(e) => {
            let p = model_dir
                .join("checkpoints")
                .join(format!("epoch_{e}.safetensors"));
            if !p.is_file() {
                let have: Vec<usize> = checkpoints_in(&model_dir.join("checkpoints"))
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
    continue_from(ctx, data, plan, c, state, &meta)
}

/// Continue training from a loaded checkpoint: epoch, history (trimmed to that epoch, as
/// the chapter's monitor does on restart) and input mean come from the checkpoint itself.
fn continue_from(
    ctx: &StageCtx<'_>,
    data: &Path,
    mut plan: Plan,
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
    run_segment(
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

fn run_segment(ctx: &StageCtx<'_>, data: &Path, seg: Segment<'_>) -> Result<String> {
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
    let mut model = backend::build_with(&plan.graph, plan.seed, plan.device, plan.backend)?;
    check_classes(model.as_ref(), data, &plan.network)?;
    if let Some(st) = &state {
        model.load_state(st)?;
    }
    // A killed run of this very stage left checkpoints in the scratch folder: continue there.
    let ckpt_dir = ctx.scratch.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir)?;
    let mut first = start;
    if let Some((e, path)) = latest_checkpoint(&ckpt_dir) {
        if e > start && e <= end {
            let (st, meta) = checkpoint::load(&path)?;
            model.load_state(&st)?;
            history =
                serde_json::from_str(meta.get("history").map(|s| s.as_str()).unwrap_or("[]"))?;
            first = e;
            eprintln!("{stage}: resuming from its checkpoint at epoch {e} (an earlier run was interrupted)");
        }
    }
    eprintln!(
        "{stage}: epochs {}..{end} on {} images ({}x{}), {} backend on the {:?}, validating on {} (monitor: {})",
        first + 1,
        train.n,
        train.h,
        train.w,
        plan.backend,
        plan.device,
        val.n,
        ctx.scratch.join("history.png").display()
    );
    let k = model.classes();
    let bs = plan.batch_size;
    // One bar for the whole stage: images/s and the ETA cover every remaining epoch.
    let pb = progress::bar(
        (train.n * (end - first)) as u64,
        stage,
        &format!("epoch {}/{end}", first + 1),
    );
    for e in first..end {
        let lr = schedule.lr(e);
        let mut order: Vec<usize> = (0..train.n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
            plan.seed, "shuffle", e as u64, 0,
        )));
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        // Backends that keep loss and accuracy on the device are read at most 4 times a
        // second (`read` examples so far), not once per step.
        let (mut read, mut last_read) = (0usize, Instant::now());
        let batches: Vec<&[usize]> = order.chunks(bs).collect();
        let augment = (&plan.augment, plan.seed, e as u64);
        prefetched(
            batches.len(),
            |b| make_batch(&train, batches[b], &mean, Some(augment)),
            |b, (x, y)| {
                let dseed = derive_seed(plan.seed, "dropout", e as u64, b as u64);
                let s = model.train_step(&x, &y, &plan.optimizer, lr, dseed)?;
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
        let secs = t0.elapsed().as_secs_f64();
        let probs = predict_split(model.as_mut(), &plan.graph, &val, &mean, 128)?;
        let (val_loss, val_acc) = loss_and_acc(&probs, &val.labels, k);
        let rec = EpochRecord {
            epoch: e + 1,
            stage: stage.to_string(),
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_acc,
            images_per_sec: seen as f64 / secs.max(1e-9),
        };
        pb.suspend(|| {
            eprintln!(
                "{stage}: epoch {:>3}/{end}  lr {:.2e}  loss {:.4}  acc {:.2}%  val_loss {:.4}  val_acc {:.2}%  {:.0} img/s",
                rec.epoch,
                rec.lr,
                rec.train_loss,
                100.0 * rec.train_acc,
                rec.val_loss,
                100.0 * rec.val_acc,
                rec.images_per_sec
            )
        });
        history.push(rec);
        history::write(ctx.scratch, &history)?;
        history::write_timings(ctx.scratch, &history)?;
        if (e + 1) % plan.checkpoint_every == 0 || e + 1 == end {
            checkpoint::save(
                &ckpt_dir.join(format!("epoch_{}.safetensors", e + 1)),
                &with_mean(model.state(), &mean),
                checkpoint_meta(e + 1, &history, &plan)?,
                |_| true,
            )?;
        }
        super::fault_point(&format!("{stage}:epoch{}", e + 1));
    }
    pb.finish_and_clear();
    // Publish: final state, weights alone, this segment's checkpoints, history, plan.
    let state = with_mean(model.state(), &mean);
    let meta = checkpoint_meta(end, &history, &plan)?;
    checkpoint::save(
        &ctx.out.join("state.safetensors"),
        &state,
        meta.clone(),
        |_| true,
    )?;
    checkpoint::save(&ctx.out.join("model.safetensors"), &state, meta, |k| {
        !k.starts_with("opt/")
    })?;
    let mut mean_state = State::default();
    mean_state.tensors.insert("mean".into(), mean);
    checkpoint::save(
        &ctx.out.join("mean.safetensors"),
        &mean_state,
        HashMap::new(),
        |_| true,
    )?;
    let out_ckpt = ctx.out.join("checkpoints");
    std::fs::create_dir_all(&out_ckpt)?;
    for (n, p) in checkpoints_in(&ckpt_dir) {
        if n > start && n <= end {
            std::fs::copy(&p, out_ckpt.join(format!("epoch_{n}.safetensors")))?;
        }
    }
    history::write(ctx.out, &history)?;
    history::write_timings(ctx.out, &history)?;
    plan.epochs_done = end;
    plan.device_info = describe_device(plan.device);
    std::fs::write(ctx.out.join("plan.json"), serde_json::to_vec_pretty(&plan)?)?;
    let last = history.last().context("no epoch was trained")?;
    Ok(format!(
        "epochs {}-{end}: loss {:.4} acc {:.2}%, val_loss {:.4} val_acc {:.2}% ({:.0} img/s, {} on the {:?})",
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

/// The input mean travels inside every checkpoint (as `input/mean`), so that one file
/// suffices to resume.
fn with_mean(mut st: State, mean: &NamedTensor) -> State {
    st.tensors.insert("input/mean".into(), mean.clone());
    st
}

/// `resume` from a checkpoint file written by pipe (any stage, any pipeline): the plan,
/// input mean, history and epoch come from the file; the data from the stage's input.
pub fn run_resume_file(ctx: &StageCtx<'_>, c: &ContinueConfig, file: &Path) -> Result<String> {
    let (state, meta) = checkpoint::load(file)?;
    let plan: Plan = serde_json::from_str(meta.get("plan").with_context(|| {
        format!(
            "{} has no training plan in its metadata: it was not written by pipe's training stages",
            file.display()
        )
    })?)?;
    continue_from(ctx, &ctx.inputs[0].1, plan, c, state, &meta)
}

/// Load a trained model artifact for evaluation: (model, plan, mean).
pub fn load_trained(
    model_dir: &Path,
    device: DeviceKind,
    backend: Option<BackendKind>,
) -> Result<(Box<dyn Model>, Plan, NamedTensor)> {
    let plan: Plan = serde_json::from_slice(
        &std::fs::read(model_dir.join("plan.json"))
            .context("the model artifact has no plan.json")?,
    )?;
    let (state, _) = checkpoint::load(&model_dir.join("state.safetensors"))?;
    let mut model = backend::build_with(
        &plan.graph,
        plan.seed,
        device,
        backend.unwrap_or(plan.backend),
    )?;
    model.load_state(&state)?;
    let mean = state
        .tensors
        .get("input/mean")
        .cloned()
        .context("state.safetensors has no `input/mean`")?;
    Ok((model, plan, mean))
}
