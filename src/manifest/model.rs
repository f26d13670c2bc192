//! The typed model of a pipeline: its stages, their kinds and configurations, and the
//! blocks and networks it declares. What `load` returns and every later layer reads.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::config::*;
use super::network::Library;
use super::source::Origin;

/// The kinds of stage this build knows. An unknown kind is refused when the manifest
/// loads, so nothing later ever meets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    /// Read a dataset folder (or generate one) into an index.
    Ingest,
    /// Cut a split from another, stratified and seeded.
    Split,
    /// Decode, resize and write the splits as HDF5.
    Hdf5,
    /// Train a network from scratch.
    Train,
    /// Continue a training stage's final state at a new learning rate.
    LrDrop,
    /// Continue from an epoch's checkpoint (`stage@epoch`) or a checkpoint file.
    Resume,
    /// Rank-k accuracies of a trained model on a split.
    Evaluate,
    /// A trained model as a file other runtimes load (ONNX).
    Export,
}

impl StageKind {
    /// Every kind, in pipeline order.
    pub const ALL: [StageKind; 8] = [
        StageKind::Ingest,
        StageKind::Split,
        StageKind::Hdf5,
        StageKind::Train,
        StageKind::LrDrop,
        StageKind::Resume,
        StageKind::Evaluate,
        StageKind::Export,
    ];

    /// The name a manifest writes (`kind = "lr-drop"`).
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Ingest => "ingest",
            StageKind::Split => "split",
            StageKind::Hdf5 => "hdf5",
            StageKind::Train => "train",
            StageKind::LrDrop => "lr-drop",
            StageKind::Resume => "resume",
            StageKind::Evaluate => "evaluate",
            StageKind::Export => "export",
        }
    }

    /// The kind a manifest name stands for.
    pub fn parse(s: &str) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether stages of this kind produce a trained model (train, lr-drop, resume).
    pub fn is_training(self) -> bool {
        matches!(
            self,
            StageKind::Train | StageKind::LrDrop | StageKind::Resume
        )
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed stage configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum StageConfig {
    /// `ingest`.
    Ingest(IngestConfig),
    /// `split`.
    Split(SplitConfig),
    /// `hdf5`.
    Hdf5(Hdf5Config),
    /// `train` (its network is expanded by `nn`).
    Train(Box<TrainConfig>),
    /// `lr-drop`: continue from the final state of `from`.
    LrDrop(ContinueConfig),
    /// `resume`: continue from epoch `at` of stage `stage`, or from a checkpoint file.
    Resume {
        /// The config as written.
        config: ContinueConfig,
        /// The stage resumed (empty when resuming from a file).
        stage: String,
        /// The epoch resumed from (from the file's metadata when resuming from a file).
        at: usize,
        /// A checkpoint file written by pipe, and the BLAKE3 of its content.
        file: Option<(PathBuf, String)>,
    },
    /// `evaluate`.
    Evaluate(EvaluateConfig),
    /// `export`.
    Export(ExportConfig),
}

impl StageConfig {
    /// The kind.
    pub fn kind(&self) -> StageKind {
        match self {
            StageConfig::Ingest(_) => StageKind::Ingest,
            StageConfig::Split(_) => StageKind::Split,
            StageConfig::Hdf5(_) => StageKind::Hdf5,
            StageConfig::Train(_) => StageKind::Train,
            StageConfig::LrDrop(_) => StageKind::LrDrop,
            StageConfig::Resume { .. } => StageKind::Resume,
            StageConfig::Evaluate(_) => StageKind::Evaluate,
            StageConfig::Export(_) => StageKind::Export,
        }
    }

    /// Whether this stage produces a trained model (train, lr-drop, resume).
    pub fn is_training(&self) -> bool {
        self.kind().is_training()
    }

    /// The training settings of a training stage: (lr, epochs, device, backend).
    pub fn training(&self) -> Option<(f64, usize, Option<DeviceSetting>, Option<BackendKind>)> {
        match self {
            StageConfig::Train(t) => Some((t.lr, t.epochs, t.device, t.backend)),
            StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
                Some((c.lr, c.epochs, c.device, c.backend))
            }
            _ => None,
        }
    }

    /// The configuration as written, with defaults filled, as JSON (order-independent).
    /// A train stage's `network` is its name here; the engine's key material replaces it
    /// with the expanded network's structure.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            StageConfig::Ingest(c) => serde_json::to_value(c),
            StageConfig::Split(c) => serde_json::to_value(c),
            StageConfig::Hdf5(c) => serde_json::to_value(c),
            StageConfig::Train(t) => serde_json::to_value(t),
            StageConfig::LrDrop(c) => serde_json::to_value(c).map(|mut v| {
                v.as_object_mut().map(|o| o.remove("from"));
                v
            }),
            StageConfig::Resume {
                config, at, file, ..
            } => serde_json::to_value(config).map(|mut v| {
                v["from"] = match file {
                    // The file's content, not its path, decides what is resumed.
                    Some((_, hash)) => serde_json::json!({ "checkpoint": hash }),
                    None => serde_json::json!(at),
                };
                v
            }),
            StageConfig::Evaluate(c) => serde_json::to_value(c),
            StageConfig::Export(c) => serde_json::to_value(c),
        };
        v.expect("stage configs serialize to JSON")
    }
}

