//! The decision walk: what must run, and why, worked out in one place. For each stage of
//! a pipeline, in dependency order, [`Engine::walk`] decides
//! - its key, or why the key cannot be known yet (an input runs first; a dataset folder is
//!   missing), and its recipe (what a job is named by);
//! - its [`StageState`] and every [`Reason`], in one vocabulary;
//! - where its output comes from ([`Source`]: the store, a run, a resume);
//! - its estimate, from past runs.
//!
//! `run`, `status`, `--dry-run`, `dag`, the executors, sweeps and the dashboard all read
//! this walk; nothing else computes a key. A consumer that runs stages (`run`, a worker's
//! `run-stage`) acts between decisions: what it publishes is known when the next stage is
//! decided, so that stage's key can be.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result};

use super::keys::{flatten, KeyMaterial};
use super::store::StageRecord;
use super::Engine;
use crate::ids::{ContentHash, Recipe, StageKey};
use crate::manifest::{ManifestError, Pipeline, StageConfig};
use crate::outcome::{JobState, Reason, Source, StageOutcome, StageState};
use crate::stages;

/// How the walk treats the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Looking (status, dry runs, planning jobs, sweeps' trees, the dashboard): nothing is
    /// moved or written; a missing dataset folder makes its stage wait; a stage whose key
    /// a process holds, or whose job is queued, says so.
    Look,
    /// Running: a damaged artifact is moved aside (so its stage publishes afresh), and a
    /// missing dataset folder is an error.
    Run,
}

/// What the walk is asked: which stages to run again (`--force`), where to stop
/// (`--until`), and how much memory a training that would run may need.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalkOptions<'a> {
    /// Stages to decide as stale even if cached.
    pub force: &'a [String],
    /// Only this stage and what it depends on; the rest is skipped.
    pub until: Option<&'a str>,
    /// A training on the CPU that would run and needs more (estimated) is refused before
    /// anything is allocated. `None`: not checked (`status`).
    pub memory: Option<MemoryLimit>,
}

/// A bound on a training's memory, and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// `--max-memory` (else: what this machine has available).
    pub given: bool,
}

impl WalkOptions<'_> {
    /// The stages `--force` and `--until` name are stages of `p`.
    pub fn check(&self, p: &Pipeline) -> Result<()> {
        let named: Vec<&str> = self
            .force
            .iter()
            .map(String::as_str)
            .chain(self.until)
            .collect();
        check_stage_names(p, &named)
    }
}

impl<'a> From<&'a super::RunOptions> for WalkOptions<'a> {
    fn from(o: &'a super::RunOptions) -> Self {
        let memory = match o.max_memory {
            Some(bytes) => Some(MemoryLimit { bytes, given: true }),
            None => crate::backend::available_memory().map(|bytes| MemoryLimit {
                bytes,
                given: false,
            }),
        };
        WalkOptions {
            force: &o.force,
            until: o.until.as_deref(),
            memory,
        }
    }
}

/// One stage, decided.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What the consumers show and act on: state, reasons, key, output, source, estimate.
    pub outcome: StageOutcome,
    /// Its recipe. Where a dataset folder is missing, it is made with the folder's path in
    /// place of its fingerprint: it still tells which stages a sweep's points share, but
    /// it never names a job (such a stage waits and is never submitted).
    pub recipe: Recipe,
    /// The key's material and the inputs it read, when the key is known.
    pub(crate) resolved: Option<Box<Resolved>>,
    /// What this pipeline last recorded for the stage.
    pub(crate) prev: Option<StageRecord>,
}

/// A stage whose key is known.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) key: StageKey,
    pub(crate) material: KeyMaterial,
    /// Input stage name -> the content hash it read.
    pub(crate) inputs: BTreeMap<String, ContentHash>,
}

/// What a stage's dataset folder is to its key.
enum Dataset {
    /// The stage reads none.
    None,
    /// Its fingerprint.
    Print(String),
    /// The folder is not there (only when looking).
    Missing(std::path::PathBuf),
}

/// What a consumer does with each decided stage before the next one is decided: it may
/// run it (setting its state to `Ran` and its output), or fail the walk.
pub(crate) type Act<'a> = dyn FnMut(&mut Engine, &mut Decision) -> Result<()> + 'a;

impl Engine {
    /// Decide every stage of `p`, looking only (see [`Mode::Look`]).
    pub fn decide(&mut self, p: &Pipeline, opts: &WalkOptions<'_>) -> Result<Vec<Decision>> {
        self.walk(p, opts, Mode::Look, &mut |_, _| Ok(()))
    }

    /// For each stage: cached or stale, and why, without running anything; stages
    /// submitted to an executor say whether their job is queued, running or failed.
    pub fn status(&mut self, p: &Pipeline) -> Result<Vec<StageOutcome>> {
        Ok(self
            .decide(p, &WalkOptions::default())?
            .into_iter()
            .map(|d| d.outcome)
            .collect())
    }

