//! `pipe show`: pipelines side by side. A [`Row`] is one pipeline as the engine's query
//! layer found it (its training segments with their final metrics, every evaluate stage's
//! ranks, the network's parameters and MACs, training time, device, backend, and each
//! stage's state); this module sorts rows and prints them as a table that fits the
//! terminal (columns equal on every row move to a header line), JSON or CSV.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::fmt;
use crate::manifest::StageKind;
use crate::outcome::history::EpochRecord;
use crate::outcome::{Reason, StageState};

/// One training segment (`train`, `lr-drop`, `resume`).
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// Stage name.
    pub stage: String,
    /// Stage kind.
    pub kind: StageKind,
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
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// Cached, stale, waiting, queued, running.
    pub state: StageState,
    /// Why it is not cached.
    pub reasons: Vec<Reason>,
}

/// One pipeline, as `show` sees it.
#[derive(Debug, Clone, Default, Serialize)]
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
    pub stages: Vec<StageStatus>,
    /// Why the stages' states are unknown (a dataset folder that is not there, say).
    pub error: Option<String>,
    /// A sweep point's swept keys and their values (short key -> value as its id shows).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub swept: Vec<(String, String)>,
    /// Why a sweep point stopped early (`pruned after drop1`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
    /// The best row of a sweep (by `--sort`'s metric, or the first rank-1, else val acc).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub best: bool,
}

impl Row {
    /// Every sortable number: `train.loss`, `train.acc`, `val.loss`, `val.acc` (the last
    /// segment's final epoch; with a moving average of the weights, the average's, which
    /// is the model evaluated and served, and what halving ranks), `<evaluate
    /// stage>.rank<k>` and `<split>.rank<k>`, `rank<k>` (the first evaluate stage),
    /// `params`, `macs`, `time`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if let Some(last) = self.segments.iter().rev().find_map(|s| s.last.as_ref()) {
            m.insert("train.loss".into(), last.train_loss);
            m.insert("train.acc".into(), last.train_acc);
            m.insert(
                "val.loss".into(),
                last.ema_val_loss.unwrap_or(last.val_loss),
            );
            m.insert("val.acc".into(), last.ema_val_acc.unwrap_or(last.val_acc));
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
        if let Some(n) = &self.note {
            return n.clone();
        }
        if let Some(e) = &self.error {
            return format!("unknown: {}", e.split(": caused by").next().unwrap_or(e));
        }
        let cached = self
            .stages
            .iter()
            .filter(|s| s.state == StageState::Cached)
            .count();
        if cached == self.stages.len() {
            return "cached".into();
        }
        if cached == 0
            && self.stages.iter().all(|s| {
                s.reasons.iter().any(|r| {
                    matches!(
                        r,
                        Reason::NeverRan | Reason::InputChanged(_) | Reason::InputRemoved(_)
                    )
                })
            })
        {
            return "never ran".into();
        }
        let first = self.stages.iter().find(|s| s.state != StageState::Cached);
        format!(
            "{cached}/{} cached; {}",
            self.stages.len(),
            first.map_or(String::new(), |s| format!(
                "{} {}: {}",
                s.name,
                s.state,
                s.reasons.first().map(|r| r.to_string()).unwrap_or_default()
            ))
        )
    }
}

fn fmt_lr(x: f64) -> String {
    let s = format!("{x:e}");
    // 1e-3, 2.5e-4 (drop a trailing "e0").
    s.strip_suffix("e0").map(|x| x.to_string()).unwrap_or(s)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// A loss as a cell: 4 decimals, or 4 significant digits in exponent form once it is
/// large (a diverged run's `123456.7891` is `1.235e5`).
fn num(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| {
        if v.abs() >= 1e4 {
            format!("{v:.3e}")
        } else {
            format!("{v:.4}")
        }
    })
}

/// The table's columns: (header, cell per row). Every row has every column.
pub fn columns(rows: &[Row]) -> Vec<(String, Vec<String>)> {
    let mut cols: Vec<(String, Vec<String>)> = Vec::new();
    let mut push = |h: &str, f: &dyn Fn(&Row) -> String| {
        cols.push((h.to_string(), rows.iter().map(f).collect()));
    };
    push("pipeline", &|r| {
        if r.best {
            format!("{} *", r.pipeline)
        } else {
            r.pipeline.clone()
        }
    });
    let swept: Vec<String> = rows
        .iter()
        .flat_map(|r| r.swept.iter().map(|(k, _)| k.clone()))
        .fold(Vec::new(), |mut v, k| {
            if !v.contains(&k) {
                v.push(k);
            }
            v
        });
    for k in &swept {
        push(k, &|r| {
            r.swept
                .iter()
                .find(|(x, _)| x == k)
                .map_or("-".into(), |(_, v)| v.clone())
        });
    }
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
    push("params", &|r| r.params.map_or("-".into(), fmt::count));
    push("MACs", &|r| r.macs.map_or("-".into(), fmt::count));
    push("time", &|r| r.train_seconds.map_or("-".into(), fmt::secs));
    push("device", &|r| r.device.clone());
    push("backend", &|r| r.backend.clone());
    push("state", &|r| r.state_line());
    cols
}

