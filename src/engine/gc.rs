//! `pipe gc`: remove from a store what nothing uses any more.
//!
//! What uses an artifact is decided from the manifests *of the store being cleaned*, never
//! from the current folder: the projects recorded in the store (every project whose
//! pipelines ran against it), else the `pipelines/` folder beside the store, else the
//! folder given with `--pipelines`. When none can be found, gc refuses and says why.
//!
//! Kept: what each of those manifests resolves to now (and the checkpoints of a stage that
//! would resume), and everything the recorded state of any pipeline points to — also of
//! pipelines whose manifest is gone, unless `--all`. Removed: damaged artifacts, keys and
//! artifacts nothing keeps, and scratch folders no stage wants (what a killed run left).
//! The plan is printed before anything is removed; `--dry-run` prints it and stops.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::store::{state_stem, ProjectRecord};
use super::{integrity, load_target, Engine, Target};
use crate::content::dir_size;
use crate::ids::{ContentHash, StageKey};
use crate::manifest::{self, StageKind};
use crate::report::gc::{GcReport, Removal};
use crate::stages;

/// Options of `pipe gc`.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// The manifests that use the store (default: from the store, see the module docs).
    pub pipelines: Option<PathBuf>,
    /// Say what would be removed; remove nothing.
    pub dry_run: bool,
    /// Also drop the recorded runs of pipelines whose manifest is not found, and what only
    /// they keep.
    pub all: bool,
    /// Keep what the last N journal runs of each pipeline made (`--keep-runs`).
    pub keep_runs: usize,
}

/// What gc keeps: key records, artifacts, scratch folders.
#[derive(Default)]
struct Kept {
    /// Key record names (keys).
    keys: HashSet<String>,
    outputs: HashSet<ContentHash>,
    /// Scratch folder names (keys).
    scratch: HashSet<String>,
}

/// What the manifests keep ([`Engine::keep_what_manifests_use`]).
struct KeptByManifests {
    keep: Kept,
    /// The state names of their pipelines.
    names: HashSet<String>,
    /// The declared names of the manifests that did not load.
    unloaded: HashSet<String>,
    /// Manifests whose declared name could not be read, each with why.
    unnamed: Vec<String>,
}

