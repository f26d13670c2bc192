//! `pipe run` (in this process, or with an executor; a pipeline, a sweep, or one point of
//! a sweep) and `pipe run-stage` (what an executor's job runs).

use anyhow::{bail, Context, Result};

use super::Console;
use super::Global;
use crate::engine::{sweep, Engine, Project, RunOptions, Target};
use crate::manifest::{Pipeline, Sweep};
use crate::outcome::record::RunRecord;
use crate::outcome::sweep::SweepRun;
use crate::report::outcome;
use crate::report::sweep as report;

/// `pipe run P` (`only`: `--only EXPR`, for a sweep).
pub fn run(
    g: &Global,
    pipeline: &str,
    sets: &[String],
    opts: RunOptions,
    json: bool,
    only: Option<&str>,
) -> Result<()> {
    let (proj, target) = Project::discover(g.cache.clone())?.load_target(pipeline, sets)?;
    let p = match target {
        Target::Sweep(s) => {
            let mut engine = if opts.dry_run {
                super::looking(&proj).watched_by(Box::new(Console::new(json)))
            } else {
                super::writing(g, &proj, json)?
            };
            return run_sweep(&mut engine, &s, &opts, json, only);
        }
        Target::Pipeline(p) => p,
        Target::Point(s, i) => s.points[i].pipeline.clone(),
    };
    if only.is_some() {
        bail!("--only selects points of a sweep; `{pipeline}` is one pipeline");
    }
    let what = format!("pipeline {} ({})", p.name, p.file.display());
    run_one(g, &proj, &p, &opts, json, &what, None)
}

/// Run one pipeline in this process, saying `what` first and how it went after (JSON:
/// the report on stdout).
fn run_one(
    g: &Global,
    proj: &Project,
    p: &Pipeline,
    opts: &RunOptions,
    json: bool,
    what: &str,
    recorded: Option<&RunRecord>,
) -> Result<()> {
    let mut engine = if opts.dry_run {
        super::looking(proj).watched_by(Box::new(Console::new(json)))
    } else {
        super::writing(g, proj, json)?
    };
    if !json {
        eprintln!("{what}{}", if opts.dry_run { " [dry run]" } else { "" });
    }
    if let Some(rec) = recorded {
        let now = engine.status(p)?;
        let differ: Vec<&str> = now
            .iter()
            .filter(|s| {
                let then = rec.stages.iter().find(|r| r.name == s.name);
                match (&s.key, then.and_then(|t| t.key.as_deref())) {
                    (Some(k), Some(t)) => k.to_string() != t,
                    _ => false,
                }
            })
            .map(|s| s.name.as_str())
            .collect();
        // A stage after one that differs has no key yet (it is keyed on what that one
        // makes): it is named as one of "the stages after".
        if !differ.is_empty() {
            let (read, key, after) = match differ.len() {
                1 => ("it reads", "its key is", "it and the stages after it run"),
                _ => (
                    "they read",
                    "their keys are",
                    "they and the stages after them run",
                ),
            };
            eprintln!(
                "warning: {}: what {read} changed since run {} (a dataset, a checkpoint, a file named): {key} not the run's, so {after} on today's inputs",
                differ.join(", "),
                rec.id,
            );
        }
    }
    let report = engine.run(p, opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!("{}", outcome::run_summary(&report, opts.dry_run));
    }
    Ok(())
}

/// `pipe run --from RUN`: a recorded run's pipeline, loaded from its recorded manifest
/// texts and overrides, run again: its keys are the original run's, and its stages cached,
/// unless something they read changed since (a dataset folder, a checkpoint it resumes
/// from): those stages are named in a warning before the run.
pub fn run_from(g: &Global, reference: &str, opts: RunOptions, json: bool) -> Result<()> {
    let Some((proj, rec, p)) = super::resolve_run(g, reference)? else {
        bail!("--from `{reference}` names no recorded run: give a run id (`pipe runs` lists them), `PIPELINE~N` or `PIPELINE@ID-PREFIX`");
    };
    let p = p?;
    let sets = match rec.sets.is_empty() {
        true => String::new(),
        false => format!(", --set {}", rec.sets.join(" --set ")),
    };
    let what = format!(
        "pipeline {} as run {} ran it ({}{sets})",
        p.name,
        rec.id,
        p.file.display()
    );
    run_one(g, &proj, &p, &opts, json, &what, Some(&rec))
}

