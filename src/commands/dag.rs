//! `pipe dag`: the stage graph, as text or Graphviz.

use anyhow::Result;

use super::Global;
use crate::engine::{Project, Target};

/// `pipe dag`: a pipeline's stages; for a sweep, each distinct stage with the points that
/// share it.
pub fn dag(g: &Global, pipeline: &str, sets: &[String], dot: bool) -> Result<()> {
    let (proj, target) = Project::discover(g.cache.clone())?.load_target(pipeline, sets)?;
    let p = match target {
        Target::Sweep(s) => {
            let mut engine = super::looking(&proj);
            let all: Vec<usize> = (0..s.points.len()).collect();
            let stages = engine.sweep_stages(&s, &all)?;
            println!(
                "{} ({}): {} points",
                s.name,
                s.file.display(),
                s.points.len()
            );
            for st in &stages {
                let who = if st.points.len() == s.points.len() {
                    "all points".to_string()
                } else {
                    st.points.join(", ")
                };
                let inputs = &s.points[0].pipeline.stages[&st.outcome.name].inputs;
                let from = if inputs.is_empty() {
                    String::new()
                } else {
                    format!("  <- {}", inputs.join(", "))
                };
                println!(
                    "  {:<12} [{}]{from}  ({who})",
                    st.outcome.name, st.outcome.kind
                );
            }
            return Ok(());
        }
        Target::Pipeline(p) => p,
        Target::Point(s, i) => s.points[i].pipeline.clone(),
    };
    if dot {
        // DOT string literals: backslash and double quote escaped.
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        println!("digraph \"{}\" {{\n  rankdir=LR;", q(&p.name));
        for name in p.topo_order() {
            let s = &p.stages[&name];
            println!(
                "  \"{}\" [label=\"{}\\n({})\", shape=box];",
                q(&name),
                q(&name),
                s.config.kind()
            );
            for i in &s.inputs {
                println!("  \"{}\" -> \"{}\";", q(i), q(&name));
            }
        }
        println!("}}");
        return Ok(());
    }
    println!("{} ({})", p.name, p.file.display());
    for name in p.topo_order() {
        let s = &p.stages[&name];
        let from = if s.inputs.is_empty() {
            String::new()
        } else {
            format!("  <- {}", s.inputs.join(", "))
        };
        println!("  {name:<12} [{}]{from}", s.config.kind());
    }
    Ok(())
}
