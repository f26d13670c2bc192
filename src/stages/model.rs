//! A trained model as later stages use it: the training plan a model artifact carries
//! (`plan.json`: network, optimizer, data settings), loading a model artifact, and class
//! probabilities for a whole split. Shared by training (validation), evaluation and
//! prediction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::batches::{make_batch, prefetched, subtract_mean, Split};
use crate::backend::{self, BackendKind, DeviceKind, Model, NamedTensor, Optimizer, State};
use crate::data::checkpoint;
use crate::manifest::{AugmentConfig, DeviceSetting, EmaConfig, MeanKind, MixConfig, Tta};
use crate::nn::graph::{Graph, Op};

/// Everything needed to continue or evaluate a trained model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingPlan {
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
    /// Label smoothing, mixup, CutMix and the weights' moving average.
    #[serde(default, skip_serializing_if = "Recipe::is_plain")]
    pub recipe: Recipe,
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
    /// What that device was, in plans written before it moved to the `timings.json`
    /// record ([`crate::outcome::history::EpochTiming::device`]): it is no longer written
    /// here, so the same training makes the same artifact on any machine.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_info: String,
}

/// The parts of a training recipe beyond the optimizer, schedule and augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Recipe {
    /// Label smoothing ε.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Mixup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup: Option<MixConfig>,
    /// CutMix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutmix: Option<MixConfig>,
    /// The weights' moving average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaConfig>,
}

impl Recipe {
    /// None of it.
    pub fn is_plain(&self) -> bool {
        *self == Recipe::default()
    }
}

fn dfdx_backend() -> BackendKind {
    BackendKind::Dfdx
}

/// A description of the device for the artifact's metadata.
pub(crate) fn describe_device(d: DeviceKind) -> String {
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

/// Class probabilities for a whole split, in batches; with `tta = flip`, the mean of each
/// image's and its mirror's.
pub(crate) fn predict_split_tta(
    model: &mut dyn Model,
    graph: &Graph,
    s: &Split,
    mean: &NamedTensor,
    batch: usize,
    tta: Tta,
) -> Result<Vec<f32>> {
    let mut probs = predict_split_as(model, graph, s, mean, batch, Tta::None)?;
    if tta == Tta::Flip {
        let mirrored = predict_split_as(model, graph, s, mean, batch, Tta::Flip)?;
        average_into(&mut probs, &mirrored);
    }
    Ok(probs)
}

/// `a = (a + b) / 2`: test-time augmentation's mean of two views' probabilities.
pub fn average_into(a: &mut [f32], b: &[f32]) {
    for (p, q) in a.iter_mut().zip(b) {
        *p = (*p + *q) * 0.5;
    }
}

/// Images `idx` of a split mirrored left to right, then normalised.
fn mirrored_batch(s: &Split, idx: &[usize], mean: &NamedTensor) -> (Vec<f32>, Vec<i64>) {
    let px = s.h * s.w * 3;
    let mut x = vec![0f32; idx.len() * px];
    for (dst, &i) in x.chunks_exact_mut(px).zip(idx) {
        for (d, &v) in dst.iter_mut().zip(&s.images[i * px..(i + 1) * px]) {
            *d = v as f32;
        }
        mirror_images(dst, s.h, s.w);
        subtract_mean(dst, mean);
    }
    (x, idx.iter().map(|&i| s.labels[i]).collect())
}

/// Mirror every image of a batch (n images h x w x 3, HWC) left to right.
pub fn mirror_images(x: &mut [f32], h: usize, w: usize) {
    for row in x.chunks_exact_mut(w * 3) {
        let _ = h;
        for i in 0..w / 2 {
            let j = w - 1 - i;
            for c in 0..3 {
                row.swap(i * 3 + c, j * 3 + c);
            }
        }
    }
}

/// Class probabilities for a whole split, in batches.
pub(crate) fn predict_split(
    model: &mut dyn Model,
    graph: &Graph,
    s: &Split,
    mean: &NamedTensor,
    batch: usize,
) -> Result<Vec<f32>> {
    predict_split_as(model, graph, s, mean, batch, Tta::None)
}

/// Class probabilities for a whole split, each image as it is (`none`) or mirrored
/// (`flip`).
fn predict_split_as(
    model: &mut dyn Model,
    graph: &Graph,
    s: &Split,
    mean: &NamedTensor,
    batch: usize,
    tta: Tta,
) -> Result<Vec<f32>> {
    let k = model.classes();
    let ends_in_softmax = matches!(graph.nodes.last().map(|n| &n.op), Some(Op::Softmax));
    let mut probs = Vec::with_capacity(s.n * k);
    let all: Vec<usize> = (0..s.n).collect();
    let chunks: Vec<&[usize]> = all.chunks(batch.max(1)).collect();
    prefetched(
        chunks.len(),
        |c| match tta {
            Tta::None => make_batch(s, chunks[c], mean, None),
            // Mirrored before the mean is subtracted: `mirror(x) - mean`, as training's
            // flips and the exported graph see an image (a per-pixel mean is not
            // symmetric).
            Tta::Flip => mirrored_batch(s, chunks[c], mean),
        },
        |c, (x, _)| {
            let mut out = model.predict(&x, chunks[c].len())?;
            if !ends_in_softmax {
                softmax_rows(&mut out, k);
            }
            probs.extend(out);
            Ok(())
        },
    )?;
    Ok(probs)
}

/// Softmax over each row of `k` values (for a network that does not end in one).
pub(crate) fn softmax_rows(out: &mut [f32], k: usize) {
    for row in out.chunks_exact_mut(k) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = row.iter().map(|v| (v - m).exp()).sum();
        row.iter_mut().for_each(|v| *v = (*v - m).exp() / z);
    }
}

