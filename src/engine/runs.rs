//! The project's runs as the dashboard (and `pipe show`) reads them: every pipeline and
//! every sweep point of `pipelines/` with its row ([`Project::runs`]); one run whole
//! ([`Engine::run_view`]); and a run's curves so far, read from the store while another
//! process trains it ([`Engine::curves`]). All of it reads; nothing here writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{Engine, Project, Target};
use crate::ids::{ContentHash, StageKey};
use crate::manifest::{Pipeline, StageConfig, StageKind, Sweep};
use crate::outcome::history::{read_timings, with_timings, EpochRecord, EpochTiming};
use crate::outcome::StageState;
use crate::report::run::{ArtifactView, EvalView, Layer, Live, NetworkView, RunView};
use crate::report::show::Row;
use crate::stages;

/// One run: a pipeline, or a point of a sweep.
#[derive(Debug, Clone)]
pub struct RunEntry {
    /// Its name (`exp3`, `mini_lr@lr=5e-3`).
    pub name: String,
    /// The pipeline, loaded and typed.
    pub pipeline: Pipeline,
    /// The sweep it is a point of.
    pub sweep: Option<String>,
}

/// Every run of a set of manifests, with the rows `pipe show` prints.
#[derive(Debug, Clone, Default)]
pub struct ProjectRuns {
    /// The runs, in manifest order (a sweep's points in point order).
    pub runs: Vec<RunEntry>,
    /// Their rows, one per run, in the same order.
    pub rows: Vec<Row>,
    /// The sweeps among them.
    pub sweeps: Vec<Sweep>,
    /// Manifests listed from the folder that did not load, with why (a base file that is
    /// not a pipeline, a manifest that needs `--set`).
    pub skipped: Vec<String>,
}

impl ProjectRuns {
    /// Mark each sweep's best point among its own points (never a plain pipeline), by
    /// `sort`, else by what a halving sweep ranks by (its metric and goal, among the
    /// points it did not prune: a pruned point's numbers are from a shorter training),
    /// else rank-1, else the val accuracy.
    pub fn mark_best(&mut self, sort: Option<&str>) {
        use crate::report::show;
        for sw in &self.sweeps {
            let of: Vec<usize> = (0..self.runs.len().min(self.rows.len()))
                .filter(|&i| self.runs[i].sweep.as_deref() == Some(sw.name.as_str()))
                .collect();
            if of.len() < 2 {
                continue;
            }
            let halving = sw.halving.as_ref().filter(|_| sort.is_none());
            let of: Vec<usize> = match halving {
                Some(_) => of
                    .into_iter()
                    .filter(|&i| self.rows[i].note.is_none())
                    .collect(),
                None => of,
            };
            let mut points: Vec<Row> = of.iter().map(|&i| self.rows[i].clone()).collect();
            match halving {
                Some(h) => show::mark_best_by(
                    &mut points,
                    &h.metric.to_string(),
                    h.goal == crate::manifest::sweep::Goal::Min,
                ),
                None => show::mark_best(&mut points, sort),
            }
            for (&i, p) in of.iter().zip(&points) {
                self.rows[i].best = p.best;
            }
        }
    }
}

