//! The engine's vocabulary, defined below it so that stages, `report` and the dashboard
//! share it without importing the engine: where a stage stands ([`StageState`]), every
//! reason it is not cached in one [`Reason`] vocabulary, one [`StageOutcome`] per stage,
//! the [`events`] a run emits and whoever watches them, a training's epoch records
//! ([`history`]) and a sweep's decisions ([`sweep`]). Values only: nothing here reads the
//! store, prints or writes.

pub mod events;
pub mod history;
pub mod record;
pub mod sweep;

use std::fmt;

use serde::{Serialize, Serializer};

use crate::ids::{ContentHash, StageKey};
use crate::manifest::StageKind;

pub use events::{Event, Silent, Watcher};

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageState {
    /// Its key is in the store with a sound artifact.
    Cached,
    /// It ran in this process.
    Ran,
    /// Not in the store: downloaded from the remote cache, checked and published.
    Fetched,
    /// Not cached: it runs (its key may not be known yet, when an input runs first).
    Stale,
    /// It cannot run yet: its dataset folder is missing, or an input's is.
    Waiting,
    /// After `--until`.
    Skipped,
    /// Submitted to an executor, waiting for its turn.
    Queued,
    /// Running now: a process holds its key's lock (a `pipe run` elsewhere, or an
    /// executor's job).
    Running,
}

impl StageState {
    /// Whether the stage's artifact is in the store now (cached, or made or fetched by
    /// this run).
    pub fn is_done(self) -> bool {
        matches!(
            self,
            StageState::Cached | StageState::Ran | StageState::Fetched
        )
    }

    /// The word shown (`stale`).
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::Cached => "cached",
            StageState::Ran => "ran",
            StageState::Fetched => "fetched",
            StageState::Stale => "stale",
            StageState::Waiting => "waiting",
            StageState::Skipped => "skipped",
            StageState::Queued => "queued",
            StageState::Running => "running",
        }
    }
}

impl fmt::Display for StageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a stage's output comes from, as decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "from")]
pub enum Source {
    /// The store holds it (cached).
    Store,
    /// The stage runs from its first epoch.
    Run,
    /// The stage runs on from the checkpoint an interrupted run of its key left.
    Resume {
        /// The checkpoint's epoch.
        epoch: usize,
    },
    /// Nowhere yet: it waits for a dataset folder, or `--until` leaves it out.
    Nowhere,
    /// The remote cache has it: a run fetches it rather than computing it.
    Remote {
        /// Its size.
        bytes: u64,
    },
}

/// Why a stage is not cached, or what running it found.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// No run of this stage is recorded for this pipeline.
    NeverRan,
    /// The stage's kind changed.
    KindChanged {
        /// Before.
        from: StageKind,
        /// Now.
        to: StageKind,
    },
    /// The kind's implementation version changed.
    VersionChanged {
        /// The kind.
        kind: StageKind,
        /// Before.
        from: u32,
        /// Now.
        to: u32,
    },
    /// A configuration key changed (flattened key, old and new value; `None`: unset).
    ConfigChanged {
        /// `lr`, `augment.flip`.
        key: String,
        /// Before.
        from: Option<String>,
        /// Now.
        to: Option<String>,
    },
    /// An input's content changed, or the input runs first (so this key is not known
    /// yet).
    InputChanged(String),
    /// An input was removed.
    InputRemoved(String),
    /// An input waits for a dataset folder that is not there.
    InputWaits(String),
    /// The dataset folder's contents changed.
    DatasetChanged,
    /// The dataset folder a stage reads does not exist.
    DatasetMissing {
        /// The folder.
        path: String,
        /// The key that names it (`ingest.root`).
        key: String,
    },
    /// Its key was run before but is not in this store.
    NotInCache,
    /// `--force`.
    Forced,
    /// Its artifact is damaged (one line per problem).
    Damaged(Vec<String>),
    /// A killed run left checkpoints; the next run resumes there.
    Interrupted {
        /// The epoch of the latest checkpoint.
        epoch: usize,
    },
    /// It ran and made the same bytes as before: later stages stay cached.
    OutputUnchanged,
    /// An executor's job for it: `who` is `slurm job 12`.
    Job {
        /// The executor and job id.
        who: String,
        /// What the scheduler says.
        state: JobState,
        /// The job's log file.
        log: String,
    },
}

