//! `pipe dag`: the stage graph, as text or Graphviz.

use anyhow::Result;

use super::{load, Global};

/// `pipe dag`.
pub fn dag(g: &Global, pipeline: &str, sets: &[String], dot: bool) -> Result<()> {
    let (_, p) = load(g, pipeline, sets)?;
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
