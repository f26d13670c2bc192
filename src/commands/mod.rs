//! The CLI verbs, as library functions (`main.rs` only parses arguments): one file per
//! verb, benchmarks in `bench`. A verb loads what it needs, asks the engine, and hands the
//! answer to `report` to print.

mod bench;
mod console;
mod dag;
mod data;
mod diff;
mod export;
mod gc;
mod graph;
mod predict;
mod remote;
mod run;
mod runs;
mod show;
mod status;
mod ui;
mod verify;
mod watch;

use std::path::PathBuf;

use anyhow::Result;

pub use console::Console;

use crate::engine::{Engine, Project};
use crate::manifest::Pipeline;

pub use bench::{
    bench_data, bench_jobs, bench_journal, bench_parity, bench_predict, bench_recipes,
    bench_remote, bench_step, bench_sweep, bench_train, bench_ui, BenchPredict, BenchTrain,
    StepTiming,
};
pub use dag::dag;
pub use data::{demo_data, DemoLayout};
pub use diff::diff;
pub use export::export;
pub use gc::gc;
pub use graph::graph;
pub use predict::{predict, PredictFormat, PredictOptions};
pub use remote::{pull, push, verify_remote};
pub use run::{run, run_from, run_stage, run_with, sweep_promote};
pub use runs::{annotate, runs, RunsOptions};
pub use show::{show, ShowFormat};
pub use status::status;
pub use ui::ui;
pub use verify::verify;
pub use watch::watch;

/// Options shared by every verb.
#[derive(Debug, Clone, Default)]
pub struct Global {
    /// `--cache DIR`.
    pub cache: Option<PathBuf>,
    /// `--remote URL`.
    pub remote: Option<String>,
}

fn load(g: &Global, pipeline: &str, sets: &[String]) -> Result<(Project, Pipeline)> {
    let discovered = Project::discover(g.cache.clone())?;
    let loaded = discovered.load(pipeline, sets)?;
    device_notice();
    Ok(loaded)
}

/// What a run reference on the command line names (`20261206-041500-3fa9`, `exp3~1`,
/// `exp3@2026120604`): the project, the record, and its pipeline loaded from the recorded
/// manifest texts (`None` when they no longer load: the error). `Ok(None)`: `arg` is no
/// run reference.
pub(crate) fn resolve_run(
    g: &Global,
    arg: &str,
) -> Result<Option<(Project, crate::outcome::record::RunRecord, Result<Pipeline>)>> {
    let proj = Project::discover(g.cache.clone())?;
    let store = crate::engine::store::Store::open_read_only(&proj.cache);
    let j = crate::engine::journal::Journal::of(&store);
    let Some(rec) = j.resolve(arg, None)? else {
        return Ok(None);
    };
    let p = j
        .sources(&rec)
        .and_then(|src| crate::engine::load_run(&rec, &src));
    Ok(Some((proj, rec, p)))
}

/// Say once that `device = "auto"` chose the GPU, if it did.
fn device_notice() {
    if let Some(n) = crate::engine::take_device_notice() {
        eprintln!("{n}");
    }
}

/// The engine over a project's store to look only, its warnings on the console.
fn looking(proj: &Project) -> Engine {
    device_notice();
    Engine::read_only(&proj.cache).watched_by(Box::new(Console::new(false)))
}

/// The engine over a project's store to run and write, watched by the console (`quiet`:
/// warnings only, as `--json` wants).
fn writing(g: &Global, proj: &Project, quiet: bool) -> Result<Engine> {
    device_notice();
    Ok(Engine::new(&proj.cache)?
        .watched_by(Box::new(Console::new(quiet)))
        .with_remote(open_remote(g, proj)?))
}

/// The project's remote cache (`--remote`, `PIPE_REMOTE`, `pipe.toml`), opened; `None`
/// when none is set.
pub(crate) fn open_remote(
    g: &Global,
    proj: &Project,
) -> Result<Option<std::sync::Arc<crate::engine::remote::Remote>>> {
    use crate::engine::remote::{Remote, RemoteConfig};
    match RemoteConfig::resolve(g.remote.as_deref(), &proj.dir)? {
        Some(c) => Ok(Some(std::sync::Arc::new(Remote::open(&c)?))),
        None => Ok(None),
    }
}