/// A job's state as its scheduler reports it (for [`Reason::Job`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting (Slurm PENDING, or local and not started), with the scheduler's reason.
    Queued(String),
    /// Running (Slurm RUNNING / CONFIGURING / COMPLETING), with how long.
    Running(String),
    /// Ended well.
    Done,
    /// Ended badly (FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...): why.
    Failed(String),
    /// The scheduler no longer knows it.
    Gone,
    /// The scheduler did not answer (its commands failed).
    Unknown,
}

impl JobState {
    /// Whether it is queued or running.
    pub fn live(&self) -> bool {
        matches!(self, JobState::Queued(_) | JobState::Running(_))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRan => write!(f, "never ran in this pipeline"),
            Reason::KindChanged { from, to } => write!(f, "kind changed: {from} -> {to}"),
            Reason::VersionChanged { kind, from, to } => {
                write!(f, "implementation changed: {kind} v{from} -> v{to}")
            }
            Reason::ConfigChanged { key, from, to } => {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
                write!(f, "config changed: {key} {} -> {}", show(from), show(to))
            }
            Reason::InputChanged(i) => write!(f, "input {i} changed"),
            Reason::InputRemoved(i) => write!(f, "input {i} removed"),
            Reason::InputWaits(i) => write!(f, "input {i} waits for its dataset"),
            Reason::DatasetChanged => write!(f, "dataset folder contents changed"),
            Reason::DatasetMissing { path, key } => write!(
                f,
                "dataset folder {path} does not exist: point `{key}` at it (`--set {key}=DIR`)"
            ),
            Reason::NotInCache => write!(
                f,
                "not in the cache (removed by `pipe gc`, or a cache folder change)"
            ),
            Reason::Forced => write!(f, "forced with --force"),
            Reason::Damaged(problems) => write!(
                f,
                "its artifact is damaged ({}); it runs again",
                problems.join("; ")
            ),
            Reason::Interrupted { epoch } => write!(
                f,
                "interrupted: a run resumes from its checkpoint at epoch {epoch}"
            ),
            Reason::OutputUnchanged => write!(f, "output unchanged: later stages stay cached"),
            Reason::Job { who, state, log } => match state {
                JobState::Queued(why) => write!(f, "{}", format!("{who} pending {why}").trim()),
                JobState::Running(how) => write!(f, "{}", format!("{who} {how}").trim()),
                JobState::Failed(why) => write!(f, "{who} failed ({why}); log {log}"),
                JobState::Unknown => write!(f, "{who}: Slurm does not answer"),
                JobState::Done => write!(f, "{who} done"),
                JobState::Gone => write!(f, "{who} gone"),
            },
        }
    }
}

/// Reasons go into JSON as the sentences the console shows.
impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageOutcome {
    /// Stage name.
    pub name: String,
    /// Stage kind.
    pub kind: StageKind,
    /// Where it stands.
    pub state: StageState,
    /// Stage key, when it could be computed.
    pub key: Option<StageKey>,
    /// Output content hash, when known.
    pub output: Option<ContentHash>,
    /// Seconds spent running (0 when cached).
    pub seconds: f64,
    /// What the stage produced.
    pub summary: String,
    /// Why it ran (or would run); empty when cached.
    pub reasons: Vec<Reason>,
    /// Estimated seconds, for a stage that would run (from past runs).
    pub estimate: Option<f64>,
    /// Where its output comes from.
    pub source: Source,
}

impl StageOutcome {
    /// A stage in `state`, with nothing else known yet.
    pub fn new(name: &str, kind: StageKind, state: StageState) -> StageOutcome {
        StageOutcome {
            name: name.to_string(),
            kind,
            state,
            key: None,
            output: None,
            seconds: 0.0,
            summary: String::new(),
            reasons: Vec::new(),
            estimate: None,
            source: Source::Nowhere,
        }
    }

    /// The first 12 characters of its key, or `-`.
    pub fn short_key(&self) -> &str {
        self.key.as_ref().map_or("-", |k| k.short())
    }
}

/// The result of `pipe run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Pipeline name.
    pub pipeline: String,
    /// Manifest file.
    pub manifest: String,
    /// Store folder.
    pub cache: String,
    /// The run's id in the journal (a dry run has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Every stage, in dependency order.
    pub stages: Vec<StageOutcome>,
}
