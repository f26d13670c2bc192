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
//!
//! Likewise each download from a remote cache appends its size and seconds to
//! `<store>/fetches.jsonl`: a stage in the remote is estimated at the median rate of the
//! last fetches from that remote ([`fetch_rate`]), or at [`REMOTE_RATE`] before any.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::manifest::{IngestFormat, Pipeline, StageConfig, StageKind};

/// One past run of a stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimingRecord {
    /// Stage kind.
    pub kind: StageKind,
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

impl TimingRecord {
    /// A record of a stage described by `what` ([`describe`]) that handled `images` x
    /// `epochs` in `seconds`.
    pub fn new(what: Described, images: u64, epochs: u64, seconds: f64) -> TimingRecord {
        let (kind, network, device, backend) = what;
        TimingRecord {
            kind,
            network,
            device,
            backend,
            images,
            epochs,
            seconds,
        }
    }
}

/// What describes a stage for matching past runs: (kind, network, device, backend).
pub type Described = (StageKind, Option<String>, Option<String>, Option<String>);

/// Training kinds count as one: an lr-drop runs at a train's rate.
fn group(kind: StageKind) -> StageKind {
    if kind.is_training() {
        StageKind::Train
    } else {
        kind
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

/// What describes stage `stage` for matching past runs.
pub fn describe(p: &Pipeline, stage: &str) -> Described {
    let s = &p.stages[stage];
    let kind = s.config.kind();
    let dev =
        |d: Option<crate::manifest::DeviceSetting>| d.map(|d| format!("{d:?}").to_lowercase());
    let be = |b: Option<crate::manifest::BackendKind>| b.map(|b| b.to_string());
    let network = p.network_of(stage).map(str::to_string);
    match &s.config {
        StageConfig::Evaluate(c) => (kind, network, dev(c.device), be(c.backend)),
        c => match c.training() {
            Some((_, _, device, backend)) => (kind, network, dev(device), be(backend)),
            None => (kind, None, None, None),
        },
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
                (c.classes.unwrap_or(0)).saturating_mul(
                    c.train_per_class
                        .unwrap_or(0)
                        .saturating_add(c.val_per_class.unwrap_or(0)),
                ) as u64,
                1,
            ))
            .filter(|u| u.0 > 0),
            _ => dataset_files.map(|n| (n as u64, 1)),
        },
        StageConfig::Split(_) | StageConfig::Hdf5(_) => Some((csvs(), 1)).filter(|u| u.0 > 0),
        StageConfig::Train(t) => h5(&t.train_split).map(|n| (n, t.epochs as u64)),
        StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
            h5("train").map(|n| (n, c.epochs as u64))
        }
        StageConfig::Evaluate(c) => h5(&c.split).map(|n| (n, 1)),
        // Writing a file: no images to count.
        StageConfig::Export(_) => None,
    }
}

/// Estimated seconds for a stage handling `images` x `epochs`, from `past` runs that
/// match it; `None` without a matching past run.
pub fn estimate(past: &[TimingRecord], what: &Described, images: u64, epochs: u64) -> Option<f64> {
    let (kind, network, device, backend) = what;
    let kind = *kind;
    let mut rates: Vec<f64> = past
        .iter()
        .rev()
        .filter(|r| {
            group(r.kind) == group(kind)
                && r.images > 0
                && r.epochs > 0
                && (group(kind) != StageKind::Train && kind != StageKind::Evaluate
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

/// The download rate (bytes/s) a fetch is estimated at before this store has fetched
/// anything of size from the remote: `pipe bench remote` against a server on loopback is
/// faster; a link to a cloud bucket, often slower.
pub const REMOTE_RATE: f64 = 50e6;

const FETCHES: &str = "fetches.jsonl";

/// One download from a remote cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FetchRecord {
    /// The remote (its URL, without credentials).
    pub remote: String,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Wall seconds, checks included.
    pub seconds: f64,
}

/// Append one fetch to the store's log (an O_APPEND write of one short line).
pub fn append_fetch(store_root: &Path, rec: &FetchRecord) -> Result<()> {
    let mut line = serde_json::to_string(rec)?;
    line.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(store_root.join(FETCHES))?
        .write_all(line.as_bytes())?;
    Ok(())
}

/// The median rate (bytes/s) of the last five fetches of 1 MiB or more from `remote`
/// (smaller ones measure the round trip, not the link); `None` before there are any.
pub fn fetch_rate(store_root: &Path, remote: &str) -> Option<f64> {
    let text = std::fs::read_to_string(store_root.join(FETCHES)).ok()?;
    let mut rates: Vec<f64> = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<FetchRecord>(l).ok())
        .filter(|r| r.remote == remote && r.bytes >= 1 << 20 && r.seconds > 0.0)
        .take(5)
        .map(|r| r.bytes as f64 / r.seconds)
        .collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    Some(rates[rates.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_is_estimated_at_the_median_rate_of_the_last_five_large_fetches_from_its_remote() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(fetch_rate(dir.path(), "s3://b/p"), None);
        let mb = 1 << 20;
        let add = |remote: &str, bytes: u64, seconds: f64| {
            let rec = FetchRecord {
                remote: remote.into(),
                bytes,
                seconds,
            };
            append_fetch(dir.path(), &rec).unwrap();
        };
        // Old fetches beyond the last five, another remote's, and small ones do not count.
        add("s3://b/p", 100 * mb, 100.0);
        add("s3://b/p", 100 * mb, 100.0);
        for secs in [1.0, 4.0, 2.0, 8.0, 0.5] {
            add("s3://b/p", 10 * mb, secs);
        }
        add("s3://other", 10 * mb, 0.001);
        add("s3://b/p", 1000, 1e-6);
        let rate = fetch_rate(dir.path(), "s3://b/p").unwrap();
        assert_eq!(rate, (10 * mb) as f64 / 2.0);
        assert_eq!(fetch_rate(dir.path(), "s3://nowhere"), None);
    }
}
