//! The engine: decides what must run, runs it, and stores what it made.
//!
//! A stage's key is the BLAKE3 of its [`KeyMaterial`]: kind, implementation version,
//! effective config (defaults filled, so formatting and key order do not matter), the
//! *content hashes* of the artifacts it reads and the fingerprint of any dataset folder.
//! Because keys depend on input content and not on input keys, a stage that re-runs and
//! reproduces identical bytes leaves every later key unchanged (early cutoff).
//!
//! The engine answers (`query`: status, rows for `show`, sides for `diff`, estimates) and
//! runs; it prints nothing itself. What happens goes to a [`Watcher`] as events, and
//! `report` turns them (and the answers) into text.

pub mod estimate;
pub mod executor;
pub mod fingerprint;
pub mod gc;
pub mod integrity;
pub mod keys;
pub mod query;
pub mod runs;
pub mod store;
pub mod sweep;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

pub use keys::{stage_key, KeyMaterial};

use crate::manifest::{self, Pipeline, StageKind};
use crate::report::outcome::{
    Console, Event, Reason, RunReport, StageOutcome, StageState, Watcher,
};
use crate::stages::{self, DatasetFiles, StageCtx};
use fingerprint::{fingerprint_tree, TreeFingerprint};
use store::{KeyRecord, StageRecord, Store};

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

    /// The project in folder `dir`, with its store at `cache` (else `$PIPE_CACHE`, else
    /// `<dir>/.pipe`).
    pub fn at(dir: PathBuf, cache: Option<PathBuf>) -> Project {
        let cache = cache
            .or_else(|| std::env::var_os("PIPE_CACHE").map(PathBuf::from))
            .unwrap_or_else(|| dir.join(".pipe"));
        Project {
            pipelines: dir.join("pipelines"),
            dir,
            cache,
        }
    }

    /// Find and load a pipeline by name or path, with `--set` overrides: typed, its
    /// networks checked, its devices settled. A sweep's point is named `<sweep>@<id>`.
    pub fn load(&self, arg: &str, sets: &[String]) -> Result<(Project, Pipeline)> {
        match self.load_target(arg, sets)? {
            (proj, Target::Pipeline(p)) => Ok((proj, p)),
            (proj, Target::Point(s, i)) => Ok((proj, s.points[i].pipeline.clone())),
            (_, Target::Sweep(s)) => anyhow::bail!(
                "`{arg}` is a sweep of {} points: name one of them (e.g. `{}`)",
                s.points.len(),
                s.points[0].pipeline.name
            ),
        }
    }

    /// Find and load what `arg` names: a pipeline, a sweep, or one point of a sweep
    /// (`<sweep>@<id>`).
    pub fn load_target(&self, arg: &str, sets: &[String]) -> Result<(Project, Target)> {
        let (path, point) = match manifest::find(&self.pipelines, arg) {
            Ok(path) => (path, None),
            Err(e) => match arg.split_once('@') {
                Some((sweep, id)) => match manifest::find(&self.pipelines, sweep) {
                    Ok(path) => (path, Some(id)),
                    Err(_) => return Err(e),
                },
                None => return Err(e),
            },
        };
        let proj = Project::for_manifest(&path, self);
        let target = load_target(&path, sets, &proj.dir)?;
        match (target, point) {
            (t, None) => Ok((proj, t)),
            (Target::Sweep(s), Some(id)) => match s.points.iter().position(|p| p.id == id) {
                Some(i) => Ok((proj, Target::Point(s, i))),
                None => anyhow::bail!(
                    "sweep `{}` has no point `{id}` (its points: {})",
                    s.name,
                    s.points
                        .iter()
                        .take(12)
                        .map(|p| p.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            (_, Some(_)) => anyhow::bail!("`{arg}`: {} is not a sweep", path.display()),
        }
    }
}

/// What a name on the command line stands for.
#[derive(Debug, Clone)]
pub enum Target {
    /// One pipeline.
    Pipeline(Pipeline),
    /// A sweep: every point.
    Sweep(manifest::Sweep),
    /// One point of a sweep (its index).
    Point(manifest::Sweep, usize),
}

/// Load a manifest as every command does: typed and checked (`manifest`), its networks
/// expanded and shape-checked (`nn`), `auto` devices settled for this machine; a sweep
/// with every point so.
pub fn load_target(path: &Path, sets: &[String], project_dir: &Path) -> Result<Target> {
    let fail = |e: manifest::ManifestError| anyhow::anyhow!("{e}");
    match manifest::load_any(path, sets, project_dir).map_err(fail)? {
        manifest::Loaded::Pipeline(mut p) => {
            crate::nn::check(&p).map_err(fail)?;
            resolve_devices(&mut p);
            Ok(Target::Pipeline(p))
        }
        manifest::Loaded::Sweep(mut s) => {
            // Networks are checked once, unless a swept key reaches into them.
            let networks_swept = s
                .keys
                .iter()
                .any(|k| k.starts_with("networks.") || k.starts_with("blocks."));
            for (i, pt) in s.points.iter_mut().enumerate() {
                if i == 0 || networks_swept {
                    crate::nn::check(&pt.pipeline).map_err(fail)?;
                }
                resolve_devices(&mut pt.pipeline);
            }
            Ok(Target::Sweep(s))
        }
    }
}

/// Load a manifest that is one pipeline (see [`load_target`]).
pub fn load_pipeline(path: &Path, sets: &[String], project_dir: &Path) -> Result<Pipeline> {
    match load_target(path, sets, project_dir)? {
        Target::Pipeline(p) => Ok(p),
        Target::Point(s, i) => Ok(s.points[i].pipeline.clone()),
        Target::Sweep(s) => anyhow::bail!(
            "{} is a sweep of {} points, not one pipeline",
            path.display(),
            s.points.len()
        ),
    }
}

/// Settle what depends on this machine, before any key is computed: `device = "auto"`
/// becomes `cuda` when this build can open a GPU (said once on stderr), else `cpu`; an
/// unset `backend` becomes `native`, except on a GPU in builds with dfdx's CUDA device
/// (`dfdx-cuda`), where it stays `dfdx` until the native CUDA path has been measured.
pub fn resolve_devices(p: &mut Pipeline) {
    use manifest::{BackendSetting, DeviceSetting, StageConfig};
    fn device(d: Option<DeviceSetting>) -> DeviceSetting {
        match d.unwrap_or_default() {
            DeviceSetting::Auto => {
                static RESOLVED: std::sync::OnceLock<DeviceSetting> = std::sync::OnceLock::new();
                *RESOLVED.get_or_init(|| {
                    if crate::backend::cuda_available() {
                        crate::report::outcome::notice("device = \"auto\": using the CUDA GPU");
                        DeviceSetting::Cuda
                    } else {
                        DeviceSetting::Cpu
                    }
                })
            }
            other => other,
        }
    }
    let settle = |d: &mut Option<DeviceSetting>, b: &mut Option<BackendSetting>| {
        let dev = device(*d);
        *d = Some(dev);
        b.get_or_insert(match dev {
            // dfdx where its CUDA device is built in (the card's engine), else native.
            DeviceSetting::Cuda if cfg!(feature = "dfdx-cuda") => BackendSetting::Dfdx,
            _ => BackendSetting::Native,
        });
    };
    for s in p.stages.values_mut() {
        match &mut s.config {
            StageConfig::Train(t) => settle(&mut t.device, &mut t.backend),
            StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
                settle(&mut c.device, &mut c.backend)
            }
            StageConfig::Evaluate(c) => settle(&mut c.device, &mut c.backend),
            _ => {}
        }
    }
}

/// Options of `pipe run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages to re-run even if cached (from their first epoch, for training).
    pub force: Vec<String>,
    /// Run only this stage and what it depends on.
    pub until: Option<String>,
    /// Decide and report; run nothing, write nothing.
    pub dry_run: bool,
}

