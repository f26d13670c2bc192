//! What a sweep looks like to the user: its stages as a tree (what all points share, what
//! some share, what is each point's own), how a run of it went (which points finished,
//! failed or were pruned), and the decisions of successive halving.

use std::collections::BTreeMap;

use super::outcome::status_detail;
use crate::fmt;
use crate::outcome::sweep::{HalvingDecisions, PointResult, SharedStage, SweepRun};
use crate::outcome::StageOutcome;

/// The stages of a sweep as a tree: shared by all points, by some, and per point.
pub fn tree(
    name: &str,
    file: &str,
    points: &[String],
    stages: &[SharedStage],
    d: &HalvingDecisions,
) -> String {
    let mut out = format!("sweep {name} ({file}): {} points\n", points.len());
    let line = |o: &StageOutcome| {
        let detail = status_detail(o);
        format!(
            "{:<12} {:<9} key {:<12}  {detail}",
            o.name,
            o.state,
            o.short_key()
        )
    };
    let all: Vec<&SharedStage> = stages
        .iter()
        .filter(|s| s.points.len() == points.len() && points.len() > 1)
        .collect();
    if !all.is_empty() {
        out.push_str(&format!("shared by all {} points:\n", points.len()));
        for s in all {
            out.push_str(&format!("  {}\n", line(&s.outcome)));
        }
    }
    let some: Vec<&SharedStage> = stages
        .iter()
        .filter(|s| s.points.len() > 1 && s.points.len() < points.len())
        .collect();
    if !some.is_empty() {
        out.push_str("shared by some points:\n");
        for s in some {
            out.push_str(&format!(
                "  {}  ({})\n",
                line(&s.outcome),
                group_label(&s.points)
            ));
        }
    }
    let mut own: BTreeMap<usize, Vec<&SharedStage>> = BTreeMap::new();
    for s in stages
        .iter()
        .filter(|s| s.points.len() == 1 || points.len() == 1)
    {
        if let Some(i) = points.iter().position(|p| *p == s.points[0]) {
            own.entry(i).or_default().push(s);
        }
    }
    if !own.is_empty() {
        out.push_str("per point:\n");
        for (i, ss) in own {
            let id = &points[i];
            let pruned = d
                .pruned_at(id)
                .map_or(String::new(), |r| format!("  [pruned after {}]", r.stage));
            out.push_str(&format!("  {id}{pruned}\n"));
            for s in ss {
                out.push_str(&format!("    {}\n", line(&s.outcome)));
            }
        }
    }
    out.push_str(&decisions_text(d));
    let total: f64 = stages.iter().filter_map(|s| s.outcome.estimate).sum();
    if total > 0.0 {
        out.push_str(&format!("estimated: {}\n", fmt::secs(total)));
    }
    out
}

/// The points that share a stage, as a reader wants them: up to three ids as they are;
/// more as the values they have in common (`train.lr=1e-3,batch_size=8: 10 points`), since
/// an id's parts are `key=value` joined by `,` (values escape both).
fn group_label(ids: &[String]) -> String {
    if ids.len() <= 3 {
        return ids.join(", ");
    }
    let parts = |id: &str| -> Vec<String> { id.split(',').map(str::to_string).collect() };
    let first = parts(&ids[0]);
    let common: Vec<&String> = first
        .iter()
        .filter(|p| ids[1..].iter().all(|id| parts(id).contains(p)))
        .collect();
    if common.is_empty() {
        format!("{} points: {}, ...", ids.len(), ids[..2].join(", "))
    } else {
        let common: Vec<&str> = common.iter().map(|s| s.as_str()).collect();
        format!("{}: {} points", common.join(","), ids.len())
    }
}

/// The halving decisions as text: per rung, each point's metric and who went on.
pub fn decisions_text(d: &HalvingDecisions) -> String {
    let mut out = String::new();
    for r in &d.rungs {
        out.push_str(&format!(
            "halving after `{}` ({} {}, eta {}): {} of {} go on: {}\n",
            r.stage,
            r.goal,
            r.metric,
            r.eta,
            r.kept.len(),
            r.values.len(),
            r.kept.join(", ")
        ));
        for (id, v) in &r.values {
            let mark = if r.kept.contains(id) {
                "kept  "
            } else {
                "pruned"
            };
            out.push_str(&format!("  {mark} {v:.4}  {id}\n"));
        }
    }
    out
}

/// The end of a sweep run: what finished, what was pruned, what failed.
pub fn run_summary(r: &SweepRun) -> String {
    let count = |f: &dyn Fn(&PointResult) -> bool| r.points.iter().filter(|p| f(&p.1)).count();
    let done = count(&|p| matches!(p, PointResult::Done));
    let pruned = count(&|p| matches!(p, PointResult::Pruned { .. }));
    let planned = count(&|p| matches!(p, PointResult::Planned));
    let failed = r.failed();
    let mut out = String::new();
    if planned > 0 {
        out.push_str(&format!("sweep {}: {planned} points planned", r.sweep));
    } else {
        out.push_str(&format!(
            "sweep {}: {done} points finished, {pruned} pruned, {} failed",
            r.sweep,
            failed.len()
        ));
    }
    for (id, e) in failed {
        out.push_str(&format!("\n  failed: {}@{id}: {e}", r.sweep));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::group_label;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn small_groups_list_their_ids_large_ones_what_they_share() {
        assert_eq!(
            group_label(&ids(&["lr=1e-3", "lr=1e-2"])),
            "lr=1e-3, lr=1e-2"
        );
        let g = ids(&[
            "train.lr=1e-3,drop.lr=1e-4,batch_size=8",
            "train.lr=1e-3,drop.lr=2e-4,batch_size=8",
            "train.lr=1e-3,drop.lr=3e-4,batch_size=8",
            "train.lr=1e-3,drop.lr=4e-4,batch_size=8",
        ]);
        assert_eq!(group_label(&g), "train.lr=1e-3,batch_size=8: 4 points");
        let none = ids(&["a=1,b=1", "a=2,b=2", "a=3,b=3", "a=4,b=4"]);
        assert_eq!(group_label(&none), "4 points: a=1,b=1, a=2,b=2, ...");
    }
}
