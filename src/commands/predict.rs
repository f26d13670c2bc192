//! `pipe predict PIPELINE[:STAGE] INPUT...`: classify new images with a trained stage.
//! Inputs are image files, folders (walked, sorted, JPEG and PNG files) or `-` (paths on
//! stdin). Images stream through in batches — prepared on the pool while the model runs
//! the previous batch — so memory stays flat however many there are; one line per image
//! goes to stdout as its batch finishes, the progress and a summary to stderr.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::Console;
use super::Global;
use crate::backend::DeviceKind;
use crate::engine::Project;
use crate::manifest::Tta;
use crate::stages::predict::{prepare_image, top_k, Predictor};

/// Output format of `predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictFormat {
    /// `path  name (p)  name (p) ...`.
    Text,
    /// One JSON object per line.
    Json,
    /// CSV: `path,class_1,name_1,p_1,...`.
    Csv,
}

/// Options of `pipe predict`.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Classes per image (`None`: 5, or every class of a model with fewer).
    pub top_k: Option<usize>,
    /// Output format.
    pub format: PredictFormat,
    /// Images per forward pass.
    pub batch: usize,
    /// Device (`None`: the GPU where this build and machine have one, else the CPU).
    pub device: Option<DeviceKind>,
    /// Skip (and count) images that do not decode, instead of failing.
    pub skip_bad: bool,
    /// The most pixels an image may have (a decompression bomb is refused from its
    /// header).
    pub max_pixels: u64,
    /// `-` reads paths separated by NUL bytes (as `find -print0` writes them), not lines.
    pub nul: bool,
    /// Test-time augmentation.
    pub tta: Tta,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "jpg" | "jpeg" | "png"))
}

/// The image files under `dir`, sorted, into `out`. `chain` holds the real paths of the
/// folders being walked (dir's ancestors in this walk): a link back to one of them (a
/// loop) is skipped with a warning, not walked until the path is too long.
fn walk(dir: &Path, chain: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    if chain.len() > 64 {
        bail!("{}: folders nested more than 64 deep", dir.display());
    }
    let real = dir
        .canonicalize()
        .with_context(|| format!("cannot read folder {}", dir.display()))?;
    if chain.contains(&real) {
        eprintln!(
            "warning: skipped {}: a link back to {}, which is being walked (a loop)",
            dir.display(),
            real.display()
        );
        return Ok(());
    }
    chain.push(real);
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let meta = std::fs::metadata(&p);
        match meta {
            Ok(m) if m.is_dir() => walk(&p, chain, out)?,
            // Files by their extension; anything else in a folder (a FIFO, a README) is
            // not an image of it.
            Ok(m) if m.is_file() && is_image(&p) => out.push(p),
            _ => {}
        }
    }
    chain.pop();
    Ok(())
}

/// The image paths `inputs` name, in order: files as given, folders walked (sorted), `-`
/// read from stdin, one path per line (`nul`: separated by NUL bytes, so a name may hold
/// anything but NUL).
pub fn collect_inputs(inputs: &[String], nul: bool) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::new();
    for i in inputs {
        if i == "-" {
            let stdin = std::io::stdin().lock();
            if nul {
                for item in stdin.split(0) {
                    let bytes = item.context("reading paths from stdin")?;
                    if !bytes.is_empty() {
                        out.push(PathBuf::from(std::ffi::OsString::from_vec(bytes)));
                    }
                }
                continue;
            }
            for line in stdin.lines() {
                let line = line.context("reading paths from stdin")?;
                let t = line.trim();
                if !t.is_empty() {
                    out.push(PathBuf::from(t));
                }
            }
            continue;
        }
        let p = PathBuf::from(i);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => walk(&p, &mut Vec::new(), &mut out)?,
            // A file given by name is tried whatever its extension (and refused by name if
            // it is not a regular file or not an image).
            Ok(_) => out.push(p),
            Err(e) => bail!("{i}: {e}"),
        }
    }
    Ok(out)
}