/// Mean cross-entropy and accuracy of `probs` (rows of `k`) against `labels`. A row with a
/// value that is not finite makes the loss NaN (a diverged validation: recorded as such,
/// ranked last) and is never correct; a label tied with another class is not correct
/// either (as `evaluate`'s rank-1 counts it).
pub(crate) fn loss_and_acc(probs: &[f32], labels: &[i64], k: usize) -> (f64, f64) {
    let n = labels.len().max(1);
    let mut loss = 0.0;
    let mut correct = 0;
    for (i, &l) in labels.iter().enumerate() {
        let row = &probs[i * k..(i + 1) * k];
        let p = row[l as usize];
        if row.iter().any(|v| !v.is_finite()) {
            loss = f64::NAN;
            continue;
        }
        loss -= (p.max(1e-12) as f64).ln();
        if crate::backend::predicts(row, l as usize) {
            correct += 1;
        }
    }
    (loss / n as f64, correct as f64 / n as f64)
}

/// The network's input must be the data's image shape (RGB).
pub(crate) fn check_input(graph: &Graph, data: &Split, network: &str) -> Result<()> {
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

pub(crate) fn check_classes(model: &dyn Model, data: &Path, network: &str) -> Result<()> {
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

/// A trained model artifact (a `train`, `lr-drop` or `resume` stage's output) as every
/// reader opens it: its plan, read once, and its files by name.
#[derive(Debug, Clone)]
pub struct ModelArtifact {
    /// The artifact's folder.
    pub dir: PathBuf,
    /// Its `plan.json`.
    pub plan: TrainingPlan,
}

impl ModelArtifact {
    /// The full state: weights, batch-norm statistics, optimizer moments, the mean.
    pub const STATE: &'static str = "state.safetensors";
    /// The weights and statistics alone (no optimizer moments), with the mean.
    pub const WEIGHTS: &'static str = "model.safetensors";
    /// The training plan.
    pub const PLAN: &'static str = "plan.json";

    /// Open the model artifact in `dir`: its plan must read.
    pub fn open(dir: &Path) -> Result<ModelArtifact> {
        let path = dir.join(Self::PLAN);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("the model artifact {} has no plan.json", dir.display()))?;
        let plan = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} does not read", path.display()))?;
        Ok(ModelArtifact {
            dir: dir.to_path_buf(),
            plan,
        })
    }

    /// Its full state and that file's metadata.
    pub fn state(&self) -> Result<(State, HashMap<String, String>)> {
        checkpoint::load(&self.dir.join(Self::STATE))
    }

    /// Its weights (no optimizer moments) and that file's metadata.
    pub fn weights(&self) -> Result<(State, HashMap<String, String>)> {
        checkpoint::load(&self.dir.join(Self::WEIGHTS))
    }

    /// The model with its trained state on `device`, by `backend` (default: the one it
    /// was trained with), and the input mean it was trained with: the weights' moving
    /// average in place of the weights when the training kept one.
    pub fn load(
        &self,
        device: DeviceKind,
        backend: Option<BackendKind>,
    ) -> Result<(Box<dyn Model>, NamedTensor)> {
        let state = self.state()?.0.for_inference();
        let plan = &self.plan;
        let kind = backend.unwrap_or(plan.backend);
        let mut model = backend::build_with(&plan.graph, plan.seed, device, kind)?;
        let file = self.dir.join(Self::STATE);
        model
            .load_state(&state)
            .with_context(|| format!("cannot load {}", file.display()))?;
        let mean = input_mean(&state, &file.display().to_string())?;
        Ok((model, mean))
    }
}

/// The input mean a state carries (`input/mean`); `file` names it in the error.
pub fn input_mean(state: &State, file: &str) -> Result<NamedTensor> {
    state
        .tensors
        .get("input/mean")
        .cloned()
        .with_context(|| format!("{file} has no `input/mean`"))
}

#[cfg(test)]
mod tests {
    use super::loss_and_acc;

    #[test]
    fn a_non_finite_row_makes_the_loss_nan_and_a_tie_is_not_correct() {
        // Two classes, three rows: right, tied with the label, wrong.
        let probs = [0.9, 0.1, 0.5, 0.5, 0.2, 0.8];
        let (loss, acc) = loss_and_acc(&probs, &[0, 0, 0], 2);
        let want = -(0.9f32.ln() as f64 + 0.5f32.ln() as f64 + 0.2f32.ln() as f64) / 3.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        assert!((acc - 1.0 / 3.0).abs() < 1e-12, "{acc}");
        // A NaN anywhere in a row: the loss is NaN, that row not correct, the others are.
        let probs = [0.9, 0.1, f32::NAN, f32::NAN, 0.9, 0.1];
        let (loss, acc) = loss_and_acc(&probs, &[0, 0, 0], 2);
        assert!(loss.is_nan());
        assert!((acc - 2.0 / 3.0).abs() < 1e-12, "{acc}");
        let (loss, _) = loss_and_acc(&[f32::INFINITY, 0.0], &[1], 2);
        assert!(loss.is_nan());
    }
}
