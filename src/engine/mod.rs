//! The engine: decides what must run, runs it, and stores what it made.
//!
//! A stage's key is the BLAKE3 of its kind, implementation version, effective config
//! (defaults filled, so formatting and key order do not matter), the *content hashes* of
//! the artifacts it reads and the fingerprint of any dataset folder. Because keys depend
//! on input content and not on input keys, a stage that re-runs and reproduces identical
//! bytes leaves every later key unchanged (early cutoff).

pub mod estimate;
pub mod executor;
pub mod fingerprint;
pub mod integrity;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::manifest::{self, Pipeline, StageConfig};
use crate::stages::{self, DatasetFiles, StageCtx};
use fingerprint::{fingerprint_tree, TreeFingerprint};
use store::{KeyRecord, StageState, Store};

/// Where a project lives: its folder, its manifests and its cache.
#[derive(Debug, Clone)]
pub struct Project {
    /// The folder holding `pipelines/` (relative paths in manifests start here).
    pub dir: PathBuf,
    /// `<dir>/pipelines`.
    pub pipelines: PathBuf,
    /// The store (`--cache`, `PIPE_CACHE`, or `<dir>/.pipe`).
    pub cache: PathBuf,
}

impl Project {
    /// Find the project from the current folder upward (the first with `pipelines/`).
    pub fn discover(cache: Option<PathBuf>) -> Result<Project> {
        let cwd = std::env::current_dir()?;
        let dir = cwd
            .ancestors()
            .find(|d| d.join("pipelines").is_dir())
            .unwrap_or(&cwd)
            .to_path_buf();
        Ok(Project::at(dir, cache))
    }

    /// The project of a manifest path given on the command line.
    pub fn for_manifest(manifest: &Path, discovered: &Project) -> Project {
        let abs = manifest
            .canonicalize()
            .unwrap_or_else(|_| manifest.to_path_buf());
        match abs.parent() {
            Some(parent) if parent.file_name().is_some_and(|n| n == "pipelines") => {
                let dir = parent.parent().unwrap_or(parent).to_path_buf();
                let default_cache = discovered.dir.join(".pipe");
                let cache = if discovered.cache != default_cache {
                    Some(discovered.cache.clone())
                } else {
                    None
                };
                Project::at(dir, cache)
            }
            _ => discovered.clone(),
        }
    }

    fn at(dir: PathBuf, cache: Option<PathBuf>) -> Project {
        let cache = cache
            .or_else(|| std::env::var_os("PIPE_CACHE").map(PathBuf::from))
            .unwrap_or_else(|| dir.join(".pipe"));
        Project {
            pipelines: dir.join("pipelines"),
            dir,
            cache,
        }
    }

    /// Find and load a pipeline by name or path, with `--set` overrides.
    pub fn load(&self, arg: &str, sets: &[String]) -> Result<(Project, Pipeline)> {
        let path = manifest::find(&self.pipelines, arg)?;
        let proj = Project::for_manifest(&path, self);
        let mut p = manifest::load(&path, sets, &proj.dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        resolve_devices(&mut p);
        Ok((proj, p))
    }
}

/// Settle what depends on this machine, before any key is computed: `device = "auto"`
/// becomes `cuda` when this build can open a GPU (said once on stderr), else `cpu`; an
/// unset `backend` becomes `native`, except on a GPU in builds with dfdx's CUDA device
/// (`dfdx-cuda`), where it stays `dfdx` until the native CUDA path has been measured.
pub fn resolve_devices(p: &mut Pipeline) {
    use manifest::{BackendKind, DeviceSetting, StageConfig};
    fn device(d: Option<DeviceSetting>) -> DeviceSetting {
        match d.unwrap_or_default() {
            DeviceSetting::Auto => {
                static RESOLVED: std::sync::OnceLock<DeviceSetting> = std::sync::OnceLock::new();
                *RESOLVED.get_or_init(|| {
                    if crate::backend::cuda_available() {
                        eprintln!("device = \"auto\": using the CUDA GPU");
                        DeviceSetting::Cuda
                    } else {
                        DeviceSetting::Cpu
                    }
                })
            }
            other => other,
        }
    }
    let settle = |d: &mut Option<DeviceSetting>, b: &mut Option<BackendKind>| {
        let dev = device(*d);
        *d = Some(dev);
        b.get_or_insert(match dev {
            // dfdx where its CUDA device is built in (the card's engine), else native.
            DeviceSetting::Cuda if cfg!(feature = "dfdx-cuda") => BackendKind::Dfdx,
            _ => BackendKind::Native,
        });
    };
    for s in p.stages.values_mut() {
        match &mut s.config {
            StageConfig::Train(t) => settle(&mut t.config.device, &mut t.config.backend),
            StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
                settle(&mut c.device, &mut c.backend)
            }
            StageConfig::Evaluate(c) => settle(&mut c.device, &mut c.backend),
            _ => {}
        }
    }
}

