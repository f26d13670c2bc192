//! Time estimates for stages that would run, from past runs in the same store.
//!
//! After every stage it runs, the engine appends one line to `<store>/timings.jsonl`: the
//! stage's kind, network, device and backend, how many images it handled (training: images
//! per epoch, and epochs) and its seconds. The file is a log beside the artifacts, never
//! part of any content hash. An estimate for a stage that would run takes the median rate
//! (seconds per image, per epoch when training) of the last matching runs — same kind
//! (train, lr-drop and resume count as one), and for training the same network, device and
//! backend — times the images and epochs it would handle now, read from its inputs when
//! they are in the store.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::manifest::{IngestFormat, Pipeline, StageConfig};

/// One past run of a stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimingRecord {
    /// Stage kind.
    pub kind: String,
    /// Network trained or evaluated (training kinds and evaluate).
    pub network: Option<String>,
    /// `cpu` or `cuda`.
    pub device: Option<String>,
    /// `native` or `dfdx`.
    pub backend: Option<String>,
    /// Images handled (per epoch when training).
    pub images: u64,
    /// Epochs (1 for other kinds).
    pub epochs: u64,
    /// Wall seconds.
    pub seconds: f64,
}

fn group(kind: &str) -> &str {
    match kind {
        "lr-drop" | "resume" => "train",
        k => k,
    }
}

const LOG: &str = "timings.jsonl";

/// Append one record to the store's timing log (one short line: an O_APPEND write).
pub fn append(store_root: &Path, rec: &TimingRecord) -> Result<()> {
    let mut line = serde_json::to_string(rec)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(store_root.join(LOG))?;
    f.write_all(line.as_bytes())?;
    Ok(())
}

/// Every record in the store's timing log (lines that do not parse are skipped).
pub fn load(store_root: &Path) -> Vec<TimingRecord> {
    std::fs::read_to_string(store_root.join(LOG))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What describes a stage for matching: (kind, network, device, backend).
pub fn describe(
    p: &Pipeline,
    stage: &str,
) -> (String, Option<String>, Option<String>, Option<String>) {
    let s = &p.stages[stage];
    let kind = s.config.kind().to_string();
    let dev =
        |d: Option<crate::manifest::DeviceSetting>| d.map(|d| format!("{d:?}").to_lowercase());
    let be = |b: Option<crate::manifest::BackendKind>| b.map(|b| b.to_string());
    match &s.config {
        StageConfig::Train(t) => (
            kind,
            Some(t.config.network.clone()),
            dev(t.config.device),
            be(t.config.backend),
        ),
        StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
            (kind, network_of(p, stage, 0), dev(c.device), be(c.backend))
        }
        StageConfig::Evaluate(c) => (
            kind,
            s.inputs.iter().find_map(|i| network_of(p, i, 0)),
            dev(c.device),
            be(c.backend),
        ),
        _ => (kind, None, None, None),
    }
}

fn network_of(p: &Pipeline, stage: &str, depth: usize) -> Option<String> {
    match &p.stages.get(stage)?.config {
        StageConfig::Train(t) => Some(t.config.network.clone()),
        StageConfig::LrDrop(c) if depth < 64 => network_of(p, &c.from, depth + 1),
        StageConfig::Resume { stage, .. } if depth < 64 => network_of(p, stage, depth + 1),
        _ => None,
    }
}

/// Rows of a split CSV (header excluded).
fn csv_rows(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter(|l| !l.trim().is_empty())
                .count()
                .saturating_sub(1) as u64
        })
        .unwrap_or(0)
}

/// Images in an HDF5 split file (its `labels` length).
fn h5_len(path: &Path) -> Option<u64> {
    let f = hdf5::File::open(path).ok()?;
    let d = f.dataset("labels").ok()?;
    d.shape().first().map(|n| *n as u64)
}

/// The images a stage handles and its epochs, from the inputs at hand (`inputs`: the
/// artifact folders of the inputs that are in the store) and, for an ingest, its dataset
/// (`dataset_files`). `None` when that cannot be known yet.
pub fn units(
    p: &Pipeline,
    stage: &str,
    inputs: &[PathBuf],
    dataset_files: Option<usize>,
) -> Option<(u64, u64)> {
    let s = &p.stages[stage];
    let h5 = |name: &str| {
        inputs
            .iter()
            .find_map(|d| h5_len(&d.join(format!("{name}.h5"))))
    };
    let csvs = || -> u64 {
        inputs
            .iter()
            .map(|d| {
                ["train", "val", "test"]
                    .iter()
                    .map(|n| csv_rows(&d.join(format!("{n}.csv"))))
                    .sum::<u64>()
            })
            .sum()
    };
    match &s.config {
        StageConfig::Ingest(c) => match c.format {
            IngestFormat::Synthetic => Some((
                (c.classes.unwrap_or(0)
                    * (c.train_per_class.unwrap_or(0) + c.val_per_class.unwrap_or(0)))
                    as u64,
                1,
            ))
            .filter(|u| u.0 > 0),
            _ => dataset_files.map(|n| (n as u64, 1)),
        },
        StageConfig::Split(_) | StageConfig::Hdf5(_) => Some((csvs(), 1)).filter(|u| u.0 > 0),
        StageConfig::Train(t) => h5(&t.config.train_split).map(|n| (n, t.config.epochs as u64)),
        StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
            h5("train").map(|n| (n, c.epochs as u64))
        }
        StageConfig::Evaluate(c) => h5(&c.split).map(|n| (n, 1)),
    }
}

/// Estimated seconds for a stage handling `images` x `epochs`, from `past` runs that
/// match it; `None` without a matching past run.
pub fn estimate(
    past: &[TimingRecord],
    what: &(String, Option<String>, Option<String>, Option<String>),
    images: u64,
    epochs: u64,
) -> Option<f64> {
    let (kind, network, device, backend) = what;
    let mut rates: Vec<f64> = past
        .iter()
        .rev()
        .filter(|r| {
            group(&r.kind) == group(kind)
                && r.images > 0
                && r.epochs > 0
                && (group(kind) != "train" && kind != "evaluate"
                    || (&r.network == network && &r.device == device && &r.backend == backend))
        })
        .take(5)
        .map(|r| r.seconds / (r.images * r.epochs) as f64)
        .collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    Some(rates[rates.len() / 2] * (images * epochs) as f64)
}

/// "12s", "3.4 min", "2.1 h".
pub fn human(secs: f64) -> String {
    if secs >= 5400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 90.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{secs:.1}s")
    }
}