/// `PIPELINE[:STAGE]`: the pipeline (a name, alias, path or sweep point) and the stage
/// named after its last `:`, unless the whole names a pipeline.
pub(super) fn load_stage_target(
    g: &Global,
    target: &str,
) -> Result<(
    Project,
    crate::manifest::Pipeline,
    Option<String>,
    Option<crate::outcome::record::RunRecord>,
)> {
    // A recorded run (`exp3~1`, `exp3~1:drop`): its pipeline as it ran, its artifacts.
    let (run_arg, stage) = match target.rsplit_once(':') {
        Some((r, s)) if !s.is_empty() && !s.contains(['~', '@']) => (r, Some(s.to_string())),
        _ => (target, None),
    };
    for (arg, stage) in [(run_arg, stage), (target, None)] {
        if let Some((proj, rec, p)) = super::resolve_run(g, arg)? {
            return Ok((proj, p?, stage, Some(rec)));
        }
    }
    let (proj, p, stage) = load_pipeline_target(g, target)?;
    Ok((proj, p, stage, None))
}

fn load_pipeline_target(
    g: &Global,
    target: &str,
) -> Result<(Project, crate::manifest::Pipeline, Option<String>)> {
    let discovered = Project::discover(g.cache.clone())?;
    match discovered.load(target, &[]) {
        Ok((proj, p)) => Ok((proj, p, None)),
        Err(whole) => match target.rsplit_once(':') {
            Some((name, stage)) if !stage.is_empty() => {
                let (proj, p) = discovered.load(name, &[]).map_err(|_| whole)?;
                Ok((proj, p, Some(stage.to_string())))
            }
            _ => Err(whole),
        },
    }
}

