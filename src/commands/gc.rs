//! `pipe gc`: remove what no manifest of the store's projects uses.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::Global;
use crate::engine::gc::GcOptions;
use crate::engine::Project;
use crate::report::gc::describe;

/// `pipe gc [--pipelines DIR] [--dry-run] [--all]`.
pub fn gc(
    g: &Global,
    pipelines: Option<PathBuf>,
    dry_run: bool,
    all: bool,
    keep_runs: usize,
) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    if !proj.cache.join("keys").is_dir() {
        bail!("no store at {} (nothing to clean)", proj.cache.display());
    }
    let mut engine = if dry_run {
        super::looking(&proj)
    } else {
        super::writing(g, &proj, false)?
    };
    let opts = GcOptions {
        pipelines,
        dry_run,
        all,
        keep_runs,
    };
    let r = engine.gc(&opts, &mut |plan| {
        let text = describe(plan);
        let mut lines: Vec<&str> = text.lines().collect();
        lines.pop(); // the summary: printed once it is done
        for l in lines {
            println!("{l}");
        }
    })?;
    for w in &r.warnings {
        eprintln!("note: {w} (what its pipeline last ran is kept)");
    }
    println!("{}", describe(&r).lines().last().unwrap_or(""));
    Ok(())
}
