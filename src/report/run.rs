//! One run as the dashboard shows it: its stages and why each is cached or not, its
//! curves so far (also of a training that another process is running now), its effective
//! configuration, its networks layer by layer, its evaluations with their confusion
//! matrices, and the files of each artifact. The engine's query layer fills a [`RunView`];
//! `ui` renders it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::show::Row;
use crate::outcome::history::EpochRecord;
use crate::outcome::StageOutcome;

/// A training running now, as far as the store shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Live {
    /// The training stage.
    pub stage: String,
    /// Its last finished epoch.
    pub epoch: usize,
    /// The epoch the stage ends with.
    pub last_epoch: usize,
    /// Training images per second of its last epoch.
    pub images_per_sec: Option<f64>,
    /// Whether a process holds the stage's lock (it may have been killed: then not).
    pub running: bool,
}

/// One layer of a network summary.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// Node name (`3a/second2/conv`).
    pub name: String,
    /// Op (`conv2d`).
    pub op: String,
    /// Output shape (`32x32x96`).
    pub shape: String,
    /// Parameters (trainable + statistics).
    pub params: usize,
    /// Multiply-accumulates per image.
    pub macs: usize,
}

/// A network: its layers and totals.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkView {
    /// Network name.
    pub name: String,
    /// The training stages that train it.
    pub trained_by: Vec<String>,
    /// Layers in order.
    pub layers: Vec<Layer>,
    /// Trainable parameters.
    pub trainable: usize,
    /// Batch-norm statistics.
    pub non_trainable: usize,
    /// Multiply-accumulates per image.
    pub macs: usize,
}

/// One evaluate stage's result.
#[derive(Debug, Clone, Serialize)]
pub struct EvalView {
    /// Stage name.
    pub stage: String,
    /// Split evaluated.
    pub split: String,
    /// Images evaluated.
    pub images: Option<usize>,
    /// Mean cross-entropy.
    pub loss: Option<f64>,
    /// Rank-k accuracy by k.
    pub ranks: BTreeMap<usize, f64>,
    /// Class names, by label.
    pub classes: Vec<String>,
    /// `confusion[true][predicted]`: image counts.
    pub confusion: Vec<Vec<usize>>,
}

/// The files of one artifact.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactView {
    /// The stage that made it.
    pub stage: String,
    /// Its content hash (the folder's name in the store).
    pub output: String,
    /// (path inside the artifact, bytes), sorted.
    pub files: Vec<(String, u64)>,
}

/// Everything the dashboard shows of one run (a pipeline, or a sweep's point).
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// Pipeline name.
    pub pipeline: String,
    /// Its manifest.
    pub manifest: String,
    /// The manifest's `description`.
    pub description: Option<String>,
    /// Its row, as `pipe show` has it.
    pub row: Row,
    /// Each stage: state, key, why, estimate.
    pub stages: Vec<StageOutcome>,
    /// The DAG's edges: (input, stage).
    pub edges: Vec<(String, String)>,
    /// Every epoch so far, across its training segments.
    pub history: Vec<EpochRecord>,
    /// The training running now, if one is.
    pub live: Option<Live>,
    /// The effective configuration, flattened (`stages.train.lr` -> `0.01`).
    pub config: BTreeMap<String, String>,
    /// Its networks.
    pub networks: Vec<NetworkView>,
    /// Its evaluations that are in the store.
    pub evals: Vec<EvalView>,
    /// The artifacts of its cached stages.
    pub artifacts: Vec<ArtifactView>,
}