/// The engine over one store.
pub struct Engine {
    store: Store,
    fingerprints: HashMap<PathBuf, TreeFingerprint>,
    /// The store's timing log, read once (for estimates).
    timings: Option<Vec<estimate::TimingRecord>>,
    watcher: Box<dyn Watcher>,
    /// While one query looks at many pipelines (a sweep's points): the keys already found
    /// sound in it, so a stage shared by a thousand points is checked once, not a thousand
    /// times. `None` outside such a query: a run checks an artifact each time it uses it.
    sound_memo: Option<HashMap<String, store::KeyRecord>>,
}

/// A stage whose key is known.
pub(crate) struct Resolved {
    key: String,
    material: KeyMaterial,
    /// Input stage name -> the content hash it read.
    inputs: BTreeMap<String, String>,
}

/// What resolving a stage's key found.
pub(crate) enum Resolution {
    /// The key.
    Ready(Box<Resolved>),
    /// An input's output is not known (it would run first).
    InputsPending,
    /// The dataset folder the stage reads is not there (only when looking, not running).
    DatasetMissing(PathBuf),
}

impl Engine {
    /// Open the engine on a store folder.
    pub fn new(cache: &Path) -> Result<Engine> {
        Ok(Engine {
            store: Store::open(cache)?,
            fingerprints: HashMap::new(),
            timings: None,
            watcher: Box::new(Console::default()),
            sound_memo: None,
        })
    }

