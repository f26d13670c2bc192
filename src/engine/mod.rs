//! The engine: decides what must run, runs it, and stores what it made.
//!
//! A stage's key is the BLAKE3 of its [`KeyMaterial`]: kind, implementation version,
//! effective config (defaults filled, so formatting and key order do not matter), the
//! *content hashes* of the artifacts it reads and the fingerprint of any dataset folder.
//! Because keys depend on input content and not on input keys, a stage that re-runs and
//! reproduces identical bytes leaves every later key unchanged (early cutoff).
//!
//! What must run, and why, is decided once, by the decision walk (`decide`): `run`,
//! `status`, dry runs, the executors, sweeps and the dashboard all read it. The engine
//! answers (`query`: rows for `show`, sides for `diff`, estimates) and runs; it prints
//! nothing itself. What happens goes to a [`Watcher`] as events, and the command line
//! decides how they look.

pub mod decide;
pub mod estimate;
pub mod executor;
pub mod fingerprint;
pub mod fswatch;
pub mod gc;
pub mod integrity;
pub mod journal;
pub mod keys;
pub mod query;
pub mod remote;
pub mod runs;
pub mod slurm;
pub mod store;
pub mod sweep;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

pub use decide::{Decision, Mode, WalkOptions};
pub use keys::{stage_key, KeyMaterial};

use crate::ids::{ContentHash, StageKey};
use crate::manifest::{self, Pipeline, StageKind};
use crate::outcome::{Event, Reason, RunReport, Silent, StageOutcome, StageState, Watcher};
use crate::stages::{self, DatasetFiles, StageCtx};
use decide::{stage_record, Resolved};
use fingerprint::{fingerprint_tree, TreeFingerprint};
use store::{KeyRecord, Store};

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
        self.load_as(arg, sets, true)
    }

    /// [`Project::load`] for a job of a run already decided (`run-stage`): the
    /// submitter checked its name (see [`Project::load_target_unchecked`]).
    pub fn load_job(&self, arg: &str, sets: &[String]) -> Result<(Project, Pipeline)> {
        self.load_as(arg, sets, false)
    }

    fn load_as(&self, arg: &str, sets: &[String], check_name: bool) -> Result<(Project, Pipeline)> {
        match self.load_target_as(arg, sets, check_name)? {
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
        self.load_target_as(arg, sets, true)
    }

    /// [`Project::load_target`] without the check that no other manifest beside it goes
    /// by its name: for a job of a run already decided (`run-stage`, `sweep-promote`; the
    /// submitter checked), and for a listing that checks every manifest at once.
    pub fn load_target_unchecked(&self, arg: &str, sets: &[String]) -> Result<(Project, Target)> {
        self.load_target_as(arg, sets, false)
    }

    fn load_target_as(
        &self,
        arg: &str,
        sets: &[String],
        check_name: bool,
    ) -> Result<(Project, Target)> {
        // `<sweep>@<id>`: the sweep is what comes before the first `@` that leaves a
        // manifest (a path may hold `@`, as in a CI workspace `proj@2/`; so may an id).
        let (path, point) = match manifest::find(&self.pipelines, arg) {
            Ok(path) => (path, None),
            Err(e) => match arg.match_indices('@').find_map(|(at, _)| {
                manifest::find(&self.pipelines, &arg[..at])
                    .ok()
                    .map(|path| (path, &arg[at + 1..]))
            }) {
                Some((path, id)) => (path, Some(id)),
                None => return Err(e),
            },
        };
        let proj = Project::for_manifest(&path, self);
        let target = load_target(&path, sets, &proj.dir)?;
        if check_name {
            let beside = manifest::discover::names_in(manifest::discover::folder_of(&path));
            check_name_unique(&beside, &path, &target)?;
        }
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

/// Refuse `target` (loaded from `path`) when another manifest among `beside` (the names
/// of its folder, [`manifest::discover::names_in`]) goes by its name: the store keeps a
/// pipeline's last run, its journal and what gc keeps for it by name, so two manifests
/// under one name would mix them up.
pub fn check_name_unique(
    beside: &std::collections::HashMap<String, Vec<PathBuf>>,
    path: &Path,
    target: &Target,
) -> Result<()> {
    let name = match target {
        Target::Pipeline(p) => &p.name,
        Target::Sweep(s) | Target::Point(s, _) => &s.name,
    };
    match manifest::discover::same_name_among(beside, path, name) {
        None => Ok(()),
        Some(other) => anyhow::bail!(
            "{}: its pipeline is named `{name}`, as {}'s is; two pipelines under one name would share its last run, its journal and what `pipe gc` keeps for it: give one of them another `name`",
            path.display(),
            other.display()
        ),
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

/// Load a recorded run's pipeline as it was: from the manifest texts and overrides its
/// record kept (`src`), whatever the files hold now; a sweep point's from its sweep.
pub fn load_run(
    rec: &crate::outcome::record::RunRecord,
    src: &manifest::ManifestSources,
) -> Result<Pipeline> {
    let fail = |e: manifest::ManifestError| {
        anyhow::anyhow!("run {}: its recorded manifest does not load: {e}", rec.id)
    };
    let loaded = manifest::load::load_recorded(src, Path::new(&rec.project)).map_err(fail)?;
    let mut p = match loaded {
        manifest::Loaded::Pipeline(p) => p,
        manifest::Loaded::Sweep(s) => {
            let id = rec.point.as_deref().unwrap_or_default();
            match s.points.into_iter().find(|pt| pt.id == id) {
                Some(pt) => pt.pipeline,
                None => anyhow::bail!("run {}: its recorded sweep has no point `{id}`", rec.id),
            }
        }
    };
    crate::nn::check(&p).map_err(fail)?;
    resolve_devices(&mut p);
    Ok(p)
}

/// Settle what depends on this machine, before any key is computed: `device = "auto"`
/// becomes `cuda` when this build can open a GPU (see [`take_device_notice`]), else `cpu`; an
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
                        AUTO_CUDA.store(true, std::sync::atomic::Ordering::Relaxed);
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
            StageConfig::Train(t) => settle(&mut t.device, &mut t.backend),
            StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
                settle(&mut c.device, &mut c.backend)
            }
            StageConfig::Evaluate(c) => settle(&mut c.device, &mut c.backend),
            _ => {}
        }
    }
}

