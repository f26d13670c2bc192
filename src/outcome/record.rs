//! A run's record (the run journal, `runs/<id>.json` in the store): what ran, from which
//! manifest text and overrides, with which configuration, what each stage made, the final
//! metrics, and where and when. Values only: `engine::journal` reads and writes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Now, as RFC 3339 (UTC, milliseconds).
pub fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.replace_millisecond(t.millisecond())
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Seconds since the epoch of an RFC 3339 time (`None` if it does not parse).
pub fn unix_of(t: &str) -> Option<i64> {
    unix_nanos_of(t).map(|n| (n / 1_000_000_000) as i64)
}

/// Nanoseconds since the epoch of an RFC 3339 time.
pub fn unix_nanos_of(t: &str) -> Option<i128> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// The record format this version writes.
pub const RECORD_FORMAT: u32 = 1;

/// How a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Started, and its process (or one of its jobs) still holds it.
    Running,
    /// Ended well.
    Done,
    /// Ended with an error (`error`).
    Failed,
    /// Its process died without finishing the record (SIGKILL, a lost node): what a
    /// reader finds when nobody holds a running record any more.
    Interrupted,
}

impl RunState {
    /// The word shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One stage of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEntry {
    /// Stage name.
    pub name: String,
    /// Stage kind (`train`).
    pub kind: String,
    /// Its key, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The artifact it made or found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// `ran`, `cached`, `failed`, `interrupted`, `running`, `queued`, `skipped`,
    /// `waiting`, `not-run`; on Slurm with halving, `awaiting` (the promotion job in
    /// `job` decides) and `pruned`.
    pub state: String,
    /// Seconds it ran (0 when cached).
    #[serde(default)]
    pub seconds: f64,
    /// What it produced (its summary line).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// The cluster job that runs it (Slurm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// The machine a run ran on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
}

/// The project's version control state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitInfo {
    /// `HEAD`'s commit.
    pub commit: String,
    /// Whether tracked files differ from it.
    pub dirty: bool,
}

/// A tag or a note added after the run (kept beside the record, never in it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// `tag` or `note`.
    pub kind: String,
    /// The text.
    pub text: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// One run of a pipeline or of a sweep's point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// Sorts by start time: `20261206-041500-3fa9` (UTC).
    pub id: String,
    /// The pipeline's name (a sweep point's: `sweep@point`).
    pub pipeline: String,
    /// The sweep it is a point of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<String>,
    /// Its point id in that sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// The manifest file.
    pub manifest: String,
    /// The project folder (relative paths in the manifest resolve against it).
    pub project: String,
    /// BLAKE3 of the manifest texts (`runs/sources/<hash>.json`: every file as read, and
    /// the overrides).
    pub sources: String,
    /// The `--set` overrides.
    #[serde(default)]
    pub sets: Vec<String>,
    /// The resolved configuration, flat (`stages.train.lr = 0.01`), as written: read
    /// with [`RunRecord::config`] (kept unparsed, so listing many records is cheap).
    #[serde(rename = "config", default = "empty_object")]
    pub config_json: Box<serde_json::value::RawValue>,
    /// Every stage, in dependency order.
    #[serde(default)]
    pub stages: Vec<StageEntry>,
    /// Final metrics: `<stage>.val_acc` per training stage, `<stage>.rank1` per
    /// evaluation, and `train.loss`, `val.acc`, `rank1`, ... as `show` names them.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The previous run of the same pipeline in this store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// What changed since then: `lr 0.01 -> 0.005`.
    #[serde(default)]
    pub changes: Vec<String>,
    /// The project's git state, when it is a repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitInfo>,
    /// The machine.
    pub host: HostInfo,
    /// Training device(s) (`cpu`, `cuda`).
    #[serde(default)]
    pub device: String,
    /// Training backend(s) (`native`, `dfdx`).
    #[serde(default)]
    pub backend: String,
    /// pipe's version.
    pub version: String,
    /// The command line.
    #[serde(default)]
    pub command: Vec<String>,
    /// `in-process`, `local` or `slurm`.
    pub executor: String,
    /// Start (RFC 3339, UTC).
    pub started: String,
    /// End, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Wall seconds, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// How it stands.
    pub state: RunState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A remark on how it ended (a pruned sweep point: `pruned after drop1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
    /// The process that wrote it.
    pub pid: u32,
    /// Tags added with `pipe tag` (read from beside the record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Notes added with `pipe note`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Stages whose artifacts `pipe gc` has collected since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collected: Vec<String>,
    /// Read from the journal's heads, for display: only what a list shows (id, pipeline,
    /// start, time, state, changes, headline metrics, artifacts); read the record whole
    /// for the rest.
    #[serde(skip)]
    pub partial: bool,
}

fn empty_object() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("{}".into()).expect("valid JSON")
}

/// A flat configuration as a record keeps it.
pub fn config_json(config: &BTreeMap<String, String>) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(config).unwrap_or_else(|_| empty_object())
}

impl RunRecord {
    /// The resolved configuration, flat (`stages.train.lr` -> `0.01`).
    pub fn config(&self) -> BTreeMap<String, String> {
        serde_json::from_str(self.config_json.get()).unwrap_or_default()
    }

    /// The headline metrics, as `name value` pairs: rank-1 and rank-5 of the first
    /// evaluation, else the last segment's validation accuracy and loss.
    pub fn headline(&self) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        for (k, name) in [("rank1", "rank1"), ("rank5", "rank5")] {
            if let Some(v) = self.metrics.get(k) {
                out.push((name, *v));
            }
        }
        for (k, name) in [("val.acc", "val.acc"), ("val.loss", "val.loss")] {
            if let Some(v) = self.metrics.get(k) {
                out.push((name, *v));
            }
        }
        out
    }

    /// The config keys shown without `stages.`: `train.lr`.
    pub fn short_key(key: &str) -> &str {
        key.strip_prefix("stages.").unwrap_or(key)
    }
}
