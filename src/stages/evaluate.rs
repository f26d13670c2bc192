//! `evaluate`: rank-k accuracy (any `top_k`), loss, per-class accuracy and the confusion
//! matrix of a trained model on one split. Writes `metrics.json`, `per_class.csv`,
//! `confusion.csv` and `predictions.csv` (label, top-5 classes).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;

use super::batches::load_split;
use super::model::{device_kind, predict_split_tta, ModelArtifact};
use super::StageCtx;
use crate::data::index::read_classes;
use crate::manifest::{EvaluateConfig, Tta};

/// Fraction of rows whose label is among the `k` highest probabilities. A label tied with
/// others counts as ranked below them (no credit for ties), and so does one next to a NaN
/// (no credit for what cannot be compared).
pub fn rank_k(probs: &[f32], labels: &[i64], classes: usize, k: usize) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let hits = labels
        .iter()
        .enumerate()
        .filter(|(i, &l)| {
            let row = &probs[i * classes..(i + 1) * classes];
            let p = row[l as usize];
            let above = row
                .iter()
                .enumerate()
                .filter(|(j, &q)| {
                    *j != l as usize && q.partial_cmp(&p) != Some(std::cmp::Ordering::Less)
                })
                .count();
            above < k
        })
        .count();
    hits as f64 / labels.len() as f64
}

/// `metrics.json`.
#[derive(Debug, Serialize)]
pub struct Metrics {
    /// The split evaluated.
    pub split: String,
    /// Images evaluated.
    pub images: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// `rank-<k>` -> accuracy.
    pub rank: BTreeMap<String, f64>,
    /// Class id -> accuracy.
    pub per_class: BTreeMap<String, f64>,
    /// Test-time augmentation (`flip`), when used.
    #[serde(default, skip_serializing_if = "Tta::is_none")]
    pub tta: Tta,
}

/// The rank-k accuracies an evaluate artifact holds (`metrics.json`), by k; empty when
/// it does not read.
pub fn read_ranks(dir: &std::path::Path) -> BTreeMap<usize, f64> {
    let mut ranks = BTreeMap::new();
    let m: Option<serde_json::Value> = std::fs::read(dir.join("metrics.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
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
    ranks
}

/// Run the evaluate stage.
pub fn run(ctx: &StageCtx<'_>, c: &EvaluateConfig) -> Result<String> {
    let model_dir = &ctx.inputs[0].1;
    let data = &ctx.inputs[1].1;
    let artifact = ModelArtifact::open(model_dir)?;
    let (mut model, mean) = artifact.load(device_kind(c.device), c.backend)?;
    let plan = artifact.plan;
    let split = load_split(data, &c.split)?;
    if split.n == 0 {
        anyhow::bail!(
            "split `{}` holds no images: nothing to evaluate (were they all skipped as undecodable?)",
            c.split
        );
    }
    let k = model.classes();
    if let Some(bad) = c.top_k.iter().find(|&&t| t > k) {
        bail!("top_k {bad} exceeds the {k} classes");
    }
    let probs = predict_split_tta(
        model.as_mut(),
        &plan.graph,
        &split,
        &mean,
        c.batch_size,
        c.tta,
    )?;
    let broken = probs.chunks(k).filter(|r| r.iter().any(|p| !p.is_finite()));
    if let Some(n) = Some(broken.count()).filter(|&n| n > 0) {
        bail!(
            "the model gives non-finite probabilities for {n} of {} images of split `{}`: it is damaged or its training diverged; nothing was scored (`pipe verify` checks the store)",
            split.n,
            c.split
        );
    }
    let classes = read_classes(&data.join("classes.csv"))?;
    let labels = &split.labels;
    let mut rank = BTreeMap::new();
    for &t in &c.top_k {
        rank.insert(format!("rank-{t}"), rank_k(&probs, labels, k, t));
    }
    let mut confusion = vec![vec![0usize; k]; k];
    let mut loss = 0.0;
    let mut pred_rows = Vec::with_capacity(labels.len());
    for (i, &l) in labels.iter().enumerate() {
        let row = &probs[i * k..(i + 1) * k];
        let pred = crate::backend::predicted_class(row, l as usize);
        confusion[l as usize][pred] += 1;
        loss -= (row[l as usize].max(1e-12) as f64).ln();
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
        pred_rows.push((l, order.into_iter().take(5).collect::<Vec<_>>()));
    }
    let mut per_class = BTreeMap::new();
    let mut pc = csv::Writer::from_writer(Vec::new());
    pc.write_record(["label", "class", "name", "images", "accuracy"])?;
    for (label, row) in confusion.iter().enumerate() {
        let n: usize = row.iter().sum();
        let acc = if n > 0 {
            row[label] as f64 / n as f64
        } else {
            0.0
        };
        let (id, name) = classes
            .get(label)
            .map(|c| (c.id.clone(), c.name.clone()))
            .unwrap_or_else(|| (label.to_string(), label.to_string()));
        per_class.insert(id.clone(), acc);
        pc.write_record([
            label.to_string(),
            id,
            name,
            n.to_string(),
            format!("{acc:.6}"),
        ])?;
    }
    crate::data::write_file(&ctx.out.join("per_class.csv"), pc.into_inner()?)?;
    let mut cm = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["true\\predicted".to_string()];
    header.extend((0..k).map(|j| j.to_string()));
    cm.write_record(&header)?;
    for (i, row) in confusion.iter().enumerate() {
        let mut r = vec![i.to_string()];
        r.extend(row.iter().map(|v| v.to_string()));
        cm.write_record(&r)?;
    }
    crate::data::write_file(&ctx.out.join("confusion.csv"), cm.into_inner()?)?;
    let mut pw = csv::Writer::from_writer(Vec::new());
    pw.write_record(["label", "top5"])?;
    for (l, top) in pred_rows {
        let t: Vec<String> = top.iter().map(|x| x.to_string()).collect();
        pw.write_record([l.to_string(), t.join(" ")])?;
    }
    crate::data::write_file(&ctx.out.join("predictions.csv"), pw.into_inner()?)?;
    let metrics = Metrics {
        split: c.split.clone(),
        images: labels.len(),
        loss: loss / labels.len().max(1) as f64,
        rank: rank.clone(),
        per_class,
        tta: c.tta,
    };
    crate::data::write_file(
        &ctx.out.join("metrics.json"),
        serde_json::to_vec_pretty(&metrics)?,
    )?;
    let ranks: Vec<String> = rank
        .iter()
        .map(|(k, v)| format!("{k} {:.2}%", 100.0 * v))
        .collect();
    let tta = match c.tta {
        Tta::None => String::new(),
        t => format!(", tta = {t}"),
    };
    Ok(format!(
        "{} ({} images{tta}): {}",
        c.split,
        labels.len(),
        ranks.join(", ")
    ))
}