/// One stage of a pipeline.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The stage's name (its key under `[stages]`).
    pub name: String,
    /// Names of the stages it reads.
    pub inputs: Vec<String>,
    /// Its typed configuration.
    pub config: StageConfig,
    /// Where its table was written.
    pub origin: Origin,
    /// Where each key of its table was written (for errors found after loading).
    pub keys: IndexMap<String, Origin>,
    /// What a cluster job running it asks for (`[stages.<name>.resources]`); not part of
    /// the stage's key.
    pub resources: Resources,
}

impl Stage {
    /// Where key `k` of this stage was written (the stage's own key when absent).
    pub fn key_origin(&self, k: &str) -> Origin {
        self.keys.get(k).unwrap_or(&self.origin).clone()
    }
}

/// A stage's cluster resources (`[stages.<name>.resources]`), for `--executor slurm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs (`--gres=gpu:N`); default: `--gpus-per-stage` for training and evaluation.
    pub gpus: Option<u32>,
    /// CPU cores (`--cpus-per-task`).
    pub cpus: Option<u32>,
    /// Memory, Slurm's syntax: `"32G"`, `"500M"` (`--mem`).
    pub mem: Option<String>,
    /// Time limit, Slurm's syntax: `"12:00:00"`, `"1-00:00:00"`, `"90"` minutes (`--time`).
    pub time: Option<String>,
    /// Partition (`--partition`); default: `--partition`, else the cluster's default.
    pub partition: Option<String>,
}

/// A loaded, merged, typed and validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Pipeline name (the `name` key, or the file stem).
    pub name: String,
    /// Other names `pipe run` accepts for it.
    pub aliases: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// Default seed for every seeded stage.
    pub seed: u64,
    /// The manifest file.
    pub file: PathBuf,
    /// The directory relative paths are resolved against.
    pub project_dir: PathBuf,
    /// Stages, in the order written (merged: base first).
    pub stages: IndexMap<String, Stage>,
    /// Blocks and networks (`[blocks.*]`, `[networks.*]`).
    pub library: Library,
    /// What it was loaded from: the manifest's text, every file it extends or includes,
    /// and the `--set` overrides (what a run's record keeps, and `run --from` loads again).
    pub sources: Arc<ManifestSources>,
}

/// The texts a pipeline was loaded from, as read (see [`crate::manifest::load::load_recorded`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSources {
    /// The manifest first, then every file it extends or includes, in reading order.
    pub files: Vec<SourceFile>,
    /// The `--set` overrides, as given.
    pub sets: Vec<String>,
}

/// One file's text, with its absolute (canonical) path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Where it was read.
    pub path: String,
    /// Its text.
    pub text: String,
}

/// How deep a chain of continuations may go before it counts as a loop (loops are refused
/// when loading; this only bounds the walk).
const MAX_CHAIN: usize = 256;

