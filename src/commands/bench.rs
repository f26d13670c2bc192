//! `pipe bench`: the data stages' throughput, training steps of each engine against
//! PyTorch in alternating rounds, and parity of one step across engines.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::data::synthetic;

/// `pipe bench data`: generate a Tiny-ImageNet-shaped tree of 64x64 JPEGs, time a cold
/// `pipe run` (ingest + split + hdf5) and then no-op re-runs, each as a separate process.
pub fn bench_data(
    classes: usize,
    per_class: usize,
    val_per_class: usize,
    keep: Option<&Path>,
) -> Result<()> {
    let tmp = tempdir_in_target()?;
    let base = keep.map(|k| k.to_path_buf()).unwrap_or_else(|| tmp.clone());
    let root = base.join("tiny-imagenet");
    let proj = base.join("project");
    std::fs::create_dir_all(proj.join("pipelines"))?;
    if !root.join("wnids.txt").is_file() {
        eprintln!(
            "generating {} images...",
            classes * (per_class + val_per_class)
        );
        synthetic::write_tiny_imagenet(&root, classes, per_class, val_per_class, 64, 1)?;
    }
    let files = count_files(&root)?;
    let test_per_class = (per_class / 10).max(1);
    std::fs::write(
        proj.join("pipelines/bench.toml"),
        format!(
            "[stages.ingest]\nformat = \"tiny-imagenet\"\nroot = \"{}\"\n\n[stages.split]\ninput = \"ingest\"\ntest_per_class = {test_per_class}\n\n[stages.hdf5]\ninput = \"split\"\nsize = [64, 64]\n",
            root.display()
        ),
    )?;
    let _ = std::fs::remove_dir_all(proj.join(".pipe"));
    let exe = std::env::current_exe()?;
    let run = || -> Result<f64> {
        let t = std::time::Instant::now();
        let out = std::process::Command::new(&exe)
            .args(["run", "bench", "--json"])
            .current_dir(&proj)
            .output()?;
        if !out.status.success() {
            anyhow::bail!("bench run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t.elapsed().as_secs_f64())
    };
    // Drop the page cache effect of generation as far as we can without root tricks:
    // the first run reads files the generator just wrote (warm cache), as a re-run would.
    let cold = run()?;
    let images = classes * (per_class + val_per_class);
    let mut noop = Vec::new();
    for _ in 0..5 {
        noop.push(run()?);
    }
    noop.sort_by(|a, b| a.total_cmp(b));
    let threads = rayon::current_num_threads();
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| tree | {files} files, {images} JPEGs 64x64, {classes} classes |");
    println!("| threads | {threads} |");
    println!("| first run (ingest+split+hdf5) | {cold:.2} s |");
    println!("| throughput | {:.0} images/s |", images as f64 / cold);
    println!(
        "| no-op re-run (median of 5, whole process) | {:.3} s (min {:.3}, max {:.3}) |",
        noop[2], noop[0], noop[4]
    );
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// `pipe bench sweep`: a grid of `values`³ points over the demo pipeline (`train.lr` x
/// `drop.lr` x `train.batch_size`), its data stages run once so that every key can be
/// computed, then `pipe run <grid> --dry-run --json` timed as whole processes (median of
/// `rounds`), checking that every stage of every point is planned: by its key where its
/// inputs are stored, else by its recipe.
pub fn bench_sweep(values: usize, rounds: usize) -> Result<()> {
    anyhow::ensure!(values >= 1, "--values must be at least 1");
    let rounds = rounds.max(1);
    let points = values.pow(3);
    let tmp = tempdir_in_target()?;
    let proj = tmp.join("project");
    std::fs::create_dir_all(proj.join("pipelines"))?;
    std::fs::write(
        proj.join("pipelines/demo.toml"),
        include_str!("../../pipelines/demo.toml"),
    )?;
    let axis = |f: &dyn Fn(usize) -> String| (1..=values).map(f).collect::<Vec<_>>().join(", ");
    std::fs::write(
        proj.join("pipelines/grid.toml"),
        format!(
            "extends = \"demo.toml\"\nname = \"grid\"\n\n[sweep]\nmax_points = {points}\n\n[sweep.grid]\n\"train.lr\" = [{}]\n\"drop.lr\" = [{}]\n\"train.batch_size\" = [{}]\n",
            axis(&|i| format!("{i}e-3")),
            axis(&|i| format!("{i}e-4")),
            axis(&|i| (8 * i).to_string()),
        ),
    )?;
    let exe = std::env::current_exe()?;
    let pipe = |args: &[&str]| -> Result<(f64, Vec<u8>)> {
        let t = std::time::Instant::now();
        let out = std::process::Command::new(&exe)
            .args(args)
            .current_dir(&proj)
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            anyhow::bail!(
                "`pipe {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((secs, out.stdout))
    };
    eprintln!("running the demo's data stages once...");
    pipe(&["run", "demo", "--until", "hdf5"])?;
    let mut times = Vec::new();
    let mut plan = serde_json::Value::Null;
    for _ in 0..rounds {
        let (secs, out) = pipe(&["run", "grid", "--dry-run", "--json"])?;
        times.push(secs);
        plan = serde_json::from_slice(&out)?;
    }
    let mut shows = Vec::new();
    for _ in 0..rounds {
        shows.push(pipe(&["show", "grid", "--csv"])?.0);
    }
    let stages = plan["stages"].as_array().cloned().unwrap_or_default();
    let keyed = stages
        .iter()
        .filter(|s| s["outcome"]["key"].is_string())
        .count();
    let recipes = stages.iter().filter(|s| s["recipe"].is_string()).count();
    let per_point: usize = stages
        .iter()
        .map(|s| s["points"].as_array().map_or(0, Vec::len))
        .sum();
    let planned = plan["points"].as_array().map_or(0, Vec::len);
    let _ = std::fs::remove_dir_all(&tmp);
    anyhow::ensure!(
        planned == points,
        "planned {planned} points, expected {points}"
    );
    anyhow::ensure!(
        keyed + recipes == stages.len(),
        "{} of {} distinct stages have neither a key nor a recipe",
        stages.len() - keyed - recipes,
        stages.len()
    );
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| points | {points} ({values} x {values} x {values} grid over the demo) |");
    println!(
        "| stages planned | {per_point} (6 per point) as {} distinct stages: {keyed} keys computed (every stage whose inputs are stored), {recipes} recipes (inputs not built yet) |",
        stages.len()
    );
    println!(
        "| `pipe run grid --dry-run --json`, whole process (median of {rounds}) | {:.3} s (min {:.3}, max {:.3}) |",
        median(times),
        sorted[0],
        sorted[sorted.len() - 1]
    );
    println!(
        "| `pipe show grid --csv` (one row per point), whole process (median of {rounds}) | {:.3} s |",
        median(shows)
    );
    Ok(())
}

/// The tiny pipeline `pipe bench ui` runs many times: generated 16x16 images, one short
/// training segment and an evaluation.
const BENCH_UI_TINY: &str = r#"name = "tiny"
seed = 3

[stages.ingest]
format = "synthetic"
classes = 3
train_per_class = 12
val_per_class = 6
image_size = [16, 16]

[stages.hdf5]
input = "ingest"

[networks.tiny]
input = [16, 16, 3]
classes = 3
layers = [
  { conv2d = { filters = 4, kernel = 3 } },
  { relu = {} },
  { global_avgpool = {} },
  { dense = "$classes" },
  { softmax = {} },
]

[stages.train]
input = "hdf5"
network = "tiny"
epochs = 1
batch_size = 8
lr = 0.01

[stages.evaluate]
input = "train"
split = "val"
top_k = [1, 2]
"#;

/// A raw HTTP GET on loopback: (seconds to the last byte, status, body bytes).
fn http_get(host: &str, path: &str) -> Result<(f64, u16, usize)> {
    use std::io::{Read, Write};
    let t = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(host)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((secs, status, buf.len()))
}

/// `pipe bench ui`: a store of `runs` runs (a random sweep over a tiny pipeline, every
/// point trained), served by `pipe ui`; the runs page and `/api/runs` timed over `rounds`
/// requests each; then a training in another process, and for each epoch how long after
/// its `history.json` was written the open page's event arrived, and the chart it fetches.
pub fn bench_ui(runs: usize, rounds: usize) -> Result<()> {
    use std::io::{BufRead, BufReader};
    anyhow::ensure!(runs >= 2, "--runs must be at least 2");
    let tmp = tempdir_in_target()?;
    let proj = tmp.join("project");
    std::fs::create_dir_all(proj.join("pipelines"))?;
    std::fs::write(proj.join("pipelines/tiny.toml"), BENCH_UI_TINY)?;
    std::fs::write(
        proj.join("pipelines/many.toml"),
        format!(
            "extends = \"tiny.toml\"\nname = \"many\"\n\n[sweep]\nmax_points = {runs}\n\n[sweep.random]\nsamples = {runs}\nseed = 1\n\"train.lr\" = {{ log_uniform = [1e-4, 1e-1] }}\n\"train.batch_size\" = {{ int_uniform = [2, 64] }}\n"
        ),
    )?;
    std::fs::write(
        proj.join("pipelines/slow.toml"),
        concat!(
            "extends = \"tiny.toml\"\nname = \"slow\"\n\n[stages.ingest]\ntrain_per_class = 1000\n",
            "image_size = [32, 32]\n\n[networks.wide]\ninput = [32, 32, 3]\nclasses = 3\nlayers = [\n",
            "  { conv2d = { filters = 32, kernel = 3 } },\n  { relu = {} },\n",
            "  { conv2d = { filters = 32, kernel = 3 } },\n  { relu = {} },\n",
            "  { global_avgpool = {} },\n  { dense = \"$classes\" },\n  { softmax = {} },\n]\n\n",
            "[stages.train]\nnetwork = \"wide\"\nepochs = 12\nbatch_size = 32\n",
        ),
    )?;
    let exe = std::env::current_exe()?;
    let pipe = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new(&exe)
            .args(args)
            .current_dir(&proj)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "`pipe {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    eprintln!("training {runs} runs (a random sweep over a tiny pipeline)...");
    let t = std::time::Instant::now();
    pipe(&["run", "many"])?;
    eprintln!("  {:.1} s", t.elapsed().as_secs_f64());
    pipe(&["run", "slow", "--until", "hdf5"])?;
    let mut server = std::process::Command::new(&exe)
        .args(["ui", "--port", "0"])
        .current_dir(&proj)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut banner = String::new();
    BufReader::new(server.stdout.take().expect("piped")).read_line(&mut banner)?;
    let host = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .map(|h| h.trim_end_matches('/').to_string())
        .ok_or_else(|| anyhow::anyhow!("no URL in `{banner}`"))?;
    let result = (|| -> Result<()> {
        let mut page = Vec::new();
        let mut api = Vec::new();
        let mut bytes = 0;
        for _ in 0..rounds.max(1) {
            let (s, status, n) = http_get(&host, "/")?;
            anyhow::ensure!(status == 200, "GET / answered {status}");
            page.push(s);
            bytes = n;
            api.push(http_get(&host, "/api/runs")?.0);
        }
        // Live: the events of `slow` while another process trains it.
        let mut trainer = std::process::Command::new(&exe)
            .args(["run", "slow"])
            .current_dir(&proj)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut s = std::net::TcpStream::connect(&host)?;
        {
            use std::io::Write;
            write!(
                s,
                "GET /api/runs/slow/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
            )?;
        }
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let began = std::time::Instant::now();
        let scratch = proj.join(".pipe/scratch");
        let mut lat = Vec::new();
        let mut svg = Vec::new();
        let mut last = 0;
        let mut reader = BufReader::new(s);
        loop {
            anyhow::ensure!(
                began.elapsed() < std::time::Duration::from_secs(300),
                "`slow` did not finish within 300 s"
            );
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                // Quiet for a while (between epochs): look whether the trainer ended.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if trainer.try_wait()?.is_some() {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let line = line.trim_end();
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let arrived = std::time::SystemTime::now();
            let v: serde_json::Value = serde_json::from_str(data)?;
            let epochs = v["epochs"].as_u64().unwrap_or(0);
            let running = v["live"]["running"] == true;
            if epochs > last && running {
                // When the epoch was written: the newest history.json in the scratch.
                let written = std::fs::read_dir(&scratch)?
                    .flatten()
                    .filter_map(|e| std::fs::metadata(e.path().join("history.json")).ok())
                    .filter_map(|m| m.modified().ok())
                    .max();
                if let Some(w) = written {
                    if last > 0 {
                        lat.push(arrived.duration_since(w).unwrap_or_default().as_secs_f64());
                        svg.push(http_get(&host, "/run/slow/curves.svg")?.0);
                    }
                }
                last = epochs;
            }
            if lat.len() >= 10 || trainer.try_wait()?.is_some() {
                break;
            }
        }
        let _ = trainer.kill();
        let _ = trainer.wait();
        anyhow::ensure!(
            !lat.is_empty(),
            "no epoch event arrived while `slow` trained"
        );
        let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        println!("| measurement | value |");
        println!("|---|---|");
        println!("| runs | {runs} (a random sweep over a tiny pipeline, every point trained and evaluated) |");
        println!(
            "| `GET /` (the runs page, {} KiB), median of {} | {:.1} ms (max {:.1} ms) |",
            bytes / 1024,
            page.len(),
            1e3 * median(page.clone()),
            1e3 * max(&page)
        );
        println!(
            "| `GET /api/runs`, median of {} | {:.1} ms (max {:.1} ms) |",
            api.len(),
            1e3 * median(api.clone()),
            1e3 * max(&api)
        );
        println!(
            "| epoch written -> its event at an open page, median of {} epochs | {:.0} ms (max {:.0} ms) |",
            lat.len(),
            1e3 * median(lat.clone()),
            1e3 * max(&lat)
        );
        println!(
            "| then the page's chart (`GET /run/slow/curves.svg`), median | {:.1} ms (max {:.1} ms) |",
            1e3 * median(svg.clone()),
            1e3 * max(&svg)
        );
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&tmp);
    result
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
        cache_bytes(level).map_or("?".to_string(), |b| {
            if b >= 1 << 20 {
                format!("{} MiB", b >> 20)
            } else {
                format!("{} KiB", b >> 10)
            }
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

fn tempdir_in_target() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let p = std::env::temp_dir().join(format!("pipe-bench-{nanos}"));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

fn count_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            n += count_files(&e.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

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

/// A benchmark network: (graph, input side).
fn bench_network(name: &str) -> Result<(crate::nn::graph::Graph, usize)> {
    match name {
        "mini" => Ok((
            shipped_network(
                include_str!("../../pipelines/networks/mini_googlenet.toml"),
                "mini_googlenet",
            )?,
            32,
        )),
        "deeper" => Ok((
            shipped_network(
                include_str!("../../pipelines/networks/deeper_googlenet.toml"),
                "deeper_googlenet",
            )?,
            64,
        )),
        "demo" => Ok((
            shipped_network(include_str!("../../pipelines/demo.toml"), "demo_net")?,
            32,
        )),
        other => anyhow::bail!("unknown benchmark network `{other}` (mini, deeper, demo)"),
    }
}

/// `pipe bench step`: one engine, one network, in this process: a warm-up step, then
/// `steps` timed SGD steps on one fixed batch. Prints [`StepTiming`] as JSON.
pub fn bench_step(
    network: &str,
    backend: crate::backend::BackendKind,
    batch: usize,
    steps: usize,
    device: crate::backend::DeviceKind,
) -> Result<()> {
    let (g, side) = bench_network(network)?;
    let classes = g.infer()?.last().map_or(1, |i| i.shape.numel());
    let mut model = crate::backend::build_with(&g, 0, device, backend)?;
    let (x, y) = bench_batch(batch, side, classes);
    let opt = crate::backend::Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
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
            "| phase / op (PIPE_PROFILE, {backend}, {network}, {} steps incl. warm-up) | seconds | share |",
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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
    pub backends: Vec<crate::backend::BackendKind>,
    /// Python with torch.
    pub python: &'a str,
    /// Device.
    pub device: crate::backend::DeviceKind,
}

/// `pipe bench train`: every engine (each backend in its own `pipe bench step` process,
/// and PyTorch) on each network, in alternating rounds; prints medians of images/s, peak
/// RSS and the ratio to PyTorch within each round.
pub fn bench_train(cfg: &BenchTrain<'_>) -> Result<()> {
    use crate::backend::DeviceKind;
    let exe = std::env::current_exe()?;
    let dev = match cfg.device {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/googlenet_torch.py");
    let script = if std::path::Path::new(script).is_file() {
        script.to_string()
    } else {
        // A binary carried to another machine: the script beside the working directory.
        "benches/googlenet_torch.py".to_string()
    };
    let run = |cmd: &mut std::process::Command, what: &str| -> Option<StepTiming> {
        match cmd.output() {
            Ok(o) if o.status.success() => {
                eprint!("{}", String::from_utf8_lossy(&o.stderr));
                let line = String::from_utf8_lossy(&o.stdout);
                serde_json::from_str(line.lines().last().unwrap_or("")).ok()
            }
            Ok(o) => {
                eprintln!(
                    "{what} skipped: {}",
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                None
            }
            Err(e) => {
                eprintln!("{what} skipped: {e}");
                None
            }
        }
    };
    for net in &cfg.networks {
        let mut engines: Vec<String> = cfg.backends.iter().map(|b| format!("pipe {b}")).collect();
        engines.push("PyTorch".into());
        let mut results: Vec<Vec<Option<StepTiming>>> = vec![Vec::new(); engines.len()];
        for round in 0..cfg.rounds {
            eprintln!("bench train: {net}, round {}/{}", round + 1, cfg.rounds);
            for (e, b) in cfg.backends.iter().enumerate() {
                let mut cmd = std::process::Command::new(&exe);
                cmd.args(["bench", "step", "--network", net, "--backend"])
                    .arg(b.to_string())
                    .args(["--batch", &cfg.batch.to_string()])
                    .args(["--steps", &cfg.steps.to_string()])
                    .args(["--device", dev]);
                results[e].push(run(&mut cmd, &engines[e]));
            }
            let mut cmd = std::process::Command::new(cfg.python);
            cmd.args([
                script.as_str(),
                net,
                &cfg.batch.to_string(),
                &cfg.steps.to_string(),
                dev,
            ]);
            // Our kernels capped at AVX2 (PIPE_SIMD=avx2, as on an AVX2-only machine):
            // PyTorch's oneDNN and ATen kernels capped the same way.
            use crate::backend::native::cpu::{simd_level, SimdLevel};
            let capped = simd_level() == SimdLevel::Avx2 && dev == "cpu";
            if capped {
                cmd.env("DNNL_MAX_CPU_ISA", "AVX2")
                    .env("ATEN_CPU_CAPABILITY", "avx2");
            }
            let last = engines.len() - 1;
            let r = run(&mut cmd, "PyTorch");
            if let Some(s) = r.as_ref().and_then(|r| r.setting.clone()) {
                let cap = if capped { ", capped at AVX2" } else { "" };
                engines[last] = format!("PyTorch ({s}{cap})");
            }
            results[last].push(r);
        }
        let torch = &results[engines.len() - 1];
        println!(
            "\n{net}: batch {}, {} timed steps after 1 warm-up, {} rounds, {dev} ({} threads)\nmachine: {}",
            cfg.batch,
            cfg.steps,
            cfg.rounds,
            rayon::current_num_threads(),
            machine_line()
        );
        println!("| engine | images/s (median) | per round | peak RSS (MB) | peak GPU memory (MB) | ratio to PyTorch (median of rounds) |");
        println!("|---|---|---|---|---|---|");
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
            let gpu: Vec<f64> = ok.iter().filter_map(|t| t.gpu_mb).collect();
            println!(
                "| {name} | {:.1} | {} | {:.0} | {} | {} |",
                median(ok.iter().map(|t| t.images_per_sec).collect()),
                per_round.join(", "),
                median(ok.iter().map(|t| t.peak_rss_mb).collect()),
                if gpu.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.0}", median(gpu))
                },
                if ratios.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.2}", median(ratios))
                }
            );
        }
    }
    Ok(())
}

/// `pipe bench parity`: one MiniGoogLeNet SGD step and one Adam step from the same
/// weights on the same batch, on native-CPU (the reference), native-CUDA and dfdx-CUDA;
/// compares the losses and the updated weights. Engines this build or machine lacks are
/// listed as unavailable; any available one off by more than 1e-3 relative fails.
pub fn bench_parity(batch: usize) -> Result<()> {
    use crate::backend::{BackendKind, DeviceKind, Optimizer};
    let (g, side) = bench_network("mini")?;
    let (x, y) = bench_batch(batch, side, 10);
    let engines = [
        ("native CPU", BackendKind::Native, DeviceKind::Cpu),
        ("native CUDA", BackendKind::Native, DeviceKind::Cuda),
        ("dfdx CUDA", BackendKind::Dfdx, DeviceKind::Cuda),
    ];
    let optimizers = [
        Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
        },
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        },
    ];
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
    let mut worst = 0f64;
    let mut compared = 0;
    println!("| step | engine | loss | weight sum | weight abs-sum | rel. diff to native CPU (loss, sum, abs-sum) |");
    println!("|---|---|---|---|---|---|");
    for opt in &optimizers {
        let kind = match opt {
            Optimizer::Sgd { .. } => "SGD",
            Optimizer::Adam { .. } => "Adam",
        };
        let mut reference: Option<(f64, f64, f64)> = None;
        for (name, backend, device) in engines {
            let run = || -> Result<(f64, f64, f64)> {
                let mut m = crate::backend::build_with(&g, 0, device, backend)?;
                let s = m.train_step(&x, &y, opt, 1e-2, 7)?;
                let loss = match m.take_stats()? {
                    Some((sum, _)) => sum / batch as f64,
                    None => s.loss,
                };
                let (mut sum, mut abs) = (0f64, 0f64);
                for (k, t) in &m.state().tensors {
                    if !k.starts_with("opt/") {
                        for v in &t.data {
                            sum += *v as f64;
                            abs += v.abs() as f64;
                        }
                    }
                }
                Ok((loss, sum, abs))
            };
            match run() {
                Ok(r) => {
                    let diff = match reference {
                        None => {
                            reference = Some(r);
                            "(reference)".to_string()
                        }
                        Some(c) => {
                            let d = [rel(c.0, r.0), rel(c.1, r.1), rel(c.2, r.2)];
                            compared += 1;
                            worst = d.iter().copied().fold(worst, f64::max);
                            format!("{:.2e}, {:.2e}, {:.2e}", d[0], d[1], d[2])
                        }
                    };
                    println!(
                        "| {kind} | {name} | {:.6} | {:.6} | {:.6} | {diff} |",
                        r.0, r.1, r.2
                    );
                }
                Err(e) => println!(
                    "| {kind} | {name} | unavailable: {} | | | |",
                    format!("{e:#}")
                        .lines()
                        .next()
                        .unwrap_or("")
                        .replace('|', "/")
                ),
            }
        }
    }
    if compared == 0 {
        println!("\nparity: NOT CHECKED (no GPU engine ran)");
        anyhow::bail!("no GPU engine could run, so nothing was compared");
    }
    println!(
        "\nworst relative difference over {compared} comparisons: {worst:.2e} ({})",
        if worst < 1e-3 {
            "parity: OK (< 1e-3)"
        } else {
            "parity: FAILED"
        }
    );
    if worst >= 1e-3 {
        anyhow::bail!("the engines differ by {worst:.2e} (> 1e-3)");
    }
    Ok(())
}

fn bench_batch(batch: usize, side: usize, classes: usize) -> (Vec<f32>, Vec<i64>) {
    let px = side * side * 3;
    let x: Vec<f32> = (0..batch * px)
        .map(|i| ((i * 7919 % 255) as f32) - 127.0)
        .collect();
    let y: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    (x, y)
}

/// A network from a shipped network file (embedded, so a carried binary has it).
fn shipped_network(text: &str, name: &str) -> Result<crate::nn::graph::Graph> {
    let dir = tempdir_in_target()?;
    std::fs::create_dir_all(dir.join("pipelines/networks"))?;
    std::fs::write(dir.join("pipelines/networks/net.toml"), text)?;
    let manifest = dir.join("pipelines/bench.toml");
    std::fs::write(
        &manifest,
        "include = [\"networks/net.toml\"]\n[stages.ingest]\nformat = \"synthetic\"\n",
    )?;
    let loaded = crate::manifest::load(&manifest, &[], &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let p = loaded.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(crate::nn::expand(&p.library, name, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .graph)
}

/// Settings of `pipe bench predict`.
pub struct BenchPredict<'a> {
    /// Images to classify.
    pub images: usize,
    /// Images per forward pass.
    pub batch: usize,
    /// Rounds (each runs both engines, in turn).
    pub rounds: usize,
    /// Python with torch, numpy, pillow and safetensors.
    pub python: &'a str,
}

/// `pipe bench predict`: MiniGoogLeNet trained by a small pipeline, then `images` new
/// 32x32 JPEGs classified by `pipe predict` (a separate process, timed whole) and by
/// PyTorch (`benches/predict_torch.py`, the same weights, timed from the first file opened)
/// in alternating rounds; also each engine's forward passes alone on decoded batches.
/// Prints medians and the ratio to PyTorch within each round, and checks that both give
/// the same top-1 class for every image.
pub fn bench_predict(cfg: &BenchPredict<'_>) -> Result<()> {
    use rayon::prelude::*;
    anyhow::ensure!(cfg.images >= 1, "--images must be at least 1");
    let exe = std::env::current_exe()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/predict_torch.py");
    let script = if Path::new(script).is_file() {
        script.to_string()
    } else {
        "benches/predict_torch.py".to_string()
    };
    let tmp = tempdir_in_target()?;
    let result = (|| -> Result<()> {
        let proj = tmp.join("project");
        std::fs::create_dir_all(proj.join("pipelines/networks"))?;
        std::fs::write(
            proj.join("pipelines/networks/mini_googlenet.toml"),
            include_str!("../../pipelines/networks/mini_googlenet.toml"),
        )?;
        std::fs::write(
            proj.join("pipelines/bench.toml"),
            concat!(
                "include = [\"networks/mini_googlenet.toml\"]\nname = \"bench\"\n\n",
                "[stages.ingest]\nformat = \"synthetic\"\nclasses = 10\ntrain_per_class = 6\n",
                "val_per_class = 2\nimage_size = [32, 32]\n\n[stages.hdf5]\ninput = \"ingest\"\n\n",
                "[stages.train]\ninput = \"hdf5\"\nnetwork = \"mini_googlenet\"\nepochs = 2\n",
                "batch_size = 20\nlr = 0.01\n",
            ),
        )?;
        eprintln!("bench predict: training MiniGoogLeNet briefly (a small synthetic pipeline)...");
        let out = std::process::Command::new(&exe)
            .args(["run", "bench"])
            .current_dir(&proj)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "`pipe run bench` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // New images: 10 folders of smooth random 32x32 JPEGs.
        eprintln!("bench predict: writing {} 32x32 JPEGs...", cfg.images);
        let dir = proj.join("images");
        (0..cfg.images)
            .into_par_iter()
            .try_for_each(|i| -> Result<()> {
                let sub = dir.join(format!("c{}", i % 10));
                std::fs::create_dir_all(&sub)?;
                let mut s = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut next = move || {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 24) as f32
                };
                let (a, b, c) = (next() * 0.6, next() * 0.6, next() * 6.0);
                let base = [next() * 255.0, next() * 255.0, next() * 255.0];
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let v = ((x as f32 * a + y as f32 * b + c).sin() * 0.5 + 0.5) * 255.0;
                    image::Rgb(std::array::from_fn(|k| {
                        ((base[k] + v) * 0.5 + next() * 24.0).clamp(0.0, 255.0) as u8
                    }))
                });
                img.save(sub.join(format!("{i:06}.jpg")))?;
                Ok(())
            })?;
        let paths = super::predict::collect_inputs(&[dir.display().to_string()])?;
        let list = tmp.join("images.txt");
        std::fs::write(
            &list,
            paths
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect::<String>(),
        )?;
        // The trained stage, for the in-process forward timing and the torch script.
        let project = crate::engine::Project::at(proj.clone(), None);
        let (_, pipeline) = project.load("bench", &[])?;
        let trained = crate::engine::Engine::read_only(&project.cache).trained(&pipeline, None)?;
        let (graph, _) = bench_network("mini")?;
        let order: Vec<(String, &str)> = graph
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                crate::nn::graph::Op::Conv2d { .. } => Some((n.name.clone(), "conv2d")),
                crate::nn::graph::Op::BatchNorm { .. } => Some((n.name.clone(), "batchnorm")),
                crate::nn::graph::Op::Dense { .. } => Some((n.name.clone(), "dense")),
                _ => None,
            })
            .collect();
        let order_file = tmp.join("order.json");
        std::fs::write(&order_file, serde_json::to_string(&order)?)?;
        let mut predictor = crate::stages::predict::Predictor::load(
            &trained.model_dir,
            &trained.data_dir,
            trained.filter,
            crate::backend::DeviceKind::Cpu,
        )?;
        let (size, filter) = (predictor.size, predictor.filter);
        let decoded: Vec<Vec<u8>> = paths
            .par_iter()
            .map(|p| crate::stages::predict::prepare_image(p, size, filter))
            .collect::<Result<_>>()?;
        let n = paths.len() as f64;
        // Engines: pipe, then PyTorch eager and compiled. Per engine and round: end to
        // end and forward-only images/s (None: the engine did not run that round).
        let mut names = vec!["pipe predict (native)".to_string()];
        let modes = ["eager", "compile"];
        names.extend(modes.iter().map(|m| format!("PyTorch {m}")));
        let mut e2e: Vec<Vec<Option<f64>>> = vec![Vec::new(); names.len()];
        let mut fwd: Vec<Vec<Option<f64>>> = vec![Vec::new(); names.len()];
        let mut notes: Vec<String> = Vec::new();
        let mut agreement: Vec<String> = Vec::new();
        let read = |f: &Path| -> Result<std::collections::HashMap<String, (u64, f64)>> {
            std::fs::read_to_string(f)?
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l)?;
                    let (label, p) = match v.get("top") {
                        Some(t) => (t[0]["label"].as_u64(), t[0]["p"].as_f64()),
                        None => (v["label"].as_u64(), v["p"].as_f64()),
                    };
                    Ok((
                        v["path"].as_str().unwrap_or("").to_string(),
                        (label.unwrap_or(u64::MAX), p.unwrap_or(f64::NAN)),
                    ))
                })
                .collect()
        };
        let rounds = cfg.rounds.max(1);
        for round in 0..rounds {
            eprintln!("bench predict: round {}/{rounds}", round + 1);
            // pipe predict, the whole process.
            let pipe_out = tmp.join("pipe.jsonl");
            let t = std::time::Instant::now();
            let o = std::process::Command::new(&exe)
                .args(["predict", "bench", "--json", "--top-k", "1", "--batch"])
                .arg(cfg.batch.to_string())
                .arg(&dir)
                .current_dir(&proj)
                .stdout(std::fs::File::create(&pipe_out)?)
                .stderr(std::process::Stdio::piped())
                .output()?;
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(
                o.status.success(),
                "`pipe predict` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            e2e[0].push(Some(n / secs));
            // pipe's forward passes alone, in this process.
            let t = std::time::Instant::now();
            for chunk in decoded.chunks(cfg.batch.max(1)) {
                std::hint::black_box(predictor.predict(chunk)?);
            }
            fwd[0].push(Some(n / t.elapsed().as_secs_f64()));
            let ours = read(&pipe_out)?;
            anyhow::ensure!(
                ours.len() == paths.len(),
                "pipe wrote {} rows for {} images",
                ours.len(),
                paths.len()
            );
            for (m, mode) in modes.iter().enumerate() {
                let e = m + 1;
                let torch_out = tmp.join("torch.jsonl");
                let o = std::process::Command::new(cfg.python)
                    .arg(&script)
                    .arg("mini")
                    .arg(&trained.model_dir)
                    .arg(&order_file)
                    .arg(&list)
                    .arg(cfg.batch.to_string())
                    .arg(&torch_out)
                    .arg(mode)
                    .output()?;
                let v: Option<serde_json::Value> = o
                    .status
                    .success()
                    .then(|| {
                        serde_json::from_str(
                            String::from_utf8_lossy(&o.stdout)
                                .lines()
                                .last()
                                .unwrap_or(""),
                        )
                        .ok()
                    })
                    .flatten();
                let Some(v) = v else {
                    eprintln!(
                        "{} skipped: {}",
                        names[e],
                        String::from_utf8_lossy(&o.stderr)
                            .lines()
                            .last()
                            .unwrap_or("")
                    );
                    e2e[e].push(None);
                    fwd[e].push(None);
                    continue;
                };
                e2e[e].push(v["images_per_sec"].as_f64());
                fwd[e].push(v["forward_images_per_sec"].as_f64());
                names[e] = format!(
                    "PyTorch {} ({}, {} threads)",
                    v["torch"].as_str().unwrap_or("?"),
                    v["setting"].as_str().unwrap_or(mode),
                    v["threads"]
                );
                if let Some(c) = v["compile_secs"].as_f64() {
                    notes.push(format!(
                        "torch.compile took {c:.1} s before the clock started"
                    ));
                }
                // Same answers? Near-ties may fall either way in f32, and PIL's JPEG
                // decoder is not the `image` crate's: pixels differ by one here and there.
                let theirs = read(&torch_out)?;
                anyhow::ensure!(
                    theirs.len() == paths.len(),
                    "{} wrote {} rows for {} images",
                    names[e],
                    theirs.len(),
                    paths.len()
                );
                let agree = ours
                    .iter()
                    .filter(|(k, x)| theirs.get(*k).is_some_and(|y| y.0 == x.0))
                    .count();
                let max_dp = ours
                    .iter()
                    .filter_map(|(k, x)| {
                        theirs
                            .get(k)
                            .filter(|y| y.0 == x.0)
                            .map(|y| (y.1 - x.1).abs())
                    })
                    .fold(0.0, f64::max);
                anyhow::ensure!(
                    agree * 100 >= paths.len() * 99,
                    "pipe and {} disagree on {} of {} images: not the same network",
                    names[e],
                    paths.len() - agree,
                    paths.len()
                );
                if round + 1 == rounds {
                    agreement.push(format!(
                        "{}: same top-1 class for {agree} of {} images; largest difference of an agreed top-1 probability {max_dp:.2e}",
                        names[e],
                        paths.len()
                    ));
                }
            }
        }
        println!(
            "\nMiniGoogLeNet predict: {} 32x32 JPEGs, batch {}, {rounds} rounds, CPU ({} threads)\nmachine: {}",
            paths.len(),
            cfg.batch,
            rayon::current_num_threads(),
            machine_line()
        );
        println!("| engine | end to end, images/s (median) | per round | forward only, images/s (median) | ratio to PyTorch eager, end to end | forward only |");
        println!("|---|---|---|---|---|---|");
        let med = |v: &[Option<f64>]| {
            let ok: Vec<f64> = v.iter().flatten().copied().collect();
            (!ok.is_empty()).then(|| median(ok))
        };
        let ratio = |a: &[Option<f64>], b: &[Option<f64>]| {
            let r: Vec<f64> = a
                .iter()
                .zip(b)
                .filter_map(|(x, y)| Some((*x)? / (*y)?))
                .collect();
            (!r.is_empty()).then(|| median(r))
        };
        let show =
            |x: Option<f64>, digits: usize| x.map_or("-".to_string(), |x| format!("{x:.digits$}"));
        for e in 0..names.len() {
            let per_round: Vec<String> = e2e[e].iter().map(|x| show(*x, 0)).collect();
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                names[e],
                show(med(&e2e[e]), 0),
                per_round.join(", "),
                show(med(&fwd[e]), 0),
                show(ratio(&e2e[e], &e2e[1]), 2),
                show(ratio(&fwd[e], &fwd[1]), 2),
            );
        }
        for (e, name) in names.iter().enumerate().skip(2) {
            if let (Some(a), Some(b)) = (ratio(&e2e[0], &e2e[e]), ratio(&fwd[0], &fwd[e])) {
                println!("\npipe against {name}: {a:.2}x end to end, {b:.2}x forward only");
            }
        }
        println!();
        for line in agreement.iter().chain(notes.iter().take(1)) {
            println!("{line}");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
