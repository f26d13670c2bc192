//! Stage implementations, one file (or folder) per kind, and what every kind declares:
//! its implementation version and which of its files are records rather than content.
//!
//! A stage reads the artifact folders of its inputs (and, for `ingest`, a dataset folder
//! the engine has fingerprinted), writes into an empty folder the engine gives it, and
//! returns a one-line summary. It never touches the store: publishing, keys and caching
//! are the engine's job. `batches` and `model` hold what training, evaluation and
//! prediction share: splits in memory and their batches, trained models and their
//! predictions.

pub mod batches;
pub mod evaluate;
pub mod export;
pub mod ingest;
pub mod model;
pub mod predict;
pub mod split;
pub mod train;
pub mod write_hdf5;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::data::decode::ChangedFile;
use crate::ids::StageKey;
use crate::manifest::{Pipeline, Stage, StageConfig, StageKind};
use crate::nn::graph::Graph;
use crate::outcome::{Event, Watcher};

/// Bump when a kind's output for the same config and inputs changes: it changes every key
/// of that kind, so old artifacts are not reused.
pub fn version(kind: StageKind) -> u32 {
    match kind {
        StageKind::Ingest => 1,
        StageKind::Split => 1,
        StageKind::Hdf5 => 1,
        StageKind::Train | StageKind::LrDrop | StageKind::Resume => 1,
        // 2: a tie with the label is no correct prediction in the confusion matrix and
        // per-class accuracy either (as rank-1 counts it).
        StageKind::Evaluate => 2,
        // 2: the model records its resize filter.
        StageKind::Export => 2,
    }
}

/// The top-level files of a kind's artifact that are records (how long it took), not
/// content: the store leaves them out of the artifact's hash and its seal.
pub fn records(kind: StageKind) -> &'static [&'static str] {
    match kind {
        StageKind::Train | StageKind::LrDrop | StageKind::Resume => train::RECORDS,
        StageKind::Ingest
        | StageKind::Split
        | StageKind::Hdf5
        | StageKind::Evaluate
        | StageKind::Export => &[],
    }
}

/// The files every artifact of a kind holds: what makes a folder an artifact of that kind
/// (a key record that points at a folder without them points at the wrong artifact).
pub fn required_files(kind: StageKind) -> &'static [&'static str] {
    match kind {
        StageKind::Ingest | StageKind::Split => &["classes.csv"],
        StageKind::Hdf5 => &["classes.csv", "means.json"],
        StageKind::Train | StageKind::LrDrop | StageKind::Resume => &[
            "plan.json",
            "state.safetensors",
            "model.safetensors",
            "history.json",
        ],
        StageKind::Evaluate => &["metrics.json", "predictions.csv"],
        StageKind::Export => &["model.onnx"],
    }
}

/// Every kind's record files: for an artifact whose kind is unknown (no key names it).
pub const ALL_RECORDS: &[&str] = train::RECORDS;

/// Path order of [`DatasetFiles::files`]: component by component.
pub fn cmp_paths(a: &str, b: &str) -> std::cmp::Ordering {
    // The order of the components, compared one by one, is the bytes' order with `/` below
    // every other byte: found at the first byte that differs, with no split.
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let key = |c: &u8| if *c == b'/' { 0 } else { u16::from(*c) + 1 };
    match (a.get(same), b.get(same)) {
        (Some(x), Some(y)) => key(x).cmp(&key(y)),
        (x, y) => x.is_some().cmp(&y.is_some()),
    }
}

/// A dataset folder and the content hash of each file in it.
pub struct DatasetFiles<'a> {
    /// The folder (canonical).
    pub root: &'a Path,
    /// (relative path with `/`, BLAKE3), sorted by path component (see [`cmp_paths`]).
    pub files: &'a [(String, [u8; 32])],
}

