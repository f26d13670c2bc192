//! The engine's answers, built on the decision walk (`decide`) and the store, as typed
//! values that `report` renders: one [`Row`] per pipeline for `show`, [`Side`]s for
//! `diff`, estimated seconds for what would run.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::keys::{effective_config, flatten};
use super::{estimate, Engine};
use crate::ids::ContentHash;
use crate::manifest::{Pipeline, StageConfig, StageKind};
use crate::nn::graph::{totals, Graph, Node};
use crate::outcome::{StageOutcome, StageState};
use crate::report::diff::Side;
use crate::report::show::{Eval, Row, Segment, StageStatus};
use crate::stages;

impl Engine {
    /// Estimated seconds for a stage that would run, given the outputs known so far.
    pub(crate) fn estimate_stage(
        &mut self,
        p: &Pipeline,
        name: &str,
        outputs: &HashMap<String, ContentHash>,
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
            .map(|f| f.count);
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
        (row.params, row.macs) = network_size(p);
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
                .and_then(|o| self.store.lookup(o.key.as_ref()?))
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
        let decisions = self.decisions(s);
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
        let (config, networks) = flat_config(p)?;
        let row = self.row(p)?;
        Ok(Side {
            label: p.name.clone(),
            config,
            networks,
            metrics: row.canonical_metrics(),
        })
    }

    /// A recorded run's side for `pipe diff`: the configuration it ran with, its networks
    /// (from its recorded manifest, `p`, when that loads) and its final metrics.
    pub fn record_side(
        &self,
        rec: &crate::outcome::record::RunRecord,
        p: Option<&Pipeline>,
    ) -> Result<Side> {
        let networks = match p {
            Some(p) => flat_config(p)?.1,
            None => BTreeMap::new(),
        };
        let evals: Vec<&str> = rec
            .stages
            .iter()
            .filter(|s| s.kind == "evaluate")
            .map(|s| s.name.as_str())
            .collect();
        let metrics = rec
            .metrics
            .iter()
            .filter(|(k, _)| {
                ["train.loss", "train.acc", "val.loss", "val.acc"].contains(&k.as_str())
                    || k.split_once('.').is_some_and(|(stage, rest)| {
                        rest.starts_with("rank") && evals.contains(&stage)
                    })
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Ok(Side {
            label: format!("{}@{}", rec.pipeline, rec.id),
            config: rec.config(),
            networks,
            metrics,
        })
    }

    /// A recorded run's row for `pipe show`, as it ran: its segments (configuration from
    /// the record, last epochs from its artifacts), its evaluations' ranks, parameters and
    /// MACs of its network (from its recorded manifest, `p`, when that loads).
    pub fn record_row(&self, rec: &crate::outcome::record::RunRecord, p: Option<&Pipeline>) -> Row {
        let config = rec.config();
        let cfg = |stage: &str, key: &str| config.get(&format!("stages.{stage}.{key}")).cloned();
        let mut row = Row {
            pipeline: format!("{}@{}", rec.pipeline, rec.id),
            segments: Vec::new(),
            evals: Vec::new(),
            params: None,
            macs: None,
            train_seconds: None,
            device: rec.device.clone(),
            backend: rec.backend.clone(),
            stages: Vec::new(),
            error: rec.error.clone(),
            swept: Vec::new(),
            note: rec.remark.clone(),
            best: false,
        };
        if let Some(p) = p {
            (row.params, row.macs) = network_size(p);
        }
        let mut seconds = 0.0;
        let mut timed = false;
        for s in &rec.stages {
            let kind: Option<StageKind> =
                serde_json::from_value(serde_json::Value::String(s.kind.clone())).ok();
            let made =
                s.output.is_some() && matches!(s.state.as_str(), "ran" | "cached" | "fetched");
            row.stages.push(crate::report::show::StageStatus {
                name: s.name.clone(),
                state: if made {
                    StageState::Cached
                } else {
                    StageState::Waiting
                },
                reasons: Vec::new(),
            });
            let dir = s
                .output
                .as_ref()
                .map(|o| self.store.artifact_dir(&ContentHash::new(o.clone())));
            match kind {
                Some(StageKind::Evaluate) => row.evals.push(Eval {
                    stage: s.name.clone(),
                    split: cfg(&s.name, "split").unwrap_or_default(),
                    ranks: rec
                        .metrics
                        .iter()
                        .filter_map(|(k, v)| {
                            let rest = k.strip_prefix(&format!("{}.rank", s.name))?;
                            Some((rest.parse().ok()?, *v))
                        })
                        .collect(),
                }),
                Some(k) if k.is_training() => {
                    let took = match s.state.as_str() {
                        "ran" => Some(s.seconds),
                        "cached" | "fetched" => s
                            .key
                            .as_deref()
                            .and_then(crate::ids::StageKey::parse)
                            .and_then(|k| self.store.lookup(&k))
                            .map(|r| r.seconds),
                        _ => None,
                    };
                    if let Some(t) = took {
                        seconds += t;
                        timed = true;
                    }
                    let root = p.and_then(|p| p.root_config(&s.name));
                    row.segments.push(Segment {
                        stage: s.name.clone(),
                        kind: k,
                        network: root.map(|t| t.network.clone()).unwrap_or_default(),
                        optimizer: root.map(|t| t.optimizer.to_string()).unwrap_or_default(),
                        lr: cfg(&s.name, "lr")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(f64::NAN),
                        epochs: cfg(&s.name, "epochs")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                        last: dir
                            .filter(|_| made)
                            .and_then(|d| stages::train::last_epoch(&d)),
                    });
                }
                _ => {}
            }
        }
        row.train_seconds = timed.then_some(seconds);
        row
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
            metrics.insert(
                "val.loss".into(),
                last.ema_val_loss.unwrap_or(last.val_loss),
            );
            metrics.insert("val.acc".into(), last.ema_val_acc.unwrap_or(last.val_acc));
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

/// Parameters (trainable + statistics) and MACs per image of a pipeline's first training
/// network, when it builds.
fn network_size(p: &Pipeline) -> (Option<usize>, Option<usize>) {
    let Some((name, _)) = p
        .stages
        .iter()
        .find(|(_, s)| s.config.kind() == StageKind::Train)
    else {
        return (None, None);
    };
    match crate::nn::train_graph(p, name).map(|g| g.infer()) {
        Ok(Ok(infos)) => {
            let t = totals(&infos);
            (Some(t.trainable + t.non_trainable), Some(t.macs))
        }
        _ => (None, None),
    }
}

/// A pipeline's effective configuration, flat (after `extends`, `include`, defaults and
/// `--set`: `stages.train.lr = 0.01`), and its training stages' networks (name, graph).
pub fn flat_config(p: &Pipeline) -> Result<(BTreeMap<String, String>, Networks)> {
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
    Ok((config, networks))
}

/// Training stages' networks: stage -> (network name, graph).
pub type Networks = BTreeMap<String, (String, Graph)>;

/// `(structure 1a2b3c4d5e6f)`: a network's structure, named by its hash.
fn structure_label(arr: &[serde_json::Value]) -> String {
    let text = serde_json::to_string(arr).unwrap_or_default();
    format!(
        "(structure {})",
        &blake3::hash(text.as_bytes()).to_hex()[..12]
    )
}
