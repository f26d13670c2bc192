//! `pipe show` and `pipe diff`: experiments side by side, read from the manifests and the
//! store (nothing trains).
//!
//! A [`Row`] gathers one pipeline: its training segments with their final metrics (from
//! each segment's `history.json`), every evaluate stage's ranks (`metrics.json`), the
//! network's parameters and MACs, training time (the store's key records), device and
//! backend, and each stage's state (cached, stale and why, never ran). `show` prints rows
//! as a table that fits the terminal (columns equal on every row move to a header line),
//! JSON or CSV; `diff` compares two pipelines, or one against its last run: effective
//! configuration key by key, networks layer by layer, metrics side by side.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::engine::Engine;
use crate::manifest::{Pipeline, StageConfig};
use crate::nn::graph::Graph;
use crate::report::history::EpochRecord;

/// One training segment (`train`, `lr-drop`, `resume`).
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// Stage name.
    pub stage: String,
    /// Stage kind.
    pub kind: String,
    /// Network trained.
    pub network: String,
    /// `sgd` or `adam`.
    pub optimizer: String,
    /// Learning rate (the first epoch's, for a schedule).
    pub lr: f64,
    /// Epochs this segment trains.
    pub epochs: usize,
    /// Its last epoch's record, when it is in the store.
    pub last: Option<EpochRecord>,
}

/// One evaluate stage's result.
#[derive(Debug, Clone, Serialize)]
pub struct Eval {
    /// Stage name.
    pub stage: String,
    /// Split evaluated.
    pub split: String,
    /// Rank-k accuracy by k, when it is in the store.
    pub ranks: BTreeMap<usize, f64>,
}

/// A stage's state.
#[derive(Debug, Clone, Serialize)]
pub struct StageState {
    /// Stage name.
    pub name: String,
    /// `cached`, `stale`, `queued`, `running`.
    pub state: String,
    /// Why it is not cached.
    pub reasons: Vec<String>,
}

/// One pipeline, as `show` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Pipeline name.
    pub pipeline: String,
    /// Training segments, in dependency order.
    pub segments: Vec<Segment>,
    /// Evaluate stages.
    pub evals: Vec<Eval>,
    /// Parameters of the first segment's network (trainable + statistics).
    pub params: Option<usize>,
    /// Multiply-accumulates per image of that network.
    pub macs: Option<usize>,
    /// Seconds the training stages took (those in the store).
    pub train_seconds: Option<f64>,
    /// Device of the training stages.
    pub device: String,
    /// Backend of the training stages.
    pub backend: String,
    /// Every stage's state.
    pub stages: Vec<StageState>,
    /// Why the stages' states are unknown (a dataset folder that is not there, say).
    pub error: Option<String>,
}

fn network_of(p: &Pipeline, stage: &str, depth: usize) -> Option<String> {
    match &p.stages.get(stage)?.config {
        StageConfig::Train(t) => Some(t.config.network.clone()),
        StageConfig::LrDrop(c) if depth < 64 => network_of(p, &c.from, depth + 1),
        StageConfig::Resume { stage, .. } if depth < 64 => network_of(p, stage, depth + 1),
        _ => None,
    }
}

fn optimizer_of(p: &Pipeline, stage: &str, depth: usize) -> String {
    match p.stages.get(stage).map(|s| &s.config) {
        Some(StageConfig::Train(t)) => serde_json::to_value(t.config.optimizer)
            .map_or(String::new(), |v| {
                v.as_str().unwrap_or_default().to_string()
            }),
        Some(StageConfig::LrDrop(c)) if depth < 64 => optimizer_of(p, &c.from, depth + 1),
        Some(StageConfig::Resume { stage, .. }) if depth < 64 => optimizer_of(p, stage, depth + 1),
        _ => String::new(),
    }
}

/// The graph a pipeline's first `train` stage builds.
pub fn first_graph(p: &Pipeline) -> Option<(String, &Graph)> {
    p.stages.values().find_map(|s| match &s.config {
        StageConfig::Train(t) => Some((t.config.network.clone(), &t.graph)),
        _ => None,
    })
}

