//! `pipe bench train` and `pipe bench step`: training steps of each engine (each backend
//! in its own `pipe bench step` process, and PyTorch) on the chapter's networks, in
//! alternating rounds; medians of images/s, peak memory and the ratio to PyTorch within
//! each round.

use std::process::Command;

use anyhow::Result;

use super::{batch_of, machine_line, median, network, peak_rss_mb, script};
use crate::backend::{BackendKind, DeviceKind, Optimizer};

/// One engine's numbers from one timed run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepTiming {
    /// Training images per second over the timed steps.
    pub images_per_sec: f64,
    /// Peak resident memory of the whole process, MB.
    pub peak_rss_mb: f64,
    /// Threads the engine used.
    pub threads: usize,
    /// Peak GPU memory the engine allocated, MB (GPU runs only).
    #[serde(default)]
    pub gpu_mb: Option<f64>,
    /// How the engine ran, when it has variants (PyTorch: eager, channels-last, compiled).
    #[serde(default)]
    pub setting: Option<String>,
}

/// `pipe bench step`: one engine, one network, in this process: a warm-up step, then
/// `steps` timed SGD steps on one fixed batch. Prints [`StepTiming`] as JSON.
pub fn bench_step(
    name: &str,
    backend: BackendKind,
    batch: usize,
    steps: usize,
    device: DeviceKind,
) -> Result<()> {
    let (g, side) = network(name)?;
    let classes = g.infer()?.last().map_or(1, |i| i.shape.numel());
    let mut model = crate::backend::build_with(&g, 0, device, backend)?;
    let (x, y) = batch_of(batch, side, classes);
    let opt = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    // Warm-up: the first step plans and measures; on a GPU the second is captured.
    for s in 0..2 {
        model.train_step(&x, &y, &opt, 1e-2, s)?;
    }
    model.take_stats()?; // waits for the device
    let t = std::time::Instant::now();
    for s in 0..steps {
        model.train_step(&x, &y, &opt, 1e-2, s as u64 + 2)?;
    }
    model.take_stats()?;
    let timing = StepTiming {
        images_per_sec: (batch * steps) as f64 / t.elapsed().as_secs_f64(),
        peak_rss_mb: peak_rss_mb(),
        threads: rayon::current_num_threads(),
        gpu_mb: model.device_bytes().map(|b| b as f64 / 1e6),
        setting: None,
    };
    let prof = model.profile();
    if !prof.is_empty() {
        let total: f64 = prof.iter().map(|(_, v)| v).sum();
        let mut rows = prof.clone();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        eprintln!(
            "| phase / op (PIPE_PROFILE, {backend}, {name}, {} steps incl. warm-up) | seconds | share |",
            steps + 1
        );
        eprintln!("|---|---|---|");
        for (k, v) in rows {
            eprintln!("| {k} | {v:.4} | {:.1} % |", 100.0 * v / total);
        }
    }
    println!("{}", serde_json::to_string(&timing)?);
    Ok(())
}

/// Settings of `pipe bench train`.
pub struct BenchTrain<'a> {
    /// Batch size.
    pub batch: usize,
    /// Timed steps per round.
    pub steps: usize,
    /// Rounds (each runs every engine once, in turn).
    pub rounds: usize,
    /// `mini`, `deeper`.
    pub networks: Vec<&'a str>,
    /// Backends to time.
    pub backends: Vec<BackendKind>,
    /// Python with torch.
    pub python: &'a str,
    /// Device.
    pub device: DeviceKind,
}

/// Run one engine's timed process: its [`StepTiming`], or `None` (said why) when it did
/// not run.
fn timed(cmd: &mut Command, what: &str) -> Option<StepTiming> {
    match cmd.output() {
        Ok(o) if o.status.success() => {
            eprint!("{}", String::from_utf8_lossy(&o.stderr));
            let line = String::from_utf8_lossy(&o.stdout);
            serde_json::from_str(line.lines().last().unwrap_or("")).ok()
        }
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr);
            eprintln!("{what} skipped: {}", why.lines().last().unwrap_or(""));
            None
        }
        Err(e) => {
            eprintln!("{what} skipped: {e}");
            None
        }
    }
}

/// `pipe bench train`: every engine (each backend in its own `pipe bench step` process,
/// and PyTorch) on each network, in alternating rounds; prints medians of images/s, peak
/// RSS and the ratio to PyTorch within each round.
pub fn bench_train(cfg: &BenchTrain<'_>) -> Result<()> {
    for net in &cfg.networks {
        let (engines, results) = rounds_of(cfg, net)?;
        print_table(cfg, net, &engines, &results);
    }
    Ok(())
}

