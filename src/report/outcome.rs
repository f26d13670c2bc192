//! What happened (or would happen) to each stage, as the engine reports it and the console
//! shows it: a stage's [`StageState`], the [`Reason`]s it is not cached, one
//! [`StageOutcome`] per stage, and the [`Event`]s a run emits while it goes. The engine
//! builds these values; this module turns them into text and knows nothing of the store.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::manifest::StageKind;

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageState {
    /// Its key is in the store with a sound artifact.
    Cached,
    /// It ran in this process.
    Ran,
    /// Not cached, and its key is known (status).
    Stale,
    /// Not cached: a dry run would run it.
    WouldRun,
    /// Its key cannot be known yet: an input would run first, or its dataset is missing.
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
    /// The word shown (`would-run`).
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::Cached => "cached",
            StageState::Ran => "ran",
            StageState::Stale => "stale",
            StageState::WouldRun => "would-run",
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
    /// An input's content changed.
    InputChanged(String),
    /// An input was removed.
    InputRemoved(String),
    /// An input would run first (dry run), so this key is not known yet.
    InputWouldRun(String),
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
        state: JobStatus,
    },
}

/// What a scheduler says of a job (for [`Reason::Job`]).
#[derive(Debug, Clone, PartialEq)]
pub enum JobStatus {
    /// Pending, with the scheduler's reason.
    Pending(String),
    /// Running, with how long.
    Running(String),
    /// It ended badly (why) and where its log is.
    Failed {
        /// The scheduler's words.
        why: String,
        /// The job's log file.
        log: String,
    },
    /// The scheduler did not answer.
    Silent,
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
            Reason::InputWouldRun(i) => write!(f, "input {i} would re-run"),
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
            Reason::Job { who, state } => match state {
                JobStatus::Pending(why) => write!(f, "{}", format!("{who} pending {why}").trim()),
                JobStatus::Running(how) => write!(f, "{}", format!("{who} {how}").trim()),
                JobStatus::Failed { why, log } => write!(f, "{who} failed ({why}); log {log}"),
                JobStatus::Silent => write!(f, "{who}: Slurm does not answer"),
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
    pub key: Option<String>,
    /// Output content hash, when known.
    pub output: Option<String>,
    /// Seconds spent running (0 when cached).
    pub seconds: f64,
    /// What the stage produced.
    pub summary: String,
    /// Why it ran (or would run); empty when cached.
    pub reasons: Vec<Reason>,
    /// Estimated seconds, for a stage that would run (from past runs).
    pub estimate: Option<f64>,
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
        }
    }

    /// The first 12 characters of its key, or `-`.
    pub fn short_key(&self) -> &str {
        self.key
            .as_deref()
            .map_or("-", |k| crate::content::short(k))
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
    /// Every stage, in dependency order.
    pub stages: Vec<StageOutcome>,
}

/// What a run tells whoever watches it, as it goes.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A stage starts running, and why.
    Starting(&'a str, &'a [Reason]),
    /// A stage's fate is settled (cached, ran, would run, skipped, ...).
    Settled(&'a StageOutcome),
    /// Something the user should know (a damaged artifact, a slow dataset walk).
    Warning(String),
    /// Progress worth a line (a dataset fingerprinted, jobs submitted).
    Note(String),
}

/// Whoever watches a run: the console, a test, nothing.
pub trait Watcher {
    /// Take one event.
    fn event(&mut self, e: Event<'_>);
}

/// The console: stage lines, warnings and notes on stderr. `quiet` keeps the stage lines
/// off (`--json` prints the report instead) but still shows warnings.
#[derive(Debug, Default, Clone, Copy)]
pub struct Console {
    /// No per-stage lines.
    pub quiet: bool,
}

impl Watcher for Console {
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Starting(name, reasons) if !self.quiet => {
                eprintln!("{name:<12} running ({})", join(reasons));
            }
            Event::Settled(o) if !self.quiet => eprintln!("{}", run_line(o)),
            Event::Warning(w) => eprintln!("warning: {w}"),
            Event::Note(n) if !self.quiet => eprintln!("{n}"),
            _ => {}
        }
    }
}

/// A notice on the console from below a run's [`Watcher`] (waiting for a lock held by
/// another process, how `device = "auto"` resolved): one line on stderr.
pub fn notice(msg: &str) {
    eprintln!("{msg}");
}

/// Reasons as one line: `a; b`.
pub fn join(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// "12s", "3.4 min", "2.1 h".
pub fn human_secs(secs: f64) -> String {
    if secs >= 5400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 90.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{secs:.1}s")
    }
}

/// One stage's line while `pipe run` goes: name, state, time, key, what it made or why
/// it would run.
pub fn run_line(o: &StageOutcome) -> String {
    let time = if o.state == StageState::Ran {
        format!("{:.1}s", o.seconds)
    } else {
        String::new()
    };
    let detail = match o.state {
        StageState::WouldRun | StageState::Waiting => {
            let est = o.estimate.map_or("no estimate yet".into(), |e| {
                format!("est. {}", human_secs(e))
            });
            format!("[{est}] {}", join(&o.reasons))
        }
        _ => {
            let mut d = o.summary.clone();
            if o.state == StageState::Ran && o.reasons.contains(&Reason::OutputUnchanged) {
                d.push_str(" [output unchanged: later stages stay cached]");
            }
            d
        }
    };
    format!(
        "{:<12} {:<9} {:>7}  key {}  {detail}",
        o.name,
        o.state,
        time,
        o.short_key()
    )
}

/// The closing line of `pipe run`: what ran, what was cached, and the total estimate of a
/// dry run.
pub fn run_summary(r: &RunReport, dry_run: bool) -> String {
    let mut out = String::new();
    if dry_run {
        let total: f64 = r.stages.iter().filter_map(|s| s.estimate).sum();
        if total > 0.0 {
            out.push_str(&format!("estimated: {}\n", human_secs(total)));
        }
    }
    let count = |st: StageState| r.stages.iter().filter(|s| s.state == st).count();
    let (ran, cached) = (count(StageState::Ran), count(StageState::Cached));
    let secs: f64 = r.stages.iter().map(|s| s.seconds).sum();
    if ran == 0 && cached == r.stages.len() {
        out.push_str(&format!("nothing to do: all {cached} stages cached"));
    } else {
        out.push_str(&format!("{ran} ran, {cached} cached in {secs:.1}s"));
    }
    out
}

/// `pipe status`: a header, one line per stage, and the time to bring it up to date.
pub fn status_text(pipeline: &str, manifest: &str, stages: &[StageOutcome]) -> String {
    let mut out = format!("pipeline {pipeline} ({manifest})\n");
    for s in stages {
        let detail = if s.state == StageState::Cached {
            s.summary.clone()
        } else {
            let est = s
                .estimate
                .map_or(String::new(), |e| format!("[est. {}] ", human_secs(e)));
            format!("{est}{}", join(&s.reasons))
        };
        out.push_str(&format!(
            "  {:<12} {:<7} key {:<12}  {detail}\n",
            s.name,
            s.state,
            s.short_key()
        ));
    }
    let total: f64 = stages.iter().filter_map(|s| s.estimate).sum();
    let unknown = stages
        .iter()
        .filter(|s| s.state != StageState::Cached && s.estimate.is_none())
        .count();
    if total > 0.0 {
        out.push_str(&format!(
            "estimated time to bring it up to date: {}{}\n",
            human_secs(total),
            if unknown > 0 {
                format!(" (+ {unknown} stage(s) with no past run to go by)")
            } else {
                String::new()
            }
        ));
    }
    out
}
