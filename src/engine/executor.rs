//! Executors: running a pipeline's stale stages somewhere other than this process, one
//! `pipe run-stage` per stage, ordered by the DAG.
//!
//! - `local -j N`: up to N `pipe run-stage` child processes at once on this machine.
//! - `slurm`: one `sbatch` job per stage, `--dependency=afterok:` mirroring the DAG, on a
//!   store every node shares. `pipe run` submits and returns (or waits with `--wait`).
//!
//! A stage that must run is known before its inputs exist, but its key is not (keys hold
//! input *content*). Jobs are therefore named by a stage's **recipe**: the BLAKE3 of its
//! kind, implementation version, effective config, dataset fingerprint and its inputs'
//! recipes. Two pipelines that share their data stages share those recipes, so the second
//! submission finds the first one's jobs (`<store>/jobs/<recipe>.json`) still queued or
//! running and depends on them instead of submitting again. Each job publishes atomically
//! under its key's lock (see [`super::Engine::run_stage`]), writes its log to
//! `<store>/jobs/<recipe>.log`, and a re-run submits only what is still missing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::journal::{entry_of, Journal, Recording};
use super::slurm::{job_name, slurm_state};
use super::{Engine, RunOptions, WalkOptions};
use crate::ids::Recipe;
use crate::manifest::{Pipeline, StageConfig};
use crate::outcome::record::StageEntry;
pub use crate::outcome::JobState;
use crate::outcome::StageState;

/// Where the stages run.
#[derive(Debug, Clone)]
pub enum Executor {
    /// Child processes on this machine, at most `jobs` at once.
    Local {
        /// Parallel stages.
        jobs: usize,
    },
    /// Slurm batch jobs.
    Slurm(SlurmOptions),
}

/// `--executor slurm` settings.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// `--partition` for every job (a stage's `resources.partition` wins).
    pub partition: Option<String>,
    /// GPUs for each training and evaluation stage (a stage's `resources.gpus` wins).
    pub gpus_per_stage: Option<u32>,
    /// Wait for the jobs to end and report how they ended.
    pub wait: bool,
    /// Each job's own store (`--job-store`, `$VARS` expanded by the job's shell): with a
    /// remote, jobs pull their inputs and push their outputs, and no artifact needs a
    /// shared filesystem. `None`: the submitter's store.
    pub job_store: Option<String>,
}

/// Which executor ran or submitted a job (as its record names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// A child process of `pipe run -j N`.
    Local,
    /// A Slurm batch job.
    Slurm,
}

impl std::fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        })
    }
}

/// What `<store>/jobs/<recipe>.json` remembers of a submitted stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// Slurm job id, or the local process id.
    pub job: String,
    /// Who runs it.
    pub executor: ExecutorKind,
    /// Pipeline that submitted it.
    pub pipeline: String,
    /// Stage name in that pipeline.
    pub stage: String,
    /// The stage's recipe.
    pub recipe: Recipe,
    /// Its log file.
    pub log: String,
    /// Submission time (seconds since the epoch).
    pub submitted: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Run a Slurm command, with its stderr in the error.
fn slurm(cmd: &str, args: &[String]) -> Result<String> {
    slurm_with(cmd, args, &[])
}

