//! The engine's answers: every read of the store that `status`, `show`, `diff` and the
//! estimates need goes through here and comes back as typed values (`report` renders
//! them): each stage's state and why ([`Engine::status`]), one [`Row`] per pipeline for
//! `show`, [`Side`]s for `diff`, estimated seconds for what would run.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::executor::JobState;
use super::keys::{effective_config, flatten};
use super::store::StageRecord;
use super::{estimate, Engine, Resolution, Resolved};
use crate::manifest::{ManifestError, Pipeline, StageConfig, StageKind};
use crate::nn::graph::{totals, Graph, Node};
use crate::report::diff::Side;
use crate::report::outcome::{JobStatus, Reason, StageOutcome, StageState};
use crate::report::show::{Eval, Row, Segment, StageStatus};
use crate::stages;

impl Engine {
    /// For each stage: cached or stale, and why, without running anything; stages
    /// submitted to an executor say whether their job is queued, running or failed.
    pub fn status(&mut self, p: &Pipeline) -> Result<Vec<StageOutcome>> {
        let mut out = self.status_only(p)?;
        // A stage whose key's lock a process holds is running now (in a `pipe run`
        // elsewhere, or an executor's job).
        for o in out.iter_mut().filter(|o| o.state != StageState::Cached) {
            if o.key
                .as_deref()
                .is_some_and(|k| self.store.key_is_running(k))
            {
                o.state = StageState::Running;
            }
        }
        if out.iter().any(|o| o.state != StageState::Cached) && self.store.jobs_dir().is_dir() {
            let recipes = self.recipes(p)?;
            for o in out.iter_mut().filter(|o| o.state != StageState::Cached) {
                let Some(recipe) = recipes.get(&o.name) else {
                    continue;
                };
                let Some(rec) = self.job_record(recipe) else {
                    continue;
                };
                let who = format!("{} job {}", rec.executor, rec.job);
                let status = match self.job_state(&rec) {
                    JobState::Queued(why) => {
                        o.state = StageState::Queued;
                        JobStatus::Pending(why)
                    }
                    JobState::Running(how) => {
                        o.state = StageState::Running;
                        JobStatus::Running(how)
                    }
                    JobState::Failed(why) => JobStatus::Failed { why, log: rec.log },
                    JobState::Done | JobState::Gone => continue,
                    JobState::Unknown => JobStatus::Silent,
                };
                o.reasons.insert(0, Reason::Job { who, state: status });
            }
        }
        Ok(out)
    }

    /// Each stage's state from the store alone (no scheduler asked).
    pub(crate) fn status_only(&mut self, p: &Pipeline) -> Result<Vec<StageOutcome>> {
        let state = self.store.load_state(&p.name);
        let mut outputs = HashMap::new();
        let mut stale_inputs: HashSet<String> = HashSet::new();
        let mut waits_for_data: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for name in p.topo_order() {
            let s = &p.stages[&name];
            let prev = state.stages.get(&name);
            let mut o = StageOutcome::new(&name, s.config.kind(), StageState::Stale);
            match self.resolve(p, &name, &outputs, true)? {
                Resolution::Ready(r) => {
                    o.key = Some(r.key.clone());
                    let mut damage = Vec::new();
                    if let Some(rec) = self.lookup_sound(&name, &r.key, false, &mut damage)? {
                        o.state = StageState::Cached;
                        o.summary = rec.summary.clone();
                        o.output = Some(rec.output.clone());
                        outputs.insert(name.clone(), rec.output);
                    } else {
                        o.reasons = if damage.is_empty() {
                            explain(prev, &r, &stale_inputs)
                        } else {
                            vec![Reason::Damaged(damage)]
                        };
                        if let Some(epoch) = self.interrupted_at(&r.key) {
                            o.reasons.insert(0, Reason::Interrupted { epoch });
                        }
                        stale_inputs.insert(name.clone());
                        o.estimate = self.estimate_stage(p, &name, &outputs);
                    }
                }
                Resolution::InputsPending => {
                    o.reasons = s
                        .inputs
                        .iter()
                        .filter(|i| stale_inputs.contains(*i))
                        .map(|i| {
                            if waits_for_data.contains(i) {
                                Reason::InputWaits(i.clone())
                            } else {
                                Reason::InputChanged(i.clone())
                            }
                        })
                        .collect();
                    if o.reasons.iter().any(|r| matches!(r, Reason::InputWaits(_))) {
                        o.state = StageState::Waiting;
                        waits_for_data.insert(name.clone());
                    }
                    stale_inputs.insert(name.clone());
                    o.estimate = self.estimate_stage(p, &name, &outputs);
                }
                Resolution::DatasetMissing(root) => {
                    o.state = StageState::Waiting;
                    o.reasons = vec![Reason::DatasetMissing {
                        path: root.display().to_string(),
                        key: format!("{name}.root"),
                    }];
                    stale_inputs.insert(name.clone());
                    waits_for_data.insert(name.clone());
                }
            }
            out.push(o);
        }
        Ok(out)
    }

