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
    let opts_dry_run = opts.dry_run;
    let mut engine = if opts.dry_run {
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
        if opts_dry_run {
            let total: f64 = report.stages.iter().filter_map(|s| s.estimate).sum();
            if total > 0.0 {
                eprintln!("estimated: {}", crate::engine::estimate::human(total));
            }
        }
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
        o.key.as_deref().map_or("-", |k| &k[..12]),
        o.summary
    );
    Ok(())
}

/// Columns of the terminal on stdout (`$COLUMNS`, else the tty's, else 120).
fn terminal_width() -> usize {
    if let Some(w) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return w;
    }
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; on failure it is left zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        120
    }
}

/// Output format of `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowFormat {
    /// A table that fits the terminal.
    Table,
    /// JSON rows.
    Json,
    /// CSV, every column.
    Csv,
}

/// `pipe show`: pipelines side by side (default: every manifest in `pipelines/`).
pub fn show(
    g: &Global,
    pipelines: &[String],
    sets: &[String],
    sort: Option<&str>,
    format: ShowFormat,
) -> Result<()> {
    use crate::report::compare;
    let discovered = Project::discover(g.cache.clone())?;
    let names: Vec<String> = if pipelines.is_empty() {
        crate::manifest::list(&discovered.pipelines)?
            .into_iter()
            .map(|p| p.display().to_string())
            .collect()
    } else {
        pipelines.to_vec()
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for n in &names {
        match discovered.load(n, sets) {
            Ok((proj, p)) => {
                let mut engine = Engine::read_only(&proj.cache);
                rows.push(compare::gather(&mut engine, &p)?);
            }
            // Named explicitly: an error. Listed from the folder: say so and go on (a
            // base file that is not a pipeline, a manifest that needs `--set`).
            Err(e) if pipelines.is_empty() => skipped.push(format!("{n}: {e}")),
            Err(e) => return Err(e),
        }
    }
    if let Some(key) = sort {
        compare::sort(&mut rows, key)?;
    }
    match format {
        ShowFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        ShowFormat::Csv => print!("{}", compare::render_csv(&rows)?),
        ShowFormat::Table => {
            if rows.is_empty() {
                anyhow::bail!("no pipelines to show in {}", discovered.pipelines.display());
            }
            print!("{}", compare::render_table(&rows, terminal_width()));
        }
    }
    for s in skipped {
        eprintln!("note: not shown: {}", s.lines().next().unwrap_or(""));
    }
    Ok(())
}

/// `pipe diff A [B]`: two pipelines, or one against its last run.
pub fn diff(g: &Global, a: &str, b: Option<&str>, sets: &[String], json: bool) -> Result<()> {
    use crate::report::compare;
    let discovered = Project::discover(g.cache.clone())?;
    let (pa, p) = discovered.load(a, sets)?;
    let mut ea = Engine::read_only(&pa.cache);
    let (sa, sb) = match b {
        Some(b) => {
            let (pb, q) = discovered.load(b, sets)?;
            let mut eb = Engine::read_only(&pb.cache);
            (
                compare::side_of(&mut ea, &p)?,
                compare::side_of(&mut eb, &q)?,
            )
        }
        None => {
            let last = compare::last_run_side(&ea, &p)?;
            // The current manifest in the same terms as the record (structure networks).
            let mut now = compare::side_of(&mut ea, &p)?;
            now.label = format!("{} (manifest now)", p.name);
            for (stage, s) in &p.stages {
                if let crate::manifest::StageConfig::Train(_) = &s.config {
                    let v = s.config.to_json();
                    let arr = v["network"].clone();
                    now.config.insert(
                        format!("stages.{stage}.network"),
                        format!(
                            "(structure {})",
                            &blake3::hash(serde_json::to_string(&arr)?.as_bytes()).to_hex()[..12]
                        ),
                    );
                    if let Some((_, g)) = now.networks.get_mut(stage) {
                        for (i, n) in g.nodes.iter_mut().enumerate() {
                            n.name = format!("#{i}");
                        }
                    }
                }
            }
            // Keys the record does not hold (resources, inputs of never-run stages) are
            // not part of a run.
            now.config
                .retain(|k, _| !k.contains(".resources.") && k != "seed");
            (last, now)
        }
    };
    let d = compare::diff(&sa, &sb);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!("{} vs {}", d.a, d.b);
        print!("{}", compare::render_diff(&d));
    }
    Ok(())
}

