//! `pipe bench predict`: `pipe predict` with a trained MiniGoogLeNet against PyTorch
//! running the same weights on the same files (`benches/predict_torch.py`), in
//! alternating rounds, end to end and forward passes alone; both must give the same top-1
//! class.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{machine_line, manifest, median, network, script, Pipe, Scratch};
use crate::stages::predict::{prepare_image, Predictor};

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

/// PyTorch's two ways of running, after pipe.
const MODES: [&str; 2] = ["eager", "compile"];

/// What the rounds measured: per engine (pipe, then each PyTorch mode) and round, end to
/// end and forward-only images/s (`None`: that engine did not run that round).
struct Measured {
    names: Vec<String>,
    e2e: Vec<Vec<Option<f64>>>,
    fwd: Vec<Vec<Option<f64>>>,
    notes: Vec<String>,
    agreement: Vec<String>,
}

/// Everything a round reads: the project, the images and the trained model.
struct Setup {
    pipe: Pipe,
    images: Vec<PathBuf>,
    /// The image folder (what `pipe predict` is given).
    folder: PathBuf,
    /// The images' paths, one a line (what the torch script is given).
    list: PathBuf,
    /// The order of the network's layers with weights (for the torch script).
    order: PathBuf,
    model_dir: PathBuf,
    predictor: Predictor,
    decoded: Vec<Vec<u8>>,
    scratch: PathBuf,
}

/// `pipe bench predict`: MiniGoogLeNet trained by a small pipeline, then `images` new
/// 32x32 JPEGs classified by `pipe predict` (a separate process, timed whole) and by
/// PyTorch (timed from the first file opened) in alternating rounds; also each engine's
/// forward passes alone on decoded batches. Prints medians and the ratio to PyTorch within
/// each round, and checks that both give the same top-1 class for every image.
pub fn bench_predict(cfg: &BenchPredict<'_>) -> Result<()> {
    anyhow::ensure!(cfg.images >= 1, "--images must be at least 1");
    let scratch = Scratch::new()?;
    let mut setup = set_up(cfg, &scratch.dir)?;
    let mut m = Measured {
        names: std::iter::once("pipe predict (native)".to_string())
            .chain(MODES.iter().map(|m| format!("PyTorch {m}")))
            .collect(),
        e2e: vec![Vec::new(); MODES.len() + 1],
        fwd: vec![Vec::new(); MODES.len() + 1],
        notes: Vec::new(),
        agreement: Vec::new(),
    };
    let rounds = cfg.rounds.max(1);
    for round in 0..rounds {
        eprintln!("bench predict: round {}/{rounds}", round + 1);
        let ours = time_pipe(cfg, &mut setup, &mut m)?;
        for (k, mode) in MODES.iter().enumerate() {
            time_torch(cfg, &setup, &ours, k + 1, mode, round + 1 == rounds, &mut m)?;
        }
    }
    report(cfg, &setup, &m, rounds);
    Ok(())
}