/// Gather one pipeline's row from its manifest and the store.
pub fn gather(engine: &mut Engine, p: &Pipeline) -> Result<Row> {
    let (status, error) = match engine.status(p) {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let by_name: BTreeMap<&str, &crate::engine::StageOutcome> =
        status.iter().map(|o| (o.name.as_str(), o)).collect();
    let artifact = |stage: &str| -> Option<std::path::PathBuf> {
        let o = by_name.get(stage)?;
        let out = o.output.as_ref().filter(|_| o.state == "cached")?;
        Some(engine.store().artifact_dir(out))
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
            .map(|o| StageState {
                name: o.name.clone(),
                state: o.state.clone(),
                reasons: o.reasons.clone(),
            })
            .collect(),
        error,
    };
    if let Some((_, g)) = first_graph(p) {
        if let Ok(infos) = g.infer() {
            let t = crate::nn::graph::totals(&infos);
            row.params = Some(t.trainable + t.non_trainable);
            row.macs = Some(t.macs);
        }
    }
    let mut seconds = 0.0;
    let mut timed = false;
    for name in p.topo_order() {
        let s = &p.stages[&name];
        let (lr, epochs, device, backend) = match &s.config {
            StageConfig::Train(t) => (
                t.config.lr,
                t.config.epochs,
                t.config.device,
                t.config.backend,
            ),
            StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => {
                (c.lr, c.epochs, c.device, c.backend)
            }
            StageConfig::Evaluate(c) => {
                let mut ranks = BTreeMap::new();
                if let Some(dir) = artifact(&name) {
                    let m: Option<serde_json::Value> =
                        crate::engine::store::read_json(&dir.join("metrics.json"))
                            .ok()
                            .flatten();
                    if let Some(r) = m.as_ref().and_then(|m| m["rank"].as_object()) {
                        for (k, v) in r {
                            if let (Some(k), Some(v)) = (
                                k.strip_prefix("rank-").and_then(|k| k.parse().ok()),
                                v.as_f64(),
                            ) {
                                ranks.insert(k, v);
                            }
                        }
                    }
                }
                row.evals.push(Eval {
                    stage: name.clone(),
                    split: c.split.clone(),
                    ranks,
                });
                continue;
            }
            _ => continue,
        };
        if row.device.is_empty() {
            row.device = device
                .map(|d| format!("{d:?}").to_lowercase())
                .unwrap_or_default();
            row.backend = backend.map(|b| b.to_string()).unwrap_or_default();
        }
        let last = artifact(&name).and_then(|dir| {
            let h: Option<Vec<EpochRecord>> =
                crate::engine::store::read_json(&dir.join("history.json"))
                    .ok()
                    .flatten();
            h.and_then(|h| h.into_iter().last())
        });
        if let Some(rec) = by_name
            .get(name.as_str())
            .filter(|o| o.state == "cached")
            .and_then(|o| engine.store().lookup(o.key.as_deref()?))
        {
            seconds += rec.seconds;
            timed = true;
        }
        row.segments.push(Segment {
            stage: name.clone(),
            kind: s.config.kind().to_string(),
            network: network_of(p, &name, 0).unwrap_or_default(),
            optimizer: optimizer_of(p, &name, 0),
            lr,
            epochs,
            last,
        });
    }
    row.train_seconds = timed.then_some(seconds);
    Ok(row)
}

impl Row {
    /// Every sortable number: `train.loss`, `train.acc`, `val.loss`, `val.acc` (the last
    /// segment's final epoch), `<evaluate stage>.rank<k>` and `<split>.rank<k>`,
    /// `rank<k>` (the first evaluate stage), `params`, `macs`, `time`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if let Some(last) = self.segments.iter().rev().find_map(|s| s.last.as_ref()) {
            m.insert("train.loss".into(), last.train_loss);
            m.insert("train.acc".into(), last.train_acc);
            m.insert("val.loss".into(), last.val_loss);
            m.insert("val.acc".into(), last.val_acc);
        }
        for (i, e) in self.evals.iter().enumerate() {
            for (k, v) in &e.ranks {
                m.insert(format!("{}.rank{k}", e.stage), *v);
                m.entry(format!("{}.rank{k}", e.split)).or_insert(*v);
                if i == 0 {
                    m.insert(format!("rank{k}"), *v);
                }
            }
        }
        if let Some(p) = self.params {
            m.insert("params".into(), p as f64);
        }
        if let Some(x) = self.macs {
            m.insert("macs".into(), x as f64);
        }
        if let Some(t) = self.train_seconds {
            m.insert("time".into(), t);
        }
        m
    }

    /// The metrics without aliases (what `diff` lists): final train/val loss and accuracy,
    /// each evaluate stage's ranks by stage name, params, MACs, time.
    pub fn canonical_metrics(&self) -> BTreeMap<String, f64> {
        let stages: BTreeSet<String> = self.evals.iter().map(|e| e.stage.clone()).collect();
        self.metrics()
            .into_iter()
            .filter(|(k, _)| match k.split_once('.') {
                Some((pre, rest)) if rest.starts_with("rank") => stages.contains(pre),
                Some(_) => true,
                None => !k.starts_with("rank"),
            })
            .collect()
    }

    /// The segments in one line: `adam 1e-3 x40 -> 1e-4 x20 -> 1e-5 x10`.
    pub fn schedule(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.segments.iter().enumerate() {
            if i == 0 {
                out.push_str(&format!("{} {} x{}", s.optimizer, fmt_lr(s.lr), s.epochs));
            } else {
                out.push_str(&format!(" -> {} x{}", fmt_lr(s.lr), s.epochs));
            }
        }
        out
    }

    /// `cached`, or what is not: `4/7 cached; train: config changed: lr 0.002 -> 0.003`.
    pub fn state_line(&self) -> String {
        if let Some(e) = &self.error {
            return format!("unknown: {}", e.split(": caused by").next().unwrap_or(e));
        }
        let cached = self.stages.iter().filter(|s| s.state == "cached").count();
        if cached == self.stages.len() {
            return "cached".into();
        }
        if cached == 0
            && self.stages.iter().all(|s| {
                s.reasons.iter().any(|r| r.contains("never ran"))
                    || s.reasons.iter().any(|r| r.contains("input"))
            })
        {
            return "never ran".into();
        }
        let first = self.stages.iter().find(|s| s.state != "cached");
        format!(
            "{cached}/{} cached; {}",
            self.stages.len(),
            first.map_or(String::new(), |s| format!(
                "{} {}: {}",
                s.name,
                s.state,
                s.reasons.first().cloned().unwrap_or_default()
            ))
        )
    }
}

