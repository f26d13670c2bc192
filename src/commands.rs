//! The CLI verbs, as library functions (`main.rs` only parses arguments).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::data::synthetic;
use crate::engine::{Engine, Project, RunOptions};
use crate::manifest::Pipeline;
use crate::report::progress::human_bytes;

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

/// `pipe run`.
pub fn run(
    g: &Global,
    pipeline: &str,
    sets: &[String],
    opts: RunOptions,
    json: bool,
) -> Result<()> {
    let (proj, p) = load(g, pipeline, sets)?;
    let mut engine = Engine::new(&proj.cache)?;
    if !json {
        eprintln!(
            "pipeline {} ({}){}",
            p.name,
            p.file.display(),
            if opts.dry_run { " [dry run]" } else { "" }
        );
    }
    let report = engine.run(
        &p,
        &RunOptions {
            quiet: json,
            ..opts
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let ran = report.stages.iter().filter(|s| s.state == "ran").count();
        let cached = report.stages.iter().filter(|s| s.state == "cached").count();
        let secs: f64 = report.stages.iter().map(|s| s.seconds).sum();
        if ran == 0 && cached == report.stages.len() {
            eprintln!("nothing to do: all {cached} stages cached");
        } else {
            eprintln!("{ran} ran, {cached} cached in {secs:.1}s");
        }
    }
    Ok(())
}

/// `pipe status`.
pub fn status(g: &Global, pipeline: &str, sets: &[String], json: bool) -> Result<()> {
    let (proj, p) = load(g, pipeline, sets)?;
    let mut engine = Engine::new(&proj.cache)?;
    let stages = engine.status(&p)?;
    if json {
        let v = serde_json::json!({"pipeline": p.name, "manifest": p.file.display().to_string(), "stages": stages});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("pipeline {} ({})", p.name, p.file.display());
    for s in &stages {
        let key = s.key.as_deref().map(|k| &k[..12]).unwrap_or("-");
        let detail = if s.state == "cached" {
            s.summary.clone()
        } else {
            s.reasons.join("; ")
        };
        println!("  {:<12} {:<7} key {key:<12}  {detail}", s.name, s.state);
    }
    Ok(())
}

/// `pipe dag`.
pub fn dag(g: &Global, pipeline: &str, sets: &[String], dot: bool) -> Result<()> {
    let (_, p) = load(g, pipeline, sets)?;
    if dot {
        println!("digraph \"{}\" {{\n  rankdir=LR;", p.name);
        for name in p.topo_order() {
            let s = &p.stages[&name];
            println!(
                "  \"{name}\" [label=\"{name}\\n({})\", shape=box];",
                s.config.kind()
            );
            for i in &s.inputs {
                println!("  \"{i}\" -> \"{name}\";");
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

/// `pipe gc`.
pub fn gc(g: &Global) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    let mut engine = Engine::new(&proj.cache)?;
    let r = engine.gc(&proj)?;
    if let Some(first) = r.warnings.first() {
        eprintln!(
            "note: {} manifest(s) do not resolve here (e.g. {first}); only their last runs were kept",
            r.warnings.len()
        );
    }
    println!(
        "gc: removed {} artifacts and {} keys, freed {}",
        r.artifacts,
        r.keys,
        human_bytes(r.bytes)
    );
    Ok(())
}

/// Dataset layouts `pipe demo-data` can write.
#[derive(Debug, Clone, Copy)]
pub enum DemoLayout {
    /// Tiny ImageNet folders.
    TinyImagenet,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// `root/<class>/*.jpg`.
    ImageFolder,
}

/// `pipe demo-data`: write a generated dataset in a real layout.
pub fn demo_data(
    dir: &Path,
    layout: DemoLayout,
    classes: usize,
    per_class: usize,
    val_per_class: usize,
    size: u32,
    seed: u64,
) -> Result<()> {
    let t = std::time::Instant::now();
    let n = match layout {
        DemoLayout::TinyImagenet => {
            synthetic::write_tiny_imagenet(dir, classes, per_class, val_per_class, size, seed)?
        }
        DemoLayout::Cifar10 => synthetic::write_cifar10(dir, per_class, seed)?,
        DemoLayout::ImageFolder => {
            synthetic::write_image_folder(dir, classes, per_class, size, seed)?
        }
    };
    eprintln!(
        "wrote {n} images to {} in {:.1}s",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

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

/// `pipe graph`: a summary of each network of a pipeline (or the one named).
pub fn graph(
    g: &Global,
    pipeline: &str,
    sets: &[String],
    network: Option<&str>,
    json: bool,
) -> Result<()> {
    let (_, p) = load(g, pipeline, sets)?;
    let names: Vec<String> = match network {
        Some(n) => vec![n.to_string()],
        None => p.library.networks.keys().cloned().collect(),
    };
    if names.is_empty() {
        anyhow::bail!(
            "pipeline `{}` declares no network ([networks.<name>])",
            p.name
        );
    }
    let mut out = Vec::new();
    for name in names {
        let x = p
            .library
            .expand(&name, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let infos = x.graph.infer()?;
        if json {
            let t = crate::nn::graph::totals(&infos);
            out.push(serde_json::json!({
                "network": name,
                "nodes": x.graph.nodes.iter().zip(&infos).map(|(n, i)| serde_json::json!({
                    "name": n.name, "op": n.op.name(), "shape": i.shape.to_string(),
                    "params": i.trainable + i.non_trainable, "macs": i.macs,
                })).collect::<Vec<_>>(),
                "trainable": t.trainable, "non_trainable": t.non_trainable, "macs": t.macs,
            }));
        } else {
            println!("{}", crate::nn::summary(&name, &x.graph, &infos));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// `pipe bench train`: time MiniGoogLeNet training steps (batch `batch`, 32x32x3) on a
/// device, and the identical PyTorch model on the same device in the same run when
/// `python` has torch.
pub fn bench_train(
    batch: usize,
    steps: usize,
    python: &str,
    device: crate::backend::DeviceKind,
) -> Result<()> {
    use crate::backend::DeviceKind;
    let g = mini_googlenet()?;
    let mut model = crate::backend::build_with(&g, 0, device, crate::backend::BackendKind::Dfdx)?;
    let (x, y) = bench_batch(batch);
    let opt = crate::backend::Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    model.train_step(&x, &y, &opt, 1e-2, 0)?; // warm-up
    let t = std::time::Instant::now();
    for s in 0..steps {
        model.train_step(&x, &y, &opt, 1e-2, s as u64 + 1)?;
    }
    let ours = (batch * steps) as f64 / t.elapsed().as_secs_f64();
    let prof = model.profile();
    if !prof.is_empty() {
        let total: f64 = prof.iter().map(|(_, v)| v).sum();
        let mut rows = prof.clone();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!(
            "| phase / op (PIPE_PROFILE, synchronised, {} steps incl. warm-up) | seconds | share |",
            steps + 1
        );
        println!("|---|---|---|");
        for (k, v) in rows {
            println!("| {k} | {v:.4} | {:.1} % |", 100.0 * v / total);
        }
        println!();
    }
    let (engine, torch_device) = match device {
        DeviceKind::Cpu => (
            format!("CPU, {} threads", rayon::current_num_threads()),
            "cpu",
        ),
        DeviceKind::Cuda => ("CUDA".to_string(), "cuda"),
    };
    println!(
        "| engine | images/s (MiniGoogLeNet train step, batch {batch}, 32x32, {steps} steps after 1 warm-up) |"
    );
    println!("|---|---|");
    println!("| pipe (dfdx 0.13, {engine}) | {ours:.1} |");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/minigooglenet_torch.py"
    );
    let script = if std::path::Path::new(script).is_file() {
        script.to_string()
    } else {
        // A binary carried to another machine: the script beside the working directory.
        "benches/minigooglenet_torch.py".to_string()
    };
    let out = std::process::Command::new(python)
        .args([
            script.as_str(),
            &batch.to_string(),
            &steps.to_string(),
            torch_device,
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
            let theirs = v["images_per_sec"].as_f64().unwrap_or(f64::NAN);
            println!(
                "| PyTorch {} ({} threads) | {theirs:.1} |",
                v["device"].as_str().unwrap_or("cpu"),
                v["threads"]
            );
            println!("| ratio pipe / PyTorch | {:.2} |", ours / theirs);
        }
        Ok(o) => eprintln!(
            "PyTorch comparison skipped: {python} {script} failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => eprintln!("PyTorch comparison skipped: cannot run {python}: {e}"),
    }
    Ok(())
}

/// `pipe bench parity`: one MiniGoogLeNet training step from the same weights on the same
/// batch, on the CPU and on the GPU; compares the losses and the updated weights.
pub fn bench_parity(batch: usize) -> Result<()> {
    use crate::backend::DeviceKind;
    let g = mini_googlenet()?;
    let (x, y) = bench_batch(batch);
    let opt = crate::backend::Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    let mut results = Vec::new();
    for device in [DeviceKind::Cpu, DeviceKind::Cuda] {
        let mut m = crate::backend::build_with(&g, 0, device, crate::backend::BackendKind::Dfdx)?;
        let s = m.train_step(&x, &y, &opt, 1e-2, 7)?;
        let st = m.state();
        let (mut sum, mut abs) = (0f64, 0f64);
        for (k, t) in &st.tensors {
            if !k.starts_with("opt/") {
                for v in &t.data {
                    sum += *v as f64;
                    abs += v.abs() as f64;
                }
            }
        }
        let probs = m.predict(&x, batch)?;
        let p: f64 = probs.iter().map(|v| *v as f64).sum();
        results.push((device, s.loss, sum, abs, p));
    }
    println!("| device | loss | weight sum | weight abs-sum | sum of predicted probs |");
    println!("|---|---|---|---|---|");
    for (d, l, s, a, p) in &results {
        println!("| {d:?} | {l:.6} | {s:.6} | {a:.6} | {p:.4} |");
    }
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
    let (c, gpu) = (&results[0], &results[1]);
    let worst = rel(c.1, gpu.1).max(rel(c.3, gpu.3));
    println!(
        "| relative difference | {:.2e} | {:.2e} | {:.2e} | {} |",
        rel(c.1, gpu.1),
        rel(c.2, gpu.2),
        rel(c.3, gpu.3),
        if worst < 1e-3 {
            "parity: OK (< 1e-3)"
        } else {
            "parity: FAILED"
        }
    );
    if worst >= 1e-3 {
        anyhow::bail!("CPU and GPU differ by {worst:.2e} (> 1e-3)");
    }
    Ok(())
}

fn bench_batch(batch: usize) -> (Vec<f32>, Vec<i64>) {
    let px = 32 * 32 * 3;
    let x: Vec<f32> = (0..batch * px)
        .map(|i| ((i * 7919 % 255) as f32) - 127.0)
        .collect();
    let y: Vec<i64> = (0..batch).map(|i| (i % 10) as i64).collect();
    (x, y)
}

/// MiniGoogLeNet from the shipped network file (embedded, so a carried binary has it).
fn mini_googlenet() -> Result<crate::nn::graph::Graph> {
    let text = include_str!("../pipelines/networks/mini_googlenet.toml");
    let dir = tempdir_in_target()?;
    std::fs::create_dir_all(dir.join("pipelines/networks"))?;
    std::fs::write(dir.join("pipelines/networks/mini_googlenet.toml"), text)?;
    let manifest = dir.join("pipelines/bench.toml");
    std::fs::write(
        &manifest,
        "include = [\"networks/mini_googlenet.toml\"]\n[stages.ingest]\nformat = \"synthetic\"\n",
    )?;
    let loaded = crate::manifest::load(&manifest, &[], &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let p = loaded.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(p.library
        .expand("mini_googlenet", None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .graph)
}