/// A field of the text output's tab-separated lines: a tab, a line break or a backslash
/// in it (a file name may hold them) written as `\t`, `\n`, `\r`, `\\`.
fn tsv_field(s: &str) -> String {
    if !s.contains(['\t', '\n', '\r', '\\']) {
        return s.to_string();
    }
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `pipe predict`.
pub fn predict(g: &Global, target: &str, inputs: &[String], o: &PredictOptions) -> Result<()> {
    let (proj, p, stage, run) = load_stage_target(g, target)?;
    // With a remote cache, a model pulled alone (`pipe pull --only-final`) is found by
    // the keys the remote's records give the stages before it.
    let mut engine = super::looking(&proj).with_remote(super::open_remote(g, &proj)?);
    let trained = engine.trained_in(&p, stage.as_deref(), run.as_ref())?;
    if o.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    if o.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let paths = collect_inputs(inputs, o.nul)?;
    if paths.is_empty() {
        bail!(
            "no images to predict in {} (folders are searched for .jpg, .jpeg and .png files)",
            inputs.join(", ")
        );
    }
    let device = o.device.unwrap_or(if crate::backend::cuda_available() {
        DeviceKind::Cuda
    } else {
        DeviceKind::Cpu
    });
    let mut model = Predictor::load(
        &trained.model_dir,
        &trained.data_dir,
        trained.filter,
        device,
    )?;
    model.tta = o.tta;
    let k = match o.top_k {
        Some(k) if k > model.classes.len() => bail!(
            "--top-k {k} asks for more classes than stage `{}` of `{}` knows ({})",
            trained.stage,
            p.name,
            model.classes.len()
        ),
        Some(k) => k,
        None => model.classes.len().min(5),
    };
    let pb = crate::outcome::Watcher::bar(
        &Console::new(false),
        paths.len() as u64,
        "predict",
        "images",
    );
    let started = std::time::Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if o.format == PredictFormat::Csv {
        let mut head = vec!["path".to_string()];
        for r in 1..=k {
            head.extend([format!("class_{r}"), format!("name_{r}"), format!("p_{r}")]);
        }
        head.push("skipped".into());
        writeln!(out, "{}", head.join(","))?;
    }
    let batch = o.batch;
    let chunks: Vec<&[PathBuf]> = paths.chunks(batch).collect();
    let mut done = 0usize;
    let mut skipped: Vec<String> = Vec::new();
    // Images are prepared on the pool, one batch ahead of the model.
    let (size, filter) = (model.size, model.filter);
    let prepare = |c: usize| -> Vec<(usize, Result<Vec<u8>>)> {
        chunks[c]
            .par_iter()
            .enumerate()
            .map(|(i, p)| (i, prepare_image(p, size, filter, o.max_pixels)))
            .collect()
    };
    let mut failure: Option<anyhow::Error> = None;
    crate::stages::batches::prefetched(chunks.len(), prepare, |c, prepared| {
        let mut images = Vec::with_capacity(prepared.len());
        let mut which = Vec::with_capacity(prepared.len());
        for (i, r) in prepared {
            match r {
                Ok(px) => {
                    images.push(px);
                    which.push(&chunks[c][i]);
                }
                Err(e) if o.skip_bad => {
                    // Every skipped file is named: on stderr, and as a row of its own in
                    // JSON and CSV (so a consumer can join the output to its inputs).
                    let why = format!("{e:#}");
                    let path_s = chunks[c][i].display().to_string();
                    match o.format {
                        PredictFormat::Text => {}
                        PredictFormat::Csv => {
                            let empty = vec![String::new(); 3 * k];
                            writeln!(
                                out,
                                "{},{},{}",
                                csv_field(&path_s),
                                empty.join(","),
                                csv_field(&why)
                            )?;
                        }
                        PredictFormat::Json => writeln!(
                            out,
                            "{}",
                            serde_json::json!({"path": path_s, "skipped": why})
                        )?,
                    }
                    skipped.push(why);
                }
                Err(e) => {
                    failure = Some(anyhow::anyhow!(
                        "{e:#} (pass --skip-bad to leave such files out)"
                    ));
                    anyhow::bail!("stopped");
                }
            }
        }
        if images.is_empty() {
            pb.inc(chunks[c].len() as u64);
            return Ok(());
        }
        let probs = model.predict(&images)?;
        let n = model.classes.len();
        for (row, path) in probs.chunks_exact(n).zip(&which) {
            if row.iter().any(|p| !p.is_finite()) {
                failure = Some(anyhow::anyhow!(
                    "stage `{}` of `{}` gives {} probabilities for {}: its model is damaged or its training diverged; nothing is printed for it (`pipe verify` checks the store)",
                    trained.stage,
                    p.name,
                    if row.iter().any(|p| p.is_nan()) { "NaN" } else { "infinite" },
                    path.display()
                ));
                anyhow::bail!("stopped");
            }
            let top = top_k(row, k);
            let path_s = path.display().to_string();
            match o.format {
                PredictFormat::Text => {
                    let parts: Vec<String> = top
                        .iter()
                        .map(|(l, p)| format!("{} ({p:.4})", tsv_field(&model.classes[*l].name)))
                        .collect();
                    writeln!(out, "{}\t{}", tsv_field(&path_s), parts.join("\t"))?;
                }
                PredictFormat::Csv => {
                    let mut f = vec![csv_field(&path_s)];
                    for (l, p) in &top {
                        let c = &model.classes[*l];
                        f.extend([csv_field(&c.id), csv_field(&c.name), format!("{p:.6}")]);
                    }
                    f.push(String::new());
                    writeln!(out, "{}", f.join(","))?;
                }
                PredictFormat::Json => {
                    let top: Vec<serde_json::Value> = top
                        .iter()
                        .map(|(l, p)| {
                            let c = &model.classes[*l];
                            serde_json::json!({"label": l, "class": c.id, "name": c.name, "p": p})
                        })
                        .collect();
                    let mut row = serde_json::json!({"path": path_s, "top": top});
                    if o.tta != Tta::None {
                        row["tta"] = serde_json::json!(o.tta.to_string());
                    }
                    writeln!(out, "{row}")?;
                }
            }
        }
        out.flush()?;
        done += images.len();
        pb.inc(chunks[c].len() as u64);
        Ok(())
    })
    .map_err(|e| failure.take().unwrap_or(e))?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let mut summary = format!(
        "predicted {done} images with `{}` stage `{}`{} in {secs:.2} s ({:.0} images/s)",
        p.name,
        trained.stage,
        match o.tta {
            Tta::None => String::new(),
            t => format!(" (tta = {t}: each image averaged with its mirror)"),
        },
        done as f64 / secs.max(1e-9)
    );
    if !skipped.is_empty() {
        summary.push_str(&format!("; skipped {} that did not decode:", skipped.len()));
        for why in &skipped {
            summary.push_str(&format!("\n  skipped: {why}"));
        }
    }
    eprintln!("{summary}");
    if done == 0 {
        bail!("no image could be predicted: every input was skipped as undecodable");
    }
    Ok(())
}
