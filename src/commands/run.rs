//! `pipe run` (in this process, or with an executor) and `pipe run-stage` (what an
//! executor's job runs).

use anyhow::Result;

use super::{load, Global};
use crate::engine::{Engine, RunOptions};
use crate::report::outcome::{self, Console};

/// `pipe run`.
pub fn run(
    g: &Global,
    pipeline: &str,
    sets: &[String],
    opts: RunOptions,
    json: bool,
) -> Result<()> {
    let (proj, p) = load(g, pipeline, sets)?;
    let opts_dry_run = opts.dry_run;
    let engine = if opts.dry_run {
        Engine::read_only(&proj.cache)
    } else {
        Engine::new(&proj.cache)?
    };
    if !json {
        eprintln!(
            "pipeline {} ({}){}",
            p.name,
            p.file.display(),
            if opts.dry_run { " [dry run]" } else { "" }
        );
    }
    let mut engine = engine.watched_by(Box::new(Console { quiet: json }));
    let report = engine.run(&p, &opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!("{}", outcome::run_summary(&report, opts_dry_run));
    }
    Ok(())
}

/// `pipe run --executor`: stages as local worker processes or Slurm jobs.
pub fn run_with(
    g: &Global,
    pipeline: &str,
    sets: &[String],
    opts: RunOptions,
    exec: &crate::engine::executor::Executor,
) -> Result<()> {
    let (proj, p) = load(g, pipeline, sets)?;
    let mut engine = if opts.dry_run {
        Engine::read_only(&proj.cache)
    } else {
        Engine::new(&proj.cache)?
    };
    eprintln!(
        "pipeline {} ({}){}",
        p.name,
        p.file.display(),
        if opts.dry_run { " [dry run]" } else { "" }
    );
    engine.run_with(&p, sets, &opts, exec)
}

/// `pipe run-stage`: one stage, its inputs read from the store (an executor's job).
pub fn run_stage(g: &Global, manifest: &str, stage: &str, sets: &[String]) -> Result<()> {
    let (proj, p) = load(g, manifest, sets)?;
    let mut engine = Engine::new(&proj.cache)?;
    let o = engine.run_stage(&p, stage)?;
    eprintln!(
        "{:<12} {:<7} {:>6.1}s  key {}  {}",
        o.name,
        o.state,
        o.seconds,
        o.short_key(),
        o.summary
    );
    Ok(())
}