/// Train the model, write the images, decode them once and load the predictor.
fn set_up(cfg: &BenchPredict<'_>, tmp: &Path) -> Result<Setup> {
    let pipe = Pipe::in_project(&tmp.join("project"))?;
    pipe.write(
        "networks/mini_googlenet.toml",
        include_str!("../../../pipelines/networks/mini_googlenet.toml"),
    )?;
    pipe.write("bench.toml", &manifest("predict.toml", &[]))?;
    eprintln!("bench predict: training MiniGoogLeNet briefly (a small synthetic pipeline)...");
    pipe.run(&["run", "bench"])?;
    eprintln!("bench predict: writing {} 32x32 JPEGs...", cfg.images);
    let folder = pipe.project.join("images");
    write_images(&folder, cfg.images)?;
    let images = crate::commands::predict::collect_inputs(&[folder.display().to_string()], false)?;
    let list = tmp.join("images.txt");
    let lines: String = images
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    std::fs::write(&list, lines)?;
    // The trained stage, for the in-process forward timing and the torch script.
    let project = crate::engine::Project::at(pipe.project.clone(), None);
    let (_, pipeline) = project.load("bench", &[])?;
    let trained = crate::engine::Engine::read_only(&project.cache).trained(&pipeline, None)?;
    let (graph, _) = network("mini")?;
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
    let predictor = Predictor::load(
        &trained.model_dir,
        &trained.data_dir,
        trained.filter,
        crate::backend::DeviceKind::Cpu,
    )?;
    let (size, filter) = (predictor.size, predictor.filter);
    let decoded = images
        .par_iter()
        .map(|p| prepare_image(p, size, filter, crate::data::decode::MAX_PIXELS))
        .collect::<Result<_>>()?;
    Ok(Setup {
        pipe,
        images,
        folder,
        list,
        order: order_file,
        model_dir: trained.model_dir,
        predictor,
        decoded,
        scratch: tmp.to_path_buf(),
    })
}

/// `n` smooth random 32x32 JPEGs in 10 folders under `dir`, each drawn from its own seed.
fn write_images(dir: &Path, n: usize) -> Result<()> {
    (0..n).into_par_iter().try_for_each(|i| -> Result<()> {
        let sub = dir.join(format!("c{}", i % 10));
        std::fs::create_dir_all(&sub)?;
        let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
        let (a, b, c): (f32, f32, f32) = (
            rng.random::<f32>() * 0.6,
            rng.random::<f32>() * 0.6,
            rng.random::<f32>() * 6.0,
        );
        let base: [f32; 3] = std::array::from_fn(|_| rng.random::<f32>() * 255.0);
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            let v = ((x as f32 * a + y as f32 * b + c).sin() * 0.5 + 0.5) * 255.0;
            image::Rgb(std::array::from_fn(|k| {
                ((base[k] + v) * 0.5 + rng.random::<f32>() * 24.0).clamp(0.0, 255.0) as u8
            }))
        });
        img.save(sub.join(format!("{i:06}.jpg")))?;
        Ok(())
    })
}

/// Predictions as JSON lines: path -> (top-1 label, its probability).
fn read_predictions(f: &Path) -> Result<HashMap<String, (u64, f64)>> {
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
}

/// One round of pipe: `pipe predict` timed whole, then its forward passes alone in this
/// process. Returns its predictions.
fn time_pipe(
    cfg: &BenchPredict<'_>,
    s: &mut Setup,
    m: &mut Measured,
) -> Result<HashMap<String, (u64, f64)>> {
    let n = s.images.len() as f64;
    let out = s.scratch.join("pipe.jsonl");
    let t = std::time::Instant::now();
    let o = s
        .pipe
        .command(&["predict", "bench", "--json", "--top-k", "1", "--batch"])
        .arg(cfg.batch.to_string())
        .arg(&s.folder)
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::process::Stdio::piped())
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        o.status.success(),
        "`pipe predict` failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    m.e2e[0].push(Some(n / secs));
    let t = std::time::Instant::now();
    for chunk in s.decoded.chunks(cfg.batch.max(1)) {
        std::hint::black_box(s.predictor.predict(chunk)?);
    }
    m.fwd[0].push(Some(n / t.elapsed().as_secs_f64()));
    let ours = read_predictions(&out)?;
    anyhow::ensure!(
        ours.len() == s.images.len(),
        "pipe wrote {} rows for {} images",
        ours.len(),
        s.images.len()
    );
    Ok(ours)
}

