//! `pipe bench`: one file per benchmark, their manifests as files (`benches/manifests/`,
//! embedded so a carried binary has them), and what they share here: a temporary project,
//! `pipe` run as a separate process and timed whole, medians, the machine's description.
//!
//! - `data`: the data stages' throughput and the no-op re-run;
//! - `sweep`: planning a large grid;
//! - `jobs`: a sweep in one process against `-j` workers;
//! - `ui`: the dashboard's pages and live events;
//! - `journal`: `pipe runs` and the journal page over many records, and the record's cost;
//! - `train`: training steps of each engine against PyTorch in alternating rounds (and
//!   `step`, one engine's timed run, what each round runs);
//! - `recipes`: what each training recipe feature adds to a native CPU step;
//! - `parity`: one step of each engine from the same weights;
//! - `predict`: `pipe predict` against PyTorch on the same weights and files.
//!
//! Numbers go to stdout as Markdown tables for `docs/performance.md`; progress to stderr.

mod browser;
mod data;
mod jobs;
mod journal;
mod parity;
mod predict;
mod recipes;
mod remote;
mod sweep;
mod train;
mod ui;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

pub use data::bench_data;
pub use jobs::bench_jobs;
pub use journal::bench_journal;
pub use parity::bench_parity;
pub use predict::{bench_predict, BenchPredict};
pub use recipes::bench_recipes;
pub use remote::bench_remote;
pub use sweep::bench_sweep;
pub use train::{bench_step, bench_train, BenchTrain, StepTiming};
pub use ui::bench_ui;

/// A benchmark's manifest (`benches/manifests/<name>`) with its `{KEY}` placeholders
/// filled in.
fn manifest(name: &str, fill: &[(&str, String)]) -> String {
    let text = match name {
        "data.toml" => include_str!("../../../benches/manifests/data.toml"),
        "grid.toml" => include_str!("../../../benches/manifests/grid.toml"),
        "jobs.toml" => include_str!("../../../benches/manifests/jobs.toml"),
        "tiny.toml" => include_str!("../../../benches/manifests/tiny.toml"),
        "many.toml" => include_str!("../../../benches/manifests/many.toml"),
        "slow.toml" => include_str!("../../../benches/manifests/slow.toml"),
        "predict.toml" => include_str!("../../../benches/manifests/predict.toml"),
        "network.toml" => include_str!("../../../benches/manifests/network.toml"),
        other => unreachable!("no benchmark manifest {other}"),
    };
    fill.iter().fold(text.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

/// A fresh folder for one benchmark's project, removed when dropped (unless kept).
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("pipe-bench-{nanos}"));
        std::fs::create_dir_all(&dir)?;
        // `PIPE_BENCH_KEEP=1`: leave the benchmark's project behind, to look into.
        let keep = std::env::var_os("PIPE_BENCH_KEEP").is_some_and(|v| v == "1");
        if keep {
            eprintln!("keeping the benchmark's folder {}", dir.display());
        }
        Ok(Scratch { dir, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// This very `pipe`, run as a separate process in a project folder and timed whole.
struct Pipe {
    exe: PathBuf,
    project: PathBuf,
}

impl Pipe {
    /// `pipe` in `project` (its `pipelines/` made if missing).
    fn in_project(project: &Path) -> Result<Pipe> {
        std::fs::create_dir_all(project.join("pipelines"))?;
        Ok(Pipe {
            exe: std::env::current_exe().context("finding the pipe executable")?,
            project: project.to_path_buf(),
        })
    }

    /// Write a manifest into the project's `pipelines/`.
    fn write(&self, file: &str, text: &str) -> Result<()> {
        let path = self.project.join("pipelines").join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// A `pipe` command in the project, not started.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args).current_dir(&self.project);
        c
    }

    /// Run `pipe ARGS` to the end: (seconds, stdout). Failing is an error with its stderr.
    fn run(&self, args: &[&str]) -> Result<(f64, Vec<u8>)> {
        self.run_with(args, &[])
    }

    /// Run `pipe ARGS` to the end: (seconds, what it said on stderr).
    fn run_noted(&self, args: &[&str]) -> Result<(f64, String)> {
        let t = Instant::now();
        let out = self.command(args).output()?;
        let secs = t.elapsed().as_secs_f64();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "`pipe {}` failed: {said}",
            args.join(" ")
        );
        Ok((secs, said))
    }

    /// [`Pipe::run`] with variables `env` set for it.
    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<(f64, Vec<u8>)> {
        let mut c = self.command(args);
        c.envs(env.iter().copied());
        let t = Instant::now();
        let out = c.output()?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            out.status.success(),
            "`pipe {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((secs, out.stdout))
    }
}

/// The median (NaN of nothing).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The largest value (0 of nothing).
fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Files below `dir`.
fn count_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        n += match e.file_type()?.is_dir() {
            true => count_files(&e.path())?,
            false => 1,
        };
    }
    Ok(n)
}