    /// The decision walk (see the module docs): every stage in dependency order, each
    /// handed to `act` once decided.
    pub(crate) fn walk(
        &mut self,
        p: &Pipeline,
        opts: &WalkOptions<'_>,
        mode: Mode,
        act: &mut Act<'_>,
    ) -> Result<Vec<Decision>> {
        opts.check(p)?;
        let wanted: Option<BTreeSet<String>> = opts.until.map(|u| p.ancestors_of(u));
        let state = self.store().load_state(&p.name);
        let mut outputs: HashMap<String, ContentHash> = HashMap::new();
        let mut recipes: HashMap<String, Recipe> = HashMap::new();
        let mut waits: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for name in p.topo_order() {
            let s = &p.stages[&name];
            let material = KeyMaterial::of(p, &name, Vec::new(), None)?;
            let forced = opts.force.contains(&name);
            let dataset = self.dataset(p, &name, mode, forced)?;
            let input_recipes: Vec<String> = s
                .inputs
                .iter()
                .map(|i| recipes[i].as_str().to_string())
                .collect();
            let stand_in = match &dataset {
                Dataset::None => None,
                Dataset::Print(h) => Some(h.clone()),
                Dataset::Missing(root) => Some(format!("missing:{}", root.display())),
            };
            let recipe = material.recipe(&input_recipes, stand_in.as_deref());
            recipes.insert(name.clone(), recipe.clone());
            let mut d = Decision {
                outcome: StageOutcome::new(&name, s.config.kind(), StageState::Stale),
                recipe,
                resolved: None,
                prev: state.stages.get(&name).cloned(),
            };
            if wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
                d.outcome.state = StageState::Skipped;
                d.outcome.summary = "after --until".into();
            } else {
                self.check_known_data(p, &name, &outputs)?;
                self.decide_stage(p, &mut d, material, dataset, &outputs, &waits, forced, mode)?;
                if let (Some(limit), StageState::Stale) = (opts.memory, d.outcome.state) {
                    check_memory(p, &name, limit)?;
                }
                if mode == Mode::Look {
                    self.overlay_running(&mut d);
                }
            }
            act(self, &mut d)?;
            match (d.outcome.state, &d.outcome.output) {
                (StageState::Cached | StageState::Ran | StageState::Fetched, Some(o)) => {
                    outputs.insert(name.clone(), o.clone());
                }
                // In the remote: its output is known, so are the keys after it.
                (StageState::Stale, Some(o))
                    if matches!(d.outcome.source, Source::Remote { .. }) =>
                {
                    outputs.insert(name.clone(), o.clone());
                }
                (StageState::Waiting, _) => {
                    waits.insert(name.clone());
                }
                _ => {}
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Decide one stage that `--until` keeps: its key if every input's output is known,
    /// then cached or stale and why.
    #[allow(clippy::too_many_arguments)]
    fn decide_stage(
        &mut self,
        p: &Pipeline,
        d: &mut Decision,
        mut material: KeyMaterial,
        dataset: Dataset,
        outputs: &HashMap<String, ContentHash>,
        waits: &HashSet<String>,
        forced: bool,
        mode: Mode,
    ) -> Result<()> {
        let name = d.outcome.name.clone();
        let s = &p.stages[&name];
        let o = &mut d.outcome;
        if let Dataset::Missing(root) = &dataset {
            o.state = StageState::Waiting;
            o.reasons = vec![Reason::DatasetMissing {
                path: root.display().to_string(),
                key: format!("{name}.root"),
            }];
            return Ok(());
        }
        let known: Option<Vec<(String, ContentHash)>> = s
            .inputs
            .iter()
            .map(|i| outputs.get(i).map(|h| (i.clone(), h.clone())))
            .collect();
        let Some(known) = known else {
            // An input runs first (or waits for its data): this key is not known yet.
            o.reasons = s
                .inputs
                .iter()
                .filter(|i| !outputs.contains_key(*i))
                .map(|i| match waits.contains(i) {
                    true => Reason::InputWaits(i.clone()),
                    false => Reason::InputChanged(i.clone()),
                })
                .collect();
            if o.reasons.iter().any(|r| matches!(r, Reason::InputWaits(_))) {
                o.state = StageState::Waiting;
            } else {
                o.source = Source::Run;
                o.estimate = self.estimate_stage(p, &name, outputs);
            }
            return Ok(());
        };
        material.inputs = known.iter().map(|(_, h)| h.as_str().to_string()).collect();
        material.external = match dataset {
            Dataset::Print(h) => Some(h),
            _ => None,
        };
        let r = Resolved {
            key: material.key(),
            material,
            inputs: known.into_iter().collect(),
        };
        o.key = Some(r.key.clone());
        let mut damage = Vec::new();
        let cached = match forced {
            true => None,
            false => self.lookup_sound(&name, &r.key, mode == Mode::Run, &mut damage)?,
        };
        if let Some(rec) = cached {
            o.state = StageState::Cached;
            o.source = Source::Store;
            o.output = Some(rec.output);
            o.summary = rec.summary;
        } else {
            o.reasons = if forced {
                vec![Reason::Forced]
            } else if !damage.is_empty() {
                vec![Reason::Damaged(damage)]
            } else {
                explain(d.prev.as_ref(), &r)
            };
            o.source = Source::Run;
            if let Some(epoch) = self.interrupted_at(p, &name, &r.key).filter(|_| !forced) {
                o.reasons.insert(0, Reason::Interrupted { epoch });
                o.source = Source::Resume { epoch };
            } else if let (Mode::Look, false) = (mode, forced) {
                // Looking (status, a dry run, pull): what the remote cache has.
                if let Some((output, bytes)) = self.in_remote(&r.key) {
                    o.source = Source::Remote { bytes };
                    o.output = Some(output);
                }
            }
            o.estimate = match o.source {
                Source::Remote { bytes } => Some(self.fetch_seconds(bytes)),
                _ => self.estimate_stage(p, &name, outputs),
            };
        }
        d.resolved = Some(Box::new(r));
        Ok(())
    }

    /// What a stage's dataset folder is to its key: none, its fingerprint, or (looking)
    /// missing. Running, a folder that cannot be read is an error naming the key to set.
    fn dataset(&mut self, p: &Pipeline, name: &str, mode: Mode, rehash: bool) -> Result<Dataset> {
        let Some(root) = stages::external_root(p, &p.stages[name]) else {
            return Ok(Dataset::None);
        };
        if mode == Mode::Look && !root.exists() {
            return Ok(Dataset::Missing(root));
        }
        let there = root.is_dir();
        let fp = self.fingerprint(&root, rehash).with_context(|| match there {
            false => format!(
                "stage `{name}`: cannot read its dataset folder (point `root` at it, e.g. `--set {name}.root=DIR`)"
            ),
            true => format!(
                "stage `{name}`: its dataset folder {} cannot be fingerprinted",
                root.display()
            ),
        })?;
        Ok(Dataset::Print(fp.hash.clone()))
    }

    /// Looking: a stage that is not cached and whose key a process holds is running now
    /// (a `pipe run` elsewhere, or an executor's job); one whose recipe has a job record
    /// says how the job stands.
    fn overlay_running(&mut self, d: &mut Decision) {
        let o = &mut d.outcome;
        if matches!(
            o.state,
            StageState::Cached | StageState::Waiting | StageState::Skipped
        ) {
            return;
        }
        if o.key
            .as_ref()
            .is_some_and(|k| self.store().key_is_running(k))
        {
            o.state = StageState::Running;
        }
        if !self.store().jobs_dir().is_dir() {
            return;
        }
        let Some(rec) = self.job_record(&d.recipe) else {
            return;
        };
        let state = self.job_state(&rec);
        match state {
            JobState::Queued(_) => o.state = StageState::Queued,
            JobState::Running(_) => o.state = StageState::Running,
            JobState::Done | JobState::Gone => return,
            JobState::Failed(_) | JobState::Unknown => {}
        }
        let who = format!("{} job {}", rec.executor, rec.job);
        o.reasons.insert(
            0,
            Reason::Job {
                who,
                state,
                log: rec.log,
            },
        );
    }

    /// Checks that need a dataset's index, made as soon as the index is in the store (so a
    /// dry run catches them, and a run before it trains): a network's classes against the
    /// data's, and an evaluate stage's `top_k` against them. Errors name the key at fault.
    pub(crate) fn check_known_data(
        &self,
        p: &Pipeline,
        name: &str,
        outputs: &HashMap<String, ContentHash>,
    ) -> Result<()> {
        let s = &p.stages[name];
        let data = match &s.config {
            StageConfig::Train(_) => s.inputs.first(),
            StageConfig::Evaluate(_) => s.inputs.get(1),
            _ => None,
        };
        // The nearest stage at or before the data whose index is in the store.
        let mut at = data;
        let mut classes = None;
        for _ in 0..64 {
            let Some(stage) = at else { break };
            if let Some(out) = outputs.get(stage) {
                let f = self.store().artifact_dir(out).join("classes.csv");
                if f.is_file() {
                    classes = Some((crate::data::index::read_classes(&f)?.len(), stage));
                    break;
                }
            }
            at = p.stages.get(stage).and_then(|x| x.inputs.first());
        }
        let Some((d, from)) = classes else {
            return Ok(());
        };
        let err = match &s.config {
            StageConfig::Train(t) => {
                let Some(net) = p.library.networks.get(&t.network) else {
                    return Ok(());
                };
                match net.classes {
                    Some(k) if k != d => ManifestError::new(format!(
                        "network `{}` outputs {k} classes, but stage `{name}` trains on {d} (the index of stage `{from}`); set `classes = {d}`",
                        t.network
                    ))
                    .at(net.key_origins.get("classes").unwrap_or(&net.origin).clone())
                    .path(format!("networks.{}.classes", t.network)),
                    _ => return Ok(()),
                }
            }
            StageConfig::Evaluate(c) => match c.top_k.iter().max() {
                Some(k) if *k > d => ManifestError::new(format!(
                    "`top_k` asks for rank-{k}, but the data has {d} classes (the index of stage `{from}`)"
                ))
                .at(s.key_origin("top_k"))
                .path(format!("stages.{name}.top_k")),
                _ => return Ok(()),
            },
            _ => return Ok(()),
        };
        Err(anyhow::anyhow!("{err}"))
    }
}

/// A training on the CPU that needs more memory than `limit` (estimated from its graph and
/// batch size) is an error that says the estimate, before anything is allocated.
fn check_memory(p: &Pipeline, name: &str, limit: MemoryLimit) -> Result<()> {
    let StageConfig::Train(t) = &p.stages[name].config else {
        return Ok(());
    };
    if t.device == Some(crate::manifest::DeviceSetting::Cuda) {
        return Ok(());
    }
    let graph = crate::nn::train_graph(p, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let backend = t.backend.unwrap_or_default();
    let est = crate::backend::training_memory(&graph, t.batch_size, backend);
    if est.is_some_and(|e| e.total() <= limit.bytes) {
        return Ok(());
    }
    let needs = match est {
        Some(e) => format!(
            "an estimated {} (weights, their gradients and the optimizer's moments {}; activations and their gradients {})",
            crate::fmt::bytes(e.total()),
            crate::fmt::bytes(e.parameters),
            crate::fmt::bytes(e.activations)
        ),
        None => "more than 2^64 bytes".to_string(),
    };
    let has = match limit.given {
        true => format!("the {} --max-memory allows", crate::fmt::bytes(limit.bytes)),
        false => format!(
            "the {} this machine has available",
            crate::fmt::bytes(limit.bytes)
        ),
    };
    anyhow::bail!(
        "stage `{name}`: training network `{}` at batch_size {} needs {needs}, more than {has}; lower `stages.{name}.batch_size` or the network's size{}",
        t.network,
        t.batch_size,
        if limit.given { "" } else { " (or say how much may be used with --max-memory)" }
    )
}

/// `--force` and `--until` name stages of the pipeline.
pub(crate) fn check_stage_names(p: &Pipeline, names: &[&str]) -> Result<()> {
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

/// Why a stage's key differs from its last run in this pipeline.
fn explain(prev: Option<&StageRecord>, r: &Resolved) -> Vec<Reason> {
    let Some(prev) = prev else {
        return vec![Reason::NeverRan];
    };
    let kind = r.material.kind;
    let mut why = Vec::new();
    if prev.kind != kind {
        why.push(Reason::KindChanged {
            from: prev.kind,
            to: kind,
        });
    } else if prev.version != r.material.version {
        why.push(Reason::VersionChanged {
            kind,
            from: prev.version,
            to: r.material.version,
        });
    }
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    flatten("", &prev.config, &mut old);
    flatten("", &r.material.config, &mut new);
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (a, b) = (old.get(k), new.get(k));
        if a != b {
            why.push(Reason::ConfigChanged {
                key: k.clone(),
                from: a.cloned(),
                to: b.cloned(),
            });
        }
    }
    for (name, hash) in &r.inputs {
        if prev.inputs.get(name) != Some(hash) {
            why.push(Reason::InputChanged(name.clone()));
        }
    }
    for name in prev.inputs.keys() {
        if !r.inputs.contains_key(name) {
            why.push(Reason::InputRemoved(name.clone()));
        }
    }
    if prev.external != r.material.external {
        why.push(Reason::DatasetChanged);
    }
    if why.is_empty() {
        why.push(Reason::NotInCache);
    }
    why
}

/// What a pipeline's state records of a stage that resolved to `r` and made `output`.
pub(crate) fn stage_record(r: &Resolved, output: &ContentHash) -> StageRecord {
    StageRecord {
        key: r.key.clone(),
        kind: r.material.kind,
        version: r.material.version,
        config: r.material.config.clone(),
        inputs: r.inputs.clone(),
        external: r.material.external.clone(),
        output: output.clone(),
    }
}