fn fmt_lr(x: f64) -> String {
    let s = format!("{x:e}");
    // 1e-3, 2.5e-4 (drop a trailing "e0").
    s.strip_suffix("e0").map(|x| x.to_string()).unwrap_or(s)
}

fn fmt_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn fmt_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1}h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1}m", s / 60.0)
    } else {
        format!("{s:.1}s")
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The table's columns: (header, cell per row). Every row has every column.
pub fn columns(rows: &[Row]) -> Vec<(String, Vec<String>)> {
    let mut cols: Vec<(String, Vec<String>)> = Vec::new();
    let mut push = |h: &str, f: &dyn Fn(&Row) -> String| {
        cols.push((h.to_string(), rows.iter().map(f).collect()));
    };
    push("pipeline", &|r| r.pipeline.clone());
    push("network", &|r| {
        r.segments.first().map_or("-".into(), |s| s.network.clone())
    });
    push("schedule", &|r| r.schedule());
    let m = |r: &Row, k: &str| r.metrics().get(k).copied();
    push("train loss", &|r| num(m(r, "train.loss")));
    push("train acc", &|r| pct(m(r, "train.acc")));
    push("val loss", &|r| num(m(r, "val.loss")));
    push("val acc", &|r| pct(m(r, "val.acc")));
    let mut eval_cols: BTreeSet<(String, usize)> = BTreeSet::new();
    for r in rows {
        for e in &r.evals {
            for k in e.ranks.keys() {
                eval_cols.insert((e.stage.clone(), *k));
            }
        }
    }
    for (stage, k) in eval_cols {
        let key = format!("{stage}.rank{k}");
        push(&key, &|r| pct(m(r, &key)));
    }
    push("params", &|r| r.params.map_or("-".into(), fmt_count));
    push("MACs", &|r| r.macs.map_or("-".into(), fmt_count));
    push("time", &|r| r.train_seconds.map_or("-".into(), fmt_secs));
    push("device", &|r| r.device.clone());
    push("backend", &|r| r.backend.clone());
    push("state", &|r| r.state_line());
    cols
}

/// Sort rows best first by a metric (higher is better, except losses, time, params and
/// MACs); rows without it go last. Errors name the metrics there are.
pub fn sort(rows: &mut [Row], key: &str) -> Result<()> {
    if key == "pipeline" {
        rows.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
        return Ok(());
    }
    let known: BTreeSet<String> = rows.iter().flat_map(|r| r.metrics().into_keys()).collect();
    if !known.contains(key) {
        bail!(
            "no metric `{key}` in these pipelines; sortable: pipeline, {}",
            known.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let lower_better = key.ends_with(".loss") || ["time", "params", "macs"].contains(&key);
    rows.sort_by(|a, b| {
        let (x, y) = (a.metrics().get(key).copied(), b.metrics().get(key).copied());
        match (x, y) {
            (Some(x), Some(y)) if lower_better => x.total_cmp(&y),
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    });
    Ok(())
}

/// The table as text, at most `width` columns wide: columns equal on every row (with more
/// than one row) go to a header line; the widest text cell is cut to fit.
pub fn render_table(rows: &[Row], width: usize) -> String {
    let mut cols = columns(rows);
    let mut header = Vec::new();
    if rows.len() > 1 {
        cols.retain(|(h, cells)| {
            let same = cells.iter().all(|c| c == &cells[0]) && h != "pipeline";
            if same {
                header.push(format!("{h}: {}", cells[0]));
            }
            !same
        });
    }
    let mut widths: Vec<usize> = cols
        .iter()
        .map(|(h, cells)| {
            cells
                .iter()
                .map(|c| c.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    // Narrow the long text columns, least telling first, down to 12 characters each.
    let narrow = |cols: &Vec<(String, Vec<String>)>, widths: &mut Vec<usize>, order: &[&str]| {
        for name in order {
            if let Some(i) = cols.iter().position(|(h, _)| h == name) {
                while total(widths) > width && widths[i] > 12 {
                    widths[i] -= 1;
                }
            }
        }
    };
    narrow(&cols, &mut widths, &["state", "network", "schedule"]);
    // Still too wide: leave out the least telling columns, and say which.
    let mut dropped = Vec::new();
    for name in [
        "MACs",
        "params",
        "backend",
        "device",
        "time",
        "train loss",
        "train acc",
        "network",
        "schedule",
        "state",
    ] {
        if total(&widths) <= width {
            break;
        }
        if let Some(i) = cols.iter().position(|(h, _)| h == name) {
            cols.remove(i);
            widths.remove(i);
            dropped.push(name);
        }
    }
    narrow(&cols, &mut widths, &["pipeline"]);
    let cut = |s: &str, w: usize| -> String {
        if s.chars().count() <= w {
            format!("{s:<w$}")
        } else {
            let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
            t.push('~');
            t
        }
    };
    // Header lines wrap at the width, between items.
    let wrap = |first: &str, items: Vec<String>, sep: &str, last: &str| -> String {
        let mut out = String::new();
        let mut line = first.to_string();
        for (i, it) in items.iter().enumerate() {
            let piece = if i + 1 < items.len() {
                format!("{it}{sep}")
            } else {
                format!("{it}{last}")
            };
            if line.chars().count() + piece.trim_end().chars().count() > width
                && !line.trim().is_empty()
            {
                out.push_str(line.trim_end());
                out.push('\n');
                line = "  ".to_string();
            }
            line.push_str(&piece);
        }
        out.push_str(line.trim_end());
        out.push('\n');
        out
    };
    let mut out = String::new();
    if !header.is_empty() {
        out.push_str(&wrap("same for all: ", header, " | ", ""));
    }
    if !dropped.is_empty() {
        out.push_str(&wrap(
            "(not shown for the width: ",
            dropped.iter().map(|d| d.to_string()).collect(),
            ", ",
            "; see --csv or --json)",
        ));
    }
    let line = |cells: Vec<String>| cells.join("  ").trim_end().to_string() + "\n";
    out.push_str(&line(
        cols.iter()
            .zip(&widths)
            .map(|((h, _), w)| cut(h, *w))
            .collect(),
    ));
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for r in 0..rows.len() {
        out.push_str(&line(
            cols.iter()
                .zip(&widths)
                .map(|((_, cells), w)| cut(&cells[r], *w))
                .collect(),
        ));
    }
    out
}

/// The table as CSV (every column, nothing cut).
pub fn render_csv(rows: &[Row]) -> Result<String> {
    let cols = columns(rows);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(cols.iter().map(|(h, _)| h.as_str()))?;
    for r in 0..rows.len() {
        w.write_record(cols.iter().map(|(_, c)| c[r].as_str()))?;
    }
    Ok(String::from_utf8(
        w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?,
    )?)
}

// ---------------------------------------------------------------------------------------
// diff

/// One side of a diff: a configuration (flat keys), networks and metrics.
pub struct Side {
    /// What it is (`tiny_imagenet_exp2`, or `exp3 (last run)`).
    pub label: String,
    /// Effective configuration, flattened: `stages.train.lr = 0.001`.
    pub config: BTreeMap<String, String>,
    /// Training stage -> (network name, graph) (graphs of a last run have no names).
    pub networks: BTreeMap<String, (String, Graph)>,
    /// Metrics (see [`Row::metrics`]).
    pub metrics: BTreeMap<String, f64>,
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A pipeline's side: its effective configuration (after `extends`, `include`, defaults
/// and `--set`), its training networks, and its metrics from the store.
pub fn side_of(engine: &mut Engine, p: &Pipeline) -> Result<Side> {
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
        let mut v = s.config.to_json();
        if let StageConfig::Train(t) = &s.config {
            v["network"] = serde_json::Value::String(t.config.network.clone());
            networks.insert(name.clone(), (t.config.network.clone(), t.graph.clone()));
        }
        flatten(&pre, &v, &mut config);
        if let Ok(r) = serde_json::to_value(&s.resources) {
            let mut res = BTreeMap::new();
            flatten(&format!("{pre}.resources"), &r, &mut res);
            config.extend(res.into_iter().filter(|(_, v)| v != "null"));
        }
    }
    let row = gather(engine, p)?;
    Ok(Side {
        label: p.name.clone(),
        config,
        networks,
        metrics: row.canonical_metrics(),
    })
}

/// A pipeline's last run, from the store's record of it: the configuration each stage ran
/// with (networks as structure, without layer names) and the metrics of what it made.
pub fn last_run_side(engine: &Engine, p: &Pipeline) -> Result<Side> {
    let st = engine.store().load_state(&p.name);
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
        config.insert(format!("{pre}.kind"), s.kind.clone());
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
                        Some(crate::nn::graph::Node {
                            name: format!("#{i}"),
                            op: serde_json::from_value(n["op"].clone()).ok()?,
                            inputs: serde_json::from_value(n["inputs"].clone()).ok()?,
                        })
                    })
                    .collect(),
            };
            v["network"] = serde_json::Value::String(format!(
                "(structure {})",
                &blake3::hash(serde_json::to_string(&arr)?.as_bytes()).to_hex()[..12]
            ));
            networks.insert(name.clone(), ("(last run)".to_string(), g));
        }
        flatten(&pre, &v, &mut config);
        let dir = engine.store().artifact_dir(&s.output);
        if s.kind == "evaluate" {
            let m: Option<serde_json::Value> =
                crate::engine::store::read_json(&dir.join("metrics.json"))
                    .ok()
                    .flatten();
            if let Some(r) = m.as_ref().and_then(|m| m["rank"].as_object()) {
                for (k, x) in r {
                    if let (Some(k), Some(x)) = (k.strip_prefix("rank-"), x.as_f64()) {
                        metrics.insert(format!("{name}.rank{k}"), x);
                    }
                }
            }
        }
    }
    // The final training segment's last epoch.
    if let Some(last) = p
        .topo_order()
        .iter()
        .rev()
        .filter(|n| {
            matches!(
                st.stages.get(*n).map(|s| s.kind.as_str()),
                Some("train" | "lr-drop" | "resume")
            )
        })
        .find_map(|n| {
            let dir = engine.store().artifact_dir(&st.stages[n].output);
            let h: Option<Vec<EpochRecord>> =
                crate::engine::store::read_json(&dir.join("history.json"))
                    .ok()
                    .flatten();
            h.and_then(|h| h.into_iter().last())
        })
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

/// A layer that differs.
#[derive(Debug, Clone, Serialize)]
pub struct LayerChange {
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// Layer name (or block name when a whole block is added or removed).
    pub layer: String,
    /// What it is, or was -> is.
    pub detail: String,
    /// Parameters it adds (negative: removes).
    pub params: i64,
}

/// Two networks compared layer by layer.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkDiff {
    /// The training stage.
    pub stage: String,
    /// Network names (a, b).
    pub networks: (String, String),
    /// Parameters (a, b).
    pub params: (usize, usize),
    /// Layers that differ; a block whose layers are all added (removed) is one entry.
    pub layers: Vec<LayerChange>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// Side labels.
    pub a: String,
    /// Side labels.
    pub b: String,
    /// Keys whose values differ: (key, a, b); `None` where a side lacks the key.
    pub config: Vec<(String, Option<String>, Option<String>)>,
    /// Networks that differ.
    pub networks: Vec<NetworkDiff>,
    /// Every metric of either side: (name, a, b).
    pub metrics: Vec<(String, Option<f64>, Option<f64>)>,
}

fn describe(op: &crate::nn::graph::Op) -> String {
    let v = serde_json::to_value(op).unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            if k != "op" {
                parts.push(format!("{k}={x}"));
            }
        }
    }
    format!("{}({})", op.name(), parts.join(", "))
}