    /// Estimated seconds for a stage that would run, given the outputs known so far.
    pub(crate) fn estimate_stage(
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

    /// One pipeline's row for `pipe show`, from its manifest and the store.
    pub fn row(&mut self, p: &Pipeline) -> Result<Row> {
        let (status, error) = match self.status(p) {
            Ok(s) => (s, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        let by_name: BTreeMap<&str, &StageOutcome> =
            status.iter().map(|o| (o.name.as_str(), o)).collect();
        let artifact = |stage: &str| -> Option<PathBuf> {
            let o = by_name.get(stage)?;
            let out = o
                .output
                .as_ref()
                .filter(|_| o.state == StageState::Cached)?;
            Some(self.store.artifact_dir(out))
        };
        let mut row = Row {
            pipeline: p.name.clone(),
            segments: Vec::new(),
            evals: Vec::new(),
            params: None,
            macs: None,
            train_seconds: None,
            device: String::new(),
            backend: String::new(),
            stages: status
                .iter()
                .map(|o| StageStatus {
                    name: o.name.clone(),
                    state: o.state,
                    reasons: o.reasons.clone(),
                })
                .collect(),
            error,
            swept: Vec::new(),
            note: None,
            best: false,
        };
        let first_train = p
            .stages
            .iter()
            .find(|(_, s)| s.config.kind() == StageKind::Train);
        if let Some((name, _)) = first_train {
            if let Ok(Ok(infos)) = crate::nn::train_graph(p, name).map(|g| g.infer()) {
                let t = totals(&infos);
                row.params = Some(t.trainable + t.non_trainable);
                row.macs = Some(t.macs);
            }
        }
        let mut seconds = 0.0;
        let mut timed = false;
        for name in p.topo_order() {
            let s = &p.stages[&name];
            if let StageConfig::Evaluate(c) = &s.config {
                row.evals.push(Eval {
                    stage: name.clone(),
                    split: c.split.clone(),
                    ranks: artifact(&name)
                        .map(|dir| stages::evaluate::read_ranks(&dir))
                        .unwrap_or_default(),
                });
                continue;
            }
            let Some((lr, epochs, device, backend)) = s.config.training() else {
                continue;
            };
            if row.device.is_empty() {
                row.device = device
                    .map(|d| format!("{d:?}").to_lowercase())
                    .unwrap_or_default();
                row.backend = backend.map(|b| b.to_string()).unwrap_or_default();
            }
            let last = artifact(&name).and_then(|dir| stages::train::last_epoch(&dir));
            if let Some(rec) = by_name
                .get(name.as_str())
                .filter(|o| o.state == StageState::Cached)
                .and_then(|o| self.store.lookup(o.key.as_deref()?))
            {
                seconds += rec.seconds;
                timed = true;
            }
            let root = p.root_config(&name);
            row.segments.push(Segment {
                stage: name.clone(),
                kind: s.config.kind(),
                network: root.map(|t| t.network.clone()).unwrap_or_default(),
                optimizer: root.map(|t| t.optimizer.to_string()).unwrap_or_default(),
                lr,
                epochs,
                last,
            });
        }
        row.train_seconds = timed.then_some(seconds);
        Ok(row)
    }

    /// One row per selected point of a sweep for `pipe show`, with the swept values and,
    /// for a point halving stopped, why.
    pub fn sweep_rows(
        &mut self,
        s: &crate::manifest::Sweep,
        selected: &[usize],
    ) -> Result<Vec<Row>> {
        self.with_sound_memo(|e| e.sweep_rows_memo(s, selected))
    }

    fn sweep_rows_memo(
        &mut self,
        s: &crate::manifest::Sweep,
        selected: &[usize],
    ) -> Result<Vec<Row>> {
        let decisions = self.decisions(&s.name);
        let mut rows = Vec::new();
        for &i in selected {
            let pt = &s.points[i];
            let mut row = self.row(&pt.pipeline)?;
            row.swept = pt
                .values
                .iter()
                .map(|(k, v)| (s.short_key(k), crate::manifest::sweep::id_value(v)))
                .collect();
            if let Some(r) = decisions.pruned_at(&pt.id) {
                let v = r
                    .values
                    .iter()
                    .find(|(p, _)| *p == pt.id)
                    .map_or(String::new(), |(_, v)| format!(" ({} {v:.4})", r.metric));
                row.note = Some(format!("pruned after {}{v}", r.stage));
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// A pipeline's side for `pipe diff`: its effective configuration (after `extends`,
    /// `include`, defaults and `--set`), its training networks, and its metrics.
    pub fn side(&mut self, p: &Pipeline) -> Result<Side> {
        let mut config = BTreeMap::new();
        config.insert("seed".into(), p.seed.to_string());
        let mut networks = BTreeMap::new();
        for (name, s) in &p.stages {
            let pre = format!("stages.{name}");
            config.insert(format!("{pre}.kind"), s.config.kind().to_string());
            if !s.inputs.is_empty() {
                let mut ins = s.inputs.clone();
                ins.sort();
                ins.dedup();
                config.insert(format!("{pre}.input"), ins.join(", "));
            }
            let v = s.config.to_json();
            if let StageConfig::Train(t) = &s.config {
                let g = crate::nn::train_graph(p, name).map_err(|e| anyhow::anyhow!("{e}"))?;
                networks.insert(name.clone(), (t.network.clone(), g));
            }
            flatten(&pre, &v, &mut config);
            if let Ok(r) = serde_json::to_value(&s.resources) {
                let mut res = BTreeMap::new();
                flatten(&format!("{pre}.resources"), &r, &mut res);
                config.extend(res.into_iter().filter(|(_, v)| v != "null"));
            }
        }
        let row = self.row(p)?;
        Ok(Side {
            label: p.name.clone(),
            config,
            networks,
            metrics: row.canonical_metrics(),
        })
    }

    /// A pipeline's last run, from the store's record of it: the configuration each stage
    /// ran with (networks as structure, without layer names) and the metrics of what it
    /// made.
    pub fn last_run_side(&self, p: &Pipeline) -> Result<Side> {
        let st = self.store.load_state(&p.name);
        if st.stages.is_empty() {
            bail!(
                "pipeline `{}` has no recorded run in this store to compare with",
                p.name
            );
        }
        let mut config = BTreeMap::new();
        let mut networks = BTreeMap::new();
        let mut metrics = BTreeMap::new();
        for (name, s) in &st.stages {
            let pre = format!("stages.{name}");
            config.insert(format!("{pre}.kind"), s.kind.to_string());
            if !s.inputs.is_empty() {
                config.insert(
                    format!("{pre}.input"),
                    s.inputs.keys().cloned().collect::<Vec<_>>().join(", "),
                );
            }
            let mut v = s.config.clone();
            if let Some(arr) = v.get("network").and_then(|n| n.as_array()).cloned() {
                let g = Graph {
                    nodes: arr
                        .iter()
                        .enumerate()
                        .filter_map(|(i, n)| {
                            Some(Node {
                                name: format!("#{i}"),
                                op: serde_json::from_value(n["op"].clone()).ok()?,
                                inputs: serde_json::from_value(n["inputs"].clone()).ok()?,
                            })
                        })
                        .collect(),
                };
                v["network"] = serde_json::Value::String(structure_label(&arr));
                networks.insert(name.clone(), ("(last run)".to_string(), g));
            }
            flatten(&pre, &v, &mut config);
            let dir = self.store.artifact_dir(&s.output);
            if s.kind == StageKind::Evaluate {
                for (k, x) in stages::evaluate::read_ranks(&dir) {
                    metrics.insert(format!("{name}.rank{k}"), x);
                }
            }
        }
        // The final training segment's last epoch.
        if let Some(last) = p
            .topo_order()
            .iter()
            .rev()
            .filter(|n| st.stages.get(*n).is_some_and(|s| s.kind.is_training()))
            .find_map(|n| stages::train::last_epoch(&self.store.artifact_dir(&st.stages[n].output)))
        {
            metrics.insert("train.loss".into(), last.train_loss);
            metrics.insert("train.acc".into(), last.train_acc);
            metrics.insert("val.loss".into(), last.val_loss);
            metrics.insert("val.acc".into(), last.val_acc);
        }
        Ok(Side {
            label: format!("{} (last run)", p.name),
            config,
            networks,
            metrics,
        })
    }

    /// `pipe diff A` without B: A's last run against A's manifest now, in the same terms
    /// as the record (networks as structure, no layer names; no keys a run does not
    /// record).
    pub fn against_last_run(&mut self, p: &Pipeline) -> Result<(Side, Side)> {
        let last = self.last_run_side(p)?;
        let mut now = self.side(p)?;
        now.label = format!("{} (manifest now)", p.name);
        for (stage, s) in &p.stages {
            if s.config.kind() == StageKind::Train {
                let v = effective_config(p, stage)?;
                let arr = v["network"].as_array().cloned().unwrap_or_default();
                now.config
                    .insert(format!("stages.{stage}.network"), structure_label(&arr));
                if let Some((_, g)) = now.networks.get_mut(stage) {
                    for (i, n) in g.nodes.iter_mut().enumerate() {
                        n.name = format!("#{i}");
                    }
                }
            }
        }
        now.config
            .retain(|k, _| !k.contains(".resources.") && k != "seed");
        Ok((last, now))
    }
}

impl Engine {
    /// Checks that need a dataset's index, made as soon as the index is in the store (so a
    /// dry run catches them, and a run before it trains): a network's classes against the
    /// data's, and an evaluate stage's `top_k` against them. Errors name the key at fault.
    pub(crate) fn check_known_data(
        &self,
        p: &Pipeline,
        name: &str,
        outputs: &HashMap<String, String>,
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
                let f = self.store.artifact_dir(out).join("classes.csv");
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
        match &s.config {
            StageConfig::Train(t) => {
                let Some(net) = p.library.networks.get(&t.network) else {
                    return Ok(());
                };
                match net.classes {
                    Some(k) if k != d => Err(anyhow::anyhow!(
                        "{}",
                        ManifestError::new(format!(
                            "network `{}` outputs {k} classes, but stage `{name}` trains on {d} (the index of stage `{from}`); set `classes = {d}`",
                            t.network
                        ))
                        .at(net.key_origins.get("classes").unwrap_or(&net.origin).clone())
                        .path(format!("networks.{}.classes", t.network))
                    )),
                    _ => Ok(()),
                }
            }
            StageConfig::Evaluate(c) => match c.top_k.iter().max() {
                Some(k) if *k > d => Err(anyhow::anyhow!(
                    "{}",
                    ManifestError::new(format!(
                        "`top_k` asks for rank-{k}, but the data has {d} classes (the index of stage `{from}`)"
                    ))
                    .at(s.key_origin("top_k"))
                    .path(format!("stages.{name}.top_k"))
                )),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// `(structure 1a2b3c4d5e6f)`: a network's structure, named by its hash.
fn structure_label(arr: &[serde_json::Value]) -> String {
    let text = serde_json::to_string(arr).unwrap_or_default();
    format!(
        "(structure {})",
        &blake3::hash(text.as_bytes()).to_hex()[..12]
    )
}

/// Why a stage's key differs from its last run.
pub(crate) fn explain(
    prev: Option<&StageRecord>,
    r: &Resolved,
    stale_inputs: &HashSet<String>,
) -> Vec<Reason> {
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
        if stale_inputs.contains(name) || prev.inputs.get(name) != Some(hash) {
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