/// Mark the best row by `metric` (see [`sort`] for which way is better); by default the
/// first evaluate stage's rank-1, else the final val accuracy.
pub fn mark_best(rows: &mut [Row], metric: Option<&str>) {
    let key = metric.map(str::to_string).or_else(|| {
        ["rank1", "val.acc"]
            .iter()
            .find(|k| rows.iter().any(|r| r.metrics().contains_key(**k)))
            .map(|k| k.to_string())
    });
    let Some(key) = key else { return };
    let lower_better = key.ends_with(".loss") || ["time", "params", "macs"].contains(&key.as_str());
    mark_best_by(rows, &key, lower_better);
}

/// Mark the best row by `key`, lower or higher being better. A NaN (a diverged
/// training's loss) is never best, nor is a row with a training segment that has no
/// results (its last stage failed or has not run: its numbers are an earlier segment's).
pub fn mark_best_by(rows: &mut [Row], key: &str, lower_better: bool) {
    let mut best: Option<(usize, f64)> = None;
    for (i, r) in rows.iter().enumerate() {
        if r.segments.iter().any(|s| s.last.is_none()) {
            continue;
        }
        if let Some(v) = r.metrics().get(key).copied().filter(|v| !v.is_nan()) {
            let better = match best {
                None => true,
                Some((_, b)) if lower_better => v < b,
                Some((_, b)) => v > b,
            };
            if better {
                best = Some((i, v));
            }
        }
    }
    if let Some((i, _)) = best {
        rows[i].best = true;
    }
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

/// The table as CSV (every column, nothing cut). The pipeline column holds the name
/// alone; a sweep's best point is marked in a `best` column of its own.
pub fn render_csv(rows: &[Row]) -> Result<String> {
    let mut cols = columns(rows);
    cols[0].1 = rows.iter().map(|r| r.pipeline.clone()).collect();
    if rows.iter().any(|r| r.best) {
        cols.insert(
            1,
            (
                "best".to_string(),
                rows.iter()
                    .map(|r| if r.best { "*" } else { "" }.to_string())
                    .collect(),
            ),
        );
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(cols.iter().map(|(h, _)| h.as_str()))?;
    for r in 0..rows.len() {
        w.write_record(cols.iter().map(|(_, c)| c[r].as_str()))?;
    }
    Ok(String::from_utf8(
        w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row whose only number is its last epoch's val loss.
    fn with_val_loss(name: &str, loss: f64) -> Row {
        Row {
            pipeline: name.into(),
            segments: vec![Segment {
                stage: "train".into(),
                kind: StageKind::Train,
                network: "n".into(),
                optimizer: "sgd".into(),
                lr: 0.1,
                epochs: 1,
                last: Some(EpochRecord {
                    epoch: 1,
                    stage: "train".into(),
                    lr: 0.1,
                    train_loss: 1.0,
                    train_acc: 0.5,
                    val_loss: loss,
                    val_acc: 0.5,
                    ema_val_loss: None,
                    ema_val_acc: None,
                    images_per_sec: 0.0,
                    seconds: 0.0,
                }),
            }],
            ..Row::default()
        }
    }

    #[test]
    fn a_diverged_row_is_never_the_best_whichever_way_is_better() {
        for lower in [true, false] {
            let mut rows = vec![
                with_val_loss("diverged", f64::NAN),
                with_val_loss("a", 0.4),
                with_val_loss("b", 0.2),
            ];
            mark_best_by(&mut rows, "val.loss", lower);
            let best: Vec<&str> = rows
                .iter()
                .filter(|r| r.best)
                .map(|r| r.pipeline.as_str())
                .collect();
            assert_eq!(best, [if lower { "b" } else { "a" }]);
        }
    }

    #[test]
    fn a_row_whose_last_segment_has_no_results_is_never_the_best() {
        // `unfinished` trained well, then its lr drop failed: its val loss is its first
        // segment's.
        let mut unfinished = with_val_loss("unfinished", 0.1);
        let mut drop = unfinished.segments[0].clone();
        drop.stage = "drop".into();
        drop.kind = StageKind::LrDrop;
        drop.last = None;
        unfinished.segments.push(drop);
        let mut rows = vec![unfinished, with_val_loss("done", 0.3)];
        mark_best_by(&mut rows, "val.loss", true);
        assert_eq!((rows[0].best, rows[1].best), (false, true));
    }
}