/// What differs between two ops: `filters 32 -> 48`, or `conv2d -> dense`.
fn op_change(a: &crate::nn::graph::Op, b: &crate::nn::graph::Op) -> String {
    if a.name() != b.name() {
        return format!("{} -> {}", describe(a), describe(b));
    }
    let (va, vb) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let empty = serde_json::Map::new();
    let (ma, mb) = (
        va.as_object().unwrap_or(&empty),
        vb.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    keys.into_iter()
        .filter(|k| ma.get(*k) != mb.get(*k))
        .map(|k| {
            let f = |v: Option<&serde_json::Value>| v.map_or("-".into(), |v| v.to_string());
            format!("{k} {} -> {}", f(ma.get(k)), f(mb.get(k)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compare two networks layer by layer, by layer name (unnamed graphs: by position).
pub fn diff_graphs(stage: &str, a: &(String, Graph), b: &(String, Graph)) -> NetworkDiff {
    let infos = |g: &Graph| g.infer().unwrap_or_default();
    let (ia, ib) = (infos(&a.1), infos(&b.1));
    let params = |i: &[crate::nn::graph::NodeInfo]| {
        let t = crate::nn::graph::totals(i);
        t.trainable + t.non_trainable
    };
    let layer_params = |i: &crate::nn::graph::NodeInfo| (i.trainable + i.non_trainable) as i64;
    let index = |g: &Graph| -> BTreeMap<String, usize> {
        g.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect()
    };
    let (na, nb) = (index(&a.1), index(&b.1));
    let mut layers = Vec::new();
    // Changed: same name, a different op (the fields that differ are listed), output
    // shape or parameter count (a layer that takes a changed input).
    for (name, &i) in &na {
        if let Some(&j) = nb.get(name) {
            let (oa, ob) = (&a.1.nodes[i].op, &b.1.nodes[j].op);
            let (sa, sb) = (
                ia.get(i).map(|x| x.shape.to_string()).unwrap_or_default(),
                ib.get(j).map(|x| x.shape.to_string()).unwrap_or_default(),
            );
            let (pa, pb) = (
                ia.get(i).map_or(0, layer_params),
                ib.get(j).map_or(0, layer_params),
            );
            if oa == ob && sa == sb && pa == pb {
                continue;
            }
            let mut what = Vec::new();
            if oa != ob {
                what.push(op_change(oa, ob));
            }
            if sa != sb {
                what.push(format!("output {sa} -> {sb}"));
            }
            layers.push(LayerChange {
                change: "changed".into(),
                layer: name.clone(),
                detail: if what.is_empty() {
                    format!("{} (its input changed)", a.1.nodes[i].op.name())
                } else {
                    format!("{}: {}", a.1.nodes[i].op.name(), what.join("; "))
                },
                params: pb - pa,
            });
        }
    }
    layers.sort_by_key(|l| nb.get(&l.layer).copied().unwrap_or(usize::MAX));
    // Added and removed, whole blocks (the name's first part) folded into one entry.
    let mut one_side = |from: &(String, Graph),
                        fi: &[crate::nn::graph::NodeInfo],
                        other: &BTreeMap<String, usize>,
                        change: &str,
                        sign: i64| {
        let names: Vec<(usize, &str)> = from
            .1
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !other.contains_key(&n.name))
            .map(|(i, n)| (i, n.name.as_str()))
            .collect();
        let mut blocks: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, n) in &names {
            blocks
                .entry(n.split('/').next().unwrap_or(n))
                .or_default()
                .push(*i);
        }
        let all_of = |block: &str| {
            from.1
                .nodes
                .iter()
                .filter(|n| n.name.split('/').next() == Some(block))
                .count()
        };
        let mut entries: Vec<(usize, LayerChange)> = Vec::new();
        for (block, idx) in blocks {
            let p: i64 = idx.iter().map(|&i| fi.get(i).map_or(0, layer_params)).sum();
            if idx.len() > 1 && idx.len() == all_of(block) {
                entries.push((
                    idx[0],
                    LayerChange {
                        change: change.into(),
                        layer: block.to_string(),
                        detail: format!("block of {} layers", idx.len()),
                        params: sign * p,
                    },
                ));
            } else {
                for &i in &idx {
                    entries.push((
                        i,
                        LayerChange {
                            change: change.into(),
                            layer: from.1.nodes[i].name.clone(),
                            detail: format!(
                                "{} {}",
                                describe(&from.1.nodes[i].op),
                                fi.get(i).map(|x| x.shape.to_string()).unwrap_or_default()
                            ),
                            params: sign * fi.get(i).map_or(0, layer_params),
                        },
                    ));
                }
            }
        }
        entries.sort_by_key(|e| e.0);
        layers.extend(entries.into_iter().map(|e| e.1));
    };
    one_side(a, &ia, &nb, "removed", -1);
    one_side(b, &ib, &na, "added", 1);
    NetworkDiff {
        stage: stage.to_string(),
        networks: (a.0.clone(), b.0.clone()),
        params: (params(&ia), params(&ib)),
        layers,
    }
}

/// Compare two sides.
pub fn diff(a: &Side, b: &Side) -> Diff {
    let keys: BTreeSet<&String> = a.config.keys().chain(b.config.keys()).collect();
    let config = keys
        .into_iter()
        .filter(|k| a.config.get(*k) != b.config.get(*k))
        .map(|k| {
            (
                (*k).clone(),
                a.config.get(k).cloned(),
                b.config.get(k).cloned(),
            )
        })
        .collect();
    let mut networks = Vec::new();
    for (stage, na) in &a.networks {
        let nb = b.networks.get(stage).or_else(|| {
            (a.networks.len() == 1 && b.networks.len() == 1)
                .then(|| b.networks.values().next())
                .flatten()
        });
        if let Some(nb) = nb {
            let d = diff_graphs(stage, na, nb);
            if !d.layers.is_empty() || d.params.0 != d.params.1 {
                networks.push(d);
            }
        }
    }
    let mkeys: BTreeSet<&String> = a.metrics.keys().chain(b.metrics.keys()).collect();
    let metrics = mkeys
        .into_iter()
        .map(|k| {
            (
                (*k).clone(),
                a.metrics.get(k).copied(),
                b.metrics.get(k).copied(),
            )
        })
        .collect();
    Diff {
        a: a.label.clone(),
        b: b.label.clone(),
        config,
        networks,
        metrics,
    }
}

/// The diff as text.
pub fn render_diff(d: &Diff) -> String {
    let mut out = String::new();
    let w = d
        .config
        .iter()
        .map(|c| c.0.len())
        .chain(d.metrics.iter().map(|m| m.0.len()))
        .max()
        .unwrap_or(10)
        .max(6);
    let va = d
        .config
        .iter()
        .map(|c| c.1.as_deref().unwrap_or("(unset)").chars().count())
        .max()
        .unwrap_or(0)
        .max(d.a.len())
        .clamp(8, 40);
    let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "(unset)".into());
    out.push_str(&format!(
        "configuration: {} key(s) differ\n",
        d.config.len()
    ));
    if !d.config.is_empty() {
        out.push_str(&format!("  {:<w$}  {:<va$}  {}\n", "key", d.a, d.b));
        for (k, a, b) in &d.config {
            out.push_str(&format!("  {k:<w$}  {:<va$}  {}\n", show(a), show(b)));
        }
    }
    for n in &d.networks {
        let (added, removed, changed) = ["added", "removed", "changed"]
            .map(|c| n.layers.iter().filter(|l| l.change == c).count())
            .into();
        out.push_str(&format!(
            "network of `{}`: {} -> {}: {added} added, {removed} removed, {changed} changed; params {} -> {} ({:+})\n",
            n.stage,
            n.networks.0,
            n.networks.1,
            fmt_count(n.params.0),
            fmt_count(n.params.1),
            n.params.1 as i64 - n.params.0 as i64
        ));
        // The same change on many layers (an L2 setting, say) is one line.
        let mut same: BTreeMap<&str, Vec<&LayerChange>> = BTreeMap::new();
        for l in n.layers.iter().filter(|l| l.change == "changed") {
            same.entry(l.detail.as_str()).or_default().push(l);
        }
        let mut folded = BTreeSet::new();
        for l in &n.layers {
            let mark = match l.change.as_str() {
                "added" => '+',
                "removed" => '-',
                _ => '~',
            };
            match same
                .get(l.detail.as_str())
                .filter(|g| l.change == "changed" && g.len() > 3)
            {
                Some(group) => {
                    if folded.insert(l.detail.as_str()) {
                        let p: i64 = group.iter().map(|g| g.params).sum();
                        out.push_str(&format!(
                            "  {mark} {} layers ({}, ..., {}): {} ({p:+} params)\n",
                            group.len(),
                            group[0].layer,
                            group[group.len() - 1].layer,
                            l.detail
                        ));
                    }
                }
                None => out.push_str(&format!(
                    "  {mark} {:<20} {} ({:+} params)\n",
                    l.layer, l.detail, l.params
                )),
            }
        }
    }
    if d.networks.is_empty() {
        out.push_str("networks: the same\n");
    }
    out.push_str("metrics:\n");
    if d.metrics.is_empty() {
        out.push_str("  (neither side has results in the store)\n");
    } else {
        out.push_str(&format!(
            "  {:<w$}  {:>12}  {:>12}  {:>9}\n",
            "metric", "a", "b", "b - a"
        ));
        for (k, a, b) in &d.metrics {
            let count = k == "params" || k == "macs";
            let f = |x: &Option<f64>| {
                x.map_or("-".to_string(), |v| match k.as_str() {
                    _ if count => fmt_count(v as usize),
                    "time" => fmt_secs(v),
                    _ => format!("{v:.4}"),
                })
            };
            let delta = match (a, b) {
                (Some(a), Some(b)) if count => format!("{:+}", *b as i64 - *a as i64),
                (Some(a), Some(b)) if k == "time" => format!("{:+.1}s", b - a),
                (Some(a), Some(b)) => format!("{:+.4}", b - a),
                _ => String::new(),
            };
            out.push_str(&format!(
                "  {k:<w$}  {:>12}  {:>12}  {delta:>9}\n",
                f(a),
                f(b)
            ));
        }
    }
    out
}