/// `pipe run SWEEP`: a dry run shows the sweep as a tree; a run runs every point (or those
/// `--only` selects) and fails, listing them, if any point failed.
fn run_sweep(
    engine: &mut Engine,
    s: &Sweep,
    opts: &RunOptions,
    json: bool,
    only: Option<&str>,
) -> Result<()> {
    let selected = sweep::select(s, only)?;
    if opts.dry_run {
        return super::status::print_tree(engine, s, &selected, json);
    }
    if !json {
        eprintln!(
            "sweep {} ({}): {} of {} points",
            s.name,
            s.file.display(),
            selected.len(),
            s.points.len()
        );
    }
    let run = engine.run_sweep(s, opts, only.map(|_| &selected[..]))?;
    finish_sweep(s, &run, json)
}

/// Print how a sweep run went (JSON, or the decisions and the summary) and fail, listing
/// them, if any point failed.
fn finish_sweep(s: &Sweep, run: &SweepRun, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(run)?);
    } else {
        eprint!("{}", report::decisions_text(&run.decisions));
        eprintln!("{}", report::run_summary(run));
    }
    let failed = run.failed();
    if !failed.is_empty() {
        bail!(
            "{} of {} points failed: {}",
            failed.len(),
            run.points.len(),
            failed
                .iter()
                .map(|(id, _)| format!("{}@{id}", s.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `pipe run --executor`: stages as local worker processes or Slurm jobs; a sweep's points
/// all at once (each shared stage once).
pub fn run_with(
    g: &Global,
    pipeline: &str,
    sets: &[String],
    opts: RunOptions,
    exec: &crate::engine::executor::Executor,
    only: Option<&str>,
    json: bool,
) -> Result<()> {
    let (proj, target) = Project::discover(g.cache.clone())?.load_target(pipeline, sets)?;
    let mut engine = if opts.dry_run {
        super::looking(&proj)
    } else {
        super::writing(g, &proj, false)?
    };
    let p = match target {
        Target::Sweep(s) => {
            let selected = sweep::select(&s, only)?;
            eprintln!(
                "sweep {} ({}): {} of {} points{}",
                s.name,
                s.file.display(),
                selected.len(),
                s.points.len(),
                if opts.dry_run { " [dry run]" } else { "" }
            );
            // A halving sweep's dry run shows the sweep as a tree, as without -j: its
            // rungs' decisions cannot be taken before their stages run.
            if opts.dry_run && s.halving.is_some() && only.is_none() && opts.until.is_none() {
                return super::status::print_tree(&mut engine, &s, &selected, json);
            }
            let run = engine.run_sweep_with(&s, &selected, only.is_some(), sets, &opts, exec)?;
            return finish_sweep(&s, &run, json);
        }
        Target::Pipeline(p) => p,
        Target::Point(s, i) => s.points[i].pipeline.clone(),
    };
    if json {
        bail!("--json with -j or --executor reports a sweep's run; for one pipeline, run it, then `pipe status {pipeline} --json` (or `pipe runs --json`)");
    }
    if only.is_some() {
        bail!("--only selects points of a sweep; `{pipeline}` is one pipeline");
    }
    eprintln!(
        "pipeline {} ({}){}",
        p.name,
        p.file.display(),
        if opts.dry_run { " [dry run]" } else { "" }
    );
    engine.run_with(&p, sets, &opts, exec)
}

/// `pipe sweep-promote SWEEP --rung R` (what a halving promotion job runs on Slurm).
pub fn sweep_promote(
    g: &Global,
    manifest: &str,
    rung: usize,
    about: Option<&str>,
    sets: &[String],
    o: &crate::engine::executor::SlurmOptions,
) -> Result<()> {
    let (proj, target) =
        Project::discover(g.cache.clone())?.load_target_unchecked(manifest, sets)?;
    let Target::Sweep(s) = target else {
        bail!("`{manifest}` is not a sweep");
    };
    let mut engine = super::writing(g, &proj, false)?;
    // The points' records name this job for their awaiting stages: it says how it went,
    // as a stage's job does.
    let journal = crate::engine::journal::Journal::of(engine.store());
    let name = format!("promote after rung {rung}");
    let result = as_slurm_job(
        &journal,
        &name,
        "sweep-promote",
        || engine.promote_on_slurm(&s, rung, about, sets, o),
        |kept: &Vec<String>, mut e| {
            e.summary = format!("{} go on", kept.len());
            e
        },
    );
    let kept = result?;
    eprintln!(
        "sweep {}: after rung {rung}, {} go on: {}",
        s.name,
        kept.len(),
        kept.join(", ")
    );
    Ok(())
}

/// `work`, said in the journal when this process is a Slurm job: its entry (`name`, of
/// `kind`) `running` under the job's lock while it works, then what `done` makes of the
/// `ran` entry for its result, or `failed` with its error.
fn as_slurm_job<T>(
    journal: &crate::engine::journal::Journal,
    name: &str,
    kind: &str,
    work: impl FnOnce() -> Result<T>,
    done: impl FnOnce(&T, crate::outcome::record::StageEntry) -> crate::outcome::record::StageEntry,
) -> Result<T> {
    let job = slurm_job_id();
    let entry = |state: &str, summary: String| crate::outcome::record::StageEntry {
        name: name.to_string(),
        kind: kind.to_string(),
        key: None,
        output: None,
        state: state.to_string(),
        seconds: 0.0,
        summary,
        job: job.clone(),
    };
    let _live = match &job {
        Some(j) => journal
            .job_started(j, &entry("running", String::new()))
            .ok(),
        None => None,
    };
    let result = work();
    if let Some(j) = &job {
        let e = match &result {
            Ok(v) => done(v, entry("ran", String::new())),
            Err(err) => entry("failed", format!("{err:#}")),
        };
        if let Err(err) = journal.job_ended(j, &e) {
            eprintln!("warning: could not record the job in the journal: {err:#}");
        }
    }
    result
}

/// This process's Slurm job (`SLURM_JOB_ID`), when it is one and the id is plain.
fn slurm_job_id() -> Option<String> {
    std::env::var("SLURM_JOB_ID")
        .ok()
        .filter(|j| !j.is_empty() && j.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// `pipe run-stage`: one stage, its inputs read from the store (an executor's job).
pub fn run_stage(
    g: &Global,
    manifest: &str,
    stage: &str,
    sets: &[String],
    journal_to: Option<&std::path::Path>,
    recipe: Option<&str>,
) -> Result<()> {
    let expect = match recipe {
        Some(r) => Some(
            crate::ids::Recipe::parse(r)
                .with_context(|| format!("--recipe {r}: not a recipe (64 hex digits)"))?,
        ),
        None => None,
    };
    // A job of a run already decided: a manifest copied beside it since, its name not yet
    // changed, does not fail it (the submitter checked the name).
    let (proj, p) = Project::discover(g.cache.clone())?.load_job(manifest, sets)?;
    let mut engine = super::writing(g, &proj, false)?;
    if journal_to.is_some() {
        // A job on a store of its own (`--job-store`): its store's path came from the
        // job's shell, and its output must reach the remote.
        if let Some(c) = g.cache.as_ref().filter(|c| !c.is_absolute()) {
            anyhow::bail!(
                "this job's store `{}` is not an absolute path (did a variable in --job-store expand to nothing?)",
                c.display()
            );
        }
        engine = engine.require_push();
    }
    // A Slurm job says how it went in the journal, for the records of the runs that
    // submitted it (or depend on it): the submitter's, when the job has a store of its own.
    let journal = match journal_to {
        Some(root) => {
            crate::engine::journal::Journal::of(&crate::engine::store::Store::open_read_only(root))
        }
        None => crate::engine::journal::Journal::of(engine.store()),
    };
    let kind = p
        .stages
        .get(stage)
        .map(|s| s.config.kind().to_string())
        .unwrap_or_default();
    let result = as_slurm_job(
        &journal,
        stage,
        &kind,
        || engine.run_stage(&p, stage, expect.as_ref()),
        |o, ran| {
            let mut e = crate::engine::journal::entry_of(o);
            e.job = ran.job;
            if e.state == "not-run" {
                e.state = "ran".into();
            }
            e
        },
    );
    let o = result?;
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