/// Peak resident set size of this process (VmHWM), MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A helper script of the benchmarks (`benches/<name>`): beside the sources, or for a
/// binary carried to another machine, beside the working directory.
fn script(name: &str) -> String {
    let beside_sources = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(name);
    if beside_sources.is_file() {
        beside_sources.display().to_string()
    } else {
        format!("benches/{name}")
    }
}

/// The machine a figure was measured on: CPU model, the vector width of our kernels
/// (`PIPE_SIMD`) and of the `gemm` crate's products (feature `avx512`), cache sizes.
pub fn machine_line() -> String {
    use crate::backend::native::cpu::{cache_bytes, gemm_simd_level, simd_level};
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let family = match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!(" (family {f}, model {m})"),
        _ => String::new(),
    };
    let size = |level: usize| {
        cache_bytes(level).map_or("?".to_string(), |b| match b >= 1 << 20 {
            true => format!("{} MiB", b >> 20),
            false => format!("{} KiB", b >> 10),
        })
    };
    let (ours, gemm) = (simd_level(), gemm_simd_level());
    format!(
        "{model}{family}, {} threads; vectors: our kernels {} ({}-bit), gemm {} ({}-bit); L1d {}, L2 {}, L3 {}",
        rayon::current_num_threads(),
        ours.name(),
        ours.bits(),
        gemm.name(),
        gemm.bits(),
        size(1),
        size(2),
        size(3)
    )
}

/// A benchmark network: (graph, input side).
fn network(name: &str) -> Result<(crate::nn::graph::Graph, usize)> {
    match name {
        "mini" => Ok((
            shipped_network(
                include_str!("../../../pipelines/networks/mini_googlenet.toml"),
                "mini_googlenet",
            )?,
            32,
        )),
        "deeper" => Ok((
            shipped_network(
                include_str!("../../../pipelines/networks/deeper_googlenet.toml"),
                "deeper_googlenet",
            )?,
            64,
        )),
        "demo" => Ok((
            shipped_network(include_str!("../../../pipelines/demo.toml"), "demo_net")?,
            32,
        )),
        other => anyhow::bail!("unknown benchmark network `{other}` (mini, deeper, demo)"),
    }
}

/// A network from a shipped network file (embedded, so a carried binary has it).
fn shipped_network(text: &str, name: &str) -> Result<crate::nn::graph::Graph> {
    let scratch = Scratch::new()?;
    let dir = &scratch.dir;
    std::fs::create_dir_all(dir.join("pipelines/networks"))?;
    std::fs::write(dir.join("pipelines/networks/net.toml"), text)?;
    let path = dir.join("pipelines/bench.toml");
    std::fs::write(&path, manifest("network.toml", &[]))?;
    let p = crate::manifest::load(&path, &[], dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(crate::nn::expand(&p.library, name, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .graph)
}

/// One fixed batch: `batch` images of `side` x `side` x 3 and labels cycling through the
/// classes.
fn batch_of(batch: usize, side: usize, classes: usize) -> (Vec<f32>, Vec<i64>) {
    let px = side * side * 3;
    let x: Vec<f32> = (0..batch * px)
        .map(|i| ((i * 7919 % 255) as f32) - 127.0)
        .collect();
    let y: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    (x, y)
}