    /// Open the engine to look only (status, dry runs, verify): it writes nothing.
    pub fn read_only(cache: &Path) -> Engine {
        Engine {
            store: Store::open_read_only(cache),
            fingerprints: HashMap::new(),
            timings: None,
            watcher: Box::new(Console::default()),
            sound_memo: None,
        }
    }

    /// Send what happens to `w` (the default: the console).
    pub fn watched_by(mut self, w: Box<dyn Watcher>) -> Engine {
        self.watcher = w;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The epoch an interrupted training of `key` left its last checkpoint at.
    fn interrupted_at(&self, key: &str) -> Option<usize> {
        stages::train::interrupted_at(&self.store.scratch_path(key), key)
    }

    /// Record in the store where `p`'s manifest lives (for `pipe gc`).
    fn note_project(&self, p: &Pipeline) -> Result<()> {
        let folder = p
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.store.note_project(folder, &p.project_dir)
    }

    fn warn(&mut self, w: String) {
        self.watcher.event(Event::Warning(w));
    }

    fn note(&mut self, n: String) {
        self.watcher.event(Event::Note(n));
    }

    fn settled(&mut self, o: &StageOutcome) {
        self.watcher.event(Event::Settled(o));
    }

    fn fingerprint(&mut self, root: &Path) -> Result<&TreeFingerprint> {
        if !self.fingerprints.contains_key(root) {
            let t = Instant::now();
            let fp = fingerprint_tree(&self.store, root)?;
            if fp.hashed > 0 {
                self.note(format!(
                    "dataset {}: {} files, {} hashed (not in the stat cache) in {:.1}s",
                    fp.root.display(),
                    fp.files.len(),
                    fp.hashed,
                    t.elapsed().as_secs_f64()
                ));
            }
            self.fingerprints.insert(root.to_path_buf(), fp);
        }
        Ok(&self.fingerprints[root])
    }

    /// A stage's key, if every input's output is known. `looking`: a dataset folder that
    /// is not there makes the stage wait (status, dry runs) instead of failing (runs).
    pub(crate) fn resolve(
        &mut self,
        p: &Pipeline,
        name: &str,
        outputs: &HashMap<String, String>,
        looking: bool,
    ) -> Result<Resolution> {
        let s = &p.stages[name];
        let mut inputs = BTreeMap::new();
        let mut input_hashes = Vec::new();
        for i in &s.inputs {
            match outputs.get(i) {
                Some(h) => {
                    inputs.insert(i.clone(), h.clone());
                    input_hashes.push(h.clone());
                }
                None => return Ok(Resolution::InputsPending),
            }
        }
        let external = match stages::external_root(p, s) {
            Some(root) if looking && !root.exists() => {
                return Ok(Resolution::DatasetMissing(root));
            }
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
        let material = KeyMaterial::of(p, name, input_hashes, external)?;
        Ok(Resolution::Ready(Box::new(Resolved {
            key: material.hash(),
            material,
            inputs,
        })))
    }

    fn check_stage_names(p: &Pipeline, names: &[&String]) -> Result<()> {
        for f in names {
            if !p.stages.contains_key(*f) {
                anyhow::bail!(
                    "no stage `{f}` in pipeline `{}` (stages: {})",
                    p.name,
                    p.stages.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(())
    }

    /// Run a pipeline: every stage whose key is not in the store, in dependency order.
    pub fn run(&mut self, p: &Pipeline, opts: &RunOptions) -> Result<RunReport> {
        let named: Vec<&String> = opts.force.iter().chain(opts.until.iter()).collect();
        Self::check_stage_names(p, &named)?;
        let _lock = if opts.dry_run {
            None
        } else {
            let l = self.store.lock(&format!("pipe run {}", p.name))?;
            self.store.clean_tmp()?;
            self.note_project(p)?;
            Some(l)
        };
        let wanted: Option<BTreeSet<String>> = opts.until.as_ref().map(|u| p.ancestors_of(u));
        let mut state = self.store.load_state(&p.name);
        let state_before = state.clone();
        // Stages this run found cached or ran: the only entries it writes back, so what
        // concurrent jobs recorded for other stages meanwhile is kept.
        let mut touched: HashSet<String> = HashSet::new();
        let mut outputs: HashMap<String, String> = HashMap::new();
        let mut waits_for_data: HashSet<String> = HashSet::new();
        let mut report = RunReport {
            pipeline: p.name.clone(),
            manifest: p.file.display().to_string(),
            cache: self.store.root().display().to_string(),
            stages: Vec::new(),
        };
        for name in p.topo_order() {
            let s = &p.stages[&name];
            let kind = s.config.kind();
            let mut outcome = StageOutcome::new(&name, kind, StageState::Waiting);
            if wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
                outcome.state = StageState::Skipped;
                outcome.summary = "after --until".into();
                self.settled(&outcome);
                report.stages.push(outcome);
                continue;
            }
            self.check_known_data(p, &name, &outputs)?;
            let r = match self.resolve(p, &name, &outputs, opts.dry_run)? {
                Resolution::Ready(r) => r,
                Resolution::InputsPending => {
                    outcome.estimate = self.estimate_stage(p, &name, &outputs);
                    outcome.reasons = pending_inputs(s, &outputs, &waits_for_data);
                    if outcome
                        .reasons
                        .iter()
                        .any(|r| matches!(r, Reason::InputWaits(_)))
                    {
                        waits_for_data.insert(name.clone());
                    }
                    self.settled(&outcome);
                    report.stages.push(outcome);
                    continue;
                }
                Resolution::DatasetMissing(root) => {
                    outcome.reasons = vec![Reason::DatasetMissing {
                        path: root.display().to_string(),
                        key: format!("{name}.root"),
                    }];
                    waits_for_data.insert(name.clone());
                    self.settled(&outcome);
                    report.stages.push(outcome);
                    continue;
                }
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
                outcome.state = StageState::Cached;
                outcome.output = Some(rec.output.clone());
                outcome.summary = rec.summary.clone();
                outputs.insert(name.clone(), rec.output.clone());
                if !opts.dry_run {
                    state
                        .stages
                        .insert(name.clone(), stage_record(&r, &rec.output));
                    touched.insert(name.clone());
                }
                self.settled(&outcome);
                report.stages.push(outcome);
                continue;
            }
            outcome.reasons = if forced {
                vec![Reason::Forced]
            } else if !damage.is_empty() {
                vec![Reason::Damaged(damage)]
            } else {
                query::explain(prev.as_ref(), &r, &HashSet::new())
            };
            if opts.dry_run {
                outcome.estimate = self.estimate_stage(p, &name, &outputs);
                outcome.state = StageState::WouldRun;
                self.settled(&outcome);
                report.stages.push(outcome);
                continue;
            }
            self.watcher.event(Event::Starting(&name, &outcome.reasons));
            let (output, summary, seconds) = self.execute(p, &name, &r, &outputs, forced)?;
            if prev.as_ref().is_some_and(|pr| pr.output == output) {
                outcome.reasons.push(Reason::OutputUnchanged);
            }
            outcome.state = StageState::Ran;
            outcome.output = Some(output.clone());
            outcome.seconds = seconds;
            outcome.summary = summary;
            outputs.insert(name.clone(), output.clone());
            let st = stage_record(&r, &output);
            state.stages.insert(name.clone(), st.clone());
            touched.insert(name.clone());
            self.store.update_state(&p.name, |all| {
                all.stages.insert(name.clone(), st);
            })?;
            self.settled(&outcome);
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
    /// running the same key is waited for, then its artifact is taken, unless `forced`),
    /// into a private folder in its scratch, published atomically and recorded. A forced
    /// stage starts over: its key's scratch (an interrupted run's checkpoints) is cleared
    /// first. Returns (output hash, summary, seconds; 0 when another process had published
    /// it meanwhile).
    fn execute(
        &mut self,
        p: &Pipeline,
        name: &str,
        r: &Resolved,
        outputs: &HashMap<String, String>,
        forced: bool,
    ) -> Result<(String, String, f64)> {
        let s = &p.stages[name];
        let kind = s.config.kind();
        let _key_lock = self.store.lock_key(&r.key, name)?;
        if forced {
            self.store.remove_scratch(&r.key)?;
        } else {
            let mut damage = Vec::new();
            if let Some(rec) = self.lookup_sound(name, &r.key, true, &mut damage)? {
                return Ok((rec.output, rec.summary, 0.0));
            }
        }
        let resumed = self.interrupted_at(&r.key).is_some();
        let tmp = self.store.new_out_dir(&r.key)?;
        let scratch = self.store.scratch_dir(&r.key)?;
        let started = Instant::now();
        let inputs: Vec<(String, PathBuf)> = s
            .inputs
            .iter()
            .map(|i| (i.clone(), self.store.artifact_dir(&outputs[i])))
            .collect();
        let network = match kind {
            StageKind::Train => {
                Some(crate::nn::train_graph(p, name).map_err(|e| anyhow::anyhow!("{e}"))?)
            }
            _ => None,
        };
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
            network: network.as_ref(),
            key: &r.key,
        };
        let summary = match stages::run(&ctx) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.context(format!("stage `{name}` ({kind}) failed")));
            }
        };
        let output = self.publish(&tmp, kind, &r.key)?;
        let seconds = started.elapsed().as_secs_f64();
        self.store.record(&KeyRecord {
            key: r.key.clone(),
            kind,
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
            let rec =
                estimate::TimingRecord::new(estimate::describe(p, name), images, epochs, seconds);
            if let Err(e) = estimate::append(self.store.root(), &rec) {
                self.warn(format!("could not record the stage's timing: {e:#}"));
            }
        }
        Ok((output, summary, seconds))
    }

    /// Run one stage of a pipeline whose inputs are all in the store (what a cluster job
    /// or a local worker runs): resolves every stage before it from the store, then runs
    /// this one unless it is cached. Errors name an input that is missing.
    pub fn run_stage(&mut self, p: &Pipeline, stage: &str) -> Result<StageOutcome> {
        Self::check_stage_names(p, &[&stage.to_string()])?;
        self.note_project(p)?;
        let wanted = p.ancestors_of(stage);
        let mut outputs: HashMap<String, String> = HashMap::new();
        for name in p.topo_order() {
            if !wanted.contains(&name) {
                continue;
            }
            let Resolution::Ready(r) = self.resolve(p, &name, &outputs, false)? else {
                anyhow::bail!("stage `{name}`: an input is not in the store");
            };
            let kind = p.stages[&name].config.kind();
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
            let mut outcome = StageOutcome::new(&name, kind, StageState::Cached);
            outcome.key = Some(r.key.clone());
            let mut damage = Vec::new();
            let (output, summary, seconds) =
                match self.lookup_sound(&name, &r.key, true, &mut damage)? {
                    Some(rec) => (rec.output, rec.summary, 0.0),
                    None => {
                        self.watcher.event(Event::Starting(&name, &[]));
                        let done = self.execute(p, &name, &r, &outputs, false)?;
                        outcome.state = StageState::Ran;
                        done
                    }
                };
            let st = stage_record(&r, &output);
            self.store.update_state(&p.name, |all| {
                all.stages.insert(name.clone(), st);
            })?;
            // A job's log, next to the artifact it made: `logs/<artifact>.log` (a link to
            // the job's log file, which keeps its last lines as the job ends).
            if let (Some(log), StageState::Ran) = (std::env::var_os("PIPE_JOB_LOG"), outcome.state)
            {
                let dir = self.store.root().join("logs");
                let link = dir.join(format!("{output}.log"));
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::remove_file(&link);
                if let Err(e) = std::os::unix::fs::symlink(&log, &link) {
                    self.warn(format!(
                        "could not link the job's log at {}: {e}",
                        link.display()
                    ));
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
        let mut kinds: HashMap<String, StageKind> = HashMap::new();
        for rec in self.store.all_keys()? {
            kinds.insert(rec.output.clone(), rec.kind);
            made_by.entry(rec.output).or_default().insert(rec.stage);
        }
        let mut out = Vec::new();
        for a in self.store.all_artifacts()? {
            if only.is_some_and(|o| !o.contains(&a)) {
                continue;
            }
            let records = kinds
                .get(&a)
                .map_or(stages::ALL_RECORDS, |k| stages::records(*k));
            let health = self.health(&a, true, records)?;
            let stages = made_by.remove(&a).unwrap_or_default().into_iter().collect();
            out.push((a, stages, health));
        }
        out.sort_by_key(|(a, _, h)| (*h == integrity::Health::Sound, a.clone()));
        Ok(out)
    }

    /// Every key record (or those whose key `only` names) whose artifact is missing, or is
    /// not what that key made: (key, stage, why).
    pub fn verify_keys(
        &self,
        only: Option<&HashSet<String>>,
    ) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for name in self.store.all_key_names()? {
            if only.is_some_and(|o| !o.contains(&name)) {
                continue;
            }
            let Ok(Some(rec)) = store::read_json::<KeyRecord>(
                &self.store.root().join("keys").join(format!("{name}.json")),
            ) else {
                out.push((name, String::new(), "the key record does not read".into()));
                continue;
            };
            let dir = self.store.artifact_dir(&rec.output);
            if !dir.is_dir() {
                // Its artifact was removed (or moved aside as damaged): the record counts
                // as missing wherever it is looked up, and gc drops it.
                continue;
            }
            if let Err(why) = integrity::vouches(
                &dir,
                &self.store.seal_path(&rec.output),
                &rec.key,
                stages::required_files(rec.kind),
            ) {
                out.push((name, rec.stage, why));
            } else if rec.key != name {
                out.push((name, rec.stage, format!("the record names key {}", rec.key)));
            }
        }
        Ok(out)
    }

    /// Publish the finished output folder of stage key `key` (see [`Store::publish`]),
    /// then make it read-only and seal it with the key (see [`integrity`]); returns its
    /// content hash.
    fn publish(&self, tmp: &Path, kind: StageKind, key: &str) -> Result<String> {
        let (output, files, existed) = self.store.publish(tmp, stages::records(kind))?;
        let seal = self.store.seal_path(&output);
        let mut keys = vec![key.to_string()];
        if existed && !seal.is_file() {
            // An artifact from before seals: the keys already recorded for it made it too.
            keys.extend(
                self.store
                    .all_keys()?
                    .into_iter()
                    .filter(|r| r.output == output)
                    .map(|r| r.key),
            );
        }
        integrity::seal(&self.store.artifact_dir(&output), &seal, &files, &keys)?;
        Ok(output)
    }

    /// Check a published artifact against its seal; `full` re-hashes every file.
    /// `records`: its stage kind's record files.
    fn health(&self, output: &str, full: bool, records: &[&str]) -> Result<integrity::Health> {
        integrity::health(
            &self.store.artifact_dir(output),
            output,
            &self.store.seal_path(output),
            full,
            records,
        )
    }

    /// Run a read-only query over many pipelines with each key's soundness checked once
    /// (see `sound_memo`).
    pub(crate) fn with_sound_memo<T>(
        &mut self,
        f: impl FnOnce(&mut Engine) -> Result<T>,
    ) -> Result<T> {
        let outer = self.sound_memo.replace(HashMap::new());
        let r = f(self);
        self.sound_memo = outer;
        r
    }

    /// The cached record of a key whose artifact is as published. A damaged artifact is
    /// treated as missing: `damage` gets the problems (each also a warning) and, with
    /// `quarantine`, the artifact is moved aside so the stage's re-run can publish it
    /// afresh.
    fn lookup_sound(
        &mut self,
        stage: &str,
        key: &str,
        quarantine: bool,
        damage: &mut Vec<String>,
    ) -> Result<Option<KeyRecord>> {
        if let Some(rec) = self.sound_memo.as_ref().and_then(|m| m.get(key)) {
            return Ok(Some(rec.clone()));
        }
        let Some(rec) = self.store.lookup(key) else {
            return Ok(None);
        };
        // A key record that points at an artifact this key did not make (rewritten by
        // hand or by a tool) is dropped like damage: the stage runs again.
        if let Err(why) = integrity::vouches(
            &self.store.artifact_dir(&rec.output),
            &self.store.seal_path(&rec.output),
            key,
            stages::required_files(rec.kind),
        ) {
            self.warn(format!(
                "stage `{stage}`'s key record points at the wrong artifact: {why}"
            ));
            damage.push(format!(
                "its key record points at the wrong artifact ({why})"
            ));
            if quarantine {
                self.store.remove_key(key)?;
            }
            return Ok(None);
        }
        match self.health(&rec.output, false, stages::records(rec.kind))? {
            integrity::Health::Sound => {
                if let Some(m) = self.sound_memo.as_mut() {
                    m.insert(key.to_string(), rec.clone());
                }
                Ok(Some(rec))
            }
            integrity::Health::Damaged(problems) => {
                for pr in &problems {
                    self.warn(format!("stage `{stage}`'s artifact is damaged: {pr}"));
                }
                damage.extend(problems);
                if quarantine {
                    self.store.quarantine(&rec.output)?;
                }
                Ok(None)
            }
        }
    }
}

/// Why a stage whose inputs are not all known waits: each input that would run first, or
/// that itself waits for a dataset folder.
fn pending_inputs(
    s: &manifest::Stage,
    outputs: &HashMap<String, String>,
    waits_for_data: &HashSet<String>,
) -> Vec<Reason> {
    s.inputs
        .iter()
        .filter(|i| !outputs.contains_key(*i))
        .map(|i| {
            if waits_for_data.contains(i) {
                Reason::InputWaits(i.clone())
            } else {
                Reason::InputWouldRun(i.clone())
            }
        })
        .collect()
}

/// What a pipeline's state records of a stage that resolved to `r` and made `output`.
pub(crate) fn stage_record(r: &Resolved, output: &str) -> StageRecord {
    StageRecord {
        key: r.key.clone(),
        kind: r.material.kind,
        version: r.material.version,
        config: r.material.config.clone(),
        inputs: r.inputs.clone(),
        external: r.material.external.clone(),
        output: output.to_string(),
    }
}