impl Pipeline {
    /// Stage names in dependency order (inputs before readers; ties in written order).
    pub fn topo_order(&self) -> Vec<String> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::new();
        while order.len() < self.stages.len() {
            let before = order.len();
            for (name, s) in &self.stages {
                if !done.contains(name.as_str())
                    && s.inputs.iter().all(|i| done.contains(i.as_str()))
                {
                    done.insert(name);
                    order.push(name.clone());
                }
            }
            if order.len() == before {
                break; // a cycle (refused when loading)
            }
        }
        order
    }

    /// The stages `target` depends on, and itself.
    pub fn ancestors_of(&self, target: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![target.to_string()];
        while let Some(n) = todo.pop() {
            if out.insert(n.clone()) {
                if let Some(s) = self.stages.get(&n) {
                    todo.extend(s.inputs.iter().cloned());
                }
            }
        }
        out
    }

    /// Resolve a path from the manifest against the project directory.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.project_dir.join(path)
        }
    }

    /// The stage a training stage continues (`lr-drop`'s `from`, `resume`'s stage);
    /// `None` for a `train`, a `resume` from a file, and every other kind.
    pub fn continues(&self, stage: &str) -> Option<&str> {
        match &self.stages.get(stage)?.config {
            StageConfig::LrDrop(c) => Some(&c.from),
            StageConfig::Resume {
                stage, file: None, ..
            } => Some(stage),
            _ => None,
        }
    }

    /// The `train` stage at the root of a training chain (`train <- lr-drop <- resume`):
    /// the stage itself for a `train`; `None` for a chain that starts from a checkpoint
    /// file, and for stages that do not train.
    pub fn training_root(&self, stage: &str) -> Option<&str> {
        let mut at = self.stages.get_key_value(stage)?.0.as_str();
        for _ in 0..MAX_CHAIN {
            match &self.stages.get(at)?.config {
                StageConfig::Train(_) => return Some(at),
                _ => at = self.continues(at)?,
            }
        }
        None
    }

    /// The resize filter of the hdf5 stage that the root of `stage`'s training chain
    /// reads: how every image a model of the chain saw was resized.
    pub fn resize_filter_of(&self, stage: &str) -> Option<super::config::ResizeFilter> {
        let root = self.training_root(stage)?;
        let data = self.stages.get(root)?.inputs.first()?;
        match &self.stages.get(data)?.config {
            StageConfig::Hdf5(c) => Some(c.filter),
            _ => None,
        }
    }

    /// The train stage's configuration at the root of `stage`'s chain.
    pub fn root_config(&self, stage: &str) -> Option<&TrainConfig> {
        match &self.stages.get(self.training_root(stage)?)?.config {
            StageConfig::Train(t) => Some(t),
            _ => None,
        }
    }

    /// The network a training stage (or an evaluate stage, through its model) trains.
    pub fn network_of(&self, stage: &str) -> Option<&str> {
        let s = self.stages.get(stage)?;
        let model = match s.config {
            StageConfig::Evaluate(_) | StageConfig::Export(_) => s.inputs.first()?,
            _ => stage,
        };
        self.root_config(model).map(|t| t.network.as_str())
    }

    /// The epochs a training stage trains: (the epoch it starts after, its last epoch).
    /// `None` when its chain starts from a checkpoint file (known only when it runs).
    pub fn epochs_of(&self, stage: &str) -> Option<(usize, usize)> {
        self.epochs_at(stage, 0)
    }

    /// The epochs a training stage keeps a checkpoint of: every `checkpoint_every`-th
    /// epoch it trains (counted over the whole training, as the segment writes them) and
    /// its last. `None` as for [`Pipeline::epochs_of`].
    pub fn checkpoint_epochs(&self, stage: &str) -> Option<Vec<usize>> {
        let (start, end) = self.epochs_of(stage)?;
        let every = self.checkpoint_every_at(stage, 0)?.max(1);
        Some(
            (start + 1..=end)
                .filter(|e| e % every == 0 || *e == end)
                .collect(),
        )
    }

    /// A training stage's `checkpoint_every`: its own, else the one it continues with.
    fn checkpoint_every_at(&self, stage: &str, depth: usize) -> Option<usize> {
        if depth > MAX_CHAIN {
            return None;
        }
        match &self.stages.get(stage)?.config {
            StageConfig::Train(t) => Some(t.checkpoint_every),
            StageConfig::LrDrop(c) => match c.checkpoint_every {
                Some(k) => Some(k),
                None => self.checkpoint_every_at(&c.from, depth + 1),
            },
            StageConfig::Resume {
                config,
                stage: from,
                file: None,
                ..
            } => match config.checkpoint_every {
                Some(k) => Some(k),
                None => self.checkpoint_every_at(from, depth + 1),
            },
            _ => None,
        }
    }

    fn epochs_at(&self, stage: &str, depth: usize) -> Option<(usize, usize)> {
        if depth > MAX_CHAIN {
            return None;
        }
        match &self.stages.get(stage)?.config {
            StageConfig::Train(t) => Some((0, t.epochs)),
            StageConfig::LrDrop(c) => {
                let (_, end) = self.epochs_at(&c.from, depth + 1)?;
                Some((end, end + c.epochs))
            }
            StageConfig::Resume {
                config,
                at,
                file: None,
                ..
            } => Some((*at, at + config.epochs)),
            _ => None,
        }
    }
}