/// Set when `device = "auto"` resolved to the GPU, until the command line has said so.
static AUTO_CUDA: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The line to show once when `device = "auto"` chose the GPU (`None` afterwards, and
/// when it did not).
pub fn take_device_notice() -> Option<&'static str> {
    AUTO_CUDA
        .swap(false, std::sync::atomic::Ordering::Relaxed)
        .then_some("device = \"auto\": using the CUDA GPU")
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
    /// The most memory (bytes) a training may need (default: what this machine has
    /// available).
    pub max_memory: Option<u64>,
}

/// What [`Engine::verify`] found.
pub struct Verified {
    /// (artifact, stages that produced it, health), damaged first.
    pub artifacts: Vec<(ContentHash, Vec<String>, integrity::Health)>,
    /// For each sound artifact, its files re-hashed sound though their times had moved.
    pub reproven: Vec<(ContentHash, Vec<integrity::Reproven>)>,
}

/// The engine over one store.
pub struct Engine {
    store: Store,
    fingerprints: HashMap<PathBuf, TreeFingerprint>,
    /// Dataset folders fingerprinted with every file read (`--force` of their stage).
    rehashed: HashSet<PathBuf>,
    /// The store's timing log, read once (for estimates).
    timings: Option<Vec<estimate::TimingRecord>>,
    /// The rate fetches from the remote are estimated at (bytes/s), read once.
    fetch_rate: Option<f64>,
    watcher: Box<dyn Watcher>,
    /// While one query looks at many pipelines (a sweep's points): the keys already found
    /// sound in it, so a stage shared by a thousand points is checked once, not a thousand
    /// times. `None` outside such a query: a run checks an artifact each time it uses it.
    sound_memo: Option<HashMap<StageKey, store::KeyRecord>>,
    /// The journal record of the run in progress (see [`journal`]).
    recording: Option<journal::Recording>,
    /// The record of the last run this engine completed.
    pub last_record: Option<crate::outcome::record::RunRecord>,
    /// The remote cache, when one is set: stages not in the store are looked for there
    /// before they run, and what runs is uploaded (see [`remote`]).
    remote: Option<std::sync::Arc<remote::Remote>>,
    /// A stage computed here must reach the remote, or the run fails (a job on a store of
    /// its own: the stages after it find its output nowhere else).
    push_required: bool,
    /// Whether a warning about the remote was given already (one per run).
    remote_warned: std::cell::Cell<bool>,
}

/// What running a stage made: its artifact, its summary line and how long it took (0 when
/// another process had published it meanwhile).
pub(crate) struct Made {
    output: ContentHash,
    summary: String,
    seconds: f64,
    /// Downloaded from the remote cache rather than computed.
    fetched: bool,
    /// Computed here (and so to be pushed to the remote).
    computed: bool,
}

impl Engine {
    /// Open the engine on a store folder.
    pub fn new(cache: &Path) -> Result<Engine> {
        Ok(Engine::over(Store::open(cache)?))
    }

    /// Open the engine to look only (status, dry runs, verify): it writes nothing.
    pub fn read_only(cache: &Path) -> Engine {
        Engine::over(Store::open_read_only(cache))
    }

    /// An engine over `store`, with nothing fingerprinted or recorded yet.
    fn over(store: Store) -> Engine {
        Engine {
            store,
            fingerprints: HashMap::new(),
            rehashed: HashSet::new(),
            timings: None,
            fetch_rate: None,
            push_required: false,
            watcher: Box::new(Silent),
            sound_memo: None,
            recording: None,
            last_record: None,
            remote: None,
            remote_warned: std::cell::Cell::new(false),
        }
    }

    /// Use the remote cache `r` (none: the store alone).
    pub fn with_remote(mut self, r: Option<std::sync::Arc<remote::Remote>>) -> Engine {
        self.remote = r;
        self
    }

    /// Fail a stage whose output cannot be pushed to the remote (see `push_required`).
    pub fn require_push(mut self) -> Engine {
        self.push_required = true;
        self
    }

    /// The remote cache in use.
    pub fn remote(&self) -> Option<&std::sync::Arc<remote::Remote>> {
        self.remote.as_ref()
    }

    /// Say a remote failure once per run (a remote that cannot be reached says so once,
    /// then is not tried again).
    fn remote_warning(&self, e: &remote::RemoteError) {
        let once = matches!(
            e,
            remote::RemoteError::Unreachable { .. } | remote::RemoteError::Credentials { .. }
        );
        if once && self.remote_warned.replace(true) {
            return;
        }
        let then = match e {
            remote::RemoteError::Refused(_) => "refused; the stage runs here",
            _ => "going on without it",
        };
        self.warn(format!("{e}; {then}"));
    }