/// [`slurm`] with variables `env` set for it (`sbatch` passes its environment on to the
/// job).
fn slurm_with(cmd: &str, args: &[String], env: &[(&str, String)]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .with_context(|| {
            format!("cannot run `{cmd}` (is Slurm installed, and SLURM_CONF set if needed?)")
        })?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How long `--wait` waits on a Slurm that does not answer (`PIPE_SLURM_PATIENCE`, in
/// seconds; 300).
fn slurm_patience_secs() -> u64 {
    std::env::var("PIPE_SLURM_PATIENCE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// Slurm did not answer for as long as a `--wait` waits: the jobs' fate is not known.
#[derive(Debug)]
pub struct SlurmSilent;

impl std::fmt::Display for SlurmSilent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slurm has not answered for {} s", slurm_patience_secs())
    }
}

impl std::error::Error for SlurmSilent {}

/// The state of a local worker process by pid (alive or gone: its exit status is not
/// knowable from another process, so a gone worker is judged by the store).
fn local_state(pid: &str) -> JobState {
    if Path::new("/proc").join(pid).exists() {
        JobState::Running("running (local)".into())
    } else {
        JobState::Gone
    }
}

/// A stage that must run but waits for a dataset folder that is not there: an error
/// naming the folder and the key to set.
fn missing_dataset(p: &Pipeline, waiting: Option<&str>) -> Result<()> {
    let Some(name) = waiting else {
        return Ok(());
    };
    let root = p
        .ancestors_of(name)
        .into_iter()
        .find_map(|a| crate::stages::external_root(p, &p.stages[&a]).map(|r| (a, r)))
        .filter(|(_, r)| !r.exists());
    match root {
        Some((stage, r)) => bail!(
            "stage `{stage}`: its dataset folder {} does not exist (point `root` at it, e.g. `--set {stage}.root=DIR`)",
            r.display()
        ),
        None => bail!("stage `{name}`: its inputs cannot be known"),
    }
}

/// How a worker names pipeline `p`: its manifest's absolute path, and for a sweep's point
/// `@<id>` after it.
pub(crate) fn target_arg(p: &Pipeline) -> String {
    let file = std::fs::canonicalize(&p.file).unwrap_or_else(|_| p.file.clone());
    match p.name.split_once('@') {
        Some((_, id)) => format!("{}@{id}", file.display()),
        None => file.display().to_string(),
    }
}

/// One stage a worker runs: of which pipeline, its recipe, and the recipes it waits for.
pub(crate) struct Job<'a> {
    /// The pipeline (a sweep's point, maybe).
    pub p: &'a Pipeline,
    /// The stage.
    pub stage: String,
    /// Its recipe (what names its job).
    pub recipe: Recipe,
    /// The recipes of the jobs it waits for.
    pub deps: Vec<Recipe>,
}

/// Quote for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` as one word for `sh` in which parameter expansions (`$NAME`, `${NAME}`, and so
/// `$$`, `${X:-y}`) still expand (a `--job-store` path such as `/scratch/$USER/pipe`);
/// command substitutions (`$(...)`, `` `...` ``), globs and word splitting do not.
fn sh_quote_expanding(s: &str) -> String {
    let mut out = String::from("\"");
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let command = c == '$' && chars.peek() == Some(&'(');
        if matches!(c, '"' | '\\' | '`') || command {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Engine {
    /// The job record of a recipe, if one was submitted.
    pub fn job_record(&self, recipe: &Recipe) -> Option<JobRecord> {
        let p = self.store.jobs_dir().join(format!("{recipe}.json"));
        super::store::read_json(&p).ok().flatten()
    }

    /// A recorded job's state now.
    pub fn job_state(&self, rec: &JobRecord) -> JobState {
        match rec.executor {
            ExecutorKind::Slurm => {
                slurm_state(&rec.job, Some(&job_name(&rec.pipeline, &rec.stage)))
            }
            ExecutorKind::Local => local_state(&rec.job),
        }
    }

    /// The stages of `p` that must run (not in the store, or an input must run), in
    /// dependency order, limited to `--until`'s ancestors, with every stage's recipe. A
    /// stage that waits for a missing dataset folder is an error naming it.
    pub(crate) fn must_run(
        &mut self,
        p: &Pipeline,
        opts: &RunOptions,
    ) -> Result<(Vec<String>, HashMap<String, Recipe>)> {
        let decisions = self.decide(p, &WalkOptions::from(opts))?;
        let waiting = decisions
            .iter()
            .find(|d| d.outcome.state == StageState::Waiting)
            .map(|d| d.outcome.name.as_str());
        missing_dataset(p, waiting)?;
        let must = decisions
            .iter()
            .filter(|d| !matches!(d.outcome.state, StageState::Cached | StageState::Skipped))
            .map(|d| d.outcome.name.clone())
            .collect();
        let recipes = decisions
            .into_iter()
            .map(|d| (d.outcome.name, d.recipe))
            .collect();
        Ok((must, recipes))
    }

    /// The stages `points` must run (see [`Engine::must_run`]), each recipe once across
    /// them (what points share runs once), in dependency order; and the points that
    /// cannot be planned (a dataset folder one point names is missing, say), each with
    /// why: the others run.
    pub(crate) fn plan_jobs<'a>(
        &mut self,
        points: &[&'a Pipeline],
        opts: &RunOptions,
    ) -> (Vec<Job<'a>>, Vec<(String, String)>) {
        let mut out: Vec<Job<'a>> = Vec::new();
        let mut unplanned = Vec::new();
        let mut seen: std::collections::HashSet<Recipe> = std::collections::HashSet::new();
        for &p in points {
            let (must, recipes) = match self.must_run(p, opts) {
                Ok(x) => x,
                Err(e) => {
                    unplanned.push((p.name.clone(), format!("{e:#}")));
                    continue;
                }
            };
            for name in &must {
                let recipe = recipes[name].clone();
                if !seen.insert(recipe.clone()) {
                    continue;
                }
                let deps = p.stages[name]
                    .inputs
                    .iter()
                    .filter(|i| must.contains(*i))
                    .map(|i| recipes[i].clone())
                    .collect();
                out.push(Job {
                    p,
                    stage: name.clone(),
                    recipe,
                    deps,
                });
            }
        }
        (out, unplanned)
    }

    /// `pipe run --executor ...`: run (local) or submit (Slurm) every stage that must run,
    /// under a journal record (a Slurm run's record is completed by its jobs).
    pub fn run_with(
        &mut self,
        p: &Pipeline,
        sets: &[String],
        opts: &RunOptions,
        exec: &Executor,
    ) -> Result<()> {
        WalkOptions::from(opts).check(p)?;
        if !opts.force.is_empty() {
            bail!("--force runs with the default executor only (it re-runs a cached stage in this process)");
        }
        let _lock = match opts.dry_run {
            true => None,
            false => Some(self.share_store(&format!("pipe run {} (executor)", p.name))?),
        };
        if !opts.dry_run {
            // Recorded under the lock, before any job: a `gc` waiting for the lock then
            // counts this project's manifests.
            self.note_project(p)?;
        }
        let mut rec = match opts.dry_run {
            true => None,
            false => self.begin_record(p, exec),
        };
        let mut jobs = HashMap::new();
        let mut must = Vec::new();
        let out = self.run_with_inner(p, sets, opts, exec, &mut must, &mut jobs);
        if let Some(rec) = rec.take() {
            let detached = matches!(exec, Executor::Slurm(o) if !o.wait) && out.is_ok();
            self.finish_record(
                rec,
                p,
                &must,
                &jobs,
                out.as_ref().err(),
                None,
                detached,
                None,
            );
        }
        out
    }

    /// Start a journal record for a run by an executor (a warning if it cannot be).
    pub(crate) fn begin_record(&self, p: &Pipeline, exec: &Executor) -> Option<Recording> {
        let kind = match exec {
            Executor::Local { .. } => "local",
            Executor::Slurm(_) => "slurm",
        };
        match Journal::of(&self.store).begin(p, kind) {
            Ok(r) => Some(r),
            Err(e) => {
                self.warn(format!(
                    "{}: this run is not recorded in the journal: {e:#}",
                    p.name
                ));
                None
            }
        }
    }

    /// Complete an executor's record: each stage as the store holds it now (`ran`: those
    /// it ran, `jobs`: the Slurm job of each submitted stage). `detached`: Slurm jobs
    /// still to come complete it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_record(
        &mut self,
        rec: Recording,
        p: &Pipeline,
        ran: &[String],
        jobs: &HashMap<String, String>,
        error: Option<&anyhow::Error>,
        remark: Option<String>,
        detached: bool,
        awaiting: Option<&str>,
    ) {
        // Given up waiting on a Slurm that does not answer: nothing failed that is known,
        // and the jobs, as they end, complete the record as if nobody had waited.
        let silent = error.is_some_and(|e| e.downcast_ref::<SlurmSilent>().is_some());
        let (error, detached) = match silent {
            true => (None, true),
            false => (error, detached),
        };
        let mut entries: Vec<StageEntry> = match self.status(p) {
            Ok(st) => st.iter().map(entry_of).collect(),
            Err(_) => Vec::new(),
        };
        for e in &mut entries {
            if e.state == "cached" && ran.contains(&e.name) && !jobs.contains_key(&e.name) {
                e.state = "ran".into();
            }
        }
        let journal = super::journal::Journal::of(&self.store);
        for e in &mut entries {
            let Some(job) = jobs.get(&e.name) else {
                continue;
            };
            e.job = Some(job.clone());
            if detached {
                e.state = "queued".into();
            } else if let Some(said) = journal.job_entry(job).filter(|j| j.state != "running") {
                // How the job said it went (on a store of its own, its output is in the
                // remote, not here).
                e.state = said.state;
            } else if e.state == "cached" {
                e.state = "ran".into();
            }
        }
        // Halving on Slurm: the stages after the rung wait for the promotion job.
        if let Some(promotion) = awaiting {
            for e in &mut entries {
                if !jobs.contains_key(&e.name) && e.state != "cached" && e.state != "ran" {
                    e.state = super::journal::AWAITING.into();
                    e.job = Some(promotion.to_string());
                }
            }
        }
        let artifacts = self.store.root().join("artifacts");
        let error = error.map(|e| format!("{e:#}"));
        match rec.finish(&entries, &artifacts, error, remark, detached) {
            // A completed run that made or fetched something goes to the remote too.
            Ok(r)
                if !detached
                    && entries
                        .iter()
                        .any(|e| e.state == "ran" || e.state == "fetched") =>
            {
                self.push_record_remote(&r)
            }
            Ok(_) => {}
            Err(e) => self.warn(format!("could not complete the run's record: {e:#}")),
        }
    }

    fn run_with_inner(
        &mut self,
        p: &Pipeline,
        sets: &[String],
        opts: &RunOptions,
        exec: &Executor,
        must_out: &mut Vec<String>,
        jobs_of: &mut HashMap<String, String>,
    ) -> Result<()> {
        let (must, recipes) = self.must_run(p, opts)?;
        must_out.clone_from(&must);
        let wanted = opts.until.as_ref().map(|u| p.ancestors_of(u));
        for name in p.topo_order() {
            if wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
                self.note(format!("{name:<12} skipped (after --until)"));
            } else if !must.contains(&name) {
                self.note(format!("{name:<12} cached"));
            }
        }
        if must.is_empty() {
            self.note("nothing to do: every stage is in the store".to_string());
            return Ok(());
        }
        if opts.dry_run {
            for name in &must {
                self.note(format!("{name:<12} would run"));
            }
            return Ok(());
        }
        match exec {
            Executor::Slurm(o) => {
                let ids = self.submit_slurm(p, sets, &must, &recipes, o)?;
                // Known to the record before any wait: a wait that gives up leaves the
                // record to these jobs.
                jobs_of.extend(ids.clone());
                if o.wait {
                    self.fault_point("slurm:waiting");
                    self.wait_slurm(p, &must, &recipes, &ids)?;
                }
                Ok(())
            }
            Executor::Local { jobs } => {
                let (plan, unplanned) = self.plan_jobs(&[p], opts);
                if let Some((_, why)) = unplanned.into_iter().next() {
                    bail!("{why}");
                }
                let failures = self.run_local_jobs(&plan, sets, (*jobs).max(1))?;
                if !failures.is_empty() {
                    bail!(
                        "{} stage(s) did not finish: {}",
                        failures.len(),
                        failures
                            .iter()
                            .map(|f| f.1.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    );
                }
                Ok(())
            }
        }
    }

    fn worker_args(
        &self,
        p: &Pipeline,
        sets: &[String],
        stage: &str,
        recipe: &Recipe,
    ) -> Vec<String> {
        let abs = |x: &Path| std::fs::canonicalize(x).unwrap_or_else(|_| x.to_path_buf());
        let mut a = vec![
            "--cache".to_string(),
            abs(self.store.root()).display().to_string(),
            "run-stage".to_string(),
            target_arg(p),
            stage.to_string(),
            // The worker reads the manifest again when it starts: it runs only the stage
            // this run decided on, never what an edit since made of it.
            "--recipe".to_string(),
            recipe.to_string(),
        ];
        for s in sets {
            a.push("--set".into());
            a.push(s.clone());
        }
        a.splice(0..0, self.remote_args());
        a
    }

    /// The remote this run uses, however it was set (a `--remote` flag is not in the
    /// jobs' environment), for a worker's command line: each job fetches what it would
    /// run, and pushes what it ran. A URL with a password goes by the environment instead
    /// ([`Engine::worker_env`]).
    fn remote_args(&self) -> Vec<String> {
        match self.remote().filter(|r| r.given_url().is_none()) {
            Some(r) => vec!["--remote".to_string(), r.url().to_string()],
            None => Vec::new(),
        }
    }

    /// What a worker's environment needs beside [`Engine::worker_args`]: the remote's URL
    /// when it holds a password (`PIPE_REMOTE`), kept off command lines and job scripts.
    fn worker_env(&self) -> Vec<(&'static str, String)> {
        self.remote()
            .and_then(|r| r.given_url())
            .map(|u| ("PIPE_REMOTE", u.to_string()))
            .into_iter()
            .collect()
    }

    fn write_job_record(&self, rec: &JobRecord) -> Result<()> {
        crate::atomic::write_json_atomic(
            &self.store.jobs_dir().join(format!("{}.json", rec.recipe)),
            rec,
        )
    }

    /// Submit `must` (stages of `p`) as Slurm jobs; returns each stage's job id (its own,
    /// or the live job of its recipe it depends on). `o.wait` is the caller's to act on
    /// ([`Engine::wait_slurm`]).
    pub(crate) fn submit_slurm(
        &mut self,
        p: &Pipeline,
        sets: &[String],
        must: &[String],
        recipes: &HashMap<String, Recipe>,
        o: &SlurmOptions,
    ) -> Result<HashMap<String, String>> {
        let exe = std::env::current_exe().context("finding the pipe executable")?;
        if let Some(js) = &o.job_store {
            if js.trim().is_empty() {
                bail!("--job-store is empty: give each job's store a folder on its node, e.g. /scratch/$USER/pipe");
            }
            if js.starts_with('~') {
                bail!("--job-store {js}: `~` is not expanded in a job's script; write $HOME");
            }
            let Some(rem) = self.remote().cloned() else {
                bail!(
                    "--job-store {js} needs a remote cache (--remote URL, PIPE_REMOTE or [remote] in pipe.toml): each job's store is its own, so the stages reach one another through the remote"
                );
            };
            if rem.push != super::remote::Push::Always {
                bail!(
                    "--job-store {js} needs a remote the jobs push to, and this one is set to push = \"never\": each job's output would stay on its node"
                );
            }
            // What this store holds of the pipeline, the jobs find in the remote.
            for o in self.status(p)? {
                if let (StageState::Cached, Some(key)) = (o.state, &o.key) {
                    if !self.push_remote(&o.name, key) {
                        bail!(
                            "--job-store: stage `{}` is in this store but could not be pushed to {}, and the jobs after it would not find it",
                            o.name,
                            rem.url()
                        );
                    }
                }
            }
        }
        let jobs_dir = self.store.jobs_dir();
        std::fs::create_dir_all(&jobs_dir)?;
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut submitted = Vec::new();
        // `auto` devices and default backends were settled on this machine: jobs get the
        // same settings, so every node computes the same keys.
        let mut sets: Vec<String> = sets.to_vec();
        for (sname, s) in &p.stages {
            let (device, backend) = match &s.config {
                StageConfig::Train(t) => (t.device, t.backend),
                StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
                    (c.device, c.backend)
                }
                StageConfig::Evaluate(c) => (c.device, c.backend),
                _ => continue,
            };
            if let Some(d) = device {
                let d = format!("{d:?}").to_lowercase();
                let gpus = s.resources.gpus.or(o.gpus_per_stage).unwrap_or(0);
                if gpus > 0 && d == "cpu" {
                    self.warn(format!(
                        "stage `{sname}` asks for {gpus} GPU(s) but its device is `cpu` here (\"auto\" resolves on this machine); set device = \"cuda\" to train on the nodes' GPUs"
                    ));
                }
                sets.push(format!("{sname}.device=\"{d}\""));
            }
            if let Some(b) = backend {
                sets.push(format!("{sname}.backend=\"{b}\""));
            }
        }
        let sets = &sets;
        for name in must {
            let recipe = &recipes[name];
            // One submitter at a time per recipe: check, submit, record.
            let _recipe_lock =
                self.store
                    .lock_running(super::store::Running::Recipe(recipe), name, &|w| {
                        self.notice(w)
                    })?;
            if let Some(rec) = self.job_record(recipe) {
                let st = self.job_state(&rec);
                if rec.executor == ExecutorKind::Slurm && st.live() {
                    self.note(format!(
                        "{name:<12} already queued as job {} (submitted for {}:{}); depending on it",
                        rec.job, rec.pipeline, rec.stage
                    ));
                    ids.insert(name.clone(), rec.job);
                    continue;
                }
            }
            let s = &p.stages[name];
            let deps: Vec<&str> = s
                .inputs
                .iter()
                .filter_map(|i| ids.get(i).map(|x| x.as_str()))
                .collect();
            let log = jobs_dir.join(format!("{recipe}.log"));
            let script = jobs_dir.join(format!("{recipe}.sh"));
            let args = self.worker_args(p, sets, name, recipe);
            let mut words: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
            if let Some(js) = &o.job_store {
                // The job's own store, its `$VARS` expanded by the job's shell; the
                // submitter's journal hears how the job went.
                if let Some(i) = args.iter().position(|a| a == "--cache") {
                    words[i + 1] = sh_quote_expanding(js);
                }
                words.push("--journal-to".into());
                words.push(sh_quote(&self.store.root().display().to_string()));
            }
            let cmd = std::iter::once(sh_quote(&exe.display().to_string()))
                .chain(words)
                .collect::<Vec<_>>()
                .join(" ");
            crate::atomic::write_atomic(
                &script,
                format!(
                    "#!/bin/sh\n# pipe: pipeline {}, stage {name} (recipe {recipe})\nexport PIPE_JOB_LOG={}\nexec {cmd}\n",
                    p.name,
                    sh_quote(&log.display().to_string())
                )
                .as_bytes(),
            )?;
            let mut args = vec![
                "--parsable".to_string(),
                format!("--job-name={}", job_name(&p.name, name)),
                format!("--output={}", log.display()),
                "--open-mode=append".to_string(),
                format!("--chdir={}", p.project_dir.display()),
            ];
            if !deps.is_empty() {
                args.push(format!("--dependency=afterok:{}", deps.join(":")));
                args.push("--kill-on-invalid-dep=yes".into());
            }
            let r = &s.resources;
            if let Some(part) = r.partition.as_ref().or(o.partition.as_ref()) {
                args.push(format!("--partition={part}"));
            }
            let trains = s.config.is_training() || matches!(s.config, StageConfig::Evaluate(_));
            let gpus = r.gpus.or(if trains { o.gpus_per_stage } else { None });
            if let Some(g) = gpus.filter(|g| *g > 0) {
                args.push(format!("--gres=gpu:{g}"));
            }
            if let Some(c) = r.cpus {
                args.push(format!("--cpus-per-task={c}"));
            }
            if let Some(m) = &r.mem {
                args.push(format!("--mem={m}"));
            }
            if let Some(t) = &r.time {
                args.push(format!("--time={t}"));
            }
            args.push(script.display().to_string());
            let out = slurm_with("sbatch", &args, &self.worker_env())
                .with_context(|| format!("submitting stage `{name}` of `{}`", p.name))?;
            let id = out.trim().split(';').next().unwrap_or("").to_string();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                bail!("sbatch printed no job id for stage `{name}`: {out:?}");
            }
            self.write_job_record(&JobRecord {
                job: id.clone(),
                executor: ExecutorKind::Slurm,
                pipeline: p.name.clone(),
                stage: name.clone(),
                recipe: recipe.clone(),
                log: log.display().to_string(),
                submitted: now_secs(),
            })?;
            self.note(format!(
                "{name:<12} submitted as job {id}{}  log {}",
                if deps.is_empty() {
                    String::new()
                } else {
                    format!(" (after {})", deps.join(", "))
                },
                log.display()
            ));
            ids.insert(name.clone(), id.clone());
            submitted.push((name.clone(), id));
        }
        self.note(format!(
            "{} submitted, {} already queued; `pipe status {}` follows them",
            submitted.len(),
            must.len() - submitted.len(),
            p.name
        ));
        Ok(ids)
    }

    /// Wait for the Slurm jobs `ids` (stage -> job) of `p`'s stages `must` to end, then
    /// say how each ended: an error lists those that did not finish.
    pub(crate) fn wait_slurm(
        &mut self,
        p: &Pipeline,
        must: &[String],
        recipes: &HashMap<String, Recipe>,
        ids: &HashMap<String, String>,
    ) -> Result<()> {
        let jobs_dir = self.store.jobs_dir();
        // Wait for every job this pipeline depends on, then say how each ended.
        let mut failed = Vec::new();
        let mut unknown_polls = 0;
        loop {
            let states: BTreeMap<&String, JobState> = ids
                .iter()
                .map(|(n, id)| {
                    let rec = self.job_record(&recipes[n.as_str()]);
                    let jname =
                        rec.map_or(job_name(&p.name, n), |r| job_name(&r.pipeline, &r.stage));
                    (n, slurm_state(id, Some(&jname)))
                })
                .collect();
            if states.values().any(|s| *s == JobState::Unknown) {
                unknown_polls += 1;
                if unknown_polls * 2 > slurm_patience_secs() {
                    return Err(anyhow::Error::new(SlurmSilent).context(format!(
                        "stopped waiting; the jobs may still be running, and complete the run's record as they end (`pipe status {}`, `pipe runs`)",
                        p.name
                    )));
                }
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            unknown_polls = 0;
            if states.values().all(|s| !s.live()) {
                for name in must {
                    match &states[name] {
                        JobState::Failed(why) => failed.push(format!("{name} ({why})")),
                        JobState::Gone | JobState::Done => {}
                        _ => {}
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let missing: Vec<String> = self
            .decide(p, &WalkOptions::default())?
            .into_iter()
            .filter(|d| {
                must.contains(&d.outcome.name)
                    && d.outcome.state != StageState::Cached
                    // Jobs on stores of their own leave their outputs in the remote.
                    && !matches!(d.outcome.source, crate::outcome::Source::Remote { .. })
            })
            .map(|d| d.outcome.name)
            .collect();
        if !failed.is_empty() || !missing.is_empty() {
            bail!(
                "jobs ended without finishing: {}; logs in {}",
                if failed.is_empty() {
                    missing.join(", ")
                } else {
                    failed.join(", ")
                },
                jobs_dir.display()
            );
        }
        self.note(format!("all {} stages finished", must.len()));
        Ok(())
    }

    /// Run `jobs` (stages of one or more pipelines, each recipe once) as up to `n` local
    /// `pipe run-stage` processes, each as soon as the jobs it waits for are done. Returns
    /// the recipes that failed (or could not run because an input failed), with why.
    pub(crate) fn run_local_jobs(
        &mut self,
        jobs: &[Job<'_>],
        sets: &[String],
        n: usize,
    ) -> Result<Vec<(Recipe, String)>> {
        let exe = std::env::current_exe().context("finding the pipe executable")?;
        let jobs_dir = self.store.jobs_dir();
        std::fs::create_dir_all(&jobs_dir)?;
        #[derive(PartialEq)]
        enum St {
            Waiting,
            Running,
            Done,
            Failed,
        }
        let many = jobs
            .iter()
            .map(|j| j.p.name.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1;
        let label = |j: &Job<'_>| {
            if many {
                format!("{}:{}", j.p.name, j.stage)
            } else {
                format!("{:<12}", j.stage)
            }
        };
        // The cores are split between the workers, not fought over: a worker's thread
        // pool (RAYON_NUM_THREADS) is its share of this process's (RAYON_NUM_THREADS, else
        // every core) among the stages that can run when it starts, at most `n`: a stage
        // that runs alone (the data stages before a sweep's trainings) has every core.
        // Results do not depend on thread counts, so neither do keys nor artifacts.
        let cores = rayon::current_num_threads().max(1);
        if !jobs.is_empty() {
            self.note(format!(
                "{} stage(s), up to {} at once, sharing {cores} threads",
                jobs.len(),
                n.max(1).min(jobs.len())
            ));
        }
        let mut state: BTreeMap<&Recipe, St> =
            jobs.iter().map(|j| (&j.recipe, St::Waiting)).collect();
        let mut running: Vec<(&Job<'_>, Child, Instant, (PathBuf, u64))> = Vec::new();
        let mut failures: Vec<(Recipe, String)> = Vec::new();
        // An error here (a log that cannot be opened, a worker that cannot start) leaves
        // no worker behind: those started are stopped and waited for before it returns,
        // so none goes on publishing after this process has said it failed.
        let mut run = || -> Result<()> {
            loop {
                // Start what is ready, each worker with its share of the cores.
                let ready = |state: &BTreeMap<&Recipe, St>, j: &Job<'_>| {
                    state[&j.recipe] == St::Waiting
                        && j.deps
                            .iter()
                            .all(|d| state.get(d).is_none_or(|s| *s == St::Done))
                };
                let can_run = running.len() + jobs.iter().filter(|j| ready(&state, j)).count();
                let each = (cores / can_run.clamp(1, n.max(1))).max(1);
                for j in jobs {
                    if running.len() >= n.max(1) {
                        break;
                    }
                    if state[&j.recipe] != St::Waiting {
                        continue;
                    }
                    if j.deps
                        .iter()
                        .any(|d| state.get(d).is_some_and(|s| *s == St::Failed))
                    {
                        state.insert(&j.recipe, St::Failed);
                        failures.push((
                            j.recipe.clone(),
                            format!("{} (an input failed)", label(j).trim()),
                        ));
                        continue;
                    }
                    if j.deps
                        .iter()
                        .any(|d| state.get(d).is_some_and(|s| *s != St::Done))
                    {
                        continue;
                    }
                    let log = jobs_dir.join(format!("{}.log", j.recipe));
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .with_context(|| format!("cannot open {}", log.display()))?;
                    // Where this attempt's lines begin: a failure is told by its own last
                    // line, never by an earlier attempt's.
                    let from = f.metadata().map_or(0, |m| m.len());
                    let mut cmd = Command::new(&exe);
                    cmd.args(self.worker_args(j.p, sets, &j.stage, &j.recipe))
                        .env("PIPE_JOB_LOG", &log)
                        .env("RAYON_NUM_THREADS", each.to_string())
                        .envs(self.worker_env())
                        // A worker is this process's, not a Slurm job of its own (run in an
                        // allocation, each would take the job's lock and wait on the others).
                        .env_remove("SLURM_JOB_ID")
                        .current_dir(&j.p.project_dir)
                        .stdin(Stdio::null())
                        .stdout(f.try_clone()?)
                        .stderr(f);
                    stop_with_parent(&mut cmd);
                    let child = cmd
                        .spawn()
                        .with_context(|| format!("starting stage `{}`", j.stage))?;
                    let pid = child.id();
                    // Counted as running before anything else can fail: an error from here on
                    // stops it with the others.
                    running.push((j, child, Instant::now(), (log.clone(), from)));
                    state.insert(&j.recipe, St::Running);
                    self.write_job_record(&JobRecord {
                        job: pid.to_string(),
                        executor: ExecutorKind::Local,
                        pipeline: j.p.name.clone(),
                        stage: j.stage.clone(),
                        recipe: j.recipe.clone(),
                        log: log.display().to_string(),
                        submitted: now_secs(),
                    })?;
                    self.note(format!(
                        "{} started ({each} thread{}, log {})",
                        label(j),
                        if each == 1 { "" } else { "s" },
                        log.display()
                    ));
                }
                if running.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                let mut i = 0;
                while i < running.len() {
                    match running[i].1.try_wait()? {
                        None => i += 1,
                        Some(status) => {
                            let (j, _, t0, (log, from)) = running.swap_remove(i);
                            let secs = t0.elapsed().as_secs_f64();
                            if status.success() {
                                self.note(format!("{} ran      {secs:>6.1}s", label(j)));
                                state.insert(&j.recipe, St::Done);
                            } else {
                                let tail = failure_line(&log, from, status);
                                self.note(format!(
                                    "{} FAILED   {secs:>6.1}s  {tail}  (log {})",
                                    label(j),
                                    log.display()
                                ));
                                failures.push((
                                    j.recipe.clone(),
                                    format!("{}: {tail}", label(j).trim()),
                                ));
                                state.insert(&j.recipe, St::Failed);
                            }
                        }
                    }
                }
            }
            Ok(())
        };
        let outcome = run();
        if outcome.is_err() {
            for (j, mut child, _, _) in running.drain(..) {
                let _ = child.kill();
                let _ = child.wait();
                self.warn(format!("{}: stopped (the run failed)", j.stage));
            }
        }
        outcome?;
        self.note(format!("{} ran with up to {n} at once", jobs.len()));
        Ok(failures)
    }
}

/// Have the child `cmd` starts get SIGTERM when this process ends, however it ends (a
/// `kill -9` of `pipe run -j` leaves no worker training on its own).
fn stop_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the id is read before the fork; the closure runs in the child between fork
    // and exec and calls only prctl, getppid and _exit, which are async-signal-safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: as above.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: it would never send the signal.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// What a local worker that failed says of it: the last line it wrote to `log` from
/// offset `from` (this attempt's), and the signal that ended it, if one did.
fn failure_line(log: &Path, from: u64, status: std::process::ExitStatus) -> String {
    use std::io::{Read, Seek};
    use std::os::unix::process::ExitStatusExt;
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        if f.seek(std::io::SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut bytes);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match status.signal() {
        Some(sig) => format!("{last} (killed by signal {sig})")
            .trim_start()
            .to_string(),
        None if last.is_empty() => format!("exited with {status}, writing nothing"),
        None => last.to_string(),
    }
}

/// Submit a small `pipe` command as a Slurm job (a sweep's promotion step): named `name`,
/// logging to `log`, after every job of `after` has ended however it ended (`afterany`).
/// Returns its job id.
pub(crate) fn sbatch_command(
    name: &str,
    args: &[String],
    log: &Path,
    after: &[String],
    partition: Option<&str>,
    chdir: &Path,
) -> Result<String> {
    let exe = std::env::current_exe().context("finding the pipe executable")?;
    let script = log.with_extension("sh");
    let cmd = std::iter::once(sh_quote(&exe.display().to_string()))
        .chain(args.iter().map(|a| sh_quote(a)))
        .collect::<Vec<_>>()
        .join(" ");
    crate::atomic::write_atomic(
        &script,
        format!("#!/bin/sh\n# pipe: {name}\nexec {cmd}\n").as_bytes(),
    )?;
    let mut sb = vec![
        "--parsable".to_string(),
        format!("--job-name={name}"),
        format!("--output={}", log.display()),
        "--open-mode=append".to_string(),
        format!("--chdir={}", chdir.display()),
    ];
    if !after.is_empty() {
        sb.push(format!("--dependency=afterany:{}", after.join(":")));
    }
    if let Some(p) = partition {
        sb.push(format!("--partition={p}"));
    }
    sb.push(script.display().to_string());
    let out = slurm("sbatch", &sb).with_context(|| format!("submitting `{name}`"))?;
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("sbatch printed no job id for `{name}`: {out:?}");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::sh_quote_expanding;

    #[test]
    fn a_remote_url_with_a_password_reaches_workers_by_their_environment_only() {
        use crate::engine::remote::{Remote, RemoteConfig};
        let dir = tempfile::tempdir().unwrap();
        let with = |url: &str| {
            let cfg = RemoteConfig {
                url: Some(url.to_string()),
                ..Default::default()
            };
            let rem = std::sync::Arc::new(Remote::open(&cfg).unwrap());
            crate::engine::Engine::new(dir.path())
                .unwrap()
                .with_remote(Some(rem))
        };
        let e = with("https://ana:hunter2@dav.example.com/pipe");
        assert!(e.remote_args().is_empty());
        assert_eq!(
            e.worker_env(),
            [(
                "PIPE_REMOTE",
                "https://ana:hunter2@dav.example.com/pipe".to_string()
            )]
        );
        // Without a password, the URL goes on the command line, as it always did.
        let e = with("s3://bucket/team");
        assert_eq!(e.remote_args(), ["--remote", "s3://bucket/team"]);
        assert!(e.worker_env().is_empty());
    }

    /// What `sh` makes of `word`, with USER and SLURM_JOB_ID set.
    fn sh_echo(word: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s|' {word}"))
            .env("USER", "ana")
            .env("SLURM_JOB_ID", "42")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_job_store_path_expands_its_variables_and_nothing_else() {
        let q = sh_quote_expanding("/scratch/$USER/node-${SLURM_JOB_ID}");
        assert_eq!(sh_echo(&q), "/scratch/ana/node-42|");
        // Spaces, globs, quotes, backticks and command substitutions stay as written.
        let odd = r#"/a b/*/"q"/`id`/$(id)/\x"#;
        assert_eq!(sh_echo(&sh_quote_expanding(odd)), format!("{odd}|"));
    }
}