/// Every round of one network: the engines' names (PyTorch last) and each one's timing
/// per round.
#[allow(clippy::type_complexity)]
fn rounds_of(
    cfg: &BenchTrain<'_>,
    net: &str,
) -> Result<(Vec<String>, Vec<Vec<Option<StepTiming>>>)> {
    use crate::backend::native::cpu::{simd_level, SimdLevel};
    let exe = std::env::current_exe()?;
    let dev = cfg.device.to_string();
    let torch = script("googlenet_torch.py");
    let mut engines: Vec<String> = cfg.backends.iter().map(|b| format!("pipe {b}")).collect();
    engines.push("PyTorch".into());
    let mut results: Vec<Vec<Option<StepTiming>>> = vec![Vec::new(); engines.len()];
    for round in 0..cfg.rounds {
        eprintln!("bench train: {net}, round {}/{}", round + 1, cfg.rounds);
        for (e, b) in cfg.backends.iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "step", "--network", net, "--backend"])
                .arg(b.to_string())
                .args(["--batch", &cfg.batch.to_string()])
                .args(["--steps", &cfg.steps.to_string()])
                .args(["--device", &dev]);
            results[e].push(timed(&mut cmd, &engines[e]));
        }
        let mut cmd = Command::new(cfg.python);
        let (batch, steps) = (cfg.batch.to_string(), cfg.steps.to_string());
        cmd.args([torch.as_str(), net, &batch, &steps, &dev]);
        // Our kernels capped at AVX2 (PIPE_SIMD=avx2, as on an AVX2-only machine):
        // PyTorch's oneDNN and ATen kernels capped the same way.
        let capped = simd_level() == SimdLevel::Avx2 && cfg.device == DeviceKind::Cpu;
        if capped {
            cmd.env("DNNL_MAX_CPU_ISA", "AVX2")
                .env("ATEN_CPU_CAPABILITY", "avx2");
        }
        let last = engines.len() - 1;
        let r = timed(&mut cmd, "PyTorch");
        if let Some(s) = r.as_ref().and_then(|r| r.setting.clone()) {
            let cap = if capped { ", capped at AVX2" } else { "" };
            engines[last] = format!("PyTorch ({s}{cap})");
        }
        results[last].push(r);
    }
    Ok((engines, results))
}

/// One network's table: per engine its median, its rounds, memory and the median of its
/// per-round ratio to PyTorch.
fn print_table(
    cfg: &BenchTrain<'_>,
    net: &str,
    engines: &[String],
    results: &[Vec<Option<StepTiming>>],
) {
    let torch = &results[engines.len() - 1];
    println!(
        "\n{net}: batch {}, {} timed steps after 1 warm-up, {} rounds, {} ({} threads)\nmachine: {}",
        cfg.batch,
        cfg.steps,
        cfg.rounds,
        cfg.device,
        rayon::current_num_threads(),
        machine_line()
    );
    println!("| engine | images/s (median) | per round | peak RSS (MB) | peak GPU memory (MB) | ratio to PyTorch (median of rounds) |");
    println!("|---|---|---|---|---|---|");
    let or_dash = |v: Vec<f64>, digits: usize| match v.is_empty() {
        true => "-".to_string(),
        false => format!("{:.digits$}", median(v)),
    };
    for (e, name) in engines.iter().enumerate() {
        let ok: Vec<&StepTiming> = results[e].iter().flatten().collect();
        if ok.is_empty() {
            println!("| {name} | - | - | - | - | - |");
            continue;
        }
        let per_round: Vec<String> = ok
            .iter()
            .map(|t| format!("{:.1}", t.images_per_sec))
            .collect();
        let ratios: Vec<f64> = results[e]
            .iter()
            .zip(torch)
            .filter_map(|(a, b)| Some(a.as_ref()?.images_per_sec / b.as_ref()?.images_per_sec))
            .collect();
        println!(
            "| {name} | {:.1} | {} | {:.0} | {} | {} |",
            median(ok.iter().map(|t| t.images_per_sec).collect()),
            per_round.join(", "),
            median(ok.iter().map(|t| t.peak_rss_mb).collect()),
            or_dash(ok.iter().filter_map(|t| t.gpu_mb).collect(), 0),
            or_dash(ratios, 2)
        );
    }
}