impl Engine {
    /// The manifest folders that use this store, each with its project folder: those the
    /// store recorded, plus `--pipelines`; with no record, `pipelines/` beside the store.
    /// A recorded folder that is gone is an error unless `--pipelines` says where the
    /// manifests are now (it is then left out, and said so in `notes`).
    fn manifest_folders(
        &self,
        explicit: Option<&Path>,
        notes: &mut Vec<String>,
    ) -> Result<Vec<ProjectRecord>> {
        let root = self.store.root();
        let mut out: Vec<ProjectRecord> = Vec::new();
        if let Some(dir) = explicit {
            if !dir.is_dir() {
                bail!("--pipelines {}: no such folder", dir.display());
            }
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            let project = match dir.file_name() {
                Some(n) if n == "pipelines" => dir.parent().unwrap_or(&dir).to_path_buf(),
                _ => dir.clone(),
            };
            out.push(ProjectRecord {
                pipelines: dir,
                project,
            });
        }
        let recorded = self.store.projects();
        for rec in &recorded {
            if rec.pipelines.is_dir() {
                if !out.iter().any(|o| o.pipelines == rec.pipelines) {
                    out.push(rec.clone());
                }
            } else if explicit.is_some() {
                notes.push(format!(
                    "{}: recorded as using this store, but gone; not counted",
                    rec.pipelines.display()
                ));
            } else {
                bail!(
                    "gc refuses: store {} was used by the manifests in {}, which is gone, so what still uses its artifacts cannot be known; pass --pipelines DIR (the manifests that use this store now; the other recorded folders still count)",
                    root.display(),
                    rec.pipelines.display()
                );
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        let beside = root.parent().map(|d| d.join("pipelines"));
        match beside.filter(|d| d.is_dir()) {
            Some(dir) => Ok(vec![ProjectRecord {
                project: dir.parent().unwrap_or(&dir).to_path_buf(),
                pipelines: dir,
            }]),
            None => bail!(
                "gc refuses: store {} records no project and has no pipelines/ beside it, so what uses its artifacts cannot be known; pass --pipelines DIR (the manifests that use this store)",
                root.display()
            ),
        }
    }

    /// What the manifests in `folders` use now (see [`Engine::keep_what_resolves`]), the
    /// names of their pipelines (a sweep's: its own and each point's), and the declared
    /// names of the manifests that did not load.
    fn keep_what_manifests_use(
        &mut self,
        folders: &[ProjectRecord],
        report: &mut GcReport,
    ) -> Result<KeptByManifests> {
        let mut keep = Kept::default();
        let mut names: HashSet<String> = HashSet::new();
        let mut unloaded: HashSet<String> = HashSet::new();
        let mut unnamed: Vec<String> = Vec::new();
        // Which manifest each pipeline or sweep name came from: two under one name share
        // one last run, so the other's is not kept by it (`pipe run` refuses them now).
        let mut named_by: HashMap<String, (PathBuf, PathBuf)> = HashMap::new();
        for folder in folders {
            let project = &folder.project;
            for file in manifest::list(&folder.pipelines)? {
                let stem = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // A sweep stands for every one of its points.
                let loaded = load_target(&file, &[], project);
                let top = match &loaded {
                    Ok(Target::Pipeline(p)) => Some(p.name.clone()),
                    Ok(Target::Sweep(sw) | Target::Point(sw, _)) => Some(sw.name.clone()),
                    Err(_) => None,
                };
                let pipelines = match loaded {
                    Ok(Target::Pipeline(p)) => vec![p],
                    Ok(Target::Sweep(sw)) => {
                        names.insert(state_stem(&sw.name));
                        sw.points.into_iter().map(|pt| pt.pipeline).collect()
                    }
                    Ok(Target::Point(sw, i)) => vec![sw.points[i].pipeline.clone()],
                    Err(e) => {
                        let msg = format!("{e}");
                        report.warnings.push(format!(
                            "{}: {}",
                            file.display(),
                            msg.lines().next().unwrap_or("")
                        ));
                        // A manifest that does not load (one needing `--set`, a base
                        // file) keeps its pipeline's last run under the name it declares,
                        // and, were it a sweep, its points' (`<name>@<id>`). One whose
                        // name cannot even be read is named by its file, a guess that
                        // `--all` does not act on (see `gc`).
                        let name = match manifest::discover::declared_name(&file) {
                            Ok(n) => n.unwrap_or(stem),
                            Err(why) => {
                                let why = why.to_string();
                                unnamed.push(format!(
                                    "{} ({})",
                                    file.display(),
                                    why.lines().next().unwrap_or("")
                                ));
                                stem
                            }
                        };
                        names.insert(state_stem(&name));
                        unloaded.insert(name);
                        Vec::new()
                    }
                };
                // A link to a manifest beside it is that manifest.
                let canon = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
                if let Some(top) = top {
                    match named_by.get(&top).filter(|(_, c)| *c != canon) {
                        Some((first, _)) => report.warnings.push(format!(
                            "{} and {} are both named `{top}`: they share one last run, so only the one run last has its last run kept by it; give one of them another `name`",
                            first.display(),
                            file.display()
                        )),
                        None => {
                            named_by.entry(top).or_insert((file.clone(), canon));
                        }
                    }
                }
                for p in pipelines {
                    names.insert(state_stem(&p.name));
                    self.keep_what_resolves(&p, &file, &mut keep, report);
                }
            }
        }
        Ok(KeptByManifests {
            keep,
            names,
            unloaded,
            unnamed,
        })
    }

    /// Keep what pipeline `p` (of manifest `file`) resolves to now: its cached stages'
    /// keys and artifacts, and the scratch of its stale stages (an interrupted training's
    /// checkpoints: the next run resumes from them).
    fn keep_what_resolves(
        &mut self,
        p: &manifest::Pipeline,
        file: &Path,
        keep: &mut Kept,
        report: &mut GcReport,
    ) {
        match self.status(p) {
            Ok(stages) => {
                for s in stages {
                    if let Some(k) = &s.key {
                        keep.scratch.insert(k.to_string());
                    }
                    if let (Some(k), Some(o)) = (s.key, s.output) {
                        keep.keys.insert(k.to_string());
                        keep.outputs.insert(o);
                    }
                }
            }
            Err(e) => report.warnings.push(format!("{}: {e}", file.display())),
        }
    }

    /// Remove what nothing uses (see the module docs). `plan` is shown what will be removed
    /// before anything is; with `dry_run` nothing is. Returns the same list.
    pub fn gc(&mut self, opts: &GcOptions, plan: &mut dyn FnMut(&GcReport)) -> Result<GcReport> {
        let mut notes = Vec::new();
        // The projects that use the store are read under its lock: one whose first run
        // held the lock while gc waited for it is then among them.
        let _lock = if opts.dry_run || self.store.is_read_only() {
            None
        } else {
            Some(self.lock_store("pipe gc")?)
        };
        let folders = self.manifest_folders(opts.pipelines.as_deref(), &mut notes)?;
        let mut report = GcReport {
            pipelines: folders.iter().map(|f| f.pipelines.clone()).collect(),
            warnings: notes,
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        // A sweep's points share stages: each key's seal is checked once.
        let KeptByManifests {
            mut keep,
            names,
            unloaded,
            unnamed,
        } = self.with_sound_memo(|e| e.keep_what_manifests_use(&folders, &mut report))?;
        // `--all` drops the runs of pipelines no manifest names; a manifest whose name
        // cannot be read (a link to nothing, a file half edited) could be the one that
        // names them, so nothing is dropped.
        if opts.all && !unnamed.is_empty() {
            bail!(
                "gc --all refuses: which pipeline {} declares cannot be read, so runs it names could be taken for runs whose manifest is gone; mend or move it, then run gc again (plain `pipe gc` keeps recorded runs)",
                unnamed.join(", ")
            );
        }
        // Every recorded run is kept — also of pipelines whose manifest is gone, unless
        // `--all`.
        let mut drop_states = Vec::new();
        for name in self.store.state_names()? {
            let of_unloaded = name
                .split_once('@')
                .is_some_and(|(sweep, _)| unloaded.contains(sweep));
            if opts.all && !names.contains(&name) && !of_unloaded {
                drop_states.push(name);
                continue;
            }
            for s in self.store.load_state(&name).stages.values() {
                keep.keys.insert(s.key.to_string());
                keep.outputs.insert(s.output.clone());
            }
        }
        // The last `keep_runs` runs of each pipeline in the journal, and every run still
        // going, keep what they made (an older record stays, its artifacts collected).
        // With `--all`, not the runs of pipelines whose manifest is gone. The scratch
        // (checkpoints) of a stage such a run did not finish is kept too.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let journal = super::journal::Journal::of(&self.store);
        for r in journal.list().runs {
            let running = r.state == crate::outcome::record::RunState::Running;
            let of_unloaded = r
                .pipeline
                .split_once('@')
                .is_some_and(|(sweep, _)| unloaded.contains(sweep));
            if opts.all && !running && !names.contains(&state_stem(&r.pipeline)) && !of_unloaded {
                continue;
            }
            let n = seen.entry(r.pipeline.clone()).or_default();
            *n += 1;
            if *n > opts.keep_runs && !running {
                continue;
            }
            for s in &r.stages {
                // A stage that made its artifact keeps its key record. One that did not
                // (running, or its run killed or failed mid-way) keeps its scratch: the
                // checkpoints that `run --from <run>` (or the same `--set`) resumes from,
                // which the manifest as it is now may no longer resolve to.
                if let Some(k) = &s.key {
                    if s.output.is_some() || running {
                        keep.keys.insert(k.clone());
                    }
                    if running || s.output.is_none() {
                        keep.scratch.insert(k.clone());
                    }
                }
                if let Some(o) = s.output.as_deref().and_then(ContentHash::parse) {
                    keep.outputs.insert(o);
                }
            }
            // A run killed under `-j` or on Slurm never wrote the keys of the stages it
            // had not finished (the parent fills them in at its end): they are resolved
            // from its recorded manifest and overrides, as `run --from` it would.
            let ended_short = matches!(
                r.state,
                crate::outcome::record::RunState::Interrupted
                    | crate::outcome::record::RunState::Failed
            );
            // (An in-process run writes each stage's key as the stage starts: a record with
            // none at all is such a parent's.)
            if ended_short && r.stages.iter().all(|s| s.key.is_none()) {
                let resolved = journal
                    .sources(&r)
                    .and_then(|src| super::load_run(&r, &src))
                    .and_then(|p| self.status(&p));
                match resolved {
                    Ok(stages) => keep
                        .scratch
                        .extend(stages.into_iter().filter_map(|o| o.key.map(|k| k.to_string()))),
                    Err(e) => report.warnings.push(format!(
                        "run {}: the checkpoints of the stages it did not finish cannot be known, and are kept only if a manifest wants them: {e:#}",
                        r.id
                    )),
                }
            }
        }
        let Kept {
            keys: keep_keys,
            outputs: keep_outputs,
            scratch: keep_scratch,
        } = keep;
        let records: HashMap<ContentHash, (StageKind, String)> = self
            .store
            .all_keys()?
            .into_iter()
            .map(|r| (r.output, (r.kind, r.stage)))
            .collect();
        let detail = |a: &ContentHash| {
            records
                .get(a)
                .map_or(String::new(), |(k, s)| format!("{k} ({s})"))
        };
        // Damaged artifacts go, whether or not anything refers to them.
        let mut damaged = Vec::new();
        for a in self.store.all_artifacts()? {
            let records = records
                .get(&a)
                .map_or(stages::ALL_RECORDS, |(k, _)| stages::records(*k));
            if let Ok(integrity::Health::Damaged(problems)) = self.health(&a, false, records) {
                report.removed.push(Removal {
                    what: "damaged artifact".into(),
                    name: a.to_string(),
                    detail: problems.join("; "),
                    bytes: dir_size(&self.store.artifact_dir(&a)),
                });
                damaged.push(a);
            }
        }
        for (name, bytes) in self.store.damaged_dirs()? {
            report.removed.push(Removal {
                what: "damaged artifact".into(),
                name,
                detail: "moved aside earlier".into(),
                bytes,
            });
        }
        let drop_keys: Vec<String> = self
            .store
            .all_key_names()?
            .into_iter()
            .filter(|k| !keep_keys.contains(k))
            .collect();
        for k in &drop_keys {
            report.removed.push(Removal {
                what: "key".into(),
                name: k.clone(),
                detail: String::new(),
                bytes: 0,
            });
        }
        let drop_artifacts: Vec<ContentHash> = self
            .store
            .all_artifacts()?
            .into_iter()
            .filter(|a| !keep_outputs.contains(a) && !damaged.contains(a))
            .collect();
        for a in &drop_artifacts {
            report.removed.push(Removal {
                what: "artifact".into(),
                name: a.to_string(),
                detail: detail(a),
                bytes: dir_size(&self.store.artifact_dir(a)),
            });
        }
        let drop_scratch: Vec<String> = self
            .store
            .all_scratch()?
            .into_iter()
            .filter(|k| {
                !keep_keys.contains(k)
                    && !keep_scratch.contains(k)
                    && !self.store.key_is_running(&StageKey::new(k.as_str()))
            })
            .collect();
        for k in &drop_scratch {
            report.removed.push(Removal {
                what: "scratch".into(),
                name: k.clone(),
                detail: "left by a run that did not finish".into(),
                bytes: dir_size(&self.store.scratch_path(&StageKey::new(k.as_str()))),
            });
        }
        for n in &drop_states {
            report.removed.push(Removal {
                what: "state".into(),
                name: n.clone(),
                detail: "no manifest of this name".into(),
                bytes: 0,
            });
        }
        plan(&report);
        if opts.dry_run {
            return Ok(report);
        }
        for a in &damaged {
            self.store.quarantine(a)?;
        }
        self.store.remove_damaged()?;
        for k in &drop_keys {
            self.store.remove_key(k)?;
        }
        for a in &drop_artifacts {
            self.store.remove_artifact(a)?;
        }
        for k in &drop_scratch {
            self.store.remove_scratch(k)?;
        }
        for n in &drop_states {
            self.store.remove_state(n)?;
        }
        Ok(report)
    }
}