/// The key of stage `name` given the content hashes of its inputs (in input order) and
/// its dataset fingerprint.
pub fn stage_key(
    p: &Pipeline,
    name: &str,
    input_hashes: &[String],
    external: Option<&str>,
) -> String {
    let s = &p.stages[name];
    let kind = s.config.kind();
    let material = serde_json::json!({
        "kind": kind,
        "version": stages::version(kind),
        "config": s.config.to_json(),
        "inputs": input_hashes,
        "external": external,
    });
    blake3::hash(&serde_json::to_vec(&material).expect("JSON"))
        .to_hex()
        .to_string()
}

/// Options of `pipe run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages to re-run even if cached.
    pub force: Vec<String>,
    /// Run only this stage and what it depends on.
    pub until: Option<String>,
    /// Decide, print, run nothing.
    pub dry_run: bool,
    /// Print no per-stage lines (the caller prints JSON).
    pub quiet: bool,
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageOutcome {
    /// Stage name.
    pub name: String,
    /// Stage kind.
    pub kind: String,
    /// `ran`, `cached`, `would-run`, `waiting` (dry run: an input would re-run) or
    /// `skipped` (outside `--until`).
    pub state: String,
    /// Stage key, when it could be computed.
    pub key: Option<String>,
    /// Output content hash, when known.
    pub output: Option<String>,
    /// Seconds spent running (0 when cached).
    pub seconds: f64,
    /// What the stage produced.
    pub summary: String,
    /// Why it ran (or would run); empty when cached.
    pub reasons: Vec<String>,
    /// Estimated seconds, for a stage that would run (from past runs; see `estimate`).
    pub estimate: Option<f64>,
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

/// The engine over one store.
pub struct Engine {
    store: Store,
    fingerprints: HashMap<PathBuf, TreeFingerprint>,
    /// The store's timing log, read once (for estimates).
    timings: Option<Vec<estimate::TimingRecord>>,
}

struct Resolved {
    key: String,
    config: serde_json::Value,
    inputs: BTreeMap<String, String>,
    external: Option<String>,
}

impl Engine {
    /// Open the engine on a store folder.
    pub fn new(cache: &Path) -> Result<Engine> {
        Ok(Engine {
            store: Store::open(cache)?,
            fingerprints: HashMap::new(),
            timings: None,
        })
    }

    /// Open the engine to look only (status, dry runs, verify): it writes nothing.
    pub fn read_only(cache: &Path) -> Engine {
        Engine {
            store: Store::open_read_only(cache),
            fingerprints: HashMap::new(),
            timings: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn fingerprint(&mut self, root: &Path) -> Result<&TreeFingerprint> {
        if !self.fingerprints.contains_key(root) {
            let t = Instant::now();
            let fp = fingerprint_tree(&self.store, root)?;
            if fp.hashed > 0 {
                eprintln!(
                    "dataset {}: {} files, {} hashed (not in the stat cache) in {:.1}s",
                    fp.root.display(),
                    fp.files.len(),
                    fp.hashed,
                    t.elapsed().as_secs_f64()
                );
            }
            self.fingerprints.insert(root.to_path_buf(), fp);
        }
        Ok(&self.fingerprints[root])
    }

    /// Compute a stage's key if every input's output is known.
    fn resolve(
        &mut self,
        p: &Pipeline,
        name: &str,
        outputs: &HashMap<String, String>,
    ) -> Result<Option<Resolved>> {
        let s = &p.stages[name];
        let mut inputs = BTreeMap::new();
        let mut input_hashes = Vec::new();
        for i in &s.inputs {
            match outputs.get(i) {
                Some(h) => {
                    inputs.insert(i.clone(), h.clone());
                    input_hashes.push(h.clone());
                }
                None => return Ok(None),
            }
        }
        let external = match stages::external_root(p, s) {
            Some(root) => Some(
                self.fingerprint(&root)
                    .with_context(|| {
                        format!(
                            "stage `{name}`: cannot read its dataset folder (point `root` at it, e.g. `--set {name}.root=DIR`)"
                        )
                    })?
                    .hash
                    .clone(),
            ),
            None => None,
        };
        let config = s.config.to_json();
        let key = stage_key(p, name, &input_hashes, external.as_deref());
        Ok(Some(Resolved {
            key,
            config,
            inputs,
            external,
        }))
    }

    /// Run a pipeline: every stage whose key is not in the store, in dependency order.
    pub fn run(&mut self, p: &Pipeline, opts: &RunOptions) -> Result<RunReport> {
        for f in opts.force.iter().chain(opts.until.iter()) {
            if !p.stages.contains_key(f) {
                anyhow::bail!(
                    "no stage `{f}` in pipeline `{}` (stages: {})",
                    p.name,
                    p.stages.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        let _lock = if opts.dry_run {
            None
        } else {
            let l = self.store.lock(&format!("pipe run {}", p.name))?;
            self.store.clean_tmp()?;
            Some(l)
        };
        let wanted: Option<BTreeSet<String>> = opts.until.as_ref().map(|u| p.ancestors_of(u));
        let mut state = self.store.load_state(&p.name);
        let state_before = state.clone();
        // Stages this run found cached or ran: the only entries it writes back, so what
        // concurrent jobs recorded for other stages meanwhile is kept.
        let mut touched: HashSet<String> = HashSet::new();
        let mut outputs: HashMap<String, String> = HashMap::new();
        let mut report = RunReport {
            pipeline: p.name.clone(),
            manifest: p.file.display().to_string(),
            cache: self.store.root().display().to_string(),
            stages: Vec::new(),
        };
        for name in p.topo_order() {
            let s = &p.stages[&name];
            let kind = s.config.kind().to_string();
            let mut outcome = StageOutcome {
                name: name.clone(),
                kind: kind.clone(),
                state: String::new(),
                key: None,
                output: None,
                seconds: 0.0,
                summary: String::new(),
                reasons: Vec::new(),
                estimate: None,
            };
            if wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
                outcome.state = "skipped".into();
                outcome.summary = "after --until".into();
                self.print(&outcome, opts);
                report.stages.push(outcome);
                continue;
            }
            let Some(r) = self.resolve(p, &name, &outputs)? else {
                outcome.estimate = self.estimate_stage(p, &name, &outputs);
                outcome.state = "waiting".into();
                outcome.reasons = s
                    .inputs
                    .iter()
                    .filter(|i| !outputs.contains_key(*i))
                    .map(|i| format!("input {i} would re-run"))
                    .collect();
                self.print(&outcome, opts);
                report.stages.push(outcome);
                continue;
            };
            let prev = state.stages.get(&name).cloned();
            outcome.key = Some(r.key.clone());
            let forced = opts.force.contains(&name);
            let mut damage = Vec::new();
            let cached = if forced {
                None
            } else {
                self.lookup_sound(&name, &r.key, !opts.dry_run, &mut damage)?
            };
            if let Some(rec) = cached {
                outcome.state = "cached".into();
                outcome.output = Some(rec.output.clone());
                outcome.summary = rec.summary.clone();
                outputs.insert(name.clone(), rec.output.clone());
                if !opts.dry_run {
                    state
                        .stages
                        .insert(name.clone(), self.stage_state(&kind, &r, &rec.output));
                    touched.insert(name.clone());
                }
                self.print(&outcome, opts);
                report.stages.push(outcome);
                continue;
            }
            outcome.reasons = if forced {
                vec!["forced with --force".into()]
            } else if !damage.is_empty() {
                damage
            } else {
                explain(prev.as_ref(), &kind, &r, &HashSet::new())
            };
            if opts.dry_run {
                outcome.estimate = self.estimate_stage(p, &name, &outputs);
                outcome.state = "would-run".into();
                self.print(&outcome, opts);
                report.stages.push(outcome);
                continue;
            }
            if !opts.quiet {
                eprintln!("{:<12} running ({})", name, outcome.reasons.join("; "));
            }
            let (output, summary, seconds) = self.execute(p, &name, &r, &outputs)?;
            if prev.as_ref().is_some_and(|pr| pr.output == output) {
                outcome
                    .reasons
                    .push("output unchanged: later stages stay cached".into());
            }
            outcome.state = "ran".into();
            outcome.output = Some(output.clone());
            outcome.seconds = seconds;
            outcome.summary = summary;
            outputs.insert(name.clone(), output.clone());
            let st = self.stage_state(&kind, &r, &output);
            state.stages.insert(name.clone(), st.clone());
            touched.insert(name.clone());
            self.store.update_state(&p.name, |all| {
                all.stages.insert(name.clone(), st);
            })?;
            self.print(&outcome, opts);
            report.stages.push(outcome);
        }
        if !opts.dry_run && state.stages != state_before.stages {
            self.store.update_state(&p.name, |all| {
                for (k, v) in state.stages.iter().filter(|(k, _)| touched.contains(*k)) {
                    all.stages.insert(k.clone(), v.clone());
                }
            })?;
        }
        Ok(report)
    }

    /// Run one stage whose inputs are published: under its key's lock (another process
    /// running the same key is waited for, then its artifact is taken), into a private
    /// folder in its scratch, published atomically and recorded. Returns (output hash,
    /// summary, seconds; 0 when another process had published it meanwhile).
    fn execute(
        &mut self,
        p: &Pipeline,
        name: &str,
        r: &Resolved,
        outputs: &HashMap<String, String>,
    ) -> Result<(String, String, f64)> {
        let s = &p.stages[name];
        let kind = s.config.kind().to_string();
        let _key_lock = self.store.lock_key(&r.key, name)?;
        let mut damage = Vec::new();
        if let Some(rec) = self.lookup_sound(name, &r.key, true, &mut damage)? {
            return Ok((rec.output, rec.summary, 0.0));
        }
        let resumed = self.store.interrupted_at(&r.key).is_some();
        let tmp = self.store.new_out_dir(&r.key)?;
        let scratch = self.store.scratch_dir(&r.key)?;
        let started = Instant::now();
        let inputs: Vec<(String, PathBuf)> = s
            .inputs
            .iter()
            .map(|i| (i.clone(), self.store.artifact_dir(&outputs[i])))
            .collect();
        let fp = stages::external_root(p, s).and_then(|root| self.fingerprints.get(&root));
        let ctx = StageCtx {
            pipeline: p,
            stage: s,
            inputs,
            out: &tmp,
            scratch: &scratch,
            dataset: fp.map(|f| DatasetFiles {
                root: &f.root,
                files: &f.files,
            }),
        };
        let summary = match stages::run(&ctx) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.context(format!("stage `{name}` ({kind}) failed")));
            }
        };
        let output = self.store.publish(&tmp)?;
        let seconds = started.elapsed().as_secs_f64();
        self.store.record(&KeyRecord {
            key: r.key.clone(),
            kind: kind.clone(),
            stage: name.to_string(),
            output: output.clone(),
            summary: summary.clone(),
            seconds,
        })?;
        self.store.remove_scratch(&r.key)?;
        let dirs: Vec<PathBuf> = s
            .inputs
            .iter()
            .map(|i| self.store.artifact_dir(&outputs[i]))
            .collect();
        let files = stages::external_root(p, s)
            .and_then(|root| self.fingerprints.get(&root))
            .map(|f| f.files.len());
        // A resumed training ran only part of its epochs: its time is no rate to go by.
        if let Some((images, epochs)) = estimate::units(p, name, &dirs, files).filter(|_| !resumed)
        {
            let (kind, network, device, backend) = estimate::describe(p, name);
            let rec = estimate::TimingRecord {
                kind,
                network,
                device,
                backend,
                images,
                epochs,
                seconds,
            };
            if let Err(e) = estimate::append(self.store.root(), &rec) {
                eprintln!("warning: could not record the stage's timing: {e:#}");
            }
        }
        Ok((output, summary, seconds))
    }

    /// Estimated seconds for a stage that would run, given the outputs known so far.
    fn estimate_stage(
        &mut self,
        p: &Pipeline,
        name: &str,
        outputs: &HashMap<String, String>,
    ) -> Option<f64> {
        let past = self
            .timings
            .get_or_insert_with(|| estimate::load(self.store.root()));
        if past.is_empty() {
            return None;
        }
        let s = &p.stages[name];
        let mut dirs: Vec<PathBuf> = s
            .inputs
            .iter()
            .filter_map(|i| outputs.get(i).map(|o| self.store.artifact_dir(o)))
            .collect();
        // An lr-drop's HDF5 input may be reached only through its `from`: look upstream.
        for a in p.ancestors_of(name) {
            if let Some(o) = outputs.get(&a) {
                if matches!(p.stages[&a].config, StageConfig::Hdf5(_)) {
                    dirs.push(self.store.artifact_dir(o));
                }
            }
        }
        let files = stages::external_root(p, s)
            .and_then(|root| self.fingerprints.get(&root))
            .map(|f| f.files.len());
        let (images, epochs) = estimate::units(p, name, &dirs, files)?;
        let what = estimate::describe(p, name);
        let past = self.timings.as_ref()?;
        estimate::estimate(past, &what, images, epochs)
    }

    /// Run one stage of a pipeline whose inputs are all in the store (what a cluster job
    /// or a local worker runs): resolves every stage before it from the store, then runs
    /// this one unless it is cached. Errors name an input that is missing.
    pub fn run_stage(&mut self, p: &Pipeline, stage: &str) -> Result<StageOutcome> {
        if !p.stages.contains_key(stage) {
            anyhow::bail!(
                "no stage `{stage}` in pipeline `{}` (stages: {})",
                p.name,
                p.stages.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let wanted = p.ancestors_of(stage);
        let mut outputs: HashMap<String, String> = HashMap::new();
        for name in p.topo_order() {
            if !wanted.contains(&name) {
                continue;
            }
            let r = self
                .resolve(p, &name, &outputs)?
                .ok_or_else(|| anyhow::anyhow!("stage `{name}`: an input is not in the store"))?;
            let kind = p.stages[&name].config.kind().to_string();
            if name != stage {
                let mut damage = Vec::new();
                let rec = self
                    .lookup_sound(&name, &r.key, true, &mut damage)?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "stage `{stage}` needs `{name}`, which is not in the store (did its job fail? `pipe status {}` says)",
                            p.name
                        )
                    })?;
                outputs.insert(name.clone(), rec.output);
                continue;
            }
            let mut outcome = StageOutcome {
                name: name.clone(),
                kind: kind.clone(),
                state: "cached".into(),
                key: Some(r.key.clone()),
                output: None,
                seconds: 0.0,
                summary: String::new(),
                reasons: Vec::new(),
                estimate: None,
            };
            let mut damage = Vec::new();
            let (output, summary, seconds) =
                match self.lookup_sound(&name, &r.key, true, &mut damage)? {
                    Some(rec) => (rec.output, rec.summary, 0.0),
                    None => {
                        eprintln!("{name:<12} running");
                        let done = self.execute(p, &name, &r, &outputs)?;
                        outcome.state = "ran".into();
                        done
                    }
                };
            let st = self.stage_state(&kind, &r, &output);
            self.store.update_state(&p.name, |all| {
                all.stages.insert(name.clone(), st);
            })?;
            // A job's log, next to the artifact it made: `logs/<artifact>.log` (a link to
            // the job's log file, which keeps its last lines as the job ends).
            if let (Some(log), "ran") = (std::env::var_os("PIPE_JOB_LOG"), outcome.state.as_str()) {
                let dir = self.store.root().join("logs");
                let link = dir.join(format!("{output}.log"));
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::remove_file(&link);
                if let Err(e) = std::os::unix::fs::symlink(&log, &link) {
                    eprintln!(
                        "warning: could not link the job's log at {}: {e}",
                        link.display()
                    );
                }
            }
            outcome.output = Some(output);
            outcome.summary = summary;
            outcome.seconds = seconds;
            return Ok(outcome);
        }
        unreachable!("the stage is among its own ancestors")
    }

    /// Re-hash artifacts fully against their seals: every artifact in the store, or those
    /// `only` names. Returns (artifact, stages that produced it, health), damaged first.
    pub fn verify(
        &self,
        only: Option<&HashSet<String>>,
    ) -> Result<Vec<(String, Vec<String>, integrity::Health)>> {
        let mut made_by: HashMap<String, BTreeSet<String>> = HashMap::new();
        for rec in self.store.all_keys()? {
            made_by.entry(rec.output).or_default().insert(rec.stage);
        }
        let mut out = Vec::new();
        for a in self.store.all_artifacts()? {
            if only.is_some_and(|o| !o.contains(&a)) {
                continue;
            }
            let health = self.store.health(&a, true)?;
            let stages = made_by.remove(&a).unwrap_or_default().into_iter().collect();
            out.push((a, stages, health));
        }
        out.sort_by_key(|(a, _, h)| (*h == integrity::Health::Sound, a.clone()));
        Ok(out)
    }

    /// The cached record of a key whose artifact is as published. A damaged artifact is
    /// treated as missing: `damage` gets the reason (naming the files, also printed as a
    /// warning) and, with `quarantine`, the artifact is moved aside so the stage's re-run
    /// can publish it afresh.
    fn lookup_sound(
        &self,
        stage: &str,
        key: &str,
        quarantine: bool,
        damage: &mut Vec<String>,
    ) -> Result<Option<store::KeyRecord>> {
        let Some(rec) = self.store.lookup(key) else {
            return Ok(None);
        };
        match self.store.health(&rec.output, false)? {
            integrity::Health::Sound => Ok(Some(rec)),
            integrity::Health::Damaged(problems) => {
                for pr in &problems {
                    eprintln!("warning: stage `{stage}`'s artifact is damaged: {pr}");
                }
                damage.push(format!(
                    "its artifact is damaged ({}); it runs again",
                    problems.join("; ")
                ));
                if quarantine {
                    self.store.quarantine(&rec.output)?;
                }
                Ok(None)
            }
        }
    }

    fn stage_state(&self, kind: &str, r: &Resolved, output: &str) -> StageState {
        StageState {
            key: r.key.clone(),
            kind: kind.to_string(),
            version: stages::version(kind),
            config: r.config.clone(),
            inputs: r.inputs.clone(),
            external: r.external.clone(),
            output: output.to_string(),
        }
    }

    fn print(&self, o: &StageOutcome, opts: &RunOptions) {
        if opts.quiet {
            return;
        }
        let key = o.key.as_deref().map(|k| &k[..12]).unwrap_or("-");
        let time = if o.state == "ran" {
            format!("{:.1}s", o.seconds)
        } else {
            String::new()
        };
        let detail = match o.state.as_str() {
            "would-run" | "waiting" => {
                let est = o.estimate.map_or("no estimate yet".into(), |e| {
                    format!("est. {}", estimate::human(e))
                });
                format!("[{est}] {}", o.reasons.join("; "))
            }
            _ => {
                let mut d = o.summary.clone();
                if o.state == "ran" && o.reasons.iter().any(|r| r.starts_with("output unchanged")) {
                    d.push_str(" [output unchanged: later stages stay cached]");
                }
                d
            }
        };
        eprintln!(
            "{:<12} {:<9} {:>7}  key {key}  {detail}",
            o.name, o.state, time
        );
    }

    /// For each stage: cached or stale, and why, without running anything.
    pub fn status(&mut self, p: &Pipeline) -> Result<Vec<StageOutcome>> {
        let mut out = self.status_only(p)?;
        // Stages submitted to an executor: queued, running, or how their job ended.
        if out.iter().any(|o| o.state != "cached") && self.store.jobs_dir().is_dir() {
            let recipes = self.recipes(p)?;
            for o in out.iter_mut().filter(|o| o.state != "cached") {
                let Some(rec) = self.job_record(&recipes[&o.name]) else {
                    continue;
                };
                let who = format!("{} job {}", rec.executor, rec.job);
                match self.job_state(&rec) {
                    executor::JobState::Queued(why) => {
                        o.state = "queued".into();
                        o.reasons
                            .insert(0, format!("{who} pending {why}").trim().to_string());
                    }
                    executor::JobState::Running(how) => {
                        o.state = "running".into();
                        o.reasons
                            .insert(0, format!("{who} {how}").trim().to_string());
                    }
                    executor::JobState::Failed(why) => o
                        .reasons
                        .insert(0, format!("{who} failed ({why}); log {}", rec.log)),
                    executor::JobState::Done | executor::JobState::Gone => {}
                    executor::JobState::Unknown => {
                        o.reasons.insert(0, format!("{who}: Slurm does not answer"))
                    }
                }
            }
        }
        Ok(out)
    }

    fn status_only(&mut self, p: &Pipeline) -> Result<Vec<StageOutcome>> {
        let state = self.store.load_state(&p.name);
        let mut outputs = HashMap::new();
        let mut stale_inputs: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for name in p.topo_order() {
            let s = &p.stages[&name];
            let kind = s.config.kind().to_string();
            let prev = state.stages.get(&name);
            let mut o = StageOutcome {
                name: name.clone(),
                kind: kind.clone(),
                state: "stale".into(),
                key: None,
                output: None,
                seconds: 0.0,
                summary: String::new(),
                reasons: Vec::new(),
                estimate: None,
            };
            match self.resolve(p, &name, &outputs)? {
                Some(r) => {
                    o.key = Some(r.key.clone());
                    let mut damage = Vec::new();
                    if let Some(rec) = self.lookup_sound(&name, &r.key, false, &mut damage)? {
                        o.state = "cached".into();
                        o.summary = rec.summary.clone();
                        o.output = Some(rec.output.clone());
                        outputs.insert(name.clone(), rec.output);
                    } else {
                        o.reasons = if damage.is_empty() {
                            explain(prev, &kind, &r, &stale_inputs)
                        } else {
                            damage
                        };
                        if let Some(e) = self.store.interrupted_at(&r.key) {
                            o.reasons.insert(
                                0,
                                format!(
                                    "interrupted: a run resumes from its checkpoint at epoch {e}"
                                ),
                            );
                        }
                        stale_inputs.insert(name.clone());
                        o.estimate = self.estimate_stage(p, &name, &outputs);
                    }
                }
                None => {
                    o.reasons = s
                        .inputs
                        .iter()
                        .filter(|i| stale_inputs.contains(*i))
                        .map(|i| format!("input {i} changed"))
                        .collect();
                    stale_inputs.insert(name.clone());
                    o.estimate = self.estimate_stage(p, &name, &outputs);
                }
            }
            out.push(o);
        }
        Ok(out)
    }

    /// Remove every artifact and key that no manifest in `pipelines/` resolves to (and that
    /// is not the last run of such a manifest). Returns (artifacts, keys, bytes) removed.
    pub fn gc(&mut self, project: &Project) -> Result<GcReport> {
        let _lock = self.store.lock("pipe gc")?;
        self.store.clean_tmp()?;
        let mut keep_keys: HashSet<String> = HashSet::new();
        let mut keep_outputs: HashSet<String> = HashSet::new();
        let mut keep_scratch: HashSet<String> = HashSet::new();
        let mut warnings = Vec::new();
        let mut names = HashSet::new();
        for file in manifest::list(&project.pipelines)? {
            // The last run of each pipeline is kept even if its manifest needs `--set` to load.
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let p = match manifest::load(&file, &[], &project.dir) {
                Ok(mut p) => {
                    resolve_devices(&mut p);
                    Some(p)
                }
                Err(e) => {
                    warnings.push(format!("{}: {}", display_name(&file), e.message));
                    None
                }
            };
            let name = p.as_ref().map(|p| p.name.clone()).unwrap_or(stem);
            names.insert(name.clone());
            let st = self.store.load_state(&name);
            for s in st.stages.values() {
                keep_keys.insert(s.key.clone());
                keep_outputs.insert(s.output.clone());
            }
            if let Some(p) = p {
                match self.status(&p) {
                    Ok(stages) => {
                        for s in stages {
                            // A stale stage's scratch (an interrupted training's
                            // checkpoints) stays: the next run resumes from it.
                            if let Some(k) = &s.key {
                                keep_scratch.insert(k.clone());
                            }
                            if let (Some(k), Some(o)) = (s.key, s.output) {
                                keep_keys.insert(k);
                                keep_outputs.insert(o);
                            }
                        }
                    }
                    Err(e) => warnings.push(format!("{}: {e}", display_name(&file))),
                }
            }
        }
        let mut report = GcReport::default();
        // Damaged artifacts go, whether or not a manifest still resolves to them.
        for a in self.store.all_artifacts()? {
            if let Ok(integrity::Health::Damaged(problems)) = self.store.health(&a, false) {
                for pr in problems {
                    eprintln!("gc: dropping a damaged artifact: {pr}");
                }
                self.store.quarantine(&a)?;
                report.artifacts += 1;
            }
        }
        report.bytes += self.store.remove_damaged()?;
        for rec in self.store.all_keys()? {
            if !keep_keys.contains(&rec.key) {
                self.store.remove_key(&rec.key)?;
                report.keys += 1;
            }
        }
        for a in self.store.all_artifacts()? {
            if !keep_outputs.contains(&a) {
                report.bytes += self.store.remove_artifact(&a)?;
                report.artifacts += 1;
            }
        }
        for k in self.store.all_scratch()? {
            if !keep_keys.contains(&k)
                && !keep_scratch.contains(&k)
                && !self.store.key_is_running(&k)
            {
                report.bytes += store::dir_size(&self.store.root().join("scratch").join(&k));
                self.store.remove_scratch(&k)?;
            }
        }
        let state_dir = self.store.root().join("state");
        for e in std::fs::read_dir(&state_dir)? {
            let path = e?.path();
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !names.contains(&stem) {
                std::fs::remove_file(&path)?;
            }
        }
        report.warnings = warnings;
        Ok(report)
    }
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The result of `pipe gc`.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Artifacts removed.
    pub artifacts: usize,
    /// Key records removed.
    pub keys: usize,
    /// Bytes freed.
    pub bytes: u64,
    /// Manifests that could not be resolved.
    pub warnings: Vec<String>,
}

/// Why a stage's key differs from its last run.
fn explain(
    prev: Option<&StageState>,
    kind: &str,
    r: &Resolved,
    stale_inputs: &HashSet<String>,
) -> Vec<String> {
    let Some(prev) = prev else {
        return vec!["never ran in this pipeline".into()];
    };
    let mut why = Vec::new();
    if prev.kind != kind {
        why.push(format!("kind changed: {} -> {kind}", prev.kind));
    } else if prev.version != stages::version(kind) {
        why.push(format!(
            "implementation changed: {kind} v{} -> v{}",
            prev.version,
            stages::version(kind)
        ));
    }
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    flatten("", &prev.config, &mut old);
    flatten("", &r.config, &mut new);
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (a, b) = (old.get(k), new.get(k));
        if a != b {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            why.push(format!("config changed: {k} {} -> {}", show(a), show(b)));
        }
    }
    for (name, hash) in &r.inputs {
        if stale_inputs.contains(name) || prev.inputs.get(name) != Some(hash) {
            why.push(format!("input {name} changed"));
        }
    }
    for name in prev.inputs.keys() {
        if !r.inputs.contains_key(name) {
            why.push(format!("input {name} removed"));
        }
    }
    if prev.external != r.external {
        why.push("dataset folder contents changed".into());
    }
    if why.is_empty() {
        why.push("not in the cache (removed by `pipe gc`, or a cache folder change)".into());
    }
    why
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}