impl Project {
    /// The runs of `names` (default: every manifest in `pipelines/`), each with its row.
    /// A manifest named explicitly that does not load is an error; one listed from the
    /// folder is skipped and said why.
    pub fn runs(&self, names: &[String], sets: &[String]) -> Result<ProjectRuns> {
        let listed = names.is_empty();
        let names: Vec<String> = if listed {
            crate::manifest::list(&self.pipelines)?
                .into_iter()
                .map(|p| p.display().to_string())
                .collect()
        } else {
            names.to_vec()
        };
        let mut out = ProjectRuns::default();
        // One engine per store, so a stage shared by many runs is checked once.
        let mut engines: BTreeMap<PathBuf, Engine> = BTreeMap::new();
        // Every manifest's name read once (not once per manifest loaded).
        let beside = match listed {
            true => crate::manifest::discover::names_in(&self.pipelines),
            false => Default::default(),
        };
        for n in &names {
            let loaded = match listed {
                true => self.load_target_unchecked(n, sets).and_then(|(proj, t)| {
                    super::check_name_unique(&beside, Path::new(n), &t)?;
                    Ok((proj, t))
                }),
                false => self.load_target(n, sets),
            };
            let (proj, t) = match loaded {
                Ok(x) => x,
                Err(e) if listed => {
                    out.skipped.push(format!("{n}: {e}"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let engine = engines
                .entry(proj.cache.clone())
                .or_insert_with(|| Engine::read_only(&proj.cache));
            let (points, sweep) = match t {
                Target::Pipeline(p) => {
                    out.rows.push(engine.with_sound_memo(|e| e.row(&p))?);
                    out.runs.push(RunEntry {
                        name: p.name.clone(),
                        pipeline: p,
                        sweep: None,
                    });
                    continue;
                }
                Target::Point(s, i) => (vec![i], s),
                Target::Sweep(s) => ((0..s.points.len()).collect(), s),
            };
            out.rows.extend(engine.sweep_rows(&sweep, &points)?);
            for i in points {
                out.runs.push(RunEntry {
                    name: sweep.points[i].pipeline.name.clone(),
                    pipeline: sweep.points[i].pipeline.clone(),
                    sweep: Some(sweep.name.clone()),
                });
            }
            if !out.sweeps.iter().any(|s| s.name == sweep.name) {
                out.sweeps.push(sweep);
            }
        }
        Ok(out)
    }
}

/// A training stage's curves file, read whole or not at all (it is replaced atomically
/// each epoch, so a reader sees the epochs finished so far).
fn read_history(dir: &Path) -> Option<Vec<EpochRecord>> {
    let bytes = std::fs::read(dir.join("history.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Where a training stage's epochs can be read: its artifact when it is in the store,
/// else its key's scratch folder (a training in progress, or one killed mid-way).
#[derive(Debug, Clone)]
pub struct CurveSource {
    /// The training stage.
    pub stage: String,
    /// Its key, when its inputs are known.
    pub key: Option<StageKey>,
    /// Its artifact, when cached.
    pub artifact: Option<PathBuf>,
    /// The epoch the stage ends with.
    pub last_epoch: usize,
}

/// A trained stage as `pipe predict` and `pipe export` use it.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The training stage.
    pub stage: String,
    /// Its key.
    pub key: StageKey,
    /// Its artifact (`model.safetensors`, `state.safetensors`, `plan.json`).
    pub model_dir: PathBuf,
    /// The artifact of the hdf5 stage it was trained on (`classes.csv`, `means.json`).
    pub data_dir: PathBuf,
    /// That hdf5 stage's resize filter.
    pub filter: crate::manifest::ResizeFilter,
}

impl Engine {
    /// The trained artifact of `stage` of `p` (default: its last training stage), with
    /// the data it was trained on. A stage that is not in the store is an error saying
    /// what to run.
    pub fn trained(&mut self, p: &Pipeline, stage: Option<&str>) -> Result<Trained> {
        self.trained_in(p, stage, None)
    }

    /// The newest completed run of `p` in the journal (run here or pulled from a remote)
    /// that was loaded from the same manifest texts and overrides: what `pull` fetches and
    /// `predict` reads when `p` cannot be keyed here because a dataset folder is missing.
    pub fn stand_in_run(&self, p: &Pipeline) -> Option<crate::outcome::record::RunRecord> {
        let j = super::journal::Journal::of(&self.store);
        let same = |r: &crate::outcome::record::RunRecord| {
            j.sources(r).is_ok_and(|s| {
                s.sets == p.sources.sets
                    && s.files.len() == p.sources.files.len()
                    && s.files
                        .iter()
                        .zip(&p.sources.files)
                        .all(|(a, b)| a.text == b.text)
            })
        };
        j.list().runs.into_iter().find(|r| {
            r.pipeline == p.name && r.state == crate::outcome::record::RunState::Done && same(r)
        })
    }

    /// [`Engine::trained`], taking the stages' artifacts from a recorded run (`run`) rather
    /// than from deciding `p` now.
    pub fn trained_in(
        &mut self,
        p: &Pipeline,
        stage: Option<&str>,
        run: Option<&crate::outcome::record::RunRecord>,
    ) -> Result<Trained> {
        let order = p.topo_order();
        let training: Vec<&String> = order
            .iter()
            .filter(|n| p.stages[*n].config.is_training())
            .collect();
        let stage = match stage {
            Some(s) if training.iter().any(|t| *t == s) => s.to_string(),
            Some(s) => anyhow::bail!(
                "`{s}` is not a training stage of `{}` (its training stages: {})",
                p.name,
                training
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => match training.last() {
                Some(t) => t.to_string(),
                None => anyhow::bail!(
                    "`{}` has no training stage: nothing to predict with",
                    p.name
                ),
            },
        };
        let status = match run {
            Some(r) => super::journal::outcomes_of(r),
            None => {
                let status = self.status(p)?;
                // No key here (a dataset folder is missing: a laptop with the pulled
                // model and nothing else): the newest run of these same manifest texts.
                let keyless = status
                    .iter()
                    .any(|o| o.name == stage && o.key.is_none() && o.state == StageState::Waiting);
                match keyless.then(|| self.stand_in_run(p)).flatten() {
                    Some(r) => {
                        self.notice(format!(
                            "`{}` cannot be keyed here ({}); using the model of its run {} on {}, loaded from the same manifest texts",
                            p.name,
                            status
                                .iter()
                                .find(|o| o.state == StageState::Waiting)
                                .map(|o| crate::report::outcome::join(&o.reasons))
                                .unwrap_or_default(),
                            r.id,
                            r.host.hostname
                        ));
                        super::journal::outcomes_of(&r)
                    }
                    None => status,
                }
            }
        };
        let of = |name: &str| status.iter().find(|o| o.name == name);
        let Some(o) = of(&stage) else {
            anyhow::bail!("stage `{stage}` is not in the run's record");
        };
        let Some(out) = o.output.clone().filter(|_| o.state == StageState::Cached) else {
            anyhow::bail!(
                "stage `{stage}` of `{}` has not been trained yet ({}{}): run `pipe run {} --until {stage}` first",
                p.name,
                o.state,
                if o.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", crate::report::outcome::join(&o.reasons))
                },
                p.name
            );
        };
        let Some(key) = o.key.clone() else {
            anyhow::bail!(
                "stage `{stage}` of `{}`: the record names its artifact but no valid stage key (a damaged or hand-edited run record); `pipe verify` names it",
                p.name
            );
        };
        let root = p.training_root(&stage).ok_or_else(|| {
            anyhow::anyhow!("stage `{stage}` continues a checkpoint file: its data is not known")
        })?;
        let data = p.stages[root].inputs.first().cloned().unwrap_or_default();
        let filter = match &p.stages.get(&data).map(|s| &s.config) {
            Some(StageConfig::Hdf5(c)) => c.filter,
            _ => anyhow::bail!("stage `{root}` does not read an hdf5 stage"),
        };
        // A model trained since models carry their class list is read alone; an older one
        // needs the HDF5 artifact it was trained on.
        use crate::stages::model::ModelArtifact as M;
        let alone =
            crate::engine::integrity::read_seal(&self.store.seal_path(&out)).is_some_and(|s| {
                s.files
                    .iter()
                    .any(|f| f.path == crate::stages::train::CLASSES)
            });
        if alone {
            self.check_files(
                &out,
                &format!("the model of stage `{stage}`"),
                &[M::PLAN, M::STATE, M::WEIGHTS, crate::stages::train::CLASSES],
            )?;
            return Ok(Trained {
                key: key.clone(),
                model_dir: self.store.artifact_dir(&out),
                data_dir: self.store.artifact_dir(&out),
                filter,
                stage,
            });
        }
        let data_out = of(&data)
            .and_then(|d| d.output.clone().filter(|_| d.state == StageState::Cached))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the data `{stage}` was trained on (stage `{data}`) is not in the store: run `pipe run {} --until {data}`",
                    p.name
                )
            })?;
        // What `predict` and `export` read, re-hashed against the seals now: damage that
        // kept a file's size and time is caught here, not printed as predictions.
        self.check_files(
            &out,
            &format!("the model of stage `{stage}`"),
            &[M::PLAN, M::STATE, M::WEIGHTS],
        )?;
        self.check_files(
            &data_out,
            &format!("the data of stage `{data}`"),
            &["classes.csv", "means.json"],
        )?;
        Ok(Trained {
            key: key.clone(),
            model_dir: self.store.artifact_dir(&out),
            data_dir: self.store.artifact_dir(&data_out),
            filter,
            stage,
        })
    }

    /// Where the epochs of `p`'s training stages are (in dependency order).
    pub fn curve_sources(&mut self, p: &Pipeline) -> Result<Vec<CurveSource>> {
        let status = self.status(p)?;
        Ok(status
            .into_iter()
            .filter(|o| {
                matches!(
                    o.kind,
                    StageKind::Train | StageKind::LrDrop | StageKind::Resume
                )
            })
            .map(|o| CurveSource {
                last_epoch: p.epochs_of(&o.name).map_or(0, |(_, end)| end),
                artifact: o
                    .output
                    .as_ref()
                    .filter(|_| o.state == StageState::Cached)
                    .map(|out| self.store.artifact_dir(out)),
                key: o.key,
                stage: o.name,
            })
            .collect())
    }

    /// Bring sources up to date cheaply: a training that has finished since they were
    /// read now reads from its artifact.
    pub fn refresh_sources(&self, sources: &mut [CurveSource]) {
        for s in sources.iter_mut().filter(|s| s.artifact.is_none()) {
            if let Some(rec) = s.key.as_ref().and_then(|k| self.store.lookup(k)) {
                s.artifact = Some(self.store.artifact_dir(&rec.output));
            }
        }
    }

    /// A run's epochs so far and, when a training is in progress (or was killed), where
    /// it stands. Each training stage's file holds every epoch of its chain before it, so
    /// the furthest one read is the run's curve.
    /// Each epoch carries its timing (images/s, seconds) from the `timings.json` of the
    /// stage that trained it, when that is on disk.
    pub fn curves(&self, sources: &[CurveSource]) -> (Vec<EpochRecord>, Option<Live>) {
        let mut best: Vec<EpochRecord> = Vec::new();
        let mut live = None;
        let mut timings: Vec<EpochTiming> = Vec::new();
        for s in sources {
            let (dir, in_progress) = match (&s.artifact, &s.key) {
                (Some(a), _) => (a.clone(), false),
                (None, Some(k)) => (self.store.scratch_path(k), true),
                (None, None) => continue,
            };
            let Some(h) = read_history(&dir) else {
                continue;
            };
            timings.extend(read_timings(&dir));
            if h.len() < best.len() {
                continue;
            }
            if in_progress && h.last().is_some_and(|r| r.stage == s.stage) {
                let epoch = h.last().map_or(0, |r| r.epoch);
                let images_per_sec = read_timings(&dir)
                    .into_iter()
                    .rev()
                    .find(|t| t.epoch == epoch)
                    .map(|t| t.images_per_sec);
                live = Some(Live {
                    stage: s.stage.clone(),
                    epoch,
                    last_epoch: s.last_epoch,
                    images_per_sec,
                    running: s.key.as_ref().is_some_and(|k| self.store.key_is_running(k)),
                });
            } else if !in_progress {
                live = None;
            }
            best = h;
        }
        with_timings(&mut best, &timings);
        (best, live)
    }

    /// Everything the dashboard shows of one run. `row` is its row, when the caller has
    /// it already (else it is read).
    pub fn run_view(&mut self, p: &Pipeline, row: Option<Row>) -> Result<RunView> {
        let stages_now = self.status(p)?;
        let row = match row {
            Some(r) => r,
            None => self.row(p)?,
        };
        let sources = self.curve_sources(p)?;
        let (history, live) = self.curves(&sources);
        let mut edges = Vec::new();
        for name in p.topo_order() {
            let mut ins = p.stages[&name].inputs.clone();
            ins.dedup();
            for i in ins {
                edges.push((i, name.clone()));
            }
        }
        let config = self.side(p).map(|s| s.config).unwrap_or_default();
        let mut networks = Vec::new();
        for (net, _) in &p.library.networks {
            let Ok(x) = crate::nn::expand(&p.library, net, None) else {
                continue;
            };
            let Ok(infos) = x.graph.infer() else {
                continue;
            };
            let t = crate::nn::graph::totals(&infos);
            networks.push(NetworkView {
                name: net.clone(),
                trained_by: p
                    .stages
                    .iter()
                    .filter(|(n, s)| {
                        s.config.training().is_some() && p.network_of(n) == Some(net.as_str())
                    })
                    .map(|(n, _)| n.clone())
                    .collect(),
                layers: x
                    .graph
                    .nodes
                    .iter()
                    .zip(&infos)
                    .map(|(n, i)| Layer {
                        name: n.name.clone(),
                        op: n.op.name().to_string(),
                        shape: i.shape.to_string(),
                        params: i.trainable + i.non_trainable,
                        macs: i.macs,
                    })
                    .collect(),
                trainable: t.trainable,
                non_trainable: t.non_trainable,
                macs: t.macs,
            });
        }
        let mut evals = Vec::new();
        let mut artifacts = Vec::new();
        for o in &stages_now {
            let Some(out) = o.output.as_ref().filter(|_| o.state == StageState::Cached) else {
                continue;
            };
            let dir = self.store.artifact_dir(out);
            if let StageConfig::Evaluate(c) = &p.stages[&o.name].config {
                evals.push(read_eval(&o.name, &c.split, &dir));
            }
            artifacts.push(ArtifactView {
                stage: o.name.clone(),
                output: out.to_string(),
                files: list_files(&dir),
            });
        }
        Ok(RunView {
            pipeline: p.name.clone(),
            manifest: p.file.display().to_string(),
            description: p.description.clone(),
            row,
            stages: stages_now,
            edges,
            history,
            live,
            config,
            networks,
            evals,
            artifacts,
        })
    }

    /// A file of a published artifact that may be served as it is (the dashboard's file
    /// links, its model downloads): `output` names a sealed artifact, a real folder of the
    /// store (no link); `rel` is a file of it as published, reached through no link and
    /// re-hashed against the seal now — or one of its kind's record files (timings, the
    /// plot), a regular file at its top.
    pub fn servable(&self, output: &str, rel: &str) -> Servable {
        let Some(output) = ContentHash::parse(output) else {
            return Servable::Missing("no such artifact in the store".into());
        };
        let dir = self.store.artifact_dir(&output);
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Servable::Missing("no such artifact in the store".into());
        }
        if rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".." || s.contains(['\\', '\0']))
        {
            return Servable::Missing("refused: that path leads outside the artifact".into());
        }
        let Some(seal) = super::integrity::read_seal(&self.store.seal_path(&output)) else {
            return Servable::Missing(
                "that artifact is not sealed: nothing of it is served".into(),
            );
        };
        let file = dir.join(rel);
        if seal.files.iter().any(|f| f.path == rel) {
            return match super::integrity::open_checked(&dir, &seal, rel) {
                Ok(handle) => Servable::File(file, handle),
                Err(why) => Servable::Damaged(why),
            };
        }
        if !stages::ALL_RECORDS.contains(&rel) {
            return Servable::Missing("no such file in that artifact".into());
        }
        match super::integrity::open_beneath(&dir, rel) {
            Ok(handle) if handle.metadata().is_ok_and(|m| m.is_file()) => {
                Servable::File(file, handle)
            }
            _ => Servable::Missing("no such file in that artifact".into()),
        }
    }
}

/// Whether a file of the store may be served (see [`Engine::servable`]).
#[derive(Debug)]
pub enum Servable {
    /// Yes: this file, as published, and a handle opened on it when it was checked. Serve
    /// from the handle: the path may be replaced (by a link, say) after the check.
    File(PathBuf, std::fs::File),
    /// No such sealed artifact or file (or a path that leaves it): why.
    Missing(String),
    /// It does not match its seal: why.
    Damaged(String),
}

/// An evaluate artifact's numbers: `metrics.json`, the class names (`per_class.csv`) and
/// the confusion matrix (`confusion.csv`). What does not read is left empty.
fn read_eval(stage: &str, split: &str, dir: &Path) -> EvalView {
    let metrics: Option<serde_json::Value> = std::fs::read(dir.join("metrics.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut classes = Vec::new();
    if let Ok(mut r) = csv::Reader::from_path(dir.join("per_class.csv")) {
        for rec in r.records().map_while(|x| x.ok()) {
            classes.push(rec.get(2).unwrap_or("").to_string());
        }
    }
    let mut confusion = Vec::new();
    if let Ok(mut r) = csv::Reader::from_path(dir.join("confusion.csv")) {
        for rec in r.records().map_while(|x| x.ok()) {
            confusion.push(
                rec.iter()
                    .skip(1)
                    .map(|v| v.parse().unwrap_or(0))
                    .collect::<Vec<usize>>(),
            );
        }
    }
    EvalView {
        stage: stage.to_string(),
        split: split.to_string(),
        images: metrics
            .as_ref()
            .and_then(|m| m["images"].as_u64())
            .map(|n| n as usize),
        loss: metrics.as_ref().and_then(|m| m["loss"].as_f64()),
        ranks: stages::evaluate::read_ranks(dir),
        classes,
        confusion,
    }
}

/// Every file under `dir` (relative paths, sorted) with its size. Links and special files
/// are not listed.
fn list_files(dir: &Path) -> Vec<(String, u64)> {
    fn walk(root: &Path, d: &Path, depth: usize, out: &mut Vec<(String, u64)>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() && depth < 16 {
                walk(root, &p, depth + 1, out);
            } else if ft.is_file() {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                let size = e.metadata().map_or(0, |m| m.len());
                out.push((rel.to_string_lossy().into_owned(), size));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, 0, &mut out);
    out.sort();
    out
}