/// `pipe status`.
pub fn status(g: &Global, pipeline: &str, sets: &[String], json: bool) -> Result<()> {
    let (proj, p) = load(g, pipeline, sets)?;
    let mut engine = Engine::read_only(&proj.cache);
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
            let est = s.estimate.map_or(String::new(), |e| {
                format!("[est. {}] ", crate::engine::estimate::human(e))
            });
            format!("{est}{}", s.reasons.join("; "))
        };
        println!("  {:<12} {:<7} key {key:<12}  {detail}", s.name, s.state);
    }
    let total: f64 = stages.iter().filter_map(|s| s.estimate).sum();
    let unknown = stages
        .iter()
        .filter(|s| s.state != "cached" && s.estimate.is_none())
        .count();
    if total > 0.0 {
        println!(
            "estimated time to bring it up to date: {}{}",
            crate::engine::estimate::human(total),
            if unknown > 0 {
                format!(" (+ {unknown} stage(s) with no past run to go by)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

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

/// `pipe verify [PIPELINE]`: re-hash every artifact (or the pipeline's last run's) against
/// what was published; an error if any is damaged.
pub fn verify(g: &Global, pipeline: Option<&str>) -> Result<()> {
    let project = Project::discover(g.cache.clone())?;
    let (project, only) = match pipeline {
        Some(name) => {
            let (proj, p) = project.load(name, &[])?;
            let engine = Engine::read_only(&proj.cache);
            let st = engine.store().load_state(&p.name);
            let outs: std::collections::HashSet<String> =
                st.stages.values().map(|s| s.output.clone()).collect();
            (proj, Some(outs))
        }
        None => (project, None),
    };
    let engine = Engine::read_only(&project.cache);
    let results = engine.verify(only.as_ref())?;
    let mut damaged = 0;
    for (a, stages, h) in &results {
        let who = if stages.is_empty() {
            String::new()
        } else {
            format!(" ({})", stages.join(", "))
        };
        match h {
            crate::engine::integrity::Health::Sound => {
                println!("ok       {}{who}", &a[..12.min(a.len())])
            }
            crate::engine::integrity::Health::Damaged(problems) => {
                damaged += 1;
                println!("DAMAGED  {}{who}", &a[..12.min(a.len())]);
                for pr in problems {
                    println!("         {pr}");
                }
            }
        }
    }
    if damaged > 0 {
        // Move them aside (so even damage a stat check cannot see is not reused).
        let store = crate::engine::store::Store::open(&project.cache)?;
        let _lock = store.lock("pipe verify")?;
        for (a, _, h) in &results {
            if *h != crate::engine::integrity::Health::Sound {
                store.quarantine(a)?;
            }
        }
        anyhow::bail!(
            "{damaged} of {} artifacts are damaged; they were moved aside: the next `pipe run` rebuilds what it needs, `pipe gc` deletes them",
            results.len()
        );
    }
    eprintln!("{} artifacts verified, none damaged", results.len());
    Ok(())
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
    // Which stages train each network, and with what: train stages name their network;
    // lr-drop and resume stages continue their `from`'s.
    use crate::manifest::StageConfig;
    let mut trains: Vec<(String, String, String)> = Vec::new(); // (stage, network, "backend, device")
    fn network_of(p: &crate::manifest::Pipeline, stage: &str, depth: usize) -> Option<String> {
        match &p.stages.get(stage)?.config {
            StageConfig::Train(t) => Some(t.config.network.clone()),
            StageConfig::LrDrop(c) if depth < 64 => network_of(p, &c.from, depth + 1),
            StageConfig::Resume { stage, .. } if depth < 64 => network_of(p, stage, depth + 1),
            _ => None,
        }
    }
    for (sname, st) in &p.stages {
        let (backend, device) = match &st.config {
            StageConfig::Train(t) => (t.config.backend, t.config.device),
            StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } => (c.backend, c.device),
            _ => continue,
        };
        let how = format!(
            "{} backend, {}",
            backend.unwrap_or_default(),
            match device {
                Some(crate::manifest::DeviceSetting::Cuda) => "cuda",
                _ => "cpu",
            }
        );
        trains.push((
            sname.clone(),
            network_of(&p, sname, 0).unwrap_or_default(),
            how,
        ));
    }
    let mut out = Vec::new();
    for name in names {
        let x = p
            .library
            .expand(&name, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let infos = x.graph.infer()?;
        let trained_by: Vec<&(String, String, String)> =
            trains.iter().filter(|t| t.1 == name).collect();
        if json {
            let t = crate::nn::graph::totals(&infos);
            out.push(serde_json::json!({
                "network": name,
                "nodes": x.graph.nodes.iter().zip(&infos).map(|(n, i)| serde_json::json!({
                    "name": n.name, "op": n.op.name(), "shape": i.shape.to_string(),
                    "params": i.trainable + i.non_trainable, "macs": i.macs,
                })).collect::<Vec<_>>(),
                "trainable": t.trainable, "non_trainable": t.non_trainable, "macs": t.macs,
                "trained_by": trained_by.iter().map(|t| serde_json::json!({
                    "stage": t.0, "how": t.2,
                })).collect::<Vec<_>>(),
            }));
        } else {
            println!("{}", crate::nn::summary(&name, &x.graph, &infos));
            for t in &trained_by {
                println!("trained by stage `{}`: {}", t.0, t.2);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
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
                include_str!("../pipelines/networks/mini_googlenet.toml"),
                "mini_googlenet",
            )?,
            32,
        )),
        "deeper" => Ok((
            shipped_network(
                include_str!("../pipelines/networks/deeper_googlenet.toml"),
                "deeper_googlenet",
            )?,
            64,
        )),
        "demo" => Ok((
            shipped_network(include_str!("../pipelines/demo.toml"), "demo_net")?,
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
            let last = engines.len() - 1;
            let r = run(&mut cmd, "PyTorch");
            if let Some(s) = r.as_ref().and_then(|r| r.setting.clone()) {
                engines[last] = format!("PyTorch ({s})");
            }
            results[last].push(r);
        }
        let torch = &results[engines.len() - 1];
        println!(
            "\n{net}: batch {}, {} timed steps after 1 warm-up, {} rounds, {dev} ({} threads)",
            cfg.batch,
            cfg.steps,
            cfg.rounds,
            rayon::current_num_threads()
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
    Ok(p.library
        .expand(name, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .graph)
}