impl DatasetFiles<'_> {
    /// The content hash (hex) of a file, by relative path.
    pub fn hash_of(&self, rel: &str) -> Option<String> {
        self.files
            .binary_search_by(|(p, _)| cmp_paths(p, rel))
            .ok()
            .map(|i| blake3::Hash::from(self.files[i].1).to_hex().to_string())
    }

    /// The bytes of dataset file `rel` (a regular file, or a link to one), checked against
    /// the fingerprint the stage's key was made from: a file that appeared or changed since
    /// the walk is an error (a change carries [`ChangedFile`], so the next fingerprint
    /// reads the file again), never an index of other bytes under that key.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>> {
        let path = self.root.join(rel);
        let Some(want) = self.hash_of(rel) else {
            anyhow::bail!(
                "{}: file appeared after the dataset was fingerprinted; run again",
                path.display()
            );
        };
        let bytes = crate::data::read_regular(&path)?;
        if blake3::hash(&bytes).to_hex().as_str() != want {
            return Err(anyhow::Error::new(ChangedFile { file: path.clone() }).context(format!(
                "{} changed after its dataset was fingerprinted: nothing is published; run again to take the dataset as it is now",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// [`DatasetFiles::read`] of a UTF-8 text file.
    pub fn read_text(&self, rel: &str) -> Result<String> {
        String::from_utf8(self.read(rel)?)
            .with_context(|| format!("{} is not UTF-8 text", self.root.join(rel).display()))
    }

    /// Check that every fingerprinted file `wanted` picks out is among the index paths
    /// `listed` (relative to the root): a file removed between the walk and the listing
    /// would leave the index short of what the key says it holds.
    pub fn check_listed<'r>(
        &self,
        listed: impl IntoIterator<Item = &'r str>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let listed: std::collections::HashSet<&str> = listed.into_iter().collect();
        if let Some((gone, _)) = self
            .files
            .iter()
            .find(|(rel, _)| wanted(rel) && !listed.contains(rel.as_str()))
        {
            anyhow::bail!(
                "{}: fingerprinted, and not there when the dataset was listed: the dataset changed during the run; nothing is published; run again",
                self.root.join(gone).display()
            );
        }
        Ok(())
    }
}

/// Everything a stage may read and where it writes.
pub struct StageCtx<'a> {
    /// The pipeline (for its seed and paths).
    pub pipeline: &'a Pipeline,
    /// The stage being run.
    pub stage: &'a Stage,
    /// Input stage name -> its artifact folder (read-only).
    pub inputs: Vec<(String, PathBuf)>,
    /// The empty folder to write into.
    pub out: &'a Path,
    /// A folder kept across interrupted runs of this stage key (checkpoints of a training
    /// run in progress); removed once the stage's output is published.
    pub scratch: &'a Path,
    /// The fingerprinted dataset folder, for stages that read one.
    pub dataset: Option<DatasetFiles<'a>>,
    /// The expanded network, for a `train` stage.
    pub network: Option<&'a Graph>,
    /// The stage's key: what its checkpoints say they belong to, so a run resumes only
    /// from checkpoints its own key wrote.
    pub key: &'a StageKey,
    /// Whoever watches the run: the stage's lines, warnings and progress bars go here.
    pub watcher: &'a dyn Watcher,
}

impl StageCtx<'_> {
    /// The folder of the only input.
    pub fn input_dir(&self) -> &Path {
        &self.inputs[0].1
    }

    /// Tell the watcher something worth a line, whatever the output format.
    pub fn note(&self, text: String) {
        self.watcher.event(Event::Notice(text));
    }

    /// Warn the watcher.
    pub fn warn(&self, text: String) {
        self.watcher.event(Event::Warning(text));
    }

    /// A fault-injection point for tests: with `PIPE_FAULT=<name>` in the environment the
    /// watcher is told (the console always shows it) and the process stalls here (until
    /// the file `PIPE_FAULT_RELEASE` names appears, at most `PIPE_FAULT_SECS`, default
    /// 600), so a test can kill it mid-stage or race another process against it.
    pub fn fault_point(&self, name: &str) {
        crate::outcome::events::fault_point(self.watcher, name);
    }
}

/// The external folder a stage reads, if any (the engine fingerprints it).
pub fn external_root(p: &Pipeline, s: &Stage) -> Option<PathBuf> {
    match &s.config {
        StageConfig::Ingest(c) => c.root.as_ref().map(|r| p.resolve_path(r)),
        _ => None,
    }
}

/// Run a stage; returns its summary line.
pub fn run(ctx: &StageCtx<'_>) -> Result<String> {
    match &ctx.stage.config {
        StageConfig::Ingest(c) => ingest::run(ctx, c),
        StageConfig::Split(c) => split::run(ctx, c),
        StageConfig::Hdf5(c) => write_hdf5::run(ctx, c),
        StageConfig::Train(c) => train::run_train(ctx, c),
        StageConfig::LrDrop(c) => train::run_continue(ctx, c, None),
        StageConfig::Resume {
            config, at, file, ..
        } => match file {
            Some((path, hash)) => train::run_resume_file(ctx, config, path, hash),
            None => train::run_continue(ctx, config, Some(*at)),
        },
        StageConfig::Evaluate(c) => evaluate::run(ctx, c),
        StageConfig::Export(c) => export::run(ctx, c),
    }
}

#[cfg(test)]
mod tests {
    use super::cmp_paths;

    #[test]
    fn cmp_paths_orders_component_by_component() {
        let names = [
            "",
            "/",
            "a",
            "a/",
            "a/b",
            "a-b",
            "a.b",
            "a/b/c",
            "a/bc",
            "ab",
            "a b",
            "b",
            "a//b",
            "train/n01/images/x_1.JPEG",
            "train/n01/images/x_10.JPEG",
            "train/n01-x/a",
            "train/n01",
            "val/images/v.JPEG",
            "val-extra",
            "é/a",
            "e/a",
        ];
        for a in names {
            for b in names {
                assert_eq!(
                    cmp_paths(a, b),
                    a.split('/').cmp(b.split('/')),
                    "{a:?} against {b:?}"
                );
            }
        }
    }
}
