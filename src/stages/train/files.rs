//! A training stage's files: checkpoints (`checkpoints/epoch_N.safetensors`, each carrying
//! the full state, the input mean, the plan, the epoch and the history so far), and the
//! artifact it publishes — `state.safetensors` (full state), `model.safetensors`
//! (weights and batch-norm statistics), `mean.safetensors`, this segment's checkpoints,
//! `history.json` and `history.png`, `plan.json`, `classes.csv` (the data's class list),
//! and the record `timings.json` (how fast
//! each epoch went: not content, see [`RECORDS`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::backend::{NamedTensor, State};
use crate::data::checkpoint;
use crate::ids::StageKey;
use crate::nn::graph::Graph;
use crate::outcome::history::{EpochRecord, EpochTiming};
use crate::report::history::plot_png;
use crate::stages::model::{describe_device, TrainingPlan};

/// The class list of the data the model was trained on (a copy of the HDF5 stage's), so
/// a model artifact is read alone.
pub const CLASSES: &str = "classes.csv";

/// The file that holds each epoch's images/s.
pub const TIMINGS: &str = crate::outcome::history::TIMINGS;

/// The files of a training artifact that are records, not content: the store leaves them
/// out of the artifact's hash, so a byte-identical re-train cuts off early.
pub const RECORDS: &[&str] = &[TIMINGS, PLOT];

/// The training plot: a picture of `history.json`, drawn with whatever font the machine
/// has (so its pixels differ from machine to machine). A record, not content: the same
/// training gives the same artifact hash wherever it runs, and a shared store or a remote
/// cache finds it.
pub const PLOT: &str = "history.png";

/// Where checkpoints go inside a stage's folder (its scratch, or its artifact).
pub fn checkpoint_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}

/// The metadata every checkpoint carries: with the plan (network, optimizer, data
/// settings) a `resume` stage can start from the file alone.
pub(crate) fn checkpoint_meta(
    epoch: usize,
    hist: &[EpochRecord],
    plan: &TrainingPlan,
) -> Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    let mut p = plan.clone();
    p.epochs_done = epoch;
    m.insert("plan".into(), serde_json::to_string(&p)?);
    m.insert("epoch".into(), epoch.to_string());
    m.insert("history".into(), serde_json::to_string(hist)?);
    m.insert("format".into(), "pipe-checkpoint-v1".into());
    Ok(m)
}

