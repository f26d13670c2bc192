//! The CLI verbs, as library functions (`main.rs` only parses arguments): one file per
//! verb, benchmarks in `bench`. A verb loads what it needs, asks the engine, and hands the
//! answer to `report` to print.

mod bench;
mod dag;
mod data;
mod diff;
mod export;
mod gc;
mod graph;
mod predict;
mod run;
mod show;
mod status;
mod ui;
mod verify;

use std::path::PathBuf;

use anyhow::Result;

use crate::engine::Project;
use crate::manifest::Pipeline;

pub use bench::{
    bench_data, bench_parity, bench_predict, bench_step, bench_sweep, bench_train, bench_ui,
    BenchPredict, BenchTrain, StepTiming,
};
pub use dag::dag;
pub use data::{demo_data, DemoLayout};
pub use diff::diff;
pub use export::export;
pub use gc::gc;
pub use graph::graph;
pub use predict::{predict, PredictFormat, PredictOptions};
pub use run::{run, run_stage, run_with, sweep_promote};
pub use show::{show, ShowFormat};
pub use status::status;
pub use ui::ui;
pub use verify::verify;

/// Options shared by every verb.
#[derive(Debug, Clone, Default)]
pub struct Global {
    /// `--cache DIR`.
    pub cache: Option<PathBuf>,
}

fn load(g: &Global, pipeline: &str, sets: &[String]) -> Result<(Project, Pipeline)> {
    let discovered = Project::discover(g.cache.clone())?;
    discovered.load(pipeline, sets)
}
