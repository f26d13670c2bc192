//! `pipe status`: each stage cached or stale, and why; a sweep as a tree.

use anyhow::Result;

use super::Global;
use crate::engine::{sweep, Engine, Project, Target};
use crate::report::{outcome, sweep as report};

/// `pipe status P` (a pipeline, a sweep, or a point; `only` selects a sweep's points).
pub fn status(
    g: &Global,
    pipeline: &str,
    sets: &[String],
    json: bool,
    only: Option<&str>,
) -> Result<()> {
    let (proj, target) = Project::discover(g.cache.clone())?.load_target(pipeline, sets)?;
    // With a remote cache: the stages it holds say so ("in remote"), with their size.
    let mut engine = super::looking(&proj).with_remote(super::open_remote(g, &proj)?);
    let p = match target {
        Target::Sweep(s) => {
            let selected = sweep::select(&s, only)?;
            return print_tree(&mut engine, &s, &selected, json);
        }
        Target::Pipeline(p) => p,
        Target::Point(s, i) => s.points[i].pipeline.clone(),
    };
    let stages = engine.status(&p)?;
    if json {
        let v = serde_json::json!({"pipeline": p.name, "manifest": p.file.display().to_string(), "stages": stages});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!(
        "{}",
        outcome::status_text(&p.name, &p.file.display().to_string(), &stages)
    );
    Ok(())
}

/// A sweep's points (those `selected`) as a tree — what all share, what some share, each
/// point's own — with the halving decisions; or the same as JSON. For `status` and
/// `run --dry-run`.
pub(super) fn print_tree(
    engine: &mut Engine,
    s: &crate::manifest::Sweep,
    selected: &[usize],
    json: bool,
) -> Result<()> {
    let stages = engine.sweep_stages(s, selected)?;
    let ids: Vec<String> = selected.iter().map(|&i| s.points[i].id.clone()).collect();
    let decisions = engine.decisions(s);
    if json {
        let v = serde_json::json!({
            "sweep": s.name,
            "manifest": s.file.display().to_string(),
            "points": ids,
            "stages": stages,
            "halving": decisions,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!(
            "{}",
            report::tree(
                &s.name,
                &s.file.display().to_string(),
                &ids,
                &stages,
                &decisions
            )
        );
    }
    Ok(())
}