    /// Send what happens to `w` (the default: nobody).
    pub fn watched_by(mut self, w: Box<dyn Watcher>) -> Engine {
        self.watcher = w;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The epoch an interrupted training of `key` (stage `name` of `p`) left its last
    /// checkpoint at: one the stage would resume from, its layers named as they are now.
    fn interrupted_at(&self, p: &Pipeline, name: &str, key: &StageKey) -> Option<usize> {
        let scratch = self.store.scratch_path(key);
        if !scratch.exists() {
            return None;
        }
        let graph = crate::nn::train_graph(p, name).ok();
        stages::train::interrupted_at(&scratch, key, graph.as_ref())
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

    fn warn(&self, w: String) {
        self.watcher.event(Event::Warning(w));
    }

    fn note(&self, n: String) {
        self.watcher.event(Event::Note(n));
    }

    /// Tell the watcher something it shows whatever the output format.
    fn notice(&self, n: String) {
        self.watcher.event(Event::Notice(n));
    }

    /// Take the store's lock alone, telling the watcher whom it waits for.
    fn lock_store(&self, what: &str) -> Result<store::StoreLock> {
        self.store
            .lock(what, store::Hold::Exclusive, &|w| self.notice(w))
    }

    /// Take the store's lock beside other publishers (see [`store::Hold::Shared`]):
    /// `pipe gc` waits until no process holds it.
    pub(crate) fn share_store(&self, what: &str) -> Result<store::StoreLock> {
        self.store
            .lock(what, store::Hold::Shared, &|w| self.notice(w))
    }

    /// The fingerprint of dataset folder `root`, taken once per engine (`rehash`: reading
    /// every file, not trusting the stat cache; see [`fingerprint_tree`]).
    fn fingerprint(&mut self, root: &Path, rehash: bool) -> Result<&TreeFingerprint> {
        if rehash && !self.rehashed.contains(root) {
            self.fingerprints.remove(root);
            self.rehashed.insert(root.to_path_buf());
        }
        if !self.fingerprints.contains_key(root) {
            let t = Instant::now();
            let fp = fingerprint_tree(&self.store, root, rehash)?;
            if fp.vouched {
                self.note(format!(
                    "dataset {}: {} files, no change since the last run (pipe watch)",
                    fp.root.display(),
                    fp.count
                ));
            }
            if let Some(why) = &fp.watch_refused {
                self.note(format!(
                    "dataset {}: pipe watch does not vouch for it ({why}); every file was looked at",
                    fp.root.display()
                ));
            }
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

    /// Make sure the fingerprint of dataset folder `root` lists its files, for a stage that
    /// reads them: one the watcher vouched for is walked now, and must be what the run
    /// decided on.
    fn dataset_files(&mut self, root: &Path) -> Result<()> {
        let Some(fp) = self.fingerprints.get(root).filter(|f| f.vouched) else {
            return Ok(());
        };
        let walked = fingerprint::fingerprint_walk(&self.store, root, false)?;
        if walked.hash != fp.hash {
            fingerprint::distrust(&self.store, root);
            anyhow::bail!(
                "dataset folder {} changed with no event that `pipe watch` saw (a write through a memory mapping, or a file system mounted inside it?): this run decided on its earlier content; run again",
                root.display()
            );
        }
        self.fingerprints.insert(root.to_path_buf(), walked);
        Ok(())
    }

    /// Run a pipeline: every stage whose key is not in the store, in dependency order
    /// (a dry run: decide and report, run nothing, write nothing).
    pub fn run(&mut self, p: &Pipeline, opts: &RunOptions) -> Result<RunReport> {
        if opts.dry_run || self.recording.is_some() {
            return self.run_walk(p, opts, &mut Vec::new());
        }
        WalkOptions::from(opts).check(p)?;
        let began = match journal::disabled() {
            true => None,
            false => Some(journal::Journal::of(&self.store).begin(p, "in-process")),
        };
        let rec = match began {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                self.warn(format!("this run is not recorded in the journal: {e:#}"));
                None
            }
        };
        if let Some(r) = &rec {
            self.note(format!("run {}", r.id()));
        }
        self.recording = rec;
        let mut settled = Vec::new();
        let out = self.run_walk(p, opts, &mut settled);
        if let Some(rec) = self.recording.take() {
            let entries: Vec<_> = settled.iter().map(journal::entry_of).collect();
            let error = out.as_ref().err().map(|e| format!("{e:#}"));
            match rec.finish(
                &entries,
                &self.store.root().join("artifacts"),
                error,
                None,
                false,
            ) {
                Ok(r) => {
                    // Teammates see it: a run that made or fetched something goes to the
                    // remote cache too (a no-op run sends nothing).
                    if settled
                        .iter()
                        .any(|o| matches!(o.state, StageState::Ran | StageState::Fetched))
                    {
                        self.push_record_remote(&r);
                    }
                    self.last_record = Some(r);
                }
                Err(e) => self.warn(format!("could not complete the run's record: {e:#}")),
            }
        }
        out
    }

    /// [`Engine::run`]'s walk: `settled` gets each stage's outcome as it is settled (so a
    /// failed run's record has those before the failure).
    fn run_walk(
        &mut self,
        p: &Pipeline,
        opts: &RunOptions,
        settled: &mut Vec<StageOutcome>,
    ) -> Result<RunReport> {
        let walk = WalkOptions::from(opts);
        walk.check(p)?;
        let _lock = match opts.dry_run {
            true => None,
            false => {
                let l = self.lock_store(&format!("pipe run {}", p.name))?;
                self.note_project(p)?;
                Some(l)
            }
        };
        let mode = if opts.dry_run { Mode::Look } else { Mode::Run };
        // Stages this run found cached or ran: the only entries it writes back, so what
        // concurrent jobs recorded for other stages meanwhile is kept.
        let mut touched: HashMap<String, store::StageRecord> = HashMap::new();
        let decisions = self.walk(p, &walk, mode, &mut |e, d| {
            if !opts.dry_run {
                // The record says what is done so far and which stage runs now (its key:
                // where a reader finds its live curves, or its checkpoints if killed).
                if let (StageState::Stale, Some(r), Some(rec)) =
                    (d.outcome.state, d.resolved.as_deref(), e.recording.as_mut())
                {
                    let done: Vec<_> = settled.iter().map(journal::entry_of).collect();
                    rec.stage_running(&done, &d.outcome.name, Some(r.key.as_str()));
                }
                if let Err(err) = e.act_on(p, d, &opts.force, &mut touched) {
                    let mut failed = d.outcome.clone();
                    failed.state = StageState::Running;
                    settled.push(failed);
                    return Err(err);
                }
            }
            settled.push(d.outcome.clone());
            if let (StageState::Ran, Some(rec)) = (d.outcome.state, e.recording.as_mut()) {
                rec.update(&[journal::entry_of(&d.outcome)]);
            }
            e.watcher.event(Event::Settled(&d.outcome));
            Ok(())
        })?;
        if !touched.is_empty() {
            let before = self.store.load_state(&p.name);
            if touched.iter().any(|(k, v)| before.stages.get(k) != Some(v)) {
                self.store
                    .update_state(&p.name, |all| all.stages.extend(touched))?;
            }
        }
        Ok(RunReport {
            pipeline: p.name.clone(),
            manifest: p.file.display().to_string(),
            cache: self.store.root().display().to_string(),
            run: self.recording.as_ref().map(|r| r.id().to_string()),
            stages: decisions.into_iter().map(|d| d.outcome).collect(),
        })
    }

    /// What `pipe run` does with a decided stage: a cached one is recorded in the
    /// pipeline's state, a stale one runs (and is recorded at once, so concurrent jobs of
    /// the pipeline see it).
    fn act_on(
        &mut self,
        p: &Pipeline,
        d: &mut Decision,
        force: &[String],
        touched: &mut HashMap<String, store::StageRecord>,
    ) -> Result<()> {
        let (Some(r), name) = (d.resolved.as_deref(), d.outcome.name.clone()) else {
            return Ok(());
        };
        match d.outcome.state {
            StageState::Cached => {
                let output = d
                    .outcome
                    .output
                    .clone()
                    .expect("a cached stage has an output");
                touched.insert(name, stage_record(r, &output));
            }
            StageState::Stale => {
                self.watcher
                    .event(Event::Starting(&name, &d.outcome.reasons));

                let made = self
                    .execute(p, &name, r, force.contains(&name))
                    .map_err(|e| disk_full(e, &self.store))?;
                if d.prev.as_ref().is_some_and(|pr| pr.output == made.output) {
                    d.outcome.reasons.push(Reason::OutputUnchanged);
                }
                let st = stage_record(r, &made.output);
                self.store.update_state(&p.name, |all| {
                    all.stages.insert(name.clone(), st.clone());
                })?;
                touched.insert(name, st);
                let o = &mut d.outcome;
                o.state = match made.fetched {
                    true => StageState::Fetched,
                    false => StageState::Ran,
                };
                o.output = Some(made.output);
                o.seconds = made.seconds;
                o.summary = made.summary;
            }
            _ => {}
        }
        Ok(())
    }

    /// Run one stage whose inputs are published: under its key's lock (another process
    /// running the same key is waited for, then its artifact is taken, unless `forced`),
    /// into a private folder in its scratch, published atomically and recorded. A forced
    /// stage starts over: its key's scratch (an interrupted run's checkpoints) is cleared
    /// first.
    fn execute(&mut self, p: &Pipeline, name: &str, r: &Resolved, forced: bool) -> Result<Made> {
        let made = self.execute_locked(p, name, r, forced)?;
        // Uploaded once the key's lock is let go (a process waiting on the key takes the
        // artifact now), still under the store's lock (which gc waits for).
        if made.computed && !self.push_remote(name, &r.key) && self.push_required {
            anyhow::bail!(
                "stage `{name}` ran, but its output is not in the remote: this job's store is its own (--job-store), so the stages after it could not find it"
            );
        }
        Ok(made)
    }

    fn execute_locked(
        &mut self,
        p: &Pipeline,
        name: &str,
        r: &Resolved,
        forced: bool,
    ) -> Result<Made> {
        let s = &p.stages[name];
        let kind = s.config.kind();
        let _key_lock = self
            .store
            .lock_running(store::Running::Key(&r.key), name, &|w| self.notice(w))?;
        if forced {
            self.store.remove_scratch(r.key.as_str())?;
        } else {
            let mut damage = Vec::new();
            if let Some(rec) = self.lookup_sound(name, &r.key, true, &mut damage)? {
                return Ok(Made {
                    output: rec.output,
                    summary: rec.summary,
                    seconds: 0.0,
                    fetched: false,
                    computed: false,
                });
            }
        }
        let resumed = self.interrupted_at(p, name, &r.key).is_some();
        let tmp = self.store.new_out_dir(&r.key)?;
        if !forced {
            if let Some(made) = self.fetch_remote(name, kind, &r.key, &tmp)? {
                return Ok(made);
            }
        }
        if let Some(root) = stages::external_root(p, s) {
            if let Err(e) = self.dataset_files(&root) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.context(format!("stage `{name}` ({kind})")));
            }
        }
        let scratch = self.store.scratch_dir(&r.key)?;
        let started = Instant::now();
        let inputs: Vec<(String, PathBuf)> = s
            .inputs
            .iter()
            .map(|i| (i.clone(), self.store.artifact_dir(&r.inputs[i])))
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
            watcher: self.watcher.as_ref(),
        };
        let summary = match stages::run(&ctx) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                self.forget_changed(&e);
                return Err(e.context(format!("stage `{name}` ({kind}) failed")));
            }
        };
        let output = self
            .publish(&tmp, kind, &r.key, forced)
            .with_context(|| format!("stage `{name}` ({kind}): publishing its output failed"))?;
        let seconds = started.elapsed().as_secs_f64();
        self.store
            .record(&KeyRecord {
                key: r.key.clone(),
                kind,
                stage: name.to_string(),
                output: output.clone(),
                summary: summary.clone(),
                seconds,
            })
            .with_context(|| format!("stage `{name}` ({kind}): recording its key failed"))?;
        self.store.remove_scratch(r.key.as_str())?;
        let dirs: Vec<PathBuf> = s
            .inputs
            .iter()
            .map(|i| self.store.artifact_dir(&r.inputs[i]))
            .collect();
        let files = stages::external_root(p, s)
            .and_then(|root| self.fingerprints.get(&root))
            .map(|f| f.count);
        // A resumed training ran only part of its epochs: its time is no rate to go by.
        if let Some((images, epochs)) = estimate::units(p, name, &dirs, files).filter(|_| !resumed)
        {
            let rec =
                estimate::TimingRecord::new(estimate::describe(p, name), images, epochs, seconds);
            if let Err(e) = estimate::append(self.store.root(), &rec) {
                self.warn(format!("could not record the stage's timing: {e:#}"));
            }
        }
        Ok(Made {
            output,
            summary,
            seconds,
            fetched: false,
            computed: true,
        })
    }

    /// Stage `name`'s artifact from the remote cache, when it is there and sound:
    /// downloaded into `tmp`, each file checked against the remote's manifest, published
    /// when it hashes to what the key record says, and recorded under `key`. A damaged or
    /// incomplete one is refused with a warning, and a remote that cannot be reached gives
    /// one warning: the stage then runs here.
    fn fetch_remote(
        &mut self,
        name: &str,
        kind: StageKind,
        key: &StageKey,
        tmp: &Path,
    ) -> Result<Option<Made>> {
        let Some(rem) = self.remote.clone().filter(|r| !r.is_down()) else {
            return Ok(None);
        };
        let fetched = match rem.fetch(key, tmp) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.remote_warning(&e);
                clear_dir(tmp)?;
                return Ok(None);
            }
        };
        let rec = estimate::FetchRecord {
            remote: rem.url().to_string(),
            bytes: fetched.bytes,
            seconds: fetched.seconds,
        };
        if let Err(e) = estimate::append_fetch(self.store.root(), &rec) {
            self.warn(format!("could not record the fetch's rate: {e:#}"));
        }
        let output = self.publish(tmp, kind, key, false).with_context(|| {
            format!("stage `{name}` ({kind}): publishing what was fetched failed")
        })?;
        if output != fetched.record.output {
            // Every file matched the manifest, but the folder is not the artifact the key
            // record names: a remote that contradicts itself. Nothing is recorded.
            self.remote_warning(&remote::RemoteError::Refused(format!(
                "{}: key {} names artifact {}, but its files make {}",
                rem.url(),
                key.short(),
                fetched.record.output.short(),
                output.short()
            )));
            // (What was published stays an artifact no key points at; gc collects it.)
            clear_dir(tmp)?;
            return Ok(None);
        }
        let rec = KeyRecord {
            key: key.clone(),
            kind,
            stage: name.to_string(),
            output: output.clone(),
            summary: fetched.record.summary.clone(),
            seconds: fetched.record.seconds,
        };
        self.store
            .record(&rec)
            .with_context(|| format!("stage `{name}` ({kind}): recording its key failed"))?;
        self.store.remove_scratch(key.as_str())?;
        Ok(Some(Made {
            output,
            summary: format!(
                "{}  from {} ({})",
                rec.summary,
                rem.url(),
                crate::fmt::bytes(fetched.bytes)
            ),
            seconds: fetched.seconds,
            fetched: true,
            computed: false,
        }))
    }

    /// Upload a completed run record (and its manifest texts) to the remote cache, unless
    /// it is set not to push; a failure is a warning.
    pub(crate) fn push_record_remote(&self, rec: &crate::outcome::record::RunRecord) {
        let Some(rem) = self
            .remote
            .as_ref()
            .filter(|r| r.push == remote::Push::Always && !r.is_down())
        else {
            return;
        };
        let j = journal::Journal::of(&self.store);
        if let Err(e) = rem.push_record(j.dir(), &rec.id, &rec.sources, None) {
            self.remote_warning(&e);
        }
    }

    /// A fault-injection point for tests outside a stage (see `StageCtx::fault_point`):
    /// with `PIPE_FAULT=<name>` the watcher is told and the process stalls here.
    fn fault_point(&self, name: &str) {
        crate::outcome::events::fault_point(self.watcher.as_ref(), name);
    }

    /// Seconds to fetch `bytes` from the remote: at the median rate of this store's last
    /// fetches from it, or [`estimate::REMOTE_RATE`] before any.
    fn fetch_seconds(&mut self, bytes: u64) -> f64 {
        let rate = match self.fetch_rate {
            Some(r) => r,
            None => {
                let url = self.remote.as_ref().map(|r| r.url().to_string());
                let r = url
                    .and_then(|u| estimate::fetch_rate(self.store.root(), &u))
                    .unwrap_or(estimate::REMOTE_RATE);
                self.fetch_rate = Some(r);
                r
            }
        };
        bytes as f64 / rate
    }

    /// Whether the remote cache holds stage key `key`: its artifact and size. Asked only
    /// while looking at a stage the store does not hold; a failure is a warning.
    fn in_remote(&self, key: &StageKey) -> Option<(ContentHash, u64)> {
        let rem = self.remote.as_ref().filter(|r| !r.is_down())?;
        let found = rem.lookup(key).and_then(|rec| match rec {
            Some(rec) => Ok(rem.manifest(&rec.output)?.map(|m| (rec.output, m.bytes()))),
            None => Ok(None),
        });
        match found {
            Ok(f) => f,
            Err(e) => {
                self.remote_warning(&e);
                None
            }
        }
    }

    /// Fetch stage key `key` (stage `name`, of `kind`) from the remote cache into the
    /// store, as a run does before it would run the stage (`pipe pull`): the artifact,
    /// a summary line and the seconds the download took. `Ok(None)`: the store holds it
    /// already, or the remote does not (or refused it: said as a warning).
    pub fn pull_stage(
        &mut self,
        name: &str,
        kind: StageKind,
        key: &StageKey,
    ) -> Result<Option<(ContentHash, String, f64)>> {
        let _lock = self.share_store(&format!("pipe pull {name}"))?;
        let _key_lock = self
            .store
            .lock_running(store::Running::Key(key), name, &|w| self.notice(w))?;
        let mut damage = Vec::new();
        if self.lookup_sound(name, key, true, &mut damage)?.is_some() {
            return Ok(None);
        }
        let tmp = self.store.new_out_dir(key)?;
        let made = self.fetch_remote(name, kind, key, &tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(made?.map(|m| (m.output, m.summary, m.seconds)))
    }

    /// A job's input stage `d` that the store lacks, fetched from the remote cache (when
    /// one is set and has it): `d` then stands as fetched, with its artifact.
    fn pull_input(&mut self, d: &mut Decision) -> Result<bool> {
        let Some(key) = d.resolved.as_ref().map(|r| r.key.clone()) else {
            return Ok(false);
        };
        if self.remote.is_none() {
            return Ok(false);
        }
        let (name, kind) = (d.outcome.name.clone(), d.outcome.kind);
        let Some((output, summary, seconds)) = self.pull_stage(&name, kind, &key)? else {
            return Ok(false);
        };
        let o = &mut d.outcome;
        o.state = StageState::Fetched;
        o.output = Some(output);
        o.summary = summary;
        o.seconds = seconds;
        Ok(true)
    }

    /// Upload stage `name`'s artifact (just published under `key`) to the remote cache,
    /// unless it is set not to push; a failure is a warning.
    /// Upload stage `name`'s artifact (key `key`) to the remote, unless it is set not to
    /// push; a failure is a warning. Whether the remote has it now.
    pub(crate) fn push_remote(&self, name: &str, key: &StageKey) -> bool {
        let Some(rem) = self
            .remote
            .as_ref()
            .filter(|r| r.push == remote::Push::Always)
        else {
            return false;
        };
        if rem.is_down() {
            return false;
        }
        let Some(rec) = self.store.lookup(key) else {
            return false;
        };
        let files_sent = || self.fault_point("remote-push:files-sent");
        match rem.push_artifact(&rec, &self.store.artifact_dir(&rec.output), &files_sent) {
            Ok(remote::Pushed::Sent(bytes, secs)) => {
                self.note(format!(
                    "{name}: pushed {} to {} in {}",
                    crate::fmt::bytes(bytes),
                    rem.url(),
                    crate::fmt::secs(secs)
                ));
                true
            }
            Ok(remote::Pushed::There) => true,
            Err(e) => {
                self.remote_warning(&e);
                false
            }
        }
    }

    /// A stage failed on a dataset file that changed after it was fingerprinted: make the
    /// next fingerprint read that file again, so the next run takes the dataset as it is
    /// (a change that left the file's stat as it was, which the stat cache cannot see,
    /// would otherwise be a dead end).
    fn forget_changed(&self, e: &anyhow::Error) {
        let Some(c) = e
            .chain()
            .find_map(|c| c.downcast_ref::<crate::data::decode::ChangedFile>())
        else {
            return;
        };
        for root in self.fingerprints.keys() {
            if let Err(err) = fingerprint::forget(&self.store, root, &c.file) {
                self.warn(format!(
                    "could not update the stat cache of {}: {err:#}",
                    root.display()
                ));
            }
        }
    }

    /// Run one stage of a pipeline whose inputs are all in the store (what a cluster job
    /// or a local worker runs): decides every stage before it (each must be in the store),
    /// then runs this one unless it is cached. Errors name an input that is missing.
    pub fn run_stage(
        &mut self,
        p: &Pipeline,
        stage: &str,
        expect: Option<&crate::ids::Recipe>,
    ) -> Result<StageOutcome> {
        decide::check_stage_names(p, &[stage])?;
        let _lock = self.share_store(&format!("pipe run-stage {} {stage}", p.name))?;
        self.note_project(p)?;
        let walk = WalkOptions {
            force: &[],
            until: Some(stage),
            memory: crate::backend::available_memory().map(|bytes| decide::MemoryLimit {
                bytes,
                given: false,
            }),
        };
        let decisions = self.walk(p, &walk, Mode::Run, &mut |e, d| {
            let name = d.outcome.name.clone();
            match (d.outcome.state, name == stage) {
                (StageState::Skipped | StageState::Cached, false) => Ok(()),
                // A store of its own (a node's local disk): an input from the remote cache.
                (StageState::Stale, false) if e.pull_input(d)? => Ok(()),
                (_, false) => anyhow::bail!(
                    "stage `{stage}` needs `{name}`, which is not in the store (did its job fail? `pipe status {}` says)",
                    p.name
                ),
                (_, true) => match expect.filter(|r| **r != d.recipe) {
                    // The manifest (or a dataset it reads) changed since the run that
                    // started this job decided on it: the job's record would show one
                    // configuration beside another's results.
                    Some(r) => anyhow::bail!(
                        "stage `{stage}` of `{}` is not the one this job was started for (its recipe was {}, the manifest as it is now makes {}): the manifest or its data changed since; nothing run — run the pipeline again",
                        p.name,
                        r.short(),
                        d.recipe.short()
                    ),
                    None => e.act_on_job(p, d),
                },
            }
        })?;
        let outcome = decisions
            .into_iter()
            .map(|d| d.outcome)
            .find(|o| o.name == stage)
            .expect("the stage is among its own ancestors");
        Ok(outcome)
    }

    /// A worker's stage, decided: run it unless cached, record it in the pipeline's state,
    /// and link the job's log next to the artifact it made.
    fn act_on_job(&mut self, p: &Pipeline, d: &mut Decision) -> Result<()> {
        let mut touched = HashMap::new();
        self.act_on(p, d, &[], &mut touched)?;
        if d.outcome.state == StageState::Cached {
            self.store
                .update_state(&p.name, |all| all.stages.extend(touched))?;
        }
        // A job's log, next to the artifact it made: `logs/<artifact>.log` (a link to the
        // job's log file, which keeps its last lines as the job ends).
        if let (Some(log), StageState::Ran, Some(output)) = (
            std::env::var_os("PIPE_JOB_LOG"),
            d.outcome.state,
            &d.outcome.output,
        ) {
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
        Ok(())
    }

    /// Re-hash artifacts fully against their seals: every artifact in the store, or those
    /// `only` names. Returns (artifact, stages that produced it, health), damaged first,
    /// and for each sound artifact the files re-hashed sound though their times had moved
    /// (for [`Self::refresh_seals`]).
    pub fn verify(&self, only: Option<&HashSet<ContentHash>>) -> Result<Verified> {
        let mut made_by: HashMap<ContentHash, BTreeSet<String>> = HashMap::new();
        let mut kinds: HashMap<ContentHash, StageKind> = HashMap::new();
        for rec in self.store.all_keys()? {
            kinds.insert(rec.output.clone(), rec.kind);
            made_by.entry(rec.output).or_default().insert(rec.stage);
        }
        let mut out = Vec::new();
        let mut reproven = Vec::new();
        for a in self.store.all_artifacts()? {
            if only.is_some_and(|o| !o.contains(&a)) {
                continue;
            }
            let records = kinds
                .get(&a)
                .map_or(stages::ALL_RECORDS, |k| stages::records(*k));
            let (health, moved) = self.health_reproving(&a, true, records)?;
            if health == integrity::Health::Sound && !moved.is_empty() {
                reproven.push((a.clone(), moved));
            }
            let stages = made_by.remove(&a).unwrap_or_default().into_iter().collect();
            out.push((a, stages, health));
        }
        out.sort_by_key(|(a, _, h)| (*h == integrity::Health::Sound, a.clone()));
        Ok(Verified {
            artifacts: out,
            reproven,
        })
    }

    /// Bring the seals of sound artifacts up to date for files a full check re-hashed
    /// sound though their times had moved (a store copied with `cp -a`): see
    /// [`integrity::refresh`]. Nothing in a store opened read-only.
    pub fn refresh_seals(
        &self,
        reproven: &[(ContentHash, Vec<integrity::Reproven>)],
    ) -> Result<()> {
        if self.store.is_read_only() || reproven.is_empty() {
            return Ok(());
        }
        // Beside publishers, never beside `pipe gc` (which could remove an artifact and its
        // seal between the read and the write of the seal).
        let _lock = self.share_store("pipe verify: bringing seals up to date")?;
        for (a, moved) in reproven {
            integrity::refresh(&self.store.artifact_dir(a), &self.store.seal_path(a), moved)?;
        }
        Ok(())
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
            if let Some((stage, why)) = self.key_problem(&name) {
                out.push((name, stage, why));
            }
        }
        Ok(out)
    }

    /// What is wrong with key record `name`, if anything: (its stage, why).
    fn key_problem(&self, name: &str) -> Option<(String, String)> {
        let Ok(Some(rec)) = store::read_json::<KeyRecord>(&self.store.key_path(name)) else {
            return Some((String::new(), "the key record does not read".into()));
        };
        let dir = self.store.artifact_dir(&rec.output);
        if !dir.is_dir() {
            // Its artifact was removed (or moved aside as damaged): the record counts as
            // missing wherever it is looked up, and gc drops it.
            return None;
        }
        if let Err(why) = integrity::vouches(
            &dir,
            &self.store.seal_path(&rec.output),
            &rec.key,
            stages::required_files(rec.kind),
        ) {
            Some((rec.stage, why))
        } else if rec.key.as_str() != name {
            Some((rec.stage, format!("the record names key {}", rec.key)))
        } else {
            None
        }
    }

    /// Move damaged artifacts aside (so even damage a stat check cannot see is not reused)
    /// and drop key records (by name) that point at the wrong artifact: what `pipe verify`
    /// does with what it found, under the store's lock.
    ///
    /// Each is checked again under the lock first: the scan ran without it, and a run may
    /// have rebuilt a damaged artifact or rewritten a key record meanwhile.
    /// Returns how many artifacts and key records it set aside.
    pub fn set_aside(
        &self,
        damaged: &[ContentHash],
        wrong_keys: &[String],
    ) -> Result<(usize, usize)> {
        self.fault_point("verify:set-aside");
        let _lock = self.lock_store("pipe verify")?;
        let (mut moved, mut dropped) = (0, 0);
        let kinds: HashMap<ContentHash, StageKind> = self
            .store
            .all_keys()?
            .into_iter()
            .map(|r| (r.output, r.kind))
            .collect();
        for a in damaged {
            let records = kinds
                .get(a)
                .map_or(stages::ALL_RECORDS, |k| stages::records(*k));
            if matches!(
                self.health(a, true, records)?,
                integrity::Health::Damaged(_)
            ) {
                self.store.quarantine(a)?;
                moved += 1;
            }
        }
        for k in wrong_keys {
            if self.key_problem(k).is_some() {
                self.store.remove_key(k)?;
                dropped += 1;
            }
        }
        Ok((moved, dropped))
    }

    /// Publish the finished output folder of stage key `key` (see [`Store::publish`]),
    /// then make it read-only and seal it with the key (see [`integrity`]); returns its
    /// content hash.
    /// `forced`: the stage was forced (`--force`), as one does when its artifact is
    /// suspected: a copy of the same bytes already there is re-hashed whole, not only
    /// checked against its seal's sizes and times.
    fn publish(
        &self,
        tmp: &Path,
        kind: StageKind,
        key: &StageKey,
        forced: bool,
    ) -> Result<ContentHash> {
        let records = stages::records(kind);
        // An artifact of these bytes already there is checked before the new copy is
        // dropped for it: a run never leaves damage it can see in place of a sound copy.
        // The keys its seal vouched for are kept for the copy put in its place.
        let vouched: std::cell::RefCell<Vec<StageKey>> = Default::default();
        let damaged = |h: &ContentHash| {
            let bad = matches!(
                self.health(h, forced, records)?,
                integrity::Health::Damaged(_)
            );
            if bad {
                if let Some(seal) = integrity::read_seal(&self.store.seal_path(h)) {
                    vouched.borrow_mut().extend(seal.keys);
                }
            }
            Ok(bad)
        };
        let (output, files, existed) = self.store.publish(tmp, records, &damaged)?;
        let seal = self.store.seal_path(&output);
        let mut keys = vec![key.clone()];
        keys.extend(vouched.take());
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
        integrity::seal(
            &self.store.artifact_dir(&output),
            &seal,
            &files,
            &keys,
            !existed,
        )?;
        Ok(output)
    }

    /// Check a published artifact against its seal; `full` re-hashes every file.
    /// `records`: its stage kind's record files.
    fn health(
        &self,
        output: &ContentHash,
        full: bool,
        records: &[&str],
    ) -> Result<integrity::Health> {
        integrity::health(
            &self.store.artifact_dir(output),
            output,
            &self.store.seal_path(output),
            full,
            records,
        )
    }

    /// [`Self::health`], and the files it re-hashed sound though their times had moved
    /// (none for an artifact published before seals).
    fn health_reproving(
        &self,
        output: &ContentHash,
        full: bool,
        records: &[&str],
    ) -> Result<(integrity::Health, Vec<integrity::Reproven>)> {
        match integrity::read_seal(&self.store.seal_path(output)) {
            Some(seal) => {
                integrity::check_reproving(&self.store.artifact_dir(output), &seal, full, records)
            }
            None => Ok((self.health(output, full, records)?, Vec::new())),
        }
    }

    /// [`Self::health`], not full, for a run about to use artifact `output`: where it is
    /// sound, the seal's times of files re-hashed because their times had moved (a store
    /// copied with `cp -a`, a `touch`) are brought up to date, so the next use does not
    /// read them again (see [`integrity::refresh`]).
    fn health_for_use(&self, output: &ContentHash, records: &[&str]) -> Result<integrity::Health> {
        let (health, reproven) = self.health_reproving(output, false, records)?;
        if health == integrity::Health::Sound && !self.store.is_read_only() {
            let (dir, seal_path) = (
                self.store.artifact_dir(output),
                self.store.seal_path(output),
            );
            // Under the lock this run already holds (not [`Self::refresh_seals`], whose
            // shared lock would wait on it).
            if let Err(e) = integrity::refresh(&dir, &seal_path, &reproven) {
                self.warn(format!(
                    "could not bring the seal of artifact {} up to date: {e:#}",
                    output.short()
                ));
            }
        }
        Ok(health)
    }

    /// Re-hash `files` of artifact `output` (what a reader is about to use) against its
    /// seal: an error that says what is wrong and what to run, when any is not as
    /// published. The artifact folder itself must be a folder of the store, not a link.
    pub fn check_files(&self, output: &ContentHash, what: &str, files: &[&str]) -> Result<()> {
        let dir = self.store.artifact_dir(output);
        let fail = |why: String| {
            anyhow::anyhow!(
                "{what} (artifact {}) is damaged: {why}; nothing was read from it. `pipe verify` sets damaged artifacts aside and `pipe run` rebuilds them",
                output.short()
            )
        };
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(fail(format!(
                "{} is not a folder of the store",
                dir.display()
            )));
        }
        let Some(seal) = integrity::read_seal(&self.store.seal_path(output)) else {
            // Published before seals: the whole folder against its name.
            return match self.health(output, true, stages::ALL_RECORDS)? {
                integrity::Health::Sound => Ok(()),
                integrity::Health::Damaged(p) => Err(fail(p.join("; "))),
            };
        };
        for f in files {
            integrity::check_file(&dir, &seal, f).map_err(fail)?;
        }
        Ok(())
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
        key: &StageKey,
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
                self.store.remove_key(key.as_str())?;
            }
            return Ok(None);
        }
        let records = stages::records(rec.kind);
        let health = if quarantine {
            self.health_for_use(&rec.output, records)?
        } else {
            self.health(&rec.output, false, records)?
        };
        match health {
            integrity::Health::Sound => {
                if let Some(m) = self.sound_memo.as_mut() {
                    m.insert(key.clone(), rec.clone());
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

/// An error whose cause is a full disk says so, and where the store is (the I/O error
/// alone says only "No space left on device").
fn disk_full(e: anyhow::Error, store: &Store) -> anyhow::Error {
    let io_full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
    });
    // A library that reports a failed write in its own words (HDF5): the filesystem is
    // asked how much room is left.
    let full = io_full || free_bytes(store.root()).is_some_and(|b| b < 1 << 20);
    match full {
        true => e.context(format!(
            "the disk is full (the store is {}): free space, or `pipe gc` what is no longer used; the stage is not recorded as done and runs again next time",
            store.root().display()
        )),
        false => e,
    }
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and a statvfs struct on this stack frame.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statvfs only writes the struct.
    let ok = unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0;
    ok.then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Empty folder `dir` (what a refused download left in it), keeping the folder.
fn clear_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