/// The checkpoints `epoch_N.safetensors` in a folder, by epoch.
pub fn checkpoints_in(dir: &Path) -> Vec<(usize, PathBuf)> {
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

/// The epoch of the latest checkpoint of stage key `key` that an interrupted run left in
/// its scratch folder: where the next run of that stage resumes. `graph`: a `train`
/// stage's network, whose layer names the checkpoint must bear (see [`same_layer_names`]).
pub fn interrupted_at(scratch: &Path, key: &StageKey, graph: Option<&Graph>) -> Option<usize> {
    checkpoints_in(&checkpoint_dir(scratch))
        .into_iter()
        .rev()
        .find(|(_, p)| {
            let Ok(meta) = checkpoint::read_metadata(p) else {
                return false;
            };
            meta.get("key").is_some_and(|k| k == key.as_str())
                && as_written(p, false).is_ok()
                && graph.is_none_or(|g| same_layer_names(&meta, g).is_ok())
        })
        .map(|c| c.0)
}

/// Whether a checkpoint was written by a network whose layers bear the names, in order,
/// of `graph`'s. The stage key covers the network's structure, not its names (renaming a
/// block reuses the training); a checkpoint's tensors go by name, so after two layers of
/// one shape swapped names, resuming would load each one's weights into the other.
pub(crate) fn same_layer_names(
    meta: &std::collections::HashMap<String, String>,
    graph: &crate::nn::graph::Graph,
) -> std::result::Result<(), String> {
    let plan: TrainingPlan = meta
        .get("plan")
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or("it holds no training plan")?;
    let names = |g: &crate::nn::graph::Graph| -> Vec<String> {
        g.nodes.iter().map(|n| n.name.clone()).collect()
    };
    let (then, now) = (names(&plan.graph), names(graph));
    match then.iter().zip(&now).position(|(a, b)| a != b) {
        None if then.len() == now.len() => Ok(()),
        at => {
            let at = at.unwrap_or(then.len().min(now.len()));
            Err(format!(
                "the network's layers were named otherwise when it was written (layer {}: `{}` then, `{}` now), so its tensors would load into other layers",
                at + 1,
                then.get(at).map_or("-", |s| s.as_str()),
                now.get(at).map_or("-", |s| s.as_str())
            ))
        }
    }
}

/// The input mean travels inside every checkpoint (as `input/mean`), so that one file
/// suffices to resume.
pub(crate) fn with_mean(mut st: State, mean: &NamedTensor) -> State {
    st.tensors.insert("input/mean".into(), mean.clone());
    st
}

/// Save the checkpoint of epoch `epoch` of stage key `key` into `dir` (the key goes into
/// its metadata: a run resumes only from checkpoints of its own key).
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_checkpoint(
    dir: &Path,
    epoch: usize,
    state: State,
    mean: &NamedTensor,
    history: &[EpochRecord],
    plan: &TrainingPlan,
    key: &StageKey,
) -> Result<()> {
    let mut meta = checkpoint_meta(epoch, history, plan)?;
    meta.insert("key".into(), key.to_string());
    let path = dir.join(format!("epoch_{epoch}.safetensors"));
    let written = checkpoint::save(&path, &with_mean(state, mean), meta, |_| true)?;
    // The checkpoint's hash beside it, written after it: a checkpoint whose bytes are not
    // the ones written (flipped on disk, or a hash never written: killed in between) is
    // never resumed from.
    crate::atomic::write_json_atomic(&hash_path(&path), &written)
}

/// Where a checkpoint's recorded hash lives: `epoch_N.safetensors.blake3`.
fn hash_path(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.file_name().unwrap_or_default().to_os_string();
    name.push(".blake3");
    checkpoint.with_file_name(name)
}

/// Whether the checkpoint at `path` is what was written (its BLAKE3 against the one
/// recorded beside it); `Err` says why not. `full`: hash the file; otherwise compare only
/// its length (what `status` can afford).
pub fn as_written(path: &Path, full: bool) -> Result<(), String> {
    let recorded: checkpoint::Written = std::fs::read(hash_path(path))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("no hash was recorded for it (written before checkpoints were hashed, or the run was killed before recording it)")?;
    let len = crate::data::regular_len(path).map_err(|e| format!("{e:#}"))?;
    if len != recorded.bytes {
        return Err(format!(
            "it holds {len} bytes, {} were written",
            recorded.bytes
        ));
    }
    if full {
        let now = crate::content::hash_file(path).map_err(|e| format!("{e:#}"))?;
        if now != recorded.blake3 {
            return Err(format!(
                "its bytes are not the ones written (BLAKE3 {} recorded, {} now)",
                crate::ids::short(&recorded.blake3),
                crate::ids::short(&now)
            ));
        }
    }
    Ok(())
}

/// Move a refused checkpoint (and its recorded hash) into `refused/` beside `checkpoints/`,
/// where no run looks; returns where it went.
pub(crate) fn refuse(path: &Path) -> Result<PathBuf> {
    let aside = path
        .parent()
        .map_or_else(|| PathBuf::from("refused"), |d| d.with_file_name("refused"));
    std::fs::create_dir_all(&aside)?;
    // One refused earlier under the same name stays: the new one takes the next free name.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut to = aside.join(&*name);
    let mut n = 1;
    while std::fs::symlink_metadata(&to).is_ok() {
        to = aside.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    let hash = hash_path(path);
    if hash.exists() {
        let _ = std::fs::rename(&hash, hash_path(&to));
    }
    Ok(to)
}

/// Whether the checkpoint at `path` belongs to stage key `key` (its metadata says so);
/// `Err` says why not: it does not read, or another key (or none) wrote it.
pub fn belongs_to(path: &Path, key: &StageKey) -> Result<(), String> {
    let meta = checkpoint::read_metadata(path).map_err(|e| format!("{e:#}"))?;
    match meta.get("key") {
        Some(k) if k == key.as_str() => Ok(()),
        Some(k) => Err(format!(
            "it belongs to stage key {}, not this one ({})",
            crate::ids::short(k),
            key.short()
        )),
        None => Err("it names no stage key".into()),
    }
}

/// Write the monitor of a run in progress into `dir`: `history.json`, `history.png` and
/// the timings (each epoch's with the `device` it trained on).
pub(crate) fn write_history(dir: &Path, history: &[EpochRecord], device: &str) -> Result<()> {
    crate::atomic::write_json_atomic(&dir.join("history.json"), &history)?;
    crate::atomic::write_atomic(&dir.join(PLOT), &plot_png(history)?)?;
    // The device is this segment's: earlier segments' epochs (continued from) keep none.
    let current = history.last().map(|r| r.stage.as_str());
    let timings: Vec<EpochTiming> = history
        .iter()
        .filter(|r| r.images_per_sec > 0.0)
        .map(|r| EpochTiming {
            epoch: r.epoch,
            stage: r.stage.clone(),
            images_per_sec: r.images_per_sec,
            seconds: r.seconds,
            device: if Some(r.stage.as_str()) == current {
                device.to_string()
            } else {
                String::new()
            },
        })
        .collect();
    crate::atomic::write_json_atomic(&dir.join(TIMINGS), &timings)
}

/// Write the artifact of a finished segment into `out`: the final state, the weights
/// alone, the mean, this segment's checkpoints (epochs in `(start, end]`, copied from
/// `ckpt_dir`), the history and the plan.
#[allow(clippy::too_many_arguments)]
pub(crate) fn publish(
    out: &Path,
    state: State,
    mean: &NamedTensor,
    history: &[EpochRecord],
    plan: &mut TrainingPlan,
    ckpt_dir: &Path,
    start: usize,
    end: usize,
) -> Result<()> {
    let state = with_mean(state, mean);
    let meta = checkpoint_meta(end, history, plan)?;
    checkpoint::save(&out.join("state.safetensors"), &state, meta.clone(), |_| {
        true
    })?;
    // The weights served, exported and evaluated: the moving average's, when kept.
    let weights = state.clone().for_inference();
    checkpoint::save(&out.join("model.safetensors"), &weights, meta, |k| {
        !k.starts_with("opt/")
    })?;
    let mut mean_state = State::default();
    mean_state.tensors.insert("mean".into(), mean.clone());
    checkpoint::save(
        &out.join("mean.safetensors"),
        &mean_state,
        HashMap::new(),
        |_| true,
    )?;
    let out_ckpt = checkpoint_dir(out);
    std::fs::create_dir_all(&out_ckpt)?;
    for (n, p) in checkpoints_in(ckpt_dir) {
        if n > start && n <= end {
            crate::data::copy_file(&p, &out_ckpt.join(format!("epoch_{n}.safetensors")))?;
        }
    }
    write_history(out, history, &describe_device(plan.device))?;
    plan.epochs_done = end;
    crate::data::write_file(&out.join("plan.json"), serde_json::to_vec_pretty(&plan)?)?;
    Ok(())
}

/// The last epoch's record of a training artifact (`history.json`), if it reads.
pub fn last_epoch(dir: &Path) -> Option<EpochRecord> {
    let bytes = std::fs::read(dir.join("history.json")).ok()?;
    let h: Vec<EpochRecord> = serde_json::from_slice(&bytes).ok()?;
    h.into_iter().last()
}

#[cfg(test)]
mod tests {
    use super::refuse;

    #[test]
    fn a_second_refused_checkpoint_of_one_name_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = dir.path().join("checkpoints");
        std::fs::create_dir_all(&ckpts).unwrap();
        let path = ckpts.join("epoch_1.safetensors");
        std::fs::write(&path, b"first").unwrap();
        std::fs::write(ckpts.join("epoch_1.safetensors.blake3"), b"h1").unwrap();
        let a = refuse(&path).unwrap();
        std::fs::write(&path, b"second").unwrap();
        let b = refuse(&path).unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert_eq!(std::fs::read(&b).unwrap(), b"second");
        let refused = dir.path().join("refused");
        assert_eq!(b, refused.join("epoch_1.safetensors.1"));
        assert_eq!(
            std::fs::read(refused.join("epoch_1.safetensors.blake3")).unwrap(),
            b"h1"
        );
        assert!(!path.exists());
    }
}
