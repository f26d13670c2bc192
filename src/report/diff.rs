//! `pipe diff`: what differs between two [`Side`]s (two pipelines, or one and its last
//! run, as the engine's query layer found them): the effective configuration key by key,
//! networks layer by layer (added, removed, changed, parameter delta), metrics side by
//! side; and the comparison as text.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::fmt;
use crate::nn::graph::{totals, Graph, NodeInfo, Op};

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
    /// Training stages with a network on one side only: (stage, network of a, of b).
    pub networks_one_side: Vec<(String, Option<String>, Option<String>)>,
    /// Every metric of either side: (name, a, b).
    pub metrics: Vec<(String, Option<f64>, Option<f64>)>,
}

fn describe(op: &Op) -> String {
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
fn op_change(a: &Op, b: &Op) -> String {
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
    let params = |i: &[NodeInfo]| {
        let t = totals(i);
        t.trainable + t.non_trainable
    };
    let layer_params = |i: &NodeInfo| (i.trainable + i.non_trainable) as i64;
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
                        fi: &[NodeInfo],
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
    let mut networks_one_side = Vec::new();
    // One training stage on each side, named differently: the same training renamed.
    let single = a.networks.len() == 1 && b.networks.len() == 1;
    for (stage, na) in &a.networks {
        let nb = b
            .networks
            .get(stage)
            .or_else(|| single.then(|| b.networks.values().next()).flatten());
        match nb {
            Some(nb) => {
                let d = diff_graphs(stage, na, nb);
                if !d.layers.is_empty() || d.params.0 != d.params.1 {
                    networks.push(d);
                }
            }
            None => networks_one_side.push((stage.clone(), Some(na.0.clone()), None)),
        }
    }
    if !single {
        for (stage, nb) in &b.networks {
            if !a.networks.contains_key(stage) {
                networks_one_side.push((stage.clone(), None, Some(nb.0.clone())));
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
        networks_one_side,
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
            fmt::count(n.params.0),
            fmt::count(n.params.1),
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
    for (stage, na, nb) in &d.networks_one_side {
        let (side, label, net) = match (na, nb) {
            (Some(n), _) => ("a", &d.a, n),
            (_, Some(n)) => ("b", &d.b, n),
            _ => continue,
        };
        out.push_str(&format!(
            "network of `{stage}`: only in {side} ({label}): {net}\n"
        ));
    }
    if d.networks.is_empty() && d.networks_one_side.is_empty() {
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
                    _ if count => fmt::count(v as usize),
                    "time" => fmt::secs(v),
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