/// One round of PyTorch in `mode` (engine `e`): timed by its script, and its top-1 classes
/// checked against pipe's (`ours`); on the `last` round, the agreement is noted.
fn time_torch(
    cfg: &BenchPredict<'_>,
    s: &Setup,
    ours: &HashMap<String, (u64, f64)>,
    e: usize,
    mode: &str,
    last: bool,
    m: &mut Measured,
) -> Result<()> {
    let out = s.scratch.join("torch.jsonl");
    let o = std::process::Command::new(cfg.python)
        .arg(script("predict_torch.py"))
        .arg("mini")
        .arg(&s.model_dir)
        .arg(&s.order)
        .arg(&s.list)
        .arg(cfg.batch.to_string())
        .arg(&out)
        .arg(mode)
        .output()?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: Option<serde_json::Value> = o
        .status
        .success()
        .then(|| serde_json::from_str(stdout.lines().last().unwrap_or("")).ok())
        .flatten();
    let Some(v) = v else {
        let why = String::from_utf8_lossy(&o.stderr);
        eprintln!(
            "{} skipped: {}",
            m.names[e],
            why.lines().last().unwrap_or("")
        );
        m.e2e[e].push(None);
        m.fwd[e].push(None);
        return Ok(());
    };
    m.e2e[e].push(v["images_per_sec"].as_f64());
    m.fwd[e].push(v["forward_images_per_sec"].as_f64());
    m.names[e] = format!(
        "PyTorch {} ({}, {} threads)",
        v["torch"].as_str().unwrap_or("?"),
        v["setting"].as_str().unwrap_or(mode),
        v["threads"]
    );
    if let Some(c) = v["compile_secs"].as_f64() {
        m.notes.push(format!(
            "torch.compile took {c:.1} s before the clock started"
        ));
    }
    // Same answers? Near-ties may fall either way in f32, and PIL's JPEG decoder is not
    // the `image` crate's: pixels differ by one here and there.
    let theirs = read_predictions(&out)?;
    let total = s.images.len();
    anyhow::ensure!(
        theirs.len() == total,
        "{} wrote {} rows for {total} images",
        m.names[e],
        theirs.len()
    );
    let same = |k: &String, x: &(u64, f64)| theirs.get(k).filter(|y| y.0 == x.0).copied();
    let agree = ours.iter().filter(|(k, x)| same(k, x).is_some()).count();
    let max_dp = ours
        .iter()
        .filter_map(|(k, x)| same(k, x).map(|y| (y.1 - x.1).abs()))
        .fold(0.0, f64::max);
    anyhow::ensure!(
        agree * 100 >= total * 99,
        "pipe and {} disagree on {} of {total} images: not the same network",
        m.names[e],
        total - agree
    );
    if last {
        m.agreement.push(format!(
            "{}: same top-1 class for {agree} of {total} images; largest difference of an agreed top-1 probability {max_dp:.2e}",
            m.names[e]
        ));
    }
    Ok(())
}

/// The table: medians, rounds and ratios to PyTorch eager; then the agreement.
fn report(cfg: &BenchPredict<'_>, s: &Setup, m: &Measured, rounds: usize) {
    println!(
        "\nMiniGoogLeNet predict: {} 32x32 JPEGs, batch {}, {rounds} rounds, CPU ({} threads)\nmachine: {}",
        s.images.len(),
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
    for e in 0..m.names.len() {
        let per_round: Vec<String> = m.e2e[e].iter().map(|x| show(*x, 0)).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            m.names[e],
            show(med(&m.e2e[e]), 0),
            per_round.join(", "),
            show(med(&m.fwd[e]), 0),
            show(ratio(&m.e2e[e], &m.e2e[1]), 2),
            show(ratio(&m.fwd[e], &m.fwd[1]), 2),
        );
    }
    for (e, name) in m.names.iter().enumerate().skip(2) {
        if let (Some(a), Some(b)) = (ratio(&m.e2e[0], &m.e2e[e]), ratio(&m.fwd[0], &m.fwd[e])) {
            println!("\npipe against {name}: {a:.2}x end to end, {b:.2}x forward only");
        }
    }
    println!();
    for line in m.agreement.iter().chain(m.notes.iter().take(1)) {
        println!("{line}");
    }
}
